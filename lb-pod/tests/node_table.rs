//! Real packets through the node agent's table (`node_table::node_ruleset`), installed with
//! `kernel::apply` in the namespace that routes between client and backend, which plays the
//! node: client -> node -> backend, in network namespaces this test creates. Needs root and
//! iproute2 (and `nft`, to inspect).

mod support;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use hostlb_contract::{Cidr, Destination, Family, PortMap, Protocol, RuleArgs};
use hostlb_lb::kernel;
use hostlb_lb::node_table::{node_ruleset, removal, NodeRules, ServiceRules};
use hostlb_lb::port_forwarding::{Forward, PortForwarding};
use hostlb_lb::rules::Step;
use support::{tcp_ask, Topology};

const TIMEOUT: Duration = Duration::from_secs(2);

/// The node's addresses of `family`: the one clients reach and the one backends see.
fn node_addresses(t: &Topology, family: Family) -> (IpAddr, IpAddr) {
    match family {
        Family::V4 => (t.pod_v4(), t.pod_back_v4()),
        Family::V6 => (t.pod_v6(), t.pod_back_v6()),
    }
}

fn client(t: &Topology, family: Family) -> IpAddr {
    match family {
        Family::V4 => t.client_v4(),
        Family::V6 => t.client_v6(),
    }
}

fn backend(t: &Topology, family: Family) -> IpAddr {
    match family {
        Family::V4 => t.backend_v4(),
        Family::V6 => t.backend_v6(),
    }
}

/// A Service of both families that forwards TCP and UDP `listen` to the backend's `target`.
fn service(t: &Topology, listen: u16, target: u16, source_ranges: &[&str], masquerade: bool) -> ServiceRules {
    let protocols = [Protocol::Tcp, Protocol::Udp];
    let args = RuleArgs {
        ports: protocols.map(|protocol| PortMap { protocol, listen, target }).to_vec(),
        to: vec![Destination::NodeEndpoints],
        families: Vec::new(),
        source_ranges: source_ranges.iter().map(|range| Cidr::parse(range).unwrap()).collect(),
    };
    let endpoints: BTreeMap<Family, Vec<Forward>> = Family::ALL
        .into_iter()
        .map(|family| {
            let backends = vec![SocketAddr::new(backend(t, family), target)];
            let forwards = protocols.map(|protocol| Forward { protocol, listen, backends: backends.clone() });
            (family, forwards.to_vec())
        })
        .collect();
    ServiceRules { forwarding: PortForwarding::new(&args).unwrap().with_endpoints(endpoints), masquerade }
}

/// The node with every address of both families and `services`.
fn node(t: &Topology, services: Vec<ServiceRules>) -> NodeRules {
    let addresses = vec![t.pod_v4(), t.pod_back_v4(), t.pod_v6(), t.pod_back_v6()];
    NodeRules { addresses, services }
}

/// Applies `steps` as one batch in the node's namespace, with forwarding on as on a node.
fn apply(t: &Topology, steps: Vec<Step>) {
    t.pod
        .run(move || {
            for family in Family::ALL {
                kernel::enable_forwarding(family)?;
            }
            kernel::apply(&steps)
        })
        .unwrap_or_else(|error| panic!("{error}"));
}

#[test]
fn ipv4_tcp_and_udp_to_the_node_reach_the_backend_masqueraded_for_cluster_from_the_client_for_local() {
    services_reach_the_backend_masqueraded_for_cluster_from_the_client_for_local(Family::V4);
}

#[test]
fn ipv6_tcp_and_udp_to_the_node_reach_the_backend_masqueraded_for_cluster_from_the_client_for_local() {
    services_reach_the_backend_masqueraded_for_cluster_from_the_client_for_local(Family::V6);
}

