//! The operator's git layer against the real HTTPS test server (nginx and `git http-backend`): what
//! its fetches leave in the mirror cache.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use tether_e2e::git_server::HttpsGitServer;
use tether_operator::crd::RefTarget;
use tether_operator::git::{Credentials, FetchOutcome, fetch_blocking, resolve_blocking};
use tether_operator::net::ProxyConfig;

const TIMEOUT: Duration = Duration::from_secs(30);

/// `git --git-dir <mirror> <args>`, its output trimmed.
fn in_mirror(mirror: &Path, args: &[&str]) -> Result<String> {
    let out = Command::new("git")
        .arg("--git-dir")
        .arg(mirror)
        .args(args)
        .output()
        .context("running git")?;
    ensure!(
        out.status.success(),
        "git {args:?} in the mirror failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The first fetch of a branch takes its tip alone (depth 1); a later one takes just the commits since
/// (incremental, not deepened again), and the mirror then holds the history between the two. A branch
/// forced back behind the mirror's shallow boundary is fetched as well.
#[test]
fn the_first_fetch_of_a_branch_is_shallow_and_later_ones_bring_only_what_is_new() -> Result<()> {
    let server = HttpsGitServer::start()?;
    let repo = server.create_repo("history")?;
    for i in 0..5 {
        repo.write("deploy/config.yaml", &format!("n: \"{i}\"\n"))?;
        repo.commit(&format!("commit {i}"))?;
    }
    repo.push_to(&server.remote(&repo))?;

    let data: BTreeMap<String, Vec<u8>> = [
        ("username", server.username()),
        ("password", server.password()),
        ("caFile", server.ca_pem()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
    .collect();
    let creds = Credentials::from_secret_data("e2e/history-auth", &data)?;
    let url = server.url("history");
    let cache = tempfile::tempdir()?;
    let mirror = cache.path().join("mirror");
    let main = RefTarget::Branch("main".into());
    let proxy = ProxyConfig::default();

    let first = resolve_blocking(&url, &main, &creds, &proxy, TIMEOUT)?;
    ensure!(
        fetch_blocking(&mirror, &url, &first, &creds, &proxy, TIMEOUT)? == FetchOutcome::Fetched
    );
    ensure!(
        in_mirror(&mirror, &["rev-list", "--count", &first.sha])? == "1",
        "the first fetch brought more than the tip"
    );
    let boundary = std::fs::read_to_string(mirror.join("shallow"))?;
    ensure!(
        boundary.trim() == first.sha,
        "shallow boundary {boundary:?}"
    );

    for i in 5..7 {
        repo.write("deploy/config.yaml", &format!("n: \"{i}\"\n"))?;
        repo.commit(&format!("commit {i}"))?;
    }
    repo.push_to(&server.remote(&repo))?;
    let second = resolve_blocking(&url, &main, &creds, &proxy, TIMEOUT)?;
    ensure!(second.sha != first.sha);
    ensure!(
        fetch_blocking(&mirror, &url, &second, &creds, &proxy, TIMEOUT)? == FetchOutcome::Fetched
    );
    // The tip, the commit between, and the first fetch's tip: nothing older, nothing cut off.
    ensure!(
        in_mirror(&mirror, &["rev-list", "--count", &second.sha])? == "3",
        "the second fetch was not incremental"
    );
    let boundary = std::fs::read_to_string(mirror.join("shallow"))?;
    ensure!(
        boundary.trim() == first.sha,
        "the second fetch moved the shallow boundary: {boundary:?}"
    );
    ensure!(
        fetch_blocking(&mirror, &url, &second, &creds, &proxy, TIMEOUT)?
            == FetchOutcome::AlreadyPresent
    );

    // A rollback by force push, to a commit older than the mirror's shallow boundary: fetched too.
    let older = repo.rev_parse("HEAD~4")?;
    repo.git(&["reset", "--hard", &older])?;
    repo.force_push_to(&server.remote(&repo))?;
    let rolled_back = resolve_blocking(&url, &main, &creds, &proxy, TIMEOUT)?;
    ensure!(rolled_back.sha == older);
    ensure!(
        fetch_blocking(&mirror, &url, &rolled_back, &creds, &proxy, TIMEOUT)?
            == FetchOutcome::Fetched
    );
    ensure!(in_mirror(&mirror, &["cat-file", "-t", &older])? == "commit");
    Ok(())
}
