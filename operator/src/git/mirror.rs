//! The cache of bare mirrors: one per repository, fetched into shallow where the transport allows,
//! and a commit's files read straight from its tree (no working copy).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use git2::Repository;
use sha2::{Digest, Sha256};
use tether_protocol::url::without_userinfo;

use super::remote::{SharedState, classify, fetch_options, http_scope, is_local};
use super::slots::Slots;
use super::{Credentials, GitError, Resolved, resolve_blocking};
use crate::crd::RefTarget;
use crate::net::ProxyConfig;
use crate::plan::{ContentLimits, LimitExceeded};

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The commit was already in the mirror: nothing was fetched.
    AlreadyPresent,
    /// The commit was fetched.
    Fetched,
}

/// How many git operations (ls-remote, fetch, reading a tree) run at once by default, over all
/// repositories (`--max-concurrent-git`).
pub const DEFAULT_MAX_CONCURRENT_GIT: usize = 8;

/// A cache of bare mirrors, one per repository, under one folder; at most one operation at a
/// time per mirror, and a bounded number of git operations at once over all of them (see
/// [`Slots`]: a mirror's lock is held until the thread working on it has really ended, even when
/// the caller gave up at its timeout). Its remotes are reached through `proxy`.
#[derive(Debug)]
pub struct MirrorCache {
    root: PathBuf,
    proxy: Arc<ProxyConfig>,
    limits: ContentLimits,
    slots: Slots,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MirrorCache {
    /// A cache under `root` (created on first use), reaching remotes through `proxy`, with the
    /// default content limits and concurrency.
    pub fn new(root: impl Into<PathBuf>, proxy: ProxyConfig) -> Self {
        Self {
            root: root.into(),
            proxy: Arc::new(proxy),
            limits: ContentLimits::DEFAULT,
            slots: Slots::new(DEFAULT_MAX_CONCURRENT_GIT),
            locks: Mutex::new(HashMap::new()),
        }
    }

    /// The same cache with other content limits.
    #[must_use]
    pub fn with_limits(mut self, limits: ContentLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The same cache running at most `max` git operations at once (at least one).
    #[must_use]
    pub fn with_max_concurrent(mut self, max: usize) -> Self {
        self.slots = Slots::new(max);
        self
    }

    /// The content limits the cache reads trees with.
    pub fn limits(&self) -> ContentLimits {
        self.limits
    }

    /// Resolves `target` on the remote at `url` ([`resolve_blocking`] on a blocking thread,
    /// bounded by `timeout`) for the repository `key`; no mirror is involved.
    pub async fn resolve(
        &self,
        key: &str,
        url: String,
        target: RefTarget,
        creds: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<Resolved, GitError> {
        let redacted = without_userinfo(&url);
        let proxy = Arc::clone(&self.proxy);
        self.slots
            .run(key, redacted, timeout, None, move || {
                resolve_blocking(&url, &target, &creds, &proxy, timeout)
            })
            .await
    }

    /// Resolves a branch or tag and fetches it into the mirror for `key` over one connection: the
    /// ref advertisement that resolves it is the one the fetch negotiates from, which saves the
    /// separate ls-remote's request (and its TLS handshake) on every push. The advertisement is
    /// read with `creds`, so access is proven as by [`MirrorCache::resolve`]. `target` must be a
    /// branch or a tag (one [`fixed_ref`] names); semver ranges and pinned commits go through
    /// [`MirrorCache::resolve`] and [`MirrorCache::fetch`].
    pub async fn resolve_and_fetch(
        &self,
        key: &str,
        url: String,
        target: RefTarget,
        creds: Arc<Credentials>,
        timeout: Duration,
    ) -> Result<(Resolved, FetchOutcome), GitError> {
        let redacted = without_userinfo(&url);
        self.with_mirror(key, redacted, timeout, move |path, proxy| {
            resolve_and_fetch_blocking(&path, &url, &target, &creds, proxy, timeout)
        })
        .await
    }

    /// Runs `work` on the mirror for `key` (its folder, the proxy settings) under its lock, in a
    /// git slot, unless an earlier operation on it still runs past its timeout (that one holds
    /// the lock until it ends, so the lock is not even waited for). `redacted` names the remote
    /// in errors.
    async fn with_mirror<T: Send + 'static>(
        &self,
        key: &str,
        redacted: String,
        timeout: Duration,
        work: impl FnOnce(PathBuf, &ProxyConfig) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, GitError> {
        self.slots.check(key, &redacted)?;
        let guard = self.lock_for(key).lock_owned().await;
        let path = self.mirror_path(key);
        let proxy = Arc::clone(&self.proxy);
        self.slots
            .run(key, redacted, timeout, Some(guard), move || {
                work(path, &proxy)
            })
            .await
    }

    /// The folder of the mirror for `key`: a hash of the key, so any key makes a safe name.
    pub fn mirror_path(&self, key: &str) -> PathBuf {
        self.root.join(mirror_name(key))
    }

    /// The lock of a mirror, by its folder's name: the sweep knows mirrors by folder alone.
    fn lock_for_name(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = match self.locks.lock() {
            Ok(l) => l,
            Err(poisoned) => poisoned.into_inner(),
        };
        locks.entry(name.to_owned()).or_default().clone()
    }

    pub(super) fn lock_for(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.lock_for_name(&mirror_name(key))
    }

    /// Removes the mirrors of every repository but those in `in_use` (mirror keys), skipping any
    /// an operation holds now; returns how many it removed. A repository named again later is
    /// fetched afresh into a new mirror.
    pub fn sweep(&self, in_use: &HashSet<String>) -> usize {
        let keep: HashSet<String> = in_use.iter().map(|k| mirror_name(k)).collect();
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut removed = 0;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if keep.contains(&name) || !entry.path().is_dir() {
                continue;
            }
            let lock = self.lock_for_name(&name);
            // Never under a fetch or a read: one that holds the mirror keeps it this time.
            let Ok(_guard) = lock.try_lock() else {
                continue;
            };
            match std::fs::remove_dir_all(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(mirror = %entry.path().display(), error = %e, "cannot remove an unused mirror")
                }
            }
        }
        if let Ok(mut locks) = self.locks.lock() {
            // Forget the locks of removed mirrors that nobody waits for.
            locks.retain(|name, lock| keep.contains(name) || Arc::strong_count(lock) > 1);
        }
        removed
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
        let redacted = without_userinfo(&url);
        self.with_mirror(key, redacted, timeout, move |path, proxy| {
            fetch_blocking(&path, &url, &resolved, &creds, proxy, timeout)
        })
        .await
    }

    /// The manifests-to-be of a commit: every blob under `path` whose path (from the
    /// repository root) `accept` takes, read from the mirror for `key` within the cache's
    /// content limits, in at most `timeout`.
    pub async fn read_tree(
        &self,
        key: &str,
        sha: String,
        path: String,
        timeout: Duration,
        accept: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<(String, Vec<u8>)>, GitError> {
        let guard = self.lock_for(key).lock_owned().await;
        let mirror = self.mirror_path(key);
        let limits = self.limits;
        self.slots
            .run(key, key.to_owned(), timeout, Some(guard), move || {
                read_tree_blocking(&mirror, &sha, &path, &limits, accept)
            })
            .await
    }
}

impl MirrorCache {
    /// The names directly inside the folder `path` of commit `sha`.
    pub async fn names_at(
        &self,
        key: &str,
        sha: String,
        path: String,
        timeout: Duration,
    ) -> Result<Vec<String>, GitError> {
        let guard = self.lock_for(key).lock_owned().await;
        let mirror = self.mirror_path(key);
        self.slots
            .run(key, key.to_owned(), timeout, Some(guard), move || {
                super::names_at_blocking(&mirror, &sha, &path)
            })
            .await
    }

    /// Writes commit `sha` of the mirror for `key` out under `dest`, within the content limits,
    /// leaving out what `skip` takes; returns the paths written.
    pub async fn checkout(
        &self,
        key: &str,
        sha: String,
        dest: PathBuf,
        timeout: Duration,
        skip: impl Fn(&str) -> bool + Send + 'static,
    ) -> Result<Vec<String>, GitError> {
        let guard = self.lock_for(key).lock_owned().await;
        let mirror = self.mirror_path(key);
        let limits = self.limits;
        self.slots
            .run(key, key.to_owned(), timeout, Some(guard), move || {
                super::checkout_blocking(&mirror, &sha, &dest, &limits, skip)
            })
            .await
    }
}

/// The folder name of the mirror for `key`.
fn mirror_name(key: &str) -> String {
    let digest = Sha256::digest(key.as_bytes());
    hex::encode(&digest[..16])
}

/// Mirrors swept for stale lock files by this process: each once, at its first open.
static SWEPT: LazyLock<Mutex<HashSet<PathBuf>>> = LazyLock::new(Mutex::default);

/// Opens the mirror at `path`, creating it when missing. The caller holds the mirror's lock, and
/// the cache belongs to this process alone, so a `*.lock` file found at the first open was left by
/// a process killed mid-write and is removed (later opens skip the walk: this process's own git
/// work ends before the mirror's lock is released, and libgit2 removes its lock files when it
/// fails); a mirror that does not open is removed and created again (it is only a cache of the
/// remote).
fn open_or_init(path: &Path) -> Result<Repository, GitError> {
    let cache = |source| GitError::Cache {
        path: path.to_owned(),
        source,
    };
    let create = || {
        std::fs::create_dir_all(path)
            .map_err(|io| cache(git2::Error::from_str(&io.to_string())))?;
        Repository::init_bare(path).map_err(cache)
    };
    if !path.exists() {
        return create();
    }
    let first = SWEPT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert(path.to_owned());
    let stale = if first { remove_stale_locks(path) } else { 0 };
    if stale > 0 {
        tracing::info!(mirror = %path.display(), files = stale, "removed lock files left by an earlier run");
    }
    match Repository::open_bare(path) {
        Ok(repo) => Ok(repo),
        Err(e) => {
            tracing::warn!(mirror = %path.display(), error = %e, "the mirror does not open; creating it again");
            std::fs::remove_dir_all(path)
                .map_err(|io| cache(git2::Error::from_str(&io.to_string())))?;
            create()
        }
    }
}

/// Removes every `*.lock` file under the mirror at `path` (refs, `packed-refs`, `shallow`,
/// `config`...), and the temporary files of a pack that was being received; returns how many.
fn remove_stale_locks(path: &Path) -> usize {
    let mut removed = 0;
    let mut folders = vec![path.to_owned()];
    // Bounded: a mirror's folders are its refs' namespaces and objects' fan-out.
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if kind.is_dir() {
                folders.push(entry.path());
            } else if (name.ends_with(".lock") || name.starts_with("pack_git2_"))
                && std::fs::remove_file(entry.path()).is_ok()
            {
                removed += 1;
            }
        }
    }
    removed
}