fn services_reach_the_backend_masqueraded_for_cluster_from_the_client_for_local(family: Family) {
    let mut t = Topology::new();
    t.serve(8080);
    t.serve(8081);
    let cluster = service(&t, 80, 8080, &[], true);
    let local = service(&t, 81, 8081, &[], false);
    apply(&t, node_ruleset(&node(&t, vec![cluster, local])));
    let (node, node_back) = node_addresses(&t, family);
    let client = client(&t, family).to_string();

    assert_eq!(t.tcp(node, 80), Ok(node_back.to_string()), "Cluster: the backend sees the node");
    assert_eq!(t.udp(node, 80), Ok(node_back.to_string()));
    assert_eq!(t.tcp(node, 81), Ok(client.clone()), "Local: the backend sees the client");
    assert_eq!(t.udp(node, 81), Ok(client));
    assert_eq!(t.tcp(node_back, 80), Ok(node_back.to_string()), "every node address is forwarded");
    assert!(t.tcp(node, 82).is_err(), "only the Services' ports are forwarded");

    // The node's own connection to its address, through the output chain.
    let to_itself = t.pod.run(move || tcp_ask(SocketAddr::new(node, 80)));
    assert_eq!(to_itself, Ok(node_back.to_string()));
    let rules = t.pod.ruleset();
    let masquerade = format!(
        "ct original {} daddr @node-addresses meta l4proto tcp ct original proto-dst 80 masquerade",
        if family == Family::V4 { "ip" } else { "ip6" }
    );
    assert!(rules.contains(&masquerade), "{rules}");
}

#[test]
fn ipv4_flows_the_node_only_routes_are_neither_dnated_nor_masqueraded() {
    flows_the_node_only_routes_are_neither_dnated_nor_masqueraded(Family::V4);
}

#[test]
fn ipv6_flows_the_node_only_routes_are_neither_dnated_nor_masqueraded() {
    flows_the_node_only_routes_are_neither_dnated_nor_masqueraded(Family::V6);
}

fn flows_the_node_only_routes_are_neither_dnated_nor_masqueraded(family: Family) {
    let mut t = Topology::new();
    t.serve(80);
    t.serve(8080);
    apply(&t, node_ruleset(&node(&t, vec![service(&t, 80, 8080, &[], true)])));
    let (node, node_back) = node_addresses(&t, family);
    let (backend, client) = (backend(&t, family), client(&t, family).to_string());
    let (listened, target) = (SocketAddr::new(backend, 80), SocketAddr::new(backend, 8080));

    assert_eq!(t.tcp(node, 80), Ok(node_back.to_string()));
    assert_eq!((t.connections_to(listened), t.connections_to(target)), (0, 1), "to the node: DNATed");
    // The listened port on another destination: the pod-to-pod or pod-to-internet traffic a
    // node routes.
    assert_eq!(t.tcp(backend, 80), Ok(client.clone()), "not masqueraded");
    assert_eq!((t.connections_to(listened), t.connections_to(target)), (1, 1), "not DNATed");
    assert_eq!(t.udp(backend, 80), Ok(client.clone()));
    assert_eq!((t.datagrams_to(listened), t.datagrams_to(target)), (1, 0));
    // What the Service's flows become after DNAT, but sent there directly.
    assert_eq!(t.tcp(backend, 8080), Ok(client.clone()), "only flows to the node are masqueraded");
    assert_eq!(t.udp(backend, 8080), Ok(client));
}

