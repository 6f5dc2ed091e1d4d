//! What to forward where, validated from the parsed arguments: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostlb_proxy_spec::{
    flag, Cidr, Destination, Family, PortMap, Protocol, RuleArgs, NODE_ADDRESS_ENV, PORTS_ENV, TO_ENV,
};

use crate::error::Error;

/// Everything `init` installs, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Sorted, without duplicates.
    pub ports: Vec<PortMap>,
    pub to_v4: Option<Ipv4Addr>,
    pub to_v6: Option<Ipv6Addr>,
    /// Sorted, without duplicates. Empty means every source is allowed.
    pub source_ranges: Vec<Cidr>,
}

impl Plan {
    /// Checks what the arguments' types cannot: that there is something to forward, to one
    /// destination per family. Destinations of families the Service does not have are dropped:
    /// kubelet's `status.hostIPs` names every family of a dual-stack node, while a single-stack
    /// Service's NodePort is served in its own family only. No `--family` at all keeps every
    /// family.
    pub fn new(args: &RuleArgs) -> Result<Plan, Error> {
        let ports = distinct_ports(&args.ports)?;
        let (mut to_v4, mut to_v6) = one_address_per_family(&args.to)?;
        if !args.families.is_empty() {
            if !args.families.contains(&Family::V4) {
                to_v4 = None;
            }
            if !args.families.contains(&Family::V6) {
                to_v6 = None;
            }
            if to_v4.is_none() && to_v6.is_none() {
                let names: Vec<&str> = args.families.iter().map(|f| f.name()).collect();
                return Err(Error::missing(
                    flag::TO,
                    format!("no destination address of the families {}", names.join(", ")),
                ));
            }
        }
        let mut source_ranges = args.source_ranges.clone();
        source_ranges.sort();
        source_ranges.dedup();
        Ok(Plan { ports, to_v4, to_v6, source_ranges })
    }

    pub fn destination(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::V4 => self.to_v4.map(IpAddr::V4),
            Family::V6 => self.to_v6.map(IpAddr::V6),
        }
    }

    /// The families that get rules, with their destination.
    pub fn destinations(&self) -> impl Iterator<Item = (Family, IpAddr)> + '_ {
        Family::ALL.into_iter().filter_map(|family| Some((family, self.destination(family)?)))
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

    /// The forwarded ports' distinct (protocol, target) pairs: what gets masqueraded.
    pub fn targets(&self) -> Vec<(Protocol, u16)> {
        let mut targets: Vec<(Protocol, u16)> = self.ports.iter().map(|p| (p.protocol, p.target)).collect();
        targets.sort();
        targets.dedup();
        targets
    }
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

/// The destination of each family, at least one; the node address must have been expanded.
fn one_address_per_family(destinations: &[Destination]) -> Result<(Option<Ipv4Addr>, Option<Ipv6Addr>), Error> {
    let (mut to_v4, mut to_v6) = (None, None);
    for destination in destinations {
        let address = match destination {
            Destination::Address(address) => *address,
            Destination::NodeAddress => {
                return Err(Error::bad(
                    flag::TO,
                    destination.to_string(),
                    format!(
                        "kubelet did not replace it with the node's address: the container has no \
                         {NODE_ADDRESS_ENV} environment variable (filled from the downward API)"
                    ),
                ))
            }
        };
        if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
            return Err(Error::bad(
                flag::TO,
                address.to_string(),
                "an unspecified, loopback or multicast address cannot be a destination",
            ));
        }
        let existing = match address {
            IpAddr::V4(_) => to_v4.map(IpAddr::V4),
            IpAddr::V6(_) => to_v6.map(IpAddr::V6),
        };
        if let Some(existing) = existing.filter(|existing| *existing != address) {
            let family = Family::of(&address).name();
            return Err(Error::bad(
                flag::TO,
                address.to_string(),
                format!("a second {family} destination besides {existing}; give at most one per family"),
            ));
        }
        match address {
            IpAddr::V4(a) => to_v4 = Some(a),
            IpAddr::V6(a) => to_v6 = Some(a),
        }
    }
    if to_v4.is_none() && to_v6.is_none() {
        return Err(Error::missing(flag::TO, format!("no destination address given (nor {TO_ENV})")));
    }
    Ok((to_v4, to_v6))
}

#[cfg(test)]
pub mod tests {
    use super::*;

