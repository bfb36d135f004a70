//! Push triggers: which repository each `GitRepository` follows, the set of repositories the hub
//! is told about, and the last push notice per repository. Notices come straight from the hub
//! client; the controller gets one stream of objects to reconcile now. Repositories are matched on
//! their [`RepoKey`] (letter case folded): a notice for `ops/config` reaches an object whose URL says
//! `Ops/Config`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use futures::Stream;
use kube::runtime::reflector::ObjectRef as Ref;
use tether_protocol::{Notice, RepoId, RepoKey};
use tokio::sync::{mpsc, watch};
use tracing::debug;

use crate::crd::GitRepository;

/// How many notices may wait for the controller before the hub client waits in turn.
const NOTICE_BUFFER: usize = 1024;

/// A push notice as the operator saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    /// When the notice arrived here.
    pub at: SystemTime,
    /// When the hub received the push, in Unix milliseconds.
    pub pushed_at_ms: u64,
}

/// Pure: objects by repository and the last notice per repository.
#[derive(Debug, Default)]
struct Index {
    repos: HashMap<Ref<GitRepository>, RepoId>,
    notices: HashMap<RepoKey, Seen>,
}

impl Index {
    /// Records which repository `obj` follows (`None`: none, or gone). Returns the new watch set
    /// when it changed.
    fn track(&mut self, obj: Ref<GitRepository>, repo: Option<RepoId>) -> BTreeSet<RepoId> {
        match repo {
            Some(id) => self.repos.insert(obj, id),
            None => self.repos.remove(&obj),
        };
        self.repos.values().cloned().collect()
    }

    /// Records a notice and returns the objects that follow its repository.
    fn notice(&mut self, repo: &RepoId, seen: Seen) -> Vec<Ref<GitRepository>> {
        let key = repo.key();
        let objects = self
            .repos
            .iter()
            .filter(|(_, r)| r.key() == key)
            .map(|(o, _)| o.clone())
            .collect();
        self.notices.insert(key, seen);
        objects
    }
}

/// Shared by the controller (which tracks objects and reads the last notice) and the hub client
/// (which sends notices and reads the watch set).
#[derive(Debug)]
pub struct Triggers {
    index: Mutex<Index>,
    watch_set: watch::Sender<BTreeSet<RepoId>>,
    notices: mpsc::Sender<Notice>,
}

/// The receiving end of the notices, turned into objects by [`Triggers::reconciles`].
#[derive(Debug)]
pub struct Notices(mpsc::Receiver<Notice>);

impl Triggers {
    pub fn new() -> (Arc<Self>, Notices) {
        let (watch_set, _) = watch::channel(BTreeSet::new());
        let (notices, rx) = mpsc::channel(NOTICE_BUFFER);
        let triggers = Arc::new(Self {
            index: Mutex::new(Index::default()),
            watch_set,
            notices,
        });
        (triggers, Notices(rx))
    }

    /// Where the hub client sends the notices it receives.
    pub fn notice_sender(&self) -> mpsc::Sender<Notice> {
        self.notices.clone()
    }

    /// The repositories some `GitRepository` follows: what the hub client asks to hear about.
    pub fn watch_set(&self) -> watch::Receiver<BTreeSet<RepoId>> {
        self.watch_set.subscribe()
    }

    /// Records which repository `obj` follows; `None` when it follows none (or is deleted).
    pub fn track(&self, obj: Ref<GitRepository>, repo: Option<RepoId>) {
        let set = lock(&self.index).track(obj, repo);
        self.watch_set.send_if_modified(|current| {
            let changed = *current != set;
            if changed {
                *current = set;
            }
            changed
        });
    }

    /// The last notice for `repo` (in any letter case), if one came.
    pub fn last_notice(&self, repo: &RepoId) -> Option<Seen> {
        lock(&self.index).notices.get(&repo.key()).copied()
    }

    /// The objects to reconcile now: one per object that follows a pushed repository, per notice.
    pub fn reconciles(
        self: Arc<Self>,
        notices: Notices,
    ) -> impl Stream<Item = Ref<GitRepository>> + Send + 'static {
        let Notices(rx) = notices;
        let batches = futures::stream::unfold(rx, move |mut rx| {
            let triggers = self.clone();
            async move {
                let notice = rx.recv().await?;
                let seen = Seen {
                    at: SystemTime::now(),
                    pushed_at_ms: notice.received_at,
                };
                let objects = lock(&triggers.index).notice(&notice.repo, seen);
                for obj in &objects {
                    debug!(repo = %notice.repo, object = %obj, "push notice: reconciling now");
                }
                Some((futures::stream::iter(objects), rx))
            }
        });
        futures::StreamExt::flatten(batches)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn obj(name: &str) -> Ref<GitRepository> {
        Ref::new(name).within("team")
    }

