//! What hostlb publishes of a node in `status.loadBalancer.ingress`, and how it chooses.

use hostlb_contract::Cidr;
use std::fmt;
use std::net::IpAddr;

/// One entry of `status.loadBalancer.ingress`: what clients, and ExternalDNS, use. ExternalDNS
/// makes an A or AAAA record of every address and a CNAME of every hostname, so only what
/// clients should reach belongs here.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Address {
    Ip(IpAddr),
    Hostname(String),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Ip(ip) => ip.fmt(f),
            Address::Hostname(name) => f.write_str(name),
        }
    }
}

/// What of a node is published.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, clap::ValueEnum)]
pub enum AddressKind {
    /// Its addresses, one per family of the Service.
    Ip,
    /// Its hostname.
    Hostname,
}

impl AddressKind {
    pub fn name(self) -> &'static str {
        match self {
            AddressKind::Ip => "ip",
            AddressKind::Hostname => "hostname",
        }
    }

    pub fn from_name(name: &str) -> Option<AddressKind> {
        [AddressKind::Ip, AddressKind::Hostname].into_iter().find(|kind| kind.name() == name)
    }
}

/// How a Service's addresses are chosen: the controller's defaults, or the Service's own.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddressPolicy {
    pub address_type: AddressType,
    /// Sorted, without repeats, never empty.
    pub kinds: Vec<AddressKind>,
    /// At most this many nodes are published; None for all.
    pub max_nodes: Option<usize>,
    pub node_asked: NodeAskedAddresses,
}

/// What a node may ask to be published as, through its `hostlb.io/public-address` and
/// `hostlb.io/public-hostname` annotations: its kubelet may write them, so only addresses in
/// the admin's ranges and names in the admin's domains count. None by default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeAskedAddresses {
    pub ranges: Vec<Cidr>,
    /// A name counts when it is one of these or ends in `.` and one of these.
    pub domains: Vec<String>,
}

impl NodeAskedAddresses {
    pub fn allows_address(&self, address: &IpAddr) -> bool {
        self.ranges.iter().any(|range| range.contains(address))
    }

    pub fn allows_hostname(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.');
        self.domains.iter().map(|domain| domain.trim_end_matches('.')).any(|domain| {
            !domain.is_empty() && (name == domain || name.strip_suffix(domain).is_some_and(|host| host.ends_with('.')))
        })
    }
}

/// `status.loadBalancer.ingress[].ipMode`: with `Vip`, kube-proxy takes traffic to the
/// address on every node as its own; with `Proxy`, it leaves it to reach the node it names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IpMode {
    Vip,
    Proxy,
}

impl IpMode {
    pub fn api_name(self) -> &'static str {
        match self {
            IpMode::Vip => "VIP",
            IpMode::Proxy => "Proxy",
        }
    }

    pub fn from_api_name(name: &str) -> Option<IpMode> {
        [IpMode::Vip, IpMode::Proxy].into_iter().find(|mode| mode.api_name() == name)
    }
}

/// Which of a node's addresses to publish.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum AddressType {
    /// Per node and family: its ExternalIP where it has one, otherwise its InternalIP.
    Auto,
    ExternalIp,
    InternalIp,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_may_ask_only_for_the_admins_ranges_and_domains() {
        let nothing = NodeAskedAddresses::default();
        assert!(!nothing.allows_address(&"203.0.113.77".parse().unwrap()) && !nothing.allows_hostname("a.example"));
        let allowed = NodeAskedAddresses {
            ranges: vec![Cidr::parse("198.51.100.0/24").unwrap()],
            domains: vec!["lb.example".into(), "edge.example.".into()],
        };
        assert!(allowed.allows_address(&"198.51.100.7".parse().unwrap()));
        assert!(!allowed.allows_address(&"203.0.113.77".parse().unwrap()));
        for name in ["lb.example", "node-1.lb.example", "node-1.edge.example."] {
            assert!(allowed.allows_hostname(name), "{name}");
        }
        for name in ["evil-lb.example", "lb.example.evil", "example", "shop.example"] {
            assert!(!allowed.allows_hostname(name), "{name}");
        }
    }
}
