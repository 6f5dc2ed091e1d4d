//! Host ports are a node-wide resource: on a node, one Service per port and protocol. A
//! Service that holds a port on a node (its proxy pod runs there, or its plan names the node)
//! keeps it there until it stops asking for it, whatever the age of a Service that asks later
//! (a type or class change, an added port): first served, first kept. Where neither holds it,
//! the Service that claimed it first (the older one, then the smaller UID) gets it. What a
//! Service holds is read from its pods and plans, so every replica, and a controller that
//! restarts, decides alike. A Service whose port is held elsewhere leaves those nodes out, so
//! its proxies never wait there for the holder's to go away.

use std::collections::BTreeSet;

use crate::decide::placement::Placement;
use crate::state::index::Index;
use hostlb_model::options::ServiceLb;

/// Where the ports of `lb` are held by other Services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimedPorts {
    /// Nodes this Service's proxies must leave out.
    pub nodes: BTreeSet<String>,
    /// One line per port and holder, naming the holding Service only if it is in the same
    /// namespace.
    pub messages: Vec<String>,
}

/// Looks only at the Services that claim one of `lb`'s ports.
pub fn held_by_other_services(lb: &ServiceLb, placement: &Placement, index: &Index) -> ClaimedPorts {
    let enablelb = index.enablelb_in_use();
    let ours = index.nodes_holding(&lb.uid);
    let mut held = ClaimedPorts::default();
    for port in &lb.ports {
        let others = index.claims.group(&(port.protocol, port.listen)).filter(|other| other.uid != lb.uid);
        for other in others {
            let theirs = Placement::for_service(other, enablelb);
            let held_by_them = index.nodes_holding(&other.uid);
            let first = other.claim_order() < lb.claim_order();
            let (mut serving, mut claimed) = (Vec::new(), Vec::new());
            let shared = index.nodes.values().filter(|node| placement.admits(node) && theirs.admits(node));
            for name in shared.filter_map(|node| node.metadata.name.as_deref()).collect::<BTreeSet<_>>() {
                match (held_by_them.contains(name), ours.contains(name)) {
                    (true, false) => serving.push(name.to_string()),
                    (false, true) => {}
                    _ if first => claimed.push(name.to_string()),
                    _ => {}
                }
            }
            let holder = if other.namespace == lb.namespace {
                format!("Service {}/{}", other.namespace, other.name)
            } else {
                "a Service in another namespace".to_string()
            };
            for (nodes, why) in [(serving, "which serves it there"), (claimed, "which claimed it first")] {
                if nodes.is_empty() {
                    continue;
                }
                held.messages.push(format!(
                    "port {}/{} is held on {} by {holder}, {why}; this Service's proxies leave {} out",
                    port.listen,
                    port.protocol.api_name(),
                    hostlb_model::reason::listed(nodes.iter().cloned()),
                    if nodes.len() == 1 { "that node" } else { "those nodes" },
                ));
                held.nodes.extend(nodes);
            }
        }
    }
    held.messages.sort();
    held.messages.dedup();
    held
}

#[cfg(test)]
#[path = "conflicts_tests.rs"]
mod tests;
