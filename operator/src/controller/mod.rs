//! The controller: watches `GitRepository` objects and reconciles each through the pipeline.
//!
//! - [`spec`]: the spec checked once, as the stages consume it.
//! - [`deps`]: `spec.dependsOn`: the wait for dependencies, cycles, and waking dependents.
//! - [`pipeline`]: resolve, fetch, render, plan, apply, prune, wait; returns an [`status::Attempt`].
//! - [`render`]: the manifests of a revision: plain, or from kustomize or helm, decrypted.
//! - [`status`]: pure: the next status and Event from an attempt.
//! - [`writer`]: writes the status and publishes Events.
//! - [`error`]: why a reconcile failed, sorted by [`crate::error::StageError`].
//! - [`context`]: what every reconcile shares.
//!
//! Errors are sorted by what will fix them ([`ErrorClass`]): an invalid spec waits for the spec to
//! change (Stalled); a bad revision waits for the next commit (retried at the interval); anything
//! else is transient and retried with a per-object backoff.

mod context;
mod deps;
mod error;
mod pipeline;
mod render;
mod spec;
pub mod status;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef as Ref};
use kube::runtime::{Predicate as _, WatchStreamExt, predicates, watcher};
use tracing::{debug, info, instrument, warn};

pub use context::{ApiAccess, Context, MIRROR_SWEEP_INTERVAL, Policy, sweep_mirrors};
pub use deps::Wakes;
pub use error::Error;

use self::spec::ValidSpec;
use self::status::Attempt;
use self::writer::{publish, write_status};
use crate::apply;
use crate::crd::{ANNOTATION_RECONCILE_REQUESTED_AT, FINALIZER, GitRepository};
use crate::error::{ErrorClass, StageError as _};
use crate::plan;
use crate::triggers::Notices;

/// How often a GitRepository waiting for its dependencies looks at them again, besides being
/// woken when one of them becomes Ready.
const DEPENDENCY_RECHECK: Duration = Duration::from_secs(30);

/// The interval assumed for an object whose own does not parse.
const FALLBACK_INTERVAL: Duration = Duration::from_secs(300);

/// Runs the controller, over one namespace or all, until `shutdown` resolves. Each push notice in
/// `notices` reconciles every `GitRepository` that follows the pushed repository.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    notices: Notices,
    wakes: Wakes,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<GitRepository> = match &namespace {
        Some(ns) => Api::namespaced(ctx.client.clone(), ns),
        None => Api::all(ctx.client.clone()),
    };
    let (reader, writer) = reflector::store();
    // Reconcile on what a user changes (the spec, or the reconcile-requested-at annotation, or a
    // deletion), not on our own status writes.
    let changes = watcher(api, watcher::Config::default().any_semantic())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(
            predicates::generation.combine(requested_at),
            Default::default(),
        );
    let pushed = ctx.triggers.clone().reconciles(notices);
    Controller::for_stream(changes, reader)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .reconcile_on(pushed)
        .reconcile_on(wakes.into_stream())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// What besides the spec's generation calls for a reconcile: the reconcile-requested-at
/// annotation and a deletion. Not the finalizers: the reconcile that adds Tether's goes on to
/// apply ([`with_finalizer`]).
fn requested_at(obj: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.annotations()
        .get(ANNOTATION_RECONCILE_REQUESTED_AT)
        .hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

/// `obj` with Tether's finalizer, added now when it is missing (and `obj` is not being deleted),
/// so that the same reconcile can go on to apply: kube's helper would end it there and wait for
/// the change to come back through the watch and the queue. The patch carries the
/// resourceVersion read, so that a finalizer someone else added meanwhile is never lost (a
/// conflict is retried).
async fn with_finalizer(
    api: &Api<GitRepository>,
    obj: Arc<GitRepository>,
) -> Result<Arc<GitRepository>, Error> {
    if obj.metadata.deletion_timestamp.is_some() || obj.finalizers().iter().any(|f| f == FINALIZER)
    {
        return Ok(obj);
    }
    let mut finalizers = obj.finalizers().to_vec();
    finalizers.push(FINALIZER.to_owned());
    let patch = serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()},
    });
    let updated = api
        .patch(
            &obj.name_any(),
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .map_err(Error::Kube)?;
    Ok(Arc::new(updated))
}

fn error_policy(obj: Arc<GitRepository>, err: &Error, ctx: Arc<Context>) -> Action {
    let interval = obj.spec.interval().unwrap_or(FALLBACK_INTERVAL);
    match err.class() {
        ErrorClass::Stalled => Action::await_change(),
        ErrorClass::Revision => Action::requeue(jittered(interval)),
        ErrorClass::Transient => {
            Action::requeue(ctx.next_retry(Ref::from_obj(&*obj)).min(interval))
        }
        ErrorClass::Waiting => Action::requeue(DEPENDENCY_RECHECK.min(interval)),
    }
}

/// The interval plus up to 10 % jitter, so that objects created together spread out.
fn jittered(interval: Duration) -> Duration {
    Duration::try_from_secs_f64(interval.as_secs_f64() * (1.0 + 0.1 * rand::random::<f64>()))
        .unwrap_or(interval)
}

#[instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
async fn reconcile(obj: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    contained(reconcile_with_finalizer(obj, ctx)).await
}

/// A panic in one object's reconcile fails that reconcile, and only it: the runtime would
/// otherwise take the whole process down, and with it every other tenant's reconciles.
async fn contained(
    work: impl std::future::Future<Output = Result<Action, Error>>,
) -> Result<Action, Error> {
    use futures::FutureExt as _;
    std::panic::AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .unwrap_or_else(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(Error::Panicked(what))
        })
}

