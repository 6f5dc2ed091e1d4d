//! The contract between the controller and `hostlb-lb`: the controller turns a Service into
//! a `Command` and writes it as the proxy pods' arguments with `to_args`; `hostlb-lb` parses
//! them back into the same types with clap. One definition, so the two sides cannot drift
//! apart. Also the release every binary reports (`release`), since every binary links this
//! crate. Pure: no I/O.

pub mod agent;
mod command;
pub mod release;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use command::{
    flag, AgentArgs, Command, FollowArgs, ProbeArgs, RuleArgs, AGENT_HTTP_PORT, CONTROLLER_BINARY, FAMILIES_ENV,
    FOLLOW_ENDPOINTS, LB_BINARY, NAMESPACE_ENV, NODE_AGENT, NODE_NAME_ENV, PORTS_ENV, PROBE_ADDRESS_ENV,
    PROBE_PORT_ENV, SOURCE_RANGES_ENV, TO_ENV,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::V4, Family::V6];

    pub fn of(address: &IpAddr) -> Family {
        match address {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The spelling of the Kubernetes API (`spec.ipFamilies`) and of people.
    pub fn name(self) -> &'static str {
        match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        }
    }

    pub fn from_name(name: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == name)
    }

    /// The spelling of `--family`.
    pub fn arg_name(self) -> &'static str {
        match self {
            Family::V4 => "ipv4",
            Family::V6 => "ipv6",
        }
    }

    /// Reads `--family`, in any case.
    pub fn parse_arg(text: &str) -> Result<Family, String> {
        let text = text.trim();
        Family::ALL
            .into_iter()
            .find(|f| f.arg_name().eq_ignore_ascii_case(text))
            .ok_or_else(|| "expected ipv4 or ipv6".into())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    /// The IP protocol number, as `meta l4proto` sees it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The spelling of the Kubernetes API.
    pub fn api_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    pub fn from_api_name(name: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.api_name() == name)
    }

    /// The spelling of `--port`, and of nftables.
    pub fn arg_name(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }

    pub fn from_arg(text: &str) -> Option<Protocol> {
        Protocol::ALL.into_iter().find(|p| p.arg_name() == text)
    }
}

/// One forwarded port: packets of `protocol` to `listen` go to the destination's `target`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortMap {
    pub protocol: Protocol,
    /// The Service port, claimed as hostPort on every selected node.
    pub listen: u16,
    /// The Service port on the ClusterIP; unused when the destination is the node's endpoints,
    /// whose ports come from their EndpointSlices.
    pub target: u16,
}

impl PortMap {
    /// Reads `PROTO:LISTEN:TARGET`; the error says what is wrong, without repeating the text.
    pub fn parse(text: &str) -> Result<PortMap, String> {
        let (protocol, listen, target) = protocol_listen_and(text, "PROTO:LISTEN:TARGET, such as tcp:443:8443")?;
        let target = port_number(target).ok_or("the target port must be 1 to 65535")?;
        Ok(PortMap { protocol, listen, target })
    }
}

/// Splits `PROTO:LISTEN:REST` and reads the protocol and the listened port; `shape` is what
/// the whole should look like, for the error.
fn protocol_listen_and<'a>(text: &'a str, shape: &str) -> Result<(Protocol, u16, &'a str), String> {
    let parts: Vec<&str> = text.trim().split(':').collect();
    let [protocol, listen, rest] = parts[..] else {
        return Err(format!("expected {shape}"));
    };
    let protocol = Protocol::from_arg(protocol)
        .ok_or_else(|| format!("unknown protocol {protocol:?}; expected tcp, udp or sctp"))?;
    let listen = port_number(listen).ok_or("the listen port must be 1 to 65535")?;
    Ok((protocol, listen, rest))
}

/// The name of the Service port behind a listened port: EndpointSlices name their ports by it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NamedPort {
    pub protocol: Protocol,
    pub listen: u16,
    pub name: String,
}

impl NamedPort {
    /// Reads `PROTO:LISTEN:NAME`, NAME a DNS label as Service port names are.
    pub fn parse(text: &str) -> Result<NamedPort, String> {
        let (protocol, listen, name) = protocol_listen_and(text, "PROTO:LISTEN:NAME, such as tcp:443:https")?;
        let is_label_character = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
        if name.is_empty() || name.len() > 63 || !name.chars().all(is_label_character) {
            return Err(format!("{name:?} is not a port name (lower-case letters, digits and '-', at most 63)"));
        }
        Ok(NamedPort { protocol, listen, name: name.to_string() })
    }
}

impl fmt::Display for NamedPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.protocol.arg_name(), self.listen, self.name)
    }
}

