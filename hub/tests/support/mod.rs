//! Test support: a hub on 127.0.0.1:0 with a fresh data dir, an HTTP client and a websocket agent.

#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tether_hub::config::Config;
use tether_hub::secret::Environment;
use tether_protocol::{AgentMessage, HubMessage, SUBPROTOCOL, normalize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const DEADLINE: Duration = Duration::from_secs(10);
pub const GITHUB_SECRET: &str = "github-secret";
pub const GITLAB_TOKEN: &str = "gitlab-token";
pub const AGENT_TOKEN: &str = "agent-token";
pub const MAX_BODY: usize = 64 * 1024;

struct Env(HashMap<&'static str, &'static str>);
impl Environment for Env {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| v.to_string())
    }
}

pub fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A config for tests: one agent that may hear about the GitHub fixture's repository and GitLab's.
pub fn config(data_dir: &Path, agent_globs: &[&str]) -> Config {
    let globs = agent_globs
        .iter()
        .map(|g| format!("\"{g}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let yaml = format!(
        r#"
listen: "127.0.0.1:0"
data_dir: "{}"
max_body_bytes: {MAX_BODY}
agents:
  - name: test-agent
    token_sha256: "{}"
    repos: [{globs}]
webhooks:
  - provider: github
    repos: ["github.com/**"]
    secret: {{ env: GH }}
  - provider: gitlab
    repos: ["**"]
    secret: {{ env: GL }}
"#,
        data_dir.display(),
        token_hash(AGENT_TOKEN)
    );
    let env = Env(HashMap::from([("GH", GITHUB_SECRET), ("GL", GITLAB_TOKEN)]));
    Config::from_yaml(&yaml, Path::new("test.yaml"), &env).unwrap()
}

pub struct TestHub {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestHub {
    pub async fn start(config: Config) -> TestHub {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            tether_hub::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestHub {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Shut down and wait until the hub has released everything (its store included).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("hub stops in time")
                .unwrap();
        }
    }

    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let stream = TcpStream::connect(self.addr).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hub.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).unwrap();
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .expect("response in time")
            .unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
        self.request("POST", path, headers, body).await
    }

    /// Post a GitHub fixture signed with the configured secret.
    pub async fn post_github(&self, fixture_name: &str, delivery: &str) -> (u16, String) {
        let body = fixture(fixture_name);
        let sig = format!(
            "sha256={}",
            tether_hub::webhook::hmac_sha256_hex(GITHUB_SECRET.as_bytes(), &body)
        );
        self.post(
            "/v1/webhooks/github",
            &[
                ("x-github-event", "push"),
                ("x-github-delivery", delivery),
                ("x-hub-signature-256", &sig),
                ("content-type", "application/json"),
            ],
            body,
        )
        .await
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, tether_protocol::CONNECT_PATH)
    }

    pub async fn connect(&self, token: &str) -> Result<Agent, tungstenite::Error> {
        let mut req = self.ws_url().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req.headers_mut()
            .insert("sec-websocket-protocol", SUBPROTOCOL.parse().unwrap());
        let (ws, resp) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(req))
            .await
            .expect("connect in time")?;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some(SUBPROTOCOL)
        );
        Ok(Agent { ws })
    }
}

pub struct Agent {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Agent {
    pub async fn watch(&mut self, urls: &[&str]) {
        let repos = urls.iter().map(|u| normalize(u).unwrap()).collect();
        let text = AgentMessage::Watch { repos }.to_json();
        self.ws.send(Message::Text(text.into())).await.unwrap();
    }

    /// The next hub message, skipping pings; panics at the deadline.
    pub async fn next(&mut self) -> HubMessage {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a message before the deadline")
                .expect("the connection stays open")
                .unwrap();
            match frame {
                Message::Text(t) => return HubMessage::from_json(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("unexpected frame {other:?}"),
            }
        }
    }

    /// The next frame of any kind, for close handling.
    pub async fn next_frame(&mut self) -> Option<Result<Message, tungstenite::Error>> {
        tokio::time::timeout(DEADLINE, self.ws.next())
            .await
            .expect("a frame before the deadline")
    }
}

pub fn fixture(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/webhooks")
        .join(name);
    std::fs::read(&path).unwrap()
}
