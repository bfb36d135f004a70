//! The hub client over real sockets on 127.0.0.1: against the real hub (in-process), a frozen fake hub,
//! and a tiny HTTP CONNECT proxy.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tether_hub::config::Config;
use tether_hub::test_util::{DEADLINE, TestConfig, TestHub as Hub, TestTls as Tls};
use tether_operator::hub::{self, CATCHUP_DELIVERY, HubClientConfig, HubMetrics};
use tether_operator::net::ProxyConfig;
use tether_protocol::{AgentMessage, Notice, RepoId, SUBPROTOCOL, normalize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

const AGENT_TOKEN: &str = "operator-token";
const GENERIC_SECRET: &str = "generic-secret";
const REPO_A: &str = "https://git.example/team/app.git";
const REPO_B: &str = "git@git.example:team/other.git";

// ---------------------------------------------------------------------------------------------------
// Fixtures: the real hub, webhooks, the client under test.

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

fn hub_config(data_dir: &Path, tls: Option<&Tls>) -> Config {
    let config = TestConfig::new(data_dir)
        .agent("operator", AGENT_TOKEN, &["git.example/**"])
        .webhook("generic", &["**"], GENERIC_SECRET);
    match tls {
        Some(tls) => config.tls(tls),
        None => config,
    }
    .build()
}

/// The body of a generic webhook for `url` at `sha`.
fn generic_body(url: &str, sha: &str) -> Vec<u8> {
    format!(r#"{{"repo_urls":["{url}"],"ref":"refs/heads/main","sha":"{sha}"}}"#).into_bytes()
}

/// POST a signed generic webhook over plain HTTP/1.1; returns the status code.
async fn post_webhook(hub: SocketAddr, url: &str, sha: &str) -> u16 {
    let stream = TcpStream::connect(hub).await.unwrap();
    post_webhook_over(stream, url, sha).await
}

/// POST a signed generic webhook over HTTPS, trusting `ca_pem`.
async fn post_webhook_tls(hub: SocketAddr, ca_pem: &str, url: &str, sha: &str) -> u16 {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(hub).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    post_webhook_over(stream, url, sha).await
}

async fn post_webhook_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    url: &str,
    sha: &str,
) -> u16 {
    let body = generic_body(url, sha);
    let signature = tether_hub::webhook::hmac_sha256_hex(GENERIC_SECRET.as_bytes(), &body);
    let head = format!(
        "POST /v1/webhooks/generic HTTP/1.1\r\nHost: hub.test\r\nContent-Type: application/json\r\n\
         X-Tether-Signature: sha256={signature}\r\nX-Tether-Delivery: {sha}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut response))
        .await
        .expect("a webhook response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"))
}

fn repo(url: &str) -> RepoId {
    normalize(url).unwrap()
}

fn repos(urls: &[&str]) -> BTreeSet<RepoId> {
    urls.iter().map(|u| repo(u)).collect()
}

fn sha(n: u8) -> String {
    format!("{n:x}").repeat(40)
}

/// The client under test, running in a task.
struct Client {
    watch: watch::Sender<BTreeSet<RepoId>>,
    notices: mpsc::Receiver<Notice>,
    metrics: HubMetrics,
    registry: prometheus::Registry,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), hub::HubClientError>>,
}

impl Client {
    fn start(config: HubClientConfig, watched: &[&str]) -> Client {
        let registry = prometheus::Registry::new();
        let metrics = HubMetrics::register(&registry).unwrap();
        let (watch_tx, watch_rx) = watch::channel(repos(watched));
        let (notice_tx, notice_rx) = mpsc::channel(16);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(hub::run(
            config,
            watch_rx,
            notice_tx,
            metrics.clone(),
            async {
                let _ = stopped.await;
            },
        ));
        Client {
            watch: watch_tx,
            notices: notice_rx,
            metrics,
            registry,
            stop: Some(stop),
            task,
        }
    }

