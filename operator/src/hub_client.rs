//! The hub client: the operator's one outbound websocket to `tether-hub`, over which push notices arrive.
//!
//! Nothing connects into the cluster: the operator dials the hub (`wss://hub/v1/connect`, subprotocol
//! `tether.v1`, `Authorization: Bearer <token>`), tells it which repositories it follows, and hears about
//! pushes to them. A notice is only a hint that makes the controller resolve the ref now; the revision
//! applied is always the one the remote reports, so a forged or stale notice costs a fetch, never a deploy.
//! Without a hub, or while it is away, the per-object interval keeps everything correct, so nothing here
//! is fatal once [`run`] has started dialling.
//!
//! # Use
//!
//! ```no_run
//! # async fn wire(registry: &prometheus::Registry) -> Result<(), Box<dyn std::error::Error>> {
//! use std::collections::BTreeSet;
//! use tether_operator::hub_client::{self, HubClientConfig, HubMetrics, ProxyConfig};
//!
//! let mut config = HubClientConfig::new("wss://hub.example.com", "token-from-file");
//! config.proxy = ProxyConfig::from_env_vars(Some("http://proxy:3128".into()), Some(".cluster.local".into()))?;
//! config.validate()?; // fail fast at start-up on a bad URL or CA bundle
//! let metrics = HubMetrics::register(registry)?;
//! let (watch_tx, watch_rx) = tokio::sync::watch::channel(BTreeSet::new());
//! let (notice_tx, mut notice_rx) = tokio::sync::mpsc::channel(256);
//! tokio::spawn(hub_client::run(config, watch_rx, notice_tx, metrics, std::future::pending()));
//! // The controller keeps `watch_tx` up to date with the normalised URLs of every GitRepository...
//! watch_tx.send_replace(BTreeSet::from([tether_protocol::normalize("https://github.com/org/app.git")?]));
//! // ...and turns each notice into an immediate reconcile of the GitRepositories naming that repo.
//! while let Some(notice) = notice_rx.recv().await {
//!     let _ = notice.repo;
//! }
//! # Ok(()) }
//! ```
//!
//! # Behaviour
//!
//! - On every connection the client sends `watch` with the full current set, and again whenever the
//!   `watch::Receiver` reports a change. If the sender is dropped, the last set stays in force.
//! - `push` notices go to the `notices` channel as they are. The hub answers each `watch` with a `catchup`
//!   (the latest push it knows per watched repo); each entry becomes a [`Notice`] whose `delivery` is
//!   [`CATCHUP_DELIVERY`], unless this client already forwarded that same push (same ref, sha and receipt
//!   time), so a reconnect or a change of the watch set only reports pushes that were actually missed.
//!   For the same reason a live push already forwarded from a catch-up (a webhook that raced the
//!   `watch`) is not forwarded twice.
//! - `error` messages from the hub (a repo this agent may not hear about, say) are logged and ignored.
//! - Keepalive: a ping every [`HubClientConfig::keepalive`]; a connection from which no frame at all (message,
//!   ping or pong) arrived for [`HubClientConfig::dead_after`] is dropped and dialled again. A send that does
//!   not complete within `dead_after` also counts as a dead connection, and the dial itself (TCP, proxy,
//!   TLS, upgrade) is bounded by [`HubClientConfig::connect_timeout`].
//! - Reconnects wait according to [`Backoff`]: exponential with full jitter, reset only after a connection
//!   was stable, so a fleet of operators does not stampede a restarted hub. Each failure is logged once, at
//!   warn, with its reason and category; the token never appears in logs or in `Debug` output.
//! - `HTTPS_PROXY`: the caller reads the environment (through clap) and passes it to
//!   [`ProxyConfig::from_env_vars`]. When the proxy applies (the hub's host does not match `NO_PROXY`), the
//!   client opens an HTTP `CONNECT` tunnel and runs TLS and the websocket through it. The tunnel is used for
//!   `ws://` hubs too: it is a plain TCP tunnel either way. Loopback addresses are not exempt unless
//!   `NO_PROXY` names them (as with curl).
//! - `wss://` trusts the system roots plus the optional extra CA bundle [`HubClientConfig::ca_pem`].
//! - When `shutdown` resolves, the client sends a close frame (going away) and returns.
//!
//! [`run`] returns an error only for a configuration it cannot use (bad URL, bad CA bundle), before dialling.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures::{Sink, SinkExt, StreamExt};
use tether_protocol::{
    AgentMessage, Backoff, CONNECT_PATH, DEAD_AFTER, HubMessage, Notice, PING_INTERVAL, RepoId,
    RepoState, SUBPROTOCOL,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Request, Uri};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, WebSocketStream, client_async_tls_with_config};
use tracing::{debug, info, warn};

/// The `delivery` of a [`Notice`] made from a catch-up entry rather than a live push.
pub const CATCHUP_DELIVERY: &str = "catchup";

/// How long a dial may take by default (TCP, proxy tunnel, TLS and websocket upgrade together).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The largest proxy response head read before giving up on it.
const MAX_PROXY_RESPONSE: usize = 16 * 1024;

