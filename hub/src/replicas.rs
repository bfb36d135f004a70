//! Several hub replicas behind one load balancer, sharing a Redis (`redis:` in the config).
//!
//! What they share:
//! - the latest push per repository (and per ref), read by every replica's catch-up: hashes
//!   `<prefix>latest` (repo key → push) and `<prefix>latest_ref` (repo key, NUL, ref → push);
//! - delivery dedup: `SET <prefix>delivery:<key> NX EX 3600`, so a redelivery that reaches another
//!   replica is still a duplicate;
//! - accepted pushes, published on the channel `<prefix>pushes`: every replica tells its own
//!   agents about pushes any replica accepted.
//!
//! Redis is a shared index, not the only copy. Each replica still keeps its embedded store and tells
//! its own agents at once; what it could not write to Redis waits in memory ([`Replicas::pending`])
//! and goes out, in order, as soon as Redis answers again. Meanwhile the replica reports itself
//! degraded (`/readyz` says so, `tether_hub_redis_up` is 0) but keeps serving: taking every replica
//! out of the load balancer because the shared index is away would stop all relaying instead of
//! some. A replica that has never reached Redis is not ready. After its subscription to the
//! channel was interrupted, a replica asks each of its agents' sessions to send a fresh catch-up,
//! which heals any notice the interruption lost.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use redis::FromRedisValue;
use redis::aio::ConnectionManager;
use redis::cluster_async::ClusterConnection;
use serde::{Deserialize, Serialize};
use tether_protocol::{Notice, RepoId, RepoState};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::RedisConfig;
use crate::metrics::Metrics;

/// Every Redis call is bounded by this; past it Redis counts as unreachable.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a delivery id is remembered across replicas.
const DEDUP_TTL_SECONDS: u64 = 3600;
/// How often Redis is checked while it answers, and retried while it does not.
const HEALTH_EVERY: Duration = Duration::from_secs(1);
/// At most this many accepted batches wait for Redis; older ones are dropped past it (counted).
const MAX_PENDING: usize = 100_000;
/// How long an entry of the registry (which replica holds which tunnel, where a replica listens)
/// lives unless refreshed.
const REGISTRY_TTL_SECONDS: u64 = 15;
/// How often a replica refreshes its registry entries.
pub(crate) const ANNOUNCE_EVERY: Duration = Duration::from_secs(5);

/// Pushes accepted by one replica, as published to the others.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Batch {
    /// The replica that accepted them.
    pub(crate) origin: String,
    /// One notice per repository and ref.
    pub(crate) notices: Vec<Notice>,
}

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl Conn {
    async fn query<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> redis::RedisResult<T> {
        match self {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        }
    }

    /// Run `cmds`, their answers ignored: as one pipeline on a single server; one by one on a
    /// cluster, which refuses a pipeline whose keys fall in different slots.
    async fn all(&self, cmds: &[redis::Cmd]) -> redis::RedisResult<()> {
        match self {
            Conn::Single(c) => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone()).ignore();
                }
                pipe.query_async(&mut c.clone()).await
            }
            Conn::Cluster(c) => {
                for cmd in cmds {
                    cmd.query_async::<redis::Value>(&mut c.clone()).await?;
                }
                Ok(())
            }
        }
    }
}

/// Why a Redis call gave no answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RedisUnavailable {
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {CALL_TIMEOUT:?}")]
    Timeout,
    #[error("Redis: {0}")]
    Failed(#[from] redis::RedisError),
}

