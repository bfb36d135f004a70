//! Forge webhooks: verifying a delivery on its raw body, reading the push it announces, dropping duplicates.
//!
//! One submodule per provider, each with the same functions: `verify` (signature or token, in constant
//! time, through [`sign`]) and `parse` (the event: a ping, something to ignore, or a push with every
//! clone URL the payload offers, the refs and their new shas); [`Provider::delivery_id`] names the
//! delivery and [`dedup`] remembers the ones seen. Everything here is pure; [`crate::ingest`] wires it
//! to the store and the fan-out.

pub mod azure;
pub mod bitbucket;
pub mod dedup;
pub mod generic;
pub mod gitea;
pub mod github;
pub mod gitlab;
pub mod sign;

pub use dedup::Dedup;
pub use sign::hmac_sha256_hex;

use std::fmt;
use std::str::FromStr;

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use tether_protocol::{RepoId, normalize};

use crate::secret::Secret;

/// The forges the hub accepts webhooks from; the last path segment of `/v1/webhooks/{provider}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Provider {
    /// GitHub (`X-Hub-Signature-256`).
    Github,
    /// GitLab (`X-Gitlab-Token`).
    Gitlab,
    /// Gitea, Forgejo and Gogs (`X-Gitea-Signature`, `X-Gogs-Signature`).
    Gitea,
    /// Bitbucket Server / Data Center and Bitbucket Cloud (`X-Hub-Signature: sha256=`).
    Bitbucket,
    /// Azure DevOps service hooks (basic auth or `X-Tether-Token`).
    Azure,
    /// Anything else that can sign JSON (`X-Tether-Signature: sha256=`).
    Generic,
}

impl Provider {
    /// Every provider, in documentation order.
    pub const ALL: [Provider; 6] = [
        Provider::Github,
        Provider::Gitlab,
        Provider::Gitea,
        Provider::Bitbucket,
        Provider::Azure,
        Provider::Generic,
    ];

    /// The name used in URLs, config and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Github => "github",
            Provider::Gitlab => "gitlab",
            Provider::Gitea => "gitea",
            Provider::Bitbucket => "bitbucket",
            Provider::Azure => "azure",
            Provider::Generic => "generic",
        }
    }

    /// Whether the delivery carries a valid signature or token for `secret`.
    pub fn verify(self, headers: &HeaderMap, body: &[u8], secret: &Secret) -> bool {
        match self {
            Provider::Github => github::verify(headers, body, secret),
            Provider::Gitlab => gitlab::verify(headers, body, secret),
            Provider::Gitea => gitea::verify(headers, body, secret),
            Provider::Bitbucket => bitbucket::verify(headers, body, secret),
            Provider::Azure => azure::verify(headers, body, secret),
            Provider::Generic => generic::verify(headers, body, secret),
        }
    }

    /// Read the event a (verified) delivery announces.
    pub fn parse(self, headers: &HeaderMap, body: &[u8]) -> Result<Event, WebhookError> {
        match self {
            Provider::Github => github::parse(headers, body),
            Provider::Gitlab => gitlab::parse(headers, body),
            Provider::Gitea => gitea::parse(headers, body),
            Provider::Bitbucket => bitbucket::parse(headers, body),
            Provider::Azure => azure::parse(headers, body),
            Provider::Generic => generic::parse(headers, body),
        }
    }

    /// The delivery's id: the forge's own where it sends one, otherwise derived from the body, so a
    /// redelivery of the same bytes is still recognised.
    pub fn delivery_id(self, headers: &HeaderMap, body: &[u8]) -> String {
        let own = match self {
            Provider::Github => header(headers, "x-github-delivery").map(str::to_string),
            Provider::Gitlab => header(headers, "x-gitlab-event-uuid").map(str::to_string),
            Provider::Gitea => header(headers, "x-gitea-delivery")
                .or_else(|| header(headers, "x-forgejo-delivery"))
                .or_else(|| header(headers, "x-gogs-delivery"))
                .map(str::to_string),
            Provider::Bitbucket => header(headers, "x-request-uuid")
                .or_else(|| header(headers, "x-request-id"))
                .map(str::to_string),
            Provider::Azure => azure::delivery_id(body),
            Provider::Generic => header(headers, "x-tether-delivery").map(str::to_string),
        };
        match own {
            Some(id) if !id.is_empty() && id.len() <= 200 => format!("{}:{id}", self.name()),
            _ => format!(
                "{}:sha256:{}",
                self.name(),
                hex::encode(Sha256::digest(body))
            ),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Provider {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Provider::ALL.into_iter().find(|p| p.name() == s).ok_or(())
    }
}

/// What a delivery announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A ping or test event: answer it, notify nobody.
    Ping,
    /// An event the hub does not act on (an issue, a merge request...), named for the log.
    Ignored {
        /// The event's kind as the forge names it (bounded: taken from a header or a fixed field).
        kind: String,
    },
    /// A push.
    Push(PushEvent),
}

