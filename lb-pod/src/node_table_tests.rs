use std::collections::BTreeMap;

use super::*;
use crate::port_forwarding::tests::{forward, forwarding};
use crate::port_forwarding::Forward;
use crate::rule_text::step_text;
use crate::rules::{ruleset, BaseChain, CHAIN_DNAT};

fn described(steps: &[Step]) -> Vec<String> {
    steps.iter().map(step_text).collect()
}

/// A Service of `ports` whose forwards are `forwards`, each of its backends' family (IPv4
/// without backends).
fn service(ports: &[&str], ranges: &[&str], forwards: Vec<Forward>, masquerade: bool) -> ServiceRules {
    let mut endpoints: BTreeMap<Family, Vec<Forward>> = BTreeMap::new();
    for forward in forwards {
        let family = forward.backends.first().map_or(Family::V4, |backend| Family::of(&backend.ip()));
        endpoints.entry(family).or_default().push(forward);
    }
    let forwarding = forwarding(ports, &["node-endpoints"], ranges).with_endpoints(endpoints);
    ServiceRules { forwarding, masquerade }
}

fn addresses(texts: &[&str]) -> Vec<IpAddr> {
    texts.iter().map(|text| text.parse().unwrap()).collect()
}

/// The steps of `node` that add rules to `chain`, in nft syntax.
fn rules_of(node: &NodeRules, chain: &str) -> Vec<String> {
    let prefix = format!("add rule ip hostlb {chain} ");
    described(&node_ruleset(node)).into_iter().filter(|text| text.starts_with(&prefix)).collect()
}

#[test]
fn the_node_table_forwards_only_packets_to_the_node_and_masquerades_only_those() {
    let web = service(&["tcp:80:80"], &[], vec![forward(Protocol::Tcp, 80, &["10.42.1.7:8080"])], true);
    let node = NodeRules { addresses: addresses(&["192.168.1.10"]), services: vec![web] };
    assert_eq!(
        described(&node_ruleset(&node)),
        vec![
            "add table ip hostlb",
            "delete table ip hostlb",
            "add table ip6 hostlb",
            "delete table ip6 hostlb",
            "add table ip hostlb (anew)",
            "add set ip hostlb node-addresses { type ipv4_addr; flags constant,interval; }",
            "add element ip hostlb node-addresses { 192.168.1.10 }",
            "add chain ip hostlb services",
            "add chain ip hostlb prerouting { type nat hook prerouting priority -100; }",
            "add rule ip hostlb prerouting ip daddr @node-addresses jump services",
            "add chain ip hostlb output { type nat hook output priority -100; }",
            "add rule ip hostlb output ip daddr @node-addresses jump services",
            "add chain ip hostlb postrouting { type nat hook postrouting priority 100; }",
            "add rule ip hostlb services tcp dport 80 dnat ip to 10.42.1.7:8080",
            "add rule ip hostlb postrouting ct original ip daddr @node-addresses meta l4proto tcp \
             ct original proto-dst 80 masquerade",
        ]
    );
}

#[test]
fn services_are_dnated_by_the_rules_of_a_pods_table() {
    let backends = ["10.42.1.7:8080", "10.42.2.7:8080", "10.42.3.7:8080"];
    let forwards = vec![forward(Protocol::Tcp, 80, &backends), forward(Protocol::Udp, 53, &["10.42.1.7:5353"])];
    let web = service(&["tcp:80:80", "udp:53:53"], &[], forwards, false);
    let pod_dnat: Vec<Vec<Expr>> = ruleset(&web.forwarding)
        .into_iter()
        .filter_map(|step| match step {
            Step::AddRule { chain: CHAIN_DNAT, exprs, .. } => Some(exprs),
            _ => None,
        })
        .collect();
    let node = NodeRules { addresses: addresses(&["192.168.1.10"]), services: vec![web] };
    let node_dnat: Vec<Vec<Expr>> = node_ruleset(&node)
        .into_iter()
        .filter_map(|step| match step {
            Step::AddRule { chain: CHAIN_SERVICES, exprs, .. } => Some(exprs),
            _ => None,
        })
        .collect();
    assert_eq!(pod_dnat.len(), 4, "one per backend");
    assert_eq!(node_dnat, pod_dnat);
}

