//! Replacing proxy pods without losing traffic. A published address is served by kube-proxy's
//! load-balancer rules while it is in the status, so a node whose proxy pod is being replaced
//! stays published meanwhile; and hostlb replaces pods itself (the DaemonSet is `OnDelete`),
//! one node at a time, only when what they do has changed.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use crate::decide::placement::Placement;
use crate::state::{Index, ProxyPod};

/// How long a published node stays published while its proxy pod is replaced: from the old
/// pod's departure, or the new pod's creation, until the new pod is Ready.
pub const REPLACEMENT_WINDOW: Duration = Duration::from_secs(30);

/// The nodes whose proxy pod is being replaced, and when the first of their windows ends.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Replacements {
    pub nodes: BTreeSet<String>,
    pub next_deadline: Option<Timestamp>,
}

/// Which of `nodes` are between two proxy pods: none of the Service's pods there is Ready or
/// failing, and one is being deleted (its node's liveness bounds that), or one was created
/// within the window, or the last one went (`departed`) within it.
pub fn replacements<'a>(
    pods: &[&ProxyPod],
    nodes: impl IntoIterator<Item = &'a str>,
    departed: impl Fn(&str) -> Option<Timestamp>,
    now: Timestamp,
) -> Replacements {
    let within = |since: Timestamp| window_end(since).filter(|until| *until > now);
    let mut found = Replacements::default();
    for node in nodes {
        let here: Vec<&&ProxyPod> = on(pods, node).collect();
        if here.iter().any(|pod| pod.ready || pod.failure.is_some() || pod.unschedulable.is_some()) {
            continue;
        }
        let deadline = if here.iter().any(|pod| pod.deleting) {
            None
        } else {
            let newest = here.iter().filter_map(|pod| pod.created).max();
            let since = if here.is_empty() { departed_within(node, &departed, now) } else { newest };
            match since.and_then(within) {
                Some(until) => Some(until),
                None => continue,
            }
        };
        found.nodes.insert(node.to_string());
        found.next_deadline = match (found.next_deadline, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    found
}

fn window_end(since: Timestamp) -> Option<Timestamp> {
    since.checked_add(SignedDuration::try_from(REPLACEMENT_WINDOW).ok()?).ok()
}

fn on<'p, 'a>(pods: &'p [&'a ProxyPod], node: &'p str) -> impl Iterator<Item = &'p &'a ProxyPod> {
    pods.iter().filter(move |pod| pod.node.as_deref() == Some(node))
}

/// When the Service's pod on `node` went, if that was within the window.
fn departed_within(node: &str, departed: impl Fn(&str) -> Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    departed(node).filter(|since| window_end(*since).is_some_and(|until| until > now))
}

/// Whether one of `nodes` lost its pod within the window and has no new one yet.
pub fn departure_pending<'a>(
    pods: &[&ProxyPod],
    mut nodes: impl Iterator<Item = &'a str>,
    departed: impl Fn(&str) -> Option<Timestamp>,
    now: Timestamp,
) -> bool {
    nodes.any(|node| on(pods, node).next().is_none() && departed_within(node, &departed, now).is_some())
}

/// What the DaemonSet's pods should carry: the proxy spec hash hostlb applies and the last
/// `rollout restart` mark of its template.
#[derive(Clone, Copy, Debug)]
pub struct Current<'a> {
    pub spec_hash: &'a str,
    pub restarted_at: Option<&'a str>,
}

impl Current<'_> {
    fn has(&self, pod: &ProxyPod) -> bool {
        pod.spec_hash.as_deref() == Some(self.spec_hash) && pod.restarted_at.as_deref() == self.restarted_at
    }
}

/// The next proxy pod to replace, if one is out of date and no replacement is under way: no pod
/// is being deleted, no node that lost its pod (`departure_pending`) waits for the next, and
/// every current pod that could be placed runs. A current pod that fails holds the roll, so
/// that a bad change stops at the first node. Pods that serve nothing go first.
pub fn next_to_replace<'a>(
    pods: &[&'a ProxyPod],
    current: Current<'_>,
    departure_pending: bool,
) -> Option<&'a ProxyPod> {
    let replacing = departure_pending
        || pods.iter().any(|pod| pod.deleting || (current.has(pod) && !pod.running && pod.unschedulable.is_none()));
    if replacing {
        return None;
    }
    pods.iter().filter(|pod| !current.has(pod)).min_by_key(|pod| (pod.ready, pod.node.clone())).copied()
}

