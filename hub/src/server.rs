//! The server: the accept loop (bounded connections, optional TLS, graceful drain), the routes, and the
//! webhook handler that ties verification, the store and the fan-out together.

use std::collections::BTreeSet;
use std::future::Future;
use std::io::BufReader;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tether_protocol::{CONNECT_PATH, Notice, RepoId};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{Config, TlsFiles};
use crate::fanout::Fanout;
use crate::metrics::{Metrics, MetricsError};
use crate::store::{Store, StoreError};
use crate::webhook::{Dedup, Event, Provider};

/// How long a redelivered webhook is recognised.
const DEDUP_WINDOW: Duration = Duration::from_secs(3600);
/// How many delivery ids are remembered.
const DEDUP_CAPACITY: usize = 10_000;
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

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) fanout: Arc<Fanout>,
    pub(crate) metrics: Metrics,
    pub(crate) dedup: Mutex<Dedup>,
    pub(crate) agent_slots: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
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
    let shared = Arc::new(Shared {
        fanout: Fanout::new(metrics.clone()),
        agent_slots: Arc::new(Semaphore::new(config.max_connections)),
        dedup: Mutex::new(Dedup::new(DEDUP_CAPACITY, DEDUP_WINDOW)),
        shutdown: CancellationToken::new(),
        tracker: TaskTracker::new(),
        store,
        metrics,
        config,
    });
    let connections = Arc::new(Semaphore::new(shared.config.max_connections));
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
        .route("/v1/webhooks/{provider}", post(webhook))
        .layer(DefaultBodyLimit::max(shared.config.max_body_bytes))
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

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// `POST /v1/webhooks/{provider}`.
async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = std::time::Instant::now();
    let Ok(provider) = provider.parse::<Provider>() else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown provider", "providers": Provider::ALL.map(Provider::name)}),
        );
    };
    let name = provider.name();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let outcome = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            shared.metrics.webhook(name, outcome);
            warn!(provider = name, outcome, "webhook body refused");
            return rejection.into_response();
        }
    };

    // Verify against every secret configured for this provider; a delivery may only notify the
    // repositories covered by a secret that verified it.
    let verified: Vec<_> = shared
        .config
        .webhooks
        .iter()
        .filter(|w| w.provider == provider)
        .filter(|w| provider.verify(&headers, &body, &w.secret))
        .collect();
    if verified.is_empty() {
        shared.metrics.webhook(name, "unauthorized");
        warn!(provider = name, "webhook signature or token did not verify");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "signature or token did not verify"}),
        );
    }

    let push = match provider.parse(&headers, &body) {
        Ok(Event::Push(p)) => p,
        Ok(Event::Ping) => {
            shared.metrics.webhook(name, "ping");
            info!(provider = name, "webhook ping answered");
            return reply(StatusCode::OK, json!({"status": "pong"}));
        }
        Ok(Event::Ignored { kind }) => {
            shared.metrics.webhook(name, "ignored");
            debug!(provider = name, kind = %kind, "webhook event ignored");
            return reply(StatusCode::OK, json!({"status": "ignored", "event": kind}));
        }
        Err(e) => {
            shared.metrics.webhook(name, "malformed");
            warn!(provider = name, error = %e, "malformed webhook");
            return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
        }
    };

    let (covered, uncovered): (Vec<RepoId>, Vec<RepoId>) = push
        .repos
        .into_iter()
        .partition(|r| verified.iter().any(|w| w.repos.matches(r)));
    if covered.is_empty() {
        shared.metrics.webhook(name, "forbidden");
        let names: Vec<&str> = uncovered.iter().map(RepoId::as_str).collect();
        warn!(provider = name, repos = ?names, "verified webhook for repositories its secret does not cover");
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the secret that verified this delivery does not cover its repository", "repos": names}),
        );
    }

    let delivery = provider.delivery_id(&headers, &body);
    let first_time = shared
        .dedup
        .lock()
        .map(|mut d| d.first_time(&delivery, received))
        .unwrap_or(true);
    if !first_time {
        shared.metrics.webhook(name, "duplicate");
        info!(provider = name, %delivery, "duplicate delivery dropped");
        return reply(
            StatusCode::OK,
            json!({"status": "duplicate", "delivery": delivery}),
        );
    }

    let received_at = tether_protocol::unix_ms();
    let notices: Vec<Notice> = covered
        .iter()
        .flat_map(|repo| {
            push.updates.iter().map(|u| Notice {
                repo: repo.clone(),
                git_ref: u.git_ref.clone(),
                sha: u.sha.clone(),
                delivery: delivery.clone(),
                received_at,
            })
        })
        .collect();

    // Persist before fanning out, so that an agent connecting meanwhile finds it in its catch-up.
    let store = shared.store.clone();
    let states: Vec<_> = covered
        .iter()
        .filter_map(|r| notices.iter().rev().find(|n| &n.repo == r))
        .map(Notice::state)
        .collect();
    let persisted =
        tokio::task::spawn_blocking(move || states.iter().try_for_each(|s| store.put(s))).await;
    let failure = match persisted {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e} ({})", e.category())),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = failure {
        if let Ok(mut d) = shared.dedup.lock() {
            d.forget(&delivery);
        }
        shared.metrics.webhook(name, "store_error");
        warn!(provider = name, %delivery, error = %reason, "could not record push");
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "could not record the push; retry"}),
        );
    }

    let mut agents = 0;
    for n in &notices {
        agents += shared.fanout.publish(n, received);
    }
    shared.metrics.webhook(name, "accepted");
    let repos: BTreeSet<&str> = covered.iter().map(RepoId::as_str).collect();
    let refs: Vec<&str> = push.updates.iter().map(|u| u.git_ref.as_str()).collect();
    info!(provider = name, %delivery, ?repos, ?refs, agents, "push accepted");
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "delivery": delivery, "repos": repos, "refs": refs, "notices": agents}),
    )
}
