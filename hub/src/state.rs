//! The state every connection shares: the config, the store, the fan-out, the metrics, the delivery
//! dedup, the agent slots, the webhook body budget, and the shutdown signal with the tracker that
//! drains sessions.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fanout::Fanout;
use crate::fleet::{Fleet, Sessions};
use crate::limits::{Limits, TokenBucket};
use crate::metrics::Metrics;
use crate::store::Store;
use crate::webhook::Dedup;

/// How long a redelivered webhook is recognised.
const DEDUP_WINDOW: Duration = Duration::from_secs(3600);
/// How many delivery ids are remembered.
const DEDUP_CAPACITY: usize = 10_000;

/// State shared by every connection.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) store: Store,
    pub(crate) fanout: Arc<Fanout>,
    /// The fleet view.
    pub(crate) fleet: Arc<Fleet>,
    /// Viewers' login sessions.
    pub(crate) sessions: Sessions,
    /// The agents by their token's hash.
    pub(crate) agent_index: crate::agents::AgentIndex,
    /// The other replicas, through Redis, when configured.
    pub(crate) replicas: Option<Arc<crate::replicas::Replicas>>,
    pub(crate) metrics: Metrics,
    pub(crate) dedup: Mutex<Dedup>,
    pub(crate) agent_slots: Arc<Semaphore>,
    /// Webhook body bytes that may be held at once.
    pub(crate) body_budget: Arc<Semaphore>,
    /// What each agent (by name) may still open and send.
    quotas: HashMap<String, Arc<AgentQuota>>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shared {
    /// The state for a hub serving `config`, with an opened store and registered metrics.
    pub(crate) fn new(config: Config, store: Store, metrics: Metrics) -> Shared {
        let now = Instant::now();
        let quotas = config
            .agents
            .iter()
            .map(|a| {
                (
                    a.name.clone(),
                    Arc::new(AgentQuota::new(&config.limits, now)),
                )
            })
            .collect();
        let names: Vec<String> = config.agents.iter().map(|a| a.name.clone()).collect();
        let fleet = Arc::new(Fleet::open(
            store.clone(),
            &names,
            config.limits.max_fleet_records_per_agent,
            metrics.clone(),
        ));
        let replicas = config.redis.clone().map(|r| {
            let peer = config.peers.as_ref().map(|p| p.advertise.clone());
            Arc::new(crate::replicas::Replicas::new(r, peer, metrics.clone()))
        });
        Shared {
            agent_index: crate::agents::AgentIndex::new(&config.agents),
            quotas,
            replicas,
            fleet,
            sessions: Sessions::default(),
            fanout: Fanout::new(metrics.clone()),
            agent_slots: Arc::new(Semaphore::new(config.limits.max_connections)),
            body_budget: Arc::new(Semaphore::new(config.limits.max_body_bytes_in_flight)),
            dedup: Mutex::new(Dedup::new(DEDUP_CAPACITY, DEDUP_WINDOW)),
            shutdown: CancellationToken::new(),
            tracker: TaskTracker::new(),
            store,
            metrics,
            config,
        }
    }

    /// The quota of the configured agent named `name`.
    pub(crate) fn quota(&self, name: &str) -> Option<Arc<AgentQuota>> {
        self.quotas.get(name).cloned()
    }
}

/// What one agent, over all its connections, may still open and send.
#[derive(Debug)]
pub(crate) struct AgentQuota {
    /// Its connections (`max_connections_per_agent`).
    pub(crate) connections: Arc<Semaphore>,
    /// Its watch updates (`watch_update_burst`, `watch_update_interval`).
    watch_updates: Mutex<TokenBucket>,
}

impl AgentQuota {
    fn new(limits: &Limits, now: Instant) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections_per_agent)),
            watch_updates: Mutex::new(TokenBucket::new(
                limits.watch_update_burst,
                limits.watch_update_interval,
                now,
            )),
        }
    }

    /// Spend one watch update now, or say when the next is allowed.
    pub(crate) fn take_watch_update(&self) -> Result<(), Instant> {
        let mut bucket = self.watch_updates.lock().unwrap_or_else(|e| e.into_inner());
        bucket.take(Instant::now())
    }
}
