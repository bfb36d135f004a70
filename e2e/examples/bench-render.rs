//! `make bench` (render part): what rendering with the real kustomize and helm costs. Three
//! figures, for revisions of 200 small ConfigMaps each; asserts nothing beyond sanity.
//!
//! 1. The tool runs alone: `kustomize build` of an overlay (a `namePrefix` and a `labels` entry
//!    over a base elsewhere in the repository) and `helm template` of a chart (one template whose
//!    `range` over the values makes the ConfigMaps), each with the operator's arguments on a
//!    checkout of the revision, timed over [`TOOL_RUNS`] runs.
//! 2. What rendering adds to push → applied: one `GitRepository` per mode (plain files, the
//!    kustomize overlay, the helm chart; `interval: 1h`), then commits that each change one value;
//!    a reconcile is requested (`tether.dev/reconcile-requested-at`) as soon as `git push` returns,
//!    and the clock runs from `git push` returning to the changed ConfigMap arriving on a watch on
//!    the API server (`kubectl get --watch`). The modes take turns, push by push, so that they
//!    share whatever else the machine is doing. With the operator's own reconcile, render and apply
//!    times for each push, from its histograms.
//! 3. A cold start of many kustomize repositories (each its own repository and overlay, with a
//!    `namePrefix` of its own) until every `GitRepository` is Ready: the wall time, the operator's
//!    peak RSS sampled during it, and the peak RSS of the tool processes it runs at once (which a
//!    container's memory limit counts too).
//!
//! Usage: `bench-render [REPOS] [PUSHES]` (defaults 100 and 10): the kustomize repositories of
//! the cold start, and the pushes per mode. Binaries come from `TETHER_BIN_DIR` (release builds in
//! `make bench`); kustomize and helm from `TETHER_RENDER_BIN` and `TETHER_CONTROLPLANE_BIN`.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use kube::api::Api;
use tether_e2e::cluster::TestNamespace;
use tether_e2e::fixtures::git_repository;
use tether_e2e::git_server::Upstream;
use tether_e2e::gitrepo::{install_crds, request_reconcile, wait_ready};
use tether_e2e::http::metric_value;
use tether_e2e::kubectl::ValueWatch;
use tether_e2e::operator::Operator;
use tether_e2e::process::rss_bytes;
use tether_e2e::render_tools::{self, RenderTools};
use tether_e2e::tool;
use tether_e2e::wait::{wait_until_async, wait_until_every};
use tether_operator::crd::GitRepository;

/// The ConfigMaps in each revision.
const OBJECTS: usize = 200;
/// Runs of each tool on its own.
const TOOL_RUNS: usize = 10;
/// How long one push may take to be applied before the run is abandoned.
const PUSH_DEADLINE: Duration = Duration::from_secs(60);
/// How often the cold start samples the RSS of the operator and of its tool processes.
const SAMPLE_EVERY: Duration = Duration::from_millis(20);
/// The operator's own default, which the harness lowers to 4 for the tests.
const COLD_START_CONCURRENCY: &str = "--concurrency=16";

const RECONCILE: &str = "tether_reconcile_duration_seconds";
const APPLY: &str = "tether_apply_duration_seconds";
const RENDER: &str = "tether_render_duration_seconds";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1).map(|a| {
        a.parse::<usize>()
            .with_context(|| format!("{a:?}: the arguments are counts: [REPOS] [PUSHES]"))
    });
    let repos = args.next().transpose()?.unwrap_or(100);
    let pushes = args.next().transpose()?.unwrap_or(10);
    ensure!(
        repos > 0 && pushes > 0,
        "give at least one repository and one push"
    );
    let tools = render_tools::locate()?;

    let ns = TestNamespace::create("bench-render").await?;
    install_crds(ns.kubectl())?;
    let sources: Vec<(Mode, Upstream)> = Mode::ALL
        .into_iter()
        .map(|mode| {
            let repo = Upstream::new(mode.name())?;
            write_revision(&repo, mode, &format!("{}-", mode.name()), "v0")?;
            repo.commit("200 ConfigMaps")?;
            repo.push()?;
            Ok((mode, repo))
        })
        .collect::<Result<_>>()?;

    tool_runs(tools, &sources, ns.name())?;
    push_to_applied(&ns, &sources, pushes)?;
    drop(sources);
    cold_start(repos).await?;
    Ok(())
}

