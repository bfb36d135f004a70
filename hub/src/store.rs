//! The embedded store: the latest push per repository, kept in a `redb` file under the data dir so that
//! catch-up survives a restart.
//!
//! Calls are blocking (a write commits to disk); async callers go through `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tether_protocol::{RepoId, RepoState};

/// repo id → JSON of [`RepoState`].
const LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("latest_push_v1");

/// The file name under the data dir.
pub const FILE_NAME: &str = "hub.redb";

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data dir could not be created.
    #[error("cannot create data dir {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The database could not be opened (held by another hub? corrupted?).
    #[error("cannot open store {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The database error.
        #[source]
        source: redb::Error,
    },
    /// A read or write failed.
    #[error("store {operation} failed: {source}")]
    Io {
        /// `read` or `write`.
        operation: &'static str,
        /// The database error.
        #[source]
        source: redb::Error,
    },
    /// A stored record could not be decoded.
    #[error("store record for {repo} is corrupt: {source}")]
    Corrupt {
        /// The repository key.
        repo: String,
        /// The decoding error.
        #[source]
        source: serde_json::Error,
    },
}

impl StoreError {
    /// A short fixed name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            StoreError::CreateDir { .. } => "store_create_dir",
            StoreError::Open { .. } => "store_open",
            StoreError::Io { .. } => "store_io",
            StoreError::Corrupt { .. } => "store_corrupt",
        }
    }
}

/// The latest push per repository. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    db: Arc<Database>,
}

fn io(operation: &'static str) -> impl Fn(redb::Error) -> StoreError {
    move |source| StoreError::Io { operation, source }
}

impl Store {
    /// Open (creating if needed) the store under `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(FILE_NAME);
        let db = Database::create(&path).map_err(|e| StoreError::Open {
            path: path.clone(),
            source: e.into(),
        })?;
        // Create the table so that reads never meet a missing one.
        let txn = db.begin_write().map_err(|e| io("write")(e.into()))?;
        txn.open_table(LATEST).map_err(|e| io("write")(e.into()))?;
        txn.commit().map_err(|e| io("write")(e.into()))?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Record the latest push for its repository, unless a later one is already recorded.
    pub fn put(&self, state: &RepoState) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| io("write")(e.into()))?;
        {
            let mut table = txn.open_table(LATEST).map_err(|e| io("write")(e.into()))?;
            let newer_exists = match table
                .get(state.repo.as_str())
                .map_err(|e| io("read")(e.into()))?
            {
                Some(old) => serde_json::from_slice::<RepoState>(old.value())
                    .map(|old| old.received_at > state.received_at)
                    .unwrap_or(false),
                None => false,
            };
            if !newer_exists {
                let bytes = serde_json::to_vec(state).map_err(|source| StoreError::Corrupt {
                    repo: state.repo.to_string(),
                    source,
                })?;
                table
                    .insert(state.repo.as_str(), bytes.as_slice())
                    .map_err(|e| io("write")(e.into()))?;
            }
        }
        txn.commit().map_err(|e| io("write")(e.into()))?;
        Ok(())
    }

    /// The latest push recorded for each of `repos` that has one.
    pub fn latest(&self, repos: &[RepoId]) -> Result<Vec<RepoState>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| io("read")(e.into()))?;
        let table = txn.open_table(LATEST).map_err(|e| io("read")(e.into()))?;
        let mut out = Vec::new();
        for repo in repos {
            if let Some(v) = table.get(repo.as_str()).map_err(|e| io("read")(e.into()))? {
                let state =
                    serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                        repo: repo.to_string(),
                        source,
                    })?;
                out.push(state);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn state(repo: &str, sha: &str, at: u64) -> RepoState {
        RepoState {
            repo: tether_protocol::normalize(repo).unwrap(),
            git_ref: "refs/heads/main".into(),
            sha: sha.into(),
            received_at: at,
        }
    }

    #[test]
    fn latest_survives_reopening_and_older_pushes_do_not_win() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put(&state("h/a", "a1", 10)).unwrap();
            store.put(&state("h/a", "a2", 20)).unwrap();
            store.put(&state("h/a", "a0", 5)).unwrap();
            store.put(&state("h/b", "b1", 10)).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let repos = [
            tether_protocol::normalize("h/a").unwrap(),
            tether_protocol::normalize("h/unknown").unwrap(),
        ];
        let got = store.latest(&repos).unwrap();
        assert_eq!(got, vec![state("h/a", "a2", 20)]);
    }
}
