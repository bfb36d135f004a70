//! CI access at the hub over real sockets on 127.0.0.1: a stand-in for the operator's end opens
//! the tunnel and answers each relayed request with what it received, so the tests see exactly
//! what crosses the hub.

#![allow(clippy::unwrap_used)]

mod support;

use std::convert::Infallible;

use futures::StreamExt;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use support::*;
use tether_protocol::tunnel::{self, Keepalive, TUNNEL_PATH, TUNNEL_SUBPROTOCOL};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Opens a tunnel as agent `token` and answers every request with `200` and a body naming the
/// method, the path and the `Authorization` and `Impersonate-User` headers it received.
async fn fake_operator(hub: &TestHub, token: &str) -> tokio::task::JoinHandle<()> {
    let mut req = format!("ws://{}{TUNNEL_PATH}", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        TUNNEL_SUBPROTOCOL.parse().unwrap(),
    );
    let (ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    tokio::spawn(async move {
        let (bytes, pump) = tunnel::bridge(ws, Keepalive::default());
        tokio::spawn(pump);
        let mut incoming = tunnel::accept(bytes);
        while let Some(Ok(stream)) = incoming.next().await {
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                        let header = |name: &str| {
                            req.headers()
                                .get(name)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("-")
                                .to_string()
                        };
                        let echo = format!(
                            "{} {} auth={} as={}",
                            req.method(),
                            req.uri(),
                            header("authorization"),
                            header("impersonate-user")
                        );
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from(echo))))
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

fn hub_config(dir: &std::path::Path) -> tether_hub::Config {
    test_config(dir, &["**"])
        .agent("other", "other-token", &["**"])
        .set("tunnel_wait", "300ms")
        .build()
}

#[tokio::test]
async fn a_request_crosses_the_tunnel_with_its_token_and_path_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(hub_config(dir.path())).await;
    let _operator = fake_operator(&hub, AGENT_TOKEN).await;
    hub.wait_for_metric("tether_hub_tunnels_connected 1").await;

    let (status, body) = hub
        .request(
            "GET",
            "/k8s-proxy/test-agent/api/v1/namespaces/a/configmaps?watch=1&resourceVersion=5",
            &[
                ("authorization", "Bearer the-ci-token"),
                ("impersonate-user", "admin"),
            ],
            Vec::new(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The hub passes the client's headers on (the operator's end is the one that refuses them).
    assert_eq!(
        body,
        "GET /api/v1/namespaces/a/configmaps?watch=1&resourceVersion=5 auth=Bearer the-ci-token as=admin"
    );
    let metrics = hub.metrics().await;
    assert!(
        metrics.contains("tether_hub_tunnel_requests_total{code=\"200\"} 1"),
        "{metrics}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn unknown_agents_get_404_and_absent_tunnels_503_or_404() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(hub_config(dir.path())).await;

    let (status, body) = hub
        .request("GET", "/k8s-proxy/nobody/api", &[], Vec::new())
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(
        body.contains("this hub has no agent \\\"nobody\\\""),
        "{body}"
    );

    // Not connected at all: the hub waits tunnel_wait, then says so.
    let (status, body) = hub
        .request("GET", "/k8s-proxy/other/api", &[], Vec::new())
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("is not connected"), "{body}");

    // Connected for push notices only: its operator offers no CI access.
    let _agent = hub.connect("other-token").await.unwrap();
    hub.wait_for_metric("tether_hub_agents_connected 1").await;
    let (status, body) = hub
        .request("GET", "/k8s-proxy/other/api", &[], Vec::new())
        .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("offers no CI access"), "{body}");

    // A tunnel with a wrong agent token is refused.
    let mut req = format!("ws://{}{TUNNEL_PATH}", hub.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer wrong".parse().unwrap());
    req.headers_mut().insert(
        "sec-websocket-protocol",
        TUNNEL_SUBPROTOCOL.parse().unwrap(),
    );
    let refused = tokio_tungstenite::connect_async(req).await.unwrap_err();
    assert!(refused.to_string().contains("401"), "{refused}");
    hub.stop().await;
}
