//! Tether's operator: makes the cluster match the manifests in the Git repositories that
//! `GitRepository` resources name.
//!
//! - [`crd`]: the `GitRepository` resource, its status, and the names stamped on managed objects.
//! - [`duration`]: Kubernetes-style durations for `spec.interval` and `spec.timeout`.
//! - [`git`]: resolve a ref on a remote, fetch into a cache of bare mirrors, read a commit's tree.
//! - [`plan`]: pure: turn a commit's manifests into ordered, labelled objects and what to prune.

pub mod crd;
pub mod duration;
pub mod git;
pub mod plan;
