//! `make bench-vs-flux`: Tether and Flux (source-controller and kustomize-controller) side by side
//! on one control plane, doing the same work from the same HTTPS git server, one system at a time
//! in one run: push → applied, a cold start of N repositories, those N idle, and one large
//! repository. Prints one table (figure, Tether, Flux, Flux/Tether) and writes it as Markdown and
//! JSON under `bench-results/`. Asserts nothing but that every step finished within its deadline.
//!
//! Both systems sync plain manifests from one folder (`deploy/`), with concurrency 4 (Tether's
//! `--concurrency=4`, Flux's `--concurrent=4` on both controllers). Tether runs first: Flux's
//! `GitRepository` shares Tether's plural (`gitrepositories`), so its CRDs are applied only afterwards.
//!
//! Usage: `bench-vs-flux [PUSHES] [REPOS]` (default 50 and 100). Tether's binaries come from
//! `TETHER_BIN_DIR`, Flux's from `TETHER_FLUX_BIN` (see `tether_e2e::flux`).

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use tether_e2e::cluster::{TestNamespace, shared};
use tether_e2e::fixtures::{git_repository, https_secret, unguessable};
use tether_e2e::flux::{self, Flux};
use tether_e2e::git_server::{HttpsGitServer, Upstream};
use tether_e2e::gitrepo::{install_crds, request_reconcile};
use tether_e2e::hub::Hub;
use tether_e2e::kubectl::{Kubectl, ValueWatch};
use tether_e2e::operator::Operator;
use tether_e2e::process::rss_bytes;
use tether_e2e::wait::wait_until_every;

/// Tether's `--concurrency` and Flux's `--concurrent`.
const CONCURRENCY: u16 = 4;
/// ConfigMaps in the push repository.
const PUSH_OBJECTS: usize = 20;
/// ConfigMaps in each cold-start repository.
const COLD_OBJECTS: usize = 4;
/// ConfigMaps in the large repository.
const LARGE_OBJECTS: usize = 2000;
/// The interval while idle, and how long the idle phase is measured.
const IDLE_INTERVAL: &str = "20s";
const IDLE_INTERVAL_SECS: f64 = 20.0;
const IDLE_FOR: Duration = Duration::from_secs(60);
/// How long one push may take to arrive before the run is abandoned.
const PUSH_DEADLINE: Duration = Duration::from_secs(60);
/// How long a cold start (of N repositories, or of the large one) may take.
const COLD_DEADLINE: Duration = Duration::from_secs(900);
/// Tether's resource, by its full name (Flux's has the same short name).
const TETHER_GIT_REPOSITORIES: &str = "gitrepositories.tether.dev";

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let pushes: usize = match args.next() {
        Some(n) => n
            .parse()
            .context("the first argument is a number of pushes")?,
        None => 50,
    };
    let repos: usize = match args.next() {
        Some(n) => n
            .parse()
            .context("the second argument is a number of repositories")?,
        None => 100,
    };
    ensure!(
        pushes > 0 && repos > 0,
        "PUSHES and REPOS must be at least 1"
    );
    let flux_bin = flux::bin_dir()?;
    let plane = shared();
    let kubectl = Kubectl::for_plane(plane);
    install_crds(&kubectl)?;
    let server = HttpsGitServer::start()?;
    let traffic = Traffic::of(&server)?;

    let began = Instant::now();
    let fixtures = Fixtures::create(&server, repos)?;
    eprintln!(
        "bench-vs-flux: repositories ready in {:.1}s ({repos} of {COLD_OBJECTS} ConfigMaps, 2 of {PUSH_OBJECTS}, 2 of {LARGE_OBJECTS})",
        began.elapsed().as_secs_f64()
    );

    eprintln!("bench-vs-flux: Tether: {pushes} pushes, the large repository");
    let tether_push = tether_pushes(&kubectl, &server, &fixtures, pushes).await?;
    eprintln!("bench-vs-flux: Tether: cold start and idle of {repos} repositories");
    let tether_cold = tether_cold(&kubectl, &server, &fixtures, &traffic).await?;

    flux::install_crds(&kubectl)?;
    eprintln!("bench-vs-flux: Flux: {pushes} pushes, the large repository");
    let flux_push = flux_pushes(&kubectl, &server, &fixtures, pushes).await?;
    eprintln!("bench-vs-flux: Flux: cold start and idle of {repos} repositories");
    let flux_cold = flux_cold(&kubectl, &server, &fixtures, &traffic).await?;

    let table = Table::build(
        pushes,
        repos,
        &tether_push,
        &tether_cold,
        &flux_push,
        &flux_cold,
        &flux_bin,
    )?;
    println!("{}", table.markdown());
    let written = table.write()?;
    eprintln!("bench-vs-flux: written to {}", written.display());
    Ok(())
}