/// How long to wait for the close frame to go out on shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Where the hub is and how to reach it.
#[derive(Clone)]
pub struct HubClientConfig {
    /// `ws://` or `wss://` URL of the hub; [`CONNECT_PATH`] is appended when the path does not end with it
    /// (so `wss://hub.example.com` and `wss://example.com/tether` both work).
    pub url: String,
    /// The agent's bearer token. Surrounding whitespace (a token file's newline) is ignored. Never logged.
    pub token: String,
    /// Extra PEM certificates to trust for `wss://`, on top of the system roots.
    pub ca_pem: Option<Vec<u8>>,
    /// The outbound proxy, if any (see [`ProxyConfig::from_env_vars`]).
    pub proxy: Option<ProxyConfig>,
    /// How often to ping the hub (default [`PING_INTERVAL`]).
    pub keepalive: Duration,
    /// A connection silent for this long is dead (default [`DEAD_AFTER`]).
    pub dead_after: Duration,
    /// Bound on one dial: TCP, proxy tunnel, TLS and websocket upgrade (default [`CONNECT_TIMEOUT`]).
    pub connect_timeout: Duration,
    /// The reconnect policy (default: 0.5 s doubling to 30 s, full jitter, reset after 60 s connected).
    pub backoff: Backoff,
}

impl HubClientConfig {
    /// A config with the protocol's default timings and no proxy or extra CA.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: token.into(),
            ca_pem: None,
            proxy: None,
            keepalive: PING_INTERVAL,
            dead_after: DEAD_AFTER,
            connect_timeout: CONNECT_TIMEOUT,
            backoff: Backoff::default(),
        }
    }

    /// Check everything that can be checked without the network: the URL, the token's shape, the CA
    /// bundle. [`run`] does the same; calling this at start-up turns a typo into an exit with a reason.
    pub fn validate(&self) -> Result<(), HubClientError> {
        Prepared::new(self).map(|_| ())
    }
}

impl fmt::Debug for HubClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubClientConfig")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field(
                "ca_pem",
                &self.ca_pem.as_ref().map(|p| format!("{} bytes", p.len())),
            )
            .field("proxy", &self.proxy)
            .field("keepalive", &self.keepalive)
            .field("dead_after", &self.dead_after)
            .field("connect_timeout", &self.connect_timeout)
            .field("backoff", &self.backoff)
            .finish()
    }
}

/// An HTTP proxy reached with `CONNECT`, and the hosts that bypass it.
#[derive(Clone)]
pub struct ProxyConfig {
    host: String,
    port: u16,
    /// `Basic ...` from the proxy URL's user info; never logged.
    authorization: Option<String>,
    no_proxy: NoProxy,
}

impl fmt::Debug for ProxyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("proxy", &self.address())
            .field(
                "authorization",
                &self.authorization.as_ref().map(|_| "<redacted>"),
            )
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

impl ProxyConfig {
    /// Build from the values of `HTTPS_PROXY` (or `https_proxy`) and `NO_PROXY` (or `no_proxy`), read once
    /// by the caller. `None` (or an empty value) for the proxy means no proxy. The proxy is
    /// `http://[user:password@]host[:port]` (port 80 by default) or a bare `host:port`; `https://` proxies
    /// (TLS to the proxy itself) are not supported.
    pub fn from_env_vars(
        https_proxy: Option<String>,
        no_proxy: Option<String>,
    ) -> Result<Option<Self>, HubClientError> {
        let Some(raw) = https_proxy.map(|p| p.trim().to_string()) else {
            return Ok(None);
        };
        if raw.is_empty() {
            return Ok(None);
        }
        let invalid = |reason: &str| HubClientError::InvalidProxy {
            url: redact_userinfo(&raw),
            reason: reason.to_string(),
        };
        let rest = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("http") => rest,
            Some((scheme, _)) => {
                return Err(invalid(&format!(
                    "unsupported scheme {scheme:?}: use an http:// proxy (the tunnel carries TLS)"
                )));
            }
            None => raw.as_str(),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or(rest);
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (host, port) =
            split_host_port(host_port).ok_or_else(|| invalid("expected host[:port]"))?;
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let authorization = userinfo.map(|u| {
            let decoded = percent_decode(u);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(decoded)
            )
        });
        Ok(Some(Self {
            host: host.to_string(),
            port: port.unwrap_or(80),
            authorization,
            no_proxy: NoProxy::parse(no_proxy.as_deref().unwrap_or("")),
        }))
    }

    /// Whether a connection to `host:port` goes through this proxy (it does unless `NO_PROXY` matches).
    pub fn applies_to(&self, host: &str, port: u16) -> bool {
        !self.no_proxy.matches(host, port)
    }

    /// The proxy's `host:port`, for logs.
    pub fn address(&self) -> String {
        join_host_port(&self.host, self.port)
    }
}

/// A parsed `NO_PROXY` list: comma- (or space-) separated entries, each `*` (everything), a domain
/// (`example.com` or `.example.com`: that domain and its subdomains), an exact host or IP address,
/// a CIDR block (`10.0.0.0/8`), optionally with `:port` to match one port only. Case-insensitive.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NoProxy {
    everything: bool,
    entries: Vec<NoProxyEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum NoProxyEntry {
    Domain { name: String, port: Option<u16> },
    Ip { ip: IpAddr, port: Option<u16> },
    Cidr { net: IpAddr, prefix: u8 },
}

