//! A network namespace that lets nothing in: the operator runs inside it and reaches the API server,
//! the git server and the hub outside only through connections it opens itself.
//!
//! The namespace is joined to the host by a veth pair with addresses of its own (`10.200.N.1` on the
//! host, `10.200.N.2` inside); its nftables input chain drops every new connection that does not come
//! from its own loopback. Services on the host's loopback are reached through `socat` relays: one in the
//! namespace listening on its `127.0.0.1:PORT` and dialling out to `10.200.N.1:PORT`, one on the host
//! listening there and dialling `127.0.0.1:PORT`. So the same URLs and kubeconfig work inside and out,
//! and every connection is opened from the inside. Dropping the value removes everything it made.

use std::net::TcpStream;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::process::{Lifetime, Process};
use crate::wait::wait_until;

/// A network namespace with its veth pair, firewall and relays.
#[derive(Debug)]
pub struct IsolatedNetns {
    name: String,
    host_if: String,
    host_addr: String,
    inner_addr: String,
    relays: Vec<Process>,
    dir: tempfile::TempDir,
}

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip")?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl IsolatedNetns {
    /// Creates the namespace, its link and its firewall.
    pub fn create() -> Result<Self> {
        Self::build(true)
    }

    /// A namespace like [`IsolatedNetns::create`]'s without the firewall: a test host that accepts
    /// connections at [`IsolatedNetns::inner_addr`], for servers that stand in for pods.
    pub fn open() -> Result<Self> {
        Self::build(false)
    }

    fn build(firewall: bool) -> Result<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // Interface names are at most 15 bytes; the pid keeps concurrent runs apart.
        let tag = format!("{}{n}", std::process::id() % 100_000);
        let subnet = 100 + (std::process::id() % 100) as u8 + n as u8;
        let name = format!("tether-{tag}");
        let ns = Self {
            host_if: format!("tt{tag}h"),
            host_addr: format!("10.200.{subnet}.1"),
            inner_addr: format!("10.200.{subnet}.2"),
            name: name.clone(),
            relays: Vec::new(),
            dir: tempfile::Builder::new().prefix("tether-netns-").tempdir()?,
        };
        let inner_if = format!("tt{tag}n");
        ip(&["netns", "add", &name])?;
        ip(&[
            "link",
            "add",
            &ns.host_if,
            "type",
            "veth",
            "peer",
            "name",
            &inner_if,
        ])?;
        ip(&["link", "set", &inner_if, "netns", &name])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/30", ns.host_addr),
            "dev",
            &ns.host_if,
        ])?;
        ip(&["link", "set", &ns.host_if, "up"])?;
        let inside = |args: &[&str]| {
            let mut all = vec!["netns", "exec", &name, "ip"];
            all.extend_from_slice(args);
            ip(&all)
        };
        inside(&[
            "addr",
            "add",
            &format!("{}/30", ns.inner_addr),
            "dev",
            &inner_if,
        ])?;
        inside(&["link", "set", &inner_if, "up"])?;
        inside(&["link", "set", "lo", "up"])?;
        if !firewall {
            return Ok(ns);
        }
        let rules = "table inet tether {\n  chain input {\n    type filter hook input priority filter; policy accept;\n    iifname \"lo\" accept\n    ct state established,related accept\n    ct state new drop\n  }\n}\n";
        let rules_file = ns.dir.path().join("rules.nft");
        std::fs::write(&rules_file, rules)?;
        ip(&[
            "netns",
            "exec",
            &name,
            "nft",
            "-f",
            &rules_file.display().to_string(),
        ])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's own address, as seen from the host.
    pub fn inner_addr(&self) -> &str {
        &self.inner_addr
    }

    /// Makes the host's `127.0.0.1:port` reachable at `127.0.0.1:port` inside, by connections opened
    /// from inside.
    pub fn relay_out(&mut self, port: u16) -> Result<()> {
        let log = self.dir.path().join(format!("relay-{port}.log"));
        let host = Process::spawn(
            "socat (host side)",
            std::path::Path::new("socat"),
            &[
                format!("TCP-LISTEN:{port},bind={},fork,reuseaddr", self.host_addr),
                format!("TCP:127.0.0.1:{port}"),
            ],
            &log,
            Lifetime::TiedToStarter,
        )?;
        self.relays.push(host);
        let inner_log = self.dir.path().join(format!("relay-{port}-inner.log"));
        let inner = Process::spawn(
            "socat (namespace side)",
            std::path::Path::new("ip"),
            &[
                "netns".into(),
                "exec".into(),
                self.name.clone(),
                "socat".into(),
                format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
                format!("TCP:{}:{port}", self.host_addr),
            ],
            &inner_log,
            Lifetime::TiedToStarter,
        )?;
        self.relays.push(inner);
        // Ready once both listeners accept: the host side from the host, the inner one from inside.
        let host_side: std::net::SocketAddr = format!("{}:{port}", self.host_addr).parse()?;
        let probe = format!("exec 3<>/dev/tcp/127.0.0.1/{port}");
        let what = format!("the relay for port {port}");
        wait_until(&what, Duration::from_secs(10), || {
            TcpStream::connect_timeout(&host_side, Duration::from_millis(500))
                .with_context(|| format!("connecting to {host_side} from the host"))?;
            ensure!(
                self.run_inside("bash", &["-c", &probe])?,
                "127.0.0.1:{port} refuses inside the namespace"
            );
            Ok(())
        })
    }

    /// Whether a TCP connection from the host to `inner_addr:port` is accepted within 2 s.
    pub fn accepts_inbound(&self, port: u16) -> bool {
        let addr: std::net::SocketAddr = match format!("{}:{port}", self.inner_addr).parse() {
            Ok(a) => a,
            Err(_) => return false,
        };
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
    }

    /// Runs a command inside the namespace and returns whether it succeeded.
    pub fn run_inside(&self, program: &str, args: &[&str]) -> Result<bool> {
        let status = Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()?
            .status;
        Ok(status.success())
    }
}

impl Drop for IsolatedNetns {
    fn drop(&mut self) {
        for relay in &mut self.relays {
            relay.stop(Duration::from_secs(2));
        }
        let _ = ip(&["netns", "del", &self.name]);
        let _ = ip(&["link", "del", &self.host_if]);
    }
}
