//! Gitea, Forgejo and Gogs: GitHub-shaped payloads, signed with a bare HMAC-SHA256 hex in
//! `X-Gitea-Signature` / `X-Forgejo-Signature` / `X-Gogs-Signature` (Gitea also sends GitHub's header).

use axum::http::HeaderMap;

use super::{Event, Provider, WebhookError, header, sign};
use crate::secret::Secret;

/// Check any of the signature headers these forges send against the raw body.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    let bare = [
        "x-gitea-signature",
        "x-forgejo-signature",
        "x-gogs-signature",
    ]
    .into_iter()
    .filter_map(|name| header(headers, name))
    .any(|sig| sign::hmac_sha256_matches(secret, body, sig));
    bare || super::github::verify(headers, body, secret)
}

/// Read an event from `X-Gitea-Event`, `X-Forgejo-Event` or `X-Gogs-Event`.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let kind = header(headers, "x-gitea-event")
        .or_else(|| header(headers, "x-forgejo-event"))
        .or_else(|| header(headers, "x-gogs-event"))
        .ok_or(WebhookError::MissingHeader {
            provider: Provider::Gitea,
            header: "X-Gitea-Event",
        })?;
    match kind {
        "push" => super::github::push_payload(Provider::Gitea, body),
        other => Ok(Event::Ignored {
            kind: other.chars().take(64).collect(),
        }),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::{fixture, headers};
    use crate::webhook::sign::hmac_sha256_hex;

    #[test]
    fn gogs_event_yields_clone_urls_ref_and_sha() {
        let body = fixture("gogs-event.json");
        for event_header in ["x-gogs-event", "x-gitea-event", "x-forgejo-event"] {
            let Event::Push(p) = parse(&headers(&[(event_header, "push")]), &body).unwrap() else {
                panic!("not a push")
            };
            let ids: Vec<_> = p.repos.iter().map(|r| r.as_str()).collect();
            assert!(ids.contains(&"gogs-server/john/repo-test"), "{ids:?}");
            assert_eq!(p.updates[0].git_ref, "refs/heads/master");
            assert_eq!(p.updates[0].sha, "0a05129851238652bf806a400af89fa974ade739");
        }
    }

    #[test]
    fn each_signature_header_is_accepted() {
        let body = fixture("gogs-event.json");
        let secret = Secret::new("k");
        let sig = hmac_sha256_hex(b"k", &body);
        for name in [
            "x-gitea-signature",
            "x-gogs-signature",
            "x-forgejo-signature",
        ] {
            assert!(verify(&headers(&[(name, &sig)]), &body, &secret), "{name}");
            assert!(!verify(&headers(&[(name, "00")]), &body, &secret), "{name}");
        }
        let gh = format!("sha256={sig}");
        assert!(verify(
            &headers(&[("x-hub-signature-256", &gh)]),
            &body,
            &secret
        ));
    }
}
