//! Why a git operation failed, sorted for the controller through [`StageError`].

use std::path::PathBuf;
use std::time::Duration;

use super::{CredentialsError, HostKeyError};
use crate::crd::reason;
use crate::error::{ErrorClass, StageError};
use crate::plan::LimitExceeded;

/// Why a git operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// The Secret cannot be used as credentials.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The remote refused the credentials, or asked for some and there were none.
    #[error("authentication to {url} failed: {message}")]
    AuthFailed {
        /// The remote (user info removed).
        url: String,
        /// What happened.
        message: String,
    },
    /// The SSH server's host key is not trusted.
    #[error(transparent)]
    HostKey(#[from] HostKeyError),
    /// The HTTPS server's certificate is not trusted.
    #[error("TLS certificate of {url} is not trusted: {message}")]
    Certificate {
        /// The remote (user info removed).
        url: String,
        /// What is wrong with it.
        message: String,
    },
    /// The branch, tag or semver range matches nothing on the remote.
    #[error("{what} not found on {url}")]
    RefNotFound {
        /// The remote (user info removed).
        url: String,
        /// What was looked for, e.g. `branch main`.
        what: String,
    },
    /// The semver range does not parse.
    #[error("spec.ref.semver: invalid range {range:?}: {source}")]
    InvalidSemver {
        /// The range.
        range: String,
        /// What the parser said.
        #[source]
        source: semver::Error,
    },
    /// The remote could not be reached or answered with an error.
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        /// The remote (user info removed).
        url: String,
        /// The error from libgit2.
        #[source]
        source: git2::Error,
    },
    /// The operation took longer than `spec.timeout`.
    #[error("git operation on {url} timed out after {}", humanize(*.timeout))]
    Timeout {
        /// The remote (user info removed).
        url: String,
        /// The limit.
        timeout: Duration,
    },
    /// An earlier operation on the repository overran its timeout and has not ended yet.
    #[error(
        "a git operation on {url} that timed out earlier has not ended yet (the remote keeps its \
         connection open without answering); nothing new starts on it until that one ends"
    )]
    StillRunning {
        /// The remote (user info removed).
        url: String,
    },
    /// The commit is not on the remote (or not reachable from what it serves).
    #[error("commit {sha} not found on {url}")]
    CommitNotFound {
        /// The remote (user info removed).
        url: String,
        /// The commit.
        sha: String,
    },
    /// `spec.path` is not a folder in the commit.
    #[error("path {path:?} not found in commit {sha}")]
    PathNotFound {
        /// The path.
        path: String,
        /// The commit.
        sha: String,
    },
    /// The local mirror could not be opened, created or read.
    #[error("git cache at {}: {source}", .path.display())]
    Cache {
        /// The mirror's folder.
        path: PathBuf,
        /// The error from libgit2.
        #[source]
        source: git2::Error,
    },
    /// The revision is over one of the operator's content limits.
    #[error(transparent)]
    Limit(#[from] LimitExceeded),
    /// A symbolic link in the revision points outside the repository; the tools that render a
    /// checkout would follow it.
    #[error(
        "{file} is a symbolic link to {target:?}, outside the repository: a rendered checkout \
         holds only links that stay inside it"
    )]
    LinkOutside {
        /// The link, from the repository root.
        file: String,
        /// Where it points.
        target: String,
    },
    /// The blocking task died (a panic in libgit2 glue).
    #[error("git task failed: {0}")]
    Task(String),
}

impl StageError for GitError {
    fn category(&self) -> &'static str {
        match self {
            GitError::Credentials(e) => e.category(),
            GitError::AuthFailed { .. } => "auth_failed",
            GitError::HostKey(_) => "host_key_unknown",
            GitError::Certificate { .. } => "certificate_untrusted",
            GitError::RefNotFound { .. } | GitError::CommitNotFound { .. } => "ref_not_found",
            GitError::InvalidSemver { .. } => "invalid_spec",
            GitError::Unreachable { .. } => "git_unreachable",
            GitError::Timeout { .. } | GitError::StillRunning { .. } => "git_timeout",
            GitError::PathNotFound { .. } => "path_not_found",
            GitError::Limit(e) => e.category(),
            GitError::LinkOutside { .. } => "render_failed",
            GitError::Cache { .. } | GitError::Task(_) => "git_internal",
        }
    }

    /// Every git error but a content limit is retried with backoff: a missing ref or path may
    /// appear with the next push, and a refused credential with the next edit of the Secret. A
    /// revision over a content limit waits for the next commit.
    fn class(&self) -> ErrorClass {
        match self {
            GitError::Limit(e) => e.class(),
            GitError::LinkOutside { .. } => ErrorClass::Revision,
            _ => ErrorClass::Transient,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            GitError::Credentials(_) | GitError::AuthFailed { .. } | GitError::HostKey(_) => {
                reason::AUTHENTICATION_FAILED
            }
            GitError::Limit(e) => e.reason(),
            GitError::LinkOutside { .. } => reason::RENDER_FAILED,
            _ => reason::GIT_OPERATION_FAILED,
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_and_host_keys_are_authentication_failures() {
        let url = || "https://h.io/r".to_string();
        let auth = GitError::AuthFailed {
            url: url(),
            message: "refused".into(),
        };
        let host_key = GitError::HostKey(HostKeyError::Unknown {
            host: "h.io".into(),
            secret: "ns/s".into(),
        });
        let credentials = GitError::Credentials(CredentialsError {
            secret: "ns/s".into(),
            problem: "no key".into(),
        });
        for e in [&auth, &host_key, &credentials] {
            assert_eq!(e.reason(), reason::AUTHENTICATION_FAILED, "{e}");
        }
        let unreachable = GitError::Timeout {
            url: url(),
            timeout: Duration::from_secs(1),
        };
        let missing = GitError::RefNotFound {
            url: url(),
            what: "branch main".into(),
        };
        for e in [&unreachable, &missing] {
            assert_eq!(e.reason(), reason::GIT_OPERATION_FAILED, "{e}");
        }
        for e in [&auth, &host_key, &credentials, &unreachable, &missing] {
            assert_eq!(e.class(), ErrorClass::Transient, "{e}");
        }
        assert_eq!(
            unreachable.to_string(),
            "git operation on https://h.io/r timed out after 1s"
        );
    }
}