    async fn next_notice(&mut self) -> Notice {
        tokio::time::timeout(DEADLINE, self.notices.recv())
            .await
            .expect("a notice before the deadline")
            .expect("the client is still running")
    }

    /// Wait (with the deadline) until `check` holds for the metrics.
    async fn until(&self, what: &str, check: impl Fn(&HubMetrics) -> bool) {
        let waited = tokio::time::timeout(DEADLINE, async {
            while !check(&self.metrics) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting until {what}");
    }

    async fn stop(mut self) {
        assert!(!self.task.is_finished(), "the client stopped on its own");
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(DEADLINE, self.task)
            .await
            .expect("the client stops in time")
            .expect("the client did not panic")
            .expect("the client returns Ok on shutdown");
    }
}

fn client_config(url: String) -> HubClientConfig {
    let mut config = HubClientConfig::new(url, format!("{AGENT_TOKEN}\n"));
    config.keepalive = Duration::from_millis(300);
    config.dead_after = Duration::from_secs(1);
    config.connect_timeout = Duration::from_secs(2);
    config
}

// ---------------------------------------------------------------------------------------------------
// Against the real hub.

#[tokio::test]
async fn a_signed_webhook_becomes_a_notice() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(dir.path(), None)).await;
    let mut client = Client::start(client_config(format!("ws://{}", hub.addr)), &[REPO_A]);
    client.until("connected", HubMetrics::connected).await;

    assert_eq!(post_webhook(hub.addr, REPO_A, &sha(1)).await, 202);
    let notice = client.next_notice().await;
    assert_eq!(notice.repo, repo(REPO_A));
    assert_eq!(notice.git_ref, "refs/heads/main");
    assert_eq!(notice.sha, sha(1));

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&client.registry.gather())
        .unwrap();
    assert!(text.contains("tether_hub_connected 1"), "{text}");
    assert!(text.contains("tether_hub_notices_total 1"), "{text}");
    assert!(text.contains("tether_hub_reconnects_total 0"), "{text}");

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_change_of_the_watch_set_is_sent_to_the_hub() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(dir.path(), None)).await;
    let mut client = Client::start(client_config(format!("ws://{}", hub.addr)), &[REPO_A]);

    // Once a push for A arrives, the hub surely holds the watch set {A}.
    assert_eq!(post_webhook(hub.addr, REPO_A, &sha(1)).await, 202);
    assert_eq!(client.next_notice().await.repo, repo(REPO_A));

    // A push for B is not for this client yet; the hub only remembers it.
    assert_eq!(post_webhook(hub.addr, REPO_B, &sha(2)).await, 202);

    // Adding B sends the new set: the hub's catch-up reports B's push (and not A's again: it was
    // already forwarded), then B's next push arrives live.
    client.watch.send_replace(repos(&[REPO_A, REPO_B]));
    let caught_up = client.next_notice().await;
    assert_eq!(
        (caught_up.repo, caught_up.sha, caught_up.delivery.as_str()),
        (repo(REPO_B), sha(2), CATCHUP_DELIVERY)
    );
    assert_eq!(post_webhook(hub.addr, REPO_B, &sha(3)).await, 202);
    let live = client.next_notice().await;
    assert_eq!((live.repo, live.sha), (repo(REPO_B), sha(3)));
    assert_ne!(live.delivery, CATCHUP_DELIVERY);

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_push_missed_while_the_hub_was_down_arrives_by_catchup() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(dir.path(), None)).await;
    let addr = hub.addr;
    let mut client = Client::start(client_config(format!("ws://{addr}")), &[REPO_A]);
    client.until("connected", HubMetrics::connected).await;

    hub.stop().await;
    client.until("disconnected", |m| !m.connected()).await;

    // The push lands while this client is not connected: on another hub process sharing the data dir.
    let other = Hub::start(hub_config(dir.path(), None)).await;
    assert_eq!(post_webhook(other.addr, REPO_A, &sha(7)).await, 202);
    other.stop().await;

    let hub = Hub::restart_at(addr, hub_config(dir.path(), None)).await;
    let notice = client.next_notice().await;
    assert_eq!(
        (notice.repo, notice.sha, notice.delivery.as_str()),
        (repo(REPO_A), sha(7), CATCHUP_DELIVERY)
    );
    assert!(client.metrics.connected());
    assert!(client.metrics.reconnects() >= 1);

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_wrong_token_is_retried_with_backoff_and_never_connects() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(dir.path(), None)).await;
    let mut config = client_config(format!("ws://{}", hub.addr));
    config.token = "not-the-token".into();
    let client = Client::start(config, &[REPO_A]);

    client.until("two retries", |m| m.reconnects() >= 2).await;
    assert!(!client.metrics.connected());
    assert_eq!(client.metrics.notices(), 0);

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn wss_through_an_http_connect_proxy_with_a_private_ca() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let tls = Tls::localhost(dir.path());
    let hub = Hub::start(hub_config(&dir.path().join("data"), Some(&tls))).await;
    let proxy = ConnectProxy::start().await;

    let mut config = client_config(format!("wss://localhost:{}", hub.addr.port()));
    config.ca_pem = Some(tls.ca_pem.clone().into_bytes());
    config.proxy = ProxyConfig::new(
        Some(format!("http://{}", proxy.addr)),
        Some("example.org,.svc.cluster.local".into()),
    );
    let mut client = Client::start(config, &[REPO_A]);
    client.until("connected", HubMetrics::connected).await;

    assert_eq!(
        post_webhook_tls(hub.addr, &tls.ca_pem, REPO_A, &sha(4)).await,
        202
    );
    assert_eq!(client.next_notice().await.sha, sha(4));
    assert_eq!(
        proxy.targets(),
        vec![format!("localhost:{}", hub.addr.port())],
        "one tunnel, to the hub"
    );

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn no_proxy_sends_the_hub_connection_direct() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let hub = Hub::start(hub_config(dir.path(), None)).await;
    let proxy = ConnectProxy::start().await;

    let mut config = client_config(format!("ws://{}", hub.addr));
    config.proxy = ProxyConfig::new(
        Some(format!("http://{}", proxy.addr)),
        Some("localhost, 127.0.0.0/8".into()),
    );
    let mut client = Client::start(config, &[REPO_A]);
    client.until("connected", HubMetrics::connected).await;
    assert_eq!(post_webhook(hub.addr, REPO_A, &sha(5)).await, 202);
    assert_eq!(client.next_notice().await.sha, sha(5));
    assert!(proxy.targets().is_empty());

    client.stop().await;
    hub.stop().await;
}

