//! An issuer's verification keys: read from its JWKS (found by discovery), cached, fetched again
//! when old or for a key id the cache does not hold, one fetch at a time and rate-limited.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tracing::{debug, info, warn};

use super::{
    FETCH_TIMEOUT, KEYS_MAX_AGE, MAX_DOCUMENT_BYTES, OidcMetrics, REFETCH_INTERVAL, Refusal,
};
use crate::net::{HostPort, ProxyConfig};

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

/// One verification key of an issuer.
#[derive(Debug)]
pub struct VerifyKey {
    pub(super) kid: Option<String>,
    /// The algorithms it may verify: by its type and curve, narrowed by its own `alg`.
    pub(super) algorithms: Vec<Algorithm>,
    pub(super) key: DecodingKey,
}

impl VerifyKey {
    /// The key of a JWK, if it is a public signature key of an allowed type; why not otherwise.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, String> {
        if let Some(usage) = &jwk.common.public_key_use
            && *usage != PublicKeyUse::Signature
        {
            return Err("not a signature key (use is not sig)".to_string());
        }
        let by_type: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let n = URL_SAFE_NO_PAD
                    .decode(&rsa.n)
                    .map_err(|_| "its modulus is not base64url".to_string())?;
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if significant < MIN_RSA_MODULUS_BYTES {
                    return Err(format!(
                        "an RSA key of {} bits; at least 2048 are needed",
                        significant * 8
                    ));
                }
                &[
                    Algorithm::RS256,
                    Algorithm::RS384,
                    Algorithm::RS512,
                    Algorithm::PS256,
                    Algorithm::PS384,
                    Algorithm::PS512,
                ]
            }
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => return Err("an EC key on an unsupported curve".to_string()),
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                &[Algorithm::EdDSA]
            }
            AlgorithmParameters::OctetKey(_) => {
                return Err("a symmetric (oct) key, never used".to_string());
            }
            _ => return Err("an unsupported key type".to_string()),
        };
        let algorithms: Vec<Algorithm> = match jwk.common.key_algorithm {
            None => by_type.to_vec(),
            Some(alg) => match signature_algorithm(alg) {
                Some(alg) if by_type.contains(&alg) => vec![alg],
                _ => return Err("its alg does not fit its key type".to_string()),
            },
        };
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("unreadable: {e}"))?;
        Ok(Self {
            kid: jwk.common.key_id.clone(),
            algorithms,
            key,
        })
    }
}

fn signature_algorithm(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

/// The usable keys of a JWKS document, and how many it held that are not.
pub fn keys_from_jwks(document: &Value) -> Result<(Vec<VerifyKey>, usize), String> {
    let entries = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no keys list")?;
    let mut keys = Vec::new();
    let mut skipped = 0;
    for (i, entry) in entries.iter().enumerate() {
        let parsed = serde_json::from_value::<Jwk>(entry.clone())
            .map_err(|e| format!("unreadable: {e}"))
            .and_then(|jwk| VerifyKey::from_jwk(&jwk));
        match parsed {
            Ok(key) => keys.push(key),
            Err(why) => {
                debug!(index = i, why = %why, "a JWKS key is left out");
                skipped += 1;
            }
        }
    }
    Ok((keys, skipped))
}

/// The keys of one issuer, as last fetched.
#[derive(Debug)]
pub struct KeySet {
    keys: Vec<Arc<VerifyKey>>,
    fetched_at: Instant,
}

impl KeySet {
    pub fn new(keys: Vec<VerifyKey>, fetched_at: Instant) -> Self {
        Self {
            keys: keys.into_iter().map(Arc::new).collect(),
            fetched_at,
        }
    }

    /// The key for `kid` and `alg`. Without a `kid`, the one key that allows `alg`, if only one
    /// does.
    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Lookup {
        match kid {
            Some(kid) => match self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)) {
                Some(key) if key.algorithms.contains(&alg) => Lookup::Found(Arc::clone(key)),
                Some(_) => Lookup::WrongAlgorithm,
                None => Lookup::NoSuchKid,
            },
            None => {
                let mut fitting = self.keys.iter().filter(|k| k.algorithms.contains(&alg));
                match (fitting.next(), fitting.next()) {
                    (Some(key), None) => Lookup::Found(Arc::clone(key)),
                    _ => Lookup::NoSuchKid,
                }
            }
        }
    }
}

enum Lookup {
    Found(Arc<VerifyKey>),
    NoSuchKid,
    WrongAlgorithm,
}