async fn reconcile_with_finalizer(
    obj: Arc<GitRepository>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    let obj = with_finalizer(&api, obj).await?;
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => converge(obj, &ctx).await,
            Finalizer::Cleanup(obj) => cleanup(obj, &ctx).await,
        }
    })
    .await;
    result.map_err(|e| match e {
        kube::runtime::finalizer::Error::ApplyFailed(e)
        | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
        kube::runtime::finalizer::Error::AddFinalizer(e)
        | kube::runtime::finalizer::Error::RemoveFinalizer(e) => Error::Kube(e),
        other => Error::InvalidSpec(other.to_string()),
    })
}

/// Makes the cluster match the repository: the pipeline, then the status it leads to.
async fn converge(obj: Arc<GitRepository>, ctx: &Context) -> Result<Action, Error> {
    let mut timer = ctx.metrics.reconcile_timer();
    let oref = Ref::from_obj(&*obj);
    let (namespace, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
    let spec = ValidSpec::parse(&obj.spec, ctx.policy.allow_file_urls);
    ctx.triggers
        .track(oref.clone(), spec.as_ref().ok().map(|s| s.repo.clone()));

    if obj.spec.suspend {
        debug!("suspended: nothing to do until spec.suspend is lifted");
        write_status(ctx, &obj, status::suspended(&obj, Timestamp::now())).await?;
        return Ok(Action::await_change());
    }

    let (attempt, notice, interval) = match spec {
        Ok(spec) => {
            let notice = ctx.triggers.last_notice(&spec.repo);
            let attempt = match dependencies(&obj, ctx).await {
                Ok(()) => pipeline::attempt(&obj, &spec, ctx).await,
                Err(error) => Attempt::Failed {
                    revision: None,
                    recorded_inventory: None,
                    error,
                },
            };
            (attempt, notice, spec.interval)
        }
        Err(error) => {
            let attempt = Attempt::Failed {
                revision: None,
                recorded_inventory: None,
                error,
            };
            (attempt, None, FALLBACK_INTERVAL)
        }
    };
    let next = status::after(&obj, &attempt, notice.map(|n| n.at), Timestamp::now());
    if let Attempt::Failed { error, .. } = &attempt {
        timer.fail(error.category());
        warn!(error = %error, category = error.category(), "reconcile failed");
    }
    // Measured before the status is written, so that the fleet report made from the new status
    // carries it.
    let push_latency_ms = match (&attempt, notice, next.new_revision) {
        (Attempt::Applied { .. }, Some(notice), true) => {
            let ms = tether_protocol::unix_ms().saturating_sub(notice.pushed_at_ms);
            ctx.latencies
                .record(&oref.namespace.clone().unwrap_or_default(), &oref.name, ms);
            Some(ms)
        }
        _ => None,
    };
    write_status(ctx, &obj, next.status).await?;
    match attempt {
        Attempt::Applied {
            revision, summary, ..
        } => {
            ctx.reset_retries(&oref);
            ctx.dependents.ready(&oref);
            if let Some(event) = next.event {
                info!(revision = %revision, summary = %summary, "applied");
                publish(ctx, &obj, event).await;
            }
            if let Some(ms) = push_latency_ms {
                ctx.metrics.push_to_applied.observe(ms as f64 / 1000.0);
            }
            Ok(Action::requeue(jittered(interval)))
        }
        Attempt::Failed { error, .. } => {
            ctx.drift.forget((&namespace, &name));
            if let Some(event) = next.event {
                publish(ctx, &obj, event).await;
            }
            Err(error)
        }
    }
}

/// Waits for `spec.dependsOn`: while a dependency is not Ready, records that `obj` waits for it
/// (to be woken when it is).
async fn dependencies(obj: &GitRepository, ctx: &Context) -> Result<(), Error> {
    let oref = Ref::from_obj(obj);
    if obj.spec.depends_on.is_empty() {
        ctx.dependents.wait(&oref, &[]);
        return Ok(());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let client = ctx.apply_client(&namespace, obj.spec.service_account_name.as_deref())?;
    // Recorded before the check, so that a dependency turning Ready meanwhile still wakes it.
    ctx.dependents.wait(&oref, &deps::of(obj));
    deps::check(obj, &ctx.client, &client).await?;
    ctx.dependents.wait(&oref, &[]);
    Ok(())
}

/// Finalizer cleanup: prune everything the repository applied when `prune` is on.
async fn cleanup(obj: Arc<GitRepository>, ctx: &Context) -> Result<Action, Error> {
    ctx.triggers.track(Ref::from_obj(&*obj), None);
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    ctx.drift.forget((&namespace, &name));
    if obj.spec.prune
        && let Some(status) = &obj.status
        && !status.inventory.is_empty()
    {
        let client = ctx.apply_client(&namespace, obj.spec.service_account_name.as_deref())?;
        let gone = plan::prune_candidates(&status.inventory, &[]);
        let pruned = apply::prune(&client, &ctx.catalog, &gone, (&name, &namespace)).await?;
        pipeline::warn_left_alone(ctx, &obj, &pruned).await;
        info!(pruned = pruned.deleted.len(), "deleted: pruned its objects");
    }
    Ok(Action::await_change())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_reconcile_fails_alone_with_its_message() {
        let err = contained(async { panic!("interval overflow") })
            .await
            .err()
            .map(|e| (e.category(), e.class(), e.to_string()));
        assert_eq!(
            err,
            Some((
                "panic",
                ErrorClass::Transient,
                "internal error, retried: interval overflow".into()
            ))
        );
    }
}