impl NoProxy {
    /// Parse a `NO_PROXY` value. Entries that cannot be read are ignored (as curl and Go do).
    pub fn parse(value: &str) -> Self {
        let mut list = NoProxy::default();
        for entry in value.split([',', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                list.everything = true;
                continue;
            }
            let entry = entry.to_ascii_lowercase();
            if let Some((net, prefix)) = entry.split_once('/') {
                if let (Ok(net), Ok(prefix)) = (net.parse::<IpAddr>(), prefix.parse::<u8>()) {
                    let max = if net.is_ipv4() { 32 } else { 128 };
                    if prefix <= max {
                        list.entries.push(NoProxyEntry::Cidr { net, prefix });
                    }
                }
                continue;
            }
            if let Ok(ip) = entry.parse::<IpAddr>() {
                list.entries.push(NoProxyEntry::Ip { ip, port: None });
                continue;
            }
            let Some((host, port)) = split_host_port(&entry) else {
                continue;
            };
            if let Ok(ip) = unbracket(host).parse::<IpAddr>() {
                list.entries.push(NoProxyEntry::Ip { ip, port });
                continue;
            }
            let name = host.trim_start_matches("*.").trim_start_matches('.');
            let name = name.trim_end_matches('.');
            if !name.is_empty() {
                list.entries.push(NoProxyEntry::Domain {
                    name: name.to_string(),
                    port,
                });
            }
        }
        list
    }

    /// Whether `host` (a name, an IP address, or a bracketed IPv6 literal) on `port` bypasses the proxy.
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.everything {
            return true;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.entries.iter().any(|entry| match entry {
            NoProxyEntry::Domain { name, port: p } => {
                p.is_none_or(|p| p == port)
                    && (host == *name
                        || host
                            .strip_suffix(name.as_str())
                            .is_some_and(|prefix| prefix.ends_with('.')))
            }
            NoProxyEntry::Ip { ip: want, port: p } => {
                p.is_none_or(|p| p == port) && ip == Some(*want)
            }
            NoProxyEntry::Cidr { net, prefix } => ip.is_some_and(|ip| in_cidr(ip, *net, *prefix)),
        })
    }
}

fn in_cidr(ip: IpAddr, net: IpAddr, prefix: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(ip), IpAddr::V4(net)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            u32::from(ip) & mask == u32::from(net) & mask
        }
        (IpAddr::V6(ip), IpAddr::V6(net)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            u128::from(ip) & mask == u128::from(net) & mask
        }
        _ => false,
    }
}

/// Prometheus handles for the hub connection, registered once at start-up.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    connected: prometheus::IntGauge,
    notices: prometheus::IntCounter,
    reconnects: prometheus::IntCounter,
    notice_delay: prometheus::Histogram,
}

impl HubMetrics {
    /// Create `tether_hub_connected`, `tether_hub_notices_total`, `tether_hub_reconnects_total` and
    /// `tether_hub_notice_delay_seconds` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let connected = prometheus::IntGauge::new(
            "tether_hub_connected",
            "1 while the websocket to the hub is open, 0 otherwise.",
        )?;
        let notices = prometheus::IntCounter::new(
            "tether_hub_notices_total",
            "Push notices received from the hub (live pushes and missed ones from catch-up).",
        )?;
        let reconnects = prometheus::IntCounter::new(
            "tether_hub_reconnects_total",
            "Dials to the hub after the first one, whether they succeeded or not.",
        )?;
        let notice_delay = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "tether_hub_notice_delay_seconds",
                "From a push's webhook arriving at the hub to its live notice arriving here \
                 (millisecond resolution; compares the hub's clock with this one).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(notice_delay.clone()))?;
        registry.register(Box::new(notices.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        Ok(Self {
            connected,
            notices,
            reconnects,
            notice_delay,
        })
    }

    /// Whether the websocket is open now.
    pub fn connected(&self) -> bool {
        self.connected.get() == 1
    }

    /// Notices forwarded so far.
    pub fn notices(&self) -> u64 {
        self.notices.get()
    }

    /// Reconnect attempts so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }
}

