//! The apply and prune stages: server-side apply of a planned revision, dry-run first, and deletion
//! of what left the repository.
//!
//! Order of work, so that a bad revision changes nothing:
//! 1. every object is dry-run applied; objects whose kind comes from a CRD of this revision, or whose
//!    namespace is created by it, cannot be checked yet and are held back;
//! 2. if anything failed, the revision fails here, naming the file and the server's answer;
//! 3. CRDs and Namespaces are applied, and the CRDs waited on until established;
//! 4. the held-back objects are dry-run (a failure now leaves only those CRDs and Namespaces applied);
//! 5. everything else is applied.
//!
//! Steps 1 and 5 work on [`PER_REVISION`] objects at a time. An object whose manifest is the one
//! last applied, and which nobody changed since (by [`crate::drift`]'s watches), skips all five.
//!
//! An object that exists already and is labelled as another `GitRepository`'s, which still lists it
//! in its inventory, fails the revision at step 2 (`OwnershipConflict`): two repositories never take
//! turns overwriting, and pruning, one object. An object whose labelled owner is gone, or no longer
//! lists it, is taken over.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::{StreamExt as _, TryStreamExt as _};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PropagationPolicy};
use kube::core::ApiResource;
use kube::runtime::wait::{await_condition, conditions};

use crate::crd::{FIELD_MANAGER, ObjectRef, reason};
use crate::discovery::{Catalog, DiscoveryError, Kinds};
use crate::drift::{Fingerprint, Live, Settled, manifest_hash};
use crate::error::{ErrorClass, StageError};
use crate::plan::{Plan, PlannedObject, is_owned_by, is_prune_disabled};

mod ownership;

pub use ownership::Conflict;
use ownership::{claimed_elsewhere, list_conflicts};

/// How many objects of one revision are dry-run, or applied, at once: the API server answers each
/// in a few milliseconds, so a revision of thousands is bound by round trips, not by the server.
pub const PER_REVISION: usize = 8;

/// What the dry run found for one object.
enum DryRun {
    /// Its kind or namespace comes with this revision: checked after they are applied.
    HeldBack,
    /// Accepted: its index, its resourceVersion (none: it does not exist yet), and the other
    /// GitRepository that holds it, if one does.
    Checked(usize, Option<String>, Option<Conflict>),
    /// The manifest and the object are as the last apply left them: nothing to check or apply.
    Settled(usize, Live),
}

/// What happened to one object. The order is the summary's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Action {
    Configured,
    Created,
    Unchanged,
    Pruned,
}

impl Action {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Configured => "configured",
            Action::Unchanged => "unchanged",
            Action::Pruned => "pruned",
        }
    }
}

/// What applying and pruning a revision did, counted by action, and each applied object as the
/// apply left it (for [`crate::drift`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub actions: BTreeMap<Action, usize>,
    pub live: Vec<Live>,
}

impl Applied {
    /// Counts `n` more objects for `action`.
    pub fn record(&mut self, action: Action, n: usize) {
        if n > 0 {
            *self.actions.entry(action).or_default() += n;
        }
    }

    /// `configured 1, created 2, unchanged 5, pruned 1`; a revision that changed nothing says so
    /// before what it pruned.
    pub fn summary(&self) -> String {
        let mut parts: Vec<String> = self
            .actions
            .iter()
            .filter(|(a, _)| **a != Action::Pruned)
            .map(|(a, n)| format!("{} {n}", a.as_str()))
            .collect();
        if parts.is_empty() {
            parts.push("nothing to do".into());
        }
        if let Some(n) = self.actions.get(&Action::Pruned) {
            parts.push(format!("pruned {n}"));
        }
        parts.join(", ")
    }
}

