//! Which nodes may run a Service's proxy pods. The same rules become the DaemonSet's node
//! selection and decide which nodes may be published, so the two never disagree. k3s
//! ServiceLB's node labels count as hostlb's own, so that nodes labelled for it need no
//! relabelling.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement};

use hostlb_model::names;
use hostlb_model::node_labels::{enables_lb, in_pool, ADMIN_ENABLE_LB, ADMIN_POOL, ADMIN_POOL_PREFIX};
use hostlb_model::options::ServiceLb;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Labels a node must carry, with these values.
    pub required_labels: BTreeMap<String, String>,
    /// Whether a node must have switched `enablelb` on (`enables_lb`).
    pub enablelb: bool,
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
        Placement {
            required_labels: BTreeMap::from([(names::NODE_LABEL_OS.to_string(), "linux".to_string())]),
            enablelb: enablelb_in_use,
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
            enablelb: false,
            pool: None,
            forbidden_labels: vec![names::NODE_LABEL_EXCLUDE.into()],
            excluded_nodes: BTreeSet::new(),
        }
    }

    pub fn admits(&self, node: &Node) -> bool {
        let empty = BTreeMap::new();
        let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
        self.required_labels.iter().all(|(key, value)| labels.get(key) == Some(value))
            && (!self.enablelb || enables_lb(labels))
            && self.pool.as_ref().is_none_or(|pool| in_pool(labels, pool))
            && self.forbidden_labels.iter().all(|key| !labels.contains_key(key))
            && node.metadata.name.as_ref().is_none_or(|name| !self.excluded_nodes.contains(name))
    }

    /// Why no node is admitted, in terms a user can act on.
    pub fn explain_empty(&self, lb: &ServiceLb, nodes: &[&Node]) -> String {
        if let Some(pool) = &lb.pool {
            if !nodes.iter().any(|n| n.metadata.labels.as_ref().is_some_and(|labels| in_pool(labels, pool))) {
                return format!(
                    "no node is in pool {pool} (label {ADMIN_POOL}={pool} or {ADMIN_POOL_PREFIX}{pool}; {}={pool}, {} or \
                     {}={pool} with --trust-node-labels)",
                    names::POOL,
                    names::pool_label(pool),
                    names::K3S_POOL
                );
            }
        }
        let mut wanted: Vec<String> = self.required_labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        if self.enablelb {
            wanted.push(format!("{}=true", names::NODE_LABEL_ENABLE_LB));
        }
        format!("no node has all of the labels {} without {}", wanted.join(", "), self.forbidden_labels.join(", "))
    }

    /// The same choice for the scheduler: alternatives (any one admits a node), each a list of
    /// requirements that all hold. The scheduler reads the nodes' own labels: the admin's
    /// `node-restriction.kubernetes.io/hostlb-*` ones, and, with `trust_node_labels`, those a
    /// kubelet may write, as `node_labels::placement_labels` reads them for the index.
    pub fn label_alternatives(&self, trust_node_labels: bool) -> Vec<Vec<NodeSelectorRequirement>> {
        let requirement = |key: &str, operator: &str, value: Option<&str>| NodeSelectorRequirement {
            key: key.into(),
            operator: operator.into(),
            values: value.map(|value| vec![value.to_string()]),
        };
        let pools = match &self.pool {
            None => vec![vec![]],
            Some(pool) => {
                let admins = [
                    vec![requirement(ADMIN_POOL, "In", Some(pool))],
                    vec![requirement(&format!("{ADMIN_POOL_PREFIX}{pool}"), "Exists", None)],
                ];
                let nodes = [
                    vec![requirement(names::POOL, "In", Some(pool))],
                    vec![requirement(&names::pool_label(pool), "Exists", None)],
                    vec![requirement(names::K3S_POOL, "In", Some(pool))],
                ];
                admins.into_iter().chain(nodes.into_iter().filter(|_| trust_node_labels)).collect()
            }
        };
        let switches = if self.enablelb {
            let admins = vec![requirement(ADMIN_ENABLE_LB, "In", Some("true"))];
            let nodes = [
                vec![
                    requirement(ADMIN_ENABLE_LB, "DoesNotExist", None),
                    requirement(names::NODE_LABEL_ENABLE_LB, "In", Some("true")),
                ],
                vec![
                    requirement(ADMIN_ENABLE_LB, "DoesNotExist", None),
                    requirement(names::NODE_LABEL_ENABLE_LB, "DoesNotExist", None),
                    requirement(names::K3S_NODE_LABEL_ENABLE_LB, "In", Some("true")),
                ],
            ];
            std::iter::once(admins).chain(nodes.into_iter().filter(|_| trust_node_labels)).collect()
        } else {
            vec![vec![]]
        };
        let forbidden: Vec<NodeSelectorRequirement> =
            self.forbidden_labels.iter().map(|key| requirement(key, "DoesNotExist", None)).collect();
        pools
            .iter()
            .flat_map(|pool| switches.iter().map(move |switch| (pool, switch)))
            .map(|(pool, switch)| pool.iter().chain(switch).chain(&forbidden).cloned().collect())
            .collect()
    }
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
    fn nodes_labelled_for_k3s_servicelb_are_admitted_as_if_labelled_for_hostlb() {
        let opted_in = NodeBuilder::new("a").label(names::K3S_NODE_LABEL_ENABLE_LB, "true").build();
        let opted_out = NodeBuilder::new("b").label(names::K3S_NODE_LABEL_ENABLE_LB, "false").build();
        let in_edge = NodeBuilder::new("c").label(names::K3S_POOL, "edge").build();
        let enablelb = Placement::for_service(&lb(None), true);
        assert!(enablelb.admits(&opted_in) && !enablelb.admits(&opted_out) && !enablelb.admits(&in_edge));
        let edge = Placement::for_service(&lb(Some("edge")), false);
        assert!(edge.admits(&in_edge) && !edge.admits(&opted_in));
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
            "no node is in pool edge (label node-restriction.kubernetes.io/hostlb-lbpool=edge or \
             node-restriction.kubernetes.io/hostlb-pool.edge; hostlb.io/lbpool=edge, pool.hostlb.io/edge or \
             svccontroller.k3s.cattle.io/lbpool=edge with --trust-node-labels)"
        );
    }
}
