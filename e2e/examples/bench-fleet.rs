//! `make bench` (fleet part): the hub's fleet view at scale. A real `tether-hub` with `--clusters`
//! agents and one viewer; this program is the test agent: one real agent websocket per cluster
//! (`/v1/connect`, `tether.v1`), each watching `--repos` repositories and reporting a
//! `GitRepository` record for each (mostly Ready, some failing), in reports of at most
//! `MAX_RECORDS_PER_REPORT` records, the connections open for the whole run. Signed GitHub push
//! webhooks for some repositories leave most clusters behind on those.
//!
//! Prints: how long until the hub holds every record, the hub's RSS before the agents, once they
//! watch and once it holds the records, the server time and size of the page and the JSON (curl,
//! p50 over `--runs`), and, in headless Chromium logged in through `/fleet/login`, the page's load
//! (navigation start → `load` event, with the way there) and a live update: one agent reports a
//! changed record and the clock runs until the page's DOM shows it, split into the hub's event,
//! the page's fetch of its changing part and the DOM update. Checks that the hub holds what was
//! sent; asserts nothing about speed.
//!
//! Usage: `bench-fleet [--clusters 200] [--repos 500] [--pushed 10] [--runs 10] [--updates 10]`.
//! The hub comes from `TETHER_BIN_DIR` (release builds in `make bench`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tether_e2e::browser::{Browser, artifacts_for};
use tether_e2e::fixtures::unguessable;
use tether_e2e::hub::{AgentSpec, Hub, HubOptions};
use tether_e2e::process::{cpu_seconds, rss_bytes};
use tether_e2e::tool;
use tether_e2e::wait::{wait_until, wait_until_every};
use tether_e2e::workspace::binary;
use tether_protocol::{
    AgentMessage, CONNECT_PATH, FleetRecord, HubMessage, MAX_RECORDS_PER_REPORT, SUBPROTOCOL,
    normalize,
};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

#[derive(Debug, Parser)]
#[command(about = "The hub's fleet view at scale: ingest, memory, page and live updates")]
struct Args {
    /// Clusters (agents), each with its own websocket.
    #[arg(long, default_value_t = 200)]
    clusters: usize,
    /// Repositories each cluster watches and reports a GitRepository for.
    #[arg(long, default_value_t = 500)]
    repos: usize,
    /// Repositories that get a push webhook (every `repos / pushed`-th), leaving three clusters
    /// in four behind on them.
    #[arg(long, default_value_t = 10)]
    pushed: usize,
    /// Runs of each HTTP request and page load; p50 is reported.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// Live updates measured in the browser.
    #[arg(long, default_value_t = 10)]
    updates: usize,
}

