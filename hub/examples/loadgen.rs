//! Load generator for the hub's fan-out: the real `tether-hub` binary in its own process, N websocket
//! agents spread over worker processes (each process may hold only as many sockets as its open-file
//! limit allows), then one signed webhook. Prints the time to connect every agent, the hub's own RSS
//! with every agent connected and after the fan-out, and the fan-out latency percentiles (webhook
//! posted → push received by each agent, on the machine's wall clock, which every process shares).
//!
//! `loadgen [AGENTS] [AGENTS_PER_PROCESS]` (defaults 1000 and 5000). Raise `ulimit -n` above
//! AGENTS_PER_PROCESS (and above AGENTS for the hub) first; `make bench` does. The hub binary is the
//! `tether-hub` built beside this example (`target/<profile>/tether-hub`), or `TETHER_HUB_BIN`.
//! Asserts nothing but that every agent got the push.

use std::io::{BufRead as _, BufReader, Write as _};

use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tether_protocol::HubMessage;
use tokio_tungstenite::tungstenite::Message;

mod bench;

use bench::{HubProcess, Reaped, connect_watching, rss_kib};

const REPO: &str = "git.example/bench/app";
const TOKEN: &str = "bench-token";
const SECRET: &str = "loadgen-secret";
/// How long connecting all agents, or delivering the push to all of them, may take.
const DEADLINE: Duration = Duration::from_secs(120);

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        let (addr, n) = match args.as_slice() {
            [_, addr, n] => (addr.clone(), n.parse().context("worker agent count")?),
            _ => bail!("usage: loadgen --worker ADDR AGENTS"),
        };
        return tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
            .block_on(worker(addr, n));
    }
    let agents: usize = args.first().map_or(Ok(1000), |a| a.parse())?;
    let per_process: usize = args.get(1).map_or(Ok(5000), |a| a.parse())?;
    if agents == 0 || per_process == 0 {
        bail!("AGENTS and AGENTS_PER_PROCESS must be at least 1");
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(lead(agents, per_process))
}

