//! Scenarios 8 and 9: suspend and resume; deleting a `GitRepository` prunes what it applied; the
//! operator killed mid-way and restarted converges with an intact inventory. And an operator that
//! starts before its API server can be reached.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::{config_map, git_repository, greeting};
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{
    get_field, install_crds, patch_spec, request_reconcile, wait_applied, wait_condition,
    wait_failed, wait_for_output, wait_ready,
};
use tether_e2e::http::http_get;
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::process::{Lifetime, Process, alive, free_port, signal};
use tether_e2e::wait::{wait_until, wait_until_every};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_holds_new_commits_and_deleting_prunes_everything() -> Result<()> {
    let ns = TestNamespace::create("lifecycle").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("held")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "one"))?;
    repo.write("deploy/other.yaml", &config_map(n, "other", "x"))?;
    repo.commit("first")?;
    repo.push()?;

    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    wait_ready(kubectl, n, "app", "90s", &operator)?;

    let patch =
        |suspend: bool| patch_spec(kubectl, n, "app", &format!(r#"{{"suspend":{suspend}}}"#));
    patch(true)?;
    wait_condition(
        kubectl,
        n,
        "app",
        "jsonpath={.status.conditions[?(@.type==\"Ready\")].reason}=Suspended",
        "30s",
        &operator,
    )?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "two"))?;
    let second = repo.commit("second")?;
    repo.push()?;
    // Several intervals pass and the commit stays out.
    let held = kubectl.run(&[
        "wait",
        "-n",
        n,
        "--for=jsonpath={.data.greeting}=two",
        "--timeout=8s",
        "configmap/settings",
    ]);
    ensure!(held.is_err(), "a new commit was applied while suspended");
    ensure!(greeting(kubectl, n, "settings")? == "one");
    // A requested reconcile is acknowledged while suspended, and still applies nothing.
    request_reconcile(kubectl, n, "app", "while-suspended")?;
    wait_condition(
        kubectl,
        n,
        "app",
        "jsonpath={.status.lastHandledReconcileAt}=while-suspended",
        "30s",
        &operator,
    )?;
    ensure!(greeting(kubectl, n, "settings")? == "one");

    patch(false)?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{second}"), &operator)?;
    wait_ready(kubectl, n, "app", "30s", &operator)?;
    ensure!(greeting(kubectl, n, "settings")? == "two");
    // The Event tells what the revision changed, told apart by the dry-run's resourceVersion.
    let applied = format!("Applied revision main@sha1:{second}: configured 1, unchanged 1");
    wait_until_every(
        &format!("an Event {applied:?}"),
        Duration::from_secs(30),
        Duration::from_millis(250),
        || {
            let events = kubectl.run(&[
                "get",
                "events",
                "-n",
                n,
                "--field-selector=reason=ReconciliationSucceeded",
                "-o",
                "jsonpath={range .items[*]}{.message}{\"\\n\"}{end}",
            ])?;
            ensure!(events.lines().any(|l| l == applied), "Events:\n{events}");
            Ok(())
        },
    )?;

    // Deleting it (prune: true by default) deletes its objects, then the GitRepository goes.
    kubectl.run(&["delete", "tgr", "app", "-n", n, "--timeout=60s"])?;
    wait_for_output(
        kubectl,
        &[
            "get",
            "configmap",
            "settings",
            "other",
            "-n",
            n,
            "--ignore-not-found",
            "-o",
            "name",
        ],
        "",
        &operator,
    )?;
    Ok(())
}

