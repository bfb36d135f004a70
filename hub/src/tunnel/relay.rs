//! `/k8s-proxy/<agent>/<API path>`: one CI request, relayed as HTTP/1.1 on a stream of its own
//! through the agent's newest tunnel. Bodies stream both ways (nothing is buffered whole), with no
//! relay timeout, and a `101 Switching Protocols` turns the stream into raw bytes both ways.
//! Headers pass as they came, the bearer token included, less the hop-by-hop ones.
//!
//! With replicas, the agent's tunnel may be held by another replica: the request then goes on to
//! that one's peer listener (found through Redis), once, marked so that it is never forwarded
//! again; the peer secret it carries there never reaches the operator.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tether_protocol::tunnel::K8S_PROXY_PREFIX;
use tracing::debug;

use super::{GaugeGuard, TunnelState};
use crate::conn::LongLived;
use tether_protocol::tunnel::{Metered, end_to_end, wants_upgrade};

/// A Kubernetes `Status` object, so that kubectl and helm show the message.
pub(super) fn status(code: StatusCode, reason: &str, message: String) -> Response {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

/// The agent's name and the API path (with its query) from `/k8s-proxy/<agent>/<path>`.
fn split_target(request: &Request) -> (String, String) {
    let path = request.uri().path();
    let after = path
        .strip_prefix(K8S_PROXY_PREFIX)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or("");
    let (agent, rest) = match after.split_once('/') {
        Some((agent, rest)) => (agent, format!("/{rest}")),
        None => (after, "/".to_string()),
    };
    let target = match request.uri().query() {
        Some(q) => format!("{rest}?{q}"),
        None => rest,
    };
    (agent.to_string(), target)
}

/// The header a replica's peer listener requires: the secret the replicas share.
pub(crate) const PEER_SECRET_HEADER: &str = "x-tether-peer-secret";
/// The header naming the replica a request was forwarded by.
pub(crate) const FORWARDED_BY_HEADER: &str = "x-tether-forwarded-by";

/// Relay one CI request.
pub(super) async fn relay(State(state): State<TunnelState>, request: Request) -> Response {
    counted(&state, relay_inner(&state, request, false).await)
}

/// Count a CI request's answer by its status.
fn counted(state: &TunnelState, response: Response) -> Response {
    state
        .shared
        .metrics
        .tunnel_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

/// A CI request another replica forwarded to this one's peer listener: relayed through a local
/// tunnel only.
pub(super) async fn relay_forwarded(
    State(state): State<TunnelState>,
    request: Request,
) -> Response {
    let given = request
        .headers()
        .get(PEER_SECRET_HEADER)
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let expected = state
        .shared
        .config
        .peers
        .as_ref()
        .map(|p| p.secret.expose());
    let allowed =
        expected.is_some_and(|e| bool::from(subtle::ConstantTimeEq::ct_eq(e, given.as_slice())));
    if !allowed {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "the peer listener takes requests from the other replicas only".into(),
        );
    }
    counted(&state, relay_inner(&state, request, true).await)
}

/// Where a CI request goes.
enum Route {
    /// A tunnel this replica holds.
    Local(tether_protocol::tunnel::Opener),
    /// The peer listener of the replica that holds one.
    Peer(String),
}

/// The route to `agent`'s tunnel, waiting up to `tunnel_wait` for one to open here or (unless the
/// request was forwarded already) on another replica.
async fn route(state: &TunnelState, agent: &str, forwarded: bool) -> Option<Route> {
    let wait = state.shared.config.limits.tunnel_wait;
    let deadline = tokio::time::Instant::now() + wait;
    let mut opened = state.tunnels.opened.subscribe();
    let peers = state
        .shared
        .replicas
        .as_ref()
        .filter(|_| !forwarded && state.shared.config.peers.is_some());
    loop {
        let _seen = *opened.borrow_and_update();
        if let Some(opener) = state.tunnels.newest(agent) {
            return Some(Route::Local(opener));
        }
        if let Some(replicas) = peers
            && let Some(address) = replicas.tunnel_peer(agent).await
        {
            return Some(Route::Peer(address));
        }
        let recheck = tokio::time::sleep(std::time::Duration::from_millis(250));
        tokio::select! {
            changed = opened.changed() => if changed.is_err() { return None },
            () = recheck, if peers.is_some() => {}
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

async fn relay_inner(state: &TunnelState, request: Request, forwarded: bool) -> Response {
    let limits = &state.shared.config.limits;
    let metrics = &state.shared.metrics;
    let (agent, target) = split_target(&request);
    let Some(quota) = state.tunnels.agents.get(&agent) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!(
                "this hub has no agent {agent:?}: the server URL is https://<hub>{K8S_PROXY_PREFIX}/<agent name in the hub config>"
            ),
        );
    };
    let opener = match route(state, &agent, forwarded).await {
        Some(Route::Local(opener)) => Some(opener),
        Some(Route::Peer(address)) => {
            return forward(state, &agent, request, &address).await;
        }
        None => None,
    };
    let Some(opener) = opener else {
        let push_connected = state
            .shared
            .quota(&agent)
            .is_some_and(|q| q.connections.available_permits() < limits.max_connections_per_agent);
        return if push_connected {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!(
                    "agent {agent:?} is connected but its operator offers no CI access: start it with --ci-access"
                ),
            )
        } else {
            status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "agent {agent:?} is not connected to this hub (waited {:?} for its tunnel); retry once its operator is back",
                    limits.tunnel_wait
                ),
            )
        };
    };
    let Ok(slot) = Arc::clone(&quota.streams).try_acquire_owned() else {
        let mut refused = status(
            StatusCode::TOO_MANY_REQUESTS,
            "TooManyRequests",
            format!(
                "agent {agent:?} already carries {} CI requests, this hub's max_tunnel_streams_per_agent; retry later",
                limits.max_tunnel_streams_per_agent
            ),
        );
        refused
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return refused;
    };
    let in_flight = GaugeGuard::new(&metrics.tunnel_streams);
    let quiet = request.extensions().get::<LongLived>().map(LongLived::hold);
    let stream = match opener.open().await {
        Ok(s) => s,
        Err(e) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!("the tunnel to agent {agent:?} failed: {e}; retry"),
            );
        }
    };
    let held: Vec<Box<dyn Send>> = vec![Box::new(slot), Box::new(in_flight), Box::new(quiet)];
    let mut headers = end_to_end(request.headers(), wants_upgrade(request.headers()));
    // What only replicas say to each other stays between them.
    headers.remove(PEER_SECRET_HEADER);
    headers.remove(FORWARDED_BY_HEADER);
    exchange(stream, request, target, headers, held, &agent, metrics).await
}

