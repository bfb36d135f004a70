//! The reconcile of a `GitRepository`, as a pipeline of stages: resolve, fetch, plan, apply, prune,
//! status. Only the edges do I/O; [`crate::plan`] is pure.
//!
//! Errors are sorted by what will fix them (see [`ErrorClass`]): an invalid spec waits for the spec to
//! change (Stalled); a bad revision waits for the next commit (retried at the interval); anything
//! else is transient and retried with a per-object backoff.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::finalizer::{Event as Finalizer, finalizer};
use kube::runtime::reflector::{self, ObjectRef as Ref};
use kube::runtime::{Predicate as _, WatchStreamExt, predicates, watcher};
use kube::{Resource, ResourceExt};
use tether_protocol::RepoId;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, instrument, warn};

use crate::apply::{self, ApplyError, Catalog};
use crate::crd::{
    ANNOTATION_RECONCILE_REQUESTED_AT, FIELD_MANAGER, FINALIZER, GitRepository,
    GitRepositoryStatus, ObjectRef, condition, reason, short_revision,
};
use crate::error::StageError as _;
use crate::git::{self, Credentials, GitError, MirrorCache};
use crate::metrics::Metrics;
use crate::net::ProxyConfig;
use crate::plan::{self, PlanError, PlanInput};

/// Shared by every reconcile.
pub struct Context {
    client: kube::Client,
    config: kube::Config,
    catalog: Catalog,
    mirrors: MirrorCache,
    metrics: Metrics,
    /// Who publishes Events. A recorder is made per Event: kube's `Recorder` folds Events with the
    /// same reason into one series that keeps the first note, so a second "Applied revision" would
    /// still name the first revision. Events come only on a change, so there is no flood to fold.
    reporter: Reporter,
    /// Consecutive transient failures per object, for the backoff.
    failures: Mutex<HashMap<Ref<GitRepository>, u32>>,
    /// Clients impersonating a `serviceAccountName`, by `namespace/name`.
    impersonated: Mutex<HashMap<String, kube::Client>>,
    /// The repository each object watches, and the set sent to the hub.
    repos: Mutex<HashMap<Ref<GitRepository>, RepoId>>,
    watch_set: watch::Sender<BTreeSet<RepoId>>,
    /// When the last push notice per repository arrived, and its push time (Unix ms).
    notices: Mutex<HashMap<RepoId, (SystemTime, u64)>>,
    /// The inventory recorded before applying a revision (the old one and everything the revision
    /// may create), kept for a reconcile that fails so that its status does not shrink it back.
    widened: Mutex<HashMap<Ref<GitRepository>, Vec<ObjectRef>>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(
        client: kube::Client,
        config: kube::Config,
        cache_dir: std::path::PathBuf,
        proxy: ProxyConfig,
        metrics: Metrics,
        reporter: Reporter,
    ) -> Arc<Self> {
        let (watch_set, _) = watch::channel(BTreeSet::new());
        Arc::new(Self {
            reporter,
            client,
            config,
            catalog: Catalog::default(),
            mirrors: MirrorCache::new(cache_dir, proxy),
            metrics,
            failures: Mutex::new(HashMap::new()),
            impersonated: Mutex::new(HashMap::new()),
            repos: Mutex::new(HashMap::new()),
            watch_set,
            notices: Mutex::new(HashMap::new()),
            widened: Mutex::new(HashMap::new()),
        })
    }

    /// The set of repositories every `GitRepository` names, for the hub client.
    pub fn watch_set(&self) -> watch::Receiver<BTreeSet<RepoId>> {
        self.watch_set.subscribe()
    }

    fn track_repo(&self, obj: Ref<GitRepository>, repo: Option<RepoId>) {
        let mut repos = lock(&self.repos);
        match repo {
            Some(id) => {
                repos.insert(obj, id);
            }
            None => {
                repos.remove(&obj);
            }
        }
        let set: BTreeSet<RepoId> = repos.values().cloned().collect();
        self.watch_set.send_if_modified(|current| {
            if *current == set {
                false
            } else {
                *current = set;
                true
            }
        });
    }