/// The `name`s of the ConfigMaps labelled as applied by `GitRepository` `owner`.
fn owned_config_maps(kubectl: &Kubectl, ns: &str, owner: &str) -> Result<Vec<String>> {
    Ok(kubectl
        .run(&[
            "get",
            "configmap",
            "-n",
            ns,
            "-l",
            &format!("tether.dev/name={owner}"),
            "-o",
            "jsonpath={.items[*].metadata.name}",
        ])?
        .split_whitespace()
        .map(str::to_string)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_apply_and_restarted_converges_with_an_intact_inventory() -> Result<()> {
    const COUNT: usize = 40;
    let ns = TestNamespace::create("crash").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("many")?;
    for i in 0..COUNT {
        repo.write(
            &format!("deploy/cm-{i:02}.yaml"),
            &config_map(n, &format!("cm-{i:02}"), "one"),
        )?;
    }
    repo.commit("many ConfigMaps")?;
    repo.push()?;

    let mut operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "many",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n",
    ))?;
    // Kill it as soon as the first object lands, before the revision is done.
    wait_until_every(
        "the first object applied",
        Duration::from_secs(60),
        Duration::from_millis(20),
        || {
            ensure!(
                !owned_config_maps(kubectl, n, "many")?.is_empty(),
                "nothing applied"
            );
            Ok(())
        },
    )
    .with_context(|| operator.log_tail())?;
    operator.kill();
    let at_kill = owned_config_maps(kubectl, n, "many")?.len();
    eprintln!("killed with {at_kill} of {COUNT} ConfigMaps applied");

    // A commit lands while it is down: one ConfigMap changed, one removed.
    repo.write("deploy/cm-00.yaml", &config_map(n, "cm-00", "two"))?;
    repo.remove(&format!("deploy/cm-{:02}.yaml", COUNT - 1))?;
    let head = repo.commit("change one, drop one")?;
    repo.push()?;

    operator.restart()?;
    wait_applied(kubectl, n, "many", &format!("main@sha1:{head}"), &operator)?;
    wait_ready(kubectl, n, "many", "60s", &operator)?;

    let mut inventory: Vec<String> = get_field(
        kubectl,
        n,
        "many",
        "{range .status.inventory[*]}{.kind}/{.name}{\"\\n\"}{end}",
    )?
    .lines()
    .map(str::to_string)
    .collect();
    let listed = inventory.len();
    inventory.sort();
    inventory.dedup();
    ensure!(
        listed == inventory.len(),
        "duplicates in the inventory: {inventory:?}"
    );
    let want: Vec<String> = (0..COUNT - 1)
        .map(|i| format!("ConfigMap/cm-{i:02}"))
        .collect();
    ensure!(inventory == want, "inventory {inventory:?}");
    let mut objects = owned_config_maps(kubectl, n, "many")?;
    objects.sort();
    let want: Vec<String> = (0..COUNT - 1).map(|i| format!("cm-{i:02}")).collect();
    ensure!(objects == want, "objects {objects:?}");
    ensure!(greeting(kubectl, n, "cm-00")? == "two");
    Ok(())
}

/// An operator started while its API server cannot be reached waits for it, saying why, instead of
/// exiting: alive but not ready, then ready and syncing once the server answers. One stopped while it
/// waits ends at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_started_before_its_api_server_waits_for_it() -> Result<()> {
    let ns = TestNamespace::create("late-api").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("late")?;
    repo.write("deploy/config.yaml", &config_map(n, "settings", "late"))?;
    repo.commit("first")?;
    repo.push()?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 1h\n",
    ))?;

    // The operator's kubeconfig names a port where nothing listens yet.
    let original = std::fs::read_to_string(ns.kubeconfig())?;
    let api_port: u16 = original
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: https://127.0.0.1:"))
        .context("no server line in the namespace's kubeconfig")?
        .parse()?;
    let relay_port = free_port()?;
    let dir = tempfile::tempdir()?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        original.replace(
            &format!("127.0.0.1:{api_port}"),
            &format!("127.0.0.1:{relay_port}"),
        ),
    )?;

    let within = Duration::from_secs(30);
    let waiting = |operator: &Operator| {
        wait_until(
            "the operator says it cannot reach the API server",
            within,
            || {
                ensure!(operator.log().contains("cannot read the GitRepository CRD"));
                Ok(())
            },
        )
        .with_context(|| operator.log_tail())
    };
    let operator = Operator::start(&kubeconfig, n, &[])?;
    waiting(&operator)?;
    ensure!(
        alive(operator.pid()),
        "the operator exited:\n{}",
        operator.log_tail()
    );
    ensure!(http_get(operator.admin_port(), "/healthz")?.0 == 200);
    ensure!(
        http_get(operator.admin_port(), "/readyz")?.0 == 503,
        "ready without an API server"
    );

    // The API server becomes reachable on that port.
    let _relay = Process::spawn(
        "socat",
        std::path::Path::new("socat"),
        &[
            format!("TCP-LISTEN:{relay_port},bind=127.0.0.1,fork,reuseaddr"),
            format!("TCP:127.0.0.1:{api_port}"),
        ],
        &dir.path().join("socat.log"),
        Lifetime::TiedToStarter,
    )?;
    wait_ready(kubectl, n, "app", "90s", &operator)?;
    ensure!(greeting(kubectl, n, "settings")? == "late");
    ensure!(http_get(operator.admin_port(), "/readyz")?.0 == 200);

    // A second one, left waiting for a server that never comes, is stopped.
    std::fs::write(
        &kubeconfig,
        original.replace(
            &format!("127.0.0.1:{api_port}"),
            &format!("127.0.0.1:{}", free_port()?),
        ),
    )?;
    let stranded = Operator::start(&kubeconfig, n, &[])?;
    waiting(&stranded)?;
    signal(stranded.pid(), "TERM");
    wait_until("the waiting operator stops on SIGTERM", within, || {
        ensure!(!alive(stranded.pid()), "still running");
        Ok(())
    })
    .with_context(|| stranded.log_tail())?;
    ensure!(
        stranded
            .log()
            .contains("stopped before the controller started"),
        "{}",
        stranded.log_tail()
    );
    Ok(())
}

