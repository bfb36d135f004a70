//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one acts,
//! and never two at once.
//!
//! Three durations ([`Timing`]), as Kubernetes' own controllers use them:
//! - the *lease duration*: a follower takes the Lease over once it has not seen the Lease change
//!   (holder, renewTime or resourceVersion) for this long, measured on the follower's own
//!   monotonic clock from when it saw the last change. The holder's `renewTime` is never compared
//!   with the follower's clock, so clocks that disagree cannot shorten the wait;
//! - the *renew deadline*, shorter: the leader acts only until this long after the start of its
//!   last successful renewal. Each renewal is bounded by the time left until then, so a hung
//!   connection cannot keep an old leader acting; when it runs out, the leader stops writing at
//!   once (every write to the API server passes a [`Guard`]) and the process exits, to be restarted
//!   as a follower;
//! - the *retry period*: how often the leader renews and a follower looks.
//!
//! A follower's wait starts no earlier than the leader's renewal that it saw, and the leader stops
//! no later than the renew deadline after that renewal began, so the two never act at once while
//! the lease duration exceeds the renew deadline by more than a write takes to land.
//! Every write of the Lease carries the resourceVersion read, so two replicas racing for it cannot
//! both win.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// The durations of an election; see the module's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    lease: Duration,
    renew_deadline: Duration,
    retry: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry: Duration::from_secs(2),
        }
    }
}

impl Timing {
    /// Checks that `retry < renew_deadline < lease` and that the lease is whole seconds (the Lease
    /// stores it so).
    pub fn new(lease: Duration, renew_deadline: Duration, retry: Duration) -> Result<Self, String> {
        if lease.subsec_nanos() != 0 || lease.is_zero() || lease.as_secs() > i32::MAX as u64 {
            return Err(format!(
                "--leader-election-lease-duration {lease:?}: must be a whole number of seconds, at least 1s"
            ));
        }
        if renew_deadline >= lease {
            return Err(format!(
                "--leader-election-renew-deadline {renew_deadline:?} must be shorter than the lease duration {lease:?}, \
                 so that a leader stops before another replica may take over"
            ));
        }
        if retry.is_zero() || retry >= renew_deadline {
            return Err(format!(
                "--leader-election-retry-period {retry:?} must be above zero and shorter than the renew deadline {renew_deadline:?}"
            ));
        }
        Ok(Self {
            lease,
            renew_deadline,
            retry,
        })
    }
}

/// What a replica reads of the Lease: a change in any of it shows its holder alive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    holder: Option<String>,
    renew_time: Option<Timestamp>,
    resource_version: Option<String>,
    /// The holder's lease duration, as it wrote it.
    duration: Duration,
}

impl Record {
    fn of(lease: &Lease, fallback: Duration) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        Self {
            holder: spec.holder_identity.filter(|h| !h.is_empty()),
            renew_time: spec.renew_time.map(|t| t.0),
            resource_version: lease.metadata.resource_version.clone(),
            duration: spec
                .lease_duration_seconds
                .filter(|s| *s > 0)
                .map_or(fallback, |s| Duration::from_secs(s as u64)),
        }
    }
}

/// The last change of the Lease this replica saw, and when, on its own monotonic clock.
#[derive(Debug, Default)]
struct Observer {
    last: Option<(Record, Instant)>,
}

impl Observer {
    /// Records what was read at `now`; returns when the Lease last changed as far as this replica
    /// knows (`now`, when it changed or was seen for the first time).
    fn observe(&mut self, record: Record, now: Instant) -> Instant {
        match &self.last {
            Some((seen, at)) if *seen == record => *at,
            _ => {
                self.last = Some((record, now));
                now
            }
        }
    }
}

/// What to do with the Lease as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    /// There is none: create it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Nobody holds it, or its holder has not renewed it for its duration: take it over.
    TakeOver,
    /// Another replica holds it.
    Wait,
}

/// Pure: the decision on `current` (none: no Lease), which last changed at `changed_at`.
fn decide(current: Option<&Record>, changed_at: Instant, identity: &str, now: Instant) -> Decision {
    let Some(record) = current else {
        return Decision::Create;
    };
    match record.holder.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None => Decision::TakeOver,
        Some(_) if now.saturating_duration_since(changed_at) >= record.duration => {
            Decision::TakeOver
        }
        Some(_) => Decision::Wait,
    }
}

