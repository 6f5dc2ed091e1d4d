//! The addresses a Service is published on: those of nodes whose proxy pod is Ready.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostlb_proxy_spec::Family;
use k8s_openapi::api::core::v1::{LoadBalancerIngress, Node, Pod, Service};

use crate::placement::Placement;

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

/// A node can carry traffic when it is Ready and not cordoned: cordoning is how users drain a
/// node before maintenance, and its address should leave the status first.
pub fn node_can_serve(node: &Node) -> bool {
    let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    schedulable && condition_true(node.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && condition_true(pod.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
}

fn condition_true<C: HasTypeAndStatus>(conditions: Option<&Vec<C>>, type_: &str) -> bool {
    conditions.is_some_and(|list| list.iter().any(|c| c.type_() == type_ && c.status() == "True"))
}

trait HasTypeAndStatus {
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
}

impl HasTypeAndStatus for k8s_openapi::api::core::v1::NodeCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

impl HasTypeAndStatus for k8s_openapi::api::core::v1::PodCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

/// The addresses of one node to publish, per the address type, in the Service's families.
pub fn node_addresses(node: &Node, address_type: AddressType, families: &[Family]) -> Vec<IpAddr> {
    let mut by_kind: BTreeMap<(&str, Family), Vec<IpAddr>> = BTreeMap::new();
    for address in node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten() {
        if let Ok(ip) = address.address.parse::<IpAddr>() {
            by_kind.entry((address.type_.as_str(), Family::of(&ip))).or_default().push(ip);
        }
    }
    let mut chosen = Vec::new();
    for family in families {
        let of = |kind: &str| by_kind.get(&(kind, *family)).cloned().unwrap_or_default();
        chosen.extend(match address_type {
            AddressType::ExternalIp => of("ExternalIP"),
            AddressType::InternalIp => of("InternalIP"),
            AddressType::Auto => {
                let external = of("ExternalIP");
                if external.is_empty() {
                    of("InternalIP")
                } else {
                    external
                }
            }
        });
    }
    chosen
}

/// Addresses to publish, sorted and without duplicates, so equal inputs give equal statuses.
pub fn desired_addresses<'a>(
    proxy_pods: impl IntoIterator<Item = &'a Pod>,
    node: impl Fn(&str) -> Option<&'a Node>,
    placement: &Placement,
    address_type: AddressType,
    families: &[Family],
) -> Vec<IpAddr> {
    let mut addresses = BTreeSet::new();
    for pod in proxy_pods.into_iter().filter(|pod| pod_is_ready(pod)) {
        let Some(node) = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).and_then(|name| node(name)) else {
            continue;
        };
        if node_can_serve(node) && placement.admits(node) {
            addresses.extend(node_addresses(node, address_type, families));
        }
    }
    addresses.into_iter().collect()
}

