//! Two operator replicas with leader election on one control plane: the leader is frozen (SIGSTOP),
//! so its connections hang and it renews nothing; the other takes over only once it has seen the
//! Lease unchanged for the lease duration, and acts. Thawed, the old leader writes nothing more and
//! exits. A leader cut off from its Lease alone, through a front that leaves its Lease requests
//! hanging, keeps working until its renew deadline and writes nothing once another replica took
//! over. The durations are short (lease 3 s, renew deadline 2 s, retry 500 ms) through the flags.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, ensure};
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tether_e2e::api_front::ApiFront;
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
    replica_at(ns.kubeconfig(), ns, identity)
}

fn replica_at(kubeconfig: &Path, ns: &TestNamespace, identity: &str) -> Result<Operator> {
    Operator::start(
        kubeconfig,
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

/// A namespace with the CRDs, a repository with ConfigMap `settings` at `v0`, and GitRepository
/// `app` syncing its `deploy` folder every `interval`.
async fn set_up(prefix: &str, interval: &str) -> Result<(TestNamespace, Upstream)> {
    let ns = TestNamespace::create(prefix).await?;
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
        &format!("  path: deploy\n  interval: {interval}\n"),
    ))?;
    Ok((ns, repo))
}

/// Once `leader` (replica-a) applied `app` and holds the Lease: replica-b, waiting as a follower.
fn follower(ns: &TestNamespace, leader: &Operator) -> Result<Operator> {
    let (kubectl, n) = (ns.kubectl(), ns.name());
    wait_ready(kubectl, n, "app", "60s", leader)?;
    ensure!(holder(kubectl, n)? == "replica-a");
    let b = replica(ns, "replica-b")?;
    wait_until(
        "replica-b waits as a follower",
        Duration::from_secs(30),
        || {
            ensure!(b.log().contains("another replica leads"), "not yet");
            Ok(())
        },
    )
    .with_context(|| b.log_tail())?;
    Ok(b)
}

/// Waits until replica-a, no longer leading, has exited.
fn exits(a: &Operator) -> Result<()> {
    let pid = a.pid();
    wait_until(
        "replica-a, no longer leading, exits",
        Duration::from_secs(30),
        || {
            ensure!(!alive(pid), "still running");
            Ok(())
        },
    )
    .with_context(|| a.log_tail())
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
    let (ns, repo) = set_up("leader", "1h").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    let a = replica(&ns, "replica-a")?;
    let b = follower(&ns, &a)?;

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
    exits(&a)?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_its_lease_stops_writing_before_another_takes_over() -> Result<()> {
    let (ns, repo) = set_up("leader-cut", "1s").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    let front = ApiFront::start(ns.kubeconfig()).await?;
    let a = replica_at(front.kubeconfig(), &ns, "replica-a")?;
    let b = follower(&ns, &a)?;

    // Cut off from its Lease, replica-a still reaches everything else. Commits keep landing, each
    // one work for whoever leads, until replica-b has led for a lease duration.
    front.freeze_leases();
    let cut = Instant::now();
    let mut taken: Option<Instant> = None;
    for version in 1.. {
        ensure!(
            cut.elapsed() < Duration::from_secs(90),
            "replica-b did not take over and lead for {LEASE:?} within 90 s\nreplica-b:\n{}",
            b.log_tail()
        );
        let v = format!("v{version}");
        repo.write("deploy/config.yaml", &config_map(n, "settings", &v))?;
        repo.commit(&v)?;
        repo.push()?;
        kubectl
            .wait_for_output(
                &greeting_args(n, "settings"),
                &v,
                Duration::from_secs(30),
                Duration::from_millis(100),
            )
            .with_context(|| format!("{v} is applied\nreplica-b:\n{}", b.log_tail()))?;
        match taken {
            None if holder(kubectl, n)? == "replica-b" => taken = Some(Instant::now()),
            Some(at) if at.elapsed() >= LEASE => break,
            _ => {}
        }
    }

    let lease = Api::<Lease>::namespaced(ns.client().await?, n)
        .get("tether-operator")
        .await?
        .spec
        .context("the Lease has no spec")?;
    ensure!(lease.holder_identity.as_deref() == Some("replica-b"));
    let acquired = SystemTime::from(lease.acquire_time.context("no acquireTime")?.0);
    let writes = front.writes();
    ensure!(
        writes
            .iter()
            .any(|w| w.path.ends_with("/configmaps/settings")),
        "replica-a never applied through the front: {writes:#?}"
    );
    let late: Vec<_> = writes.iter().filter(|w| w.at >= acquired).collect();
    ensure!(
        late.is_empty(),
        "replica-a wrote after replica-b took the Lease over ({acquired:?}): {late:#?}\nreplica-a:\n{}",
        a.log_tail()
    );
    if let Some(last) = writes.last() {
        eprintln!(
            "replica-a's last write {:?} before replica-b took over; {} writes through the front",
            acquired.duration_since(last.at).unwrap_or_default(),
            writes.len()
        );
    }
    exits(&a)?;
    let log = a.log();
    ensure!(
        log.contains("the renewal did not finish within the renew deadline")
            || log.contains("not renewed within the renew deadline"),
        "replica-a did not say why it stopped:\n{}",
        a.log_tail()
    );
    Ok(())
}
