//! What every reconcile shares: the API clients, discovery, the mirror cache, metrics, the push
//! triggers and the per-object retry state.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef as Ref;
use tether_protocol::Backoff;

use super::deps::{Dependents, Wakes};
use super::error::Error;
use crate::crd::GitRepository;
use crate::discovery::Catalog;
use crate::drift::Drift;
use crate::git::MirrorCache;
use crate::leader::Guard;
use crate::metrics::Metrics;
use crate::render::Tools;
use crate::triggers::Triggers;

/// The first retry after a transient failure, and the longest.
const RETRY_FIRST: Duration = Duration::from_secs(2);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// What the operator's flags allow a `GitRepository`, beyond the safe defaults.
#[derive(Debug, Clone, Copy, Default)]
pub struct Policy {
    /// `--allow-file-urls`: `spec.url` may name a folder on the operator's disk.
    pub allow_file_urls: bool,
    /// `--allow-http-credentials`: a password or token may go over plain `http://`.
    pub allow_http_credentials: bool,
}

/// How the operator reaches the API server: its own client, the config that the clients
/// impersonating a `serviceAccountName` are built from, with leader election the guard every
/// one of them checks before it writes, and with `--namespace` the one namespace it works in.
pub struct ApiAccess {
    pub client: kube::Client,
    pub config: kube::Config,
    pub guard: Option<Guard>,
    pub namespace: Option<String>,
}

/// Shared by every reconcile.
pub struct Context {
    pub(super) client: kube::Client,
    config: kube::Config,
    pub(super) catalog: Catalog,
    /// What the last applies left, and the watches that tell whether it changed.
    pub(super) drift: Drift,
    pub(super) mirrors: MirrorCache,
    pub(super) metrics: Metrics,
    /// Where Events go to be published, in order, off the reconcile's path.
    pub(super) events: tokio::sync::mpsc::Sender<super::writer::Queued>,
    pub(super) triggers: Arc<Triggers>,
    pub(super) policy: Policy,
    /// Per object, the backoff of its consecutive transient failures.
    retries: Mutex<HashMap<Ref<GitRepository>, Backoff>>,
    /// Clients impersonating a `serviceAccountName`, by `namespace/name`.
    impersonated: Mutex<HashMap<String, kube::Client>>,
    /// With leader election: what every client here checks before it writes.
    guard: Option<Guard>,
    /// kustomize, helm and sops, and where renders happen.
    pub(super) tools: Tools,
    /// Who waits for which dependency.
    pub(super) dependents: Dependents,
    /// The API server's version, as helm is told it (read once).
    kube_version: std::sync::OnceLock<String>,
    /// The last push → applied latency per object, for the fleet report.
    pub(super) latencies: crate::fleet::Latencies,
}

impl std::fmt::Debug for ApiAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAccess")
            .field("guarded", &self.guard.is_some())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").finish_non_exhaustive()
    }
}

impl Context {
    /// The operator's own client (guarded with leader election).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The push → applied latencies the controller measures, for the fleet report.
    pub fn latencies(&self) -> crate::fleet::Latencies {
        self.latencies.clone()
    }

    pub fn new(
        api: ApiAccess,
        mirrors: MirrorCache,
        metrics: Metrics,
        reporter: Reporter,
        triggers: Arc<Triggers>,
        policy: Policy,
        tools: Tools,
    ) -> (Arc<Self>, Wakes) {
        let ApiAccess {
            client,
            config,
            guard,
            namespace,
        } = api;
        let (dependents, wakes) = Dependents::new();
        let drift = Drift::new(client.clone(), namespace);
        let events = super::writer::publisher(client.clone(), reporter);
        let ctx = Arc::new(Self {
            client,
            config,
            catalog: Catalog::default(),
            drift,
            mirrors,
            metrics,
            events,
            triggers,
            policy,
            retries: Mutex::new(HashMap::new()),
            impersonated: Mutex::new(HashMap::new()),
            guard,
            tools,
            dependents,
            kube_version: std::sync::OnceLock::new(),
            latencies: crate::fleet::Latencies::default(),
        });
        (ctx, wakes)
    }

    /// The API server's version (`v1.36.3`), for `helm template --kube-version`, read once it
    /// answers; `None` while it cannot be read, and helm keeps the version it was built for.
    pub(super) async fn kube_version(&self) -> Option<String> {
        if let Some(known) = self.kube_version.get() {
            return Some(known.clone());
        }
        match self.client.apiserver_version().await {
            Ok(info) => Some(self.kube_version.get_or_init(|| info.git_version).clone()),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the API server's version; helm templates for the version it was built for");
                None
            }
        }
    }

    /// The client that applies for a `GitRepository`: the operator's own, or one impersonating
    /// its `serviceAccountName`.
    pub(super) fn apply_client(
        &self,
        namespace: &str,
        account: Option<&str>,
    ) -> Result<kube::Client, Error> {
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
        let client = crate::leader::client(config, self.guard.as_ref()).map_err(Error::Kube)?;
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// The delay before retrying `obj` after one more transient failure.
    pub(super) fn next_retry(&self, obj: Ref<GitRepository>) -> Duration {
        lock(&self.retries)
            .entry(obj)
            .or_insert_with(|| Backoff::new(RETRY_FIRST, RETRY_MAX, Duration::MAX))
            .next_delay_near(rand::random())
    }

    /// `obj` succeeded: its next failure starts the backoff again.
    pub(super) fn reset_retries(&self, obj: &Ref<GitRepository>) {
        lock(&self.retries).remove(obj);
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often the mirror cache drops the mirrors that no `GitRepository` names any more.
pub const MIRROR_SWEEP_INTERVAL: Duration = Duration::from_secs(3600);

/// Every `every` (the first time at once) until `stop`, removes the mirrors of repositories that
/// no `GitRepository` (in `namespace`, or anywhere) names any more; a mirror an operation holds is
/// left for the next round.
pub async fn sweep_mirrors(
    ctx: Arc<Context>,
    namespace: Option<String>,
    every: Duration,
    stop: impl std::future::Future<Output = ()>,
) {
    use kube::api::{Api, DynamicObject, ListParams};
    use kube::core::ApiResource;

    let resource = ApiResource::erase::<GitRepository>(&());
    let api: Api<DynamicObject> = match &namespace {
        Some(ns) => Api::namespaced_with(ctx.client.clone(), ns, &resource),
        None => Api::all_with(ctx.client.clone(), &resource),
    };
    let mut ticks = tokio::time::interval(every);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = ticks.tick() => {}
        }
        // Read as untyped objects: one malformed object must not stop the sweep of the rest.
        let listed = match api.list(&ListParams::default()).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "cannot list GitRepository objects to sweep the mirror cache; trying again later");
                continue;
            }
        };
        let in_use: HashSet<String> = listed
            .items
            .iter()
            .filter_map(|o| o.data.get("spec")?.get("url")?.as_str())
            .filter_map(|url| tether_protocol::normalize(url).ok())
            .map(|repo| repo.to_string())
            .collect();
        let sweeper = Arc::clone(&ctx);
        match tokio::task::spawn_blocking(move || sweeper.mirrors.sweep(&in_use)).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(removed, "removed mirrors no GitRepository names any more")
            }
            Err(e) => tracing::warn!(error = %e, "the mirror sweep failed"),
        }
    }
}