/// How long the hub may take to hold every record, or to show a push.
const INGEST_WITHIN: Duration = Duration::from_secs(300);
/// How often the record count is read while the reports arrive. Each read builds the view under
/// the lock the reports take, so it is not made more often.
const POLL_INGEST: Duration = Duration::from_millis(50);
/// How long the connections, watches and one live update may take.
const STEP_WITHIN: Duration = Duration::from_secs(60);
const REF: &str = "refs/heads/main";
/// The viewer's name in the hub's config.
const VIEWER: &str = "bench";

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.clusters > 0 && args.repos > 0 && args.runs > 0 && args.updates > 0,
        "--clusters, --repos, --runs and --updates must each be at least 1"
    );
    ensure!(
        args.pushed <= args.repos,
        "--pushed {} is more than --repos {}",
        args.pushed,
        args.repos
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let plan = Plan::new(args.clusters, args.repos, args.pushed);
    let total = args.clusters * args.repos;

    let viewer = unguessable("viewer");
    let hub = Hub::start_with(HubOptions {
        agents: (0..args.clusters)
            .map(|i| AgentSpec::new(&cluster_name(i), &["**"]))
            .collect(),
        viewers: vec![(VIEWER.into(), viewer.clone())],
        ..HubOptions::default()
    })?;
    let pid = hub.pid().context("the hub is not running")?;
    let hub_bin = binary("tether-hub")?;
    println!(
        "bench-fleet: {} clusters × {} repos = {total} records, {} repos pushed; hub {} ({}), bench built {}",
        args.clusters,
        args.repos,
        plan.pushed_repos().count(),
        hub_bin.display(),
        build_of(&hub_bin),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    let rss_idle = rss_bytes(pid)?;

    // One agent websocket per cluster, each watching its repositories.
    let tally = Arc::new(Tally::default());
    let ws_url = format!("{}{CONNECT_PATH}", hub.ws_url());
    let agents: Vec<Agent> = runtime.block_on(async {
        let mut connecting = futures::stream::iter(0..args.clusters)
            .map(|i| {
                let url = ws_url.clone();
                let token_file = hub.token_file_of(&cluster_name(i));
                let tally = Arc::clone(&tally);
                async move { Agent::connect(&url, &token_file, tally).await }
            })
            .buffered(32);
        let mut agents = Vec::with_capacity(args.clusters);
        while let Some(agent) = connecting.next().await {
            agents.push(agent?);
        }
        Ok::<_, anyhow::Error>(agents)
    })?;
    let watch = AgentMessage::Watch {
        repos: (0..args.repos)
            .map(|j| plan.repo(j))
            .collect::<Result<_>>()?,
    }
    .to_json();
    for agent in &agents {
        agent.send(watch.clone())?;
    }
    wait_until("every agent's watch answered", STEP_WITHIN, || {
        tally.check()?;
        let n = tally.catchups.load(Ordering::SeqCst);
        ensure!(n >= args.clusters, "{n} of {} catch-ups", args.clusters);
        Ok(())
    })
    .with_context(|| hub.log_tail())?;
    let rss_connected = rss_bytes(pid)?;

    // The reports, made before the clock starts: this measures the hub, not the encoding.
    let now = tether_protocol::unix_ms();
    let reports: Vec<Vec<String>> = (0..args.clusters)
        .map(|i| plan.reports(i, now))
        .collect::<Result<_>>()?;
    let messages: usize = reports.iter().map(Vec::len).sum();
    let bytes: usize = reports.iter().flatten().map(String::len).sum();
    let sent_before = tally.sent.load(Ordering::SeqCst);
    let cpu_before = cpu_seconds(pid)?;
    let began = Instant::now();
    for (agent, messages) in agents.iter().zip(reports) {
        for text in messages {
            agent.send(text)?;
        }
    }
    wait_until_every(
        &format!("the hub holding all {total} records"),
        INGEST_WITHIN,
        POLL_INGEST,
        || {
            tally.check()?;
            let counts = counts(&hub, &viewer)?;
            ensure!(
                counts.total == total,
                "the hub holds {} records",
                counts.total
            );
            Ok(())
        },
    )
    .with_context(|| hub.log_tail())?;
    let ingested = began.elapsed();
    wait_until("every report counted as written", STEP_WITHIN, || {
        let sent = tally.sent.load(Ordering::SeqCst) - sent_before;
        ensure!(sent >= messages, "{sent} of {messages} written");
        Ok(())
    })?;
    let written = tally.last_sent()?.saturating_duration_since(began);
    let cpu_ingest = cpu_seconds(pid)? - cpu_before;
    let rss_records = rss_bytes(pid)?;
    // The hub writes changed agents to its store a moment later, then sets its fleet gauges.
    wait_settled(&hub, total, None)?;
    let stored = began.elapsed();
    let rss_stored = rss_bytes(pid)?;

    // The pushes: the view turns three clusters in four behind on each pushed repository.
    for j in plan.pushed_repos() {
        let (headers, body) = hub.github_push_webhook(
            &format!("https://{}.git", plan.repo(j)?.as_str()),
            REF,
            &plan.old_sha(j),
            &plan.new_sha(j),
        )?;
        let status = hub.post_webhook("github", &headers, body.as_bytes())?;
        ensure!(
            status == 202,
            "the webhook for repo {j} answered {status}:\n{}",
            hub.log_tail()
        );
    }
    let (behind, failing) = plan.expected();
    wait_until_every(
        "the view showing the pushes",
        INGEST_WITHIN,
        Duration::from_millis(50),
        || {
            let counts = counts(&hub, &viewer)?;
            ensure!(
                counts.behind == behind && counts.failing == failing,
                "behind {} (want {behind}), failing {} (want {failing})",
                counts.behind,
                counts.failing
            );
            Ok(())
        },
    )
    .with_context(|| hub.log_tail())?;

    // Measured once the hub's own work on the pushes is done, so that it is not counted below.
    wait_settled(&hub, total, Some((behind, failing)))?;

    // The HTTP answers, as a client with the viewer's bearer token sees them.
    let base = format!("http://127.0.0.1:{}", hub.port());
    // Cheapest first, so that the hub's RSS after each shows what that one added.
    let endpoints = [
        ("/v1/fleet?state=suspended", "JSON, counts only"),
        ("/v1/fleet?cluster=c0", "JSON, one cluster"),
        ("/fleet?part=main", "page part (each live update)"),
        ("/fleet", "the page"),
        ("/v1/fleet", "JSON, everything"),
    ];
    let mut http_rows = Vec::new();
    for (path, what) in endpoints {
        let mut row = HttpRow {
            path,
            what,
            first_byte: Vec::new(),
            whole: Vec::new(),
            bytes: 0,
            cpu_ms: 0.0,
            rss_after: 0,
        };
        let cpu = cpu_seconds(pid)?;
        for _ in 0..args.runs {
            let t = timed_get(&base, path, &viewer)?;
            row.first_byte.push(t.first_byte_ms);
            row.whole.push(t.total_ms);
            row.bytes = t.bytes;
        }
        row.cpu_ms = (cpu_seconds(pid)? - cpu) * 1000.0 / args.runs as f64;
        row.rss_after = rss_bytes(pid)?;
        http_rows.push(row);
    }

    // The page in a real browser, logged in with the viewer's token.
    let browser = Browser::start(&artifacts_for("bench-fleet"))?;
    browser.goto(&format!("{base}/fleet"))?;
    browser
        .wait_for("input[name=token]", STEP_WITHIN)?
        .send_keys(&viewer)?;
    browser.find("form.card button[type=submit]")?.click()?;
    browser
        .wait_for("#live[data-state=live]", STEP_WITHIN)
        .with_context(|| {
            format!(
                "after logging in (the session cookie is Secure: a browser that refuses it on plain \
                 http://127.0.0.1 stays on the login form); at {:?}",
                browser.current_url()
            )
        })?;
    let clusters_shown = browser.find_all("tr.cluster")?.len();
    ensure!(
        clusters_shown == args.clusters,
        "the page shows {clusters_shown} clusters, not {}",
        args.clusters
    );
    let mut loads: Vec<Vec<f64>> = vec![Vec::new(); NAV_STAGES.len()];
    for _ in 0..args.runs {
        browser.goto(&format!("{base}/fleet"))?;
        let timing = wait_until("the navigation's load event to end", STEP_WITHIN, || {
            let t = browser.execute(NAV_TIMING, &[])?;
            ensure!(!t.is_null(), "the load event has not ended");
            Ok(t)
        })?;
        for (k, (key, _)) in NAV_STAGES.iter().enumerate() {
            if let Some(ms) = timing[key].as_f64() {
                loads[k].push(ms);
            }
        }
    }
    let page_bytes = browser
        .execute("return document.documentElement.outerHTML.length;", &[])?
        .as_u64()
        .unwrap_or(0);
    let rows_shown = browser.find_all("tr.deployment")?.len();
    browser.screenshot("fleet")?;

    // Live updates: cluster c0 reports one record with a new reason; the page shows it.
    browser.wait_for("#live[data-state=live]", STEP_WITHIN)?;
    let target = plan.record(0, 0, now)?;
    let selector = format!(
        "tr.deployment[data-cluster=\"{}\"][data-name=\"{}/{}\"] .reason",
        cluster_name(0),
        target.namespace,
        target.name
    );
    browser
        .wait_for(&selector, STEP_WITHIN)
        .context("the record updated live is not among the rows the page shows")?;
    let mut live: Vec<Vec<f64>> = vec![Vec::new(); LIVE_STAGES.len()];
    for k in 1..=args.updates {
        let reason = format!("BenchUpdate{k}");
        browser.execute(OBSERVE, &[json!(selector), json!(reason)])?;
        let mut record = target.clone();
        record.ready = "False".into();
        record.reason = reason.clone();
        record.changed_at = Some(tether_protocol::unix_ms());
        let text = AgentMessage::Report {
            reset: false,
            operator_version: None,
            records: vec![record],
            removed: vec![],
        }
        .to_json();
        let sent = unix_ms_f64();
        agents[0].send(text)?;
        let seen = wait_until_every(
            &format!("the page showing {reason}"),
            STEP_WITHIN,
            Duration::from_millis(10),
            || {
                tally.check()?;
                let seen = browser.execute(SEEN, &[])?;
                ensure!(!seen.is_null(), "not shown yet");
                Ok(seen)
            },
        )
        .with_context(|| hub.log_tail())?;
        let at = |key: &str| seen[key].as_f64();
        let (Some(dom), Some(fetch), Some(first), Some(last)) = (
            at("dom"),
            at("fetchStart"),
            at("responseStart"),
            at("responseEnd"),
        ) else {
            bail!("update {k}: the page's timings are incomplete: {seen}");
        };
        for (samples, ms) in live.iter_mut().zip([
            fetch - sent,
            first - fetch,
            last - first,
            dom - last,
            dom - sent,
        ]) {
            samples.push(ms);
        }
    }
    let errors = browser.console_errors()?;
    let rss_end = rss_bytes(pid)?;
    let rss_peak = peak_rss_bytes(pid)?;

    println!(
        "\ningest: {messages} report messages ({:.1} MiB of JSON) over {} websockets",
        mib(bytes as u64),
        args.clusters
    );
    println!(
        "  {:<66} {:>10.0} ms",
        "every report written to its socket (this side)",
        ms(written)
    );
    println!(
        "  {:<66} {:>10.0} ms",
        format!(
            "the hub holds all {total} records (counts polled every {} ms)",
            POLL_INGEST.as_millis()
        ),
        ms(ingested)
    );
    println!(
        "  {:<66} {:>10.2} s",
        "hub CPU time meanwhile (user + system)", cpu_ingest
    );
    println!(
        "  {:<66} {:>10.0} ms",
        "... and written to the hub's store (its fleet gauges say all)",
        ms(stored)
    );
    println!("\nhub memory (RSS)");
    for (label, bytes) in [
        ("started, no agent connected".to_string(), rss_idle),
        (
            format!("{} agents connected and watching", args.clusters),
            rss_connected,
        ),
        (
            format!("holding {total} records, as they arrived"),
            rss_records,
        ),
        ("... once written to the store".to_string(), rss_stored),
        (
            "at the end (after the pages, the JSON and the updates)".to_string(),
            rss_end,
        ),
        ("peak (VmHWM)".to_string(), rss_peak),
    ] {
        println!("  {label:<66} {:>10.1} MiB", mib(bytes));
    }
    println!(
        "  {:<66} {:>10.0} B",
        "per record (holding − connected) / records",
        rss_records.saturating_sub(rss_connected) as f64 / total as f64
    );

    println!(
        "\nHTTP, curl with the viewer's bearer token ({} runs each; {behind} behind, {failing} failing)",
        args.runs
    );
    println!(
        "  {:<27} {:<29} {:>9} {:>8} {:>8} {:>9} {:>8} {:>8}",
        "GET", "", "1st B p50", "p50 ms", "max ms", "size KiB", "CPU ms", "RSS MiB"
    );
    for mut row in http_rows {
        sort(&mut row.first_byte);
        sort(&mut row.whole);
        println!(
            "  {:<27} {:<29} {:>9.1} {:>8.1} {:>8.1} {:>9.0} {:>8.1} {:>8.1}",
            row.path,
            row.what,
            percentile(&row.first_byte, 0.5),
            percentile(&row.whole, 0.5),
            percentile(&row.whole, 1.0),
            row.bytes as f64 / 1024.0,
            row.cpu_ms,
            mib(row.rss_after)
        );
    }
    println!(
        "  (CPU ms: the hub's user + system time per request; RSS MiB: the hub's once that row's runs are done)"
    );

    println!(
        "\nthe page in headless Chromium ({} loads of /fleet, logged in; {rows_shown} deployment rows, {} KiB of DOM)",
        args.runs,
        page_bytes / 1024
    );
    println!(
        "  {:<66} {:>9} {:>9}",
        "from navigation start to", "p50 ms", "max ms"
    );
    for ((_, label), samples) in NAV_STAGES.iter().zip(&mut loads) {
        print_stage(label, samples);
    }

    println!(
        "\nlive update: cluster {} reports one changed record ({} updates)",
        cluster_name(0),
        args.updates
    );
    println!("  {:<66} {:>9} {:>9}", "stage", "p50 ms", "max ms");
    for (label, samples) in LIVE_STAGES.iter().zip(&mut live) {
        print_stage(label, samples);
    }
    if !errors.is_empty() {
        println!("\nthe browser's console errors: {errors:#?}");
    }
    drop(browser);
    drop(agents);
    Ok(())
}

/// What the bench sends: cluster `i`'s record for repository `j`, and the pushes.
#[derive(Debug)]
struct Plan {
    clusters: usize,
    repos: usize,
    /// Every `push_every`-th repository gets a push (none when 0).
    push_every: usize,
}

impl Plan {
    fn new(clusters: usize, repos: usize, pushed: usize) -> Plan {
        Plan {
            clusters,
            repos,
            push_every: repos.checked_div(pushed).unwrap_or(0),
        }
    }

    fn repo(&self, j: usize) -> Result<tether_protocol::RepoId> {
        let url = format!("git.example/org/app-{j}");
        normalize(&url).with_context(|| format!("the repository id {url}"))
    }

    fn pushed(&self, j: usize) -> bool {
        self.push_every > 0 && j.is_multiple_of(self.push_every)
    }

    fn pushed_repos(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.repos).filter(|&j| self.pushed(j))
    }

    /// About one record in a hundred is failing.
    fn failing(&self, i: usize, j: usize) -> bool {
        (i * 7 + j * 13).is_multiple_of(100)
    }

    /// One cluster in four already runs a pushed repository's new commit.
    fn runs_new(&self, i: usize, j: usize) -> bool {
        self.pushed(j) && i.is_multiple_of(4)
    }

    fn old_sha(&self, j: usize) -> String {
        sha(j as u64, 1)
    }

    fn new_sha(&self, j: usize) -> String {
        sha(j as u64, 2)
    }

    /// How many records the view shows behind and failing once the pushes are in.
    fn expected(&self) -> (usize, usize) {
        let (mut behind, mut failing) = (0, 0);
        for i in 0..self.clusters {
            for j in 0..self.repos {
                if self.failing(i, j) {
                    failing += 1;
                } else if self.pushed(j) && !self.runs_new(i, j) {
                    behind += 1;
                }
            }
        }
        (behind, failing)
    }

    fn record(&self, i: usize, j: usize, now: u64) -> Result<FleetRecord> {
        let applied = if self.runs_new(i, j) {
            self.new_sha(j)
        } else {
            self.old_sha(j)
        };
        let (ready, reason, message, attempted) = if self.failing(i, j) {
            (
                "False",
                "ApplyFailed",
                format!(
                    "Deployment team-{}/app-{j} dry-run failed: spec.template.spec.containers[0].image: Required value",
                    j % 20
                ),
                sha((i * 1000 + j) as u64, 3),
            )
        } else {
            (
                "True",
                "Succeeded",
                format!(
                    "Applied revision main@sha1:{}: {} objects applied, 0 pruned, in 1.{} s",
                    &applied[..12],
                    20 + j % 40,
                    (i + j) % 10
                ),
                applied.clone(),
            )
        };
        Ok(FleetRecord {
            namespace: format!("team-{}", j % 20),
            name: format!("app-{j}"),
            repo: self.repo(j)?,
            git_ref: REF.into(),
            applied: Some(applied),
            attempted: Some(attempted),
            ready: ready.into(),
            reason: reason.into(),
            message,
            changed_at: Some(now.saturating_sub(((i * 7919 + j * 104_729) % 86_400_000) as u64)),
            push_latency_ms: Some(400 + ((i * 31 + j * 17) % 4000) as u64),
        })
    }

    /// Cluster `i`'s full set, as an operator sends it after connecting: a reset, then the rest.
    fn reports(&self, i: usize, now: u64) -> Result<Vec<String>> {
        let records: Vec<FleetRecord> = (0..self.repos)
            .map(|j| self.record(i, j, now))
            .collect::<Result<_>>()?;
        Ok(records
            .chunks(MAX_RECORDS_PER_REPORT)
            .enumerate()
            .map(|(k, chunk)| {
                AgentMessage::Report {
                    reset: k == 0,
                    operator_version: (k == 0).then(|| "0.1.0-bench".to_string()),
                    records: chunk.to_vec(),
                    removed: vec![],
                }
                .to_json()
            })
            .collect())
    }
}

