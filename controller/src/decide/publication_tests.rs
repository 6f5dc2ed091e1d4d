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

/// A policy that lets nodes ask for addresses of 203.0.113.0/24 and names under example.org.
fn policy(address_type: AddressType) -> AddressPolicy {
    let node_asked = NodeAskedAddresses {
        ranges: vec![hostlb_contract::Cidr::parse("203.0.113.0/24").unwrap()],
        domains: vec!["example.org".into()],
    };
    AddressPolicy { address_type, kinds: vec![AddressKind::Ip], max_nodes: None, node_asked }
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
fn a_node_asking_for_an_address_or_name_the_admin_did_not_allow_keeps_its_own() {
    let pods = [proxy_pod("p1", "vm", true)];
    let service = ServiceBuilder::new("web").build();
    let asking = |key: &str, value: &str| {
        NodeBuilder::new("vm").internal("10.0.0.1").hostname("vm.internal").annotation(key, value).build()
    };
    let node = asking(names::NODE_ANNOTATION_PUBLIC_ADDRESS, "198.51.100.77");
    let result = publication(&service, &[node], &pods, &policy(AddressType::Auto), &[Family::V4]);
    assert_eq!(result.addresses, ips(&["10.0.0.1"]));
    assert_eq!(
        result.problems,
        ["node vm: metadata.annotations[hostlb.io/public-address]: \"198.51.100.77\" has 198.51.100.77, which is in \
          none of the ranges the admin lets nodes ask for (--node-public-address-ranges); the node's own is published"]
    );
    let node = asking(names::NODE_ANNOTATION_PUBLIC_HOSTNAME, "shop.example.net");
    let names_only = AddressPolicy { kinds: vec![AddressKind::Hostname], ..policy(AddressType::Auto) };
    let result = publication(&service, &[node], &pods, &names_only, &[Family::V4]);
    assert_eq!(result.addresses, vec![Address::Hostname("vm.internal".into())]);
    let problem = &result.problems[0];
    assert!(problem.contains("none of the domains the admin lets nodes ask for"), "{problem}");
    let nothing_allowed = AddressPolicy { node_asked: NodeAskedAddresses::default(), ..policy(AddressType::Auto) };
    let node = asking(names::NODE_ANNOTATION_PUBLIC_ADDRESS, "203.0.113.7");
    let result = publication(&service, &[node], &pods, &nothing_allowed, &[Family::V4]);
    assert_eq!(result.addresses, ips(&["10.0.0.1"]), "by default a node asks for nothing");
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
    assert_eq!(publication(&fresh, &nodes, &pods, &capped, &[Family::V4]).addresses, first, "the same choice again");

    let other = ServiceBuilder::new("api").uid("5b6c7d8e-0000-4000-8000-000000000002").build();
    let choices: BTreeSet<Vec<Address>> = (3..=12)
        .map(|i| {
            let service = ServiceBuilder::new("svc").uid(&format!("5b6c7d8e-0000-4000-8000-0000000000{i:02}")).build();
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
    assert!(refilled.contains(&ips(&["10.0.0.5"])[0]) && !refilled.contains(&ips(&["10.0.0.6"])[0]), "{refilled:?}");
}