/// Errors of the apply and prune stages.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    #[error("{file}: {object}: the cluster does not serve this kind")]
    UnknownKind { file: String, object: String },
    #[error("{file}: {object}: {message}")]
    Rejected {
        file: String,
        object: String,
        message: String,
        #[source]
        source: kube::Error,
    },
    #[error("{object}: forbidden: {message}")]
    Forbidden { object: String, message: String },
    #[error("CustomResourceDefinition {name} was not established within {timeout:?}")]
    CrdNotEstablished { name: String, timeout: Duration },
    #[error("{}", list_conflicts(.conflicts))]
    OwnershipConflict { conflicts: Vec<Conflict> },
    #[error("pruning failed for {}", list_failures(.failures))]
    Prune {
        failures: Vec<(String, kube::Error)>,
    },
    #[error("{object}: {source}")]
    Api {
        object: String,
        #[source]
        source: kube::Error,
    },
}

impl StageError for ApplyError {
    fn category(&self) -> &'static str {
        match self {
            ApplyError::Discovery(e) => e.category(),
            ApplyError::Api { .. } => "api_error",
            ApplyError::UnknownKind { .. } => "unknown_kind",
            ApplyError::Rejected { .. } => "invalid_manifest",
            ApplyError::Forbidden { .. } => "forbidden",
            ApplyError::CrdNotEstablished { .. } => "crd_not_established",
            ApplyError::Prune { .. } => "prune_failed",
            ApplyError::OwnershipConflict { .. } => "ownership_conflict",
        }
    }

    /// An object the server does not serve or refuses waits for a new commit.
    fn class(&self) -> ErrorClass {
        match self {
            ApplyError::UnknownKind { .. } | ApplyError::Rejected { .. } => ErrorClass::Revision,
            _ => ErrorClass::Transient,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            ApplyError::UnknownKind { .. } | ApplyError::Rejected { .. } => {
                reason::INVALID_MANIFEST
            }
            ApplyError::Prune { .. } => reason::PRUNE_FAILED,
            ApplyError::OwnershipConflict { .. } => reason::OWNERSHIP_CONFLICT,
            _ => reason::APPLY_FAILED,
        }
    }
}

/// Human name of an object for messages: `ConfigMap app/settings`.
pub fn describe(id: &ObjectRef) -> String {
    match &id.namespace {
        Some(ns) => format!("{} {ns}/{}", id.kind, id.name),
        None => format!("{} {}", id.kind, id.name),
    }
}

fn api_for(client: &kube::Client, resource: &ApiResource, id: &ObjectRef) -> Api<DynamicObject> {
    match &id.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
        None => Api::all_with(client.clone(), resource),
    }
}

fn classify(object: &PlannedObject, err: kube::Error) -> ApplyError {
    let name = describe(&object.id);
    match &err {
        kube::Error::Api(status) if status.code == 403 => ApplyError::Forbidden {
            object: name,
            message: status.message.clone(),
        },
        kube::Error::Api(status) if rejects_the_object(status) => ApplyError::Rejected {
            file: format!("{} (document {})", object.file, object.document),
            object: name,
            message: status.message.clone(),
            source: err,
        },
        _ => ApplyError::Api {
            object: name,
            source: err,
        },
    }
}

/// Whether the server's answer faults the object itself (retrying the same object cannot help).
/// Server-side apply answers an object that does not fit its schema (an unknown field such as
/// `spec.replica`) with a 500 "failed to create typed patch object", not a 4xx.
fn rejects_the_object(status: &kube::core::Status) -> bool {
    ((400..500).contains(&status.code) && status.code != 429)
        || (status.code == 500
            && status
                .message
                .starts_with("failed to create typed patch object"))
}

/// A revision whose objects the API server accepted in a dry run (all but those held back until
/// their CRD or Namespace exists): what [`apply`] then applies.
#[derive(Debug)]
pub struct Checked<'p> {
    plan: &'p Plan,
    kinds: Arc<Kinds>,
    /// Held back from the first dry run: their kind or namespace comes with this revision.
    held_back: Vec<&'p PlannedObject>,
    /// The dry run's resourceVersion per object index (none: the object does not exist yet).
    dry_rv: HashMap<usize, Option<String>>,
    /// Per object index, an object left as it is: its manifest and the cluster's copy are as the
    /// last apply left them.
    settled: HashMap<usize, Live>,
    /// Per object index, its manifest's hash (hashed once: the objects may be thousands).
    manifests: Vec<u64>,
}

