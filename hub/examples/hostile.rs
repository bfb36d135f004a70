//! Hostile load against the hub: the real `tether-hub` binary in its own process, a few agents
//! watching one repository, then at once 1,000 slow-loris connections (request heads that never end,
//! reopened when the hub cuts them), 100 concurrent 1 MiB POSTs with bad signatures (each posted
//! again as soon as it is answered), and a signed webhook for the watched repository every 50 ms.
//! Prints the hub's RSS (sampled, and its peak), how the hub answered each kind of client, and the
//! real pushes' latency (webhook posted → push received by every agent).
//!
//! `hostile [SLOW_LORIS] [BAD_POSTS] [REAL_PUSHES]` (defaults 1000, 100 and 200). Raise `ulimit -n`
//! above SLOW_LORIS + BAD_POSTS + 100 first; `make bench` does. The hub binary is the `tether-hub`
//! built beside this example (`target/<profile>/tether-hub`), or `TETHER_HUB_BIN`. Asserts nothing.

use std::collections::BTreeMap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt;
use sha2::{Digest, Sha256};
use tether_protocol::HubMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

mod bench;

use bench::{HubProcess, connect_watching, rss_kib};

const REPO: &str = "git.example/bench/app";
const SECRET: &str = "hostile-secret";
const AGENTS: usize = 10;
const BAD_BODY: usize = 1024 * 1024;
const PUSH_EVERY: Duration = Duration::from_millis(50);
/// How long one real push may take to reach every agent before it counts as lost.
const PUSH_DEADLINE: Duration = Duration::from_secs(30);

/// Agent `i`'s token.
fn token(i: usize) -> String {
    format!("hostile-bench-token-{i}")
}

/// How the hub answered one kind of client: status (or `closed`, `error`) → count.
#[derive(Default)]
struct Answers(Mutex<BTreeMap<String, u64>>);

impl Answers {
    fn count(&self, what: impl Into<String>) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        *map.entry(what.into()).or_default() += 1;
    }

    fn summary(&self) -> String {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().context("arguments are whole numbers"))
        .collect::<Result<_, _>>()?;
    let slow = args.first().copied().unwrap_or(1000);
    let bad = args.get(1).copied().unwrap_or(100);
    let pushes = args.get(2).copied().unwrap_or(200).max(1);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(slow, bad, pushes))
}