/// A TCP, UDP or SCTP port: 0 is no port to listen on or to send to.
pub fn port_number(text: &str) -> Option<u16> {
    text.trim().parse::<u16>().ok().filter(|p| *p != 0)
}

impl fmt::Display for PortMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.protocol.arg_name(), self.listen, self.target)
    }
}

/// Where the forwarded ports go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destination {
    Address(IpAddr),
    /// The Service's ready endpoints on the proxy pod's own node (`externalTrafficPolicy:
    /// Local`), which change while the pod runs: `hostlb-lb` installs the source filter and no
    /// forwarding, and the endpoint follower (`FollowArgs`) installs the forwarding as the
    /// endpoints come and go.
    NodeEndpoints,
}

impl Destination {
    const NODE_ENDPOINTS: &'static str = "node-endpoints";

    /// Reads an address or `node-endpoints`; the error says what is wrong, without repeating
    /// the text.
    pub fn parse(text: &str) -> Result<Destination, String> {
        let text = text.trim();
        if text == Destination::NODE_ENDPOINTS {
            return Ok(Destination::NodeEndpoints);
        }
        text.parse()
            .map(Destination::Address)
            .map_err(|_| format!("not an IPv4 or IPv6 address, nor {}", Destination::NODE_ENDPOINTS))
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Address(address) => address.fmt(f),
            Destination::NodeEndpoints => f.write_str(Destination::NODE_ENDPOINTS),
        }
    }
}

/// An address prefix, stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    pub network: IpAddr,
    pub prefix: u8,
}

