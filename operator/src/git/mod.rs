//! Git, with libgit2 on blocking threads: resolve a ref on a remote without cloning, fetch a
//! commit into a cache of bare mirrors, and read a commit's files straight from its tree.
//!
//! Every libgit2 call runs under [`tokio::task::spawn_blocking`]; the async functions here are
//! the ones the controller calls. The `*_blocking` functions underneath are public for tests
//! and tools.

mod credentials;
pub mod known_hosts;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{
    CertificateCheckStatus, Cred, CredentialType, FetchOptions, RemoteCallbacks, Repository,
};
use sha2::{Digest, Sha256};

pub use credentials::{Credentials, CredentialsError, HostKeyError};

use crate::crd::{RefTarget, format_revision};
use crate::error::StageError;

/// A ref resolved on the remote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The revision as reported in status: `main@sha1:<sha>`, `v1.2.0@sha1:<sha>`, or
    /// `sha1:<sha>` for a pinned commit.
    pub revision: String,
    /// The commit id, 40 hex characters.
    pub sha: String,
    /// The full ref on the remote (`refs/heads/main`, `refs/tags/v1.2.0`), `None` for a pinned
    /// commit. [`MirrorCache::fetch`] fetches this ref.
    pub refname: Option<String>,
}

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
            GitError::Timeout { .. } => "git_timeout",
            GitError::PathNotFound { .. } => "path_not_found",
            GitError::Cache { .. } | GitError::Task(_) => "git_internal",
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            GitError::AuthFailed { .. } | GitError::HostKey(_) => {
                crate::crd::reason::AUTHENTICATION_FAILED
            }
            _ => crate::crd::reason::GIT_OPERATION_FAILED,
        }
    }
}

impl GitError {
    /// Whether retrying the same operation unchanged can succeed (a flaky network, a server
    /// restart), as opposed to an error that waits for a change of spec, secret or repository.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            GitError::Unreachable { .. }
                | GitError::Timeout { .. }
                | GitError::Cache { .. }
                | GitError::Task(_)
        )
    }
}

fn humanize(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// A URL fit for messages: user info (which may hold a password) removed.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let (authority, path) = rest.split_once('/').map_or((rest, ""), |(a, p)| (a, p));
        let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if rest.contains('/') {
            format!("{scheme}://{host}/{path}")
        } else {
            format!("{scheme}://{host}")
        }
    } else {
        url.to_owned()
    }
}

/// The host and port of a URL, for host key and certificate checks.
fn host_and_port(url: &str) -> Option<(String, Option<u16>)> {
    let authority = match url.split_once("://") {
        Some((_, rest)) => rest.split('/').next()?,
        // scp-style user@host:path
        None => url.split_once(':')?.0,
    };
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if let Some(rest) = host_port.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':').and_then(|p| p.parse().ok());
        return Some((host.to_owned(), port));
    }
    match host_port.rsplit_once(':') {
        Some((host, port)) if url.contains("://") => Some((host.to_owned(), port.parse().ok())),
        _ => Some((host_port.to_owned(), None)),
    }
}

/// Whether the transport of `url` is libgit2's local one, which cannot fetch shallow.
fn is_local(url: &str) -> bool {
    url.starts_with("file://") || url.starts_with('/')
}

/// What the callbacks saw, to tell a refused credential or host key from a network error.
#[derive(Default)]
struct CallbackState {
    tried: Vec<CredentialType>,
    auth_failure: Option<String>,
    host_key: Option<HostKeyError>,
    certificate: Option<String>,
    timed_out: bool,
}

