//! Starts the hub client from the operator's flags; its notices go to the push triggers.
//!
//! Without `--hub-url` nothing starts: the interval alone keeps every `GitRepository` correct.

use std::collections::BTreeSet;
use std::path::PathBuf;

use anyhow::Context as _;
use tether_protocol::RepoId;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::{self as hub, HubClientConfig, HubMetrics};
use crate::metrics::Metrics;
use crate::net::ProxyConfig;

/// The hub flags, as given.
#[derive(Default)]
pub struct HubSettings {
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub ca_file: Option<PathBuf>,
    pub proxy: ProxyConfig,
    /// Overrides of the protocol's ping interval and dead-connection timeout.
    pub keepalive: Option<std::time::Duration>,
    pub dead_after: Option<std::time::Duration>,
    /// With CI access: what serves each stream of the CI tunnel, which then opens beside the push
    /// channel.
    pub tunnel: Option<super::TunnelHandler>,
    /// With `--hub-report-status`: the records to report for the fleet view.
    pub reports: Option<watch::Receiver<Option<crate::fleet::Records>>>,
}

impl std::fmt::Debug for HubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubSettings")
            .field("url", &self.url)
            .field("token_file", &self.token_file)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .field("keepalive", &self.keepalive)
            .field("dead_after", &self.dead_after)
            .field("tunnel", &self.tunnel.is_some())
            .field("reports", &self.reports.is_some())
            .finish()
    }
}

/// Validates the settings and spawns the client, which tells the hub about `watch_set` and sends
/// the notices it receives to `notices`.
pub fn start(
    settings: HubSettings,
    metrics: &Metrics,
    watch_set: watch::Receiver<BTreeSet<RepoId>>,
    notices: mpsc::Sender<tether_protocol::Notice>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let HubSettings {
        url,
        token_file,
        ca_file,
        proxy,
        keepalive,
        dead_after,
        tunnel,
        reports,
    } = settings;
    let Some(url) = url else {
        if tunnel.is_some() {
            anyhow::bail!(
                "--ci-access needs --hub-url: CI requests reach the operator only through the hub"
            );
        }
        if reports.is_some() {
            anyhow::bail!("--hub-report-status needs --hub-url: the status goes to the hub");
        }
        info!("no hub configured (--hub-url): reconciles run on each GitRepository's interval");
        return Ok(());
    };
    let token_file = token_file.context("--hub-url needs --hub-token-file (the agent token)")?;
    let token = std::fs::read_to_string(&token_file)
        .with_context(|| format!("reading the hub token from {}", token_file.display()))?
        .trim()
        .to_string();
    let mut config = HubClientConfig::new(url, token);
    if let Some(ca) = ca_file {
        config.ca_pem = Some(
            std::fs::read(&ca)
                .with_context(|| format!("reading the hub CA from {}", ca.display()))?,
        );
    }
    config.proxy = proxy;
    if let Some(keepalive) = keepalive {
        config.keepalive = keepalive;
    }
    if let Some(dead_after) = dead_after {
        config.dead_after = dead_after;
    }
    config.reports = reports;
    config.validate()?;
    let hub_metrics = HubMetrics::register(&metrics.registry)?;
    info!(url = %config.url, proxy = config.proxy.is_set(), "connecting to the hub");

    let shutdown = futures::FutureExt::shared(Box::pin(shutdown));
    if let Some(handler) = tunnel {
        let connected = prometheus::IntGauge::new(
            "tether_ci_tunnel_connected",
            "1 while the CI tunnel to the hub is open, 0 otherwise.",
        )?;
        metrics.registry.register(Box::new(connected.clone()))?;
        let config = config.clone();
        let shutdown = shutdown.clone();
        info!(url = %config.url, "opening the CI tunnel to the hub");
        tokio::spawn(async move {
            if let Err(e) = hub::run_tunnel(config, handler, connected, shutdown).await {
                warn!(error = %e, "the CI tunnel stopped; CI access through the hub is unavailable");
            }
        });
    }
    tokio::spawn(async move {
        if let Err(e) = hub::run(config, watch_set, notices, hub_metrics, shutdown).await {
            warn!(error = %e, "the hub client stopped; reconciles run on the interval only");
        }
    });
    Ok(())
}
