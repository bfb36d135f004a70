//! Tether's end-to-end harness: real parts, started by the tests themselves, and the one place the
//! tests, the benches and the demo take their helpers from.
//!
//! The parts:
//! - [`controlplane`]: etcd, kube-apiserver and kube-controller-manager on loopback ports, with fresh
//!   certificates and an admin kubeconfig, like controller-runtime's envtest.
//! - [`cluster`]: the one control plane a test binary shares, and a fresh namespace per test.
//! - [`git_server`]: real git servers (HTTPS via nginx and `git http-backend`, SSH via `sshd`, `file://`)
//!   and [`git_server::Upstream`], a repository the tests commit to and push with the real `git` CLI.
//! - [`hub`]: the real `tether-hub` with a generated config, stopped, restarted, frozen and killed at
//!   will, started again as replicas sharing a Redis, and `post-receive` hooks that send it signed
//!   GitHub, GitLab and Gitea push webhooks.
//! - [`operator`]: the real `tether-operator` as a process: killed, restarted, its log and metrics read.
//! - [`render_tools`]: the kustomize, helm and sops the operator renders with, and the tests too.
//! - [`redis`]: `redis-server` on a loopback port without persistence (stopped, started again, with a
//!   password), and a Redis Cluster of three masters: what hub replicas share.
//! - [`haproxy`]: HAProxy in TCP mode in front of hub replicas, checking each one's `/readyz`.
//! - [`proxy`]: a real HTTP `CONNECT` proxy (`tinyproxy`) that logs what went through it.
//! - [`api_front`]: a plain-HTTP front for the API server that records the writes it forwards and
//!   can leave Lease requests hanging, a leader cut off from leader election alone.
//! - [`netns`]: a network namespace that lets nothing in, with relays out to the host's services.
//! - [`flux`]: Flux's source-controller and kustomize-controller as local processes, for benchmarks
//!   that set Tether beside them.
//!
//! - [`ci`]: CI access as a CI job meets it: the operator's access file, a kubeconfig for the hub's
//!   `/k8s-proxy/<agent>`, a long-running kubectl read line by line.
//! - [`oidc`]: a test OIDC issuer over HTTPS (discovery, a JWKS whose fetches it counts) and ID
//!   tokens shaped like GitHub Actions' and GitLab CI's, signed or forged.
//! - [`browser`]: a real headless Chromium through its chromedriver (W3C WebDriver), for the tests
//!   of the hub's web pages: elements found and clicked, console errors read, screenshots saved.
//!
//! Working with them:
//! - [`kubectl`]: the real `kubectl`, pointed at a control plane; polling it for an expected output.
//! - [`gitrepo`]: a `GitRepository` through kubectl: the CRD installed, waits on its conditions and
//!   revisions, its status read, its spec patched, a reconcile requested.
//! - [`fixtures`]: what the tests apply and commit: Namespaces, ConfigMaps, CRDs, a small app,
//!   `GitRepository` objects and their Secrets, unguessable values.
//! - [`wait`]: waiting with a deadline on a probe, for the harness and the tests alike; never a bare sleep.
//! - [`http`]: plain GETs to the processes' loopback endpoints, and samples read from `/metrics`.
//! - [`tls`]: test certificates: a CA of its own per server or control plane, and what it signs.
//! - [`tool`]: one-shot runs of command-line tools (git, kubectl, helm, openssl, curl), stdin fed,
//!   a failure told with the command line and its output.
//! - [`process`]: child processes that end with the test binary, even when it panics or is killed.
//! - [`workspace`]: where the workspace is, and the binaries built from it.

pub mod api_front;
pub mod browser;
pub mod ci;
pub mod cluster;
pub mod controlplane;
pub mod fixtures;
pub mod flux;
pub mod git_server;
pub mod gitrepo;
pub mod haproxy;
pub mod http;
pub mod hub;
pub mod kubectl;
pub mod netns;
pub mod oidc;
pub mod operator;
pub mod process;
pub mod proxy;
pub mod redis;
pub mod render_tools;
pub mod tampering_hub;
pub mod tls;
pub mod tool;
pub mod wait;
pub mod workspace;
