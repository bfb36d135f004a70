//! `make bench` (push part): push → applied latency through the hub. A real `git push` to the HTTPS
//! test server; once it returns, a signed GitHub push webhook is posted to `tether-hub` (as a forge
//! delivers after the push is done), which notifies the operator (a `GitRepository` with
//! `interval: 1h`); the clock runs from `git push` returning to the changed ConfigMap arriving on a
//! watch on the API server (`kubectl get --watch`), so the webhook's delivery counts. Prints
//! p50/p95/p99 of that and of each stage on the way (the webhook's POST, the hub's fan-out, the
//! notice's delay, the operator's resolve, fetch and apply, from both binaries' histograms); asserts
//! nothing.
//!
//! Usage: `bench-push [PUSHES]` (default 50). Binaries come from `TETHER_BIN_DIR` (release builds in
//! `make bench`).

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{commit_config_map, git_repository, https_secret};
use tether_e2e::git_server::HttpsGitServer;
use tether_e2e::gitrepo::install_crds;
use tether_e2e::http::metric_value;
use tether_e2e::hub::{Forge, Hub};
use tether_e2e::operator::Operator;
use tether_e2e::wait::wait_until_every;

/// How long one push may take to be applied before the run is abandoned.
const PUSH_DEADLINE: Duration = Duration::from_secs(30);

/// Ends the watching kubectl with the benchmark, however it ends.
struct Watch(Child);

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let pushes: usize = match std::env::args().nth(1) {
        Some(n) => n.parse().context("the argument is a number of pushes")?,
        None => 50,
    };
    let plane = shared();
    let ns = TestNamespace::create("bench-push").await?;
    let kubectl = ns.kubectl();
    install_crds(kubectl)?;

    let server = HttpsGitServer::start()?;
    let repo = server.create_repo("app")?;
    commit_config_map(&repo, ns.name(), "settings", "v0")?;
    repo.push_to(&server.remote(&repo))?;
    let hub = Hub::start()?;
    let url = server.url("app");

    kubectl.apply(&https_secret(ns.name(), "app-auth", &server))?;
    kubectl.apply(&git_repository(
        ns.name(),
        "app",
        &url,
        "  path: deploy\n  interval: 1h\n  secretRef:\n    name: app-auth\n",
    ))?;
    let operator = Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[
            &format!("--hub-url={}", hub.ws_url()),
            &format!("--hub-token-file={}", hub.token_file().display()),
        ],
    )?;
    hub.wait_for_log(
        &["watch set updated", "repos=1"],
        1,
        Duration::from_secs(60),
    )?;

    kubectl
        .run(&[
            "wait",
            "--for=create",
            "--timeout=60s",
            "-n",
            ns.name(),
            "configmap/settings",
        ])
        .with_context(|| {
            format!(
                "the first revision was not applied:\n{}",
                operator.log_tail()
            )
        })?;

    // Every value the ConfigMap takes, as the API server's watch delivers it, with its arrival time.
    let mut child = Command::new(plane.binaries().path("kubectl"))
        .env("KUBECONFIG", plane.kubeconfig())
        .args([
            "get",
            "configmap",
            "settings",
            "-n",
            ns.name(),
            "--watch",
            "-o",
            "jsonpath={.data.greeting}{\"\\n\"}",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting kubectl --watch")?;
    let stdout = child.stdout.take().context("no stdout from kubectl")?;
    let _watch = Watch(child);
    let (tx, rx) = mpsc::channel::<(String, Instant)>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send((line.trim().to_string(), Instant::now())).is_err() {
                return;
            }
        }
    });
    wait_for(&rx, "v0", Duration::from_secs(60)).with_context(|| operator.log_tail())?;

    let mut end_to_end = Vec::with_capacity(pushes);
    let mut stages: Vec<Vec<Duration>> = vec![Vec::with_capacity(pushes); STAGES.len()];
    let mut reconciles = 0.0;
    for i in 1..=pushes {
        let greeting = format!("v{i}");
        let old = repo.head()?;
        let new = commit_config_map(&repo, ns.name(), "settings", &greeting)?;
        let (headers, body) = hub.github_push_webhook(&url, "refs/heads/main", &old, &new)?;
        let before = Scrape::take(&operator, &hub)?;
        let pushing = Instant::now();
        repo.push_to(&server.remote(&repo))?;
        let pushed = Instant::now();
        let status = hub.post_webhook("github", &headers, body.as_bytes())?;
        let posted = pushed.elapsed();
        ensure!(
            status == 202,
            "push {i}: the hub answered the webhook with {status}"
        );
        let seen = wait_for(&rx, &greeting, PUSH_DEADLINE).with_context(|| {
            format!(
                "push {i}\noperator log:\n{}\nhub log:\n{}",
                operator.log_tail(),
                hub.log_tail()
            )
        })?;
        end_to_end.push(seen.saturating_duration_since(pushed));
        // The operator records push → applied after writing status, a moment after the watch saw
        // the ConfigMap: wait for that observation so that this push's figures are complete.
        let after = wait_until_every(
            &format!("push {i}: the operator recording push → applied"),
            PUSH_DEADLINE,
            Duration::from_millis(20),
            || {
                let now = Scrape::take(&operator, &hub)?;
                ensure!(
                    now.count(PUSH_TO_APPLIED) > before.count(PUSH_TO_APPLIED),
                    "not yet"
                );
                Ok(now)
            },
        )
        .with_context(|| operator.log_tail())?;
        reconciles += after.count(RECONCILES) - before.count(RECONCILES);
        stages[0].push(pushed - pushing);
        stages[1].push(posted);
        for (k, stage) in STAGES.iter().enumerate().skip(2) {
            match after.mean_since(&before, stage.metric) {
                Ok(mean) => stages[k].push(mean),
                // A branch is resolved by its fetch: operators since then observe no resolve.
                Err(_) if stage.metric == RESOLVES => {}
                Err(e) => {
                    return Err(e).with_context(|| {
                        format!("push {i}: no new observation of {}", stage.metric)
                    });
                }
            }
        }
    }

    println!(
        "push → applied over {pushes} pushes (interval 1h, so every apply is the hub's doing); {:.2} reconciles per push",
        reconciles / pushes as f64
    );
    println!(
        "  {:<58} {:>8} {:>8} {:>8} {:>8}",
        "stage", "p50 ms", "p95 ms", "p99 ms", "max ms"
    );
    for (stage, samples) in STAGES.iter().zip(&mut stages) {
        print_row(stage.label, samples);
    }
    print_row(
        "end to end: git push returned → ConfigMap on an API watch",
        &mut end_to_end,
    );
    println!(
        "  (the webhook is posted after `git push` returns, as a forge delivers, so end to end counts\n   it; fan-out and notice delay are within push → status; the notice delay has millisecond resolution)"
    );

    // The same pushes with the webhook sent by a post-receive hook, inside `git push`: how this
    // bench measured before, when part of the way ran before the clock started.
    repo.install_post_receive_hook(&hub.post_receive_hook(Forge::Github, &[&url])?)?;
    let mut from_hook = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        let greeting = format!("hook-v{i}");
        commit_config_map(&repo, ns.name(), "settings", &greeting)?;
        repo.push_to(&server.remote(&repo))?;
        let pushed = Instant::now();
        let seen = wait_for(&rx, &greeting, PUSH_DEADLINE)
            .with_context(|| format!("hook push {i}\noperator log:\n{}", operator.log_tail()))?;
        from_hook.push(seen.saturating_duration_since(pushed));
    }
    print_row(
        "the webhook sent by a post-receive hook, inside git push",
        &mut from_hook,
    );
    println!(
        "  (the row above is how this bench measured before: the hook's delivery, and whatever the\n   hub and the operator did before `git push` returned, fell before the clock started)"
    );
    Ok(())
}