/// Steps 1 and 2 of the module's order of work: dry-runs every object that can be checked now,
/// with `client` (the operator's own, or one impersonating the `GitRepository`'s service
/// account). Nothing is changed. The objects `settled` holds with the same manifest are neither
/// checked nor applied: applying them again would change nothing.
///
/// `owners` reads the `GitRepository` objects that labels name (the operator's own client: a
/// tenant's account need not read other namespaces' `GitRepository` objects).
pub async fn dry_run<'p>(
    client: &kube::Client,
    owners: &kube::Client,
    catalog: &Catalog,
    plan: &'p Plan,
    settled: &Settled,
) -> Result<Checked<'p>, ApplyError> {
    let mut kinds = catalog.kinds(client).await?;
    if plan
        .objects
        .iter()
        .any(|o| kinds.resource(&o.id).is_none() && !o.is_crd())
    {
        kinds = catalog.refresh(client, false).await?;
    }
    let new_namespaces: HashSet<&str> = plan
        .objects
        .iter()
        .filter(|o| o.is_namespace())
        .map(|o| o.id.name.as_str())
        .collect();
    let dry = PatchParams::apply(FIELD_MANAGER).force().dry_run();

    // 1. Dry-run what can be checked now, [`PER_REVISION`] objects at a time.
    let (known, dry, new_namespaces) = (&kinds, &dry, &new_namespaces);
    let manifests: Vec<u64> = plan
        .objects
        .iter()
        .map(|o| manifest_hash(&o.object))
        .collect();
    let checks: Vec<_> = plan
        .objects
        .iter()
        .zip(&manifests)
        .enumerate()
        .map(|(i, (object, &manifest))| {
            let live = settled.unchanged(&object.id, manifest).cloned();
            async move {
                match live {
                    Some(live) => Ok(DryRun::Settled(i, live)),
                    None => {
                        dry_run_one(client, owners, known, dry, new_namespaces, i, object).await
                    }
                }
            }
        })
        .collect();
    let outcomes: Vec<DryRun> = futures::stream::iter(checks)
        .buffered(PER_REVISION)
        .try_collect()
        .await?;
    let mut held_back: Vec<&PlannedObject> = Vec::new();
    let mut dry_rv: HashMap<usize, Option<String>> = HashMap::new();
    let mut left = HashMap::new();
    let mut conflicts = Vec::new();
    for (object, outcome) in plan.objects.iter().zip(outcomes) {
        match outcome {
            DryRun::HeldBack => held_back.push(object),
            DryRun::Checked(i, rv, conflict) => {
                dry_rv.insert(i, rv);
                conflicts.extend(conflict);
            }
            DryRun::Settled(i, live) => {
                left.insert(i, live);
            }
        }
    }
    if !conflicts.is_empty() {
        return Err(ApplyError::OwnershipConflict { conflicts });
    }
    // Objects whose kind nobody defines fail the revision before anything is applied.
    let defined: HashSet<(String, String)> = plan
        .objects
        .iter()
        .filter(|o| o.is_crd())
        .filter_map(crd_kind)
        .collect();
    for object in &held_back {
        if kinds.resource(&object.id).is_none()
            && !defined.contains(&(object.id.group.clone(), object.id.kind.clone()))
        {
            return Err(ApplyError::UnknownKind {
                file: format!("{} (document {})", object.file, object.document),
                object: format!("{} ({})", describe(&object.id), object.id.api_version()),
            });
        }
    }

    Ok(Checked {
        plan,
        kinds,
        held_back,
        dry_rv,
        settled: left,
        manifests,
    })
}

