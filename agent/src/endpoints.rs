//! Where a Service's traffic goes, read from its EndpointSlices: for a proxy pod of an
//! `externalTrafficPolicy: Local` Service, the endpoints on the pod's own node; for the node
//! agent, those of its node (Local) or of every node (Cluster). Pure.
//!
//! kube-proxy cannot do this for the proxy pod: it treats traffic from pod addresses to a
//! NodePort as in-cluster traffic and spreads it over the endpoints of every node.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use hostlb_contract::{Family, FollowArgs, Protocol};
use hostlb_lb::port_forwarding::Forward;
use serde::Deserialize;

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Where EndpointSlices before `nodeName` (Kubernetes 1.20 and older) name the node.
const HOSTNAME_TOPOLOGY_KEY: &str = "kubernetes.io/hostname";

/// The fields of an EndpointSlice read here; `discovery.k8s.io/v1` and `v1beta1` share them.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub address_type: String,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    #[serde(default)]
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: Conditions,
    pub node_name: Option<String>,
    pub topology: Option<BTreeMap<String, String>>,
}

/// Unset `ready` means ready, as the API documents; unset `serving` and `terminating` mean no.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Conditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: Option<i32>,
}

impl Endpoint {
    fn on_node(&self, node: &str) -> bool {
        match &self.node_name {
            Some(name) => name == node,
            None => self.topology.as_ref().and_then(|t| t.get(HOSTNAME_TOPOLOGY_KEY)).is_some_and(|h| h == node),
        }
    }

    fn ready(&self) -> bool {
        self.conditions.ready != Some(false)
    }

    /// Still answering while it shuts down: used, as kube-proxy does, only when no endpoint of
    /// the node is ready, so that connections are not refused during a rollout.
    fn serving_while_terminating(&self) -> bool {
        self.conditions.serving == Some(true) && self.conditions.terminating == Some(true)
    }

    /// The first address is the endpoint's; the others name the same pod.
    fn address(&self) -> Option<IpAddr> {
        self.addresses.first()?.parse().ok()
    }
}

impl EndpointSlice {
    fn family(&self) -> Option<Family> {
        match self.address_type.as_str() {
            "IPv4" => Some(Family::V4),
            "IPv6" => Some(Family::V6),
            _ => None,
        }
    }

    /// The number of the Service port `name` (unnamed: "") of `protocol` in this slice.
    fn port(&self, protocol: Protocol, name: &str) -> Option<u16> {
        self.ports.as_deref()?.iter().find_map(|port| {
            let same_protocol =
                port.protocol.as_deref().map_or(protocol == Protocol::Tcp, |p| p == protocol.api_name());
            let same_name = port.name.as_deref().unwrap_or_default() == name;
            (same_protocol && same_name).then_some(port.port?).and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)
        })
    }
}

/// For each family and listened port of `args`, the ready endpoints of the Service port behind
/// it (or, if none is ready, those still serving while they terminate), on `node` or, without
/// one, anywhere. Ports without endpoints are left out.
pub fn endpoint_forwards<'a>(
    args: &FollowArgs,
    slices: impl IntoIterator<Item = &'a EndpointSlice> + Clone,
    node: Option<&str>,
) -> BTreeMap<Family, Vec<Forward>> {
    let mut forwards: BTreeMap<Family, Vec<Forward>> = BTreeMap::new();
    for family in Family::ALL {
        for port in &args.rules.ports {
            let name = args.port_name(port);
            let backends = |usable: fn(&Endpoint) -> bool| -> Vec<SocketAddr> {
                let mut backends: Vec<SocketAddr> = slices
                    .clone()
                    .into_iter()
                    .filter(|slice| slice.family() == Some(family))
                    .filter_map(|slice| Some((slice, slice.port(port.protocol, name)?)))
                    .flat_map(|(slice, number)| {
                        let on_node =
                            slice.endpoints.iter().filter(|e| node.is_none_or(|node| e.on_node(node)) && usable(e));
                        on_node.filter_map(move |endpoint| Some(SocketAddr::new(endpoint.address()?, number)))
                    })
                    .filter(|backend| Family::of(&backend.ip()) == family)
                    .collect();
                backends.sort();
                backends.dedup();
                backends
            };
            let mut chosen = backends(Endpoint::ready);
            if chosen.is_empty() {
                chosen = backends(Endpoint::serving_while_terminating);
            }
            if !chosen.is_empty() {
                let forward = Forward { protocol: port.protocol, listen: port.listen, backends: chosen };
                forwards.entry(family).or_default().push(forward);
            }
        }
    }
    forwards
}

#[cfg(test)]
mod tests {
    use hostlb_contract::{Destination, NamedPort, PortMap, RuleArgs};
    use serde_json::json;

    use super::*;

