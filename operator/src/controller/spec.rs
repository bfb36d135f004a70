//! A `GitRepository`'s spec, checked once at the start of a reconcile: what the stages consume.

use std::sync::Arc;
use std::time::Duration;

use tether_protocol::RepoId;

use super::error::Error;
use crate::crd::{GitRepositorySpec, RefTarget};
use crate::plan::ManifestFilter;

/// The spec with every field parsed: a reconcile that gets one never fails on the spec again.
#[derive(Debug)]
pub struct ValidSpec {
    /// The clone URL as written.
    pub url: String,
    /// The repository, normalised: the mirror's key and what push notices name.
    pub repo: RepoId,
    pub target: RefTarget,
    pub interval: Duration,
    /// The limit for each git operation and for the waits of apply and health.
    pub timeout: Duration,
    /// `spec.path` without leading or trailing slashes (`""` for the root).
    pub path: String,
    /// Which files of the commit are manifests (`spec.path`, `spec.ignore`).
    pub filter: Arc<ManifestFilter>,
}

impl ValidSpec {
    /// Whether the URL is plain `http://`.
    pub fn is_plain_http(&self) -> bool {
        tether_protocol::url::Url::split(&self.url)
            .scheme
            .is_some_and(|s| s.eq_ignore_ascii_case("http"))
    }

    /// Checks the spec, naming the field at fault; `file://` URLs only with `allow_file_urls`.
    pub fn parse(spec: &GitRepositorySpec, allow_file_urls: bool) -> Result<Self, Error> {
        let invalid = |e: &dyn std::fmt::Display| Error::InvalidSpec(e.to_string());
        let timeout = spec.timeout().map_err(|e| invalid(&e))?;
        let interval = spec.interval().map_err(|e| invalid(&e))?;
        let target = spec.git_ref.target().map_err(|e| invalid(&e))?;
        let repo = tether_protocol::normalize(&spec.url)
            .map_err(|e| Error::InvalidSpec(format!("spec.url: {e}")))?;
        let scheme = tether_protocol::url::Url::split(&spec.url).scheme;
        if !allow_file_urls && scheme.is_some_and(|s| s.eq_ignore_ascii_case("file")) {
            return Err(Error::InvalidSpec(
                "spec.url: file:// URLs are refused: this operator reads repositories from \
                 remotes only (it accepts local folders with --allow-file-urls, for demos and tests)"
                    .into(),
            ));
        }
        let path = spec.path().to_owned();
        let filter = Arc::new(ManifestFilter::new(&path, &spec.ignore)?);
        Ok(Self {
            url: spec.url.clone(),
            repo,
            target,
            interval,
            timeout,
            path,
            filter,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::{ErrorClass, StageError as _};

    fn spec(yaml: &str) -> GitRepositorySpec {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn defaults_are_filled_in_and_the_url_normalised() {
        let valid =
            ValidSpec::parse(&spec("url: https://Git.Example/ops/config.git\n"), false).unwrap();
        assert_eq!(valid.repo.to_string(), "git.example/ops/config");
        assert_eq!(valid.target, RefTarget::Branch("main".into()));
        assert_eq!(valid.interval, Duration::from_secs(300));
        assert_eq!(valid.timeout, Duration::from_secs(60));
        assert_eq!(valid.path, "");
    }

    #[test]
    fn plain_http_is_told_from_https() {
        let parse = |url: &str| ValidSpec::parse(&spec(&format!("url: {url}\n")), false).unwrap();
        assert!(parse("http://git.example/ops/config").is_plain_http());
        assert!(parse("HTTP://git.example/ops/config").is_plain_http());
        assert!(!parse("https://git.example/ops/config").is_plain_http());
        assert!(!parse("git@git.example:ops/config.git").is_plain_http());
    }

    #[test]
    fn a_file_url_needs_the_operators_permission() {
        let local = spec("url: file:///srv/git/config\n");
        assert!(ValidSpec::parse(&local, false).is_err());
        assert_eq!(
            ValidSpec::parse(&local, true).unwrap().repo.to_string(),
            "file/srv/git/config"
        );
    }

    #[test]
    fn each_bad_field_is_named_and_stalls() {
        for (yaml, field) in [
            ("url: https://h/r\ninterval: soon\n", "spec.interval"),
            ("url: https://h/r\ntimeout: 5x\n", "spec.timeout"),
            ("url: https://h/r\nref: {branch: a, tag: b}\n", "spec.ref"),
            ("url: not a url\n", "spec.url"),
            ("url: https://h/r\nignore: ['{a']\n", "spec.ignore"),
            ("url: file:///srv/git/secret\n", "--allow-file-urls"),
        ] {
            let err = ValidSpec::parse(&spec(yaml), false).unwrap_err();
            assert!(err.to_string().contains(field), "{yaml}: {err}");
            assert_eq!(err.class(), ErrorClass::Stalled, "{yaml}");
            assert_eq!(err.category(), "invalid_spec", "{yaml}");
        }
    }
}
