//! The webhook intake, `POST /v1/webhooks/{provider}`: verify the delivery against the provider's
//! secrets, read the push, drop duplicates, record the latest sha per repository, then fan it out.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use prometheus::IntGauge;
use serde_json::json;
use tether_protocol::{Notice, RepoId};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::config::WebhookSecret;
use crate::limits::{echo_names, echo_text};
use crate::state::Shared;
use crate::webhook::{Event, Provider, WebhookError, dedup};

/// Why a webhook body was not read whole.
#[derive(Debug, thiserror::Error)]
enum BodyRefused {
    #[error("the body is larger than {max} bytes")]
    TooLarge { max: usize },
    #[error("the body did not arrive within {}s", .timeout.as_secs_f64())]
    Timeout { timeout: Duration },
    #[error("the body could not be read: {0}")]
    Unreadable(String),
    #[error("the hub holds as many webhook bodies as it may; retry later")]
    Busy,
}

impl BodyRefused {
    fn status_and_outcome(&self) -> (StatusCode, &'static str) {
        match self {
            BodyRefused::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            BodyRefused::Timeout { .. } => (StatusCode::REQUEST_TIMEOUT, "body_timeout"),
            BodyRefused::Unreadable(_) => (StatusCode::BAD_REQUEST, "unreadable"),
            BodyRefused::Busy => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        }
    }
}

/// Read a webhook body whole, within `max_body_bytes`, `body_read_timeout` and the room left in
/// `max_body_bytes_in_flight`; the bytes stay counted against the latter while [`Held`] lives.
async fn read_body(
    body: Body,
    headers: &HeaderMap,
    shared: &Shared,
) -> Result<(Bytes, Held), BodyRefused> {
    let limits = &shared.config.limits;
    let max = limits.max_body_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return Err(BodyRefused::TooLarge { max });
    }
    let read = async {
        let mut body = body;
        let mut bytes = Vec::new();
        let mut held = Held {
            permit: None,
            bytes: 0,
            gauge: shared.metrics.webhook_body_bytes.clone(),
        };
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyRefused::Unreadable(e.to_string()))?;
            if let Ok(data) = frame.into_data() {
                if bytes.len() + data.len() > max {
                    return Err(BodyRefused::TooLarge { max });
                }
                if !held.take(&shared.body_budget, data.len()) {
                    return Err(BodyRefused::Busy);
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok((Bytes::from(bytes), held))
    };
    let timeout = limits.body_read_timeout;
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(BodyRefused::Timeout { timeout }))
}

/// What the blocking check of a delivery found.
struct Checked {
    /// The indices (in `webhooks`) of the secrets that verified it.
    verified: Vec<usize>,
    /// The event, read only when a secret verified it.
    event: Option<Result<Event, WebhookError>>,
    /// The delivery's id.
    delivery: String,
}

/// Verify a delivery against every secret for its provider and read it if one did. CPU-bound: call
/// it on a blocking thread.
fn check(shared: &Shared, provider: Provider, headers: &HeaderMap, body: &[u8]) -> Checked {
    let verified: Vec<usize> = shared
        .config
        .webhooks
        .iter()
        .enumerate()
        .filter(|(_, w)| w.provider == provider && provider.verify(headers, body, &w.secret))
        .map(|(i, _)| i)
        .collect();
    let event = (!verified.is_empty()).then(|| provider.parse(headers, body));
    Checked {
        verified,
        event,
        delivery: provider.delivery_id(headers, body),
    }
}

/// Webhook body bytes held by one request, counted against `max_body_bytes_in_flight` and the
/// `tether_hub_webhook_body_bytes` gauge until dropped.
struct Held {
    permit: Option<OwnedSemaphorePermit>,
    bytes: usize,
    gauge: IntGauge,
}

