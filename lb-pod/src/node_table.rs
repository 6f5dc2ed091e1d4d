//! The node agent's table, as plain values: one per family in the node's own network namespace,
//! forwarding every Service the node serves, replaced as a whole in one batch on every change.
//!
//! Unlike a proxy pod's namespace, the node's sees everything the node forwards (pods to the
//! internet, pod to pod), so no rule matches on a port alone: packets must be for one of the
//! node's addresses, and masquerade takes only the flows that were. NAT happens once per hook:
//! after a DNAT to a ClusterIP here, kube-proxy's DNAT of that ClusterIP would not apply, so the
//! rules DNAT to the endpoints themselves. Each family with node addresses gets a table with:
//!
//! - `node-addresses`, a constant interval set of the family's node addresses;
//! - `prerouting` (nat hook prerouting priority dstnat) and `output` (nat hook output priority
//!   dstnat, for the node's own connections to its addresses): `ip daddr @node-addresses jump
//!   services`;
//! - `services`, each Service's DNAT rules as a pod's `prerouting` has them;
//! - `postrouting` (nat hook postrouting priority srcnat), per port of each Service that
//!   masquerades: `ct original ip daddr @node-addresses meta l4proto P ct original proto-dst
//!   LISTEN masquerade`. The original tuple, as DNAT has already changed the packet's destination;
//! - when a Service restricts sources, `source-filter` (filter hook prerouting priority -150):
//!   `ct direction original ip daddr @node-addresses P dport LISTEN jump allowed-sources-I`, and
//!   the chain `allowed-sources-I` and set `source-ranges-I` of the Service's index I, as a pod's
//!   `allowed-sources` and `source-ranges`.

use std::net::IpAddr;

use hostlb_contract::{Cidr, Family, Protocol};

use crate::port_forwarding::PortForwarding;
use crate::rules::{
    address_fields, address_set, base_chain, merged, protocol_is, removals, service_rules, ChainType, CtOriginalKey,
    Expr, Hook, Interval, Name, PayloadBase, Reg, ServiceNames, Step, Verdict, CHAIN_ALLOWED_SOURCES, CHAIN_MASQUERADE,
    CHAIN_SOURCE_FILTER, SET_SOURCE_RANGES,
};

pub const SET_NODE_ADDRESSES: Name = Name::new("node-addresses");
pub const CHAIN_PREROUTING: Name = Name::new("prerouting");
pub const CHAIN_OUTPUT: Name = Name::new("output");
pub const CHAIN_SERVICES: Name = Name::new("services");

/// One Service's forwarding in the node's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceRules {
    /// Ports, source ranges and forwards with concrete backends (endpoint addresses), as
    /// `PortForwarding::with_endpoints` gives.
    pub forwarding: PortForwarding,
    /// Masquerade what is forwarded (externalTrafficPolicy Cluster: backends may be on other
    /// nodes); false for Local, which keeps the client's address.
    pub masquerade: bool,
}

/// What the agent programs on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeRules {
    /// The node's own addresses (both families mixed); only packets to these are forwarded.
    pub addresses: Vec<IpAddr>,
    pub services: Vec<ServiceRules>,
}

/// The one batch that makes the node's table match `node`: both families' tables are removed,
/// then those of the families with a node address are built anew.
pub fn node_ruleset(node: &NodeRules) -> Vec<Step> {
    let mut steps = removals();
    for family in Family::ALL {
        let bits = address_fields(family).len * 8;
        let hosts: Vec<Cidr> = node
            .addresses
            .iter()
            .filter(|address| Family::of(address) == family)
            .map(|address| Cidr { network: *address, prefix: bits as u8 })
            .collect();
        let addresses = merged(hosts.iter());
        if !addresses.is_empty() {
            steps.push(Step::AddTable(family));
            steps.extend(table(node, family, &addresses));
        }
    }
    steps
}

/// The batch that removes hostlb's tables from the node; it succeeds whether they are there or
/// not.
pub fn removal() -> Vec<Step> {
    removals()
}