#[test]
fn source_ranges_drop_other_clients_of_that_service_only() {
    let mut t = Topology::new();
    t.serve(8080);
    t.serve(8081);
    let elsewhere = ["192.0.2.0/24", "2001:db8::/32"];
    let restricted = service(&t, 80, 8080, &elsewhere, true);
    let open = service(&t, 81, 8081, &[], true);
    apply(&t, node_ruleset(&node(&t, vec![restricted, open.clone()])));
    for family in Family::ALL {
        let (node, node_back) = node_addresses(&t, family);
        assert!(t.tcp(node, 80).is_err(), "{family:?}: a source outside the ranges must not connect");
        assert!(t.udp(node, 80).is_err(), "{family:?}: a source outside the ranges must not be answered");
        assert_eq!(t.tcp(node, 81), Ok(node_back.to_string()), "{family:?}: the other Service is open");
        assert_eq!(t.udp(node, 81), Ok(node_back.to_string()));
    }

    let (client_v4, client_v6) = (format!("{}/32", t.client_v4()), format!("{}/128", t.client_v6()));
    let allowed = service(&t, 80, 8080, &[&client_v4, &client_v6], true);
    let closed_to_all = service(&t, 81, 8081, &elsewhere, true);
    apply(&t, node_ruleset(&node(&t, vec![open, allowed, closed_to_all])));
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()), "the client is in the ranges");
    assert_eq!(t.udp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
    assert!(t.tcp(t.pod_v4(), 81).is_err(), "the Service that moved to index 2 took its ranges along");
    let rules = t.pod.ruleset();
    assert!(rules.contains("jump allowed-sources-2") && !rules.contains("allowed-sources-0"), "{rules}");
}

#[test]
fn replacing_the_table_keeps_established_connections_and_stops_a_removed_service() {
    let mut t = Topology::new();
    t.serve(8081);
    t.serve(8082);
    let long_lived = SocketAddr::new(t.backend_v4(), 7000);
    let listener = t.backend.run(move || TcpListener::bind(long_lived).expect("binding the long-lived server"));
    let kept = service(&t, 70, 7000, &[], true);
    apply(&t, node_ruleset(&node(&t, vec![kept.clone(), service(&t, 81, 8081, &[], true)])));
    assert_eq!(t.tcp(t.pod_v4(), 81), Ok(t.pod_back_v4().to_string()));

    let to = SocketAddr::new(t.pod_v4(), 70);
    let mut connection = t.client.run(move || TcpStream::connect_timeout(&to, TIMEOUT)).expect("connecting");
    let (mut accepted, peer) = listener.accept().unwrap();
    assert_eq!(peer.ip(), t.pod_back_v4(), "masqueraded");
    for stream in [&connection, &accepted] {
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    }
    let exchange = |connection: &mut TcpStream, accepted: &mut TcpStream, text: &[u8]| {
        connection.write_all(text).expect("the client writes");
        let mut received = vec![0; text.len()];
        accepted.read_exact(&mut received).expect("the backend reads");
        accepted.write_all(&received).expect("the backend answers");
        connection.read_exact(&mut received).expect("the client reads the answer");
        assert_eq!(received, text);
    };
    exchange(&mut connection, &mut accepted, b"before");

    // Service 81 removed, 82 added: the whole table replaced in one batch.
    apply(&t, node_ruleset(&node(&t, vec![service(&t, 82, 8082, &[], true), kept])));
    exchange(&mut connection, &mut accepted, b"after the table was replaced");
    assert!(t.tcp(t.pod_v4(), 81).is_err(), "the removed Service's port no longer forwards");
    assert!(t.udp(t.pod_v6(), 81).is_err());
    assert_eq!(t.tcp(t.pod_v4(), 82), Ok(t.pod_back_v4().to_string()), "the added Service forwards");
}

#[test]
fn removal_leaves_no_table_and_works_when_there_is_none() {
    let mut t = Topology::new();
    t.serve(8080);
    apply(&t, removal());
    apply(&t, node_ruleset(&node(&t, vec![service(&t, 80, 8080, &["0.0.0.0/0", "::/0"], true)])));
    assert_eq!(t.tcp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
    assert_eq!(t.pod.ruleset().matches("table ").count(), 2, "{}", t.pod.ruleset());

    apply(&t, removal());
    assert_eq!(t.pod.ruleset(), "", "nothing of hostlb is left");
    assert!(t.tcp(t.pod_v4(), 80).is_err());
    assert!(t.tcp(t.pod_v6(), 80).is_err());
    apply(&t, removal());
}