/// The addresses currently published by a Service, in the form `desired_addresses` returns.
pub fn published_addresses(service: &Service) -> Vec<IpAddr> {
    let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

/// Whether the published status must be rewritten. `ipMode` is compared only when hostlb sets
/// it: API servers that do not know it drop it, and newer ones fill it in themselves.
pub fn needs_update(service: &Service, desired: &[IpAddr], ip_mode: Option<IpMode>) -> bool {
    let published = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    let published = published.map_or(&[][..], Vec::as_slice);
    let mode_differs =
        ip_mode.is_some_and(|mode| published.iter().any(|i| i.ip_mode.as_deref() != Some(mode.api_name())));
    published_addresses(service) != desired || published.len() != desired.len() || mode_differs
}

pub fn ingress(addresses: &[IpAddr], ip_mode: Option<IpMode>) -> Vec<LoadBalancerIngress> {
    let ip_mode = ip_mode.map(|mode| mode.api_name().to_string());
    addresses
        .iter()
        .map(|ip| LoadBalancerIngress { ip: Some(ip.to_string()), ip_mode: ip_mode.clone(), ..Default::default() })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_pod, terminating_proxy_pod, NodeBuilder, ServiceBuilder};
    use crate::names;
    use crate::service_lb::ServiceLb;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, ServiceStatus};

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn compute(nodes: &[Node], pods: &[Pod], address_type: AddressType, families: &[Family]) -> Vec<IpAddr> {
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let placement = Placement::for_service(&lb, false);
        let node = |name: &str| nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name));
        desired_addresses(pods, node, &placement, address_type, families)
    }

    #[test]
    fn publishes_nodes_with_ready_proxy_pods_only_sorted() {
        let nodes = [
            NodeBuilder::new("n1").internal("10.0.0.2").build(),
            NodeBuilder::new("n2").internal("10.0.0.1").build(),
            NodeBuilder::new("n3").internal("10.0.0.3").build(),
        ];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true), proxy_pod("p3", "n3", false)];
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4]), ips(&["10.0.0.1", "10.0.0.2"]));
    }

    #[test]
    fn external_ip_wins_per_node_and_family_in_auto_mode() {
        let nodes = [
            NodeBuilder::new("n1").internal("10.0.0.1").external("203.0.113.1").build(),
            NodeBuilder::new("n2").internal("10.0.0.2").build(),
        ];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4]), ips(&["10.0.0.2", "203.0.113.1"]));
        assert_eq!(compute(&nodes, &pods, AddressType::InternalIp, &[Family::V4]), ips(&["10.0.0.1", "10.0.0.2"]));
        assert_eq!(compute(&nodes, &pods, AddressType::ExternalIp, &[Family::V4]), ips(&["203.0.113.1"]));
    }

    #[test]
    fn only_the_services_families_are_published() {
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").internal("fd00::1").build()];
        let pods = [proxy_pod("p1", "n1", true)];
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4]), ips(&["10.0.0.1"]));
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V6]), ips(&["fd00::1"]));
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V6, Family::V4]), ips(&["10.0.0.1", "fd00::1"]));
    }

    #[test]
    fn cordoned_not_ready_and_excluded_nodes_are_not_published() {
        let nodes = [
            NodeBuilder::new("cordoned").internal("10.0.0.1").unschedulable().build(),
            NodeBuilder::new("down").internal("10.0.0.2").not_ready().build(),
            NodeBuilder::new("excluded").internal("10.0.0.3").label(names::NODE_LABEL_EXCLUDE, "true").build(),
            NodeBuilder::new("fine").internal("10.0.0.4").build(),
        ];
        let pods = ["cordoned", "down", "excluded", "fine"].map(|n| proxy_pod(n, n, true));
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4]), ips(&["10.0.0.4"]));
    }

    #[test]
    fn pods_on_unknown_nodes_and_terminating_pods_are_ignored() {
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
        let terminating = terminating_proxy_pod("p1", "n1");
        let orphan = proxy_pod("p2", "gone", true);
        assert!(compute(&nodes, &[terminating, orphan], AddressType::Auto, &[Family::V4]).is_empty());
    }

    #[test]
    fn duplicate_addresses_are_published_once() {
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").internal("10.0.0.1").build()];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p1b", "n1", true)];
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4]), ips(&["10.0.0.1"]));
    }

    #[test]
    fn update_is_needed_only_when_addresses_differ() {
        let mut service = ServiceBuilder::new("web").build();
        assert!(!needs_update(&service, &[], None));
        assert!(needs_update(&service, &ips(&["10.0.0.1"]), None));
        let published = ingress(&ips(&["10.0.0.1"]), Some(IpMode::Vip));
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: Some(published) }),
            ..Default::default()
        });
        assert!(!needs_update(&service, &ips(&["10.0.0.1"]), None), "a mode the server filled in is not ours");
        assert!(!needs_update(&service, &ips(&["10.0.0.1"]), Some(IpMode::Vip)));
        assert!(needs_update(&service, &ips(&["10.0.0.1"]), Some(IpMode::Proxy)));
        assert!(needs_update(&service, &ips(&["10.0.0.1", "10.0.0.2"]), None));
        assert!(needs_update(&service, &[], None));
    }
}
