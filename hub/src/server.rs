//! The server: the accept loop (bounded connections, graceful drain), the routes and the TLS
//! settings; [`run`] is the hub's entry point. Each connection is served by [`crate::conn`].

use std::future::Future;
use std::io::BufReader;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tether_protocol::CONNECT_PATH;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::config::{Config, TlsFiles};
use crate::conn::Serving;
use crate::metrics::{Metrics, MetricsError};
use crate::state::Shared;
use crate::store::{Store, StoreError};

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
    /// The peer listener could not bind.
    #[error("peers.listen {address}: {source}")]
    PeerListen {
        /// The address.
        address: std::net::SocketAddr,
        /// The bind error.
        #[source]
        source: std::io::Error,
    },
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
            ServerError::PeerListen { .. } => "peer_listen",
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
    let flusher = tokio::spawn(crate::fleet::flusher(
        Arc::clone(&shared.fleet),
        shared.replicas.clone(),
        shared.shutdown.clone(),
    ));
    if let Some(replicas) = &shared.replicas {
        info!(replica = %replicas.id, "sharing pushes with other replicas through Redis");
        tokio::spawn(crate::replicas::maintain(
            Arc::clone(replicas),
            shared.shutdown.clone(),
        ));
        let (deliver_to, resync_to) = (Arc::clone(&shared), Arc::clone(&shared));
        let fleet_to = Arc::clone(&shared);
        tokio::spawn(crate::replicas::subscribe(
            Arc::clone(replicas),
            move |batch| deliver(&deliver_to, batch),
            move |payload| {
                let shared = Arc::clone(&fleet_to);
                tokio::spawn(async move {
                    if let Some(replicas) = &shared.replicas {
                        crate::fleet::heard(&shared.fleet, replicas, &payload).await;
                    }
                });
            },
            move || resync_to.fanout.resync(),
            shared.shutdown.clone(),
        ));
        tokio::spawn(crate::fleet::share(
            Arc::clone(&shared.fleet),
            Arc::clone(replicas),
            shared.shutdown.clone(),
        ));
    }
    let (tunnels, peer_routes) = crate::tunnel::routers(Arc::clone(&shared));
    if let Some(peers) = &shared.config.peers {
        let listener =
            TcpListener::bind(peers.listen)
                .await
                .map_err(|source| ServerError::PeerListen {
                    address: peers.listen,
                    source,
                })?;
        info!(listen = %peers.listen, advertise = %peers.advertise, "peer listener for the other replicas");
        let serving = Serving {
            tls: None,
            app: peer_routes,
            limits: shared.config.limits.clone(),
            metrics: shared.metrics.clone(),
            shutdown: shared.shutdown.clone(),
        };
        tokio::spawn(serve_peers(listener, serving, Arc::clone(&shared)));
    }
    let serving = Serving {
        tls,
        app: router(Arc::clone(&shared), tunnels),
        limits: shared.config.limits.clone(),
        metrics: shared.metrics.clone(),
        shutdown: shared.shutdown.clone(),
    };

    info!(
        version = env!("CARGO_PKG_VERSION"),
        listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        tls = serving.tls.is_some(),
        agents = shared.config.agents.len(),
        webhook_secrets = shared.config.webhooks.len(),
        viewers = shared.config.viewers.len(),
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
        tracing::trace!(%peer, "connection accepted");
        shared
            .tracker
            .spawn(crate::conn::serve(stream, serving.clone(), permit));
    }

    info!("tether-hub shutting down");
    // Refuse new connections before telling agents to go: those that reconnect at once then
    // reach another replica instead of this one's backlog.
    drop(listener);
    shared.shutdown.cancel();
    shared.tracker.close();
    drop(serving);
    if tokio::time::timeout(DRAIN_TIMEOUT, shared.tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close in time");
    }
    let _ = flusher.await;
    info!("tether-hub stopped");
    Ok(())
}

/// Accept the other replicas' connections on the peer listener until shutdown.
async fn serve_peers(listener: TcpListener, serving: Serving, shared: Arc<Shared>) {
    let connections = Arc::new(Semaphore::new(shared.config.limits.max_connections));
    loop {
        let permit = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            permit = Arc::clone(&connections).acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let _ = stream.set_nodelay(true);
                shared
                    .tracker
                    .spawn(crate::conn::serve(stream, serving.clone(), permit));
            }
            Err(e) => {
                warn!(error = %e, "peer accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Tell this replica's agents about pushes another replica accepted, and keep them in this
/// replica's store and fleet view too.
fn deliver(shared: &Arc<Shared>, batch: crate::replicas::Batch) {
    let received = std::time::Instant::now();
    let mut agents = 0;
    for n in &batch.notices {
        agents += shared.fanout.publish(n, received);
    }
    let states: Vec<_> = batch
        .notices
        .iter()
        .map(tether_protocol::Notice::state)
        .collect();
    shared.fleet.pushed(&states);
    debug!(origin = %batch.origin, notices = batch.notices.len(), agents, "pushes from another replica relayed");
    let store = shared.store.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = states.iter().try_for_each(|s| store.put(s)) {
            warn!(error = %e, "could not keep another replica's push in this store");
        }
    });
}

/// `GET /readyz`: 200 unless this replica has never reached the Redis it shares; a replica that
/// lost Redis later still answers 200, saying it is degraded (it keeps relaying to its agents).
async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    use crate::replicas::Readiness;
    match shared.replicas.as_ref().map(|r| r.readiness()) {
        None | Some(Readiness::Ready) => (StatusCode::OK, "ok\n").into_response(),
        Some(Readiness::Degraded(why)) => (StatusCode::OK, format!("{why}\n")).into_response(),
        Some(Readiness::NotReady(why)) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")).into_response()
        }
    }
}

fn router(shared: Arc<Shared>, tunnels: Router) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route(CONNECT_PATH, get(crate::agents::connect))
        .route("/v1/webhooks/{provider}", post(crate::ingest::webhook))
        .with_state(Arc::clone(&shared))
        .merge(crate::fleet::router(Arc::clone(&shared)))
        .merge(tunnels)
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
