//! OIDC ID tokens as CI credentials: a token from a configured issuer (GitHub Actions, GitLab CI
//! `id_tokens`, any OIDC issuer) is verified against the issuer's published keys, then mapped to
//! an identity by the first of the issuer's rules whose claims all match.
//!
//! The keys are found by discovery (`<issuer>/.well-known/openid-configuration`, whose `issuer`
//! must be the configured one and whose `jwks_uri` must be `https://`) and fetched outbound by the
//! operator, through `HTTPS_PROXY` like its other connections. They are cached per issuer and
//! fetched again when older than [`KEYS_MAX_AGE`], or for a key id the cache does not hold, at
//! most once per [`REFETCH_INTERVAL`] so that a flood of made-up key ids cannot hammer the issuer.
//! A fetch runs in a task of its own, bounded by [`FETCH_TIMEOUT`]; requests for other issuers, or
//! with a key already cached, never wait for it.
//!
//! Only asymmetric algorithms the key's type allows are accepted (RSA: RS256/384/512 and
//! PS256/384/512; EC P-256: ES256; EC P-384: ES384; Ed25519: EdDSA): never `none`, never HMAC,
//! whose "secret" a forger could take from the public key. The signature, `iss`, `aud`, `exp` and
//! `nbf` (with [`CLOCK_SKEW`]) are checked by `jsonwebtoken`. Verification uses public keys only.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use super::config::{Identity, OidcIssuer};
use crate::net::ProxyConfig;

mod claims;
mod keys;

pub use claims::{apply_rule, map_claims, render};
use keys::{IssuerKeys, fetch_keys, tls_config};
pub use keys::{KeySet, KeySource, KeyState, VerifyKey, keys_from_jwks};

/// How far `exp` and `nbf` may be off the operator's clock.
pub const CLOCK_SKEW: Duration = Duration::from_secs(30);

/// How long one fetch of an issuer's keys (discovery and JWKS) may take, and how long a request
/// waits for it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The least time between two fetches for an unknown key id, or after a failed fetch.
pub const REFETCH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a fetched key set is used before it is fetched again (a key the issuer withdrew
/// stops working by then).
pub const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);

