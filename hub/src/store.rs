//! The embedded store: the latest push per repository (and per repository and ref, for the fleet
//! view), and the fleet view's record of each agent, kept in a `redb` file under the data dir so that
//! catch-up and the fleet survive a restart.
//!
//! Records are keyed on the repository's [`RepoKey`] (letter case folded), so an agent watching
//! `Ops/Config` catches up on a push recorded for `ops/config`; each record keeps the id as the
//! webhook wrote it. Calls are blocking (a write commits to disk); async callers go through
//! `spawn_blocking`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, ReadableDatabase, ReadableTable, Table, TableDefinition, TableHandle};
use tether_protocol::{RepoId, RepoState};

/// repo key (the id folded to lower case) → JSON of [`RepoState`].
const LATEST: TableDefinition<&str, &[u8]> = TableDefinition::new("latest_push_v2");
/// repo id as written → JSON of [`RepoState`]: what hubs before the folded key wrote. Moved into
/// [`LATEST`] on open.
const LATEST_V1: TableDefinition<&str, &[u8]> = TableDefinition::new("latest_push_v1");

/// repo key, a NUL, the ref → JSON of [`RepoState`]: the latest push per ref, which the fleet view
/// compares each cluster's applied revision with.
const LATEST_REF: TableDefinition<&str, &[u8]> = TableDefinition::new("latest_push_ref_v1");
/// agent name → JSON of the fleet view's record of that agent.
const FLEET: TableDefinition<&str, &[u8]> = TableDefinition::new("fleet_agents_v1");

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
        let has_v1 = txn
            .list_tables()
            .map_err(|e| io("read")(e.into()))?
            .any(|t| t.name() == LATEST_V1.name());
        {
            let mut table = txn.open_table(LATEST).map_err(|e| io("write")(e.into()))?;
            if has_v1 {
                migrate_v1(&txn, &mut table)?;
            }
            txn.open_table(LATEST_REF)
                .map_err(|e| io("write")(e.into()))?;
            txn.open_table(FLEET).map_err(|e| io("write")(e.into()))?;
        }
        if has_v1 {
            txn.delete_table(LATEST_V1)
                .map_err(|e| io("write")(e.into()))?;
        }
        txn.commit().map_err(|e| io("write")(e.into()))?;
        Ok(Store { db: Arc::new(db) })
    }

    /// Record the latest push for its repository, unless a later one is already recorded.
    pub fn put(&self, state: &RepoState) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| io("write")(e.into()))?;
        {
            let mut table = txn.open_table(LATEST).map_err(|e| io("write")(e.into()))?;
            put_in(&mut table, state.repo.key().as_str(), state)?;
            let mut by_ref = txn
                .open_table(LATEST_REF)
                .map_err(|e| io("write")(e.into()))?;
            put_in(&mut by_ref, &ref_key(state), state)?;
        }
        txn.commit().map_err(|e| io("write")(e.into()))?;
        Ok(())
    }

    /// The latest push recorded for every repository and ref.
    pub fn latest_per_ref(&self) -> Result<Vec<RepoState>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| io("read")(e.into()))?;
        let table = txn
            .open_table(LATEST_REF)
            .map_err(|e| io("read")(e.into()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| io("read")(e.into()))? {
            let (key, value) = entry.map_err(|e| io("read")(e.into()))?;
            let state =
                serde_json::from_slice(value.value()).map_err(|source| StoreError::Corrupt {
                    repo: key.value().replace('\0', " "),
                    source,
                })?;
            out.push(state);
        }
        Ok(out)
    }

    /// Every agent's fleet record as stored: name → JSON.
    pub fn fleet_agents(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| io("read")(e.into()))?;
        let table = txn.open_table(FLEET).map_err(|e| io("read")(e.into()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| io("read")(e.into()))? {
            let (key, value) = entry.map_err(|e| io("read")(e.into()))?;
            out.push((key.value().to_string(), value.value().to_vec()));
        }
        Ok(out)
    }

    /// Write agents' fleet records (name → JSON) in one transaction; `None` deletes one.
    pub fn put_fleet_agents(&self, agents: &[(String, Option<Vec<u8>>)]) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| io("write")(e.into()))?;
        {
            let mut table = txn.open_table(FLEET).map_err(|e| io("write")(e.into()))?;
            for (name, value) in agents {
                match value {
                    Some(bytes) => table.insert(name.as_str(), bytes.as_slice()),
                    None => table.remove(name.as_str()).map(|_| None),
                }
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
        let keys: std::collections::BTreeSet<_> = repos.iter().map(RepoId::key).collect();
        for key in &keys {
            if let Some(v) = table.get(key.as_str()).map_err(|e| io("read")(e.into()))? {
                let state =
                    serde_json::from_slice(v.value()).map_err(|source| StoreError::Corrupt {
                        repo: key.to_string(),
                        source,
                    })?;
                out.push(state);
            }
        }
        Ok(out)
    }
}

