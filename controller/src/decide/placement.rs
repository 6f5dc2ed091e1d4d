//! Which nodes may run a Service's proxy pods. The same rules become the DaemonSet's node
//! selection and decide which nodes may be published, so the two never disagree.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Node;

use hostlb_model::names;
use hostlb_model::options::ServiceLb;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Labels a node must carry, with these values.
    pub required_labels: BTreeMap<String, String>,
    /// The pool a node must be in (`in_pool`).
    pub pool: Option<String>,
    /// Labels a node must not carry at all.
    pub forbidden_labels: Vec<String>,
    /// Nodes where an older Service holds one of this Service's host ports.
    pub excluded_nodes: BTreeSet<String>,
}

impl Placement {
    /// `enablelb_in_use`: ServiceLB's opt-in switch; once any node carries the `enablelb` label,
    /// only nodes labelled `true` are admitted.
    pub fn for_service(lb: &ServiceLb, enablelb_in_use: bool) -> Self {
        let mut required_labels = BTreeMap::from([(names::NODE_LABEL_OS.to_string(), "linux".to_string())]);
        if enablelb_in_use {
            required_labels.insert(names::NODE_LABEL_ENABLE_LB.into(), "true".into());
        }
        Placement {
            required_labels,
            pool: lb.pool.clone(),
            forbidden_labels: vec![names::NODE_LABEL_EXCLUDE.into()],
            excluded_nodes: BTreeSet::new(),
        }
    }

    /// Every node that is not excluded from load balancers: for a Service whose own choice of
    /// nodes cannot be read, where its running proxies decide.
    pub fn anywhere() -> Self {
        Placement {
            required_labels: BTreeMap::new(),
            pool: None,
            forbidden_labels: vec![names::NODE_LABEL_EXCLUDE.into()],
            excluded_nodes: BTreeSet::new(),
        }
    }

    pub fn admits(&self, node: &Node) -> bool {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        self.required_labels.iter().all(|(key, value)| labels.get(key) == Some(value))
            && self.pool.as_ref().is_none_or(|pool| in_pool(labels, pool))
            && self.forbidden_labels.iter().all(|key| !labels.contains_key(key))
            && node.metadata.name.as_ref().is_none_or(|name| !self.excluded_nodes.contains(name))
    }

    /// Why no node is admitted, in terms a user can act on.
    pub fn explain_empty(&self, lb: &ServiceLb, nodes: &[&Node]) -> String {
        if let Some(pool) = &lb.pool {
            if !nodes.iter().any(|n| n.metadata.labels.as_ref().is_some_and(|labels| in_pool(labels, pool))) {
                return format!(
                    "no node is in pool {pool} (label {}={pool} or {})",
                    names::POOL,
                    names::pool_label(pool)
                );
            }
        }
        let wanted: Vec<String> = self.required_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        format!("no node has all of the labels {} without {}", wanted.join(", "), self.forbidden_labels.join(", "))
    }
}

/// A node is in a pool through `hostlb.io/lbpool=POOL`, or, to be in several, through a label
/// `pool.hostlb.io/POOL` per pool (any value).
pub fn in_pool(labels: &BTreeMap<String, String>, pool: &str) -> bool {
    labels.get(names::POOL).is_some_and(|value| value == pool) || labels.contains_key(&names::pool_label(pool))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NodeBuilder, ServiceBuilder};

    fn lb(pool: Option<&str>) -> ServiceLb {
        let mut builder = ServiceBuilder::new("web");
        if let Some(pool) = pool {
            builder = builder.label(names::POOL, pool);
        }
        ServiceLb::from_service(&builder.build()).unwrap()
    }

    #[test]
    fn every_linux_node_is_admitted_by_default() {
        let placement = Placement::for_service(&lb(None), false);
        assert!(placement.admits(&NodeBuilder::new("a").build()));
    }

    #[test]
    fn excluded_nodes_are_never_admitted() {
        let placement = Placement::for_service(&lb(None), false);
        assert!(!placement.admits(&NodeBuilder::new("a").label(names::NODE_LABEL_EXCLUDE, "").build()));
    }

    #[test]
    fn once_any_node_opts_in_only_opted_in_nodes_are_admitted() {
        let opted_in = NodeBuilder::new("a").label(names::NODE_LABEL_ENABLE_LB, "true").build();
        let opted_out = NodeBuilder::new("b").label(names::NODE_LABEL_ENABLE_LB, "false").build();
        let unlabelled = NodeBuilder::new("c").build();
        let placement = Placement::for_service(&lb(None), true);
        assert!(placement.admits(&opted_in));
        assert!(!placement.admits(&opted_out));
        assert!(!placement.admits(&unlabelled));
    }

    #[test]
    fn a_pool_narrows_to_nodes_of_that_pool() {
        let placement = Placement::for_service(&lb(Some("edge")), false);
        assert!(placement.admits(&NodeBuilder::new("a").label(names::POOL, "edge").build()));
        assert!(!placement.admits(&NodeBuilder::new("b").label(names::POOL, "core").build()));
        assert!(!placement.admits(&NodeBuilder::new("c").build()));
    }

    #[test]
    fn a_node_may_be_in_several_pools_through_one_label_per_pool() {
        let both = NodeBuilder::new("a").label("pool.hostlb.io/edge", "true").label("pool.hostlb.io/core", "").build();
        let mixed = NodeBuilder::new("b").label(names::POOL, "core").label("pool.hostlb.io/edge", "true").build();
        for pool in ["edge", "core"] {
            let placement = Placement::for_service(&lb(Some(pool)), false);
            assert!(placement.admits(&both), "{pool}");
            assert!(placement.admits(&mixed), "{pool}");
        }
        assert!(!Placement::for_service(&lb(Some("lab")), false).admits(&both));
    }

    #[test]
    fn an_unknown_pool_is_explained_by_name() {
        let lb = lb(Some("edge"));
        let placement = Placement::for_service(&lb, false);
        let node = NodeBuilder::new("a").label(names::POOL, "core").build();
        assert_eq!(
            placement.explain_empty(&lb, &[&node]),
            "no node is in pool edge (label hostlb.io/lbpool=edge or pool.hostlb.io/edge)"
        );
    }
}