/// How the folder at `spec.path` holds the 200 ConfigMaps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plain,
    Kustomize,
    Helm,
}

impl Mode {
    const ALL: [Mode; 3] = [Mode::Plain, Mode::Kustomize, Mode::Helm];

    /// The mode's name: its repository's and its `GitRepository`'s, and the first part of its
    /// objects' names (for helm through the release name, which defaults to the `GitRepository`'s).
    fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Kustomize => "kustomize",
            Mode::Helm => "helm",
        }
    }

    /// `spec.path`.
    fn path(self) -> &'static str {
        match self {
            Mode::Plain => "deploy",
            Mode::Kustomize => "overlays/bench",
            Mode::Helm => "chart",
        }
    }

    /// The ConfigMap whose value each commit changes.
    fn watched(self) -> String {
        format!("{}-cm-0", self.name())
    }
}

/// Writes a revision of `mode` into the work tree of `repo`: 200 ConfigMaps named
/// `<prefix>cm-<i>` (for helm, `<release>-cm-<i>`), labelled `bench: render`, whose `data.value`
/// is `first` for the first and the index for the others.
fn write_revision(repo: &Upstream, mode: Mode, prefix: &str, first: &str) -> Result<()> {
    let value = |i: usize| {
        if i == 0 {
            first.to_owned()
        } else {
            i.to_string()
        }
    };
    match mode {
        Mode::Plain => {
            for i in 0..OBJECTS {
                repo.write(
                    &format!("deploy/cm-{i}.yaml"),
                    &format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {prefix}cm-{i}\n  labels:\n    bench: render\ndata:\n  value: \"{}\"\n",
                        value(i)
                    ),
                )?;
            }
        }
        Mode::Kustomize => {
            let mut resources = String::from("resources:\n");
            for i in 0..OBJECTS {
                repo.write(
                    &format!("base/cm-{i}.yaml"),
                    &format!(
                        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm-{i}\ndata:\n  value: \"{}\"\n",
                        value(i)
                    ),
                )?;
                resources.push_str(&format!("  - cm-{i}.yaml\n"));
            }
            repo.write("base/kustomization.yaml", &resources)?;
            repo.write(
                "overlays/bench/kustomization.yaml",
                &format!(
                    "resources:\n  - ../../base\nnamePrefix: {prefix}\nlabels:\n  - pairs:\n      bench: render\n"
                ),
            )?;
        }
        Mode::Helm => {
            repo.write(
                "chart/Chart.yaml",
                "apiVersion: v2\nname: bench\nversion: 0.1.0\n",
            )?;
            repo.write("chart/templates/configmaps.yaml", CHART_TEMPLATE)?;
            let mut values = String::from("items:\n");
            for i in 0..OBJECTS {
                values.push_str(&format!("  - name: cm-{i}\n    value: \"{}\"\n", value(i)));
            }
            repo.write("chart/values.yaml", &values)?;
        }
    }
    Ok(())
}

/// The chart's one template: a ConfigMap for each entry of `items`.
const CHART_TEMPLATE: &str = r#"{{- range .Values.items }}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ $.Release.Name }}-{{ .name }}
  labels:
    bench: render
data:
  value: {{ .value | quote }}
{{- end }}
"#;

// ---------------------------------------------------------------------------------------------
// 1. The tools alone.