/// The repositories both systems sync, each created once on the HTTPS server.
struct Fixtures {
    tether_push: Upstream,
    flux_push: Upstream,
    tether_large: Upstream,
    flux_large: Upstream,
    cold: Vec<Upstream>,
}

impl Fixtures {
    fn create(server: &HttpsGitServer, repos: usize) -> Result<Self> {
        let make = |name: &str, objects: usize, prefix: &str| -> Result<Upstream> {
            let repo = server.create_repo(name)?;
            for k in 0..objects {
                repo.write(
                    &format!("deploy/{prefix}-{k}.yaml"),
                    &config_map(&format!("{prefix}-{k}"), "v0"),
                )?;
            }
            repo.commit("the first revision")?;
            repo.push()?;
            Ok(repo)
        };
        Ok(Self {
            tether_push: make("tether-push", PUSH_OBJECTS, "cm")?,
            flux_push: make("flux-push", PUSH_OBJECTS, "cm")?,
            tether_large: make("tether-large", LARGE_OBJECTS, "big")?,
            flux_large: make("flux-large", LARGE_OBJECTS, "big")?,
            cold: (0..repos)
                .map(|i| make(&format!("cold-{i}"), COLD_OBJECTS, &format!("cold-{i}")))
                .collect::<Result<_>>()?,
        })
    }
}

/// A ConfigMap without a namespace: each system puts it in the namespace of its own objects.
fn config_map(name: &str, value: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}\ndata:\n  value: {value}\n")
}

/// One system's push figures and its large repository.
struct PushFigures {
    /// Push → applied with the hub's webhook (Tether only).
    webhook: Option<Vec<Duration>>,
    /// Push → applied with a reconcile-request annotation set once `git push` returned.
    annotation: Vec<Duration>,
    /// The large repository: created → Ready.
    large_cold: Duration,
    /// The large repository: a one-line change pushed → the changed ConfigMap seen.
    large_push: Duration,
}

/// One system's cold start and idle figures.
struct ColdFigures {
    wall: Duration,
    peak_rss: u64,
    cpu: f64,
    cold_traffic: Counts,
    idle_cpu_per_interval: f64,
    idle_rss: u64,
    idle_per_interval: (f64, f64, f64),
}