/// The key of a push in [`LATEST_REF`].
fn ref_key(state: &RepoState) -> String {
    format!("{}\0{}", state.repo.key().as_str(), state.git_ref)
}

/// Record `state` in `table` under `key`, unless a later push is already recorded there.
fn put_in(
    table: &mut Table<'_, &str, &[u8]>,
    key: &str,
    state: &RepoState,
) -> Result<(), StoreError> {
    let newer_exists = match table.get(key).map_err(|e| io("read")(e.into()))? {
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
            .insert(key, bytes.as_slice())
            .map_err(|e| io("write")(e.into()))?;
    }
    Ok(())
}

/// Move the records of a store written before ids were keyed folded; where two spellings of one
/// repository were recorded, the later push wins. A record that does not decode is dropped: it is
/// a catch-up hint, and the interval covers what it would have said.
fn migrate_v1(
    txn: &redb::WriteTransaction,
    into: &mut Table<'_, &str, &[u8]>,
) -> Result<(), StoreError> {
    let old = txn
        .open_table(LATEST_V1)
        .map_err(|e| io("read")(e.into()))?;
    let mut states = Vec::new();
    for entry in old.iter().map_err(|e| io("read")(e.into()))? {
        let (_, value) = entry.map_err(|e| io("read")(e.into()))?;
        if let Ok(state) = serde_json::from_slice::<RepoState>(value.value()) {
            states.push(state);
        }
    }
    states
        .iter()
        .try_for_each(|s| put_in(into, s.repo.key().as_str(), s))
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

    #[test]
    fn the_latest_push_is_kept_per_ref_and_fleet_records_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut main = state("h/a", "m1", 10);
        store.put(&main).unwrap();
        let mut dev = state("h/a", "d1", 20);
        dev.git_ref = "refs/heads/dev".into();
        store.put(&dev).unwrap();
        main.sha = "m0".into();
        main.received_at = 5;
        store.put(&main).unwrap();
        let mut per_ref = store.latest_per_ref().unwrap();
        per_ref.sort_by(|a, b| a.git_ref.cmp(&b.git_ref));
        assert_eq!(per_ref, vec![dev.clone(), state("h/a", "m1", 10)]);
        // The catch-up still knows one latest push per repository.
        let repos = [tether_protocol::normalize("h/a").unwrap()];
        assert_eq!(store.latest(&repos).unwrap(), vec![dev]);

        store
            .put_fleet_agents(&[
                ("a".into(), Some(b"{}".to_vec())),
                ("b".into(), Some(b"[]".to_vec())),
            ])
            .unwrap();
        store.put_fleet_agents(&[("b".into(), None)]).unwrap();
        assert_eq!(
            store.fleet_agents().unwrap(),
            vec![("a".to_string(), b"{}".to_vec())]
        );
    }

    #[test]
    fn catch_up_finds_a_push_recorded_in_other_letter_case() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.put(&state("h/ops/config", "s1", 10)).unwrap();
        store.put(&state("h/Ops/Config", "s0", 5)).unwrap();
        let watched = [
            tether_protocol::normalize("h/Ops/Config").unwrap(),
            tether_protocol::normalize("h/OPS/config").unwrap(),
        ];
        // One record for both spellings, the later push, in the webhook's spelling.
        assert_eq!(
            store.latest(&watched).unwrap(),
            vec![state("h/ops/config", "s1", 10)]
        );
    }

    #[test]
    fn a_store_keyed_as_written_is_moved_to_folded_keys_on_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let db = Database::create(dir.path().join(FILE_NAME)).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut t = txn.open_table(LATEST_V1).unwrap();
                for s in [
                    state("h/Ops/Config", "new", 20),
                    state("h/ops/config", "old", 10),
                    state("h/b", "b", 1),
                ] {
                    let bytes = serde_json::to_vec(&s).unwrap();
                    t.insert(s.repo.as_str(), bytes.as_slice()).unwrap();
                }
                t.insert("h/broken", b"not json".as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let watched = [
            tether_protocol::normalize("h/ops/CONFIG").unwrap(),
            tether_protocol::normalize("h/b").unwrap(),
        ];
        let mut got = store.latest(&watched).unwrap();
        got.sort_by(|a, b| a.repo.cmp(&b.repo));
        assert_eq!(
            got,
            vec![state("h/Ops/Config", "new", 20), state("h/b", "b", 1)]
        );
        drop(store);
        // The old table is gone, and opening again changes nothing.
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.latest(&watched).unwrap().len(), 2);
        let txn = store.db.begin_read().unwrap();
        assert!(
            !txn.list_tables()
                .unwrap()
                .any(|t| t.name() == LATEST_V1.name())
        );
    }
}