/// A commit id made of `a` and `b`: 40 hex digits.
fn sha(a: u64, b: u64) -> String {
    let mix = |x: u64| {
        let x = (x ^ (x >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        let x = (x ^ (x >> 33)).wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    };
    let h1 = mix(a.wrapping_mul(31).wrapping_add(b));
    let h2 = mix(h1 ^ b.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let h3 = mix(h2.wrapping_add(a));
    format!("{h1:016x}{h2:016x}{:08x}", h3 >> 32)
}

fn cluster_name(i: usize) -> String {
    format!("c{i}")
}

/// What the agents' connections saw, shared with their tasks.
#[derive(Debug, Default)]
struct Tally {
    /// Messages written to the sockets.
    sent: AtomicUsize,
    /// When the last of them was.
    last_sent: Mutex<Option<Instant>>,
    catchups: AtomicUsize,
    /// Errors from the hub and connections that ended: each fails the run.
    problems: Mutex<Vec<String>>,
}

impl Tally {
    fn problem(&self, text: String) {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(text);
    }

    fn sent_one(&self) {
        *self.last_sent.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        self.sent.fetch_add(1, Ordering::SeqCst);
    }

    fn last_sent(&self) -> Result<Instant> {
        self.last_sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .context("no message was written")
    }

    /// Fails once any agent heard an error from the hub or lost its connection.
    fn check(&self) -> Result<()> {
        let problems = self.problems.lock().unwrap_or_else(|e| e.into_inner());
        if !problems.is_empty() {
            return Err(tether_e2e::wait::fatal(anyhow::anyhow!(
                "the agents' connections: {problems:#?}"
            )));
        }
        Ok(())
    }
}

/// One cluster's agent websocket, served by a task of its own, which answers the hub's pings and
/// writes what [`Agent::send`] queues.
#[derive(Debug)]
struct Agent {
    name: String,
    out: mpsc::UnboundedSender<String>,
}

impl Agent {
    async fn connect(url: &str, token_file: &std::path::Path, tally: Arc<Tally>) -> Result<Agent> {
        let token = std::fs::read_to_string(token_file)
            .with_context(|| format!("reading {}", token_file.display()))?;
        let name = token_file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {}", token.trim()).parse()?);
        request
            .headers_mut()
            .insert("sec-websocket-protocol", SUBPROTOCOL.parse()?);
        let (mut ws, response) =
            tokio::time::timeout(STEP_WITHIN, tokio_tungstenite::connect_async(request))
                .await
                .with_context(|| format!("agent {name}: connecting to {url} timed out"))?
                .with_context(|| format!("agent {name}: connecting to {url}"))?;
        let protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        ensure!(
            protocol == Some(SUBPROTOCOL),
            "agent {name}: the hub chose the subprotocol {protocol:?}, not {SUBPROTOCOL}"
        );
        let (out, mut queue) = mpsc::unbounded_channel::<String>();
        let who = name.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    text = queue.recv() => match text {
                        Some(text) => {
                            if let Err(e) = ws.send(Message::Text(text.into())).await {
                                tally.problem(format!("{who}: sending: {e}"));
                                return;
                            }
                            tally.sent_one();
                        }
                        None => {
                            let _ = ws.close(None).await;
                            return;
                        }
                    },
                    frame = ws.next() => match frame {
                        Some(Ok(Message::Text(text))) => match HubMessage::from_json(text.as_str()) {
                            Ok(HubMessage::Catchup { .. }) => {
                                tally.catchups.fetch_add(1, Ordering::SeqCst);
                            }
                            Ok(HubMessage::Push(_)) => {}
                            Ok(HubMessage::Error { message }) => {
                                tally.problem(format!("{who}: the hub said: {message}"));
                            }
                            Err(e) => tally.problem(format!("{who}: unreadable message: {e}")),
                        },
                        Some(Ok(Message::Close(frame))) => {
                            tally.problem(format!("{who}: the hub closed the connection: {frame:?}"));
                            return;
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => {
                            tally.problem(format!("{who}: connection error: {e}"));
                            return;
                        }
                        None => {
                            tally.problem(format!("{who}: the connection ended"));
                            return;
                        }
                    },
                }
            }
        });
        Ok(Agent { name, out })
    }

    fn send(&self, text: String) -> Result<()> {
        self.out
            .send(text)
            .map_err(|_| anyhow::anyhow!("agent {}: its connection's task has ended", self.name))
    }
}

