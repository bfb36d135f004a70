//! The hub's Prometheus metrics, all prefixed `tether_hub_`, in one registry created at start.
//!
//! Labels are bounded: provider and outcome names are fixed sets; no repository, agent or delivery id.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Why the metrics could not be set up or rendered.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A metric could not be registered (a duplicate name: a programming error).
    #[error("cannot register metric: {0}")]
    Register(#[source] prometheus::Error),
    /// The text exposition could not be produced.
    #[error("cannot encode metrics: {0}")]
    Encode(#[source] prometheus::Error),
}

impl MetricsError {
    /// A short fixed name for logs.
    pub fn category(&self) -> &'static str {
        match self {
            MetricsError::Register(_) => "metrics_register",
            MetricsError::Encode(_) => "metrics_encode",
        }
    }
}

/// The hub's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Agents with an open websocket.
    pub agents_connected: IntGauge,
    /// Webhook deliveries by provider and outcome.
    pub webhooks: IntCounterVec,
    /// Agent connections or watches refused, by reason.
    pub agent_refusals: IntCounterVec,
    /// Push notices sent to agents.
    pub notices_sent: IntCounter,
    /// Notices replaced by a later one for the same repository before a slow agent took them.
    pub notices_coalesced: IntCounter,
    /// Seconds from a webhook's arrival to its notice being written to an agent's socket.
    pub fanout_latency: Histogram,
    /// Connections the hub cut for taking too long, by phase.
    pub connections_timed_out: IntCounterVec,
    /// Bytes of webhook bodies held (being read or verified).
    pub webhook_body_bytes: IntGauge,
    /// CI tunnels open (one per connected operator that offers CI access).
    pub tunnels_connected: IntGauge,
    /// CI requests relayed to a tunnel, or refused before, by HTTP status code.
    pub tunnel_requests: IntCounterVec,
    /// CI requests (and upgraded connections) in flight through the tunnels.
    pub tunnel_streams: IntGauge,
    /// 1 while Redis answers (replicas only).
    pub redis_up: IntGauge,
    /// Accepted push batches waiting for Redis to share them.
    pub redis_pending: IntGauge,
    /// Redis calls that failed, by operation.
    pub redis_errors: IntCounterVec,
    /// Configured agents by `state`: connected or disconnected (fleet view).
    pub fleet_clusters: IntGaugeVec,
    /// `GitRepository` records across the fleet by `state`: current, behind, failing, progressing,
    /// suspended.
    pub fleet_repos: IntGaugeVec,
    /// Bytes relayed through the tunnels, by direction (`to_cluster`, `from_cluster`).
    pub tunnel_bytes: IntCounterVec,
}

