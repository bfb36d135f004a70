//! The hub's configuration file: what it reads, how it is checked, and the secrets it resolves.
//!
//! The file is YAML (see `hub/examples/hub.yaml` and `docs/hub.md`). Secrets are never written in it:
//! each names a file or an environment variable, read once at start-up. [`Config::load`] reports every
//! problem at once, each naming the field (`agents[1].token_sha256: ...`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::globs::RepoGlobs;
use crate::limits::{Limits, MAX_TUNNEL_STREAMS_PER_AGENT, MIN_HEADER_BYTES, parse_duration};
use crate::secret::{Environment, ProcessEnv, Secret, SecretSource};
use crate::webhook::Provider;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    listen: Option<String>,
    tls: Option<RawTls>,
    data_dir: Option<PathBuf>,
    max_body_bytes: Option<usize>,
    max_body_bytes_in_flight: Option<usize>,
    max_header_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_connections_per_agent: Option<usize>,
    max_agent_message_bytes: Option<usize>,
    max_watched_repos: Option<usize>,
    watch_update_burst: Option<u32>,
    watch_update_interval: Option<String>,
    max_echo_bytes: Option<usize>,
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    max_tunnel_streams_per_agent: Option<usize>,
    tunnel_wait: Option<String>,
    max_fleet_records_per_agent: Option<usize>,
    #[serde(default)]
    agents: Vec<RawAgent>,
    #[serde(default)]
    viewers: Vec<RawViewer>,
    redis: Option<RawRedis>,
    peers: Option<RawPeers>,
    #[serde(default)]
    webhooks: Vec<RawWebhook>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_file: PathBuf,
    key_file: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAgent {
    name: String,
    token_sha256: String,
    #[serde(default)]
    repos: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRedis {
    url: RawSecretSource,
    #[serde(default)]
    cluster: bool,
    key_prefix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    listen: String,
    advertise: Option<String>,
    secret: RawSecretSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawViewer {
    name: String,
    token_sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWebhook {
    provider: String,
    #[serde(default)]
    repos: Vec<String>,
    secret: RawSecretSource,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSecretSource {
    file: Option<PathBuf>,
    env: Option<String>,
}

/// An agent allowed to connect.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// A name for logs and errors.
    pub name: String,
    /// SHA-256 of the agent's bearer token.
    pub token_sha256: [u8; 32],
    /// The repositories it may hear about.
    pub repos: RepoGlobs,
}

/// A webhook secret for one provider and a set of repositories.
#[derive(Debug, Clone)]
pub struct WebhookSecret {
    /// The forge this secret verifies.
    pub provider: Provider,
    /// The repositories a delivery verified by this secret may notify.
    pub repos: RepoGlobs,
    /// The secret value.
    pub secret: Secret,
}

/// The Redis that several replicas share.
#[derive(Clone)]
pub struct RedisConfig {
    /// The URL (`redis://`, `rediss://` for TLS, a password in its user info), or with `cluster` one
    /// or more node URLs separated by spaces, commas or newlines. Secret: never printed.
    url: Secret,
    /// Redis Cluster rather than one server (or a primary behind one address).
    pub cluster: bool,
    /// Put before every key and channel name (`tether:`), so that hubs can share a Redis.
    pub key_prefix: String,
}

impl RedisConfig {
    /// The URLs.
    pub(crate) fn urls(&self) -> Vec<String> {
        split_urls(&String::from_utf8_lossy(self.url.expose()))
    }
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &"<redacted>")
            .field("cluster", &self.cluster)
            .field("key_prefix", &self.key_prefix)
            .finish()
    }
}

fn split_urls(text: &str) -> Vec<String> {
    text.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The private listener replicas forward CI requests to each other on.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// Where this replica listens for the others (plain HTTP; keep it inside the cluster network).
    pub listen: SocketAddr,
    /// The `host:port` the others reach it at (env `TETHER_HUB_PEER_ADVERTISE` overrides, e.g.
    /// `$(POD_IP):8444` in a pod); `listen` when not given.
    pub advertise: String,
    /// The secret every replica's forwarded requests carry.
    pub secret: Secret,
}

/// TLS certificate and key files (PEM).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// The validated configuration, secrets resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where to listen.
    pub listen: SocketAddr,
    /// TLS, if the hub terminates it itself.
    pub tls: Option<TlsFiles>,
    /// Where the store lives.
    pub data_dir: PathBuf,
    /// What one client may make the hub hold.
    pub limits: Limits,
    /// The agents.
    pub agents: Vec<AgentConfig>,
    /// The webhook secrets.
    pub webhooks: Vec<WebhookSecret>,
    /// Who may read the fleet view.
    pub(crate) viewers: Vec<crate::fleet::ViewerConfig>,
    /// The Redis shared with other replicas; without it, this hub is the only one.
    pub redis: Option<RedisConfig>,
    /// The peer listener, for CI requests that reach a replica without the agent's tunnel.
    pub peers: Option<PeerConfig>,
}

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid YAML for this schema.
    #[error("config file {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The YAML error, with its line and column.
        #[source]
        source: serde_yaml_ng::Error,
    },
    /// The file parsed but some fields are wrong.
    #[error("config file {path} has {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The file.
        path: PathBuf,
        /// One line per problem, each naming its field.
        problems: Vec<String>,
    },
}