/// Builds the callbacks for one operation: credentials, server checks and the deadline.
fn callbacks<'a>(
    url: &'a str,
    creds: &'a Credentials,
    deadline: Instant,
    state: &'a Mutex<CallbackState>,
) -> RemoteCallbacks<'a> {
    let mut cb = RemoteCallbacks::new();
    let (host, port) = host_and_port(url).unwrap_or_default();

    cb.credentials(move |_url, username_from_url, allowed| {
        let mut st = state
            .lock()
            .map_err(|_| git2::Error::from_str("state poisoned"))?;
        let kind = if allowed.contains(CredentialType::SSH_KEY) {
            CredentialType::SSH_KEY
        } else if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
            CredentialType::USER_PASS_PLAINTEXT
        } else if allowed.contains(CredentialType::USERNAME) {
            CredentialType::USERNAME
        } else {
            st.auth_failure = Some("the server asks for an unsupported kind of credential".into());
            return Err(git2::Error::from_str("unsupported credential type"));
        };
        // libgit2 asks again after a refusal: the second time, the answer is final.
        if st.tried.contains(&kind) {
            st.auth_failure = Some(format!(
                "the server refused the credentials of {}",
                if creds.source.is_empty() {
                    "the GitRepository (no secretRef)".to_owned()
                } else {
                    format!("secret {}", creds.source)
                }
            ));
            return Err(git2::Error::from_str("credentials refused"));
        }
        st.tried.push(kind);
        let user = username_from_url
            .map(str::to_owned)
            .or_else(|| creds.username.clone())
            .unwrap_or_else(|| "git".to_owned());
        if kind == CredentialType::SSH_KEY {
            let Some(identity) = &creds.identity else {
                st.auth_failure =
                    Some("the server asks for an SSH key and the secret has no identity".into());
                return Err(git2::Error::from_str("no SSH key"));
            };
            return Cred::ssh_key_from_memory(&user, None, identity, creds.password.as_deref())
                .inspect_err(|_| {
                    st.auth_failure =
                        Some("the identity in the secret is not a usable private key".into());
                });
        }
        if kind == CredentialType::USERNAME {
            return Cred::username(&user);
        }
        match (&creds.username, &creds.password) {
            (Some(u), Some(p)) => Cred::userpass_plaintext(u, p),
            _ => {
                st.auth_failure = Some(
                    "the server asks for a user name and password and the secret has none".into(),
                );
                Err(git2::Error::from_str("no credentials"))
            }
        }
    });

    cb.certificate_check(move |cert, _hostname| {
        let mut st = state
            .lock()
            .map_err(|_| git2::Error::from_str("state poisoned"))?;
        if let Some(hostkey) = cert.as_hostkey() {
            let name = known_hosts::host_entry_name(&host, port);
            let Some(key) = hostkey.hostkey() else {
                st.host_key = Some(HostKeyError::Unknown {
                    host: name,
                    secret: creds.source.clone(),
                });
                return Err(git2::Error::from_str("host key not available"));
            };
            return match creds.check_host_key(&name, key) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => {
                    st.host_key = Some(e);
                    Err(git2::Error::from_str("host key refused"))
                }
            };
        }
        if let Some(x509) = cert.as_x509() {
            return match creds.check_tls(&host, x509.data()) {
                None => Ok(CertificateCheckStatus::CertificatePassthrough),
                Some(Ok(())) => Ok(CertificateCheckStatus::CertificateOk),
                // Not signed by caFile: libgit2's own verdict (the system's roots) decides,
                // and the reason is kept for the message should that fail too.
                Some(Err(message)) => {
                    st.certificate = Some(message);
                    Ok(CertificateCheckStatus::CertificatePassthrough)
                }
            };
        }
        Ok(CertificateCheckStatus::CertificatePassthrough)
    });

    cb.transfer_progress(move |_| {
        if Instant::now() < deadline {
            true
        } else {
            if let Ok(mut st) = state.lock() {
                st.timed_out = true;
            }
            false
        }
    });
    cb
}

