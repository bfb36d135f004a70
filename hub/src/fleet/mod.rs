//! The fleet view: what each agent's cluster has applied, from the records its operator reports over
//! the push channel (`--hub-report-status`), beside the latest push the hub saw per repository and
//! ref. Nothing here reaches into a cluster: it is only what operators chose to tell.
//!
//! [`Fleet`] holds, per configured agent, its connection state, when it was last heard from, its
//! operator's version and its latest records. Changes bump a version that page and event stream
//! subscribers watch; a flusher writes changed agents to the store about once a second, so the
//! view (and when each cluster went away) survives a restart of the hub.
//!
//! With replicas, each replica writes the agents it holds to Redis too and says so on a channel;
//! the others keep what they read there for the agents they do not hold (`shared`), so every
//! replica shows the whole fleet.
//!
//! The parts: `view` (the JSON shape and its filters), `auth` (viewer tokens and login sessions),
//! `web` (the routes, the page and the event stream), `shared` (the fleet across replicas).

mod auth;
mod shared;
mod view;
mod web;

pub(crate) use shared::{heard, share};

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tether_protocol::{FleetName, FleetRecord, RepoState};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub(crate) use auth::{Sessions, ViewerConfig};
pub use view::{
    ClusterView, Counts, Deployment, Filter, FleetView, PushView, RepoView, Rows, State,
};
pub(crate) use web::router;

use crate::metrics::Metrics;
use crate::store::Store;

/// How often changed agents are written to the store.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// What the hub knows of one agent.
#[derive(Debug, Clone, Default)]
struct Agent {
    /// When it last connected or went away (ms since the epoch); `None`: never seen.
    since: Option<u64>,
    /// When anything last arrived from it.
    last_seen: Option<u64>,
    operator_version: Option<String>,
    /// Its records by namespace and name.
    records: BTreeMap<FleetName, FleetRecord>,
    /// How many of its connections are open now (not stored: after a restart, none is).
    connections: u32,
}

/// An [`Agent`] as the store keeps it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Stored {
    since: Option<u64>,
    last_seen: Option<u64>,
    operator_version: Option<String>,
    records: Vec<FleetRecord>,
}

impl Agent {
    fn stored(&self) -> Stored {
        Stored {
            since: self.since,
            last_seen: self.last_seen,
            operator_version: self.operator_version.clone(),
            records: self.records.values().cloned().collect(),
        }
    }

    /// The agent a stored record describes: away since it was last heard from.
    fn from_stored(s: Stored) -> Agent {
        Agent {
            since: s.last_seen.or(s.since),
            last_seen: s.last_seen,
            operator_version: s.operator_version,
            records: s.records.into_iter().map(|r| (r.key(), r)).collect(),
            connections: 0,
        }
    }
}

/// What another replica said of an agent it holds (or held).
#[derive(Debug, Clone, Default)]
struct Remote {
    agent: Agent,
    /// Whether some replica holds the agent's connection now.
    connected: bool,
}

#[derive(Debug, Default)]
struct Inner {
    agents: BTreeMap<String, Agent>,
    /// With replicas: the agents as the others last wrote them.
    remote: BTreeMap<String, Remote>,
    /// The latest push per repository and ref.
    pushes: view::Pushes,
    /// Agents changed since the last flush.
    dirty: std::collections::BTreeSet<String>,
}

/// A refusal of a report, said back to the agent.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct ReportRefused(String);

/// The fleet view's state. Shared by every connection.
#[derive(Debug)]
pub(crate) struct Fleet {
    inner: Mutex<Inner>,
    version: watch::Sender<u64>,
    store: Store,
    metrics: Metrics,
    max_records: usize,
}

