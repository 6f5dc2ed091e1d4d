//! What a node's labels say of where proxy pods may run: its pools and its `enablelb` switch.
//! k3s ServiceLB's labels count as hostlb's own, so that nodes labelled for it need no
//! relabelling.
//!
//! A kubelet may write its own Node's labels, except those under `node-restriction.kubernetes.io/`
//! (NodeRestriction keeps that prefix for the admin): so the admin's labels there are what place
//! Services (`placement_labels`), and the labels above, which the node itself could set to join
//! every pool, count only where the admin trusts the nodes (`--trust-node-labels`).

use std::collections::BTreeMap;

use crate::names;

/// The admin's labels, which no kubelet may write: a pool, a pool of several, the switch.
pub const ADMIN_POOL: &str = "node-restriction.kubernetes.io/hostlb-lbpool";
pub const ADMIN_POOL_PREFIX: &str = "node-restriction.kubernetes.io/hostlb-pool.";
pub const ADMIN_ENABLE_LB: &str = "node-restriction.kubernetes.io/hostlb-enablelb";

/// Whether the node itself may have set this label, which says where Services are placed.
fn node_writable_placement_label(key: &str) -> bool {
    [names::POOL, names::K3S_POOL, names::NODE_LABEL_ENABLE_LB, names::K3S_NODE_LABEL_ENABLE_LB].contains(&key)
        || key.starts_with(&names::pool_label(""))
}

/// The node's labels as placement reads them: the admin's under hostlb's names (its pools added to
/// the node's own, its switch deciding where both say), the node-writable ones only when
/// `trust_node_labels`, every other label as it is.
pub fn placement_labels(labels: &BTreeMap<String, String>, trust_node_labels: bool) -> BTreeMap<String, String> {
    let mut placed: BTreeMap<String, String> = labels
        .iter()
        .filter(|(key, _)| trust_node_labels || !node_writable_placement_label(key))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    // A pool label adds a pool to those of the node's own labels; the switch overrides theirs.
    for (key, value) in labels {
        let admins = if key == ADMIN_POOL {
            Some((names::pool_label(value), "true".to_string()))
        } else if key == ADMIN_ENABLE_LB {
            Some((names::NODE_LABEL_ENABLE_LB.to_string(), value.clone()))
        } else {
            key.strip_prefix(ADMIN_POOL_PREFIX).map(|pool| (names::pool_label(pool), value.clone()))
        };
        placed.extend(admins);
    }
    placed
}

/// A node is in a pool through `hostlb.io/lbpool=POOL` or k3s ServiceLB's
/// `svccontroller.k3s.cattle.io/lbpool=POOL`, or, to be in several, through a label
/// `pool.hostlb.io/POOL` per pool (any value).
pub fn in_pool(labels: &BTreeMap<String, String>, pool: &str) -> bool {
    [names::POOL, names::K3S_POOL].iter().any(|key| labels.get(*key).is_some_and(|value| value == pool))
        || labels.contains_key(&names::pool_label(pool))
}

/// Whether a node carries an `enablelb` switch, hostlb's or k3s ServiceLB's: once any node
/// does, only nodes that switched it on run proxy pods.
pub fn carries_enablelb(labels: &BTreeMap<String, String>) -> bool {
    labels.contains_key(names::NODE_LABEL_ENABLE_LB) || labels.contains_key(names::K3S_NODE_LABEL_ENABLE_LB)
}

/// Whether a node switched `enablelb` on: by hostlb's label, or, where it has none, by k3s
/// ServiceLB's. hostlb's own label decides where a node has both, so that it can take a node
/// out that ServiceLB's label still lets in.
pub fn enables_lb(labels: &BTreeMap<String, String>) -> bool {
    let switch = labels.get(names::NODE_LABEL_ENABLE_LB).or_else(|| labels.get(names::K3S_NODE_LABEL_ENABLE_LB));
    switch.is_some_and(|value| value == "true")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_admins_labels_place_services_unless_the_nodes_are_trusted() {
        let node_set = labels(&[
            (names::POOL, "edge"),
            ("pool.hostlb.io/blue", "true"),
            (names::K3S_NODE_LABEL_ENABLE_LB, "true"),
            ("kubernetes.io/hostname", "n1"),
        ]);
        let untrusted = placement_labels(&node_set, false);
        assert_eq!(untrusted, labels(&[("kubernetes.io/hostname", "n1")]));
        assert!(!in_pool(&untrusted, "edge") && !carries_enablelb(&untrusted));
        assert_eq!(placement_labels(&node_set, true), node_set);

        let admin_set = labels(&[
            (ADMIN_POOL, "edge"),
            ("node-restriction.kubernetes.io/hostlb-pool.blue", "x"),
            (ADMIN_ENABLE_LB, "false"),
            (names::NODE_LABEL_ENABLE_LB, "true"),
        ]);
        for trusted in [false, true] {
            let placed = placement_labels(&admin_set, trusted);
            assert!(in_pool(&placed, "edge") && in_pool(&placed, "blue"), "{placed:?}");
            assert!(carries_enablelb(&placed) && !enables_lb(&placed), "the admin's switch decides: {placed:?}");
        }
        let both = labels(&[(names::POOL, "green"), (ADMIN_POOL, "violet")]);
        let placed = placement_labels(&both, true);
        assert!(in_pool(&placed, "green") && in_pool(&placed, "violet"), "a trusted node is in both: {placed:?}");
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn servicelbs_pool_label_puts_a_node_in_its_pool_beside_hostlbs_own() {
        let k3s = labels(&[(names::K3S_POOL, "edge")]);
        assert!(in_pool(&k3s, "edge"));
        assert!(!in_pool(&k3s, "core"));
        let both = labels(&[(names::K3S_POOL, "edge"), (names::POOL, "core")]);
        assert!(in_pool(&both, "edge") && in_pool(&both, "core"));
    }

    #[test]
    fn servicelbs_enablelb_switches_a_node_unless_hostlbs_own_label_says_otherwise() {
        let k3s_on = labels(&[(names::K3S_NODE_LABEL_ENABLE_LB, "true")]);
        let k3s_off = labels(&[(names::K3S_NODE_LABEL_ENABLE_LB, "false")]);
        let overruled = labels(&[(names::K3S_NODE_LABEL_ENABLE_LB, "true"), (names::NODE_LABEL_ENABLE_LB, "false")]);
        let hostlb_on = labels(&[(names::K3S_NODE_LABEL_ENABLE_LB, "false"), (names::NODE_LABEL_ENABLE_LB, "true")]);
        assert!(enables_lb(&k3s_on) && enables_lb(&hostlb_on));
        assert!(!enables_lb(&k3s_off) && !enables_lb(&overruled));
        assert!([&k3s_on, &k3s_off, &overruled, &hostlb_on].iter().all(|node| carries_enablelb(node)));
        assert!(!carries_enablelb(&labels(&[])) && !enables_lb(&labels(&[])));
    }
}
