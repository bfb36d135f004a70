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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures::future::BoxFuture;
use http_body_util::BodyExt as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use tracing::{debug, info, warn};

use super::config::{ClaimRule, Identity, MASTERS, OidcIssuer, Template, TemplatePart, printable};
use crate::net::{HostPort, ProxyConfig};

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

/// The longest user or group a template may render.
const MAX_NAME_BYTES: usize = 256;

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_BYTES: usize = 256;

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

/// One verification key of an issuer.
#[derive(Debug)]
pub struct VerifyKey {
    kid: Option<String>,
    /// The algorithms it may verify: by its type and curve, narrowed by its own `alg`.
    algorithms: Vec<Algorithm>,
    key: DecodingKey,
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
enum Plan {
    Use(Arc<VerifyKey>),
    /// Fetch the keys; `refetch` when it is for an unknown key id (rate-limited).
    Fetch {
        refetch: bool,
    },
    Refuse(Refusal),
}

impl KeyState {
    fn plan(&self, kid: Option<&str>, alg: Algorithm, now: Instant) -> Plan {
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

    fn record(&mut self, fetched: Result<KeySet, String>, refetch: bool, now: Instant) {
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
struct IssuerKeys {
    name: String,
    state: Mutex<KeyState>,
    fetching: Arc<tokio::sync::Mutex<()>>,
    source: KeySource,
    metrics: Option<OidcMetrics>,
}

impl IssuerKeys {
    fn plan(&self, kid: Option<&str>, alg: Algorithm) -> Plan {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .plan(kid, alg, Instant::now())
    }

    /// The key for a token's `kid` and `alg`, fetching the keys when the cache says to.
    async fn key_for(
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
                let keys = Arc::new(IssuerKeys {
                    name: issuer.name.clone(),
                    state: Mutex::new(KeyState::default()),
                    fetching: Arc::new(tokio::sync::Mutex::new(())),
                    source,
                    metrics: metrics.clone(),
                });
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

/// The identity of the first rule of `issuer` whose claims all match; [`Refusal::NoRule`] if
/// none does.
pub fn map_claims(issuer: &OidcIssuer, claims: &Map<String, Value>) -> Result<Identity, Refusal> {
    for (i, rule) in issuer.rules.iter().enumerate() {
        match apply_rule(rule, claims) {
            Ok(Some(identity)) => return Ok(identity),
            Ok(None) => {}
            Err(why) => {
                debug!(issuer = %issuer.name, rule = i, why = %why, "an OIDC rule's claims match but it cannot map the token")
            }
        }
    }
    Err(Refusal::NoRule)
}

/// The identity `rule` maps `claims` to; `None` when its claims do not match; an error (why, in
/// words that repeat no claim value) when they match but a template cannot be filled safely.
pub fn apply_rule(
    rule: &ClaimRule,
    claims: &Map<String, Value>,
) -> Result<Option<Identity>, String> {
    let matches = rule
        .claims
        .iter()
        .all(|(name, pattern)| match claims.get(name) {
            Some(Value::Array(items)) => items
                .iter()
                .any(|item| scalar(item).is_some_and(|v| pattern.matches(&v))),
            Some(value) => scalar(value).is_some_and(|v| pattern.matches(&v)),
            None => false,
        });
    if !matches {
        return Ok(None);
    }
    let user = render(&rule.user, claims).map_err(|why| format!("user: {why}"))?;
    let mut groups = Vec::with_capacity(rule.groups.len());
    for (k, group) in rule.groups.iter().enumerate() {
        let group = render(group, claims).map_err(|why| format!("groups[{k}]: {why}"))?;
        if group == MASTERS {
            return Err(format!(
                "groups[{k}]: renders {MASTERS}, never granted to CI"
            ));
        }
        groups.push(group);
    }
    Ok(Some(Identity {
        name: rule.identity_name.clone(),
        user,
        groups,
    }))
}

/// A claim's value as one string: a string as it is, a number or boolean as JSON writes it.
fn scalar(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `template` with each `{claim}` replaced by the claim's whole value, as one literal string: a
/// value with commas stays one name, and one that cannot be a header value (a newline, say) is
/// refused, as is a `system:` name the template's own text does not begin with.
pub fn render(template: &Template, claims: &Map<String, Value>) -> Result<String, String> {
    let mut out = String::new();
    for part in &template.parts {
        match part {
            TemplatePart::Literal(text) => out.push_str(text),
            TemplatePart::Claim(name) => {
                let value = claims.get(name).and_then(scalar).ok_or_else(|| {
                    format!("the token has no claim {name:?} with a single value")
                })?;
                out.push_str(&value);
            }
        }
    }
    if !printable(&out) || out.len() > MAX_NAME_BYTES {
        return Err(format!(
            "{:?} renders a name that is not 1 to {MAX_NAME_BYTES} printable ASCII characters",
            template.text
        ));
    }
    let own_prefix = match template.parts.first() {
        Some(TemplatePart::Literal(text)) => text.starts_with("system:"),
        _ => false,
    };
    if out.starts_with("system:") && !own_prefix {
        return Err(format!(
            "{:?} renders a system: name from a claim",
            template.text
        ));
    }
    Ok(out)
}

/// Discovery, then the JWKS it points to: the issuer's usable keys.
async fn fetch_keys(
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
fn tls_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
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
mod tests {
    use std::path::Path;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;
    use crate::ci::config::AccessConfig;

    const ISSUER: &str = "https://token.actions.githubusercontent.com";

    fn config(rules: &str) -> AccessConfig {
        let text = format!(
            "oidc:\n  - issuer: {ISSUER}\n    audience: tether\n    name: github\n    rules:\n{rules}"
        );
        AccessConfig::parse(Path::new("ci.yaml"), &text).unwrap()
    }

    fn issuer(rules: &str) -> OidcIssuer {
        config(rules).oidc.remove(0)
    }

    fn claims(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    const MAIN_RULE: &str = "      - claims: { repository: \"acme/*\", ref: \"refs/heads/main\" }\n        user: \"github:{repository}\"\n        groups: [\"deployers\", \"repo:{repository}\"]\n";

    #[test]
    fn claims_are_matched_by_glob_and_the_first_matching_rule_wins() {
        let issuer = issuer(&format!(
            "{MAIN_RULE}      - claims: {{ repository: \"acme/**\" }}\n        user: readers\n"
        ));
        let main = claims(json!({"repository": "acme/app", "ref": "refs/heads/main"}));
        let identity = map_claims(&issuer, &main).unwrap();
        assert_eq!(identity.name, "oidc:github:0");
        assert_eq!(identity.user, "github:acme/app");
        assert_eq!(identity.groups, ["deployers", "repo:acme/app"]);

        // `*` stays within a segment; the second rule's `**` crosses them.
        let nested = claims(json!({"repository": "acme/team/app", "ref": "refs/heads/main"}));
        assert_eq!(map_claims(&issuer, &nested).unwrap().user, "readers");
        // Another branch falls to the second rule; another owner to none.
        let branch = claims(json!({"repository": "acme/app", "ref": "refs/heads/mainly"}));
        assert_eq!(map_claims(&issuer, &branch).unwrap().name, "oidc:github:1");
        let other = claims(json!({"repository": "acme-evil/app", "ref": "refs/heads/main"}));
        assert_eq!(map_claims(&issuer, &other), Err(Refusal::NoRule));
        // A missing claim matches nothing; a list matches if one of its items does.
        assert_eq!(
            map_claims(&issuer, &claims(json!({"ref": "refs/heads/main"}))),
            Err(Refusal::NoRule)
        );
        let listed =
            claims(json!({"repository": ["other/x", "acme/app"], "ref": "refs/heads/main"}));
        assert!(map_claims(&issuer, &listed).is_ok());
    }

    #[test]
    fn a_claim_value_fills_one_name_and_cannot_widen_it() {
        let main = issuer(MAIN_RULE);
        // Commas stay inside the one group the template makes.
        let commas =
            claims(json!({"repository": "acme/a,system:masters", "ref": "refs/heads/main"}));
        let identity = map_claims(&main, &commas).unwrap();
        assert_eq!(identity.groups, ["deployers", "repo:acme/a,system:masters"]);
        // A newline cannot be a header value: the rule does not map.
        let newline =
            claims(json!({"repository": "acme/a\nImpersonate-Group: x", "ref": "refs/heads/main"}));
        assert_eq!(map_claims(&main, &newline), Err(Refusal::NoRule));
        let rule = &main.rules[0];
        assert!(
            apply_rule(rule, &newline)
                .unwrap_err()
                .contains("printable")
        );

        // A claim cannot make a system: name, nor system:masters.
        let bare = issuer(
            "      - claims: { sub: \"repo:acme/*\" }\n        user: \"{actor}\"\n        groups: [\"{team}\"]\n",
        );
        let system_user =
            claims(json!({"sub": "repo:acme/app", "actor": "system:admin", "team": "t"}));
        assert!(
            apply_rule(&bare.rules[0], &system_user)
                .unwrap_err()
                .contains("system:")
        );
        let masters =
            claims(json!({"sub": "repo:acme/app", "actor": "me", "team": "system:masters"}));
        assert!(
            apply_rule(&bare.rules[0], &masters)
                .unwrap_err()
                .contains("system:")
        );
        // A missing or structured claim in a template: no mapping.
        let missing = claims(json!({"sub": "repo:acme/app", "team": "t"}));
        assert!(
            apply_rule(&bare.rules[0], &missing)
                .unwrap_err()
                .contains("\"actor\"")
        );
        let object = claims(json!({"sub": "repo:acme/app", "actor": {"a": 1}, "team": "t"}));
        assert!(apply_rule(&bare.rules[0], &object).is_err());
        // Numbers and booleans render as JSON writes them.
        let numbers = claims(json!({"sub": "repo:acme/app", "actor": 42, "team": true}));
        let identity = apply_rule(&bare.rules[0], &numbers).unwrap().unwrap();
        assert_eq!(
            (identity.user.as_str(), identity.groups[0].as_str()),
            ("42", "true")
        );
    }

    #[test]
    fn only_jwt_shaped_tokens_are_peeked() {
        let part = |v: Value| URL_SAFE_NO_PAD.encode(v.to_string());
        let token = format!(
            "{}.{}.sig",
            part(json!({"alg": "RS256", "kid": "k1"})),
            part(json!({"iss": ISSUER}))
        );
        assert_eq!(
            peek(&token),
            Some(Peeked {
                alg: "RS256".into(),
                kid: Some("k1".into()),
                iss: Some(ISSUER.into())
            })
        );
        for not_jwt in [
            "a-static-token",
            "a.b.c",
            "a.b",
            &format!("{}.{}", part(json!({"alg": "RS256"})), part(json!({}))),
            &format!("{}.{}.s.x", part(json!({"alg": "RS256"})), part(json!({}))),
            &format!("{}.{}.s", part(json!({"typ": "JWT"})), part(json!({}))),
        ] {
            assert_eq!(peek(not_jwt), None, "{not_jwt}");
        }
    }

    fn key_set(kids: &[&str], fetched_at: Instant) -> KeySet {
        let keys = kids
            .iter()
            .map(|kid| VerifyKey {
                kid: Some(kid.to_string()),
                algorithms: vec![Algorithm::ES256],
                key: DecodingKey::from_ec_der(&[4; 65]),
            })
            .collect();
        KeySet::new(keys, fetched_at)
    }

    #[test]
    fn unknown_key_ids_refetch_at_most_once_per_interval() {
        let t0 = Instant::now();
        let mut state = KeyState::default();
        assert!(matches!(
            state.plan(Some("k1"), Algorithm::ES256, t0),
            Plan::Fetch { refetch: false }
        ));
        state.record(Ok(key_set(&["k1"], t0)), false, t0);
        assert!(matches!(
            state.plan(Some("k1"), Algorithm::ES256, t0),
            Plan::Use(_)
        ));
        // The right id with another algorithm's header is refused, not refetched.
        assert!(matches!(
            state.plan(Some("k1"), Algorithm::RS256, t0),
            Plan::Refuse(Refusal::Algorithm)
        ));
        // An unknown id: one refetch, then none until the interval has passed.
        assert!(matches!(
            state.plan(Some("k2"), Algorithm::ES256, t0),
            Plan::Fetch { refetch: true }
        ));
        state.record(Ok(key_set(&["k1"], t0)), true, t0);
        let soon = t0 + REFETCH_INTERVAL / 2;
        assert!(matches!(
            state.plan(Some("k2"), Algorithm::ES256, soon),
            Plan::Refuse(Refusal::UnknownKid)
        ));
        let later = t0 + REFETCH_INTERVAL;
        assert!(matches!(
            state.plan(Some("k2"), Algorithm::ES256, later),
            Plan::Fetch { refetch: true }
        ));
        // A set past its age is fetched again; while that fails, the old set serves.
        let old = t0 + KEYS_MAX_AGE;
        assert!(matches!(
            state.plan(Some("k1"), Algorithm::ES256, old),
            Plan::Fetch { refetch: false }
        ));
        state.record(Err("down".into()), false, old);
        assert!(matches!(
            state.plan(Some("k1"), Algorithm::ES256, old),
            Plan::Use(_)
        ));
    }

    #[test]
    fn a_failed_first_fetch_is_not_retried_within_the_interval() {
        let t0 = Instant::now();
        let mut state = KeyState::default();
        state.record(Err("down".into()), false, t0);
        assert!(matches!(
            state.plan(None, Algorithm::ES256, t0 + Duration::from_secs(1)),
            Plan::Refuse(Refusal::KeysUnavailable)
        ));
        assert!(matches!(
            state.plan(None, Algorithm::ES256, t0 + REFETCH_INTERVAL),
            Plan::Fetch { refetch: false }
        ));
    }

    /// A P-256 key as a JWK and its private key for signing.
    fn ec_key(kid: &str) -> (Value, EncodingKey) {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let raw = pair.public_key_raw();
        let jwk = json!({
            "kty": "EC", "crv": "P-256", "use": "sig", "alg": "ES256", "kid": kid,
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        (jwk, EncodingKey::from_ec_der(&pair.serialize_der()))
    }

    fn now() -> i64 {
        i64::try_from(jsonwebtoken::get_current_timestamp()).unwrap()
    }

    fn github_claims() -> Value {
        json!({
            "iss": ISSUER, "aud": "tether", "exp": now() + 300, "iat": now(),
            "sub": "repo:acme/app:ref:refs/heads/main",
            "repository": "acme/app", "ref": "refs/heads/main",
        })
    }

    fn sign(claims: &Value, kid: &str, key: &EncodingKey) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.to_string());
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    /// A verifier for [`MAIN_RULE`] whose keys come from `jwks`, counting the fetches.
    fn verifier(jwks: Value) -> (OidcVerifier, Arc<AtomicUsize>) {
        let fetches = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&fetches);
        let source: KeySource = Arc::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            let jwks = jwks.clone();
            Box::pin(async move {
                let (keys, _) = keys_from_jwks(&jwks)?;
                Ok(KeySet::new(keys, Instant::now()))
            })
        });
        let verifier = OidcVerifier::with_sources(vec![issuer(MAIN_RULE)], vec![source], None);
        (verifier, fetches)
    }

    async fn check(verifier: &OidcVerifier, token: &str) -> Result<Identity, Refusal> {
        let peeked = peek(token).ok_or(Refusal::Malformed)?;
        verifier.verify(token, &peeked).await.map_err(|r| r.refusal)
    }

    #[tokio::test]
    async fn a_signed_token_maps_and_every_forgery_is_refused_for_its_reason() {
        let (jwk, key) = ec_key("k1");
        let (verifier, fetches) = verifier(json!({ "keys": [jwk.clone()] }));
        let good = sign(&github_claims(), "k1", &key);
        assert_eq!(
            check(&verifier, &good).await.unwrap().user,
            "github:acme/app"
        );

        let with = |change: &dyn Fn(&mut Value)| {
            let mut claims = github_claims();
            change(&mut claims);
            sign(&claims, "k1", &key)
        };
        let cases = [
            (with(&|c| c["aud"] = json!("other")), Refusal::Audience),
            (with(&|c| c["exp"] = json!(now() - 120)), Refusal::Expired),
            (
                with(&|c| c["nbf"] = json!(now() + 120)),
                Refusal::NotYetValid,
            ),
            (
                with(&|c| c["iss"] = json!("https://gitlab.com")),
                Refusal::Issuer,
            ),
            (
                with(&|c| c["repository"] = json!("other/app")),
                Refusal::NoRule,
            ),
            (
                with(&|c| drop(c.as_object_mut().unwrap().remove("exp"))),
                Refusal::Malformed,
            ),
        ];
        for (token, refusal) in cases {
            assert_eq!(check(&verifier, &token).await, Err(refusal));
        }
        // Still within the clock skew: accepted.
        let skewed = with(&|c| c["exp"] = json!(now() - 10));
        assert!(check(&verifier, &skewed).await.is_ok());

        // Another key's signature under k1's id.
        let (_, other) = ec_key("k1");
        let forged = sign(&github_claims(), "k1", &other);
        assert_eq!(check(&verifier, &forged).await, Err(Refusal::Signature));

        // alg none, and HS256 keyed with the public key's bytes.
        let (_, rest) = good.split_once('.').unwrap();
        let payload = rest.split('.').next().unwrap();
        let none = format!(
            "{}.{payload}.",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none","kid":"k1"}"#)
        );
        assert_eq!(check(&verifier, &none).await, Err(Refusal::Algorithm));
        let mut hs = Header::new(Algorithm::HS256);
        hs.kid = Some("k1".into());
        let public = jwk.to_string();
        let hmac = jsonwebtoken::encode(
            &hs,
            &github_claims(),
            &EncodingKey::from_secret(public.as_bytes()).unwrap(),
        )
        .unwrap();
        assert_eq!(check(&verifier, &hmac).await, Err(Refusal::Algorithm));
        // The header says ES384 over k1 (a P-256 key): refused before any signature check.
        let mismatched = format!(
            "{}.{rest}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"ES384","kid":"k1"}"#)
        );
        assert_eq!(check(&verifier, &mismatched).await, Err(Refusal::Algorithm));
        assert_eq!(
            fetches.load(Ordering::SeqCst),
            1,
            "one fetch served all of these"
        );

        // An unknown id: one refetch, then refusals without going to the issuer.
        let unknown = sign(&github_claims(), "k9", &key);
        for _ in 0..20 {
            assert_eq!(check(&verifier, &unknown).await, Err(Refusal::UnknownKid));
        }
        assert_eq!(fetches.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_issuer_delays_only_its_own_tokens_and_only_up_to_the_timeout() {
        let (jwk, key) = ec_key("k1");
        let jwks = json!({ "keys": [jwk] });
        let answering: KeySource = Arc::new(move || {
            let jwks = jwks.clone();
            Box::pin(async move {
                let (keys, _) = keys_from_jwks(&jwks)?;
                Ok(KeySet::new(keys, Instant::now()))
            })
        });
        let silent: KeySource = Arc::new(|| Box::pin(futures::future::pending()));
        let mut quiet = issuer(MAIN_RULE);
        quiet.issuer = "https://quiet.example.com".into();
        quiet.name = "quiet".into();
        let verifier = Arc::new(OidcVerifier::with_sources(
            vec![quiet, issuer(MAIN_RULE)],
            vec![silent, answering],
            None,
        ));

        let began = tokio::time::Instant::now();
        let mut quiet_claims = github_claims();
        quiet_claims["iss"] = json!("https://quiet.example.com");
        let quiet_token = sign(&quiet_claims, "k1", &key);
        let waiting = {
            let verifier = Arc::clone(&verifier);
            tokio::spawn(async move { check(&verifier, &quiet_token).await })
        };
        tokio::task::yield_now().await;
        // The other issuer's token is verified while the silent one's fetch hangs.
        let good = sign(&github_claims(), "k1", &key);
        assert!(check(&verifier, &good).await.is_ok());
        assert!(began.elapsed() < Duration::from_secs(1));
        // The silent issuer's request gives up at the fetch timeout.
        assert_eq!(waiting.await.unwrap(), Err(Refusal::KeysUnavailable));
        let waited = began.elapsed();
        assert!(
            waited >= FETCH_TIMEOUT && waited < FETCH_TIMEOUT + Duration::from_secs(1),
            "{waited:?}"
        );
    }

    #[test]
    fn symmetric_small_and_misfitting_keys_are_left_out() {
        let (ec, _) = ec_key("ec");
        let mut ec_as_rsa = ec.clone();
        ec_as_rsa["alg"] = json!("RS256");
        let mut encryption = ec.clone();
        encryption["use"] = json!("enc");
        let jwks = json!({"keys": [
            ec,
            ec_as_rsa,
            encryption,
            {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xff; 128]), "e": "AQAB", "kid": "rsa1024"},
            {"kty": "RSA", "n": URL_SAFE_NO_PAD.encode([0xff; 256]), "e": "AQAB", "kid": "rsa2048"},
            {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        ]});
        let (keys, skipped) = keys_from_jwks(&jwks).unwrap();
        let kids: Vec<_> = keys.iter().map(|k| k.kid.clone().unwrap()).collect();
        assert_eq!(kids, ["ec", "rsa2048"]);
        assert_eq!(skipped, 5);
        assert_eq!(keys[1].algorithms.len(), 6);
    }

    /// docs/metrics.md lists both metrics with every reason, and docs/ci-access.md has a
    /// troubleshooting row for each.
    #[test]
    fn every_reason_is_documented() {
        let docs = |name: &str| {
            std::fs::read_to_string(format!("{}/../docs/{name}", env!("CARGO_MANIFEST_DIR")))
                .unwrap()
        };
        let (metrics, guide) = (docs("metrics.md"), docs("ci-access.md"));
        let registry = prometheus::Registry::new();
        let handles = OidcMetrics::register(&registry).unwrap();
        handles.refused(None, Refusal::Expired);
        handles.fetched("github", true);
        let families = registry.gather();
        assert_eq!(families.len(), 2);
        for family in families {
            let row = format!("| `{}` |", family.name());
            assert!(metrics.contains(&row), "docs/metrics.md has no row {row}");
        }
        for refusal in Refusal::ALL {
            let reason = refusal.reason();
            assert!(
                metrics.contains(&format!("`{reason}`")),
                "docs/metrics.md lacks {reason}"
            );
            assert!(
                guide.contains(&format!("| `{reason}` | {refusal} |")),
                "docs/ci-access.md has no row for {reason} saying {refusal:?}"
            );
        }
    }
}