    /// Records a push notice and returns the objects it concerns.
    pub fn notice(&self, repo: &RepoId, pushed_at_ms: u64) -> Vec<Ref<GitRepository>> {
        lock(&self.notices).insert(repo.clone(), (SystemTime::now(), pushed_at_ms));
        lock(&self.repos)
            .iter()
            .filter(|(_, r)| *r == repo)
            .map(|(o, _)| o.clone())
            .collect()
    }

    fn apply_client(&self, namespace: &str, account: Option<&str>) -> Result<kube::Client, Error> {
        let Some(account) = account else {
            return Ok(self.client.clone());
        };
        let key = format!("{namespace}/{account}");
        let mut cache = lock(&self.impersonated);
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut config = self.config.clone();
        config.auth_info.impersonate = Some(format!("system:serviceaccount:{namespace}:{account}"));
        let client = kube::Client::try_from(config).map_err(Error::Kube)?;
        cache.insert(key, client.clone());
        Ok(client)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidSpec(String),
    #[error("secret {name}: {message}")]
    Secret { name: String, message: String },
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Apply(Box<ApplyError>),
    #[error("objects not ready within {timeout:?}: {pending}")]
    Health { timeout: Duration, pending: String },
    #[error("Kubernetes API: {0}")]
    Kube(#[source] kube::Error),
}

impl From<ApplyError> for Error {
    fn from(e: ApplyError) -> Self {
        Error::Apply(Box::new(e))
    }
}

/// What will fix an error, which decides when to try again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The spec is wrong: wait for it to change.
    Stalled,
    /// The revision is wrong: try again at the interval (a new commit fixes it).
    Revision,
    /// Anything else: try again soon, backing off.
    Transient,
}

impl Error {
    pub fn category(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => "invalid_spec",
            Error::Secret { .. } => "secret",
            Error::Git(e) => e.category(),
            Error::Plan(e) => e.category(),
            Error::Apply(e) => e.category(),
            Error::Health { .. } => "health",
            Error::Kube(_) => "api_error",
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidSpec(_) => ErrorClass::Stalled,
            Error::Plan(PlanError::IgnorePattern { .. }) => ErrorClass::Stalled,
            Error::Plan(_) => ErrorClass::Revision,
            Error::Apply(e) if e.is_revision_error() => ErrorClass::Revision,
            Error::Health { .. } => ErrorClass::Revision,
            _ => ErrorClass::Transient,
        }
    }

    /// The `Ready` condition's reason.
    fn reason(&self) -> &'static str {
        match self {
            Error::InvalidSpec(_) => reason::INVALID_SPEC,
            Error::Secret { .. } => reason::AUTHENTICATION_FAILED,
            Error::Git(e) if e.category() == "auth_failed" => reason::AUTHENTICATION_FAILED,
            Error::Git(e) if e.category() == "host_key_unknown" => reason::AUTHENTICATION_FAILED,
            Error::Git(_) => reason::GIT_OPERATION_FAILED,
            Error::Plan(PlanError::IgnorePattern { .. }) => reason::INVALID_SPEC,
            Error::Plan(_) => reason::INVALID_MANIFEST,
            Error::Apply(e) if e.is_revision_error() => reason::INVALID_MANIFEST,
            Error::Apply(e) if matches!(**e, ApplyError::Prune { .. }) => reason::PRUNE_FAILED,
            Error::Apply(_) => reason::APPLY_FAILED,
            Error::Health { .. } => reason::HEALTH_CHECK_FAILED,
            Error::Kube(_) => reason::FAILED,
        }
    }
}

/// Runs the controller, over one namespace or all, until `shutdown` resolves. `notices` carries the repositories the hub says
/// were pushed to (with the push time in Unix ms); each reconciles every matching `GitRepository`.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    concurrency: u16,
    mut notices: mpsc::Receiver<(RepoId, u64)>,
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
    let (trigger_tx, trigger_rx) = mpsc::channel::<Ref<GitRepository>>(1024);
    let notice_ctx = ctx.clone();
    tokio::spawn(async move {
        while let Some((repo, pushed_at)) = notices.recv().await {
            for obj in notice_ctx.notice(&repo, pushed_at) {
                debug!(repo = %repo, object = %obj, "push notice: reconciling now");
                if trigger_tx.send(obj).await.is_err() {
                    return;
                }
            }
        }
    });
    let triggers = tokio_stream_from(trigger_rx);
    Controller::for_stream(changes, reader.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .reconcile_on(triggers)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(error = %e, "controller event");
            }
        })
        .await;
}