async fn tether_pushes(
    kubectl: &Kubectl,
    server: &HttpsGitServer,
    fixtures: &Fixtures,
    pushes: usize,
) -> Result<PushFigures> {
    let ns = TestNamespace::create("vs-tether").await?;
    let hub = Hub::start()?;
    let repo = &fixtures.tether_push;
    let url = server.url(repo.name());
    kubectl.apply(&https_secret(ns.name(), "auth", server))?;
    kubectl.apply(&tether_repository(ns.name(), "push", &url, "1h"))?;
    let operator = Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[
            &format!("--hub-url={}", hub.ws_url()),
            &format!("--hub-token-file={}", hub.token_file().display()),
            &format!("--concurrency={CONCURRENCY}"),
        ],
    )?;
    hub.wait_for_log(
        &["watch set updated", "repos=1"],
        1,
        Duration::from_secs(60),
    )?;
    let applied = |name: &str, sha: &str, timeout: Duration| {
        wait_applied(
            kubectl,
            TETHER_GIT_REPOSITORIES,
            ns.name(),
            name,
            sha,
            timeout,
        )
        .with_context(|| operator.log_tail())
    };
    applied("push", &repo.head()?, Duration::from_secs(120))?;
    let watch = ValueWatch::start(ns.name(), "cm-0")?;
    watch.wait_for("v0", PUSH_DEADLINE)?;

    let mut webhook = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        let value = format!("hub-{i}");
        let old = repo.head()?;
        let new = repo.commit_file("deploy/cm-0.yaml", &config_map("cm-0", &value), &value)?;
        let (headers, body) = hub.github_push_webhook(&url, "refs/heads/main", &old, &new)?;
        repo.push_to(&server.remote(repo))?;
        let pushed = Instant::now();
        let status = hub.post_webhook("github", &headers, body.as_bytes())?;
        ensure!(
            status == 202,
            "push {i}: the hub answered the webhook with {status}"
        );
        let seen = watch
            .wait_for(&value, PUSH_DEADLINE)
            .with_context(|| format!("Tether, webhook push {i}:\n{}", operator.log_tail()))?;
        webhook.push(seen.saturating_duration_since(pushed));
        // The status written, so that the next push starts on an idle operator.
        applied("push", &new, PUSH_DEADLINE)?;
    }

    let mut annotation = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        let value = format!("annotation-{i}");
        let new = repo.commit_file("deploy/cm-0.yaml", &config_map("cm-0", &value), &value)?;
        repo.push_to(&server.remote(repo))?;
        let pushed = Instant::now();
        request_reconcile(kubectl, ns.name(), "push", &unguessable("push"))?;
        let seen = watch
            .wait_for(&value, PUSH_DEADLINE)
            .with_context(|| format!("Tether, annotated push {i}:\n{}", operator.log_tail()))?;
        annotation.push(seen.saturating_duration_since(pushed));
        applied("push", &new, PUSH_DEADLINE)?;
    }
    drop(watch);

    // The large repository, on the same operator.
    let large = &fixtures.tether_large;
    let began = Instant::now();
    kubectl.apply(&tether_repository(
        ns.name(),
        "large",
        &server.url(large.name()),
        "1h",
    ))?;
    applied("large", &large.head()?, COLD_DEADLINE)?;
    let large_cold = began.elapsed();
    let watch = ValueWatch::start(ns.name(), "big-0")?;
    watch.wait_for("v0", PUSH_DEADLINE)?;
    let new = large.commit_file("deploy/big-0.yaml", &config_map("big-0", "v1"), "v1")?;
    large.push_to(&server.remote(large))?;
    let pushed = Instant::now();
    request_reconcile(kubectl, ns.name(), "large", &unguessable("large"))?;
    let seen = watch
        .wait_for("v1", COLD_DEADLINE)
        .with_context(|| format!("Tether, the large repository:\n{}", operator.log_tail()))?;
    let large_push = seen.saturating_duration_since(pushed);
    applied("large", &new, COLD_DEADLINE)?;
    Ok(PushFigures {
        webhook: Some(webhook),
        annotation,
        large_cold,
        large_push,
    })
}

