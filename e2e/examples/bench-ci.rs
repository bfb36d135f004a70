//! `make bench` (CI-access part): the same client, kube-rs, against the API server directly (as
//! admin, and as admin impersonating the CI token's user, which is what the API server sees from
//! the tunnel) and through hub + tunnel + operator (TLS hub, the token mapped and impersonated),
//! side by side in one run on loopback. Prints, for each path: the latency of a small GET (p50/p99 over many
//! requests, one at a time), the throughput of a large LIST (ConfigMaps of 10 KiB) with the CPU time
//! each process (client, hub, operator, control plane) spent on it, and the hub's and operator's
//! RSS before and after moving those bytes and while 1,000 watches are open through one agent.
//! Asserts nothing.
//!
//! Usage: `bench-ci [GETS] [OBJECTS] [WATCHES]` (defaults 2000, 2000, 1000). Binaries come from
//! `TETHER_BIN_DIR` (release builds in `make bench`).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchParams};
use tether_e2e::ci::{CiToken, operator_flags, wait_tunnel, write_kubeconfig};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::controlplane::{client_for, config_for};
use tether_e2e::gitrepo::install_crds;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{Hub, HubOptions, sha256_hex};
use tether_e2e::operator::Operator;
use tether_e2e::process::{cpu_seconds, rss_bytes};
use tether_e2e::wait::wait_until;

/// The user the bench's CI token acts as.
const USER: &str = "ci-bench";

/// Each ConfigMap's data, in bytes.
const OBJECT_BYTES: usize = 10 * 1024;

