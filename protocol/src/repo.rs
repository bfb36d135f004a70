//! Repository identity: the normalised form of a clone URL that the hub and the operator both compare.
//!
//! A [`RepoId`] is `host[:port]/path`: the host lower-cased, the scheme, the user info, a default port
//! (443 for https, 80 for http, 22 for ssh, 9418 for git), a trailing `.git` and trailing slashes dropped,
//! query and fragment ignored. The path keeps its case: some forges treat paths case-sensitively.
//! An id normalises to itself, so what would not read back as the same id is refused: a path that ends
//! in `.git` twice (`app.git.git`), and a host with a colon outside brackets (`::1`, `a:b:c`).
//! So `https://github.com/Org/App.git`, `ssh://git@github.com/Org/App` and `git@github.com:Org/App.git`
//! all become `github.com/Org/App`.
//!
//! Ids are shown as written but matched on their [`RepoKey`], the id folded to lower case: GitHub,
//! GitLab and Gitea name `Org/App` and `org/app` as one repository, so a webhook's `org/app` must
//! reach a `GitRepository` whose URL says `Org/App`. A notice is only a hint, so on a forge that
//! tells the two apart a false match costs one extra ls-remote, never a deploy.
//!
//! Local repositories (`file:///srv/git/app.git` or an absolute path `/srv/git/app.git`) become
//! `file/srv/git/app`: the literal `file` stands where a host would be.
//!
//! Accepted forms:
//! - `scheme://[user[:password]@]host[:port]/path` for `https`, `http`, `ssh`, `git`, `git+ssh`, `ssh+git`;
//! - `file:///path` and `/path`;
//! - scp-like `[user@]host:path` (as git understands it);
//! - an id already normalised, `host[:port]/path`, so that [`normalize`] is idempotent. A string without a
//!   scheme of the shape `host:digits/...` is read as a normalised id with a port, not as scp-like syntax.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use crate::url::{Syntax, Url, UrlError, mask_password, parse_port};

/// The normalised identity of a git repository, `host[:port]/path`. Build one with [`normalize`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RepoId(String);

impl RepoId {
    /// The id as a string, `host[:port]/path`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The key this id is matched on: the id folded to lower case.
    pub fn key(&self) -> RepoKey {
        RepoKey(self.0.to_lowercase())
    }
}

/// A [`RepoId`] folded to lower case: what notices, watch sets and the hub's store match on, so
/// that ids differing only in letter case meet. Build one with [`RepoId::key`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoKey(String);

impl RepoKey {
    /// The folded id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&RepoId> for RepoKey {
    fn from(id: &RepoId) -> Self {
        id.key()
    }
}

impl fmt::Display for RepoId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for RepoId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for RepoId {
    type Err = RepoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        normalize(s)
    }
}

// Deserialising normalises, so a peer cannot smuggle in an id that `normalize` would not produce.
impl<'de> Deserialize<'de> for RepoId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        normalize(&raw).map_err(serde::de::Error::custom)
    }
}

/// Why a URL could not be read as a repository.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepoError {
    /// The string was empty or only whitespace.
    #[error("empty repository URL")]
    Empty,
    /// The scheme is not one git clones over.
    #[error(
        "repository URL {url:?}: unsupported scheme {scheme:?} (use https, http, ssh, git or file)"
    )]
    UnsupportedScheme {
        /// The URL, with any password removed.
        url: String,
        /// The scheme found.
        scheme: String,
    },
    /// No host could be found.
    #[error("repository URL {url:?}: no host")]
    MissingHost {
        /// The URL, with any password removed.
        url: String,
    },
    /// No path after the host.
    #[error("repository URL {url:?}: no repository path after the host")]
    MissingPath {
        /// The URL, with any password removed.
        url: String,
    },
    /// The port is not a number from 1 to 65535.
    #[error("repository URL {url:?}: invalid port {port:?}")]
    InvalidPort {
        /// The URL, with any password removed.
        url: String,
        /// The port text found.
        port: String,
    },
    /// The host holds a colon outside brackets, which would read back as a port or as scp-like
    /// syntax.
    #[error(
        "repository URL {url:?}: invalid host {host:?} (write an IPv6 address in brackets, as in [::1])"
    )]
    InvalidHost {
        /// The URL, with any password removed.
        url: String,
        /// The host found.
        host: String,
    },
    /// The path still ends in `.git` once its `.git` is dropped (`app.git.git`): as an id it would
    /// read back as another repository's.
    #[error("repository URL {url:?}: the path ends in .git twice")]
    DoubleGitSuffix {
        /// The URL, with any password removed.
        url: String,
    },
    /// The URL holds characters that have no place in a repository URL.
    #[error("repository URL {url:?}: contains whitespace or control characters")]
    InvalidCharacters {
        /// The URL, with any password removed.
        url: String,
    },
}