/// This replica's link to the others.
pub(crate) struct Replicas {
    /// This replica's id, on what it publishes.
    pub(crate) id: String,
    config: RedisConfig,
    conn: RwLock<Option<Conn>>,
    up: AtomicBool,
    ever_up: AtomicBool,
    pending: Mutex<VecDeque<Batch>>,
    wake: Notify,
    metrics: Metrics,
    /// Where the other replicas reach this one's peer listener.
    peer_address: Option<String>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("id", &self.id)
            .field("up", &self.up.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What `/readyz` says.
pub(crate) enum Readiness {
    Ready,
    Degraded(String),
    NotReady(String),
}

impl Replicas {
    /// The link for `config`; it connects in [`Replicas::maintain`].
    pub(crate) fn new(
        config: RedisConfig,
        peer_address: Option<String>,
        metrics: Metrics,
    ) -> Replicas {
        let id = replica_id();
        Replicas {
            id,
            config,
            conn: RwLock::new(None),
            up: AtomicBool::new(false),
            ever_up: AtomicBool::new(false),
            pending: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
            metrics,
            peer_address,
        }
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.config.key_prefix)
    }

    fn conn(&self) -> Result<Conn, RedisUnavailable> {
        self.conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or(RedisUnavailable::NotConnected)
    }

    /// [`Replicas::call`] unless Redis is known to be away: then at once, so that a webhook or a
    /// catch-up does not wait a timeout on every call during an outage. Only the health check
    /// (in [`maintain`]) asks an absent Redis.
    async fn ask<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisUnavailable> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(RedisUnavailable::NotConnected);
        }
        self.call(cmd).await
    }

    async fn call<T: FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, RedisUnavailable> {
        let conn = self.conn()?;
        match tokio::time::timeout(CALL_TIMEOUT, conn.query(cmd)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                self.failed(&e);
                Err(e.into())
            }
            Err(_) => {
                // A slow answer (a busy replica, a reconnect storm) is not an outage: this
                // call falls back, and the health check decides whether Redis is away.
                Err(RedisUnavailable::Timeout)
            }
        }
    }

    /// Redis answered (the health check, or a subscription that came back).
    fn reached(&self) {
        if !self.up.swap(true, Ordering::Relaxed) {
            info!(replica = %self.id, "Redis reachable: sharing pushes with the other replicas");
        }
        self.ever_up.store(true, Ordering::Relaxed);
        self.metrics.redis_up.set(1);
    }

    /// A call failed: Redis counts as away only when the connection itself failed; the health
    /// check (PING, every second) decides otherwise.
    fn failed(&self, e: &redis::RedisError) {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            self.down(&e.to_string());
        }
    }

    fn down(&self, why: &str) {
        if self.up.swap(false, Ordering::Relaxed) {
            warn!(error = %why, "Redis unreachable: relaying to this replica's agents only until it answers");
        }
        self.metrics.redis_up.set(0);
    }

    /// What `/readyz` answers.
    pub(crate) fn readiness(&self) -> Readiness {
        let pending = self.pending.lock().map(|p| p.len()).unwrap_or(0);
        if !self.ever_up.load(Ordering::Relaxed) {
            Readiness::NotReady("waiting for Redis (never reached since start)".into())
        } else if !self.up.load(Ordering::Relaxed) {
            Readiness::Degraded(format!(
                "degraded: Redis unreachable; relaying to this replica's agents only, {pending} accepted push batch(es) waiting to be shared"
            ))
        } else {
            Readiness::Ready
        }
    }

    /// Whether this delivery is seen for the first time by any replica; `None` when Redis cannot
    /// say (the caller falls back to its own memory).
    pub(crate) async fn first_delivery(&self, key: &str) -> Option<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&format!("delivery:{key}")))
            .arg(&self.id)
            .arg("NX")
            .arg("EX")
            .arg(DEDUP_TTL_SECONDS);
        match self.ask::<Option<String>>(&cmd).await {
            Ok(set) => Some(set.is_some()),
            Err(e) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&["dedup"])
                    .inc();
                warn!(error = %e, "delivery dedup could not ask Redis; this replica's memory decides");
                None
            }
        }
    }

    /// Forget a delivery (its recording failed, so a redelivery must be accepted).
    pub(crate) async fn forget_delivery(&self, key: &str) {
        let mut cmd = redis::cmd("DEL");
        cmd.arg(self.key(&format!("delivery:{key}")));
        let _ = self.ask::<i64>(&cmd).await;
    }

    /// Share pushes this replica accepted (and already told its own agents about): record them as
    /// the latest and publish them. What cannot go out now waits, in order, for Redis.
    pub(crate) async fn share(&self, batch: Batch) {
        let queued = {
            let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            !p.is_empty()
        };
        // While Redis is away (or older batches still wait), a webhook does not wait on it.
        if queued || !self.up.load(Ordering::Relaxed) || self.send(&batch).await.is_err() {
            self.hold(batch);
        }
    }

    fn hold(&self, batch: Batch) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() >= MAX_PENDING {
            p.pop_front();
            self.metrics
                .redis_errors
                .with_label_values(&["pending_dropped"])
                .inc();
        }
        p.push_back(batch);
        self.metrics.redis_pending.set(p.len() as i64);
        drop(p);
        self.wake.notify_one();
    }

    async fn send(&self, batch: &Batch) -> Result<(), RedisUnavailable> {
        let conn = self.conn()?;
        let mut cmds = Vec::new();
        for n in &batch.notices {
            let state = serde_json::to_string(&n.state()).unwrap_or_default();
            let mut latest = redis::cmd("HSET");
            latest
                .arg(self.key("latest"))
                .arg(n.repo.key().as_str())
                .arg(&state);
            let mut by_ref = redis::cmd("HSET");
            by_ref
                .arg(self.key("latest_ref"))
                .arg(format!("{}\0{}", n.repo.key().as_str(), n.git_ref))
                .arg(&state);
            cmds.push(latest);
            cmds.push(by_ref);
        }
        let sent = async {
            // A cluster keeps each hash on one node and publishes on all of them.
            conn.all(&cmds).await?;
            let mut publish = redis::cmd("PUBLISH");
            publish
                .arg(self.key("pushes"))
                .arg(serde_json::to_string(batch).unwrap_or_default());
            conn.query::<i64>(&publish).await.map(|_| ())
        };
        match tokio::time::timeout(CALL_TIMEOUT, sent).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&["share"])
                    .inc();
                self.failed(&e);
                Err(e.into())
            }
            Err(_) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&["share"])
                    .inc();
                // A slow answer (a busy replica, a reconnect storm) is not an outage: this
                // call falls back, and the health check decides whether Redis is away.
                Err(RedisUnavailable::Timeout)
            }
        }
    }

    /// Send what waits, oldest first, until it is all out or Redis fails again.
    async fn flush_pending(&self) {
        loop {
            let next = {
                let p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
                p.front().cloned()
            };
            let Some(batch) = next else { return };
            if self.send(&batch).await.is_err() {
                return;
            }
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            p.pop_front();
            self.metrics.redis_pending.set(p.len() as i64);
        }
    }

    /// Record that this replica holds a tunnel of `agent` (refreshed every [`ANNOUNCE_EVERY`]).
    pub(crate) async fn announce_tunnel(&self, agent: &str) {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(&format!("tunnel:{agent}")))
            .arg(&self.id)
            .arg("EX")
            .arg(REGISTRY_TTL_SECONDS);
        let _ = self.ask::<String>(&cmd).await;
    }

    /// Forget that this replica holds a tunnel of `agent`, unless another replica took it since.
    pub(crate) async fn retract_tunnel(&self, agent: &str) {
        let key = self.key(&format!("tunnel:{agent}"));
        let mut get = redis::cmd("GET");
        get.arg(&key);
        if let Ok(Some(holder)) = self.ask::<Option<String>>(&get).await
            && holder == self.id
        {
            let mut del = redis::cmd("DEL");
            del.arg(&key);
            let _ = self.ask::<i64>(&del).await;
        }
    }

    /// The peer address of the other replica holding a tunnel of `agent`, if any.
    pub(crate) async fn tunnel_peer(&self, agent: &str) -> Option<String> {
        let mut get = redis::cmd("GET");
        get.arg(self.key(&format!("tunnel:{agent}")));
        let holder = self.ask::<Option<String>>(&get).await.ok()??;
        if holder == self.id {
            return None;
        }
        let mut address = redis::cmd("GET");
        address.arg(self.key(&format!("replica:{holder}")));
        self.ask::<Option<String>>(&address).await.ok()?
    }

    /// Mark `agents` as held by this replica, and seen now.
    pub(crate) async fn announce_agents(&self, agents: &[String]) {
        if agents.is_empty() {
            return;
        }
        let now = tether_protocol::unix_ms();
        let mut cmds = Vec::new();
        for agent in agents {
            let mut set = redis::cmd("SET");
            set.arg(self.key(&format!("agent:{agent}")))
                .arg(&self.id)
                .arg("EX")
                .arg(REGISTRY_TTL_SECONDS);
            let mut seen = redis::cmd("HSET");
            seen.arg(self.key("fleet_seen")).arg(agent).arg(now);
            cmds.push(set);
            cmds.push(seen);
        }
        let _ = self.run_all(&cmds, "fleet").await;
    }

    /// Which replica holds each of `agents` (`None` for one no replica holds); `None` when Redis
    /// cannot say.
    pub(crate) async fn agent_holders(&self, agents: &[String]) -> Option<Vec<Option<String>>> {
        if agents.is_empty() {
            return Some(Vec::new());
        }
        let mut cmd = redis::cmd("MGET");
        for agent in agents {
            cmd.arg(self.key(&format!("agent:{agent}")));
        }
        // In a cluster the keys live on several nodes: ask one at a time there.
        if self.config.cluster {
            let mut out = Vec::with_capacity(agents.len());
            for agent in agents {
                out.push(self.agent_holder(agent).await);
            }
            return Some(out);
        }
        self.ask::<Vec<Option<String>>>(&cmd).await.ok()
    }

    /// Which replica holds `agent`.
    pub(crate) async fn agent_holder(&self, agent: &str) -> Option<String> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.key(&format!("agent:{agent}")));
        self.ask::<Option<String>>(&cmd).await.ok().flatten()
    }

    /// When each of `agents` was last seen by the replica that held it.
    pub(crate) async fn fleet_seen(&self, agents: &[String]) -> Option<Vec<Option<u64>>> {
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("fleet_seen")).arg(agents);
        self.ask::<Vec<Option<u64>>>(&cmd).await.ok()
    }

    /// Write an agent's fleet record and announce it with `changed`.
    pub(crate) async fn write_fleet(&self, agent: &str, record: &[u8], changed: &str) {
        let mut write = redis::cmd("HSET");
        write.arg(self.key("fleet")).arg(agent).arg(record);
        let mut publish = redis::cmd("PUBLISH");
        publish.arg(self.key("fleet")).arg(changed);
        let _ = self.run_all(&[write, publish], "fleet").await;
    }

    /// An agent's fleet record as a replica last wrote it.
    pub(crate) async fn read_fleet(&self, agent: &str) -> Option<Vec<u8>> {
        let mut cmd = redis::cmd("HGET");
        cmd.arg(self.key("fleet")).arg(agent);
        self.ask::<Option<Vec<u8>>>(&cmd).await.ok().flatten()
    }

    /// The channel fleet changes are announced on.
    pub(crate) fn fleet_channel(&self) -> String {
        self.key("fleet")
    }

    async fn run_all(&self, cmds: &[redis::Cmd], op: &str) -> Result<(), RedisUnavailable> {
        if !self.up.load(Ordering::Relaxed) {
            return Err(RedisUnavailable::NotConnected);
        }
        let conn = self.conn()?;
        match tokio::time::timeout(CALL_TIMEOUT, conn.all(cmds)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                self.failed(&e);
                Err(e.into())
            }
            Err(_) => {
                self.metrics.redis_errors.with_label_values(&[op]).inc();
                // A slow answer (a busy replica, a reconnect storm) is not an outage: this
                // call falls back, and the health check decides whether Redis is away.
                Err(RedisUnavailable::Timeout)
            }
        }
    }

    /// Record where this replica's peer listener is.
    async fn announce_peer(&self) {
        if let Some(address) = &self.peer_address {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(&format!("replica:{}", self.id)))
                .arg(address)
                .arg("EX")
                .arg(REGISTRY_TTL_SECONDS);
            let _ = self.ask::<String>(&cmd).await;
        }
    }

    /// The latest push recorded in Redis for each of `repos`; `None` when Redis cannot say.
    pub(crate) async fn latest(&self, repos: &[RepoId]) -> Option<Vec<RepoState>> {
        if repos.is_empty() {
            return Some(Vec::new());
        }
        let mut keys: Vec<String> = repos.iter().map(|r| r.key().as_str().to_string()).collect();
        keys.sort();
        keys.dedup();
        let mut cmd = redis::cmd("HMGET");
        cmd.arg(self.key("latest")).arg(&keys);
        match self.ask::<Vec<Option<String>>>(&cmd).await {
            Ok(values) => Some(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str(&v).ok())
                    .collect(),
            ),
            Err(e) => {
                self.metrics
                    .redis_errors
                    .with_label_values(&["catchup"])
                    .inc();
                warn!(error = %e, "catch-up could not read Redis; this replica's store answers");
                None
            }
        }
    }

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        let urls = self.config.urls();
        if self.config.cluster {
            let client = redis::cluster::ClusterClientBuilder::new(urls)
                .connection_timeout(CALL_TIMEOUT)
                .response_timeout(CALL_TIMEOUT)
                .build()?;
            Ok(Conn::Cluster(client.get_async_connection().await?))
        } else {
            let client = redis::Client::open(urls.first().map(String::as_str).unwrap_or(""))?;
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CALL_TIMEOUT))
                .set_response_timeout(Some(CALL_TIMEOUT))
                .set_max_delay(Duration::from_secs(2));
            Ok(Conn::Single(
                ConnectionManager::new_with_config(client, config).await?,
            ))
        }
    }
}