/// An mpsc receiver as a stream.
fn tokio_stream_from<T: Send + 'static>(
    mut rx: mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

/// What besides the spec's generation calls for a reconcile: the reconcile-requested-at
/// annotation, the finalizers (the finalizer's own addition is followed by the first real reconcile)
/// and a deletion.
fn requested_at(obj: &GitRepository) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    obj.annotations()
        .get(ANNOTATION_RECONCILE_REQUESTED_AT)
        .hash(&mut h);
    obj.finalizers().hash(&mut h);
    obj.metadata.deletion_timestamp.is_some().hash(&mut h);
    Some(h.finish())
}

fn error_policy(obj: Arc<GitRepository>, err: &Error, ctx: Arc<Context>) -> Action {
    let interval = obj.spec.interval().unwrap_or(Duration::from_secs(300));
    match err.class() {
        ErrorClass::Stalled => Action::await_change(),
        ErrorClass::Revision => Action::requeue(jittered(interval)),
        ErrorClass::Transient => {
            let mut failures = lock(&ctx.failures);
            let n = failures.entry(Ref::from_obj(&*obj)).or_insert(0);
            *n = n.saturating_add(1);
            Action::requeue(backoff(*n).min(interval))
        }
    }
}

/// The retry delay after `n` consecutive transient failures: 2 s doubling to 5 min, with jitter.
pub fn backoff(n: u32) -> Duration {
    let base = 2u64.saturating_mul(1u64 << n.saturating_sub(1).min(10));
    let secs = base.min(300) as f64;
    Duration::from_secs_f64(secs * (0.75 + 0.5 * rand::random::<f64>()))
}

/// The interval plus up to 10 % jitter, so that objects created together spread out.
pub fn jittered(interval: Duration) -> Duration {
    interval.mul_f64(1.0 + 0.1 * rand::random::<f64>())
}