fn has_commit(repo: &Repository, sha: &str) -> bool {
    git2::Oid::from_str(sha)
        .and_then(|oid| repo.find_commit(oid))
        .is_ok()
}

/// Checks the blobs `files` (`(path, id)`) of the repository at `mirror` against the size limits,
/// from the objects' headers alone: nothing is loaded unless everything fits.
pub(super) fn within_limits<'a>(
    repo: &Repository,
    mirror: &Path,
    files: impl Iterator<Item = (&'a str, git2::Oid)>,
    limits: &ContentLimits,
) -> Result<(), GitError> {
    let cache = |source| GitError::Cache {
        path: mirror.to_owned(),
        source,
    };
    let odb = repo.odb().map_err(cache)?;
    let mut total: u64 = 0;
    for (file, id) in files {
        let (size, _) = odb.read_header(id).map_err(cache)?;
        let size = size as u64;
        if size > limits.max_file_bytes {
            return Err(LimitExceeded::File {
                file: file.to_owned(),
                size,
                limit: limits.max_file_bytes,
            }
            .into());
        }
        total = total.saturating_add(size);
        if total > limits.max_revision_bytes {
            return Err(LimitExceeded::Revision {
                file: file.to_owned(),
                limit: limits.max_revision_bytes,
            }
            .into());
        }
    }
    Ok(())
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
    let headers: Vec<String> = creds.authorization_header().into_iter().collect();
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
        let state = SharedState::default();
        let _http = http_scope(url, creds, proxy, deadline, &state);
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

/// The one ref a target names on the remote: a branch's or a tag's; `None` for a semver range or
/// a pinned commit, which need the whole advertisement (or none) to resolve.
pub fn fixed_ref(target: &RefTarget) -> Option<String> {
    match target {
        RefTarget::Branch(b) => Some(format!("refs/heads/{b}")),
        RefTarget::Tag(t) => Some(format!("refs/tags/{t}")),
        RefTarget::Semver(_) | RefTarget::Commit(_) => None,
    }
}

/// [`MirrorCache::resolve_and_fetch`] without the lock: a semver range or a pinned commit (no
/// [`fixed_ref`]) takes the ls-remote and the fetch one after the other.
pub fn resolve_and_fetch_blocking(
    mirror: &Path,
    url: &str,
    target: &RefTarget,
    creds: &Credentials,
    proxy: &ProxyConfig,
    timeout: Duration,
) -> Result<(Resolved, FetchOutcome), GitError> {
    let Some(refname) = fixed_ref(target) else {
        let resolved = resolve_blocking(url, target, creds, proxy, timeout)?;
        let outcome = fetch_blocking(mirror, url, &resolved, creds, proxy, timeout)?;
        return Ok((resolved, outcome));
    };
    let repo = open_or_init(mirror)?;
    let deadline = Instant::now() + timeout;
    let headers: Vec<String> = creds.authorization_header().into_iter().collect();
    let local = local_ref(&refname);
    let before = repo.refname_to_id(&local).ok();
    let state = SharedState::default();
    let _http = http_scope(url, creds, proxy, deadline, &state);
    let mut opts = fetch_options(url, creds, proxy, deadline, &state, &headers);
    // Depth 1 only for a ref new to the mirror, as in `fetch_blocking`.
    if !is_local(url) && before.is_none() {
        opts.depth(1);
    }
    opts.update_fetchhead(false);
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| classify(url, timeout, &state, e))?;
    remote
        .fetch(&[format!("+{refname}:{local}")], Some(&mut opts), None)
        .map_err(|e| classify(url, timeout, &state, e))?;
    // The advertisement stays readable after the fetch disconnected.
    let heads: Vec<(String, String)> = remote
        .list()
        .map_err(|e| classify(url, timeout, &state, e))?
        .iter()
        .map(|h| (h.name().to_owned(), h.oid().to_string()))
        .collect();
    let resolved = super::pick(url, target, &heads)?;
    if has_commit(&repo, &resolved.sha) {
        let same = before.is_some_and(|b| b.to_string() == resolved.sha)
            || repo
                .find_reference(&local)
                .ok()
                .and_then(|r| r.peel_to_commit().ok())
                .is_some_and(|c| before.is_some_and(|b| b == c.id()));
        let outcome = if same {
            FetchOutcome::AlreadyPresent
        } else {
            FetchOutcome::Fetched
        };
        return Ok((resolved, outcome));
    }
    // Not there (a server that advertised one thing and sent another): the full fetch.
    let outcome = fetch_blocking(mirror, url, &resolved, creds, proxy, timeout)?;
    Ok((resolved, outcome))
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
/// Symbolic links and submodules are skipped. Every size is checked against `limits` from the
/// object's header before any blob is loaded.
pub fn read_tree_blocking(
    mirror: &Path,
    sha: &str,
    path: &str,
    limits: &ContentLimits,
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
                        if wanted.len() == limits.max_objects {
                            walk_error = Some(
                                LimitExceeded::Files {
                                    file: full,
                                    limit: limits.max_objects,
                                }
                                .into(),
                            );
                            return git2::TreeWalkResult::Abort;
                        }
                        wanted.push((full, entry.id()));
                    }
                }
                None => {
                    walk_error = Some(cache(git2::Error::from_str("a file name is not UTF-8")));
                    return git2::TreeWalkResult::Abort;
                }
            }
        }
        git2::TreeWalkResult::Ok
    })
    .or_else(|e| {
        // An abort from the callback is reported below, with its reason.
        if walk_error.is_some() {
            Ok(())
        } else {
            Err(cache(e))
        }
    })?;
    if let Some(e) = walk_error {
        return Err(e);
    }
    // Sizes first, from the objects' headers: nothing is loaded unless everything fits.
    within_limits(
        &repo,
        mirror,
        wanted.iter().map(|(f, id)| (f.as_str(), *id)),
        limits,
    )?;
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
