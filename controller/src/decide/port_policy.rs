//! Which host ports a Service may claim. A proxy pod's hostPort takes the port on the node's
//! addresses, and kube-proxy then sends traffic for `NODE_IP:port` to the Service: a tenant
//! claiming 22, 6443 or the kubelet's ports would take over the node's own services. So some
//! ports are refused unless the admin allows them.

use std::fmt;

use hostlb_contract::PortMap;

use hostlb_model::options::ServiceLb;

/// Ports of daemons on the node, outside Kubernetes or beside it: a proxy pod's hostPort
/// would catch their traffic on the node's addresses. The table "Ports refused by default" in
/// docs/sharing-and-ports.md names who uses each (a test keeps the two the same).
pub const DEFAULT_DENIED_PORTS: &str = "22,111,179,500,2049,2379-2381,4240,4244,4500,4789,5473,6081,6443-6444,\
                                        6641-6642,6783-6784,7946,8285,8472,9099,9100,9345,10248-10260,10267,\
                                        50000,51820-51821,51871";
/// The API server's default `--service-node-port-range`.
pub const DEFAULT_NODE_PORT_RANGE: &str = "30000-32767";

/// `PORT` or `FIRST-LAST`, inclusive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    first: u16,
    last: u16,
}

impl PortRange {
    /// Reads `PORT` or `FIRST-LAST`; the error says what is wrong.
    pub fn parse(text: &str) -> Result<PortRange, String> {
        let port = |text: &str| {
            text.trim()
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{text:?} is not a port number from 1 to 65535"))
        };
        let (first, last) = match text.split_once('-') {
            Some((first, last)) => (port(first)?, port(last)?),
            None => (port(text)?, port(text)?),
        };
        if first > last {
            return Err(format!("{text:?} ends before it starts"));
        }
        Ok(PortRange { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// The admin's rules for host ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortPolicy {
    pub denied: Vec<PortRange>,
    /// Wins over both `denied` and the NodePort range.
    pub allowed: Vec<PortRange>,
    pub node_ports: PortRange,
}

/// A Service port the policy refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedPort {
    pub port: PortMap,
    pub why: String,
}

impl PortPolicy {
    /// Why `port` may not be claimed, naming the setting (the same words for every port refused
    /// for one reason); `None` when it may.
    pub fn refusal(&self, port: u16) -> Option<String> {
        if self.allowed.iter().any(|range| range.contains(port)) {
            return None;
        }
        if self.denied.iter().any(|range| range.contains(port)) {
            return Some("the node's own daemons listen there (--denied-ports)".into());
        }
        self.node_ports
            .contains(port)
            .then(|| format!("kube-proxy listens there, in the NodePort range (--node-port-range {})", self.node_ports))
    }

    /// Keeps the ports `lb` may claim and lists the others.
    pub fn admit(&self, mut lb: ServiceLb) -> (ServiceLb, Vec<RefusedPort>) {
        let mut refused = Vec::new();
        lb.ports.retain(|port| match self.refusal(port.listen) {
            Some(why) => {
                refused.push(RefusedPort { port: *port, why });
                false
            }
            None => true,
        });
        (lb, refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;

    fn parse_ranges(text: &str) -> Result<Vec<PortRange>, String> {
        text.split(',').filter(|item| !item.is_empty()).map(PortRange::parse).collect()
    }

    fn policy(denied: &str, allowed: &str) -> PortPolicy {
        PortPolicy {
            denied: parse_ranges(denied).unwrap(),
            allowed: parse_ranges(allowed).unwrap(),
            node_ports: PortRange::parse(DEFAULT_NODE_PORT_RANGE).unwrap(),
        }
    }

    #[test]
    fn the_nodes_own_ports_and_the_node_port_range_are_refused_by_default() {
        let policy = policy(DEFAULT_DENIED_PORTS, "");
        let infrastructure = [22, 111, 179, 500, 2049, 2379, 2381, 4240, 4244, 4500, 4789, 5473, 6081, 6443, 6444];
        let more =
            [6641, 6642, 6783, 6784, 7946, 8285, 8472, 9099, 9100, 9345, 10248, 10250, 10256, 10260, 10267, 50000];
        let more = more.into_iter().chain([51820, 51821, 51871]);
        for port in infrastructure.into_iter().chain(more).chain([30000, 32767]) {
            assert!(policy.refusal(port).is_some(), "{port} should be refused");
        }
        let allowed = [53, 80, 443, 2378, 2382, 6082, 6640, 6643, 7945, 7947, 8080, 9101, 10247, 10261, 29999];
        for port in allowed.into_iter().chain([32768, 49999, 50001, 51822]) {
            assert_eq!(policy.refusal(port), None, "{port} should be allowed");
        }
        assert_eq!(policy.refusal(6443).unwrap(), "the node's own daemons listen there (--denied-ports)");
        assert!(policy.refusal(31000).unwrap().contains("--node-port-range 30000-32767"));
    }

    #[test]
    fn allowed_ports_win_over_denied_ones_and_the_node_port_range() {
        let policy = policy("22,10000-11000", "10250,31000-31001");
        assert_eq!(policy.refusal(10250), None);
        assert_eq!(policy.refusal(31001), None);
        assert!(policy.refusal(10251).is_some());
        assert!(policy.refusal(31002).is_some());
    }

    #[test]
    fn an_admin_may_allow_a_port_refused_by_default() {
        let policy = policy(DEFAULT_DENIED_PORTS, "6081,9100");
        assert_eq!(policy.refusal(6081), None);
        assert_eq!(policy.refusal(9100), None);
        assert!(policy.refusal(9099).is_some());
    }

    /// The table of the ports refused by default in docs/sharing-and-ports.md, one row per
    /// range, each naming who uses it: the same ranges as the default, in the same order.
    #[test]
    fn the_docs_name_who_uses_each_port_refused_by_default() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/sharing-and-ports.md"));
        let table = doc.split("## Ports refused by default").nth(1).expect("docs/sharing-and-ports.md has the table");
        let rows: Vec<Vec<&str>> = table
            .lines()
            .skip_while(|line| !line.starts_with('|'))
            .take_while(|line| line.starts_with('|'))
            .skip(2)
            .map(|row| row.split('|').map(str::trim).filter(|cell| !cell.is_empty()).collect())
            .collect();
        let ranges: Vec<String> = rows.iter().map(|cells| cells[0].trim_matches('`').to_string()).collect();
        assert_eq!(ranges.join(","), DEFAULT_DENIED_PORTS);
        for cells in &rows {
            assert!(cells.len() >= 2 && cells[1..].iter().all(|cell| !cell.is_empty()), "{cells:?} names nobody");
        }
    }

    #[test]
    fn refused_ports_leave_the_others_in_place() {
        let service = ServiceBuilder::new("web").port("TCP", 22, 0).port("TCP", 443, 0).port("UDP", 10250, 0).build();
        let lb = ServiceLb::from_service(&service).unwrap();
        let (admitted, refused) = policy(DEFAULT_DENIED_PORTS, "").admit(lb);
        assert_eq!(admitted.ports.iter().map(|p| p.listen).collect::<Vec<_>>(), vec![443]);
        assert_eq!(refused.iter().map(|r| r.port.listen).collect::<Vec<_>>(), vec![22, 10250]);
    }

    #[test]
    fn ranges_read_back_what_they_write_and_name_what_is_wrong() {
        for text in ["22", "10248-10260", "1-65535"] {
            assert_eq!(PortRange::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(PortRange::parse(" 80 - 81").unwrap().to_string(), "80-81");
        assert!(PortRange::parse("0").unwrap_err().contains("not a port number"));
        assert!(PortRange::parse("90-80").unwrap_err().contains("ends before it starts"));
        assert!(PortRange::parse("ssh").is_err());
        assert!(PortRange::parse("1-70000").is_err());
    }
}
