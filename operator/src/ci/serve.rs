//! One CI request, as it arrives on a tunnel stream: authenticated here, refused if it tries to
//! choose whom it acts as, and forwarded to the API server with the operator's credentials and the
//! mapped identity impersonated. Bodies stream both ways; an upgrade becomes raw bytes. Each request
//! ends in one audit line.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt as _;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tether_protocol::tunnel::{Metered, end_to_end, wants_upgrade};
use tokio::sync::Semaphore;
use tower::BoxError;
use tracing::{debug, info};

use super::auth::Authenticator;
use super::config::{AccessConfig, Identity};
use super::metrics::CiMetrics;
use super::upstream::Upstream;

/// How long the hub may take to send a request's head on a new stream.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// Serves CI requests: authenticates, impersonates, forwards.
#[derive(Debug)]
pub struct CiProxy {
    config: AccessConfig,
    auth: Authenticator,
    upstream: Upstream,
    metrics: CiMetrics,
    /// Requests in flight per identity name.
    slots: HashMap<String, Arc<Semaphore>>,
}

impl CiProxy {
    pub fn new(
        config: AccessConfig,
        auth: Authenticator,
        upstream: Upstream,
        metrics: CiMetrics,
    ) -> Self {
        let slots = config
            .identity_names()
            .map(|name| {
                (
                    name.to_string(),
                    Arc::new(Semaphore::new(config.limits.max_requests_per_identity)),
                )
            })
            .collect();
        Self {
            config,
            auth,
            upstream,
            metrics,
            slots,
        }
    }

    /// Serves the HTTP/1.1 connection on one tunnel stream, in a task of its own.
    pub fn serve<S>(self: &Arc<Self>, stream: S)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let proxy = Arc::clone(self);
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let proxy = Arc::clone(&proxy);
                async move { Ok::<_, Infallible>(proxy.handle(request).await) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
            if let Err(e) = served {
                debug!(error = %e, "a CI tunnel stream ended with an error");
            }
        });
    }

    async fn handle(&self, mut request: Request<Incoming>) -> Response<ProxyBody> {
        let mut audit = Audit {
            identity: None,
            refused: "",
            verb: verb(&request),
            path: request.uri().path().to_string(),
            status: 0,
            started: Instant::now(),
            bytes_in: 0,
            bytes_out: 0,
            metrics: self.metrics.clone(),
        };
        let identity = match self.auth.authenticate(request.headers()).await {
            Ok(identity) => identity,
            Err(e) => {
                audit.refused = e.reason();
                let (code, reason) = e.status();
                return audit.finish_now(status(code, reason, e.to_string()));
            }
        };
        audit.identity = Some(identity.clone());
        if let Some(name) = request
            .headers()
            .keys()
            .find(|n| n.as_str().starts_with("impersonate-"))
        {
            let message = format!(
                "the {name} header is refused: CI access always acts as the identity the token maps to ({:?})",
                identity.user
            );
            return audit.finish_now(status(StatusCode::FORBIDDEN, "Forbidden", message));
        }
        let slot = self
            .slots
            .get(&identity.name)
            .and_then(|s| Arc::clone(s).try_acquire_owned().ok());
        let Some(slot) = slot else {
            let message = format!(
                "{:?} already has {} requests in flight, this cluster's limits.max_requests_per_identity; retry later",
                identity.name, self.config.limits.max_requests_per_identity
            );
            let mut refused = status(StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", message);
            refused
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            return audit.finish_now(refused);
        };

        let upgrading = wants_upgrade(request.headers());
        let client_upgrade = upgrading.then(|| hyper::upgrade::on(&mut request));
        let headers = impersonating(request.headers(), upgrading, &identity);
        let Some(path_and_query) = request.uri().path_and_query().cloned() else {
            return audit.finish_now(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "no request path".into(),
            ));
        };
        *request.headers_mut() = headers;
        *request.uri_mut() = path_and_query.into();
        *request.version_mut() = hyper::Version::HTTP_11;

        let in_flight = InFlight::new(&self.metrics);
        let mut response = match self.upstream.send(request).await {
            Ok(r) => r,
            Err(e) => {
                return audit.finish_now(status(
                    StatusCode::BAD_GATEWAY,
                    "BadGateway",
                    format!("the operator could not reach the API server: {e}"),
                ));
            }
        };
        audit.status = response.status().as_u16();
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        let headers = end_to_end(response.headers(), switching);
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let cluster_upgrade = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                let _held = (slot, in_flight);
                let mut audit = audit;
                if let Ok((client, cluster)) = tokio::try_join!(client_upgrade, cluster_upgrade) {
                    let mut client = TokioIo::new(client);
                    let mut cluster = TokioIo::new(cluster);
                    if let Ok((up, down)) =
                        tokio::io::copy_bidirectional(&mut client, &mut cluster).await
                    {
                        audit.bytes_in = up;
                        audit.bytes_out = down;
                    }
                }
                drop(audit);
            });
            let mut answer = Response::new(empty());
            *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
            *answer.headers_mut() = headers;
            return answer;
        }
        let (parts, body) = response.into_parts();
        // The audit line is written when the body ends (or the client goes away): the meter
        // owns the whole record.
        let body = Metered::new(body, move |n| audit.sent(n), (slot, in_flight));
        let mut answer = Response::new(body.map_err(BoxError::from).boxed_unsync());
        *answer.status_mut() = parts.status;
        *answer.headers_mut() = headers;
        answer
    }
}

