//! Agents: bearer-token authentication, and the websocket session of one connected operator
//! (watch set, catch-up, push notices, keepalive, and the status reports of the fleet view).

use std::collections::HashSet;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use tether_protocol::{AgentMessage, DEAD_AFTER, HubMessage, PING_INTERVAL, RepoId, SUBPROTOCOL};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, timeout};
use tracing::{info, warn};

use crate::config::AgentConfig;
use crate::limits::{echo_list, echo_text};
use crate::state::{AgentQuota, Shared};

/// The agents by the SHA-256 of their token, so that authenticating a connection is one lookup
/// however many agents the hub knows (a scan of 10,000 hashes per connect was most of a reconnect
/// storm's CPU). The key is a hash of a secret token: how long a lookup takes tells nothing usable
/// about any token.
#[derive(Debug, Clone, Default)]
pub struct AgentIndex(std::collections::HashMap<[u8; 32], usize>);

impl AgentIndex {
    /// The index of `agents`.
    pub fn new(agents: &[AgentConfig]) -> Self {
        Self(
            agents
                .iter()
                .enumerate()
                .map(|(i, a)| (a.token_sha256, i))
                .collect(),
        )
    }
}

/// The agent whose token hash matches the request's `Authorization: Bearer` token, if any.
pub fn authenticate<'a>(
    agents: &'a [AgentConfig],
    index: &AgentIndex,
    headers: &HeaderMap,
) -> Option<&'a AgentConfig> {
    use sha2::Digest as _;
    let value = headers.get("authorization")?.to_str().ok()?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))?
        .trim();
    if token.is_empty() {
        return None;
    }
    let hash: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
    index.0.get(&hash).and_then(|&i| agents.get(i))
}

fn offers_subprotocol(headers: &HeaderMap) -> bool {
    headers
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == SUBPROTOCOL)
}

/// Each agent's websocket read buffer. Agents send little (a watch set, pongs); the library's default
/// of 128 KiB, allocated for every connection, would make memory grow by that much per agent. Larger
/// messages still arrive whole: the buffer is only what is read at once.
const AGENT_READ_BUFFER: usize = 4 * 1024;

/// `GET /v1/connect`: authenticate, then upgrade to a websocket session.
pub(crate) async fn connect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Some(agent) = authenticate(&shared.config.agents, &shared.agent_index, &headers).cloned()
    else {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["unauthorized"])
            .inc();
        return (
            StatusCode::UNAUTHORIZED,
            "missing or unknown bearer token\n",
        )
            .into_response();
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    if !offers_subprotocol(&headers) {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["subprotocol"])
            .inc();
        return (
            StatusCode::BAD_REQUEST,
            format!("the websocket subprotocol {SUBPROTOCOL} is required\n"),
        )
            .into_response();
    }
    let Some(quota) = shared.quota(&agent.name) else {
        return (StatusCode::UNAUTHORIZED, "unknown agent\n").into_response();
    };
    let Ok(own) = Arc::clone(&quota.connections).try_acquire_owned() else {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["agent_connection_limit"])
            .inc();
        let message = format!(
            "agent {:?} already holds {} connections, this hub's max_connections_per_agent\n",
            agent.name, shared.config.limits.max_connections_per_agent
        );
        return (StatusCode::TOO_MANY_REQUESTS, message).into_response();
    };
    let Ok(permit) = Arc::clone(&shared.agent_slots).try_acquire_owned() else {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["too_many_connections"])
            .inc();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many agents connected\n",
        )
            .into_response();
    };
    let tracker = shared.tracker.clone();
    let max_message = shared.config.limits.max_agent_message_bytes;
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(AGENT_READ_BUFFER)
        .max_message_size(max_message)
        .max_frame_size(max_message)
        .on_upgrade(move |socket| {
            tracker.track_future(session(socket, agent, quota, shared, [permit, own]))
        })
}

/// Decrements the connected-agents gauge when the session ends, however it ends.
struct Connected(prometheus::IntGauge);

impl Drop for Connected {
    fn drop(&mut self) {
        self.0.dec();
    }
}

type Sink = SplitSink<WebSocket, Message>;

async fn send(sink: &mut Sink, message: Message) -> Result<(), &'static str> {
    // A peer that does not take a frame within DEAD_AFTER is as good as dead.
    match timeout(DEAD_AFTER, sink.send(message)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err("send failed"),
        Err(_) => Err("send timed out"),
    }
}

async fn send_hub(sink: &mut Sink, message: &HubMessage) -> Result<(), &'static str> {
    send(sink, Message::Text(message.to_json().into())).await
}

