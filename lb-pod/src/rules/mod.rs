//! The nftables ruleset of a proxy pod for a `PortForwarding`, as plain values: no I/O, no bytes.
//!
//! One table per IP family (`ip hostlb`, `ip6 hostlb`) rather than one `inet` table: NAT in
//! `inet` tables needs Linux 5.2, per-family NAT tables work on every kernel with nftables, and
//! the rules need no `meta nfproto` guard. Both tables are replaced in the same batch, so the
//! change stays atomic. Each table has:
//!
//! - `prerouting`, nat hook prerouting priority dstnat (-100): `PROTO dport LISTEN dnat to BACKEND`,
//!   one rule per backend, each but the last behind a `numgen random` draw when there are several;
//! - `postrouting`, nat hook postrouting priority srcnat (100): `daddr ADDRESS PROTO dport PORT
//!   masquerade` per backend;
//! - when source ranges are given, `source-filter`, filter hook prerouting priority -150 (before
//!   DNAT, so it sees the listened port): `ct direction original PROTO dport LISTEN jump
//!   allowed-sources`, and the regular chain `allowed-sources`: `saddr @source-ranges accept`, then
//!   `drop`. Only the original direction: masquerade keeps the client's source port, so an answer
//!   from the destination arrives for that port, which may be a listened one (IKE from 500 to 500,
//!   DNS from 53), and its source is no client. `source-ranges` is a constant interval set of the
//!   family's ranges, merged where they overlap or touch: one lookup per packet however many
//!   ranges there are, where a rule per range would be tried one after the other. A family without
//!   ranges has no set and no lookup, so its packets to listened ports are all dropped.
//!
//! `service_rules` builds one Service's source filter and DNAT rules for the pod's table and for
//! the node agent's (`node_table`).
//!
//! The values themselves are in `objects`, the expressions rules match with in `matches`, and
//! the address intervals of sets in `intervals`.

mod intervals;
mod matches;
mod objects;

pub use intervals::{address_number, merged, Interval};
pub use matches::{
    address_fields, original_direction, protocol_and_port, protocol_is, AddressFields, DESTINATION_PORT,
};
pub use objects::{
    BaseChain, ChainType, CtOriginalKey, Expr, Hook, Name, PayloadBase, Reg, Step, Verdict, DIRECTION_ORIGINAL,
    DIRECTION_REPLY,
};

use std::net::IpAddr;

use hostlb_contract::{address_bytes, Family, Protocol};

use crate::port_forwarding::{Forward, PortForwarding};
use matches::destination_is;

pub const TABLE: &str = "hostlb";
pub const CHAIN_DNAT: Name = Name::new("prerouting");
pub const CHAIN_MASQUERADE: Name = Name::new("postrouting");
pub const CHAIN_SOURCE_FILTER: Name = Name::new("source-filter");
pub const CHAIN_ALLOWED_SOURCES: Name = Name::new("allowed-sources");
pub const SET_SOURCE_RANGES: Name = Name::new("source-ranges");
/// Intervals per `AddIntervals` step: the elements of one message are one attribute, whose length
/// is 16 bits. An IPv6 interval takes 64 bytes at most (a start and an end element), so 512 take
/// 32 KiB.
pub const INTERVALS_PER_STEP: usize = 512;

pub const PRIORITY_DSTNAT: i32 = -100;
pub const PRIORITY_SRCNAT: i32 = 100;
/// Before DNAT rewrites the destination port, after conntrack (-200), which gives the direction.
pub const PRIORITY_SOURCE_FILTER: i32 = -150;

/// Every step of the one batch that makes the kernel's state match `forwarding`: both families'
/// tables are removed, then the tables of the families with a destination are built anew.
pub fn ruleset(forwarding: &PortForwarding) -> Vec<Step> {
    let mut steps = removals();
    for (family, forwards) in &forwarding.forwards {
        steps.push(Step::AddTable(*family));
        steps.extend(table(forwarding, *family, forwards));
    }
    steps
}

/// Removes both families' tables, whether they are there or not.
pub fn removals() -> Vec<Step> {
    Family::ALL.into_iter().flat_map(|family| [Step::EnsureTable(family), Step::DeleteTable(family)]).collect()
}

/// The batch for a namespace that has no table of ours yet, as a new pod's has: `ruleset`
/// without the removals. Removing a table, even one made in the same batch, makes closing the
/// netlink socket wait for the kernel to free it (an RCU grace period: about 9 ms on a 2-CPU
/// machine, twice what the rest of the work takes). Both families' tables are added
/// exclusively, so the batch fails as a whole with EEXIST where either is already there; the
/// table of a family without a destination stays empty, which no packet notices.
pub fn fresh_ruleset(forwarding: &PortForwarding) -> Vec<Step> {
    let mut steps = Vec::new();
    for family in Family::ALL {
        steps.push(Step::AddTable(family));
        if let Some(forwards) = forwarding.forwards.get(&family) {
            steps.extend(table(forwarding, family, forwards));
        }
    }
    steps
}

