//! The caps on what one revision may make the operator read and hold: bytes per file, bytes in
//! all, manifest files and objects. The git layer checks the sizes before it reads a blob; the
//! plan counts the objects.

use crate::crd::reason;
use crate::error::{ErrorClass, StageError};

use super::Location;

/// The operator's caps on a revision's manifests (`--max-file-bytes`, `--max-revision-bytes`,
/// `--max-objects`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContentLimits {
    /// The largest manifest file read, in bytes.
    pub max_file_bytes: u64,
    /// The most bytes of manifests one revision may hold, over all its files.
    pub max_revision_bytes: u64,
    /// The most manifest files one revision may hold, and the most objects they may define.
    pub max_objects: usize,
}

impl ContentLimits {
    /// 4 MiB per file (an object is at most about 1.5 MiB in etcd), 16 MiB per revision (with
    /// 16 reconciles at once and the values parsed from it, within the chart's 512 MiB), and
    /// 5,000 files and objects.
    pub const DEFAULT: Self = Self {
        max_file_bytes: 4 << 20,
        max_revision_bytes: 16 << 20,
        max_objects: 5_000,
    };
}

impl Default for ContentLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A revision over one of the [`ContentLimits`]: nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitExceeded {
    /// One file is larger than `max_file_bytes`.
    #[error(
        "{file} is {size} bytes, over the operator's limit of {limit} bytes for one manifest \
         file; split it, or raise the limit (--max-file-bytes, TETHER_MAX_FILE_BYTES)"
    )]
    File {
        /// The file, from the repository root.
        file: String,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// The files add up to more than `max_revision_bytes`.
    #[error(
        "the manifests add up to more than the operator's limit of {limit} bytes for one \
         revision (reached at {file}); narrow spec.path or spec.ignore, or raise the limit \
         (--max-revision-bytes, TETHER_MAX_REVISION_BYTES)"
    )]
    Revision {
        /// The file at which the sum went over.
        file: String,
        /// The limit.
        limit: u64,
    },
    /// More manifest files than `max_objects`.
    #[error(
        "more than the operator's limit of {limit} manifest files in one revision (reached at \
         {file}); narrow spec.path or spec.ignore, or raise the limit (--max-objects, \
         TETHER_MAX_OBJECTS)"
    )]
    Files {
        /// The first file over the limit.
        file: String,
        /// The limit.
        limit: usize,
    },
    /// The files define more objects than `max_objects`.
    #[error(
        "{location}: more than the operator's limit of {limit} objects in one revision; \
         narrow spec.path or spec.ignore, or raise the limit (--max-objects, TETHER_MAX_OBJECTS)"
    )]
    Objects {
        /// Where the first object over the limit is.
        location: Location,
        /// The limit.
        limit: usize,
    },
}

impl StageError for LimitExceeded {
    fn category(&self) -> &'static str {
        "content_limit"
    }

    /// The next commit (or a wider limit, which restarts the operator) fixes it.
    fn class(&self) -> ErrorClass {
        ErrorClass::Revision
    }

    fn reason(&self) -> &'static str {
        reason::INVALID_MANIFEST
    }
}
