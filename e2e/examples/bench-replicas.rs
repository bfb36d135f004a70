//! `make bench` (replicas part): the hub's fan-out with many agents, on one replica and on several
//! sharing Redis. This program is the agents: `--agents` websockets (`/v1/connect`, `tether.v1`,
//! one token each, all watching one repository), each reconnecting as the operator does (at once,
//! within a random quarter second, on close code 1001; after a backoff otherwise) and recording
//! when it heard which push, as a notice or in a catch-up. They dial HAProxy, which spreads them
//! round robin over the replicas; signed GitHub push webhooks come from this program too.
//!
//! Phases, each measured on the same agents:
//! 1. one replica without Redis holding every agent: the fan-out of one webhook (posted → notice
//!    received, per agent), `--runs` times;
//! 2. `--replicas` replicas sharing one Redis: the same fan-out for a webhook posted to replica 0
//!    (split between the agents on that replica and those it reaches through Redis); then
//!    webhooks for distinct commits posted to the replicas in turn by `--posters` concurrent
//!    posters for `--sustain-secs` seconds, as fast as the replicas answer: accepted per second,
//!    fully delivered per second, and the fan-out under that load; the RSS of each replica;
//! 3. a rolling restart under load: one webhook every `--every-ms` through HAProxy (redelivered
//!    when refused, as a forge does), while each replica in turn is stopped with SIGTERM, started
//!    again and let back into HAProxy. Then every agent is checked for the last push.
//!
//! Prints a table and writes it as Markdown under `bench-results/`. Asserts nothing but that each
//! step finished within its deadline.
//!
//! Usage: `bench-replicas [--agents 10000] [--replicas 3] [--runs 5] [--sustain-secs 20]
//! [--posters 4] [--every-ms 200]`. The hub comes from `TETHER_BIN_DIR` (release builds in
//! `make bench`). Every agent holds a socket here, and HAProxy two per agent: this program raises
//! its open-files limit to the hard limit (its children inherit it) and runs as many HAProxy
//! processes as that limit needs.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use base64::Engine as _;
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioIo;
use tether_e2e::haproxy::{Haproxy, HaproxyOptions};
use tether_e2e::http::metric_value;
use tether_e2e::hub::{AgentSpec, Forge, Hub, HubOptions, hmac_sha256_hex};
use tether_e2e::process::{cpu_seconds, rss_bytes};
use tether_e2e::redis::RedisServer;
use tether_e2e::wait::{wait_until, wait_until_every};
use tether_e2e::workspace::binary;
use tether_protocol::{AgentMessage, Backoff, CONNECT_PATH, HubMessage, SUBPROTOCOL, normalize};
use tokio::net::TcpStream;
use tokio::runtime::Runtime;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

#[derive(Debug, Parser)]
#[command(
    about = "Hub replicas under load: fan-out, sustained webhooks, memory, a rolling restart"
)]
struct Args {
    /// Agents, each with its own token and websocket.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Hub replicas sharing Redis in phases 2 and 3.
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Single webhooks fanned out on a quiet hub, per setup.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// How long webhooks are posted as fast as the replicas answer.
    #[arg(long, default_value_t = 20)]
    sustain_secs: u64,
    /// Concurrent posters in the sustained phase.
    #[arg(long, default_value_t = 4)]
    posters: usize,
    /// The pause between two webhooks during the rolling restart.
    #[arg(long, default_value_t = 200)]
    every_ms: u64,
    /// Agents connecting at once when they first connect (reconnects are not limited).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// How long the agents get, once the rolling restart is over, to hear the last push.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
}

/// The repository every agent watches and every webhook is for.
const REPO: &str = "git.example/org/bench";
const REF: &str = "refs/heads/main";
/// How long every agent may take to connect and get its catch-up.
const CONNECT_WITHIN: Duration = Duration::from_secs(300);
/// How long one webhook may take to reach every agent on a quiet hub.
const FANOUT_WITHIN: Duration = Duration::from_secs(60);
/// How long the agents may take to hear the last push after the sustained phase.
const DRAIN_WITHIN: Duration = Duration::from_secs(180);
/// How long one webhook POST may take.
const POST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a refused webhook is redelivered before it counts as never accepted.
const REDELIVER_FOR: Duration = Duration::from_secs(20);
/// The pause between two deliveries of a refused webhook.
const REDELIVER_EVERY: Duration = Duration::from_millis(200);
/// How long a replica may take to stop, start, and be let back into HAProxy.
const STEP_WITHIN: Duration = Duration::from_secs(60);
/// How long the agents of a stopped replica may take to be back.
const BACK_WITHIN: Duration = Duration::from_secs(60);
/// How long one websocket dial (TCP, upgrade) may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(30);
/// Webhooks accepted under load before, and after, the restarts.
const STEADY_WEBHOOKS: usize = 10;
/// Open files each process keeps beside the agents' sockets (logs, the store, Redis, checks).
const SPARE_FILES: u64 = 1024;

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.agents > 0 && args.replicas > 0 && args.runs > 0 && args.posters > 0,
        "--agents, --replicas, --runs and --posters must each be at least 1"
    );
    ensure!(
        args.sustain_secs > 0 && args.every_ms > 0 && args.connect_concurrency > 0,
        "--sustain-secs, --every-ms and --connect-concurrency must each be at least 1"
    );
    let plan = Plan::new(args.agents)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let hub_bin = binary("tether-hub")?;
    let specs: Vec<AgentSpec> = (0..args.agents)
        .map(|i| AgentSpec::new(&agent_name(i), &["**"]))
        .collect();
    let watch = AgentMessage::Watch {
        repos: vec![normalize(REPO).with_context(|| format!("the repository {REPO}"))?],
    }
    .to_json();
    let setup = Setup {
        runtime,
        specs,
        watch,
        plan,
        next_seq: Arc::new(AtomicU32::new(1)),
    };
    eprintln!(
        "bench-replicas: {} agents, {} replicas; hub {} ({}), bench built {}; open files {} (hard {}); {} HAProxy process(es)",
        args.agents,
        args.replicas,
        hub_bin.display(),
        build_of(&hub_bin),
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        setup.plan.files,
        setup.plan.files_hard,
        setup.plan.balancers
    );

    let single = one_replica(&setup, &args)?;
    let several = replicas(&setup, &args)?;
    let report = Report::build(&args, &setup, &hub_bin, &single, &several)?;
    println!("{}", report.text());
    let written = report.write()?;
    eprintln!("bench-replicas: written to {}", written.display());
    Ok(())
}

/// What every phase shares.
#[derive(Debug)]
struct Setup {
    runtime: Runtime,
    specs: Vec<AgentSpec>,
    /// The watch message every agent sends.
    watch: String,
    plan: Plan,
    /// The next push's number; its sha is the number in hex ([`sha`]).
    next_seq: Arc<AtomicU32>,
}

impl Setup {
    fn seq(&self) -> u32 {
        self.next_seq.fetch_add(1, Ordering::SeqCst)
    }
}

/// Open-file limits and how many HAProxy processes they call for.
#[derive(Debug)]
struct Plan {
    files: u64,
    files_hard: u64,
    balancers: usize,
    /// `maxconn` of each HAProxy process.
    maxconn: usize,
}

impl Plan {
    /// Raises this process's open-files limit to its hard limit (the hubs, HAProxy and Redis
    /// started afterwards inherit it) and checks that it holds `agents` sockets.
    fn new(agents: usize) -> Result<Plan> {
        let me = std::process::id();
        let (soft, hard) = open_files(me)?;
        if soft < hard {
            let limit = format!("--nofile={hard}:{hard}");
            tether_e2e::tool::run("prlimit", &["--pid", &me.to_string(), &limit], None)
                .with_context(|| format!("raising the open-files limit from {soft} to {hard}"))?;
        }
        let (files, files_hard) = open_files(me)?;
        let need = agents as u64 + SPARE_FILES;
        ensure!(
            files >= need,
            "the open-files limit is {files} (hard {files_hard}): {agents} agents need {need} here and \
             in the hub that holds them all; raise the hard limit (ulimit -Hn, as root) or pass fewer --agents"
        );
        // HAProxy holds two sockets per agent: one to the agent, one to its replica.
        let per_balancer = ((files - SPARE_FILES) / 2).max(1) as usize;
        let balancers = agents.div_ceil(per_balancer);
        Ok(Plan {
            files,
            files_hard,
            balancers,
            maxconn: agents.div_ceil(balancers) + 256,
        })
    }
}

/// The soft and hard open-files limits of process `pid`, from `/proc/<pid>/limits`.
fn open_files(pid: u32) -> Result<(u64, u64)> {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = text
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .with_context(|| format!("no \"Max open files\" line in {path}"))?;
    let fields: Vec<&str> = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .collect();
    let parse = |v: Option<&&str>| -> Result<u64> {
        match v {
            Some(&"unlimited") => Ok(u64::MAX),
            Some(v) => v
                .parse()
                .with_context(|| format!("{path}: open files {v:?}")),
            None => bail!("{path}: the open-files line is short: {line:?}"),
        }
    };
    Ok((parse(fields.first())?, parse(fields.get(1))?))
}

fn agent_name(i: usize) -> String {
    format!("a{i}")
}

/// Push number `seq` as a commit sha: 40 hex digits.
fn sha(seq: u32) -> String {
    format!("{seq:040x}")
}

/// The push number of a sha made by [`sha`].
fn seq_of(sha: &str) -> Option<u32> {
    if sha.len() != 40 || !sha[..32].bytes().all(|b| b == b'0') {
        return None;
    }
    u32::from_str_radix(&sha[32..], 16).ok()
}