impl Fleet {
    /// The fleet of the configured `agents`, as the store last recorded it: every agent counts as
    /// away (since it was last heard from) until it connects again.
    pub(crate) fn open(
        store: Store,
        agents: &[String],
        max_records: usize,
        metrics: Metrics,
    ) -> Fleet {
        let mut inner = Inner::default();
        for name in agents {
            inner.agents.insert(name.clone(), Agent::default());
        }
        match store.fleet_agents() {
            Ok(stored) => {
                for (name, bytes) in stored {
                    let Some(slot) = inner.agents.get_mut(&name) else {
                        // No longer configured: forgotten at the first flush.
                        inner.dirty.insert(name);
                        continue;
                    };
                    match serde_json::from_slice::<Stored>(&bytes) {
                        Ok(stored) => *slot = Agent::from_stored(stored),
                        Err(e) => {
                            warn!(agent = %name, error = %e, "a stored fleet record is unreadable; it starts empty")
                        }
                    }
                }
            }
            Err(e) => {
                warn!(error = %e, category = e.category(), "the fleet records could not be read; the view starts empty")
            }
        }
        match store.latest_per_ref() {
            Ok(states) => {
                for state in states {
                    inner
                        .pushes
                        .entry(state.repo.key())
                        .or_default()
                        .insert(state.git_ref.clone(), state);
                }
            }
            Err(e) => {
                warn!(error = %e, category = e.category(), "the latest pushes per ref could not be read")
            }
        }
        let fleet = Fleet {
            inner: Mutex::new(inner),
            version: watch::Sender::new(0),
            store,
            metrics,
            max_records,
        };
        fleet.count();
        fleet
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self, inner: &mut Inner, agent: Option<&str>) {
        if let Some(agent) = agent
            && !inner.dirty.contains(agent)
        {
            inner.dirty.insert(agent.to_string());
        }
        self.version.send_modify(|v| *v += 1);
    }

    /// A connection of `agent` opened.
    pub(crate) fn connected(&self, agent: &str) {
        let mut inner = self.lock();
        let now = tether_protocol::unix_ms();
        let Some(a) = inner.agents.get_mut(agent) else {
            return;
        };
        a.connections += 1;
        a.last_seen = Some(now);
        if a.connections == 1 {
            a.since = Some(now);
        }
        self.changed(&mut inner, Some(agent));
    }

    /// A connection of `agent` closed.
    pub(crate) fn disconnected(&self, agent: &str) {
        let mut inner = self.lock();
        let now = tether_protocol::unix_ms();
        let Some(a) = inner.agents.get_mut(agent) else {
            return;
        };
        a.connections = a.connections.saturating_sub(1);
        a.last_seen = Some(now);
        if a.connections == 0 {
            a.since = Some(now);
        }
        self.changed(&mut inner, Some(agent));
    }

    /// Something arrived from `agent`. Not a change of the view by itself: it is written with
    /// the next change, or when the agent goes away.
    pub(crate) fn seen(&self, agent: &str) {
        if let Some(a) = self.lock().agents.get_mut(agent) {
            a.last_seen = Some(tether_protocol::unix_ms());
        }
    }

    /// Apply one report of `agent`.
    pub(crate) fn report(
        &self,
        agent: &str,
        reset: bool,
        operator_version: Option<String>,
        records: Vec<FleetRecord>,
        removed: Vec<FleetName>,
    ) -> Result<(), ReportRefused> {
        let mut inner = self.lock();
        let Some(a) = inner.agents.get_mut(agent) else {
            return Err(ReportRefused(format!("agent {agent:?} is not configured")));
        };
        if reset {
            a.records.clear();
        }
        if let Some(mut version) = operator_version {
            tether_protocol::cut(&mut version, tether_protocol::MAX_RECORD_FIELD_BYTES);
            a.operator_version = Some(version);
        }
        for name in &removed {
            a.records.remove(name);
        }
        let mut refused = 0;
        for record in records {
            let record = record.bounded();
            let key = record.key();
            if a.records.len() >= self.max_records && !a.records.contains_key(&key) {
                refused += 1;
                continue;
            }
            a.records.insert(key, record);
        }
        a.last_seen = Some(tether_protocol::unix_ms());
        self.changed(&mut inner, Some(agent));
        if refused > 0 {
            return Err(ReportRefused(format!(
                "{refused} record(s) were not kept: this hub keeps at most {} per agent (max_fleet_records_per_agent)",
                self.max_records
            )));
        }
        Ok(())
    }

    /// Pushes the hub accepted (already in the store).
    pub(crate) fn pushed(&self, states: &[RepoState]) {
        let mut inner = self.lock();
        for state in states {
            let by_ref = inner.pushes.entry(state.repo.key()).or_default();
            let newer = by_ref
                .get(&state.git_ref)
                .is_some_and(|old| old.received_at > state.received_at);
            if !newer {
                by_ref.insert(state.git_ref.clone(), state.clone());
            }
        }
        self.changed(&mut inner, None);
    }