/// What went wrong with the hub connection. Only the configuration errors are ever returned by [`run`];
/// the others are logged and retried.
#[derive(Debug, thiserror::Error)]
pub enum HubClientError {
    /// The hub URL cannot be used.
    #[error("hub URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token cannot be sent in a header.
    #[error("hub token: {reason}")]
    InvalidToken {
        /// What is wrong with it (never the token itself).
        reason: &'static str,
    },
    /// The proxy URL cannot be used.
    #[error("proxy URL {url:?}: {reason}")]
    InvalidProxy {
        /// The URL, password removed.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The extra CA bundle cannot be used.
    #[error("hub CA bundle: {reason}")]
    InvalidCa {
        /// What is wrong with it.
        reason: String,
    },
    /// TLS could not be set up.
    #[error("TLS setup for the hub: {source}")]
    Tls {
        /// The rustls error.
        #[source]
        source: rustls::Error,
    },
    /// The TCP connection (to the hub or the proxy) failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// `host:port` dialled.
        addr: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The proxy did not open the tunnel.
    #[error("proxy {proxy}: CONNECT {target}: {reason}")]
    Proxy {
        /// The proxy's address.
        proxy: String,
        /// The tunnel's target.
        target: String,
        /// The proxy's status line or the I/O failure.
        reason: String,
    },
    /// The hub refused the token.
    #[error(
        "the hub refused the agent token (HTTP 401): check the token file against the agent's token_sha256 in the hub config"
    )]
    Unauthorized,
    /// The hub answered the upgrade with another HTTP status.
    #[error("the hub answered the websocket upgrade with HTTP {status}")]
    HttpStatus {
        /// The status code.
        status: u16,
    },
    /// The TLS or websocket handshake failed.
    #[error("handshake with the hub: {source}")]
    Handshake {
        /// The websocket (or TLS, as I/O) error.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// A dial did not finish in time.
    #[error("dial did not complete within {after:?}")]
    ConnectTimeout {
        /// The limit.
        after: Duration,
    },
    /// Nothing arrived for too long, or a send did not complete.
    #[error("no sign of life from the hub for {after:?}; the connection is presumed dead")]
    Dead {
        /// The limit.
        after: Duration,
    },
    /// The open connection failed.
    #[error("hub connection failed: {source}")]
    Connection {
        /// The websocket error.
        #[source]
        source: Box<tungstenite::Error>,
    },
    /// The hub closed the connection.
    #[error("the hub closed the connection ({reason})")]
    Closed {
        /// The close code and reason, if any.
        reason: String,
    },
}

impl HubClientError {
    /// A short fixed name for logs and metrics.
    pub fn category(&self) -> &'static str {
        match self {
            HubClientError::InvalidUrl { .. } => "invalid_url",
            HubClientError::InvalidToken { .. } => "invalid_token",
            HubClientError::InvalidProxy { .. } => "invalid_proxy",
            HubClientError::InvalidCa { .. } => "invalid_ca",
            HubClientError::Tls { .. } => "tls_setup",
            HubClientError::Connect { .. } => "connect",
            HubClientError::Proxy { .. } => "proxy",
            HubClientError::Unauthorized => "unauthorized",
            HubClientError::HttpStatus { .. } => "http_status",
            HubClientError::Handshake { .. } => "handshake",
            HubClientError::ConnectTimeout { .. } => "connect_timeout",
            HubClientError::Dead { .. } => "dead",
            HubClientError::Connection { .. } => "connection",
            HubClientError::Closed { .. } => "closed",
        }
    }
}

