//! The hub against slow and hostile clients, over real sockets on 127.0.0.1: each limit in
//! `docs/security.md` holds, and the hub keeps serving everyone else.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use futures::SinkExt;
use support::*;
use tether_hub::test_util::DEADLINE;
use tether_protocol::HubMessage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::{self, Message};

const GITHUB_REPO: &str = "https://github.com/jessesuen/test-repo.git";

/// Read what the hub sends until it closes the connection; panics if it does not within the deadline.
async fn until_closed(stream: &mut (impl AsyncReadExt + Unpin)) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let read_all = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(DEADLINE, read_all)
        .await
        .unwrap_or_else(|_| panic!("the hub did not close the connection within {DEADLINE:?}"));
    String::from_utf8_lossy(&got).into_owned()
}

fn status_of(response: &str) -> Option<u16> {
    response.split_whitespace().nth(1)?.parse().ok()
}

#[tokio::test]
async fn a_request_head_sent_slowly_is_cut_at_the_header_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("header_read_timeout", "300ms");
    let hub = TestHub::start(config.build()).await;

    let mut slow = TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(b"POST /v1/webhooks/github HTTP/1.1\r\nHost: hub.test\r\n")
        .await
        .unwrap();
    // The head never ends: the hub closes the connection without an answer.
    assert_eq!(until_closed(&mut slow).await, "");
    hub.wait_for_metric("tether_hub_connections_timed_out_total{phase=\"header\"} 1")
        .await;
    hub.stop().await;
}

#[tokio::test]
async fn a_kept_alive_connection_with_no_next_request_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("header_read_timeout", "300ms");
    let hub = TestHub::start(config.build()).await;

    let mut idle = TcpStream::connect(hub.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: hub.test\r\n\r\n")
        .await
        .unwrap();
    let answered = until_closed(&mut idle).await;
    assert_eq!(status_of(&answered), Some(200), "{answered}");
    assert!(answered.ends_with("ok\n"), "{answered}");
    hub.stop().await;
}

#[tokio::test]
async fn a_request_head_over_max_header_bytes_is_refused_with_431() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;

    let big = "x".repeat(20 * 1024);
    let mut client = TcpStream::connect(hub.addr).await.unwrap();
    let head = format!("GET /healthz HTTP/1.1\r\nHost: hub.test\r\nX-Big: {big}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let answered = until_closed(&mut client).await;
    assert_eq!(status_of(&answered), Some(431), "{answered}");

    // A head within the limit is served.
    let (status, _) = hub
        .request("GET", "/healthz", &[("x-small", "y")], Vec::new())
        .await;
    assert_eq!(status, 200);
    hub.stop().await;
}

#[tokio::test]
async fn a_webhook_body_sent_slowly_is_answered_408_at_the_body_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("body_read_timeout", "300ms");
    let hub = TestHub::start(config.build()).await;

    let mut slow = TcpStream::connect(hub.addr).await.unwrap();
    slow.write_all(
        b"POST /v1/webhooks/github HTTP/1.1\r\nHost: hub.test\r\nX-GitHub-Event: push\r\n\
          Content-Length: 1000\r\n\r\n{\"ref\":",
    )
    .await
    .unwrap();
    let answered = until_closed(&mut slow).await;
    assert_eq!(status_of(&answered), Some(408), "{answered}");
    hub.wait_for_metric(
        "tether_hub_webhooks_total{outcome=\"body_timeout\",provider=\"github\"} 1",
    )
    .await;
    hub.stop().await;
}

/// A client that pipelines requests and never reads the answers stalls the hub's writes: once no
/// byte moves for `idle_timeout`, the hub closes the connection.
#[tokio::test]
async fn a_connection_that_stops_reading_its_answers_is_closed_when_idle() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("idle_timeout", "500ms");
    let hub = TestHub::start(config.build()).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(hub.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let requests = tokio::spawn(async move {
        // Far more answers (each a few KiB of metrics) than the sockets' buffers hold.
        let request = b"GET /metrics HTTP/1.1\r\nHost: hub.test\r\n\r\n";
        for _ in 0..20_000 {
            if writer.write_all(request).await.is_err() {
                break;
            }
        }
        writer
    });

    hub.wait_for_metric("tether_hub_connections_timed_out_total{phase=\"idle\"} 1")
        .await;
    until_closed(&mut reader).await;
    requests.abort();
    // The hub itself still answers.
    let (status, _) = hub.request("GET", "/healthz", &[], Vec::new()).await;
    assert_eq!(status, 200);
    hub.stop().await;
}