async fn flux_pushes(
    kubectl: &Kubectl,
    server: &HttpsGitServer,
    fixtures: &Fixtures,
    pushes: usize,
) -> Result<PushFigures> {
    let ns = TestNamespace::create("vs-flux").await?;
    let repo = &fixtures.flux_push;
    let url = server.url(repo.name());
    kubectl.apply(&flux::https_secret(ns.name(), "auth", server))?;
    let flux = Flux::start(ns.kubeconfig(), ns.name(), CONCURRENCY)?;
    kubectl.apply(&flux_sync(ns.name(), "push", &url, "1h").yaml())?;
    let applied = |name: &str, sha: &str, timeout: Duration| {
        flux::wait_applied(
            kubectl,
            ns.name(),
            name,
            &format!("main@sha1:{sha}"),
            timeout,
            &flux,
        )
    };
    applied("push", &repo.head()?, Duration::from_secs(120))?;
    let watch = ValueWatch::start(ns.name(), "cm-0")?;
    watch.wait_for("v0", PUSH_DEADLINE)?;

    let mut annotation = Vec::with_capacity(pushes);
    for i in 1..=pushes {
        let value = format!("annotation-{i}");
        let new = repo.commit_file("deploy/cm-0.yaml", &config_map("cm-0", &value), &value)?;
        repo.push_to(&server.remote(repo))?;
        let pushed = Instant::now();
        flux::request_reconcile(kubectl, ns.name(), "push", &unguessable("push"))?;
        let seen = watch
            .wait_for(&value, PUSH_DEADLINE)
            .with_context(|| format!("Flux, annotated push {i}:\n{}", flux.log_tail()))?;
        annotation.push(seen.saturating_duration_since(pushed));
        applied("push", &new, PUSH_DEADLINE)?;
    }
    drop(watch);

    let large = &fixtures.flux_large;
    let began = Instant::now();
    kubectl.apply(&flux_sync(ns.name(), "large", &server.url(large.name()), "1h").yaml())?;
    applied("large", &large.head()?, COLD_DEADLINE)?;
    let large_cold = began.elapsed();
    let watch = ValueWatch::start(ns.name(), "big-0")?;
    watch.wait_for("v0", PUSH_DEADLINE)?;
    let new = large.commit_file("deploy/big-0.yaml", &config_map("big-0", "v1"), "v1")?;
    large.push_to(&server.remote(large))?;
    let pushed = Instant::now();
    flux::request_reconcile(kubectl, ns.name(), "large", &unguessable("large"))?;
    let seen = watch
        .wait_for("v1", COLD_DEADLINE)
        .with_context(|| format!("Flux, the large repository:\n{}", flux.log_tail()))?;
    let large_push = seen.saturating_duration_since(pushed);
    applied("large", &new, COLD_DEADLINE)?;
    Ok(PushFigures {
        webhook: None,
        annotation,
        large_cold,
        large_push,
    })
}

async fn tether_cold(
    kubectl: &Kubectl,
    server: &HttpsGitServer,
    fixtures: &Fixtures,
    traffic: &Traffic,
) -> Result<ColdFigures> {
    let ns = TestNamespace::create("vs-tether-cold").await?;
    kubectl.apply(&https_secret(ns.name(), "auth", server))?;
    let operator = Operator::start(
        ns.kubeconfig(),
        ns.name(),
        &[&format!("--concurrency={CONCURRENCY}")],
    )?;
    let objects: String = fixtures
        .cold
        .iter()
        .map(|r| {
            format!(
                "---\n{}",
                tether_repository(ns.name(), r.name(), &server.url(r.name()), IDLE_INTERVAL)
            )
        })
        .collect();
    let figures = cold_and_idle(
        kubectl,
        TETHER_GIT_REPOSITORIES,
        ns.name(),
        &objects,
        fixtures.cold.len(),
        &[operator.pid()],
        traffic,
    )
    .with_context(|| operator.log_tail())?;
    Ok(figures)
}

async fn flux_cold(
    kubectl: &Kubectl,
    server: &HttpsGitServer,
    fixtures: &Fixtures,
    traffic: &Traffic,
) -> Result<ColdFigures> {
    let ns = TestNamespace::create("vs-flux-cold").await?;
    kubectl.apply(&flux::https_secret(ns.name(), "auth", server))?;
    let flux = Flux::start(ns.kubeconfig(), ns.name(), CONCURRENCY)?;
    let objects: String = fixtures
        .cold
        .iter()
        .map(|r| {
            format!(
                "---\n{}",
                flux_sync(ns.name(), r.name(), &server.url(r.name()), IDLE_INTERVAL).yaml()
            )
        })
        .collect();
    let figures = cold_and_idle(
        kubectl,
        flux::KUSTOMIZATIONS,
        ns.name(),
        &objects,
        fixtures.cold.len(),
        &flux.pids(),
        traffic,
    )
    .with_context(|| flux.log_tail())?;
    Ok(figures)
}

