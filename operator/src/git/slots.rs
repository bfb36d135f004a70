//! Git work on blocking threads: a bounded number at once, each waited for until its timeout.
//!
//! libgit2 cannot always be stopped mid-call (while connecting, or on a connection the remote holds
//! open without a word), so a thread may run on after its caller gave up, until libgit2's socket
//! timeout (`socket`) fails it. Such an operation gives
//! its slot back, so that one silent remote cannot starve every other, but its repository stays
//! marked until the thread really ends, and no new operation on that repository starts meanwhile:
//! threads left running are at most one per repository, however often it is retried. A mirror's
//! lock, when the operation holds one, is released only when the thread ends.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore};

use super::GitError;

/// How long past its timeout an operation is waited for: the callbacks that stop it at the
/// deadline need a moment to be called.
const GRACE: Duration = Duration::from_secs(1);

/// The slots for git work, and the repositories whose last operation overran its timeout.
#[derive(Debug)]
pub(super) struct Slots {
    permits: Arc<Semaphore>,
    overrun: Arc<Mutex<HashMap<String, usize>>>,
}

/// One operation, as both its thread and its caller see it.
struct Op {
    permit: Option<OwnedSemaphorePermit>,
    finished: bool,
    overran: bool,
}

impl Slots {
    /// At most `max` operations at once (at least one).
    pub(super) fn new(max: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(max.max(1))),
            overrun: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// How many operations could start now.
    #[cfg(test)]
    pub(super) fn available(&self) -> usize {
        self.permits.available_permits()
    }

    /// Fails at once if an operation on `key` overran and is still running: callers that take the
    /// mirror's lock ask first, since that operation holds the lock until it ends.
    pub(super) fn check(&self, key: &str, url: &str) -> Result<(), GitError> {
        if lock(&self.overrun).contains_key(key) {
            return Err(GitError::StillRunning {
                url: url.to_owned(),
            });
        }
        Ok(())
    }

    /// Runs `work` for the repository `key` on a blocking thread once a slot is free, and waits
    /// for it until `timeout` (and a grace second). `held` goes with the thread. `url` (without
    /// user info) names the remote in errors.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        key: &str,
        url: String,
        timeout: Duration,
        held: Option<OwnedMutexGuard<()>>,
        work: impl FnOnce() -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, GitError> {
        if lock(&self.overrun).contains_key(key) {
            return Err(GitError::StillRunning { url });
        }
        let permit = Arc::clone(&self.permits)
            .acquire_owned()
            .await
            .map_err(|e| GitError::Task(e.to_string()))?;
        let op = Arc::new(Mutex::new(Op {
            permit: Some(permit),
            finished: false,
            overran: false,
        }));
        let task = {
            let op = Arc::clone(&op);
            let overrun = Arc::clone(&self.overrun);
            let key = key.to_owned();
            tokio::task::spawn_blocking(move || {
                let result = work();
                drop(held);
                let mut op = lock(&op);
                op.finished = true;
                op.permit = None;
                if op.overran {
                    let mut overrun = lock(&overrun);
                    if let Some(n) = overrun.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            overrun.remove(&key);
                        }
                    }
                }
                result
            })
        };
        match tokio::time::timeout(timeout.saturating_add(GRACE), task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => Err(GitError::Task(join.to_string())),
            Err(_) => {
                let mut op = lock(&op);
                if !op.finished {
                    op.overran = true;
                    op.permit = None;
                    *lock(&self.overrun).entry(key.to_owned()).or_default() += 1;
                    tracing::warn!(
                        url = %url,
                        "a git operation overran its timeout and cannot be stopped; no other \
                         starts on this repository until it ends"
                    );
                }
                Err(GitError::Timeout { url, timeout })
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::error::StageError;

    /// An operation stuck past its timeout gives its slot back at once, keeps its repository
    /// from starting another until it ends, and leaves others free to run.
    #[tokio::test]
    async fn an_overrun_gives_its_slot_back_and_holds_its_repository_until_it_ends() {
        let slots = Slots::new(1);
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let url = || "https://silent.example/r".to_owned();
        let err = slots
            .run(
                "silent",
                url(),
                Duration::from_millis(10),
                None,
                move || {
                    stuck.recv().ok();
                    Ok(())
                },
            )
            .await
            .unwrap_err();
        assert_eq!(err.category(), "git_timeout", "{err}");
        assert_eq!(slots.available(), 1);

        let err = slots
            .run("silent", url(), Duration::from_secs(5), None, || Ok(()))
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::StillRunning { .. }), "{err}");
        assert_eq!(err.category(), "git_timeout");
        assert!(err.to_string().contains("has not ended yet"), "{err}");

        slots
            .run("other", url(), Duration::from_secs(5), None, || Ok(()))
            .await
            .unwrap();

        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lock(&slots.overrun).contains_key("silent") {
            assert!(
                std::time::Instant::now() < deadline,
                "the overrun never ended"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        slots
            .run("silent", url(), Duration::from_secs(5), None, || Ok(()))
            .await
            .unwrap();
    }

    /// A mirror's lock goes with the thread: it is free only once the work really ended.
    #[tokio::test]
    async fn a_mirror_lock_is_held_until_the_thread_ends() {
        let slots = Slots::new(2);
        let mirror = Arc::new(tokio::sync::Mutex::new(()));
        let (release, stuck) = std::sync::mpsc::channel::<()>();
        let guard = Arc::clone(&mirror).lock_owned().await;
        let err = slots
            .run(
                "m",
                "file:///m".into(),
                Duration::from_millis(10),
                Some(guard),
                move || {
                    stuck.recv().ok();
                    Ok(())
                },
            )
            .await
            .unwrap_err();
        assert!(matches!(err, GitError::Timeout { .. }), "{err}");
        assert!(
            mirror.try_lock().is_err(),
            "the lock was released with the caller"
        );
        release.send(()).unwrap();
        let _free = tokio::time::timeout(Duration::from_secs(10), mirror.lock())
            .await
            .unwrap();
    }
}
