//! Two operator replicas with leader election on one control plane: the leader is frozen (SIGSTOP),
//! so its connections hang and it renews nothing; the other takes over only once it has seen the
//! Lease unchanged for the lease duration, and acts. Thawed, the old leader writes nothing more and
//! exits. The durations are short (lease 3 s, renew deadline 2 s, retry 500 ms) through the flags.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting, greeting_args};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, wait_ready};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::process::{alive, signal};
use tether_e2e::wait::wait_until;

const LEASE: Duration = Duration::from_secs(3);
const RETRY: Duration = Duration::from_millis(500);

fn replica(ns: &TestNamespace, identity: &str) -> Result<Operator> {
    Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[
            "--leader-election",
            &format!("--leader-election-namespace={}", ns.name()),
            &format!("--identity={identity}"),
            "--leader-election-lease-duration=3s",
            "--leader-election-renew-deadline=2s",
            "--leader-election-retry-period=500ms",
        ],
    )
}

fn holder(kubectl: &Kubectl, ns: &str) -> Result<String> {
    kubectl.run(&[
        "get",
        "lease",
        "tether-operator",
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
}

fn resource_version(kubectl: &Kubectl, ns: &str, what: &str) -> Result<String> {
    kubectl.run(&[
        "get",
        what,
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.resourceVersion}",
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_replaced_after_the_lease_and_writes_nothing_once_thawed() -> Result<()>
{
    let ns = TestNamespace::create("leader").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("app")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v0"))?;
    repo.commit("v0")?;
    repo.push()?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 1h\n",
    ))?;

    let a = replica(&ns, "replica-a")?;
    wait_ready(kubectl, n, "app", "60s", &a)?;
    ensure!(holder(kubectl, n)? == "replica-a");
    let b = replica(&ns, "replica-b")?;
    wait_until(
        "replica-b waits as a follower",
        Duration::from_secs(30),
        || {
            ensure!(b.log().contains("another replica leads"), "not yet");
            Ok(())
        },
    )
    .with_context(|| b.log_tail())?;

    // Frozen: its connections hang and it renews nothing. A commit lands meanwhile.
    signal(a.pid(), "STOP");
    let frozen = Instant::now();
    let taken = push_and_wait_for_takeover(kubectl, n, &repo, &b, frozen);
    let before = (
        resource_version(kubectl, n, "configmap/settings"),
        resource_version(kubectl, n, "gitrepository/app"),
    );
    signal(a.pid(), "CONT");
    taken.with_context(|| format!("replica-b:\n{}", b.log_tail()))?;
    let before = (before.0?, before.1?);

    // Thawed: its deadline passed while it was frozen, so it writes nothing and exits.
    let pid = a.pid();
    wait_until(
        "the thawed replica-a exits",
        Duration::from_secs(30),
        || {
            ensure!(!alive(pid), "still running");
            Ok(())
        },
    )
    .with_context(|| a.log_tail())?;
    let log = a.log();
    ensure!(
        log.contains("leader election: not renewed within the renew deadline; stopping")
            || log.contains("the renewal did not finish within the renew deadline")
            || log.contains("the lease was taken over; stopping"),
        "replica-a did not say it stopped:\n{}",
        a.log_tail()
    );
    ensure!(
        log.matches("leader election: acquired").count() == 1,
        "replica-a led twice:\n{}",
        a.log_tail()
    );
    let after = (
        resource_version(kubectl, n, "configmap/settings")?,
        resource_version(kubectl, n, "gitrepository/app")?,
    );
    ensure!(
        after == before,
        "something wrote the objects once replica-a thawed: {before:?} → {after:?}\nreplica-a:\n{}",
        a.log_tail()
    );
    ensure!(greeting(kubectl, n, "settings")? == "v1");
    ensure!(holder(kubectl, n)? == "replica-b");
    Ok(())
}

/// Pushes a commit while the leader is frozen, and waits until `replica-b` holds the Lease (not
/// before the lease could run out since `frozen`) and applied the commit.
fn push_and_wait_for_takeover(
    kubectl: &Kubectl,
    n: &str,
    repo: &Upstream,
    b: &Operator,
    frozen: Instant,
) -> Result<()> {
    repo.write("deploy/config.yaml", &config_map(n, "settings", "v1"))?;
    repo.commit("v1")?;
    repo.push()?;
    wait_until(
        "replica-b takes the Lease over",
        Duration::from_secs(30),
        || {
            ensure!(holder(kubectl, n)? == "replica-b", "not yet");
            Ok(())
        },
    )?;
    let took = frozen.elapsed();
    // replica-b saw replica-a's last renewal at most a retry period before the freeze.
    ensure!(
        took >= LEASE - RETRY,
        "taken over {took:?} after the freeze, before the lease of {LEASE:?} could run out"
    );
    eprintln!("leader frozen → lease taken over: {took:?}");
    kubectl
        .wait_for_output(
            &greeting_args(n, "settings"),
            "v1",
            Duration::from_secs(60),
            Duration::from_millis(100),
        )
        .context("replica-b applies the new commit")?;
    wait_ready(kubectl, n, "app", "30s", b)
}
