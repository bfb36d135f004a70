//! `make bench` (sync part): cold start of N `GitRepository` objects (4 objects each) until all are
//! Ready, then the same set idle for a few intervals. Prints figures; asserts nothing.
//!
//! Usage: `bench-sync [N ...]` (default 100). The operator binary comes from `TETHER_BIN_DIR`
//! (`make bench` builds it with `--release`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use tether_e2e::cluster::shared;
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::install_crds;
use tether_e2e::kubectl::Kubectl;
use tether_e2e::operator::Operator;
use tether_e2e::wait::wait_until_async;
use tether_operator::crd::GitRepository;

/// Repositories the GitRepository objects are spread over (each object has its own folder).
const REPOS: usize = 20;
/// The interval during the idle phase.
const IDLE_INTERVAL: &str = "20s";
const IDLE_FOR: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| {
            a.parse()
                .context("arguments are counts of GitRepository objects")
        })
        .collect::<Result<_>>()?;
    let sizes = if sizes.is_empty() { vec![100] } else { sizes };
    let plane = shared();
    let kubectl = Kubectl::for_plane(plane);
    install_crds(&kubectl)?;
    for n in sizes {
        run(n, plane.kubeconfig().as_path(), &kubectl).await?;
    }
    Ok(())
}

async fn run(n: usize, kubeconfig: &std::path::Path, kubectl: &Kubectl) -> Result<()> {
    let client = tether_e2e::controlplane::client_for(kubeconfig).await?;
    let ns = format!("bench-{n}");
    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?;
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await?;

    // The repositories: REPOS of them, each with a folder per GitRepository it serves.
    let began = Instant::now();
    let mut repos = Vec::new();
    for r in 0..REPOS.min(n) {
        let repo = Upstream::new(&format!("bench-{n}-{r}"))?;
        for i in (r..n).step_by(REPOS) {
            repo.write(&format!("app-{i}/app.yaml"), &app(&ns, i))?;
        }
        repo.commit("apps")?;
        repo.push()?;
        repos.push(repo);
    }
    eprintln!(
        "bench: {n} objects: repositories ready in {:.1}s",
        began.elapsed().as_secs_f64()
    );

    let mut operator = Operator::start(kubeconfig, &ns, &["--concurrency=32"])?;
    let api: Api<GitRepository> = Api::namespaced(client.clone(), &ns);
    let began = Instant::now();
    for i in 0..n {
        let repo = &repos[i % repos.len()];
        let obj: GitRepository = serde_json::from_value(serde_json::json!({
            "apiVersion": "tether.dev/v1alpha1", "kind": "GitRepository",
            "metadata": {"name": format!("app-{i}"), "namespace": ns},
            "spec": {"url": repo.file_url(), "path": format!("app-{i}"), "interval": IDLE_INTERVAL}
        }))?;
        api.create(&PostParams::default(), &obj).await?;
    }
    let created = began.elapsed();
    let listed = &api;
    wait_until_async(
        &format!("all {n} GitRepository objects Ready"),
        Duration::from_secs(600),
        Duration::from_millis(200),
        || async move {
            let ready = tether_e2e::gitrepo::count_ready(listed).await?;
            ensure!(ready == n, "{ready}/{n} Ready");
            Ok(())
        },
    )
    .await
    .with_context(|| operator.log_tail())?;
    let cold = began.elapsed();
    let peak = proc_status(operator.pid(), "VmHWM:")?;
    println!(
        "cold start: {n} GitRepository x 4 objects: all Ready in {:.1}s (created in {:.1}s); operator peak RSS {:.1} MiB",
        cold.as_secs_f64(),
        created.as_secs_f64(),
        peak / 1024.0
    );

    // Idle: nothing changes for a few intervals.
    let before = metrics(&operator)?;
    let cpu_before = tether_e2e::process::cpu_seconds(operator.pid())?;
    let idle_began = Instant::now();
    tokio::time::sleep(IDLE_FOR).await;
    let cpu = tether_e2e::process::cpu_seconds(operator.pid())? - cpu_before;
    let after = metrics(&operator)?;
    let rss = proc_status(operator.pid(), "VmRSS:")?;
    let delta = |name: &str| {
        after.get(name).copied().unwrap_or(0.0) - before.get(name).copied().unwrap_or(0.0)
    };
    let resolves = delta("tether_git_resolve_duration_seconds_count");
    let fetched = delta("tether_git_fetch_duration_seconds_count{outcome=\"fetched\"}");
    let cached = delta("tether_git_fetch_duration_seconds_count{outcome=\"cached\"}");
    println!(
        "idle: {n} GitRepository, interval {IDLE_INTERVAL}, over {:.0}s: operator CPU {:.1}% of one core, RSS {:.1} MiB; \
         {resolves:.0} ls-remote, {fetched:.0} fetches, {cached:.0} served from the mirror cache",
        idle_began.elapsed().as_secs_f64(),
        100.0 * cpu / idle_began.elapsed().as_secs_f64(),
        rss / 1024.0
    );
    operator.kill();
    kubectl.run(&["delete", "namespace", &ns, "--wait=false"])?;
    Ok(())
}

fn app(ns: &str, i: usize) -> String {
    format!(
        r#"apiVersion: v1
kind: ConfigMap
metadata: {{name: app-{i}, namespace: {ns}}}
data: {{index: "{i}"}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: app-{i}, namespace: {ns}}}
---
apiVersion: v1
kind: Service
metadata: {{name: app-{i}, namespace: {ns}}}
spec:
  selector: {{app: app-{i}}}
  ports: [{{port: 80}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: app-{i}, namespace: {ns}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: app-{i}}}}}
  template:
    metadata: {{labels: {{app: app-{i}}}}}
    spec:
      containers: [{{name: app, image: registry.example/app:1}}]
"#
    )
}

/// A `/proc/<pid>/status` field in KiB.
fn proc_status(pid: u32, field: &str) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in /proc/{pid}/status"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0))
}

/// The operator's metrics as `name{labels}` → value.
fn metrics(operator: &Operator) -> Result<BTreeMap<String, f64>> {
    Ok(operator
        .metrics()?
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}
