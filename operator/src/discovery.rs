//! Discovery: which kinds the API server serves, their resources and scope, kept as one shared
//! snapshot and refreshed when a revision names a kind it does not know yet.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::ApiResource;
use kube::discovery::{Discovery, Scope as KubeScope};
use tokio::sync::RwLock;

use crate::crd::ObjectRef;
use crate::error::StageError;
use crate::plan::Scope;

/// The API server's discovery could not be read.
#[derive(Debug, thiserror::Error)]
#[error("discovering the API server's kinds: {0}")]
pub struct DiscoveryError(#[source] pub kube::Error);

impl StageError for DiscoveryError {
    fn category(&self) -> &'static str {
        "api_error"
    }
}

/// What the API server serves: kinds, their resources and scope. Shared by every reconcile and
/// refreshed when a kind is missing (a CRD was installed since), at most once per
/// [`Catalog::MIN_REFRESH`].
#[derive(Debug, Default)]
pub struct Catalog {
    inner: RwLock<Option<(Instant, Arc<Kinds>)>>,
}

/// One discovery snapshot.
#[derive(Debug, Default)]
pub struct Kinds {
    by_gvk: HashMap<(String, String, String), (ApiResource, Scope)>,
}

impl Kinds {
    /// Whether `(group, version, kind)` is namespaced, or `None` when the server does not serve it.
    pub fn scope(&self, group: &str, version: &str, kind: &str) -> Option<Scope> {
        self.by_gvk
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .map(|(_, s)| *s)
    }

    /// The API resource serving an object's kind at its version.
    pub fn resource(&self, id: &ObjectRef) -> Option<&ApiResource> {
        self.by_gvk
            .get(&(id.group.clone(), id.version.clone(), id.kind.clone()))
            .map(|(r, _)| r)
    }

    /// The resource serving an object's kind at its version, or else at any version of its group:
    /// one object is reachable under every version its group serves.
    pub fn resource_any_version(&self, id: &ObjectRef) -> Option<&ApiResource> {
        self.resource(id).or_else(|| {
            self.by_gvk
                .iter()
                .find(|((g, _, k), _)| g == &id.group && k == &id.kind)
                .map(|(_, (r, _))| r)
        })
    }
}

impl Catalog {
    /// The shortest time between two refreshes asked for by a missing kind.
    pub const MIN_REFRESH: Duration = Duration::from_secs(5);

    /// The current snapshot, loaded on first use.
    pub async fn kinds(&self, client: &kube::Client) -> Result<Arc<Kinds>, DiscoveryError> {
        if let Some((_, kinds)) = self.inner.read().await.as_ref() {
            return Ok(kinds.clone());
        }
        self.refresh(client, true).await
    }

    /// Reloads the snapshot, unless the last load is younger than [`Self::MIN_REFRESH`] and
    /// `force` is false.
    pub async fn refresh(
        &self,
        client: &kube::Client,
        force: bool,
    ) -> Result<Arc<Kinds>, DiscoveryError> {
        let mut guard = self.inner.write().await;
        if let Some((at, kinds)) = guard.as_ref()
            && !force
            && at.elapsed() < Self::MIN_REFRESH
        {
            return Ok(kinds.clone());
        }
        let discovery = Discovery::new(client.clone())
            .run_aggregated()
            .await
            .map_err(DiscoveryError)?;
        let mut by_gvk = HashMap::new();
        for group in discovery.groups() {
            for version in group.versions() {
                for (resource, caps) in group.versioned_resources(version) {
                    let scope = match caps.scope {
                        KubeScope::Namespaced => Scope::Namespaced,
                        KubeScope::Cluster => Scope::Cluster,
                    };
                    let key = (
                        resource.group.clone(),
                        resource.version.clone(),
                        resource.kind.clone(),
                    );
                    by_gvk.insert(key, (resource, scope));
                }
            }
        }
        let kinds = Arc::new(Kinds { by_gvk });
        *guard = Some((Instant::now(), kinds.clone()));
        Ok(kinds)
    }
}
