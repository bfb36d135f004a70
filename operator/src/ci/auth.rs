//! Who a CI request is: a static bearer token against the configured hashes, compared in
//! constant time, every hash every time; or an OIDC ID token, verified against its issuer's keys
//! and mapped by the issuer's rules ([`super::oidc`]).

use hyper::HeaderMap;
use hyper::StatusCode;
use hyper::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Identity, StaticToken};
use super::oidc::{OidcVerifier, Refusal, Refused, peek};

/// Why a request has no identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: the kubeconfig's user needs a token")]
    Missing,
    /// A token no entry names.
    #[error("the bearer token is not one this cluster accepts for CI access")]
    Unknown,
    /// An OIDC ID token that was refused.
    #[error("the OIDC token was refused: {}", .0.refusal)]
    Oidc(Refused),
}

impl AuthError {
    /// The status to answer with, and its Kubernetes `reason`: 401, or 503 while an issuer's
    /// keys cannot be fetched (the token may well be good).
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            AuthError::Oidc(Refused {
                refusal: Refusal::KeysUnavailable,
                ..
            }) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable"),
            _ => (StatusCode::UNAUTHORIZED, "Unauthorized"),
        }
    }

    /// A short fixed name for the audit line.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "no_token",
            AuthError::Unknown => "unknown_token",
            AuthError::Oidc(refused) => refused.refusal.reason(),
        }
    }
}

/// The bearer token of `headers`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The identity whose static token `headers` carries.
pub fn authenticate<'a>(
    tokens: &'a [StaticToken],
    headers: &HeaderMap,
) -> Result<&'a Identity, AuthError> {
    let token = bearer(headers).ok_or(AuthError::Missing)?;
    static_identity(tokens, token).ok_or(AuthError::Unknown)
}

fn static_identity<'a>(tokens: &'a [StaticToken], token: &str) -> Option<&'a Identity> {
    let hash = Sha256::digest(token.as_bytes());
    let mut found = None;
    for t in tokens {
        let equal = bool::from(t.sha256.as_slice().ct_eq(hash.as_slice()));
        if equal && found.is_none() {
            found = Some(&t.identity);
        }
    }
    found
}

/// Static tokens and OIDC issuers together.
#[derive(Debug)]
pub struct Authenticator {
    tokens: Vec<StaticToken>,
    oidc: OidcVerifier,
}

impl Authenticator {
    pub fn new(tokens: Vec<StaticToken>, oidc: OidcVerifier) -> Self {
        Self { tokens, oidc }
    }

    /// The identity of the request's bearer token. A static token is looked up first; a token
    /// shaped as a JWT that is not one goes to OIDC verification (and is refused if its issuer
    /// is not configured); anything else is unknown.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Identity, AuthError> {
        let token = bearer(headers).ok_or(AuthError::Missing)?;
        if let Some(identity) = static_identity(&self.tokens, token) {
            return Ok(identity.clone());
        }
        match peek(token) {
            Some(peeked) => self
                .oidc
                .verify(token, &peeked)
                .await
                .map_err(AuthError::Oidc),
            None => Err(AuthError::Unknown),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn token(name: &str, secret: &str) -> StaticToken {
        StaticToken {
            sha256: Sha256::digest(secret.as_bytes()).into(),
            identity: Identity {
                name: name.into(),
                user: format!("user-{name}"),
                groups: vec![],
            },
        }
    }

    fn with(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(AUTHORIZATION, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn the_matching_token_names_its_identity_and_others_are_refused() {
        let tokens = [token("a", "secret-a"), token("b", "secret-b")];
        assert_eq!(
            authenticate(&tokens, &with("Bearer secret-b"))
                .unwrap()
                .name,
            "b"
        );
        assert_eq!(
            authenticate(&tokens, &with("bearer secret-a"))
                .unwrap()
                .name,
            "a"
        );
        assert_eq!(
            authenticate(&tokens, &with("Bearer secret-c")),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            authenticate(&tokens, &with("Basic secret-a")),
            Err(AuthError::Missing)
        );
        assert_eq!(
            authenticate(&tokens, &HeaderMap::new()),
            Err(AuthError::Missing)
        );
    }
}
