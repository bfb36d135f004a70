//! Every transition of the status that the e2e tests and a user see: conditions, reasons,
//! revisions, inventory and the Events that go with them.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use super::*;
use crate::apply::ApplyError;
use crate::git::GitError;
use crate::health::HealthError;
use crate::plan::{Location, PlanError};

const REV1: &str = "main@sha1:1111111111111111111111111111111111111111";
const REV2: &str = "main@sha1:2222222222222222222222222222222222222222";

fn at(secs: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + secs).unwrap()
}

/// A `GitRepository` at `generation` with `status`.
fn repo(generation: i64, status: Option<GitRepositoryStatus>) -> GitRepository {
    let mut obj = GitRepository::new(
        "config",
        serde_yaml_ng::from_str("url: https://git.example/ops/config\n").unwrap(),
    );
    obj.metadata.namespace = Some("team".into());
    obj.metadata.generation = Some(generation);
    obj.status = status;
    obj
}

fn cm(name: &str) -> ObjectRef {
    ObjectRef {
        group: String::new(),
        version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some("team".into()),
        name: name.into(),
    }
}

fn applied(revision: &str, inventory: &[&str]) -> Attempt {
    Attempt::Applied {
        revision: revision.into(),
        inventory: inventory.iter().map(|n| cm(n)).collect(),
        summary: "created 1".into(),
    }
}

fn failed(revision: Option<&str>, error: Error) -> Attempt {
    Attempt::Failed {
        revision: revision.map(Into::into),
        recorded_inventory: None,
        error,
    }
}

fn cond<'a>(status: &'a GitRepositoryStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// `(status, reason, message)` of a condition.
fn triple(status: &GitRepositoryStatus, type_: &str) -> Option<(String, String, String)> {
    cond(status, type_).map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
}

fn t(s: &str, r: &str, m: &str) -> Option<(String, String, String)> {
    Some((s.into(), r.into(), m.into()))
}

/// The status after a first successful apply of `REV1` at generation 1.
fn ready_at_rev1() -> GitRepositoryStatus {
    after(&repo(1, None), &applied(REV1, &["a"]), None, at(0)).status
}

#[test]
fn a_first_apply_is_ready_with_its_revision_inventory_and_an_event() {
    let next = after(&repo(1, None), &applied(REV1, &["a", "b"]), None, at(0));
    let s = &next.status;
    assert_eq!(
        triple(s, condition::READY),
        t(
            "True",
            reason::SUCCEEDED,
            &format!("Applied revision {REV1}")
        )
    );
    assert_eq!(
        triple(s, condition::STALLED),
        t("False", reason::SUCCEEDED, "")
    );
    assert!(cond(s, condition::RECONCILING).is_none());
    assert_eq!(s.observed_generation, Some(1));
    assert_eq!(s.last_applied_revision.as_deref(), Some(REV1));
    assert_eq!(s.last_attempted_revision.as_deref(), Some(REV1));
    assert_eq!(
        s.last_applied_revision_short.as_deref(),
        Some("main@1111111")
    );
    assert_eq!(s.inventory, [cm("a"), cm("b")]);
    assert!(next.new_revision);
    assert_eq!(
        next.event,
        Some(Note {
            type_: EventType::Normal,
            reason: reason::SUCCEEDED,
            note: format!("Applied revision {REV1}: created 1"),
        })
    );
}

#[test]
fn the_same_revision_again_publishes_nothing_and_keeps_transition_times() {
    let first = ready_at_rev1();
    let next = after(
        &repo(1, Some(first.clone())),
        &applied(REV1, &["a"]),
        None,
        at(60),
    );
    assert_eq!(next.status, first, "nothing changes, so nothing is written");
    assert_eq!(next.event, None);
    assert!(!next.new_revision);
}

#[test]
fn a_new_revision_is_applied_with_an_event_naming_it() {
    let next = after(
        &repo(1, Some(ready_at_rev1())),
        &applied(REV2, &["b"]),
        None,
        at(60),
    );
    assert_eq!(next.status.last_applied_revision.as_deref(), Some(REV2));
    assert_eq!(next.status.inventory, [cm("b")]);
    assert!(next.new_revision);
    assert_eq!(
        next.event.map(|e| e.note),
        Some(format!("Applied revision {REV2}: created 1"))
    );
    // Ready stayed True: its transition time is the first one.
    assert_eq!(
        cond(&next.status, condition::READY).map(|c| c.last_transition_time.clone()),
        Some(Time(at(0)))
    );
}