/// Step 1 for one object, the `i`th of the plan.
async fn dry_run_one(
    client: &kube::Client,
    owners: &kube::Client,
    kinds: &Kinds,
    dry: &PatchParams,
    new_namespaces: &HashSet<&str>,
    i: usize,
    object: &PlannedObject,
) -> Result<DryRun, ApplyError> {
    let Some(resource) = kinds.resource(&object.id) else {
        return Ok(DryRun::HeldBack);
    };
    let api = api_for(client, resource, &object.id);
    match api
        .patch(&object.id.name, dry, &Patch::Apply(&object.object))
        .await
    {
        Ok(result) => {
            let rv = result.metadata.resource_version;
            // Only an object that exists can belong to another GitRepository.
            let conflict = match rv {
                Some(_) => claimed_elsewhere(&api, owners, object).await?,
                None => None,
            };
            Ok(DryRun::Checked(i, rv, conflict))
        }
        Err(kube::Error::Api(status))
            if status.code == 404
                && object
                    .id
                    .namespace
                    .as_deref()
                    .is_some_and(|ns| new_namespaces.contains(ns)) =>
        {
            Ok(DryRun::HeldBack)
        }
        Err(e) => Err(classify(object, e)),
    }
}

/// Steps 3 to 5: applies a checked revision with the client that checked it.
pub async fn apply(
    client: &kube::Client,
    catalog: &Catalog,
    checked: Checked<'_>,
    timeout: Duration,
) -> Result<Applied, ApplyError> {
    let Checked {
        plan,
        mut kinds,
        held_back,
        dry_rv,
        settled,
        manifests,
    } = checked;
    let dry = PatchParams::apply(FIELD_MANAGER).force().dry_run();
    let mut applied = Applied::default();
    let real = PatchParams::apply(FIELD_MANAGER).force();
    for live in settled.values() {
        applied.record(Action::Unchanged, 1);
        applied.live.push(live.clone());
    }

    // 3. CRDs and Namespaces first.
    let mut first: Vec<usize> = Vec::new();
    for (i, object) in plan.objects.iter().enumerate() {
        if (object.is_crd() || object.is_namespace()) && dry_rv.contains_key(&i) {
            first.push(i);
        }
    }
    let mut new_crds = Vec::new();
    let mut crds_changed = false;
    for &i in &first {
        let object = &plan.objects[i];
        let (action, live) =
            apply_one(client, &kinds, object, manifests[i], &real, dry_rv.get(&i)).await?;
        applied.record(action, 1);
        applied.live.push(live);
        if object.is_crd() {
            new_crds.push(object.id.name.clone());
            crds_changed |= action != Action::Unchanged;
        }
    }
    if !new_crds.is_empty() {
        let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
        for name in &new_crds {
            let established = await_condition(crds.clone(), name, conditions::is_crd_established());
            match tokio::time::timeout(timeout, established).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    return Err(ApplyError::Api {
                        object: format!("CustomResourceDefinition {name}"),
                        source: kube::Error::Service(Box::new(e)),
                    });
                }
                Err(_) => {
                    return Err(ApplyError::CrdNotEstablished {
                        name: name.clone(),
                        timeout,
                    });
                }
            }
        }
    }

    // A created or changed CRD serves kinds the shared snapshot may not know yet: reloaded now,
    // so that neither the objects held back here nor another GitRepository using those kinds
    // (one that dependsOn this one, woken as soon as it is Ready) plans against a stale snapshot.
    if crds_changed || !held_back.is_empty() {
        let defined: Vec<ObjectRef> = first
            .iter()
            .filter_map(|&i| crd_kind(&plan.objects[i]))
            .map(|(group, kind)| ObjectRef {
                group,
                version: String::new(),
                kind,
                namespace: None,
                name: String::new(),
            })
            .collect();
        kinds = served(client, catalog, &defined, timeout).await?;
    }

    // 4. Dry-run what was held back, now that its kinds and namespaces exist.
    if !held_back.is_empty() {
        for object in &held_back {
            let Some(resource) = kinds.resource(&object.id) else {
                return Err(ApplyError::UnknownKind {
                    file: format!("{} (document {})", object.file, object.document),
                    object: format!("{} ({})", describe(&object.id), object.id.api_version()),
                });
            };
            api_for(client, resource, &object.id)
                .patch(&object.id.name, &dry, &Patch::Apply(&object.object))
                .await
                .map_err(|e| classify(object, e))?;
        }
    }

    // 5. Everything else, [`PER_REVISION`] objects at a time: nothing among them waits for
    // another (the kinds and namespaces they need were applied above).
    let applies: Vec<_> = plan
        .objects
        .iter()
        .enumerate()
        .filter(|(i, _)| !first.contains(i) && !settled.contains_key(i))
        .map(|(i, object)| apply_one(client, &kinds, object, manifests[i], &real, dry_rv.get(&i)))
        .collect();
    let actions: Vec<(Action, Live)> = futures::stream::iter(applies)
        .buffer_unordered(PER_REVISION)
        .try_collect()
        .await?;
    for (action, live) in actions {
        applied.record(action, 1);
        applied.live.push(live);
    }
    Ok(applied)
}

