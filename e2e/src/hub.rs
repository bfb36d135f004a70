//! The real `tether-hub` as a process: a generated config (agent tokens and their SHA-256, repo globs,
//! webhook secrets in files, a data dir of its own, optionally the Redis that replicas share) on a
//! free loopback port, and what a test does to it: stop, start again on the same data, freeze
//! (SIGSTOP), thaw, kill (SIGKILL), start more replicas of it, and `post-receive` hooks that send it
//! signed forge webhooks with `openssl` and `curl`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use tempfile::TempDir;

use crate::fixtures::unguessable;
use crate::http::{self, http_get};
use crate::process::{Lifetime, Process, free_port, signal, tail};
use crate::tls::TestCa;
use crate::tool;
use crate::wait::{fatal, wait_until};
use crate::workspace::binary;

/// How long the hub may take to answer `/healthz` (and, with Redis, `/readyz`) after it is started.
pub const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The forges whose push webhooks the hooks imitate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    /// `X-Hub-Signature-256: sha256=<hmac>`, `X-GitHub-Event: push`.
    Github,
    /// `X-Gitlab-Token: <secret>`, `X-Gitlab-Event: Push Hook`.
    Gitlab,
    /// `X-Gitea-Signature: <hmac>`, `X-Gitea-Event: push`.
    Gitea,
    /// Tether's own format for plain git hooks: `X-Tether-Signature: sha256=<hmac>`.
    Generic,
}

impl Forge {
    /// Every forge the hub is configured for here.
    pub const ALL: [Forge; 4] = [Forge::Github, Forge::Gitlab, Forge::Gitea, Forge::Generic];

    /// The provider name in the hub's URL and config.
    pub fn name(self) -> &'static str {
        match self {
            Forge::Github => "github",
            Forge::Gitlab => "gitlab",
            Forge::Gitea => "gitea",
            Forge::Generic => "generic",
        }
    }
}

/// One agent the hub admits: its name, its bearer token, the repo globs it may hear about.
#[derive(Debug, Clone)]
pub struct AgentSpec {
    pub name: String,
    pub token: String,
    pub repos: Vec<String>,
}

impl AgentSpec {
    /// An agent with a generated token.
    pub fn new(name: &str, repos: &[&str]) -> Self {
        Self {
            name: name.to_string(),
            token: unguessable(&format!("token-{name}")),
            repos: repos.iter().map(|r| r.to_string()).collect(),
        }
    }
}

/// What a [`Hub`] is started with.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The agents; the first is [`Hub::token_file`]'s default.
    pub agents: Vec<AgentSpec>,
    /// `max_body_bytes` in the config.
    pub max_body_bytes: usize,
    /// Serve HTTPS and `wss://` with a certificate from a test CA of its own (for 127.0.0.1 and
    /// localhost), as CI access needs: kubectl sends a bearer token only over TLS.
    pub tls: bool,
    /// Viewers of the fleet view: name and token.
    pub viewers: Vec<(String, String)>,
    /// The Redis that replicas share (`redis.url`, written to a file the config names): one
    /// `redis://` URL, or with [`HubOptions::redis_cluster`] the node URLs separated by spaces. A hub
    /// started with it returns once `/readyz` answers 200 (Redis reached once).
    pub redis: Option<String>,
    /// `redis.cluster: true`: the URLs are a Redis Cluster's nodes.
    pub redis_cluster: bool,
    /// A peer listener on a port of its own per replica (`peers:`), with a secret every replica
    /// shares, so that CI requests reach a tunnel another replica holds. Needs `redis`.
    pub peers: bool,
    /// `max_tunnel_streams_per_agent` in the config; the hub's default without it.
    pub max_tunnel_streams_per_agent: Option<usize>,
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            agents: vec![AgentSpec::new("e2e", &["**"])],
            max_body_bytes: 64 * 1024,
            tls: false,
            viewers: Vec::new(),
            redis: None,
            redis_cluster: false,
            peers: false,
            max_tunnel_streams_per_agent: None,
        }
    }
}

/// What every replica of one hub shares besides [`HubOptions`]: the webhook secrets and the TLS
/// certificate (PEM: CA, certificate, key).
#[derive(Debug, Clone)]
struct SharedFiles {
    secrets: Vec<(Forge, String)>,
    tls: Option<(String, String, String)>,
    peer_secret: String,
}