#[test]
fn each_stage_error_gives_its_reason_and_keeps_the_last_applied_revision() {
    let git2 = || git2::Error::from_str("connection refused");
    let api = || {
        kube::Error::Api(Box::new(kube::core::Status::failure(
            "forbidden",
            "Forbidden",
        )))
    };
    let location = Location {
        file: "deploy/a.yaml".into(),
        document: 1,
        item: None,
    };
    let cases: Vec<(Error, &str)> = vec![
        (
            GitError::AuthFailed {
                url: "https://git.example/ops/config".into(),
                message: "401".into(),
            }
            .into(),
            reason::AUTHENTICATION_FAILED,
        ),
        (
            Error::Secret {
                name: "team/creds".into(),
                message: "not found".into(),
                reason: reason::AUTHENTICATION_FAILED,
            },
            reason::AUTHENTICATION_FAILED,
        ),
        (
            Error::Secret {
                name: "team/age".into(),
                message: "not found".into(),
                reason: reason::DECRYPTION_FAILED,
            },
            reason::DECRYPTION_FAILED,
        ),
        (
            GitError::Unreachable {
                url: "https://git.example/ops/config".into(),
                source: git2(),
            }
            .into(),
            reason::GIT_OPERATION_FAILED,
        ),
        (
            PlanError::Invalid {
                location,
                problem: "missing metadata.name".into(),
            }
            .into(),
            reason::INVALID_MANIFEST,
        ),
        (
            ApplyError::Forbidden {
                object: "ConfigMap team/a".into(),
                message: "no".into(),
            }
            .into(),
            reason::APPLY_FAILED,
        ),
        (
            ApplyError::Prune {
                failures: vec![("ConfigMap team/a".into(), api())],
            }
            .into(),
            reason::PRUNE_FAILED,
        ),
        (
            HealthError::NotReady {
                timeout: Duration::from_secs(5),
                pending: "Deployment team/web (0/1 replicas ready)".into(),
            }
            .into(),
            reason::HEALTH_CHECK_FAILED,
        ),
        (Error::Kube(api()), reason::FAILED),
    ];
    for (error, want) in cases {
        let message = error.to_string();
        let next = after(
            &repo(1, Some(ready_at_rev1())),
            &failed(Some(REV2), error),
            None,
            at(60),
        );
        let s = &next.status;
        assert_eq!(triple(s, condition::READY), t("False", want, &message));
        assert_eq!(triple(s, condition::STALLED), t("False", want, ""));
        assert_eq!(s.last_applied_revision.as_deref(), Some(REV1), "{want}");
        assert_eq!(s.last_attempted_revision.as_deref(), Some(REV2), "{want}");
        assert_eq!(s.inventory, [cm("a")], "a failure keeps the inventory");
        assert_eq!(
            next.event,
            Some(Note {
                type_: EventType::Warning,
                reason: want,
                note: message,
            })
        );
        assert!(!next.new_revision);
        assert_eq!(
            cond(s, condition::READY).map(|c| c.last_transition_time.clone()),
            Some(Time(at(60)))
        );
    }
}

#[test]
fn an_invalid_spec_stalls_and_says_why() {
    let error = Error::InvalidSpec("spec.interval: invalid duration \"soon\"".into());
    let message = error.to_string();
    let next = after(
        &repo(2, Some(ready_at_rev1())),
        &failed(None, error),
        None,
        at(60),
    );
    let s = &next.status;
    assert_eq!(
        triple(s, condition::READY),
        t("False", reason::INVALID_SPEC, &message)
    );
    assert_eq!(
        triple(s, condition::STALLED),
        t("True", reason::INVALID_SPEC, &message)
    );
    assert_eq!(s.observed_generation, Some(2));
    assert_eq!(
        s.last_attempted_revision.as_deref(),
        Some(REV1),
        "nothing was resolved"
    );
}

#[test]
fn the_same_failure_again_publishes_nothing_and_another_one_does() {
    let error = || Error::Secret {
        name: "team/creds".into(),
        message: "not found".into(),
        reason: reason::AUTHENTICATION_FAILED,
    };
    let first = after(&repo(1, None), &failed(None, error()), None, at(0)).status;
    let again = after(
        &repo(1, Some(first.clone())),
        &failed(None, error()),
        None,
        at(5),
    );
    assert_eq!(again.status, first);
    assert_eq!(again.event, None);

    let other = Error::Secret {
        name: "team/creds".into(),
        message: "has no key password".into(),
        reason: reason::AUTHENTICATION_FAILED,
    };
    let next = after(&repo(1, Some(first)), &failed(None, other), None, at(10));
    assert!(next.event.is_some(), "a new message is a change of Ready");
}

#[test]
fn recovering_from_a_failure_at_the_same_revision_is_announced() {
    let broken = after(
        &repo(1, Some(ready_at_rev1())),
        &failed(
            Some(REV1),
            Error::Kube(kube::Error::Api(Box::new(kube::core::Status::failure(
                "etcd", "Timeout",
            )))),
        ),
        None,
        at(10),
    )
    .status;
    let next = after(&repo(1, Some(broken)), &applied(REV1, &["a"]), None, at(20));
    assert!(!next.new_revision);
    assert_eq!(next.event.map(|e| e.type_), Some(EventType::Normal));
    assert_eq!(
        cond(&next.status, condition::READY).map(|c| c.last_transition_time.clone()),
        Some(Time(at(20)))
    );
}

