//! The hub over real sockets on 127.0.0.1: webhooks in, notices out.

#![allow(clippy::unwrap_used)]

mod support;

use support::*;
use tether_protocol::HubMessage;
use tokio_tungstenite::tungstenite::{self, Message};

const GITHUB_REPO_HTTPS: &str = "https://github.com/jessesuen/test-repo.git";
const GITHUB_REPO_SCP: &str = "git@github.com:jessesuen/test-repo.git";
const GITHUB_SHA: &str = "63738bb582c8b540af7bcfc18f87c575c3ed66e0";

fn expect_push(msg: HubMessage) -> tether_protocol::Notice {
    match msg {
        HubMessage::Push(n) => n,
        other => panic!("expected a push, got {other:?}"),
    }
}

fn expect_catchup(msg: HubMessage) -> Vec<tether_protocol::RepoState> {
    match msg {
        HubMessage::Catchup { latest } => latest,
        other => panic!("expected a catch-up, got {other:?}"),
    }
}

#[tokio::test]
async fn a_signed_push_reaches_the_watching_agent() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["github.com/jessesuen/*"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent.watch(&[GITHUB_REPO_SCP]).await;
    assert!(expect_catchup(agent.next().await).is_empty());

    let (status, body) = hub.post_github("github-commit-event.json", "d-1").await;
    assert_eq!(status, 202, "{body}");

    let notice = expect_push(agent.next().await);
    assert_eq!(notice.repo.as_str(), "github.com/jessesuen/test-repo");
    assert_eq!(notice.git_ref, "refs/heads/master");
    assert_eq!(notice.sha, GITHUB_SHA);
    assert_eq!(notice.delivery, "github:d-1");

    // A redelivery is acknowledged and dropped.
    let (status, body) = hub.post_github("github-commit-event.json", "d-1").await;
    assert_eq!(status, 200);
    assert!(body.contains("duplicate"), "{body}");

    // The tag push that follows is the next message: the duplicate notified nobody.
    let (status, _) = hub.post_github("github-tag-event.json", "d-2").await;
    assert_eq!(status, 202);
    assert_eq!(expect_push(agent.next().await).git_ref, "refs/tags/v1.0");

    let (status, metrics) = hub.request("GET", "/metrics", &[], Vec::new()).await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("tether_hub_agents_connected 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("tether_hub_webhooks_total{outcome=\"duplicate\",provider=\"github\"} 1")
    );
    assert!(
        metrics.contains("tether_hub_fanout_latency_seconds_count 2"),
        "{metrics}"
    );
    hub.stop().await;
}

#[tokio::test]
async fn a_forged_signature_is_refused_and_notifies_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent.watch(&[GITHUB_REPO_HTTPS]).await;
    expect_catchup(agent.next().await);

    let body = fixture("github-commit-event.json");
    let forged = format!(
        "sha256={}",
        tether_hub::webhook::hmac_sha256_hex(b"not-the-secret", &body)
    );
    let (status, _) = hub
        .post(
            "/v1/webhooks/github",
            &[("x-github-event", "push"), ("x-hub-signature-256", &forged)],
            body,
        )
        .await;
    assert_eq!(status, 401);

    // The next notice the agent sees is the genuine tag push, not the forged commit push.
    let (status, _) = hub.post_github("github-tag-event.json", "d-genuine").await;
    assert_eq!(status, 202);
    let notice = expect_push(agent.next().await);
    assert_eq!(notice.delivery, "github:d-genuine");
    hub.stop().await;
}

#[tokio::test]
async fn a_wrong_agent_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    match hub.connect("wrong-token").await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a wrong token was accepted"),
    }
    hub.stop().await;
}

