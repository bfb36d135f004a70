//! GitLab: a shared token in `X-Gitlab-Token`, `X-Gitlab-Event`, `X-Gitlab-Event-UUID`.

use axum::http::HeaderMap;

use super::{Event, Provider, RefUpdate, WebhookError, header, json, sign, str_at};
use crate::secret::Secret;

/// Compare `X-Gitlab-Token` with the secret in constant time.
pub fn verify(headers: &HeaderMap, _body: &[u8], secret: &Secret) -> bool {
    header(headers, "x-gitlab-token").is_some_and(|t| sign::token_matches(secret, t.as_bytes()))
}

/// Read a push or tag push (project hooks and system hooks alike); other events are ignored.
pub fn parse(headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
    let kind = header(headers, "x-gitlab-event").ok_or(WebhookError::MissingHeader {
        provider: Provider::Gitlab,
        header: "X-Gitlab-Event",
    })?;
    if !matches!(kind, "Push Hook" | "Tag Push Hook" | "System Hook") {
        return Ok(Event::Ignored {
            kind: kind.chars().take(64).collect(),
        });
    }
    let v = json(Provider::Gitlab, body)?;
    let object_kind = str_at(&v, "/object_kind").unwrap_or_default();
    if !matches!(object_kind, "push" | "tag_push") {
        return Ok(Event::Ignored {
            kind: object_kind.chars().take(64).collect(),
        });
    }
    let urls = [
        "/project/git_http_url",
        "/project/git_ssh_url",
        "/project/http_url",
        "/project/ssh_url",
        "/project/web_url",
        "/repository/git_http_url",
        "/repository/git_ssh_url",
        "/repository/homepage",
    ]
    .into_iter()
    .filter_map(|p| str_at(&v, p));
    let repos = super::repo_ids(urls);
    let git_ref = str_at(&v, "/ref").unwrap_or_default().to_string();
    // `checkout_sha` is null when a branch is deleted; `after` is then all zeros.
    let sha = str_at(&v, "/checkout_sha")
        .or_else(|| str_at(&v, "/after"))
        .unwrap_or_default()
        .to_string();
    super::push(Provider::Gitlab, repos, vec![RefUpdate { git_ref, sha }])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::test_util::{fixture, headers};

    #[test]
    fn push_hook_yields_http_and_ssh_ids() {
        let body = fixture("gitlab-event.json");
        let Event::Push(p) = parse(&headers(&[("x-gitlab-event", "Push Hook")]), &body).unwrap()
        else {
            panic!("not a push")
        };
        let ids: Vec<_> = p.repos.iter().map(|r| r.as_str()).collect();
        assert_eq!(
            ids,
            vec!["gitlab.com/group/name", "gitlab.com:2222/group/name"]
        );
        assert_eq!(p.updates[0].git_ref, "refs/heads/master");
        assert_eq!(p.updates[0].sha, "bb0748feaa336d841c251017e4e374c22d0c8a98");
    }

    #[test]
    fn other_hooks_are_ignored() {
        let h = headers(&[("x-gitlab-event", "Merge Request Hook")]);
        assert!(matches!(parse(&h, b"{}").unwrap(), Event::Ignored { .. }));
    }

    #[test]
    fn token_must_match() {
        let s = Secret::new("t0ken");
        assert!(verify(&headers(&[("x-gitlab-token", "t0ken")]), b"", &s));
        assert!(!verify(&headers(&[("x-gitlab-token", "t0ke")]), b"", &s));
        assert!(!verify(&HeaderMap::new(), b"", &s));
    }
}