#[instrument(skip_all, fields(name = %obj.name_any(), namespace = obj.namespace().unwrap_or_default()))]
async fn reconcile(obj: Arc<GitRepository>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    let result = finalizer(&api, FINALIZER, obj, |event| async {
        match event {
            Finalizer::Apply(obj) => sync(obj, &ctx).await,
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

/// The work of one reconcile, with status written whatever the outcome.
async fn sync(obj: Arc<GitRepository>, ctx: &Context) -> Result<Action, Error> {
    let mut timer = ctx.metrics.reconcile_timer();
    let oref = Ref::from_obj(&*obj);
    let repo_id = tether_protocol::normalize(&obj.spec.url).ok();
    ctx.track_repo(oref.clone(), repo_id.clone());

    if obj.spec.suspend {
        debug!("suspended: nothing to do until spec.suspend is lifted");
        let mut status = obj.status.clone().unwrap_or_default();
        if let Some(requested) = obj.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT) {
            status.last_handled_reconcile_at = Some(requested.clone());
        }
        let message = "Suspended: new commits are not applied until spec.suspend is false";
        let next = with_ready(
            &obj,
            status,
            "Unknown".into(),
            reason::SUSPENDED,
            message.into(),
        );
        write_status(ctx, &obj, next).await?;
        return Ok(Action::await_change());
    }

    let notice = repo_id
        .as_ref()
        .and_then(|r| lock(&ctx.notices).get(r).copied());
    let outcome = stages(&obj, ctx).await;
    let mut status = obj.status.clone().unwrap_or_default();
    status.observed_generation = obj.metadata.generation;
    if let Some(requested) = obj.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT) {
        status.last_handled_reconcile_at = Some(requested.clone());
    }
    if let Some((at, _)) = notice {
        status.last_notified_at = Some(jiff_time(at).to_string());
    }
    let previous_ready = find(&status.conditions, condition::READY);
    match outcome {
        Ok(done) => {
            lock(&ctx.failures).remove(&oref);
            lock(&ctx.widened).remove(&oref);
            let changed = status.last_applied_revision.as_deref() != Some(&done.revision);
            status.last_attempted_revision = Some(done.revision.clone());
            status.last_applied_revision = Some(done.revision.clone());
            status.last_applied_revision_short = Some(short_revision(&done.revision));
            status.inventory = done.inventory;
            let message = format!("Applied revision {}", done.revision);
            let next = with_ready(&obj, status, "True".into(), reason::SUCCEEDED, message);
            write_status(ctx, &obj, next).await?;
            if changed || previous_ready.map(|c| c.status) != Some("True".into()) {
                info!(revision = %done.revision, summary = %done.summary, "applied");
                publish(
                    ctx,
                    &obj,
                    EventType::Normal,
                    reason::SUCCEEDED,
                    format!("Applied revision {}: {}", done.revision, done.summary),
                )
                .await;
                if let (Some((_, pushed_ms)), true) = (notice, changed) {
                    let since_ms = tether_protocol::unix_ms().saturating_sub(pushed_ms);
                    ctx.metrics
                        .push_to_applied
                        .observe(since_ms as f64 / 1000.0);
                }
            }
            let interval = obj.spec.interval().unwrap_or(Duration::from_secs(300));
            Ok(Action::requeue(jittered(interval)))
        }
        Err((revision, err)) => {
            timer.fail(err.category());
            if let Some(rev) = revision {
                status.last_attempted_revision = Some(rev);
            }
            if let Some(inventory) = lock(&ctx.widened).remove(&oref) {
                status.inventory = inventory;
            }
            let message = err.to_string();
            warn!(error = %message, category = err.category(), "reconcile failed");
            let stalled = err.class() == ErrorClass::Stalled;
            let mut next = with_ready(&obj, status, "False".into(), err.reason(), message.clone());
            set_condition(
                &mut next.conditions,
                &obj,
                condition::STALLED,
                if stalled { "True" } else { "False" },
                err.reason(),
                if stalled { &message } else { "" },
            );
            let ready_changed = previous_ready.as_ref().map(|c| (&c.status, &c.message))
                != Some((&"False".to_string(), &message));
            write_status(ctx, &obj, next).await?;
            if ready_changed {
                publish(ctx, &obj, EventType::Warning, err.reason(), message).await;
            }
            Err(err)
        }
    }
}

struct Done {
    revision: String,
    inventory: Vec<ObjectRef>,
    summary: String,
}

/// Resolve, fetch, plan, apply, prune, wait. Returns the resolved revision with any error.
async fn stages(obj: &GitRepository, ctx: &Context) -> Result<Done, (Option<String>, Error)> {
    let spec = &obj.spec;
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let fail = |e: Error| (None, e);
    let timeout = spec
        .timeout()
        .map_err(|e| fail(Error::InvalidSpec(e.to_string())))?;
    spec.interval()
        .map_err(|e| fail(Error::InvalidSpec(e.to_string())))?;
    let target = spec
        .git_ref
        .target()
        .map_err(|e| fail(Error::InvalidSpec(e.to_string())))?;
    let key = tether_protocol::normalize(&spec.url)
        .map_err(|e| fail(Error::InvalidSpec(format!("spec.url: {e}"))))?
        .to_string();
    let creds = Arc::new(
        credentials(
            ctx,
            &namespace,
            spec.secret_ref.as_ref().map(|s| s.name.as_str()),
        )
        .await
        .map_err(fail)?,
    );

    // Resolve: one ls-remote.
    let started = Instant::now();
    let resolved = ctx
        .mirrors
        .resolve(spec.url.clone(), target, creds.clone(), timeout)
        .await
        .map_err(|e| fail(e.into()))?;
    ctx.metrics
        .resolve_duration
        .observe(started.elapsed().as_secs_f64());
    let revision = resolved.revision.clone();
    let with_rev = |e: Error| (Some(revision.clone()), e);
    mark_progressing(obj, ctx, &revision)
        .await
        .map_err(with_rev)?;

    // Fetch, unless the mirror has the commit.
    let started = Instant::now();
    let fetched = ctx
        .mirrors
        .fetch(&key, spec.url.clone(), resolved.clone(), creds, timeout)
        .await
        .map_err(|e| with_rev(e.into()))?;
    let outcome = match fetched {
        git::FetchOutcome::Fetched => "fetched",
        git::FetchOutcome::AlreadyPresent => "cached",
    };
    ctx.metrics
        .fetch_duration
        .with_label_values(&[outcome])
        .observe(started.elapsed().as_secs_f64());

    // Plan, from the commit's tree.
    let started = Instant::now();
    let filter =
        plan::ManifestFilter::new(spec.path(), &spec.ignore).map_err(|e| with_rev(e.into()))?;
    let files = ctx
        .mirrors
        .read_tree(
            &key,
            resolved.sha.clone(),
            spec.path().to_string(),
            move |p| filter.accepts(p),
        )
        .await
        .map_err(|e| with_rev(e.into()))?;
    let input = PlanInput {
        owner_name: &name,
        owner_namespace: &namespace,
        path: spec.path(),
        ignore: &spec.ignore,
        target_namespace: spec.target_namespace.as_deref(),
    };
    let client = ctx
        .apply_client(&namespace, spec.service_account_name.as_deref())
        .map_err(with_rev)?;
    let mut kinds = ctx
        .catalog
        .kinds(&ctx.client)
        .await
        .map_err(|e| with_rev(e.into()))?;
    let mut planned = plan::plan(&files, &input, |g, v, k| kinds.scope(g, v, k));
    if matches!(planned, Err(PlanError::UnknownKind { .. })) {
        // A CRD may have been installed since the last discovery.
        kinds = ctx
            .catalog
            .refresh(&ctx.client, false)
            .await
            .map_err(|e| with_rev(e.into()))?;
        planned = plan::plan(&files, &input, |g, v, k| kinds.scope(g, v, k));
    }
    let planned = planned.map_err(|e| with_rev(e.into()))?;
    widen_inventory(obj, ctx, &revision, &planned.inventory())
        .await
        .map_err(with_rev)?;

    // Apply, dry-run first.
    let applied = apply::apply(&client, &ctx.catalog, &planned, timeout)
        .await
        .map_err(|e| with_rev(e.into()))?;
    for (action, n) in &applied.actions {
        ctx.metrics
            .objects
            .with_label_values(&[action])
            .inc_by(*n as u64);
    }

    // Prune what left the repository.
    let old = obj
        .status
        .as_ref()
        .map(|s| s.inventory.clone())
        .unwrap_or_default();
    let new = planned.inventory();
    let mut summary = applied.summary();
    if spec.prune {
        let gone = plan::prune_candidates(&old, &new);
        if !gone.is_empty() {
            let pruned = apply::prune(&client, &ctx.catalog, &gone, (&name, &namespace))
                .await
                .map_err(|e| with_rev(e.into()))?;
            ctx.metrics
                .objects
                .with_label_values(&["pruned"])
                .inc_by(pruned.len() as u64);
            summary.push_str(&format!(", pruned {}", pruned.len()));
        }
    }

    if spec.wait {
        crate::health::wait(&client, &ctx.catalog, &planned, timeout)
            .await
            .map_err(|pending| with_rev(Error::Health { timeout, pending }))?;
    }
    ctx.metrics
        .apply_duration
        .observe(started.elapsed().as_secs_f64());
    Ok(Done {
        revision: resolved.revision,
        inventory: new,
        summary,
    })
}

/// Before work on a new revision or spec: `Reconciling` True and `Ready` Unknown, so that `kubectl get`
/// and `kubectl wait` see the work under way. An unchanged revision writes nothing.
async fn mark_progressing(obj: &GitRepository, ctx: &Context, revision: &str) -> Result<(), Error> {
    match progressing(obj, revision) {
        Some(next) => write_status(ctx, obj, next).await,
        None => Ok(()),
    }
}

/// The status [`mark_progressing`] writes; `None` when the revision and spec are the applied ones.
fn progressing(obj: &GitRepository, revision: &str) -> Option<GitRepositoryStatus> {
    let status = obj.status.clone().unwrap_or_default();
    let settled = status.last_applied_revision.as_deref() == Some(revision)
        && status.observed_generation == obj.metadata.generation;
    if settled {
        return None;
    }
    let message = format!("Applying revision {revision}");
    let mut next = status;
    set_condition(
        &mut next.conditions,
        obj,
        condition::RECONCILING,
        "True",
        reason::PROGRESSING,
        &message,
    );
    set_condition(
        &mut next.conditions,
        obj,
        condition::READY,
        "Unknown",
        reason::PROGRESSING,
        &message,
    );
    Some(next)
}

/// Before applying: the recorded inventory grows by every object the revision may create. An
/// operator killed between applying and writing the final status then still knows, at its next
/// run, what it may have created, and prunes it once it leaves the repository. (Listed objects that
/// were never created cost a lookup at prune time.) Nothing is written when nothing is new.
async fn widen_inventory(
    obj: &GitRepository,
    ctx: &Context,
    revision: &str,
    planned: &[ObjectRef],
) -> Result<(), Error> {
    let mut next =
        progressing(obj, revision).unwrap_or_else(|| obj.status.clone().unwrap_or_default());
    let before = next.inventory.len();
    for object in planned {
        if !next.inventory.contains(object) {
            next.inventory.push(object.clone());
        }
    }
    if next.inventory.len() == before {
        return Ok(());
    }
    lock(&ctx.widened).insert(Ref::from_obj(obj), next.inventory.clone());
    write_status(ctx, obj, next).await
}

/// Loads the git credentials a `secretRef` names.
async fn credentials(
    ctx: &Context,
    namespace: &str,
    secret: Option<&str>,
) -> Result<Credentials, Error> {
    let Some(name) = secret else {
        return Ok(Credentials::none());
    };
    let full = format!("{namespace}/{name}");
    let secret = Api::<Secret>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(Error::Kube)?
        .ok_or_else(|| Error::Secret {
            name: full.clone(),
            message: "not found; create it in the GitRepository's namespace".into(),
        })?;
    let data: BTreeMap<String, Vec<u8>> = secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    Credentials::from_secret_data(&full, &data).map_err(|e| Error::Secret {
        name: full,
        message: e.to_string(),
    })
}

/// Finalizer cleanup: prune everything the repository applied when `prune` is on.
async fn cleanup(obj: Arc<GitRepository>, ctx: &Context) -> Result<Action, Error> {
    ctx.track_repo(Ref::from_obj(&*obj), None);
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    if obj.spec.prune
        && let Some(status) = &obj.status
        && !status.inventory.is_empty()
    {
        let client = ctx.apply_client(&namespace, obj.spec.service_account_name.as_deref())?;
        let gone = plan::prune_candidates(&status.inventory, &[]);
        let pruned = apply::prune(&client, &ctx.catalog, &gone, (&name, &namespace)).await?;
        info!(pruned = pruned.len(), "deleted: pruned its objects");
    }
    Ok(Action::await_change())
}

fn find(conditions: &[Condition], type_: &str) -> Option<Condition> {
    conditions.iter().find(|c| c.type_ == type_).cloned()
}

fn jiff_time(at: SystemTime) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::Timestamp::try_from(at)
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now())
}

