//! Fan-out: which connected agent watches which repository, and each agent's outbox.
//!
//! Publishing never waits on an agent. Each agent has an [`Outbox`] holding at most one pending notice
//! per repository: a newer notice for a repository replaces the pending one (latest wins), so the queue
//! is bounded by the agent's watch set (itself capped) and a slow agent only delays itself. Notices are
//! triggers; the agent resolves refs itself, so a replaced notice loses nothing.
//!
//! Repositories are matched on their [`RepoKey`] (letter case folded), as forges match names: an agent
//! watching `Ops/Config` hears a webhook for `ops/config`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use tether_protocol::{Notice, RepoId, RepoKey};
use tokio::sync::Notify;

use crate::metrics::Metrics;

/// One agent's pending notices.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Mutex<Pending>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    order: VecDeque<RepoKey>,
    by_repo: HashMap<RepoKey, (Notice, Instant)>,
}

impl Outbox {
    /// Queue a notice; returns true if it replaced a pending one for the same repository.
    pub fn push(&self, notice: Notice, received: Instant) -> bool {
        let coalesced = {
            let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let repo = notice.repo.key();
            match p.by_repo.insert(repo.clone(), (notice, received)) {
                Some(_) => true,
                None => {
                    p.order.push_back(repo);
                    false
                }
            }
        };
        self.ready.notify_one();
        coalesced
    }

    /// Take every pending notice, oldest repository first.
    pub fn drain(&self) -> Vec<(Notice, Instant)> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let Pending { order, by_repo } = &mut *p;
        order.drain(..).filter_map(|r| by_repo.remove(&r)).collect()
    }

    /// Wait until something may be pending.
    pub async fn ready(&self) {
        self.ready.notified().await;
    }

    /// Drop pending notices for repositories no longer watched.
    fn retain(&self, watched: &HashSet<RepoKey>) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        p.by_repo.retain(|r, _| watched.contains(r));
        let Pending { order, by_repo } = &mut *p;
        order.retain(|r| by_repo.contains_key(r));
    }
}

/// The subscription index: repository → the outboxes of the agents watching it.
#[derive(Debug)]
pub struct Fanout {
    index: RwLock<HashMap<RepoKey, HashMap<u64, Arc<Outbox>>>>,
    next_id: AtomicU64,
    metrics: Metrics,
    /// Bumped when every agent should be sent a fresh catch-up (notices may have been lost).
    resync: tokio::sync::watch::Sender<u64>,
}

/// One connected agent's place in the index; leaving it (drop) removes the agent everywhere.
#[derive(Debug)]
pub struct Subscription {
    fanout: Arc<Fanout>,
    id: u64,
    outbox: Arc<Outbox>,
    watched: HashSet<RepoKey>,
    /// The watch set as the agent spelled it.
    repos: Vec<RepoId>,
}

impl Fanout {
    /// An empty index.
    pub fn new(metrics: Metrics) -> Arc<Self> {
        Arc::new(Self {
            index: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
            resync: tokio::sync::watch::Sender::new(0),
        })
    }

    /// Ask every connected agent's session to send a fresh catch-up.
    pub fn resync(&self) {
        self.resync.send_modify(|n| *n += 1);
    }

    /// Changes whenever [`Fanout::resync`] is called.
    pub fn resyncs(&self) -> tokio::sync::watch::Receiver<u64> {
        self.resync.subscribe()
    }

    /// Register a connected agent with an empty watch set.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription {
            fanout: Arc::clone(self),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            outbox: Arc::new(Outbox::default()),
            watched: HashSet::new(),
            repos: Vec::new(),
        }
    }

    /// Queue a notice for every agent watching its repository; returns how many.
    pub fn publish(&self, notice: &Notice, received: Instant) -> usize {
        let targets: Vec<Arc<Outbox>> = {
            let index = self.index.read().unwrap_or_else(|e| e.into_inner());
            match index.get(&notice.repo.key()) {
                Some(subs) => subs.values().cloned().collect(),
                None => return 0,
            }
        };
        for outbox in &targets {
            if outbox.push(notice.clone(), received) {
                self.metrics.notices_coalesced.inc();
            }
        }
        targets.len()
    }

    /// Agents currently watching `repo`.
    #[cfg(test)]
    fn watchers(&self, repo: &RepoId) -> usize {
        let index = self.index.read().unwrap_or_else(|e| e.into_inner());
        index.get(&repo.key()).map_or(0, HashMap::len)
    }
}

