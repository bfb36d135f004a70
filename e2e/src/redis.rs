//! Redis as the hub replicas share it: one `redis-server` on a free loopback port without
//! persistence (stopped and started again on the same port, optionally behind a password), and a
//! Redis Cluster of three masters made by `redis-cli --cluster create`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use tempfile::TempDir;

use crate::process::{Lifetime, Process, free_port, tail};
use crate::tool;
use crate::wait::{fatal, wait_until};

/// How long a `redis-server` may take to answer `PING`, and a new cluster to say `cluster_state:ok`.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// One `redis-server` on `127.0.0.1:PORT` with its own folder; stopped on drop.
#[derive(Debug)]
pub struct RedisServer {
    process: Option<Process>,
    port: u16,
    password: Option<String>,
    /// Extra `redis-server` arguments (the cluster's).
    extra: Vec<String>,
    dir: TempDir,
}

impl RedisServer {
    /// Starts a `redis-server` that keeps nothing on disk; returns once it answers `PING`.
    pub fn start() -> Result<Self> {
        Self::launch(None, Vec::new())
    }

    /// [`RedisServer::start`], requiring `password` (`--requirepass`); [`RedisServer::url`] carries it.
    pub fn start_with_password(password: &str) -> Result<Self> {
        Self::launch(Some(password.to_string()), Vec::new())
    }

    fn launch(password: Option<String>, extra: Vec<String>) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-redis-").tempdir()?;
        let mut server = Self {
            process: None,
            port: free_port()?,
            password,
            extra,
            dir,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server again (after [`RedisServer::stop`]) on the same port, empty (nothing is
    /// persisted); returns once it answers `PING`.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("redis-server on port {} is already running", self.port);
        }
        let d = self.dir.path();
        let mut args: Vec<String> = [
            "--port",
            &self.port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            &d.display().to_string(),
            "--logfile",
            &self.log_path().display().to_string(),
        ]
        .into_iter()
        .map(String::from)
        .collect();
        if let Some(password) = &self.password {
            args.push("--requirepass".into());
            args.push(password.clone());
        }
        args.extend(self.extra.iter().cloned());
        let process = Process::spawn(
            "redis-server",
            Path::new("redis-server"),
            &args,
            &d.join("stdout.log"),
            Lifetime::TiedToStarter,
        )?;
        self.process = Some(process);
        self.wait_answering(READY_TIMEOUT)
    }

    /// Waits until `redis-cli ping` answers `PONG`, failing early if the process exits.
    pub fn wait_answering(&mut self, timeout: Duration) -> Result<()> {
        let what = format!("redis-server on 127.0.0.1:{} answering PING", self.port);
        let cli = self.cli_args();
        let process = &mut self.process;
        wait_until(&what, timeout, || {
            match process.as_mut() {
                Some(p) => p.check_running().map_err(fatal)?,
                None => return Err(fatal(anyhow::anyhow!("redis-server is stopped"))),
            }
            let mut args: Vec<&str> = cli.iter().map(String::as_str).collect();
            args.push("ping");
            let answer = tool::run("redis-cli", &args, None)?;
            ensure!(answer == "PONG", "redis-cli ping printed {answer:?}");
            Ok(())
        })
        .with_context(|| format!("redis log:\n{}", self.log_tail()))
    }

    /// `redis-cli`'s arguments for this server: its port, and its password when it has one.
    fn cli_args(&self) -> Vec<String> {
        let mut args = vec!["-p".to_string(), self.port.to_string()];
        if let Some(password) = &self.password {
            args.extend(["-a".into(), password.clone(), "--no-auth-warning".into()]);
        }
        args
    }

    /// Runs `redis-cli <args>` against this server; its output, trimmed.
    pub fn cli(&self, args: &[&str]) -> Result<String> {
        let mut all: Vec<String> = self.cli_args();
        all.extend(args.iter().map(|a| a.to_string()));
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        tool::run("redis-cli", &refs, None)
    }