impl ConfigError {
    /// A short fixed name for metrics and logs.
    pub fn category(&self) -> &'static str {
        match self {
            ConfigError::Read { .. } => "config_read",
            ConfigError::Parse { .. } => "config_parse",
            ConfigError::Invalid { .. } => "config_invalid",
        }
    }
}

impl Config {
    /// Read, parse and validate a config file, resolving secrets from files and the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_yaml(&text, path, &ProcessEnv)
    }

    /// Parse and validate config text. `path` is used in messages and to resolve relative file paths.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: &dyn Environment,
    ) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            serde_yaml_ng::from_str(text).map_err(|source| ConfigError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut problems = Vec::new();

        let listen_text = raw.listen.as_deref().unwrap_or("0.0.0.0:8443");
        let listen = listen_text.parse().unwrap_or_else(|_| {
            problems.push(format!(
                "listen: {listen_text:?} is not an address like 0.0.0.0:8443"
            ));
            SocketAddr::from(([0, 0, 0, 0], 8443))
        });

        let tls = raw.tls.map(|t| {
            let cert_file = relative_to(base, &t.cert_file);
            let key_file = relative_to(base, &t.key_file);
            if !cert_file.is_file() {
                problems.push(format!(
                    "tls.cert_file: {} does not exist or is not a file",
                    cert_file.display()
                ));
            }
            if !key_file.is_file() {
                problems.push(format!(
                    "tls.key_file: {} does not exist or is not a file",
                    key_file.display()
                ));
            }
            TlsFiles {
                cert_file,
                key_file,
            }
        });

        let data_dir = match raw.data_dir {
            Some(d) => relative_to(base, &d),
            None => {
                problems.push(
                    "data_dir: missing; the hub keeps the latest sha per repository there".into(),
                );
                PathBuf::new()
            }
        };

        let d = Limits::default();
        let mut f = Fields(&mut problems);
        let limits = Limits {
            max_body_bytes: f.positive("max_body_bytes", raw.max_body_bytes, d.max_body_bytes),
            max_body_bytes_in_flight: f.positive(
                "max_body_bytes_in_flight",
                raw.max_body_bytes_in_flight,
                d.max_body_bytes_in_flight,
            ),
            max_header_bytes: f.at_least(
                "max_header_bytes",
                raw.max_header_bytes,
                MIN_HEADER_BYTES,
                d.max_header_bytes,
            ),
            max_connections: f.positive("max_connections", raw.max_connections, d.max_connections),
            max_watched_repos: f.positive(
                "max_watched_repos",
                raw.max_watched_repos,
                d.max_watched_repos,
            ),
            max_connections_per_agent: f.positive(
                "max_connections_per_agent",
                raw.max_connections_per_agent,
                d.max_connections_per_agent,
            ),
            max_agent_message_bytes: f.positive(
                "max_agent_message_bytes",
                raw.max_agent_message_bytes,
                d.max_agent_message_bytes,
            ),
            watch_update_burst: f.positive(
                "watch_update_burst",
                raw.watch_update_burst,
                d.watch_update_burst,
            ),
            watch_update_interval: f.duration(
                "watch_update_interval",
                raw.watch_update_interval,
                d.watch_update_interval,
            ),
            max_echo_bytes: f.positive("max_echo_bytes", raw.max_echo_bytes, d.max_echo_bytes),
            header_read_timeout: f.duration(
                "header_read_timeout",
                raw.header_read_timeout,
                d.header_read_timeout,
            ),
            body_read_timeout: f.duration(
                "body_read_timeout",
                raw.body_read_timeout,
                d.body_read_timeout,
            ),
            idle_timeout: f.duration("idle_timeout", raw.idle_timeout, d.idle_timeout),
            max_tunnel_streams_per_agent: f.positive(
                "max_tunnel_streams_per_agent",
                raw.max_tunnel_streams_per_agent,
                d.max_tunnel_streams_per_agent,
            ),
            tunnel_wait: f.duration("tunnel_wait", raw.tunnel_wait, d.tunnel_wait),
            max_fleet_records_per_agent: f.positive(
                "max_fleet_records_per_agent",
                raw.max_fleet_records_per_agent,
                d.max_fleet_records_per_agent,
            ),
        };
        if limits.max_tunnel_streams_per_agent > MAX_TUNNEL_STREAMS_PER_AGENT {
            problems.push(format!(
                "max_tunnel_streams_per_agent: {} is above the tunnel's limit; at most {MAX_TUNNEL_STREAMS_PER_AGENT}",
                limits.max_tunnel_streams_per_agent
            ));
        }
        if limits.max_body_bytes_in_flight < limits.max_body_bytes {
            problems.push(format!(
                "max_body_bytes_in_flight: {} is less than max_body_bytes ({}); no body that large could be read",
                limits.max_body_bytes_in_flight, limits.max_body_bytes
            ));
        }
        if limits.max_body_bytes_in_flight > tokio::sync::Semaphore::MAX_PERMITS {
            problems.push(format!(
                "max_body_bytes_in_flight: at most {}",
                tokio::sync::Semaphore::MAX_PERMITS
            ));
        }

        let mut agents = Vec::new();
        // Sets, not scans: a hub may know ten thousand agents.
        let mut names = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for (i, a) in raw.agents.into_iter().enumerate() {
            let field = format!("agents[{i}]");
            if a.name.trim().is_empty() {
                problems.push(format!("{field}.name: empty"));
            }
            if !names.insert(a.name.clone()) {
                problems.push(format!("{field}.name: {:?} is used twice", a.name));
            }
            let token_sha256 = match parse_sha256(&a.token_sha256) {
                Some(h) => h,
                None => {
                    problems.push(format!(
                        "{field}.token_sha256: expected 64 hex characters (sha256sum of the token), got {} characters",
                        a.token_sha256.trim().len()
                    ));
                    [0; 32]
                }
            };
            if !hashes.insert(token_sha256) && token_sha256 != [0; 32] {
                problems.push(format!(
                    "{field}.token_sha256: the same token hash is given to another agent"
                ));
            }
            if a.repos.is_empty() {
                problems.push(format!(
                    "{field}.repos: empty; list the repository globs this agent may hear about (e.g. \"github.com/acme/**\")"
                ));
            }
            let repos = globs(&a.repos, &format!("{field}.repos"), &mut problems);
            agents.push(AgentConfig {
                name: a.name,
                token_sha256,
                repos,
            });
        }

        let mut viewers: Vec<crate::fleet::ViewerConfig> = Vec::new();
        for (i, v) in raw.viewers.into_iter().enumerate() {
            let field = format!("viewers[{i}]");
            if v.name.trim().is_empty() {
                problems.push(format!("{field}.name: empty"));
            }
            if viewers.iter().any(|x| x.name == v.name) {
                problems.push(format!("{field}.name: {:?} is used twice", v.name));
            }
            let Some(token_sha256) = parse_sha256(&v.token_sha256) else {
                problems.push(format!(
                    "{field}.token_sha256: expected 64 hex characters (sha256sum of the token), got {} characters",
                    v.token_sha256.trim().len()
                ));
                continue;
            };
            if hashes.contains(&token_sha256) {
                problems.push(format!(
                    "{field}.token_sha256: the same token hash is an agent's; a viewer needs its own token"
                ));
            }
            viewers.push(crate::fleet::ViewerConfig {
                name: v.name,
                token_sha256,
            });
        }

        let mut webhooks = Vec::new();
        for (i, w) in raw.webhooks.into_iter().enumerate() {
            let field = format!("webhooks[{i}]");
            let provider = match w.provider.parse::<Provider>() {
                Ok(p) => p,
                Err(()) => {
                    problems.push(format!(
                        "{field}.provider: {:?} is not one of {}",
                        w.provider,
                        Provider::ALL.map(Provider::name).join(", ")
                    ));
                    continue;
                }
            };
            if w.repos.is_empty() {
                problems.push(format!(
                    "{field}.repos: empty; list the repository globs this secret covers (\"**\" for all)"
                ));
            }
            let repos = globs(&w.repos, &format!("{field}.repos"), &mut problems);
            let source = match (&w.secret.file, &w.secret.env) {
                (Some(file), None) => Some(SecretSource::File(relative_to(base, file))),
                (None, Some(name)) => Some(SecretSource::Env(name.clone())),
                _ => {
                    problems.push(format!(
                        "{field}.secret: give exactly one of `file` (a path) or `env` (a variable name); secrets are never written inline"
                    ));
                    None
                }
            };
            let secret = source.and_then(|source| match source.read(env) {
                Ok(secret) => Some(secret),
                Err(e) => {
                    problems.push(format!("{field}.secret.{}: {e}", source.field()));
                    None
                }
            });
            if let Some(secret) = secret {
                if secret.expose().is_empty() {
                    problems.push(format!("{field}.secret: the secret is empty"));
                }
                webhooks.push(WebhookSecret {
                    provider,
                    repos,
                    secret,
                });
            }
        }

        let redis = raw.redis.and_then(|r| {
            let source = match (&r.url.file, &r.url.env) {
                (Some(file), None) => SecretSource::File(relative_to(base, file)),
                (None, Some(name)) => SecretSource::Env(name.clone()),
                _ => {
                    problems.push(
                        "redis.url: give exactly one of `file` (a path) or `env` (a variable name); the URL may hold a password, so it is never written inline".into(),
                    );
                    return None;
                }
            };
            let url = match source.read(env) {
                Ok(url) => url,
                Err(e) => {
                    problems.push(format!("redis.url.{}: {e}", source.field()));
                    return None;
                }
            };
            let urls = split_urls(&String::from_utf8_lossy(url.expose()));
            if urls.is_empty() {
                problems.push("redis.url: empty; give a redis:// or rediss:// URL".into());
            }
            if urls.len() > 1 && !r.cluster {
                problems.push(format!(
                    "redis.url: {} URLs given; several are for a Redis Cluster (set redis.cluster: true), one otherwise",
                    urls.len()
                ));
            }
            for (i, u) in urls.iter().enumerate() {
                if let Err(e) = redis::IntoConnectionInfo::into_connection_info(u.as_str()) {
                    // The URL may hold a password: name it by position, not by text.
                    problems.push(format!(
                        "redis.url: URL {} of {} is not a redis:// or rediss:// URL ({:?})",
                        i + 1,
                        urls.len(),
                        e.kind()
                    ));
                }
            }
            let key_prefix = r.key_prefix.unwrap_or_else(|| "tether:".into());
            Some(RedisConfig {
                url,
                cluster: r.cluster,
                key_prefix,
            })
        });

        let peers = raw.peers.and_then(|p| {
            if redis.is_none() {
                problems.push(
                    "peers: needs redis: replicas find which one holds an agent's tunnel there".into(),
                );
            }
            let listen = match p.listen.parse::<SocketAddr>() {
                Ok(a) => a,
                Err(_) => {
                    problems.push(format!(
                        "peers.listen: {:?} is not an address like 0.0.0.0:8444",
                        p.listen
                    ));
                    return None;
                }
            };
            let advertise = env
                .var("TETHER_HUB_PEER_ADVERTISE")
                .filter(|a| !a.trim().is_empty())
                .or(p.advertise)
                .unwrap_or_else(|| listen.to_string());
            if listen.ip().is_unspecified() && advertise == listen.to_string() {
                problems.push(format!(
                    "peers.advertise: missing; the others cannot reach {listen}: give this replica's own address (or set TETHER_HUB_PEER_ADVERTISE)"
                ));
            }
            let source = match (&p.secret.file, &p.secret.env) {
                (Some(file), None) => SecretSource::File(relative_to(base, file)),
                (None, Some(name)) => SecretSource::Env(name.clone()),
                _ => {
                    problems.push(
                        "peers.secret: give exactly one of `file` (a path) or `env` (a variable name)".into(),
                    );
                    return None;
                }
            };
            match source.read(env) {
                Ok(secret) if secret.expose().len() >= 16 => Some(PeerConfig {
                    listen,
                    advertise,
                    secret,
                }),
                Ok(_) => {
                    problems.push(
                        "peers.secret: shorter than 16 bytes; use e.g. `openssl rand -hex 32`".into(),
                    );
                    None
                }
                Err(e) => {
                    problems.push(format!("peers.secret.{}: {e}", source.field()));
                    None
                }
            }
        });

        if !problems.is_empty() {
            return Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                problems,
            });
        }
        Ok(Config {
            listen,
            tls,
            data_dir,
            limits,
            agents,
            webhooks,
            viewers,
            redis,
            peers,
        })
    }
}

