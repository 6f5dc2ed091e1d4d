//! Host ports are a node-wide resource: on a node, one Service per port and protocol. The
//! Service that claimed a port first (the older one, then the smaller UID) keeps it on every
//! node it runs on; a later one's proxies leave those nodes out, so they never wait there for
//! the older Service's pod to go away, as they would when it is replaced in a roll.

use std::collections::BTreeSet;

use crate::decide::placement::Placement;
use crate::state::index::Index;
use hostlb_model::options::ServiceLb;

/// Where the ports of `lb` are held by older Services.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ClaimedPorts {
    /// Nodes this Service's proxies must leave out.
    pub nodes: BTreeSet<String>,
    /// One line per port and older Service, naming that Service only if it is in the same
    /// namespace.
    pub messages: Vec<String>,
}

/// Looks only at the Services that claim one of `lb`'s ports.
pub fn claimed_by_older_services(lb: &ServiceLb, placement: &Placement, index: &Index) -> ClaimedPorts {
    let enablelb = index.enablelb_in_use();
    let mut held = ClaimedPorts::default();
    for port in &lb.ports {
        let older = index
            .claims
            .group(&(port.protocol, port.listen))
            .filter(|other| other.uid != lb.uid && other.claim_order() < lb.claim_order());
        for other in older {
            let theirs = Placement::for_service(other, enablelb);
            let shared: Vec<String> = index
                .nodes
                .values()
                .filter(|node| placement.admits(node) && theirs.admits(node))
                .filter_map(|node| node.metadata.name.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if shared.is_empty() {
                continue;
            }
            let holder = if other.namespace == lb.namespace {
                format!("Service {}/{}", other.namespace, other.name)
            } else {
                "a Service in another namespace".to_string()
            };
            held.messages.push(format!(
                "port {}/{} is held on {} by {holder}, which claimed it first; this Service's proxies leave {} out",
                port.listen,
                port.protocol.api_name(),
                hostlb_model::reason::listed(shared.iter().cloned()),
                if shared.len() == 1 { "that node" } else { "those nodes" },
            ));
            held.nodes.extend(shared);
        }
    }
    held.messages.sort();
    held.messages.dedup();
    held
}

#[cfg(test)]
#[path = "conflicts_tests.rs"]
mod tests;
