//! Leader election over a `coordination.k8s.io/v1` Lease, the pure part: what a replica makes
//! of the Lease it has just read, what it writes, and how long it leads after each attempt.
//!
//! A Lease counts as expired when its holder and renew time have not changed for the lease
//! duration, as timed by this replica's own monotonic clock since it saw them change (as
//! client-go's leader election does): the clocks of the nodes never have to agree. On the same
//! clock, a leader leads until the renew deadline after it sent its last successful renewal,
//! whatever the attempts since then do: that instant is the end of its term.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;

/// The lease duration a released Lease carries, as client-go's leader election writes it.
const RELEASED_DURATION_SECONDS: i32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long a holder's claim stands without renewal.
    pub duration: Duration,
    /// How long a leader goes on leading after it sent its last successful renewal; below
    /// `duration`, so that it has stopped writing before anyone else may take over.
    pub renew_deadline: Duration,
    /// How often the Lease is read and, when held, renewed.
    pub retry_period: Duration,
}

impl LeaseTiming {
    /// Refuses timings under which two replicas could lead at once.
    pub fn new(duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Result<Self, String> {
        if renew_deadline >= duration {
            return Err(format!(
                "the renew deadline ({renew_deadline:?}) must be below the lease duration ({duration:?})"
            ));
        }
        if retry_period.is_zero() || retry_period >= renew_deadline {
            return Err(format!(
                "the retry period ({retry_period:?}) must be above zero and below the renew deadline ({renew_deadline:?})"
            ));
        }
        Ok(LeaseTiming { duration, renew_deadline, retry_period })
    }
}

/// What to do with the Lease as just read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseAction {
    /// Write this replica into it (create, take over or renew).
    Claim,
    /// Someone else holds it and their claim stands.
    Follow { holder: String },
}

/// How an attempt to claim or follow ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// This replica's claim was written.
    Held,
    /// Another holder's claim stands.
    HeldBy(String),
    /// The Lease could not be read or written (API server away, or a conflicting write).
    Failed,
}

/// One term of leadership, as this replica's monotonic clock sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Term {
    /// Tells this replica's terms apart, counting from 1: a term that ended stays ended even
    /// if the next one follows at once.
    pub number: u64,
    /// The renew deadline after the last successful renewal was sent; a later renewal moves it.
    pub until: Instant,
}

impl Term {
    pub fn holds_at(&self, now: Instant) -> bool {
        now < self.until
    }
}

/// Whether this replica leads, and who does as far as it knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    Leading,
    Following { holder: Option<String> },
}

impl Leadership {
    pub fn is_leading(&self) -> bool {
        matches!(self, Leadership::Leading)
    }
}

/// One replica's view of the election between two reads of the Lease.
#[derive(Debug)]
pub struct Election {
    identity: String,
    timing: LeaseTiming,
    /// The holder and renew time last read, and when this replica saw them change.
    seen: Option<(Option<String>, Option<MicroTime>)>,
    seen_changed_at: Option<Instant>,
    /// The term under way; `None` while this replica does not lead.
    term: Option<Term>,
    terms_begun: u64,
    last_holder: Option<String>,
}

impl Election {
    pub fn new(identity: impl Into<String>, timing: LeaseTiming) -> Self {
        Election {
            identity: identity.into(),
            timing,
            seen: None,
            seen_changed_at: None,
            term: None,
            terms_begun: 0,
            last_holder: None,
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn timing(&self) -> LeaseTiming {
        self.timing
    }

    /// What to do with the Lease as read at `now` (`None`: there is none yet).
    pub fn action(&mut self, lease: Option<&LeaseSpec>, now: Instant) -> LeaseAction {
        let Some(spec) = lease else { return LeaseAction::Claim };
        let record = (spec.holder_identity.clone(), spec.renew_time.clone());
        if self.seen.as_ref() != Some(&record) {
            self.seen = Some(record);
            self.seen_changed_at = Some(now);
        }
        let holder = spec.holder_identity.as_deref().unwrap_or_default();
        if holder.is_empty() || holder == self.identity {
            return LeaseAction::Claim;
        }
        let duration = spec
            .lease_duration_seconds
            .and_then(|seconds| u64::try_from(seconds).ok())
            .map_or(self.timing.duration, Duration::from_secs);
        let unchanged_for = self.seen_changed_at.map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
        if unchanged_for > duration {
            LeaseAction::Claim
        } else {
            LeaseAction::Follow { holder: holder.to_string() }
        }
    }

    /// The Lease with this replica's claim written at wall-clock `now`.
    pub fn claim(&self, lease: Option<&LeaseSpec>, now: Timestamp) -> LeaseSpec {
        let previous = lease.cloned().unwrap_or_default();
        let taken_over = previous.holder_identity.as_deref() != Some(self.identity.as_str());
        let transitions = previous.lease_transitions.unwrap_or_default();
        let had_holder = previous.holder_identity.as_deref().is_some_and(|holder| !holder.is_empty());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(self.timing.duration.as_secs()).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(now)),
            acquire_time: if taken_over { Some(MicroTime(now)) } else { previous.acquire_time.clone() },
            lease_transitions: Some(if taken_over && had_holder { transitions + 1 } else { transitions }),
            ..previous
        }
    }

