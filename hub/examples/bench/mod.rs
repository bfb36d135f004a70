//! What the hub's benchmarks share: the real `tether-hub` binary in its own process, its memory, and
//! agents connecting to it.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use futures::SinkExt;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tether_protocol::{AgentMessage, SUBPROTOCOL, normalize};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Kills a child process with the benchmark, however the benchmark ends.
pub struct Reaped(pub Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `tether-hub` process on a free port of 127.0.0.1, with its own data dir.
pub struct HubProcess {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The process id, for its memory.
    pub pid: u32,
    child: Reaped,
    _dir: tempfile::TempDir,
}

impl HubProcess {
    /// Start the hub with `config` (the YAML after `listen` and `data_dir`), the environment `env`
    /// and `RUST_LOG=log`; returns once `/healthz` answers. The binary is the `tether-hub` built beside
    /// the examples (`target/<profile>/tether-hub`), or `TETHER_HUB_BIN`.
    pub async fn start(config: &str, env: &[(&str, &str)], log: &str) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let file = dir.path().join("hub.yaml");
        let data = dir.path().join("data");
        std::fs::write(
            &file,
            format!("listen: {addr:?}\ndata_dir: {data:?}\n{config}"),
        )?;
        let bin = match std::env::var_os("TETHER_HUB_BIN") {
            Some(bin) => PathBuf::from(bin),
            None => std::env::current_exe()?
                .parent()
                .and_then(|examples| examples.parent())
                .context("no directory above this example")?
                .join("tether-hub"),
        };
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&file)
            .envs(env.iter().copied())
            .env("RUST_LOG", log)
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let hub = HubProcess {
            addr,
            pid: child.id(),
            child: Reaped(child),
            _dir: dir,
        };
        hub.wait_healthy().await?;
        Ok(hub)
    }

    async fn wait_healthy(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(stream) = tokio::net::TcpStream::connect(&self.addr).await {
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let req = hyper::Request::get("/healthz")
                    .header("host", "hub")
                    .body(Full::new(Bytes::new()))?;
                if let Ok(resp) = sender.send_request(req).await
                    && resp.status().is_success()
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the hub did not answer /healthz on {} within 30 s",
                    self.addr
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Its resident memory now, KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid)
    }

    /// Its peak resident memory, KiB.
    pub fn peak_rss_kib(&self) -> anyhow::Result<u64> {
        status_kib(self.pid, "VmHWM:")
    }

    /// SIGTERM, then wait for it to exit.
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .status()?;
        if !status.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        Ok(self.child.0.wait()?)
    }
}

/// An agent: a websocket to the hub at `addr` with `token`, its watch of `repo` sent.
pub async fn connect_watching(
    addr: &str,
    token: &str,
    repo: &str,
) -> anyhow::Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
    let mut req = format!("ws://{addr}/v1/connect").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    req.headers_mut()
        .insert("sec-websocket-protocol", SUBPROTOCOL.parse()?);
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("connecting an agent")?;
    let watch = AgentMessage::Watch {
        repos: vec![normalize(repo)?],
    };
    ws.send(Message::Text(watch.to_json().into())).await?;
    Ok(ws)
}

/// A process's resident memory now, KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}