/// A name for this replica: the pod's name when the chart sets it, else the host's, with the pid.
fn replica_id() -> String {
    let host = std::env::var("POD_NAME")
        .ok()
        .filter(|n| !n.is_empty())
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| "hub".into());
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Keep the link to Redis: connect (retrying), check it every second, and send what waits
/// whenever it answers, until `shutdown`.
pub(crate) async fn maintain(replicas: Arc<Replicas>, shutdown: CancellationToken) {
    let mut last_announce = std::time::Instant::now() - ANNOUNCE_EVERY;
    loop {
        let connected = replicas
            .conn
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some();
        if !connected {
            match tokio::time::timeout(CALL_TIMEOUT * 3, replicas.connect()).await {
                Ok(Ok(conn)) => {
                    *replicas.conn.write().unwrap_or_else(|e| e.into_inner()) = Some(conn);
                }
                Ok(Err(e)) => replicas.down(&e.to_string()),
                Err(_) => replicas.down("connect timeout"),
            }
        }
        if replicas.conn().is_ok() {
            let ping = replicas.call::<String>(&redis::cmd("PING")).await;
            if ping.is_ok() {
                replicas.reached();
                replicas.flush_pending().await;
                if last_announce.elapsed() >= ANNOUNCE_EVERY {
                    replicas.announce_peer().await;
                    last_announce = std::time::Instant::now();
                }
            } else {
                replicas.down("no answer to PING");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HEALTH_EVERY) => {}
            () = replicas.wake.notified() => {}
        }
    }
}

