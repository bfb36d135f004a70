//! `/k8s-proxy/<agent>/<API path>`: one CI request, relayed as HTTP/1.1 on a stream of its own
//! through the agent's newest tunnel. Bodies stream both ways (nothing is buffered whole), with no
//! relay timeout, and a `101 Switching Protocols` turns the stream into raw bytes both ways.
//! Headers pass as they came, the bearer token included, less the hop-by-hop ones.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use tether_protocol::tunnel::K8S_PROXY_PREFIX;
use tracing::debug;

use super::body::Counted;
use super::{GaugeGuard, TunnelState};
use crate::conn::LongLived;
use tether_protocol::tunnel::{end_to_end, wants_upgrade};

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

/// Relay one CI request.
pub(super) async fn relay(State(state): State<TunnelState>, request: Request) -> Response {
    let response = relay_inner(&state, request).await;
    state
        .shared
        .metrics
        .tunnel_requests
        .with_label_values(&[response.status().as_str()])
        .inc();
    response
}

async fn relay_inner(state: &TunnelState, mut request: Request) -> Response {
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
    let Some(opener) = state.tunnels.wait_for(&agent, limits.tunnel_wait).await else {
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
    let (mut sender, connection) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Counted<Body>>(TokioIo::new(stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return bad_gateway(&agent, &e),
    };
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            debug!(error = %e, "a tunnel stream ended with an error");
        }
    });

    let upgrading = wants_upgrade(request.headers());
    let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
    let (parts, body) = request.into_parts();
    let mut outbound = hyper::Request::new(Counted::new(
        body,
        metrics.tunnel_bytes.with_label_values(&["to_cluster"]),
        Vec::new(),
    ));
    *outbound.method_mut() = parts.method;
    *outbound.version_mut() = Version::HTTP_11;
    *outbound.headers_mut() = end_to_end(&parts.headers, upgrading);
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
        Err(e) => return bad_gateway(&agent, &e),
    };
    let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let headers = end_to_end(response.headers(), switching);
    if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
        let cluster_upgrade = hyper::upgrade::on(&mut response);
        let to_cluster = metrics.tunnel_bytes.with_label_values(&["to_cluster"]);
        let from_cluster = metrics.tunnel_bytes.with_label_values(&["from_cluster"]);
        tokio::spawn(async move {
            let _held = (slot, in_flight, quiet);
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
    let held: Vec<Box<dyn Send>> = vec![Box::new(slot), Box::new(in_flight), Box::new(quiet)];
    let body = Counted::new(
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