/// Turns a libgit2 error into a [`GitError`], using what the callbacks saw.
fn classify(
    url: &str,
    timeout: Duration,
    state: &Mutex<CallbackState>,
    e: git2::Error,
) -> GitError {
    let url = redact_url(url);
    let mut st = match state.lock() {
        Ok(st) => st,
        Err(poisoned) => poisoned.into_inner(),
    };
    if let Some(h) = st.host_key.take() {
        return GitError::HostKey(h);
    }
    if e.code() == git2::ErrorCode::Certificate {
        let message = st
            .certificate
            .take()
            .unwrap_or_else(|| e.message().to_owned());
        return GitError::Certificate { url, message };
    }
    if let Some(message) = st.auth_failure.take() {
        return GitError::AuthFailed { url, message };
    }
    if st.timed_out {
        return GitError::Timeout { url, timeout };
    }
    match e.code() {
        git2::ErrorCode::Auth => GitError::AuthFailed {
            url,
            message: e.message().to_owned(),
        },
        _ if e.class() == git2::ErrorClass::Http && e.message().contains("401") => {
            GitError::AuthFailed {
                url,
                message: e.message().to_owned(),
            }
        }
        _ => GitError::Unreachable { url, source: e },
    }
}

/// Whether `NO_PROXY` (or `no_proxy`) in the environment lists the host of `url`.
fn bypasses_proxy(url: &str) -> bool {
    let Some(list) = ["NO_PROXY", "no_proxy"]
        .iter()
        .find_map(|name| std::env::var(name).ok().filter(|v| !v.trim().is_empty()))
    else {
        return false;
    };
    let Some((host, port)) = host_and_port(url) else {
        return false;
    };
    let port = port.unwrap_or(if url.starts_with("http://") { 80 } else { 443 });
    crate::hub_client::NoProxy::parse(&list).matches(&host, port)
}

/// The fetch options for one operation: callbacks, bearer header, no automatic tags.
fn fetch_options<'a>(
    url: &'a str,
    creds: &'a Credentials,
    deadline: Instant,
    state: &'a Mutex<CallbackState>,
    headers: &'a [String],
) -> FetchOptions<'a> {
    let mut opts = FetchOptions::new();
    opts.remote_callbacks(callbacks(url, creds, deadline, state));
    // HTTP(S) through the proxy the environment names (`https_proxy`/`HTTPS_PROXY` for https,
    // `http_proxy`/`HTTP_PROXY` for http), or git's `http.proxy`; SSH is never proxied. A host that
    // `NO_PROXY` lists goes direct, read as the hub connection reads it (CIDR blocks included).
    let mut proxy = git2::ProxyOptions::new();
    if !bypasses_proxy(url) {
        proxy.auto();
    }
    opts.proxy_options(proxy);
    opts.download_tags(git2::AutotagOption::None);
    opts.update_fetchhead(false);
    let header_refs: Vec<&str> = headers.iter().map(String::as_str).collect();
    opts.custom_headers(&header_refs);
    opts
}