/// Waits until the hub's fleet gauges (`tether_hub_fleet_repos`, set after each write of the
/// fleet to its store) count `total` records, and `behind` and `failing` as given.
fn wait_settled(hub: &Hub, total: usize, states: Option<(usize, usize)>) -> Result<()> {
    wait_until_every(
        "the hub's fleet gauges to count every record",
        INGEST_WITHIN,
        Duration::from_millis(100),
        || {
            let text = hub.metrics()?;
            let gauge = |state: &str| {
                let name = format!("tether_hub_fleet_repos{{state=\"{state}\"}} ");
                text.lines()
                    .find_map(|l| l.strip_prefix(&name))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0) as usize
            };
            let all: usize = ["current", "behind", "failing", "progressing", "suspended"]
                .into_iter()
                .map(gauge)
                .sum();
            ensure!(all == total, "the gauges count {all} records");
            if let Some((behind, failing)) = states {
                let (b, f) = (gauge("behind"), gauge("failing"));
                ensure!(
                    b == behind && f == failing,
                    "the gauges count {b} behind, {f} failing"
                );
            }
            Ok(())
        },
    )
    .with_context(|| hub.log_tail())
}

/// The record counts of the whole fleet, from `GET /v1/fleet?state=suspended`: no record of the
/// bench is suspended, so the answer is every cluster's counts and no deployment.
fn counts(hub: &Hub, viewer: &str) -> Result<Counts> {
    let (status, body) = hub.get("/v1/fleet?state=suspended", Some(viewer))?;
    ensure!(
        status == 200,
        "GET /v1/fleet?state=suspended answered {status}: {body}"
    );
    let json: Value = serde_json::from_str(&body).context("the fleet JSON")?;
    let mut counts = Counts::default();
    for c in json["clusters"].as_array().context("no clusters array")? {
        let n = |key: &str| c["repos"][key].as_u64().unwrap_or(0) as usize;
        counts.total += n("total");
        counts.behind += n("behind");
        counts.failing += n("failing");
    }
    Ok(counts)
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    behind: usize,
    failing: usize,
}

