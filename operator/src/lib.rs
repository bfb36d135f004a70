//! Tether's operator: makes the cluster match the manifests in the Git repositories that
//! `GitRepository` resources name.
//!
//! - [`cli`]: the flags and the process's life, from start-up to graceful shutdown.
//! - [`controller`]: the reconcile pipeline (resolve, fetch, plan, apply, prune, status) and its
//!   error policy.
//! - [`triggers`]: push notices from the hub: which objects follow which repository, the watch set.
//! - [`apply`]: server-side apply, dry-run first, and pruning, against the API server.
//! - [`discovery`]: the kinds the API server serves, shared and refreshed on demand.
//! - [`drift`]: what the last apply of each `GitRepository` left, and metadata watches that tell
//!   whether it changed, so that an unchanged revision is not applied again for nothing.
//! - [`health`]: the wait for applied objects to become ready (`spec.wait`).
//! - [`leader`]: Lease-based leader election.
//! - [`metrics`]: the Prometheus registry and the admin server.
//! - [`ci`]: CI access through the hub's tunnel: the access file, token authentication,
//!   impersonated forwarding to the API server, the audit line.
//! - [`hub`]: the hub client: the outbound websocket over which push notices arrive (config, dial,
//!   TLS, the proxy tunnel, the session, its errors and metrics), started from the flags.
//! - [`net`]: what outbound connections share: the proxy settings (`HTTPS_PROXY`, `NO_PROXY`), read
//!   once for git and the hub client, and `host:port` endpoints.
//! - [`crd`]: the `GitRepository` resource, its status, and the names stamped on managed objects.
//! - [`duration`]: Kubernetes-style durations for `spec.interval` and `spec.timeout`.
//! - [`error`]: how a stage's error is sorted (category, class, reason).
//! - [`fleet`]: the per-`GitRepository` records reported to the hub's fleet view
//!   (`--hub-report-status`), made from each object's status.
//! - [`git`]: resolve a ref on a remote, fetch into a cache of bare mirrors, read a commit's tree
//!   (errors, remote callbacks, resolve, mirror, credentials, known_hosts).
//! - [`plan`]: pure: turn a commit's manifests into ordered, labelled objects and what to prune.

pub mod apply;
pub mod ci;
pub mod cli;
pub mod controller;
pub mod crd;
pub mod discovery;
pub mod drift;
pub mod duration;
pub mod error;
pub mod fleet;
pub mod git;
pub mod health;
pub mod hub;
pub mod leader;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod render;
pub mod triggers;