    /// The view now, filtered, listing the deployments `rows` asks for.
    pub fn view(&self, filter: &Filter, rows: Rows) -> FleetView {
        let inner = self.lock();
        let agents = inner.agents.iter().map(|(name, local)| {
            // An agent held here is as this replica knows it; one held elsewhere (or last seen
            // elsewhere) as the other replica wrote it.
            match inner.remote.get(name) {
                Some(r)
                    if local.connections == 0
                        && (r.connected || r.agent.last_seen > local.last_seen) =>
                {
                    (name.as_str(), r.connected, &r.agent)
                }
                _ => (name.as_str(), local.connections > 0, local),
            }
        });
        view::build(
            agents,
            &inner.pushes,
            filter,
            rows,
            tether_protocol::unix_ms(),
        )
    }

    /// The agents connected to this replica.
    pub(crate) fn held_here(&self) -> Vec<String> {
        self.lock()
            .agents
            .iter()
            .filter(|(_, a)| a.connections > 0)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// What another replica wrote of `name` (`None`: nothing), and whether a replica holds it now.
    fn set_remote(&self, name: &str, stored: Option<Stored>, connected: bool) {
        let mut inner = self.lock();
        if !inner.agents.contains_key(name) {
            return;
        }
        let before = inner
            .remote
            .get(name)
            .map(|r| (r.connected, r.agent.last_seen, r.agent.records.len()));
        match stored {
            Some(s) => {
                inner.remote.insert(
                    name.to_string(),
                    Remote {
                        agent: Agent::from_stored(s),
                        connected,
                    },
                );
            }
            None => {
                if let Some(r) = inner.remote.get_mut(name) {
                    r.connected = connected;
                }
            }
        }
        let after = inner
            .remote
            .get(name)
            .map(|r| (r.connected, r.agent.last_seen, r.agent.records.len()));
        if before != after {
            self.changed(&mut inner, None);
        }
    }

    /// Whether another replica holds `name` now, and since when it was last seen.
    fn set_remote_presence(&self, name: &str, connected: bool, last_seen: Option<u64>) {
        let mut inner = self.lock();
        let Some(r) = inner.remote.get_mut(name) else {
            return;
        };
        let changed = r.connected != connected;
        r.connected = connected;
        if let Some(seen) = last_seen {
            r.agent.last_seen = Some(seen);
            if changed {
                r.agent.since = Some(seen);
            }
        }
        if changed {
            self.changed(&mut inner, None);
        }
    }

    /// The configured agents' names.
    pub(crate) fn cluster_names(&self) -> Vec<String> {
        self.lock().agents.keys().cloned().collect()
    }

    /// A receiver that changes whenever the view does.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.version.subscribe()
    }

    /// Set the fleet gauges from the view.
    fn count(&self) {
        let view = self.view(
            &Filter::default(),
            Rows::AtMost {
                max: 0,
                attention: true,
            },
        );
        let connected = view.clusters.iter().filter(|c| c.connected).count();
        let m = &self.metrics;
        m.fleet_clusters
            .with_label_values(&["connected"])
            .set(connected as i64);
        m.fleet_clusters
            .with_label_values(&["disconnected"])
            .set((view.clusters.len() - connected) as i64);
        let mut totals = Counts::default();
        for c in &view.clusters {
            totals.add(&c.repos);
        }
        for (state, n) in totals.by_state() {
            m.fleet_repos.with_label_values(&[state]).set(n as i64);
        }
    }

    /// Write the agents changed since the last call; returns what was written.
    fn flush(&self) -> Vec<(String, Option<Vec<u8>>)> {
        let batch: Vec<(String, Option<Vec<u8>>)> = {
            let mut inner = self.lock();
            let dirty = std::mem::take(&mut inner.dirty);
            let mut batch = Vec::new();
            for name in dirty {
                match inner
                    .agents
                    .get(&name)
                    .map(|a| serde_json::to_vec(&a.stored()))
                {
                    Some(Ok(bytes)) => batch.push((name, Some(bytes))),
                    // Only strings and numbers: this does not happen; the old record stays.
                    Some(Err(e)) => {
                        warn!(agent = %name, error = %e, "a fleet record could not be encoded")
                    }
                    // No longer configured.
                    None => batch.push((name, None)),
                }
            }
            batch
        };
        if batch.is_empty() {
            return batch;
        }
        if let Err(e) = self.store.put_fleet_agents(&batch) {
            warn!(error = %e, category = e.category(), "could not write the fleet records; retried with the next change");
            let mut inner = self.lock();
            for (name, _) in &batch {
                inner.dirty.insert(name.clone());
            }
        }
        batch
    }
}

