//! A UDP client that never stops sending, while the node's endpoints change as the endpoint
//! follower sees them: the rules replaced with `kernel::apply`, then the flows they would not
//! make forgotten with `kernel::forget_stale_flows`. Real packets, client -> pod -> backend, in
//! network namespaces this test creates. Needs root and iproute2.
//!
//! The Service has source ranges: their `ct direction` rule keeps conntrack on in the pod's
//! namespace while no endpoint is there. Without any rule that uses it, conntrack tracks
//! nothing there, and a flow begun without a destination gets no entry to be pinned by.

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use hostlb_contract::{Cidr, Destination, Family, PortMap, Protocol, RuleArgs};
use hostlb_lb::port_forwarding::{Forward, PortForwarding};
use hostlb_lb::{conntrack, kernel, rules};
use support::Topology;

/// Long enough for the stream to send dozens of datagrams.
const WHILE: Duration = Duration::from_millis(300);
/// How soon the flow must reach its new backend once its stale entry is forgotten.
const BOUND: Duration = Duration::from_secs(1);

#[test]
fn an_ipv4_udp_flow_follows_the_endpoints_once_its_stale_entry_is_forgotten() {
    a_udp_flow_follows_the_endpoints_once_its_stale_entry_is_forgotten(Family::V4);
}

#[test]
fn an_ipv6_udp_flow_follows_the_endpoints_once_its_stale_entry_is_forgotten() {
    a_udp_flow_follows_the_endpoints_once_its_stale_entry_is_forgotten(Family::V6);
}

fn a_udp_flow_follows_the_endpoints_once_its_stale_entry_is_forgotten(family: Family) {
    let mut t = Topology::new();
    t.serve(5353);
    t.serve(5354);
    let (pod, backend) = match family {
        Family::V4 => (t.pod_v4(), t.backend_v4()),
        Family::V6 => (t.pod_v6(), t.backend_v6()),
    };
    let (a, b) = (SocketAddr::new(backend, 5353), SocketAddr::new(backend, 5354));
    let (client_v4, client_v6) = (format!("{}/32", t.client_v4()), format!("{}/128", t.client_v6()));
    let ports = ["--port", "udp:53:53", "--to", "node-endpoints"];
    t.pod.lb_ok(&[&["init"][..], &ports, &["--source-range", &client_v4, "--source-range", &client_v6]].concat());
    let args = RuleArgs {
        ports: vec![PortMap { protocol: Protocol::Udp, listen: 53, target: 53 }],
        to: vec![Destination::NodeEndpoints],
        families: Vec::new(),
        source_ranges: [client_v4, client_v6].map(|range| Cidr::parse(&range).unwrap()).to_vec(),
    };
    let forwarding = PortForwarding::new(&args).unwrap();
    // The node's endpoints become `backends`; `forget` false is a follower that leaves conntrack
    // alone. Returns how many entries were forgotten.
    let follow = |backends: &[SocketAddr], forget: bool| -> usize {
        let forward = Forward { protocol: Protocol::Udp, listen: 53, backends: backends.to_vec() };
        let endpoints = BTreeMap::from([(family, vec![forward])]);
        let applied = forwarding.with_endpoints(endpoints);
        let steps = rules::ruleset(&applied);
        t.pod
            .run(move || {
                kernel::apply(&steps)?;
                if forget {
                    kernel::forget_stale_flows(|flow| conntrack::is_stale(&applied, flow))
                } else {
                    Ok(0)
                }
            })
            .unwrap_or_else(|error| panic!("{error}"))
    };
    let counts = || (t.datagrams_to(a), t.datagrams_to(b));
    let reaches = |to: SocketAddr| {
        let (before, start) = (t.datagrams_to(to), Instant::now());
        while t.datagrams_to(to) == before {
            assert!(start.elapsed() < BOUND, "the flow did not reach {to} within {BOUND:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };

    let _stream = t.udp_stream(SocketAddr::new(pod, 53));
    std::thread::sleep(WHILE);
    assert_eq!(counts(), (0, 0), "no endpoint yet: the datagrams meet the pod's closed port");

    follow(&[a], false);
    std::thread::sleep(WHILE);
    assert_eq!(counts(), (0, 0), "without forgetting, the flow begun without a destination stays un-NATed");
    assert_eq!(follow(&[a], true), 1, "the un-NATed flow is forgotten");
    reaches(a);

    assert_eq!(follow(&[a, b], true), 0, "a flow to a backend that stays is kept");
    let before = counts();
    std::thread::sleep(WHILE);
    let after = counts();
    assert!(after.0 > before.0 && after.1 == 0, "the flow stays with A when B is added: {before:?} -> {after:?}");

    follow(&[b], false);
    let before = counts();
    std::thread::sleep(WHILE);
    let after = counts();
    assert!(
        after.0 > before.0 && after.1 == 0,
        "without forgetting, the flow stays with gone A: {before:?} -> {after:?}"
    );
    assert_eq!(follow(&[b], true), 1, "the flow to gone A is forgotten");
    reaches(b);
    let before = counts();
    std::thread::sleep(WHILE);
    let after = counts();
    assert!(after.0 == before.0 && after.1 > before.1, "the flow has left A for B: {before:?} -> {after:?}");

    assert_eq!(follow(&[], true), 1, "with no endpoint left, the flow to gone B is forgotten");
    let before = counts();
    std::thread::sleep(WHILE);
    assert_eq!(counts(), before, "nothing reaches a backend once the node has none");
}