impl Held {
    /// Count `n` more bytes, if the budget has room for them.
    fn take(&mut self, budget: &Arc<Semaphore>, n: usize) -> bool {
        let Ok(permits) = u32::try_from(n) else {
            return false;
        };
        let Ok(more) = Arc::clone(budget).try_acquire_many_owned(permits) else {
            return false;
        };
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes += n;
        self.gauge.add(n as i64);
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.gauge.sub(self.bytes as i64);
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// `POST /v1/webhooks/{provider}`.
pub(crate) async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let received = std::time::Instant::now();
    let limits = &shared.config.limits;
    let Ok(provider) = provider.parse::<Provider>() else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown provider", "providers": Provider::ALL.map(Provider::name)}),
        );
    };
    let name = provider.name();
    let (body, _held) = match read_body(body, &headers, &shared).await {
        Ok(read) => read,
        Err(refused) => {
            let (status, outcome) = refused.status_and_outcome();
            shared.metrics.webhook(name, outcome);
            warn!(provider = name, outcome, error = %refused, "webhook body refused");
            return reply(status, json!({"error": refused.to_string()}));
        }
    };

    // Verify against every secret configured for this provider (a delivery may only notify the
    // repositories covered by a secret that verified it), off the async workers: that is one HMAC
    // of the whole body per secret.
    let checked = {
        let (shared, headers, body) = (Arc::clone(&shared), headers.clone(), body.clone());
        tokio::task::spawn_blocking(move || check(&shared, provider, &headers, &body)).await
    };
    let Ok(Checked {
        verified,
        event,
        delivery,
    }) = checked
    else {
        shared.metrics.webhook(name, "internal_error");
        warn!(provider = name, "webhook verification task failed");
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "verification failed; retry"}),
        );
    };
    // Remembered under the secrets that verified it too: the id is an unsigned header.
    let dedup_key = dedup::key(&verified, &delivery);
    let verified: Vec<&WebhookSecret> = verified
        .iter()
        .filter_map(|&i| shared.config.webhooks.get(i))
        .collect();
    let Some(event) = event else {
        shared.metrics.webhook(name, "unauthorized");
        warn!(provider = name, "webhook signature or token did not verify");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "signature or token did not verify"}),
        );
    };

    let push = match event {
        Ok(Event::Push(p)) => p,
        Ok(Event::Ping) => {
            shared.metrics.webhook(name, "ping");
            info!(provider = name, "webhook ping answered");
            return reply(StatusCode::OK, json!({"status": "pong"}));
        }
        Ok(Event::Ignored { kind }) => {
            shared.metrics.webhook(name, "ignored");
            debug!(provider = name, kind = %kind, "webhook event ignored");
            return reply(StatusCode::OK, json!({"status": "ignored", "event": kind}));
        }
        Err(e) => {
            shared.metrics.webhook(name, "malformed");
            // The reason may quote the payload.
            let reason = echo_text(&e.to_string(), limits.max_echo_bytes);
            warn!(provider = name, error = %reason, "malformed webhook");
            return reply(StatusCode::BAD_REQUEST, json!({"error": reason}));
        }
    };

    let (covered, uncovered): (Vec<RepoId>, Vec<RepoId>) = push
        .repos
        .into_iter()
        .partition(|r| verified.iter().any(|w| w.repos.matches(r)));
    if covered.is_empty() {
        shared.metrics.webhook(name, "forbidden");
        let names = uncovered.iter().map(RepoId::as_str);
        let (names, left_out) = echo_names(names, limits.max_echo_bytes);
        warn!(provider = name, repos = ?names, left_out, "verified webhook for repositories its secret does not cover");
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the secret that verified this delivery does not cover its repository", "repos": names, "repos_left_out": left_out}),
        );
    }

    let here_first = shared
        .dedup
        .lock()
        .map(|mut d| d.first_time(&dedup_key, received))
        .unwrap_or(true);
    // With replicas, a redelivery may reach another one: Redis decides while it answers.
    let first_time = match &shared.replicas {
        Some(r) => r.first_delivery(&dedup_key).await.unwrap_or(here_first),
        None => here_first,
    };
    if !first_time {
        shared.metrics.webhook(name, "duplicate");
        info!(provider = name, %delivery, "duplicate delivery dropped");
        return reply(
            StatusCode::OK,
            json!({"status": "duplicate", "delivery": delivery}),
        );
    }

    let received_at = tether_protocol::unix_ms();
    let notices: Vec<Notice> = covered
        .iter()
        .flat_map(|repo| {
            push.updates.iter().map(|u| Notice {
                repo: repo.clone(),
                git_ref: u.git_ref.clone(),
                sha: u.sha.clone(),
                delivery: delivery.clone(),
                received_at,
            })
        })
        .collect();

    // Persist before fanning out, so that an agent connecting meanwhile finds it in its catch-up.
    let store = shared.store.clone();
    let states: Vec<_> = covered
        .iter()
        .filter_map(|r| notices.iter().rev().find(|n| &n.repo == r))
        .map(Notice::state)
        .collect();
    let persisted = tokio::task::spawn_blocking(move || {
        states
            .iter()
            .try_for_each(|s| store.put(s))
            .map(|()| states)
    })
    .await;
    let failure = match persisted {
        Ok(Ok(states)) => {
            shared.fleet.pushed(&states);
            None
        }
        Ok(Err(e)) => Some(format!("{e} ({})", e.category())),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = failure {
        if let Ok(mut d) = shared.dedup.lock() {
            d.forget(&dedup_key);
        }
        if let Some(r) = &shared.replicas {
            r.forget_delivery(&dedup_key).await;
        }
        shared.metrics.webhook(name, "store_error");
        warn!(provider = name, %delivery, error = %reason, "could not record push");
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            json!({"error": "could not record the push; retry"}),
        );
    }

    let mut agents = 0;
    for n in &notices {
        agents += shared.fanout.publish(n, received);
    }
    if let Some(r) = &shared.replicas {
        r.share(crate::replicas::Batch {
            origin: r.id.clone(),
            notices: notices.clone(),
        })
        .await;
    }
    shared.metrics.webhook(name, "accepted");
    let repos: BTreeSet<&str> = covered.iter().map(RepoId::as_str).collect();
    let refs: Vec<&str> = push.updates.iter().map(|u| u.git_ref.as_str()).collect();
    info!(provider = name, %delivery, ?repos, ?refs, agents, "push accepted");
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "delivery": delivery, "repos": repos, "refs": refs, "notices": agents}),
    )
}
