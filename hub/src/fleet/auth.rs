//! Who may read the fleet: viewer tokens from the hub's config (stored as SHA-256 hashes, like agent
//! tokens), given as a bearer token or exchanged at the login form for a session cookie.
//!
//! The cookie holds 32 random bytes; the hub keeps only their hash, with the viewer's name and an
//! expiry, in memory (a restart of the hub asks viewers to log in again). It is `HttpOnly`,
//! `Secure` and `SameSite=Strict`. The two requests that change anything (log in, log out) must
//! come from the hub's own pages: a browser's `Origin` (or `Sec-Fetch-Site`) naming another site is
//! refused.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub(crate) const COOKIE: &str = "tether_fleet";

/// How long a login lasts.
pub(crate) const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// At most this many sessions are kept; the one closest to expiry goes first.
const MAX_SESSIONS: usize = 10_000;

/// A person (or tool) allowed to read the fleet view.
#[derive(Debug, Clone)]
pub(crate) struct ViewerConfig {
    /// A name for logs.
    pub(crate) name: String,
    /// SHA-256 of the viewer's token.
    pub(crate) token_sha256: [u8; 32],
}

/// The viewer whose token hash matches `token`. Every hash is compared, in constant time.
pub(crate) fn viewer_for<'a>(viewers: &'a [ViewerConfig], token: &str) -> Option<&'a ViewerConfig> {
    crate::secret::by_token_hash(viewers, token, |v| &v.token_sha256)
}

/// The bearer token of a request, if it has one.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get("authorization")?.to_str().ok()?;
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
}

/// The value of the session cookie a request carries.
pub(crate) fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all("cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim())
}

/// The `Set-Cookie` value that starts a session, and the one that ends it.
pub(crate) fn set_cookie(value: &str) -> String {
    format!(
        "{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly; Secure; SameSite=Strict",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict")
}

/// Whether a state-changing request comes from the hub's own pages. A browser sends `Origin` on a
/// form post and `Sec-Fetch-Site` on every request; a request with neither is not from a
/// browser, which cannot be made to carry a viewer's cookie, and is allowed.
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(origin) = text("origin") {
        let Some(host) = text("host") else {
            return false;
        };
        let without_scheme = origin
            .strip_prefix("https://")
            .or_else(|| origin.strip_prefix("http://"));
        return without_scheme == Some(host);
    }
    match text("sec-fetch-site") {
        Some(site) => matches!(site, "same-origin" | "none"),
        None => true,
    }
}

#[derive(Debug)]
struct Session {
    viewer: String,
    expires: Instant,
}

/// The login sessions, by the hash of their cookie.
#[derive(Debug, Default)]
pub(crate) struct Sessions(Mutex<HashMap<[u8; 32], Session>>);

fn hash(cookie: &str) -> [u8; 32] {
    Sha256::digest(cookie.as_bytes()).into()
}

impl Sessions {
    /// Start a session for `viewer`; the cookie value to set.
    pub(crate) fn start(&self, viewer: &str) -> String {
        let cookie = hex::encode(rand::random::<[u8; 32]>());
        let now = Instant::now();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, s| s.expires > now);
        if map.len() >= MAX_SESSIONS
            && let Some(oldest) = map.iter().min_by_key(|(_, s)| s.expires).map(|(k, _)| *k)
        {
            map.remove(&oldest);
        }
        map.insert(
            hash(&cookie),
            Session {
                viewer: viewer.to_string(),
                expires: now + SESSION_TTL,
            },
        );
        cookie
    }

    /// The viewer of a live session.
    pub(crate) fn viewer(&self, cookie: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&hash(cookie))
            .filter(|s| s.expires > Instant::now())
            .map(|s| s.viewer.clone())
    }

    /// End a session.
    pub(crate) fn end(&self, cookie: &str) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.remove(&hash(cookie));
    }
}

/// The viewer a request is made by: its bearer token, else its session cookie.
pub(crate) fn who(
    viewers: &[ViewerConfig],
    sessions: &Sessions,
    headers: &HeaderMap,
) -> Option<String> {
    if let Some(token) = bearer(headers) {
        return viewer_for(viewers, token).map(|v| v.name.clone());
    }
    session_cookie(headers).and_then(|c| sessions.viewer(c))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    fn viewers() -> Vec<ViewerConfig> {
        vec![ViewerConfig {
            name: "ops".into(),
            token_sha256: Sha256::digest(b"view-token").into(),
        }]
    }

    #[test]
    fn a_viewer_is_known_by_bearer_token_or_by_a_live_session() {
        let sessions = Sessions::default();
        let v = viewers();
        assert_eq!(
            who(
                &v,
                &sessions,
                &headers(&[("authorization", "Bearer view-token")])
            )
            .as_deref(),
            Some("ops")
        );
        assert_eq!(
            who(&v, &sessions, &headers(&[("authorization", "Bearer nope")])),
            None
        );
        let cookie = sessions.start("ops");
        let with_cookie = headers(&[("cookie", &format!("other=1; {COOKIE}={cookie}"))]);
        assert_eq!(who(&v, &sessions, &with_cookie).as_deref(), Some("ops"));
        // A wrong bearer token is not rescued by a cookie.
        let both = headers(&[
            ("authorization", "Bearer nope"),
            ("cookie", &format!("{COOKIE}={cookie}")),
        ]);
        assert_eq!(who(&v, &sessions, &both), None);
        sessions.end(&cookie);
        assert_eq!(who(&v, &sessions, &with_cookie), None);
        assert_eq!(who(&v, &sessions, &HeaderMap::new()), None);
    }

    #[test]
    fn the_cookie_is_http_only_secure_and_strict() {
        let set = set_cookie("abc");
        for flag in ["HttpOnly", "Secure", "SameSite=Strict", "Path=/"] {
            assert!(set.contains(flag), "{set}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn only_the_hubs_own_pages_may_post() {
        let host = ("host", "hub.example:8443");
        assert!(same_origin(&headers(&[
            host,
            ("origin", "https://hub.example:8443")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "https://evil.example")
        ])));
        assert!(!same_origin(&headers(&[(
            "origin",
            "https://hub.example:8443"
        )])));
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(
            same_origin(&headers(&[host])),
            "not a browser: no cookie to abuse"
        );
    }
}
