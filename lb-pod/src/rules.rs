//! The nftables objects that implement a `Plan`, as plain values: no I/O, no bytes.
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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostlb_contract::{address_bytes, Cidr, Family, Protocol};

use crate::plan::{Forward, Plan};

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

/// What `ct direction` loads, one byte, as `enum ip_conntrack_dir` numbers it
/// (`linux/netfilter/nf_conntrack_tuple_common.h`).
pub const DIRECTION_ORIGINAL: u8 = 0;
pub const DIRECTION_REPLY: u8 = 1;

/// The name of a chain or set in our table: a fixed stem, numbered by Service where the node's
/// table has one per Service (`allowed-sources-3`). A value rather than a string, so that names
/// stay constants that patterns can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    stem: &'static str,
    service: Option<usize>,
}

impl Name {
    pub const fn new(stem: &'static str) -> Name {
        Name { stem, service: None }
    }

    /// This name numbered for the `service`th Service's own chain or set.
    pub const fn of_service(self, service: usize) -> Name {
        Name { stem: self.stem, service: Some(service) }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.service {
            None => f.write_str(self.stem),
            Some(service) => write!(f, "{}-{service}", self.stem),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    /// Packets the host itself sends.
    Output,
    Postrouting,
}

/// What makes a chain a base chain: its type, hook and priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// nftables registers: the verdict register and two 16-byte data registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Verdict,
    R1,
    R2,
}

impl Reg {
    /// As `enum nft_registers` numbers them (`linux/netfilter/nf_tables.h`).
    pub fn number(self) -> u32 {
        match self {
            Reg::Verdict => 0,
            Reg::R1 => 1,
            Reg::R2 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Network,
    Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(Name),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta l4proto` into a register.
    MetaL4Proto {
        dreg: Reg,
    },
    /// `ct direction` into a register: `DIRECTION_ORIGINAL` or `DIRECTION_REPLY`.
    CtDirection {
        dreg: Reg,
    },
    /// `ct original KEY` into a register: a field of the connection's first packet as it
    /// arrived, before any NAT.
    CtOriginal {
        key: CtOriginalKey,
        dreg: Reg,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    CmpEq {
        sreg: Reg,
        data: Vec<u8>,
    },
    /// Whether the register's value is in the set: the rule goes on if it is.
    Lookup {
        sreg: Reg,
        set: Name,
    },
    Immediate {
        dreg: Reg,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    /// `numgen random mod MODULUS` into a register: a 32-bit number below the modulus.
    Numgen {
        dreg: Reg,
        modulus: u32,
    },
    Dnat {
        family: Family,
        addr: Reg,
        port: Reg,
    },
    Masquerade,
}

/// What `Expr::CtOriginal` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtOriginalKey {
    /// The destination address, of the table's family: 4 or 16 bytes.
    DestinationAddress(Family),
    /// The destination port, 2 bytes.
    DestinationPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creates the table if it is missing and does nothing otherwise, so that the delete
    /// that follows cannot fail with ENOENT (`nft` does the same).
    EnsureTable(Family),
    DeleteTable(Family),
    AddTable(Family),
    AddChain {
        family: Family,
        name: Name,
        base: Option<BaseChain>,
    },
    AddRule {
        family: Family,
        chain: Name,
        exprs: Vec<Expr>,
    },
    /// A set of addresses of the family, `flags constant, interval`: filled in the same batch
    /// (`AddIntervals`) and never changed after, as the whole table is replaced instead.
    AddSet {
        family: Family,
        name: Name,
    },
    /// Intervals into a set, ascending, neither overlapping nor touching: the kernel refuses
    /// overlapping ones.
    AddIntervals {
        family: Family,
        set: Name,
        intervals: Vec<Interval>,
    },
}

/// The addresses `first..=last` of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl Interval {
    /// The first address after the interval, where the kernel keeps its end; None when it runs
    /// to the family's last address, where an interval needs no end.
    pub fn end(&self) -> Option<IpAddr> {
        let family = Family::of(&self.last);
        let last = address_number(self.last);
        (last < last_number(family)).then(|| number_address(family, last + 1))
    }
}

impl Step {
    pub fn family(&self) -> Family {
        match self {
            Step::EnsureTable(family) | Step::DeleteTable(family) | Step::AddTable(family) => *family,
            Step::AddChain { family, .. }
            | Step::AddRule { family, .. }
            | Step::AddSet { family, .. }
            | Step::AddIntervals { family, .. } => *family,
        }
    }
}

/// Every step of the one batch that makes the kernel's state match `plan`: both families'
/// tables are removed, then the tables of the families with a destination are built anew.
pub fn ruleset(plan: &Plan) -> Vec<Step> {
    let mut steps = removals();
    for (family, forwards) in &plan.forwards {
        steps.push(Step::AddTable(*family));
        steps.extend(table(plan, *family, forwards));
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
pub fn fresh_ruleset(plan: &Plan) -> Vec<Step> {
    let mut steps = Vec::new();
    for family in Family::ALL {
        steps.push(Step::AddTable(family));
        if let Some(forwards) = plan.forwards.get(&family) {
            steps.extend(table(plan, family, forwards));
        }
    }
    steps
}

/// The pod's table: its namespace sees only the Service's traffic, so its rules match on ports
/// alone.
fn table(plan: &Plan, family: Family, forwards: &[Forward]) -> Vec<Step> {
    let mut steps = vec![
        Step::AddChain { family, name: CHAIN_DNAT, base: Some(base_chain(ChainType::Nat, Hook::Prerouting)) },
        Step::AddChain { family, name: CHAIN_MASQUERADE, base: Some(base_chain(ChainType::Nat, Hook::Postrouting)) },
    ];
    if plan.restricts_sources() {
        steps.push(Step::AddChain {
            family,
            name: CHAIN_SOURCE_FILTER,
            base: Some(base_chain(ChainType::Filter, Hook::Prerouting)),
        });
    }
    let names =
        ServiceNames { dnat: CHAIN_DNAT, allowed_sources: CHAIN_ALLOWED_SOURCES, source_ranges: SET_SOURCE_RANGES };
    steps.extend(service_rules(plan, family, forwards, &[], &names));
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

/// Where one Service's rules go in a table: the pod's table holds one Service, the node's one
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
    plan: &Plan,
    family: Family,
    forwards: &[Forward],
    to: &[Expr],
    names: &ServiceNames,
) -> Vec<Step> {
    let rule = |chain, exprs| Step::AddRule { family, chain, exprs };
    let mut steps = Vec::new();
    if plan.restricts_sources() {
        steps.push(Step::AddChain { family, name: names.allowed_sources, base: None });
        for port in &plan.ports {
            let exprs = [
                original_direction(),
                to.to_vec(),
                protocol_and_port(port.protocol, port.listen),
                vec![Expr::Verdict(Verdict::Jump(names.allowed_sources))],
            ]
            .concat();
            steps.push(rule(CHAIN_SOURCE_FILTER, exprs));
        }
        let intervals = merged(plan.ranges(family));
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

/// A constant set of the family's addresses holding `intervals` (ascending, apart), filled in
/// steps that one message can hold.
pub fn address_set(family: Family, name: Name, intervals: &[Interval]) -> Vec<Step> {
    let mut steps = vec![Step::AddSet { family, name }];
    for chunk in intervals.chunks(INTERVALS_PER_STEP) {
        steps.push(Step::AddIntervals { family, set: name, intervals: chunk.to_vec() });
    }
    steps
}

/// `ct direction original`: from the side that opened the connection, not the answers to it.
pub fn original_direction() -> Vec<Expr> {
    vec![Expr::CtDirection { dreg: Reg::R1 }, Expr::CmpEq { sreg: Reg::R1, data: vec![DIRECTION_ORIGINAL] }]
}

/// Offset and length of the destination port: the same in TCP, UDP and SCTP headers.
pub const DESTINATION_PORT: (u32, u32) = (2, 2);

/// `meta l4proto PROTO th dport PORT`.
pub fn protocol_and_port(protocol: Protocol, port: u16) -> Vec<Expr> {
    let (offset, len) = DESTINATION_PORT;
    let port = [
        Expr::Payload { base: PayloadBase::Transport, offset, len, dreg: Reg::R1 },
        Expr::CmpEq { sreg: Reg::R1, data: port.to_be_bytes().to_vec() },
    ];
    [protocol_is(protocol), port.to_vec()].concat()
}

/// `meta l4proto PROTO`.
pub fn protocol_is(protocol: Protocol) -> Vec<Expr> {
    vec![Expr::MetaL4Proto { dreg: Reg::R1 }, Expr::CmpEq { sreg: Reg::R1, data: vec![protocol.number()] }]
}

/// Where the network header of a family has its addresses.
pub struct AddressFields {
    pub source: u32,
    pub destination: u32,
    pub len: u32,
}

pub fn address_fields(family: Family) -> AddressFields {
    match family {
        Family::V4 => AddressFields { source: 12, destination: 16, len: 4 },
        Family::V6 => AddressFields { source: 8, destination: 24, len: 16 },
    }
}

fn destination_is(destination: IpAddr) -> Vec<Expr> {
    let AddressFields { destination: offset, len, .. } = address_fields(Family::of(&destination));
    vec![
        Expr::Payload { base: PayloadBase::Network, offset, len, dreg: Reg::R1 },
        Expr::CmpEq { sreg: Reg::R1, data: address_bytes(&destination) },
    ]
}

/// The addresses of `ranges` as the fewest intervals, ascending (IPv4 first): ranges of a family
/// that overlap or touch are one interval.
pub fn merged<'a>(ranges: impl Iterator<Item = &'a Cidr>) -> Vec<Interval> {
    let mut bounds: Vec<(Family, u128, u128)> =
        ranges.map(|range| (range.family(), address_number(range.network), address_number(range.last()))).collect();
    bounds.sort();
    let mut merged: Vec<(Family, u128, u128)> = Vec::new();
    for (family, first, last) in bounds {
        match merged.last_mut() {
            // Saturating: nothing comes after an interval that ends at the last IPv6 address.
            Some((previous, _, end)) if *previous == family && first <= end.saturating_add(1) => {
                *end = (*end).max(last)
            }
            _ => merged.push((family, first, last)),
        }
    }
    merged
        .into_iter()
        .map(|(family, first, last)| Interval {
            first: number_address(family, first),
            last: number_address(family, last),
        })
        .collect()
}

/// An address as a number, so that ranges can be compared, merged and counted.
pub fn address_number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

fn number_address(family: Family, number: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from_bits(number as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(number)),
    }
}

/// The number of the family's last address.
fn last_number(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::plan::tests::plan;
    use crate::rule_text::step_text;

    fn described(steps: &[Step]) -> Vec<String> {
        steps.iter().map(step_text).collect()
    }

    #[test]
    fn single_stack_replaces_both_tables_and_builds_only_its_own() {
        let steps = ruleset(&plan(&["tcp:80:8080", "udp:53:53"], &["10.96.0.10"], &[]));
        assert_eq!(
            described(&steps),
            vec![
                "add table ip hostlb",
                "delete table ip hostlb",
                "add table ip6 hostlb",
                "delete table ip6 hostlb",
                "add table ip hostlb (anew)",
                "add chain ip hostlb prerouting { type nat hook prerouting priority -100; }",
                "add chain ip hostlb postrouting { type nat hook postrouting priority 100; }",
                "add rule ip hostlb prerouting tcp dport 80 dnat ip to 10.96.0.10:8080",
                "add rule ip hostlb prerouting udp dport 53 dnat ip to 10.96.0.10:53",
                "add rule ip hostlb postrouting ip daddr 10.96.0.10 tcp dport 8080 masquerade",
                "add rule ip hostlb postrouting ip daddr 10.96.0.10 udp dport 53 masquerade",
            ]
        );
    }

    #[test]
    fn dual_stack_builds_one_table_per_family_with_its_own_destination() {
        let steps = ruleset(&plan(&["tcp:443:443"], &["10.96.0.10", "fd00::10"], &[]));
        let text = described(&steps);
        assert!(text.contains(&"add rule ip hostlb prerouting tcp dport 443 dnat ip to 10.96.0.10:443".to_string()));
        assert!(text.contains(&"add rule ip6 hostlb prerouting tcp dport 443 dnat ip6 to [fd00::10]:443".to_string()));
        assert!(text.contains(&"add rule ip6 hostlb postrouting ip6 daddr fd00::10 tcp dport 443 masquerade".into()));
        assert_eq!(steps.iter().filter(|s| matches!(s, Step::AddTable(_))).count(), 2);
    }

    #[test]
    fn several_backends_share_new_connections_evenly_and_none_means_no_forwarding() {
        let waiting = plan(&["tcp:80:80", "udp:53:53"], &["node-endpoints"], &[]);
        let text = described(&ruleset(&waiting));
        assert!(text.iter().all(|line| !line.contains("add rule")), "no endpoint yet, no rule: {text:?}");
        assert!(text.contains(&"add chain ip6 hostlb prerouting { type nat hook prerouting priority -100; }".into()));

        let backends = ["10.1.0.9:8080", "10.1.0.7:8080", "10.1.0.8:8080"].map(|b| b.parse().unwrap()).to_vec();
        let forward = Forward { protocol: Protocol::Tcp, listen: 80, backends };
        let filled = waiting.with_endpoints(BTreeMap::from([(Family::V4, vec![forward])]));
        let rules: Vec<String> = described(&ruleset(&filled)).into_iter().filter(|l| l.contains("add rule")).collect();
        assert_eq!(
            rules,
            vec![
                "add rule ip hostlb prerouting tcp dport 80 numgen random mod 3 0 dnat ip to 10.1.0.7:8080",
                "add rule ip hostlb prerouting tcp dport 80 numgen random mod 2 0 dnat ip to 10.1.0.8:8080",
                "add rule ip hostlb prerouting tcp dport 80 dnat ip to 10.1.0.9:8080",
                "add rule ip hostlb postrouting ip daddr 10.1.0.7 tcp dport 8080 masquerade",
                "add rule ip hostlb postrouting ip daddr 10.1.0.8 tcp dport 8080 masquerade",
                "add rule ip hostlb postrouting ip daddr 10.1.0.9 tcp dport 8080 masquerade",
            ]
        );
    }

    #[test]
    fn a_fresh_namespace_gets_the_same_tables_without_removals() {
        let plan = plan(&["tcp:80:8080"], &["10.96.0.10", "fd00::10"], &["10.0.0.0/8"]);
        let fresh = fresh_ruleset(&plan);
        assert!(fresh.iter().all(|step| !matches!(step, Step::EnsureTable(_) | Step::DeleteTable(_))));
        assert_eq!(ruleset(&plan)[4..], fresh[..]);
    }

    #[test]
    fn a_fresh_namespace_gets_both_tables_so_that_either_already_there_is_found() {
        let v4_only = plan(&["tcp:80:8080"], &["10.96.0.10"], &[]);
        let tables: Vec<Step> =
            fresh_ruleset(&v4_only).into_iter().filter(|step| matches!(step, Step::AddTable(_))).collect();
        assert_eq!(tables, vec![Step::AddTable(Family::V4), Step::AddTable(Family::V6)]);
        assert!(fresh_ruleset(&v4_only)
            .iter()
            .all(|step| matches!(step, Step::AddTable(Family::V6)) || step.family() == Family::V4));
    }

    #[test]
    fn ipv6_only_has_no_ipv4_table_but_still_deletes_an_old_one() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["fd00::10"], &[]));
        assert!(steps.contains(&Step::DeleteTable(Family::V4)));
        assert!(!steps.contains(&Step::AddTable(Family::V4)));
        assert!(steps.iter().skip(4).all(|step| step.family() == Family::V6));
    }

    #[test]
    fn source_ranges_jump_listened_ports_to_one_set_lookup_ending_in_drop() {
        let ranges = ["192.168.0.0/16", "10.0.0.7/32", "fd00::/8"];
        let steps = ruleset(&plan(&["tcp:80:8080"], &["10.96.0.10", "fd00::10"], &ranges));
        let text = described(&steps);
        let v4: Vec<&String> = text.iter().filter(|t| t.contains("ip hostlb") && t.contains("source")).collect();
        assert_eq!(
            v4,
            vec![
                "add chain ip hostlb source-filter { type filter hook prerouting priority -150; }",
                "add chain ip hostlb allowed-sources",
                "add rule ip hostlb source-filter ct direction original tcp dport 80 jump allowed-sources",
                "add set ip hostlb source-ranges { type ipv4_addr; flags constant,interval; }",
                "add element ip hostlb source-ranges { 10.0.0.7, 192.168.0.0/16 }",
                "add rule ip hostlb allowed-sources ip saddr @source-ranges accept",
                "add rule ip hostlb allowed-sources drop",
            ]
        );
        assert!(text.contains(&"add element ip6 hostlb source-ranges { fd00::/8 }".into()), "{text:#?}");
    }

    #[test]
    fn overlapping_repeated_and_touching_ranges_become_one_interval() {
        let ranges = ["10.0.0.0/24", "10.0.0.128/25", "10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24", "0.0.0.0/32"];
        let v4 = plan(&["tcp:80:80"], &["10.96.0.10"], &ranges);
        let text: Vec<String> =
            merged(v4.ranges(Family::V4)).iter().map(|i| format!("{}-{}", i.first, i.last)).collect();
        assert_eq!(text, ["0.0.0.0-0.0.0.0", "10.0.0.0-10.0.1.255", "10.0.3.0-10.0.3.255"]);
        let everything = plan(&["tcp:80:80"], &["fd00::10"], &["fd00::/8", "::/0", "ffff::/16"]);
        let all = merged(everything.ranges(Family::V6));
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].first.to_string(), all[0].end()), ("::".to_string(), None), "no end after the last address");
        let inner = merged(everything.ranges(Family::V6).filter(|range| range.prefix == 8));
        assert_eq!(inner[0].end(), Some("fe00::".parse().unwrap()));
    }

    /// How many intervals each step that fills a set adds.
    fn intervals_per_step(steps: &[Step]) -> Vec<usize> {
        let counts = steps.iter().filter_map(|step| match step {
            Step::AddIntervals { intervals, .. } => Some(intervals.len()),
            _ => None,
        });
        counts.collect()
    }

    #[test]
    fn thousands_of_ranges_are_one_set_filled_in_steps_the_netlink_attribute_can_hold() {
        let ranges: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 256 * 2, i % 256)).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.96.0.10"], &ranges));
        let sets = steps.iter().filter(|step| matches!(step, Step::AddSet { .. })).count();
        let filled = intervals_per_step(&steps);
        // Every other /16 is full (256 /24s that touch), so the 5,000 ranges are 20 intervals.
        assert_eq!((sets, filled), (1, vec![20]));
        let allowed = steps.iter().filter(|s| matches!(s, Step::AddRule { chain: CHAIN_ALLOWED_SOURCES, .. })).count();
        assert_eq!(allowed, 2, "one lookup and the drop");

        let apart: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 128, i % 128 * 2)).collect();
        let apart: Vec<&str> = apart.iter().map(String::as_str).collect();
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.96.0.10"], &apart));
        let filled = intervals_per_step(&steps);
        assert_eq!(filled.iter().sum::<usize>(), 5000);
        assert!(filled.iter().all(|count| *count <= INTERVALS_PER_STEP), "{filled:?}");
    }

    #[test]
    fn only_the_original_direction_is_filtered_so_answers_to_a_listened_port_pass() {
        let steps = ruleset(&plan(&["udp:500:4500"], &["10.96.0.10"], &["192.168.0.0/16"]));
        let filters: Vec<&Vec<Expr>> = steps
            .iter()
            .filter_map(|step| match step {
                Step::AddRule { chain: CHAIN_SOURCE_FILTER, exprs, .. } => Some(exprs),
                _ => None,
            })
            .collect();
        assert_eq!(
            filters,
            vec![&vec![
                Expr::CtDirection { dreg: Reg::R1 },
                Expr::CmpEq { sreg: Reg::R1, data: vec![0] },
                Expr::MetaL4Proto { dreg: Reg::R1 },
                Expr::CmpEq { sreg: Reg::R1, data: vec![17] },
                Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::R1 },
                Expr::CmpEq { sreg: Reg::R1, data: vec![1, 244] },
                Expr::Verdict(Verdict::Jump(CHAIN_ALLOWED_SOURCES)),
            ]]
        );
    }

    #[test]
    fn a_family_without_ranges_drops_everything_when_another_family_has_some() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.96.0.10", "fd00::10"], &["192.168.0.0/16"]));
        let v6_allowed: Vec<String> = steps
            .iter()
            .filter(|s| matches!(s, Step::AddRule { family: Family::V6, chain: CHAIN_ALLOWED_SOURCES, .. }))
            .map(step_text)
            .collect();
        assert_eq!(v6_allowed, vec!["add rule ip6 hostlb allowed-sources drop"]);
        assert!(described(&steps).contains(
            &"add rule ip6 hostlb source-filter ct direction original tcp dport 80 jump allowed-sources".into()
        ));
    }

    #[test]
    fn without_source_ranges_there_is_no_filter_chain() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.96.0.10"], &[]));
        assert!(!described(&steps).iter().any(|s| s.contains("source")));
    }

    #[test]
    fn masquerade_is_one_rule_per_protocol_and_target() {
        let steps = ruleset(&plan(&["tcp:80:8080", "tcp:81:8080", "udp:80:8080"], &["10.0.0.1"], &[]));
        let masq = steps.iter().filter(|s| matches!(s, Step::AddRule { chain: CHAIN_MASQUERADE, .. })).count();
        assert_eq!(masq, 2);
    }

    #[test]
    fn dnat_rule_loads_protocol_port_address_and_target_port() {
        let steps = ruleset(&plan(&["sctp:9:1009"], &["fd00::10"], &[]));
        let Some(Step::AddRule { exprs, .. }) =
            steps.iter().find(|s| matches!(s, Step::AddRule { chain: CHAIN_DNAT, .. }))
        else {
            panic!("no dnat rule");
        };
        let address = "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
        assert_eq!(
            exprs,
            &vec![
                Expr::MetaL4Proto { dreg: Reg::R1 },
                Expr::CmpEq { sreg: Reg::R1, data: vec![132] },
                Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::R1 },
                Expr::CmpEq { sreg: Reg::R1, data: vec![0, 9] },
                Expr::Immediate { dreg: Reg::R1, data: address },
                Expr::Immediate { dreg: Reg::R2, data: vec![0x03, 0xf1] },
                Expr::Dnat { family: Family::V6, addr: Reg::R1, port: Reg::R2 },
            ]
        );
    }

    #[test]
    fn every_rule_reads_back_as_the_nft_people_write() {
        let ranges = ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.7/32", "fd00::/8"];
        let steps = ruleset(&plan(&["tcp:80:8080", "udp:53:53", "sctp:9:9"], &["10.96.0.10", "fd00::10"], &ranges));
        for text in described(&steps) {
            assert!(
                !["reg ", "0x", "@nh", "@th", "meta l4proto", "th dport"].iter().any(|raw| text.contains(raw)),
                "{text}"
            );
        }
    }

    #[test]
    fn same_plan_gives_the_same_steps() {
        let a = ruleset(&plan(&["udp:53:53", "tcp:80:80"], &["10.0.0.1"], &["10.0.0.0/8"]));
        let b = ruleset(&plan(&["tcp:80:80", "udp:53:53"], &["10.0.0.1"], &["10.0.0.0/8"]));
        assert_eq!(a, b);
    }
}
