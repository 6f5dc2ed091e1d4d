//! A proxy's port forwarding: which ports it listens on, where each one's packets go, and from
//! which sources, validated from its parsed arguments before `rules` makes nftables objects of it.
//! No I/O.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use hostlb_contract::{flag, Cidr, Destination, Family, PortMap, Protocol, RuleArgs, PORTS_ENV, TO_ENV};

use crate::error::Error;

/// Where the packets of one family to one listened port go.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Forward {
    pub protocol: Protocol,
    pub listen: u16,
    /// Spread evenly over new connections; sorted, without repeats. None: no forwarding (the
    /// node has no ready endpoint for the port), so the packets meet the pod's closed port.
    pub backends: Vec<SocketAddr>,
}

impl fmt::Display for Forward {
    /// `tcp 80 -> 10.0.0.1:8080, 10.0.0.2:8080`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let backends: Vec<String> = self.backends.iter().map(|b| socket_text(b.ip(), b.port())).collect();
        write!(f, "{} {} -> {}", self.protocol.arg_name(), self.listen, backends.join(", "))
    }
}

/// Everything `init` installs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortForwarding {
    /// Sorted, without duplicates.
    pub ports: Vec<PortMap>,
    /// The families that get a table, each with its forwards (sorted by protocol and port).
    pub forwards: BTreeMap<Family, Vec<Forward>>,
    /// Whether the forwards are the node's endpoints, kept by the endpoint follower, rather
    /// than addresses given on the command line.
    pub follows_endpoints: bool,
    /// Sorted, without duplicates. Empty means every source is allowed.
    pub source_ranges: Vec<Cidr>,
}

impl PortForwarding {
    /// Checks what the arguments' types cannot: that there is something to forward, to one
    /// destination per family. Destinations of families the Service does not have are dropped,
    /// and no `--family` at all keeps every family. With `node-endpoints` as destination the
    /// tables are those of the given families (both if none), with no forwards yet.
    pub fn new(args: &RuleArgs) -> Result<PortForwarding, Error> {
        let ports = distinct_ports(&args.ports)?;
        let wanted = |family: &Family| args.families.is_empty() || args.families.contains(family);
        let follows_endpoints = args.to.contains(&Destination::NodeEndpoints);
        let forwards: BTreeMap<Family, Vec<Forward>> = if follows_endpoints {
            if let Some(address) = args.to.iter().find(|to| **to != Destination::NodeEndpoints) {
                return Err(Error::bad(
                    flag::TO,
                    address.to_string(),
                    "an address besides node-endpoints; give one or the other",
                ));
            }
            Family::ALL.into_iter().filter(wanted).map(|family| (family, Vec::new())).collect()
        } else {
            one_address_per_family(&args.to)?
                .into_iter()
                .filter(|(family, _)| wanted(family))
                .map(|(family, address)| (family, forwards_to(&ports, address)))
                .collect()
        };
        if forwards.is_empty() {
            let names: Vec<&str> = args.families.iter().map(|f| f.name()).collect();
            return Err(Error::missing(
                flag::TO,
                format!("no destination address of the families {}", names.join(", ")),
            ));
        }
        let mut source_ranges = args.source_ranges.clone();
        source_ranges.sort();
        source_ranges.dedup();
        Ok(PortForwarding { ports, forwards, follows_endpoints, source_ranges })
    }

    /// This port forwarding with the node's endpoints as the forwards of its families; forwards of
    /// other families or of ports it does not listen on are left out.
    pub fn with_endpoints(&self, mut endpoints: BTreeMap<Family, Vec<Forward>>) -> PortForwarding {
        let listened =
            |forward: &Forward| self.ports.iter().any(|p| (p.protocol, p.listen) == (forward.protocol, forward.listen));
        let forwards = self
            .forwards
            .keys()
            .map(|family| {
                let mut forwards: Vec<Forward> = endpoints.remove(family).unwrap_or_default();
                forwards.retain(listened);
                for forward in &mut forwards {
                    forward.backends.sort();
                    forward.backends.dedup();
                }
                forwards.sort();
                (*family, forwards)
            })
            .collect();
        PortForwarding { forwards, ..self.clone() }
    }

