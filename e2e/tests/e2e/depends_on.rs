//! `spec.dependsOn`: an apps repository whose objects need the CRD of an infrastructure repository
//! waits (Ready False, `DependencyNotReady`, naming it) until that one is Ready, and is woken the
//! moment it is, not at its own long interval; GitRepositories that depend on each other report the
//! cycle on each member (`DependencyCycle`).

use std::time::Instant;

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{git_repository, widget_crd};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, patch_spec, wait_ready, wait_reason};
use tether_e2e::operator::Operator;

/// How soon after its dependency is Ready a woken dependent must be Ready too: well under the 30 s
/// at which a waiting GitRepository looks at its dependencies again on its own.
const WOKEN_WITHIN: &str = "20s";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apps_repository_waits_for_its_infrastructure_and_is_woken_when_it_is_ready()
-> Result<()> {
    let ns = TestNamespace::create("depends-on").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    // A group of this test's own, so that reruns on a kept cluster do not meet.
    let group = format!("{n}.e2e.tether.dev");
    let infra = Upstream::new("infra")?;
    infra.write("deploy/crd.yaml", &widget_crd(&group))?;
    infra.commit("the Widget CRD")?;
    infra.push()?;
    let apps = Upstream::new("apps")?;
    apps.write(
        "deploy/widget.yaml",
        &format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata:\n  name: small\n  namespace: {n}\nspec:\n  size: 2\n"
        ),
    )?;
    apps.commit("a Widget")?;
    apps.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    // First two GitRepositories that wait for each other: each reports the cycle. Both exist before
    // either is reconciled (created suspended), so each check finds the other.
    for (name, other) in [("a", "b"), ("b", "a")] {
        kubectl.apply(&git_repository(
            n,
            name,
            &infra.file_url(),
            &format!(
                "  path: deploy\n  interval: 1h\n  suspend: true\n  dependsOn:\n  - name: {other}\n"
            ),
        ))?;
    }
    for name in ["a", "b"] {
        patch_spec(kubectl, n, name, r#"{"suspend":false}"#)?;
    }
    for name in ["a", "b"] {
        let (status, _, message) = wait_reason(kubectl, n, name, "DependencyCycle", &operator)?;
        ensure!(status == "False", "{name} Ready {status:?}: {message}");
        ensure!(
            message.contains(" → ")
                && message.contains(&format!("{n}/a"))
                && message.contains(&format!("{n}/b")),
            "{name}: the message does not list the cycle: {message}"
        );
    }

    // Long intervals: only a wake can bring apps to Ready soon after infra is.
    kubectl.apply(&git_repository(
        n,
        "apps",
        &apps.file_url(),
        "  path: deploy\n  interval: 1h\n  dependsOn:\n  - name: infra\n",
    ))?;
    let (status, _, message) = wait_reason(kubectl, n, "apps", "DependencyNotReady", &operator)?;
    ensure!(status == "False", "apps Ready {status:?}: {message}");
    ensure!(
        message.contains(&format!("{n}/infra")),
        "the message names not the dependency: {message}"
    );
    let widgets = kubectl.run(&["get", "crd", "-o", "name"])?;
    ensure!(
        !widgets.contains(&group),
        "the CRD exists before infra was created: {widgets}"
    );

    kubectl.apply(&git_repository(
        n,
        "infra",
        &infra.file_url(),
        "  path: deploy\n  interval: 1h\n",
    ))?;
    wait_ready(kubectl, n, "infra", "60s", &operator)?;
    let infra_ready = Instant::now();
    wait_ready(kubectl, n, "apps", WOKEN_WITHIN, &operator)?;
    eprintln!(
        "apps Ready {:.1}s after infra",
        infra_ready.elapsed().as_secs_f64()
    );
    let size = kubectl.run(&[
        "get",
        &format!("widgets.{group}"),
        "small",
        "-n",
        n,
        "-o",
        "jsonpath={.spec.size}",
    ])?;
    ensure!(size == "2", "widget size {size:?}");
    Ok(())
}
