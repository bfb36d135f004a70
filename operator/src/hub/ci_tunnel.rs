//! The CI tunnel: a second outbound websocket to the hub (`/v1/tunnel`), dialled like the push
//! channel (same URL, token, proxy and CA) and kept open the same way, over which the hub opens one
//! multiplexed stream per CI request. Each stream goes to the [`TunnelHandler`]; this module only
//! carries bytes and decides nothing about them.

use std::sync::Arc;

use futures::StreamExt;
use tether_protocol::tunnel::{self, Keepalive};
use tokio::time::{sleep, timeout};
use tracing::{info, warn};

use super::dial::{Channel, Dialer};
use super::{HubClientConfig, HubClientError};

/// What serves each stream the hub opens (an HTTP/1.1 connection carrying one CI request).
pub type TunnelHandler = Arc<dyn Fn(tunnel::Stream) + Send + Sync>;

/// Keep the tunnel open until `shutdown` resolves, handing each stream the hub opens to `handler`.
/// `connected` is 1 while the tunnel is open. Returns early only for a config it cannot use.
pub async fn run_tunnel(
    config: HubClientConfig,
    handler: TunnelHandler,
    connected: prometheus::IntGauge,
    shutdown: impl Future<Output = ()>,
) -> Result<(), HubClientError> {
    let dialer = Dialer::for_channel(&config, Channel::Tunnel)?;
    tokio::pin!(shutdown);
    let mut backoff = config.backoff.clone();
    connected.set(0);
    loop {
        let dialled = tokio::select! {
            () = &mut shutdown => return Ok(()),
            dialled = timeout(config.connect_timeout, dialer.dial()) => dialled
                .unwrap_or(Err(HubClientError::ConnectTimeout { after: config.connect_timeout })),
        };
        let failure = match dialled {
            Ok(ws) => {
                info!(hub = %dialer.url, via = %dialer.route(), "CI tunnel to the hub open");
                connected.set(1);
                backoff.connected(std::time::Instant::now());
                let keepalive = Keepalive {
                    ping_every: config.keepalive,
                    dead_after: config.dead_after,
                };
                let (bytes, pump) = tunnel::bridge(ws, keepalive);
                let mut incoming = tunnel::accept(bytes);
                let serve = async {
                    loop {
                        match incoming.next().await {
                            Some(Ok(stream)) => handler(stream),
                            Some(Err(e)) => return format!("multiplexer failed: {e}"),
                            None => return "multiplexer closed".to_string(),
                        }
                    }
                };
                let lost = tokio::select! {
                    () = &mut shutdown => None,
                    end = pump => Some(end.to_string()),
                    reason = serve => Some(reason),
                };
                connected.set(0);
                backoff.disconnected(std::time::Instant::now());
                match lost {
                    None => return Ok(()),
                    Some(reason) => HubClientError::Closed { reason },
                }
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay(rand::random::<f64>());
        warn!(
            hub = %dialer.url,
            error = %failure,
            category = failure.category(),
            retry_in = ?delay,
            "CI tunnel unavailable; CI requests through the hub fail until it is back"
        );
        tokio::select! {
            () = &mut shutdown => return Ok(()),
            () = sleep(delay) => {}
        }
    }
}