impl SharedFiles {
    fn new(options: &HubOptions) -> Result<Self> {
        let secrets = Forge::ALL
            .iter()
            .map(|f| (*f, unguessable(&format!("secret-{}", f.name()))))
            .collect();
        let tls = if options.tls {
            let ca = TestCa::new("tether-e2e-hub-ca")?;
            let server = ca.server("tether-hub", &["localhost"], &[[127, 0, 0, 1].into()])?;
            Some((ca.cert_pem().to_string(), server.cert_pem, server.key_pem))
        } else {
            None
        };
        Ok(Self {
            secrets,
            tls,
            peer_secret: unguessable("peer-secret"),
        })
    }
}

/// A running (or stopped, or frozen) `tether-hub` on `127.0.0.1:PORT`, plain HTTP and `ws://`.
#[derive(Debug)]
pub struct Hub {
    process: Option<Process>,
    port: u16,
    options: HubOptions,
    shared: SharedFiles,
    dir: TempDir,
}

impl Hub {
    /// Starts a hub with one agent allowed every repository.
    pub fn start() -> Result<Self> {
        Self::start_with(HubOptions::default())
    }

    /// Starts a hub with `options`; returns once `/healthz` answers (and `/readyz`, with Redis).
    pub fn start_with(options: HubOptions) -> Result<Self> {
        let shared = SharedFiles::new(&options)?;
        Self::launch(options, shared)
    }

    /// Starts another replica of this hub: the same agents, tokens, webhook secrets, viewers, TLS
    /// certificate and Redis, on a port and a data dir of its own. Its URLs point at itself.
    pub fn replica(&self) -> Result<Hub> {
        Self::launch(self.options.clone(), self.shared.clone())
    }

