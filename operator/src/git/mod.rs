//! Git, with libgit2 on blocking threads: resolve a ref on a remote without cloning, fetch a
//! commit into a cache of bare mirrors, and read a commit's files straight from its tree.
//!
//! The controller calls the async methods of [`MirrorCache`]; each runs its libgit2 calls under
//! [`tokio::task::spawn_blocking`], a bounded number at once, each bounded by the spec's timeout.
//! The `*_blocking` functions underneath are public for tests and tools.
//!
//! - `error`: [`GitError`], sorted for the controller through [`crate::error::StageError`].
//! - `remote`: how libgit2 talks to a remote (callbacks, proxy, errors told apart).
//! - `resolve`: ls-remote and picking a branch, tag or semver range.
//! - `mirror`: the mirror cache, fetch and tree reading within the content limits; a mirror
//!   left locked or broken by a kill is repaired on its next fetch.
//! - `checkout`: a commit written out as files for kustomize and helm, within the same limits.
//! - `slots`: how many git operations run at once, and what one that overruns its timeout holds.
//! - `http`: smart HTTP on hyper and rustls instead of libgit2's client (each request leaves at
//!   once; reads end at the operation's deadline).
//! - `socket`: libgit2's socket timeouts, which end a thread stuck on a remote that says nothing.
//! - `credentials`, [`known_hosts`]: what a Secret gives, and the checks of the server's identity.

mod checkout;
mod credentials;
mod error;
mod http;
pub mod known_hosts;
mod mirror;
mod remote;
mod resolve;
mod slots;
mod socket;

pub use checkout::{checkout_blocking, link_stays_inside, names_at_blocking};
pub use credentials::{Credentials, CredentialsError, HostKeyError};
pub use error::GitError;
pub use http::register as register_http_transport;
pub use mirror::{
    DEFAULT_MAX_CONCURRENT_GIT, FetchOutcome, MirrorCache, fetch_blocking, fixed_ref,
    read_tree_blocking, resolve_and_fetch_blocking,
};
pub use resolve::{Resolved, highest_matching, ls_remote_blocking, pick, resolve_blocking};
pub use socket::{DEFAULT_SOCKET_TIMEOUT, set_socket_timeouts};

#[cfg(test)]
mod repo_tests;
