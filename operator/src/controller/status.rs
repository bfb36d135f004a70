//! Pure: the status, and the Event, that follow from what a reconcile did. The caller passes the
//! time; the writer ([`super::writer`]) only writes what this computes.

use std::time::SystemTime;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt as _;
use kube::runtime::events::EventType;

use super::error::Error;
use crate::crd::{
    ANNOTATION_RECONCILE_REQUESTED_AT, GitRepository, GitRepositoryStatus, ObjectRef, condition,
    reason, short_revision,
};
use crate::error::{ErrorClass, StageError as _};

/// What one run of the pipeline did.
#[derive(Debug)]
pub enum Attempt {
    /// The revision is applied (pruned, and healthy when `spec.wait` asks).
    Applied {
        revision: String,
        /// The objects of this revision: the inventory from now on.
        inventory: Vec<ObjectRef>,
        /// What applying did, for the Event: `created 1, unchanged 4, pruned 1`.
        summary: String,
    },
    /// A stage failed.
    Failed {
        /// The revision the remote reported, when resolving got that far.
        revision: Option<String>,
        /// The inventory this attempt wrote before applying, when it widened it: a failure keeps
        /// it, so that what may have been created stays listed.
        recorded_inventory: Option<Vec<ObjectRef>>,
        error: Error,
    },
}

/// An Event to publish on the `GitRepository`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// What follows an attempt.
#[derive(Debug)]
pub struct Next {
    pub status: GitRepositoryStatus,
    /// Published only on a change of revision or of `Ready`.
    pub event: Option<Note>,
    /// A revision other than the last applied one is now applied.
    pub new_revision: bool,
}

/// The status after `attempt`; `notified_at` is when the last push notice for the repository
/// arrived.
pub fn after(
    obj: &GitRepository,
    attempt: &Attempt,
    notified_at: Option<SystemTime>,
    now: Timestamp,
) -> Next {
    let mut status = handled(obj);
    status.observed_generation = obj.metadata.generation;
    if let Some(at) = notified_at {
        status.last_notified_at = Some(timestamp(at, now).to_string());
    }
    let previous = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY)
        .map(|c| (c.status.clone(), c.message.clone()));
    match attempt {
        Attempt::Applied {
            revision,
            inventory,
            summary,
        } => {
            let new_revision = status.last_applied_revision.as_deref() != Some(revision);
            status.last_attempted_revision = Some(revision.clone());
            status.last_applied_revision = Some(revision.clone());
            status.last_applied_revision_short = Some(short_revision(revision));
            status.inventory = inventory.clone();
            let message = format!("Applied revision {revision}");
            let status = settled(obj, status, "True", reason::SUCCEEDED, &message, now);
            let was_ready = previous.is_some_and(|(s, _)| s == "True");
            let event = (new_revision || !was_ready).then(|| Note {
                type_: EventType::Normal,
                reason: reason::SUCCEEDED,
                note: format!("Applied revision {revision}: {summary}"),
            });
            Next {
                status,
                event,
                new_revision,
            }
        }
        Attempt::Failed {
            revision,
            recorded_inventory,
            error,
        } => {
            if let Some(revision) = revision {
                status.last_attempted_revision = Some(revision.clone());
            }
            if let Some(inventory) = recorded_inventory {
                status.inventory = inventory.clone();
            }
            let message = error.to_string();
            let reason = error.reason();
            let mut status = settled(obj, status, "False", reason, &message, now);
            if error.class() == ErrorClass::Stalled {
                set(
                    &mut status,
                    obj,
                    condition::STALLED,
                    "True",
                    reason,
                    &message,
                    now,
                );
            }
            let unchanged = previous.is_some_and(|p| p == ("False".into(), message.clone()));
            let event = (!unchanged).then_some(Note {
                type_: EventType::Warning,
                reason,
                note: message,
            });
            Next {
                status,
                event,
                new_revision: false,
            }
        }
    }
}

/// The status of a suspended `GitRepository`: `Ready` Unknown, nothing else changes.
pub fn suspended(obj: &GitRepository, now: Timestamp) -> GitRepositoryStatus {
    let message = "Suspended: new commits are not applied until spec.suspend is false";
    settled(
        obj,
        handled(obj),
        "Unknown",
        reason::SUSPENDED,
        message,
        now,
    )
}

/// Before work on a new revision or spec: `Reconciling` True and `Ready` Unknown, so that
/// `kubectl get` and `kubectl wait` see the work under way. `None` when this revision and spec were
/// attempted already: a retry keeps the outcome it retries in view, so `Ready` does not flap.
pub fn progressing(
    obj: &GitRepository,
    revision: &str,
    now: Timestamp,
) -> Option<GitRepositoryStatus> {
    let mut status = obj.status.clone().unwrap_or_default();
    let seen = |r: &Option<String>| r.as_deref() == Some(revision);
    let settled = (seen(&status.last_applied_revision) || seen(&status.last_attempted_revision))
        && status.observed_generation == obj.metadata.generation;
    if settled {
        return None;
    }
    let message = format!("Applying revision {revision}");
    let (r, m) = (reason::PROGRESSING, message.as_str());
    set(&mut status, obj, condition::RECONCILING, "True", r, m, now);
    set(&mut status, obj, condition::READY, "Unknown", r, m, now);
    Some(status)
}

/// Before applying: the recorded inventory grows by every object the revision may create. An
/// operator killed between applying and writing the final status then still knows, at its next
/// run, what it may have created, and prunes it once it leaves the repository. `None` when
/// nothing is new.
pub fn widened(
    obj: &GitRepository,
    revision: &str,
    planned: &[ObjectRef],
    now: Timestamp,
) -> Option<GitRepositoryStatus> {
    let mut status =
        progressing(obj, revision, now).unwrap_or_else(|| obj.status.clone().unwrap_or_default());
    let before = status.inventory.len();
    for object in planned {
        if !status.inventory.contains(object) {
            status.inventory.push(object.clone());
        }
    }
    (status.inventory.len() > before).then_some(status)
}

/// The current status, with the reconcile-requested-at annotation acknowledged.
fn handled(obj: &GitRepository) -> GitRepositoryStatus {
    let mut status = obj.status.clone().unwrap_or_default();
    if let Some(requested) = obj.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT) {
        status.last_handled_reconcile_at = Some(requested.clone());
    }
    status
}

/// Work is over: `Ready` set, `Reconciling` gone, `Stalled` False.
fn settled(
    obj: &GitRepository,
    mut status: GitRepositoryStatus,
    ready: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) -> GitRepositoryStatus {
    set(
        &mut status,
        obj,
        condition::READY,
        ready,
        reason,
        message,
        now,
    );
    status
        .conditions
        .retain(|c| c.type_ != condition::RECONCILING);
    set(
        &mut status,
        obj,
        condition::STALLED,
        "False",
        reason,
        "",
        now,
    );
    status
}

/// Sets a condition, keeping its transition time when its status does not change.
fn set(
    status: &mut GitRepositoryStatus,
    obj: &GitRepository,
    type_: &str,
    value: &str,
    reason: &str,
    message: &str,
    now: Timestamp,
) {
    let generation = obj.metadata.generation;
    match status.conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Time(now);
            }
            c.status = value.into();
            c.reason = reason.into();
            c.message = message.into();
            c.observed_generation = generation;
        }
        None => status.conditions.push(Condition {
            type_: type_.into(),
            status: value.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: Time(now),
            observed_generation: generation,
        }),
    }
}

fn timestamp(at: SystemTime, fallback: Timestamp) -> Timestamp {
    Timestamp::try_from(at).unwrap_or(fallback)
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