/// One endpoint's runs.
#[derive(Debug)]
struct HttpRow {
    path: &'static str,
    what: &'static str,
    first_byte: Vec<f64>,
    whole: Vec<f64>,
    bytes: u64,
    /// The hub's CPU time per request.
    cpu_ms: f64,
    /// The hub's RSS after the runs.
    rss_after: u64,
}

#[derive(Debug)]
struct Timed {
    first_byte_ms: f64,
    total_ms: f64,
    bytes: u64,
}

/// `GET base+path` with the viewer's bearer token, timed by curl.
fn timed_get(base: &str, path: &str, viewer: &str) -> Result<Timed> {
    let auth = format!("Authorization: Bearer {viewer}");
    let url = format!("{base}{path}");
    let out = tool::run(
        "curl",
        &[
            "-sS",
            "-o",
            "/dev/null",
            "-m",
            "120",
            "-H",
            &auth,
            "-w",
            "%{http_code} %{time_starttransfer} %{time_total} %{size_download}",
            &url,
        ],
        None,
    )
    .with_context(|| format!("GET {path}"))?;
    let fields: Vec<&str> = out.split_whitespace().collect();
    let [code, first, total, size] = fields[..] else {
        bail!("GET {path}: curl printed {out:?}, not a status, two times and a size");
    };
    ensure!(code == "200", "GET {path} answered {code}");
    Ok(Timed {
        first_byte_ms: first.parse::<f64>()? * 1000.0,
        total_ms: total.parse::<f64>()? * 1000.0,
        bytes: size.parse()?,
    })
}

