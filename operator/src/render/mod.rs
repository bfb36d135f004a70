//! Rendering: how the folder at `spec.path` becomes manifests. Plain files as they are, or the
//! output of the real `kustomize build` or `helm template`, run as sealed subprocesses
//! ([`exec`]) on a private checkout of the revision; SOPS-encrypted files decrypted by the real
//! `sops` first ([`sops`]).
//!
//! - [`kustomize`]: the checks before a build (everything inside the repository, nothing
//!   fetched) and its arguments.
//! - [`helm`]: the release, values files and arguments of `helm template`, and its output split
//!   by template.
//! - [`sops`]: which files are encrypted, and decrypting them.
//! - [`exec`]: one run of a tool, with its time and output limits.
//!
//! A render failure is a bad revision ([`RenderError`]): nothing of it is applied.

pub mod exec;
pub mod helm;
pub mod kustomize;
pub mod sops;

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use crate::crd::{RenderMode, reason};
use crate::error::{ErrorClass, StageError};

/// The most of a tool's error output a status message carries.
pub const MAX_MESSAGE: usize = 2_000;

/// Why a revision could not be rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Tether's own checks refused the input (a remote base, a path outside the repository...).
    #[error("{0}")]
    Refused(String),
    /// The tool is not installed where the operator looks for it.
    #[error(
        "{tool} is needed to render this revision but the operator has none at {}: install it \
         in the operator's image, or point {flag} at it",
        .path.display()
    )]
    ToolMissing {
        /// `kustomize`, `helm` or `sops`.
        tool: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// The flag that names it.
        flag: &'static str,
    },
    /// The tool failed; its message, cleaned.
    #[error("{what}: {message}")]
    Tool {
        /// The command, e.g. `kustomize build clusters/dev`.
        what: String,
        /// What it said.
        message: String,
    },
    /// The tool ran past the spec's timeout.
    #[error("{what} was still running after {}s (spec.timeout) and was stopped", .after.as_secs_f64())]
    Timeout {
        /// The command.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The tool printed more than the operator's limit for one revision.
    #[error(
        "{what} printed more than the operator's limit of {limit} bytes for one revision; split \
         the repository, or raise the limit (--max-revision-bytes, TETHER_MAX_REVISION_BYTES)"
    )]
    TooLarge {
        /// The command.
        what: String,
        /// The limit.
        limit: u64,
    },
    /// An encrypted file, with no `spec.decryption` to decrypt it.
    #[error(
        "{file} is encrypted with SOPS, and spec.decryption is not set: set it to \
         {{provider: sops, secretRef: {{name: <a Secret with *.agekey entries>}}}}"
    )]
    Encrypted {
        /// The file.
        file: String,
    },
    /// sops could not decrypt a file with the keys given.
    #[error("decrypting {file} with the age keys of Secret {secret}: {message}")]
    Decrypt {
        /// The file.
        file: String,
        /// The Secret, `namespace/name`.
        secret: String,
        /// What sops said.
        message: String,
    },
    /// The decryption Secret has no keys.
    #[error(
        "Secret {secret} (spec.decryption.secretRef) has no *.agekey entry: add one holding an \
         age private key (AGE-SECRET-KEY-1...)"
    )]
    NoKeys {
        /// The Secret, `namespace/name`.
        secret: String,
    },
    /// The private folder of a render could not be made or written.
    #[error("the render folder {}: {source}", .path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl StageError for RenderError {
    fn category(&self) -> &'static str {
        match self {
            RenderError::Encrypted { .. }
            | RenderError::Decrypt { .. }
            | RenderError::NoKeys { .. } => "decryption_failed",
            RenderError::Io { .. } | RenderError::ToolMissing { .. } => "render_internal",
            _ => "render_failed",
        }
    }

    /// What the repository decides waits for its next commit; what the operator's setup or a
    /// Secret decides is retried with backoff.
    fn class(&self) -> ErrorClass {
        match self {
            RenderError::Refused(_)
            | RenderError::Tool { .. }
            | RenderError::Timeout { .. }
            | RenderError::TooLarge { .. }
            | RenderError::Encrypted { .. } => ErrorClass::Revision,
            RenderError::Decrypt { .. }
            | RenderError::NoKeys { .. }
            | RenderError::ToolMissing { .. }
            | RenderError::Io { .. } => ErrorClass::Transient,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            RenderError::Encrypted { .. }
            | RenderError::Decrypt { .. }
            | RenderError::NoKeys { .. } => reason::DECRYPTION_FAILED,
            _ => reason::RENDER_FAILED,
        }
    }
}

/// Where the operator finds its tools and keeps its renders (`--kustomize`, `--helm`, `--sops`,
/// `--render-dir`, `--allow-remote-bases`).
#[derive(Debug, Clone)]
pub struct Tools {
    pub kustomize: PathBuf,
    pub helm: PathBuf,
    pub sops: PathBuf,
    /// The folder under which each render gets a private folder, removed after it.
    pub render_dir: PathBuf,
    /// Let kustomize fetch remote bases (with the operator's PATH, for git, and proxy).
    pub allow_remote_bases: bool,
    /// How many renders (checkout, decryption and tool) run at once; the others wait their turn.
    pub slots: std::sync::Arc<tokio::sync::Semaphore>,
}

/// How many renders run at once by default (`--max-concurrent-renders`): each kustomize or helm
/// process holds some 20 MiB while it runs.
pub const DEFAULT_MAX_CONCURRENT_RENDERS: usize = 4;

