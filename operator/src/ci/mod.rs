//! CI access: CI jobs outside the network reach this cluster's API server through the hub, over a
//! tunnel the operator opened itself ([`crate::hub::run_tunnel`]).
//!
//! The cluster end decides. The hub only routes each request, its bearer token untouched; here the
//! token is checked against the access file ([`config`], `--ci-access FILE`), mapped to a user and
//! groups ([`auth`]), and the request goes to the API server with the operator's own credentials
//! *impersonating* them ([`serve`], [`upstream`]). The operator's own rights never serve a CI
//! request, and a client's `Impersonate-*` headers are refused with 403. Each request ends in one
//! audit line (target `tether_operator::ci::audit`) and is counted in [`metrics`].

pub mod auth;
pub mod config;
pub mod metrics;
pub mod oidc;
pub mod serve;
pub mod upstream;

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::info;

pub use config::{AccessConfig, Identity};
pub use metrics::CiMetrics;
pub use serve::CiProxy;
pub use upstream::Upstream;

/// Reads the access file and builds what serves the tunnel's streams; OIDC issuers' keys are
/// fetched through `proxy` where it applies.
pub fn start(
    path: &Path,
    kube: &kube::Config,
    proxy: &crate::net::ProxyConfig,
    registry: &prometheus::Registry,
) -> anyhow::Result<crate::hub::TunnelHandler> {
    let config = AccessConfig::load(path)?;
    let upstream = Upstream::new(kube)?;
    let metrics = CiMetrics::register(registry).context("registering the CI access metrics")?;
    let oidc_metrics =
        oidc::OidcMetrics::register(registry).context("registering the OIDC metrics")?;
    let verifier = oidc::OidcVerifier::new(config.oidc.clone(), proxy, Some(oidc_metrics))
        .map_err(anyhow::Error::msg)?;
    let auth = auth::Authenticator::new(config.tokens.clone(), verifier);
    let (users, groups) = config.subjects();
    let issuers: Vec<&str> = config.oidc.iter().map(|i| i.issuer.as_str()).collect();
    info!(
        file = %path.display(),
        tokens = config.tokens.len(),
        issuers = ?issuers,
        users = ?users,
        groups = ?groups,
        "CI access enabled: requests through the hub act as these users and groups"
    );
    let proxy = Arc::new(CiProxy::new(config, auth, upstream, metrics));
    Ok(Arc::new(move |stream: tether_protocol::tunnel::Stream| {
        proxy.serve(stream);
    }))
}