/// Keep a connection to the hub open until `shutdown` resolves, forwarding push notices for the repos in
/// `watch` to `notices`. Returns early with an error only when `config` cannot be used (see
/// [`HubClientConfig::validate`]), and with `Ok` when `notices` is closed (nobody left to tell).
pub async fn run(
    config: HubClientConfig,
    mut watch: watch::Receiver<BTreeSet<RepoId>>,
    notices: mpsc::Sender<Notice>,
    metrics: HubMetrics,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubClientError> {
    let prepared = Prepared::new(&config)?;
    tokio::pin!(shutdown);
    let mut backoff = config.backoff.clone();
    let mut forwarded = Forwarded::default();
    let mut first = true;
    metrics.connected.set(0);
    loop {
        if !first {
            metrics.reconnects.inc();
        }
        first = false;
        let dialled = tokio::select! {
            () = &mut shutdown => return Ok(()),
            dialled = timeout(config.connect_timeout, prepared.dial()) => dialled
                .unwrap_or(Err(HubClientError::ConnectTimeout { after: config.connect_timeout })),
        };
        let failure = match dialled {
            Ok(ws) => {
                info!(hub = %prepared.url, via = %prepared.route(), "connected to the hub");
                metrics.connected.set(1);
                backoff.connected(std::time::Instant::now());
                let end = Session {
                    config: &config,
                    watch: &mut watch,
                    notices: &notices,
                    metrics: &metrics,
                    forwarded: &mut forwarded,
                }
                .run(ws, shutdown.as_mut())
                .await;
                metrics.connected.set(0);
                backoff.disconnected(std::time::Instant::now());
                match end {
                    SessionEnd::Shutdown => return Ok(()),
                    SessionEnd::NoticesClosed => {
                        info!("the notice channel closed; leaving the hub");
                        return Ok(());
                    }
                    SessionEnd::Lost(e) => e,
                }
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay(rand::random::<f64>());
        warn!(
            hub = %prepared.url,
            error = %failure,
            category = failure.category(),
            attempt = backoff.attempts(),
            retry_in = ?delay,
            "hub connection unavailable; push notices wait, the interval keeps repositories in sync"
        );
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = sleep(delay) => {}
        }
    }
}

/// Everything derived from the config once, before the first dial.
struct Prepared {
    url: String,
    uri: Uri,
    /// Host as in the URL (brackets kept for IPv6), and the port, defaulted by scheme.
    host: String,
    port: u16,
    authorization: HeaderValue,
    tls: Option<Arc<rustls::ClientConfig>>,
    proxy: Option<ProxyConfig>,
}

impl Prepared {
    fn new(config: &HubClientConfig) -> Result<Self, HubClientError> {
        let invalid = |reason: &str| HubClientError::InvalidUrl {
            url: config.url.clone(),
            reason: reason.to_string(),
        };
        let given: Uri = config
            .url
            .trim()
            .parse()
            .map_err(|e| invalid(&format!("{e}")))?;
        let secure = match given.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("wss") => true,
            Some("ws") => false,
            Some(other) => {
                return Err(invalid(&format!(
                    "unsupported scheme {other:?}: use wss:// (or ws:// for local testing)"
                )));
            }
            None => return Err(invalid("no scheme: use wss://host[:port]")),
        };
        let authority = given.authority().ok_or_else(|| invalid("no host"))?;
        if authority.as_str().contains('@') {
            return Err(invalid(
                "user info in the URL is not used: put the token in the token file",
            ));
        }
        let host = authority.host().to_string();
        if host.is_empty() {
            return Err(invalid("no host"));
        }
        let port = authority
            .port_u16()
            .unwrap_or(if secure { 443 } else { 80 });
        let base = given.path().trim_end_matches('/');
        let path = if base.ends_with(CONNECT_PATH) {
            base.to_string()
        } else {
            format!("{base}{CONNECT_PATH}")
        };
        let path_and_query = match given.query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let uri = Uri::builder()
            .scheme(if secure { "wss" } else { "ws" })
            .authority(authority.as_str())
            .path_and_query(path_and_query)
            .build()
            .map_err(|e| invalid(&e.to_string()))?;

        let token = config.token.trim();
        if token.is_empty() {
            return Err(HubClientError::InvalidToken { reason: "empty" });
        }
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
                HubClientError::InvalidToken {
                    reason: "contains characters that cannot go in an HTTP header",
                }
            })?;
        authorization.set_sensitive(true);

        let tls = if secure {
            Some(tls_config(config.ca_pem.as_deref())?)
        } else {
            if config.ca_pem.is_some() {
                warn!(hub = %uri, "a hub CA bundle is configured but the hub URL is ws://; it is not used");
            }
            None
        };
        Ok(Self {
            url: uri.to_string(),
            uri,
            host,
            port,
            authorization,
            tls,
            proxy: config.proxy.clone(),
        })
    }

    fn proxy(&self) -> Option<&ProxyConfig> {
        self.proxy
            .as_ref()
            .filter(|p| p.applies_to(&self.host, self.port))
    }

    /// How the hub is reached, for logs.
    fn route(&self) -> String {
        match self.proxy() {
            Some(p) => format!("proxy {}", p.address()),
            None => "direct".to_string(),
        }
    }

    fn request(&self) -> Result<Request<()>, HubClientError> {
        let mut request =
            self.uri
                .clone()
                .into_client_request()
                .map_err(|e| HubClientError::InvalidUrl {
                    url: self.url.clone(),
                    reason: e.to_string(),
                })?;
        let headers = request.headers_mut();
        headers.insert("authorization", self.authorization.clone());
        headers.insert(
            "sec-websocket-protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        headers.insert(
            "user-agent",
            HeaderValue::from_static(concat!("tether-operator/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(request)
    }

    async fn dial(
        &self,
    ) -> Result<WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>, HubClientError> {
        let stream = match self.proxy() {
            Some(proxy) => connect_via_proxy(proxy, &self.host, self.port).await?,
            None => {
                let addr = join_host_port(&self.host, self.port);
                TcpStream::connect((unbracket(&self.host), self.port))
                    .await
                    .map_err(|source| HubClientError::Connect { addr, source })?
            }
        };
        let _ = stream.set_nodelay(true);
        let connector = match &self.tls {
            Some(config) => Connector::Rustls(Arc::clone(config)),
            None => Connector::Plain,
        };
        let (ws, response) =
            client_async_tls_with_config(self.request()?, stream, None, Some(connector))
                .await
                .map_err(|e| match e {
                    tungstenite::Error::Http(response) if response.status().as_u16() == 401 => {
                        HubClientError::Unauthorized
                    }
                    tungstenite::Error::Http(response) => HubClientError::HttpStatus {
                        status: response.status().as_u16(),
                    },
                    other => HubClientError::Handshake {
                        source: Box::new(other),
                    },
                })?;
        // tungstenite already refuses a response without a subprotocol; make sure it is ours.
        let chosen = response
            .headers()
            .get("sec-websocket-protocol")
            .and_then(|v| v.to_str().ok());
        if chosen != Some(SUBPROTOCOL) {
            return Err(HubClientError::Handshake {
                source: Box::new(tungstenite::Error::Protocol(
                    tungstenite::error::ProtocolError::SecWebSocketSubProtocolError(
                        tungstenite::error::SubProtocolError::InvalidSubProtocol,
                    ),
                )),
            });
        }
        Ok(ws)
    }
}

/// The rustls client config: the system roots plus the extra CA bundle, ring as the provider.
fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, HubClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        debug!(error = %e, "could not load some system root certificates");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    if let Some(pem) = ca_pem {
        let mut extra = 0;
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| HubClientError::InvalidCa {
                reason: format!("cannot read PEM: {e}"),
            })?;
            roots.add(cert).map_err(|e| HubClientError::InvalidCa {
                reason: format!("certificate not usable as a trust anchor: {e}"),
            })?;
            extra += 1;
        }
        if extra == 0 {
            return Err(HubClientError::InvalidCa {
                reason: "no CERTIFICATE blocks found".to_string(),
            });
        }
    } else if added == 0 {
        warn!("no system root certificates found and no hub CA bundle given: wss:// will fail");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| HubClientError::Tls { source })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // The websocket upgrade is HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Open a TCP connection to the proxy and ask it for a tunnel to `host:port`.