impl Tools {
    /// `name` as given when it holds a `/`, else found on the operator's `PATH`, else beside the
    /// operator's own executable; as given when found nowhere (the render then says so).
    pub fn locate(name: &str) -> PathBuf {
        if name.contains('/') {
            return PathBuf::from(name);
        }
        let on_path = std::env::var_os("PATH")
            .into_iter()
            .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .map(|dir| dir.join(name))
            .find(|p| p.is_file());
        let beside = || {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(|d| d.join(name)))
                .filter(|p| p.is_file())
        };
        on_path
            .or_else(beside)
            .unwrap_or_else(|| PathBuf::from(name))
    }

    /// The path of `tool`, or why it cannot run.
    pub fn require(&self, tool: &'static str) -> Result<&Path, RenderError> {
        let (path, flag) = match tool {
            "kustomize" => (&self.kustomize, "--kustomize (TETHER_KUSTOMIZE)"),
            "helm" => (&self.helm, "--helm (TETHER_HELM)"),
            _ => (&self.sops, "--sops (TETHER_SOPS)"),
        };
        if path.is_file() {
            Ok(path)
        } else {
            Err(RenderError::ToolMissing {
                tool,
                path: path.clone(),
                flag,
            })
        }
    }

    /// Removes whatever earlier runs left in the render folder (a render killed with the
    /// process), and makes the folder, private to the operator.
    pub fn prepare(&self) -> std::io::Result<()> {
        if self.render_dir.exists() {
            for entry in std::fs::read_dir(&self.render_dir)?.flatten() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        self.make_dir()
    }

    /// A new private folder for one render, removed when dropped: `src/` for the checkout and
    /// `home/` for the tools.
    pub fn scratch(&self) -> Result<tempfile::TempDir, RenderError> {
        let io = |source| RenderError::Io {
            path: self.render_dir.clone(),
            source,
        };
        self.make_dir().map_err(io)?;
        let dir = tempfile::Builder::new()
            .prefix("render-")
            .tempdir_in(&self.render_dir)
            .map_err(io)?;
        for sub in ["src", "home"] {
            std::fs::create_dir(dir.path().join(sub)).map_err(io)?;
        }
        Ok(dir)
    }

    fn make_dir(&self) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.render_dir)
    }
}

/// The render a folder calls for, from the names directly inside it: a kustomization file means
/// kustomize, a `Chart.yaml` helm, anything else plain.
pub fn detect(names: &[String]) -> RenderMode {
    if names
        .iter()
        .any(|n| kustomize::FILE_NAMES.contains(&n.as_str()))
    {
        RenderMode::Kustomize
    } else if names.iter().any(|n| n == "Chart.yaml") {
        RenderMode::Helm
    } else {
        RenderMode::Plain
    }
}

/// `path` (from the repository root) with `.` and `..` worked out, or `None` when it climbs
/// above the root or is absolute.
pub fn inside_repository(path: &str) -> Option<String> {
    let mut parts: Vec<&str> = Vec::new();
    for part in Path::new(path).components() {
        match part {
            Component::Normal(p) => parts.push(p.to_str()?),
            Component::CurDir => {}
            Component::ParentDir => {
                parts.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts.join("/"))
}

/// A tool's failure as a [`RenderError`] for the command `what`.
pub fn failure(what: String, failure: exec::ExecFailure, scratch: &Path) -> RenderError {
    match failure {
        exec::ExecFailure::Timeout(after) => RenderError::Timeout { what, after },
        exec::ExecFailure::TooLarge(limit) => RenderError::TooLarge { what, limit },
        exec::ExecFailure::Exit { stderr, code } => {
            let mut message = exec::clean(&stderr, scratch, MAX_MESSAGE);
            if message.is_empty() {
                message = format!(
                    "exited with {}",
                    code.map_or("a signal".into(), |c| c.to_string())
                );
            }
            if message.contains("plugin") {
                message.push_str(" (Tether runs no exec or KRM-function plugins)");
            }
            RenderError::Tool { what, message }
        }
        spawn @ exec::ExecFailure::Spawn { .. } => RenderError::Tool {
            what,
            message: spawn.to_string(),
        },
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_folder_tells_the_render() {
        let names = |n: &[&str]| n.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            detect(&names(&["kustomization.yaml", "a.yaml"])),
            RenderMode::Kustomize
        );
        assert_eq!(detect(&names(&["Kustomization"])), RenderMode::Kustomize);
        assert_eq!(
            detect(&names(&["Chart.yaml", "templates"])),
            RenderMode::Helm
        );
        assert_eq!(
            detect(&names(&["deploy.yaml", "chart.yaml"])),
            RenderMode::Plain
        );
    }

    #[test]
    fn paths_are_worked_out_within_the_root() {
        assert_eq!(inside_repository("a/./b/../c").as_deref(), Some("a/c"));
        assert_eq!(inside_repository("a/../..").as_deref(), None);
        assert_eq!(inside_repository("/etc").as_deref(), None);
        assert_eq!(inside_repository("").as_deref(), Some(""));
    }

    #[test]
    fn every_error_the_repository_causes_waits_for_the_next_commit() {
        let refused = RenderError::Refused("x".into());
        assert_eq!(refused.class(), ErrorClass::Revision);
        assert_eq!(refused.reason(), reason::RENDER_FAILED);
        let keys = RenderError::NoKeys {
            secret: "a/b".into(),
        };
        assert_eq!(keys.class(), ErrorClass::Transient);
        assert_eq!(keys.reason(), reason::DECRYPTION_FAILED);
    }
}