#[tokio::test]
async fn a_proxy_that_refuses_the_tunnel_is_retried() {
    init_tracing();
    let proxy = ConnectProxy::start_refusing().await;
    let mut config = client_config("wss://hub.example:443".into());
    config.proxy = ProxyConfig::new(Some(proxy.addr.to_string()), None);
    let client = Client::start(config, &[REPO_A]);
    client.until("a retry", |m| m.reconnects() >= 1).await;
    assert!(!client.metrics.connected());
    assert!(proxy.targets().contains(&"hub.example:443".to_string()));
    client.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Against fake hubs: one that freezes after the handshake, one that records what it reads.

#[tokio::test]
async fn a_frozen_hub_is_declared_dead_and_dialled_again() {
    init_tracing();
    let fake = FakeHub::start(false).await;
    let config = client_config(format!("ws://{}", fake.addr));
    let dead_after = config.dead_after;
    let client = Client::start(config, &[REPO_A]);

    let mut accepted = fake.accepted;
    let first = tokio::time::timeout(DEADLINE, accepted.recv())
        .await
        .expect("a first connection")
        .unwrap();
    let second = tokio::time::timeout(DEADLINE, accepted.recv())
        .await
        .expect("a second connection after the first went silent")
        .unwrap();
    let gap = second - first;
    // Declared dead no sooner than dead_after, and soon after it: one backoff ceiling (0.5 s) and slack.
    assert!(
        gap >= dead_after - Duration::from_millis(50),
        "reconnected after {gap:?}"
    );
    assert!(
        gap < dead_after + Duration::from_secs(3),
        "reconnected after {gap:?}"
    );
    assert!(client.metrics.reconnects() >= 1);

    client.stop().await;
}

#[tokio::test]
async fn shutdown_sends_a_close_frame() {
    init_tracing();
    let fake = FakeHub::start(true).await;
    let client = Client::start(client_config(format!("ws://{}", fake.addr)), &[REPO_A]);
    let mut frames = fake.frames;
    let first = tokio::time::timeout(DEADLINE, frames.recv())
        .await
        .expect("a first frame")
        .unwrap();
    let Message::Text(text) = first else {
        panic!("expected the watch message first, got {first:?}")
    };
    assert_eq!(
        AgentMessage::from_json(text.as_str()).unwrap(),
        AgentMessage::Watch {
            repos: vec![repo(REPO_A)]
        }
    );
    client.stop().await;
    let close = tokio::time::timeout(DEADLINE, async {
        while let Some(frame) = frames.recv().await {
            if let Message::Close(frame) = frame {
                return frame;
            }
        }
        panic!("the connection ended without a close frame");
    })
    .await
    .expect("a close frame in time");
    assert_eq!(close.map(|f| u16::from(f.code)), Some(1001));
}

/// A websocket server that completes the handshake (choosing `tether.v1`) and then either reads and
/// reports every frame, or never reads again (a frozen process, as far as the client can tell).
struct FakeHub {
    addr: SocketAddr,
    accepted: mpsc::UnboundedReceiver<tokio::time::Instant>,
    frames: mpsc::UnboundedReceiver<Message>,
}

impl FakeHub {
    async fn start(reading: bool) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (accepted_tx, accepted) = mpsc::unbounded_channel();
        let (frames_tx, frames) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut frozen = Vec::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                // The callback's error type is tungstenite's, not ours to shrink.
                #[allow(clippy::result_large_err)]
                let choose = |_: &Request, mut response: Response| {
                    response
                        .headers_mut()
                        .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
                    Ok(response)
                };
                let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, choose).await else {
                    continue;
                };
                let _ = accepted_tx.send(tokio::time::Instant::now());
                if reading {
                    let frames_tx = frames_tx.clone();
                    tokio::spawn(async move {
                        let (_sink, mut stream) = ws.split();
                        while let Some(Ok(frame)) = stream.next().await {
                            let _ = frames_tx.send(frame);
                        }
                    });
                } else {
                    // Hold the socket open and never read or write again.
                    frozen.push(ws);
                }
            }
        });
        FakeHub {
            addr,
            accepted,
            frames,
        }
    }
}

