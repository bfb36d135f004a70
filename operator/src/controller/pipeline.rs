//! The stages of one reconcile: resolve, fetch, plan, apply, prune, wait (all but the first
//! skipped when the revision is applied and nothing drifted). Each records what it did
//! in the [`Attempt`] it returns; the only status written here are the two checkpoints before
//! applying: progress shown (once the work has taken a second; work done sooner shows it with the
//! next checkpoint or not at all) and the inventory widened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use kube::api::Api;

use super::context::Context;
use super::error::Error;
use super::spec::ValidSpec;
use super::status::{self, Attempt};
use super::writer::{write_status, write_status_with};
use crate::apply::{self, Action};
use crate::crd::{
    ANNOTATION_RECONCILE_REQUESTED_AT, GitRepository, GitRepositoryStatus, ObjectRef, condition,
    reason,
};
use crate::discovery::Kinds;
use crate::drift::Verdict;
use crate::git::{self, Credentials};
use crate::plan::{self, ManifestFilter, PlanError, PlanInput};

/// How long work on a new revision runs before `Reconciling` is written for it on its own; work
/// done sooner shows it only with the inventory checkpoint, or not at all (one write fewer).
const SHOW_PROGRESS_AFTER: Duration = Duration::from_secs(1);

/// What the stages learn as they go, kept for a failure's status.
#[derive(Debug, Default)]
struct Progress {
    revision: Option<String>,
    recorded_inventory: Option<Vec<ObjectRef>>,
    /// The `Reconciling` status, written should the work take [`SHOW_PROGRESS_AFTER`].
    shown: Option<Shown>,
}

/// A `Reconciling` status waiting to be written in the background.
#[derive(Debug)]
struct Shown {
    cancel: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Shown {
    /// Writes `status` once `after` has passed, unless [`Shown::settle`] comes first.
    fn after(
        ctx: &Context,
        obj: &GitRepository,
        status: GitRepositoryStatus,
        after: Duration,
    ) -> Self {
        let (cancel, cancelled) = tokio::sync::oneshot::channel::<()>();
        let (client, obj) = (ctx.client.clone(), obj.clone());
        let task = tokio::spawn(async move {
            tokio::select! {
                _ = cancelled => {}
                () = tokio::time::sleep(after) => {
                    if let Err(e) = write_status_with(&client, &obj, status).await {
                        tracing::debug!(error = %e, "writing Reconciling");
                    }
                }
            }
        });
        Self { cancel, task }
    }

    /// Stops the timer; a write already under way is waited for, so that it can never land
    /// after a later status.
    async fn settle(self) {
        let _ = self.cancel.send(());
        let _ = self.task.await;
    }
}

/// Runs every stage for `obj`, whose spec is `spec`.
pub async fn attempt(obj: &GitRepository, spec: &ValidSpec, ctx: &Context) -> Attempt {
    let mut progress = Progress::default();
    let result = stages(obj, spec, ctx, &mut progress).await;
    if let Some(shown) = progress.shown.take() {
        shown.settle().await;
    }
    match result {
        Ok((revision, inventory, summary)) => Attempt::Applied {
            revision,
            inventory,
            summary,
        },
        Err(error) => Attempt::Failed {
            revision: progress.revision,
            recorded_inventory: progress.recorded_inventory,
            error,
        },
    }
}

/// Returns the applied revision, its inventory and a summary of what applying did.
async fn stages(
    obj: &GitRepository,
    spec: &ValidSpec,
    ctx: &Context,
    progress: &mut Progress,
) -> Result<(String, Vec<ObjectRef>, String), Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let timeout = spec.timeout;
    let secret = obj.spec.secret_ref.as_ref().map(|s| s.name.as_str());
    let account = obj.spec.service_account_name.as_deref();
    // The Secret is read with the rights the objects are applied with: a tenant's account cannot
    // name a Secret it may not read itself.
    let client = ctx.apply_client(&namespace, account)?;
    let creds = Arc::new(credentials(&client, &namespace, secret, account).await?);
    if creds.has_http_secret() && spec.is_plain_http() && !ctx.policy.allow_http_credentials {
        return Err(Error::InvalidSpec(
            "spec.url: http:// would carry the secretRef's password or token in clear; use \
             https:// (or start the operator with --allow-http-credentials)"
                .into(),
        ));
    }