impl Cidr {
    /// Reads `ADDRESS/PREFIX` and clears the host bits, as kube-proxy does with
    /// `loadBalancerSourceRanges`; the error says what is wrong, without repeating the text.
    pub fn parse(text: &str) -> Result<Cidr, String> {
        let (address, prefix) =
            text.trim().split_once('/').ok_or("expected a CIDR such as 10.0.0.0/8 (ADDRESS/PREFIX)")?;
        let address: IpAddr =
            address.parse().map_err(|_| format!("{address:?} before the '/' is not an IPv4 or IPv6 address"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| *p <= max)
            .ok_or_else(|| format!("the prefix length must be a number from 0 to {max}"))?;
        // A shift by the whole width (prefix 0) is None: nothing of the address is kept.
        let network = match address {
            IpAddr::V4(a) => {
                IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)))
            }
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(
                a.to_bits() & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0),
            )),
        };
        Ok(Cidr { network, prefix })
    }

    /// Whether `address` is in the prefix.
    pub fn contains(&self, address: &IpAddr) -> bool {
        Family::of(address) == self.family() && self.network <= *address && *address <= self.last()
    }

    pub fn family(&self) -> Family {
        Family::of(&self.network)
    }

    /// The range's last address: its network with every host bit set.
    pub fn last(&self) -> IpAddr {
        // A shift by the whole width (prefix 32 or 128) is None: no host bit to set.
        let prefix = u32::from(self.prefix);
        match self.network {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from_bits(a.to_bits() | u32::MAX.checked_shr(prefix).unwrap_or(0))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from_bits(a.to_bits() | u128::MAX.checked_shr(prefix).unwrap_or(0))),
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

/// The address in network byte order: 4 or 16 bytes.
pub fn address_bytes(address: &IpAddr) -> Vec<u8> {
    match address {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// The address of 4 or 16 bytes in network byte order; None for any other length.
pub fn bytes_address(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(octets) = <[u8; 4]>::try_from(bytes) {
        return Some(IpAddr::V4(Ipv4Addr::from(octets)));
    }
    <[u8; 16]>::try_from(bytes).ok().map(|octets| IpAddr::V6(Ipv6Addr::from(octets)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_maps_read_back_what_they_write() {
        for protocol in Protocol::ALL {
            let map = PortMap { protocol, listen: 443, target: 30443 };
            assert_eq!(PortMap::parse(&map.to_string()), Ok(map));
        }
    }

    #[test]
    fn port_maps_name_what_is_wrong() {
        assert!(PortMap::parse("tcp:80").unwrap_err().contains("PROTO:LISTEN:TARGET"));
        assert!(PortMap::parse("icmp:80:80").unwrap_err().contains("unknown protocol \"icmp\""));
        assert!(PortMap::parse("tcp:0:80").unwrap_err().contains("listen port"));
        assert!(PortMap::parse("udp:53:65536").unwrap_err().contains("target port"));
    }

    #[test]
    fn families_and_protocols_read_back_every_spelling() {
        for family in Family::ALL {
            assert_eq!(Family::parse_arg(family.arg_name()), Ok(family));
            assert_eq!(Family::parse_arg(&family.arg_name().to_uppercase()), Ok(family));
            assert_eq!(Family::from_name(family.name()), Some(family));
        }
        for protocol in Protocol::ALL {
            assert_eq!(Protocol::from_arg(protocol.arg_name()), Some(protocol));
            assert_eq!(Protocol::from_api_name(protocol.api_name()), Some(protocol));
        }
        assert_eq!(Protocol::from_api_name("tcp"), None);
        assert_eq!(Family::parse_arg("ipx"), Err("expected ipv4 or ipv6".into()));
    }

    #[test]
    fn destinations_are_addresses_or_the_node_endpoints() {
        assert_eq!(Destination::parse(" fd00::1 "), Ok(Destination::Address("fd00::1".parse().unwrap())));
        assert_eq!(Destination::parse("node-endpoints"), Ok(Destination::NodeEndpoints));
        assert_eq!(Destination::NodeEndpoints.to_string(), "node-endpoints");
        let refused = Err("not an IPv4 or IPv6 address, nor node-endpoints".into());
        assert_eq!(Destination::parse("endpoints"), refused);
        assert_eq!(Destination::parse("10.0.0.1:80"), refused);
    }

    #[test]
    fn named_ports_read_back_and_names_are_dns_labels() {
        let named = NamedPort::parse(" udp:53:dns-udp ").unwrap();
        assert_eq!(named, NamedPort { protocol: Protocol::Udp, listen: 53, name: "dns-udp".into() });
        assert_eq!(NamedPort::parse(&named.to_string()), Ok(named));
        assert_eq!(NamedPort::parse("tcp:80"), Err("expected PROTO:LISTEN:NAME, such as tcp:443:https".into()));
        assert_eq!(NamedPort::parse("tcp:0:http"), Err("the listen port must be 1 to 65535".into()));
        for name in ["", "HTTP", "a,b", &"x".repeat(64)] {
            let error = NamedPort::parse(&format!("tcp:80:{name}")).unwrap_err();
            assert!(error.contains("is not a port name"), "{name}: {error}");
        }
    }

    #[test]
    fn addresses_read_back_from_their_bytes() {
        for text in ["10.0.0.1", "fd00::1"] {
            let address: IpAddr = text.parse().unwrap();
            assert_eq!(bytes_address(&address_bytes(&address)), Some(address));
        }
        assert_eq!(bytes_address(&[10, 0, 0]), None);
    }

    #[test]
    fn cidrs_lose_their_host_bits_and_keep_their_family() {
        let v4 = Cidr::parse("10.1.2.3/8").unwrap();
        assert_eq!(v4.to_string(), "10.0.0.0/8");
        assert_eq!(v4.family(), Family::V4);
        assert_eq!(v4.last().to_string(), "10.255.255.255");
        let v6 = Cidr::parse(" fd00:1:2::9/33 ").unwrap();
        assert_eq!(v6.to_string(), "fd00:1::/33");
        assert_eq!(v6.family(), Family::V6);
        assert_eq!(Cidr::parse("0.0.0.0/0").unwrap().last().to_string(), "255.255.255.255");
    }

    #[test]
    fn a_prefix_contains_its_addresses_of_its_family_only() {
        let cidr = Cidr::parse("10.250.0.0/16").unwrap();
        assert!(cidr.contains(&"10.250.0.11".parse().unwrap()) && cidr.contains(&"10.250.255.255".parse().unwrap()));
        assert!(!cidr.contains(&"10.251.0.1".parse().unwrap()) && !cidr.contains(&"::a:fa00:b".parse().unwrap()));
        let v6 = Cidr::parse("2001:db8::/32").unwrap();
        assert!(v6.contains(&"2001:db8:1::1".parse().unwrap()) && !v6.contains(&"2001:db9::1".parse().unwrap()));
    }

    #[test]
    fn the_last_address_has_every_host_bit_set() {
        let last = |text: &str| Cidr::parse(text).unwrap().last().to_string();
        assert_eq!(last("10.128.0.0/9"), "10.255.255.255");
        assert_eq!(last("fd00::/12"), "fd0f:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
        assert_eq!(last("1.2.3.4/32"), "1.2.3.4");
        assert_eq!(last("fd00::1/128"), "fd00::1");
        assert_eq!(last("::/0"), "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn cidrs_name_what_is_wrong() {
        assert!(Cidr::parse("10.0.0.0").unwrap_err().contains("ADDRESS/PREFIX"));
        assert!(Cidr::parse("ten/8").unwrap_err().contains("not an IPv4 or IPv6 address"));
        assert!(Cidr::parse("10.0.0.0/33").unwrap_err().contains("0 to 32"));
        assert!(Cidr::parse("::/129").unwrap_err().contains("0 to 128"));
    }
}
