//! `spec.dependsOn`: a GitRepository applies only once each dependency is Ready at its latest
//! revision. Cycles are found by walking the dependencies' own `dependsOn` and reported on every
//! member; a GitRepository that waits is woken the moment a dependency becomes Ready, not at its
//! interval.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use futures::Stream;
use kube::ResourceExt as _;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef as Ref;
use tokio::sync::mpsc;

use super::error::Error;
use crate::crd::{GitRepository, condition, reason};

/// The most GitRepositories a cycle check reads.
const MAX_WALK: usize = 256;

/// Who waits for whom, and the channel that wakes them.
#[derive(Debug)]
pub struct Dependents {
    /// For each dependency, the GitRepositories waiting for it.
    waiting: Mutex<HashMap<Ref<GitRepository>, HashSet<Ref<GitRepository>>>>,
    wake: mpsc::UnboundedSender<Ref<GitRepository>>,
}

/// The objects to reconcile because a dependency of theirs became Ready.
#[derive(Debug)]
pub struct Wakes(mpsc::UnboundedReceiver<Ref<GitRepository>>);

impl Wakes {
    /// As a stream for the controller.
    pub fn into_stream(self) -> impl Stream<Item = Ref<GitRepository>> + Send + 'static {
        futures::stream::unfold(self.0, |mut rx| async move {
            let next = rx.recv().await?;
            Some((next, rx))
        })
    }
}

impl Dependents {
    pub fn new() -> (Self, Wakes) {
        let (wake, rx) = mpsc::unbounded_channel();
        (
            Self {
                waiting: Mutex::new(HashMap::new()),
                wake,
            },
            Wakes(rx),
        )
    }

    /// Records that `obj` waits for each of `deps` (and for nothing else).
    pub fn wait(&self, obj: &Ref<GitRepository>, deps: &[Ref<GitRepository>]) {
        let mut waiting = lock(&self.waiting);
        for set in waiting.values_mut() {
            set.remove(obj);
        }
        for dep in deps {
            waiting.entry(dep.clone()).or_default().insert(obj.clone());
        }
        waiting.retain(|_, set| !set.is_empty());
    }

