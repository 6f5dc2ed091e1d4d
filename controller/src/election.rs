//! Leader election, the I/O part: reads and writes the Lease every retry period and tells the
//! rest of the controller, through a watch channel, whether this replica leads.
//!
//! Every write is a replace carrying the resourceVersion just read, so of two replicas that
//! claim the same Lease at once, the API server accepts one and answers the other with a
//! conflict.

use std::convert::Infallible;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::lease::{released, Election, Leadership, LeaseTiming, Outcome, Plan};
use crate::metrics::Metrics;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    election: Election,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            election: Election::new(identity, timing),
        }
    }

    /// Claims or follows the Lease every retry period, forever, publishing each change of
    /// leadership on `leading` and in the `hostlb_leader` gauge.
    pub async fn campaign(&mut self, leading: &watch::Sender<bool>, metrics: &Metrics) -> Infallible {
        let mut current = Leadership::Following { holder: None };
        let mut ticks = tokio::time::interval(self.election.timing().retry_period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let started = Instant::now();
            let outcome = self.attempt(started).await;
            let next = self.election.record(outcome, started);
            if next != current {
                match &next {
                    Leadership::Leading => info!(lease = %self.name, holder = self.election.identity(), "leading"),
                    Leadership::Following { holder } => {
                        info!(lease = %self.name, holder = holder.as_deref().unwrap_or("unknown"), "following")
                    }
                }
                metrics.leader.set(i64::from(next.is_leading()));
                leading.send_replace(next.is_leading());
                current = next;
            }
        }
    }

    async fn attempt(&mut self, now: Instant) -> Outcome {
        let lease = match self.api.get_opt(&self.name).await {
            Ok(lease) => lease,
            Err(error) => {
                warn!(lease = %self.name, %error, "cannot read the Lease");
                return Outcome::Failed;
            }
        };
        let spec = lease.as_ref().and_then(|lease| lease.spec.as_ref());
        if let Plan::Follow { holder } = self.election.plan(spec, now) {
            return Outcome::HeldBy(holder);
        }
        let spec = self.election.claim(spec, Timestamp::now());
        let metadata = lease.map(|lease| lease.metadata);
        let claimed = Lease {
            metadata: metadata.unwrap_or_else(|| ObjectMeta { name: Some(self.name.clone()), ..ObjectMeta::default() }),
            spec: Some(spec),
        };
        let written = if claimed.metadata.resource_version.is_some() {
            self.api.replace(&self.name, &PostParams::default(), &claimed).await
        } else {
            self.api.create(&PostParams::default(), &claimed).await
        };
        match written {
            Ok(_) => Outcome::Held,
            Err(kube::Error::Api(status)) if status.code == 409 => Outcome::Failed,
            Err(error) => {
                warn!(lease = %self.name, %error, "cannot write the Lease");
                Outcome::Failed
            }
        }
    }

    /// Gives the Lease up if this replica holds it, so that another takes over at its next
    /// read rather than after the lease duration. Failures are only logged: the claim then
    /// expires by itself.
    pub async fn release(&self) {
        let lease = match self.api.get_opt(&self.name).await {
            Ok(Some(lease)) => lease,
            Ok(None) => return,
            Err(error) => return warn!(lease = %self.name, %error, "cannot read the Lease to release it"),
        };
        let Some(spec) = lease.spec.as_ref() else { return };
        if spec.holder_identity.as_deref() != Some(self.election.identity()) {
            return;
        }
        let given_up = Lease { spec: Some(released(spec, Timestamp::now())), ..lease.clone() };
        match self.api.replace(&self.name, &PostParams::default(), &given_up).await {
            Ok(_) => info!(lease = %self.name, "released the Lease"),
            Err(error) => warn!(lease = %self.name, %error, "cannot release the Lease; it expires by itself"),
        }
    }
}