/// Hear the pushes other replicas accepted and hand each to `deliver`; after any interruption of
/// the subscription, call `resync` so that agents catch up on what it lost. Until `shutdown`.
pub(crate) async fn subscribe(
    replicas: Arc<Replicas>,
    deliver: impl Fn(Batch) + Send + Sync,
    fleet_changed: impl Fn(String) + Send + Sync,
    resync: impl Fn() + Send + Sync,
    shutdown: CancellationToken,
) {
    let channel = replicas.key("pushes");
    let fleet_channel = replicas.fleet_channel();
    let urls = replicas.config.urls();
    let mut attempt: usize = 0;
    let mut interrupted = false;
    loop {
        let url = urls[attempt % urls.len().max(1)].clone();
        attempt += 1;
        let subscribed = async {
            let client = redis::Client::open(url.as_str())?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(&channel).await?;
            pubsub.subscribe(&fleet_channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = match tokio::time::timeout(CALL_TIMEOUT * 3, subscribed).await {
            Ok(Ok(p)) => Some(p),
            Ok(Err(e)) => {
                warn!(error = %e, "could not subscribe to the other replicas' pushes; retrying");
                None
            }
            Err(_) => None,
        };
        if let Some(pubsub) = pubsub {
            if interrupted {
                info!(
                    "subscribed again to the other replicas' pushes; agents catch up on what was missed"
                );
                // The subscription is proof that Redis answers: the catch-ups below must read it
                // rather than fall back, or a push another replica shared just before this one
                // subscribed again would be missed. The health check also sends what waits here.
                replicas.reached();
                replicas.wake.notify_one();
                resync();
            }
            interrupted = true;
            let mut messages = pubsub.into_on_message();
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    message = messages.next() => {
                        let Some(message) = message else { break };
                        let Ok(payload) = message.get_payload::<String>() else { continue };
                        if message.get_channel_name() == fleet_channel {
                            fleet_changed(payload);
                            continue;
                        }
                        match serde_json::from_str::<Batch>(&payload) {
                            Ok(batch) if batch.origin != replicas.id => deliver(batch),
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "an unreadable push batch from another replica was ignored"),
                        }
                    }
                }
            }
            warn!("the subscription to the other replicas' pushes ended; reconnecting");
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(HEALTH_EVERY) => {}
        }
    }
}