async fn lead(agents: usize, per_process: usize) -> anyhow::Result<()> {
    // Every agent uses one token here, so that one agent's caps must hold them all.
    let hub = HubProcess::start(
        &format!(
            "max_connections: {limit}\nmax_connections_per_agent: {limit}\nwatch_update_burst: {limit}\nagents:\n  - name: bench\n    token_sha256: {}\n    repos: ['**']\nwebhooks:\n  - provider: generic\n    repos: ['**']\n    secret: {{ env: LOADGEN_SECRET }}\n",
            hex::encode(Sha256::digest(TOKEN.as_bytes())),
            limit = agents + 100,
        ),
        &[("LOADGEN_SECRET", SECRET)],
        "warn",
    )
    .await?;
    let addr = hub.addr.clone();
    let baseline = hub.rss_kib()?;

    // The workers, each with its share of the agents.
    let started = Instant::now();
    let me = std::env::current_exe()?;
    let mut workers = Vec::new();
    let mut left = agents;
    while left > 0 {
        let n = left.min(per_process);
        left -= n;
        let mut child = Command::new(&me)
            .args(["--worker", &addr, &n.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .context("starting a worker")?;
        let out = child.stdout.take().context("no worker stdout")?;
        workers.push((Reaped(child), lines(out)));
    }
    for (_, out) in &workers {
        match out.recv_timeout(DEADLINE) {
            Ok(line) if line == "ready" => {}
            Ok(line) => bail!("a worker failed: {line}"),
            Err(_) => bail!("a worker did not connect its agents within {DEADLINE:?}"),
        }
    }
    let connect_time = started.elapsed();
    let connected = hub.rss_kib()?;

    // One webhook, fanned out to every agent.
    let body = format!(
        r#"{{"repo_urls":["https://{REPO}.git"],"ref":"refs/heads/main","sha":"{}"}}"#,
        "a".repeat(40)
    );
    let sig = tether_hub::webhook::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/webhooks/generic")
        .header("host", "hub")
        .header("x-tether-signature", format!("sha256={sig}"))
        .body(Full::new(Bytes::from(body)))?;
    let posted = unix_us();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await?;
    if status.as_u16() != 202 {
        bail!("webhook answered {status}");
    }

    let mut latencies = Vec::with_capacity(agents);
    let mut worker_rss = Vec::new();
    for (child, out) in &workers {
        worker_rss.push(rss_kib(child.0.id()).unwrap_or(0));
        let line = out
            .recv_timeout(DEADLINE)
            .context("a worker never reported its agents' pushes")?;
        let Some(times) = line.strip_prefix("received ") else {
            bail!("a worker failed: {line}");
        };
        for t in times.split(',') {
            let at: u64 = t.parse().context("a worker's receive time")?;
            latencies.push(Duration::from_micros(at.saturating_sub(posted)));
        }
    }
    if latencies.len() != agents {
        bail!("only {} of {agents} agents got the push", latencies.len());
    }
    let after = hub.rss_kib()?;
    let peak = hub.peak_rss_kib()?;

    // A graceful stop: every agent is told the hub is going away.
    let stopping = Instant::now();
    let exit = hub.stop()?;
    let stop_time = stopping.elapsed();

    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "hub fan-out: {agents} agents in {} worker process(es), hub in its own process",
        workers.len()
    );
    println!("  connect + watch + catch-up, all agents: {connect_time:.2?}");
    println!(
        "  fan-out (webhook posted → push received): p50 {:.1?}  p95 {:.1?}  p99 {:.1?}  max {:.1?}",
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "  hub RSS: {:.1} MiB idle, {:.1} MiB with every agent connected, {:.1} MiB after the fan-out, peak {:.1} MiB",
        mib(baseline),
        mib(connected),
        mib(after),
        mib(peak)
    );
    println!(
        "  per agent: {:.1} KiB of hub memory",
        (connected.saturating_sub(baseline)) as f64 / agents as f64
    );
    println!(
        "  worker RSS: {} MiB",
        worker_rss
            .iter()
            .map(|k| format!("{:.0}", mib(*k)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("  graceful stop with every agent connected: {stop_time:.2?} ({exit})");
    Ok(())
}

/// One worker: connects `n` agents watching [`REPO`], says `ready` once each has its catch-up, then
/// prints `received T1,T2,...` (microseconds since the epoch) once each has its push.
async fn worker(addr: String, n: usize) -> anyhow::Result<()> {
    let result = agents(&addr, n).await;
    let mut stdout = std::io::stdout().lock();
    match result {
        Ok(times) => {
            let list: Vec<String> = times.iter().map(u64::to_string).collect();
            writeln!(stdout, "received {}", list.join(","))?;
        }
        Err(e) => writeln!(stdout, "error: {e:#}")?,
    }
    stdout.flush()?;
    Ok(())
}

async fn agents(addr: &str, n: usize) -> anyhow::Result<Vec<u64>> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..n {
        let mut ws = connect_watching(addr, TOKEN, REPO).await?;
        let tx = tx.clone();
        let ready_tx = ready_tx.clone();
        tokio::spawn(async move {
            while let Some(Ok(frame)) = ws.next().await {
                if let Message::Text(t) = frame {
                    match HubMessage::from_json(t.as_str()) {
                        Ok(HubMessage::Catchup { .. }) => {
                            let _ = ready_tx.send(());
                        }
                        Ok(HubMessage::Push(_)) => {
                            let _ = tx.send(unix_us());
                        }
                        _ => {}
                    }
                }
            }
        });
    }
    for _ in 0..n {
        tokio::time::timeout(DEADLINE, ready_rx.recv())
            .await
            .context("no catch-up in time")?
            .context("an agent was lost before its catch-up")?;
    }
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "ready")?;
        stdout.flush()?;
    }
    let mut times = Vec::with_capacity(n);
    while times.len() < n {
        match tokio::time::timeout(DEADLINE, rx.recv()).await {
            Ok(Some(at)) => times.push(at),
            _ => bail!("only {} of {n} agents got the push", times.len()),
        }
    }
    Ok(times)
}

/// A child's stdout as a channel of lines.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    rx
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}
