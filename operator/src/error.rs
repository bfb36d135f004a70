//! How the reconcile sorts a stage's error: its metric category, what will fix it, and the reason
//! the `Ready` condition gives. Every stage's error type implements [`StageError`].

use crate::crd::reason;

/// What will fix an error, which decides when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The spec is wrong: wait for it to change (`Stalled`).
    Stalled,
    /// The revision is wrong: try again at the interval (a new commit fixes it).
    Revision,
    /// Anything else: try again soon, backing off.
    Transient,
    /// Another `GitRepository` must become Ready first: try again when it does (it wakes this
    /// one), and now and then meanwhile.
    Waiting,
}

/// A stage's error, as the controller sorts it.
pub trait StageError: std::error::Error {
    /// A short fixed name (snake_case), the `category` label of `tether_reconcile_errors_total`;
    /// each one is listed in `docs/metrics.md`.
    fn category(&self) -> &'static str;
    /// What will fix it.
    fn class(&self) -> ErrorClass {
        ErrorClass::Transient
    }
    /// The `Ready=False` reason (one of [`crate::crd::reason`]).
    fn reason(&self) -> &'static str {
        reason::FAILED
    }
}
