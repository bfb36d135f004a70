//! A hub serving in this process on 127.0.0.1, with a small HTTP client and a websocket agent.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tether_protocol::{AgentMessage, HubMessage, SUBPROTOCOL, normalize};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::DEADLINE;
use crate::config::Config;

/// The real hub, serving until [`TestHub::stop`].
#[derive(Debug)]
pub struct TestHub {
    /// Where it listens.
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestHub {
    /// Serve `config` on a fresh port of 127.0.0.1.
    pub async fn start(config: Config) -> TestHub {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        Self::start_on(listener, config)
    }

    /// Bind `addr` again (after a stop), as a restarted hub does.
    pub async fn restart_at(addr: SocketAddr, config: Config) -> TestHub {
        let socket = TcpSocket::new_v4().expect("a socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        socket.bind(addr).expect("bind the old address");
        Self::start_on(socket.listen(128).expect("listen"), config)
    }

    /// Serve `config` on `listener`.
    pub fn start_on(listener: TcpListener, config: Config) -> TestHub {
        let addr = listener.local_addr().expect("a bound address");
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            crate::run(listener, config, async {
                let _ = stopped.await;
            })
            .await
            .expect("the hub runs");
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
                .expect("the hub stops in time")
                .expect("the hub did not panic");
        }
    }

    /// One HTTP/1.1 request on a new connection; the status and the body as text.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> (u16, String) {
        let stream = TcpStream::connect(self.addr).await.expect("connect");
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .expect("an HTTP/1.1 handshake");
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "hub.test");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(Bytes::from(body))).expect("a request");
        let resp = tokio::time::timeout(DEADLINE, sender.send_request(req))
            .await
            .expect("a response in time")
            .expect("a response");
        let status = resp.status().as_u16();
        let body = tokio::time::timeout(DEADLINE, resp.into_body().collect())
            .await
            .expect("the response body in time")
            .expect("the response body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// `POST path`.
    pub async fn post(&self, path: &str, headers: &[(&str, &str)], body: Vec<u8>) -> (u16, String) {
        self.request("POST", path, headers, body).await
    }

    /// The served metrics, as text.
    pub async fn metrics(&self) -> String {
        let (status, text) = self.request("GET", "/metrics", &[], Vec::new()).await;
        assert_eq!(status, 200, "{text}");
        text
    }

    /// Wait until the served metrics contain `line` (e.g. `tether_hub_agents_connected 1`); panics
    /// at the deadline.
    pub async fn wait_for_metric(&self, line: &str) {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let text = self.metrics().await;
            if text.lines().any(|l| l == line) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no metric line {line:?} within {DEADLINE:?}:\n{text}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The agent websocket's URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}{}", self.addr, tether_protocol::CONNECT_PATH)
    }

    /// Connect an agent with `token`, offering `tether.v1`.
    pub async fn connect(&self, token: &str) -> Result<Agent, tungstenite::Error> {
        let mut req = self.ws_url().into_client_request()?;
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("a header value"),
        );
        req.headers_mut().insert(
            "sec-websocket-protocol",
            SUBPROTOCOL.parse().expect("a header value"),
        );
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

/// A websocket agent speaking `tether.v1` by hand.
#[derive(Debug)]
pub struct Agent {
    /// The socket, for frames the helpers do not cover.
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Agent {
    /// Send a watch of these repository URLs.
    pub async fn watch(&mut self, urls: &[&str]) {
        let repos = urls
            .iter()
            .map(|u| normalize(u).expect("a repository URL"))
            .collect();
        let text = AgentMessage::Watch { repos }.to_json();
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send a watch");
    }

    /// The next hub message, skipping pings; panics at the deadline.
    pub async fn next(&mut self) -> HubMessage {
        loop {
            let frame = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a message before the deadline")
                .expect("the connection stays open")
                .expect("a readable frame");
            match frame {
                Message::Text(t) => {
                    return HubMessage::from_json(t.as_str()).expect("a tether.v1 message");
                }
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
