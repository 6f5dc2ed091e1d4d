//! Leader election, the I/O part: reads and writes the Lease every retry period and tells the
//! rest of the controller, through a watch channel, whether this replica leads.
//!
//! Every write is a replace carrying the resourceVersion just read, so of two replicas that
//! claim the same Lease at once, the API server accepts one and answers the other with a
//! conflict. Each read and write is cut off at the renew deadline, as client-go's elector does.

use std::convert::Infallible;
use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::decide::leadership::{released, Election, Leadership, LeaseTiming, Outcome, Plan};
use crate::run::metrics::Metrics;

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
            // A request that hangs must not keep a leader leading past its renew deadline.
            let deadline = self.election.timing().renew_deadline;
            let outcome = tokio::time::timeout(deadline, self.attempt(started)).await.unwrap_or_else(|_| {
                warn!(lease = %self.name, waited = ?deadline, "the Lease request did not finish");
                Outcome::Failed
            });
            let next = self.election.record(outcome, started, Instant::now());
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::run::mock_api::{mock_api, rejected};

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/hostlb-system/leases";

    fn elector(client: Client) -> Elector {
        let timing =
            LeaseTiming::new(Duration::from_secs(15), Duration::from_secs(10), Duration::from_secs(1)).unwrap();
        Elector::new(client, "hostlb-system", "hostlb-controller", "replica-a", timing)
    }

    fn lease_held_by(holder: &str) -> Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": { "name": "hostlb-controller", "namespace": "hostlb-system", "resourceVersion": "7" },
            "spec": { "holderIdentity": holder, "leaseDurationSeconds": 15, "renewTime": "2026-01-01T00:00:00.000000Z" }
        })
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_with_this_replica_as_its_holder() {
        let (client, mut api) = mock_api();
        let attempt = tokio::spawn(async move { elector(client).attempt(Instant::now()).await });
        api.expect("GET", &format!("{LEASE_PATH}/hostlb-controller"), 404, rejected(404, "NotFound", "not found"))
            .await;
        let created = api.expect("POST", LEASE_PATH, 201, lease_held_by("replica-a")).await;
        assert_eq!(created.body["metadata"]["name"], "hostlb-controller");
        assert_eq!(created.body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(created.body["spec"]["leaseDurationSeconds"], 15);
        assert_eq!(attempt.await.unwrap(), Outcome::Held);
    }

    #[tokio::test]
    async fn a_lease_another_replica_holds_is_only_read() {
        let (client, mut api) = mock_api();
        let attempt = tokio::spawn(async move { elector(client).attempt(Instant::now()).await });
        api.expect("GET", &format!("{LEASE_PATH}/hostlb-controller"), 200, lease_held_by("replica-b")).await;
        assert_eq!(attempt.await.unwrap(), Outcome::HeldBy("replica-b".into()));
        api.expect_nothing_more().await;
    }

    #[tokio::test]
    async fn a_free_lease_is_claimed_with_the_version_read_and_a_conflict_fails_the_attempt() {
        let (client, mut api) = mock_api();
        let attempt = tokio::spawn(async move { elector(client).attempt(Instant::now()).await });
        api.expect("GET", &format!("{LEASE_PATH}/hostlb-controller"), 200, lease_held_by("")).await;
        let claim = api
            .expect("PUT", &format!("{LEASE_PATH}/hostlb-controller"), 409, rejected(409, "Conflict", "modified"))
            .await;
        assert_eq!(claim.body["metadata"]["resourceVersion"], "7");
        assert_eq!(claim.body["spec"]["holderIdentity"], "replica-a");
        assert_eq!(attempt.await.unwrap(), Outcome::Failed);
    }

    #[tokio::test]
    async fn release_clears_the_holder_only_of_a_lease_this_replica_holds() {
        let (client, mut api) = mock_api();
        let releasing = tokio::spawn(async move { elector(client).release().await });
        api.expect("GET", &format!("{LEASE_PATH}/hostlb-controller"), 200, lease_held_by("replica-a")).await;
        let released = api.expect("PUT", &format!("{LEASE_PATH}/hostlb-controller"), 200, lease_held_by("")).await;
        assert_eq!(released.body["metadata"]["resourceVersion"], "7");
        assert_eq!(released.body["spec"].get("holderIdentity"), None, "{}", released.body);
        assert_eq!(released.body["spec"]["leaseDurationSeconds"], 1);
        releasing.await.unwrap();

        let (client, mut api) = mock_api();
        let releasing = tokio::spawn(async move { elector(client).release().await });
        api.expect("GET", &format!("{LEASE_PATH}/hostlb-controller"), 200, lease_held_by("replica-b")).await;
        releasing.await.unwrap();
        api.expect_nothing_more().await;
    }
}