async fn run(slow: usize, bad: usize, pushes: usize) -> anyhow::Result<()> {
    // Every limit at its default: this measures the hub as shipped. One agent (one token) per
    // cluster, as in use.
    let mut config = String::from("agents:\n");
    for i in 0..AGENTS {
        config.push_str(&format!(
            "  - name: cluster-{i}\n    token_sha256: {}\n    repos: ['**']\n",
            hex::encode(Sha256::digest(token(i).as_bytes()))
        ));
    }
    config.push_str(
        "webhooks:\n  - provider: generic\n    repos: ['**']\n    secret: { env: HOSTILE_SECRET }\n",
    );
    let hub = HubProcess::start(&config, &[("HOSTILE_SECRET", SECRET)], "error").await?;
    let (addr, pid) = (hub.addr.clone(), hub.pid);
    let baseline = hub.rss_kib()?;

    // The agents, each reporting when it got which sha.
    // Per agent, each push it got: (push number, when).
    let received: Received = Arc::new(Mutex::new(vec![Vec::new(); AGENTS]));
    let mut ready = Vec::new();
    for i in 0..AGENTS {
        ready.push(agent(&addr, i, Arc::clone(&received)).await?);
    }
    for r in ready {
        tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .context("an agent got no catch-up in time")???;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let slow_answers = Arc::new(Answers::default());
    let bad_answers = Arc::new(Answers::default());
    let real_answers = Arc::new(Answers::default());
    let peak_sampled = Arc::new(AtomicU64::new(0));

    let mut attackers = Vec::new();
    for _ in 0..slow {
        attackers.push(tokio::spawn(slow_loris(
            addr.clone(),
            Arc::clone(&stop),
            Arc::clone(&slow_answers),
        )));
    }
    for i in 0..bad {
        attackers.push(tokio::spawn(bad_poster(
            addr.clone(),
            i,
            Arc::clone(&stop),
            Arc::clone(&bad_answers),
        )));
    }
    let sampler = {
        let stop = Arc::clone(&stop);
        let peak = Arc::clone(&peak_sampled);
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(kib) = rss_kib(pid) {
                    peak.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // Let the attack reach full strength before the real pushes start.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let under_attack = hub.rss_kib()?;

    let mut posted: BTreeMap<usize, Instant> = BTreeMap::new();
    let mut ticker = tokio::time::interval(PUSH_EVERY);
    for n in 0..pushes {
        ticker.tick().await;
        let sha = format!("{:040x}", n + 1);
        let at = Instant::now();
        let status = post_real(&addr, &sha).await;
        real_answers.count(status.clone());
        if status == "202" {
            posted.insert(n, at);
        }
    }
    let deadline = Instant::now() + PUSH_DEADLINE;
    // A push has reached an agent when the agent got it or a later one: an agent's outbox keeps one
    // notice per repository, the latest.
    let latencies = loop {
        let got = received.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let complete: Vec<Duration> = posted
            .iter()
            .filter_map(|(n, at)| {
                let reached: Option<Vec<Instant>> = got
                    .iter()
                    .map(|pushes| pushes.iter().find(|(m, _)| m >= n).map(|(_, t)| *t))
                    .collect();
                reached?.into_iter().max().map(|t| t - *at)
            })
            .collect();
        if complete.len() == posted.len() || Instant::now() > deadline {
            break complete;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let end = hub.rss_kib()?;
    let peak = hub.peak_rss_kib()?;
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.abort();
    }
    let _ = sampler.await;

    let mut latencies = latencies;
    latencies.sort();
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!(
        "hub under hostile load: {slow} slow-loris connections, {bad} concurrent {} MiB bad-signature POSTs, {AGENTS} agents",
        BAD_BODY / (1024 * 1024)
    );
    println!(
        "  hub RSS: {:.1} MiB idle, {:.1} MiB under attack, {:.1} MiB at the end, peak {:.1} MiB (sampled {:.1} MiB)",
        mib(baseline),
        mib(under_attack),
        mib(end),
        mib(peak),
        mib(peak_sampled.load(Ordering::Relaxed))
    );
    println!("  real pushes answered: {}", real_answers.summary());
    if latencies.is_empty() {
        println!("  no real push reached every agent");
    } else {
        let pct =
            |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
        println!(
            "  real pushes reaching all {AGENTS} agents (or a later one reaching them): {} of {} accepted; p50 {:.1?}  p99 {:.1?}  max {:.1?}",
            latencies.len(),
            posted.len(),
            pct(0.50),
            pct(0.99),
            pct(1.0)
        );
    }
    println!("  bad-signature POSTs answered: {}", bad_answers.summary());
    println!("  slow-loris connections: {}", slow_answers.summary());
    let stopping = Instant::now();
    let exit = hub.stop()?;
    println!(
        "  graceful stop after the attack: {:.2?} ({exit})",
        stopping.elapsed()
    );
    Ok(())
}

/// Per agent, the pushes it got, in order: (push number, when).
type Received = Arc<Mutex<Vec<Vec<(usize, Instant)>>>>;

/// Connect agent `i`, watching [`REPO`]; the handle resolves once its catch-up arrived.
async fn agent(
    addr: &str,
    i: usize,
    received: Received,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let mut ws = connect_watching(addr, &token(i), REPO).await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut ready_tx = Some(ready_tx);
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Text(t) = frame {
                match HubMessage::from_json(t.as_str()) {
                    Ok(HubMessage::Catchup { .. }) => {
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(());
                        }
                    }
                    Ok(HubMessage::Push(notice)) => {
                        let at = Instant::now();
                        // The sha is the push number plus one, in hex.
                        if let Some(n) = usize::from_str_radix(&notice.sha, 16)
                            .ok()
                            .and_then(|n| n.checked_sub(1))
                        {
                            received.lock().unwrap_or_else(|e| e.into_inner())[i].push((n, at));
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    Ok(tokio::spawn(async move {
        ready_rx
            .await
            .context("the agent was lost before its catch-up")
    }))
}

/// A request head that never ends: a header line every few seconds, reopened when the hub cuts it.
async fn slow_loris(addr: String, stop: Arc<AtomicBool>, answers: Arc<Answers>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut s) = TcpStream::connect(&addr).await else {
            answers.count("connect failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let head =
            b"POST /v1/webhooks/generic HTTP/1.1\r\nHost: hub\r\nContent-Length: 1048576\r\n";
        if s.write_all(head).await.is_err() {
            answers.count("closed");
            continue;
        }
        let mut buf = [0u8; 512];
        loop {
            tokio::select! {
                read = s.read(&mut buf) => {
                    answers.count(match read {
                        Ok(0) | Err(_) => "closed by the hub",
                        Ok(_) => "answered, then closed by the hub",
                    });
                    break;
                }
                () = tokio::time::sleep(Duration::from_secs(3)) => {
                    if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                        answers.count("closed by the hub");
                        break;
                    }
                }
            }
        }
    }
}

/// 1 MiB bodies with a wrong signature, one after another on fresh connections.
async fn bad_poster(addr: String, i: usize, stop: Arc<AtomicBool>, answers: Arc<Answers>) {
    let mut body = vec![b' '; BAD_BODY];
    body[..2].copy_from_slice(b"{}");
    let head = format!(
        "POST /v1/webhooks/generic HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n\
         X-Tether-Signature: sha256={}\r\nX-Tether-Delivery: bad-{i}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        "0".repeat(64),
        body.len()
    );
    while !stop.load(Ordering::Relaxed) {
        let status = match TcpStream::connect(&addr).await {
            Ok(s) => exchange(s, head.as_bytes(), &body).await,
            Err(_) => "connect failed".to_string(),
        };
        answers.count(status);
    }
}

/// One signed webhook for [`REPO`] at `sha`; the status as text.
async fn post_real(addr: &str, sha: &str) -> String {
    let body =
        format!(r#"{{"repo_urls":["https://{REPO}.git"],"ref":"refs/heads/main","sha":"{sha}"}}"#);
    let sig = tether_hub::webhook::hmac_sha256_hex(SECRET.as_bytes(), body.as_bytes());
    let head = format!(
        "POST /v1/webhooks/generic HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\n\
         X-Tether-Signature: sha256={sig}\r\nX-Tether-Delivery: {sha}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    );
    match TcpStream::connect(addr).await {
        Ok(s) => exchange(s, head.as_bytes(), body.as_bytes()).await,
        Err(_) => "connect failed".to_string(),
    }
}

/// Write a request, read the answer to the end; its status code, or what went wrong.
async fn exchange(mut s: TcpStream, head: &[u8], body: &[u8]) -> String {
    if s.write_all(head).await.is_err() {
        return "closed".into();
    }
    // The hub may answer (413, 503) before the body is all sent; a failed write is then fine.
    let _ = s.write_all(body).await;
    let mut response = Vec::new();
    match tokio::time::timeout(Duration::from_secs(60), s.read_to_end(&mut response)).await {
        Err(_) => return "no answer in 60 s".into(),
        Ok(Err(_)) if response.is_empty() => return "reset".into(),
        Ok(_) => {}
    }
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .unwrap_or_else(|| "closed".into())
}