/// Two bodies sent almost whole and then held fill a budget of two bodies: the next webhook is
/// answered 503 at once, and once they go, webhooks are accepted again.
#[tokio::test]
async fn webhook_bodies_in_flight_are_bounded_and_the_next_is_answered_503() {
    let dir = tempfile::tempdir().unwrap();
    let budget = 2 * MAX_BODY;
    let config = test_config(dir.path(), &["**"]).set("max_body_bytes_in_flight", budget);
    let hub = TestHub::start(config.build()).await;

    let mut held = Vec::new();
    for _ in 0..2 {
        let mut slow = TcpStream::connect(hub.addr).await.unwrap();
        let head = format!(
            "POST /v1/webhooks/github HTTP/1.1\r\nHost: hub.test\r\nX-GitHub-Event: push\r\n\
             Content-Length: {MAX_BODY}\r\n\r\n"
        );
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&vec![b' '; MAX_BODY - 1]).await.unwrap();
        held.push(slow);
    }
    hub.wait_for_metric(&format!(
        "tether_hub_webhook_body_bytes {}",
        2 * (MAX_BODY - 1)
    ))
    .await;

    let (status, body) = hub.post_github("github-commit-event.json", "d-busy").await;
    assert_eq!(status, 503, "{body}");
    drop(held);
    hub.wait_for_metric("tether_hub_webhook_body_bytes 0").await;
    let (status, body) = hub.post_github("github-commit-event.json", "d-after").await;
    assert_eq!(status, 202, "{body}");
    hub.stop().await;
}

/// One delivery checked against many secrets is a long run of HMACs over the whole body; the hub
/// answers others meanwhile (the test's runtime has one thread, which the hub shares).
#[tokio::test]
async fn signatures_are_checked_off_the_async_workers() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = TestConfig::new(dir.path())
        .set("max_body_bytes", 1024 * 1024)
        .agent("test-agent", AGENT_TOKEN, &["**"]);
    for i in 0..500 {
        config = config.webhook("github", &["github.com/**"], &format!("tenant-{i}"));
    }
    let hub = std::sync::Arc::new(TestHub::start(config.build()).await);

    let posting = {
        let hub = std::sync::Arc::clone(&hub);
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let sig = format!("sha256={}", "0".repeat(64));
            let headers = [
                ("x-github-event", "push"),
                ("x-hub-signature-256", sig.as_str()),
            ];
            let (status, _) = hub
                .post("/v1/webhooks/github", &headers, vec![b' '; 1024 * 1024])
                .await;
            (status, started.elapsed())
        })
    };
    let mut slowest = Duration::ZERO;
    while !posting.is_finished() {
        let started = tokio::time::Instant::now();
        let (status, _) = hub.request("GET", "/healthz", &[], Vec::new()).await;
        assert_eq!(status, 200);
        slowest = slowest.max(started.elapsed());
    }
    let (status, took) = posting.await.unwrap();
    assert_eq!(status, 401);
    assert!(
        slowest < took / 3,
        "/healthz took up to {slowest:?} while one delivery took {took:?} to verify"
    );
    std::sync::Arc::into_inner(hub).unwrap().stop().await;
}

#[tokio::test]
async fn one_agent_token_cannot_hold_more_connections_than_its_cap() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("max_connections_per_agent", 2);
    let hub = TestHub::start(config.build()).await;

    let first = hub.connect(AGENT_TOKEN).await.unwrap();
    let _second = hub.connect(AGENT_TOKEN).await.unwrap();
    match hub.connect(AGENT_TOKEN).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 429),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a third connection of one agent was accepted"),
    }
    hub.wait_for_metric("tether_hub_agent_refusals_total{reason=\"agent_connection_limit\"} 1")
        .await;

    // A connection that ends gives its place back.
    drop(first);
    hub.wait_for_metric("tether_hub_agents_connected 1").await;
    let mut again = hub.connect(AGENT_TOKEN).await.unwrap();
    again.watch(&[GITHUB_REPO]).await;
    assert!(matches!(again.next().await, HubMessage::Catchup { .. }));
    hub.stop().await;
}

#[tokio::test]
async fn a_websocket_message_over_the_cap_ends_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).set("max_agent_message_bytes", 64 * 1024);
    let hub = TestHub::start(config.build()).await;

    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    let huge = "x".repeat(128 * 1024);
    agent.ws.send(Message::Text(huge.into())).await.unwrap();
    loop {
        match agent.next_frame().await {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Ok(Message::Text(t))) => panic!("the hub read the message and answered: {t}"),
            // A close frame, a reset or the end of the stream.
            _ => break,
        }
    }
    hub.wait_for_metric("tether_hub_agents_connected 0").await;
    hub.stop().await;
}