/// The navigation's timings, relative to its start, once its `load` event has ended; else null.
const NAV_TIMING: &str = "
const n = performance.getEntriesByType('navigation')[0];
if (!n || n.loadEventEnd === 0) { return null; }
const paint = performance.getEntriesByName('first-contentful-paint')[0];
return {
  responseStart: n.responseStart, responseEnd: n.responseEnd, domInteractive: n.domInteractive,
  domContentLoaded: n.domContentLoadedEventEnd, firstPaint: paint ? paint.startTime : null,
  load: n.loadEventEnd,
};";

const NAV_STAGES: [(&str, &str); 6] = [
    ("responseStart", "first byte of the page (server rendering)"),
    ("responseEnd", "last byte of the page"),
    ("domInteractive", "DOM parsed"),
    (
        "domContentLoaded",
        "DOMContentLoaded handlers done (script run)",
    ),
    ("firstPaint", "first contentful paint"),
    ("load", "load event ended"),
];

/// Watches the page's changing part for `arguments[0]` to read `arguments[1]`; records when (ms
/// since the epoch) and the timings of the fetch that brought it.
const OBSERVE: &str = "
const [selector, want] = arguments;
window.benchSeen = null;
performance.clearResourceTimings();
if (window.benchObserver) { window.benchObserver.disconnect(); }
const main = document.getElementById('fleet');
const look = () => {
  const el = document.querySelector(selector);
  if (window.benchSeen === null && el && el.textContent === want) {
    const at = performance.timeOrigin + performance.now();
    const fetches = performance.getEntriesByType('resource').filter(e => e.name.includes('part=main'));
    const f = fetches[fetches.length - 1];
    const abs = t => f ? performance.timeOrigin + t : null;
    window.benchSeen = { dom: at, fetchStart: abs(f && f.startTime), responseStart: abs(f && f.responseStart),
                         responseEnd: abs(f && f.responseEnd), fetches: fetches.length };
  }
};
window.benchObserver = new MutationObserver(look);
window.benchObserver.observe(main, { childList: true, subtree: true, characterData: true });
return true;";