#[test]
fn only_services_with_masquerade_masquerade_once_per_protocol_and_listened_port() {
    let cluster = service(
        &["tcp:80:80", "tcp:81:80", "udp:80:80", "tcp:82:80"],
        &[],
        vec![
            forward(Protocol::Tcp, 80, &["10.42.1.7:8080", "10.42.2.7:8080"]),
            forward(Protocol::Tcp, 81, &["10.42.1.7:8080"]),
            forward(Protocol::Udp, 80, &["10.42.1.7:8080"]),
            forward(Protocol::Tcp, 82, &[]),
        ],
        true,
    );
    let local = service(&["tcp:443:443"], &[], vec![forward(Protocol::Tcp, 443, &["10.42.1.8:8443"])], false);
    let node = NodeRules { addresses: addresses(&["192.168.1.10"]), services: vec![local, cluster] };
    let masquerade = |protocol: &str, port: u16| {
        format!(
            "add rule ip hostlb postrouting ct original ip daddr @node-addresses meta l4proto {protocol} \
             ct original proto-dst {port} masquerade"
        )
    };
    assert_eq!(
        rules_of(&node, "postrouting"),
        vec![masquerade("tcp", 80), masquerade("tcp", 81), masquerade("udp", 80)],
        "not the Local Service's 443, nor port 82 that has no backend"
    );
    assert!(rules_of(&node, "services")
        .contains(&"add rule ip hostlb services tcp dport 443 dnat ip to 10.42.1.8:8443".into()));
}

#[test]
fn source_ranges_are_a_chain_and_set_per_service_named_by_its_index() {
    let open = service(&["tcp:80:80"], &[], vec![forward(Protocol::Tcp, 80, &["10.42.1.7:80"])], true);
    let closed = service(
        &["tcp:443:443", "udp:443:443"],
        &["10.0.0.0/8", "fd00::/8"],
        vec![forward(Protocol::Tcp, 443, &["10.42.1.8:443"]), forward(Protocol::Tcp, 443, &["[fd00:42::8]:443"])],
        true,
    );
    let node = NodeRules { addresses: addresses(&["192.168.1.10", "fd00::10"]), services: vec![open, closed] };
    let text = described(&node_ruleset(&node));
    let v4: Vec<&String> = text.iter().filter(|t| t.contains("ip hostlb") && t.contains("source")).collect();
    assert_eq!(
        v4,
        vec![
            "add chain ip hostlb source-filter { type filter hook prerouting priority -150; }",
            "add chain ip hostlb allowed-sources-1",
            "add rule ip hostlb source-filter ct direction original ip daddr @node-addresses tcp dport 443 \
             jump allowed-sources-1",
            "add rule ip hostlb source-filter ct direction original ip daddr @node-addresses udp dport 443 \
             jump allowed-sources-1",
            "add set ip hostlb source-ranges-1 { type ipv4_addr; flags constant,interval; }",
            "add element ip hostlb source-ranges-1 { 10.0.0.0/8 }",
            "add rule ip hostlb allowed-sources-1 ip saddr @source-ranges-1 accept",
            "add rule ip hostlb allowed-sources-1 drop",
        ]
    );
    assert!(text.contains(&"add element ip6 hostlb source-ranges-1 { fd00::/8 }".into()), "{text:#?}");
    assert!(!text.iter().any(|t| t.contains("sources-0") || t.contains("ranges-0")), "the open Service has none");
}