impl Subscription {
    /// Replace the watch set.
    pub fn set_watch(&mut self, repos: HashSet<RepoId>) {
        self.repos = repos.iter().cloned().collect();
        let repos: HashSet<RepoKey> = repos.iter().map(RepoId::key).collect();
        {
            let mut index = self.fanout.index.write().unwrap_or_else(|e| e.into_inner());
            for gone in self.watched.difference(&repos) {
                if let Some(subs) = index.get_mut(gone) {
                    subs.remove(&self.id);
                    if subs.is_empty() {
                        index.remove(gone);
                    }
                }
            }
            for new in repos.difference(&self.watched) {
                index
                    .entry(new.clone())
                    .or_default()
                    .insert(self.id, Arc::clone(&self.outbox));
            }
        }
        self.outbox.retain(&repos);
        self.watched = repos;
    }

    /// The watched repositories, as the agent spelled them.
    pub fn repos(&self) -> &[RepoId] {
        &self.repos
    }

    /// This agent's outbox.
    #[cfg(test)]
    fn outbox(&self) -> &Outbox {
        &self.outbox
    }

    /// A shared handle on this agent's outbox, to wait on while the subscription is borrowed.
    pub fn outbox_handle(&self) -> Arc<Outbox> {
        Arc::clone(&self.outbox)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.set_watch(HashSet::new());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn notice(repo: &str, sha: &str) -> Notice {
        Notice {
            repo: tether_protocol::normalize(repo).unwrap(),
            git_ref: "refs/heads/main".into(),
            sha: sha.into(),
            delivery: "d".into(),
            received_at: 0,
        }
    }

    fn set(repos: &[&str]) -> HashSet<RepoId> {
        repos
            .iter()
            .map(|r| tether_protocol::normalize(r).unwrap())
            .collect()
    }

    #[test]
    fn a_slow_agent_keeps_only_the_latest_notice_per_repo() {
        let fanout = Fanout::new(Metrics::new().unwrap());
        let mut sub = fanout.subscribe();
        sub.set_watch(set(&["h/a", "h/b"]));
        let now = Instant::now();
        for i in 0..1000 {
            fanout.publish(&notice("h/a", &format!("a{i}")), now);
        }
        fanout.publish(&notice("h/b", "b"), now);
        let drained = sub.outbox().drain();
        let shas: Vec<_> = drained.iter().map(|(n, _)| n.sha.as_str()).collect();
        assert_eq!(shas, vec!["a999", "b"]);
        assert!(sub.outbox().drain().is_empty());
    }

    #[test]
    fn only_watchers_receive_and_leaving_unsubscribes() {
        let fanout = Fanout::new(Metrics::new().unwrap());
        let mut a = fanout.subscribe();
        let mut b = fanout.subscribe();
        a.set_watch(set(&["h/a"]));
        b.set_watch(set(&["h/b"]));
        assert_eq!(fanout.publish(&notice("h/a", "1"), Instant::now()), 1);
        assert_eq!(b.outbox().drain().len(), 0);
        assert_eq!(a.outbox().drain().len(), 1);

        // A new watch set replaces the old one and drops pending notices for repos no longer watched.
        fanout.publish(&notice("h/a", "2"), Instant::now());
        a.set_watch(set(&["h/b"]));
        assert!(a.outbox().drain().is_empty());
        assert_eq!(
            fanout.watchers(&tether_protocol::normalize("h/b").unwrap()),
            2
        );
        drop(b);
        drop(a);
        assert_eq!(
            fanout.watchers(&tether_protocol::normalize("h/b").unwrap()),
            0
        );
        assert!(fanout.index.read().unwrap().is_empty());
    }

    #[test]
    fn a_watch_hears_notices_for_its_repository_in_any_letter_case() {
        let fanout = Fanout::new(Metrics::new().unwrap());
        let mut a = fanout.subscribe();
        a.set_watch(set(&["git.example/Ops/Config"]));
        assert_eq!(
            fanout.publish(&notice("git.example/ops/config", "1"), Instant::now()),
            1
        );
        assert_eq!(
            fanout.publish(&notice("git.example/OPS/CONFIG", "2"), Instant::now()),
            1
        );
        assert_eq!(
            fanout.publish(&notice("git.example/ops/other", "3"), Instant::now()),
            0
        );
        // One repository, so the second notice replaced the first; it keeps the webhook's spelling.
        let drained = a.outbox().drain();
        let got: Vec<_> = drained
            .iter()
            .map(|(n, _)| (n.repo.as_str(), n.sha.as_str()))
            .collect();
        assert_eq!(got, [("git.example/OPS/CONFIG", "2")]);

        // Two spellings in one watch set are one entry, and dropping one spelling keeps the watch.
        a.set_watch(set(&["git.example/Ops/Config", "git.example/ops/config"]));
        fanout.publish(&notice("git.example/ops/config", "4"), Instant::now());
        a.set_watch(set(&["git.example/ops/config"]));
        assert_eq!(a.outbox().drain().len(), 1, "the pending notice stays");
        drop(a);
        assert!(fanout.index.read().unwrap().is_empty());
    }
}
