//! The operator's Prometheus metrics (one registry, `tether_` prefix, bounded labels only) and the
//! admin HTTP server that serves them with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder,
};

/// Every metric the controller records.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Reconcile duration by result (`success` or an error category).
    pub reconcile_duration: HistogramVec,
    /// Reconciles by result.
    pub reconciles: IntCounterVec,
    /// `git ls-remote` durations.
    pub resolve_duration: Histogram,
    /// Fetch durations, by whether anything was fetched (`fetched`, `cached`).
    pub fetch_duration: HistogramVec,
    /// One run of kustomize or helm on a revision (`renderer`: `kustomize`, `helm`), checkout and
    /// decryption included.
    pub render_duration: HistogramVec,
    /// Plan, dry-run, apply, prune and (with `spec.wait`) the health wait of one revision.
    pub apply_duration: Histogram,
    /// Objects by what applying them did: created, configured, unchanged, pruned.
    pub objects: IntCounterVec,
    /// From a push notice's arrival at the hub to its revision applied.
    pub push_to_applied: Histogram,
    /// Reconciles of an applied revision by what the drift watches said: `clean` (nothing
    /// applied), `drifted`, `unknown` (applied, as no watch could tell).
    pub drift_checks: IntCounterVec,
}

impl Metrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        // Every name carries the `tether_` prefix itself, so that metrics registered elsewhere (the hub
        // client) read the same.
        let registry = Registry::new();
        let buckets = vec![
            0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
        ];
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new(
                "tether_reconcile_duration_seconds",
                "Time spent in one reconcile of a GitRepository, by result",
            )
            .buckets(buckets.clone()),
            &["result"],
        )?;
        let reconciles = IntCounterVec::new(
            Opts::new(
                "tether_reconciles_total",
                "Reconciles by result (success or error category)",
            ),
            &["result"],
        )?;
        let resolve_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tether_git_resolve_duration_seconds",
                "Time to ask a remote what a ref points at",
            )
            .buckets(buckets.clone()),
        )?;
        let fetch_duration = HistogramVec::new(
            HistogramOpts::new(
                "tether_git_fetch_duration_seconds",
                "Time to bring a commit into the mirror cache, by outcome (fetched or cached)",
            )
            .buckets(buckets.clone()),
            &["outcome"],
        )?;
        let render_duration = HistogramVec::new(
            HistogramOpts::new(
                "tether_render_duration_seconds",
                "Time to render a revision with kustomize or helm, its checkout and decryption included",
            )
            .buckets(buckets.clone()),
            &["renderer"],
        )?;
        let apply_duration = Histogram::with_opts(
            HistogramOpts::new(
                "tether_apply_duration_seconds",
                "Time to plan, dry-run, apply and prune one revision (with spec.wait, until healthy)",
            )
            .buckets(buckets.clone()),
        )?;
        let objects = IntCounterVec::new(
            Opts::new(
                "tether_objects_applied_total",
                "Objects by what applying a revision did to them",
            ),
            &["action"],
        )?;
        let push_to_applied = Histogram::with_opts(
            HistogramOpts::new(
                "tether_push_to_applied_seconds",
                "From a push arriving at the hub to its revision applied in the cluster",
            )
            .buckets(buckets),
        )?;
        registry.register(Box::new(reconcile_duration.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(resolve_duration.clone()))?;
        registry.register(Box::new(fetch_duration.clone()))?;
        registry.register(Box::new(render_duration.clone()))?;
        registry.register(Box::new(apply_duration.clone()))?;
        registry.register(Box::new(objects.clone()))?;
        let drift_checks = IntCounterVec::new(
            Opts::new(
                "tether_drift_checks_total",
                "Reconciles of an already applied revision, by whether its objects drifted (clean: nothing applied)",
            ),
            &["result"],
        )?;
        registry.register(Box::new(push_to_applied.clone()))?;
        registry.register(Box::new(drift_checks.clone()))?;
        Ok(Self {
            registry,
            reconcile_duration,
            reconciles,
            resolve_duration,
            fetch_duration,
            render_duration,
            apply_duration,
            objects,
            push_to_applied,
            drift_checks,
        })
    }

    /// A timer that records the reconcile's duration and result when dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer<'_> {
        ReconcileTimer {
            metrics: self,
            started: Instant::now(),
            result: "success",
        }
    }
}

/// Records one reconcile when dropped; [`ReconcileTimer::fail`] sets the result.
#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    started: Instant,
    result: &'static str,
}

impl ReconcileTimer<'_> {
    pub fn fail(&mut self, category: &'static str) {
        self.result = category;
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let secs = self.started.elapsed().as_secs_f64();
        self.metrics
            .reconcile_duration
            .with_label_values(&[self.result])
            .observe(secs);
        self.metrics
            .reconciles
            .with_label_values(&[self.result])
            .inc();
    }
}

/// What `/readyz` reports: ready once the controller watches its resources.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` until `shutdown` resolves.
///
/// The endpoints are read-only and carry no object names or secrets; restrict the port with a
/// NetworkPolicy where metrics must not be read by everyone in the cluster.
pub async fn serve_admin(
    listener: tokio::net::TcpListener,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz_handler))
        .with_state(AdminState {
            registry,
            readiness,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// Binds the admin address, naming it in the error.
pub async fn bind_admin(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(e.kind(), format!("binding the admin address {addr}: {e}"))
    })
}

async fn metrics_handler(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            buf,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz_handler(State(state): State<AdminState>) -> impl IntoResponse {
    if state.readiness.is_ready() {
        (StatusCode::OK, "ok")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "waiting for the GitRepository CRD",
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// docs/metrics.md is the reference: every metric the operator serves (with a hub) has its row.
    #[test]
    fn every_metric_is_in_the_reference() {
        let m = Metrics::new().unwrap();
        crate::hub::HubMetrics::register(&m.registry).unwrap();
        // Vectors appear once they have a label set.
        m.reconcile_duration
            .with_label_values(&["success"])
            .observe(0.1);
        m.reconciles.with_label_values(&["success"]).inc();
        m.fetch_duration.with_label_values(&["cached"]).observe(0.1);
        m.objects.with_label_values(&["created"]).inc();
        let reference =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .unwrap();
        let families = m.registry.gather();
        assert_eq!(families.len(), 11, "a metric was added: document it");
        for family in families {
            let row = format!("| `{}` |", family.name());
            assert!(reference.contains(&row), "docs/metrics.md has no row {row}");
        }
    }
}
