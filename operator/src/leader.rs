//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several replicas only one acts.
//!
//! The holder renews the Lease every [`RENEW`]; another replica takes it over once it has not been
//! renewed for [`LEASE_DURATION`]. Every write carries the Lease's resourceVersion, so two replicas
//! racing for it cannot both win. A holder that fails to renew in time stops acting: [`Leadership::lost`]
//! resolves and the process exits, to be restarted as a follower.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

/// How long a Lease stays valid without renewal.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How often the holder renews it.
pub const RENEW: Duration = Duration::from_secs(5);

/// One replica's claim on the Lease.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    pub fn new(client: kube::Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) -> Result<Leadership, kube::Error> {
        let mut logged = false;
        loop {
            match self.try_acquire().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "leader election: acquired");
                    return Ok(Leadership {
                        elector: self.clone(),
                    });
                }
                Ok(false) => {
                    if !logged {
                        info!(lease = %self.name, "leader election: another replica leads; waiting");
                        logged = true;
                    }
                }
                Err(e) => warn!(error = %e, "leader election: acquiring"),
            }
            tokio::time::sleep(RENEW).await;
        }
    }

    /// One attempt: creates the Lease, renews ours, or takes over an expired one.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let ours = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        let expired = spec.renew_time.as_ref().is_none_or(|t| {
            let valid = spec
                .lease_duration_seconds
                .map_or(LEASE_DURATION, |s| Duration::from_secs(s.max(0) as u64));
            t.0.checked_add(valid).is_ok_and(|end| end < now)
        }) || spec.holder_identity.is_none();
        if !ours && !expired {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        let mut next = self.spec(now, transitions);
        if ours {
            next.acquire_time = spec.acquire_time;
        }
        lease.spec = Some(next);
        // The resourceVersion read above makes this a compare-and-swap.
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(LEASE_DURATION.as_secs() as i32),
            acquire_time: Some(MicroTime(now)),
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
    /// Renews the Lease until a renewal fails for longer than the lease is valid, then returns:
    /// from then on another replica may lead.
    pub async fn lost(self) {
        let mut last_ok = std::time::Instant::now();
        loop {
            tokio::time::sleep(RENEW).await;
            match self.elector.try_acquire().await {
                Ok(true) => last_ok = std::time::Instant::now(),
                Ok(false) => {
                    warn!("leader election: the lease was taken over");
                    return;
                }
                Err(e) => {
                    warn!(error = %e, "leader election: renewing");
                    if last_ok.elapsed() + RENEW >= LEASE_DURATION {
                        return;
                    }
                }
            }
        }
    }
}