/// Microseconds on a pool's clock.
fn micros_since(epoch: Instant) -> u32 {
    u32::try_from(epoch.elapsed().as_micros()).unwrap_or(u32::MAX)
}

// ---------------------------------------------------------------------------------------------
// The agents.

/// Marks an event heard in a catch-up rather than as a notice.
const CATCHUP: u32 = 1 << 31;

/// One thing an agent heard: a push number (with [`CATCHUP`] when it came in a catch-up) and
/// when, in microseconds on the pool's clock.
#[derive(Debug, Clone, Copy)]
struct Event {
    tag: u32,
    at: u32,
}

/// A live connection lost until the next catch-up, in microseconds on the pool's clock: when it
/// was lost, when the dial that ended it started, when that dial's upgrade was answered (through
/// HAProxy, by a replica), and when its catch-up arrived.
#[derive(Debug, Clone, Copy)]
struct Outage {
    lost: u32,
    dialled: u32,
    upgraded: u32,
    caught_up: u32,
}

/// What one agent heard and went through.
#[derive(Debug, Default)]
struct Heard {
    /// In arrival order.
    events: Vec<Event>,
    /// The newest push heard either way.
    newest: u32,
    /// Connected, its catch-up received.
    live: bool,
    /// When the connection that was live last ended, until the next catch-up.
    lost_at: Option<u32>,
    /// When the current connection's dial started, and when its upgrade was answered.
    dialling: Option<(u32, u32)>,
    /// Each time a live connection was lost until the next catch-up.
    outages: Vec<Outage>,
    /// Connections that got their catch-up.
    sessions: u32,
    /// Connections the hub ended with 1001 (going away).
    going_away: u32,
    /// Dials that failed (refused, timed out, answered other than 101).
    failed_dials: u32,
    /// Errors from the hub and unreadable messages, the first few kept.
    problems: Vec<String>,
    problem_count: u32,
}

impl Heard {
    fn heard(&mut self, seq: u32, at: u32, catchup: bool) {
        self.events.push(Event {
            tag: if catchup { seq | CATCHUP } else { seq },
            at,
        });
        self.newest = self.newest.max(seq);
    }

    fn caught_up(&mut self, at: u32) {
        self.live = true;
        self.sessions += 1;
        if let Some(lost) = self.lost_at.take() {
            let (dialled, upgraded) = self.dialling.unwrap_or((at, at));
            self.outages.push(Outage {
                lost,
                dialled,
                upgraded,
                caught_up: at,
            });
        }
    }

    fn ended(&mut self, at: u32) {
        if self.live {
            self.live = false;
            self.lost_at = Some(at);
        }
    }

    fn problem(&mut self, text: String) {
        self.problem_count += 1;
        if self.problems.len() < 3 {
            self.problems.push(text);
        }
    }
}

/// Every agent's websocket task and what each heard.
#[derive(Debug)]
struct Pool {
    epoch: Instant,
    heard: Arc<Vec<Mutex<Heard>>>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn lock(m: &Mutex<Heard>) -> MutexGuard<'_, Heard> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    /// Starts every agent, agent `i` dialling `ports[i % ports.len()]`; at most `concurrency` of
    /// them connect at once until each has its first catch-up.
    fn start(setup: &Setup, ports: &[u16], concurrency: usize) -> Pool {
        let epoch = Instant::now();
        let heard: Arc<Vec<Mutex<Heard>>> = Arc::new(
            (0..setup.specs.len())
                .map(|_| Mutex::new(Heard::default()))
                .collect(),
        );
        let (stop, stopped) = watch::channel(false);
        let slots = Arc::new(Semaphore::new(concurrency));
        let watch = Arc::new(setup.watch.clone());
        let tasks = setup
            .specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let agent = AgentTask {
                    index: i,
                    url: format!("ws://127.0.0.1:{}{CONNECT_PATH}", ports[i % ports.len()]),
                    token: spec.token.clone(),
                    watch: Arc::clone(&watch),
                    heard: Arc::clone(&heard),
                    epoch,
                    stop: stopped.clone(),
                    slots: Arc::clone(&slots),
                };
                setup.runtime.spawn(agent.run())
            })
            .collect();
        Pool {
            epoch,
            heard,
            stop,
            tasks,
        }
    }

    fn now(&self) -> u32 {
        micros_since(self.epoch)
    }

    fn len(&self) -> usize {
        self.heard.len()
    }

    /// How many agents `f` holds for.
    fn count(&self, f: impl Fn(&Heard) -> bool) -> usize {
        self.heard.iter().filter(|h| f(&lock(h))).count()
    }

    fn sum(&self, f: impl Fn(&Heard) -> u64) -> u64 {
        self.heard.iter().map(|h| f(&lock(h))).sum()
    }

    /// Waits until every agent is connected with its catch-up; returns how long that took.
    fn wait_live(&self, what: &str, within: Duration) -> Result<Duration> {
        let began = Instant::now();
        wait_until_every(what, within, Duration::from_millis(100), || {
            let live = self.count(|h| h.live);
            ensure!(
                live == self.len(),
                "{live} of {} agents connected with their catch-up; {}",
                self.len(),
                self.problems()
            );
            Ok(())
        })?;
        Ok(began.elapsed())
    }

    /// Waits until every agent heard push `seq`, or a newer one, either way.
    fn wait_heard(&self, seq: u32, within: Duration) -> Result<()> {
        wait_until(&format!("every agent hearing push {seq}"), within, || {
            let behind = self.count(|h| h.newest < seq);
            ensure!(
                behind == 0,
                "{behind} of {} agents have not heard it; {}",
                self.len(),
                self.problems()
            );
            Ok(())
        })
    }

    /// A summary of what went wrong on the agents' connections.
    fn problems(&self) -> String {
        let mut count = 0;
        let mut first = Vec::new();
        for h in self.heard.iter() {
            let h = lock(h);
            count += h.problem_count;
            if first.len() < 3 {
                first.extend(h.problems.iter().take(3 - first.len()).cloned());
            }
        }
        format!(
            "{} failed dials; {count} problems{}",
            self.sum(|h| u64::from(h.failed_dials)),
            if first.is_empty() {
                String::new()
            } else {
                format!(", e.g. {first:?}")
            }
        )
    }

    /// Closes every agent's websocket and waits for its task to end.
    fn stop(self, runtime: &Runtime) -> Result<()> {
        let _ = self.stop.send(true);
        runtime.block_on(async {
            let all = futures::future::join_all(self.tasks);
            tokio::time::timeout(Duration::from_secs(60), all)
                .await
                .context("the agents did not close their websockets within 60 s")
        })?;
        Ok(())
    }
}

/// One agent's task: connect, watch, record, reconnect, until stopped.
#[derive(Debug)]
struct AgentTask {
    index: usize,
    url: String,
    token: String,
    watch: Arc<String>,
    heard: Arc<Vec<Mutex<Heard>>>,
    epoch: Instant,
    stop: watch::Receiver<bool>,
    /// Limits the first connections; a permit is held until the first catch-up.
    slots: Arc<Semaphore>,
}

/// Why a connection ended.
#[derive(Debug)]
enum End {
    Stopped,
    GoingAway,
    Lost,
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

impl AgentTask {
    fn heard(&self) -> MutexGuard<'_, Heard> {
        lock(&self.heard[self.index])
    }

    async fn run(mut self) {
        let mut first = tokio::select! {
            permit = Arc::clone(&self.slots).acquire_owned() => permit.ok(),
            _ = self.stop.changed() => return,
        };
        let mut backoff = Backoff::default();
        let mut random = SplitMix(self.index as u64 + 1);
        loop {
            if *self.stop.borrow() {
                return;
            }
            let dialling = micros_since(self.epoch);
            let dialled = tokio::select! {
                dialled = dial(&self.url, &self.token) => dialled,
                _ = self.stop.changed() => return,
            };
            let end = match dialled {
                Ok(ws) => {
                    self.heard().dialling = Some((dialling, micros_since(self.epoch)));
                    backoff.connected(Instant::now());
                    let end = self.session(ws, &mut first).await;
                    backoff.disconnected(Instant::now());
                    let at = micros_since(self.epoch);
                    self.heard().ended(at);
                    end
                }
                Err(e) => {
                    let mut h = self.heard();
                    h.failed_dials += 1;
                    if h.failed_dials <= 1 {
                        h.problem(format!("{}: {e:#}", agent_name(self.index)));
                    }
                    End::Lost
                }
            };
            // The first connection's slot goes to the next agent, whatever happened.
            first = None;
            let delay = match end {
                End::Stopped => return,
                End::GoingAway => Duration::from_millis(random.below(250)),
                End::Lost => backoff.next_delay(random.unit()),
            };
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = self.stop.changed() => return,
            }
        }
    }

    async fn session(&mut self, mut ws: Socket, first: &mut Option<OwnedSemaphorePermit>) -> End {
        if ws
            .send(Message::Text(self.watch.as_str().into()))
            .await
            .is_err()
        {
            return End::Lost;
        }
        loop {
            let frame = tokio::select! {
                frame = ws.next() => frame,
                _ = self.stop.changed() => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                    return End::Stopped;
                }
            };
            match frame {
                Some(Ok(Message::Text(text))) => {
                    let at = micros_since(self.epoch);
                    self.on_text(text.as_str(), at, first);
                }
                Some(Ok(Message::Close(frame))) => {
                    // Let tungstenite send its answer to the close before the socket goes.
                    let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                    let away = frame.is_some_and(|f| f.code == CloseCode::Away);
                    if away {
                        self.heard().going_away += 1;
                        return End::GoingAway;
                    }
                    return End::Lost;
                }
                // Pings are answered by tungstenite on the next read.
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return End::Lost,
            }
        }
    }

    fn on_text(&self, text: &str, at: u32, first: &mut Option<OwnedSemaphorePermit>) {
        let mut h = self.heard();
        match HubMessage::from_json(text) {
            Ok(HubMessage::Push(notice)) => match seq_of(&notice.sha) {
                Some(seq) => h.heard(seq, at, false),
                None => h.problem(format!("a notice with the sha {:?}", notice.sha)),
            },
            Ok(HubMessage::Catchup { latest }) => {
                for state in latest {
                    match seq_of(&state.sha) {
                        Some(seq) => h.heard(seq, at, true),
                        None => h.problem(format!("a catch-up with the sha {:?}", state.sha)),
                    }
                }
                h.caught_up(at);
                first.take();
            }
            Ok(HubMessage::Error { message }) => h.problem(format!("the hub said: {message}")),
            Err(e) => h.problem(format!("an unreadable message: {e}")),
        }
    }
}