/// The Kubernetes verb a request most likely is, for the audit line (the API server's own audit
/// log has the exact one).
fn verb(request: &Request<Incoming>) -> &'static str {
    let watching = request.uri().query().is_some_and(|q| {
        q.split('&')
            .any(|p| matches!(p, "watch=true" | "watch=1" | "watch"))
    });
    if wants_upgrade(request.headers()) {
        return "connect";
    }
    match *request.method() {
        Method::GET if watching || request.uri().path().contains("/watch/") => "watch",
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    }
}

/// The headers sent to the API server: the client's end-to-end ones without its credentials, its
/// `Host` or any `Impersonate-*`, and `Impersonate-User`/`Impersonate-Group` for `identity`.
fn impersonating(headers: &HeaderMap, upgrading: bool, identity: &Identity) -> HeaderMap {
    let mut out = end_to_end(headers, upgrading);
    out.remove(header::AUTHORIZATION);
    out.remove(header::HOST);
    let impersonations: Vec<HeaderName> = out
        .keys()
        .filter(|n| n.as_str().starts_with("impersonate-"))
        .cloned()
        .collect();
    for name in impersonations {
        out.remove(name);
    }
    // The config checked that these are printable ASCII, so they are valid header values.
    if let Ok(user) = HeaderValue::from_str(&identity.user) {
        out.insert(HeaderName::from_static("impersonate-user"), user);
    }
    for group in &identity.groups {
        if let Ok(group) = HeaderValue::from_str(group) {
            out.append(HeaderName::from_static("impersonate-group"), group);
        }
    }
    out
}

/// A Kubernetes `Status` object, so that kubectl and helm show the message.
fn status(code: StatusCode, reason: &str, message: String) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code.as_u16(),
    });
    let mut response = Response::new(
        http_body_util::Full::new(Bytes::from(format!("{body}\n")))
            .map_err(|never| match never {})
            .boxed_unsync(),
    );
    *response.status_mut() = code;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn empty() -> ProxyBody {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Counts a request in flight while it lives.
#[derive(Debug)]
struct InFlight(prometheus::IntGauge);

impl InFlight {
    fn new(metrics: &CiMetrics) -> Self {
        metrics.in_flight.inc();
        Self(metrics.in_flight.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// One request's audit line and metrics, written when it is dropped: when the response (or the
/// upgraded connection) ends, however it ends.
struct Audit {
    identity: Option<Identity>,
    /// Why authentication failed, if it did.
    refused: &'static str,
    verb: &'static str,
    path: String,
    status: u16,
    started: Instant,
    bytes_in: u64,
    bytes_out: u64,
    metrics: CiMetrics,
}

impl Audit {
    fn sent(&mut self, bytes: usize) {
        self.bytes_out += bytes as u64;
    }

    fn finish_now(mut self, response: Response<ProxyBody>) -> Response<ProxyBody> {
        self.status = response.status().as_u16();
        response
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let (name, user) = match &self.identity {
            Some(i) => (i.name.as_str(), i.user.as_str()),
            None => ("", ""),
        };
        let duration = self.started.elapsed();
        info!(
            target: "tether_operator::ci::audit",
            identity = name,
            user,
            refused = self.refused,
            verb = self.verb,
            path = %self.path,
            status = self.status,
            duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX),
            bytes_in = self.bytes_in,
            bytes_out = self.bytes_out,
            "CI request"
        );
        let label = if name.is_empty() {
            "unauthenticated"
        } else {
            name
        };
        self.metrics
            .finished(label, self.status, self.bytes_in, self.bytes_out);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_client_never_chooses_whom_it_acts_as() {
        let mut headers = HeaderMap::new();
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer t"));
        headers.insert(header::HOST, HeaderValue::from_static("hub.example.com"));
        headers.insert("impersonate-user", HeaderValue::from_static("admin"));
        headers.insert(
            "impersonate-group",
            HeaderValue::from_static("system:masters"),
        );
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        let identity = Identity {
            name: "deployer".into(),
            user: "ci-deployer".into(),
            groups: vec!["tether:ci".into(), "deployers".into()],
        };
        let out = impersonating(&headers, false, &identity);
        assert!(!out.contains_key(header::AUTHORIZATION));
        assert!(!out.contains_key(header::HOST));
        assert_eq!(out.get("impersonate-user").unwrap(), "ci-deployer");
        let groups: Vec<_> = out.get_all("impersonate-group").iter().collect();
        assert_eq!(groups, ["tether:ci", "deployers"]);
        assert_eq!(out.get(header::ACCEPT).unwrap(), "application/json");
    }
}
