//! Bitbucket Server / Data Center (`repo:refs_changed`) and Bitbucket Cloud (`repo:push`):
//! `X-Hub-Signature: sha256=<hmac hex>`, `X-Event-Key`, `X-Request-Id` / `X-Request-UUID`.

use axum::http::HeaderMap;
use serde_json::Value;

use super::{Event, Provider, RefUpdate, WebhookError, header, json, sign, str_at};
use crate::secret::Secret;

const ZERO_SHA: &str = "0000000000000000000000000000000000000000";

/// Check `X-Hub-Signature: sha256=...` against the raw body.
pub fn verify(headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
    header(headers, "x-hub-signature")
        .and_then(|v| v.strip_prefix("sha256="))
        .is_some_and(|sig| sign::hmac_sha256_matches(secret, body, sig))
}

/// Read an event from `X-Event-Key` (or the body's `eventKey`).
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let v = json(Provider::Bitbucket, body)?;
    let kind = header(headers, "x-event-key")
        .or_else(|| str_at(&v, "/eventKey"))
        .ok_or(WebhookError::MissingHeader {
            provider: Provider::Bitbucket,
            header: "X-Event-Key",
        })?;
    match kind {
        "diagnostics:ping" => Ok(Event::Ping),
        "repo:refs_changed" => server_push(&v),
        "repo:push" => cloud_push(&v),
        other => Ok(Event::Ignored {
            kind: other.chars().take(64).collect(),
        }),
    }
}

fn server_push(v: &Value) -> Result<Event, WebhookError> {
    let clone = v
        .pointer("/repository/links/clone")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let repos = super::repo_ids(clone.iter().filter_map(|c| str_at(c, "/href")));
    let changes = v
        .get("changes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let updates = changes
        .iter()
        .map(|c| RefUpdate {
            git_ref: str_at(c, "/refId")
                .or_else(|| str_at(c, "/ref/id"))
                .unwrap_or_default()
                .to_string(),
            sha: str_at(c, "/toHash").unwrap_or_default().to_string(),
        })
        .collect();
    super::push(Provider::Bitbucket, repos, updates)
}

fn cloud_push(v: &Value) -> Result<Event, WebhookError> {
    let mut urls: Vec<String> = Vec::new();
    if let Some(html) = str_at(v, "/repository/links/html/href") {
        urls.push(html.to_string());
    }
    if let Some(full_name) = str_at(v, "/repository/full_name") {
        urls.push(format!("https://bitbucket.org/{full_name}"));
    }
    let repos = super::repo_ids(urls.iter().map(String::as_str));
    let changes = v
        .pointer("/push/changes")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let mut updates = Vec::new();
    for c in changes {
        // `new` is null when a ref is deleted; then `old` names it.
        let (side, sha) = match c.get("new").filter(|n| !n.is_null()) {
            Some(n) => (n, str_at(n, "/target/hash").unwrap_or_default().to_string()),
            None => match c.get("old") {
                Some(o) => (o, ZERO_SHA.to_string()),
                None => continue,
            },
        };
        let name = str_at(side, "/name").unwrap_or_default();
        let git_ref = match str_at(side, "/type") {
            Some("tag") => format!("refs/tags/{name}"),
            _ => format!("refs/heads/{name}"),
        };
        updates.push(RefUpdate { git_ref, sha });
    }
    super::push(Provider::Bitbucket, repos, updates)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::{fixture, headers};
    use crate::webhook::sign::hmac_sha256_hex;

    #[test]
    fn server_refs_changed_yields_ssh_and_http_ids() {
        let body = fixture("bitbucket-server-event.json");
        let h = headers(&[("x-event-key", "repo:refs_changed")]);
        let Event::Push(p) = parse(&h, &body).unwrap() else {
            panic!("not a push")
        };
        let ids: Vec<_> = p.repos.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                "bitbucketserver:7999/myproject/test-repo",
                "bitbucketserver/scm/myproject/test-repo"
            ]
        );
        assert_eq!(p.updates[0].git_ref, "refs/heads/master");
        assert_eq!(p.updates[0].sha, "22671f0349857934857983457983475ec39f196b");
        // The body's eventKey stands in for a missing header.
        assert!(matches!(
            parse(&HeaderMap::new(), &body).unwrap(),
            Event::Push(_)
        ));
    }

    #[test]
    fn cloud_push_yields_branch_and_tag_refs() {
        let body = br#"{"repository":{"full_name":"team/app","links":{"html":{"href":"https://bitbucket.org/team/app"}}},
            "push":{"changes":[{"new":{"type":"branch","name":"main","target":{"hash":"1111111111111111111111111111111111111111"}}},
                               {"new":{"type":"tag","name":"v1","target":{"hash":"2222222222222222222222222222222222222222"}}},
                               {"new":null,"old":{"type":"branch","name":"gone"}}]}}"#;
        let Event::Push(p) = parse(&headers(&[("x-event-key", "repo:push")]), body).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(p.repos[0].as_str(), "bitbucket.org/team/app");
        let refs: Vec<_> = p.updates.iter().map(|u| u.git_ref.as_str()).collect();
        assert_eq!(
            refs,
            vec!["refs/heads/main", "refs/tags/v1", "refs/heads/gone"]
        );
        assert_eq!(p.updates[2].sha, ZERO_SHA);
    }

    #[test]
    fn ping_and_signature() {
        let h = headers(&[("x-event-key", "diagnostics:ping")]);
        assert_eq!(parse(&h, b"{}").unwrap(), Event::Ping);
        let body = fixture("bitbucket-server-event.json");
        let sig = format!("sha256={}", hmac_sha256_hex(b"k", &body));
        let s = Secret::new("k");
        assert!(verify(&headers(&[("x-hub-signature", &sig)]), &body, &s));
        assert!(!verify(&headers(&[("x-hub-signature", &sig)]), b"{}", &s));
    }
}