/// Forward a CI request to the replica at `address`, which holds the agent's tunnel.
async fn forward(state: &TunnelState, agent: &str, request: Request, address: &str) -> Response {
    let metrics = &state.shared.metrics;
    let (Some(peers), Some(replicas)) = (&state.shared.config.peers, &state.shared.replicas) else {
        return status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "no peer listener is configured".into(),
        );
    };
    let connected = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(address),
    )
    .await;
    let stream = match connected {
        Ok(Ok(s)) => s,
        Ok(Err(_)) | Err(_) => {
            return status(
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                format!(
                    "the hub replica holding agent {agent:?}'s tunnel cannot be reached; retry"
                ),
            );
        }
    };
    let _ = stream.set_nodelay(true);
    let quiet = request.extensions().get::<LongLived>().map(LongLived::hold);
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let mut headers = end_to_end(request.headers(), wants_upgrade(request.headers()));
    match (
        HeaderValue::from_bytes(peers.secret.expose()),
        HeaderValue::from_str(&replicas.id),
    ) {
        (Ok(secret), Ok(by)) => {
            headers.insert(PEER_SECRET_HEADER, secret);
            headers.insert(FORWARDED_BY_HEADER, by);
        }
        _ => {
            return status(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "the peer secret is not a valid header value".into(),
            );
        }
    }
    if let Ok(host) = HeaderValue::from_str(address) {
        headers.insert(header::HOST, host);
    }
    debug!(
        agent,
        peer = address,
        "CI request forwarded to the replica holding the tunnel"
    );
    let held: Vec<Box<dyn Send>> = vec![Box::new(quiet)];
    exchange(stream, request, target, headers, held, agent, metrics).await
}

/// A relayed body, its data bytes counted as they pass, holding what the exchange holds.
type Relayed<B> = Metered<B, Box<dyn FnMut(usize) + Send>, Vec<Box<dyn Send>>>;

fn metered<B>(body: B, bytes: prometheus::IntCounter, held: Vec<Box<dyn Send>>) -> Relayed<B> {
    Metered::new(body, Box::new(move |n| bytes.inc_by(n as u64)), held)
}

