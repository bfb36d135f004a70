//! Why a reconcile failed: each stage's error, sorted through [`StageError`].

use crate::apply::ApplyError;
use crate::crd::reason;
use crate::error::{ErrorClass, StageError};
use crate::git::GitError;
use crate::health::HealthError;
use crate::plan::PlanError;
use crate::render::RenderError;

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(String),
    /// A Secret the spec names cannot be used; `reason` says for what (`AuthenticationFailed` for
    /// git credentials, `DecryptionFailed` for `spec.decryption`).
    #[error("secret {name}: {message}")]
    Secret {
        name: String,
        message: String,
        reason: &'static str,
    },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Render(#[from] RenderError),
    /// A `spec.dependsOn` entry is not Ready, or the entries form a cycle.
    #[error("{message}")]
    Dependency {
        /// `DependencyNotReady` or `DependencyCycle`.
        reason: &'static str,
        /// Which dependency, and what it waits for.
        message: String,
    },
    #[error(transparent)]
    Apply(Box<ApplyError>),
    #[error(transparent)]
    Health(#[from] HealthError),
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
    /// A bug: the reconcile panicked (the operator's log has the backtrace).
    #[error("internal error, retried: {0}")]
    Panicked(String),
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        Error::Apply(Box::new(e))
    }
}

impl From<crate::discovery::DiscoveryError> for Error {
    fn from(e: crate::discovery::DiscoveryError) -> Self {
        ApplyError::from(e).into()
    }
}

impl StageError for Error {
    fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Secret { .. } => "secret",
            Error::Git(e) => e.category(),
            Error::Plan(e) => e.category(),
            Error::Render(e) => e.category(),
            Error::Dependency { .. } => "dependency_not_ready",
            Error::Apply(e) => e.category(),
            Error::Health(e) => e.category(),
            Error::Kube(_) => "api_error",
            Error::Panicked(_) => "panic",
        }
    }

    fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidSpec(_) => ErrorClass::Stalled,
            Error::Secret { .. } | Error::Kube(_) | Error::Panicked(_) => ErrorClass::Transient,
            Error::Git(e) => e.class(),
            Error::Plan(e) => e.class(),
            Error::Render(e) => e.class(),
            Error::Dependency { .. } => ErrorClass::Waiting,
            Error::Apply(e) => e.class(),
            Error::Health(e) => e.class(),
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => reason::INVALID_SPEC,
            Error::Secret { reason, .. } => reason,
            Error::Git(e) => e.reason(),
            Error::Plan(e) => e.reason(),
            Error::Render(e) => e.reason(),
            Error::Dependency { reason, .. } => reason,
            Error::Apply(e) => e.reason(),
            Error::Health(e) => e.reason(),
            Error::Kube(_) | Error::Panicked(_) => reason::FAILED,
        }
    }
}