#[tokio::test]
async fn repos_outside_the_agents_globs_are_refused_and_not_watched() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["github.com/jessesuen/*"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent
        .watch(&[GITHUB_REPO_HTTPS, "https://gitlab.com/group/name.git"])
        .await;
    match agent.next().await {
        HubMessage::Error { message } => {
            assert!(message.contains("gitlab.com/group/name"), "{message}")
        }
        other => panic!("expected an error, got {other:?}"),
    }
    expect_catchup(agent.next().await);

    // A valid GitLab push for the refused repository reaches nobody...
    let (status, body) = hub
        .post(
            "/v1/webhooks/gitlab",
            &[
                ("x-gitlab-event", "Push Hook"),
                ("x-gitlab-token", GITLAB_TOKEN),
            ],
            fixture("gitlab-event.json"),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert!(body.contains("\"notices\":0"), "{body}");
    // ...so the next message is the GitHub push.
    let (status, _) = hub.post_github("github-commit-event.json", "d-3").await;
    assert_eq!(status, 202);
    assert_eq!(
        expect_push(agent.next().await).repo.as_str(),
        "github.com/jessesuen/test-repo"
    );
    hub.stop().await;
}

#[tokio::test]
async fn an_oversized_body_is_413_and_bad_requests_are_explained() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    let big = vec![b' '; MAX_BODY + 1];
    let (status, _) = hub
        .post("/v1/webhooks/github", &[("x-github-event", "push")], big)
        .await;
    assert_eq!(status, 413);

    let (status, _) = hub
        .post("/v1/webhooks/sourcehut", &[], b"{}".to_vec())
        .await;
    assert_eq!(status, 404);

    let garbage = b"not json".to_vec();
    let sig = format!(
        "sha256={}",
        tether_hub::webhook::hmac_sha256_hex(GITHUB_SECRET.as_bytes(), &garbage)
    );
    let (status, body) = hub
        .post(
            "/v1/webhooks/github",
            &[("x-github-event", "push"), ("x-hub-signature-256", &sig)],
            garbage,
        )
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("invalid JSON"), "{body}");

    let ping = fixture("github-ping-event.json");
    let sig = format!(
        "sha256={}",
        tether_hub::webhook::hmac_sha256_hex(GITHUB_SECRET.as_bytes(), &ping)
    );
    let (status, body) = hub
        .post(
            "/v1/webhooks/github",
            &[("x-github-event", "ping"), ("x-hub-signature-256", &sig)],
            ping,
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.contains("pong"), "{body}");

    let (status, body) = hub.request("GET", "/healthz", &[], Vec::new()).await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    hub.stop().await;
}

#[tokio::test]
async fn a_restarted_hub_gives_catch_up_from_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    let (status, _) = hub
        .post_github("github-commit-event.json", "d-before")
        .await;
    assert_eq!(status, 202);
    hub.stop().await;

    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent.watch(&[GITHUB_REPO_SCP]).await;
    let latest = expect_catchup(agent.next().await);
    assert_eq!(latest.len(), 1);
    assert_eq!(latest[0].sha, GITHUB_SHA);
    assert_eq!(latest[0].repo.as_str(), "github.com/jessesuen/test-repo");
    hub.stop().await;
}

#[tokio::test]
async fn shutdown_closes_agent_sockets_with_going_away() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["**"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    agent.watch(&[GITHUB_REPO_HTTPS]).await;
    expect_catchup(agent.next().await);
    let stopping = tokio::spawn(hub.stop());
    loop {
        match agent.next_frame().await {
            Some(Ok(Message::Close(Some(frame)))) => {
                assert_eq!(u16::from(frame.code), 1001);
                break;
            }
            Some(Ok(Message::Ping(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    drop(agent);
    stopping.await.unwrap();
}

/// A watch set many times the size of the hub's per-agent read buffer arrives whole.
#[tokio::test]
async fn a_watch_set_larger_than_the_read_buffer_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let hub = TestHub::start(config(dir.path(), &["github.com/jessesuen/*"])).await;
    let mut agent = hub.connect(AGENT_TOKEN).await.unwrap();
    let others: Vec<String> = (0..2000)
        .map(|i| format!("https://github.com/jessesuen/other-repository-{i}.git"))
        .collect();
    let mut urls: Vec<&str> = others.iter().map(String::as_str).collect();
    urls.push(GITHUB_REPO_HTTPS);
    assert!(urls.iter().map(|u| u.len()).sum::<usize>() > 64 * 1024);
    agent.watch(&urls).await;
    assert!(expect_catchup(agent.next().await).is_empty());

    let (status, body) = hub.post_github("github-commit-event.json", "d-big").await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(expect_push(agent.next().await).sha, GITHUB_SHA);
    hub.stop().await;
}
