//! Tests against real repositories made with the `git` command line, over `file://`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::crd::RefTarget;
use crate::error::{ErrorClass, StageError};
use crate::net::ProxyConfig;

const TIMEOUT: Duration = Duration::from_secs(30);

/// A repository on disk with a helper to run `git` in it, isolated from the user's config.
struct Upstream {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Upstream {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("upstream");
        std::fs::create_dir(&path).unwrap();
        let up = Self { _dir: dir, path };
        up.git(&["init", "--quiet", "--initial-branch=main"]);
        up
    }

    fn url(&self) -> String {
        format!("file://{}", self.path.display())
    }

    fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args(args)
            .current_dir(&self.path)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_AUTHOR_NAME", "Tether Test")
            .env("GIT_AUTHOR_EMAIL", "test@tether.dev")
            .env("GIT_COMMITTER_NAME", "Tether Test")
            .env("GIT_COMMITTER_EMAIL", "test@tether.dev")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    fn write(&self, file: &str, content: &str) {
        let path = self.path.join(file);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }

    /// Commits everything and returns the new commit id.
    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "--quiet", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }
}

fn resolve(up: &Upstream, target: RefTarget) -> Result<Resolved, GitError> {
    resolve_blocking(
        &up.url(),
        &target,
        &Credentials::none(),
        &ProxyConfig::default(),
        TIMEOUT,
    )
}

#[test]
fn resolves_a_branch_without_cloning() {
    let up = Upstream::new();
    up.write("a.yaml", "a: 1\n");
    let first = up.commit("first");
    let r = resolve(&up, RefTarget::Branch("main".into())).unwrap();
    assert_eq!(r.sha, first);
    assert_eq!(r.revision, format!("main@sha1:{first}"));
    assert_eq!(r.refname.as_deref(), Some("refs/heads/main"));

    let second = up.commit("second");
    let r = resolve(&up, RefTarget::Branch("main".into())).unwrap();
    assert_eq!(r.sha, second);
}

#[test]
fn resolves_lightweight_and_annotated_tags_to_commits() {
    let up = Upstream::new();
    let c1 = up.commit("one");
    up.git(&["tag", "light"]);
    let c2 = up.commit("two");
    up.git(&["tag", "-a", "annotated", "-m", "a release"]);
    up.commit("three");

    let r = resolve(&up, RefTarget::Tag("light".into())).unwrap();
    assert_eq!(r.sha, c1);
    let r = resolve(&up, RefTarget::Tag("annotated".into())).unwrap();
    assert_eq!(
        r.sha, c2,
        "annotated tags resolve to their commit, not the tag object"
    );
    assert_eq!(r.revision, format!("annotated@sha1:{c2}"));
}

#[test]
fn semver_follows_the_highest_matching_tag() {
    let up = Upstream::new();
    let v1 = up.commit("v1.0.0");
    up.git(&["tag", "v1.0.0"]);
    let v12 = up.commit("v1.2.0");
    up.git(&["tag", "-a", "v1.2.0", "-m", "1.2"]);
    up.commit("v2.0.0");
    up.git(&["tag", "v2.0.0"]);

    let r = resolve(&up, RefTarget::Semver("^1".into())).unwrap();
    assert_eq!(
        (r.sha.as_str(), r.revision),
        (v12.as_str(), format!("v1.2.0@sha1:{v12}"))
    );
    let r = resolve(&up, RefTarget::Semver("~1.0".into())).unwrap();
    assert_eq!(r.sha, v1);

    // A newer matching tag is picked up.
    let v13 = up.commit("v1.3.0");
    up.git(&["tag", "1.3.0"]);
    let r = resolve(&up, RefTarget::Semver("^1".into())).unwrap();
    assert_eq!(r.sha, v13);
    assert_eq!(r.refname.as_deref(), Some("refs/tags/1.3.0"));

    let err = resolve(&up, RefTarget::Semver("^9".into())).unwrap_err();
    assert_eq!(err.category(), "ref_not_found");
}

