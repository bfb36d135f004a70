//! The generic webhook, for anything that can sign JSON (a `post-receive` hook, a CI job):
//! `X-Tether-Signature: sha256=<hmac hex of the body>` over `{"repo_urls": [...], "ref": ..., "sha": ...}`,
//! with an optional `X-Tether-Delivery` id.

use axum::http::HeaderMap;
use serde::Deserialize;

use super::{Event, Provider, RefUpdate, WebhookError, header, sign};
use crate::secret::Secret;

#[derive(Debug, Deserialize)]
struct Payload {
    repo_urls: Vec<String>,
    #[serde(rename = "ref")]
    git_ref: String,
    sha: String,
}

/// Check `X-Tether-Signature: sha256=...` against the raw body.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    header(headers, "x-tether-signature")
        .and_then(|v| v.strip_prefix("sha256="))
        .is_some_and(|sig| sign::hmac_sha256_matches(secret, body, sig))
}

/// Read the payload; every URL must normalise.
pub fn parse(_headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let p: Payload = serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
        provider: Provider::Generic,
        reason: format!("expected {{\"repo_urls\": [...], \"ref\": ..., \"sha\": ...}}: {e}"),
    })?;
    let mut repos = Vec::new();
    for url in &p.repo_urls {
        let id = tether_protocol::normalize(url).map_err(|e| WebhookError::Malformed {
            provider: Provider::Generic,
            reason: e.to_string(),
        })?;
        if !repos.contains(&id) {
            repos.push(id);
        }
    }
    super::push(
        Provider::Generic,
        repos,
        vec![RefUpdate {
            git_ref: p.git_ref,
            sha: p.sha,
        }],
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::headers;
    use crate::webhook::sign::hmac_sha256_hex;

    const BODY: &[u8] = br#"{"repo_urls":["https://git.example/a/b.git","git@git.example:a/b.git"],"ref":"refs/heads/main","sha":"1111111111111111111111111111111111111111"}"#;

    #[test]
    fn parses_and_dedups_repo_urls() {
        let Event::Push(p) = parse(&HeaderMap::new(), BODY).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(p.repos.len(), 1);
        assert_eq!(p.repos[0].as_str(), "git.example/a/b");
    }

    #[test]
    fn bad_payloads_are_explained() {
        let err = parse(
            &HeaderMap::new(),
            br#"{"repo_urls":["ftp://x/y"],"ref":"r","sha":"s"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        let err = parse(&HeaderMap::new(), br#"{"ref":"r"}"#).unwrap_err();
        assert!(err.to_string().contains("repo_urls"), "{err}");
        let err = parse(
            &HeaderMap::new(),
            br#"{"repo_urls":["h/a"],"ref":"r","sha":"xyz"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("sha"), "{err}");
    }

    #[test]
    fn signature() {
        let sig = format!("sha256={}", hmac_sha256_hex(b"g", BODY));
        assert!(verify(
            &headers(&[("x-tether-signature", &sig)]),
            BODY,
            &Secret::new("g")
        ));
        assert!(!verify(
            &headers(&[("x-tether-signature", &sig)]),
            BODY,
            &Secret::new("h")
        ));
    }
}
