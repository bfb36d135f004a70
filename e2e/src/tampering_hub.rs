//! A hub that tampers: it accepts an operator's CI tunnel like the real hub (`/v1/tunnel`,
//! subprotocol `tether.tunnel.v1`, any agent token) but has no `/k8s-proxy` of its own. The test
//! writes each request itself, headers and all, so it can add `Impersonate-*` headers or alter the
//! token the way a compromised hub could, and see what the operator answers. The push channel
//! (`/v1/connect`) is refused with 404.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tether_protocol::tunnel::{self, Keepalive, Opener, TUNNEL_PATH, TUNNEL_SUBPROTOCOL};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

use crate::wait::wait_until;

/// The tampering hub, listening on `127.0.0.1:PORT` (plain `ws://`).
#[derive(Debug)]
pub struct TamperingHub {
    port: u16,
    tunnel: Arc<Mutex<Option<Opener>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TamperingHub {
    /// Starts listening; an operator pointed at [`TamperingHub::ws_url`] opens its tunnel here.
    pub async fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let tunnel = Arc::new(Mutex::new(None));
        let slot = Arc::clone(&tunnel);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let slot = Arc::clone(&slot);
                tokio::spawn(async move {
                    let Ok(ws) = tokio_tungstenite::accept_hdr_async(socket, tunnel_only).await
                    else {
                        return;
                    };
                    let (bytes, pump) = tunnel::bridge(ws, Keepalive::default());
                    let (opener, driver) = tunnel::open(bytes);
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(opener);
                    tokio::spawn(pump);
                    let _ = driver.await;
                });
            }
        });
        Ok(Self {
            port,
            tunnel,
            accept,
        })
    }

    /// `ws://127.0.0.1:PORT`, for the operator's `--hub-url`.
    pub fn ws_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Waits until an operator's tunnel is open.
    pub fn wait_tunnel(&self, within: Duration) -> Result<()> {
        wait_until(
            "the operator's tunnel at the tampering hub",
            within,
            || match &*self.tunnel.lock().unwrap_or_else(|e| e.into_inner()) {
                Some(opener) if !opener.is_closed() => Ok(()),
                _ => bail!("no tunnel open"),
            },
        )
    }

    /// Sends `GET path` down the tunnel with exactly `headers` (nothing else but `Host`), and
    /// returns the operator's status and body.
    pub async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String)> {
        let opener = self
            .tunnel
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| anyhow!("no tunnel open"))?;
        let stream = opener.open().await.context("opening a stream")?;
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = hyper::Request::get(path).header("host", "tether-hub");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = sender
            .send_request(request.body(Empty::<Bytes>::new())?)
            .await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// The handshake callback: the tunnel's path only, answered with its subprotocol.
// tungstenite's callback type fixes the error as a whole response.
#[allow(clippy::result_large_err)]
fn tunnel_only(request: &Request, mut response: Response) -> Result<Response, ErrorResponse> {
    if request.uri().path() != TUNNEL_PATH {
        let mut refused = ErrorResponse::new(None);
        *refused.status_mut() = http::StatusCode::NOT_FOUND;
        return Err(refused);
    }
    response.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static(TUNNEL_SUBPROTOCOL),
    );
    Ok(response)
}

impl Drop for TamperingHub {
    fn drop(&mut self) {
        self.accept.abort();
    }
}