/// The pod's table: its namespace sees only the Service's traffic, so its rules match on ports
/// alone.
fn table(forwarding: &PortForwarding, family: Family, forwards: &[Forward]) -> Vec<Step> {
    let mut steps = vec![
        Step::AddChain { family, name: CHAIN_DNAT, base: Some(base_chain(ChainType::Nat, Hook::Prerouting)) },
        Step::AddChain { family, name: CHAIN_MASQUERADE, base: Some(base_chain(ChainType::Nat, Hook::Postrouting)) },
    ];
    if forwarding.restricts_sources() {
        steps.push(Step::AddChain {
            family,
            name: CHAIN_SOURCE_FILTER,
            base: Some(base_chain(ChainType::Filter, Hook::Prerouting)),
        });
    }
    let names =
        ServiceNames { dnat: CHAIN_DNAT, allowed_sources: CHAIN_ALLOWED_SOURCES, source_ranges: SET_SOURCE_RANGES };
    steps.extend(service_rules(forwarding, family, forwards, &[], &names));
    let mut masqueraded: Vec<(IpAddr, Protocol, u16)> = forwards
        .iter()
        .flat_map(|forward| forward.backends.iter().map(|backend| (backend.ip(), forward.protocol, backend.port())))
        .collect();
    masqueraded.sort();
    masqueraded.dedup();
    for (address, protocol, port) in masqueraded {
        let exprs = [destination_is(address), protocol_and_port(protocol, port), vec![Expr::Masquerade]].concat();
        steps.push(Step::AddRule { family, chain: CHAIN_MASQUERADE, exprs });
    }
    steps
}

/// Our base chains: DNAT before the routing decision (or, for the host's own packets, before
/// it reroutes), masquerade after it, and the source filter before DNAT.
pub fn base_chain(kind: ChainType, hook: Hook) -> BaseChain {
    let priority = match (kind, hook) {
        (ChainType::Filter, _) => PRIORITY_SOURCE_FILTER,
        (ChainType::Nat, Hook::Postrouting) => PRIORITY_SRCNAT,
        (ChainType::Nat, Hook::Prerouting | Hook::Output) => PRIORITY_DSTNAT,
    };
    BaseChain { kind, hook, priority }
}

/// Where one Service's rules go in a table: the pod's table has one Service, the node's one
/// per Service.
pub struct ServiceNames {
    /// The chain its DNAT rules are added to.
    pub dnat: Name,
    /// Its chain of allowed sources, jumped to from `CHAIN_SOURCE_FILTER`, and their set.
    pub allowed_sources: Name,
    pub source_ranges: Name,
}

/// One Service's rules in a family's table whose chains `CHAIN_SOURCE_FILTER` (when the Service
/// restricts sources) and `names.dnat` exist: its source filter, for packets to `to` (what the
/// destination address must match; nothing where every packet is for the Service), and its
/// DNAT rules.
pub fn service_rules(
    forwarding: &PortForwarding,
    family: Family,
    forwards: &[Forward],
    to: &[Expr],
    names: &ServiceNames,
) -> Vec<Step> {
    let rule = |chain, exprs| Step::AddRule { family, chain, exprs };
    let mut steps = Vec::new();
    if forwarding.restricts_sources() {
        steps.push(Step::AddChain { family, name: names.allowed_sources, base: None });
        for port in &forwarding.ports {
            let exprs = [
                original_direction(),
                to.to_vec(),
                protocol_and_port(port.protocol, port.listen),
                vec![Expr::Verdict(Verdict::Jump(names.allowed_sources))],
            ]
            .concat();
            steps.push(rule(CHAIN_SOURCE_FILTER, exprs));
        }
        let intervals = merged(forwarding.ranges(family));
        if !intervals.is_empty() {
            // The set and its elements come before the rule that looks it up: the kernel
            // refuses elements for a constant set that a rule already uses.
            steps.extend(address_set(family, names.source_ranges, &intervals));
            let AddressFields { source, len, .. } = address_fields(family);
            let exprs = vec![
                Expr::Payload { base: PayloadBase::Network, offset: source, len, dreg: Reg::R1 },
                Expr::Lookup { sreg: Reg::R1, set: names.source_ranges },
                Expr::Verdict(Verdict::Accept),
            ];
            steps.push(rule(names.allowed_sources, exprs));
        }
        steps.push(rule(names.allowed_sources, vec![Expr::Verdict(Verdict::Drop)]));
    }
    for forward in forwards {
        // A connection goes to backend i with probability 1/(n-i) among those left: evenly
        // over n. NAT rules see only a connection's first packet.
        let count = forward.backends.len();
        for (index, backend) in forward.backends.iter().enumerate() {
            let left = (count - index) as u32;
            let pick = (left > 1).then(|| {
                vec![Expr::Numgen { dreg: Reg::R1, modulus: left }, Expr::CmpEq { sreg: Reg::R1, data: vec![0; 4] }]
            });
            let exprs = [
                protocol_and_port(forward.protocol, forward.listen),
                pick.unwrap_or_default(),
                vec![
                    Expr::Immediate { dreg: Reg::R1, data: address_bytes(&backend.ip()) },
                    Expr::Immediate { dreg: Reg::R2, data: backend.port().to_be_bytes().to_vec() },
                    Expr::Dnat { family, addr: Reg::R1, port: Reg::R2 },
                ],
            ]
            .concat();
            steps.push(rule(names.dnat, exprs));
        }
    }
    steps
}

/// A constant set of the family's addresses containing `intervals` (ascending, apart), filled in
/// steps that one message can carry.
pub fn address_set(family: Family, name: Name, intervals: &[Interval]) -> Vec<Step> {
    let mut steps = vec![Step::AddSet { family, name }];
    for chunk in intervals.chunks(INTERVALS_PER_STEP) {
        steps.push(Step::AddIntervals { family, set: name, intervals: chunk.to_vec() });
    }
    steps
}

#[cfg(test)]
mod tests;