    /// The term under way, if this replica leads.
    pub fn term(&self) -> Option<Term> {
        self.term
    }

    /// Records how an attempt that ran from `started` to `ended` ended; returns the leadership
    /// that follows. A claim counts from when the attempt started, the latest its writing could
    /// have been seen by others, and only if it came back before the renew deadline counted
    /// from then. A term that ended before the answer came stays ended: a claim that counts
    /// then begins the next one.
    pub fn record(&mut self, outcome: Outcome, started: Instant, ended: Instant) -> Leadership {
        self.end_lapsed_term(ended);
        let until = started + self.timing.renew_deadline;
        match outcome {
            Outcome::Held if until > ended => {
                let number = match self.term {
                    Some(term) => term.number,
                    None => {
                        self.terms_begun += 1;
                        self.terms_begun
                    }
                };
                self.term = Some(Term { number, until });
                self.last_holder = Some(self.identity.clone());
            }
            Outcome::Held | Outcome::Failed => {}
            Outcome::HeldBy(holder) => {
                self.term = None;
                self.last_holder = Some(holder);
            }
        }
        self.leadership()
    }

    /// The leadership at `now`, with no attempt answered since the last one recorded.
    pub fn leadership_at(&mut self, now: Instant) -> Leadership {
        self.end_lapsed_term(now);
        self.leadership()
    }

    fn end_lapsed_term(&mut self, now: Instant) {
        if self.term.is_some_and(|term| !term.holds_at(now)) {
            self.term = None;
        }
    }

    fn leadership(&self) -> Leadership {
        match self.term {
            Some(_) => Leadership::Leading,
            None => {
                Leadership::Following { holder: self.last_holder.clone().filter(|holder| *holder != self.identity) }
            }
        }
    }
}