fn relative_to(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

/// Checks the limit fields, each with its default, recording problems.
struct Fields<'a>(&'a mut Vec<String>);

impl Fields<'_> {
    fn positive<T: Copy + PartialEq + From<u8>>(
        &mut self,
        field: &str,
        value: Option<T>,
        default: T,
    ) -> T {
        match value {
            Some(v) if v == T::from(0) => {
                self.0.push(format!("{field}: must be greater than zero"));
                default
            }
            Some(v) => v,
            None => default,
        }
    }

    fn at_least(&mut self, field: &str, value: Option<usize>, min: usize, default: usize) -> usize {
        match value {
            Some(v) if v < min => {
                self.0.push(format!("{field}: must be at least {min}"));
                default
            }
            Some(v) => v,
            None => default,
        }
    }

    fn duration(&mut self, field: &str, value: Option<String>, default: Duration) -> Duration {
        let Some(text) = value else {
            return default;
        };
        match parse_duration(&text) {
            Some(d) if !d.is_zero() => d,
            _ => {
                self.0.push(format!(
                    "{field}: {text:?} is not a duration above zero like 500ms, 10s, 5m or 1h"
                ));
                default
            }
        }
    }
}

fn globs(patterns: &[String], field: &str, problems: &mut Vec<String>) -> RepoGlobs {
    match RepoGlobs::new(patterns) {
        Ok(g) => g,
        Err((p, e)) => {
            problems.push(format!("{field}: bad glob {p:?}: {e}"));
            RepoGlobs::none()
        }
    }
}

