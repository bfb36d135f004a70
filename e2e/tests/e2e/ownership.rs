//! Two `GitRepository` objects whose repositories hold the same object: the one that applied it
//! first keeps it; the other is refused with `OwnershipConflict` naming both, applies nothing of its
//! revision, and deleting it prunes nothing of the first's.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{
    get_field, install_crds, ready_condition, request_reconcile, wait_condition, wait_ready,
};
use tether_e2e::operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_another_git_repository_applied_is_refused_and_never_pruned_by_the_claimant()
-> Result<()> {
    let ns = TestNamespace::create("ownership").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let first = Upstream::new("first")?;
    first.write("deploy/shared.yaml", &config_map(n, "shared", "from-first"))?;
    first.commit("first")?;
    first.push()?;
    // The second repository holds the same ConfigMap, and one of its own.
    let second = Upstream::new("second")?;
    second.write(
        "deploy/shared.yaml",
        &config_map(n, "shared", "from-second"),
    )?;
    second.write("deploy/own.yaml", &config_map(n, "second-only", "x"))?;
    let second_sha = second.commit("second")?;
    second.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    let spec = "  path: deploy\n  interval: 1h\n";
    kubectl.apply(&git_repository(n, "first", &first.file_url(), spec))?;
    wait_ready(kubectl, n, "first", "60s", &operator)?;
    ensure!(greeting(kubectl, n, "shared")? == "from-first");

    kubectl.apply(&git_repository(n, "second", &second.file_url(), spec))?;
    wait_condition(
        kubectl,
        n,
        "second",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=OwnershipConflict",
        "60s",
        &operator,
    )?;
    let (status, _, message) = ready_condition(kubectl, n, "second")?;
    ensure!(status == "False", "Ready is {status}");
    for part in [
        format!("ConfigMap {n}/shared"),
        format!("GitRepository {n}/first"),
        format!("GitRepository {n}/second"),
    ] {
        ensure!(message.contains(&part), "{part:?} not in {message:?}");
    }
    ensure!(
        get_field(kubectl, n, "second", "{.status.lastAttemptedRevision}")?
            == format!("main@sha1:{second_sha}")
    );

    // Nothing of the refused revision was applied, and the first keeps its object.
    ensure!(greeting(kubectl, n, "shared")? == "from-first");
    let owner = kubectl.run(&[
        "get",
        "configmap",
        "shared",
        "-n",
        n,
        "-o",
        "jsonpath={.metadata.labels.tether\\.dev/name}",
    ])?;
    ensure!(owner == "first", "the ConfigMap's owner label is {owner:?}");
    let own = kubectl.run(&[
        "get",
        "configmap",
        "second-only",
        "-n",
        n,
        "--ignore-not-found",
    ])?;
    ensure!(own.is_empty(), "second-only was applied: {own}");
    let inventory = get_field(kubectl, n, "second", "{.status.inventory}")?;
    ensure!(
        !inventory.contains("shared"),
        "the refused object is in the claimant's inventory: {inventory}"
    );

    // A reconcile of the first changes nothing either: no tug of war.
    request_reconcile(kubectl, n, "first", "again")?;
    wait_condition(
        kubectl,
        n,
        "first",
        "jsonpath={.status.lastHandledReconcileAt}=again",
        "30s",
        &operator,
    )?;
    wait_ready(kubectl, n, "first", "30s", &operator)?;

    // Deleting the claimant (prune is on) leaves the first's object alone.
    kubectl.run(&["delete", "tgr", "second", "-n", n, "--timeout=60s"])?;
    ensure!(greeting(kubectl, n, "shared")? == "from-first");
    wait_ready(kubectl, n, "first", "30s", &operator)?;
    Ok(())
}
