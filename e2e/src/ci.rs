//! CI access as a CI job meets it: the operator's access file (tokens by their SHA-256, the
//! identities they act as), a kubeconfig whose server is the hub's `/k8s-proxy/<agent>` with a
//! bearer token, and a long-running command (`kubectl get -w`, `kubectl wait`) read line by line.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::hub::sha256_hex;

/// One entry of the access file: a token and whom it acts as.
#[derive(Debug, Clone)]
pub struct CiToken {
    pub name: String,
    pub token: String,
    pub user: String,
    pub groups: Vec<String>,
}

impl CiToken {
    /// An entry with a fresh token.
    pub fn new(name: &str, user: &str, groups: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            token: crate::fixtures::unguessable(&format!("ci-{name}")),
            user: user.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Writes the access file for `tokens` to `path` (the tokens as their SHA-256 only).
pub fn write_access_file(path: &Path, tokens: &[CiToken]) -> Result<()> {
    write_access_file_limited(path, tokens, None)
}

/// [`write_access_file`] with `limits.max_requests_per_identity` set when given.
pub fn write_access_file_limited(
    path: &Path,
    tokens: &[CiToken],
    max_requests_per_identity: Option<usize>,
) -> Result<()> {
    let mut text = String::from("# Written by tether-e2e.\n");
    if let Some(n) = max_requests_per_identity {
        let _ = writeln!(text, "limits:\n  max_requests_per_identity: {n}");
    }
    text.push_str("tokens:\n");
    for t in tokens {
        let _ = writeln!(
            text,
            "  - name: {}\n    sha256: \"{}\"\n    user: {:?}\n    groups: {:?}",
            t.name,
            sha256_hex(&t.token)?,
            t.user,
            t.groups
        );
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes a kubeconfig for `server` (`https://<hub>/k8s-proxy/<agent>`) trusting `ca_file`, with
/// `token` as the user's bearer token, and returns its path.
pub fn write_kubeconfig(path: &Path, server: &str, ca_file: &Path, token: &str) -> Result<PathBuf> {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n  - name: hub\n    cluster:\n      server: {server}\n      certificate-authority: {ca}\nusers:\n  - name: ci\n    user:\n      token: {token}\ncontexts:\n  - name: ci\n    context:\n      cluster: hub\n      user: ci\ncurrent-context: ci\n",
        ca = ca_file.display()
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_path_buf())
}

/// A command left running, its stdout read line by line; killed when dropped.
#[derive(Debug)]
pub struct Streaming {
    what: String,
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Streaming {
    /// Starts `cmd` with its stdout piped (stderr goes to `stderr_file`).
    pub fn start(mut cmd: Command, stderr_file: &Path) -> Result<Self> {
        let what = format!("{cmd:?}");
        let stderr = std::fs::File::create(stderr_file)?;
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Self {
            what,
            child,
            lines,
            seen: Vec::new(),
        })
    }

    /// Waits until a line containing `part` is printed, within `within`.
    pub fn wait_for_line(&mut self, part: &str, within: Duration) -> Result<String> {
        let deadline = Instant::now() + within;
        if let Some(line) = self.seen.iter().find(|l| l.contains(part)) {
            return Ok(line.clone());
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(part) {
                        return Ok(line);
                    }
                }
                Err(_) => bail!(
                    "{} printed no line with {part:?} within {within:?}; it printed {:?}",
                    self.what,
                    self.seen
                ),
            }
        }
    }

    /// Waits for the command to exit within `within`; its exit status's success.
    pub fn wait_exit(&mut self, within: Duration) -> Result<bool> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.success());
            }
            if Instant::now() >= deadline {
                bail!("{} did not exit within {within:?}", self.what);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The operator's flags for CI access through `hub` (a TLS hub) with the access file at `access`.
pub fn operator_flags(hub: &crate::hub::Hub, access: &Path) -> Vec<String> {
    vec![
        format!("--hub-url={}", hub.ws_url()),
        format!("--hub-token-file={}", hub.token_file().display()),
        format!("--hub-ca-file={}", hub.ca_file().display()),
        format!("--ci-access={}", access.display()),
    ]
}

/// Waits until `hub` counts one CI tunnel as connected.
pub fn wait_tunnel(hub: &crate::hub::Hub, within: Duration) -> Result<()> {
    crate::wait::wait_until("the CI tunnel open at the hub", within, || {
        let open = crate::http::metric_value(&hub.metrics()?, "tether_hub_tunnels_connected");
        anyhow::ensure!(open == Some(1.0), "tunnels connected: {open:?}");
        Ok(())
    })
}