/// The session of one agent. `_slots` are its places among all agents and among its own
/// connections, given back when it ends.
async fn session(
    socket: WebSocket,
    agent: AgentConfig,
    quota: Arc<AgentQuota>,
    shared: Arc<Shared>,
    _slots: [OwnedSemaphorePermit; 2],
) {
    shared.metrics.agents_connected.inc();
    let _connected = Connected(shared.metrics.agents_connected.clone());
    shared.fleet.connected(&agent.name);
    info!(agent = %agent.name, "agent connected");

    let mut subscription = shared.fanout.subscribe();
    let mut resyncs = shared.fanout.resyncs();
    let outbox = subscription.outbox_handle();
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
    let mut last_heard = Instant::now();
    // A watch that arrived faster than the agent's rate allows, applied when its turn comes; a
    // newer one replaces it.
    let mut waiting: Option<(Vec<RepoId>, Instant)> = None;

    let reason: &str = loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => {
                let frame = CloseFrame { code: close_code::AWAY, reason: "hub shutting down".into() };
                let _ = send(&mut sink, Message::Close(Some(frame))).await;
                break "hub shutting down";
            }
            incoming = stream.next() => {
                let message = match incoming {
                    None => break "connection closed",
                    Some(Err(_)) => break "connection error",
                    Some(Ok(m)) => m,
                };
                last_heard = Instant::now();
                shared.fleet.seen(&agent.name);
                match message {
                    Message::Text(text) => {
                        let repos = match read_message(text.as_str(), &agent, &shared, &mut sink).await {
                            Ok(Some(repos)) => repos,
                            Ok(None) => continue,
                            Err(e) => break e,
                        };
                        waiting = None;
                        if let Err(e) = watch_when_allowed(repos, &mut waiting, &agent, &quota, &shared, &mut subscription, &mut sink).await {
                            break e;
                        }
                    }
                    Message::Binary(_) => {
                        let err = HubMessage::Error { message: "binary frames are not part of tether.v1".into() };
                        if let Err(e) = send_hub(&mut sink, &err).await {
                            break e;
                        }
                    }
                    Message::Close(_) => break "closed by agent",
                    // Pongs only prove liveness; pings are answered by the websocket layer.
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            () = outbox.ready() => {
                let mut failed = None;
                for (notice, received) in outbox.drain() {
                    if let Err(e) = send_hub(&mut sink, &HubMessage::Push(notice)).await {
                        failed = Some(e);
                        break;
                    }
                    shared.metrics.notices_sent.inc();
                    shared.metrics.fanout_latency.observe(received.elapsed().as_secs_f64());
                }
                if let Some(e) = failed {
                    break e;
                }
            }
            () = tokio::time::sleep_until(waiting.as_ref().map_or_else(Instant::now, |w| w.1)), if waiting.is_some() => {
                if let Some((repos, _)) = waiting.take()
                    && let Err(e) = watch_when_allowed(repos, &mut waiting, &agent, &quota, &shared, &mut subscription, &mut sink).await
                {
                    break e;
                }
            }
            _ = resyncs.changed() => {
                // Notices from other replicas may have been lost: say the latest again.
                let repos = subscription.repos().to_vec();
                if let Err(e) = catch_up(repos, &agent, &shared, &mut sink).await {
                    break e;
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() >= DEAD_AFTER {
                    break "silent for too long";
                }
                if let Err(e) = send(&mut sink, Message::Ping(Bytes::new())).await {
                    break e;
                }
            }
        }
    };
    shared.fleet.disconnected(&agent.name);
    info!(agent = %agent.name, reason, "agent disconnected");
}

/// The watch set a text message carries, or `None` after handling (or answering) any other.
async fn read_message(
    text: &str,
    agent: &AgentConfig,
    shared: &Shared,
    sink: &mut Sink,
) -> Result<Option<Vec<RepoId>>, &'static str> {
    match AgentMessage::from_json(text) {
        Ok(AgentMessage::Watch { repos }) => Ok(Some(repos)),
        Ok(AgentMessage::Report {
            reset,
            operator_version,
            records,
            removed,
        }) => {
            if let Err(refused) =
                shared
                    .fleet
                    .report(&agent.name, reset, operator_version, records, removed)
            {
                shared
                    .metrics
                    .agent_refusals
                    .with_label_values(&["report_refused"])
                    .inc();
                warn!(agent = %agent.name, error = %refused, "status report partly refused");
                send_hub(
                    sink,
                    &HubMessage::Error {
                        message: refused.to_string(),
                    },
                )
                .await?;
            }
            Ok(None)
        }
        Err(e) => {
            // The parser's message may quote the input.
            let message = echo_text(&e.to_string(), shared.config.limits.max_echo_bytes);
            warn!(agent = %agent.name, error = %message, "unreadable message from agent");
            send_hub(sink, &HubMessage::Error { message }).await?;
            Ok(None)
        }
    }
}

