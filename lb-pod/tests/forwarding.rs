//! Real packets through the rules `hostlb-lb init` installs: client -> pod -> backend, in
//! network namespaces this test creates. Needs root and iproute2 (and `nft`, to inspect).

mod support;

use std::time::Duration;

use nix::sys::signal::Signal;
use support::{Running, Topology};

#[test]
fn tcp_and_udp_over_ipv4_reach_the_backend_from_the_pods_address() {
    let mut t = Topology::new();
    t.serve(8080);
    t.serve(5353);
    let log =
        t.pod.lb_ok(&["init", "--port", "tcp:80:8080", "--port", "udp:53:5353", "--to", &t.backend_v4().to_string()]);
    assert!(log.contains(&format!("tcp 80 -> {}:8080", t.backend_v4())), "{log}");
    assert!(log.contains(&format!("udp 53 -> {}:5353", t.backend_v4())), "{log}");
    let pod_back = t.pod_back_v4().to_string();
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(pod_back.clone()));
    assert_eq!(t.udp(t.pod_v4(), 53), Ok(pod_back));
    assert!(t.tcp(t.pod_v4(), 81).is_err(), "only the listed port is forwarded");
}

#[test]
fn tcp_and_udp_over_ipv6_reach_the_backend_from_the_pods_address() {
    let mut t = Topology::new();
    t.serve(8080);
    t.serve(5353);
    t.pod.lb_ok(&["init", "--port", "tcp:80:8080", "--port", "udp:53:5353", "--to", &t.backend_v6().to_string()]);
    let pod_back = t.pod_back_v6().to_string();
    assert_eq!(t.tcp(t.pod_v6(), 80), Ok(pod_back.clone()));
    assert_eq!(t.udp(t.pod_v6(), 53), Ok(pod_back));
    let rules = t.pod.ruleset();
    assert!(rules.contains("table ip hostlb {\n}"), "no IPv4 destination, so an empty IPv4 table:\n{rules}");
    assert!(t.tcp(t.pod_v4(), 80).is_err(), "IPv4 is not forwarded without an IPv4 destination");
}