    /// Stops the server (SIGTERM, then SIGKILL after a grace period) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`, or `redis://:<password>@127.0.0.1:PORT` with a password.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@127.0.0.1:{}", self.port),
            None => format!("redis://127.0.0.1:{}", self.port),
        }
    }

    /// The server's folder (its cluster's `nodes.conf` is there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("redis.log")
    }

    /// The last lines of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let mut out = tail(&self.log_path(), 30);
        let stdout = tail(&self.dir.path().join("stdout.log"), 10);
        if !stdout.is_empty() {
            out.push_str("\nstdout/stderr:\n");
            out.push_str(&stdout);
        }
        out
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A Redis Cluster of masters without replicas, each a [`RedisServer`] on loopback.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `masters` (at least 3) cluster-enabled servers, joins them with `redis-cli --cluster
    /// create` (the slots split between them) and returns once every node says `cluster_state:ok`.
    pub fn start(masters: usize) -> Result<Self> {
        ensure!(
            masters >= 3,
            "a Redis Cluster needs at least 3 masters; asked for {masters}"
        );
        let mut ports = free_ports(2 * masters)?.into_iter();
        let mut nodes = Vec::with_capacity(masters);
        for _ in 0..masters {
            let dir = tempfile::Builder::new()
                .prefix("tether-redis-node-")
                .tempdir()?;
            // The cluster bus gets a port of its own: port + 10000 may be past 65535 or taken.
            let extra = vec![
                "--cluster-enabled".to_string(),
                "yes".to_string(),
                "--cluster-config-file".to_string(),
                dir.path().join("nodes.conf").display().to_string(),
                "--cluster-port".to_string(),
                ports
                    .next()
                    .context("no cluster bus port left")?
                    .to_string(),
                "--cluster-node-timeout".to_string(),
                "5000".to_string(),
            ];
            let mut node = RedisServer {
                process: None,
                port: ports.next().context("no node port left")?,
                password: None,
                extra,
                dir,
            };
            node.start_again()?;
            nodes.push(node);
        }
        let cluster = Self { nodes };
        let addresses: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(addresses.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "0", "--cluster-yes"]);
        tool::run("redis-cli", &args, None)
            .with_context(|| format!("creating a Redis Cluster of {}", addresses.join(" ")))?;
        cluster.wait_ok()?;
        Ok(cluster)
    }

    /// Stops every node (their cluster configuration stays in their folders).
    pub fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop();
        }
    }

    /// Starts every node again on its port (empty: nothing is persisted but the cluster's own
    /// configuration) and returns once every node says `cluster_state:ok`.
    pub fn start_again(&mut self) -> Result<()> {
        for node in &mut self.nodes {
            node.start_again()?;
        }
        self.wait_ok()
    }

    fn wait_ok(&self) -> Result<()> {
        for node in &self.nodes {
            wait_until(
                &format!("cluster_state:ok on 127.0.0.1:{}", node.port),
                READY_TIMEOUT,
                || {
                    let info = node.cli(&["cluster", "info"])?;
                    ensure!(
                        info.lines().any(|l| l.trim() == "cluster_state:ok"),
                        "cluster info:\n{info}"
                    );
                    Ok(())
                },
            )
            .with_context(|| format!("node log:\n{}", node.log_tail()))?;
        }
        Ok(())
    }

    /// Every node's `redis://127.0.0.1:PORT`, joined by spaces (the hub's `redis.url` with
    /// `cluster: true`).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(RedisServer::url)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The nodes, in the order they were created.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The last lines of every node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("node 127.0.0.1:{}:\n{}", n.port, n.log_tail()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `count` distinct free loopback ports: each listener is held until all are taken.
fn free_ports(count: usize) -> Result<Vec<u16>> {
    let listeners = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_with_a_password_answers_only_with_it_and_starts_again_on_its_port() -> Result<()> {
        let mut server = RedisServer::start_with_password("e2e-password")?;
        let port = server.port();
        assert_eq!(
            server.url(),
            format!("redis://:e2e-password@127.0.0.1:{port}")
        );
        server.cli(&["set", "k", "v"])?;
        let anonymous = tool::run("redis-cli", &["-p", &port.to_string(), "get", "k"], None)?;
        assert!(anonymous.contains("NOAUTH"), "{anonymous}");
        server.stop();
        assert!(server.cli(&["ping"]).is_err(), "a stopped server answered");
        server.start_again()?;
        assert_eq!(server.port(), port);
        // Nothing is persisted: the server comes back empty.
        assert_eq!(server.cli(&["get", "k"])?, "");
        Ok(())
    }
}
