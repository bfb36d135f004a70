//! The records this operator reports to the hub's fleet view (`--hub-report-status`): one per
//! `GitRepository`, made from its status as `kubectl get` reads it, plus the last push → applied
//! latency the controller measured.
//!
//! [`watch_records`] follows the `GitRepository` objects with their own watch and publishes the
//! whole set on every change; the hub client sends the hub a full set after each connect and then
//! only what changed (see `hub::session`). Until the first full listing is in, the set is `None`,
//! so that a connect never tells the hub that every record is gone.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use tether_protocol::{FleetName, FleetRecord};
use tokio::sync::watch;
use tracing::debug;

use crate::crd::{GitRepository, RefTarget, condition};

/// Every record, by namespace and name.
pub type Records = Arc<BTreeMap<FleetName, FleetRecord>>;

/// The last push → applied latency of each `GitRepository`, as the controller measured it.
#[derive(Debug, Clone, Default)]
pub struct Latencies(Arc<Mutex<HashMap<FleetName, u64>>>);

impl Latencies {
    /// Record that `namespace/name` applied a pushed revision `ms` after the hub received it.
    pub fn record(&self, namespace: &str, name: &str, ms: u64) {
        let key = FleetName {
            namespace: namespace.into(),
            name: name.into(),
        };
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, ms);
    }

    fn get(&self, key: &FleetName) -> Option<u64> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn forget(&self, key: &FleetName) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

/// The commit of a revision as the status writes it (`main@sha1:<hex>`), or the text itself.
fn commit_of(revision: &str) -> String {
    match revision.rsplit_once("sha1:") {
        Some((_, sha)) => sha.to_string(),
        None => revision.to_string(),
    }
}

/// What a record says is followed.
fn followed(obj: &GitRepository) -> String {
    match obj.spec.git_ref.target() {
        Ok(RefTarget::Branch(b)) => format!("refs/heads/{b}"),
        Ok(RefTarget::Tag(t)) => format!("refs/tags/{t}"),
        Ok(RefTarget::Semver(r)) => format!("semver:{r}"),
        Ok(RefTarget::Commit(c)) => format!("commit:{c}"),
        Err(_) => "ambiguous".into(),
    }
}

/// The record of `obj`; `None` for one whose URL is not a repository id.
pub fn record_of(obj: &GitRepository, latency: Option<u64>) -> Option<FleetRecord> {
    let repo = tether_protocol::normalize(&obj.spec.url).ok()?;
    let status = obj.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY);
    let changed_at = ready.and_then(|c| {
        let ms = c.last_transition_time.0.as_millisecond();
        u64::try_from(ms).ok()
    });
    Some(
        FleetRecord {
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            repo,
            git_ref: followed(obj),
            applied: status.last_applied_revision.as_deref().map(commit_of),
            attempted: status.last_attempted_revision.as_deref().map(commit_of),
            ready: ready.map_or_else(|| "Unknown".into(), |c| c.status.clone()),
            reason: ready.map(|c| c.reason.clone()).unwrap_or_default(),
            message: ready.map(|c| c.message.clone()).unwrap_or_default(),
            changed_at,
            push_latency_ms: latency,
        }
        .bounded(),
    )
}