    fn launch(options: HubOptions, shared: SharedFiles) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("tether-hub-").tempdir()?;
        let port = free_port()?;
        write_config(dir.path(), port, &options, &shared)?;
        let mut hub = Self {
            process: None,
            port,
            options,
            shared,
            dir,
        };
        hub.start_again()?;
        Ok(hub)
    }

    /// Starts the hub again (after [`Hub::stop`]) on the same port, config and data dir; returns once
    /// `/healthz` answers, and with Redis once `/readyz` answers 200. The log is appended to.
    pub fn start_again(&mut self) -> Result<()> {
        if self.process.is_some() {
            bail!("the hub is already running");
        }
        let log = self.log_path();
        let previous = std::fs::read_to_string(&log).unwrap_or_default();
        let _ = std::fs::write(self.dir.path().join("hub.previous.log"), previous);
        let process = Process::spawn_with_env(
            "tether-hub",
            &binary("tether-hub")?,
            &[
                "--config".to_string(),
                self.dir.path().join("hub.yaml").display().to_string(),
            ],
            &log,
            Lifetime::TiedToStarter,
            &[
                ("RUST_LOG", "info,tether_hub=debug".to_string()),
                ("NO_COLOR", "1".to_string()),
                // As the image and the chart run it (hub/Dockerfile).
                ("MALLOC_ARENA_MAX", "2".to_string()),
            ],
        )?;
        self.process = Some(process);
        self.wait_healthy(READY_TIMEOUT)?;
        if self.options.redis.is_some() {
            self.wait_ready(READY_TIMEOUT)?;
        }
        Ok(())
    }

    /// Waits until `/readyz` answers 200 (with Redis: reached at least once since the start),
    /// failing early if the process exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let waited = wait_until("the hub answering /readyz with 200", timeout, || {
            match self.process.as_mut() {
                Some(p) => p.check_running().map_err(fatal)?,
                None => return Err(fatal(anyhow!("the hub is stopped"))),
            }
            let (status, body) = self.readyz()?;
            ensure!(status == 200, "last answer: {status} {}", body.trim());
            Ok(())
        });
        waited.with_context(|| format!("log:\n{}", self.log_tail()))
    }

    /// `GET /readyz`: the status and the body (`ok`, or `degraded: ...` while Redis is away).
    pub fn readyz(&self) -> Result<(u16, String)> {
        if self.options.tls {
            return self.get("/readyz", None);
        }
        http_get(self.port, "/readyz")
    }

    /// Waits until `/healthz` answers `ok`, failing early if the process exits.
    pub fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let port = self.port;
        let ca = self
            .options
            .tls
            .then(|| self.ca_file().display().to_string());
        let process = &mut self.process;
        wait_until("the hub answering /healthz", timeout, || {
            match process.as_mut() {
                Some(p) => p.check_running().map_err(fatal)?,
                None => return Err(fatal(anyhow!("the hub is stopped"))),
            }
            if let Some(ca) = &ca {
                let url = format!("https://127.0.0.1:{port}/healthz");
                let body = tool::run("curl", &["-sS", "-m", "5", "--cacert", ca, &url], None)?;
                ensure!(body.trim() == "ok", "last answer: {body}");
                return Ok(());
            }
            match http_get(port, "/healthz")? {
                (200, body) if body.trim() == "ok" => Ok(()),
                (status, body) => bail!("last answer: {status} {body}"),
            }
        })
        .with_context(|| format!("log:\n{}", self.log_tail()))
    }

    /// Stops the hub (SIGTERM, then SIGKILL after a grace period); its data dir stays.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.process.take() {
            p.stop(Duration::from_secs(5));
        }
    }

    /// Freezes the process (SIGSTOP): its sockets stay open and its kernel still accepts, but it answers
    /// nothing, as a hung host would.
    pub fn freeze(&self) {
        if let Some(p) = &self.process {
            signal(p.pid(), "STOP");
        }
    }

    /// Kills the process at once (SIGKILL), as a crashed host would: no close frame reaches its
    /// agents. Returns once it has exited; [`Hub::start_again`] starts it again.
    pub fn kill(&mut self) -> Result<()> {
        let Some(mut p) = self.process.take() else {
            return Ok(());
        };
        signal(p.pid(), "KILL");
        let exited = wait_until(
            "the hub to exit on SIGKILL",
            Duration::from_secs(10),
            || {
                ensure!(p.check_running().is_err(), "still running");
                Ok(())
            },
        );
        // Reaped either way (stop is a no-op for a process that has exited).
        p.stop(Duration::from_secs(1));
        exited
    }

    /// Lets a frozen hub run again (SIGCONT).
    pub fn thaw(&self) {
        if let Some(p) = &self.process {
            signal(p.pid(), "CONT");
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(Process::pid)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `ws://127.0.0.1:PORT` (`wss://` with TLS), for `--hub-url`.
    pub fn ws_url(&self) -> String {
        let scheme = if self.options.tls { "wss" } else { "ws" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `https://127.0.0.1:PORT` of a hub started with TLS.
    pub fn https_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The test CA that signed a TLS hub's certificate, for `--hub-ca-file` and kubeconfigs.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `http://127.0.0.1:PORT/v1/webhooks/<provider>` (`https://` with TLS).
    pub fn webhook_url(&self, provider: &str) -> String {
        self.webhook_url_at(self.port, provider)
    }

    /// [`Hub::webhook_url`] on another port of 127.0.0.1 (a load balancer in front of replicas).
    pub fn webhook_url_at(&self, port: u16, provider: &str) -> String {
        let scheme = if self.options.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{port}/v1/webhooks/{provider}")
    }

    /// curl's arguments for trusting a TLS hub's CA (none for plain HTTP).
    fn curl_trust(&self) -> Vec<String> {
        if self.options.tls {
            vec!["--cacert".to_string(), self.ca_file().display().to_string()]
        } else {
            Vec::new()
        }
    }

    /// The file holding the first agent's token, for `--hub-token-file`.
    pub fn token_file(&self) -> PathBuf {
        let name = self
            .options
            .agents
            .first()
            .map(|a| a.name.as_str())
            .unwrap_or("e2e");
        self.token_file_of(name)
    }

    /// The file holding the named agent's token.
    pub fn token_file_of(&self, agent: &str) -> PathBuf {
        token_path(self.dir.path(), agent)
    }

    /// A token file with a token the hub does not know.
    pub fn wrong_token_file(&self) -> Result<PathBuf> {
        let path = self.dir.path().join("wrong.token");
        std::fs::write(&path, unguessable("not-a-known-token"))?;
        Ok(path)
    }

    /// The names of the agents connected to this hub now, as its log tells (a connection logged
    /// and not yet its end), sorted.
    pub fn connected_agents(&self) -> Vec<String> {
        let mut open: std::collections::BTreeMap<String, i64> = std::collections::BTreeMap::new();
        for line in self.log().lines() {
            let step = if line.contains("agent connected") {
                1
            } else if line.contains("agent disconnected") {
                -1
            } else {
                continue;
            };
            let name = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("agent="))
                .map(|n| n.trim_matches('"').to_string());
            if let Some(name) = name {
                *open.entry(name).or_default() += step;
            }
        }
        open.into_iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, _)| name)
            .collect()
    }

    /// The webhook secret configured for `forge`.
    pub fn secret(&self, forge: Forge) -> Result<String> {
        let path = secret_path(self.dir.path(), forge);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// `GET <path>` on the hub (HTTPS when it serves TLS), with `Authorization: Bearer <bearer>`
    /// when given: the status and the body. Redirects are not followed.
    pub fn get(&self, path: &str, bearer: Option<&str>) -> Result<(u16, String)> {
        let base = if self.options.tls {
            self.https_url()
        } else {
            format!("http://127.0.0.1:{}", self.port)
        };
        let mut args = vec!["-sS", "-m", "10", "-w", "\n%{http_code}"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>();
        args.extend(self.curl_trust());
        if let Some(token) = bearer {
            args.push("-H".into());
            args.push(format!("Authorization: Bearer {token}"));
        }
        args.push(format!("{base}{path}"));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = tool::run("curl", &refs, None).with_context(|| format!("GET {path}"))?;
        let (body, status) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let status = status
            .trim()
            .parse()
            .with_context(|| format!("GET {path}: no status in {out:?}"))?;
        Ok((status, body.to_string()))
    }

    /// The hub's `/metrics` text.
    pub fn metrics(&self) -> Result<String> {
        if !self.options.tls {
            return http::metrics(self.port).context("the hub's metrics");
        }
        let url = format!("{}/metrics", self.https_url());
        let mut args = vec!["-sS".to_string(), "-m".to_string(), "5".to_string()];
        args.extend(self.curl_trust());
        args.push(url);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tool::run("curl", &refs, None).context("the hub's metrics")
    }

    /// A `post-receive` hook that sends, for every ref pushed, a push webhook in `forge`'s format,
    /// signed with its secret, naming the repository by `clone_urls` (the first as the https URL, the
    /// second, if any, as the ssh URL). Each delivery's HTTP status is appended to
    /// [`Hub::hook_log`]. A hub that is down makes the hook fail quietly, as a forge's delivery would.
    pub fn post_receive_hook(&self, forge: Forge, clone_urls: &[&str]) -> Result<String> {
        let secret_file = secret_path(self.dir.path(), forge);
        let http = clone_urls.first().copied().unwrap_or_default();
        let ssh = clone_urls.get(1).copied().unwrap_or(http);
        // The body is built by printf from the ref line; the values are plain URLs and hex.
        let (body, headers) = match forge {
            Forge::Github => (
                format!(
                    r#"{{"ref":"%s","before":"%s","after":"%s","repository":{{"name":"app","clone_url":"{http}","ssh_url":"{ssh}"}}}}"#
                ),
                r#"-H "X-GitHub-Event: push" -H "X-GitHub-Delivery: $delivery" -H "X-Hub-Signature-256: sha256=$sig""#,
            ),
            Forge::Gitea => (
                format!(
                    r#"{{"ref":"%s","before":"%s","after":"%s","repository":{{"name":"app","clone_url":"{http}","ssh_url":"{ssh}"}}}}"#
                ),
                r#"-H "X-Gitea-Event: push" -H "X-Gitea-Delivery: $delivery" -H "X-Gitea-Signature: $sig""#,
            ),
            Forge::Gitlab => (
                format!(
                    r#"{{"object_kind":"push","ref":"%s","before":"%s","after":"%s","checkout_sha":"$new","project":{{"git_http_url":"{http}","git_ssh_url":"{ssh}"}}}}"#
                ),
                r#"-H "X-Gitlab-Event: Push Hook" -H "X-Gitlab-Event-UUID: $delivery" -H "X-Gitlab-Token: $secret""#,
            ),
            Forge::Generic => (
                format!(r#"{{"repo_urls":["{http}","{ssh}"],"ref":"%s","sha":"%s"}}"#),
                r#"-H "X-Tether-Signature: sha256=$sig""#,
            ),
        };
        // GitLab's body takes the sha twice; printf's arguments follow the placeholders in order.
        let body = body.replace("$new", "%s");
        let args = match forge {
            Forge::Gitlab => r#""$ref" "$old" "$new" "$new""#,
            Forge::Generic => r#""$ref" "$new""#,
            _ => r#""$ref" "$old" "$new""#,
        };
        Ok(format!(
            r#"#!/bin/sh
# Written by tether-e2e: a forge's push webhook, sent to tether-hub.
secret=$(cat '{secret}')
while read old new ref; do
  body=$(printf '{body}' {args})
  sig=$(printf %s "$body" | openssl dgst -sha256 -hmac "$secret" | sed 's/.* //')
  delivery=$(cat /proc/sys/kernel/random/uuid)
  answer=$(curl -s -o /dev/null -m 5 {trust} -w '%{{http_code}} %{{time_total}}' -H 'Content-Type: application/json' {headers} --data-binary "$body" '{url}')
  echo "$ref $new $answer" >> '{log}'
done
exit 0
"#,
            secret = secret_file.display(),
            url = self.webhook_url(forge.name()),
            trust = self
                .curl_trust()
                .iter()
                .map(|a| format!("'{a}'"))
                .collect::<Vec<_>>()
                .join(" "),
            log = self.hook_log().display(),
        ))
    }

    /// Where the hooks record each delivery: `<ref> <sha> <http status> <seconds the POST took>` per line.
    pub fn hook_log(&self) -> PathBuf {
        self.dir.path().join("hook.log")
    }

    /// Posts `body` to `/v1/webhooks/<provider>` with `headers` (`Name: value`) through `curl`;
    /// returns the HTTP status.
    pub fn post_webhook(&self, provider: &str, headers: &[String], body: &[u8]) -> Result<u16> {
        Ok(self.post_webhook_to(self.port, provider, headers, body)?.0)
    }

    /// [`Hub::post_webhook`] to `127.0.0.1:port` (this hub's, another replica's or a load
    /// balancer's): the HTTP status and the body of the answer. A connection that fails or ends
    /// without an answer gives status 0 (as curl prints it), not an error.
    pub fn post_webhook_to(
        &self,
        port: u16,
        provider: &str,
        headers: &[String],
        body: &[u8],
    ) -> Result<(u16, String)> {
        let file = tempfile::NamedTempFile::new_in(self.dir.path())?;
        std::fs::write(file.path(), body)?;
        let mut args = vec![
            "-s".to_string(),
            "-m".to_string(),
            "10".to_string(),
            "-w".to_string(),
            "\n%{http_code}".to_string(),
            "-H".to_string(),
            "Content-Type: application/json".to_string(),
        ];
        args.extend(self.curl_trust());
        for h in headers {
            args.push("-H".to_string());
            args.push(h.clone());
        }
        args.push("--data-binary".to_string());
        args.push(format!("@{}", file.path().display()));
        args.push(self.webhook_url_at(port, provider));
        let mut cmd = std::process::Command::new("curl");
        cmd.args(&args);
        // curl exits non-zero when the connection fails; it still prints the status (000).
        let done = tool::output(&mut cmd, None)?;
        let out = done.stdout;
        let (answer, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let code = code.trim().parse().with_context(|| {
            format!(
                "curl printed {code:?} as the status of POST {} ({})",
                self.webhook_url_at(port, provider),
                done.stderr.trim()
            )
        })?;
        Ok((code, answer.to_string()))
    }

    /// The push webhook GitHub would send for `new` on `git_ref` (`refs/heads/main`) of the
    /// repository cloned from `clone_url`, signed with the hub's GitHub secret: `(headers, body)` for
    /// [`Hub::post_webhook`] with the provider `github`. Made before a push and posted once `git push`
    /// returns, it is what a forge does once a push is done, so that a clock started when `git push`
    /// returns counts the delivery too (a `post-receive` hook delivers before `git push` returns).
    pub fn github_push_webhook(
        &self,
        clone_url: &str,
        git_ref: &str,
        old: &str,
        new: &str,
    ) -> Result<(Vec<String>, String)> {
        let body = serde_json::json!({
            "ref": git_ref,
            "before": old,
            "after": new,
            "repository": {"name": "app", "clone_url": clone_url, "ssh_url": clone_url},
        })
        .to_string();
        let signature = hmac_sha256_hex(&self.secret(Forge::Github)?, &body)?;
        let delivery = crate::fixtures::unguessable("delivery");
        Ok((
            vec![
                "X-GitHub-Event: push".to_string(),
                format!("X-GitHub-Delivery: {delivery}"),
                format!("X-Hub-Signature-256: sha256={signature}"),
            ],
            body,
        ))
    }

    /// The hub's log since it was last started, without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.log_path()).unwrap_or_default())
    }

    /// Waits until at least `count` lines of the current log contain every one of `parts`.
    pub fn wait_for_log(&self, parts: &[&str], count: usize, timeout: Duration) -> Result<()> {
        let what = format!("the hub logging {count} line(s) with {parts:?}");
        wait_until(&what, timeout, || {
            let seen = self
                .log()
                .lines()
                .filter(|line| parts.iter().all(|p| line.contains(p)))
                .count();
            ensure!(seen >= count, "logged {seen}");
            Ok(())
        })
        .with_context(|| format!("log:\n{}", self.log_tail()))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("hub.log")
    }

    /// The last lines of the hub's log, for failure messages.
    pub fn log_tail(&self) -> String {
        strip_ansi(&tail(&self.log_path(), 40))
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        // A frozen process ignores SIGTERM until it runs again.
        self.thaw();
        self.stop();
    }
}

/// Drops `ESC [ ... m` colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Writes `hub.yaml` and the files it names (tokens, secrets, TLS, Redis URL) into `d`.
fn write_config(d: &Path, port: u16, options: &HubOptions, shared: &SharedFiles) -> Result<()> {
    std::fs::create_dir_all(d.join("data"))?;
    let mut config = format!(
        "# Written by tether-e2e for one test hub.\nlisten: \"127.0.0.1:{port}\"\ndata_dir: {}\nmax_body_bytes: {}\n",
        d.join("data").display(),
        options.max_body_bytes
    );
    if let Some(streams) = options.max_tunnel_streams_per_agent {
        let _ = writeln!(config, "max_tunnel_streams_per_agent: {streams}");
    }
    if let Some((ca, cert, key)) = &shared.tls {
        std::fs::write(d.join("ca.pem"), ca)?;
        std::fs::write(d.join("tls.crt"), cert)?;
        std::fs::write(d.join("tls.key"), key)?;
        let _ = writeln!(
            config,
            "tls:\n  cert_file: {}\n  key_file: {}",
            d.join("tls.crt").display(),
            d.join("tls.key").display()
        );
    }
    config.push_str("agents:\n");
    for agent in &options.agents {
        std::fs::write(token_path(d, &agent.name), format!("{}\n", agent.token))?;
        let hash = sha256_hex(&agent.token)?;
        let _ = writeln!(
            config,
            "  - name: {}\n    token_sha256: \"{hash}\"\n    repos: {:?}",
            agent.name, agent.repos
        );
    }
    if !options.viewers.is_empty() {
        config.push_str("viewers:\n");
    }
    for (name, token) in &options.viewers {
        let _ = writeln!(
            config,
            "  - name: {name}\n    token_sha256: \"{}\"",
            sha256_hex(token)?
        );
    }
    if let Some(url) = &options.redis {
        let file = d.join("redis.url");
        std::fs::write(&file, format!("{url}\n"))?;
        let _ = writeln!(
            config,
            "redis:\n  url: {{ file: {} }}\n  cluster: {}",
            file.display(),
            options.redis_cluster
        );
    }
    if options.peers {
        let file = d.join("peer.secret");
        std::fs::write(&file, &shared.peer_secret)?;
        let _ = writeln!(
            config,
            "peers:\n  listen: \"127.0.0.1:{}\"\n  secret: {{ file: {} }}",
            free_port()?,
            file.display()
        );
    }
    config.push_str("webhooks:\n");
    for (forge, value) in &shared.secrets {
        let secret = secret_path(d, *forge);
        std::fs::write(&secret, value)?;
        let _ = writeln!(
            config,
            "  - provider: {}\n    repos: [\"**\"]\n    secret: {{ file: {} }}",
            forge.name(),
            secret.display()
        );
    }
    std::fs::write(d.join("hub.yaml"), config)?;
    Ok(())
}

fn token_path(dir: &Path, agent: &str) -> PathBuf {
    dir.join(format!("{agent}.token"))
}

fn secret_path(dir: &Path, forge: Forge) -> PathBuf {
    dir.join(format!("{}.secret", forge.name()))
}

/// The HMAC-SHA256 of `body` under `secret` as hex, computed by `openssl` as a forge's sender would.
pub fn hmac_sha256_hex(secret: &str, body: &str) -> Result<String> {
    let out = tool::run("openssl", &["dgst", "-sha256", "-hmac", secret], Some(body))?;
    Ok(out.rsplit(' ').next().unwrap_or_default().to_string())
}

/// The SHA-256 of `text` as hex, by `sha256sum` (how the config names a token, and the generic
/// webhook a delivery without an id).
pub fn sha256_hex(text: &str) -> Result<String> {
    let out = tool::run("sha256sum", &[], Some(text))?;
    Ok(out
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string())
}
