//! A plain-HTTP front for the test's API server, for one operator to talk through: each request is
//! forwarded with the test's own credentials and its response streamed back (watches included).
//! The front records every write it forwards and when, and can hold Lease requests for ever: the
//! operator's connection hangs for leader election only, while its other requests still reach the
//! API server. That is the partition a frozen SIGSTOP cannot show, a leader that keeps working.

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use anyhow::Result;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper_util::rt::TokioIo;
use tempfile::TempDir;
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One write the front forwarded: when it went on to the API server, its method and path.
#[derive(Debug, Clone)]
pub struct Write {
    pub at: SystemTime,
    pub method: http::Method,
    pub path: String,
}

#[derive(Debug, Default)]
struct State {
    leases_frozen: AtomicBool,
    writes: Mutex<Vec<Write>>,
}

/// The front, listening on `127.0.0.1:PORT`; stops accepting on drop.
#[derive(Debug)]
pub struct ApiFront {
    state: Arc<State>,
    kubeconfig: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

impl ApiFront {
    /// Listens, forwarding to the API server of `upstream` (a kubeconfig) with its credentials.
    pub async fn start(upstream: &Path) -> Result<Self> {
        let client = crate::controlplane::client_for(upstream).await?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let dir = tempfile::Builder::new()
            .prefix("tether-api-front-")
            .tempdir()?;
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: front\n  cluster:\n    \
                 server: http://127.0.0.1:{port}\nusers:\n- name: front\n  user: {{}}\n\
                 contexts:\n- name: front\n  context:\n    cluster: front\n    user: front\n\
                 current-context: front\n"
            ),
        )?;
        let state = Arc::new(State::default());
        let shared = Arc::clone(&state);
        let accept = tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let (client, state) = (client.clone(), Arc::clone(&shared));
                let service = hyper::service::service_fn(move |request| {
                    forward(client.clone(), Arc::clone(&state), request)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(socket), service),
                );
            }
        });
        Ok(Self {
            state,
            kubeconfig,
            accept,
            _dir: dir,
        })
    }

    /// A kubeconfig whose server is this front, without credentials of its own.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// From now on, every request for a Lease hangs without an answer and never reaches the API
    /// server.
    pub fn freeze_leases(&self) {
        self.state.leases_frozen.store(true, Ordering::SeqCst);
    }

    /// The writes forwarded so far, oldest first.
    pub fn writes(&self) -> Vec<Write> {
        self.state
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for ApiFront {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

async fn forward(
    client: kube::Client,
    state: Arc<State>,
    request: http::Request<Incoming>,
) -> Result<http::Response<UnsyncBoxBody<Bytes, BoxError>>, Infallible> {
    let path = request.uri().path().to_owned();
    if path.starts_with("/apis/coordination.k8s.io/") && state.leases_frozen.load(Ordering::SeqCst)
    {
        std::future::pending::<()>().await;
    }
    let (mut parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => return Ok(failed(format!("reading the request body: {e}"))),
    };
    parts.headers.remove(http::header::HOST);
    if !matches!(parts.method, http::Method::GET | http::Method::HEAD) {
        state
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Write {
                at: SystemTime::now(),
                method: parts.method.clone(),
                path,
            });
    }
    let upstream = http::Request::from_parts(parts, kube::client::Body::from(body));
    Ok(match client.send(upstream).await {
        Ok(response) => response.map(|body| body.map_err(BoxError::from).boxed_unsync()),
        Err(e) => failed(format!("forwarding to the API server: {e}")),
    })
}

fn failed(message: String) -> http::Response<UnsyncBoxBody<Bytes, BoxError>> {
    let mut response = http::Response::new(
        Full::new(Bytes::from(message))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = http::StatusCode::BAD_GATEWAY;
    response
}