/// Opens an agent websocket to `url` with `token`, offering `tether.v1`.
async fn dial(url: &str, token: &str) -> Result<Socket> {
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    request
        .headers_mut()
        .insert("sec-websocket-protocol", SUBPROTOCOL.parse()?);
    // A small read buffer: the library's default of 128 KiB per socket would be 1.3 GB here.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, response) = tokio::time::timeout(
        DIAL_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .with_context(|| format!("connecting to {url} timed out"))?
    .with_context(|| format!("connecting to {url}"))?;
    let protocol = response
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok());
    ensure!(
        protocol == Some(SUBPROTOCOL),
        "the hub chose the subprotocol {protocol:?}, not {SUBPROTOCOL}"
    );
    Ok(ws)
}

/// A small deterministic random source for the reconnect jitter.
#[derive(Debug)]
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// Webhooks.

/// Signs GitHub push webhooks with the hub's GitHub secret, in this process (a forge's own
/// signing; `openssl` per webhook would cost a process each).
#[derive(Clone)]
struct Signer {
    secret: String,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

impl Signer {
    /// The signer for `hub`'s secret, checked once against `openssl`'s HMAC.
    fn of(hub: &Hub) -> Result<Signer> {
        let secret = hub.secret(Forge::Github)?;
        let signer = Signer {
            key: jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
                .context("the GitHub webhook secret as an HMAC key")?,
            secret,
        };
        let probe = "{\"probe\":true}";
        let ours = signer.hmac_hex(probe)?;
        let theirs = hmac_sha256_hex(&signer.secret, probe)?;
        ensure!(
            ours == theirs,
            "this program's HMAC-SHA256 ({ours}) differs from openssl's ({theirs})"
        );
        Ok(signer)
    }

    fn hmac_hex(&self, body: &str) -> Result<String> {
        let b64 =
            jsonwebtoken::crypto::sign(body.as_bytes(), &self.key, jsonwebtoken::Algorithm::HS256)?;
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(b64)
            .context("decoding the HMAC")?;
        Ok(raw.iter().map(|b| format!("{b:02x}")).collect())
    }

    /// The webhook for push `seq`: the ref moving from push `seq - 1` to `seq`.
    fn webhook(&self, seq: u32) -> Result<Webhook> {
        let url = format!("https://{REPO}.git");
        let body = serde_json::json!({
            "ref": REF,
            "before": sha(seq.saturating_sub(1)),
            "after": sha(seq),
            "repository": {"name": "bench", "clone_url": url, "ssh_url": url},
        })
        .to_string();
        let signature = self.hmac_hex(&body)?;
        Ok(Webhook {
            seq,
            delivery: format!("bench-{}-{seq}", std::process::id()),
            signature,
            body: Bytes::from(body),
        })
    }
}

#[derive(Debug, Clone)]
struct Webhook {
    seq: u32,
    delivery: String,
    signature: String,
    body: Bytes,
}

/// HTTP/1.1 to one port, the connection kept between posts when `keep_alive`.
#[derive(Debug)]
struct Client {
    port: u16,
    keep_alive: bool,
    sender: Option<hyper::client::conn::http1::SendRequest<Full<Bytes>>>,
}

impl Client {
    fn new(port: u16, keep_alive: bool) -> Client {
        Client {
            port,
            keep_alive,
            sender: None,
        }
    }