/// The Lease as its holder leaves it on a graceful shutdown: no holder, so that another
/// replica claims it at its next read instead of waiting for the claim to expire.
pub fn released(lease: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(RELEASED_DURATION_SECONDS),
        renew_time: Some(MicroTime(now)),
        ..lease.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn timing() -> LeaseTiming {
        LeaseTiming::new(15 * SECOND, 10 * SECOND, 2 * SECOND).expect("valid timing")
    }

    fn held_by(holder: &str, renewed_at_second: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed_at_second).expect("valid time"))),
            ..LeaseSpec::default()
        }
    }

    fn wall(second: i64) -> Timestamp {
        Timestamp::from_second(second).expect("valid time")
    }

    #[test]
    fn timings_that_could_let_two_replicas_lead_are_refused() {
        assert!(LeaseTiming::new(10 * SECOND, 10 * SECOND, SECOND).is_err());
        assert!(LeaseTiming::new(15 * SECOND, 10 * SECOND, 10 * SECOND).is_err());
        assert!(LeaseTiming::new(15 * SECOND, 10 * SECOND, Duration::ZERO).is_err());
    }

    #[test]
    fn a_missing_free_or_own_lease_is_claimed() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        assert_eq!(election.action(None, start), LeaseAction::Claim);
        let free = LeaseSpec { holder_identity: Some(String::new()), ..LeaseSpec::default() };
        assert_eq!(election.action(Some(&free), start), LeaseAction::Claim);
        assert_eq!(election.action(Some(&released(&held_by("b", 100), wall(101))), start), LeaseAction::Claim);
        assert_eq!(election.action(Some(&held_by("a", 100)), start), LeaseAction::Claim);
    }

    #[test]
    fn another_holder_is_followed_until_its_claim_has_not_changed_for_the_lease_duration() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        let follow_b = LeaseAction::Follow { holder: "b".into() };
        assert_eq!(election.action(Some(&held_by("b", 100)), start), follow_b);
        assert_eq!(election.action(Some(&held_by("b", 100)), start + 15 * SECOND), follow_b);
        // Renewed meanwhile: the wait starts again from when the renewal was seen.
        assert_eq!(election.action(Some(&held_by("b", 110)), start + 16 * SECOND), follow_b);
        assert_eq!(election.action(Some(&held_by("b", 110)), start + 31 * SECOND), follow_b);
        assert_eq!(election.action(Some(&held_by("b", 110)), start + 32 * SECOND), LeaseAction::Claim);
    }

    #[test]
    fn a_renew_time_from_a_clock_far_off_does_not_matter() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        let from_the_past = held_by("b", 0);
        assert_eq!(election.action(Some(&from_the_past), start), LeaseAction::Follow { holder: "b".into() });
    }

    #[test]
    fn claims_count_transitions_only_when_the_holder_changes() {
        let election = Election::new("a", timing());
        let created = election.claim(None, wall(100));
        assert_eq!(created.holder_identity.as_deref(), Some("a"));
        assert_eq!(created.lease_transitions, Some(0));
        assert_eq!(created.acquire_time, Some(MicroTime(wall(100))));
        assert_eq!(created.lease_duration_seconds, Some(15));

        let renewed = election.claim(Some(&created), wall(102));
        assert_eq!(renewed.lease_transitions, Some(0));
        assert_eq!(renewed.acquire_time, Some(MicroTime(wall(100))));
        assert_eq!(renewed.renew_time, Some(MicroTime(wall(102))));

        let taken = election.claim(Some(&LeaseSpec { lease_transitions: Some(3), ..held_by("b", 90) }), wall(110));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.acquire_time, Some(MicroTime(wall(110))));
    }

    #[test]
    fn a_released_lease_keeps_its_history_but_has_no_holder() {
        let lease = LeaseSpec { lease_transitions: Some(2), ..held_by("a", 100) };
        let released = released(&lease, wall(120));
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_transitions, Some(2));
        assert_eq!(released.renew_time, Some(MicroTime(wall(120))));
    }

    #[test]
    fn a_leader_leads_until_the_renew_deadline_after_its_last_renewal_was_sent() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        assert_eq!(election.record(Outcome::Failed, start, start), Leadership::Following { holder: None });
        assert_eq!(election.term(), None);
        // Sent at `start`, answered 3 s later: the term counts from when it was sent.
        assert_eq!(election.record(Outcome::Held, start, start + 3 * SECOND), Leadership::Leading);
        assert_eq!(election.term(), Some(Term { number: 1, until: start + 10 * SECOND }));
        assert_eq!(election.record(Outcome::Held, start + 2 * SECOND, start + 2 * SECOND), Leadership::Leading);
        let renewed = Term { number: 1, until: start + 12 * SECOND };
        assert_eq!(election.term(), Some(renewed));
        // Failures do not move the end of the term, and neither does one that took long.
        assert_eq!(election.record(Outcome::Failed, start + 3 * SECOND, start + 11 * SECOND), Leadership::Leading);
        assert_eq!(election.term(), Some(renewed));
        assert_eq!(election.leadership_at(start + 12 * SECOND - Duration::from_millis(1)), Leadership::Leading);
        assert_eq!(election.leadership_at(start + 12 * SECOND), Leadership::Following { holder: None });
        assert_eq!(election.term(), None);
        // A later failure does not bring the leadership back.
        assert_eq!(
            election.record(Outcome::Failed, start + 13 * SECOND, start + 13 * SECOND),
            Leadership::Following { holder: None }
        );
    }

    #[test]
    fn a_term_that_lapsed_stays_over_and_a_renewal_after_it_begins_the_next() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        election.record(Outcome::Held, start, start);
        // Sent within the term, answered after its end: the term is over all the same.
        assert_eq!(election.record(Outcome::Held, start + 9 * SECOND, start + 11 * SECOND), Leadership::Leading);
        assert_eq!(election.term(), Some(Term { number: 2, until: start + 19 * SECOND }));
    }

    #[test]
    fn a_claim_answered_after_its_own_deadline_does_not_lead() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        assert_eq!(election.record(Outcome::Held, start, start + 10 * SECOND), Leadership::Following { holder: None });
        assert_eq!(election.term(), None);
    }

    #[test]
    fn a_leader_whose_lease_was_taken_follows_at_once() {
        let start = Instant::now();
        let mut election = Election::new("a", timing());
        assert!(election.record(Outcome::Held, start, start).is_leading());
        let following = election.record(Outcome::HeldBy("b".into()), start + SECOND, start + SECOND);
        assert_eq!(following, Leadership::Following { holder: Some("b".into()) });
        // The holder is remembered through failed reads.
        assert_eq!(election.record(Outcome::Failed, start + 2 * SECOND, start + 2 * SECOND), following);
    }
}