    fn args(ports: &[(Protocol, u16, &str)]) -> FollowArgs {
        FollowArgs {
            namespace: "shop".into(),
            service: "web".into(),
            node: "node-1".into(),
            port_names: ports
                .iter()
                .filter(|(_, _, name)| !name.is_empty())
                .map(|(protocol, listen, name)| NamedPort {
                    protocol: *protocol,
                    listen: *listen,
                    name: name.to_string(),
                })
                .collect(),
            rules: RuleArgs {
                ports: ports
                    .iter()
                    .map(|(protocol, listen, _)| PortMap { protocol: *protocol, listen: *listen, target: *listen })
                    .collect(),
                to: vec![Destination::NodeEndpoints],
                ..Default::default()
            },
        }
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn backends(forwards: &BTreeMap<Family, Vec<Forward>>, family: Family, listen: u16) -> Vec<String> {
        let forward = forwards.get(&family).and_then(|f| f.iter().find(|f| f.listen == listen));
        forward.map(|f| f.backends.iter().map(ToString::to_string).collect()).unwrap_or_default()
    }

    #[test]
    fn only_ready_endpoints_of_the_node_on_the_named_port() {
        let slices = [slice(json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.1.5"], "conditions": {"ready": true}, "nodeName": "node-1"},
                {"addresses": ["10.1.1.6"], "conditions": {}, "nodeName": "node-1"},
                {"addresses": ["10.1.1.7"], "conditions": {"ready": false}, "nodeName": "node-1"},
                {"addresses": ["10.1.2.5"], "conditions": {"ready": true}, "nodeName": "node-2"},
                {"addresses": ["10.1.1.8"], "conditions": {"ready": true}}
            ],
            "ports": [
                {"name": "http", "protocol": "TCP", "port": 8080},
                {"name": "dns", "protocol": "UDP", "port": 5353},
                {"name": "metrics", "protocol": "TCP", "port": 9090}
            ]
        }))];
        let forwards = endpoint_forwards(
            &args(&[(Protocol::Tcp, 80, "http"), (Protocol::Udp, 53, "dns")]),
            &slices,
            Some("node-1"),
        );
        assert_eq!(backends(&forwards, Family::V4, 80), ["10.1.1.5:8080", "10.1.1.6:8080"]);
        assert_eq!(backends(&forwards, Family::V4, 53), ["10.1.1.5:5353", "10.1.1.6:5353"]);
        assert!(!forwards.contains_key(&Family::V6));
        let anywhere = endpoint_forwards(&args(&[(Protocol::Tcp, 80, "http")]), &slices, None);
        assert_eq!(
            backends(&anywhere, Family::V4, 80),
            ["10.1.1.5:8080", "10.1.1.6:8080", "10.1.1.8:8080", "10.1.2.5:8080"],
            "every node's ready endpoints, and those placed on none"
        );
    }

    #[test]
    fn slices_of_both_families_and_the_unnamed_port_of_a_one_port_service() {
        let one_port = |family: &str, address: &str| {
            slice(json!({
                "addressType": family,
                "endpoints": [{"addresses": [address], "nodeName": "node-1"}],
                "ports": [{"port": 8080}]
            }))
        };
        let slices = [one_port("IPv4", "10.1.1.5"), one_port("IPv6", "fd00:1::5"), one_port("FQDN", "db.example")];
        let forwards = endpoint_forwards(&args(&[(Protocol::Tcp, 80, "")]), &slices, Some("node-1"));
        assert_eq!(backends(&forwards, Family::V4, 80), ["10.1.1.5:8080"]);
        assert_eq!(backends(&forwards, Family::V6, 80), ["[fd00:1::5]:8080"]);
        let udp = endpoint_forwards(&args(&[(Protocol::Udp, 80, "")]), &slices, Some("node-1"));
        assert!(udp.is_empty(), "a port without protocol is TCP: {udp:?}");
    }

    #[test]
    fn serving_terminating_endpoints_are_used_only_when_none_is_ready() {
        let terminating = json!({"addresses": ["10.1.1.9"], "nodeName": "node-1",
                                 "conditions": {"ready": false, "serving": true, "terminating": true}});
        let ready = json!({"addresses": ["10.1.1.5"], "nodeName": "node-1", "conditions": {"ready": true}});
        let slice_of = |endpoints: serde_json::Value| {
            slice(json!({"addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080}]}))
        };
        let web = args(&[(Protocol::Tcp, 80, "http")]);
        let rolling = endpoint_forwards(&web, &[slice_of(json!([terminating.clone(), ready]))], Some("node-1"));
        assert_eq!(backends(&rolling, Family::V4, 80), ["10.1.1.5:8080"]);
        let last = endpoint_forwards(&web, &[slice_of(json!([terminating]))], Some("node-1"));
        assert_eq!(backends(&last, Family::V4, 80), ["10.1.1.9:8080"]);
    }

    #[test]
    fn slices_without_node_name_are_placed_by_their_hostname_topology() {
        let slices = [slice(json!({
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.1.1.5"], "topology": {"kubernetes.io/hostname": "node-1"}},
                {"addresses": ["10.1.2.5"], "topology": {"kubernetes.io/hostname": "node-2"}},
                {"addresses": ["10.1.2.6"], "nodeName": "node-2", "topology": {"kubernetes.io/hostname": "node-1"}}
            ],
            "ports": [{"name": "http", "port": 8080}]
        }))];
        let forwards = endpoint_forwards(&args(&[(Protocol::Tcp, 80, "http")]), &slices, Some("node-1"));
        assert_eq!(backends(&forwards, Family::V4, 80), ["10.1.1.5:8080"], "nodeName wins over the topology");
    }

    #[test]
    fn a_port_split_over_slices_gathers_its_endpoints_and_drops_repeats() {
        let part = |addresses: &[&str]| {
            let endpoints: Vec<_> = addresses.iter().map(|a| json!({"addresses": [a], "nodeName": "node-1"})).collect();
            slice(json!({"addressType": "IPv4", "endpoints": endpoints, "ports": [{"name": "http", "port": 8080}]}))
        };
        let slices = [part(&["10.1.1.6", "10.1.1.5"]), part(&["10.1.1.5", "not-an-address"]), EndpointSlice::default()];
        let forwards = endpoint_forwards(&args(&[(Protocol::Tcp, 80, "http")]), &slices, Some("node-1"));
        assert_eq!(backends(&forwards, Family::V4, 80), ["10.1.1.5:8080", "10.1.1.6:8080"]);
    }
}