#[test]
fn a_family_without_node_address_gets_no_table_and_a_service_without_the_family_no_rules() {
    let v4_only = service(&["tcp:80:80"], &[], vec![forward(Protocol::Tcp, 80, &["10.42.1.7:80"])], true);
    let mut v6_only = service(&["tcp:81:81"], &[], vec![forward(Protocol::Tcp, 81, &["[fd00:42::7]:81"])], true);
    v6_only.forwarding.forwards.remove(&Family::V4);
    let node = NodeRules { addresses: addresses(&["192.168.1.10"]), services: vec![v4_only.clone(), v6_only] };
    let steps = node_ruleset(&node);
    assert!(!steps.contains(&Step::AddTable(Family::V6)));
    assert!(steps.iter().skip(4).all(|step| step.family() == Family::V4));
    assert!(!described(&steps).iter().any(|t| t.contains("81")), "the IPv6 Service has nothing in the IPv4 table");

    let dual = NodeRules { addresses: addresses(&["fd00::10", "192.168.1.10"]), services: vec![v4_only] };
    let steps = node_ruleset(&dual);
    assert!(steps.contains(&Step::AddTable(Family::V4)) && steps.contains(&Step::AddTable(Family::V6)));
    let v6_rules: Vec<String> =
        steps.iter().filter(|step| matches!(step, Step::AddRule { family: Family::V6, .. })).map(step_text).collect();
    assert_eq!(
        v6_rules,
        vec![
            "add rule ip6 hostlb prerouting ip6 daddr @node-addresses jump services",
            "add rule ip6 hostlb output ip6 daddr @node-addresses jump services",
        ],
        "the node's IPv6 address forwards nothing for an IPv4 Service"
    );
}

#[test]
fn node_addresses_are_one_set_per_family_without_repeats() {
    let node = NodeRules {
        addresses: addresses(&["192.168.1.11", "fd00::10", "192.168.1.10", "10.0.0.5", "192.168.1.10"]),
        services: Vec::new(),
    };
    let elements: Vec<String> =
        described(&node_ruleset(&node)).into_iter().filter(|text| text.starts_with("add element")).collect();
    assert_eq!(
        elements,
        vec![
            "add element ip hostlb node-addresses { 10.0.0.5, 192.168.1.10/31 }",
            "add element ip6 hostlb node-addresses { fd00::10 }",
        ]
    );
}

#[test]
fn removal_deletes_both_tables_even_when_missing_and_a_node_without_addresses_gets_none() {
    let removed = vec![
        Step::EnsureTable(Family::V4),
        Step::DeleteTable(Family::V4),
        Step::EnsureTable(Family::V6),
        Step::DeleteTable(Family::V6),
    ];
    assert_eq!(removal(), removed);
    let web = service(&["tcp:80:80"], &[], vec![forward(Protocol::Tcp, 80, &["10.42.1.7:80"])], true);
    assert_eq!(node_ruleset(&NodeRules { addresses: Vec::new(), services: vec![web] }), removed);
}

#[test]
fn the_output_chain_hooks_the_nodes_own_packets() {
    let node = NodeRules { addresses: addresses(&["192.168.1.10"]), services: Vec::new() };
    let output = node_ruleset(&node).into_iter().find_map(|step| match step {
        Step::AddChain { name: CHAIN_OUTPUT, base, .. } => base,
        _ => None,
    });
    assert_eq!(output, Some(BaseChain { kind: ChainType::Nat, hook: Hook::Output, priority: -100 }));
}

#[test]
fn same_node_gives_the_same_steps() {
    let web = |order: [&'static str; 2]| {
        service(&order, &["10.0.0.0/8"], vec![forward(Protocol::Tcp, 80, &["10.42.1.7:80"])], true)
    };
    let a = NodeRules {
        addresses: addresses(&["192.168.1.10", "192.168.1.11"]),
        services: vec![web(["tcp:80:80", "udp:53:53"])],
    };
    let b = NodeRules {
        addresses: addresses(&["192.168.1.11", "192.168.1.10"]),
        services: vec![web(["udp:53:53", "tcp:80:80"])],
    };
    assert_eq!(node_ruleset(&a), node_ruleset(&b));
}