async fn connect_via_proxy(
    proxy: &ProxyConfig,
    host: &str,
    port: u16,
) -> Result<TcpStream, HubClientError> {
    let target = join_host_port(host, port);
    let fail = |reason: String| HubClientError::Proxy {
        proxy: proxy.address(),
        target: target.clone(),
        reason,
    };
    let mut stream = TcpStream::connect((unbracket(&proxy.host), proxy.port))
        .await
        .map_err(|source| HubClientError::Connect {
            addr: proxy.address(),
            source,
        })?;
    let mut head = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n");
    if let Some(auth) = &proxy.authorization {
        head.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    head.push_str("\r\n");
    stream
        .write_all(head.as_bytes())
        .await
        .map_err(|e| fail(format!("sending the request: {e}")))?;

    // Read byte by byte up to the end of the head: anything after it belongs to the tunnel.
    let mut response = Vec::with_capacity(256);
    while !response.ends_with(b"\r\n\r\n") {
        if response.len() >= MAX_PROXY_RESPONSE {
            return Err(fail("response head too large".to_string()));
        }
        let byte = stream.read_u8().await.map_err(|e| {
            fail(format!(
                "reading the response: {e}{}",
                if response.is_empty() {
                    ""
                } else {
                    " (after a partial response)"
                }
            ))
        })?;
        response.push(byte);
    }
    let text = String::from_utf8_lossy(&response);
    let status_line = text.lines().next().unwrap_or("").trim().to_string();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(200) => Ok(stream),
        Some(407) => Err(fail(format!(
            "{status_line} (check the user and password in HTTPS_PROXY)"
        ))),
        _ => Err(fail(format!("refused with {status_line:?}"))),
    }
}

/// Why a session ended.
enum SessionEnd {
    Shutdown,
    NoticesClosed,
    Lost(HubClientError),
}

/// The pushes this client already forwarded, per repo, so a catch-up does not repeat them.
#[derive(Default)]
struct Forwarded(HashMap<RepoId, RepoState>);

impl Forwarded {
    /// Record `state`; whether it was new.
    fn record(&mut self, state: RepoState) -> bool {
        if self.0.get(&state.repo) == Some(&state) {
            return false;
        }
        self.0.insert(state.repo.clone(), state);
        true
    }

    fn retain(&mut self, watched: &BTreeSet<RepoId>) {
        self.0.retain(|repo, _| watched.contains(repo));
    }
}

/// One open connection.
struct Session<'a> {
    config: &'a HubClientConfig,
    watch: &'a mut watch::Receiver<BTreeSet<RepoId>>,
    notices: &'a mpsc::Sender<Notice>,
    metrics: &'a HubMetrics,
    forwarded: &'a mut Forwarded,
}

