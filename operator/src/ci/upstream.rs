//! The API server as CI requests reach it: the operator's own connection settings and
//! credentials (from its kubeconfig or its pod), without the client's timeouts, so that a watch
//! lives as long as the CI client keeps it.

use std::time::Duration;

use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use kube::client::ConfigExt as _;
use tower::util::BoxCloneSyncService;
use tower::{BoxError, ServiceBuilder, ServiceExt as _};

/// How long a TCP connection to the API server may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the API server's connection cannot be set up for CI requests.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The kubeconfig routes through a proxy; CI access does not.
    #[error(
        "the operator's kubeconfig names a proxy-url for the API server; CI access needs a direct connection"
    )]
    Proxy,
    /// The kubeconfig impersonates already; CI requests impersonate their own identity.
    #[error(
        "the operator's kubeconfig impersonates a user or groups; CI access impersonates each request's own identity and cannot combine the two"
    )]
    Impersonating,
    /// kube could not build the TLS connector or the credentials.
    #[error("the API server's connection for CI requests: {0}")]
    Kube(#[from] kube::Error),
}

/// Sends requests to the API server with the operator's credentials.
#[derive(Clone)]
pub struct Upstream {
    service: BoxCloneSyncService<Request<Incoming>, Response<Incoming>, BoxError>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream").finish_non_exhaustive()
    }
}

impl Upstream {
    /// The API server `config` names, with its TLS settings and credentials (a client
    /// certificate, a bearer token, or the pod's refreshed token file).
    pub fn new(config: &kube::Config) -> Result<Self, UpstreamError> {
        if config.proxy_url.is_some() {
            return Err(UpstreamError::Proxy);
        }
        let auth = &config.auth_info;
        if auth.impersonate.is_some()
            || auth.impersonate_groups.is_some()
            || auth.impersonate_uid.is_some()
        {
            return Err(UpstreamError::Impersonating);
        }
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = config.rustls_https_connector_with_connector(http)?;
        let client = Client::builder(TokioExecutor::new()).build::<_, Incoming>(https);
        let service = ServiceBuilder::new()
            .layer(config.base_uri_layer())
            .option_layer(config.auth_layer()?)
            .map_err(BoxError::from)
            .service(client);
        Ok(Self {
            service: BoxCloneSyncService::new(service),
        })
    }

    /// Sends `request` (its URI a path and query) and returns the answer as it streams.
    pub async fn send(&self, request: Request<Incoming>) -> Result<Response<Incoming>, BoxError> {
        self.service.clone().oneshot(request).await
    }
}
