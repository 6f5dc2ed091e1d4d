//! The addresses a Service is published on: those of nodes whose proxy pod is Ready.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostlb_contract::Family;
use hostlb_model::address::{Address, AddressKind, AddressPolicy, AddressType};
use hostlb_model::names;
use hostlb_model::readiness::node_can_serve;
use hostlb_model::service::ServiceView;
use k8s_openapi::api::core::v1::Node;

use crate::decide::placement::Placement;
use crate::state::ProxyPod;

/// The published addresses and what stood in the way of some.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    pub addresses: Vec<Address>,
    /// Nodes whose proxy pod is Ready and that may serve, before any cap.
    pub serving_nodes: usize,
    /// Node annotations that could not be used, each naming the node and the field.
    pub problems: Vec<String>,
}

/// A node's addresses of the Service's families and of the policy's kinds. An IP family named
/// by the node's `hostlb.io/public-address` annotation is published as the annotation says
/// (a VM behind 1:1 NAT has no ExternalIP); other families per the address type. The hostname
/// is the node's `hostlb.io/public-hostname` annotation, else its `Hostname` address.
fn node_addresses(
    node: &Node,
    policy: &AddressPolicy,
    families: &[Family],
    problems: &mut Vec<String>,
) -> Vec<Address> {
    let reported = node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
    let annotations = node.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut chosen = Vec::new();
    if policy.kinds.contains(&AddressKind::Ip) {
        let mut by_kind: BTreeMap<(&str, Family), Vec<IpAddr>> = BTreeMap::new();
        for address in reported.clone() {
            if let Ok(ip) = address.address.parse::<IpAddr>() {
                by_kind.entry((address.type_.as_str(), Family::of(&ip))).or_default().push(ip);
            }
        }
        let overrides = annotation(names::NODE_ANNOTATION_PUBLIC_ADDRESS)
            .map(|text| {
                public_addresses(text)
                    .map_err(|why| node_problem(name, names::NODE_ANNOTATION_PUBLIC_ADDRESS, text, &why))
            })
            .transpose()
            .unwrap_or_else(|problem| {
                problems.push(problem);
                None
            })
            .unwrap_or_default();
        for family in families {
            if let Some(ip) = overrides.get(family) {
                chosen.push(Address::Ip(*ip));
                continue;
            }
            let of = |kind: &str| by_kind.get(&(kind, *family)).cloned().unwrap_or_default();
            let ips = match policy.address_type {
                AddressType::ExternalIp => of("ExternalIP"),
                AddressType::InternalIp => of("InternalIP"),
                AddressType::Auto => {
                    Some(of("ExternalIP")).filter(|ips| !ips.is_empty()).unwrap_or_else(|| of("InternalIP"))
                }
            };
            chosen.extend(ips.into_iter().map(Address::Ip));
        }
    }
    if policy.kinds.contains(&AddressKind::Hostname) {
        let own = reported.filter(|a| a.type_ == "Hostname").map(|a| a.address.as_str()).next();
        let hostname = match annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME) {
            Some(text) if is_dns_name(text) => Some(text),
            Some(text) => {
                problems.push(node_problem(name, names::NODE_ANNOTATION_PUBLIC_HOSTNAME, text, "is not a DNS name"));
                own
            }
            None => own,
        };
        chosen.extend(hostname.filter(|h| is_dns_name(h)).map(|h| Address::Hostname(h.to_string())));
    }
    chosen
}

fn node_problem(node: &str, key: &str, value: &str, why: &str) -> String {
    format!("node {node}: metadata.annotations[{key}]: {value:?} {why}; the node's own is published")
}

/// `ADDRESS[,ADDRESS]`, at most one per family.
fn public_addresses(text: &str) -> Result<BTreeMap<Family, IpAddr>, String> {
    let mut addresses = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|_| format!("has {part:?}, which is not an IP address"))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(format!("has {ip}, which no client can reach"));
        }
        if addresses.insert(Family::of(&ip), ip).is_some() {
            return Err("names two addresses of one family".into());
        }
    }
    if addresses.is_empty() {
        return Err("names no address".into());
    }
    Ok(addresses)
}

