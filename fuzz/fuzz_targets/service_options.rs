//! The controller's check of a Service's options, `ServiceLb::from_service`, on Services whose
//! annotations, labels, ports, addresses, families and source ranges come from the input: it
//! returns errors that name a field, never panics, and what it accepts is consistent.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::Arbitrary;
use hostlb_model::names;
use hostlb_model::options::ServiceLb;
use hostlb_contract::Cidr;
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use libfuzzer_sys::fuzz_target;

/// Most values are drawn from what the API server would store, so that the input reaches past
/// the first checks, and some are any text.
#[derive(Arbitrary, Debug)]
struct Input {
    annotations: Vec<(Key, String)>,
    labels: Vec<(Key, String)>,
    ports: Vec<Port>,
    cluster_ip: Option<Address>,
    cluster_ips: Option<Vec<Address>>,
    ip_families: Option<Vec<FamilyName>>,
    local: bool,
    health_check_node_port: Option<i32>,
    source_ranges: Option<Vec<Range>>,
}

#[derive(Arbitrary, Debug)]
enum Key {
    Tolerations,
    PriorityClass,
    Pool,
    LegacySourceRanges,
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Port {
    protocol: Option<ProtocolName>,
    port: i32,
    node_port: Option<i32>,
}

#[derive(Arbitrary, Debug)]
enum ProtocolName {
    Tcp,
    Udp,
    Sctp,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum FamilyName {
    V4,
    V6,
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Address {
    V4([u8; 4]),
    V6([u8; 16]),
    Text(String),
}

#[derive(Arbitrary, Debug)]
enum Range {
    Prefix(Address, u8),
    Text(String),
}

impl Key {
    fn name(self) -> String {
        match self {
            Key::Tolerations => names::ANNOTATION_TOLERATIONS.into(),
            Key::PriorityClass => names::ANNOTATION_PRIORITY_CLASS.into(),
            Key::Pool => names::POOL.into(),
            Key::LegacySourceRanges => names::ANNOTATION_LEGACY_SOURCE_RANGES.into(),
            Key::Other(key) => key,
        }
    }
}

impl Address {
    fn text(self) -> String {
        match self {
            Address::V4(octets) => Ipv4Addr::from(octets).to_string(),
            Address::V6(octets) => Ipv6Addr::from(octets).to_string(),
            Address::Text(text) => text,
        }
    }
}

impl Range {
    fn text(self) -> String {
        match self {
            Range::Prefix(address, prefix) => format!("{}/{prefix}", address.text()),
            Range::Text(text) => text,
        }
    }
}

fn service(input: Input) -> Service {
    let map = |pairs: Vec<(Key, String)>| Some(pairs.into_iter().map(|(key, value)| (key.name(), value)).collect());
    let ports = input.ports.into_iter().map(|port| ServicePort {
        protocol: port.protocol.map(|protocol| match protocol {
            ProtocolName::Tcp => "TCP".into(),
            ProtocolName::Udp => "UDP".into(),
            ProtocolName::Sctp => "SCTP".into(),
            ProtocolName::Other(name) => name,
        }),
        port: port.port,
        node_port: port.node_port,
        ..ServicePort::default()
    });
    let families = input.ip_families.map(|families| {
        families
            .into_iter()
            .map(|family| match family {
                FamilyName::V4 => "IPv4".into(),
                FamilyName::V6 => "IPv6".into(),
                FamilyName::Other(name) => name,
            })
            .collect()
    });
    Service {
        metadata: ObjectMeta {
            name: Some("web".into()),
            namespace: Some("shop".into()),
            uid: Some("5c9a6e42-0000-4000-8000-000000000001".into()),
            annotations: map(input.annotations),
            labels: map(input.labels),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            type_: Some("LoadBalancer".into()),
            ports: Some(ports.collect()),
            cluster_ip: input.cluster_ip.map(Address::text),
            cluster_ips: input.cluster_ips.map(|ips| ips.into_iter().map(Address::text).collect()),
            ip_families: families,
            external_traffic_policy: Some(if input.local { "Local" } else { "Cluster" }.into()),
            health_check_node_port: input.health_check_node_port,
            load_balancer_source_ranges: input
                .source_ranges
                .map(|ranges| ranges.into_iter().map(Range::text).collect()),
            ..ServiceSpec::default()
        }),
        status: None,
    }
}

fuzz_target!(|input: Input| {
    let service = service(input);
    let lb = match ServiceLb::from_service(&service) {
        Ok(lb) => lb,
        Err(errors) => {
            assert!(!errors.is_empty(), "refused without a reason");
            for error in errors {
                assert!(!error.field.is_empty() && !error.message.is_empty(), "{error:?}");
            }
            return;
        }
    };
    assert!(!lb.ports.is_empty(), "{service:?}");
    assert!(lb.ports.iter().all(|port| port.listen != 0 && port.target != 0), "{:?}", lb.ports);
    assert!(lb.source_ranges.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", lb.source_ranges);
    for range in &lb.source_ranges {
        assert_eq!(Cidr::parse(&range.to_string()).as_ref(), Ok(range));
    }
    let spec = service.spec.as_ref().unwrap();
    let declared_ips = spec.cluster_ips.iter().flatten().chain(&spec.cluster_ip);
    assert!(declared_ips.map(|ip| ip.parse::<IpAddr>()).any(|ip| ip.is_ok()), "{service:?}");
    assert!(!lb.families.is_empty(), "{service:?}");
    if let Some(pool) = &lb.pool {
        assert!(is_label_value(pool), "{pool:?}");
    }
});

/// A non-empty Kubernetes label value: at most 63 characters, alphanumeric at both ends, `-`, `_`
/// and `.` between.
fn is_label_value(value: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_alphanumeric();
    (1..=63).contains(&value.len())
        && value.chars().all(|c| alphanumeric(c) || matches!(c, '-' | '_' | '.'))
        && value.starts_with(alphanumeric)
        && value.ends_with(alphanumeric)
}