    let key = spec.repo.to_string();
    let started = Instant::now();
    let resolved = if git::fixed_ref(&spec.target).is_some() {
        // A branch or tag: resolved and fetched over one connection.
        let (resolved, fetched) = ctx
            .mirrors
            .resolve_and_fetch(
                &key,
                spec.url.clone(),
                spec.target.clone(),
                creds.clone(),
                timeout,
            )
            .await?;
        observe_fetch(ctx, fetched, started);
        resolved
    } else {
        // A semver range or a pinned commit: one ls-remote, then the fetch.
        let resolved = ctx
            .mirrors
            .resolve(
                &key,
                spec.url.clone(),
                spec.target.clone(),
                creds.clone(),
                timeout,
            )
            .await?;
        ctx.metrics
            .resolve_duration
            .observe(started.elapsed().as_secs_f64());
        let fetching = Instant::now();
        let fetched = ctx
            .mirrors
            .fetch(&key, spec.url.clone(), resolved.clone(), creds, timeout)
            .await?;
        observe_fetch(ctx, fetched, fetching);
        resolved
    };
    let revision = resolved.revision.clone();
    progress.revision = Some(revision.clone());
    if let Some(inventory) = settled_inventory(obj, ctx, &revision) {
        return Ok((revision, inventory, "nothing drifted".into()));
    }
    if let Some(next) = status::progressing(obj, &revision, Timestamp::now()) {
        progress.shown = Some(Shown::after(ctx, obj, next, SHOW_PROGRESS_AFTER));
    }

    // Render (or read the plain manifests), then plan.
    let started = Instant::now();
    let keys = match &obj.spec.decryption {
        Some(decryption) => {
            let name = decryption.secret_ref.name.as_str();
            let data = read_secret(
                &client,
                &namespace,
                name,
                account,
                reason::DECRYPTION_FAILED,
            )
            .await?;
            let secret = format!("{namespace}/{name}");
            let keys = crate::render::sops::age_keys(&secret, &data)?;
            Some(super::render::Keys { secret, keys })
        }
        None => None,
    };
    let manifests = super::render::manifests(obj, spec, ctx, &resolved, keys).await?;
    let filter = manifests.filter;
    let files = manifests.files;
    let mut kinds = ctx.catalog.kinds(&ctx.client).await?;
    let files = Arc::new(files);
    let planned = plan_off_runtime(obj, ctx, filter.clone(), Arc::clone(&files), kinds).await?;
    let planned = match planned {
        Err(PlanError::UnknownKind { .. }) => {
            // A CRD may have been installed since the last discovery.
            kinds = ctx.catalog.refresh(&ctx.client, false).await?;
            plan_off_runtime(obj, ctx, filter, files, kinds).await?
        }
        other => other,
    };
    let planned = planned?;
    let new = planned.inventory();

    // Dry-run, then record what may be created (only once the server accepted it), then apply.
    let settled = ctx
        .drift
        .settled((&namespace, &name), obj.metadata.generation);
    let checked = apply::dry_run(&client, &ctx.client, &ctx.catalog, &planned, &settled).await?;
    if let Some(next) = status::widened(obj, &revision, &new, Timestamp::now()) {
        // This write shows Reconciling too; a later one of Reconciling alone would take the
        // widened inventory back.
        if let Some(shown) = progress.shown.take() {
            shown.settle().await;
        }
        let inventory = next.inventory.clone();
        write_status(ctx, obj, next).await?;
        progress.recorded_inventory = Some(inventory);
    }
    let mut applied = apply::apply(&client, &ctx.catalog, checked, timeout).await?;
    count(ctx, &applied);

    // Prune what left the repository.
    if obj.spec.prune {
        let old = obj
            .status
            .as_ref()
            .map(|s| s.inventory.as_slice())
            .unwrap_or_default();
        let gone = plan::prune_candidates(old, &new);
        if !gone.is_empty() {
            let pruned = apply::prune(&client, &ctx.catalog, &gone, (&name, &namespace)).await?;
            warn_left_alone(ctx, obj, &pruned).await;
            let pruned = pruned.deleted;
            ctx.metrics
                .objects
                .with_label_values(&[Action::Pruned.as_str()])
                .inc_by(pruned.len() as u64);
            applied.record(Action::Pruned, pruned.len());
        }
    }

    if obj.spec.wait {
        crate::health::wait(&client, &ctx.catalog, &planned, timeout).await?;
    }
    ctx.drift.record(
        (&namespace, &name),
        &revision,
        obj.metadata.generation,
        &applied.live,
    );
    ctx.metrics
        .apply_duration
        .observe(started.elapsed().as_secs_f64());
    Ok((resolved.revision, new, applied.summary()))
}

/// The inventory, when this revision is applied at this spec already, no reconcile is asked for
/// (one that is renders and plans the revision again, and so finds what changed outside it: a
/// decryption key gone), and nothing the apply left has changed ([`crate::drift`]): the interval then costs only
/// the look at the remote, made above with this object's own credentials. `None`: apply it all.
fn settled_inventory(obj: &GitRepository, ctx: &Context, revision: &str) -> Option<Vec<ObjectRef>> {
    let status = obj.status.as_ref()?;
    let ready = status
        .conditions
        .iter()
        .any(|c| c.type_ == condition::READY && c.status == "True");
    if status.last_applied_revision.as_deref() != Some(revision)
        || status.observed_generation != obj.metadata.generation
        || reconcile_requested(obj)
        || !ready
    {
        return None;
    }
    let namespace = obj.namespace().unwrap_or_default();
    let verdict = ctx.drift.verdict(
        (&namespace, &obj.name_any()),
        revision,
        obj.metadata.generation,
    );
    ctx.metrics
        .drift_checks
        .with_label_values(&[verdict.as_str()])
        .inc();
    (verdict == Verdict::Clean).then(|| status.inventory.clone())
}

