//! The main sync scenarios, as a user works: `kubectl apply` a `GitRepository`, commit and push,
//! `kubectl wait` / `kubectl get`.

use anyhow::Result;
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting_args, write_app};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{
    get_field, install_crds, patch_spec, request_reconcile, wait_condition, wait_for_output,
    wait_ready,
};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;

/// Waits until the `GitRepository` `app` reports `main@sha1:<sha>` as applied.
fn wait_for_revision(
    kubectl: &Kubectl,
    namespace: &str,
    sha: &str,
    operator: &Operator,
) -> Result<()> {
    wait_for_output(
        kubectl,
        &[
            "get",
            "tgr",
            "app",
            "-n",
            namespace,
            "-o",
            "jsonpath={.status.lastAppliedRevision}",
        ],
        &format!("main@sha1:{sha}"),
        operator,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_a_repo_then_follows_pushes_prunes_and_reverts_drift() -> Result<()> {
    let ns = TestNamespace::create("sync").await?;
    let kubectl = ns.kubectl();
    install_crds(kubectl)?;
    let repo = Upstream::new("app")?;
    write_app(&repo, ns.name(), "hello")?;
    repo.commit("the app")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), ns.name(), &[])?;
    kubectl.apply(&git_repository(
        ns.name(),
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;

    // 1. Ready, the columns, the objects with their owner labels, the revision.
    wait_ready(kubectl, ns.name(), "app", "90s", &operator)?;
    let head = repo.head()?;
    assert_eq!(
        get_field(kubectl, ns.name(), "app", "{.status.lastAppliedRevision}")?,
        format!("main@sha1:{head}")
    );
    let table = kubectl.run(&["get", "tgr", "-n", ns.name()])?;
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "URL", "REVISION", "READY", "STATUS", "AGE"] {
        assert!(header.contains(column), "no {column} column in:\n{table}");
    }
    assert!(
        table.contains(&format!("main@{}", &head[..7])),
        "no short revision in:\n{table}"
    );
    for object in ["configmap/settings", "deployment/web", "service/web"] {
        let labels = kubectl.run(&[
            "get",
            object,
            "-n",
            ns.name(),
            "-o",
            "jsonpath={.metadata.labels}",
        ])?;
        assert!(
            labels.contains("\"tether.dev/name\":\"app\""),
            "{object}: {labels}"
        );
        assert!(
            labels.contains(&format!("\"tether.dev/namespace\":\"{}\"", ns.name())),
            "{object}: {labels}"
        );
    }
    kubectl.run(&["get", "namespace", &format!("{}-app", ns.name())])?;

    // 2. A pushed change lands at the next interval.
    repo.write(
        "deploy/config.yaml",
        &config_map(ns.name(), "settings", "bonjour"),
    )?;
    repo.commit("greet in French")?;
    repo.push()?;
    let cm = greeting_args(ns.name(), "settings");
    wait_for_output(kubectl, &cm, "bonjour", &operator)?;
    wait_for_revision(kubectl, ns.name(), &repo.head()?, &operator)?;

    // 6. Drift: a field changed by hand is set back.
    kubectl.run(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        ns.name(),
        "--type=merge",
        "-p",
        r#"{"data":{"greeting":"drifted"}}"#,
    ])?;
    wait_for_output(kubectl, &cm, "bonjour", &operator)?;

    // 2. A deleted file is pruned; an object annotated prune: disabled stays.
    repo.write(
        "deploy/keep.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keep\n  annotations:\n    tether.dev/prune: disabled\ndata: {}\n",
    )?;
    repo.commit("a ConfigMap that must never be pruned")?;
    repo.push()?;
    wait_for_output(
        kubectl,
        &["get", "configmap", "keep", "-n", ns.name(), "-o", "name"],
        "configmap/keep",
        &operator,
    )?;
    repo.remove("deploy/keep.yaml")?;
    repo.remove("deploy/app.yaml")?;
    let after = repo.commit("drop the web app")?;
    repo.push()?;
    wait_for_revision(kubectl, ns.name(), &after, &operator)?;
    wait_for_output(
        kubectl,
        &["get", "deployment,service", "-n", ns.name(), "-o", "name"],
        "",
        &operator,
    )?;
    assert_eq!(
        kubectl
            .run(&["get", "configmap", "keep", "-n", ns.name(), "-o", "name"])?
            .trim(),
        "configmap/keep"
    );

    // 10. The annotation asks for a reconcile well before a long interval.
    patch_spec(kubectl, ns.name(), "app", r#"{"interval":"1h"}"#)?;
    wait_condition(
        kubectl,
        ns.name(),
        "app",
        "jsonpath={.status.observedGeneration}=2",
        "30s",
        &operator,
    )?;
    repo.write(
        "deploy/config.yaml",
        &config_map(ns.name(), "settings", "hallo"),
    )?;
    repo.commit("greet in German")?;
    repo.push()?;
    request_reconcile(kubectl, ns.name(), "app", "now-1")?;
    wait_for_output(kubectl, &cm, "hallo", &operator)?;
    assert_eq!(
        get_field(
            kubectl,
            ns.name(),
            "app",
            "{.status.lastHandledReconcileAt}"
        )?,
        "now-1"
    );

    // 2. With prune: false, a deleted file's object stays.
    patch_spec(
        kubectl,
        ns.name(),
        "app",
        r#"{"prune":false,"interval":"2s"}"#,
    )?;
    repo.remove("deploy/config.yaml")?;
    let last = repo.commit("drop the ConfigMap")?;
    repo.push()?;
    wait_for_revision(kubectl, ns.name(), &last, &operator)?;
    assert_eq!(
        kubectl
            .run(&[
                "get",
                "configmap",
                "settings",
                "-n",
                ns.name(),
                "-o",
                "name"
            ])?
            .trim(),
        "configmap/settings"
    );
    Ok(())
}