/// Times kustomize and helm on the work trees of their repositories (a checkout of HEAD), with
/// the arguments the operator gives them, and prints p50/p95.
fn tool_runs(tools: &RenderTools, sources: &[(Mode, Upstream)], ns: &str) -> Result<()> {
    let home = tempfile::Builder::new()
        .prefix("tether-bench-render-home-")
        .tempdir()?;
    let home = home.path();
    println!(
        "render: the tool alone on a checkout of a revision of {OBJECTS} ConfigMaps, {TOOL_RUNS} runs each"
    );
    println!("  {:<90} {:>8} {:>8}", "command", "p50 ms", "p95 ms");
    for (mode, repo) in sources {
        let (label, mut command): (String, Command) = match mode {
            Mode::Plain => continue,
            Mode::Kustomize => {
                let args = [
                    "build",
                    mode.path(),
                    "--load-restrictor",
                    "LoadRestrictionsRootOnly",
                ];
                let mut cmd = Command::new(&tools.kustomize);
                cmd.args(args);
                (format!("kustomize {}", args.join(" ")), cmd)
            }
            Mode::Helm => {
                let chart = format!("./{}", mode.path());
                let args = [
                    "template",
                    mode.name(),
                    &chart,
                    "--namespace",
                    ns,
                    "--include-crds",
                    "--no-hooks",
                    "--skip-tests",
                ];
                let mut cmd = Command::new(&tools.helm);
                cmd.args(args)
                    .env("HOME", home)
                    .env("HELM_CACHE_HOME", home.join("cache"))
                    .env("HELM_CONFIG_HOME", home.join("config"))
                    .env("HELM_DATA_HOME", home.join("data"))
                    .env("KUBECONFIG", home.join("no-kubeconfig"));
                let shown = args.join(" ").replace(ns, "<ns>");
                (format!("helm {shown}"), cmd)
            }
        };
        command.current_dir(repo.work_path());
        let mut samples = Vec::with_capacity(TOOL_RUNS);
        for _ in 0..TOOL_RUNS {
            let began = Instant::now();
            let out = tool::run_command(&mut command, None)?;
            samples.push(began.elapsed());
            let objects = out.matches("kind: ConfigMap").count();
            ensure!(
                objects == OBJECTS,
                "{label} printed {objects} ConfigMaps, not {OBJECTS}"
            );
        }
        samples.sort();
        println!(
            "  {label:<90} {:>8.1} {:>8.1}",
            ms(pct(&samples, 0.50)),
            ms(pct(&samples, 0.95))
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. Push → applied, for each mode.

/// Per push: git push returned → seen on the watch, and the operator's reconcile, render (none
/// for plain files) and apply times.
#[derive(Debug, Default)]
struct Samples {
    end_to_end: Vec<Duration>,
    reconcile: Vec<Duration>,
    render: Vec<Duration>,
    apply: Vec<Duration>,
    reconciles: f64,
}

fn push_to_applied(ns: &TestNamespace, sources: &[(Mode, Upstream)], pushes: usize) -> Result<()> {
    let kubectl = ns.kubectl();
    let operator = Operator::start(ns.kubeconfig(), ns.name(), &[])?;
    for (mode, repo) in sources {
        kubectl.apply(&git_repository(
            ns.name(),
            mode.name(),
            &repo.file_url(),
            &format!("  path: {}\n  interval: 1h\n", mode.path()),
        ))?;
    }
    let mut watches = Vec::new();
    for (mode, _) in sources {
        wait_ready(kubectl, ns.name(), mode.name(), "180s", &operator)?;
        let watch = ValueWatch::start(ns.name(), &mode.watched())?;
        watch
            .wait_for("v0", Duration::from_secs(60))
            .with_context(|| operator.log_tail())?;
        watches.push(watch);
    }

    let mut samples: Vec<Samples> = sources.iter().map(|_| Samples::default()).collect();
    for i in 1..=pushes {
        let value = format!("v{i}");
        for (((mode, repo), watch), samples) in sources.iter().zip(&watches).zip(&mut samples) {
            let what = format!("push {i} of {}", mode.name());
            write_revision(repo, *mode, &format!("{}-", mode.name()), &value)?;
            repo.commit(&format!("set {} to {value}", mode.watched()))?;
            let before = operator.metrics()?;
            repo.push()?;
            let pushed = Instant::now();
            request_reconcile(kubectl, ns.name(), mode.name(), &format!("bench-{i}"))?;
            let seen = watch
                .wait_for(&value, PUSH_DEADLINE)
                .with_context(|| format!("{what}\noperator log:\n{}", operator.log_tail()))?;
            samples
                .end_to_end
                .push(seen.saturating_duration_since(pushed));
            // The reconcile is observed once its status is written, a moment after the watch saw
            // the ConfigMap: wait for that, so that this push's figures are complete.
            let after = wait_until_every(
                &format!("{what}: the operator recording its reconcile"),
                PUSH_DEADLINE,
                Duration::from_millis(20),
                || {
                    let now = operator.metrics()?;
                    ensure!(
                        count(&now, RECONCILE) > count(&before, RECONCILE),
                        "not yet"
                    );
                    Ok(now)
                },
            )
            .with_context(|| operator.log_tail())?;
            samples.reconciles += count(&after, RECONCILE) - count(&before, RECONCILE);
            samples
                .reconcile
                .push(mean_since(&before, &after, RECONCILE)?);
            samples.apply.push(mean_since(&before, &after, APPLY)?);
            if *mode != Mode::Plain {
                samples.render.push(mean_since(&before, &after, RENDER)?);
            }
        }
    }

    println!(
        "push → applied, {OBJECTS} ConfigMaps per revision, {pushes} pushes per mode (interval 1h; a reconcile requested as soon as git push returns)"
    );
    println!(
        "  {:<10} {:>9} {:>9} {:>13} {:>13} {:>15} {:>11} {:>11} {:>11}",
        "mode",
        "p50 ms",
        "p95 ms",
        "p50 vs plain",
        "p95 vs plain",
        "reconcile p50",
        "render p50",
        "apply p50",
        "reconciles"
    );
    let mut plain = (0.0, 0.0);
    for ((mode, _), s) in sources.iter().zip(&mut samples) {
        for list in [
            &mut s.end_to_end,
            &mut s.reconcile,
            &mut s.render,
            &mut s.apply,
        ] {
            list.sort();
        }
        let (p50, p95) = (ms(pct(&s.end_to_end, 0.50)), ms(pct(&s.end_to_end, 0.95)));
        if *mode == Mode::Plain {
            plain = (p50, p95);
        }
        println!(
            "  {:<10} {:>9.1} {:>9.1} {:>+13.1} {:>+13.1} {:>15.1} {:>11} {:>11.1} {:>11.2}",
            mode.name(),
            p50,
            p95,
            p50 - plain.0,
            p95 - plain.1,
            ms(pct(&s.reconcile, 0.50)),
            if s.render.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.1}", ms(pct(&s.render, 0.50)))
            },
            ms(pct(&s.apply, 0.50)),
            s.reconciles / pushes as f64
        );
    }
    println!(
        "  (p50/p95: git push returned → the changed ConfigMap, the first of the revision's objects \
         applied, on an API watch; the kubectl annotate\n   is included. reconcile, render and apply: \
         the operator's histograms, in ms, per push, for the whole revision; render is the checkout\n   \
         and the tool's run, apply is plan, dry-run, apply and prune. reconciles: how many per push)"
    );
    Ok(())
}

fn count(metrics: &str, histogram: &str) -> f64 {
    metric_value(metrics, &format!("{histogram}_count")).unwrap_or(0.0)
}

/// The mean of the observations of `histogram` made between two scrapes.
fn mean_since(before: &str, after: &str, histogram: &str) -> Result<Duration> {
    let n = count(after, histogram) - count(before, histogram);
    ensure!(n >= 1.0, "no new observation of {histogram}");
    let sum = |m: &str| metric_value(m, &format!("{histogram}_sum")).unwrap_or(0.0);
    Ok(Duration::from_secs_f64(
        ((sum(after) - sum(before)) / n).max(0.0),
    ))
}

// ---------------------------------------------------------------------------------------------
// 3. A cold start of many kustomize repositories.

async fn cold_start(repos: usize) -> Result<()> {
    let ns = TestNamespace::create("bench-render-cold").await?;
    let began = Instant::now();
    let mut upstreams = Vec::with_capacity(repos);
    let mut objects = String::new();
    for i in 0..repos {
        let repo = Upstream::new(&format!("overlay-{i}"))?;
        write_revision(&repo, Mode::Kustomize, &format!("r{i}-"), "v0")?;
        repo.commit("200 ConfigMaps")?;
        repo.push()?;
        objects.push_str("---\n");
        objects.push_str(&git_repository(
            ns.name(),
            &format!("overlay-{i}"),
            &repo.file_url(),
            &format!("  path: {}\n  interval: 1h\n", Mode::Kustomize.path()),
        ));
        upstreams.push(repo);
    }
    eprintln!(
        "bench-render: {repos} repositories written in {:.1}s",
        began.elapsed().as_secs_f64()
    );

    let operator = Operator::start(ns.kubeconfig(), ns.name(), &[COLD_START_CONCURRENCY])?;
    let sampler = Sampler::start(operator.pid());
    let began = Instant::now();
    ns.kubectl().apply(&objects)?;
    let created = began.elapsed();
    let api: Api<GitRepository> = Api::namespaced(ns.client().await?, ns.name());
    let listed = &api;
    // Generous: on two cores a debug build renders and applies about 200 ConfigMaps a second.
    let deadline = Duration::from_secs(60) + Duration::from_secs(3) * repos as u32;
    let waited = wait_until_async(
        &format!("all {repos} kustomize GitRepository objects Ready"),
        deadline,
        Duration::from_millis(200),
        || async move {
            let ready = tether_e2e::gitrepo::count_ready(listed).await?;
            ensure!(ready == repos, "{ready}/{repos} Ready");
            Ok(())
        },
    )
    .await;
    let all_ready = began.elapsed();
    let peaks = sampler.stop();
    waited.with_context(|| operator.log_tail())?;
    let settled = rss_bytes(operator.pid())?;
    println!(
        "cold start: {repos} kustomize GitRepository x {OBJECTS} ConfigMaps ({} objects, {COLD_START_CONCURRENCY}): all Ready in {:.1}s (created in {:.1}s)",
        repos * OBJECTS,
        all_ready.as_secs_f64(),
        created.as_secs_f64()
    );
    println!(
        "  operator RSS: peak {:.1} MiB sampled every {} ms over {} samples, {:.1} MiB once all Ready",
        mib(peaks.operator),
        SAMPLE_EVERY.as_millis(),
        peaks.samples,
        mib(settled)
    );
    println!(
        "  its kustomize processes: at most {} at once, {:.1} MiB RSS together at most; operator and tools together at most {:.1} MiB",
        peaks.children,
        mib(peaks.children_rss),
        mib(peaks.together)
    );
    drop(upstreams);
    Ok(())
}

/// The highest figures a [`Sampler`] saw.
#[derive(Debug, Default)]
struct Peaks {
    operator: u64,
    children: usize,
    children_rss: u64,
    together: u64,
    samples: usize,
}

/// A thread reading the RSS of a process and of its children every [`SAMPLE_EVERY`] until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Peaks>,
}

impl Sampler {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut peaks = Peaks::default();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(own) = rss_bytes(pid) {
                    let children = children_of(pid);
                    // A child may end between the listing and the read: it then counts nothing.
                    let theirs: u64 = children.iter().filter_map(|c| rss_bytes(*c).ok()).sum();
                    peaks.operator = peaks.operator.max(own);
                    peaks.children = peaks.children.max(children.len());
                    peaks.children_rss = peaks.children_rss.max(theirs);
                    peaks.together = peaks.together.max(own + theirs);
                    peaks.samples += 1;
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
            peaks
        });
        Self { stop, thread }
    }

    fn stop(self) -> Peaks {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

/// The pids of the children of `pid`, from `/proc/<pid>/task/*/children`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

/// The `p` quantile of sorted samples, nearest rank.
fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