/// Lists the refs of a remote (an ls-remote): `(refname, oid)` pairs, including the peeled
/// `^{}` entries of annotated tags.
pub fn ls_remote_blocking(
    url: &str,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Vec<(String, String)>, GitError> {
    let deadline = Instant::now() + timeout;
    let state = Mutex::new(CallbackState::default());
    let headers: Vec<String> = creds.bearer_header().into_iter().collect();
    // `Remote::connect_auth` cannot send custom headers, so the listing goes through a download
    // whose only refspec matches nothing: libgit2 connects, reads the advertisement, finds
    // nothing to want and transfers no objects. The repository behind the anonymous remote is
    // an empty in-memory one.
    let odb = git2::Odb::new().map_err(|source| GitError::Cache {
        path: PathBuf::from("<memory>"),
        source,
    })?;
    let repo = Repository::from_odb(odb).map_err(|source| GitError::Cache {
        path: PathBuf::from("<memory>"),
        source,
    })?;
    let mut remote = repo
        .remote_anonymous(url)
        .map_err(|e| classify(url, timeout, &state, e))?;
    let mut opts = fetch_options(url, creds, deadline, &state, &headers);
    remote
        .download(
            &["refs/tether-ls-remote-nothing:refs/tether-ls-remote-nothing"],
            Some(&mut opts),
        )
        .map_err(|e| classify(url, timeout, &state, e))?;
    let heads = remote
        .list()
        .map_err(|e| classify(url, timeout, &state, e))?
        .iter()
        .map(|h| (h.name().to_owned(), h.oid().to_string()))
        .collect();
    Ok(heads)
}

/// Resolves `target` on the remote at `url` (no clone). A pinned commit is returned as is.
pub fn resolve_blocking(
    url: &str,
    target: &RefTarget,
    creds: &Credentials,
    timeout: Duration,
) -> Result<Resolved, GitError> {
    if let RefTarget::Commit(sha) = target {
        return Ok(Resolved {
            revision: format!("sha1:{sha}"),
            sha: sha.clone(),
            refname: None,
        });
    }
    let heads = ls_remote_blocking(url, creds, timeout)?;
    pick(url, target, &heads)
}

/// Picks what `target` points at among the advertised `heads`.
pub fn pick(
    url: &str,
    target: &RefTarget,
    heads: &[(String, String)],
) -> Result<Resolved, GitError> {
    let find = |name: &str| {
        heads
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| o.clone())
    };
    // An annotated tag is advertised twice: the tag object, and `^{}` with the commit.
    let tag_commit = |tag: &str| {
        let refname = format!("refs/tags/{tag}");
        find(&format!("{refname}^{{}}")).or_else(|| find(&refname))
    };
    let not_found = || GitError::RefNotFound {
        url: redact_url(url),
        what: target.to_string(),
    };
    match target {
        RefTarget::Branch(branch) => {
            let refname = format!("refs/heads/{branch}");
            let sha = find(&refname).ok_or_else(not_found)?;
            Ok(Resolved {
                revision: format_revision(branch, &sha),
                sha,
                refname: Some(refname),
            })
        }
        RefTarget::Tag(tag) => {
            let sha = tag_commit(tag).ok_or_else(not_found)?;
            Ok(Resolved {
                revision: format_revision(tag, &sha),
                sha,
                refname: Some(format!("refs/tags/{tag}")),
            })
        }
        RefTarget::Semver(range) => {
            let tags = heads
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("refs/tags/"))
                .filter(|n| !n.ends_with("^{}"));
            let tag = highest_matching(range, tags)?.ok_or_else(not_found)?;
            let sha = tag_commit(&tag).ok_or_else(not_found)?;
            Ok(Resolved {
                revision: format_revision(&tag, &sha),
                sha,
                refname: Some(format!("refs/tags/{tag}")),
            })
        }
        RefTarget::Commit(sha) => Ok(Resolved {
            revision: format!("sha1:{sha}"),
            sha: sha.clone(),
            refname: None,
        }),
    }
}

/// The tag with the highest version that matches `range`; tags may carry a leading `v`, and
/// tags that are not versions are skipped. On equal versions (`1.0.0` and `v1.0.0`) the first
/// in name order wins, so the choice does not depend on the remote's listing order.
pub fn highest_matching<'a>(
    range: &str,
    tags: impl IntoIterator<Item = &'a str>,
) -> Result<Option<String>, GitError> {
    let req = semver::VersionReq::parse(range).map_err(|source| GitError::InvalidSemver {
        range: range.to_owned(),
        source,
    })?;
    let mut best: Option<(semver::Version, &str)> = None;
    for tag in tags {
        let Ok(version) = semver::Version::parse(tag.strip_prefix('v').unwrap_or(tag)) else {
            continue;
        };
        if !req.matches(&version) {
            continue;
        }
        let better = match &best {
            None => true,
            Some((v, name)) => version > *v || (version == *v && tag < *name),
        };
        if better {
            best = Some((version, tag));
        }
    }
    Ok(best.map(|(_, tag)| tag.to_owned()))
}