/// Whether the reconcile-requested-at annotation asks for a reconcile not handled yet.
fn reconcile_requested(obj: &GitRepository) -> bool {
    let requested = obj.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT);
    let handled = obj
        .status
        .as_ref()
        .and_then(|s| s.last_handled_reconcile_at.as_ref());
    requested.is_some() && requested != handled
}

/// Plans on a blocking thread: parsing a revision's manifests is CPU work of a size the
/// repository decides, which must not hold up the async workers that serve every other reconcile.
async fn plan_off_runtime(
    obj: &GitRepository,
    ctx: &Context,
    filter: Option<Arc<ManifestFilter>>,
    files: Arc<Vec<(String, Vec<u8>)>>,
    kinds: Arc<Kinds>,
) -> Result<Result<plan::Plan, PlanError>, Error> {
    let name = obj.name_any();
    let namespace = obj.namespace().unwrap_or_default();
    let target_namespace = obj.spec.target_namespace.clone();
    let max_objects = ctx.mirrors.limits().max_objects;
    tokio::task::spawn_blocking(move || {
        let input = PlanInput {
            owner_name: &name,
            owner_namespace: &namespace,
            filter: filter.as_deref(),
            target_namespace: target_namespace.as_deref(),
            max_objects,
        };
        plan::plan(&files, &input, |g, v, k| kinds.scope(g, v, k))
    })
    .await
    .map_err(|e| Error::Panicked(format!("planning: {e}")))
}

/// A Warning Event for each object pruning left alone because it may not touch it.
pub(super) async fn warn_left_alone(ctx: &Context, obj: &GitRepository, pruned: &apply::Pruned) {
    for (id, message) in &pruned.forbidden {
        let note = format!(
            "not pruning {}: forbidden, so not treated as ours (it leaves the inventory): {message}",
            apply::describe(id)
        );
        tracing::warn!(object = %id, "{note}");
        let event = status::Note {
            type_: kube::runtime::events::EventType::Warning,
            reason: reason::PRUNE_FAILED,
            note,
        };
        super::writer::publish(ctx, obj, event).await;
    }
}

/// Counts objects by action in `tether_objects_applied_total`.
fn count(ctx: &Context, applied: &apply::Applied) {
    for (action, n) in &applied.actions {
        ctx.metrics
            .objects
            .with_label_values(&[action.as_str()])
            .inc_by(*n as u64);
    }
}

/// Loads the git credentials a `secretRef` names, with `client` (impersonating `account`, when
/// set).
async fn credentials(
    client: &kube::Client,
    namespace: &str,
    secret: Option<&str>,
    account: Option<&str>,
) -> Result<Credentials, Error> {
    let Some(name) = secret else {
        return Ok(Credentials::none());
    };
    let data = read_secret(
        client,
        namespace,
        name,
        account,
        reason::AUTHENTICATION_FAILED,
    )
    .await?;
    let full = format!("{namespace}/{name}");
    Credentials::from_secret_data(&full, &data).map_err(|e| Error::Secret {
        name: full,
        message: e.to_string(),
        reason: reason::AUTHENTICATION_FAILED,
    })
}

/// The data of the Secret `name` in `namespace`, read with `client` (impersonating `account`,
/// when set): a tenant's account cannot name a Secret it may not read itself. `reason` is the
/// Ready reason should it be missing or unreadable.
async fn read_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    account: Option<&str>,
    reason: &'static str,
) -> Result<BTreeMap<String, Vec<u8>>, Error> {
    let full = format!("{namespace}/{name}");
    let secret = match Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
    {
        Ok(found) => found,
        Err(kube::Error::Api(s)) if s.code == 403 => {
            let who = account.map_or("the operator".to_owned(), |a| {
                format!("the service account {a}")
            });
            return Err(Error::Secret {
                name: full,
                message: format!("{who} may not read it: grant it get on this Secret"),
                reason,
            });
        }
        Err(e) => return Err(Error::Kube(e)),
    }
    .ok_or_else(|| Error::Secret {
        name: full.clone(),
        message: "not found; create it in the GitRepository's namespace".into(),
        reason,
    })?;
    Ok(secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect())
}

/// Count a fetch that began at `started` by its outcome.
fn observe_fetch(ctx: &Context, fetched: git::FetchOutcome, started: Instant) {
    let outcome = match fetched {
        git::FetchOutcome::Fetched => "fetched",
        git::FetchOutcome::AlreadyPresent => "cached",
    };
    ctx.metrics
        .fetch_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());
}