fn parse_sha256(text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(text.trim()).ok()?;
    bytes.try_into().ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::FakeEnv as Env;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn example_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hub.yaml");
        let text = std::fs::read_to_string(&dir).unwrap();
        let env = Env::new([
            ("TETHER_GITHUB_SECRET", "s3cret"),
            ("TETHER_GITLAB_TOKEN", "t0ken"),
            ("TETHER_GENERIC_SECRET", "g3neric"),
        ]);
        // The example's secret files do not exist here; only env-sourced ones resolve.
        match Config::from_yaml(&text, &dir, &env) {
            Ok(c) => assert!(!c.agents.is_empty()),
            Err(ConfigError::Invalid { problems, .. }) => {
                for p in &problems {
                    assert!(
                        p.contains(".secret.file") || p.contains("tls."),
                        "unexpected problem: {p}"
                    );
                }
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn every_problem_names_its_field() {
        let text = format!(
            r#"
listen: "nowhere"
max_body_bytes: 0
max_header_bytes: 100
max_body_bytes_in_flight: 10
idle_timeout: 0s
agents:
  - name: a
    token_sha256: "abc"
    repos: ["github.com/acme/*"]
  - name: a
    token_sha256: "{HASH}"
    repos: []
webhooks:
  - provider: sourcehut
    repos: ["**"]
    secret: {{ env: X }}
  - provider: github
    repos: ["**"]
    secret: {{ env: MISSING }}
  - provider: gitlab
    repos: ["["]
    secret: {{ env: X, file: /x }}
"#
        );
        let env = Env::new([("X", "x")]);
        let err = Config::from_yaml(&text, Path::new("/etc/hub.yaml"), &env).unwrap_err();
        assert_eq!(err.category(), "config_invalid");
        let msg = err.to_string();
        for needle in [
            "listen:",
            "data_dir: missing",
            "max_body_bytes: must be greater than zero",
            "max_header_bytes: must be at least 8192",
            "max_body_bytes_in_flight: 10 is less than max_body_bytes",
            "idle_timeout: \"0s\" is not a duration above zero",
            "agents[0].token_sha256: expected 64 hex",
            "agents[1].name: \"a\" is used twice",
            "agents[1].repos: empty",
            "webhooks[0].provider: \"sourcehut\"",
            "webhooks[1].secret.env: environment variable MISSING is not set",
            "webhooks[2].repos: bad glob",
            "webhooks[2].secret: give exactly one",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
        }
    }

    #[test]
    fn redis_urls_come_from_a_secret_source_and_are_checked_without_being_echoed() {
        let base = format!(
            "data_dir: /tmp\nagents:\n  - name: a\n    token_sha256: {HASH}\n    repos: ['**']\n"
        );
        let load = |redis: &str, url: &str| {
            let text = format!("{base}redis:\n{redis}");
            Config::from_yaml(&text, Path::new("h.yaml"), &Env::new([("REDIS_URL", url)]))
        };
        let cfg = load(
            "  url: { env: REDIS_URL }\n",
            "redis://:pw@10.0.0.1:6379/0\n",
        )
        .unwrap();
        let redis = cfg.redis.as_ref().unwrap();
        assert_eq!(
            redis.urls(),
            vec!["redis://:pw@10.0.0.1:6379/0".to_string()]
        );
        assert_eq!(redis.key_prefix, "tether:");
        assert!(
            !format!("{cfg:?}").contains("pw@"),
            "the password is never printed"
        );

        let cluster = load(
            "  url: { env: REDIS_URL }\n  cluster: true\n  key_prefix: 'hub-a:'\n",
            "redis://10.0.0.1:7000, redis://10.0.0.2:7000\nredis://10.0.0.3:7000",
        )
        .unwrap();
        assert_eq!(cluster.redis.as_ref().unwrap().urls().len(), 3);

        let problems = |redis: &str, url: &str| match load(redis, url) {
            Err(ConfigError::Invalid { problems, .. }) => problems.join("\n"),
            other => panic!("expected problems, got {other:?}"),
        };
        let several = problems("  url: { env: REDIS_URL }\n", "redis://a:1 redis://b:2");
        assert!(several.contains("redis.cluster: true"), "{several}");
        let bad = problems("  url: { env: REDIS_URL }\n", "http://:secretpw@x");
        assert!(bad.contains("URL 1 of 1"), "{bad}");
        assert!(!bad.contains("secretpw"), "the URL is not echoed: {bad}");
        let inline = problems("  url: {}\n", "");
        assert!(inline.contains("redis.url: give exactly one"), "{inline}");
    }

    #[test]
    fn unknown_fields_and_inline_secrets_are_refused() {
        let text = "data_dir: /tmp\nwebhooks:\n  - provider: github\n    repos: ['**']\n    secret: { value: hunter2 }\n";
        let err = Config::from_yaml(text, Path::new("h.yaml"), &Env::default()).unwrap_err();
        assert_eq!(err.category(), "config_parse");
        assert!(err.to_string().contains("unknown field `value`"), "{err}");
    }

    #[test]
    fn secrets_resolve_from_files_and_env_and_never_print() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("gh"), "from-file\n").unwrap();
        let text = format!(
            "data_dir: data\nagents:\n  - name: a\n    token_sha256: {HASH}\n    repos: ['github.com/acme/*']\nwebhooks:\n  - provider: github\n    repos: ['**']\n    secret: {{ file: gh }}\n  - provider: gitlab\n    repos: ['**']\n    secret: {{ env: GL }}\n"
        );
        let env = Env::new([("GL", "from-env")]);
        let cfg = Config::from_yaml(&text, &dir.path().join("hub.yaml"), &env).unwrap();
        assert_eq!(cfg.webhooks[0].secret.expose(), b"from-file");
        assert_eq!(cfg.webhooks[1].secret.expose(), b"from-env");
        assert_eq!(cfg.data_dir, dir.path().join("data"));
        let debug = format!("{cfg:?}");
        assert!(!debug.contains("from-file") && !debug.contains("from-env"));
    }
}
