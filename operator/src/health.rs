//! The health wait (`spec.wait: true`): holds `Ready` until the applied objects are ready themselves.
//!
//! Readiness is read from each object's status, as kstatus does for the common kinds: workloads by
//! their replica counts and observed generation, Jobs by completion, anything with a `Ready`
//! condition by that condition. Objects without a status notion are ready once they exist.

use std::time::{Duration, Instant};

use kube::api::{Api, DynamicObject};
use serde_json::Value;

use crate::apply::describe;
use crate::crd::reason;
use crate::discovery::{Catalog, DiscoveryError};
use crate::error::{ErrorClass, StageError};
use crate::plan::Plan;

/// Why the health wait failed.
#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    /// The kinds to read could not be discovered: an API problem, retried soon.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Objects still not ready at the deadline, each with why.
    #[error("objects not ready within {timeout:?}: {pending}")]
    NotReady { timeout: Duration, pending: String },
}

impl StageError for HealthError {
    fn category(&self) -> &'static str {
        match self {
            HealthError::Discovery(e) => e.category(),
            HealthError::NotReady { .. } => "health",
        }
    }

    /// Unready objects wait for the next commit (or the interval); an API error is transient.
    fn class(&self) -> ErrorClass {
        match self {
            HealthError::Discovery(_) => ErrorClass::Transient,
            HealthError::NotReady { .. } => ErrorClass::Revision,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            HealthError::Discovery(_) => reason::FAILED,
            HealthError::NotReady { .. } => reason::HEALTH_CHECK_FAILED,
        }
    }
}

/// How often the objects are read again while waiting.
const POLL: Duration = Duration::from_secs(1);

/// Waits until every object of `plan` is ready, or `timeout`. On timeout, the error lists the
/// objects still pending, described for a person, each with the reason it is not ready.
pub async fn wait(
    client: &kube::Client,
    catalog: &Catalog,
    plan: &Plan,
    timeout: Duration,
) -> Result<(), HealthError> {
    // Bounded by spec.timeout's range, but never trust a sum with the clock.
    let deadline = Instant::now().checked_add(timeout);
    loop {
        let kinds = catalog.kinds(client).await?;
        let mut pending = Vec::new();
        for object in &plan.objects {
            let Some(resource) = kinds.resource(&object.id) else {
                continue;
            };
            let api: Api<DynamicObject> = match &object.id.namespace {
                Some(ns) => Api::namespaced_with(client.clone(), ns, resource),
                None => Api::all_with(client.clone(), resource),
            };
            let why = match api.get_opt(&object.id.name).await {
                Ok(Some(current)) => not_ready(&object.id.kind, &current),
                Ok(None) => Some("not found".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                pending.push(format!("{} ({why})", describe(&object.id)));
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        if deadline.is_none_or(|d| Instant::now() + POLL > d) {
            return Err(HealthError::NotReady {
                timeout,
                pending: pending.join(", "),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Why an object is not ready yet, or `None` when it is.
pub fn not_ready(kind: &str, object: &DynamicObject) -> Option<String> {
    let status = object.data.get("status").unwrap_or(&Value::Null);
    let spec = object.data.get("spec").unwrap_or(&Value::Null);
    let int = |v: &Value, key: &str| v.get(key).and_then(Value::as_i64).unwrap_or(0);
    if let Some(generation) = object.metadata.generation
        && status.get("observedGeneration").is_some()
        && int(status, "observedGeneration") < generation
    {
        return Some("the controller has not observed the latest generation".into());
    }
    match kind {
        "Deployment" | "StatefulSet" | "ReplicaSet" => {
            let want = spec.get("replicas").and_then(Value::as_i64).unwrap_or(1);
            let ready = int(status, "readyReplicas");
            let updated = int(status, "updatedReplicas");
            if kind != "ReplicaSet" && updated < want {
                return Some(format!("{updated}/{want} replicas updated"));
            }
            (ready < want).then(|| format!("{ready}/{want} replicas ready"))
        }
        "DaemonSet" => {
            let want = int(status, "desiredNumberScheduled");
            let ready = int(status, "numberReady");
            (ready < want).then(|| format!("{ready}/{want} pods ready"))
        }
        "Job" => {
            let complete = condition_is(status, "Complete", "True");
            (!complete).then(|| "not complete".into())
        }
        _ => {
            let has_ready = status
                .get("conditions")
                .and_then(Value::as_array)
                .is_some_and(|c| {
                    c.iter()
                        .any(|c| c.get("type") == Some(&Value::from("Ready")))
                });
            (has_ready && !condition_is(status, "Ready", "True"))
                .then(|| "Ready is not True".into())
        }
    }
}

fn condition_is(status: &Value, type_: &str, want: &str) -> bool {
    status
        .get("conditions")
        .and_then(Value::as_array)
        .is_some_and(|cs| {
            cs.iter().any(|c| {
                c.get("type").and_then(Value::as_str) == Some(type_)
                    && c.get("status").and_then(Value::as_str) == Some(want)
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(kind: &str, generation: i64, data: Value) -> DynamicObject {
        let mut o: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": kind, "metadata": {"name": "x", "generation": generation}
        }))
        .expect("a valid object");
        o.data = data;
        o
    }

    #[test]
    fn deployment_is_ready_when_every_replica_is_updated_and_ready() {
        let d = |ready: i64, gen_seen: i64| {
            object(
                "Deployment",
                2,
                serde_json::json!({
                    "spec": {"replicas": 2},
                    "status": {"observedGeneration": gen_seen, "updatedReplicas": 2, "readyReplicas": ready}
                }),
            )
        };
        assert_eq!(
            not_ready("Deployment", &d(1, 2)),
            Some("1/2 replicas ready".into())
        );
        assert!(
            not_ready("Deployment", &d(2, 1)).is_some(),
            "an old generation is not ready"
        );
        assert_eq!(not_ready("Deployment", &d(2, 2)), None);
    }

    #[test]
    fn objects_with_a_ready_condition_follow_it_and_others_are_ready_once_present() {
        let with = |s: &str| {
            object(
                "Widget",
                1,
                serde_json::json!({"status": {"conditions": [{"type": "Ready", "status": s}]}}),
            )
        };
        assert!(not_ready("Widget", &with("False")).is_some());
        assert_eq!(not_ready("Widget", &with("True")), None);
        assert_eq!(
            not_ready(
                "ConfigMap",
                &object("ConfigMap", 1, serde_json::json!({"data": {}}))
            ),
            None
        );
        let job = object(
            "Job",
            1,
            serde_json::json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}),
        );
        assert_eq!(not_ready("Job", &job), None);
    }
}
