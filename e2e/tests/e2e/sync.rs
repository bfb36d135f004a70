//! The main sync scenarios, as a user works: `kubectl apply` a `GitRepository`, commit and push,
//! `kubectl wait` / `kubectl get`.

use std::time::Duration;

use anyhow::{Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting_args, write_app};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{
    get_field, install_crds, patch_spec, request_reconcile, wait_condition, wait_for_output,
    wait_ready,
};
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::wait::wait_until;

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

/// A namespace `prefix-…`, the app of [`write_app`] pushed to a local repository, an operator, and
/// the `GitRepository` `app` on `deploy/` at `interval`, Ready.
async fn app_syncing(prefix: &str, interval: &str) -> Result<(TestNamespace, Upstream, Operator)> {
    syncing(prefix, "app", interval, |repo, ns| {
        write_app(repo, ns, "hello")
    })
    .await
}

/// A namespace `prefix-…`, a local repository `repo` with what `write` puts in it (given the
/// namespace) pushed, an operator, and the `GitRepository` `app` on `deploy/` at `interval`, Ready.
async fn syncing(
    prefix: &str,
    repo: &str,
    interval: &str,
    write: impl FnOnce(&Upstream, &str) -> Result<()>,
) -> Result<(TestNamespace, Upstream, Operator)> {
    let ns = TestNamespace::create(prefix).await?;
    let kubectl = ns.kubectl();
    install_crds(kubectl)?;
    let repo = Upstream::new(repo)?;
    write(&repo, ns.name())?;
    repo.commit("the app")?;
    repo.push()?;
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &[])?;
    kubectl.apply(&git_repository(
        ns.name(),
        "app",
        &repo.file_url(),
        &format!("  path: deploy\n  interval: {interval}\n"),
    ))?;
    wait_ready(kubectl, ns.name(), "app", "90s", &operator)?;
    Ok((ns, repo, operator))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applies_a_repo_then_follows_pushes_prunes_and_reverts_drift() -> Result<()> {
    // 1. Ready, the columns, the objects with their owner labels, the revision.
    let (ns, repo, operator) = app_syncing("sync", "2s").await?;
    let kubectl = ns.kubectl();
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

/// The operator's counter `name` for the label set `labels` (`result="clean"`), 0 before its first
/// sample.
fn counter(operator: &Operator, name: &str, labels: &str) -> Result<f64> {
    let text = operator.metrics()?;
    let prefix = format!("{name}{{{labels}}} ");
    Ok(text
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map(|v| v.trim().parse::<f64>())
        .transpose()?
        .unwrap_or(0.0))
}

/// Waits until `n` more reconciles of the applied revision have found nothing drifted.
fn intervals_skipped(operator: &Operator, n: f64) -> Result<()> {
    let clean = || counter(operator, "tether_drift_checks_total", r#"result="clean""#);
    let from = clean()?;
    wait_until(
        "intervals that find nothing drifted",
        Duration::from_secs(60),
        || {
            let now = clean()?;
            ensure!(now >= from + n, "{} clean so far", now - from);
            Ok(())
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applied_revision_is_not_applied_again_until_something_drifts() -> Result<()> {
    let (ns, _repo, operator) = app_syncing("drift", "1s").await?;
    let kubectl = ns.kubectl();
    let drifted = || {
        counter(
            &operator,
            "tether_drift_checks_total",
            r#"result="drifted""#,
        )
    };
    let applied = || -> Result<f64> {
        let mut sum = 0.0;
        for action in ["created", "configured", "unchanged"] {
            let labels = format!(r#"action="{action}""#);
            sum += counter(&operator, "tether_objects_applied_total", &labels)?;
        }
        Ok(sum)
    };
    // Idle: the deployment controller writes the Deployment's status (and its revision annotation,
    // which counts once); after that, intervals apply nothing at all.
    intervals_skipped(&operator, 3.0)?;
    let before = applied()?;
    intervals_skipped(&operator, 4.0)?;
    let after = applied()?;
    ensure!(
        after == before,
        "{} objects applied while nothing drifted",
        after - before
    );

    // Each kind of drift is found and set back at the next interval.
    let replicas = [
        "get",
        "deployment",
        "web",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.spec.replicas}",
    ];
    let cases: [(&str, &[&str], &[&str], &str); 4] = [
        (
            "a ConfigMap edited",
            &[
                "patch",
                "configmap",
                "settings",
                "--type=merge",
                "-p",
                r#"{"data":{"greeting":"drifted"}}"#,
            ],
            &greeting_args(ns.name(), "settings"),
            "hello",
        ),
        (
            "a Deployment scaled (its spec, through the scale subresource)",
            &["scale", "deployment", "web", "--replicas=3"],
            &replicas,
            "1",
        ),
        (
            "an owner label removed",
            &["label", "configmap", "settings", "tether.dev/name-"],
            &[
                "get",
                "configmap",
                "settings",
                "-n",
                ns.name(),
                "-o",
                "jsonpath={.metadata.labels.tether\\.dev/name}",
            ],
            "app",
        ),
        (
            "an object deleted",
            &["delete", "service", "web"],
            &["get", "service", "web", "-n", ns.name(), "-o", "name"],
            "service/web",
        ),
    ];
    for (what, change, read, want) in cases {
        let found = drifted()?;
        let mut args = change.to_vec();
        args.extend(["-n", ns.name()]);
        kubectl.run(&args)?;
        wait_for_output(kubectl, read, want, &operator)?;
        ensure!(
            drifted()? > found,
            "{what}: set back, but not counted as drift"
        );
        eprintln!("{what}: set back");
    }
    Ok(())
}

/// Server-side applies of PodTemplates the API server has served, dry runs included, from its own
/// metrics (no other test applies that kind).
fn pod_template_applies(kubectl: &Kubectl) -> Result<f64> {
    let text = kubectl.run(&["get", "--raw", "/metrics"])?;
    let mut sum = 0.0;
    for line in text.lines() {
        if line.starts_with("apiserver_request_total{")
            && line.contains(r#"resource="podtemplates""#)
            && line.contains(r#"verb="APPLY""#)
            && let Some((_, value)) = line.rsplit_once(' ')
        {
            sum += value.parse::<f64>()?;
        }
    }
    Ok(sum)
}

fn pod_template(ns: &str, name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: PodTemplate\nmetadata:\n  name: {name}\n  namespace: {ns}\ntemplate:\n  \
         spec:\n    containers:\n    - name: app\n      image: {image}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_revision_applies_only_the_objects_it_changed() -> Result<()> {
    let six = |repo: &Upstream, ns: &str| -> Result<()> {
        for i in 1..=6 {
            let name = format!("t{i}");
            let template = pod_template(ns, &name, "registry.example/app:1");
            repo.write(&format!("deploy/{name}.yaml"), &template)?;
        }
        Ok(())
    };
    let (ns, repo, operator) = syncing("changed", "templates", "2s", six).await?;
    let kubectl = ns.kubectl();
    intervals_skipped(&operator, 1.0)?;
    let before = pod_template_applies(kubectl)?;

    repo.write(
        "deploy/t3.yaml",
        &pod_template(ns.name(), "t3", "registry.example/app:2"),
    )?;
    let head = repo.commit("t3 on version 2")?;
    repo.push()?;
    wait_for_revision(kubectl, ns.name(), &head, &operator)?;
    let image = [
        "get",
        "podtemplate",
        "t3",
        "-n",
        ns.name(),
        "-o",
        "jsonpath={.template.spec.containers[0].image}",
    ];
    ensure!(kubectl.run(&image)?.trim() == "registry.example/app:2");
    intervals_skipped(&operator, 1.0)?;
    let after = pod_template_applies(kubectl)?;
    // One dry run and one apply, of t3 alone: the five others are as the last apply left them.
    ensure!(
        after - before == 2.0,
        "{} server-side applies of PodTemplates for a one-object change",
        after - before
    );
    let summary = kubectl.run(&[
        "get",
        "events",
        "-n",
        ns.name(),
        "--field-selector",
        "reason=ReconciliationSucceeded",
        "-o",
        "jsonpath={.items[*].message}",
    ])?;
    ensure!(
        summary.contains("configured 1, unchanged 5"),
        "no Event says what the push changed: {summary}"
    );
    Ok(())
}
