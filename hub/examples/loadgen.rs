//! Load generator: N websocket agents from one process against an in-process hub, then one webhook;
//! prints connect time and fan-out latency percentiles (webhook posted → push received by each agent).
//!
//! `cargo run --release -p tether-hub --example loadgen -- 5000` (raise `ulimit -n` above 2×N first).
//! The RSS printed is the whole process (hub and clients together): an upper bound for the hub.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tether_hub::config::{Config, Environment};
use tether_protocol::{AgentMessage, HubMessage, SUBPROTOCOL, normalize};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

struct Env;
impl Environment for Env {
    fn var(&self, name: &str) -> Option<String> {
        (name == "SECRET").then(|| "loadgen-secret".to_string())
    }
}

const REPO: &str = "git.example/bench/app";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args().nth(1).map_or(Ok(1000), |a| a.parse())?;
    let dir = tempfile::tempdir()?;
    let yaml = format!(
        "data_dir: {:?}\nmax_connections: {}\nagents:\n  - name: bench\n    token_sha256: {}\n    repos: ['**']\nwebhooks:\n  - provider: generic\n    repos: ['**']\n    secret: {{ env: SECRET }}\n",
        dir.path(),
        n + 100,
        hex::encode(Sha256::digest(b"bench-token"))
    );
    let config = Config::from_yaml(&yaml, Path::new("loadgen.yaml"), &Env)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let hub = tokio::spawn(tether_hub::run(listener, config, async {
        let _ = stopped.await;
    }));

    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..n {
        let mut req = format!("ws://{addr}/v1/connect").into_client_request()?;
        req.headers_mut()
            .insert("authorization", "Bearer bench-token".parse()?);
        req.headers_mut()
            .insert("sec-websocket-protocol", SUBPROTOCOL.parse()?);
        let (mut ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .context("connecting an agent")?;
        let watch = AgentMessage::Watch {
            repos: vec![normalize(REPO)?],
        };
        ws.send(Message::Text(watch.to_json().into())).await?;
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
                            let _ = tx.send(Instant::now());
                            break;
                        }
                        _ => {}
                    }
                }
            }
        });
    }
    for _ in 0..n {
        ready_rx
            .recv()
            .await
            .context("agent lost before catch-up")?;
    }
    let connect_time = started.elapsed();

    let body = format!(
        r#"{{"repo_urls":["https://{REPO}.git"],"ref":"refs/heads/main","sha":"{}"}}"#,
        "a".repeat(40)
    );
    let sig = tether_hub::webhook::hmac_sha256_hex(b"loadgen-secret", body.as_bytes());
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post("/v1/webhooks/generic")
        .header("host", "hub")
        .header("x-tether-signature", format!("sha256={sig}"))
        .body(Full::new(Bytes::from(body)))?;
    let posted = Instant::now();
    let resp = sender.send_request(req).await?;
    let status = resp.status();
    let _ = resp.into_body().collect().await?;
    if status.as_u16() != 202 {
        bail!("webhook answered {status}");
    }

    let mut latencies = Vec::with_capacity(n);
    while latencies.len() < n {
        match tokio::time::timeout(Duration::from_secs(30), rx.recv()).await {
            Ok(Some(at)) => latencies.push(at.duration_since(posted)),
            _ => bail!("only {} of {n} agents got the push", latencies.len()),
        }
    }
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1)];
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!("agents:        {n}");
    println!("connect+watch: {connect_time:?}");
    println!(
        "fan-out:       p50 {:?}  p95 {:?}  p99 {:?}  max {:?}",
        pct(0.50),
        pct(0.95),
        pct(0.99),
        pct(1.0)
    );
    println!("process {rss} (hub and {n} clients together)");
    let _ = stop.send(());
    hub.await??;
    Ok(())
}
