//! Scenario 7: a CRD and its objects in one commit; `targetNamespace`; `serviceAccountName` applying
//! with the rights of that account only.

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, widget_crd};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, wait_applied, wait_failed, wait_ready};
use tether_e2e::operator::Operator;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crd_and_its_objects_land_together_and_target_namespace_places_objects() -> Result<()> {
    let ns = TestNamespace::create("tenancy").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    // A group of this test's own, so that reruns on a kept cluster do not meet.
    let group = format!("{n}.e2e.tether.dev");
    let repo = Upstream::new("with-crd")?;
    repo.write("deploy/crd.yaml", &widget_crd(&group))?;
    repo.write(
        "deploy/widget.yaml",
        &format!("apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: small\n  namespace: {n}\nspec:\n  size: 3\n"),
    )?;
    repo.commit("a CRD and a Widget")?;
    repo.push()?;

    let placed = Upstream::new("placed")?;
    placed.write(
        "deploy/config.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: placed\ndata:\n  greeting: hello\n",
    )?;
    placed.commit("a ConfigMap without a namespace")?;
    placed.push()?;
    let target = format!("{n}-target");
    kubectl.run(&["create", "namespace", &target])?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "crd",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    kubectl.apply(&git_repository(
        n,
        "placed",
        &placed.file_url(),
        &format!("  path: deploy\n  interval: 2s\n  targetNamespace: {target}\n"),
    ))?;
    wait_ready(kubectl, n, "crd", "90s", &operator)?;
    let size = kubectl.run(&[
        "get",
        &format!("widgets.{group}"),
        "small",
        "-n",
        n,
        "-o",
        "jsonpath={.spec.size}",
    ])?;
    ensure!(size == "3", "widget size {size:?}");

    wait_ready(kubectl, n, "placed", "90s", &operator)?;
    let there = kubectl.run(&["get", "configmap", "placed", "-n", &target, "-o", "name"])?;
    ensure!(there.trim() == "configmap/placed", "{there:?}");
    let here = kubectl.run(&[
        "get",
        "configmap",
        "placed",
        "-n",
        n,
        "--ignore-not-found",
        "-o",
        "name",
    ])?;
    ensure!(
        here.trim().is_empty(),
        "also in the GitRepository's namespace: {here}"
    );

    // Deleting the GitRepository prunes the CRD, and with it the shared cluster is left clean.
    kubectl.run(&["delete", "tgr", "crd", "-n", n, "--timeout=60s"])?;
    kubectl.run(&[
        "delete",
        "namespace",
        &target,
        "--wait=false",
        "--ignore-not-found",
    ])?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_account_with_too_few_rights_applies_nothing() -> Result<()> {
    let ns = TestNamespace::create("tenancy-sa").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    kubectl.apply(&format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata:
  name: limited
  namespace: {n}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata:
  name: read-configmaps
  namespace: {n}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata:
  name: limited-reads
  namespace: {n}
roleRef:
  apiGroup: rbac.authorization.k8s.io
  kind: Role
  name: read-configmaps
subjects:
- kind: ServiceAccount
  name: limited
  namespace: {n}
"#
    ))?;
    let repo = Upstream::new("tenant")?;
    repo.write(
        "deploy/config.yaml",
        &config_map(n, "tenant-settings", "hi"),
    )?;
    let head = repo.commit("a ConfigMap the tenant may not write")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "tenant",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  serviceAccountName: limited\n",
    ))?;
    let (_, reason, message) = wait_failed(
        kubectl,
        n,
        "tenant",
        &format!("main@sha1:{head}"),
        &operator,
    )?;
    ensure!(
        message.contains("forbidden") && message.contains("tenant-settings"),
        "reason {reason:?}, message {message:?}"
    );
    let applied = kubectl.run(&[
        "get",
        "configmap",
        "tenant-settings",
        "-n",
        n,
        "--ignore-not-found",
        "-o",
        "name",
    ])?;
    ensure!(applied.trim().is_empty(), "applied anyway: {applied}");
    Ok(())
}

