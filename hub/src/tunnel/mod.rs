//! CI access: the tunnels operators open (`GET /v1/tunnel`), and the relay of CI requests through
//! them (`/k8s-proxy/<agent>/...`, in [`relay`]).
//!
//! The hub only routes. It authenticates the operator's tunnel with the agent token, as the push
//! channel does, but a CI request's own bearer token passes through untouched: the operator decides
//! who the caller is and what it may do. An operator started without `--ci-access` opens no tunnel,
//! and its agent's `/k8s-proxy` answers 404.

mod relay;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use hyper_util::rt::TokioIo;
use tether_protocol::tunnel::{
    K8S_PROXY_PREFIX, Keepalive, Opener, TUNNEL_PATH, TUNNEL_SUBPROTOCOL,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tracing::{debug, info, warn};

use crate::agents::authenticate;
use crate::state::Shared;

/// The routes of CI access, with their own state beside the hub's; and those of the peer
/// listener, where other replicas forward CI requests for tunnels this one holds.
pub(crate) fn routers(shared: Arc<Shared>) -> (Router, Router) {
    let state = TunnelState {
        tunnels: Arc::new(Tunnels::new(&shared)),
        shared,
    };
    let public = Router::new()
        .route(TUNNEL_PATH, get(accept))
        .route(&format!("{K8S_PROXY_PREFIX}/{{agent}}"), any(relay::relay))
        .route(
            &format!("{K8S_PROXY_PREFIX}/{{agent}}/{{*rest}}"),
            any(relay::relay),
        )
        .with_state(state.clone());
    let peer = Router::new()
        .route(
            &format!("{K8S_PROXY_PREFIX}/{{agent}}"),
            any(relay::relay_forwarded),
        )
        .route(
            &format!("{K8S_PROXY_PREFIX}/{{agent}}/{{*rest}}"),
            any(relay::relay_forwarded),
        )
        .with_state(state);
    (public, peer)
}

#[derive(Debug, Clone)]
struct TunnelState {
    shared: Arc<Shared>,
    tunnels: Arc<Tunnels>,
}

/// Which agents have a tunnel open, and what each may still carry.
#[derive(Debug)]
struct Tunnels {
    agents: HashMap<String, AgentTunnels>,
    /// Bumped whenever a tunnel opens, so that waiting requests look again.
    opened: watch::Sender<u64>,
    next_id: AtomicU64,
}

#[derive(Debug)]
struct AgentTunnels {
    /// The open tunnels, oldest first; requests go to the newest.
    open: Mutex<Vec<(u64, Opener)>>,
    /// CI requests in flight over all of them (`max_tunnel_streams_per_agent`).
    streams: Arc<Semaphore>,
    /// Tunnel websockets held at once (`max_connections_per_agent`, counted apart from the push
    /// channel's).
    connections: Arc<Semaphore>,
}

impl Tunnels {
    fn new(shared: &Shared) -> Self {
        let limits = &shared.config.limits;
        let agents = shared
            .config
            .agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    AgentTunnels {
                        open: Mutex::new(Vec::new()),
                        streams: Arc::new(Semaphore::new(limits.max_tunnel_streams_per_agent)),
                        connections: Arc::new(Semaphore::new(limits.max_connections_per_agent)),
                    },
                )
            })
            .collect();
        Self {
            agents,
            opened: watch::Sender::new(0),
            next_id: AtomicU64::new(0),
        }
    }

    /// The newest open tunnel of `agent`.
    fn newest(&self, agent: &str) -> Option<Opener> {
        let open = self
            .agents
            .get(agent)?
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        open.iter()
            .rev()
            .map(|(_, o)| o)
            .find(|o| !o.is_closed())
            .cloned()
    }

    fn register(self: &Arc<Self>, agent: &str, opener: Opener) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        if let Some(a) = self.agents.get(agent) {
            a.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((id, opener));
        }
        self.opened.send_modify(|n| *n += 1);
        Registration {
            tunnels: Arc::clone(self),
            agent: agent.to_string(),
            id,
        }
    }
}

/// An open tunnel's place in [`Tunnels`], given up when dropped.
struct Registration {
    tunnels: Arc<Tunnels>,
    agent: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(a) = self.tunnels.agents.get(&self.agent) {
            a.open
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|(id, _)| *id != self.id);
        }
    }
}

fn offers(headers: &HeaderMap, protocol: &str) -> bool {
    headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == protocol)
}

fn refuse(state: &TunnelState, status: StatusCode, reason: &'static str, text: String) -> Response {
    state
        .shared
        .metrics
        .agent_refusals
        .with_label_values(&[reason])
        .inc();
    (status, text).into_response()
}