/// Sets a condition, keeping its transition time when the status does not change.
fn set_condition(
    conditions: &mut Vec<Condition>,
    obj: &GitRepository,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
) {
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let generation = obj.metadata.generation;
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now;
            }
            c.status = status.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        }),
    }
}

/// The status with `Ready` set and `Reconciling` cleared (work is over), `Stalled` False unless set
/// again by the caller.
fn with_ready(
    obj: &GitRepository,
    mut status: GitRepositoryStatus,
    ready: String,
    reason: &str,
    message: String,
) -> GitRepositoryStatus {
    set_condition(
        &mut status.conditions,
        obj,
        condition::READY,
        &ready,
        reason,
        &message,
    );
    status
        .conditions
        .retain(|c| c.type_ != condition::RECONCILING);
    set_condition(
        &mut status.conditions,
        obj,
        condition::STALLED,
        "False",
        reason,
        "",
    );
    status
}

/// Writes the status subresource, unless nothing but transition times would change.
async fn write_status(
    ctx: &Context,
    obj: &GitRepository,
    status: GitRepositoryStatus,
) -> Result<(), Error> {
    if obj.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<GitRepository> = Api::namespaced(ctx.client.clone(), &namespace);
    let patch = serde_json::json!({
        "apiVersion": GitRepository::api_version(&()),
        "kind": GitRepository::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::Kube)?;
    Ok(())
}

async fn publish(ctx: &Context, obj: &GitRepository, type_: EventType, reason: &str, note: String) {
    let event = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: "Reconcile".into(),
        secondary: None,
    };
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    if let Err(e) = recorder.publish(&event, &obj.object_ref(&())).await {
        debug!(error = %e, "publishing an event");
    }
}