    /// Posts `hook`: the status and the answer; status 0 when no answer came.
    async fn post(&mut self, hook: &Webhook) -> (u16, String) {
        match tokio::time::timeout(POST_TIMEOUT, self.try_post(hook)).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.sender = None;
                (0, format!("{e:#}"))
            }
            Err(_) => {
                self.sender = None;
                (0, format!("no answer within {POST_TIMEOUT:?}"))
            }
        }
    }

    async fn try_post(&mut self, hook: &Webhook) -> Result<(u16, String)> {
        let mut sender = match self.sender.take() {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = TcpStream::connect(("127.0.0.1", self.port))
                    .await
                    .with_context(|| format!("connecting to 127.0.0.1:{}", self.port))?;
                stream.set_nodelay(true)?;
                let (sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                sender
            }
        };
        sender.ready().await?;
        let request = hyper::Request::post("/v1/webhooks/github")
            .header("host", format!("127.0.0.1:{}", self.port))
            .header("content-type", "application/json")
            .header(
                "connection",
                if self.keep_alive {
                    "keep-alive"
                } else {
                    "close"
                },
            )
            .header("x-github-event", "push")
            .header("x-github-delivery", &hook.delivery)
            .header("x-hub-signature-256", format!("sha256={}", hook.signature))
            .body(Full::new(hook.body.clone()))?;
        let response = sender.send_request(request).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        if self.keep_alive {
            self.sender = Some(sender);
        }
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// One webhook as posted.
#[derive(Debug, Clone)]
struct Posted {
    seq: u32,
    /// When the attempt the hub accepted started, in microseconds on the pool's clock.
    at: u32,
    /// When the first attempt started.
    first_at: u32,
    /// How long the accepted attempt took to be answered.
    answered_us: u32,
    attempts: u32,
    /// The statuses of the attempts refused.
    refused: Vec<u16>,
    accepted: bool,
}

/// Posts `hook` once; accepted on 202.
async fn post_once(client: &mut Client, hook: &Webhook, epoch: Instant) -> (Posted, String) {
    let at = micros_since(epoch);
    let (status, answer) = client.post(hook).await;
    let accepted = status == 202;
    (
        Posted {
            seq: hook.seq,
            at,
            first_at: at,
            answered_us: micros_since(epoch).saturating_sub(at),
            attempts: 1,
            refused: if accepted { Vec::new() } else { vec![status] },
            accepted,
        },
        answer,
    )
}

/// Posts `hook` through `port` until a replica takes it (202, or 200 `duplicate` when an earlier
/// attempt was taken but its answer lost), for at most [`REDELIVER_FOR`], each attempt on a new
/// connection, as a forge redelivers.
async fn deliver(port: u16, hook: &Webhook, epoch: Instant) -> Posted {
    let first_at = micros_since(epoch);
    let began = Instant::now();
    let mut posted = Posted {
        seq: hook.seq,
        at: first_at,
        first_at,
        answered_us: 0,
        attempts: 0,
        refused: Vec::new(),
        accepted: false,
    };
    let mut previous = first_at;
    loop {
        posted.attempts += 1;
        let at = micros_since(epoch);
        let (status, answer) = Client::new(port, false).post(hook).await;
        if status == 202 || (status == 200 && answer.contains("\"duplicate\"")) {
            posted.at = if status == 202 { at } else { previous };
            posted.answered_us = micros_since(epoch).saturating_sub(at);
            posted.accepted = true;
            return posted;
        }
        posted.refused.push(status);
        previous = at;
        if began.elapsed() >= REDELIVER_FOR {
            return posted;
        }
        tokio::time::sleep(REDELIVER_EVERY).await;
    }
}

// ---------------------------------------------------------------------------------------------
// HAProxy.

/// The HAProxy processes; agent `i` dials the `i % n`-th.
#[derive(Debug)]
struct Balancers(Vec<Haproxy>);

impl Balancers {
    fn start(backends: &[u16], plan: &Plan) -> Result<Balancers> {
        let all = (0..plan.balancers)
            .map(|_| {
                // The harness's balancer, sized for the agents and logging errors only (a line per
                // connection would be a line per agent).
                let options = HaproxyOptions {
                    maxconn: plan.maxconn,
                    log_connections: false,
                    ..HaproxyOptions::default()
                };
                Haproxy::start_with(backends, options)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Balancers(all))
    }

    fn ports(&self) -> Vec<u16> {
        self.0.iter().map(Haproxy::port).collect()
    }

    /// Waits until every HAProxy counts every backend up.
    fn wait_all_up(&self, backends: usize, within: Duration) -> Result<()> {
        wait_until("every backend up in every HAProxy", within, || {
            for b in &self.0 {
                let states = b.backend_states()?;
                ensure!(
                    states.len() == backends && states.iter().all(|s| s == "UP"),
                    "HAProxy on port {}: {states:?}",
                    b.port()
                );
            }
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Figures.

/// Durations in microseconds as a log-scaled histogram (buckets 0.5 % wide), with the exact count
/// and maximum: millions of samples in a few kilobytes.
#[derive(Debug, Clone, Default)]
struct Hist {
    buckets: Vec<u64>,
    count: u64,
    max: u64,
}

const STEP: f64 = 1.005;

impl Hist {
    fn record(&mut self, us: u64) {
        let b = if us == 0 {
            0
        } else {
            ((us as f64).ln() / STEP.ln()) as usize + 1
        };
        if b >= self.buckets.len() {
            self.buckets.resize(b + 1, 0);
        }
        self.buckets[b] += 1;
        self.count += 1;
        self.max = self.max.max(us);
    }

    fn merge(&mut self, other: &Hist) {
        if other.buckets.len() > self.buckets.len() {
            self.buckets.resize(other.buckets.len(), 0);
        }
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
        self.count += other.count;
        self.max = self.max.max(other.max);
    }

    /// The sample at quantile `p` (nearest rank), in milliseconds, to within half a bucket.
    fn ms(&self, p: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        if p >= 1.0 {
            return Some(self.max as f64 / 1000.0);
        }
        let rank = ((self.count as f64 * p).ceil() as u64).max(1);
        let mut seen = 0;
        for (b, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let us = if b == 0 {
                    0.0
                } else {
                    STEP.powf((b - 1) as f64 + 0.5)
                };
                return Some(us.min(self.max as f64) / 1000.0);
            }
        }
        Some(self.max as f64 / 1000.0)
    }

    /// `p50 / p99 / max` in milliseconds.
    fn summary(&self) -> String {
        match (self.ms(0.5), self.ms(0.99), self.ms(1.0)) {
            (Some(a), Some(b), Some(c)) => format!("{a:.1} / {b:.1} / {c:.1}"),
            _ => "–".into(),
        }
    }
}

/// What the agents heard of a set of accepted webhooks.
#[derive(Debug, Default)]
struct Reach {
    /// Agents looked at.
    agents: usize,
    /// Per agent and webhook heard as a notice: posted → notice received.
    exact: Hist,
    /// Per agent and webhook: posted → the first notice or catch-up of it or a newer push.
    covered: Hist,
    /// Webhooks every agent heard as a notice.
    complete: usize,
    /// When the last of those was complete, in microseconds on the pool's clock.
    last_complete: Option<u32>,
    /// When the last webhook was covered for every agent (if every one was).
    last_covered: Option<u32>,
    /// Webhooks some agent heard of neither as a notice nor through a newer push.
    uncovered: usize,
    /// Agents whose newest push heard is older than the newest webhook.
    behind: usize,
    /// (agent, webhook) pairs not heard as a notice.
    missed: u64,
    /// Agents that missed at least one notice, and the most one missed.
    agents_missing: usize,
    most_missed: usize,
    /// Notices received of these webhooks.
    notices: u64,
}

/// Looks at what every agent `include`s heard of `posts` (accepted webhooks).
fn analyse(pool: &Pool, posts: &[Posted], include: impl Fn(usize) -> bool) -> Reach {
    let mut posts: Vec<&Posted> = posts.iter().filter(|p| p.accepted).collect();
    posts.sort_by_key(|p| p.seq);
    let index: HashMap<u32, usize> = posts.iter().enumerate().map(|(i, p)| (p.seq, i)).collect();
    let n = posts.len();
    let mut out = Reach::default();
    let mut heard_by = vec![0usize; n];
    let mut last_at = vec![0u32; n];
    let mut covered_at = vec![0u32; n];
    let mut uncovered = vec![false; n];
    let mut seen = vec![false; n];
    for (i, h) in pool.heard.iter().enumerate() {
        if !include(i) {
            continue;
        }
        out.agents += 1;
        let h = lock(h);
        seen.iter_mut().for_each(|s| *s = false);
        let mut next = 0;
        let mut got = 0;
        for e in &h.events {
            let seq = e.tag & !CATCHUP;
            if e.tag & CATCHUP == 0
                && let Some(&k) = index.get(&seq)
                && !seen[k]
            {
                seen[k] = true;
                got += 1;
                out.notices += 1;
                out.exact
                    .record(u64::from(e.at.saturating_sub(posts[k].at)));
                heard_by[k] += 1;
                last_at[k] = last_at[k].max(e.at);
            }
            while next < n && posts[next].seq <= seq {
                out.covered
                    .record(u64::from(e.at.saturating_sub(posts[next].at)));
                covered_at[next] = covered_at[next].max(e.at);
                next += 1;
            }
        }
        for u in uncovered.iter_mut().skip(next) {
            *u = true;
        }
        if next < n {
            out.behind += 1;
        }
        let missed = n - got;
        out.missed += missed as u64;
        if missed > 0 {
            out.agents_missing += 1;
            out.most_missed = out.most_missed.max(missed);
        }
    }
    for k in 0..n {
        if heard_by[k] == out.agents {
            out.complete += 1;
            out.last_complete = Some(out.last_complete.unwrap_or(0).max(last_at[k]));
        }
    }
    out.uncovered = uncovered.iter().filter(|u| **u).count();
    if out.uncovered == 0 && n > 0 {
        out.last_covered = covered_at.iter().copied().max();
    }
    out
}

/// A sample of a hub's counters and histograms.
#[derive(Debug, Clone, Default)]
struct Counters {
    sent: f64,
    coalesced: f64,
    fanout_sum: f64,
    fanout_count: f64,
}

impl Counters {
    fn of(hub: &Hub) -> Result<Counters> {
        let text = hub.metrics()?;
        let v = |name: &str| metric_value(&text, name).unwrap_or(0.0);
        Ok(Counters {
            sent: v("tether_hub_notices_sent_total"),
            coalesced: v("tether_hub_notices_coalesced_total"),
            fanout_sum: v("tether_hub_fanout_latency_seconds_sum"),
            fanout_count: v("tether_hub_fanout_latency_seconds_count"),
        })
    }

    fn since(&self, before: &Counters) -> Counters {
        Counters {
            sent: self.sent - before.sent,
            coalesced: self.coalesced - before.coalesced,
            fanout_sum: self.fanout_sum - before.fanout_sum,
            fanout_count: self.fanout_count - before.fanout_count,
        }
    }

    fn add(&mut self, other: &Counters) {
        self.sent += other.sent;
        self.coalesced += other.coalesced;
        self.fanout_sum += other.fanout_sum;
        self.fanout_count += other.fanout_count;
    }

    /// The mean of the hub's own fan-out latency (arrival → written to the socket), ms.
    fn fanout_mean_ms(&self) -> Option<f64> {
        (self.fanout_count > 0.0).then(|| self.fanout_sum / self.fanout_count * 1000.0)
    }
}

/// What a replica logs when a Redis call failed or timed out and it counts Redis as away; and
/// when a catch-up or a webhook's dedup went on without Redis.
const REDIS_AWAY: &str = "Redis unreachable";
const CATCHUP_WITHOUT_REDIS: &str = "catch-up could not read Redis";
const DEDUP_WITHOUT_REDIS: &str = "delivery dedup could not ask Redis";

/// How often each of [`REDIS_AWAY`], [`CATCHUP_WITHOUT_REDIS`] and [`DEDUP_WITHOUT_REDIS`]
/// appears in a replica's log since it was last started.
fn redis_troubles(hub: &Hub) -> [usize; 3] {
    let log = hub.log();
    [REDIS_AWAY, CATCHUP_WITHOUT_REDIS, DEDUP_WITHOUT_REDIS].map(|m| log.matches(m).count())
}

fn add_troubles(sum: &mut [usize; 3], now: [usize; 3], before: [usize; 3]) {
    for k in 0..3 {
        sum[k] += now[k].saturating_sub(before[k]);
    }
}

fn agents_connected(hub: &Hub) -> Result<usize> {
    let text = hub.metrics()?;
    Ok(metric_value(&text, "tether_hub_agents_connected")
        .context("no tether_hub_agents_connected in the hub's metrics")? as usize)
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

fn running_pid(hub: &Hub) -> Result<u32> {
    hub.pid()
        .with_context(|| format!("the hub on port {} is not running", hub.port()))
}

// ---------------------------------------------------------------------------------------------
// Phase 1: one replica.

/// Fan-out figures of single webhooks on a quiet hub.
#[derive(Debug, Default)]
struct Fanout {
    all: Hist,
    /// Agents on the replica the webhook was posted to.
    local: Hist,
    /// Agents reached through Redis.
    relayed: Hist,
    /// POST → 202.
    answered: Hist,
    /// Agents that did not hear a run's webhook as a notice (summed over runs).
    missed: u64,
    hub: Counters,
}

/// Posts `runs` webhooks to `port`, one at a time, each once every agent heard the previous.
fn fan_out(
    setup: &Setup,
    pool: &Pool,
    signer: &Signer,
    port: u16,
    runs: usize,
    hubs: &[&Hub],
    local: &HashSet<usize>,
) -> Result<Fanout> {
    let mut out = Fanout::default();
    let mut client = Client::new(port, true);
    for run in 1..=runs {
        let before = hubs
            .iter()
            .map(|h| Counters::of(h))
            .collect::<Result<Vec<_>>>()?;
        let hook = signer.webhook(setup.seq())?;
        let (posted, answer) = setup
            .runtime
            .block_on(post_once(&mut client, &hook, pool.epoch));
        ensure!(
            posted.accepted,
            "fan-out run {run}: the hub answered {:?}: {answer}",
            posted.refused
        );
        out.answered.record(u64::from(posted.answered_us));
        pool.wait_heard(hook.seq, FANOUT_WITHIN)
            .with_context(|| format!("fan-out run {run}"))?;
        let posts = [posted];
        let all = analyse(pool, &posts, |_| true);
        out.all.merge(&all.exact);
        out.missed += all.missed;
        if !local.is_empty() {
            out.local
                .merge(&analyse(pool, &posts, |i| local.contains(&i)).exact);
            out.relayed
                .merge(&analyse(pool, &posts, |i| !local.contains(&i)).exact);
        }
        // The hub counts a notice once written; that is done by the time the agents heard it.
        for (hub, before) in hubs.iter().zip(&before) {
            out.hub.add(&Counters::of(hub)?.since(before));
        }
    }
    Ok(out)
}

#[derive(Debug)]
struct Single {
    config_written: Duration,
    connected_in: Duration,
    rss_idle: u64,
    rss_connected: u64,
    fanout: Fanout,
    limits: (u64, u64),
}

fn one_replica(setup: &Setup, args: &Args) -> Result<Single> {
    eprintln!("bench-replicas: one replica, {} agents", args.agents);
    let began = Instant::now();
    let hub = Hub::start_with(HubOptions {
        agents: setup.specs.clone(),
        ..HubOptions::default()
    })?;
    let config_written = began.elapsed();
    let pid = running_pid(&hub)?;
    let rss_idle = rss_bytes(pid)?;
    let lbs = Balancers::start(&[hub.port()], &setup.plan)?;
    lbs.wait_all_up(1, STEP_WITHIN)?;
    let pool = Pool::start(setup, &lbs.ports(), args.connect_concurrency);
    let connected_in = pool
        .wait_live("every agent connected to the one replica", CONNECT_WITHIN)
        .with_context(|| hub.log_tail())?;
    let held = agents_connected(&hub)?;
    ensure!(
        held == args.agents,
        "the hub counts {held} agents connected, not {}",
        args.agents
    );
    let rss_connected = rss_bytes(pid)?;
    let signer = Signer::of(&hub)?;
    eprintln!(
        "bench-replicas: {} agents connected in {:.1} s; {} fan-out runs",
        args.agents,
        connected_in.as_secs_f64(),
        args.runs
    );
    let fanout = fan_out(
        setup,
        &pool,
        &signer,
        hub.port(),
        args.runs,
        &[&hub],
        &HashSet::new(),
    )
    .with_context(|| hub.log_tail())?;
    let limits = open_files(pid)?;
    pool.stop(&setup.runtime)?;
    drop(lbs);
    drop(hub);
    Ok(Single {
        config_written,
        connected_in,
        rss_idle,
        rss_connected,
        fanout,
        limits,
    })
}

// ---------------------------------------------------------------------------------------------
// Phases 2 and 3: replicas.

#[derive(Debug)]
struct Sustained {
    posted: usize,
    accepted: usize,
    refused: Vec<u16>,
    /// First post → last answer, seconds.
    posting_secs: f64,
    heard: Reach,
    /// First post, µs on the pool's clock.
    first_at: u32,
    /// Every agent heard the marker posted after the phase, µs after the last answer; `None`
    /// when not within [`DRAIN_WITHIN`].
    drained_after: Option<Duration>,
    hub: Vec<Counters>,
    /// CPU seconds while posting and draining: each replica, each HAProxy, Redis, this program.
    cpu: Vec<(String, f64)>,
    cpu_secs: f64,
    answered: Hist,
    /// Logged by the replicas meanwhile: Redis counted away, catch-ups and dedups without it.
    troubles: [usize; 3],
}

#[derive(Debug)]
struct Restart {
    held: usize,
    stopped: Duration,
    ready: Duration,
    in_lb: Duration,
    /// Until every agent of the replica was connected (to another) with its catch-up.
    back: Option<Duration>,
}

#[derive(Debug)]
struct Rolling {
    posts: Vec<Posted>,
    heard: Reach,
    restarts: Vec<Restart>,
    /// Every agent heard the last push within `--settle-secs` after the posting stopped: after
    /// how long.
    settled: Option<Duration>,
    /// Agents not live at the end.
    not_live: usize,
    /// Agents whose newest push heard is not the last one.
    not_last: usize,
    /// (lost → caught up again), the longest.
    longest_outage_us: u32,
    /// Lost → caught up again, and its parts: lost → the dial that ended it started (the
    /// agent's own delay and failed dials), dial → upgrade answered, upgrade → catch-up.
    outages: Hist,
    to_dial: Hist,
    to_upgrade: Hist,
    to_catchup: Hist,
    agents_reconnected: usize,
    reconnects: u64,
    failed_dials: u64,
    going_away: u64,
    held_after: Vec<usize>,
    /// Logged by the replicas meanwhile: Redis counted away, catch-ups and dedups without it.
    troubles: [usize; 3],
}

#[derive(Debug)]
struct Several {
    config_written: Duration,
    connected_in: Duration,
    held: Vec<usize>,
    rss_idle: Vec<u64>,
    rss_connected: Vec<u64>,
    rss_sustained: Vec<u64>,
    rss_peak: Vec<u64>,
    rss_rolled: Vec<u64>,
    rss_haproxy: Vec<u64>,
    rss_bench: u64,
    redis_rss: String,
    fanout: Fanout,
    sustained: Sustained,
    rolling: Rolling,
    limits: (u64, u64),
}

fn replicas(setup: &Setup, args: &Args) -> Result<Several> {
    eprintln!(
        "bench-replicas: {} replicas sharing Redis, {} agents",
        args.replicas, args.agents
    );
    let redis = RedisServer::start()?;
    let began = Instant::now();
    let first = Hub::start_with(HubOptions {
        agents: setup.specs.clone(),
        redis: Some(redis.url()),
        ..HubOptions::default()
    })?;
    let mut hubs = vec![first];
    for _ in 1..args.replicas {
        let replica = hubs[0].replica()?;
        hubs.push(replica);
    }
    let config_written = began.elapsed();
    let pids = hubs.iter().map(running_pid).collect::<Result<Vec<_>>>()?;
    let rss_idle = pids.iter().map(|p| rss_bytes(*p)).collect::<Result<_>>()?;
    let ports: Vec<u16> = hubs.iter().map(Hub::port).collect();
    let lbs = Balancers::start(&ports, &setup.plan)?;
    lbs.wait_all_up(args.replicas, STEP_WITHIN)?;
    let pool = Pool::start(setup, &lbs.ports(), args.connect_concurrency);
    let logs = || {
        hubs.iter()
            .enumerate()
            .map(|(i, h)| format!("--- replica {i}:\n{}", h.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let connected_in = pool
        .wait_live("every agent connected to a replica", CONNECT_WITHIN)
        .with_context(logs)?;
    let held = wait_until("the replicas counting every agent", STEP_WITHIN, || {
        let held = hubs
            .iter()
            .map(agents_connected)
            .collect::<Result<Vec<_>>>()?;
        let sum: usize = held.iter().sum();
        ensure!(sum == args.agents, "the replicas hold {held:?}");
        Ok(held)
    })?;
    let rss_connected: Vec<u64> = pids.iter().map(|p| rss_bytes(*p)).collect::<Result<_>>()?;
    eprintln!(
        "bench-replicas: agents connected in {:.1} s, held {held:?}; {} fan-out runs",
        connected_in.as_secs_f64(),
        args.runs
    );
    let signer = Signer::of(&hubs[0])?;
    let local: HashSet<usize> = hubs[0]
        .connected_agents()
        .iter()
        .filter_map(|n| n.strip_prefix('a').and_then(|i| i.parse().ok()))
        .collect();
    ensure!(
        local.len() == held[0],
        "replica 0's log names {} connected agents, its metrics {}",
        local.len(),
        held[0]
    );
    let hub_refs: Vec<&Hub> = hubs.iter().collect();
    let fanout = fan_out(
        setup,
        &pool,
        &signer,
        hubs[0].port(),
        args.runs,
        &hub_refs,
        &local,
    )
    .with_context(logs)?;

    eprintln!(
        "bench-replicas: sustained webhooks for {} s, {} posters",
        args.sustain_secs, args.posters
    );
    let mut cpu_pids: Vec<(String, u32)> = pids
        .iter()
        .enumerate()
        .map(|(i, p)| (format!("replica {i}"), *p))
        .collect();
    for (i, b) in lbs.0.iter().enumerate() {
        cpu_pids.push((format!("HAProxy {i}"), b.pid()));
    }
    if let Some(pid) = redis_pid(&redis) {
        cpu_pids.push(("Redis".into(), pid));
    }
    cpu_pids.push(("this program (the agents)".into(), std::process::id()));
    let sustained = sustain(setup, args, &pool, &signer, &hubs, &cpu_pids).with_context(logs)?;
    let rss_sustained = pids.iter().map(|p| rss_bytes(*p)).collect::<Result<_>>()?;
    let rss_peak = pids
        .iter()
        .map(|p| peak_rss_bytes(*p))
        .collect::<Result<_>>()?;
    let rss_haproxy = lbs
        .0
        .iter()
        .map(|b| rss_bytes(b.pid()))
        .collect::<Result<_>>()?;
    let rss_bench = rss_bytes(std::process::id())?;
    let redis_rss = redis
        .cli(&["info", "memory"])
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("used_memory_rss_human:"))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into());
    let limits = open_files(pids[0])?;

    eprintln!("bench-replicas: rolling restart under load");
    let rolling = roll(setup, args, &pool, &signer, &mut hubs, &lbs)?;
    let rss_rolled = hubs
        .iter()
        .map(|h| running_pid(h).and_then(rss_bytes))
        .collect::<Result<_>>()?;
    pool.stop(&setup.runtime)?;
    drop(lbs);
    drop(hubs);
    drop(redis);
    Ok(Several {
        config_written,
        connected_in,
        held,
        rss_idle,
        rss_connected,
        rss_sustained,
        rss_peak,
        rss_rolled,
        rss_haproxy,
        rss_bench,
        redis_rss,
        fanout,
        sustained,
        rolling,
        limits,
    })
}

fn redis_pid(redis: &RedisServer) -> Option<u32> {
    let info = redis.cli(&["info", "server"]).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Webhooks for distinct commits, posted to the replicas in turn by concurrent posters, each as
/// soon as the previous is answered.
fn sustain(
    setup: &Setup,
    args: &Args,
    pool: &Pool,
    signer: &Signer,
    hubs: &[Hub],
    cpu_pids: &[(String, u32)],
) -> Result<Sustained> {
    let before = hubs.iter().map(Counters::of).collect::<Result<Vec<_>>>()?;
    let troubles_before: Vec<[usize; 3]> = hubs.iter().map(redis_troubles).collect();
    let cpu_before = cpu_pids
        .iter()
        .map(|(_, p)| cpu_seconds(*p))
        .collect::<Result<Vec<_>>>()?;
    let cpu_began = Instant::now();
    let ports: Vec<u16> = hubs.iter().map(Hub::port).collect();
    let until = Instant::now() + Duration::from_secs(args.sustain_secs);
    let epoch = pool.epoch;
    let posts: Vec<Posted> = setup.runtime.block_on(async {
        let posters = (0..args.posters).map(|_| {
            let ports = ports.clone();
            let signer = signer.clone();
            let next = Arc::clone(&setup.next_seq);
            tokio::spawn(async move {
                let mut clients: Vec<Client> =
                    ports.iter().map(|&p| Client::new(p, true)).collect();
                let mut out = Vec::new();
                while Instant::now() < until {
                    let seq = next.fetch_add(1, Ordering::SeqCst);
                    let hook = signer.webhook(seq)?;
                    let k = seq as usize % clients.len();
                    let (posted, _) = post_once(&mut clients[k], &hook, epoch).await;
                    let refused = !posted.accepted;
                    out.push(posted);
                    if refused {
                        // A refusal comes at once; do not spin on it.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Ok::<_, anyhow::Error>(out)
            })
        });
        let mut all = Vec::new();
        for done in futures::future::join_all(posters).await {
            all.extend(done.context("a poster task failed")??);
        }
        Ok::<_, anyhow::Error>(all)
    })?;
    let posting_end = pool.now();
    let accepted: Vec<&Posted> = posts.iter().filter(|p| p.accepted).collect();
    ensure!(
        !accepted.is_empty(),
        "no webhook of the sustained phase was accepted; refused with {:?}",
        posts
            .iter()
            .flat_map(|p| p.refused.clone())
            .take(10)
            .collect::<Vec<_>>()
    );
    let first_at = posts.iter().map(|p| p.at).min().unwrap_or(0);
    // A marker posted once every other webhook was answered: published after all of them, so
    // every outbox ends on it.
    let marker = signer.webhook(setup.seq())?;
    let mut client = Client::new(ports[0], false);
    let (marked, answer) = setup
        .runtime
        .block_on(post_once(&mut client, &marker, epoch));
    ensure!(
        marked.accepted,
        "the marker webhook was refused with {:?}: {answer}",
        marked.refused
    );
    let drained_after = pool
        .wait_heard(marker.seq, DRAIN_WITHIN)
        .ok()
        .map(|()| Duration::from_micros(u64::from(pool.now().saturating_sub(posting_end))));
    let cpu_secs = cpu_began.elapsed().as_secs_f64();
    let cpu = cpu_pids
        .iter()
        .zip(&cpu_before)
        .map(|((name, pid), before)| Ok((name.clone(), cpu_seconds(*pid)? - before)))
        .collect::<Result<Vec<_>>>()?;
    let hub = hubs
        .iter()
        .zip(&before)
        .map(|(h, b)| Ok(Counters::of(h)?.since(b)))
        .collect::<Result<Vec<_>>>()?;
    let mut troubles = [0; 3];
    for (h, b) in hubs.iter().zip(&troubles_before) {
        add_troubles(&mut troubles, redis_troubles(h), *b);
    }
    let mut answered = Hist::default();
    for p in &accepted {
        answered.record(u64::from(p.answered_us));
    }
    let heard = analyse(pool, &posts, |_| true);
    Ok(Sustained {
        posted: posts.len(),
        accepted: accepted.len(),
        refused: posts.iter().flat_map(|p| p.refused.clone()).collect(),
        posting_secs: f64::from(posting_end.saturating_sub(first_at)) / 1e6,
        heard,
        first_at,
        drained_after,
        hub,
        cpu,
        cpu_secs,
        answered,
        troubles,
    })
}

/// Restarts every replica in turn while a webhook goes through HAProxy every `--every-ms`.
fn roll(
    setup: &Setup,
    args: &Args,
    pool: &Pool,
    signer: &Signer,
    hubs: &mut [Hub],
    lbs: &Balancers,
) -> Result<Rolling> {
    let before: Vec<(u32, u32)> = pool
        .heard
        .iter()
        .map(|h| {
            let h = lock(h);
            (h.sessions, h.failed_dials)
        })
        .collect();
    let going_away_before = pool.sum(|h| u64::from(h.going_away));
    let window = pool.now();
    let troubles_before: Vec<[usize; 3]> = hubs.iter().map(redis_troubles).collect();
    let mut troubles = [0; 3];
    let accepted = Arc::new(AtomicUsize::new(0));
    let (stop, stopped) = watch::channel(false);
    let poster = {
        let port = lbs.0[0].port();
        let signer = signer.clone();
        let next = Arc::clone(&setup.next_seq);
        let accepted = Arc::clone(&accepted);
        let epoch = pool.epoch;
        let every = Duration::from_millis(args.every_ms);
        setup.runtime.spawn(async move {
            post_steadily(port, every, signer, next, accepted, epoch, stopped).await
        })
    };
    let count_accepted = |at_least: usize, what: &str| {
        wait_until(what, STEP_WITHIN, || {
            let n = accepted.load(Ordering::SeqCst);
            ensure!(n >= at_least, "{n} accepted");
            Ok(())
        })
    };
    count_accepted(STEADY_WEBHOOKS, "webhooks flowing before the restarts")?;
    let mut restarts = Vec::new();
    for r in 0..hubs.len() {
        let held = agents_connected(&hubs[r])?;
        let sessions_before = pool.sum(|h| u64::from(h.sessions));
        // Its log is set aside when it starts again: count what it logged until now.
        add_troubles(&mut troubles, redis_troubles(&hubs[r]), troubles_before[r]);
        let began = Instant::now();
        hubs[r].stop();
        let stopped = began.elapsed();
        hubs[r]
            .start_again()
            .with_context(|| format!("starting replica {r} again"))?;
        let ready = began.elapsed();
        lbs.wait_all_up(hubs.len(), STEP_WITHIN)?;
        let in_lb = began.elapsed();
        // Its agents, connected again elsewhere, each with a new catch-up.
        let back = wait_until_every(
            &format!("the agents of replica {r} connected again"),
            BACK_WITHIN,
            Duration::from_millis(100),
            || {
                let sessions = pool.sum(|h| u64::from(h.sessions));
                let live = pool.count(|h| h.live);
                ensure!(
                    sessions >= sessions_before + held as u64 && live == pool.len(),
                    "{} of {held} reconnected, {live} of {} live",
                    sessions.saturating_sub(sessions_before),
                    pool.len()
                );
                Ok(began.elapsed())
            },
        )
        .ok();
        eprintln!(
            "bench-replicas: replica {r} ({held} agents): exited after {:.1} s, ready after {:.1} s, in HAProxy after {:.1} s, its agents back after {}",
            stopped.as_secs_f64(),
            ready.as_secs_f64(),
            in_lb.as_secs_f64(),
            back.map_or("(not within the deadline)".into(), |b| format!(
                "{:.1} s",
                b.as_secs_f64()
            ))
        );
        restarts.push(Restart {
            held,
            stopped,
            ready,
            in_lb,
            back,
        });
    }
    let done = accepted.load(Ordering::SeqCst);
    count_accepted(
        done + STEADY_WEBHOOKS,
        "webhooks flowing after the restarts",
    )?;
    let _ = stop.send(true);
    let posts = setup
        .runtime
        .block_on(poster)
        .context("the rolling poster failed")??;
    let last = posts
        .iter()
        .filter(|p| p.accepted)
        .map(|p| p.seq)
        .max()
        .context("no webhook was accepted during the rolling restart")?;
    let settling = Instant::now();
    let settled = wait_until(
        "every agent live and on the last push",
        Duration::from_secs(args.settle_secs),
        || {
            let off = pool.count(|h| !h.live || h.newest != last);
            ensure!(off == 0, "{off} agents not live or not on push {last}");
            Ok(settling.elapsed())
        },
    )
    .ok();
    let heard = analyse(pool, &posts, |_| true);
    let mut outages = Hist::default();
    let (mut to_dial, mut to_upgrade, mut to_catchup) =
        (Hist::default(), Hist::default(), Hist::default());
    let mut longest_outage_us = 0;
    let mut agents_reconnected = 0;
    let mut reconnects = 0;
    let mut failed_dials = 0;
    for (h, (sessions, failed)) in pool.heard.iter().zip(&before) {
        let h = lock(h);
        for o in h.outages.iter().filter(|o| o.lost >= window) {
            let us = o.caught_up.saturating_sub(o.lost);
            outages.record(u64::from(us));
            to_dial.record(u64::from(o.dialled.saturating_sub(o.lost)));
            to_upgrade.record(u64::from(o.upgraded.saturating_sub(o.dialled)));
            to_catchup.record(u64::from(o.caught_up.saturating_sub(o.upgraded)));
            longest_outage_us = longest_outage_us.max(us);
        }
        if let Some(lost) = h.lost_at {
            longest_outage_us = longest_outage_us.max(pool.now().saturating_sub(lost));
        }
        let again = h.sessions.saturating_sub(*sessions);
        if again > 0 {
            agents_reconnected += 1;
        }
        reconnects += u64::from(again);
        failed_dials += u64::from(h.failed_dials.saturating_sub(*failed));
    }
    let held_after = hubs
        .iter()
        .map(agents_connected)
        .collect::<Result<Vec<_>>>()?;
    for h in hubs.iter() {
        add_troubles(&mut troubles, redis_troubles(h), [0; 3]);
    }
    Ok(Rolling {
        troubles,
        not_live: pool.count(|h| !h.live),
        not_last: pool.count(|h| h.newest != last),
        posts,
        heard,
        restarts,
        settled,
        longest_outage_us,
        outages,
        to_dial,
        to_upgrade,
        to_catchup,
        agents_reconnected,
        reconnects,
        failed_dials,
        going_away: pool.sum(|h| u64::from(h.going_away)) - going_away_before,
        held_after,
    })
}

/// One webhook every `every` through `port`, each redelivered until taken, until `stop`.
async fn post_steadily(
    port: u16,
    every: Duration,
    signer: Signer,
    next: Arc<AtomicU32>,
    accepted: Arc<AtomicUsize>,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> Result<Vec<Posted>> {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut out = Vec::new();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return Ok(out),
        }
        if *stop.borrow() {
            return Ok(out);
        }
        let hook = signer.webhook(next.fetch_add(1, Ordering::SeqCst))?;
        let posted = deliver(port, &hook, epoch).await;
        if posted.accepted {
            accepted.fetch_add(1, Ordering::SeqCst);
        }
        out.push(posted);
    }
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Debug)]
struct Section {
    title: String,
    columns: Vec<String>,
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Section {
    fn new(title: &str, columns: &[&str]) -> Section {
        Section {
            title: title.to_string(),
            columns: columns.iter().map(|c| c.to_string()).collect(),
            rows: Vec::new(),
            notes: Vec::new(),
        }
    }

    fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    fn figure(&mut self, label: &str, value: String) {
        self.rows.push(vec![label.to_string(), value]);
    }

    fn note(&mut self, text: &str) {
        self.notes.push(text.to_string());
    }
}

#[derive(Debug)]
struct Report {
    header: Vec<String>,
    sections: Vec<Section>,
    stamp: String,
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0))
}

fn secs(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64())
}

fn ms_of(us: u32) -> String {
    format!("{:.0}", f64::from(us) / 1000.0)
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1}"))
}

fn troubles_text(t: [usize; 3]) -> String {
    format!("{} / {} / {}", t[0], t[1], t[2])
}

/// `statuses` as `status×count`, the most frequent first (0: no answer).
fn statuses(refused: &[u16]) -> String {
    if refused.is_empty() {
        return "none".into();
    }
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for s in refused {
        *counts.entry(*s).or_default() += 1;
    }
    let mut counts: Vec<(u16, usize)> = counts.into_iter().collect();
    counts.sort_by_key(|(s, n)| (std::cmp::Reverse(*n), *s));
    counts
        .iter()
        .map(|(s, n)| format!("{s}×{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Report {
    fn build(
        args: &Args,
        setup: &Setup,
        hub_bin: &std::path::Path,
        single: &Single,
        several: &Several,
    ) -> Result<Report> {
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
        let n = args.agents;
        let r = args.replicas;
        let plan = &setup.plan;
        let header = vec![
            format!(
                "Tether {commit}{}: hub replicas under load; hub {} ({}), bench built {}",
                if dirty {
                    " (with uncommitted changes)"
                } else {
                    ""
                },
                hub_bin.display(),
                build_of(hub_bin),
                if cfg!(debug_assertions) {
                    "debug"
                } else {
                    "release"
                }
            ),
            format!("machine: {cores} cores, {memory} memory; {date}"),
            format!(
                "{n} agents (one token each, all watching {REPO}), simulated in this one process; \
                 {} HAProxy process(es) in TCP mode (round robin, /readyz checked every 500 ms), maxconn {} each; \
                 one Redis {}; everything on this machine",
                plan.balancers,
                plan.maxconn,
                command("redis-server", &["--version"])
                    .ok()
                    .and_then(|v| v
                        .split_whitespace()
                        .nth(2)
                        .map(|s| s.trim_start_matches("v=").to_string()))
                    .unwrap_or_default()
            ),
            format!(
                "open files: this program {} (hard {}), the one replica {} (hard {}), each of the {r} {} (hard {})",
                plan.files,
                plan.files_hard,
                single.limits.0,
                single.limits.1,
                several.limits.0,
                several.limits.1
            ),
        ];
        let mut sections = Vec::new();

        let mut fan = Section::new(
            &format!(
                "Fan-out of one webhook to all {n} agents ({} runs; webhook posted → notice received, per agent)",
                args.runs
            ),
            &[
                "figure",
                "1 replica, no Redis",
                &format!("{r} replicas: every agent"),
                "… on the replica posted to",
                "… reached through Redis",
            ],
        );
        let (one, many) = (&single.fanout, &several.fanout);
        for (label, p) in [("p50 ms", 0.5), ("p99 ms", 0.99), ("max ms", 1.0)] {
            fan.row(vec![
                label.into(),
                opt_ms(one.all.ms(p)),
                opt_ms(many.all.ms(p)),
                opt_ms(many.local.ms(p)),
                opt_ms(many.relayed.ms(p)),
            ]);
        }
        fan.row(vec![
            "agents holding".into(),
            n.to_string(),
            n.to_string(),
            many.local
                .count
                .checked_div(args.runs as u64)
                .unwrap_or(0)
                .to_string(),
            many.relayed
                .count
                .checked_div(args.runs as u64)
                .unwrap_or(0)
                .to_string(),
        ]);
        fan.row(vec![
            "POST → 202, p50 ms".into(),
            opt_ms(one.answered.ms(0.5)),
            opt_ms(many.answered.ms(0.5)),
            String::new(),
            String::new(),
        ]);
        fan.row(vec![
            "hub's own fan-out histogram, mean ms".into(),
            opt_ms(one.hub.fanout_mean_ms()),
            opt_ms(many.hub.fanout_mean_ms()),
            String::new(),
            String::new(),
        ]);
        fan.row(vec![
            "notices missed (summed over runs)".into(),
            one.missed.to_string(),
            many.missed.to_string(),
            String::new(),
            String::new(),
        ]);
        fan.note(&format!("the hub's histogram runs from the webhook's arrival at that replica (for relayed notices: from the replica hearing it through Redis) to the notice written to the socket; the rest of the agents' figures is HAProxy and this program reading {n} sockets, on the same cores"));
        sections.push(fan);

        let s = &several.sustained;
        let mut sus = Section::new(
            &format!(
                "Sustained webhooks: {} posters, distinct commits, to the {r} replicas in turn, for {} s",
                args.posters, args.sustain_secs
            ),
            &["figure", "value"],
        );
        let h = &s.heard;
        sus.figure(
            "webhooks posted / accepted (202)",
            format!("{} / {}", s.posted, s.accepted),
        );
        sus.figure("refused, by status (0: no answer)", statuses(&s.refused));
        sus.figure(
            "accepted per second",
            format!("{:.1}", s.accepted as f64 / s.posting_secs.max(1e-9)),
        );
        sus.figure("POST → 202, p50 / p99 / max ms", s.answered.summary());
        let span = |end: Option<u32>| end.map(|e| f64::from(e.saturating_sub(s.first_at)) / 1e6);
        sus.figure(
            "fully delivered (every agent got its notice): webhooks",
            format!("{} of {}", h.complete, s.accepted),
        );
        sus.figure(
            "… per second (first post → the last of them complete)",
            span(h.last_complete).map_or("–".into(), |t| {
                format!("{:.1}", h.complete as f64 / t.max(1e-9))
            }),
        );
        sus.figure(
            "covered (every agent heard it or a newer push) per second",
            span(h.last_covered).map_or("–".into(), |t| {
                format!("{:.1}", s.accepted as f64 / t.max(1e-9))
            }),
        );
        sus.figure(
            "notices received per second, all agents",
            format!("{:.0}", h.notices as f64 / s.posting_secs.max(1e-9)),
        );
        sus.figure(
            "notices replaced in an outbox by a newer one (hub counters)",
            format!("{:.0}", s.hub.iter().map(|c| c.coalesced).sum::<f64>()),
        );
        sus.figure(
            "notices per agent: received / webhooks accepted",
            format!(
                "{:.1} / {}",
                h.notices as f64 / h.agents.max(1) as f64,
                s.accepted
            ),
        );
        sus.figure(
            "fan-out under load, notice: p50 / p99 / max ms",
            h.exact.summary(),
        );
        sus.figure(
            "fan-out under load, the push or a newer one: p50 / p99 / max ms",
            h.covered.summary(),
        );
        sus.figure(
            "replicas counting Redis away / catch-ups / dedups without it (logs)",
            troubles_text(s.troubles),
        );
        sus.figure(
            "every agent heard a marker posted after the last answer, after (s)",
            s.drained_after
                .map_or(format!("not within {} s", DRAIN_WITHIN.as_secs()), secs),
        );
        for (i, c) in s.hub.iter().enumerate() {
            sus.figure(
                &format!("replica {i}: notices written / hub fan-out mean ms"),
                format!("{:.0} / {}", c.sent, opt_ms(c.fanout_mean_ms())),
            );
        }
        sus.note("a webhook is fully delivered when every agent received its own notice; an agent's outbox keeps one pending notice per repository (a newer replaces it), so under load most agents skip to the newest push, which is what 'covered' counts");
        sections.push(sus);

        let mut cpu = Section::new(
            &format!(
                "CPU during the sustained phase ({:.1} s of wall time, {cores} cores)",
                s.cpu_secs
            ),
            &["process", "CPU s", "cores busy"],
        );
        for (name, c) in &s.cpu {
            cpu.row(vec![
                name.clone(),
                format!("{c:.1}"),
                format!("{:.2}", c / s.cpu_secs.max(1e-9)),
            ]);
        }
        sections.push(cpu);

        let mut mem = Section::new(
            "Memory (RSS MiB) and agents held",
            &[
                "process",
                "agents",
                "idle",
                "agents connected",
                "KiB per agent",
                "after sustained",
                "peak",
                "after rolling restart",
            ],
        );
        mem.row(vec![
            "1 replica, no Redis".into(),
            n.to_string(),
            mib(single.rss_idle),
            mib(single.rss_connected),
            format!(
                "{:.1}",
                single.rss_connected.saturating_sub(single.rss_idle) as f64 / 1024.0 / n as f64
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
        for i in 0..r {
            let held = several.held[i];
            mem.row(vec![
                format!("replica {i}"),
                format!(
                    "{held} (after the restart: {})",
                    several.rolling.held_after[i]
                ),
                mib(several.rss_idle[i]),
                mib(several.rss_connected[i]),
                format!(
                    "{:.1}",
                    several.rss_connected[i].saturating_sub(several.rss_idle[i]) as f64
                        / 1024.0
                        / held.max(1) as f64
                ),
                mib(several.rss_sustained[i]),
                mib(several.rss_peak[i]),
                mib(several.rss_rolled[i]),
            ]);
        }
        for (i, rss) in several.rss_haproxy.iter().enumerate() {
            mem.row(vec![
                format!("HAProxy {i}"),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                mib(*rss),
                String::new(),
                String::new(),
            ]);
        }
        mem.row(vec![
            "Redis (used_memory_rss)".into(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            several.redis_rss.clone(),
            String::new(),
            String::new(),
        ]);
        mem.row(vec![
            "this program (the agents)".into(),
            n.to_string(),
            String::new(),
            String::new(),
            String::new(),
            mib(several.rss_bench),
            String::new(),
            String::new(),
        ]);
        mem.note(&format!(
            "starting: the config of {n} agents written (a token file and a sha256sum each) and the hub ready: {} s for 1 replica, {} s for {r}; every agent connected with its catch-up: {} s and {} s",
            secs(single.config_written),
            secs(several.config_written),
            secs(single.connected_in),
            secs(several.connected_in)
        ));
        sections.push(mem);

        let rolling = &several.rolling;
        let mut steps = Section::new(
            &format!(
                "Rolling restart under load: one webhook every {} ms through HAProxy; each replica stopped (SIGTERM), started again, back in HAProxy, then the next",
                args.every_ms
            ),
            &[
                "replica",
                "agents held",
                "SIGTERM → exited s",
                "→ ready s",
                "→ up in HAProxy s",
                "→ its agents connected elsewhere s",
            ],
        );
        for (i, st) in rolling.restarts.iter().enumerate() {
            steps.row(vec![
                i.to_string(),
                st.held.to_string(),
                secs(st.stopped),
                secs(st.ready),
                secs(st.in_lb),
                st.back
                    .map_or(format!("not within {} s", BACK_WITHIN.as_secs()), secs),
            ]);
        }
        sections.push(steps);

        let mut roll = Section::new(
            "Rolling restart: what the agents heard",
            &["figure", "value"],
        );
        let posted = rolling.posts.len();
        let accepted: Vec<&Posted> = rolling.posts.iter().filter(|p| p.accepted).collect();
        let redelivered: Vec<&Posted> = accepted
            .iter()
            .copied()
            .filter(|p| p.attempts > 1)
            .collect();
        let rh = &rolling.heard;
        roll.figure(
            "webhooks posted / accepted",
            format!("{posted} / {}", accepted.len()),
        );
        roll.figure(
            "accepted only after redelivery / never accepted",
            format!("{} / {}", redelivered.len(), posted - accepted.len()),
        );
        roll.figure(
            "refused attempts, by status (0: no answer)",
            statuses(
                &rolling
                    .posts
                    .iter()
                    .flat_map(|p| p.refused.clone())
                    .collect::<Vec<_>>(),
            ),
        );
        roll.figure(
            "longest redelivery: first attempt → accepted attempt, ms",
            redelivered
                .iter()
                .map(|p| p.at.saturating_sub(p.first_at))
                .max()
                .map_or("–".into(), ms_of),
        );
        roll.figure(
            "(a) agents not on the last push at the end (of which not connected)",
            format!("{} ({})", rolling.not_last, rolling.not_live),
        );
        roll.figure(
            "pushes lost: accepted, but some agent heard neither it nor a newer push",
            rh.uncovered.to_string(),
        );
        roll.figure(
            "every agent on the last push, after the posting stopped (s)",
            rolling
                .settled
                .map_or(format!("not within {} s", args.settle_secs), secs),
        );
        roll.figure(
            "(b) notices missed (agent × push; covered by a newer notice or a catch-up)",
            format!(
                "{} over {} agents, at most {} for one agent",
                rh.missed, rh.agents_missing, rh.most_missed
            ),
        );
        roll.figure(
            "longest gap: a push accepted → an agent heard it or a newer one, ms",
            rh.covered.ms(1.0).map_or("–".into(), |v| format!("{v:.0}")),
        );
        roll.figure(
            "… p50 / p99 ms over every agent and push",
            match (rh.covered.ms(0.5), rh.covered.ms(0.99)) {
                (Some(a), Some(b)) => format!("{a:.1} / {b:.1}"),
                _ => "–".into(),
            },
        );
        roll.figure(
            "longest disconnection an agent saw (connection lost → next catch-up), ms",
            ms_of(rolling.longest_outage_us),
        );
        roll.figure(
            "disconnections: p50 / p99 / max ms",
            rolling.outages.summary(),
        );
        roll.figure(
            "… lost → the dial that ended it started (1001 jitter, failed dials)",
            rolling.to_dial.summary(),
        );
        roll.figure(
            "… dial → upgrade answered (HAProxy, a replica accepting)",
            rolling.to_upgrade.summary(),
        );
        roll.figure(
            "… upgrade answered → catch-up received",
            rolling.to_catchup.summary(),
        );
        roll.figure(
            "replicas counting Redis away / catch-ups / dedups without it (logs)",
            troubles_text(rolling.troubles),
        );
        roll.figure(
            "agents that reconnected / reconnections / closes with 1001 / failed dials",
            format!(
                "{} / {} / {} / {}",
                rolling.agents_reconnected,
                rolling.reconnects,
                rolling.going_away,
                rolling.failed_dials
            ),
        );
        roll.note("a notice is a hint: an agent that missed one, or heard a newer push first, loses nothing as long as it ends on the last push, by notice or catch-up; 'pushes lost' counts what would be lost");
        sections.push(roll);

        Ok(Report {
            header,
            sections,
            stamp,
        })
    }

    fn text(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(line);
            out.push('\n');
        }
        for s in &self.sections {
            out.push_str(&format!("\n{}\n", s.title));
            let mut widths: Vec<usize> = s.columns.iter().map(|c| c.chars().count()).collect();
            for row in &s.rows {
                for (k, cell) in row.iter().enumerate() {
                    if k < widths.len() {
                        widths[k] = widths[k].max(cell.chars().count());
                    }
                }
            }
            let line = |cells: &[String]| {
                let mut text = String::from(" ");
                for (k, cell) in cells.iter().enumerate() {
                    let w = widths.get(k).copied().unwrap_or(0);
                    if k == 0 {
                        text.push_str(&format!(" {cell:<w$}"));
                    } else {
                        text.push_str(&format!("  {cell:>w$}"));
                    }
                }
                text.trim_end().to_string()
            };
            out.push_str(&line(&s.columns));
            out.push('\n');
            for row in &s.rows {
                out.push_str(&line(row));
                out.push('\n');
            }
            for note in &s.notes {
                out.push_str(&format!("  ({note})\n"));
            }
        }
        out
    }

    fn markdown(&self) -> String {
        let mut out = String::new();
        for line in &self.header {
            out.push_str(&format!("{line}  \n"));
        }
        for s in &self.sections {
            out.push_str(&format!("\n### {}\n\n", s.title));
            out.push_str(&format!("| {} |\n", s.columns.join(" | ")));
            let align: Vec<&str> = (0..s.columns.len())
                .map(|k| if k == 0 { "---" } else { "---:" })
                .collect();
            out.push_str(&format!("|{}|\n", align.join("|")));
            for row in &s.rows {
                out.push_str(&format!("| {} |\n", row.join(" | ")));
            }
            for note in &s.notes {
                out.push_str(&format!("\n_{note}_\n"));
            }
        }
        out
    }

    /// Writes `bench-results/replicas-<time>.md`; returns its path.
    fn write(&self) -> Result<PathBuf> {
        let dir = tether_e2e::workspace::root().join("bench-results");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let md = dir.join(format!("replicas-{}.md", self.stamp));
        std::fs::write(&md, self.markdown())
            .with_context(|| format!("writing {}", md.display()))?;
        Ok(md)
    }
}

/// A short command's trimmed stdout, run in the workspace.
fn command(program: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(program)
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