impl Session<'_> {
    async fn run<S, F>(mut self, ws: WebSocketStream<S>, mut shutdown: Pin<&mut F>) -> SessionEnd
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        F: Future<Output = ()>,
    {
        let dead_after = self.config.dead_after;
        let keepalive = self.config.keepalive;
        let (mut sink, mut stream) = ws.split();

        let mut watching = true;
        if let Err(e) = self.send_watch(&mut sink).await {
            return SessionEnd::Lost(e);
        }
        let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let dead = sleep_until(Instant::now() + dead_after);
        tokio::pin!(dead);

        loop {
            tokio::select! {
                () = &mut shutdown => {
                    let frame = CloseFrame { code: CloseCode::Away, reason: "operator shutting down".into() };
                    let _ = timeout(CLOSE_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
                    return SessionEnd::Shutdown;
                }
                () = &mut dead => return SessionEnd::Lost(HubClientError::Dead { after: dead_after }),
                _ = ping.tick() => {
                    if let Err(e) = send(&mut sink, Message::Ping(Default::default()), dead_after).await {
                        return SessionEnd::Lost(e);
                    }
                }
                changed = self.watch.changed(), if watching => match changed {
                    Ok(()) => {
                        if let Err(e) = self.send_watch(&mut sink).await {
                            return SessionEnd::Lost(e);
                        }
                    }
                    // The controller dropped its sender: keep following the last set.
                    Err(_) => watching = false,
                },
                frame = stream.next() => {
                    let message = match frame {
                        None => return SessionEnd::Lost(HubClientError::Closed { reason: "stream ended".into() }),
                        Some(Err(e)) => return SessionEnd::Lost(HubClientError::Connection { source: Box::new(e) }),
                        Some(Ok(message)) => message,
                    };
                    dead.as_mut().reset(Instant::now() + dead_after);
                    let text = match message {
                        Message::Text(text) => text,
                        Message::Close(frame) => {
                            let reason = match frame {
                                Some(f) if f.reason.is_empty() => format!("code {}", u16::from(f.code)),
                                Some(f) => format!("code {}: {}", u16::from(f.code), f.reason),
                                None => "no close code".to_string(),
                            };
                            return SessionEnd::Lost(HubClientError::Closed { reason });
                        }
                        // Pings are answered by tungstenite; pongs and pings only prove liveness.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                        Message::Binary(_) => {
                            debug!("ignoring a binary frame from the hub");
                            continue;
                        }
                    };
                    for notice in self.notices_in(text.as_str()) {
                        tokio::select! {
                            () = &mut shutdown => return SessionEnd::Shutdown,
                            sent = self.notices.send(notice) => if sent.is_err() {
                                return SessionEnd::NoticesClosed;
                            }
                        }
                        self.metrics.notices.inc();
                    }
                }
            }
        }
    }

    /// Send the full watch set as it is now.
    async fn send_watch<K>(&mut self, sink: &mut K) -> Result<(), HubClientError>
    where
        K: Sink<Message, Error = tungstenite::Error> + Unpin,
    {
        let repos = self.watch.borrow_and_update().clone();
        self.forwarded.retain(&repos);
        debug!(repos = repos.len(), "sending the watch set to the hub");
        let text = AgentMessage::Watch {
            repos: repos.into_iter().collect(),
        }
        .to_json();
        send(sink, Message::Text(text.into()), self.config.dead_after).await
    }

    /// The notices a text frame carries (none for an error or an unreadable message).
    fn notices_in(&mut self, text: &str) -> Vec<Notice> {
        match HubMessage::from_json(text) {
            Ok(HubMessage::Push(notice)) => {
                debug!(repo = %notice.repo, git_ref = %notice.git_ref, delivery = %notice.delivery, "push notice");
                let delay_ms = tether_protocol::unix_ms().saturating_sub(notice.received_at);
                self.metrics.notice_delay.observe(delay_ms as f64 / 1000.0);
                // A push that raced the watch can reach us twice: in the catch-up and live.
                if self.forwarded.record(notice.state()) {
                    vec![notice]
                } else {
                    Vec::new()
                }
            }
            Ok(HubMessage::Catchup { latest }) => {
                let missed: Vec<Notice> = latest
                    .into_iter()
                    .filter(|state| self.forwarded.record(state.clone()))
                    .map(|state| Notice {
                        repo: state.repo,
                        git_ref: state.git_ref,
                        sha: state.sha,
                        delivery: CATCHUP_DELIVERY.to_string(),
                        received_at: state.received_at,
                    })
                    .collect();
                debug!(missed = missed.len(), "catch-up from the hub");
                missed
            }
            Ok(HubMessage::Error { message }) => {
                warn!(hub_error = %message, "the hub reported a problem with this agent's request");
                Vec::new()
            }
            Err(e) => {
                warn!(error = %e, category = e.category(), "ignoring a message from the hub that could not be read");
                Vec::new()
            }
        }
    }
}

/// Send one frame; a send that does not complete within `limit` means the hub stopped reading.
async fn send<K>(sink: &mut K, message: Message, limit: Duration) -> Result<(), HubClientError>
where
    K: Sink<Message, Error = tungstenite::Error> + Unpin,
{
    match timeout(limit, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(HubClientError::Connection {
            source: Box::new(e),
        }),
        Err(_) => Err(HubClientError::Dead { after: limit }),
    }
}

