//! HAProxy as the load balancer in front of hub replicas: a `mode tcp` frontend on a free loopback
//! port (websockets and webhooks pass through untouched), a backend that checks each replica's
//! `/readyz` every 500 ms, and a stats page from which a test reads which backends are up.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

use crate::http::http_get;
use crate::process::{Lifetime, Process, free_port, tail};
use crate::wait::{fatal, wait_until};

/// How long HAProxy may take to accept on its frontend after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How a [`Haproxy`] is set up besides its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HaproxyOptions {
    /// The backends serve TLS: the health checks speak it (the connections pass through as they are).
    pub tls: bool,
    /// Connections held at once (HAProxy needs two sockets per connection).
    pub maxconn: usize,
    /// A log line per connection, naming the server it went to; off, only errors are logged.
    pub log_connections: bool,
}

impl Default for HaproxyOptions {
    fn default() -> Self {
        Self {
            tls: false,
            maxconn: 512,
            log_connections: true,
        }
    }
}

/// A running `haproxy -db` tied to the test; stopped on drop.
#[derive(Debug)]
pub struct Haproxy {
    process: Process,
    port: u16,
    stats_port: u16,
    dir: TempDir,
}

impl Haproxy {
    /// Balances TCP connections round-robin over the `backends` (ports on 127.0.0.1), each checked by
    /// `GET /readyz` (200 expected) every 500 ms, out after 2 failures and back after 1 success; a
    /// connection that cannot reach its server is dispatched to another. Returns once the frontend
    /// accepts TCP.
    pub fn start(backends: &[u16]) -> Result<Self> {
        Self::start_with(backends, HaproxyOptions::default())
    }

    /// [`Haproxy::start`] for backends that serve TLS: the connections still pass through as they
    /// are, and the health checks speak TLS (without verifying the test certificate).
    pub fn start_tls(backends: &[u16]) -> Result<Self> {
        Self::start_with(
            backends,
            HaproxyOptions {
                tls: true,
                ..HaproxyOptions::default()
            },
        )
    }

    /// [`Haproxy::start`] with `options`.
    pub fn start_with(backends: &[u16], options: HaproxyOptions) -> Result<Self> {
        ensure!(
            !backends.is_empty(),
            "HAProxy needs at least one backend port"
        );
        let dir = tempfile::Builder::new()
            .prefix("tether-haproxy-")
            .tempdir()?;
        let d = dir.path();
        let port = free_port()?;
        let stats_port = free_port()?;
        let mut lines = vec![
            "# Written by tether-e2e: a load balancer in front of tether-hub replicas.".to_string(),
            "global".into(),
            if options.log_connections {
                "  log stderr format raw local0 info".into()
            } else {
                "  log stderr format raw local0 notice".into()
            },
            format!("  maxconn {}", options.maxconn),
            "defaults".into(),
            "  mode tcp".into(),
            "  log global".into(),
            format!("  maxconn {}", options.maxconn),
            "  option tcplog".into(),
            "  option redispatch".into(),
            "  retries 3".into(),
            "  timeout connect 1s".into(),
            "  timeout client 1h".into(),
            "  timeout server 1h".into(),
            "  timeout tunnel 1h".into(),
            "  timeout check 1s".into(),
            "frontend hub".into(),
            format!("  bind 127.0.0.1:{port}"),
            "  default_backend replicas".into(),
            "frontend stats".into(),
            "  mode http".into(),
            "  no log".into(),
            format!("  bind 127.0.0.1:{stats_port}"),
            "  timeout client 10s".into(),
            "  stats enable".into(),
            "  stats uri /stats".into(),
            "backend replicas".into(),
            "  balance roundrobin".into(),
            "  option httpchk GET /readyz".into(),
            "  http-check expect status 200".into(),
            "  default-server inter 500ms fall 2 rise 1".into(),
        ];
        for (i, backend) in backends.iter().enumerate() {
            let ssl = if options.tls {
                " check-ssl verify none"
            } else {
                ""
            };
            lines.push(format!(
                "  server replica{i} 127.0.0.1:{backend} check{ssl}"
            ));
        }
        lines.push(String::new());
        let cfg = d.join("haproxy.cfg");
        std::fs::write(&cfg, lines.join("\n"))?;
        let log = d.join("haproxy.log");
        let mut process = Process::spawn(
            "haproxy",
            Path::new("haproxy"),
            &[
                "-f".to_string(),
                cfg.display().to_string(),
                "-db".to_string(),
            ],
            &log,
            Lifetime::TiedToStarter,
        )?;
        wait_until(
            &format!("HAProxy accepting on 127.0.0.1:{port}"),
            READY_TIMEOUT,
            || {
                process.check_running().map_err(fatal)?;
                TcpStream::connect(("127.0.0.1", port))
                    .with_context(|| format!("connecting to 127.0.0.1:{port}"))
            },
        )
        .with_context(|| format!("haproxy log:\n{}", tail(&log, 30)))?;
        Ok(Self {
            process,
            port,
            stats_port,
            dir,
        })
    }

    /// The process id, for its CPU time and memory.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The frontend's port: dial `ws://127.0.0.1:PORT` and post webhooks there.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The status HAProxy gives each backend server (`UP`, `DOWN`, `UP 1/2`...), in config order.
    pub fn backend_states(&self) -> Result<Vec<String>> {
        let (status, csv) = http_get(self.stats_port, "/stats;csv")?;
        ensure!(status == 200, "HAProxy's stats answered {status}: {csv}");
        let mut lines = csv.lines();
        let header = lines
            .next()
            .context("HAProxy's stats CSV is empty")?
            .trim_start_matches("# ");
        let column = |name: &str| {
            header
                .split(',')
                .position(|c| c == name)
                .with_context(|| format!("no {name} column in HAProxy's stats: {header}"))
        };
        let (px, sv, st) = (column("pxname")?, column("svname")?, column("status")?);
        Ok(lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|f| {
                f.get(px) == Some(&"replicas")
                    && !matches!(f.get(sv), Some(&"BACKEND") | Some(&"FRONTEND") | None)
            })
            .map(|f| f.get(st).copied().unwrap_or_default().to_string())
            .collect())
    }

    /// Waits until HAProxy's checks count exactly the backends flagged `true` in `up` as up.
    pub fn wait_backends(&self, up: &[bool], timeout: Duration) -> Result<()> {
        wait_until("HAProxy's backend states", timeout, || {
            let states = self.backend_states()?;
            ensure!(
                states.len() == up.len(),
                "{} backends listed: {states:?}",
                states.len()
            );
            for (state, want) in states.iter().zip(up) {
                if state.starts_with("UP") != *want || state.contains('/') {
                    bail!("states: {states:?}, wanted up: {up:?}");
                }
            }
            Ok(())
        })
        .with_context(|| format!("haproxy log:\n{}", self.log_tail()))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("haproxy.log")
    }

    /// The last lines of HAProxy's log (one line per connection, with the server it went to).
    pub fn log_tail(&self) -> String {
        tail(&self.log_path(), 30)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        self.process.stop(Duration::from_secs(2));
    }
}