#[test]
fn a_pinned_commit_is_used_only_once_the_remote_lists_its_refs() {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let err = resolve_blocking(
        "file:///does/not/exist",
        &RefTarget::Commit(sha.into()),
        &Credentials::none(),
        &ProxyConfig::default(),
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(err.category(), "git_unreachable", "{err}");

    let up = Upstream::new();
    up.commit("one");
    let r = resolve(&up, RefTarget::Commit(sha.into())).unwrap();
    assert_eq!(r.revision, format!("sha1:{sha}"));
    assert_eq!(r.refname, None);
}

#[test]
fn missing_branch_and_missing_repository_are_told_apart() {
    let up = Upstream::new();
    up.commit("one");
    let err = resolve(&up, RefTarget::Branch("nope".into())).unwrap_err();
    assert_eq!(err.category(), "ref_not_found");
    assert_eq!(
        err.to_string(),
        format!("branch nope not found on {}", up.url())
    );

    let err = resolve_blocking(
        "file:///does/not/exist",
        &RefTarget::Branch("main".into()),
        &Credentials::none(),
        &ProxyConfig::default(),
        TIMEOUT,
    )
    .unwrap_err();
    assert_eq!(err.category(), "git_unreachable", "{err}");
    assert_eq!(err.class(), ErrorClass::Transient);
}

fn tree_fixture(up: &Upstream) -> String {
    up.write("README.md", "# repo\n");
    up.write("deploy/app.yaml", "kind: A\n");
    up.write("deploy/nested/deeper/cm.yml", "kind: B\n");
    up.write("deploy/nested/notes.txt", "skip me\n");
    up.write("other/x.yaml", "kind: X\n");
    up.commit("tree")
}

#[tokio::test]
async fn fetch_twice_skips_the_second_and_read_tree_walks_nested_folders() {
    let up = Upstream::new();
    let sha = tree_fixture(&up);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(cache_dir.path(), ProxyConfig::default());
    let creds = Arc::new(Credentials::none());
    let key = tether_protocol::normalize(&up.url()).unwrap().to_string();

    let resolved = cache
        .resolve(
            up.url(),
            RefTarget::Branch("main".into()),
            creds.clone(),
            TIMEOUT,
        )
        .await
        .unwrap();
    assert_eq!(resolved.sha, sha);
    let outcome = cache
        .fetch(&key, up.url(), resolved.clone(), creds.clone(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(outcome, FetchOutcome::Fetched);
    let outcome = cache
        .fetch(&key, up.url(), resolved, creds, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(outcome, FetchOutcome::AlreadyPresent);

    let files = cache
        .read_tree(&key, sha.clone(), "deploy".into(), |p| !p.ends_with(".txt"))
        .await
        .unwrap();
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["deploy/app.yaml", "deploy/nested/deeper/cm.yml"]);
    assert_eq!(files[1].1, b"kind: B\n");

    let all = cache
        .read_tree(&key, sha.clone(), String::new(), |_| true)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);

    for missing in ["nope", "deploy/app.yaml"] {
        let err = cache
            .read_tree(&key, sha.clone(), missing.into(), |_| true)
            .await
            .unwrap_err();
        assert_eq!(err.category(), "path_not_found", "{err}");
    }
}

#[test]
fn fetches_a_moved_branch_a_tag_and_a_pinned_commit() {
    let up = Upstream::new();
    let first = tree_fixture(&up);
    up.git(&["tag", "-a", "v1.0.0", "-m", "one"]);
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror = mirror_dir.path().join("m");
    let creds = Credentials::none();
    let proxy = ProxyConfig::default();

    let tag = resolve(&up, RefTarget::Tag("v1.0.0".into())).unwrap();
    assert_eq!(
        fetch_blocking(&mirror, &up.url(), &tag, &creds, &proxy, TIMEOUT).unwrap(),
        FetchOutcome::Fetched
    );

    up.write("deploy/new.yaml", "kind: C\n");
    let second = up.commit("second");
    let branch = resolve(&up, RefTarget::Branch("main".into())).unwrap();
    assert_eq!(branch.sha, second);
    assert_eq!(
        fetch_blocking(&mirror, &up.url(), &branch, &creds, &proxy, TIMEOUT).unwrap(),
        FetchOutcome::Fetched
    );
    let files = read_tree_blocking(&mirror, &second, "deploy", |_| true).unwrap();
    assert!(files.iter().any(|(p, _)| p == "deploy/new.yaml"));
    let files = read_tree_blocking(&mirror, &first, "deploy", |_| true).unwrap();
    assert!(!files.iter().any(|(p, _)| p == "deploy/new.yaml"));

    // A pinned commit in a fresh mirror: fetched by id or through the fallback.
    let fresh = mirror_dir.path().join("fresh");
    let pinned = resolve(&up, RefTarget::Commit(first.clone())).unwrap();
    assert_eq!(
        fetch_blocking(&fresh, &up.url(), &pinned, &creds, &proxy, TIMEOUT).unwrap(),
        FetchOutcome::Fetched
    );
    assert!(read_tree_blocking(&fresh, &first, "", |_| true).is_ok());

    let ghost = resolve(
        &up,
        RefTarget::Commit("0123456789abcdef0123456789abcdef01234567".into()),
    )
    .unwrap();
    let err = fetch_blocking(&fresh, &up.url(), &ghost, &creds, &proxy, TIMEOUT).unwrap_err();
    assert_eq!(err.category(), "ref_not_found", "{err}");
}

#[test]
fn mirror_paths_are_stable_and_inside_the_cache() {
    let cache = MirrorCache::new("/var/cache/tether", ProxyConfig::default());
    let p = cache.mirror_path("example.com/org/repo");
    assert!(p.starts_with(Path::new("/var/cache/tether")));
    assert_eq!(p.file_name().unwrap().len(), 32);
}