/// Async [`resolve_blocking`], on a blocking thread, bounded by `timeout`.
pub async fn resolve(
    url: String,
    target: RefTarget,
    creds: Arc<Credentials>,
    timeout: Duration,
) -> Result<Resolved, GitError> {
    let redacted = redact_url(&url);
    let task =
        tokio::task::spawn_blocking(move || resolve_blocking(&url, &target, &creds, timeout));
    bounded(task, redacted, timeout).await
}

/// Waits for a blocking git task, a little past `timeout` (libgit2 cannot always be stopped
/// mid-call, e.g. while connecting; the thread then finishes in the background).
async fn bounded<T>(
    task: tokio::task::JoinHandle<Result<T, GitError>>,
    url: String,
    timeout: Duration,
) -> Result<T, GitError> {
    match tokio::time::timeout(timeout + Duration::from_secs(1), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(join)) => Err(GitError::Task(join.to_string())),
        Err(_) => Err(GitError::Timeout { url, timeout }),
    }
}

/// A cache key for a URL until the protocol crate's normalisation is used: the host
/// lower-cased, scheme, user info and `.git` removed, so that the https, ssh and scp forms of
/// one repository share a mirror.
pub fn cache_key(url: &str) -> String {
    let rest = match url.split_once("://") {
        Some((_, rest)) => rest.to_owned(),
        None => match url.split_once(':') {
            // scp-style user@host:path
            Some((host, path)) => format!("{host}/{path}"),
            None => url.to_owned(),
        },
    };
    let rest = rest.rsplit_once('@').map_or(rest.as_str(), |(_, r)| r);
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let path = path.trim_end_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path);
    format!("{}/{}", host.to_ascii_lowercase(), path)
}

/// What a fetch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchOutcome {
    /// The commit was already in the mirror: nothing was fetched.
    AlreadyPresent,
    /// The commit was fetched.
    Fetched,
}

/// A cache of bare mirrors, one per repository, under one folder; at most one fetch at a time
/// per repository, any number across repositories.
#[derive(Debug)]
pub struct MirrorCache {
    root: PathBuf,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl MirrorCache {
    /// A cache under `root` (created on first use).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            locks: Mutex::new(HashMap::new()),
        }
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
        let redacted = redact_url(&url);
        let task = tokio::task::spawn_blocking(move || {
            fetch_blocking(&path, &url, &resolved, &creds, timeout)
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
    timeout: Duration,
) -> Result<FetchOutcome, GitError> {
    let repo = open_or_init(mirror)?;
    if has_commit(&repo, &resolved.sha) {
        return Ok(FetchOutcome::AlreadyPresent);
    }
    let deadline = Instant::now() + timeout;
    let headers: Vec<String> = creds.bearer_header().into_iter().collect();
    // A ref the mirror already holds is fetched incrementally: the server sends the commits since
    // the one the mirror has, and the exchange takes one round trip less than a shallow fetch (whose
    // depth is negotiated first), which is most of a push's latency. A ref (or pinned commit) new to
    // the mirror is fetched at depth 1, so that a long history is never downloaded for it; after a
    // force push, the new history down to a commit the mirror holds comes along once.
    // What remains of a fetch's time is mostly the network's: libgit2 writes each POST's head and
    // body in two writes on a socket without TCP_NODELAY, so each POST can wait for the server's
    // delayed ACK (40 ms on Linux). On the loopback test server that is ~95 of a fetch's ~120 ms
    // (measured with `quickack` set on the route: 23 ms).
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
        let mut opts = fetch_options(url, creds, deadline, &state, &headers);
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
        url: redact_url(url),
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

    fn heads(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, o)| ((*n).to_owned(), (*o).to_owned()))
            .collect()
    }

    const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
    const C: &str = "cccccccccccccccccccccccccccccccccccccccc";