/// Apply a watch now if the agent's watch-update rate allows, or keep it in `waiting` until then.
async fn watch_when_allowed(
    repos: Vec<RepoId>,
    waiting: &mut Option<(Vec<RepoId>, Instant)>,
    agent: &AgentConfig,
    quota: &AgentQuota,
    shared: &Shared,
    subscription: &mut crate::fanout::Subscription,
    sink: &mut Sink,
) -> Result<(), &'static str> {
    match quota.take_watch_update() {
        Ok(()) => watch(repos, agent, shared, subscription, sink).await,
        Err(due) => {
            shared
                .metrics
                .agent_refusals
                .with_label_values(&["watch_rate_limited"])
                .inc();
            *waiting = Some((repos, Instant::from_std(due)));
            Ok(())
        }
    }
}

/// Replace the agent's watch set, then send its catch-up.
async fn watch(
    repos: Vec<RepoId>,
    agent: &AgentConfig,
    shared: &Shared,
    subscription: &mut crate::fanout::Subscription,
    sink: &mut Sink,
) -> Result<(), &'static str> {
    let limit = shared.config.limits.max_watched_repos;
    if repos.len() > limit {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["watch_too_large"])
            .inc();
        let message = format!(
            "a watch of {} repositories exceeds this hub's limit of {limit}; the previous watch set stays",
            repos.len()
        );
        return send_hub(sink, &HubMessage::Error { message }).await;
    }
    let (allowed, refused): (Vec<RepoId>, Vec<RepoId>) =
        repos.into_iter().partition(|r| agent.repos.matches(r));
    if !refused.is_empty() {
        shared
            .metrics
            .agent_refusals
            .with_label_values(&["repo_not_allowed"])
            .inc_by(refused.len() as u64);
        let names = echo_list(
            refused.iter().map(RepoId::as_str),
            shared.config.limits.max_echo_bytes,
        );
        warn!(agent = %agent.name, refused = %names, "agent asked for repositories outside its globs");
        let message = format!(
            "agent {:?} may not hear about {names}; they are not watched",
            agent.name
        );
        send_hub(sink, &HubMessage::Error { message }).await?;
    }
    let allowed: Vec<RepoId> = allowed
        .into_iter()
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    // Subscribe before reading the store: a push racing with this watch then shows up in the
    // catch-up, as a notice, or both, but never in neither.
    subscription.set_watch(allowed.iter().cloned().collect());
    info!(agent = %agent.name, repos = allowed.len(), "watch set updated");
    catch_up(allowed, agent, shared, sink).await
}

/// Send the latest push known for each of `allowed`: from this hub's store, and with replicas
/// also from Redis (the later of the two per repository).
async fn catch_up(
    allowed: Vec<RepoId>,
    agent: &AgentConfig,
    shared: &Shared,
    sink: &mut Sink,
) -> Result<(), &'static str> {
    let shared_latest = match &shared.replicas {
        Some(r) => r.latest(&allowed).await,
        None => None,
    };
    let store = shared.store.clone();
    let local = match tokio::task::spawn_blocking(move || store.latest(&allowed)).await {
        Ok(Ok(latest)) => latest,
        Ok(Err(e)) => {
            warn!(agent = %agent.name, error = %e, category = e.category(), "catch-up read failed");
            send_hub(
                sink,
                &HubMessage::Error {
                    message: "catch-up unavailable: the hub's store failed".into(),
                },
            )
            .await?;
            Vec::new()
        }
        Err(e) => {
            warn!(agent = %agent.name, error = %e, "catch-up task failed");
            Vec::new()
        }
    };
    let mut by_repo: std::collections::HashMap<_, tether_protocol::RepoState> =
        std::collections::HashMap::new();
    for state in local.into_iter().chain(shared_latest.into_iter().flatten()) {
        let key = state.repo.key();
        if by_repo
            .get(&key)
            .is_none_or(|old| old.received_at < state.received_at)
        {
            by_repo.insert(key, state);
        }
    }
    let latest = by_repo.into_values().collect();
    send_hub(sink, &HubMessage::Catchup { latest }).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::globs::RepoGlobs;
    use axum::http::HeaderValue;
    use sha2::{Digest, Sha256};

    fn agent(name: &str, token: &str) -> AgentConfig {
        AgentConfig {
            name: name.into(),
            token_sha256: Sha256::digest(token.as_bytes()).into(),
            repos: RepoGlobs::new(&["**".to_string()]).unwrap(),
        }
    }

    fn bearer(token: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
        h
    }

    #[test]
    fn the_matching_token_names_its_agent() {
        let agents = [agent("a", "ta"), agent("b", "tb")];
        let index = AgentIndex::new(&agents);
        assert_eq!(
            authenticate(&agents, &index, &bearer("tb")).unwrap().name,
            "b"
        );
        assert!(authenticate(&agents, &index, &bearer("tc")).is_none());
        assert!(authenticate(&agents, &index, &bearer("")).is_none());
        assert!(authenticate(&agents, &index, &HeaderMap::new()).is_none());
    }
}
