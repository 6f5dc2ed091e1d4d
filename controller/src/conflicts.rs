//! Host ports are a node-wide resource: two Services claiming the same port and protocol on a
//! shared node cannot both run a proxy pod there.

use k8s_openapi::api::core::v1::Node;

use crate::placement::Placement;
use crate::service_lb::ServiceLb;

/// Another Service that hostlb serves, as placed on the nodes.
pub struct Claimant<'a> {
    pub lb: &'a ServiceLb,
    pub placement: &'a Placement,
}

/// One message per port that `lb` shares with another Service on at least one common node.
pub fn port_conflicts(mine: &Claimant<'_>, others: &[Claimant<'_>], nodes: &[&Node]) -> Vec<String> {
    let mut messages = Vec::new();
    for other in others.iter().filter(|o| o.lb.uid != mine.lb.uid) {
        let shares_a_node = nodes.iter().any(|n| mine.placement.admits(n) && other.placement.admits(n));
        if !shares_a_node {
            continue;
        }
        for port in &mine.lb.ports {
            if other.lb.ports.iter().any(|p| p.listen == port.listen && p.protocol == port.protocol) {
                messages.push(format!(
                    "port {}/{} is also claimed by Service {}/{}; on each node only one of them can run its proxy pod",
                    port.listen,
                    port.protocol.api_name(),
                    other.lb.namespace,
                    other.lb.name
                ));
            }
        }
    }
    messages.sort();
    messages
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{NodeBuilder, ServiceBuilder};
    use crate::names;

    fn lb(name: &str, uid: &str, builder: ServiceBuilder) -> ServiceLb {
        let mut service = builder.build();
        service.metadata.name = Some(name.into());
        service.metadata.uid = Some(uid.into());
        ServiceLb::from_service(&service).unwrap()
    }

    #[test]
    fn same_port_and_protocol_on_shared_nodes_conflicts() {
        let nodes = [NodeBuilder::new("n1").build()];
        let nodes: Vec<&Node> = nodes.iter().collect();
        let a = lb("a", "1", ServiceBuilder::new("a").port("TCP", 80, 0).port("UDP", 53, 0));
        let b = lb("b", "2", ServiceBuilder::new("b").port("TCP", 80, 0));
        let c = lb("c", "3", ServiceBuilder::new("c").port("UDP", 80, 0).port("TCP", 53, 0));
        let placement = Placement::for_service(&a, false);
        let mine = Claimant { lb: &a, placement: &placement };
        let others = [Claimant { lb: &b, placement: &placement }, Claimant { lb: &c, placement: &placement }];
        assert_eq!(
            port_conflicts(&mine, &others, &nodes),
            vec!["port 80/TCP is also claimed by Service shop/b; on each node only one of them can run its proxy pod"]
        );
        assert!(port_conflicts(&mine, &[Claimant { lb: &a, placement: &placement }], &nodes).is_empty());
    }

    #[test]
    fn services_in_disjoint_pools_do_not_conflict() {
        let nodes = [
            NodeBuilder::new("n1").label(names::POOL, "a").build(),
            NodeBuilder::new("n2").label(names::POOL, "b").build(),
        ];
        let nodes: Vec<&Node> = nodes.iter().collect();
        let a = lb("a", "1", ServiceBuilder::new("a").label(names::POOL, "a"));
        let b = lb("b", "2", ServiceBuilder::new("b").label(names::POOL, "b"));
        let (pa, pb) = (Placement::for_service(&a, false), Placement::for_service(&b, false));
        let conflicts =
            port_conflicts(&Claimant { lb: &a, placement: &pa }, &[Claimant { lb: &b, placement: &pb }], &nodes);
        assert!(conflicts.is_empty());
    }
}