/// Until when this replica may act, shared with every client that writes for it. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Guard(Arc<Mutex<Option<Instant>>>);

impl Guard {
    /// Whether this replica may write now.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    fn holds_at(&self, now: Instant) -> bool {
        lock(&self.0).is_some_and(|until| now < until)
    }

    fn valid_until(&self) -> Option<Instant> {
        *lock(&self.0)
    }

    fn extend(&self, until: Instant) {
        *lock(&self.0) = Some(until);
    }

    fn revoke(&self) {
        *lock(&self.0) = None;
    }

    /// A client layer that refuses every request but reads (GET, HEAD) once this guard no longer
    /// holds: `kube::client::ClientBuilder::with_layer`.
    pub fn layer(&self) -> GuardLayer {
        GuardLayer(self.clone())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A kube client for `config` whose writes pass `guard` (none: unguarded, without leader election).
pub fn client(config: kube::Config, guard: Option<&Guard>) -> Result<kube::Client, kube::Error> {
    let builder = kube::client::ClientBuilder::try_from(config)?;
    Ok(match guard {
        Some(guard) => builder.with_layer(&guard.layer()).build(),
        None => builder.build(),
    })
}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
#[error("not the leader: this replica's lease ran out, so it writes nothing more")]
pub struct NotLeader;

/// See [`Guard::layer`].
#[derive(Debug, Clone)]
pub struct GuardLayer(Guard);

impl<S> tower::Layer<S> for GuardLayer {
    type Service = Guarded<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Guarded {
            inner,
            guard: self.0.clone(),
        }
    }
}

/// A service that refuses writes once its guard no longer holds.
#[derive(Debug, Clone)]
pub struct Guarded<S> {
    inner: S,
    guard: Guard,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<S, B> tower::Service<http::Request<B>> for Guarded<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reads = matches!(*request.method(), http::Method::GET | http::Method::HEAD);
        if !reads && !self.guard.holds() {
            return Box::pin(std::future::ready(Err(NotLeader.into())));
        }
        let guard = self.guard.clone();
        let response = self.inner.call(request);
        // Checked again when the request is about to go out, not only when it was made.
        Box::pin(async move {
            if !reads && !guard.holds() {
                return Err(NotLeader.into());
            }
            response.await.map_err(Into::into)
        })
    }
}

/// One replica's claim on the Lease.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    timing: Timing,
    observer: Observer,
    guard: Guard,
}

/// How one attempt on the Lease ended.
enum Attempt {
    /// The Lease is ours, as of the attempt's start.
    Held,
    /// Another replica holds it.
    Other,
}

