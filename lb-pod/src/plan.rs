//! What to forward where, parsed and validated from the arguments: no I/O.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostlb_proxy_spec::{Cidr, Family, PortMap, Protocol, ARG_FAMILY, ARG_PORT, ARG_SOURCE_RANGE, ARG_TO};

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
    /// Parses the raw `--port`, `--to` and `--source-range` values. Each value may itself be a
    /// comma-separated list (environment fallbacks and kubelet's `status.hostIPs` are); blank
    /// items are skipped.
    pub fn parse(ports: &[String], to: &[String], source_ranges: &[String]) -> Result<Plan, Error> {
        let mut maps: Vec<PortMap> = Vec::new();
        for text in items(ports) {
            let map = PortMap::parse(text).map_err(|reason| Error::bad(ARG_PORT, text, reason))?;
            if let Some(other) = maps.iter().find(|m| (m.protocol, m.listen) == (map.protocol, map.listen)) {
                if other.target != map.target {
                    return Err(Error::bad(
                        ARG_PORT,
                        text,
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
            maps.push(map);
        }
        if maps.is_empty() {
            return Err(Error::missing(ARG_PORT, "no port given (nor HOSTLB_PORTS); expected PROTO:LISTEN:TARGET"));
        }
        maps.sort();

        let (mut to_v4, mut to_v6) = (None, None);
        for text in items(to) {
            let address: IpAddr = text.parse().map_err(|_| Error::bad(ARG_TO, text, "not an IPv4 or IPv6 address"))?;
            if address.is_unspecified() || address.is_loopback() || address.is_multicast() {
                return Err(Error::bad(
                    ARG_TO,
                    text,
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
                    ARG_TO,
                    text,
                    format!("a second {family} destination besides {existing}; give at most one per family"),
                ));
            }
            match address {
                IpAddr::V4(a) => to_v4 = Some(a),
                IpAddr::V6(a) => to_v6 = Some(a),
            }
        }
        if to_v4.is_none() && to_v6.is_none() {
            return Err(Error::missing(ARG_TO, "no destination address given (nor HOSTLB_TO)"));
        }

        let mut ranges = items(source_ranges)
            .map(|text| Cidr::parse(text).map_err(|reason| Error::bad(ARG_SOURCE_RANGE, text, reason)))
            .collect::<Result<Vec<_>, _>>()?;
        ranges.sort();
        ranges.dedup();
        Ok(Plan { ports: maps, to_v4, to_v6, source_ranges: ranges })
    }

    /// Drops the destinations of families the Service does not have. Kubelet's
    /// `status.hostIPs` names every family of a dual-stack node, while a single-stack Service's
    /// NodePort is served in its own family only. No `--family` at all keeps every family.
    pub fn only_families(mut self, families: &[String]) -> Result<Plan, Error> {
        let mut kept = Vec::new();
        for text in items(families) {
            kept.push(Family::from_arg(text).ok_or_else(|| Error::bad(ARG_FAMILY, text, "expected ipv4 or ipv6"))?);
        }
        if kept.is_empty() {
            return Ok(self);
        }
        if !kept.contains(&Family::V4) {
            self.to_v4 = None;
        }
        if !kept.contains(&Family::V6) {
            self.to_v6 = None;
        }
        if self.to_v4.is_none() && self.to_v6.is_none() {
            let names: Vec<&str> = kept.iter().map(|f| f.name()).collect();
            return Err(Error::missing(ARG_TO, format!("no destination address of the families {}", names.join(", "))));
        }
        Ok(self)
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

fn items(values: &[String]) -> impl Iterator<Item = &str> {
    values.iter().flat_map(|v| v.split(',')).map(str::trim).filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn plan(ports: &[&str], to: &[&str], ranges: &[&str]) -> Result<Plan, Error> {
        Plan::parse(&strings(ports), &strings(to), &strings(ranges))
    }

    fn message(result: Result<Plan, Error>) -> String {
        let error = result.expect_err("expected a bad argument");
        assert_eq!(error.exit_code(), 2, "{error}");
        error.to_string()
    }

    #[test]
    fn families_drop_destinations_of_other_families() {
        let dual = plan(&["tcp:80:30080"], &["10.0.0.1,fd00::1"], &[]).unwrap();
        let v4 = dual.clone().only_families(&strings(&["ipv4"])).unwrap();
        assert_eq!(v4.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V4]);
        let v6 = dual.clone().only_families(&strings(&["IPv6"])).unwrap();
        assert_eq!(v6.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V6]);
        assert_eq!(dual.clone().only_families(&[]).unwrap(), dual);
        let err = dual.only_families(&strings(&["ipx"])).unwrap_err().to_string();
        assert!(err.contains("--family") && err.contains("ipx"), "{err}");
        let v4_only = plan(&["tcp:80:30080"], &["10.0.0.1"], &[]).unwrap();
        let err = v4_only.only_families(&strings(&["ipv6"])).unwrap_err().to_string();
        assert!(err.contains("--to") && err.contains("IPv6"), "{err}");
    }

    #[test]
    fn parses_ports_of_each_protocol_sorted() {
        let plan = plan(&["udp:53:5353", "tcp:80:8080", "sctp:9:9"], &["10.96.0.10"], &[]).unwrap();
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
    fn a_port_without_three_fields_is_rejected_naming_the_format() {
        assert_eq!(
            message(plan(&["tcp:80"], &["10.0.0.1"], &[])),
            r#"--port "tcp:80": expected PROTO:LISTEN:TARGET, such as tcp:443:8443"#
        );
        assert!(message(plan(&["tcp:80:80:80"], &["10.0.0.1"], &[])).contains("PROTO:LISTEN:TARGET"));
    }

    #[test]
    fn protocols_are_lowercase_tcp_udp_or_sctp() {
        assert!(message(plan(&["TCP:80:80"], &["10.0.0.1"], &[])).contains("tcp, udp or sctp"));
        assert!(message(plan(&["icmp:80:80"], &["10.0.0.1"], &[])).contains(r#""icmp:80:80""#));
    }

    #[test]
    fn ports_must_be_1_to_65535() {
        assert!(message(plan(&["tcp:0:80"], &["10.0.0.1"], &[])).contains("listen port must be 1 to 65535"));
        assert!(message(plan(&["tcp:80:65536"], &["10.0.0.1"], &[])).contains("target port must be 1 to 65535"));
        assert!(message(plan(&["tcp:-1:80"], &["10.0.0.1"], &[])).contains("listen port"));
        assert!(message(plan(&["tcp: :80"], &["10.0.0.1"], &[])).contains("listen port"));
        assert!(plan(&["tcp:65535:1"], &["10.0.0.1"], &[]).is_ok());
    }

    #[test]
    fn one_listened_port_cannot_go_to_two_targets_but_repeats_are_merged() {
        let error = message(plan(&["tcp:80:8080", "tcp:80:9090"], &["10.0.0.1"], &[]));
        assert!(error.contains("already forwarded to port 8080"), "{error}");
        let plan = plan(&["tcp:80:8080", "tcp:80:8080", "udp:80:8080"], &["10.0.0.1"], &[]).unwrap();
        assert_eq!(plan.ports.len(), 2);
        assert_eq!(plan.targets(), vec![(Protocol::Tcp, 8080), (Protocol::Udp, 8080)]);
    }

    #[test]
    fn ports_and_destinations_are_required() {
        assert!(message(plan(&[], &["10.0.0.1"], &[])).starts_with("--port: no port given"));
        assert!(message(plan(&["tcp:80:80"], &[], &[])).starts_with("--to: no destination"));
        assert!(message(plan(&["tcp:80:80"], &[""], &[])).starts_with("--to: no destination"));
    }

    #[test]
    fn comma_lists_are_split_as_from_the_environment_or_host_ips() {
        let plan = plan(&["tcp:80:80,udp:80:80"], &["10.0.0.1, fd00::1"], &["10.0.0.0/8,fd00::/8"]).unwrap();
        assert_eq!(plan.ports.len(), 2);
        assert_eq!(plan.to_v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(plan.to_v6, Some("fd00::1".parse().unwrap()));
        assert_eq!(plan.source_ranges.len(), 2);
    }

    #[test]
    fn at_most_one_destination_per_family() {
        let error = message(plan(&["tcp:80:80"], &["10.0.0.1,10.0.0.2"], &[]));
        assert_eq!(
            error,
            r#"--to "10.0.0.2": a second IPv4 destination besides 10.0.0.1; give at most one per family"#
        );
        assert!(message(plan(&["tcp:80:80"], &["fd00::1", "fd00::2"], &[])).contains("second IPv6"));
        let same_twice = plan(&["tcp:80:80"], &["10.0.0.1", "10.0.0.1"], &[]).unwrap();
        assert_eq!(same_twice.to_v4, Some(Ipv4Addr::new(10, 0, 0, 1)));
    }

    #[test]
    fn destinations_must_be_unicast_addresses() {
        assert!(message(plan(&["tcp:80:80"], &["$(HOSTLB_NODE_ADDRESS)"], &[])).contains("not an IPv4 or IPv6 address"));
        assert!(message(plan(&["tcp:80:80"], &["10.0.0.1:80"], &[])).contains("not an IPv4 or IPv6"));
        assert!(message(plan(&["tcp:80:80"], &["0.0.0.0"], &[])).contains("unspecified"));
        assert!(message(plan(&["tcp:80:80"], &["::1"], &[])).contains("loopback"));
        assert!(message(plan(&["tcp:80:80"], &["224.0.0.1"], &[])).contains("multicast"));
    }

    #[test]
    fn a_family_without_destination_has_no_rules() {
        let v6_only = plan(&["tcp:80:80"], &["fd00::a"], &[]).unwrap();
        assert_eq!(v6_only.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V6]);
        let dual = plan(&["tcp:80:80"], &["fd00::a", "10.0.0.1"], &[]).unwrap();
        assert_eq!(dual.destinations().map(|(f, _)| f).collect::<Vec<_>>(), vec![Family::V4, Family::V6]);
    }

    #[test]
    fn source_ranges_are_split_by_family_with_host_bits_cleared() {
        let plan = plan(&["tcp:80:80"], &["10.0.0.1"], &["10.1.2.3/16", "fd00:1:2::5/48", "10.1.0.0/16", "0.0.0.0/0"])
            .unwrap();
        assert!(plan.restricts_sources());
        let v4: Vec<String> = plan.ranges(Family::V4).map(ToString::to_string).collect();
        assert_eq!(v4, vec!["0.0.0.0/0", "10.1.0.0/16"]);
        let v6: Vec<String> = plan.ranges(Family::V6).map(ToString::to_string).collect();
        assert_eq!(v6, vec!["fd00:1:2::/48"]);
    }

    #[test]
    fn source_ranges_must_be_cidrs() {
        assert_eq!(
            message(plan(&["tcp:80:80"], &["10.0.0.1"], &["10.0.0.1"])),
            r#"--source-range "10.0.0.1": expected a CIDR such as 10.0.0.0/8 (ADDRESS/PREFIX)"#
        );
        assert!(message(plan(&["tcp:80:80"], &["10.0.0.1"], &["10.0.0.0/33"])).contains("0 to 32"));
        assert!(message(plan(&["tcp:80:80"], &["10.0.0.1"], &["fd00::/129"])).contains("0 to 128"));
        assert!(message(plan(&["tcp:80:80"], &["10.0.0.1"], &["example.org/8"])).contains("not an IPv4"));
    }

    #[test]
    fn socket_text_brackets_ipv6() {
        assert_eq!(socket_text("10.0.0.1".parse().unwrap(), 80), "10.0.0.1:80");
        assert_eq!(socket_text("fd00::1".parse().unwrap(), 80), "[fd00::1]:80");
    }
}
