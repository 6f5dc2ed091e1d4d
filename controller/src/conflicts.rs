//! Host ports are a node-wide resource: two Services claiming the same port and protocol on a
//! shared node cannot both run a proxy pod there.

use crate::index::Index;
use crate::placement::Placement;
use crate::service_lb::ServiceLb;

/// One message per port that `lb` shares with another Service on at least one common node.
/// Looks only at the Services that claim one of `lb`'s ports.
pub fn port_conflicts(lb: &ServiceLb, placement: &Placement, index: &Index) -> Vec<String> {
    let enablelb = index.enablelb_in_use();
    let mut messages = Vec::new();
    for port in &lb.ports {
        for other in index.claims.group(&(port.protocol, port.listen)).filter(|other| other.uid != lb.uid) {
            let theirs = Placement::for_service(other, enablelb);
            let shares_a_node = index.nodes.values().any(|node| placement.admits(node) && theirs.admits(node));
            if shares_a_node {
                messages.push(format!(
                    "port {}/{} is also claimed by Service {}/{}; on each node only one of them can run its proxy pod",
                    port.listen,
                    port.protocol.api_name(),
                    other.namespace,
                    other.name
                ));
            }
        }
    }
    messages.sort();
    messages.dedup();
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NodeBuilder, ServiceBuilder};
    use crate::index::index_of;
    use crate::names;
    use k8s_openapi::api::core::v1::Service;

    fn conflicts_of(service: &Service, index: &Index) -> Vec<String> {
        let lb = ServiceLb::from_service(service).unwrap();
        let placement = Placement::for_service(&lb, index.enablelb_in_use());
        port_conflicts(&lb, &placement, index)
    }

    #[test]
    fn same_port_and_protocol_on_shared_nodes_conflicts() {
        let a = ServiceBuilder::new("a").port("TCP", 80, 0).port("UDP", 53, 0).uid("1").build();
        let b = ServiceBuilder::new("b").port("TCP", 80, 0).uid("2").build();
        let c = ServiceBuilder::new("c").port("UDP", 80, 0).port("TCP", 53, 0).uid("3").build();
        let index = index_of(&[a.clone(), b, c], &[NodeBuilder::new("n1").build()], &[], &[]);
        assert_eq!(
            conflicts_of(&a, &index),
            vec!["port 80/TCP is also claimed by Service shop/b; on each node only one of them can run its proxy pod"]
        );
        let alone = index_of(std::slice::from_ref(&a), &[NodeBuilder::new("n1").build()], &[], &[]);
        assert!(conflicts_of(&a, &alone).is_empty());
    }

    #[test]
    fn services_in_disjoint_pools_do_not_conflict() {
        let nodes = [
            NodeBuilder::new("n1").label(names::POOL, "a").build(),
            NodeBuilder::new("n2").label(names::POOL, "b").build(),
        ];
        let a = ServiceBuilder::new("a").label(names::POOL, "a").uid("1").build();
        let b = ServiceBuilder::new("b").label(names::POOL, "b").uid("2").build();
        let index = index_of(&[a.clone(), b], &nodes, &[], &[]);
        assert!(conflicts_of(&a, &index).is_empty());
    }
}