impl RepoError {
    /// A short fixed name for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            RepoError::Empty => "empty",
            RepoError::UnsupportedScheme { .. } => "unsupported_scheme",
            RepoError::MissingHost { .. } => "missing_host",
            RepoError::MissingPath { .. } => "missing_path",
            RepoError::InvalidPort { .. } => "invalid_port",
            RepoError::InvalidHost { .. } => "invalid_host",
            RepoError::DoubleGitSuffix { .. } => "double_git_suffix",
            RepoError::InvalidCharacters { .. } => "invalid_characters",
        }
    }
}

/// Normalise a clone URL (https, ssh, scp-like, git, file) to its [`RepoId`].
///
/// ```
/// use tether_protocol::repo::normalize;
/// let a = normalize("https://github.com/Org/App.git").unwrap();
/// let b = normalize("git@github.com:Org/App.git").unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a.as_str(), "github.com/Org/App");
/// ```
pub fn normalize(url: &str) -> Result<RepoId, RepoError> {
    let trimmed = url.trim();
    if trimmed.is_empty() {
        return Err(RepoError::Empty);
    }
    if trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(RepoError::InvalidCharacters {
            url: mask_password(trimmed),
        });
    }
    // Query and fragment never name a different repository.
    let trimmed = trimmed.split(['?', '#']).next().unwrap_or(trimmed);
    let parts = Url::split(trimmed);
    match parts.syntax {
        Syntax::Url => {
            let scheme = parts.scheme.unwrap_or_default().to_ascii_lowercase();
            let default_port = match scheme.as_str() {
                "https" => Some(443),
                "http" => Some(80),
                "ssh" | "git+ssh" | "ssh+git" => Some(22),
                "git" => Some(9418),
                "file" => return local_url(trimmed, &parts),
                _ => {
                    return Err(RepoError::UnsupportedScheme {
                        url: mask_password(trimmed),
                        scheme,
                    });
                }
            };
            let (host, port) = host_port(trimmed, &parts)?;
            build(trimmed, host, port, parts.path, default_port)
        }
        Syntax::Local => local(trimmed, parts.path),
        Syntax::Scp => {
            let (host, _) = host_port(trimmed, &parts)?;
            // To git, `host:2222/path` is scp-like with a path `2222/path`; here it is an id already
            // normalised, with a port, so that `normalize` is idempotent.
            let digits = parts.path.split('/').next().unwrap_or("");
            let is_port = parts.userinfo.is_none()
                && !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && parts.path.len() > digits.len();
            if is_port {
                let port = parse_port(digits).map_err(|e| port_error(trimmed, e))?;
                build(trimmed, host, Some(port), &parts.path[digits.len()..], None)
            } else {
                // Everything after the colon is the path, relative to the login's home.
                build(trimmed, host, None, parts.path, None)
            }
        }
        Syntax::HostPath if parts.path.is_empty() => Err(RepoError::MissingPath {
            url: mask_password(trimmed),
        }),
        Syntax::HostPath => {
            let (host, port) = host_port(trimmed, &parts)?;
            build(trimmed, host, port, parts.path, None)
        }
    }
}

fn host_port<'a>(url: &str, parts: &Url<'a>) -> Result<(&'a str, Option<u16>), RepoError> {
    parts.host_port().map_err(|e| port_error(url, e))
}

fn port_error(url: &str, e: UrlError) -> RepoError {
    let url = mask_password(url);
    match e {
        UrlError::InvalidPort { port } => RepoError::InvalidPort { url, port },
        UrlError::UnclosedBracket => RepoError::MissingHost { url },
    }
}