    /// The plan of valid arguments, from the spellings of their values.
    pub fn plan(ports: &[&str], to: &[&str], ranges: &[&str]) -> Plan {
        Plan::new(&rule_args(ports, to, ranges)).unwrap_or_else(|error| panic!("{error}"))
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

    fn checked(ports: &[&str], to: &[&str], ranges: &[&str]) -> Result<Plan, Error> {
        Plan::new(&rule_args(ports, to, ranges))
    }

    fn message(result: Result<Plan, Error>) -> String {
        let error = result.expect_err("expected a bad argument");
        assert_eq!(error.exit_code(), 2, "{error}");
        error.to_string()
    }

    #[test]
    fn families_drop_destinations_of_other_families() {
        let dual = rule_args(&["tcp:80:30080"], &["10.0.0.1", "fd00::1"], &[]);
        let only = |families: &[Family]| Plan::new(&RuleArgs { families: families.to_vec(), ..dual.clone() });
        let v4 = only(&[Family::V4]).unwrap();
        assert_eq!(v4.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V4]);
        let v6 = only(&[Family::V6]).unwrap();
        assert_eq!(v6.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V6]);
        assert_eq!(only(&[]).unwrap(), only(&[Family::V4, Family::V6]).unwrap());
        let v4_only = RuleArgs { families: vec![Family::V6], ..rule_args(&["tcp:80:30080"], &["10.0.0.1"], &[]) };
        assert_eq!(message(Plan::new(&v4_only)), "--to: no destination address of the families IPv6");
    }

    #[test]
    fn ports_are_sorted_by_protocol_and_port() {
        let plan = plan(&["udp:53:5353", "tcp:80:8080", "sctp:9:9"], &["10.96.0.10"], &[]);
        assert_eq!(
            plan.ports,
            vec![
                PortMap { protocol: Protocol::Tcp, listen: 80, target: 8080 },
                PortMap { protocol: Protocol::Udp, listen: 53, target: 5353 },
                PortMap { protocol: Protocol::Sctp, listen: 9, target: 9 },
            ]
        );
        assert_eq!(plan.to_v4, Some(Ipv4Addr::new(10, 96, 0, 10)));
        assert_eq!(plan.to_v6, None);
        assert!(!plan.restricts_sources());
    }

    #[test]
    fn one_listened_port_cannot_go_to_two_targets_but_repeats_are_merged() {
        assert_eq!(
            message(checked(&["tcp:80:8080", "tcp:80:9090"], &["10.0.0.1"], &[])),
            r#"--port "tcp:80:9090": tcp 80 is already forwarded to port 8080; a listened port can have one target"#
        );
        let plan = plan(&["tcp:80:8080", "tcp:80:8080", "udp:80:8080"], &["10.0.0.1"], &[]);
        assert_eq!(plan.ports.len(), 2);
        assert_eq!(plan.targets(), vec![(Protocol::Tcp, 8080), (Protocol::Udp, 8080)]);
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
        let same_twice = plan(&["tcp:80:80"], &["10.0.0.1", "10.0.0.1"], &[]);
        assert_eq!(same_twice.to_v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn destinations_must_be_unicast_addresses() {
        assert!(message(checked(&["tcp:80:80"], &["0.0.0.0"], &[])).contains("unspecified"));
        assert!(message(checked(&["tcp:80:80"], &["::1"], &[])).contains("loopback"));
        assert!(message(checked(&["tcp:80:80"], &["224.0.0.1"], &[])).contains("multicast"));
    }

    #[test]
    fn an_unexpanded_node_address_names_the_missing_variable() {
        let error = message(checked(&["tcp:80:80"], &["$(HOSTLB_NODE_ADDRESS)"], &[]));
        assert!(error.starts_with(r#"--to "$(HOSTLB_NODE_ADDRESS)": kubelet did not replace it"#), "{error}");
        assert!(error.contains("no HOSTLB_NODE_ADDRESS environment variable"), "{error}");
    }

    #[test]
    fn a_family_without_destination_has_no_rules() {
        let v6_only = plan(&["tcp:80:80"], &["fd00::a"], &[]);
        assert_eq!(v6_only.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V6]);
        let dual = plan(&["tcp:80:80"], &["fd00::a", "10.0.0.1"], &[]);
        assert_eq!(dual.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V4, Family::V6]);
    }

    #[test]
    fn source_ranges_are_split_by_family_sorted_without_repeats() {
        let plan = plan(&["tcp:80:80"], &["10.0.0.1"], &["10.1.2.3/16", "fd00:1:2::5/48", "10.1.0.0/16", "0.0.0.0/0"]);
        assert!(plan.restricts_sources());
        let v4: Vec<String> = plan.ranges(Family::V4).map(ToString::to_string).collect();
        assert_eq!(v4, vec!["0.0.0.0/0", "10.1.0.0/16"]);
        let v6: Vec<String> = plan.ranges(Family::V6).map(ToString::to_string).collect();
        assert_eq!(v6, vec!["fd00:1:2::/48"]);
    }

    #[test]
    fn socket_text_brackets_ipv6() {
        assert_eq!(socket_text("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        assert_eq!(socket_text("fd00::1".parse().unwrap(), 80), "[fd00::1]:80");
    }
}
