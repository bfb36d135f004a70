//! The webhook intake, `POST /v1/webhooks/{provider}`: verify the delivery against the provider's
//! secrets, read the push, drop duplicates, record the latest sha per repository, then fan it out.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tether_protocol::{Notice, RepoId};
use tracing::{debug, info, warn};

use crate::state::Shared;
use crate::webhook::{Event, Provider};

fn reply(status: StatusCode, body: serde_json::Value) -> Response {
    (status, Json(body)).into_response()
}

/// `POST /v1/webhooks/{provider}`.
pub(crate) async fn webhook(
    State(shared): State<Arc<Shared>>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let received = std::time::Instant::now();
    let Ok(provider) = provider.parse::<Provider>() else {
        return reply(
            StatusCode::NOT_FOUND,
            json!({"error": "unknown provider", "providers": Provider::ALL.map(Provider::name)}),
        );
    };
    let name = provider.name();
    let body = match body {
        Ok(b) => b,
        Err(rejection) => {
            let outcome = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                "too_large"
            } else {
                "unreadable"
            };
            shared.metrics.webhook(name, outcome);
            warn!(provider = name, outcome, "webhook body refused");
            return rejection.into_response();
        }
    };

    // Verify against every secret configured for this provider; a delivery may only notify the
    // repositories covered by a secret that verified it.
    let verified: Vec<_> = shared
        .config
        .webhooks
        .iter()
        .filter(|w| w.provider == provider)
        .filter(|w| provider.verify(&headers, &body, &w.secret))
        .collect();
    if verified.is_empty() {
        shared.metrics.webhook(name, "unauthorized");
        warn!(provider = name, "webhook signature or token did not verify");
        return reply(
            StatusCode::UNAUTHORIZED,
            json!({"error": "signature or token did not verify"}),
        );
    }

    let push = match provider.parse(&headers, &body) {
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
            warn!(provider = name, error = %e, "malformed webhook");
            return reply(StatusCode::BAD_REQUEST, json!({"error": e.to_string()}));
        }
    };

    let (covered, uncovered): (Vec<RepoId>, Vec<RepoId>) = push
        .repos
        .into_iter()
        .partition(|r| verified.iter().any(|w| w.repos.matches(r)));
    if covered.is_empty() {
        shared.metrics.webhook(name, "forbidden");
        let names: Vec<&str> = uncovered.iter().map(RepoId::as_str).collect();
        warn!(provider = name, repos = ?names, "verified webhook for repositories its secret does not cover");
        return reply(
            StatusCode::FORBIDDEN,
            json!({"error": "the secret that verified this delivery does not cover its repository", "repos": names}),
        );
    }

    let delivery = provider.delivery_id(&headers, &body);
    let first_time = shared
        .dedup
        .lock()
        .map(|mut d| d.first_time(&delivery, received))
        .unwrap_or(true);
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
    let persisted =
        tokio::task::spawn_blocking(move || states.iter().try_for_each(|s| store.put(s))).await;
    let failure = match persisted {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(format!("{e} ({})", e.category())),
        Err(e) => Some(e.to_string()),
    };
    if let Some(reason) = failure {
        if let Ok(mut d) = shared.dedup.lock() {
            d.forget(&delivery);
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
    shared.metrics.webhook(name, "accepted");
    let repos: BTreeSet<&str> = covered.iter().map(RepoId::as_str).collect();
    let refs: Vec<&str> = push.updates.iter().map(|u| u.git_ref.as_str()).collect();
    info!(provider = name, %delivery, ?repos, ?refs, agents, "push accepted");
    reply(
        StatusCode::ACCEPTED,
        json!({"status": "accepted", "delivery": delivery, "repos": repos, "refs": refs, "notices": agents}),
    )
}