/// Watches sent faster than the agent's rate: the burst is applied at once, the rest wait, and
/// only the latest of those is applied when its turn comes.
#[tokio::test]
async fn watch_updates_beyond_the_rate_wait_and_the_latest_wins() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["github.com/jessesuen/*"])
        .set("watch_update_burst", 2)
        .set("watch_update_interval", "1s");
    let hub = TestHub::start(config.build()).await;

    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    for i in 0..5 {
        agent
            .watch(&[&format!("https://github.com/jessesuen/other-{i}.git")])
            .await;
    }
    agent.watch(&[GITHUB_REPO]).await;
    for _ in 0..3 {
        assert!(matches!(agent.next().await, HubMessage::Catchup { .. }));
    }

    // The set in force is the last one sent, and no other catch-up is on its way.
    let (status, body) = hub.post_github("github-commit-event.json", "d-rate").await;
    assert_eq!(status, 202, "{body}");
    match agent.next().await {
        HubMessage::Push(n) => assert_eq!(n.repo.as_str(), "github.com/jessesuen/test-repo"),
        other => panic!("expected the push, got {other:?}"),
    }
    hub.wait_for_metric("tether_hub_agent_refusals_total{reason=\"watch_rate_limited\"} 4")
        .await;
    hub.stop().await;
}

#[tokio::test]
async fn refused_repositories_are_echoed_to_the_agent_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["github.com/jessesuen/*"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    let refused: Vec<String> = (0..3000)
        .map(|i| format!("https://elsewhere.example/team/repository-{i}.git"))
        .collect();
    let mut urls: Vec<&str> = refused.iter().map(String::as_str).collect();
    urls.push(GITHUB_REPO);
    agent.watch(&urls).await;
    match agent.next().await {
        HubMessage::Error { message } => {
            assert!(message.len() < 2048, "{} bytes: {message}", message.len());
            assert!(
                message.contains("elsewhere.example/team/repository-0"),
                "{message}"
            );
            assert!(message.contains(" more;"), "{message}");
        }
        other => panic!("expected an error, got {other:?}"),
    }
    // The allowed repository is watched all the same.
    assert!(matches!(agent.next().await, HubMessage::Catchup { .. }));
    hub.stop().await;
}

#[tokio::test]
async fn a_forbidden_delivery_echoes_its_repositories_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_config(dir.path(), &["**"]).webhook(
        "generic",
        &["git.example/allowed/**"],
        "generic-secret",
    );
    let hub = TestHub::start(config.build()).await;
    let urls: Vec<String> = (0..1200)
        .map(|i| format!("\"https://git.example/other/repository-{i}.git\""))
        .collect();
    let body = format!(
        r#"{{"repo_urls":[{}],"ref":"refs/heads/main","sha":"{}"}}"#,
        urls.join(","),
        "1".repeat(40)
    )
    .into_bytes();
    let sig = format!(
        "sha256={}",
        tether_hub::webhook::hmac_sha256_hex(b"generic-secret", &body)
    );
    let (status, answer) = hub
        .post(
            "/v1/webhooks/generic",
            &[("x-tether-signature", &sig)],
            body,
        )
        .await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.len() < 2048, "{} bytes: {answer}", answer.len());
    assert!(
        answer.contains("git.example/other/repository-0"),
        "{answer}"
    );
    assert!(answer.contains("\"repos_left_out\":"), "{answer}");
    hub.stop().await;
}

/// A delivery id is an unsigned header: one tenant's secret must not let its holder claim the ids of
/// deliveries that another tenant's secret verifies.
#[tokio::test]
async fn one_tenants_secret_cannot_pre_claim_another_tenants_delivery_ids() {
    let dir = tempfile::tempdir().unwrap();
    let config = TestConfig::new(dir.path())
        .agent("test-agent", AGENT_TOKEN, &["**"])
        .webhook("github", &["github.com/jessesuen/**"], GITHUB_SECRET)
        .webhook("github", &["github.com/acme/**"], "tenant-a-secret");
    let hub = TestHub::start(config.build()).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent.watch(&[GITHUB_REPO]).await;
    assert!(matches!(agent.next().await, HubMessage::Catchup { .. }));

    // Tenant A signs a push for its own repository with the id tenant B's next delivery will carry.
    let own = String::from_utf8(fixture("github-commit-event.json"))
        .unwrap()
        .replace("jessesuen/test-repo", "acme/app")
        .into_bytes();
    let headers = github_headers("tenant-a-secret", &own, "d-next");
    let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, body) = hub.post("/v1/webhooks/github", &headers, own).await;
    assert_eq!(status, 202, "{body}");

    // Tenant B's real delivery with that id is not a duplicate, and reaches its agent.
    let (status, body) = hub.post_github("github-commit-event.json", "d-next").await;
    assert_eq!(status, 202, "{body}");
    match agent.next().await {
        HubMessage::Push(n) => assert_eq!(n.repo.as_str(), "github.com/jessesuen/test-repo"),
        other => panic!("expected the push, got {other:?}"),
    }
    hub.stop().await;
}