/// What the cache holds for one issuer, and when it last went to the issuer.
#[derive(Debug, Default)]
pub struct KeyState {
    keys: Option<Arc<KeySet>>,
    /// The last fetch made for a key id the cache did not hold.
    last_refetch: Option<Instant>,
    /// The last fetch that failed, while no fetch succeeded since.
    last_failure: Option<Instant>,
}

/// What to do for a token's key, decided from the cache alone.
#[derive(Debug)]
pub(super) enum Plan {
    Use(Arc<VerifyKey>),
    /// Fetch the keys; `refetch` when it is for an unknown key id (rate-limited).
    Fetch {
        refetch: bool,
    },
    Refuse(Refusal),
}

impl KeyState {
    pub(super) fn plan(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Plan {
        let recent = |t: Option<Instant>| {
            t.is_some_and(|t| now.saturating_duration_since(t) < REFETCH_INTERVAL)
        };
        let Some(set) = &self.keys else {
            return if recent(self.last_failure) {
                Plan::Refuse(Refusal::KeysUnavailable)
            } else {
                Plan::Fetch { refetch: false }
            };
        };
        // A set past its age is fetched again; while that fails, the old one serves.
        if now.saturating_duration_since(set.fetched_at) >= KEYS_MAX_AGE
            && !recent(self.last_failure)
        {
            return Plan::Fetch { refetch: false };
        }
        match set.lookup(kid, alg) {
            Lookup::Found(key) => Plan::Use(key),
            Lookup::WrongAlgorithm => Plan::Refuse(Refusal::Algorithm),
            Lookup::NoSuchKid if recent(self.last_refetch) || recent(self.last_failure) => {
                Plan::Refuse(Refusal::UnknownKid)
            }
            Lookup::NoSuchKid => Plan::Fetch { refetch: true },
        }
    }

    pub(super) fn record(&mut self, fetched: Result<KeySet, String>, refetch: bool, now: Instant) {
        if refetch {
            self.last_refetch = Some(now);
        }
        match fetched {
            Ok(set) => {
                self.keys = Some(Arc::new(set));
                self.last_failure = None;
            }
            Err(_) => self.last_failure = Some(now),
        }
    }
}

/// Fetches an issuer's keys; the real one goes to the issuer, tests pass their own.
pub type KeySource = Arc<dyn Fn() -> BoxFuture<'static, Result<KeySet, String>> + Send + Sync>;

/// One issuer's keys: the cache, and one fetch at a time.
pub(super) struct IssuerKeys {
    name: String,
    state: Mutex<KeyState>,
    fetching: Arc<tokio::sync::Mutex<()>>,
    source: KeySource,
    metrics: Option<OidcMetrics>,
}

impl IssuerKeys {
    pub(super) fn new(name: String, source: KeySource, metrics: Option<OidcMetrics>) -> Self {
        Self {
            name,
            state: Mutex::new(KeyState::default()),
            fetching: Arc::new(tokio::sync::Mutex::new(())),
            source,
            metrics,
        }
    }

    fn plan(&self, kid: Option<&str>, alg: Algorithm) -> Plan {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .plan(kid, alg, Instant::now())
    }