/// Follow the `GitRepository` objects (in `namespace`, or all) and publish their records to
/// `records` on every change, until `shutdown`.
pub async fn watch_records(
    client: Client,
    namespace: Option<String>,
    latencies: Latencies,
    records: watch::Sender<Option<Records>>,
    shutdown: impl Future<Output = ()>,
) {
    let api: Api<GitRepository> = match &namespace {
        Some(ns) => Api::namespaced(client, ns),
        None => Api::all(client),
    };
    let events = watcher(api).default_backoff();
    tokio::pin!(events);
    tokio::pin!(shutdown);
    let mut current: BTreeMap<FleetName, FleetRecord> = BTreeMap::new();
    let mut listing: Option<BTreeMap<FleetName, FleetRecord>> = None;
    loop {
        let event = tokio::select! {
            () = &mut shutdown => return,
            event = events.next() => match event {
                Some(Ok(event)) => event,
                Some(Err(e)) => {
                    debug!(error = %e, "the GitRepository watch for the fleet report failed; it restarts");
                    continue;
                }
                None => return,
            },
        };
        let changed = match event {
            Event::Init => {
                listing = Some(BTreeMap::new());
                false
            }
            Event::InitApply(obj) => {
                if let (Some(list), Some(r)) = (listing.as_mut(), record(&obj, &latencies)) {
                    list.insert(r.key(), r);
                }
                false
            }
            Event::InitDone => {
                current = listing.take().unwrap_or_default();
                true
            }
            Event::Apply(obj) => match record(&obj, &latencies) {
                Some(r) => current.insert(r.key(), r.clone()) != Some(r),
                None => false,
            },
            Event::Delete(obj) => {
                let key = FleetName {
                    namespace: obj.namespace().unwrap_or_default(),
                    name: obj.name_any(),
                };
                latencies.forget(&key);
                current.remove(&key).is_some()
            }
        };
        if changed {
            records.send_replace(Some(Arc::new(current.clone())));
        }
    }
}

fn watcher(
    api: Api<GitRepository>,
) -> impl futures::Stream<Item = Result<Event<GitRepository>, watcher::Error>> {
    watcher::watcher(api, watcher::Config::default())
}

fn record(obj: &GitRepository, latencies: &Latencies) -> Option<FleetRecord> {
    let key = FleetName {
        namespace: obj.namespace().unwrap_or_default(),
        name: obj.name_any(),
    };
    record_of(obj, latencies.get(&key))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::{GitRepositorySpec, GitRepositoryStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn repo(status: Option<GitRepositoryStatus>) -> GitRepository {
        let spec: GitRepositorySpec = serde_json::from_value(serde_json::json!({
            "url": "https://git.example/org/config.git",
            "ref": {"branch": "main"}
        }))
        .unwrap();
        let mut obj = GitRepository::new("web", spec);
        obj.metadata.namespace = Some("apps".into());
        obj.status = status;
        obj
    }

    #[test]
    fn a_record_reads_the_status_as_kubectl_shows_it() {
        let sha = "a".repeat(40);
        let status = GitRepositoryStatus {
            last_applied_revision: Some(format!("main@sha1:{sha}")),
            last_attempted_revision: Some(format!("main@sha1:{}", "b".repeat(40))),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "False".into(),
                reason: "ApplyFailed".into(),
                message: "x".repeat(5000),
                last_transition_time: Time(
                    k8s_openapi::jiff::Timestamp::from_millisecond(1_700_000_000_000).unwrap(),
                ),
                observed_generation: None,
            }],
            ..GitRepositoryStatus::default()
        };
        let r = record_of(&repo(Some(status)), Some(420)).unwrap();
        assert_eq!((r.namespace.as_str(), r.name.as_str()), ("apps", "web"));
        assert_eq!(r.repo.as_str(), "git.example/org/config");
        assert_eq!(r.git_ref, "refs/heads/main");
        assert_eq!(r.applied.as_deref(), Some(sha.as_str()));
        assert_eq!(r.attempted.as_deref(), Some("b".repeat(40).as_str()));
        assert_eq!(
            (r.ready.as_str(), r.reason.as_str()),
            ("False", "ApplyFailed")
        );
        assert!(r.message.len() <= tether_protocol::MAX_RECORD_MESSAGE_BYTES);
        assert_eq!(r.changed_at, Some(1_700_000_000_000));
        assert_eq!(r.push_latency_ms, Some(420));

        // No status yet: Unknown, nothing applied.
        let r = record_of(&repo(None), None).unwrap();
        assert_eq!((r.ready.as_str(), r.applied), ("Unknown", None));
    }
}