/// A fully qualified or single-label DNS name, as ingress hostnames must be.
fn is_dns_name(text: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    text.len() <= 253 && text.split('.').all(label)
}

/// What to publish: the addresses of nodes whose proxy pod is Ready (or, already published,
/// that are `replacing` theirs), that can serve and that the placement admits; at most
/// `max_nodes` of them, keeping those already published while they can serve and choosing others by a hash of the Service and the node, so that DNS does
/// not churn and Services spread over the nodes. IPs come first, in the order of the Service's
/// families, each family sorted; then hostnames, sorted. Equal inputs in any order give equal
/// results, so only a real change is written.
pub fn desired_addresses<'a>(
    service: &ServiceView,
    proxy_pods: impl IntoIterator<Item = &'a ProxyPod>,
    node: impl Fn(&str) -> Option<&'a Node>,
    replacing: &BTreeSet<String>,
    placement: &Placement,
    policy: &AddressPolicy,
    families: &[Family],
) -> Publication {
    let mut serving: BTreeMap<&str, &Node> = BTreeMap::new();
    for pod in proxy_pods.into_iter().filter(|pod| pod.ready) {
        let Some((name, node)) = pod.node.as_deref().and_then(|n| Some((n, node(n)?))) else {
            continue;
        };
        if node_can_serve(node) && placement.admits(node) {
            serving.insert(name, node);
        }
    }
    let mut problems = Vec::new();
    let published: BTreeSet<&Address> = service.published.addresses.iter().collect();
    for name in replacing {
        let Some(node) = node(name).filter(|node| node_can_serve(node) && placement.admits(node)) else { continue };
        let addresses = node_addresses(node, policy, families, &mut Vec::new());
        if addresses.iter().any(|address| published.contains(address)) {
            serving.insert(name, node);
        }
    }
    let serving_nodes = serving.len();
    let mut candidates: Vec<(&str, Vec<Address>)> =
        serving.into_iter().map(|(name, node)| (name, node_addresses(node, policy, families, &mut problems))).collect();
    if let Some(max) = policy.max_nodes.filter(|max| candidates.len() > *max) {
        let uid = &service.uid;
        candidates.sort_by_cached_key(|(name, addresses)| {
            let already = addresses.iter().any(|a| published.contains(a));
            (!already, names::hex_digest(format!("{uid}/{name}").as_bytes()))
        });
        candidates.truncate(max);
    }
    let family_rank = |ip: &IpAddr| families.iter().position(|f| *f == Family::of(ip)).unwrap_or(families.len());
    let mut addresses: Vec<Address> = candidates.into_iter().flat_map(|(_, addresses)| addresses).collect();
    addresses.sort_by(|a, b| {
        let key = |address: &Address| match address {
            Address::Ip(ip) => (0, family_rank(ip)),
            Address::Hostname(_) => (1, 0),
        };
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });
    addresses.dedup();
    Publication { addresses, serving_nodes, problems }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_pod, terminating_proxy_pod, NodeBuilder, ServiceBuilder};
    use hostlb_model::address::IpMode;
    use hostlb_model::names;
    use hostlb_model::options::ServiceLb;
    use hostlb_model::service::ingress;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, Pod, Service, ServiceStatus};

    fn ips(list: &[&str]) -> Vec<Address> {
        list.iter().map(|s| Address::Ip(s.parse().unwrap())).collect()
    }

    fn policy(address_type: AddressType) -> AddressPolicy {
        AddressPolicy { address_type, kinds: vec![AddressKind::Ip], max_nodes: None }
    }

    fn publication(
        service: &Service,
        nodes: &[Node],
        pods: &[Pod],
        policy: &AddressPolicy,
        families: &[Family],
    ) -> Publication {
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let placement = Placement::for_service(&lb, false);
        let node = |name: &str| nodes.iter().find(|n| n.metadata.name.as_deref() == Some(name));
        let pods: Vec<ProxyPod> = pods.iter().map(ProxyPod::of).collect();
        desired_addresses(&ServiceView::of(service), &pods, node, &BTreeSet::new(), &placement, policy, families)
    }

    fn compute(nodes: &[Node], pods: &[Pod], address_type: AddressType, families: &[Family]) -> Vec<Address> {
        let service = ServiceBuilder::new("web").build();
        let publication = publication(&service, nodes, pods, &policy(address_type), families);
        assert!(publication.problems.is_empty(), "{:?}", publication.problems);
        publication.addresses
    }

    fn with_status(mut service: Service, addresses: &[Address]) -> Service {
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress(addresses, None)) }),
            ..Default::default()
        });
        service
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
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V6, Family::V4]), ips(&["fd00::1", "10.0.0.1"]));
        assert_eq!(compute(&nodes, &pods, AddressType::Auto, &[Family::V4, Family::V6]), ips(&["10.0.0.1", "fd00::1"]));
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
    fn the_order_of_nodes_and_pods_does_not_change_the_result() {
        let nodes = [
            NodeBuilder::new("n1").internal("10.0.0.2").internal("fd00::2").build(),
            NodeBuilder::new("n2").internal("10.0.0.1").internal("fd00::1").build(),
        ];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
        let families = [Family::V6, Family::V4];
        let forward = compute(&nodes, &pods, AddressType::Auto, &families);
        let reversed_nodes: Vec<Node> = nodes.iter().rev().cloned().collect();
        let reversed_pods: Vec<Pod> = pods.iter().rev().cloned().collect();
        assert_eq!(compute(&reversed_nodes, &reversed_pods, AddressType::Auto, &families), forward);
        assert_eq!(forward, ips(&["fd00::1", "fd00::2", "10.0.0.1", "10.0.0.2"]));
        let service = with_status(ServiceBuilder::new("web").build(), &forward);
        let reversed = compute(&reversed_nodes, &reversed_pods, AddressType::Auto, &families);
        assert!(!ServiceView::of(&service).needs_update(&reversed, None));
    }

    #[test]
    fn a_public_address_annotation_replaces_the_nodes_own_in_its_family() {
        let natted = NodeBuilder::new("vm")
            .internal("10.0.0.1")
            .internal("fd00::1")
            .annotation(names::NODE_ANNOTATION_PUBLIC_ADDRESS, "203.0.113.7")
            .build();
        let pods = [proxy_pod("p1", "vm", true)];
        let both = [Family::V4, Family::V6];
        assert_eq!(compute(&[natted], &pods, AddressType::InternalIp, &both), ips(&["203.0.113.7", "fd00::1"]));

        let service = ServiceBuilder::new("web").build();
        for (value, why) in [
            ("203.0.113.7,203.0.113.8", "names two addresses of one family"),
            ("gateway", "\"gateway\", which is not an IP address"),
            ("127.0.0.1", "no client can reach"),
            (" , ", "names no address"),
        ] {
            let node = NodeBuilder::new("vm")
                .internal("10.0.0.1")
                .annotation(names::NODE_ANNOTATION_PUBLIC_ADDRESS, value)
                .build();
            let result = publication(&service, &[node], &pods, &policy(AddressType::Auto), &[Family::V4]);
            assert_eq!(result.addresses, ips(&["10.0.0.1"]), "{value}: the node's own address instead");
            assert_eq!(result.problems.len(), 1, "{value}");
            let problem = &result.problems[0];
            assert!(problem.starts_with("node vm: metadata.annotations[hostlb.io/public-address]: "), "{problem}");
            assert!(problem.contains(why), "{value}: {problem}");
        }
    }

    #[test]
    fn hostnames_are_published_instead_of_or_after_the_ips() {
        let nodes = [
            NodeBuilder::new("n1")
                .internal("10.0.0.1")
                .hostname("n1.internal")
                .annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME, "edge-1.example.org")
                .build(),
            NodeBuilder::new("n2").internal("10.0.0.2").hostname("n2").build(),
            NodeBuilder::new("n3")
                .internal("10.0.0.3")
                .annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME, "Bad_Name")
                .build(),
        ];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true), proxy_pod("p3", "n3", true)];
        let service = ServiceBuilder::new("web").build();
        let hostname = |name: &str| Address::Hostname(name.into());
        let only = AddressPolicy { kinds: vec![AddressKind::Hostname], ..policy(AddressType::Auto) };
        let result = publication(&service, &nodes, &pods, &only, &[Family::V4]);
        assert_eq!(result.addresses, vec![hostname("edge-1.example.org"), hostname("n2")]);
        assert_eq!(result.problems.len(), 1, "n3's annotation is no DNS name and it has no Hostname address");
        let both = AddressPolicy { kinds: vec![AddressKind::Ip, AddressKind::Hostname], ..only };
        let result = publication(&service, &nodes, &pods, &both, &[Family::V4]);
        let mut expected = ips(&["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        expected.extend([hostname("edge-1.example.org"), hostname("n2")]);
        assert_eq!(result.addresses, expected);
        let entries = ingress(&result.addresses, Some(IpMode::Vip));
        assert_eq!(entries[3].hostname.as_deref(), Some("edge-1.example.org"));
        assert_eq!(entries[3].ip_mode, None, "ipMode goes with IPs only");
        assert_eq!(ServiceView::of(&with_status(service, &result.addresses)).published.addresses, result.addresses);
    }

    #[test]
    fn a_cap_keeps_the_published_nodes_while_they_serve_and_fills_up_stably() {
        let nodes: Vec<Node> =
            (1..=6).map(|i| NodeBuilder::new(&format!("n{i}")).internal(&format!("10.0.0.{i}")).build()).collect();
        let pods: Vec<Pod> = (1..=6).map(|i| proxy_pod(&format!("p{i}"), &format!("n{i}"), true)).collect();
        let capped = AddressPolicy { max_nodes: Some(2), ..policy(AddressType::Auto) };
        let fresh = ServiceBuilder::new("web").build();
        let first = publication(&fresh, &nodes, &pods, &capped, &[Family::V4]).addresses;
        assert_eq!(first.len(), 2);
        assert_eq!(
            publication(&fresh, &nodes, &pods, &capped, &[Family::V4]).addresses,
            first,
            "the same choice again"
        );

        let other = ServiceBuilder::new("api").uid("5b6c7d8e-0000-4000-8000-000000000002").build();
        let choices: BTreeSet<Vec<Address>> = (3..=12)
            .map(|i| {
                let service =
                    ServiceBuilder::new("svc").uid(&format!("5b6c7d8e-0000-4000-8000-0000000000{i:02}")).build();
                publication(&service, &nodes, &pods, &capped, &[Family::V4]).addresses
            })
            .chain([publication(&other, &nodes, &pods, &capped, &[Family::V4]).addresses])
            .collect();
        assert!(choices.len() > 1, "Services spread over the nodes: {choices:?}");

        // A published node stays while it serves, even where the hash prefers others.
        let kept = with_status(fresh.clone(), &ips(&["10.0.0.5", "10.0.0.6"]));
        assert_eq!(publication(&kept, &nodes, &pods, &capped, &[Family::V4]).addresses, ips(&["10.0.0.5", "10.0.0.6"]));
        let mut without_6 = pods.clone();
        without_6.pop();
        let refilled = publication(&kept, &nodes, &without_6, &capped, &[Family::V4]).addresses;
        assert_eq!(refilled.len(), 2);
        assert!(
            refilled.contains(&ips(&["10.0.0.5"])[0]) && !refilled.contains(&ips(&["10.0.0.6"])[0]),
            "{refilled:?}"
        );
    }
}