impl Elector {
    /// `guard` is what this replica's writing clients check.
    pub fn new(
        client: kube::Client,
        namespace: &str,
        name: &str,
        identity: &str,
        timing: Timing,
        guard: Guard,
    ) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            timing,
            observer: Observer::default(),
            guard,
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(mut self) -> Result<Leadership, kube::Error> {
        let mut logged = false;
        loop {
            let started = Instant::now();
            // A hung attempt must not hold up the next look.
            match tokio::time::timeout(self.timing.renew_deadline, self.attempt(started, false))
                .await
            {
                Ok(Ok(Attempt::Held)) => {
                    self.guard.extend(started + self.timing.renew_deadline);
                    info!(lease = %self.name, identity = %self.identity, "leader election: acquired");
                    return Ok(Leadership { elector: self });
                }
                Ok(Ok(Attempt::Other)) => {
                    if !logged {
                        info!(lease = %self.name, "leader election: another replica leads; waiting");
                        logged = true;
                    }
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: acquiring"),
                Err(_) => warn!(
                    timeout = ?self.timing.renew_deadline,
                    "leader election: acquiring timed out"
                ),
            }
            tokio::time::sleep(self.timing.retry).await;
        }
    }

    /// One read and, when the decision says so, one write of the Lease. `leading`: only a renewal
    /// counts; a leader that finds another holder has lost.
    async fn attempt(&mut self, started: Instant, leading: bool) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let now = Instant::now();
        let record = current.as_ref().map(|l| Record::of(l, self.timing.lease));
        let changed_at = match &record {
            Some(r) => self.observer.observe(r.clone(), now),
            None => now,
        };
        let decision = decide(record.as_ref(), changed_at, &self.identity, now);
        if leading && decision != Decision::Renew {
            return Ok(Attempt::Other);
        }
        let wall = Timestamp::now();
        let written = match (decision, current) {
            (Decision::Wait, _) => return Ok(Attempt::Other),
            (Decision::Create, _) | (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(self.spec(wall, wall, 0)),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            (renew_or_take, Some(mut lease)) => {
                let old = lease.spec.clone().unwrap_or_default();
                let renewing = renew_or_take == Decision::Renew;
                let transitions = old.lease_transitions.unwrap_or(0) + i32::from(!renewing);
                let acquired = match (renewing, old.acquire_time) {
                    (true, Some(t)) => t.0,
                    _ => wall,
                };
                lease.spec = Some(self.spec(wall, acquired, transitions));
                // The resourceVersion read above makes this a compare-and-swap.
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(lease) => {
                // Our own write is a change we saw.
                self.observer
                    .observe(Record::of(&lease, self.timing.lease), started);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(Attempt::Other),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.timing.lease.as_secs() as i32),
            acquire_time: Some(MicroTime(acquired)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// A held Lease.
#[derive(Debug)]
pub struct Leadership {
    elector: Elector,
}

impl Leadership {
    /// Renews the Lease every retry period, each renewal bounded by the time left until the renew
    /// deadline. Returns, with the guard already revoked, when the Lease was taken over or could not
    /// be renewed in time: from then on this replica writes nothing.
    pub async fn lost(mut self) {
        let timing = self.elector.timing;
        let guard = self.elector.guard.clone();
        loop {
            let Some(until) = guard.valid_until() else {
                return;
            };
            let next = (Instant::now() + timing.retry).min(until);
            tokio::time::sleep_until(next.into()).await;
            let started = Instant::now();
            let left = until.saturating_duration_since(started);
            if left.is_zero() {
                guard.revoke();
                warn!(renew_deadline = ?timing.renew_deadline, "leader election: not renewed within the renew deadline; stopping");
                return;
            }
            match tokio::time::timeout(left, self.elector.attempt(started, true)).await {
                Ok(Ok(Attempt::Held)) => guard.extend(started + timing.renew_deadline),
                Ok(Ok(Attempt::Other)) => {
                    guard.revoke();
                    warn!("leader election: the lease was taken over; stopping");
                    return;
                }
                Ok(Err(e)) => warn!(error = %e, "leader election: renewing; retrying"),
                Err(_) => {
                    guard.revoke();
                    warn!(renew_deadline = ?timing.renew_deadline, "leader election: the renewal did not finish within the renew deadline; stopping");
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(holder: Option<&str>, rv: &str) -> Record {
        Record {
            holder: holder.map(str::to_owned),
            renew_time: Some(Timestamp::UNIX_EPOCH),
            resource_version: Some(rv.to_owned()),
            duration: Duration::from_secs(15),
        }
    }

    #[test]
    fn a_follower_waits_the_lease_duration_from_the_change_it_saw() {
        let t0 = Instant::now();
        let mut observer = Observer::default();
        let lease = record(Some("a"), "1");
        let seen = observer.observe(lease.clone(), t0);
        assert_eq!(seen, t0);
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(decide(Some(&lease), seen, "b", at(14)), Decision::Wait);
        // Read again unchanged: the wait still counts from the first sight.
        let seen = observer.observe(lease.clone(), at(10));
        assert_eq!(seen, t0);
        assert_eq!(decide(Some(&lease), seen, "b", at(15)), Decision::TakeOver);
        // A renewal (new resourceVersion) restarts the wait, whatever its renewTime says.
        let renewed = record(Some("a"), "2");
        let seen = observer.observe(renewed.clone(), at(12));
        assert_eq!(seen, at(12));
        assert_eq!(decide(Some(&renewed), seen, "b", at(26)), Decision::Wait);
        assert_eq!(
            decide(Some(&renewed), seen, "b", at(27)),
            Decision::TakeOver
        );
    }

    #[test]
    fn the_holders_clock_does_not_shorten_the_wait() {
        // A renewTime from long ago (or a holder whose clock runs behind) changes nothing: a
        // follower that sees the Lease for the first time waits a whole lease duration.
        let t0 = Instant::now();
        let mut observer = Observer::default();
        let mut stale = record(Some("a"), "7");
        stale.renew_time = Some(Timestamp::UNIX_EPOCH);
        let seen = observer.observe(stale.clone(), t0);
        assert_eq!(
            decide(Some(&stale), seen, "b", t0 + Duration::from_secs(1)),
            Decision::Wait
        );
    }

    #[test]
    fn the_holders_duration_is_the_one_waited() {
        let t0 = Instant::now();
        let mut short = record(Some("a"), "1");
        short.duration = Duration::from_secs(3);
        assert_eq!(
            decide(Some(&short), t0, "b", t0 + Duration::from_secs(3)),
            Decision::TakeOver
        );
    }

    #[test]
    fn no_lease_is_created_an_empty_one_taken_and_ours_renewed() {
        let t0 = Instant::now();
        assert_eq!(decide(None, t0, "b", t0), Decision::Create);
        assert_eq!(
            decide(Some(&record(None, "1")), t0, "b", t0),
            Decision::TakeOver
        );
        assert_eq!(
            decide(Some(&record(Some("b"), "1")), t0, "b", t0),
            Decision::Renew
        );
    }

    #[test]
    fn timing_keeps_the_renew_deadline_inside_the_lease() {
        let s = Duration::from_secs;
        assert!(Timing::new(s(15), s(10), s(2)).is_ok());
        assert!(Timing::new(s(3), s(2), Duration::from_millis(500)).is_ok());
        assert!(
            Timing::new(s(10), s(10), s(2))
                .unwrap_err()
                .contains("shorter")
        );
        assert!(Timing::new(s(15), s(10), s(10)).is_err());
        assert!(
            Timing::new(
                Duration::from_millis(1500),
                s(1),
                Duration::from_millis(100)
            )
            .is_err()
        );
        assert!(Timing::new(s(0), s(0), s(0)).is_err());
        assert_eq!(Timing::default(), Timing::new(s(15), s(10), s(2)).unwrap());
    }

    #[test]
    fn the_guard_holds_until_its_deadline_and_not_after_revoke() {
        let guard = Guard::default();
        let now = Instant::now();
        assert!(!guard.holds_at(now), "nothing held yet");
        guard.extend(now + Duration::from_secs(10));
        assert!(guard.holds_at(now + Duration::from_secs(9)));
        assert!(!guard.holds_at(now + Duration::from_secs(10)));
        guard.revoke();
        assert!(!guard.holds_at(now));
    }

    /// A service that answers every request, counting them.
    #[derive(Clone, Default)]
    struct Counting(Arc<Mutex<Vec<http::Method>>>);

    impl tower::Service<http::Request<()>> for Counting {
        type Response = ();
        type Error = BoxError;
        type Future = std::future::Ready<Result<(), BoxError>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<()>) -> Self::Future {
            lock(&self.0).push(request.method().clone());
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn writes_stop_the_moment_the_guard_lapses_reads_go_on() {
        use tower::{Layer as _, ServiceExt as _};
        let guard = Guard::default();
        let seen = Counting::default();
        let service = guard.layer().layer(seen.clone());
        let request = |m: http::Method| http::Request::builder().method(m).body(()).unwrap();

        guard.extend(Instant::now() + Duration::from_secs(60));
        service
            .clone()
            .oneshot(request(http::Method::PATCH))
            .await
            .unwrap();
        // Built while the guard held, sent after it lapsed: refused.
        let late = service.clone().oneshot(request(http::Method::PUT));
        guard.extend(Instant::now());
        let err = late.await.unwrap_err();
        assert!(err.is::<NotLeader>(), "{err}");
        for m in [
            http::Method::POST,
            http::Method::DELETE,
            http::Method::PATCH,
        ] {
            assert!(service.clone().oneshot(request(m)).await.is_err());
        }
        service
            .clone()
            .oneshot(request(http::Method::GET))
            .await
            .unwrap();
        assert_eq!(
            *lock(&seen.0),
            [http::Method::PATCH, http::Method::GET],
            "only the write made in time and the read reached the server"
        );
    }
}