    /// Wakes whatever waits for `obj`, which just became Ready.
    pub fn ready(&self, obj: &Ref<GitRepository>) {
        let woken = lock(&self.waiting).remove(obj).unwrap_or_default();
        for dependent in woken {
            let _ = self.wake.send(dependent);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The dependencies of `obj`, their namespaces filled in.
pub fn of(obj: &GitRepository) -> Vec<Ref<GitRepository>> {
    let own = obj.namespace().unwrap_or_default();
    obj.spec
        .depends_on
        .iter()
        .map(|d| Ref::new(&d.name).within(d.namespace.as_deref().unwrap_or(&own)))
        .collect()
}

/// Whether `dep` is Ready at its latest revision: Ready=True for its current generation, and what
/// it last applied is what it last attempted.
pub fn ready_at_latest(dep: &GitRepository) -> Result<(), String> {
    let Some(status) = &dep.status else {
        return Err("has not been reconciled yet".into());
    };
    if status.observed_generation != dep.metadata.generation {
        return Err("has not reconciled its latest spec yet".into());
    }
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == condition::READY);
    match ready {
        Some(c) if c.status == "True" => {}
        Some(c) => return Err(format!("is not Ready ({}: {})", c.reason, c.message)),
        None => return Err("is not Ready yet".into()),
    }
    if status.last_applied_revision.is_none()
        || status.last_applied_revision != status.last_attempted_revision
    {
        return Err(format!(
            "has not applied its latest revision {} yet",
            status.last_attempted_revision.as_deref().unwrap_or("?")
        ));
    }
    Ok(())
}

/// Checks `obj`'s dependencies. Those in its own namespace are read with the operator's client;
/// those in another with `client` (the one impersonating `serviceAccountName`, when set), so a
/// tenant learns nothing of a namespace its account may not read.
pub async fn check(
    obj: &GitRepository,
    own_client: &kube::Client,
    client: &kube::Client,
) -> Result<(), Error> {
    let me = Ref::from_obj(obj);
    let own = obj.namespace().unwrap_or_default();
    let get = |dep: Ref<GitRepository>| {
        let api: Api<GitRepository> = Api::namespaced(
            if dep.namespace.as_deref() == Some(own.as_str()) {
                own_client.clone()
            } else {
                client.clone()
            },
            dep.namespace.as_deref().unwrap_or(&own),
        );
        async move { (dep.clone(), api.get_opt(&dep.name).await) }
    };
    let not_ready = |message: String| Error::Dependency {
        reason: reason::DEPENDENCY_NOT_READY,
        message,
    };

    // First each direct dependency, then a walk of theirs for a way back here.
    let mut direct = Vec::new();
    for dep in of(obj) {
        let (dep, found) = get(dep).await;
        match found {
            Ok(Some(found)) => direct.push(found),
            Ok(None) => {
                return Err(not_ready(format!(
                    "dependency {} not found (spec.dependsOn)",
                    name(&dep)
                )));
            }
            Err(kube::Error::Api(s)) if s.code == 403 => {
                return Err(not_ready(format!(
                    "dependency {}: may not be read (grant the service account get on \
                     gitrepositories.tether.dev there)",
                    name(&dep)
                )));
            }
            Err(e) => return Err(Error::Kube(e)),
        }
    }
    let mut queue: VecDeque<(GitRepository, Vec<String>)> = direct
        .iter()
        .map(|d| (d.clone(), vec![name(&me), name(&Ref::from_obj(d))]))
        .collect();
    let mut seen = HashSet::new();
    while let Some((node, path)) = queue.pop_front() {
        if !seen.insert(Ref::from_obj(&node)) || seen.len() > MAX_WALK {
            continue;
        }
        for next in of(&node) {
            if next == me {
                let mut cycle = path.clone();
                cycle.push(name(&me));
                return Err(Error::Dependency {
                    reason: reason::DEPENDENCY_CYCLE,
                    message: format!(
                        "spec.dependsOn forms a cycle: {}; none of them can become Ready \
                         until one of these entries is removed",
                        cycle.join(" → ")
                    ),
                });
            }
            if let (_, Ok(Some(found))) = get(next.clone()).await {
                let mut longer = path.clone();
                longer.push(name(&next));
                queue.push_back((found, longer));
            }
        }
    }
    for dep in &direct {
        if let Err(why) = ready_at_latest(dep) {
            return Err(not_ready(format!(
                "dependency {} {why}",
                name(&Ref::from_obj(dep))
            )));
        }
    }
    Ok(())
}

fn name(r: &Ref<GitRepository>) -> String {
    format!("{}/{}", r.namespace.as_deref().unwrap_or_default(), r.name)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::crd::GitRepositoryStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

    fn repo(yaml: &str) -> GitRepository {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    fn with_status(
        mut r: GitRepository,
        ready: &str,
        applied: &str,
        attempted: &str,
    ) -> GitRepository {
        r.metadata.generation = Some(2);
        r.status = Some(GitRepositoryStatus {
            observed_generation: Some(2),
            conditions: vec![Condition {
                type_: condition::READY.into(),
                status: ready.into(),
                reason: "R".into(),
                message: "m".into(),
                last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                    k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
                ),
                observed_generation: Some(2),
            }],
            last_applied_revision: Some(applied.into()),
            last_attempted_revision: Some(attempted.into()),
            ..Default::default()
        });
        r
    }

    const INFRA: &str = "apiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata: {name: infra, namespace: ops}\nspec: {url: 'https://h/r'}\n";

    #[test]
    fn a_dependency_counts_only_when_ready_at_its_latest_revision() {
        assert!(
            ready_at_latest(&with_status(
                repo(INFRA),
                "True",
                "main@sha1:a",
                "main@sha1:a"
            ))
            .is_ok()
        );
        let behind = ready_at_latest(&with_status(
            repo(INFRA),
            "True",
            "main@sha1:a",
            "main@sha1:b",
        ));
        assert!(behind.unwrap_err().contains("main@sha1:b"));
        let failing = ready_at_latest(&with_status(repo(INFRA), "False", "x", "x")).unwrap_err();
        assert_eq!(failing, "is not Ready (R: m)");
        let mut stale = with_status(repo(INFRA), "True", "x", "x");
        stale.metadata.generation = Some(3);
        assert!(ready_at_latest(&stale).is_err());
        assert!(ready_at_latest(&repo(INFRA)).is_err());
    }

    #[test]
    fn dependencies_default_to_the_own_namespace() {
        let app = repo(
            "apiVersion: tether.dev/v1alpha1\nkind: GitRepository\nmetadata: {name: app, namespace: team}\n\
             spec: {url: 'https://h/r', dependsOn: [{name: infra}, {name: crds, namespace: ops}]}\n",
        );
        assert_eq!(
            of(&app),
            [
                Ref::new("infra").within("team"),
                Ref::new("crds").within("ops")
            ]
        );
    }

    #[tokio::test]
    async fn a_dependency_becoming_ready_wakes_only_who_waits_for_it() {
        let (deps, wakes) = Dependents::new();
        let mut wakes = wakes.0;
        let app = Ref::new("app").within("team");
        let infra = Ref::new("infra").within("team");
        let other = Ref::new("other").within("team");
        deps.wait(&app, std::slice::from_ref(&infra));
        deps.ready(&other);
        assert!(wakes.try_recv().is_err());
        deps.ready(&infra);
        assert_eq!(wakes.try_recv().unwrap(), app);
        // Woken once: it waits again only if it still has to.
        deps.ready(&infra);
        assert!(wakes.try_recv().is_err());
    }
}