/// Rounds of LISTs, each path once per round; each path's best is reported.
const LISTS: usize = 10;

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| a.parse::<usize>());
    let gets = args.next().transpose()?.unwrap_or(2000);
    let objects = args.next().transpose()?.unwrap_or(2000);
    let watches = args.next().transpose()?.unwrap_or(1000);

    let ns = TestNamespace::create("bench-ci").await?;
    install_crds(ns.kubectl())?;
    ns.kubectl().apply(&rbac(ns.name()))?;
    let hub = Hub::start_with(HubOptions {
        tls: true,
        ..HubOptions::default()
    })?;
    let dir = tempfile::Builder::new()
        .prefix("tether-bench-ci-")
        .tempdir()?;
    let token = CiToken::new("bench", USER, &[]);
    let access = dir.path().join("ci-access.yaml");
    std::fs::write(
        &access,
        format!(
            "tokens:\n  - name: bench\n    sha256: \"{}\"\n    user: {USER}\nlimits:\n  max_requests_per_identity: {}\n",
            sha256_hex(&token.token)?,
            watches + 64
        ),
    )?;
    let flags = operator_flags(&hub, &access);
    let refs: Vec<&str> = flags.iter().map(String::as_str).collect();
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &refs)?;
    wait_tunnel(&hub, Duration::from_secs(60))?;
    let ci_kubeconfig = write_kubeconfig(
        &dir.path().join("ci.kubeconfig"),
        &format!("{}/k8s-proxy/e2e", hub.https_url()),
        &hub.ca_file(),
        &token.token,
    )?;
    let direct = client_for(&shared().kubeconfig()).await?;
    // The tunnel's requests reach the API server impersonating USER, and the API server's
    // impersonation check costs time of its own: this path pays it too, so the difference between
    // it and the tunnel is what the relay adds.
    let direct_as = {
        let mut config = config_for(&shared().kubeconfig()).await?;
        config.auth_info.impersonate = Some(USER.to_owned());
        kube::Client::try_from(config)?
    };
    let through = client_for(&ci_kubeconfig).await?;
    let hub_pid = hub.pid().context("the hub is not running")?;
    let operator_pid = operator.pid();
    let rss = || -> Result<(f64, f64)> { Ok((rss_mib(hub_pid)?, rss_mib(operator_pid)?)) };

    // The objects: one small, `objects` of 10 KiB.
    let api = Api::<ConfigMap>::namespaced(direct.clone(), ns.name());
    api.create(&PostParams::default(), &config_map("small", 16))
        .await?;
    let began = Instant::now();
    let mut creating = futures::stream::iter(0..objects)
        .map(|i| {
            let api = api.clone();
            async move {
                api.create(
                    &PostParams::default(),
                    &config_map(&format!("big-{i}"), OBJECT_BYTES),
                )
                .await
            }
        })
        .buffer_unordered(16);
    while let Some(created) = creating.next().await {
        created?;
    }
    println!(
        "bench-ci: {objects} ConfigMaps of {} KiB created in {:.1}s",
        OBJECT_BYTES / 1024,
        began.elapsed().as_secs_f64()
    );
    let (hub0, op0) = rss()?;

    println!("\nsmall GET, one at a time ({gets} each, after 100 to warm up)");
    println!(
        "{:<22} {:>9} {:>9} {:>9}",
        "path", "p50 ms", "p99 ms", "max ms"
    );
    let as_user = format!("direct, as {USER}");
    let paths = [
        ("direct, admin", &direct),
        (as_user.as_str(), &direct_as),
        ("hub + tunnel", &through),
    ];
    let mut p50s = Vec::new();
    for (name, client) in paths {
        let api = Api::<ConfigMap>::namespaced(client.clone(), ns.name());
        for _ in 0..100 {
            api.get("small").await?;
        }
        let mut took = Vec::with_capacity(gets);
        for _ in 0..gets {
            let t = Instant::now();
            api.get("small").await?;
            took.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        took.sort_by(f64::total_cmp);
        let (p50, p99) = (percentile(&took, 0.50), percentile(&took, 0.99));
        println!(
            "{name:<22} {p50:>9.3} {p99:>9.3} {:>9.3}",
            took[took.len() - 1]
        );
        p50s.push(p50);
    }
    println!(
        "added at p50 by the relay: {:.3} ms ({:.2}x direct as {USER}); by the relay and impersonation: {:.3} ms",
        p50s[2] - p50s[1],
        p50s[2] / p50s[1],
        p50s[2] - p50s[0],
    );

    println!("\nLIST of {objects} ConfigMaps (best of {LISTS} rounds, the paths in turn)");
    println!(
        "{:<22} {:>9} {:>9} {:>9}",
        "path", "MiB", "seconds", "MiB/s"
    );
    // Rounds take the paths in turn, after one LIST each to warm up, so that no path gains from
    // running after another; each path's best round counts.
    let apis: Vec<_> = paths
        .iter()
        .map(|(_, client)| Api::<ConfigMap>::namespaced((*client).clone(), ns.name()))
        .collect();
    let mut best = vec![f64::MAX; apis.len()];
    // CPU seconds each process spent over a path's timed rounds: with two cores, what the hub and
    // the operator burn is taken from the API server and the client.
    let mut procs: Vec<(String, u32)> = vec![
        ("bench client".into(), std::process::id()),
        ("hub".into(), hub_pid),
        ("operator".into(), operator_pid),
    ];
    procs.extend(shared().pids());
    let cpu = || -> Result<Vec<f64>> { procs.iter().map(|(_, pid)| cpu_seconds(*pid)).collect() };
    let mut spent = vec![vec![0.0; procs.len()]; apis.len()];
    let mut bytes = 0usize;
    for round in 0..=LISTS {
        for (i, api) in apis.iter().enumerate() {
            let before = cpu()?;
            let t = Instant::now();
            let list = api.list(&ListParams::default()).await?;
            if round > 0 {
                best[i] = best[i].min(t.elapsed().as_secs_f64());
                for (total, (after, before)) in spent[i].iter_mut().zip(cpu()?.iter().zip(&before))
                {
                    *total += after - before;
                }
            }
            bytes = list
                .items
                .iter()
                .map(|c| {
                    c.data
                        .as_ref()
                        .map_or(0, |d| d.values().map(String::len).sum())
                })
                .sum();
        }
    }
    let mib = bytes as f64 / 1048576.0;
    let mut rates = Vec::new();
    for ((name, _), best) in paths.iter().zip(&best) {
        println!("{name:<22} {mib:>9.1} {best:>9.3} {:>9.1}", mib / best);
        rates.push(mib / best);
    }
    println!(
        "through the hub: {:.0}% of direct throughput as {USER}, {:.0}% of direct as admin",
        100.0 * rates[2] / rates[1],
        100.0 * rates[2] / rates[0]
    );
    println!("\nCPU ms per LIST (mean of {LISTS} rounds; 10 ms ticks)");
    print!("{:<22}", "path");
    for (name, _) in &procs {
        print!(" {name:>14}");
    }
    println!(" {:>9}", "all");
    for ((name, _), spent) in paths.iter().zip(&spent) {
        print!("{name:<22}");
        for s in spent {
            print!(" {:>14.1}", 1000.0 * s / LISTS as f64);
        }
        println!(
            " {:>9.1}",
            1000.0 * spent.iter().sum::<f64>() / LISTS as f64
        );
    }
    let (hub1, op1) = rss()?;

    println!("\n{watches} watches open at once through one agent");
    let began = Instant::now();
    let mut open = Vec::with_capacity(watches);
    let api = Api::<ConfigMap>::namespaced(through.clone(), ns.name());
    // From the current resourceVersion: quiet watches (from "0" each would replay every object).
    let now = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .context("a list without resourceVersion")?;
    for _ in 0..watches {
        let stream = api
            .watch(&WatchParams::default().timeout(290), &now)
            .await?
            .boxed();
        open.push(stream);
    }
    wait_until(
        "every watch in flight at the hub",
        Duration::from_secs(60),
        || {
            let streams = metric_value(&hub.metrics()?, "tether_hub_tunnel_streams").unwrap_or(0.0);
            anyhow::ensure!(streams >= watches as f64, "{streams} in flight");
            Ok(())
        },
    )?;
    let opened = began.elapsed().as_secs_f64();
    let (hub2, op2) = rss()?;
    drop(open);

    println!("{:<34} {:>9} {:>9}", "RSS, MiB", "hub", "operator");
    println!("{:<34} {hub0:>9.1} {op0:>9.1}", "idle, tunnel open");
    println!(
        "{:<34} {hub1:>9.1} {op1:>9.1}",
        format!(
            "after {} GETs and {} LISTs",
            3 * (gets + 100),
            3 * (LISTS + 1)
        )
    );
    println!(
        "{:<34} {hub2:>9.1} {op2:>9.1}",
        format!("{watches} watches open")
    );
    println!(
        "per watch: hub {:.1} KiB, operator {:.1} KiB; all {watches} open in {opened:.1}s",
        (hub2 - hub1) * 1024.0 / watches as f64,
        (op2 - op1) * 1024.0 / watches as f64
    );
    Ok(())
}

fn rbac(ns: &str) -> String {
    format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{ name: {USER}, namespace: {ns} }}
rules:
  - apiGroups: [""]
    resources: [configmaps]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{ name: {USER}, namespace: {ns} }}
roleRef: {{ apiGroup: rbac.authorization.k8s.io, kind: Role, name: {USER} }}
subjects:
  - {{ apiGroup: rbac.authorization.k8s.io, kind: User, name: {USER} }}
"#
    )
}

fn config_map(name: &str, bytes: usize) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_string());
    cm.data = Some([("filler".to_string(), "x".repeat(bytes))].into());
    cm
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn rss_mib(pid: u32) -> Result<f64> {
    Ok(rss_bytes(pid)? as f64 / 1048576.0)
}