/// A revision its service account may not apply is refused by the dry run before anything is
/// recorded, so deleting the `GitRepository` is not held up pruning what it never created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revision_the_account_may_not_apply_does_not_wedge_the_deletion() -> Result<()> {
    let ns = TestNamespace::create("tenancy-wedge").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    // An account with no rights at all: it may not even read what it would prune.
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: nobody\n  namespace: {n}\n"
    ))?;
    let repo = Upstream::new("wedge")?;
    repo.write("deploy/config.yaml", &config_map(n, "not-allowed", "hi"))?;
    let head = repo.commit("a ConfigMap the account may not write")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "tenant",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  serviceAccountName: nobody\n",
    ))?;
    wait_failed(
        kubectl,
        n,
        "tenant",
        &format!("main@sha1:{head}"),
        &operator,
    )?;
    let inventory = kubectl.run(&[
        "get",
        "tgr",
        "tenant",
        "-n",
        n,
        "-o",
        "jsonpath={.status.inventory}",
    ])?;
    ensure!(
        !inventory.contains("not-allowed"),
        "an object the dry run refused was recorded: {inventory}"
    );
    kubectl.run(&["delete", "tgr", "tenant", "-n", n, "--timeout=30s"])?;
    Ok(())
}

/// Every verb a deployer of ConfigMaps needs.
const ALL_VERBS: &str = "get, list, create, update, patch, delete";

/// The ServiceAccount `deployer`, allowed `verbs` on ConfigMaps of `ns` and nothing else.
fn configmap_deployer(ns: &str, verbs: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: deployer, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: configmaps, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [{verbs}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: deployer-configmaps, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: configmaps}}
subjects:
- {{kind: ServiceAccount, name: deployer, namespace: {ns}}}
"#
    )
}

/// An object the account may no longer read or delete is not treated as ours: pruning leaves it
/// in place with a Warning Event instead of failing every reconcile after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_the_account_may_no_longer_touch_is_left_alone_by_prune() -> Result<()> {
    let ns = TestNamespace::create("tenancy-revoked").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    kubectl.apply(&configmap_deployer(n, ALL_VERBS))?;
    let repo = Upstream::new("revoked")?;
    repo.write("deploy/kept.yaml", &config_map(n, "kept", "one"))?;
    repo.write("deploy/old.yaml", &config_map(n, "old", "one"))?;
    let first = repo.commit("two ConfigMaps")?;
    repo.push()?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "tenant",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  serviceAccountName: deployer\n",
    ))?;
    wait_applied(
        kubectl,
        n,
        "tenant",
        &format!("main@sha1:{first}"),
        &operator,
    )?;

    // The account may still apply ConfigMaps, but no longer read or delete them.
    kubectl.apply(&configmap_deployer(n, "create, update, patch"))?;
    repo.remove("deploy/old.yaml")?;
    let second = repo.commit("drop old")?;
    repo.push()?;
    wait_applied(
        kubectl,
        n,
        "tenant",
        &format!("main@sha1:{second}"),
        &operator,
    )?;
    wait_ready(kubectl, n, "tenant", "30s", &operator)?;
    ensure!(
        kubectl.names(n, "configmap")?.contains("old"),
        "an object the account may not delete was deleted"
    );
    let events = kubectl.run(&["get", "events", "-n", n, "-o", "yaml"])?;
    ensure!(
        events.contains("not pruning ConfigMap") && events.contains("/old: forbidden"),
        "no Warning Event names the object left alone: {events}"
    );
    Ok(())
}

/// The `secretRef` is read as the `serviceAccountName`: a tenant cannot borrow a Secret of its
/// namespace that its own account may not read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secret_is_read_with_the_service_accounts_rights() -> Result<()> {
    let ns = TestNamespace::create("tenancy-secret").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    kubectl.apply(&configmap_deployer(n, ALL_VERBS))?;
    kubectl.apply(&format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: someone-elses, namespace: {n}}}\n\
         stringData: {{username: ops, password: not-for-tenants}}\n"
    ))?;
    let repo = Upstream::new("borrowed")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "hi"))?;
    repo.commit("a ConfigMap")?;
    repo.push()?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "tenant",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  serviceAccountName: deployer\n  secretRef: {name: someone-elses}\n",
    ))?;
    let (_, reason, message) = wait_failed(kubectl, n, "tenant", "", &operator)?;
    ensure!(
        reason == "AuthenticationFailed"
            && message.contains("service account deployer may not read it"),
        "reason {reason:?}, message {message:?}"
    );
    Ok(())
}