/// Write changed agents to the store about once a second, and set the fleet gauges, until
/// `shutdown`; then a last time.
pub(crate) async fn flusher(
    fleet: std::sync::Arc<Fleet>,
    replicas: Option<std::sync::Arc<crate::replicas::Replicas>>,
    shutdown: CancellationToken,
) {
    let mut version = fleet.subscribe();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            changed = version.changed() => if changed.is_err() { break },
        }
        tokio::select! {
            () = shutdown.cancelled() => break,
            () = tokio::time::sleep(FLUSH_EVERY) => {}
        }
        version.mark_unchanged();
        let f = std::sync::Arc::clone(&fleet);
        let written = tokio::task::spawn_blocking(move || {
            let written = f.flush();
            f.count();
            written
        })
        .await
        .unwrap_or_default();
        if let Some(replicas) = &replicas {
            shared::publish(&fleet, replicas, written).await;
        }
    }
    let f = std::sync::Arc::clone(&fleet);
    let _ = tokio::task::spawn_blocking(move || f.flush()).await;
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    pub(super) fn record(ns: &str, name: &str, applied: &str, ready: &str) -> FleetRecord {
        FleetRecord {
            namespace: ns.into(),
            name: name.into(),
            repo: tether_protocol::normalize("https://git.example/org/config").unwrap(),
            git_ref: "refs/heads/main".into(),
            applied: Some(applied.into()),
            attempted: Some(applied.into()),
            ready: ready.into(),
            reason: if ready == "True" {
                "Succeeded".into()
            } else {
                "ApplyFailed".into()
            },
            message: String::new(),
            changed_at: Some(1),
            push_latency_ms: None,
        }
    }

    fn fleet(dir: &std::path::Path, max: usize) -> Fleet {
        Fleet::open(
            Store::open(dir).unwrap(),
            &["east".into(), "west".into()],
            max,
            Metrics::new().unwrap(),
        )
    }

    #[test]
    fn reports_replace_or_amend_and_survive_a_restart_as_disconnected() {
        let dir = tempfile::tempdir().unwrap();
        {
            let f = fleet(dir.path(), 10);
            f.connected("east");
            f.report(
                "east",
                true,
                Some("1.2.3".into()),
                vec![
                    record("a", "one", "s1", "True"),
                    record("a", "two", "s1", "True"),
                ],
                vec![],
            )
            .unwrap();
            f.report(
                "east",
                false,
                None,
                vec![record("a", "one", "s2", "True")],
                vec![FleetName {
                    namespace: "a".into(),
                    name: "two".into(),
                }],
            )
            .unwrap();
            let view = f.view(&Filter::default(), Rows::All);
            let east = &view.clusters[0];
            assert_eq!((east.name.as_str(), east.connected), ("east", true));
            assert_eq!(east.operator_version.as_deref(), Some("1.2.3"));
            assert_eq!(east.repos.total, 1);
            assert!(!view.clusters[1].connected);
            assert_eq!(view.clusters[1].since, None, "west was never seen");
            assert_eq!(f.flush().len(), 1);
        }
        let f = fleet(dir.path(), 10);
        let view = f.view(&Filter::default(), Rows::All);
        let east = &view.clusters[0];
        assert!(!east.connected);
        assert!(east.since.is_some());
        assert_eq!(view.repos[0].deployments[0].applied.as_deref(), Some("s2"));
        // A reset replaces everything.
        f.report("east", true, None, vec![], vec![]).unwrap();
        assert_eq!(f.view(&Filter::default(), Rows::All).repos.len(), 0);
    }

    #[test]
    fn an_agent_keeps_at_most_its_limit_of_records() {
        let dir = tempfile::tempdir().unwrap();
        let f = fleet(dir.path(), 2);
        let records = (0..3)
            .map(|i| record("a", &format!("r{i}"), "s", "True"))
            .collect();
        let err = f.report("east", true, None, records, vec![]).unwrap_err();
        assert!(err.to_string().contains("at most 2"), "{err}");
        assert_eq!(
            f.view(&Filter::default(), Rows::All).clusters[0]
                .repos
                .total,
            2
        );
        // Changing a kept record is still allowed.
        f.report(
            "east",
            false,
            None,
            vec![record("a", "r0", "s9", "True")],
            vec![],
        )
        .unwrap();
        assert!(f.report("nobody", true, None, vec![], vec![]).is_err());
    }
}