/// Applies `objects` (N syncs), waits until all N `resource` objects have applied, then leaves them
/// idle for [`IDLE_FOR`]; measures `pids` and the git server throughout.
fn cold_and_idle(
    kubectl: &Kubectl,
    resource: &str,
    ns: &str,
    objects: &str,
    n: usize,
    pids: &[u32],
    traffic: &Traffic,
) -> Result<ColdFigures> {
    let sampler = RssSampler::start(pids.to_vec());
    let cpu_before = cpu_seconds(pids)?;
    let git_before = traffic.mark()?;
    let began = Instant::now();
    kubectl.run_with_stdin(&["apply", "-f", "-"], Some(objects))?;
    wait_until_every(
        &format!("all {n} {resource} in {ns} applied"),
        COLD_DEADLINE,
        Duration::from_millis(250),
        || {
            let applied = count_applied(kubectl, resource, ns)?;
            ensure!(applied == n, "{applied}/{n} applied");
            Ok(())
        },
    )?;
    let wall = began.elapsed();
    let cpu = cpu_seconds(pids)? - cpu_before;
    let cold_traffic = traffic.since(&git_before)?;
    let peak_rss = sampler.peak();

    let git_before = traffic.mark()?;
    let cpu_before = cpu_seconds(pids)?;
    let idle_began = Instant::now();
    // A measuring window, not a wait for a condition: nothing is expected to happen in it.
    std::thread::sleep(IDLE_FOR);
    let intervals = idle_began.elapsed().as_secs_f64() / IDLE_INTERVAL_SECS;
    let idle_cpu = cpu_seconds(pids)? - cpu_before;
    let idle = traffic.since(&git_before)?;
    let idle_rss = pids.iter().map(|p| rss_bytes(*p).unwrap_or(0)).sum();
    Ok(ColdFigures {
        wall,
        peak_rss,
        cpu,
        cold_traffic,
        idle_cpu_per_interval: idle_cpu / intervals,
        idle_rss,
        idle_per_interval: (
            idle.advertisements as f64 / intervals,
            idle.fetches as f64 / intervals,
            idle.bytes as f64 / intervals,
        ),
    })
}

/// A Tether `GitRepository` syncing `deploy/` of `url` with the test server's Secret `auth`.
fn tether_repository(ns: &str, name: &str, url: &str, interval: &str) -> String {
    git_repository(
        ns,
        name,
        url,
        &format!("  path: deploy\n  interval: {interval}\n  secretRef:\n    name: auth\n"),
    )
}

/// A Flux `GitRepository` and `Kustomization` syncing `./deploy` of `url` likewise.
fn flux_sync<'a>(ns: &'a str, name: &'a str, url: &'a str, interval: &'a str) -> flux::Sync<'a> {
    flux::Sync {
        namespace: ns,
        name,
        url,
        branch: "main",
        secret: "auth",
        path: "./deploy",
        interval,
    }
}

