//! The server: the accept loop (bounded connections, optional TLS, graceful drain) and the routes;
//! [`run`] is the hub's entry point.

use std::future::Future;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tether_protocol::CONNECT_PATH;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::{Config, TlsFiles};
use crate::metrics::{Metrics, MetricsError};
use crate::state::Shared;
use crate::store::{Store, StoreError};

/// How long a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to drain.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The TLS certificate or key could not be loaded.
    #[error("TLS: {what} {path}: {reason}")]
    Tls {
        /// `certificate` or `key`.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        reason: String,
    },
}

impl ServerError {
    /// A short fixed name for logs.
    pub fn category(&self) -> &'static str {
        match self {
            ServerError::Store(e) => e.category(),
            ServerError::Metrics(e) => e.category(),
            ServerError::Tls { .. } => "tls",
        }
    }
}

/// Serve on `listener` until `shutdown` completes, then close agent sockets with 1001 (going away) and
/// drain connections.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let tls = config.tls.as_ref().map(load_tls).transpose()?;
    let store = Store::open(&config.data_dir)?;
    let metrics = Metrics::new()?;
    let shared = Arc::new(Shared::new(config, store, metrics));
    let connections = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    let app = router(Arc::clone(&shared));

    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = tls.is_some(),
        agents = shared.config.agents.len(),
        webhook_secrets = shared.config.webhooks.len(),
        data_dir = %shared.config.data_dir.display(),
        "tether-hub started"
    );

    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: pause briefly rather than spin.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        debug!(%peer, "connection accepted");
        shared.tracker.spawn(serve_connection(
            stream,
            tls.clone(),
            app.clone(),
            shared.shutdown.clone(),
            permit,
        ));
    }

    info!("tether-hub shutting down");
    shared.shutdown.cancel();
    shared.tracker.close();
    drop(app);
    if tokio::time::timeout(DRAIN_TIMEOUT, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    info!("tether-hub stopped");
    Ok(())
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(CONNECT_PATH, get(crate::agents::connect))
        .route("/v1/webhooks/{provider}", post(crate::ingest::webhook))
        .layer(DefaultBodyLimit::max(shared.config.limits.max_body_bytes))
        .with_state(shared)
}

async fn serve_connection(
    stream: TcpStream,
    tls: Option<TlsAcceptor>,
    app: Router,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
) {
    match tls {
        Some(acceptor) => {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                Ok(Ok(tls_stream)) => serve_io(TokioIo::new(tls_stream), app, shutdown).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => debug!("TLS handshake timed out"),
            }
        }
        None => serve_io(TokioIo::new(stream), app, shutdown).await,
    }
}

async fn serve_io<I>(io: I, app: Router, shutdown: CancellationToken)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, TowerToHyperService::new(app));
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(error = %e, "connection ended with an error");
            }
        }
        () = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

fn load_tls(files: &TlsFiles) -> Result<TlsAcceptor, ServerError> {
    let cert_err = |reason: String| ServerError::Tls {
        what: "certificate",
        path: files.cert_file.clone(),
        reason,
    };
    let key_err = |reason: String| ServerError::Tls {
        what: "key",
        path: files.key_file.clone(),
        reason,
    };
    let cert_file = std::fs::File::open(&files.cert_file).map_err(|e| cert_err(e.to_string()))?;
    let certs = rustls_pemfile::certs(&mut BufReader::new(cert_file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err("no PEM certificate found".into()));
    }
    let key_file = std::fs::File::open(&files.key_file).map_err(|e| key_err(e.to_string()))?;
    let key = rustls_pemfile::private_key(&mut BufReader::new(key_file))
        .map_err(|e| key_err(e.to_string()))?
        .ok_or_else(|| key_err("no PEM private key found".into()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| cert_err(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| cert_err(e.to_string()))?;
    // Websockets upgrade over HTTP/1.1.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Response {
    match shared.metrics.render() {
        Ok(text) => ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
