//! Leader election, the I/O part: reads and writes the Lease every retry period and tells the
//! rest of the controller, through a watch channel, the term this replica leads in, if any.
//!
//! Every write is a replace carrying the resourceVersion just read, so of two replicas that
//! claim the same Lease at once, the API server accepts one and answers the other with a
//! conflict. The term ends on a timer at its end, the renew deadline after the last renewal
//! was sent, however long the attempt under way then takes; that attempt is dropped.

use std::convert::Infallible;
use std::time::Instant;

use tokio::time::Interval;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::decide::leadership::{released, Election, Leadership, LeaseAction, LeaseTiming, Outcome, Term};
use crate::run::api_contact::ApiContact;
use crate::run::metrics::Metrics;

pub struct Elector {
    api: Api<Lease>,
    name: String,
    election: Election,
    contact: ApiContact,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str, timing: LeaseTiming) -> Self {
        Elector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            election: Election::new(identity, timing),
            contact: ApiContact::default(),
        }
    }

    /// Where it records each answer of the API server to its Lease requests.
    pub fn contact(&self) -> ApiContact {
        self.contact.clone()
    }

    pub fn timing(&self) -> LeaseTiming {
        self.election.timing()
    }

    /// Claims or follows the Lease every retry period, forever, publishing the term under way
    /// on `leading` as it begins, is renewed and ends, and whether there is one in the
    /// `hostlb_leader` gauge.
    pub async fn campaign(&mut self, leading: &watch::Sender<Option<Term>>, metrics: &Metrics) -> Infallible {
        let mut current = Leadership::Following { holder: None };
        let mut ticks = tokio::time::interval(self.election.timing().retry_period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let term_ends = self.election.term().map(|term| tokio::time::Instant::from_std(term.until));
            let attempted = tokio::select! {
                () = sleep_until_or_never(term_ends) => None,
                attempted = self.next_attempt(&mut ticks) => Some(attempted),
            };
            let next = match attempted {
                Some((outcome, started)) => self.election.record(outcome, started, now()),
                None => {
                    warn!(lease = %self.name, "no renewal within the renew deadline");
                    self.election.leadership_at(now())
                }
            };
            leading.send_if_modified(|published| {
                let changed = *published != self.election.term();
                *published = self.election.term();
                changed
            });
            if next != current {
                match &next {
                    Leadership::Leading => info!(lease = %self.name, holder = self.election.identity(), "leading"),
                    Leadership::Following { holder } => {
                        info!(lease = %self.name, holder = holder.as_deref().unwrap_or("unknown"), "following")
                    }
                }
                metrics.leader.set(i64::from(next.is_leading()));
                current = next;
            }
        }
    }

    /// The next attempt, at the next tick; returns how it ended and when it started.
    async fn next_attempt(&mut self, ticks: &mut Interval) -> (Outcome, Instant) {
        ticks.tick().await;
        let started = now();
        // Only so that a request that hangs does not stop the campaign: what ends a term is
        // its own end, above.
        let waited = self.election.timing().renew_deadline;
        let outcome = tokio::time::timeout(waited, self.attempt(started)).await.unwrap_or_else(|_| {
            warn!(lease = %self.name, ?waited, "the Lease request did not finish");
            Outcome::Failed
        });
        (outcome, started)
    }

    async fn attempt(&mut self, now: Instant) -> Outcome {
        let read = self.api.get_opt(&self.name).await;
        if matches!(read, Ok(_) | Err(kube::Error::Api(_))) {
            self.contact.answered();
        }
        let lease = match read {
            Ok(lease) => lease,
            Err(error) => {
                warn!(lease = %self.name, %error, "cannot read the Lease");
                return Outcome::Failed;
            }
        };
        let spec = lease.as_ref().and_then(|lease| lease.spec.as_ref());
        if let LeaseAction::Follow { holder } = self.election.action(spec, now) {
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
        if matches!(written, Ok(_) | Err(kube::Error::Api(_))) {
            self.contact.answered();
        }
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

/// The monotonic clock of the runtime, which tests may pause and move.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until_or_never(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use serde_json::{json, Value};

    use super::*;
    use crate::run::mock_api::{mock_api, rejected};

    const RENEW_DEADLINE: Duration = Duration::from_secs(10);

    const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/hostlb-system/leases";

    fn elector(client: Client) -> Elector {
        let timing = LeaseTiming::new(Duration::from_secs(15), RENEW_DEADLINE, Duration::from_secs(1)).unwrap();
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

    #[tokio::test(start_paused = true)]
    async fn a_renewal_that_hangs_ends_the_term_at_the_renew_deadline_after_the_last_renewal() {
        let (client, mut api) = mock_api();
        let (leading_sender, mut leading) = watch::channel(None);
        let campaign =
            tokio::spawn(async move { elector(client).campaign(&leading_sender, &Metrics::default()).await });
        let lease = format!("{LEASE_PATH}/hostlb-controller");
        api.expect("GET", &lease, 200, lease_held_by("")).await;
        api.expect("PUT", &lease, 200, lease_held_by("replica-a")).await;
        let first = leading.wait_for(Option::is_some).await.unwrap().expect("a term");

        // The clock stands still while the requests are answered: this is when the attempt began.
        api.expect("GET", &lease, 200, lease_held_by("replica-a")).await;
        let renewed_at = tokio::time::Instant::now();
        api.expect("PUT", &lease, 200, lease_held_by("replica-a")).await;
        let renewed = leading.wait_for(|term| *term != Some(first)).await.unwrap().expect("a term");
        assert_eq!((renewed.number, renewed.until), (first.number, (renewed_at + RENEW_DEADLINE).into_std()));

        api.expect("GET", &lease, 200, lease_held_by("replica-a")).await;
        let hung_at = tokio::time::Instant::now();
        let (_, _in_flight) = api.hold("PUT", &lease).await;
        leading.wait_for(Option::is_none).await.unwrap();
        assert_eq!(tokio::time::Instant::now(), renewed_at + RENEW_DEADLINE);
        assert!(tokio::time::Instant::now() < hung_at + RENEW_DEADLINE);
        campaign.abort();
    }
}