/// `GET /v1/tunnel`: authenticate the agent, upgrade to a websocket and carry its tunnel.
async fn accept(State(state): State<TunnelState>, mut request: Request) -> Response {
    let headers = request.headers();
    let Some(agent) = authenticate(
        &state.shared.config.agents,
        &state.shared.agent_index,
        headers,
    )
    .cloned() else {
        return refuse(
            &state,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or unknown bearer token\n".into(),
        );
    };
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = headers.get(header::SEC_WEBSOCKET_KEY).cloned();
    let version_13 = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        == Some("13");
    let (true, Some(key), true) = (upgrade, key, version_13) else {
        return (
            StatusCode::BAD_REQUEST,
            "a websocket upgrade (version 13) is required\n",
        )
            .into_response();
    };
    if !offers(headers, TUNNEL_SUBPROTOCOL) {
        return refuse(
            &state,
            StatusCode::BAD_REQUEST,
            "subprotocol",
            format!("the websocket subprotocol {TUNNEL_SUBPROTOCOL} is required\n"),
        );
    }
    let Some(quota) = state.tunnels.agents.get(&agent.name) else {
        return (StatusCode::UNAUTHORIZED, "unknown agent\n").into_response();
    };
    let Ok(own) = Arc::clone(&quota.connections).try_acquire_owned() else {
        let text = format!(
            "agent {:?} already holds {} tunnels, this hub's max_connections_per_agent\n",
            agent.name, state.shared.config.limits.max_connections_per_agent
        );
        return refuse(
            &state,
            StatusCode::TOO_MANY_REQUESTS,
            "agent_connection_limit",
            text,
        );
    };
    let Ok(slot) = Arc::clone(&state.shared.agent_slots).try_acquire_owned() else {
        return refuse(
            &state,
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "too many agents connected\n".into(),
        );
    };
    let upgraded = hyper::upgrade::on(&mut request);
    let tracker = state.shared.tracker.clone();
    let name = agent.name.clone();
    tracker.spawn(async move {
        match upgraded.await {
            Ok(io) => carry(io, name, state, [own, slot]).await,
            Err(e) => debug!(agent = %name, error = %e, "the tunnel upgrade did not complete"),
        }
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(TUNNEL_SUBPROTOCOL),
    );
    match HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        Ok(accept) => {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        Err(_) => return StatusCode::BAD_REQUEST.into_response(),
    }
    response
}

/// Decrements a gauge when dropped.
struct GaugeGuard(prometheus::IntGauge);

impl GaugeGuard {
    fn new(gauge: &prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One open tunnel, until it ends or the hub shuts down. `_slots` are its places among its agent's
/// tunnels and among all agent connections.
async fn carry(
    io: hyper::upgrade::Upgraded,
    agent: String,
    state: TunnelState,
    _slots: [OwnedSemaphorePermit; 2],
) {
    let config = tether_protocol::tunnel::websocket_config();
    let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(config)).await;
    let (bytes, pump) = tether_protocol::tunnel::bridge(ws, Keepalive::default());
    let (opener, driver) = tether_protocol::tunnel::open(bytes);
    let _connected = GaugeGuard::new(&state.shared.metrics.tunnels_connected);
    let registration = state.tunnels.register(&agent, opener);
    info!(agent = %agent, "CI tunnel connected");
    // With replicas, the others learn that this one holds the agent's tunnel, for as long as it does.
    let announce = state.shared.replicas.clone().map(|replicas| {
        let agent = agent.clone();
        async move {
            loop {
                replicas.announce_tunnel(&agent).await;
                tokio::time::sleep(crate::replicas::ANNOUNCE_EVERY).await;
            }
        }
    });
    let announcing = async {
        match announce {
            Some(a) => a.await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        () = announcing => "the announcement ended".to_string(),
        end = pump => end.to_string(),
        ended = driver => match ended {
            Ok(()) => "the multiplexer closed".to_string(),
            Err(e) => format!("the multiplexer failed: {e}"),
        },
        () = state.shared.shutdown.cancelled() => "hub shutting down".to_string(),
    };
    drop(registration);
    if let Some(replicas) = &state.shared.replicas
        && state.tunnels.newest(&agent).is_none()
    {
        replicas.retract_tunnel(&agent).await;
    }
    if reason == "hub shutting down" {
        info!(agent = %agent, reason, "CI tunnel disconnected");
    } else {
        warn!(agent = %agent, reason, "CI tunnel disconnected");
    }
}