/// Assemble `host[:port]/path`, dropping a default port.
fn build(
    url: &str,
    host: &str,
    port: Option<u16>,
    path: &str,
    default_port: Option<u16>,
) -> Result<RepoId, RepoError> {
    if host.is_empty() {
        return Err(RepoError::MissingHost {
            url: mask_password(url),
        });
    }
    let host = host.to_ascii_lowercase();
    if host.contains(':') && !(host.starts_with('[') && host.ends_with(']')) {
        return Err(RepoError::InvalidHost {
            url: mask_password(url),
            host,
        });
    }
    let path = clean_path(url, path)?;
    let id = match port {
        Some(p) if Some(p) != default_port => format!("{host}:{p}/{path}"),
        _ => format!("{host}/{path}"),
    };
    Ok(RepoId(id))
}

/// `file:///path` (or `file://localhost/path`); a remote host is not a local repository.
fn local_url(url: &str, parts: &Url<'_>) -> Result<RepoId, RepoError> {
    if parts.userinfo.is_some()
        || !matches!(parts.authority, "" | "localhost")
        || !parts.path.starts_with('/')
    {
        return Err(RepoError::UnsupportedScheme {
            url: mask_password(url),
            scheme: "file (with a remote host)".to_string(),
        });
    }
    local(url, parts.path)
}

fn local(url: &str, path: &str) -> Result<RepoId, RepoError> {
    let path = clean_path(url, path)?;
    Ok(RepoId(format!("file/{path}")))
}