    /// The families that get a table.
    pub fn families(&self) -> impl Iterator<Item = Family> + '_ {
        self.forwards.keys().copied()
    }

    /// Whether sources are restricted at all (`loadBalancerSourceRanges` is an allow list).
    pub fn restricts_sources(&self) -> bool {
        !self.source_ranges.is_empty()
    }

    /// The allowed ranges of one family; empty for a family without ranges, whose packets are
    /// all dropped when `restricts_sources`.
    pub fn ranges(&self, family: Family) -> impl Iterator<Item = &Cidr> + '_ {
        self.source_ranges.iter().filter(move |range| range.family() == family)
    }
}

/// Each port to its target at `address`.
fn forwards_to(ports: &[PortMap], address: IpAddr) -> Vec<Forward> {
    let forward = |port: &PortMap| Forward {
        protocol: port.protocol,
        listen: port.listen,
        backends: vec![SocketAddr::new(address, port.target)],
    };
    ports.iter().map(forward).collect()
}

/// `ip:port`, with brackets for IPv6, as people write socket addresses.
pub fn socket_text(address: IpAddr, port: u16) -> String {
    match address {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

/// Sorted, a repeated port once; a listened port with two targets is refused.
fn distinct_ports(maps: &[PortMap]) -> Result<Vec<PortMap>, Error> {
    let mut ports: Vec<PortMap> = Vec::new();
    for map in maps {
        if let Some(other) = ports.iter().find(|m| (m.protocol, m.listen) == (map.protocol, map.listen)) {
            if other.target != map.target {
                return Err(Error::bad(
                    flag::PORT,
                    map.to_string(),
                    format!(
                        "{} {} is already forwarded to port {}; a listened port can have one target",
                        map.protocol.arg_name(),
                        map.listen,
                        other.target
                    ),
                ));
            }
            continue;
        }
        ports.push(*map);
    }
    if ports.is_empty() {
        return Err(Error::missing(
            flag::PORT,
            format!("no port given (nor {PORTS_ENV}); expected PROTO:LISTEN:TARGET"),
        ));
    }
    ports.sort();
    Ok(ports)
}

/// The destination address of each family, at least one.
fn one_address_per_family(destinations: &[Destination]) -> Result<BTreeMap<Family, IpAddr>, Error> {
    let mut addresses = BTreeMap::new();
    for destination in destinations {
        let Destination::Address(address) = *destination else { continue };
        if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
            return Err(Error::bad(
                flag::TO,
                address.to_string(),
                "an unspecified, loopback or multicast address cannot be a destination",
            ));
        }
        let family = Family::of(&address);
        match addresses.insert(family, address) {
            Some(existing) if existing != address => {
                return Err(Error::bad(
                    flag::TO,
                    address.to_string(),
                    format!("a second {} destination besides {existing}; give at most one per family", family.name()),
                ))
            }
            _ => {}
        }
    }
    if addresses.is_empty() {
        return Err(Error::missing(flag::TO, format!("no destination address given (nor {TO_ENV})")));
    }
    Ok(addresses)
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The port forwarding of valid arguments, from the spellings of their values.
    pub fn forwarding(ports: &[&str], to: &[&str], ranges: &[&str]) -> PortForwarding {
        PortForwarding::new(&rule_args(ports, to, ranges)).unwrap_or_else(|error| panic!("{error}"))
    }

    /// `listen` of `protocol` to the backends, from their spellings, in the order given.
    pub fn forward(protocol: Protocol, listen: u16, backends: &[&str]) -> Forward {
        Forward { protocol, listen, backends: backends.iter().map(|b| b.parse().unwrap()).collect() }
    }

    fn rule_args(ports: &[&str], to: &[&str], source_ranges: &[&str]) -> RuleArgs {
        fn parse_all<T>(texts: &[&str], parse: fn(&str) -> Result<T, String>) -> Vec<T> {
            texts.iter().map(|text| parse(text).unwrap_or_else(|reason| panic!("{text:?}: {reason}"))).collect()
        }
        RuleArgs {
            ports: parse_all(ports, PortMap::parse),
            to: parse_all(to, Destination::parse),
            families: Vec::new(),
            source_ranges: parse_all(source_ranges, Cidr::parse),
        }
    }

    fn checked(ports: &[&str], to: &[&str], ranges: &[&str]) -> Result<PortForwarding, Error> {
        PortForwarding::new(&rule_args(ports, to, ranges))
    }

    fn message(result: Result<PortForwarding, Error>) -> String {
        let error = result.expect_err("expected a bad argument");
        assert_eq!(error.exit_code(), 2, "{error}");
        error.to_string()
    }

    #[test]
    fn families_drop_destinations_of_other_families() {
        let dual = rule_args(&["tcp:80:30080"], &["10.0.0.1", "fd00::1"], &[]);
        let only = |families: &[Family]| PortForwarding::new(&RuleArgs { families: families.to_vec(), ..dual.clone() });
        let v4 = only(&[Family::V4]).unwrap();
        assert_eq!(v4.families().collect::<Vec<_>>(), vec![Family::V4]);
        let v6 = only(&[Family::V6]).unwrap();
        assert_eq!(v6.families().collect::<Vec<_>>(), vec![Family::V6]);
        assert_eq!(only(&[]).unwrap(), only(&[Family::V4, Family::V6]).unwrap());
        let v4_only = RuleArgs { families: vec![Family::V6], ..rule_args(&["tcp:80:30080"], &["10.0.0.1"], &[]) };
        assert_eq!(message(PortForwarding::new(&v4_only)), "--to: no destination address of the families IPv6");
    }

    #[test]
    fn ports_are_sorted_by_protocol_and_port() {
        let forwarding = forwarding(&["udp:53:5353", "tcp:80:8080", "sctp:9:9"], &["10.96.0.10"], &[]);
        assert_eq!(
            forwarding.ports,
            vec![
                PortMap { protocol: Protocol::Tcp, listen: 80, target: 8080 },
                PortMap { protocol: Protocol::Udp, listen: 53, target: 5353 },
                PortMap { protocol: Protocol::Sctp, listen: 9, target: 9 },
            ]
        );
        let backends = |forwards: &[Forward]| forwards.iter().map(|f| f.backends.clone()).collect::<Vec<_>>();
        assert_eq!(
            backends(&forwarding.forwards[&Family::V4]),
            [["10.96.0.10:8080"], ["10.96.0.10:5353"], ["10.96.0.10:9"]]
                .map(|b| b.map(|a| a.parse().unwrap()).to_vec())
        );
        assert!(!forwarding.forwards.contains_key(&Family::V6));
        assert!(!forwarding.restricts_sources());
    }

    #[test]
    fn one_listened_port_cannot_go_to_two_targets_but_repeats_are_merged() {
        assert_eq!(
            message(checked(&["tcp:80:8080", "tcp:80:9090"], &["10.0.0.1"], &[])),
            r#"--port "tcp:80:9090": tcp 80 is already forwarded to port 8080; a listened port can have one target"#
        );
        let forwarding = forwarding(&["tcp:80:8080", "tcp:80:8080", "udp:80:8080"], &["10.0.0.1"], &[]);
        assert_eq!(forwarding.ports.len(), 2);
        assert_eq!(forwarding.forwards[&Family::V4].len(), 2);
    }

    #[test]
    fn ports_and_destinations_are_required() {
        assert!(message(checked(&[], &["10.0.0.1"], &[])).starts_with("--port: no port given (nor HOSTLB_PORTS)"));
        assert_eq!(message(checked(&["tcp:80:80"], &[], &[])), "--to: no destination address given (nor HOSTLB_TO)");
    }

    #[test]
    fn at_most_one_destination_per_family() {
        assert_eq!(
            message(checked(&["tcp:80:80"], &["10.0.0.1", "10.0.0.2"], &[])),
            r#"--to "10.0.0.2": a second IPv4 destination besides 10.0.0.1; give at most one per family"#
        );
        assert!(message(checked(&["tcp:80:80"], &["fd00::1", "fd00::2"], &[])).contains("second IPv6"));
        let same_twice = forwarding(&["tcp:80:80"], &["10.0.0.1", "10.0.0.1"], &[]);
        assert_eq!(same_twice.forwards[&Family::V4][0].backends, vec!["10.0.0.1:80".parse().unwrap()]);
    }

    #[test]
    fn destinations_must_be_unicast_addresses() {
        assert!(message(checked(&["tcp:80:80"], &["0.0.0.0"], &[])).contains("unspecified"));
        assert!(message(checked(&["tcp:80:80"], &["::1"], &[])).contains("loopback"));
        assert!(message(checked(&["tcp:80:80"], &["224.0.0.1"], &[])).contains("multicast"));
    }

    #[test]
    fn node_endpoints_give_tables_without_forwards_until_the_follower_fills_them() {
        let args =
            RuleArgs { families: vec![Family::V6], ..rule_args(&["tcp:80:80", "udp:53:53"], &["node-endpoints"], &[]) };
        let waiting = PortForwarding::new(&args).unwrap();
        assert!(waiting.follows_endpoints);
        assert_eq!(waiting.forwards, BTreeMap::from([(Family::V6, Vec::new())]));
        let both = forwarding(&["tcp:80:80"], &["node-endpoints"], &[]);
        assert_eq!(both.families().collect::<Vec<_>>(), Family::ALL);

        let endpoints = BTreeMap::from([
            (Family::V4, vec![forward(Protocol::Tcp, 80, &["10.1.0.9:8080"])]),
            (
                Family::V6,
                vec![
                    forward(Protocol::Udp, 53, &["[fd00::9]:5353"]),
                    forward(Protocol::Tcp, 80, &["[fd00::9]:8080", "[fd00::8]:8080", "[fd00::9]:8080"]),
                    forward(Protocol::Tcp, 8443, &["[fd00::9]:8443"]),
                ],
            ),
        ]);
        let filled = waiting.with_endpoints(endpoints);
        assert_eq!(
            filled.forwards,
            BTreeMap::from([(
                Family::V6,
                vec![
                    forward(Protocol::Tcp, 80, &["[fd00::8]:8080", "[fd00::9]:8080"]),
                    forward(Protocol::Udp, 53, &["[fd00::9]:5353"]),
                ]
            )]),
            "sorted, repeats merged; the IPv4 family and the port not listened on are left out"
        );
        assert_eq!(
            message(checked(&["tcp:80:80"], &["node-endpoints", "10.0.0.1"], &[])),
            r#"--to "10.0.0.1": an address besides node-endpoints; give one or the other"#
        );
    }

    #[test]
    fn a_family_without_destination_has_no_rules() {
        let v6_only = forwarding(&["tcp:80:80"], &["fd00::a"], &[]);
        assert_eq!(v6_only.families().collect::<Vec<_>>(), vec![Family::V6]);
        let dual = forwarding(&["tcp:80:80"], &["fd00::a", "10.0.0.1"], &[]);
        assert_eq!(dual.families().collect::<Vec<_>>(), vec![Family::V4, Family::V6]);
    }

    #[test]
    fn source_ranges_are_split_by_family_sorted_without_repeats() {
        let forwarding =
            forwarding(&["tcp:80:80"], &["10.0.0.1"], &["10.1.2.3/16", "fd00:1:2::5/48", "10.1.0.0/16", "0.0.0.0/0"]);
        assert!(forwarding.restricts_sources());
        let v4: Vec<String> = forwarding.ranges(Family::V4).map(ToString::to_string).collect();
        assert_eq!(v4, vec!["0.0.0.0/0", "10.1.0.0/16"]);
        let v6: Vec<String> = forwarding.ranges(Family::V6).map(ToString::to_string).collect();
        assert_eq!(v6, vec!["fd00:1:2::/48"]);
    }

    #[test]
    fn socket_text_brackets_ipv6() {
        assert_eq!(socket_text("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        assert_eq!(socket_text("fd00::1".parse().unwrap(), 80), "[fd00::1]:80");
    }
}
