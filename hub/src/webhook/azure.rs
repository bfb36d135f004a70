//! Azure DevOps service hooks (`git.push`).
//!
//! Azure does not sign payloads. A service hook can send HTTP basic authentication or custom headers, so
//! the hub accepts either: basic auth whose password is the secret (the user name is ignored), or the
//! header `X-Tether-Token: <secret>`. Both are compared in constant time. Use TLS.

use axum::http::HeaderMap;
use base64::Engine as _;
use serde_json::Value;

use super::{Event, Provider, RefUpdate, WebhookError, header, json, sign, str_at};
use crate::secret::Secret;

/// Check basic auth's password or `X-Tether-Token`.
pub fn verify(headers: &HeaderMap, _body: &[u8], secret: &Secret) -> bool {
    let by_header = header(headers, "x-tether-token")
        .is_some_and(|t| sign::token_matches(secret, t.as_bytes()));
    let by_basic = header(headers, "authorization")
        .and_then(|v| {
            v.strip_prefix("Basic ")
                .or_else(|| v.strip_prefix("basic "))
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .is_some_and(|decoded| {
            let password = match decoded.iter().position(|&b| b == b':') {
                Some(i) => &decoded[i + 1..],
                None => &decoded[..0],
            };
            sign::token_matches(secret, password)
        });
    by_header | by_basic
}

/// Read a `git.push` event; other event types are ignored.
pub fn parse(_headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let v = json(Provider::Azure, body)?;
    let kind = str_at(&v, "/eventType").unwrap_or_default();
    if kind != "git.push" {
        return Ok(Event::Ignored {
            kind: kind.chars().take(64).collect(),
        });
    }
    let urls = [
        "/resource/repository/remoteUrl",
        "/resource/repository/sshUrl",
    ]
    .into_iter()
    .filter_map(|p| str_at(&v, p));
    let repos = super::repo_ids(urls);
    let updates = v
        .pointer("/resource/refUpdates")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|u| RefUpdate {
            git_ref: str_at(u, "/name").unwrap_or_default().to_string(),
            sha: str_at(u, "/newObjectId").unwrap_or_default().to_string(),
        })
        .collect();
    super::push(Provider::Azure, repos, updates)
}

/// Azure puts the notification's id in the body (`id`).
pub(crate) fn delivery_id(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct WithId {
        id: Option<String>,
    }
    serde_json::from_slice::<WithId>(body).ok()?.id
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::{fixture, headers};

    #[test]
    fn git_push_yields_remote_url_and_ref_updates() {
        let body = fixture("azuredevops-git-push-event.json");
        let Event::Push(p) = parse(&HeaderMap::new(), &body).unwrap() else {
            panic!("not a push")
        };
        assert_eq!(
            p.repos[0].as_str(),
            "dev.azure.com/alexander0053/alex-test/_git/alex-test"
        );
        assert_eq!(p.updates[0].git_ref, "refs/heads/master");
        assert_eq!(p.updates[0].sha, "298a79aa1552799a70718a0ee914d153d5a1a76b");
    }

    #[test]
    fn basic_auth_password_or_header_token() {
        let s = Secret::new("pw");
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("anyone:pw")
        );
        assert!(verify(&headers(&[("authorization", &basic)]), b"", &s));
        assert!(verify(&headers(&[("x-tether-token", "pw")]), b"", &s));
        let wrong = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("pw:nope")
        );
        assert!(!verify(&headers(&[("authorization", &wrong)]), b"", &s));
        assert!(!verify(&HeaderMap::new(), b"", &s));
    }
}