/// A minimal HTTP CONNECT proxy that records each tunnel's target.
struct ConnectProxy {
    addr: SocketAddr,
    targets: Arc<Mutex<Vec<String>>>,
}

impl ConnectProxy {
    async fn start() -> ConnectProxy {
        Self::start_with(false).await
    }

    async fn start_refusing() -> ConnectProxy {
        Self::start_with(true).await
    }

    async fn start_with(refuse: bool) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let targets = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&targets);
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    while !head.ends_with(b"\r\n\r\n") {
                        let Ok(byte) = client.read_u8().await else {
                            return;
                        };
                        head.push(byte);
                    }
                    let head = String::from_utf8_lossy(&head).into_owned();
                    let mut words = head.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (words.next(), words.next()) else {
                        let _ = client
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    assert!(
                        head.to_ascii_lowercase()
                            .contains(&format!("\r\nhost: {target}\r\n")),
                        "{head}"
                    );
                    seen.lock().unwrap().push(target.to_string());
                    if refuse {
                        let _ = client.write_all(b"HTTP/1.1 403 Forbidden\r\n\r\n").await;
                        return;
                    }
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                        return;
                    };
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        ConnectProxy { addr, targets }
    }

    fn targets(&self) -> Vec<String> {
        self.targets.lock().unwrap().clone()
    }
}