/// The kinds snapshot reloaded until it serves every kind of `defined` (the CRDs just applied):
/// the API server publishes a new kind in discovery a moment after its CRD is Established. Gives up
/// waiting at `timeout` and returns what it has (a kind still missing then fails where it is used).
async fn served(
    client: &kube::Client,
    catalog: &Catalog,
    defined: &[ObjectRef],
    timeout: Duration,
) -> Result<Arc<Kinds>, ApplyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let kinds = catalog.refresh(client, true).await?;
        let all = defined
            .iter()
            .all(|id| kinds.resource_any_version(id).is_some());
        if all || tokio::time::Instant::now() >= deadline {
            return Ok(kinds);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The `(group, kind)` a planned CRD defines.
fn crd_kind(object: &PlannedObject) -> Option<(String, String)> {
    let spec = object.object.data.get("spec")?;
    let group = spec.get("group")?.as_str()?.to_string();
    let kind = spec.get("names")?.get("kind")?.as_str()?.to_string();
    Some((group, kind))
}

/// Applies one object. The dry-run's resourceVersion tells what happened: none means the object did
/// not exist; the same one after the real apply means nothing changed. `manifest` is the hash of
/// what is sent, kept with the result for [`crate::drift`].
async fn apply_one(
    client: &kube::Client,
    kinds: &Kinds,
    object: &PlannedObject,
    manifest: u64,
    params: &PatchParams,
    dry_rv: Option<&Option<String>>,
) -> Result<(Action, Live), ApplyError> {
    let Some(resource) = kinds.resource(&object.id) else {
        return Err(ApplyError::UnknownKind {
            file: object.file.clone(),
            object: describe(&object.id),
        });
    };
    let result = api_for(client, resource, &object.id)
        .patch(&object.id.name, params, &Patch::Apply(&object.object))
        .await
        .map_err(|e| classify(object, e))?;
    let action = match dry_rv {
        Some(Some(rv)) if result.metadata.resource_version.as_ref() == Some(rv) => {
            Action::Unchanged
        }
        Some(Some(_)) => Action::Configured,
        // No resourceVersion in the dry-run: the object did not exist. Held back: new this revision.
        Some(None) | None => Action::Created,
    };
    let live = Live {
        resource: resource.clone(),
        id: object.id.clone(),
        manifest,
        fingerprint: Fingerprint::of(&result.metadata),
    };
    Ok((action, live))
}

/// What pruning did.
#[derive(Debug, Default)]
pub struct Pruned {
    /// Deleted, or already gone (their kind too).
    pub deleted: Vec<ObjectRef>,
    /// Left alone because the client may not read or delete them: they are not treated as ours
    /// (and leave the inventory), each with the server's answer.
    pub forbidden: Vec<(ObjectRef, String)>,
}

/// Deletes the objects of `gone` that are still labelled as owned by `owner` (`(name, namespace)`)
/// and not annotated `tether.dev/prune: disabled`. Every object is tried: the failures are
/// reported together at the end. An object the client may not read or delete (403) is left alone.
pub async fn prune(
    client: &kube::Client,
    catalog: &Catalog,
    gone: &[ObjectRef],
    owner: (&str, &str),
) -> Result<Pruned, ApplyError> {
    let kinds = catalog.kinds(client).await?;
    let mut pruned = Pruned::default();
    let mut failures = Vec::new();
    for id in gone {
        let Some(resource) = kinds.resource_any_version(id).cloned() else {
            // The kind is gone, and so are its objects.
            pruned.deleted.push(id.clone());
            continue;
        };
        let api = api_for(client, &resource, id);
        let current = match api.get_opt(&id.name).await {
            Ok(Some(obj)) => obj,
            Ok(None) => {
                pruned.deleted.push(id.clone());
                continue;
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                pruned.forbidden.push((id.clone(), s.message.clone()));
                continue;
            }
            Err(source) => {
                failures.push((describe(id), source));
                continue;
            }
        };
        if !is_owned_by(current.metadata.labels.as_ref(), owner.0, owner.1)
            || is_prune_disabled(current.metadata.annotations.as_ref())
        {
            // Left in place, and out of the inventory from now on.
            continue;
        }
        // Only the object that was read: not one recreated under the same name since.
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(kube::api::Preconditions {
                uid: current.metadata.uid.clone(),
                resource_version: current.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match api.delete(&id.name, &params).await {
            Ok(_) => pruned.deleted.push(id.clone()),
            Err(kube::Error::Api(s)) if s.code == 404 => pruned.deleted.push(id.clone()),
            Err(kube::Error::Api(s)) if s.code == 403 => {
                pruned.forbidden.push((id.clone(), s.message.clone()));
            }
            Err(source) => failures.push((describe(id), source)),
        }
    }
    if failures.is_empty() {
        Ok(pruned)
    } else {
        Err(ApplyError::Prune { failures })
    }
}

fn list_failures(failures: &[(String, kube::Error)]) -> String {
    failures
        .iter()
        .map(|(object, e)| format!("{object}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_lists_applied_actions_then_pruned() {
        let mut applied = Applied::default();
        assert_eq!(applied.summary(), "nothing to do");
        applied.record(Action::Pruned, 2);
        assert_eq!(applied.summary(), "nothing to do, pruned 2");
        applied.record(Action::Unchanged, 5);
        applied.record(Action::Created, 1);
        applied.record(Action::Configured, 0);
        assert_eq!(applied.summary(), "created 1, unchanged 5, pruned 2");
    }

    fn status(code: u16, message: &str) -> kube::core::Status {
        kube::core::Status {
            code,
            message: message.into(),
            ..Default::default()
        }
    }

    #[test]
    fn an_unknown_field_is_the_objects_fault_though_the_server_answers_500() {
        assert!(rejects_the_object(&status(
            500,
            "failed to create typed patch object (ns/web; apps/v1, Kind=Deployment): \
             .spec.replica: field not declared in schema"
        )));
        assert!(rejects_the_object(&status(
            422,
            "Deployment.apps \"web\" is invalid"
        )));
        assert!(rejects_the_object(&status(400, "bad request")));
    }

    #[test]
    fn throttling_and_server_trouble_are_not_the_objects_fault() {
        assert!(!rejects_the_object(&status(429, "too many requests")));
        assert!(!rejects_the_object(&status(
            500,
            "etcdserver: request timed out"
        )));
        assert!(!rejects_the_object(&status(503, "unavailable")));
    }
}
