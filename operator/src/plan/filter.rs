//! Which files of a commit are manifests: under `spec.path`, a `.yaml`, `.yml` or `.json` file,
//! and not matched by `spec.ignore`.

use std::path::Path;

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use super::PlanError;

/// Whether a file is a manifest that the plan reads: under `spec.path`, with a `.yaml`, `.yml`
/// or `.json` extension, and not ignored. The git layer may use this to skip reading blobs.
#[derive(Debug)]
pub struct ManifestFilter {
    prefix: String,
    ignore: Gitignore,
}

impl ManifestFilter {
    /// A filter for `spec.path` and `spec.ignore`.
    pub fn new(path: &str, ignore: &[String]) -> Result<Self, PlanError> {
        let mut builder = GitignoreBuilder::new(".");
        for pattern in ignore {
            builder
                .add_line(None, pattern)
                .map_err(|source| PlanError::IgnorePattern {
                    pattern: pattern.clone(),
                    source,
                })?;
        }
        let ignore = builder.build().map_err(|source| PlanError::IgnorePattern {
            pattern: ignore.join(", "),
            source,
        })?;
        let path = path.trim_matches('/');
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        Ok(Self { prefix, ignore })
    }

    /// Whether `spec.ignore` leaves out the file, or the folder (written with a trailing `/`),
    /// at `path` from the repository root: what a checkout for kustomize or helm leaves out.
    pub fn ignores(&self, path: &str) -> bool {
        let is_dir = path.ends_with('/');
        self.ignore
            .matched_path_or_any_parents(Path::new(path.trim_end_matches('/')), is_dir)
            .is_ignore()
    }

    /// Whether the file at `path` (relative to the repository root) is a manifest to read.
    pub fn accepts(&self, path: &str) -> bool {
        if !path.starts_with(&self.prefix) {
            return false;
        }
        let lower = path.to_ascii_lowercase();
        if !(lower.ends_with(".yaml") || lower.ends_with(".yml") || lower.ends_with(".json")) {
            return false;
        }
        !self
            .ignore
            .matched_path_or_any_parents(Path::new(path), false)
            .is_ignore()
    }
}