/// Split `host[:port]`, keeping IPv6 brackets on the host. `None` for a bad port.
fn split_host_port(s: &str) -> Option<(&str, Option<u16>)> {
    let (host, port) = if s.starts_with('[') {
        let end = s.find(']')?;
        let rest = &s[end + 1..];
        (&s[..=end], rest.strip_prefix(':'))
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address without brackets: no port.
        (s, None)
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    match port {
        None | Some("") => Some((host, None)),
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .map(|p| (host, Some(p))),
    }
}

fn unbracket(host: &str) -> &str {
    host.trim_start_matches('[').trim_end_matches(']')
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Decode `%XX` escapes in URL user info (a password may hold `@` or `:` escaped).
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = s.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// The URL with the password in its user info replaced, for messages.
fn redact_userinfo(url: &str) -> String {
    let (prefix, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{prefix}{user}:***@{host}{}", &rest[end..])
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn no_proxy(list: &str) -> NoProxy {
        NoProxy::parse(list)
    }

    #[test]
    fn no_proxy_matches_domains_with_or_without_a_leading_dot() {
        let list = no_proxy("example.com, .internal.corp ,svc");
        assert!(list.matches("example.com", 443));
        assert!(list.matches("hub.example.com", 443));
        assert!(list.matches("HUB.Example.COM", 443));
        assert!(list.matches("a.b.internal.corp", 443));
        assert!(list.matches("internal.corp", 443));
        assert!(list.matches("hub.ns.svc", 443));
        assert!(!list.matches("notexample.com", 443));
        assert!(!list.matches("example.com.evil.org", 443));
        assert!(!list.matches("github.com", 443));
    }

    #[test]
    fn no_proxy_star_matches_everything_and_empty_matches_nothing() {
        assert!(no_proxy("*").matches("anything.example", 1));
        assert!(no_proxy("foo, *").matches("10.1.2.3", 1));
        assert!(!no_proxy("").matches("example.com", 443));
        assert!(!no_proxy(" , ,").matches("example.com", 443));
    }

    #[test]
    fn no_proxy_matches_exact_ips_cidrs_and_ports() {
        let list =
            no_proxy("127.0.0.1,10.0.0.0/8,::1,[fd00::5]:8443,hub.example:9443,192.168.1.0/33");
        assert!(list.matches("127.0.0.1", 8443));
        assert!(!list.matches("127.0.0.2", 8443));
        assert!(list.matches("10.200.3.4", 443));
        assert!(!list.matches("11.0.0.1", 443));
        assert!(list.matches("[::1]", 443));
        assert!(list.matches("::1", 443));
        assert!(list.matches("[fd00::5]", 8443));
        assert!(!list.matches("[fd00::5]", 443));
        assert!(list.matches("hub.example", 9443));
        assert!(!list.matches("hub.example", 443));
        // The invalid CIDR was ignored rather than matching everything.
        assert!(!list.matches("192.168.1.1", 443));
        // A name is never matched by an IP rule.
        assert!(!list.matches("localhost", 443));
    }

    #[test]
    fn proxy_from_env_vars() {
        assert!(
            ProxyConfig::from_env_vars(None, Some("x".into()))
                .unwrap()
                .is_none()
        );
        assert!(
            ProxyConfig::from_env_vars(Some(" ".into()), None)
                .unwrap()
                .is_none()
        );

        let p = ProxyConfig::from_env_vars(Some("http://proxy.corp:3128/".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(p.address(), "proxy.corp:3128");
        assert!(p.applies_to("hub.example.com", 443));
        assert!(p.authorization.is_none());

        let p =
            ProxyConfig::from_env_vars(Some("proxy.corp".into()), Some("hub.example.com".into()))
                .unwrap()
                .unwrap();
        assert_eq!(p.address(), "proxy.corp:80");
        assert!(!p.applies_to("hub.example.com", 443));

        let p = ProxyConfig::from_env_vars(Some("http://user:p%40ss@[::1]:8080".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!(p.address(), "[::1]:8080");
        // base64("user:p@ss")
        assert_eq!(p.authorization.as_deref(), Some("Basic dXNlcjpwQHNz"));
        let debug = format!("{p:?}");
        assert!(!debug.contains("dXNlcjpwQHNz"), "{debug}");

        let err = ProxyConfig::from_env_vars(Some("https://user:secret@proxy:443".into()), None)
            .unwrap_err();
        assert_eq!(err.category(), "invalid_proxy");
        assert!(!err.to_string().contains("secret"), "{err}");
        let err =
            ProxyConfig::from_env_vars(Some("http://proxy:notaport".into()), None).unwrap_err();
        assert_eq!(err.category(), "invalid_proxy");
    }

    #[test]
    fn the_connect_path_is_appended_when_missing() {
        for (given, want) in [
            ("wss://hub.example.com", "wss://hub.example.com/v1/connect"),
            ("wss://hub.example.com/", "wss://hub.example.com/v1/connect"),
            (
                "ws://127.0.0.1:8080/v1/connect",
                "ws://127.0.0.1:8080/v1/connect",
            ),
            (
                "wss://example.com/tether/",
                "wss://example.com/tether/v1/connect",
            ),
        ] {
            let p = Prepared::new(&HubClientConfig::new(given, "t")).unwrap();
            assert_eq!(p.url, want, "{given}");
        }
        let p = Prepared::new(&HubClientConfig::new("wss://hub.example.com", "t")).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("hub.example.com", 443));
        let p = Prepared::new(&HubClientConfig::new("ws://[::1]:9000", "t")).unwrap();
        assert_eq!((p.host.as_str(), p.port), ("[::1]", 9000));
    }

    #[test]
    fn unusable_configs_are_explained() {
        let category = |url: &str, token: &str| {
            HubClientConfig::new(url, token)
                .validate()
                .unwrap_err()
                .category()
        };
        assert_eq!(category("https://hub.example.com", "t"), "invalid_url");
        assert_eq!(category("hub.example.com", "t"), "invalid_url");
        assert_eq!(
            category("wss://user:pw@hub.example.com", "t"),
            "invalid_url"
        );
        assert_eq!(category("wss://hub.example.com", " \n"), "invalid_token");
        assert_eq!(category("wss://hub.example.com", "a\nb"), "invalid_token");

        let mut config = HubClientConfig::new("wss://hub.example.com", "t");
        config.ca_pem = Some(b"not a certificate".to_vec());
        assert_eq!(config.validate().unwrap_err().category(), "invalid_ca");
    }

    #[test]
    fn the_token_never_shows_in_debug_output() {
        let mut config = HubClientConfig::new("wss://hub.example.com", "s3cr3t-token");
        config.proxy =
            ProxyConfig::from_env_vars(Some("http://u:pw@proxy:3128".into()), None).unwrap();
        let debug = format!("{config:?}");
        assert!(!debug.contains("s3cr3t"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn catchup_skips_pushes_already_forwarded() {
        let repo = tether_protocol::normalize("https://git.example/a/b.git").unwrap();
        let state = RepoState {
            repo: repo.clone(),
            git_ref: "refs/heads/main".into(),
            sha: "1".repeat(40),
            received_at: 1,
        };
        let mut seen = Forwarded::default();
        assert!(seen.record(state.clone()));
        assert!(!seen.record(state.clone()));
        let newer = RepoState {
            sha: "2".repeat(40),
            received_at: 2,
            ..state.clone()
        };
        assert!(seen.record(newer.clone()));
        seen.retain(&BTreeSet::new());
        assert!(seen.record(newer), "forgotten once no longer watched");
    }
}
