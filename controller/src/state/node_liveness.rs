//! Fast failover: a node whose kubelet stopped renewing its Lease (`kube-node-lease`) leaves
//! every status long before the node controller marks it NotReady (about 40 s by default).
//! A renewal is timed by when this controller saw it, on its own monotonic clock, not by the
//! `renewTime` the kubelet wrote: silence from a watch that is away is no news of the node.
//! Pure: the watches bring the Leases and the clock.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::Timestamp;

/// Where kubelets keep their Leases, one per node, named after it.
pub const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";

/// kubelet renews its Lease every quarter of the Lease's duration (10 s of the default 40 s).
const RENEWALS_PER_DURATION: u64 = 4;

/// A node's Lease as last seen: its renewal time (which changes with each renewal) and how
/// often the kubelet renews it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    pub renewed: Timestamp,
    pub interval: Duration,
}

impl Renewal {
    /// None for a Lease without a renewal time or duration: such a node is judged by its Ready
    /// condition alone.
    pub fn of(lease: &Lease) -> Option<Renewal> {
        let spec = lease.spec.as_ref()?;
        let renewed = spec.renew_time.as_ref()?.0;
        let duration = u64::try_from(spec.lease_duration_seconds?).ok().filter(|d| *d > 0)?;
        Some(Renewal { renewed, interval: Duration::from_secs(duration) / RENEWALS_PER_DURATION as u32 })
    }

    /// Whether the kubelet missed its renewal by more than `grace`, the last renewal having
    /// been seen at `seen`.
    pub fn is_stale(&self, seen: Instant, now: Instant, grace: Duration) -> bool {
        now.saturating_duration_since(seen) > self.interval + grace
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;

    use super::*;

    fn lease(renewed_at_second: Option<i64>, duration: Option<i32>) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                renew_time: renewed_at_second.map(|s| MicroTime(Timestamp::from_second(s).unwrap())),
                lease_duration_seconds: duration,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_lease_is_stale_once_a_renewal_is_missed_by_more_than_the_grace_after_it_was_seen() {
        let renewal = Renewal::of(&lease(Some(1_000), Some(40))).unwrap();
        assert_eq!(renewal.interval, Duration::from_secs(10));
        let (grace, seen) = (Duration::from_secs(10), Instant::now());
        let at = |seconds: u64| seen + Duration::from_secs(seconds);
        assert!(!renewal.is_stale(seen, at(0), grace));
        assert!(!renewal.is_stale(seen, at(20), grace), "10 s interval + 10 s grace");
        assert!(renewal.is_stale(seen, at(21), grace));
        assert!(!renewal.is_stale(at(5), seen, grace), "seen after now: not stale");
    }

    #[test]
    fn leases_without_renewal_time_or_duration_say_nothing() {
        assert_eq!(Renewal::of(&lease(None, Some(40))), None);
        assert_eq!(Renewal::of(&lease(Some(1_000), None)), None);
        assert_eq!(Renewal::of(&lease(Some(1_000), Some(0))), None);
        assert_eq!(Renewal::of(&Lease::default()), None);
    }
}