/// Waits until `resource` `name` is Ready with `status.lastAppliedRevision` `main@sha1:<sha>`.
fn wait_applied(
    kubectl: &Kubectl,
    resource: &str,
    ns: &str,
    name: &str,
    sha: &str,
    timeout: Duration,
) -> Result<()> {
    let want = format!("True main@sha1:{sha}");
    wait_until_every(
        &format!("{resource} {ns}/{name} Ready at {sha}"),
        timeout,
        Duration::from_millis(100),
        || {
            let got = kubectl.run(&[
                "get",
                resource,
                name,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.conditions[?(@.type==\"Ready\")].status} {.status.lastAppliedRevision}",
            ])?;
            ensure!(got.trim() == want, "it says {got:?}");
            Ok(())
        },
    )
}

/// How many `resource` objects in `ns` have applied a revision (`status.lastAppliedRevision` set).
///
/// Not "Ready now": kustomize-controller sets Ready to Unknown (Progressing) for the length of
/// every reconcile, so with many objects on a short interval some are always in the middle of one.
fn count_applied(kubectl: &Kubectl, resource: &str, ns: &str) -> Result<usize> {
    let out = kubectl.run(&[
        "get",
        resource,
        "-n",
        ns,
        "-o",
        "jsonpath={range .items[*]}{.status.lastAppliedRevision}{\"\\n\"}{end}",
    ])?;
    Ok(out
        .lines()
        .filter(|l| l.trim().starts_with("main@sha1:"))
        .count())
}

/// The peak of the summed RSS of some processes, sampled every 50 ms until dropped.
struct RssSampler {
    peak: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl RssSampler {
    fn start(pids: Vec<u32>) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let sum = pids.iter().map(|pid| rss_bytes(*pid).unwrap_or(0)).sum();
                p.fetch_max(sum, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { peak, stop }
    }

    fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// User plus system CPU time of processes together, in seconds.
fn cpu_seconds(pids: &[u32]) -> Result<f64> {
    pids.iter()
        .map(|pid| tether_e2e::process::cpu_seconds(*pid))
        .sum()
}

/// Git traffic as the HTTPS server saw it: its nginx access log, and what nginx wrote.
struct Traffic {
    access_log: PathBuf,
    error_log: PathBuf,
    nginx_pid: u32,
}

/// Requests counted between two marks.
#[derive(Debug, Clone, Copy, Default)]
struct Counts {
    /// `GET …/info/refs`: a ref advertisement (what `ls-remote` and every fetch start with).
    advertisements: u64,
    /// `POST …/git-upload-pack`: a fetch's negotiation and pack.
    fetches: u64,
    /// Bytes nginx wrote (`wchar` of `/proc/<pid>/io`, less its own log lines): TLS to the clients
    /// and the requests it forwarded to `git http-backend`.
    bytes: u64,
}

/// Where the access log and nginx's byte counter stood.
struct Mark {
    offset: u64,
    written: u64,
    logs: u64,
}

impl Traffic {
    fn of(server: &HttpsGitServer) -> Result<Self> {
        let dir = server
            .root()
            .parent()
            .context("the git server's root has no parent")?
            .to_path_buf();
        let pid = std::fs::read_to_string(dir.join("nginx.pid"))
            .context("reading the git server's nginx.pid")?;
        Ok(Self {
            access_log: dir.join("access.log"),
            error_log: dir.join("error.log"),
            nginx_pid: pid.trim().parse().context("nginx.pid is not a pid")?,
        })
    }

    fn written(&self) -> Result<u64> {
        let io = std::fs::read_to_string(format!("/proc/{}/io", self.nginx_pid))
            .context("reading nginx's /proc/<pid>/io")?;
        io.lines()
            .find_map(|l| l.strip_prefix("wchar:"))
            .context("no wchar in nginx's /proc/<pid>/io")?
            .trim()
            .parse()
            .context("nginx's wchar")
    }

    fn log_len(&self) -> u64 {
        [&self.access_log, &self.error_log]
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
            .sum()
    }

    fn mark(&self) -> Result<Mark> {
        Ok(Mark {
            offset: std::fs::metadata(&self.access_log)
                .map(|m| m.len())
                .unwrap_or(0),
            written: self.written()?,
            logs: self.log_len(),
        })
    }

    fn since(&self, mark: &Mark) -> Result<Counts> {
        let log = std::fs::read(&self.access_log).context("reading nginx's access log")?;
        let start = usize::try_from(mark.offset)?.min(log.len());
        let text = String::from_utf8_lossy(&log[start..]);
        let mut counts = Counts::default();
        for line in text.lines() {
            if line.contains("/info/refs") {
                counts.advertisements += 1;
            } else if line.contains("\"POST ") && line.contains("/git-upload-pack") {
                counts.fetches += 1;
            }
        }
        let logs = self.log_len().saturating_sub(mark.logs);
        counts.bytes = self
            .written()?
            .saturating_sub(mark.written)
            .saturating_sub(logs);
        Ok(counts)
    }
}

/// One figure: a value with its unit, or a sentence where there is none.
#[derive(Clone)]
enum Cell {
    Value(f64),
    Text(String),
}

impl Cell {
    fn show(&self, decimals: usize) -> String {
        match self {
            Cell::Value(v) => format!("{v:.decimals$}"),
            Cell::Text(t) => t.clone(),
        }
    }

    fn json(&self) -> serde_json::Value {
        match self {
            Cell::Value(v) => serde_json::json!(v),
            Cell::Text(t) => serde_json::json!(t),
        }
    }
}

/// A row of the cold-start or idle part: its label, how to read it, and its decimals.
type Measure = (&'static str, fn(&ColdFigures) -> f64, usize);

struct Row {
    figure: String,
    tether: Cell,
    flux: Cell,
    decimals: usize,
}

impl Row {
    fn ratio(&self) -> Option<f64> {
        match (&self.tether, &self.flux) {
            (Cell::Value(t), Cell::Value(f)) if *t > 0.0 => Some(f / t),
            _ => None,
        }
    }
}

struct Table {
    header: Vec<String>,
    rows: Vec<Row>,
    json: serde_json::Value,
    stamp: String,
}

impl Table {
    fn build(
        pushes: usize,
        repos: usize,
        tether_push: &PushFigures,
        tether_cold: &ColdFigures,
        flux_push: &PushFigures,
        flux_cold: &ColdFigures,
        flux_bin: &std::path::Path,
    ) -> Result<Self> {
        let commit = command("git", &["rev-parse", "--short", "HEAD"])?;
        let dirty = !command("git", &["status", "--porcelain"])?.is_empty();
        let cores = command("nproc", &[])?;
        let memory = std::fs::read_to_string("/proc/meminfo")?
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| format!("{:.1} GiB", kib / 1024.0 / 1024.0))
            .unwrap_or_else(|| "unknown".to_string());
        let date = command("date", &["-u", "+%Y-%m-%d %H:%M UTC"])?;
        let stamp = command("date", &["-u", "+%Y%m%dT%H%M%SZ"])?;
        let header = vec![
            format!(
                "Tether {commit}{} vs Flux source-controller {} + kustomize-controller {} ({})",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                },
                flux::SOURCE_CONTROLLER_VERSION,
                flux::KUSTOMIZE_CONTROLLER_VERSION,
                flux_bin.display()
            ),
            format!("machine: {cores} cores, {memory} memory; {date}"),
            format!(
                "one local control plane, one HTTPS git server (nginx + git http-backend); plain manifests in one folder; \
                 concurrency 4 (Tether --concurrency=4, Flux --concurrent=4 on both controllers); \
                 {pushes} pushes, {repos} repositories of {COLD_OBJECTS} ConfigMaps, one of {LARGE_OBJECTS}"
            ),
        ];
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut rows = Vec::new();
        let mut push_rows = |label: &str, tether: &[Duration], flux: &[Duration]| {
            for (name, p) in [("p50", 0.50), ("p95", 0.95), ("p99", 0.99)] {
                rows.push(Row {
                    figure: format!("push → applied, {label}, {name} (ms)"),
                    tether: Cell::Value(ms(percentile(tether, p))),
                    flux: Cell::Value(ms(percentile(flux, p))),
                    decimals: 0,
                });
            }
        };
        if let Some(webhook) = &tether_push.webhook {
            push_rows(
                "Tether via hub webhook / Flux via requestedAt annotation",
                webhook,
                &flux_push.annotation,
            );
        }
        push_rows(
            "both via reconcile-request annotation",
            &tether_push.annotation,
            &flux_push.annotation,
        );
        rows.push(Row {
            figure: "push → applied through the system's own webhook path".to_string(),
            tether: Cell::Text("the hub (rows above)".to_string()),
            flux: Cell::Text(
                "not run: needs notification-controller's Receiver reachable from the forge; its effect is the annotation"
                    .to_string(),
            ),
            decimals: 0,
        });
        let per_system =
            |f: fn(&ColdFigures) -> f64| (Cell::Value(f(tether_cold)), Cell::Value(f(flux_cold)));
        let cold: [Measure; 5] = [
            (
                "cold start: created → all applied (s)",
                |c| c.wall.as_secs_f64(),
                1,
            ),
            (
                "cold start: peak RSS, all processes (MiB)",
                |c| c.peak_rss as f64 / 1024.0 / 1024.0,
                1,
            ),
            ("cold start: CPU time, all processes (s)", |c| c.cpu, 2),
            (
                "cold start: ref advertisements (info/refs)",
                |c| c.cold_traffic.advertisements as f64,
                0,
            ),
            (
                "cold start: git-upload-pack POSTs",
                |c| c.cold_traffic.fetches as f64,
                0,
            ),
        ];
        for (label, f, decimals) in cold {
            let (tether, flux) = per_system(f);
            rows.push(Row {
                figure: format!("{label}, {repos} repos"),
                tether,
                flux,
                decimals,
            });
        }
        let idle: [Measure; 5] = [
            (
                "idle: CPU time per interval (s)",
                |c| c.idle_cpu_per_interval,
                3,
            ),
            (
                "idle: RSS, all processes (MiB)",
                |c| c.idle_rss as f64 / 1024.0 / 1024.0,
                1,
            ),
            (
                "idle: ref advertisements per interval",
                |c| c.idle_per_interval.0,
                1,
            ),
            (
                "idle: git-upload-pack POSTs per interval",
                |c| c.idle_per_interval.1,
                1,
            ),
            (
                "idle: KiB written by the git server per interval",
                |c| c.idle_per_interval.2 / 1024.0,
                1,
            ),
        ];
        for (label, f, decimals) in idle {
            let (tether, flux) = per_system(f);
            rows.push(Row {
                figure: format!("{label}, {repos} repos, interval {IDLE_INTERVAL}"),
                tether,
                flux,
                decimals,
            });
        }
        rows.push(Row {
            figure: format!("large repo ({LARGE_OBJECTS} ConfigMaps): created → Ready (s)"),
            tether: Cell::Value(tether_push.large_cold.as_secs_f64()),
            flux: Cell::Value(flux_push.large_cold.as_secs_f64()),
            decimals: 1,
        });
        rows.push(Row {
            figure: format!(
                "large repo ({LARGE_OBJECTS} ConfigMaps): one-line push → applied, annotation (ms)"
            ),
            tether: Cell::Value(ms(tether_push.large_push)),
            flux: Cell::Value(ms(flux_push.large_push)),
            decimals: 0,
        });
        let json = serde_json::json!({
            "tether_commit": commit,
            "tether_dirty": dirty,
            "flux": {
                "source_controller": flux::SOURCE_CONTROLLER_VERSION,
                "kustomize_controller": flux::KUSTOMIZE_CONTROLLER_VERSION,
            },
            "machine": {"cores": cores, "memory": memory},
            "date": date,
            "pushes": pushes,
            "repos": repos,
            "concurrency": CONCURRENCY,
            "rows": rows.iter().map(|r| serde_json::json!({
                "figure": r.figure,
                "tether": r.tether.json(),
                "flux": r.flux.json(),
                "flux_over_tether": r.ratio(),
            })).collect::<Vec<_>>(),
        });
        Ok(Self {
            header,
            rows,
            json,
            stamp,
        })
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(&format!("{line}  \n"));
        }
        out.push_str("\n| figure | Tether | Flux | Flux/Tether |\n|---|---:|---:|---:|\n");
        for row in &self.rows {
            let ratio = row
                .ratio()
                .map(|r| format!("{r:.2}×"))
                .unwrap_or_else(|| "–".to_string());
            out.push_str(&format!(
                "| {} | {} | {} | {ratio} |\n",
                row.figure,
                row.tether.show(row.decimals),
                row.flux.show(row.decimals)
            ));
        }
        out
    }

    /// Writes `bench-results/vs-flux-<time>.md` and `.json`; returns the Markdown's path.
    fn write(&self) -> Result<PathBuf> {
        let dir = tether_e2e::workspace::root().join("bench-results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join(format!("vs-flux-{}.md", self.stamp));
        std::fs::write(&md, self.markdown())?;
        std::fs::write(
            dir.join(format!("vs-flux-{}.json", self.stamp)),
            serde_json::to_string_pretty(&self.json)? + "\n",
        )?;
        Ok(md)
    }
}

/// The sample at quantile `p` (nearest rank).
fn percentile(samples: &[Duration], p: f64) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// A short command's trimmed stdout, run in the workspace.
fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .current_dir(tether_e2e::workspace::root())
        .output()
        .with_context(|| format!("running {program}"))?;
    ensure!(
        out.status.success(),
        "{program} {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}
