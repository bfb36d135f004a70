//! Drift, found by watching what was applied instead of applying it all again.
//!
//! After a revision is applied, [`Drift::record`] keeps a fingerprint of each object as the apply
//! left it, and a metadata-only watch per kind (selected by the owner label) keeps the fingerprint
//! of each labelled object as the cluster has it now. At the next interval, an unchanged revision
//! and spec whose objects all still match ([`Verdict::Clean`]) needs no dry run and no apply: the
//! interval costs one look at the remote. Anything unsure is applied as before: no record (the
//! operator restarted, the last attempt failed), a kind whose watch is not listed yet or was
//! refused, an object changed, relabelled or deleted by anyone.
//!
//! The fingerprint leaves out what a status update changes. An object with a `generation` (which the
//! API server bumps on every change to its spec) is fingerprinted by it, its labels and annotations,
//! and every field manager's entry except those of the `status` subresource; an object without one
//! (ConfigMap, Secret, Service, ...) by its `resourceVersion`, which any change moves.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::ApiResource;
use kube::runtime::watcher::{self, Event};
use tracing::{debug, info};

use crate::crd::{LABEL_OWNER_NAME, LABEL_OWNER_NAMESPACE, ObjectRef};

/// The first wait before a failed watch lists again, and the longest.
const RELIST_FIRST: Duration = Duration::from_secs(1);
const RELIST_MAX: Duration = Duration::from_secs(60);
/// How long a watch the API server refused (no list/watch right) waits before it asks again.
const REFUSED_RETRY: Duration = Duration::from_secs(300);

/// What an object looked like, less what status updates change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(u64);

impl Fingerprint {
    pub fn of(meta: &ObjectMeta) -> Self {
        let mut h = DefaultHasher::new();
        match meta.generation {
            Some(generation) if generation > 0 => {
                generation.hash(&mut h);
                for entry in meta.managed_fields.iter().flatten() {
                    if entry.subresource.as_deref() == Some("status") {
                        continue;
                    }
                    entry.manager.hash(&mut h);
                    entry.operation.hash(&mut h);
                    entry.subresource.hash(&mut h);
                    entry.time.as_ref().map(|t| t.0.to_string()).hash(&mut h);
                    entry
                        .fields_v1
                        .as_ref()
                        .map(|f| f.0.to_string())
                        .hash(&mut h);
                }
            }
            _ => meta.resource_version.hash(&mut h),
        }
        meta.labels.hash(&mut h);
        meta.annotations.hash(&mut h);
        meta.deletion_timestamp.is_some().hash(&mut h);
        Self(h.finish())
    }
}

/// A manifest, hashed as it is sent: the same manifest applied again to an object nobody changed
/// since changes nothing.
pub fn manifest_hash(object: &DynamicObject) -> u64 {
    let mut h = DefaultHasher::new();
    serde_json::to_string(object)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

/// One applied object: its kind's resource (what to watch), who it is, the manifest applied and
/// the object's fingerprint right after.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Live {
    pub resource: ApiResource,
    pub id: ObjectRef,
    pub manifest: u64,
    pub fingerprint: Fingerprint,
}

/// The objects of one `GitRepository` that are as its last apply left them, by the watches.
#[derive(Debug, Default)]
pub struct Settled {
    objects: HashMap<Key, Live>,
}

impl Settled {
    /// The object as the last apply left it, when the manifest is the one applied then and the
    /// cluster's copy has not changed since: applying it again would change nothing.
    pub fn unchanged(&self, id: &ObjectRef, manifest: u64) -> Option<&Live> {
        self.objects
            .get(&Key::of(id))
            .filter(|live| live.manifest == manifest)
    }

    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

/// Whether a `GitRepository`'s objects are as its last apply left them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Every object matches, for this revision and spec: nothing to apply.
    Clean,
    /// An object changed or went away since.
    Drifted,
    /// Nothing to compare with: no record for this revision and spec, or a kind not watched.
    Unknown,
}

impl Verdict {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Drifted => "drifted",
            Verdict::Unknown => "unknown",
        }
    }
}

/// An object, across the versions its kind is served at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    group: String,
    kind: String,
    namespace: Option<String>,
    name: String,
}

impl Key {
    fn of(id: &ObjectRef) -> Self {
        Self {
            group: id.group.clone(),
            kind: id.kind.clone(),
            namespace: id.namespace.clone(),
            name: id.name.clone(),
        }
    }

