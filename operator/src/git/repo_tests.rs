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
use crate::plan::ContentLimits;

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
            &key,
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
        .read_tree(&key, sha.clone(), "deploy".into(), TIMEOUT, |p| {
            !p.ends_with(".txt")
        })
        .await
        .unwrap();
    let names: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(names, ["deploy/app.yaml", "deploy/nested/deeper/cm.yml"]);
    assert_eq!(files[1].1, b"kind: B\n");

    let all = cache
        .read_tree(&key, sha.clone(), String::new(), TIMEOUT, |_| true)
        .await
        .unwrap();
    assert_eq!(all.len(), 5);

    for missing in ["nope", "deploy/app.yaml"] {
        let err = cache
            .read_tree(&key, sha.clone(), missing.into(), TIMEOUT, |_| true)
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
    let files = read_tree_blocking(&mirror, &second, "deploy", &ContentLimits::DEFAULT, |_| {
        true
    })
    .unwrap();
    assert!(files.iter().any(|(p, _)| p == "deploy/new.yaml"));
    let files =
        read_tree_blocking(&mirror, &first, "deploy", &ContentLimits::DEFAULT, |_| true).unwrap();
    assert!(!files.iter().any(|(p, _)| p == "deploy/new.yaml"));

    // A pinned commit in a fresh mirror: fetched by id or through the fallback.
    let fresh = mirror_dir.path().join("fresh");
    let pinned = resolve(&up, RefTarget::Commit(first.clone())).unwrap();
    assert_eq!(
        fetch_blocking(&fresh, &up.url(), &pinned, &creds, &proxy, TIMEOUT).unwrap(),
        FetchOutcome::Fetched
    );
    assert!(read_tree_blocking(&fresh, &first, "", &ContentLimits::DEFAULT, |_| true).is_ok());

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

/// A commit over a content limit is refused from the blobs' headers, naming the file and the
/// flag that raises the limit; one within every limit reads as before.
#[test]
fn a_tree_over_a_content_limit_is_refused_naming_the_file_and_the_flag() {
    let up = Upstream::new();
    up.write("deploy/a.yaml", &"a".repeat(100));
    up.write("deploy/b.yaml", &"b".repeat(300));
    up.write("deploy/c.yaml", &"c".repeat(100));
    up.write("elsewhere/big.yaml", &"x".repeat(10_000));
    let sha = up.commit("sizes");
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror = mirror_dir.path().join("m");
    let target = resolve(&up, RefTarget::Branch("main".into())).unwrap();
    fetch_blocking(
        &mirror,
        &up.url(),
        &target,
        &Credentials::none(),
        &ProxyConfig::default(),
        TIMEOUT,
    )
    .unwrap();
    let read =
        |limits: ContentLimits| read_tree_blocking(&mirror, &sha, "deploy", &limits, |_| true);
    let limits = |file, revision, objects| ContentLimits {
        max_file_bytes: file,
        max_revision_bytes: revision,
        max_objects: objects,
    };

    let fits = read(limits(300, 500, 3)).unwrap();
    assert_eq!(fits.len(), 3);

    let err = read(limits(299, 10_000, 10)).unwrap_err();
    assert_eq!(
        err.to_string(),
        "deploy/b.yaml is 300 bytes, over the operator's limit of 299 bytes for one manifest \
         file; split it, or raise the limit (--max-file-bytes, TETHER_MAX_FILE_BYTES)"
    );
    assert_eq!(err.category(), "content_limit");
    assert_eq!(err.class(), ErrorClass::Revision);
    assert_eq!(err.reason(), crate::crd::reason::INVALID_MANIFEST);

    let err = read(limits(1_000, 499, 10)).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "the manifests add up to more than the operator's limit of 499 bytes for one \
             revision (reached at deploy/c.yaml)"
        ),
        "{err}"
    );
    assert!(err.to_string().contains("--max-revision-bytes"), "{err}");

    let err = read(limits(1_000, 10_000, 2)).unwrap_err();
    assert!(
        err.to_string().starts_with(
            "more than the operator's limit of 2 manifest files in one revision (reached at \
             deploy/c.yaml)"
        ),
        "{err}"
    );
}

/// A process killed mid-fetch leaves `*.lock` files (and half a pack) in its mirror; one killed
/// while creating it can leave a folder that is no repository. The next fetch, which holds the
/// mirror's lock, repairs both instead of failing until the cache is wiped.
#[test]
fn a_mirror_left_locked_or_broken_by_a_kill_is_repaired_on_the_next_fetch() {
    let up = Upstream::new();
    tree_fixture(&up);
    let mirror_dir = tempfile::tempdir().unwrap();
    let mirror = mirror_dir.path().join("m");
    let creds = Credentials::none();
    let proxy = ProxyConfig::default();
    let fetch = |mirror: &Path| {
        let branch = resolve(&up, RefTarget::Branch("main".into())).unwrap();
        fetch_blocking(mirror, &up.url(), &branch, &creds, &proxy, TIMEOUT)
    };
    fetch(&mirror).unwrap();

    for lock in [
        "refs/tether/heads/main.lock",
        "packed-refs.lock",
        "config.lock",
        "objects/pack/pack_git2_Ab12Cd",
    ] {
        let path = mirror.join(lock);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "left by a killed process").unwrap();
    }
    up.write("deploy/later.yaml", "kind: D\n");
    let later = up.commit("later");
    assert_eq!(fetch(&mirror).unwrap(), FetchOutcome::Fetched);
    let files =
        read_tree_blocking(&mirror, &later, "deploy", &ContentLimits::DEFAULT, |_| true).unwrap();
    assert!(files.iter().any(|(p, _)| p == "deploy/later.yaml"));
    assert!(!mirror.join("refs/tether/heads/main.lock").exists());

    let broken = mirror_dir.path().join("broken");
    std::fs::create_dir_all(broken.join("objects")).unwrap();
    std::fs::write(broken.join("HEAD"), "not a ref").unwrap();
    assert_eq!(fetch(&broken).unwrap(), FetchOutcome::Fetched);
}

/// The sweep removes the mirrors no repository in use names, keeps the others, and leaves alone
/// a mirror an operation holds.
#[tokio::test]
async fn the_sweep_removes_unused_mirrors_but_never_one_in_use_or_held() {
    let up = Upstream::new();
    let sha = tree_fixture(&up);
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = MirrorCache::new(cache_dir.path(), ProxyConfig::default());
    let creds = Arc::new(Credentials::none());
    let resolved = resolve(&up, RefTarget::Branch("main".into())).unwrap();
    for key in ["kept", "gone", "held"] {
        cache
            .fetch(key, up.url(), resolved.clone(), creds.clone(), TIMEOUT)
            .await
            .unwrap();
    }
    let held = cache.lock_for("held").lock_owned().await;
    let in_use: std::collections::HashSet<String> = ["kept".to_owned()].into();
    assert_eq!(cache.sweep(&in_use), 1);
    assert!(cache.mirror_path("kept").exists());
    assert!(!cache.mirror_path("gone").exists());
    assert!(cache.mirror_path("held").exists());
    drop(held);
    assert_eq!(cache.sweep(&in_use), 1);
    assert!(!cache.mirror_path("held").exists());

    // A repository named again is fetched afresh.
    let outcome = cache
        .fetch("gone", up.url(), resolved, creds, TIMEOUT)
        .await
        .unwrap();
    assert_eq!(outcome, FetchOutcome::Fetched);
    cache
        .read_tree("gone", sha, "deploy".into(), TIMEOUT, |_| true)
        .await
        .unwrap();
}