/// One stage of a push's way, measured per push: the first two by this program, the others as the
/// change of a histogram's sum over its count between scrapes before and after the push.
struct Stage {
    label: &'static str,
    metric: &'static str,
}

const PUSH_TO_APPLIED: &str = "tether_push_to_applied_seconds";
const RESOLVES: &str = "tether_git_resolve_duration_seconds";
const RECONCILES: &str = "tether_reconcile_duration_seconds";

const STAGES: &[Stage] = &[
    Stage {
        label: "git push, start to return",
        metric: "",
    },
    Stage {
        label: "webhook: POST to the hub once git push returned, answered (curl)",
        metric: "",
    },
    Stage {
        label: "hub: webhook arrival → notice written to the socket",
        metric: "tether_hub_fanout_latency_seconds",
    },
    Stage {
        label: "hub → operator: webhook arrival → notice received",
        metric: "tether_hub_notice_delay_seconds",
    },
    Stage {
        label: "operator: resolve (a separate ls-remote)",
        metric: RESOLVES,
    },
    Stage {
        label: "operator: fetch (with the resolve, for a branch)",
        metric: "tether_git_fetch_duration_seconds",
    },
    Stage {
        label: "operator: plan, dry-run, apply, prune",
        metric: "tether_apply_duration_seconds",
    },
    Stage {
        label: "operator: reconcile, whole",
        metric: RECONCILES,
    },
    Stage {
        label: "webhook arrival at the hub → status written",
        metric: PUSH_TO_APPLIED,
    },
];

/// Histogram sums and counts from the operator's and the hub's `/metrics`.
struct Scrape(String);

impl Scrape {
    fn take(operator: &Operator, hub: &Hub) -> Result<Self> {
        Ok(Self(operator.metrics()? + &hub.metrics()?))
    }

    fn count(&self, metric: &str) -> f64 {
        metric_value(&self.0, &format!("{metric}_count")).unwrap_or(0.0)
    }

    fn sum(&self, metric: &str) -> f64 {
        metric_value(&self.0, &format!("{metric}_sum")).unwrap_or(0.0)
    }

    /// The mean of the observations made between `before` and this scrape.
    fn mean_since(&self, before: &Scrape, metric: &str) -> Result<Duration> {
        let n = self.count(metric) - before.count(metric);
        if n < 1.0 {
            bail!("no observation");
        }
        let secs = (self.sum(metric) - before.sum(metric)) / n;
        Ok(Duration::from_secs_f64(secs.max(0.0)))
    }
}

fn print_row(label: &str, samples: &mut [Duration]) {
    if samples.is_empty() {
        println!("  {label:<58} {:>8}   (none: resolved by the fetch)", "—");
        return;
    }
    samples.sort();
    let pct = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        ms(samples[i])
    };
    println!(
        "  {label:<58} {:>8.1} {:>8.1} {:>8.1} {:>8.1}",
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
}

/// Takes watch events until one says `want`; returns when it arrived.
fn wait_for(
    rx: &mpsc::Receiver<(String, Instant)>,
    want: &str,
    within: Duration,
) -> Result<Instant> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((value, at)) if value == want => return Ok(at),
            Ok(_) => {}
            Err(_) => bail!("the ConfigMap never said {want:?} within {within:?}"),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
