//! Scenario 5: what a `GitRepository` follows: a branch other than main, a tag, the highest tag in a
//! semver range, a pinned commit; and the API server refusing two refs at once.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{commit_config_map, git_repository, greeting};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, reconcile_now, wait_applied, wait_ready};
use tether_e2e::operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follows_a_branch_a_tag_a_semver_range_and_a_pinned_commit() -> Result<()> {
    let ns = TestNamespace::create("refs").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;

    // Branch: a release branch, not main.
    let mut branchy = Upstream::new("branchy")?;
    commit_config_map(&branchy, n, "on-branch", "main-1")?;
    branchy.push()?;
    branchy.checkout("release")?;
    let release = commit_config_map(&branchy, n, "on-branch", "release-1")?;
    branchy.push()?;

    // Tag: v1.0.0, then main moves on.
    let tagged = Upstream::new("tagged")?;
    let v1 = commit_config_map(&tagged, n, "on-tag", "one")?;
    tagged.tag("v1.0.0")?;
    commit_config_map(&tagged, n, "on-tag", "untagged")?;
    tagged.push()?;

    // Semver: 1.0.0 now; 1.1.0 and 2.0.0 later.
    let versioned = Upstream::new("versioned")?;
    commit_config_map(&versioned, n, "on-semver", "1.0.0")?;
    versioned.annotated_tag("1.0.0", "first")?;
    versioned.push()?;

    // Pinned: the first of two commits.
    let pinned = Upstream::new("pinned")?;
    let first = commit_config_map(&pinned, n, "on-commit", "first")?;
    commit_config_map(&pinned, n, "on-commit", "second")?;
    pinned.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let spec = |r: &str| format!("  path: deploy\n  interval: 2s\n  ref: {{{r}}}\n");
    for (name, repo, r) in [
        ("branch", &branchy, "branch: release"),
        ("tag", &tagged, "tag: v1.0.0"),
        ("semver", &versioned, "semver: '>=1.0.0, <2.0.0'"),
        ("commit", &pinned, &format!("commit: {first}")),
    ] {
        kubectl.apply(&git_repository(n, name, &repo.file_url(), &spec(r)))?;
    }
    for name in ["branch", "tag", "semver", "commit"] {
        wait_ready(kubectl, n, name, "90s", &operator)?;
    }
    wait_applied(
        kubectl,
        n,
        "branch",
        &format!("release@sha1:{release}"),
        &operator,
    )?;
    wait_applied(kubectl, n, "tag", &format!("v1.0.0@sha1:{v1}"), &operator)?;
    wait_applied(kubectl, n, "commit", &format!("sha1:{first}"), &operator)?;
    ensure!(greeting(kubectl, n, "on-branch")? == "release-1");
    ensure!(greeting(kubectl, n, "on-tag")? == "one");
    ensure!(greeting(kubectl, n, "on-semver")? == "1.0.0");
    ensure!(greeting(kubectl, n, "on-commit")? == "first");

    // The branch follows its own pushes, not main's.
    let release2 = commit_config_map(&branchy, n, "on-branch", "release-2")?;
    branchy.push()?;
    branchy.checkout("main")?;
    commit_config_map(&branchy, n, "on-branch", "main-2")?;
    branchy.push()?;
    wait_applied(
        kubectl,
        n,
        "branch",
        &format!("release@sha1:{release2}"),
        &operator,
    )?;
    reconcile_now(kubectl, n, "branch", "after-main-moved", &operator)?;
    ensure!(greeting(kubectl, n, "on-branch")? == "release-2");

    // A newer matching tag is picked up; one outside the range is not.
    let minor = commit_config_map(&versioned, n, "on-semver", "1.1.0")?;
    versioned.tag("v1.1.0")?;
    versioned.push()?;
    wait_applied(
        kubectl,
        n,
        "semver",
        &format!("v1.1.0@sha1:{minor}"),
        &operator,
    )?;
    ensure!(greeting(kubectl, n, "on-semver")? == "1.1.0");
    commit_config_map(&versioned, n, "on-semver", "2.0.0")?;
    versioned.tag("2.0.0")?;
    versioned.push()?;
    reconcile_now(kubectl, n, "semver", "after-2.0.0", &operator)?;
    ensure!(greeting(kubectl, n, "on-semver")? == "1.1.0");
    wait_applied(
        kubectl,
        n,
        "semver",
        &format!("v1.1.0@sha1:{minor}"),
        &operator,
    )?;

    // The tag and the pinned commit stay where they are while main moves.
    commit_config_map(&tagged, n, "on-tag", "later")?;
    tagged.push()?;
    commit_config_map(&pinned, n, "on-commit", "third")?;
    pinned.push()?;
    reconcile_now(kubectl, n, "tag", "after-push", &operator)?;
    reconcile_now(kubectl, n, "commit", "after-push", &operator)?;
    ensure!(greeting(kubectl, n, "on-tag")? == "one");
    ensure!(greeting(kubectl, n, "on-commit")? == "first");

    // Two refs at once are refused by the API server itself.
    let refused = kubectl.apply(&git_repository(
        n,
        "two-refs",
        &pinned.file_url(),
        "  ref: {branch: main, tag: v1.0.0}\n",
    ));
    let message = format!("{refused:?}");
    ensure!(
        refused.is_err() && message.contains("at most one of branch, tag, semver and commit"),
        "two refs were not refused: {message}"
    );
    Ok(())
}
