//! Tether's end-to-end harness: real parts, started by the tests themselves.
//!
//! - [`controlplane`]: etcd, kube-apiserver and kube-controller-manager on loopback ports, with fresh
//!   certificates and an admin kubeconfig, like controller-runtime's envtest.
//! - [`cluster`]: the one control plane a test binary shares, and a fresh namespace per test.
//! - [`git_server`]: real git servers (HTTPS via nginx and `git http-backend`, SSH via `sshd`, `file://`)
//!   and [`git_server::Upstream`], a repository the tests commit to and push with the real `git` CLI.
//! - [`hub`]: the real `tether-hub` with a generated config, stopped, restarted and frozen at will, and
//!   `post-receive` hooks that send it signed GitHub, GitLab and Gitea push webhooks.
//! - [`kubectl`]: the real `kubectl`, pointed at that control plane.
//! - [`netns`]: a network namespace that lets nothing in, with relays out to the host's services.
//! - [`operator`]: the real `tether-operator` as a process, and kubectl helpers around `GitRepository`.
//! - [`process`]: child processes that end with the test binary, even when it panics or is killed.
//! - [`proxy`]: a real HTTP `CONNECT` proxy (`tinyproxy`) that logs what went through it.
//! - [`tls`]: test certificates: a CA of its own per server or control plane, and what it signs.
//! - [`tool`]: one-shot runs of command-line tools (git, kubectl, helm, openssl, curl), stdin fed,
//!   a failure told with the command line and its output.
//! - [`wait`]: waiting with a deadline on a probe, for the harness and the tests alike; never a bare sleep.

pub mod cluster;
pub mod controlplane;
pub mod git_server;
pub mod hub;
pub mod kubectl;
pub mod netns;
pub mod operator;
pub mod process;
pub mod proxy;
pub mod tls;
pub mod tool;
pub mod wait;

/// The workspace root (the folder of the top `Cargo.toml`).
pub fn workspace_root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}