    fn repo(id: &str) -> RepoId {
        tether_protocol::normalize(id).unwrap()
    }

    fn seen(ms: u64) -> Seen {
        Seen {
            at: SystemTime::UNIX_EPOCH,
            pushed_at_ms: ms,
        }
    }

    #[test]
    fn a_notice_names_every_object_that_follows_the_repository() {
        let mut index = Index::default();
        index.track(obj("a"), Some(repo("https://git.example/ops/config.git")));
        index.track(obj("b"), Some(repo("git@git.example:ops/config.git")));
        index.track(obj("c"), Some(repo("https://git.example/ops/other")));
        let mut hit = index.notice(&repo("https://git.example/ops/config"), seen(7));
        hit.sort_by_key(|o| o.name.clone());
        assert_eq!(hit, [obj("a"), obj("b")]);
        assert_eq!(
            index
                .notices
                .get(&repo("https://git.example/ops/config").key()),
            Some(&seen(7))
        );
    }

    #[test]
    fn a_notice_reaches_objects_whose_url_has_other_letter_case() {
        let mut index = Index::default();
        index.track(
            obj("upper"),
            Some(repo("https://git.example/Ops/Config.git")),
        );
        index.track(obj("lower"), Some(repo("git@git.example:ops/config")));
        index.track(obj("other"), Some(repo("https://git.example/Ops/Other")));
        let mut hit = index.notice(&repo("https://git.example/ops/CONFIG"), seen(3));
        hit.sort_by_key(|o| o.name.clone());
        assert_eq!(hit, [obj("lower"), obj("upper")]);
        // The watch set keeps each object's own spelling.
        let set = index.track(obj("other"), None);
        let shown: Vec<&str> = set.iter().map(RepoId::as_str).collect();
        assert_eq!(shown, ["git.example/Ops/Config", "git.example/ops/config"]);
    }

    #[test]
    fn the_watch_set_follows_objects_as_they_change_and_go() {
        let mut index = Index::default();
        let one = repo("https://git.example/one");
        let two = repo("https://git.example/two");
        assert_eq!(
            index.track(obj("a"), Some(one.clone())),
            [one.clone()].into()
        );
        assert_eq!(
            index.track(obj("b"), Some(one.clone())),
            [one.clone()].into()
        );
        assert_eq!(
            index.track(obj("a"), Some(two.clone())),
            [one.clone(), two.clone()].into()
        );
        assert_eq!(index.track(obj("b"), None), [two.clone()].into());
        assert_eq!(index.track(obj("a"), None), BTreeSet::new());
        assert!(index.notice(&two, seen(1)).is_empty());
    }

    #[tokio::test]
    async fn notices_become_objects_to_reconcile_and_the_last_one_is_kept() {
        use futures::StreamExt as _;
        let (triggers, notices) = Triggers::new();
        let mut watch_set = triggers.watch_set();
        let id = repo("https://git.example/ops/config");
        triggers.track(obj("a"), Some(id.clone()));
        assert!(watch_set.has_changed().unwrap());
        assert_eq!(*watch_set.borrow_and_update(), [id.clone()].into());
        triggers.track(obj("a"), Some(id.clone()));
        assert!(
            !watch_set.has_changed().unwrap(),
            "an unchanged set is not sent again"
        );

        let sender = triggers.notice_sender();
        let mut stream = Box::pin(triggers.clone().reconciles(notices));
        for ms in [10, 20] {
            let notice = Notice {
                repo: id.clone(),
                git_ref: "refs/heads/main".into(),
                sha: "0".repeat(40),
                delivery: format!("d{ms}"),
                received_at: ms,
            };
            sender.send(notice).await.unwrap();
            assert_eq!(stream.next().await, Some(obj("a")));
        }
        assert_eq!(triggers.last_notice(&id).map(|s| s.pushed_at_ms), Some(20));
        let other_case = repo("https://git.example/Ops/Config");
        assert_eq!(
            triggers.last_notice(&other_case).map(|s| s.pushed_at_ms),
            Some(20)
        );
    }
}