    fn in_resource(resource: &ApiResource, meta: &ObjectMeta) -> Self {
        Self {
            group: resource.group.clone(),
            kind: resource.kind.clone(),
            namespace: meta.namespace.clone(),
            name: meta.name.clone().unwrap_or_default(),
        }
    }
}

/// What one `GitRepository`'s last apply left.
#[derive(Debug)]
struct Record {
    revision: String,
    generation: Option<i64>,
    objects: Vec<Live>,
}

/// What one watch covers: a resource, in one namespace or in all.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Scope {
    resource: ApiResource,
    namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watch {
    /// Listing, or listing again after a failure: what it has is not yet the whole truth.
    Listing,
    /// Listed, and following every change since.
    Live,
}

#[derive(Debug, Default)]
struct State {
    /// Per `GitRepository` (`namespace`, `name`).
    records: HashMap<(String, String), Record>,
    /// Per labelled object, its fingerprint as its watch last saw it.
    seen: HashMap<Key, Fingerprint>,
    /// Per scope, its watch (started by the first record that needs it).
    watches: HashMap<Scope, Watch>,
    /// With `--namespace`: the one namespace whose namespaced objects are watched (the operator
    /// may have no rights elsewhere); objects in other namespaces are not.
    only: Option<String>,
}

impl State {
    /// The watch that covers `live`, or `None` when none may.
    fn scope(&self, live: &Live) -> Option<Scope> {
        let namespace = match (&live.id.namespace, &self.only) {
            (Some(ns), Some(only)) if ns != only => return None,
            (Some(_), Some(only)) => Some(only.clone()),
            _ => None,
        };
        Some(Scope {
            resource: live.resource.clone(),
            namespace,
        })
    }

    /// Whether a listed watch covers `live`.
    fn watched(&self, live: &Live) -> bool {
        self.scope(live)
            .is_some_and(|scope| self.watches.get(&scope) == Some(&Watch::Live))
    }

    /// Whether a listed watch sees `live` as its apply left it.
    fn matches_seen(&self, live: &Live) -> bool {
        self.watched(live) && self.seen.get(&Key::of(&live.id)) == Some(&live.fingerprint)
    }

    /// The verdict on one record against what the watches have seen.
    fn judge(&self, record: &Record) -> Verdict {
        let mut verdict = Verdict::Clean;
        for live in &record.objects {
            if !self.watched(live) {
                verdict = Verdict::Unknown;
            } else if self.seen.get(&Key::of(&live.id)) != Some(&live.fingerprint) {
                return Verdict::Drifted;
            }
        }
        verdict
    }
}

/// The records and watches, shared by every reconcile.
#[derive(Clone)]
pub struct Drift {
    client: kube::Client,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = lock(&self.state);
        f.debug_struct("Drift")
            .field("records", &state.records.len())
            .field("seen", &state.seen.len())
            .field("watches", &state.watches.len())
            .finish()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|p| p.into_inner())
}

fn owner_key(owner: (&str, &str)) -> (String, String) {
    (owner.0.to_owned(), owner.1.to_owned())
}

impl Drift {
    /// Watches with `client` (the operator's own) across every namespace, or, for namespaced
    /// objects, only in `namespace` when the operator is limited to one.
    pub fn new(client: kube::Client, namespace: Option<String>) -> Self {
        let state = State {
            only: namespace,
            ..State::default()
        };
        Self {
            client,
            state: Arc::new(Mutex::new(state)),
        }
    }

    /// Whether the objects of `owner` (`namespace`, `name`) are as its last apply of `revision`
    /// at spec `generation` left them.
    pub fn verdict(&self, owner: (&str, &str), revision: &str, generation: Option<i64>) -> Verdict {
        let state = lock(&self.state);
        match state.records.get(&owner_key(owner)) {
            Some(r) if r.revision == revision && r.generation == generation => state.judge(r),
            _ => Verdict::Unknown,
        }
    }

    /// The objects of `owner` that are as its last apply left them, when that apply was made at
    /// spec `generation` (of whichever revision); none otherwise.
    pub fn settled(&self, owner: (&str, &str), generation: Option<i64>) -> Settled {
        let state = lock(&self.state);
        let objects = match state.records.get(&owner_key(owner)) {
            Some(record) if record.generation == generation => record
                .objects
                .iter()
                .filter(|live| state.matches_seen(live))
                .map(|live| (Key::of(&live.id), live.clone()))
                .collect(),
            _ => HashMap::new(),
        };
        Settled { objects }
    }

