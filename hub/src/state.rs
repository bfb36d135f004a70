//! The state every connection shares: the config, the store, the fan-out, the metrics, the delivery
//! dedup, the agent slots, the webhook body budget, and the shutdown signal with the tracker that
//! drains sessions.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::fanout::Fanout;
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
    pub(crate) metrics: Metrics,
    pub(crate) dedup: Mutex<Dedup>,
    pub(crate) agent_slots: Arc<Semaphore>,
    /// Webhook body bytes that may be held at once.
    pub(crate) body_budget: Arc<Semaphore>,
    pub(crate) shutdown: CancellationToken,
    pub(crate) tracker: TaskTracker,
}

impl Shared {
    /// The state for a hub serving `config`, with an opened store and registered metrics.
    pub(crate) fn new(config: Config, store: Store, metrics: Metrics) -> Shared {
        Shared {
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
}
