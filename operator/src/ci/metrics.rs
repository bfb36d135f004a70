//! CI access's Prometheus metrics. The identity label takes the names of the access file's
//! entries (or `unauthenticated`), so it is bounded by the file.

/// Prometheus handles for CI access, registered once at start-up.
#[derive(Debug, Clone)]
pub struct CiMetrics {
    requests: prometheus::IntCounterVec,
    pub(super) in_flight: prometheus::IntGauge,
    bytes: prometheus::IntCounterVec,
}

impl CiMetrics {
    /// Create `tether_ci_requests_total`, `tether_ci_requests_in_flight` and
    /// `tether_ci_bytes_total` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let requests = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tether_ci_requests_total",
                "CI requests through the tunnel, by identity (the access file's entry name, or \
                 unauthenticated) and the HTTP status answered.",
            ),
            &["identity", "code"],
        )?;
        let in_flight = prometheus::IntGauge::new(
            "tether_ci_requests_in_flight",
            "CI requests (and upgraded connections) being forwarded to the API server.",
        )?;
        let bytes = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tether_ci_bytes_total",
                "Response and upgraded bytes of CI requests, by direction (to_cluster, from_cluster).",
            ),
            &["direction"],
        )?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        Ok(Self {
            requests,
            in_flight,
            bytes,
        })
    }

    /// Count one finished request.
    pub(super) fn finished(&self, identity: &str, status: u16, bytes_in: u64, bytes_out: u64) {
        let code = status.to_string();
        self.requests.with_label_values(&[identity, &code]).inc();
        if bytes_in > 0 {
            self.bytes
                .with_label_values(&["to_cluster"])
                .inc_by(bytes_in);
        }
        if bytes_out > 0 {
            self.bytes
                .with_label_values(&["from_cluster"])
                .inc_by(bytes_out);
        }
    }
}