impl Metrics {
    /// Create and register every metric.
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let agents_connected = IntGauge::new(
            "tether_hub_agents_connected",
            "Agents with an open websocket",
        )
        .map_err(MetricsError::Register)?;
        let webhooks = IntCounterVec::new(
            Opts::new(
                "tether_hub_webhooks_total",
                "Webhook deliveries by provider and outcome",
            ),
            &["provider", "outcome"],
        )
        .map_err(MetricsError::Register)?;
        let agent_refusals = IntCounterVec::new(
            Opts::new(
                "tether_hub_agent_refusals_total",
                "Agent connections or watched repositories refused, by reason",
            ),
            &["reason"],
        )
        .map_err(MetricsError::Register)?;
        let notices_sent = IntCounter::new(
            "tether_hub_notices_sent_total",
            "Push notices sent to agents",
        )
        .map_err(MetricsError::Register)?;
        let notices_coalesced = IntCounter::new(
            "tether_hub_notices_coalesced_total",
            "Notices replaced by a later one for the same repository before delivery",
        )
        .map_err(MetricsError::Register)?;
        let fanout_latency = Histogram::with_opts(
            HistogramOpts::new(
                "tether_hub_fanout_latency_seconds",
                "Seconds from a webhook's arrival to its notice being written to an agent",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )
        .map_err(MetricsError::Register)?;
        let connections_timed_out = IntCounterVec::new(
            Opts::new(
                "tether_hub_connections_timed_out_total",
                "Connections cut for taking too long, by phase (tls_handshake, header, idle)",
            ),
            &["phase"],
        )
        .map_err(MetricsError::Register)?;
        let webhook_body_bytes = IntGauge::new(
            "tether_hub_webhook_body_bytes",
            "Bytes of webhook bodies held, being read or verified",
        )
        .map_err(MetricsError::Register)?;
        let tunnels_connected = IntGauge::new(
            "tether_hub_tunnels_connected",
            "CI tunnels open from operators",
        )
        .map_err(MetricsError::Register)?;
        let tunnel_requests = IntCounterVec::new(
            Opts::new(
                "tether_hub_tunnel_requests_total",
                "CI requests to /k8s-proxy, by the HTTP status code answered",
            ),
            &["code"],
        )
        .map_err(MetricsError::Register)?;
        let tunnel_streams = IntGauge::new(
            "tether_hub_tunnel_streams",
            "CI requests and upgraded connections in flight through the tunnels",
        )
        .map_err(MetricsError::Register)?;
        let tunnel_bytes = IntCounterVec::new(
            Opts::new(
                "tether_hub_tunnel_bytes_total",
                "Body and upgraded bytes relayed through the tunnels, by direction",
            ),
            &["direction"],
        )
        .map_err(MetricsError::Register)?;
        let fleet_clusters = IntGaugeVec::new(
            Opts::new(
                "tether_hub_fleet_clusters",
                "Configured agents in the fleet view, by state (connected, disconnected)",
            ),
            &["state"],
        )
        .map_err(MetricsError::Register)?;
        let fleet_repos = IntGaugeVec::new(
            Opts::new(
                "tether_hub_fleet_repos",
                "GitRepository records the fleet's operators report, by state (current, behind, failing, progressing, suspended)",
            ),
            &["state"],
        )
        .map_err(MetricsError::Register)?;
        let redis_up = IntGauge::new(
            "tether_hub_redis_up",
            "1 while the shared Redis answers, 0 while this replica relays to its own agents only",
        )
        .map_err(MetricsError::Register)?;
        let redis_pending = IntGauge::new(
            "tether_hub_redis_pending",
            "Accepted push batches waiting for Redis to share them with the other replicas",
        )
        .map_err(MetricsError::Register)?;
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "tether_hub_redis_errors_total",
                "Redis calls that failed or timed out, by operation (dedup, share, catchup, pending_dropped)",
            ),
            &["op"],
        )
        .map_err(MetricsError::Register)?;
        for c in [
            Box::new(agents_connected.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(redis_up.clone()),
            Box::new(redis_pending.clone()),
            Box::new(redis_errors.clone()),
            Box::new(fleet_clusters.clone()),
            Box::new(fleet_repos.clone()),
            Box::new(tunnels_connected.clone()),
            Box::new(tunnel_requests.clone()),
            Box::new(tunnel_streams.clone()),
            Box::new(tunnel_bytes.clone()),
            Box::new(webhooks.clone()),
            Box::new(agent_refusals.clone()),
            Box::new(notices_sent.clone()),
            Box::new(notices_coalesced.clone()),
            Box::new(fanout_latency.clone()),
            Box::new(connections_timed_out.clone()),
            Box::new(webhook_body_bytes.clone()),
        ] {
            registry.register(c).map_err(MetricsError::Register)?;
        }
        Ok(Self {
            registry,
            agents_connected,
            webhooks,
            agent_refusals,
            notices_sent,
            notices_coalesced,
            fanout_latency,
            connections_timed_out,
            webhook_body_bytes,
            tunnels_connected,
            tunnel_requests,
            tunnel_streams,
            tunnel_bytes,
            fleet_clusters,
            fleet_repos,
            redis_up,
            redis_pending,
            redis_errors,
        })
    }

    /// Count a webhook delivery.
    pub fn webhook(&self, provider: &str, outcome: &str) {
        self.webhooks.with_label_values(&[provider, outcome]).inc();
    }

    /// Count a connection cut in `phase` (`tls_handshake`, `header` or `idle`).
    pub fn timed_out(&self, phase: &str) {
        self.connections_timed_out.with_label_values(&[phase]).inc();
    }

    /// The text exposition format.
    pub fn render(&self) -> Result<String, MetricsError> {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .map_err(MetricsError::Encode)?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_the_hub_prefix() {
        let m = Metrics::new().unwrap();
        m.webhook("github", "accepted");
        m.fanout_latency.observe(0.01);
        let text = m.render().unwrap();
        assert!(
            text.contains("tether_hub_webhooks_total{outcome=\"accepted\",provider=\"github\"} 1")
        );
        assert!(text.contains("tether_hub_agents_connected 0"));
        assert!(text.contains("tether_hub_fanout_latency_seconds_bucket"));
    }

    /// docs/metrics.md is the reference: every metric the hub serves has its row there.
    #[test]
    fn every_metric_is_in_the_reference() {
        let m = Metrics::new().unwrap();
        m.webhook("github", "accepted");
        m.agent_refusals.with_label_values(&["unauthorized"]).inc();
        m.timed_out("header");
        m.tunnel_requests.with_label_values(&["200"]).inc();
        m.tunnel_bytes.with_label_values(&["to_cluster"]).inc();
        m.fleet_clusters.with_label_values(&["connected"]).set(1);
        m.fleet_repos.with_label_values(&["current"]).set(1);
        m.redis_errors.with_label_values(&["share"]).inc();
        let reference =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
                .unwrap();
        let families = m.registry.gather();
        assert_eq!(families.len(), 17, "a metric was added: document it");
        for family in families {
            let row = format!("| `{}` |", family.name());
            assert!(reference.contains(&row), "docs/metrics.md has no row {row}");
        }
    }
}
