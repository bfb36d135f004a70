//! GitHub: `X-Hub-Signature-256: sha256=<hmac hex>`, `X-GitHub-Event`, `X-GitHub-Delivery`.

use axum::http::HeaderMap;

use super::{Event, Provider, RefUpdate, WebhookError, header, json, sign};
use crate::secret::Secret;

/// Check `X-Hub-Signature-256` against the raw body.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    header(headers, "x-hub-signature-256")
        .and_then(|v| v.strip_prefix("sha256="))
        .is_some_and(|sig| sign::hmac_sha256_matches(secret, body, sig))
}

/// Read a GitHub event: `ping`, `push`, or something to ignore.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let kind = header(headers, "x-github-event").ok_or(WebhookError::MissingHeader {
        provider: Provider::Github,
        header: "X-GitHub-Event",
    })?;
    match kind {
        "ping" => Ok(Event::Ping),
        "push" => push_payload(Provider::Github, body),
        other => Ok(Event::Ignored {
            kind: other.chars().take(64).collect(),
        }),
    }
}

/// A GitHub-shaped push payload (GitHub, and Gitea/Gogs which copy it).
pub(crate) fn push_payload(provider: Provider, body: &[u8]) -> Result<Event, WebhookError> {
    let v = json(provider, body)?;
    let repo = v.get("repository").ok_or_else(|| WebhookError::Malformed {
        provider,
        reason: "no `repository` object".into(),
    })?;
    let urls = ["clone_url", "ssh_url", "git_url", "html_url", "svn_url"]
        .into_iter()
        .filter_map(|k| repo.get(k).and_then(serde_json::Value::as_str));
    let repos = super::repo_ids(urls);
    let git_ref = super::str_at(&v, "/ref").unwrap_or_default().to_string();
    let sha = super::str_at(&v, "/after").unwrap_or_default().to_string();
    if git_ref.is_empty() {
        return Err(WebhookError::Malformed {
            provider,
            reason: "no `ref` field".into(),
        });
    }
    super::push(provider, repos, vec![RefUpdate { git_ref, sha }])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::{fixture, headers};
    use crate::webhook::sign::hmac_sha256_hex;

    #[test]
    fn commit_event_yields_every_clone_url_ref_and_sha() {
        let body = fixture("github-commit-event.json");
        let h = headers(&[("x-github-event", "push")]);
        let Event::Push(p) = parse(&h, &body).unwrap() else {
            panic!("not a push")
        };
        let ids: Vec<_> = p.repos.iter().map(|r| r.as_str()).collect();
        assert_eq!(ids, vec!["github.com/jessesuen/test-repo"]);
        assert_eq!(p.updates[0].git_ref, "refs/heads/master");
        assert_eq!(p.updates[0].sha, "63738bb582c8b540af7bcfc18f87c575c3ed66e0");
    }

    #[test]
    fn tag_event_keeps_the_tag_ref() {
        let body = fixture("github-tag-event.json");
        let h = headers(&[("x-github-event", "push")]);
        let Event::Push(p) = parse(&h, &body).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(p.updates[0].git_ref, "refs/tags/v1.0");
    }

    #[test]
    fn ping_is_answered_without_a_push() {
        let body = fixture("github-ping-event.json");
        let h = headers(&[("x-github-event", "ping")]);
        assert_eq!(parse(&h, &body).unwrap(), Event::Ping);
    }

    #[test]
    fn other_events_are_ignored_and_a_missing_event_header_is_an_error() {
        let h = headers(&[("x-github-event", "issues")]);
        assert!(matches!(parse(&h, b"{}").unwrap(), Event::Ignored { .. }));
        let err = parse(&HeaderMap::new(), b"{}").unwrap_err();
        assert_eq!(err.category(), "missing_header");
    }

    #[test]
    fn malformed_pushes_say_why() {
        let h = headers(&[("x-github-event", "push")]);
        let err = parse(&h, b"not json").unwrap_err();
        assert!(err.to_string().contains("invalid JSON"), "{err}");
        let err = parse(&h, br#"{"ref":"refs/heads/x","after":"00"}"#).unwrap_err();
        assert!(err.to_string().contains("repository"), "{err}");
    }

    #[test]
    fn signature_is_checked_on_the_raw_body() {
        let body = fixture("github-commit-event.json");
        let secret = Secret::new("s3cret");
        let sig = format!("sha256={}", hmac_sha256_hex(b"s3cret", &body));
        assert!(verify(
            &headers(&[("x-hub-signature-256", &sig)]),
            &body,
            &secret
        ));
        let mut tampered = body.clone();
        tampered.push(b' ');
        assert!(!verify(
            &headers(&[("x-hub-signature-256", &sig)]),
            &tampered,
            &secret
        ));
        assert!(!verify(
            &headers(&[("x-hub-signature-256", &sig)]),
            &body,
            &Secret::new("other")
        ));
        let bare = hmac_sha256_hex(b"s3cret", &body);
        assert!(!verify(
            &headers(&[("x-hub-signature-256", &bare)]),
            &body,
            &secret
        ));
        assert!(!verify(&HeaderMap::new(), &body, &secret));
    }
}
