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
//! use tether_operator::hub::{self, HubClientConfig, HubMetrics};
//! use tether_operator::net::ProxyConfig;
//!
//! let mut config = HubClientConfig::new("wss://hub.example.com", "token-from-file");
//! config.proxy = ProxyConfig::new(Some("http://proxy:3128".into()), Some(".cluster.local".into()));
//! config.validate()?; // fail fast at start-up on a bad URL or CA bundle
//! let metrics = HubMetrics::register(registry)?;
//! let (watch_tx, watch_rx) = tokio::sync::watch::channel(BTreeSet::new());
//! let (notice_tx, mut notice_rx) = tokio::sync::mpsc::channel(256);
//! tokio::spawn(hub::run(config, watch_rx, notice_tx, metrics, std::future::pending()));
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
//! - `HTTPS_PROXY`: the caller reads the environment (through clap) once and passes it in a
//!   [`ProxyConfig`](crate::net::ProxyConfig). When the proxy applies (the hub's host does not match
//!   `NO_PROXY`), the client opens an HTTP `CONNECT` tunnel and runs TLS and the websocket through it.
//!   The tunnel is used for `ws://` hubs too: it is a plain TCP tunnel either way. Loopback addresses
//!   are not exempt unless `NO_PROXY` names them (as with curl).
//! - `wss://` trusts the system roots plus the optional extra CA bundle [`HubClientConfig::ca_pem`].
//! - When `shutdown` resolves, the client sends a close frame (going away) and returns.
//!
//! [`run`] returns an error only for a configuration it cannot use (bad URL, bad CA bundle, a proxy that
//! cannot tunnel), before dialling.
//!
//! The parts: `config` (what to dial), `dial` (URL, token, TCP and the upgrade), `tls`, `tunnel`
//! (HTTP `CONNECT`), `session` (one open connection), `error` and `metrics`; the reconnect loop is
//! [`run`], here. `ci_tunnel` is the second websocket, for CI access ([`run_tunnel`]), dialled the
//! same way and opened only when the operator serves CI access.

mod ci_tunnel;
mod config;
mod dial;
mod error;
mod metrics;
mod session;
mod start;
mod tls;
mod tunnel;

use std::collections::BTreeSet;

use tether_protocol::{Notice, RepoId};
use tokio::sync::{mpsc, watch};
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

pub use ci_tunnel::{TunnelHandler, run_tunnel};
pub use config::{CONNECT_TIMEOUT, HubClientConfig};
pub use error::HubClientError;
pub use metrics::HubMetrics;
pub use session::CATCHUP_DELIVERY;
pub use start::{HubSettings, start};
/// A `CONNECT` tunnel through the proxy, for the operator's other outbound HTTPS.
pub(crate) use tunnel::connect as connect_through;

use dial::Dialer;
use session::{Forwarded, Session, SessionEnd};

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
    let dialer = Dialer::new(&config)?;
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
            dialled = timeout(config.connect_timeout, dialer.dial()) => dialled
                .unwrap_or(Err(HubClientError::ConnectTimeout { after: config.connect_timeout })),
        };
        let failure = match dialled {
            Ok(ws) => {
                info!(hub = %dialer.url, via = %dialer.route(), "connected to the hub");
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
        // A hub replica that stops says so: another one behind the same address is there now. A
        // spread of a quarter second keeps its agents from all arriving in the same instant.
        let delay = if matches!(failure, HubClientError::GoingAway { .. }) {
            std::time::Duration::from_millis(rand::random_range(0..250))
        } else {
            backoff.next_delay(rand::random::<f64>())
        };
        warn!(
            hub = %dialer.url,
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