/// The nodes the placement admits and whose Lease and Ready condition say they serve.
pub fn eligible_node_names<'a>(index: &'a Index, placement: &'a Placement) -> impl Iterator<Item = &'a str> {
    index
        .nodes
        .values()
        .filter(|node| placement.admits(node) && index.serves(node))
        .filter_map(|node| node.metadata.name.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-06-01T12:00:00Z";

    fn at(seconds_before_now: i64) -> Timestamp {
        NOW.parse::<Timestamp>().unwrap() - SignedDuration::from_secs(seconds_before_now)
    }

    fn pod(name: &str, node: &str, hash: &str) -> ProxyPod {
        ProxyPod {
            key: format!("hostlb-system/{name}"),
            node: Some(node.into()),
            created: Some(at(600)),
            ready: true,
            running: true,
            spec_hash: Some(hash.into()),
            ..ProxyPod::default()
        }
    }

    fn starting(mut pod: ProxyPod, created_seconds_ago: i64) -> ProxyPod {
        pod.created = Some(at(created_seconds_ago));
        pod.ready = false;
        pod.running = false;
        pod
    }

    fn deleting(mut pod: ProxyPod) -> ProxyPod {
        pod.deleting = true;
        pod.ready = false;
        pod.running = false;
        pod
    }

    fn replaced(pods: &[ProxyPod], departures: &[(&str, i64)]) -> Replacements {
        let pods: Vec<&ProxyPod> = pods.iter().collect();
        let departed = |node: &str| departures.iter().find(|(n, _)| *n == node).map(|(_, ago)| at(*ago));
        replacements(&pods, ["n1", "n2", "n3"], departed, at(0))
    }

    #[test]
    fn a_node_is_between_pods_from_the_old_ones_deletion_until_the_new_one_is_ready() {
        let old = pod("old", "n1", "a");
        assert!(replaced(std::slice::from_ref(&old), &[]).nodes.is_empty(), "a Ready pod is no replacement");

        let terminating = replaced(&[deleting(old.clone()), pod("p2", "n2", "a")], &[]);
        assert_eq!(terminating.nodes, BTreeSet::from(["n1".to_string()]));
        assert_eq!(terminating.next_deadline, None, "a pod being deleted is bounded by its node's liveness");

        let gone = replaced(&[pod("p2", "n2", "a")], &[("n1", 2)]);
        assert_eq!(gone.nodes, BTreeSet::from(["n1".to_string()]));
        assert_eq!(gone.next_deadline, Some(at(2) + SignedDuration::from_secs(30)));

        let new = replaced(&[starting(pod("new", "n1", "b"), 5)], &[("n1", 6)]);
        assert_eq!(new.nodes, BTreeSet::from(["n1".to_string()]));
        assert_eq!(new.next_deadline, Some(at(5) + SignedDuration::from_secs(30)));
    }

    #[test]
    fn the_window_ends_and_failing_or_unplaceable_pods_are_no_replacement() {
        assert!(replaced(&[starting(pod("new", "n1", "b"), 31)], &[]).nodes.is_empty());
        assert!(replaced(&[], &[("n1", 31)]).nodes.is_empty());
        assert!(replaced(&[], &[]).nodes.is_empty(), "a node that never had a pod is not between pods");
        let mut failing = starting(pod("new", "n1", "b"), 5);
        failing.failure = Some("container lb: CrashLoopBackOff".into());
        assert!(replaced(&[failing], &[]).nodes.is_empty());
        let mut unplaceable = starting(pod("new", "n1", "b"), 5);
        unplaceable.unschedulable = Some("0/2 nodes are available".into());
        assert!(replaced(&[unplaceable], &[]).nodes.is_empty());
        let mut unready = pod("p1", "n1", "a");
        unready.ready = false;
        assert!(replaced(&[unready], &[]).nodes.is_empty(), "a pod that turned unready is not being replaced");
    }

    fn next(pods: &[ProxyPod], restarted_at: Option<&str>, departure_pending: bool) -> Option<String> {
        let pods: Vec<&ProxyPod> = pods.iter().collect();
        let current = Current { spec_hash: "b", restarted_at };
        next_to_replace(&pods, current, departure_pending).map(|pod| pod.key.clone())
    }

    #[test]
    fn out_of_date_pods_are_replaced_one_at_a_time_unready_ones_first() {
        let mut unready = pod("p2", "n2", "a");
        unready.ready = false;
        let pods = [pod("p1", "n1", "a"), unready.clone(), pod("p3", "n3", "b")];
        assert_eq!(next(&pods, None, false).as_deref(), Some("hostlb-system/p2"));
        let pods = [pod("p1", "n1", "a"), pod("p2", "n2", "a"), pod("p3", "n3", "b")];
        assert_eq!(next(&pods, None, false).as_deref(), Some("hostlb-system/p1"));
        assert_eq!(next(&[pod("p3", "n3", "b")], None, false), None, "every pod is current");
    }

    #[test]
    fn a_replacement_under_way_holds_the_next() {
        let old = pod("p1", "n1", "a");
        assert_eq!(next(&[old.clone(), deleting(pod("p2", "n2", "a"))], None, false), None);
        assert_eq!(next(std::slice::from_ref(&old), None, true), None, "a node waits for its new pod");
        assert_eq!(next(&[old.clone(), starting(pod("p2", "n2", "b"), 1)], None, false), None);
        let mut failing = starting(pod("p2", "n2", "b"), 100);
        failing.failure = Some("container lb: CrashLoopBackOff".into());
        assert_eq!(next(&[old.clone(), failing], None, false), None, "a failing new pod stops the roll");
        let mut unplaceable = starting(pod("p2", "n2", "b"), 100);
        unplaceable.unschedulable = Some("0/2 nodes are available".into());
        assert_eq!(next(&[old, unplaceable], None, false).as_deref(), Some("hostlb-system/p1"));
    }

    #[test]
    fn a_rollout_restart_replaces_the_pods_that_came_before_it() {
        let mut restarted = pod("p2", "n2", "b");
        restarted.restarted_at = Some("2026-06-01T11:00:00Z".into());
        let pods = [pod("p1", "n1", "b"), restarted];
        assert_eq!(next(&pods, Some("2026-06-01T11:00:00Z"), false).as_deref(), Some("hostlb-system/p1"));
        assert_eq!(next(&pods, None, false).as_deref(), Some("hostlb-system/p2"));
    }
}