/// A revision that fails after its objects were applied (here: `spec.wait` and a Deployment that no
/// kubelet will ever roll out) keeps them in the inventory, so that they are pruned once they leave
/// the repository instead of being forgotten in the cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_of_a_failed_revision_are_pruned_once_they_leave_the_repository() -> Result<()> {
    let ns = TestNamespace::create("failed-prune").await?;
    let (kubectl, n) = (ns.kubectl(), ns.name());
    install_crds(kubectl)?;
    let repo = Upstream::new("failing")?;
    repo.write("deploy/base.yaml", &config_map(n, "base", "one"))?;
    repo.commit("base")?;
    repo.push()?;
    let operator = Operator::start(ns.kubeconfig(), n, &[])?;
    kubectl.apply(&git_repository(
        n,
        "app",
        &repo.file_url(),
        "  path: deploy\n  interval: 2s\n  wait: true\n  timeout: 3s\n",
    ))?;
    wait_ready(kubectl, n, "app", "60s", &operator)?;

    // A Deployment nothing will run, and a ConfigMap beside it: applied, then the health wait fails.
    repo.write("deploy/extra.yaml", &config_map(n, "extra", "one"))?;
    repo.write(
        "deploy/web.yaml",
        &format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  namespace: {n}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: web}}\n  template:\n    metadata:\n      labels: {{app: web}}\n    spec:\n      containers:\n      - name: web\n        image: registry.example/web:1.0\n"
        ),
    )?;
    let failing = repo.commit("a Deployment that never becomes ready")?;
    repo.push()?;
    let (_, reason, message) = wait_failed(
        kubectl,
        n,
        "app",
        &format!("main@sha1:{failing}"),
        &operator,
    )?;
    ensure!(reason == "HealthCheckFailed", "{reason}: {message}");
    ensure!(
        kubectl
            .names(n, "deployments,configmaps")?
            .contains("deployment.apps/web")
    );
    let inventory = get_field(
        kubectl,
        n,
        "app",
        "{range .status.inventory[*]}{.kind}/{.name} {end}",
    )?;
    ensure!(
        inventory.contains("Deployment/web") && inventory.contains("ConfigMap/extra"),
        "the failed revision's objects are not in the inventory: {inventory}"
    );

    // Both leave the repository: the next revision prunes them.
    repo.remove("deploy/web.yaml")?;
    repo.remove("deploy/extra.yaml")?;
    let fixed = repo.commit("back to the base")?;
    repo.push()?;
    wait_applied(kubectl, n, "app", &format!("main@sha1:{fixed}"), &operator)?;
    wait_ready(kubectl, n, "app", "60s", &operator)?;
    let left = kubectl.names(n, "deployments,configmaps")?;
    ensure!(
        !left.contains("deployment.apps/web") && !left.contains("configmap/extra"),
        "left behind: {left}"
    );
    Ok(())
}