    /// The key for a token's `kid` and `alg`, fetching the keys when the cache says to.
    pub(super) async fn key_for(
        self: &Arc<Self>,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Arc<VerifyKey>, Refusal> {
        let deadline = tokio::time::Instant::now() + FETCH_TIMEOUT;
        match self.plan(kid, alg) {
            Plan::Use(key) => return Ok(key),
            Plan::Refuse(refusal) => return Err(refusal),
            Plan::Fetch { .. } => {}
        }
        let turn = tokio::time::timeout_at(deadline, Arc::clone(&self.fetching).lock_owned())
            .await
            .map_err(|_| Refusal::KeysUnavailable)?;
        // Another request may have fetched while this one waited.
        let refetch = match self.plan(kid, alg) {
            Plan::Use(key) => return Ok(key),
            Plan::Refuse(refusal) => return Err(refusal),
            Plan::Fetch { refetch } => refetch,
        };
        // The fetch runs on its own, so that a request that goes away cannot cut it short (and
        // so start another one past the rate limit).
        let keys = Arc::clone(self);
        let fetch = tokio::spawn(async move {
            let _turn = turn;
            let fetched = match tokio::time::timeout(FETCH_TIMEOUT, (keys.source)()).await {
                Ok(fetched) => fetched,
                Err(_) => Err(format!("no answer within {FETCH_TIMEOUT:?}")),
            };
            match &fetched {
                Ok(set) => {
                    info!(issuer = %keys.name, keys = set.keys.len(), refetch, "fetched the OIDC issuer's keys")
                }
                Err(e) => {
                    warn!(issuer = %keys.name, error = %e, "cannot fetch the OIDC issuer's keys")
                }
            }
            if let Some(metrics) = &keys.metrics {
                metrics.fetched(&keys.name, fetched.is_ok());
            }
            keys.state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .record(fetched, refetch, Instant::now());
        });
        if tokio::time::timeout_at(deadline, fetch).await.is_err() {
            return Err(Refusal::KeysUnavailable);
        }
        match self.plan(kid, alg) {
            Plan::Use(key) => Ok(key),
            Plan::Refuse(refusal) => Err(refusal),
            // Just fetched: the id is not there.
            Plan::Fetch { refetch: true } => Err(Refusal::UnknownKid),
            Plan::Fetch { refetch: false } => Err(Refusal::KeysUnavailable),
        }
    }
}

/// Discovery, then the JWKS it points to: the issuer's usable keys.
pub(super) async fn fetch_keys(
    issuer: &str,
    tls: &Arc<rustls::ClientConfig>,
    proxy: &ProxyConfig,
) -> Result<KeySet, String> {
    let discovery = format!(
        "{}/.well-known/openid-configuration",
        issuer.trim_end_matches('/')
    );
    let document = get_json(&discovery, tls, proxy).await?;
    let named = document
        .get("issuer")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{discovery}: no issuer"))?;
    if named != issuer {
        return Err(format!(
            "{discovery}: names the issuer {named:?}, not {issuer:?}"
        ));
    }
    let jwks_uri = document
        .get("jwks_uri")
        .and_then(Value::as_str)
        .ok_or_else(|| format!("{discovery}: no jwks_uri"))?;
    let secure = jwks_uri
        .get(..8)
        .is_some_and(|s| s.eq_ignore_ascii_case("https://"));
    if !secure {
        return Err(format!(
            "{discovery}: jwks_uri {jwks_uri:?} is not https://"
        ));
    }
    let jwks = get_json(jwks_uri, tls, proxy).await?;
    let (keys, skipped) = keys_from_jwks(&jwks).map_err(|e| format!("{jwks_uri}: {e}"))?;
    if keys.is_empty() {
        return Err(format!(
            "{jwks_uri}: no usable signature key ({skipped} left out)"
        ));
    }
    Ok(KeySet::new(keys, Instant::now()))
}

/// One `GET` over HTTPS, on a connection of its own; the answer's JSON. No redirect is followed.
async fn get_json(
    url: &str,
    tls: &Arc<rustls::ClientConfig>,
    proxy: &ProxyConfig,
) -> Result<Value, String> {
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("{url}: {what}: {e}");
    let uri: hyper::Uri = url.parse().map_err(|e| fail("not a URL", &e))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{url}: no host"))?
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let target = HostPort::new(host.clone(), port);
    let bare = tether_protocol::url::unbracket(&host).to_string();
    let tcp = match proxy.http_proxy().map_err(|e| fail("HTTPS_PROXY", &e))? {
        Some(through) if !proxy.bypasses(&bare, port) => {
            crate::hub::connect_through(through, &target)
                .await
                .map_err(|e| fail("through the proxy", &e))?
        }
        _ => target.connect().await.map_err(|e| fail("connecting", &e))?,
    };
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(bare)
        .map_err(|e| fail("not a TLS server name", &e))?;
    let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| fail("TLS", &e))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| fail("HTTP", &e))?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let authority = uri
        .authority()
        .map(|a| a.as_str())
        .unwrap_or(&host)
        .to_string();
    let path = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("tether-operator/", env!("CARGO_PKG_VERSION")),
        )
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| fail("the request", &e))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| fail("HTTP", &e))?;
    if response.status() != hyper::StatusCode::OK {
        return Err(format!("{url}: answered {}", response.status()));
    }
    let body = http_body_util::Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
        .collect()
        .await
        .map_err(|e| {
            fail(
                &format!("the body (at most {MAX_DOCUMENT_BYTES} bytes)"),
                &e,
            )
        })?
        .to_bytes();
    serde_json::from_slice(&body).map_err(|e| fail("not JSON", &e))
}

/// TLS for an issuer: the system roots, and its `ca_file` if given.
pub(super) fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (_added, _ignored) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(pem) = ca_pem {
        for cert in rustls_pemfile::certs(&mut &pem[..]) {
            let cert = cert.map_err(|e| format!("ca_file: {e}"))?;
            roots
                .add(cert)
                .map_err(|e| format!("ca_file: not usable as a trust anchor: {e}"))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
