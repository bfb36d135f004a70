//! Who a CI request is: its bearer token against the configured hashes, compared in constant
//! time, every hash every time.

use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::config::{Identity, StaticToken};

/// Why a request has no identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `Authorization: Bearer` header.
    #[error("no bearer token: the kubeconfig's user needs a token")]
    Missing,
    /// A token no entry names.
    #[error("the bearer token is not one this cluster accepts for CI access")]
    Unknown,
}

/// The bearer token of `headers`, if any.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The identity whose token `headers` carries.
pub fn authenticate<'a>(
    tokens: &'a [StaticToken],
    headers: &HeaderMap,
) -> Result<&'a Identity, AuthError> {
    let token = bearer(headers).ok_or(AuthError::Missing)?;
    let hash = Sha256::digest(token.as_bytes());
    let mut found = None;
    for t in tokens {
        let equal = bool::from(t.sha256.as_slice().ct_eq(hash.as_slice()));
        if equal && found.is_none() {
            found = Some(&t.identity);
        }
    }
    found.ok_or(AuthError::Unknown)
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
