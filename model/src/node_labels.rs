//! What a node's labels say of where proxy pods may run: its pools and its `enablelb` switch.
//! k3s ServiceLB's labels count as hostlb's own, so that nodes labelled for it need no
//! relabelling.

use std::collections::BTreeMap;

use crate::names;

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