/// A push: the repository (under every name the payload gives it) and the refs it moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushEvent {
    /// The normalised ids of every clone URL the payload offers, without duplicates.
    pub repos: Vec<RepoId>,
    /// The refs moved.
    pub updates: Vec<RefUpdate>,
}

/// One ref moved by a push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefUpdate {
    /// The full ref, e.g. `refs/heads/main`.
    pub git_ref: String,
    /// The new commit (all zeros for a deletion).
    pub sha: String,
}

/// Why a delivery was refused.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// The body is not the JSON the provider sends.
    #[error("malformed {provider} payload: {reason}")]
    Malformed {
        /// The provider.
        provider: Provider,
        /// What is wrong, for the sender.
        reason: String,
    },
    /// A header the provider always sends is missing.
    #[error("missing {header} header for {provider}")]
    MissingHeader {
        /// The provider.
        provider: Provider,
        /// The header.
        header: &'static str,
    },
}

impl WebhookError {
    /// A short fixed name for metrics.
    pub fn category(&self) -> &'static str {
        match self {
            WebhookError::Malformed { .. } => "malformed",
            WebhookError::MissingHeader { .. } => "missing_header",
        }
    }
}

/// A header's value as text, if present and printable.
pub(crate) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Parse a JSON body, turning errors into a reason for the sender.
pub(crate) fn json(provider: Provider, body: &[u8]) -> Result<serde_json::Value, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::Malformed {
        provider,
        reason: format!("invalid JSON: {e}"),
    })
}

/// Collect the string fields `keys` of `object`, normalised, without duplicates. URLs that do not
/// normalise are skipped: a payload often carries web URLs beside the clone URLs.
pub(crate) fn repo_ids<'a>(urls: impl IntoIterator<Item = &'a str>) -> Vec<RepoId> {
    let mut out: Vec<RepoId> = Vec::new();
    for url in urls {
        if let Ok(id) = normalize(url)
            && !out.contains(&id)
        {
            out.push(id);
        }
    }
    out
}

/// The string at a JSON pointer, if any.
pub(crate) fn str_at<'a>(value: &'a serde_json::Value, pointer: &str) -> Option<&'a str> {
    value.pointer(pointer).and_then(serde_json::Value::as_str)
}

/// Build a push from its parts, refusing one without a repository or a ref.
pub(crate) fn push(
    provider: Provider,
    repos: Vec<RepoId>,
    updates: Vec<RefUpdate>,
) -> Result<Event, WebhookError> {
    if repos.is_empty() {
        return Err(WebhookError::Malformed {
            provider,
            reason: "no clone URL in the payload".into(),
        });
    }
    if updates.is_empty() {
        return Err(WebhookError::Malformed {
            provider,
            reason: "no ref update (ref and new sha) in the payload".into(),
        });
    }
    for u in &updates {
        if u.git_ref.is_empty() || !is_sha(&u.sha) {
            return Err(WebhookError::Malformed {
                provider,
                reason: format!("ref update {:?} without a valid sha", u.git_ref),
            });
        }
    }
    Ok(Event::Push(PushEvent { repos, updates }))
}

fn is_sha(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn providers_round_trip_their_names() {
        for p in Provider::ALL {
            assert_eq!(p.name().parse::<Provider>(), Ok(p));
        }
        assert!("svn".parse::<Provider>().is_err());
    }

    #[test]
    fn delivery_ids_fall_back_to_the_body_hash() {
        let h = crate::test_util::headers(&[("x-github-delivery", "abc")]);
        assert_eq!(Provider::Github.delivery_id(&h, b"x"), "github:abc");
        let none = HeaderMap::new();
        let id = Provider::Github.delivery_id(&none, b"x");
        assert!(id.starts_with("github:sha256:"), "{id}");
        assert_eq!(id, Provider::Github.delivery_id(&none, b"x"));
    }
}
