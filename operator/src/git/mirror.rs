//! The cache of bare mirrors: one per repository, fetched into shallow where the transport allows,
//! and a commit's files read straight from its tree (no working copy).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::Repository;
use sha2::{Digest, Sha256};
use tether_protocol::url::without_userinfo;

use super::remote::{CallbackState, bounded, classify, fetch_options, is_local};
use super::{Credentials, GitError, Resolved, resolve_blocking};
use crate::crd::RefTarget;
use crate::net::ProxyConfig;

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The commit was already in the mirror: nothing was fetched.
    AlreadyPresent,
    /// The commit was fetched.
    Fetched,
}

/// A cache of bare mirrors, one per repository, under one folder; at most one fetch at a time
/// per repository, any number across repositories. Its remotes are reached through `proxy`.
#[derive(Debug)]
pub struct MirrorCache {
    root: PathBuf,
    proxy: Arc<ProxyConfig>,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MirrorCache {
    /// A cache under `root` (created on first use), reaching remotes through `proxy`.
    pub fn new(root: impl Into<PathBuf>, proxy: ProxyConfig) -> Self {
        Self {
            root: root.into(),
            proxy: Arc::new(proxy),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// Resolves `target` on the remote at `url` ([`resolve_blocking`] on a blocking thread,
    /// bounded by `timeout`); no mirror is involved.
    pub async fn resolve(
        &self,
        url: String,
        target: RefTarget,
        creds: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<Resolved, GitError> {
        let redacted = without_userinfo(&url);
        let proxy = Arc::clone(&self.proxy);
        let task = tokio::task::spawn_blocking(move || {
            resolve_blocking(&url, &target, &creds, &proxy, timeout)
        });
        bounded(task, redacted, timeout).await
    }

    /// The folder of the mirror for `key`: a hash of the key, so any key makes a safe name.
    pub fn mirror_path(&self, key: &str) -> PathBuf {
        let digest = Sha256::digest(key.as_bytes());
        self.root.join(hex::encode(&digest[..16]))
    }

    fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(key.to_owned()).or_default().clone()
    }

    /// Makes sure the commit of `resolved` is in the mirror for `key`, fetching it from `url`
    /// unless it is already there. Shallow (depth 1) except over `file://`.
    pub async fn fetch(
        &self,
        key: &str,
        url: String,
        resolved: Resolved,
        creds: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<FetchOutcome, GitError> {
        let lock = self.lock_for(key);
        let _guard = lock.lock().await;
        let path = self.mirror_path(key);
        let redacted = without_userinfo(&url);
        let proxy = Arc::clone(&self.proxy);
        let task = tokio::task::spawn_blocking(move || {
            fetch_blocking(&path, &url, &resolved, &creds, &proxy, timeout)
        });
        bounded(task, redacted, timeout).await
    }

    /// The manifests-to-be of a commit: every blob under `path` whose path (from the
    /// repository root) `accept` takes, read from the mirror for `key`.
    pub async fn read_tree(
        &self,
        key: &str,
        sha: String,
        path: String,
        accept: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<(String, Vec<u8>)>, GitError> {
        let mirror = self.mirror_path(key);
        tokio::task::spawn_blocking(move || read_tree_blocking(&mirror, &sha, &path, accept))
            .await
            .map_err(|e| GitError::Task(e.to_string()))?
    }
}

fn open_or_init(path: &Path) -> Result<Repository, GitError> {
    let cache = |source| GitError::Cache {
        path: path.to_owned(),
        source,
    };
    match Repository::open_bare(path) {
        Ok(repo) => Ok(repo),
        Err(e) if e.code() == git2::ErrorCode::NotFound => {
            std::fs::create_dir_all(path)
                .map_err(|io| cache(git2::Error::from_str(&io.to_string())))?;
            Repository::init_bare(path).map_err(cache)
        }
        Err(e) => Err(cache(e)),
    }
}

fn has_commit(repo: &Repository, sha: &str) -> bool {
    git2::Oid::from_str(sha)
        .and_then(|oid| repo.find_commit(oid))
        .is_ok()
}

/// [`MirrorCache::fetch`] without the lock: fetches into the bare mirror at `mirror`.
pub fn fetch_blocking(
    mirror: &Path,
    url: &str,
    resolved: &Resolved,
    creds: &Credentials,
    proxy: &ProxyConfig,
    timeout: Duration,
) -> Result<FetchOutcome, GitError> {
    let repo = open_or_init(mirror)?;
    if has_commit(&repo, &resolved.sha) {
        return Ok(FetchOutcome::AlreadyPresent);
    }
    let deadline = Instant::now() + timeout;
    let headers: Vec<String> = creds.bearer_header().into_iter().collect();
    // Depth 1 only for a ref new to the mirror: a known one is fetched incrementally, a round trip
    // less (see "Fetch latency" in docs/architecture.md).
    let known = resolved
        .refname
        .as_ref()
        .is_some_and(|r| repo.find_reference(&local_ref(r)).is_ok());
    let shallow = !is_local(url) && !known;

    // First the ref itself (or the commit id, for a pinned commit); then, if the ref
    // moved on since it was resolved or the server refuses a fetch by id, every branch and
    // tag in full.
    let first: Vec<String> = match &resolved.refname {
        Some(refname) => vec![format!("+{refname}:{}", local_ref(refname))],
        None => vec![format!("+{0}:refs/tether/commits/{0}", resolved.sha)],
    };
    let everything = vec![
        "+refs/heads/*:refs/tether/heads/*".to_owned(),
        "+refs/tags/*:refs/tether/tags/*".to_owned(),
    ];
    let mut last_error = None;
    for (refspecs, depth) in [(first, shallow), (everything, false)] {
        let state = Mutex::new(CallbackState::default());
        let mut opts = fetch_options(url, creds, proxy, deadline, &state, &headers);
        if depth {
            opts.depth(1);
        }
        let mut remote = repo
            .remote_anonymous(url)
            .map_err(|e| classify(url, timeout, &state, e))?;
        match remote.fetch(&refspecs, Some(&mut opts), None) {
            Ok(()) => {
                if has_commit(&repo, &resolved.sha) {
                    return Ok(FetchOutcome::Fetched);
                }
                last_error = None;
            }
            Err(e) => {
                let err = classify(url, timeout, &state, e);
                // Refused credentials, host keys and timeouts will not change on a second try.
                if !matches!(err, GitError::Unreachable { .. }) {
                    return Err(err);
                }
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| GitError::CommitNotFound {
        url: without_userinfo(url),
        sha: resolved.sha.clone(),
    }))
}

/// Where a remote ref lands in a mirror: `refs/heads/main` → `refs/tether/heads/main`.
fn local_ref(refname: &str) -> String {
    format!(
        "refs/tether/{}",
        refname.strip_prefix("refs/").unwrap_or(refname)
    )
}

/// Reads the blobs under `path` in commit `sha` of the repository at `mirror`, without a
/// checkout. Paths are from the repository root; `accept` filters them before blobs are read.
/// Symbolic links and submodules are skipped.
pub fn read_tree_blocking(
    mirror: &Path,
    sha: &str,
    path: &str,
    accept: impl Fn(&str) -> bool,
) -> Result<Vec<(String, Vec<u8>)>, GitError> {
    let cache = |source| GitError::Cache {
        path: mirror.to_owned(),
        source,
    };
    let repo = Repository::open_bare(mirror).map_err(cache)?;
    let oid = git2::Oid::from_str(sha).map_err(cache)?;
    let commit = repo.find_commit(oid).map_err(cache)?;
    let root = commit.tree().map_err(cache)?;
    let path = path.trim_matches('/');
    let not_found = || GitError::PathNotFound {
        path: path.to_owned(),
        sha: sha.to_owned(),
    };
    let tree = if path.is_empty() {
        root
    } else {
        let entry = root.get_path(Path::new(path)).map_err(|_| not_found())?;
        if entry.kind() != Some(git2::ObjectType::Tree) {
            return Err(not_found());
        }
        repo.find_tree(entry.id()).map_err(cache)?
    };
    let prefix = if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    };
    let mut wanted = Vec::new();
    let mut walk_error = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        let is_blob = entry.kind() == Some(git2::ObjectType::Blob);
        // 0o120000 is a symbolic link: its blob is the target path, not a manifest.
        let is_link = entry.filemode() == 0o120_000;
        if is_blob && !is_link {
            match entry.name() {
                Some(name) => {
                    let full = format!("{prefix}{dir}{name}");
                    if accept(&full) {
                        wanted.push((full, entry.id()));
                    }
                }
                None => walk_error = Some(git2::Error::from_str("a file name is not UTF-8")),
            }
        }
        git2::TreeWalkResult::Ok
    })
    .map_err(cache)?;
    if let Some(e) = walk_error {
        return Err(cache(e));
    }
    wanted
        .into_iter()
        .map(|(p, id)| {
            let blob = repo.find_blob(id).map_err(cache)?;
            Ok((p, blob.content().to_vec()))
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_url_forms_of_one_repository_share_a_mirror() {
        let key = |url: &str| tether_protocol::normalize(url).unwrap().to_string();
        let k = key("https://GitHub.com/org/repo.git");
        assert_eq!(k, "github.com/org/repo");
        assert_eq!(key("ssh://git@github.com/org/repo"), k);
        assert_eq!(key("git@github.com:org/repo.git"), k);
        let cache = MirrorCache::new("/cache", ProxyConfig::default());
        assert_eq!(
            cache.mirror_path(&k),
            cache.mirror_path("github.com/org/repo")
        );
        assert_ne!(
            cache.mirror_path(&k),
            cache.mirror_path("github.com/org/other")
        );
    }
}
