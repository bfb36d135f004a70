//! One accepted connection: the TLS handshake, HTTP/1.1 with its header-read timeout and buffer cap,
//! an idle watchdog, and the drain on shutdown.
//!
//! A CI request relayed through a tunnel (a watch, `kubectl wait`, `logs -f`) may rightly move no
//! byte for minutes: while one is in flight on a connection it holds a [`LongLived`] and the idle
//! watchdog leaves that connection alone.
//!
//! Only HTTP/1.1 is served: forges post webhooks with it and websockets upgrade from it, and an
//! HTTP/2 (h2c) connection would escape the header-read timeout, which hyper applies to HTTP/1 only.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::limits::Limits;
use crate::metrics::Metrics;

/// What serving one connection needs besides the stream.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) app: Router,
    pub(crate) limits: Limits,
    pub(crate) metrics: Metrics,
    pub(crate) shutdown: CancellationToken,
}

/// Serve one accepted connection until it ends, is cut by a timeout, or drains on shutdown.
pub(crate) async fn serve(stream: TcpStream, serving: Serving, _permit: OwnedSemaphorePermit) {
    let activity = Activity::new();
    let stream = Watched {
        inner: stream,
        activity: activity.clone(),
    };
    match &serving.tls {
        Some(acceptor) => {
            let handshake = acceptor.accept(stream);
            match tokio::time::timeout(serving.limits.header_read_timeout, handshake).await {
                Ok(Ok(tls)) => serve_http(TokioIo::new(tls), activity, &serving).await,
                Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                Err(_) => {
                    serving.metrics.timed_out("tls_handshake");
                    debug!("TLS handshake timed out");
                }
            }
        }
        None => serve_http(TokioIo::new(stream), activity, &serving).await,
    }
}

async fn serve_http<I>(io: I, activity: Activity, serving: &Serving)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let limits = &serving.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes);
    let long_lived = LongLived::default();
    let service = {
        let app = serving.app.clone();
        let long_lived = long_lived.clone();
        TowerToHyperService::new(tower::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(long_lived.clone());
                tower::ServiceExt::oneshot(app.clone(), request)
            },
        ))
    };
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let idle_until = activity.last() + limits.idle_timeout;
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    if e.is_timeout() {
                        serving.metrics.timed_out("header");
                    }
                    debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = serving.shutdown.cancelled(), if !draining => {
                conn.as_mut().graceful_shutdown();
                draining = true;
            }
            () = tokio::time::sleep_until(idle_until) => {
                if long_lived.active() {
                    // Count the idle time afresh from now on.
                    activity.touch();
                } else if activity.last() + limits.idle_timeout <= Instant::now() {
                    serving.metrics.timed_out("idle");
                    debug!(idle = ?limits.idle_timeout, "connection idle for too long; closed");
                    return;
                }
            }
        }
    }
}

/// How many requests on one connection may stay quiet for as long as they like (CI requests
/// relayed through a tunnel); the idle watchdog spares the connection while any is in flight.
#[derive(Debug, Clone, Default)]
pub(crate) struct LongLived(Arc<AtomicU64>);

impl LongLived {
    /// Marks one such request in flight until the guard is dropped.
    pub(crate) fn hold(&self) -> LongLivedGuard {
        self.0.fetch_add(1, Ordering::Relaxed);
        LongLivedGuard(Arc::clone(&self.0))
    }

    fn active(&self) -> bool {
        self.0.load(Ordering::Relaxed) > 0
    }
}

/// One long-lived request in flight; see [`LongLived`].
#[derive(Debug)]
pub(crate) struct LongLivedGuard(Arc<AtomicU64>);

impl Drop for LongLivedGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// When bytes last moved on a connection, either way.
#[derive(Debug, Clone)]
struct Activity {
    since: Instant,
    millis: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self {
            since: Instant::now(),
            millis: Arc::new(AtomicU64::new(0)),
        }
    }

    fn touch(&self) {
        let millis = u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.millis.store(millis, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.since + Duration::from_millis(self.millis.load(Ordering::Relaxed))
    }
}

/// A stream that records its [`Activity`].
#[derive(Debug)]
struct Watched<S> {
    inner: S,
    activity: Activity,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