/// The largest discovery document or JWKS read.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// The largest token looked at as a JWT; a longer bearer token is treated as a static one.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why an OIDC token was refused. [`Refusal::reason`] is the metric label and the audit field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a well-formed JWT, or a required claim is missing or of the wrong type.
    #[error("the token is not a well-formed JWT with iss, aud and exp")]
    Malformed,
    /// `iss` names no configured issuer.
    #[error("the token's issuer (iss) is not one this cluster accepts")]
    Issuer,
    /// An algorithm outside the allowed ones, or one the key's type does not allow.
    #[error(
        "the token's algorithm is not allowed (asymmetric algorithms only, matching the key's type)"
    )]
    Algorithm,
    /// No key of the issuer has the token's `kid`, even after fetching the keys again.
    #[error("the token's key id (kid) is not among the issuer's keys")]
    UnknownKid,
    /// The issuer's keys could not be fetched.
    #[error("the issuer's keys could not be fetched; retry later")]
    KeysUnavailable,
    /// The signature does not verify with the issuer's key.
    #[error("the token's signature does not verify with the issuer's key")]
    Signature,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` has not come yet.
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    /// `aud` does not name the configured audience.
    #[error("the token's audience (aud) is not the one this cluster expects")]
    Audience,
    /// No rule of the issuer matches the token's claims.
    #[error("no rule of the issuer matches the token's claims")]
    NoRule,
}

impl Refusal {
    /// Every refusal, for the docs test and the metric's label values.
    pub const ALL: [Refusal; 10] = [
        Refusal::Malformed,
        Refusal::Issuer,
        Refusal::Algorithm,
        Refusal::UnknownKid,
        Refusal::KeysUnavailable,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Audience,
        Refusal::NoRule,
    ];

    /// A short fixed name: the metric label and the audit line's `reason`.
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Issuer => "issuer",
            Refusal::Algorithm => "algorithm",
            Refusal::UnknownKid => "unknown_kid",
            Refusal::KeysUnavailable => "keys_unavailable",
            Refusal::Signature => "signature",
            Refusal::Expired => "expired",
            Refusal::NotYetValid => "not_yet_valid",
            Refusal::Audience => "audience",
            Refusal::NoRule => "no_rule",
        }
    }
}

/// What a bearer token says of itself before anything is verified: enough to tell a JWT from a
/// static token and to pick the issuer and key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peeked {
    pub alg: String,
    pub kid: Option<String>,
    pub iss: Option<String>,
}

/// The unverified header and issuer of `token`, if it is shaped as a JWT (three base64url parts,
/// the first two JSON objects, the header naming an `alg`); `None` for anything else.
pub fn peek(token: &str) -> Option<Peeked> {
    if token.len() > MAX_TOKEN_BYTES {
        return None;
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let object = |part: &str| -> Option<Map<String, Value>> {
        let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
        match serde_json::from_slice(&bytes).ok()? {
            Value::Object(map) => Some(map),
            _ => None,
        }
    };
    let header = object(header)?;
    let payload = object(payload)?;
    let text = |map: &Map<String, Value>, key: &str| map.get(key)?.as_str().map(str::to_string);
    Some(Peeked {
        alg: text(&header, "alg")?,
        kid: text(&header, "kid"),
        iss: text(&payload, "iss"),
    })
}

/// The algorithm named `alg`, if it is one of the allowed asymmetric ones.
fn allowed_algorithm(alg: &str) -> Option<Algorithm> {
    let alg: Algorithm = alg.parse().ok()?;
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512
        | Algorithm::ES256
        | Algorithm::ES384
        | Algorithm::EdDSA => Some(alg),
        _ => None,
    }
}

/// A refused OIDC token: why, and the configured issuer's name when it named one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub issuer: Option<String>,
    pub refusal: Refusal,
}

/// Verifies OIDC tokens for every configured issuer.
pub struct OidcVerifier {
    issuers: Vec<(OidcIssuer, Arc<IssuerKeys>)>,
    metrics: Option<OidcMetrics>,
}

impl std::fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcVerifier")
            .field(
                "issuers",
                &self
                    .issuers
                    .iter()
                    .map(|(i, _)| &i.issuer)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl OidcVerifier {
    /// Verifies tokens of `issuers`, fetching their keys over HTTPS (through `proxy` where it
    /// applies).
    pub fn new(
        issuers: Vec<OidcIssuer>,
        proxy: &ProxyConfig,
        metrics: Option<OidcMetrics>,
    ) -> Result<Self, String> {
        let mut sources = Vec::with_capacity(issuers.len());
        for issuer in &issuers {
            let tls = tls_config(issuer.ca_pem.as_deref())
                .map_err(|e| format!("the TLS settings for OIDC issuer {}: {e}", issuer.issuer))?;
            let url = issuer.issuer.clone();
            let proxy = proxy.clone();
            let source: KeySource = Arc::new(move || {
                let (url, tls, proxy) = (url.clone(), Arc::clone(&tls), proxy.clone());
                Box::pin(async move { fetch_keys(&url, &tls, &proxy).await })
            });
            sources.push(source);
        }
        Ok(Self::with_sources(issuers, sources, metrics))
    }

    /// Verifies tokens of `issuers`, each one's keys from the source at its index.
    pub fn with_sources(
        issuers: Vec<OidcIssuer>,
        sources: Vec<KeySource>,
        metrics: Option<OidcMetrics>,
    ) -> Self {
        let issuers = issuers
            .into_iter()
            .zip(sources)
            .map(|(issuer, source)| {
                let keys = Arc::new(IssuerKeys::new(
                    issuer.name.clone(),
                    source,
                    metrics.clone(),
                ));
                (issuer, keys)
            })
            .collect();
        Self { issuers, metrics }
    }

    /// Whether any issuer is configured.
    pub fn is_empty(&self) -> bool {
        self.issuers.is_empty()
    }

    /// The identity `token` (whose [`peek`] is `peeked`) maps to, or why it has none.
    pub async fn verify(&self, token: &str, peeked: &Peeked) -> Result<Identity, Refused> {
        let verified = self.verify_inner(token, peeked).await;
        if let (Err(refused), Some(metrics)) = (&verified, &self.metrics) {
            metrics.refused(refused.issuer.as_deref(), refused.refusal);
        }
        verified
    }

    async fn verify_inner(&self, token: &str, peeked: &Peeked) -> Result<Identity, Refused> {
        let refuse = |issuer: Option<&OidcIssuer>, refusal| Refused {
            issuer: issuer.map(|i| i.name.clone()),
            refusal,
        };
        let Some((issuer, keys)) = peeked
            .iss
            .as_deref()
            .and_then(|iss| self.issuers.iter().find(|(i, _)| i.issuer == iss))
        else {
            return Err(refuse(None, Refusal::Issuer));
        };
        let alg = allowed_algorithm(&peeked.alg).ok_or(refuse(Some(issuer), Refusal::Algorithm))?;
        let key = keys
            .key_for(peeked.kid.as_deref(), alg)
            .await
            .map_err(|r| refuse(Some(issuer), r))?;
        let claims =
            check_token(token, &key.key, alg, issuer).map_err(|r| refuse(Some(issuer), r))?;
        map_claims(issuer, &claims).map_err(|r| refuse(Some(issuer), r))
    }
}

/// Checks the signature and the registered claims; the token's claims.
fn check_token(
    token: &str,
    key: &DecodingKey,
    alg: Algorithm,
    issuer: &OidcIssuer,
) -> Result<Map<String, Value>, Refusal> {
    use jsonwebtoken::errors::ErrorKind;
    let mut validation = Validation::new(alg);
    validation.leeway = CLOCK_SKEW.as_secs();
    validation.validate_nbf = true;
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation.set_issuer(&[&issuer.issuer]);
    validation.set_audience(&[&issuer.audience]);
    match jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => Err(match e.kind() {
            ErrorKind::ExpiredSignature => Refusal::Expired,
            ErrorKind::ImmatureSignature => Refusal::NotYetValid,
            ErrorKind::InvalidAudience => Refusal::Audience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Refusal::Audience,
            ErrorKind::InvalidIssuer => Refusal::Issuer,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Refusal::Signature,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::MissingAlgorithm
            | ErrorKind::InvalidAlgorithmName => Refusal::Algorithm,
            _ => Refusal::Malformed,
        }),
    }
}

/// Prometheus handles for OIDC verification. Labels: the issuer's configured name (or
/// `unknown`), a [`Refusal::reason`], a fetch's result.
#[derive(Debug, Clone)]
pub struct OidcMetrics {
    refused: prometheus::IntCounterVec,
    fetches: prometheus::IntCounterVec,
}

impl OidcMetrics {
    /// Create `tether_ci_oidc_refused_total` and `tether_ci_oidc_key_fetches_total` in `registry`.
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let refused = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tether_ci_oidc_refused_total",
                "OIDC tokens refused, by issuer (its name in the access file, or unknown) and reason.",
            ),
            &["issuer", "reason"],
        )?;
        let fetches = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "tether_ci_oidc_key_fetches_total",
                "Fetches of an OIDC issuer's keys (discovery and JWKS), by issuer and result (ok, error).",
            ),
            &["issuer", "result"],
        )?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(fetches.clone()))?;
        Ok(Self { refused, fetches })
    }

    fn refused(&self, issuer: Option<&str>, refusal: Refusal) {
        self.refused
            .with_label_values(&[issuer.unwrap_or("unknown"), refusal.reason()])
            .inc();
    }

    fn fetched(&self, issuer: &str, ok: bool) {
        self.fetches
            .with_label_values(&[issuer, if ok { "ok" } else { "error" }])
            .inc();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