#[test]
fn dual_stack_forwards_each_family_to_its_own_destination() {
    let mut t = Topology::new();
    t.serve(8080);
    // Both families in one comma-separated value, the form `HOSTLB_TO` takes.
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    t.pod.lb_ok(&["init", "--port", "tcp:80:8080", "--port", "udp:80:8080", "--port", "sctp:9:9", "--to", &to]);
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    assert_eq!(t.udp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    assert_eq!(t.tcp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
    assert_eq!(t.udp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
    let rules = t.pod.ruleset();
    assert!(rules.contains(&format!("sctp dport 9 dnat to [{}]:9", t.backend_v6())), "{rules}");
}

#[test]
fn source_ranges_drop_other_sources_and_let_listed_ones_through() {
    let mut t = Topology::new();
    t.serve(8080);
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    let init = |ranges: &[String]| {
        let mut args = vec!["init".to_string(), "--port".into(), "tcp:80:8080".into(), "--port".into()];
        args.extend(["udp:80:8080".into(), "--to".into(), to.clone()]);
        for range in ranges {
            args.extend(["--source-range".into(), range.clone()]);
        }
        t.pod.lb_ok(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };

    // Ranges of both families that exclude the client.
    init(&["192.0.2.0/24".into(), "2001:db8::/32".into()]);
    assert!(t.tcp(t.pod_v4(), 80).is_err(), "a v4 source outside the ranges must not connect");
    assert!(t.udp(t.pod_v4(), 80).is_err(), "a v4 source outside the ranges must not be answered");
    assert!(t.tcp(t.pod_v6(), 80).is_err(), "a v6 source outside the ranges must not connect");

    // An IPv4 range that includes the client, none for IPv6: IPv6 is closed entirely.
    let log = init(&[format!("{}/24", t.client_v4()), "192.0.2.0/24".into()]);
    assert!(log.contains("IPv6: no source range given, every packet to these ports is dropped"), "{log}");
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    assert_eq!(t.udp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    assert!(t.tcp(t.pod_v6(), 80).is_err(), "a family without ranges is closed when another has some");

    // The client's own address, as a /32 and a /128.
    init(&[format!("{}/32", t.client_v4()), format!("{}/128", t.client_v6())]);
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    assert_eq!(t.tcp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
    assert_eq!(t.udp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()));
}

#[test]
fn five_thousand_source_ranges_are_one_set_per_family_and_still_decide_who_connects() {
    let mut t = Topology::new();
    t.serve(8080);
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    // 4,990 addresses apart from each other (none touch), and ranges around the client that
    // overlap, repeat and touch: merged, or the kernel would refuse the set.
    let apart = |i: u32| format!("198.18.{}.{}/32", i / 128, i % 128 * 2);
    let around = |client: std::net::IpAddr| {
        let network = client.to_string().rsplit_once('.').unwrap().0.to_string();
        [format!("{network}.0/24"), format!("{network}.0/25"), format!("{client}/32"), format!("{network}.0/24")]
            .into_iter()
            .chain((1..=6).map(move |i| format!("{network}.{}/32", 255 - i)))
    };
    let init = |ranges: Vec<String>| {
        let mut args = vec!["init".to_string(), "--port".into(), "tcp:80:8080".into(), "--to".into(), to.clone()];
        for range in &ranges {
            args.extend(["--source-range".into(), range.clone()]);
        }
        let started = std::time::Instant::now();
        let log = t.pod.lb_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        (log, started.elapsed())
    };

    let mut ranges: Vec<String> = (0..4990).map(apart).chain(around(t.client_v4())).collect();
    ranges.extend(["2001:db8::/32".into(), "2001:db8:1::/48".into()]);
    assert_eq!(ranges.len(), 5002);
    let (log, took) = init(ranges);
    println!(
        "timing: init with 5,002 source ranges (4,991 IPv4 intervals, 1 IPv6): {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(log.contains("IPv4: only sources in 10.123."), "{log}");
    assert!(log.contains("and 4979 more may connect (4991 intervals in one set)"), "{log}");
    let rules = t.pod.ruleset();
    assert_eq!(
        rules.matches("set source-ranges {").count(),
        2,
        "one set per family:\n{}",
        rules.chars().take(2000).collect::<String>()
    );
    assert_eq!(rules.matches("saddr @source-ranges accept").count(), 2, "one lookup per family");
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()), "the client's /24 lets it in");
    assert!(t.tcp(t.pod_v6(), 80).is_err(), "no IPv6 range contains the client");

    let mut ranges: Vec<String> = (0..5000).map(apart).collect();
    ranges.push(format!("{}/64", t.client_v6()));
    init(ranges);
    assert!(t.tcp(t.pod_v4(), 80).is_err(), "no IPv4 range contains the client");
    assert_eq!(t.tcp(t.pod_v6(), 80), Ok(t.pod_back_v6().to_string()), "the client's /64 lets it in");
}

#[test]
fn source_ranges_let_answers_through_to_a_client_whose_source_port_is_the_listened_port() {
    // IKE (500 to 500), WireGuard, DNS from port 53: masquerade keeps the client's source port,
    // so the backend's answer arrives for the listened port, from outside the ranges.
    const IKE: u16 = 500;
    let mut t = Topology::new();
    t.serve(4500);
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    let init = |v4_range: String, v6_range: String| {
        let port = format!("udp:{IKE}:4500");
        t.pod.lb_ok(&["init", "--port", &port, "--to", &to, "--source-range", &v4_range, "--source-range", &v6_range])
    };

    init(format!("{}/32", t.client_v4()), format!("{}/128", t.client_v6()));
    assert_eq!(t.udp_from(IKE, t.pod_v4(), IKE), Ok(t.pod_back_v4().to_string()));
    assert_eq!(t.udp_from(IKE, t.pod_v6(), IKE), Ok(t.pod_back_v6().to_string()));
    let rules = t.pod.ruleset();
    assert!(rules.contains(&format!("ct direction original udp dport {IKE} jump allowed-sources")), "{rules}");

    // The same flows, once the ranges exclude the client: its packets are still filtered, although
    // conntrack already knows them.
    init("192.0.2.0/24".into(), "2001:db8::/32".into());
    assert!(t.udp_from(IKE, t.pod_v4(), IKE).is_err(), "a v4 source outside the ranges must not be answered");
    assert!(t.udp_from(IKE, t.pod_v6(), IKE).is_err(), "a v6 source outside the ranges must not be answered");
}

#[test]
fn init_twice_with_the_same_arguments_gives_the_same_ruleset() {
    let mut t = Topology::new();
    t.serve(8080);
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    let args = ["init", "--port", "tcp:80:8080", "--to", &to, "--source-range", "10.0.0.0/8"];
    t.pod.lb_ok(&args);
    let first = t.pod.ruleset();
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    t.pod.lb_ok(&args);
    let second = t.pod.ruleset();
    assert_eq!(first, second);
    assert_eq!(first.matches("table ").count(), 2, "one table per family, nothing duplicated:\n{first}");
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
}

#[test]
fn changed_arguments_replace_the_old_rules() {
    let mut t = Topology::new();
    t.serve(18080);
    t.serve(28080);
    let dual = format!("{},{}", t.backend_v4(), t.backend_v6());
    t.pod.lb_ok(&["init", "--port", "tcp:1080:18080", "--to", &dual, "--source-range", "10.0.0.0/8"]);
    assert_eq!(t.tcp(t.pod_v4(), 1080), Ok(t.pod_back_v4().to_string()));

    t.pod.lb_ok(&["init", "--port", "tcp:2080:28080", "--to", &t.backend_v4().to_string()]);
    let rules = t.pod.ruleset();
    assert!(!rules.contains("18080") && !rules.contains("1080 "), "the old port is gone:\n{rules}");
    assert!(!rules.contains("table ip6 hostlb"), "the IPv6 table is gone with its destination:\n{rules}");
    assert!(!rules.contains("allowed-sources"), "the source filter is gone with its ranges:\n{rules}");
    assert!(t.tcp(t.pod_v4(), 1080).is_err());
    assert!(t.tcp(t.pod_v6(), 1080).is_err());
    assert_eq!(t.tcp(t.pod_v4(), 2080), Ok(t.pod_back_v4().to_string()));

    let log = t.pod.lb_ok(&["init", "--port", "tcp:3080:28080", "--to", &t.backend_v6().to_string()]);
    assert!(log.contains("already there"), "the second init found the first one's tables:\n{log}");
    let rules = t.pod.ruleset();
    assert!(!rules.contains("table ip hostlb"), "the IPv4 table is gone with its destination:\n{rules}");
    assert!(t.tcp(t.pod_v4(), 2080).is_err());
    assert_eq!(t.tcp(t.pod_v6(), 3080), Ok(t.pod_back_v6().to_string()));
}

#[test]
fn run_installs_the_rules_then_holds_until_sigterm() {
    let mut t = Topology::new();
    t.serve(8080);
    let to = t.backend_v4().to_string();
    let mut lb = Running::spawn(t.pod.lb_command(&["run", "--port", "tcp:80:8080", "--to", &to], &[]));
    lb.wait_for_line("holding until SIGTERM");
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()));
    lb.signal(Signal::SIGTERM);
    let status = lb.wait(Duration::from_secs(5));
    assert!(status.success(), "run must exit 0 on SIGTERM, got {status}: {}", lb.log);
    assert_eq!(t.tcp(t.pod_v4(), 80), Ok(t.pod_back_v4().to_string()), "the rules outlive the process");
}

#[test]
fn hundreds_of_ports_install_in_one_batch_with_every_step_acknowledged() {
    let mut t = Topology::new();
    t.serve(8080);
    let to = format!("{},{}", t.backend_v4(), t.backend_v6());
    let mut args = vec!["init".to_string(), "--to".into(), to, "--source-range".into(), "10.0.0.0/8".into()];
    for port in 1000..1300 {
        args.extend(["--port".into(), format!("tcp:{port}:8080"), "--port".into(), format!("udp:{port}:8080")]);
    }
    // Thousands of steps: more answers than a default receive buffer takes.
    let log = t.pod.lb_ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(log.contains("installed 2419 nftables changes in one transaction"), "{log}");
    assert_eq!(t.tcp(t.pod_v4(), 1299), Ok(t.pod_back_v4().to_string()));
    assert!(t.udp(t.pod_v6(), 1000).is_err(), "IPv6 has no allowed source range");
}

#[test]
fn node_endpoints_forward_nothing_until_installed_then_share_new_connections() {
    use std::collections::BTreeMap;

    use hostlb_contract::{Destination, Family, PortMap, Protocol, RuleArgs};
    use hostlb_lb::port_forwarding::{Forward, PortForwarding};
    use hostlb_lb::{kernel, rules};

    let mut t = Topology::new();
    // Only the first backend answers: the second refuses, so each connection tells where it went.
    t.serve(8080);
    let log = t.pod.lb_ok(&["init", "--port", "tcp:80:80", "--to", "node-endpoints", "--family", "ipv4"]);
    assert!(log.contains("nothing forwarded until the endpoint follower"), "{log}");
    assert!(t.tcp(t.pod_v4(), 80).is_err(), "no endpoint yet, so nothing is forwarded");

    let args = RuleArgs {
        ports: vec![PortMap { protocol: Protocol::Tcp, listen: 80, target: 80 }],
        to: vec![Destination::NodeEndpoints],
        families: vec![Family::V4],
        source_ranges: Vec::new(),
    };
    let backends = [8080, 8081].map(|port| std::net::SocketAddr::new(t.backend_v4(), port)).to_vec();
    let endpoints = BTreeMap::from([(Family::V4, vec![Forward { protocol: Protocol::Tcp, listen: 80, backends }])]);
    let steps = rules::ruleset(&PortForwarding::new(&args).unwrap().with_endpoints(endpoints));
    t.pod.run(move || kernel::apply(&steps)).unwrap();
    assert!(t.pod.ruleset().contains("numgen random mod 2"), "{}", t.pod.ruleset());

    let attempts = 40;
    let answered = (0..attempts).filter(|_| t.tcp(t.pod_v4(), 80).is_ok()).count();
    // Binomial(40, 1/2): outside 5..=35 with a probability under one in a million.
    assert!((5..=35).contains(&answered), "{answered} of {attempts} connections reached the answering backend");
}