    /// `owner` applied `revision` at spec `generation`, leaving `live`; their kinds are watched
    /// from now on.
    pub fn record(
        &self,
        owner: (&str, &str),
        revision: &str,
        generation: Option<i64>,
        live: &[Live],
    ) {
        let mut state = lock(&self.state);
        let mut start = Vec::new();
        for object in live {
            if let Some(scope) = state.scope(object)
                && !state.watches.contains_key(&scope)
            {
                state.watches.insert(scope.clone(), Watch::Listing);
                start.push(scope);
            }
        }
        let record = Record {
            revision: revision.to_owned(),
            generation,
            objects: live.to_vec(),
        };
        state.records.insert(owner_key(owner), record);
        drop(state);
        for scope in start {
            let (client, state) = (self.client.clone(), Arc::clone(&self.state));
            tokio::spawn(follow(client, state, scope));
        }
    }

    /// `owner` failed or is gone: its next reconcile applies everything.
    pub fn forget(&self, owner: (&str, &str)) {
        lock(&self.state).records.remove(&owner_key(owner));
    }
}

/// Keeps `state.seen` true for the labelled objects in `scope` for as long as the process runs:
/// lists, then follows every change; after a failure lists again from scratch, so that a deletion
/// missed meanwhile is not missed for good.
async fn follow(client: kube::Client, state: Arc<Mutex<State>>, scope: Scope) {
    let resource = scope.resource.clone();
    let api: Api<PartialObjectMeta<DynamicObject>> = match &scope.namespace {
        Some(ns) => Api::namespaced_with(client, ns, &resource),
        None => Api::all_with(client, &resource),
    };
    // Both labels: an object with only one of them belongs to no GitRepository.
    let config =
        watcher::Config::default().labels(&format!("{LABEL_OWNER_NAME},{LABEL_OWNER_NAMESPACE}"));
    let what = format!("{}/{}", resource.api_version, resource.plural);
    // Whether a key is one this watch lists.
    let covers = |key: &Key| {
        key.group == resource.group
            && key.kind == resource.kind
            && scope
                .namespace
                .as_ref()
                .is_none_or(|ns| key.namespace.as_ref() == Some(ns))
    };
    let mut backoff = RELIST_FIRST;
    loop {
        let mut listed: HashSet<Key> = HashSet::new();
        let stream = watcher::watcher(api.clone(), config.clone());
        futures::pin_mut!(stream);
        let mut refused = false;
        while let Some(event) = stream.next().await {
            match event {
                Ok(Event::Init) => {
                    listed.clear();
                    lock(&state).watches.insert(scope.clone(), Watch::Listing);
                }
                Ok(Event::InitApply(meta)) => {
                    let key = Key::in_resource(&resource, &meta.metadata);
                    let fingerprint = Fingerprint::of(&meta.metadata);
                    lock(&state).seen.insert(key.clone(), fingerprint);
                    listed.insert(key);
                }
                Ok(Event::InitDone) => {
                    let mut state = lock(&state);
                    state
                        .seen
                        .retain(|key, _| !covers(key) || listed.contains(key));
                    state.watches.insert(scope.clone(), Watch::Live);
                    backoff = RELIST_FIRST;
                    debug!(resource = %what, objects = listed.len(), "drift watch listed");
                }
                Ok(Event::Apply(meta)) => {
                    let key = Key::in_resource(&resource, &meta.metadata);
                    let fingerprint = Fingerprint::of(&meta.metadata);
                    lock(&state).seen.insert(key, fingerprint);
                }
                Ok(Event::Delete(meta)) => {
                    let key = Key::in_resource(&resource, &meta.metadata);
                    lock(&state).seen.remove(&key);
                }
                Err(e) => {
                    refused = matches!(
                        &e,
                        watcher::Error::InitialListFailed(kube::Error::Api(s))
                            | watcher::Error::WatchStartFailed(kube::Error::Api(s))
                            if s.code == 403
                    );
                    if refused {
                        info!(
                            resource = %what,
                            "may not list and watch this kind: its objects are applied again \
                             at every interval to find drift"
                        );
                    } else {
                        debug!(resource = %what, error = %e, "drift watch failed; listing again");
                    }
                    break;
                }
            }
        }
        lock(&state).watches.insert(scope.clone(), Watch::Listing);
        tokio::time::sleep(if refused { REFUSED_RETRY } else { backoff }).await;
        backoff = (backoff * 2).min(RELIST_MAX);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};

    use super::*;

    fn meta(generation: Option<i64>, rv: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("app".into()),
            namespace: Some("team".into()),
            generation,
            resource_version: Some(rv.into()),
            labels: Some(BTreeMap::from([(LABEL_OWNER_NAME.into(), "repo".into())])),
            ..Default::default()
        }
    }

    fn entry(manager: &str, subresource: Option<&str>, second: i64) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            subresource: subresource.map(Into::into),
            time: Some(Time(
                k8s_openapi::jiff::Timestamp::from_second(second).expect("a time"),
            )),
            fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {}}))),
            ..Default::default()
        }
    }

    #[test]
    fn without_a_generation_any_new_resource_version_is_a_change() {
        assert_eq!(
            Fingerprint::of(&meta(None, "10")),
            Fingerprint::of(&meta(None, "10"))
        );
        assert_ne!(
            Fingerprint::of(&meta(None, "10")),
            Fingerprint::of(&meta(None, "11"))
        );
    }

    #[test]
    fn with_a_generation_a_status_update_is_no_change_but_anything_else_is() {
        let mut applied = meta(Some(3), "10");
        applied.managed_fields = Some(vec![entry("tether", None, 100)]);
        let before = Fingerprint::of(&applied);

        // A controller writes the status: a new resourceVersion, the status entry moves.
        let mut status = applied.clone();
        status.resource_version = Some("11".into());
        status.managed_fields.as_mut().expect("entries").push(entry(
            "kube-controller-manager",
            Some("status"),
            101,
        ));
        assert_eq!(Fingerprint::of(&status), before);

        // The spec changes: a new generation.
        let mut spec = applied.clone();
        spec.generation = Some(4);
        assert_ne!(Fingerprint::of(&spec), before);

        // kubectl scale: the scale subresource, which changes the spec.
        let mut scaled = applied.clone();
        scaled
            .managed_fields
            .as_mut()
            .expect("entries")
            .push(entry("kubectl", Some("scale"), 102));
        assert_ne!(Fingerprint::of(&scaled), before);

        // An annotation or a label, which no generation counts.
        let mut annotated = applied.clone();
        annotated.annotations = Some(BTreeMap::from([("note".into(), "x".into())]));
        assert_ne!(Fingerprint::of(&annotated), before);
        let mut relabelled = applied;
        relabelled.labels = None;
        assert_ne!(Fingerprint::of(&relabelled), before);
    }

    fn resource() -> ApiResource {
        ApiResource {
            group: String::new(),
            version: "v1".into(),
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            plural: "configmaps".into(),
        }
    }

    fn id(name: &str) -> ObjectRef {
        ObjectRef {
            group: String::new(),
            version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("team".into()),
            name: name.into(),
        }
    }

    fn state_with(watch: Watch, seen: &[(&str, u64)], recorded: &[(&str, u64)]) -> (State, Record) {
        let mut state = State::default();
        let scope = Scope {
            resource: resource(),
            namespace: None,
        };
        state.watches.insert(scope, watch);
        for (name, fp) in seen {
            state.seen.insert(Key::of(&id(name)), Fingerprint(*fp));
        }
        let record = Record {
            revision: "abc".into(),
            generation: Some(1),
            objects: recorded
                .iter()
                .map(|(name, fp)| Live {
                    resource: resource(),
                    id: id(name),
                    manifest: 7,
                    fingerprint: Fingerprint(*fp),
                })
                .collect(),
        };
        (state, record)
    }

    #[test]
    fn clean_only_when_every_object_matches_on_a_listed_watch() {
        let (state, record) = state_with(Watch::Live, &[("a", 1), ("b", 2)], &[("a", 1), ("b", 2)]);
        assert_eq!(state.judge(&record), Verdict::Clean);

        let (state, record) = state_with(Watch::Live, &[("a", 1), ("b", 9)], &[("a", 1), ("b", 2)]);
        assert_eq!(state.judge(&record), Verdict::Drifted);

        // Deleted: the watch no longer sees it.
        let (state, record) = state_with(Watch::Live, &[("a", 1)], &[("a", 1), ("b", 2)]);
        assert_eq!(state.judge(&record), Verdict::Drifted);

        // Still listing: not sure.
        let (state, record) =
            state_with(Watch::Listing, &[("a", 1), ("b", 2)], &[("a", 1), ("b", 2)]);
        assert_eq!(state.judge(&record), Verdict::Unknown);
    }
}
