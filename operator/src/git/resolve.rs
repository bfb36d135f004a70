//! Resolving a ref on a remote without cloning: an ls-remote, then the branch, the tag (peeled) or
//! the highest tag in a semver range among what the remote advertises.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use git2::Repository;
use tether_protocol::url::without_userinfo;

use super::remote::{SharedState, classify, fetch_options, http_scope};
use super::{Credentials, GitError};
use crate::crd::{RefTarget, format_revision};
use crate::net::ProxyConfig;

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

/// Lists the refs of a remote (an ls-remote): `(refname, oid)` pairs, including the peeled
/// `^{}` entries of annotated tags.
pub fn ls_remote_blocking(
    url: &str,
    creds: &Credentials,
    proxy: &ProxyConfig,
    timeout: Duration,
) -> Result<Vec<(String, String)>, GitError> {
    let deadline = Instant::now() + timeout;
    let state = SharedState::default();
    let _http = http_scope(url, creds, proxy, deadline, &state);
    let headers: Vec<String> = creds.authorization_header().into_iter().collect();
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
    let mut opts = fetch_options(url, creds, proxy, deadline, &state, &headers);
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

/// Resolves `target` on the remote at `url` (no clone). A pinned commit is returned as is, but
/// only after the remote listed its refs for `creds`: the mirrors are shared, so every
/// `GitRepository` proves with its own credentials that it may read the remote before anything
/// cached from it is used for it.
pub fn resolve_blocking(
    url: &str,
    target: &RefTarget,
    creds: &Credentials,
    proxy: &ProxyConfig,
    timeout: Duration,
) -> Result<Resolved, GitError> {
    let heads = ls_remote_blocking(url, creds, proxy, timeout)?;
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
        url: without_userinfo(url),
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::StageError;

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
}