/// Send `request` (to `target`, with `headers`) over `stream` as HTTP/1.1 and stream the answer
/// back, carrying an upgrade through as raw bytes. `held` lives as long as the exchange does.
async fn exchange<S>(
    stream: S,
    mut request: Request,
    target: String,
    headers: axum::http::HeaderMap,
    held: Vec<Box<dyn Send>>,
    agent: &str,
    metrics: &crate::metrics::Metrics,
) -> Response
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Relayed<Body>>(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return bad_gateway(agent, &e),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "a tunnel stream ended with an error");
        }
    });

    let upgrading = wants_upgrade(request.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut outbound = hyper::Request::new(metered(
        body,
        metrics.tunnel_bytes.with_label_values(&["to_cluster"]),
        Vec::new(),
    ));
    *outbound.method_mut() = parts.method;
    *outbound.version_mut() = Version::HTTP_11;
    *outbound.headers_mut() = headers;
    match target.parse() {
        Ok(uri) => *outbound.uri_mut() = uri,
        Err(_) => {
            return status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the request path cannot be relayed".into(),
            );
        }
    }

    let mut response = match sender.send_request(outbound).await {
        Ok(r) => r,
        Err(e) => return bad_gateway(agent, &e),
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = end_to_end(response.headers(), switching);
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let cluster_upgrade = hyper::upgrade::on(&mut response);
        let to_cluster = metrics.tunnel_bytes.with_label_values(&["to_cluster"]);
        let from_cluster = metrics.tunnel_bytes.with_label_values(&["from_cluster"]);
        tokio::spawn(async move {
            let _held = held;
            let (client, cluster) = match tokio::try_join!(client_upgrade, cluster_upgrade) {
                Ok(pair) => pair,
                Err(e) => {
                    debug!(error = %e, "an upgrade through the tunnel did not complete");
                    return;
                }
            };
            let mut client = TokioIo::new(client);
            let mut cluster = TokioIo::new(cluster);
            match tokio::io::copy_bidirectional(&mut client, &mut cluster).await {
                Ok((up, down)) => {
                    to_cluster.inc_by(up);
                    from_cluster.inc_by(down);
                }
                Err(e) => debug!(error = %e, "an upgraded connection through the tunnel ended"),
            }
        });
        let mut answer = Response::new(Body::empty());
        *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        *answer.headers_mut() = headers;
        return answer;
    }
    let (parts, body) = response.into_parts();
    let body = metered(
        body,
        metrics.tunnel_bytes.with_label_values(&["from_cluster"]),
        held,
    );
    let mut answer = Response::new(Body::new(body));
    *answer.status_mut() = parts.status;
    *answer.headers_mut() = headers;
    answer
}

fn bad_gateway(agent: &str, e: &hyper::Error) -> Response {
    status(
        StatusCode::BAD_GATEWAY,
        "BadGateway",
        format!("the operator of agent {agent:?} did not answer through the tunnel: {e}"),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::{HeaderMap, HeaderName};

    fn h(name: &'static str) -> HeaderName {
        HeaderName::from_static(name)
    }

    #[test]
    fn hop_by_hop_headers_stay_behind_and_the_token_passes() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-private"),
        );
        headers.insert(h("x-private"), HeaderValue::from_static("1"));
        headers.insert(h("keep-alive"), HeaderValue::from_static("timeout=5"));
        headers.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let out = end_to_end(&headers, false);
        assert_eq!(out.get(header::AUTHORIZATION).unwrap(), "Bearer t");
        assert_eq!(out.get(header::ACCEPT).unwrap(), "application/json");
        for gone in ["connection", "x-private", "keep-alive", "transfer-encoding"] {
            assert!(!out.contains_key(gone), "{gone} crossed");
        }
    }

    #[test]
    fn an_upgrade_keeps_its_upgrade_headers() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
        assert!(wants_upgrade(&headers));
        let out = end_to_end(&headers, true);
        assert_eq!(out.get(header::UPGRADE).unwrap(), "SPDY/3.1");
        assert_eq!(out.get(header::CONNECTION).unwrap(), "upgrade");
        assert!(!wants_upgrade(&HeaderMap::new()));
    }

    #[test]
    fn the_agent_and_the_api_path_are_split() {
        let request = |uri: &str| Request::builder().uri(uri).body(Body::empty()).unwrap();
        assert_eq!(
            split_target(&request("/k8s-proxy/prod/api/v1/namespaces?watch=1")),
            ("prod".to_string(), "/api/v1/namespaces?watch=1".to_string())
        );
        assert_eq!(
            split_target(&request("/k8s-proxy/prod")),
            ("prod".to_string(), "/".to_string())
        );
    }
}