/// Drop leading and trailing slashes, empty and `.` segments and one trailing `.git`; refuse an
/// empty path, and one that ends in `.git` still, so that an id normalises to itself.
fn clean_path(url: &str, path: &str) -> Result<String, RepoError> {
    let mut segments: Vec<&str> = path
        .split('/')
        .filter(|s| !s.is_empty() && *s != ".")
        .collect();
    if let Some(last) = segments.pop() {
        match last.strip_suffix(".git") {
            // The segment was the suffix alone (`repo/.git`), or `.` once it is gone.
            Some("" | ".") => {}
            Some(stem) => segments.push(stem),
            None => segments.push(last),
        }
    }
    let path = segments.join("/");
    if path.is_empty() {
        return Err(RepoError::MissingPath {
            url: mask_password(url),
        });
    }
    if path.ends_with(".git") {
        return Err(RepoError::DoubleGitSuffix {
            url: mask_password(url),
        });
    }
    Ok(path)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn id(url: &str) -> String {
        normalize(url).unwrap().to_string()
    }

    #[test]
    fn https_ssh_and_scp_forms_of_one_repo_meet() {
        let want = "github.com/Org/App";
        for url in [
            "https://github.com/Org/App.git",
            "https://github.com/Org/App",
            "https://github.com/Org/App/",
            "https://GitHub.COM/Org/App.git/",
            "https://user:token@github.com/Org/App.git",
            "https://github.com:443/Org/App.git",
            "ssh://git@github.com/Org/App",
            "ssh://git@github.com:22/Org/App.git",
            "git+ssh://git@github.com/Org/App.git",
            "git@github.com:Org/App.git",
            "git@github.com:/Org/App.git",
            "github.com:Org/App",
            "git://github.com/Org/App.git",
            "github.com/Org/App",
            "https://github.com/Org/App.git?foo=bar#frag",
            "  https://github.com/Org/App.git\n",
        ] {
            assert_eq!(id(url), want, "{url}");
        }
    }

    #[test]
    fn non_default_ports_are_kept() {
        assert_eq!(
            id("ssh://git@gitlab.com:2222/group/name.git"),
            "gitlab.com:2222/group/name"
        );
        assert_eq!(
            id("https://git.example.com:8443/a/b.git"),
            "git.example.com:8443/a/b"
        );
        assert_eq!(id("http://gogs-server:80/john/x"), "gogs-server/john/x");
        assert_eq!(
            id("http://gogs-server:3000/john/x"),
            "gogs-server:3000/john/x"
        );
        // A port of 443 over ssh is not the ssh default.
        assert_eq!(id("ssh://git@h.example:443/a"), "h.example:443/a");
    }

    #[test]
    fn normalize_is_idempotent() {
        for url in [
            "ssh://git@gitlab.com:2222/group/name.git",
            "https://github.com/Org/App.git",
            "file:///srv/git/app.git",
            "https://[::1]:8443/a/b.git",
            "git@host.example:team/repo.git",
        ] {
            let once = id(url);
            assert_eq!(id(&once), once, "{url}");
        }
    }

    #[test]
    fn a_path_that_ends_in_git_twice_is_refused() {
        // Dropping one `.git` left an id that normalised to another repository's.
        for url in [
            "https://h.example/a.git.git",
            "https://h.example/a.git/.git",
            "/srv/a.git.git",
        ] {
            assert_eq!(
                normalize(url).unwrap_err().category(),
                "double_git_suffix",
                "{url}"
            );
        }
        assert_eq!(id("https://h.example/a/..git"), "h.example/a");
        assert_eq!(id(&id("https://h.example/a/..git")), "h.example/a");
        assert_eq!(id("https://h.example/a/.git"), "h.example/a");
    }

    #[test]
    fn a_host_with_a_colon_outside_brackets_is_refused() {
        // `a:b:c/x` read back as the scp-like `a` with the path `b:c/x`, `::1/x` as no host at all.
        for url in ["https://a:b:c/x", "https://::1/x", "ssh://git@fe80::1:22/x"] {
            let e = normalize(url).unwrap_err();
            assert_eq!(e.category(), "invalid_host", "{url}");
            assert!(e.to_string().contains("[::1]"), "{e}");
        }
        assert_eq!(id("https://[fe80::1]:22/x"), "[fe80::1]:22/x");
    }

    #[test]
    fn local_paths_become_file_ids() {
        assert_eq!(id("file:///srv/git/app.git"), "file/srv/git/app");
        assert_eq!(id("file://localhost/srv/git/app"), "file/srv/git/app");
        assert_eq!(id("/srv/git/app.git/"), "file/srv/git/app");
        assert_eq!(id("file/srv/git/app"), "file/srv/git/app");
    }

    #[test]
    fn ipv6_hosts_keep_brackets() {
        assert_eq!(id("https://[::1]:8443/a/b.git"), "[::1]:8443/a/b");
        assert_eq!(id("https://[::1]/a/b.git"), "[::1]/a/b");
    }

    #[test]
    fn path_case_is_preserved_host_case_is_not() {
        assert_eq!(id("https://EXAMPLE.org/A/B"), "example.org/A/B");
    }

    #[test]
    fn ids_differing_only_in_case_share_a_key_and_keep_their_form() {
        let upper = normalize("https://git.example/Ops/Config.git").unwrap();
        let lower = normalize("git@git.example:ops/config").unwrap();
        assert_ne!(upper, lower);
        assert_eq!(upper.key(), lower.key());
        assert_eq!(upper.key().as_str(), "git.example/ops/config");
        assert_eq!(upper.as_str(), "git.example/Ops/Config");
        assert_ne!(
            upper.key(),
            normalize("https://git.example/Ops/Other").unwrap().key()
        );
        // Non-ASCII letters fold too.
        assert_eq!(
            normalize("https://h/ÉQUIPE/a").unwrap().key(),
            normalize("https://h/équipe/A").unwrap().key()
        );
    }

    #[test]
    fn errors_name_the_url_without_its_password() {
        let err = normalize("ftp://user:hunter2@example.org/a").unwrap_err();
        assert_eq!(err.category(), "unsupported_scheme");
        let text = err.to_string();
        assert!(text.contains("ftp://user:***@example.org/a"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");

        assert_eq!(normalize("").unwrap_err(), RepoError::Empty);
        assert_eq!(
            normalize("https://github.com").unwrap_err().category(),
            "missing_path"
        );
        assert_eq!(
            normalize("https://github.com/.git").unwrap_err().category(),
            "missing_path"
        );
        assert_eq!(
            normalize("https:///a/b").unwrap_err().category(),
            "missing_host"
        );
        assert_eq!(
            normalize("https://h:99999/a").unwrap_err().category(),
            "invalid_port"
        );
        assert_eq!(
            normalize("https://h/a b").unwrap_err().category(),
            "invalid_characters"
        );
        assert_eq!(
            normalize("justaname").unwrap_err().category(),
            "missing_path"
        );
        assert!(
            normalize("https://h:99999/a")
                .unwrap_err()
                .to_string()
                .contains("https://h:99999/a")
        );
    }

    #[test]
    fn deserialising_normalises() {
        let got: RepoId = serde_json::from_str("\"git@github.com:Org/App.git\"").unwrap();
        assert_eq!(got.as_str(), "github.com/Org/App");
        assert!(serde_json::from_str::<RepoId>("\"ftp://x/y\"").is_err());
        assert_eq!(
            serde_json::to_string(&got).unwrap(),
            "\"github.com/Org/App\""
        );
    }
}