    #[test]
    fn semver_picks_the_highest_match_with_or_without_v() {
        let tags = [
            "v1.0.0",
            "1.2.0",
            "v1.10.0",
            "v2.0.0",
            "latest",
            "v1.11.0-rc.1",
        ];
        assert_eq!(
            highest_matching("^1", tags).unwrap().as_deref(),
            Some("v1.10.0")
        );
        assert_eq!(
            highest_matching(">=1.0.0, <1.5.0", tags)
                .unwrap()
                .as_deref(),
            Some("1.2.0")
        );
        assert_eq!(
            highest_matching("*", tags).unwrap().as_deref(),
            Some("v2.0.0")
        );
        assert_eq!(highest_matching("^3", tags).unwrap(), None);
        assert_eq!(
            highest_matching("^1", ["v1.0.0", "1.0.0"])
                .unwrap()
                .as_deref(),
            Some("1.0.0")
        );
        let err = highest_matching("not a range", tags).unwrap_err();
        assert_eq!(err.category(), "invalid_spec");
        assert!(
            err.to_string()
                .starts_with("spec.ref.semver: invalid range \"not a range\"")
        );
    }

    #[test]
    fn pick_resolves_branches_and_peels_annotated_tags() {
        let h = heads(&[
            ("HEAD", A),
            ("refs/heads/main", A),
            ("refs/tags/v1.0.0", B),
            ("refs/tags/v1.0.0^{}", C),
            ("refs/tags/v0.9.0", A),
        ]);
        let url = "https://user:pw@example.com/r.git";
        let r = pick(url, &RefTarget::Branch("main".into()), &h).unwrap();
        assert_eq!(r.revision, format!("main@sha1:{A}"));
        assert_eq!(r.refname.as_deref(), Some("refs/heads/main"));
        let r = pick(url, &RefTarget::Tag("v1.0.0".into()), &h).unwrap();
        assert_eq!(r.sha, C);
        assert_eq!(r.revision, format!("v1.0.0@sha1:{C}"));
        let r = pick(url, &RefTarget::Semver("<1".into()), &h).unwrap();
        assert_eq!(r.revision, format!("v0.9.0@sha1:{A}"));
        let err = pick(url, &RefTarget::Branch("dev".into()), &h).unwrap_err();
        assert_eq!(
            err.to_string(),
            "branch dev not found on https://example.com/r.git"
        );
        assert_eq!(err.category(), "ref_not_found");
    }

    #[test]
    fn urls_in_messages_lose_their_user_info() {
        assert_eq!(
            redact_url("https://u:p@h.io/o/r.git"),
            "https://h.io/o/r.git"
        );
        assert_eq!(redact_url("ssh://git@h.io:2222/r"), "ssh://h.io:2222/r");
        assert_eq!(redact_url("git@h.io:o/r.git"), "git@h.io:o/r.git");
        assert_eq!(redact_url("file:///tmp/r"), "file:///tmp/r");
    }

    #[test]
    fn host_and_port_for_each_url_form() {
        assert_eq!(
            host_and_port("ssh://git@127.0.0.1:2222/srv/r.git"),
            Some(("127.0.0.1".into(), Some(2222)))
        );
        assert_eq!(
            host_and_port("git@github.com:o/r.git"),
            Some(("github.com".into(), None))
        );
        assert_eq!(
            host_and_port("https://h.io/o/r"),
            Some(("h.io".into(), None))
        );
        assert_eq!(
            host_and_port("ssh://[::1]:22/r"),
            Some(("::1".into(), Some(22)))
        );
    }

    #[test]
    fn cache_keys_meet_across_url_forms() {
        let k = cache_key("https://GitHub.com/org/repo.git");
        assert_eq!(k, "github.com/org/repo");
        assert_eq!(cache_key("ssh://git@github.com/org/repo"), k);
        assert_eq!(cache_key("git@github.com:org/repo.git"), k);
        let cache = MirrorCache::new("/cache");
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

#[cfg(test)]
mod repo_tests;