#[test]
fn a_failure_after_widening_keeps_the_widened_inventory() {
    let attempt = Attempt::Failed {
        revision: Some(REV2.into()),
        recorded_inventory: Some(vec![cm("a"), cm("b")]),
        error: ApplyError::Forbidden {
            object: "ConfigMap team/b".into(),
            message: "no".into(),
        }
        .into(),
    };
    let next = after(&repo(1, Some(ready_at_rev1())), &attempt, None, at(5));
    assert_eq!(next.status.inventory, [cm("a"), cm("b")]);
}

#[test]
fn a_requested_reconcile_and_a_push_notice_are_recorded() {
    let mut obj = repo(1, Some(ready_at_rev1()));
    obj.metadata.annotations = Some(
        [(
            ANNOTATION_RECONCILE_REQUESTED_AT.to_string(),
            "now-1".to_string(),
        )]
        .into(),
    );
    let notified = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_030);
    let next = after(&obj, &applied(REV1, &["a"]), Some(notified), at(60));
    assert_eq!(
        next.status.last_handled_reconcile_at.as_deref(),
        Some("now-1")
    );
    assert_eq!(
        next.status.last_notified_at.as_deref(),
        Some("2027-01-15T08:00:30Z")
    );
    let suspended = suspended(&obj, at(60));
    assert_eq!(
        suspended.last_handled_reconcile_at.as_deref(),
        Some("now-1")
    );
}

#[test]
fn a_suspended_repository_is_ready_unknown_and_keeps_everything_else() {
    let before = ready_at_rev1();
    let s = suspended(&repo(2, Some(before.clone())), at(60));
    assert_eq!(
        triple(&s, condition::READY),
        t(
            "Unknown",
            reason::SUSPENDED,
            "Suspended: new commits are not applied until spec.suspend is false"
        )
    );
    assert_eq!(s.last_applied_revision, before.last_applied_revision);
    assert_eq!(s.inventory, before.inventory);
    assert_eq!(
        s.observed_generation,
        Some(1),
        "a suspended spec is not observed"
    );
}

#[test]
fn progress_is_shown_for_a_new_revision_or_spec_and_cleared_when_done() {
    let ready = ready_at_rev1();
    assert_eq!(
        progressing(&repo(1, Some(ready.clone())), REV1, at(5)),
        None
    );

    for (generation, revision) in [(1, REV2), (2, REV1)] {
        let s = progressing(&repo(generation, Some(ready.clone())), revision, at(5)).unwrap();
        let message = format!("Applying revision {revision}");
        assert_eq!(
            triple(&s, condition::RECONCILING),
            t("True", reason::PROGRESSING, &message)
        );
        assert_eq!(
            triple(&s, condition::READY),
            t("Unknown", reason::PROGRESSING, &message)
        );
        let done = after(
            &repo(generation, Some(s)),
            &applied(revision, &["a"]),
            None,
            at(6),
        );
        assert!(cond(&done.status, condition::RECONCILING).is_none());
        assert_eq!(
            triple(&done.status, condition::READY).map(|(s, r, _)| (s, r)),
            Some(("True".into(), reason::SUCCEEDED.into()))
        );
    }
}

#[test]
fn retrying_a_failed_revision_shows_no_progress_so_ready_does_not_flap() {
    let error = PlanError::Invalid {
        location: Location {
            file: "deploy/a.yaml".into(),
            document: 1,
            item: None,
        },
        problem: "missing metadata.name".into(),
    };
    let broken = after(
        &repo(1, Some(ready_at_rev1())),
        &failed(Some(REV2), error.into()),
        None,
        at(5),
    );
    assert_eq!(
        progressing(&repo(1, Some(broken.status.clone())), REV2, at(7)),
        None
    );
    assert!(progressing(&repo(2, Some(broken.status)), REV2, at(7)).is_some());
}

#[test]
fn widening_adds_only_new_objects_and_marks_progress() {
    let obj = repo(1, Some(ready_at_rev1()));
    assert_eq!(widened(&obj, REV1, &[cm("a")], at(5)), None);
    let s = widened(&obj, REV2, &[cm("a"), cm("b")], at(5)).unwrap();
    assert_eq!(s.inventory, [cm("a"), cm("b")]);
    assert_eq!(
        triple(&s, condition::RECONCILING).map(|(s, _, _)| s),
        Some("True".into())
    );
    // Same revision, one more object (the spec changed nothing the revision sees).
    let s = widened(&obj, REV1, &[cm("c")], at(5)).unwrap();
    assert_eq!(s.inventory, [cm("a"), cm("c")]);
    assert!(cond(&s, condition::RECONCILING).is_none());
}
