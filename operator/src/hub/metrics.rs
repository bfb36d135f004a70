//! The hub connection's Prometheus metrics, registered once at start-up.

/// Prometheus handles for the hub connection, registered once at start-up.
#[derive(Debug, Clone)]
pub struct HubMetrics {
    pub(super) connected: prometheus::IntGauge,
    pub(super) notices: prometheus::IntCounter,
    pub(super) reconnects: prometheus::IntCounter,
    pub(super) notice_delay: prometheus::Histogram,
}

impl HubMetrics {
    /// Create `tether_hub_connected`, `tether_hub_notices_total`, `tether_hub_reconnects_total` and
    /// `tether_hub_notice_delay_seconds` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let connected = prometheus::IntGauge::new(
            "tether_hub_connected",
            "1 while the websocket to the hub is open, 0 otherwise.",
        )?;
        let notices = prometheus::IntCounter::new(
            "tether_hub_notices_total",
            "Push notices received from the hub (live pushes and missed ones from catch-up).",
        )?;
        let reconnects = prometheus::IntCounter::new(
            "tether_hub_reconnects_total",
            "Dials to the hub after the first one, whether they succeeded or not.",
        )?;
        let notice_delay = prometheus::Histogram::with_opts(
            prometheus::HistogramOpts::new(
                "tether_hub_notice_delay_seconds",
                "From a push's webhook arriving at the hub to its live notice arriving here \
                 (millisecond resolution; compares the hub's clock with this one).",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        registry.register(Box::new(connected.clone()))?;
        registry.register(Box::new(notice_delay.clone()))?;
        registry.register(Box::new(notices.clone()))?;
        registry.register(Box::new(reconnects.clone()))?;
        Ok(Self {
            connected,
            notices,
            reconnects,
            notice_delay,
        })
    }

    /// Whether the websocket is open now.
    pub fn connected(&self) -> bool {
        self.connected.get() == 1
    }

    /// Notices forwarded so far.
    pub fn notices(&self) -> u64 {
        self.notices.get()
    }

    /// Reconnect attempts so far.
    pub fn reconnects(&self) -> u64 {
        self.reconnects.get()
    }
}