/// What [`OBSERVE`] recorded, or null.
const SEEN: &str = "return window.benchSeen;";

const LIVE_STAGES: [&str; 5] = [
    "report sent → page fetches its part (hub applies, coalesces, event)",
    "fetch → first byte (hub renders ?part=main)",
    "first byte → last byte",
    "last byte → DOM shows it (innerHTML, script)",
    "end to end: report sent → DOM shows it",
];

fn unix_ms_f64() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

/// `VmHWM` of `/proc/<pid>/status`: the most resident memory the process has had.
fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading the status of process {pid}"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .context("no VmHWM in the process status")?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()?;
    Ok(kib * 1024)
}

/// Which profile a binary was built with, from its folder.
fn build_of(path: &std::path::Path) -> &'static str {
    let folders: Vec<String> = path
        .ancestors()
        .filter_map(|p| p.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .collect();
    if folders.iter().any(|f| f == "release") {
        "release"
    } else if folders.iter().any(|f| f == "debug") {
        "debug"
    } else {
        "unknown build"
    }
}

fn print_stage(label: &str, samples: &mut [f64]) {
    if samples.is_empty() {
        println!("  {label:<66} {:>9} {:>9}", "—", "—");
        return;
    }
    sort(samples);
    println!(
        "  {label:<66} {:>9.1} {:>9.1}",
        percentile(samples, 0.5),
        percentile(samples, 1.0)
    );
}

fn sort(samples: &mut [f64]) {
    samples.sort_by(f64::total_cmp);
}

/// The `p` quantile of sorted `samples` (nearest rank).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