fn table(node: &NodeRules, family: Family, addresses: &[Interval]) -> Vec<Step> {
    let chain = |name, base| Step::AddChain { family, name, base };
    let rule = |chain, exprs| Step::AddRule { family, chain, exprs };
    // The family's Services, with their index, which names their own chains and sets.
    let services: Vec<(usize, &ServiceRules)> = node
        .services
        .iter()
        .enumerate()
        .filter(|(_, service)| service.forwarding.forwards.contains_key(&family))
        .collect();
    let jump_to_services = [to_node(family), vec![Expr::Verdict(Verdict::Jump(CHAIN_SERVICES))]].concat();

    // The set before the rules that look it up: the kernel refuses elements for a constant set
    // that a rule already uses.
    let mut steps = address_set(family, SET_NODE_ADDRESSES, addresses);
    steps.extend([
        chain(CHAIN_SERVICES, None),
        chain(CHAIN_PREROUTING, Some(base_chain(ChainType::Nat, Hook::Prerouting))),
        rule(CHAIN_PREROUTING, jump_to_services.clone()),
        chain(CHAIN_OUTPUT, Some(base_chain(ChainType::Nat, Hook::Output))),
        rule(CHAIN_OUTPUT, jump_to_services),
        chain(CHAIN_MASQUERADE, Some(base_chain(ChainType::Nat, Hook::Postrouting))),
    ]);
    if services.iter().any(|(_, service)| service.forwarding.restricts_sources()) {
        steps.push(chain(CHAIN_SOURCE_FILTER, Some(base_chain(ChainType::Filter, Hook::Prerouting))));
    }
    for (index, service) in &services {
        let names = ServiceNames {
            dnat: CHAIN_SERVICES,
            allowed_sources: CHAIN_ALLOWED_SOURCES.of_service(*index),
            source_ranges: SET_SOURCE_RANGES.of_service(*index),
        };
        steps.extend(service_rules(
            &service.forwarding,
            family,
            &service.forwarding.forwards[&family],
            &to_node(family),
            &names,
        ));
    }
    let mut masqueraded: Vec<(Protocol, u16)> = services
        .iter()
        .filter(|(_, service)| service.masquerade)
        .flat_map(|(_, service)| &service.forwarding.forwards[&family])
        .filter(|forward| !forward.backends.is_empty())
        .map(|forward| (forward.protocol, forward.listen))
        .collect();
    masqueraded.sort();
    masqueraded.dedup();
    for (protocol, listen) in masqueraded {
        let exprs = [originally_to_node(family, protocol, listen), vec![Expr::Masquerade]].concat();
        steps.push(rule(CHAIN_MASQUERADE, exprs));
    }
    steps
}

/// `ip daddr @node-addresses`.
fn to_node(family: Family) -> Vec<Expr> {
    let fields = address_fields(family);
    vec![
        Expr::Payload { base: PayloadBase::Network, offset: fields.destination, len: fields.len, dreg: Reg::R1 },
        Expr::Lookup { sreg: Reg::R1, set: SET_NODE_ADDRESSES },
    ]
}

/// `ct original ip daddr @node-addresses meta l4proto PROTO ct original proto-dst PORT`: a flow
/// that arrived for a node address and port, whatever DNAT made of it since.
fn originally_to_node(family: Family, protocol: Protocol, port: u16) -> Vec<Expr> {
    let address = [
        Expr::CtOriginal { key: CtOriginalKey::DestinationAddress(family), dreg: Reg::R1 },
        Expr::Lookup { sreg: Reg::R1, set: SET_NODE_ADDRESSES },
    ];
    let port = [
        Expr::CtOriginal { key: CtOriginalKey::DestinationPort, dreg: Reg::R1 },
        Expr::CmpEq { sreg: Reg::R1, data: port.to_be_bytes().to_vec() },
    ];
    [address.to_vec(), protocol_is(protocol), port.to_vec()].concat()
}

#[cfg(test)]
#[path = "node_table_tests.rs"]
mod tests;
