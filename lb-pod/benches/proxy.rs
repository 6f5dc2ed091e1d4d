//! `make bench`'s proxy-pod part: real packets through `hostlb-lb init`'s rules and through the
//! paths it is compared with, each figure taken beside them in the same run, in network
//! namespaces this program creates (`hlb-bench-<pid>-*`, deleted on drop, also when it panics).
//! Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT` once every figure is taken: a run that
//! fails writes nothing.
//!
//! Topology, IPv4: client --- node --- {hostlb pod, klipper pod, backend pod}. The node has
//! the rules a Kubernetes node has, loaded with `iptables-restore` (nf_tables backend):
//! kube-proxy's (1.20, iptables mode) for the measured Service and for `OTHER_SERVICES` more, and
//! CNI portmap's for both proxy pods' hostPorts. A proxy pod forwards to the Service's ClusterIP,
//! which the node's kube-proxy rules DNAT once more to the backend, as in a cluster.
//! - direct: the client talks to the backend pod's address, routed by the node, no NAT: the
//!   reference;
//! - nodeport: the client talks to the Service's NodePort on the node: kube-proxy's path, the
//!   one MetalLB's addresses take;
//! - hostlb: the node's hostPorts, portmap's DNAT to the hostlb pod, `hostlb-lb init`'s rules
//!   to the ClusterIP, kube-proxy's DNAT to the backend;
//! - klipper: the same through a pod with klipper-lb's iptables rules (the path hostlb
//!   replaces), on hostPorts of its own;
//! - agent: the opt-in node agent's table in the node's own namespace (`node_ruleset`, as the
//!   agent programs it for a Service of `externalTrafficPolicy: Cluster`): DNAT of the node's
//!   address straight to the backend pod, masquerade, beside kube-proxy's and portmap's rules. On
//!   ports of its own, as the proxy pods' hostPorts take the Service's here.
//!
//! Conntrack keeps the kernel's default timeouts, so within one path's run the tables fill as a
//! busy node's do (every short connection stays 120 s in TIME_WAIT, in each namespace that
//! tracks it). Every namespace's table is flushed between runs, so that one run's entries do not
//! weigh on the next.
//!
//! Needs root, iproute2, iptables, nftables, conntrack and iperf3 (`make bench` installs them).

#[path = "../../e2e/bench/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeMap;
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use hostlb_contract::{Destination, PortMap, Protocol, RuleArgs};
use hostlb_lb::kernel;
use hostlb_lb::node_table::{node_ruleset, NodeRules, ServiceRules};
use hostlb_lb::port_forwarding::PortForwarding;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stats::{kib_field, median, min_median_max, percentile, rounded};
use support::{sh, Netns, LB};

/// The client's addresses, one per client thread: UDP transactions each need a source port not
/// used before in the run, more than one address has.
fn client_address(client: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 126, 1, 2 + client as u8)
}
/// The node's address as the client sees it: its hostPorts and NodePorts.
const NODE: &str = "10.126.1.1";
/// The pods' network (kube-proxy's `--cluster-cidr`): kube-proxy masquerades traffic to a
/// ClusterIP that comes from outside it.
const CLUSTER_CIDR: &str = "10.42.0.0/16";
const BACKEND: &str = "10.42.3.2";
const CLUSTER_IP: &str = "10.43.0.10";
/// Services in the cluster besides the measured one, each with one port, so that kube-proxy's
/// KUBE-SERVICES chain is as long as a modest cluster's (two rules per Service port): every new
/// connection that reaches the node scans it, the measured Service's in the middle.
const OTHER_SERVICES: usize = 100;

/// A port of the measured Service.
#[derive(Clone, Copy)]
struct ServicePort {
    name: &'static str,
    protocol: &'static str,
    port: u16,
    /// The backend's port.
    target: u16,
    /// Kubernetes gives one to each port of a Service of type NodePort or LoadBalancer.
    node_port: Option<u16>,
}

const SERVICE_PORTS: [ServicePort; 3] = [
    ServicePort { name: "http", protocol: "tcp", port: 80, target: 8080, node_port: Some(30080) },
    ServicePort { name: "iperf", protocol: "tcp", port: 5201, target: 5201, node_port: Some(30201) },
    ServicePort { name: "echo", protocol: "udp", port: 7, target: 7007, node_port: Some(30007) },
];
const HTTP: usize = 0;
const IPERF: usize = 1;
const ECHO: usize = 2;

/// A proxy pod of the measured Service. Its containers listen on the Service's ports; its
/// hostPorts are those plus `host_port_offset`, since two pods cannot claim the same hostPort
/// on one node.
struct ProxyPod {
    name: &'static str,
    address: &'static str,
    host_port_offset: u16,
}

const HOSTLB: ProxyPod = ProxyPod { name: "hostlb", address: "10.42.1.2", host_port_offset: 0 };
const KLIPPER: ProxyPod = ProxyPod { name: "klipper", address: "10.42.2.2", host_port_offset: 1 };
/// The node agent's ports are the Service's plus this, past the proxy pods' hostPorts.
const AGENT_PORT_OFFSET: u16 = 2;

/// One way from the client to the backend's servers: where it connects, on which port for each
/// of `SERVICE_PORTS`, and through which proxy pod.
#[derive(Clone, Copy)]
struct Path {
    name: &'static str,
    to: &'static str,
    ports: [u16; 3],
    via: Option<&'static ProxyPod>,
}

impl Path {
    fn at(&self, port: usize) -> SocketAddr {
        SocketAddr::new(self.to.parse().unwrap(), self.ports[port])
    }
}

fn paths() -> [Path; 5] {
    let through = |pod: &'static ProxyPod| Path {
        name: pod.name,
        to: NODE,
        ports: SERVICE_PORTS.map(|port| port.port + pod.host_port_offset),
        via: Some(pod),
    };
    [
        Path { name: "direct", to: BACKEND, ports: SERVICE_PORTS.map(|port| port.target), via: None },
        Path { name: "nodeport", to: NODE, ports: SERVICE_PORTS.map(|port| port.node_port.unwrap()), via: None },
        through(&HOSTLB),
        through(&KLIPPER),
        Path { name: "agent", to: NODE, ports: SERVICE_PORTS.map(|port| port.port + AGENT_PORT_OFFSET), via: None },
    ]
}

/// 7 rounds of the five paths keep the part near 4 minutes on a 2-core machine.
const ROUNDS: usize = 7;
const IPERF_SECONDS: &str = "2";
const RPS_WINDOW: Duration = Duration::from_secs(2);
const LATENCY_WINDOW: Duration = Duration::from_secs(1);
const UDP_WINDOW: Duration = Duration::from_secs(1);
const CLIENTS: usize = 4;
/// Each UDP client sends from its own address, each source port once per run: a port used
/// twice would meet its earlier flow's conntrack entry instead of making a new one. The clients
/// start a quarter of the range apart: a proxy pod masquerades them all to its own address, and
/// two flows given the same port at the same moment on two CPUs clash in conntrack, which drops
/// one's first datagram. Real clients' random ports rarely meet; clients in step would.
const UDP_FIRST_PORT: u16 = 1024;
const UDP_PORTS: usize = 65536 - UDP_FIRST_PORT as usize;
/// Connections made, one at a time, to count conntrack entries per connection.
const CONNTRACK_PROBES: usize = 200;
/// Long enough for SYNs sent again under load, short enough that a broken path fails the run
/// instead of hanging it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A UDP answer not back by then is counted lost: a NAT'd flow's first datagram can be dropped
/// when two new flows clash in conntrack, as on a real node. A run fails when more than one
/// transaction in `UDP_LOSS_LIMIT` is lost: a broken path loses them all.
const UDP_TIMEOUT: Duration = Duration::from_secs(1);
const UDP_LOSS_LIMIT: usize = 1000;
/// The backend's whole answer. The client closes first once it has read it, so that the client
/// and not the backend keeps each connection in TIME_WAIT: a NAT'd path's masquerade, its
/// conntrack flushed between runs, would otherwise pick source ports whose earlier connections
/// the backend still keeps in TIME_WAIT, and PAWS there would refuse the new SYN for a second.
const ANSWER: &[u8] = b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok";
const PROGRAM_RUNS: usize = 15;

fn main() {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/proxy.json".into());
    // A failed run must leave no figures behind, not even an earlier run's.
    let _ = std::fs::remove_file(&out);
    let lb = std::env::var("HOSTLB_LB_BINARY").unwrap_or_else(|_| LB.into());
    let mut results = BTreeMap::new();
    program_time(&lb, &mut results);
    hold_rss(&lb, &mut results);
    data_path(&lb, &mut results);
    let json = serde_json::to_string_pretty(&results).expect("numbers serialize");
    if let Some(dir) = std::path::Path::new(&out).parent() {
        std::fs::create_dir_all(dir).expect("creating the output folder");
    }
    std::fs::write(&out, json + "\n").unwrap_or_else(|e| panic!("writing {out}: {e}"));
    eprintln!("wrote {out}");
}

type Results = BTreeMap<String, f64>;

/// A command started on a thread that has entered `netns`, so that the child is born in it
/// without `ip netns exec`'s own start-up in the timing.
fn timed_in(netns: &Netns, mut command: Command) -> Duration {
    netns.run(move || {
        let started = Instant::now();
        let output = command.output().expect("starting a timed command");
        let took = started.elapsed();
        assert!(output.status.success(), "{command:?} failed: {}", String::from_utf8_lossy(&output.stderr));
        took
    })
}

/// `lb_program_ms`: `hostlb-lb init` for 2 TCP ports and both families, in a fresh namespace
/// each time, beside `iptables-restore` and `ip6tables-restore` installing the same rules the
/// way klipper-lb's script does (DNAT in PREROUTING, MASQUERADE in POSTROUTING per destination),
/// also after turning forwarding on.
fn program_time(lb: &str, results: &mut Results) {
    const V4: &str = "10.127.0.9";
    const V6: &str = "fd00:127::9";
    const PORTS: [(u16, u16); 2] = [(80, 8080), (443, 8443)];
    let dir = std::env::temp_dir().join(format!("hlb-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let restore_input = |destination: &str, bracketed: &str, mask: u8| {
        let mut text = String::from("*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
        for (listen, target) in PORTS {
            text += &format!(
                "-A PREROUTING ! -s {destination}/{mask} -p tcp -m tcp --dport {listen} \
                 -j DNAT --to-destination {bracketed}:{target}\n"
            );
            text += &format!("-A POSTROUTING -d {destination}/{mask} -p tcp -m tcp --dport {target} -j MASQUERADE\n");
        }
        text + "COMMIT\n"
    };
    let v4_rules = dir.join("rules.v4");
    let v6_rules = dir.join("rules.v6");
    std::fs::write(&v4_rules, restore_input(V4, V4, 32)).unwrap();
    std::fs::write(&v6_rules, restore_input(V6, &format!("[{V6}]"), 128)).unwrap();
    let script = format!(
        "echo 1 > /proc/sys/net/ipv4/ip_forward && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding \
         && iptables-restore < {} && ip6tables-restore < {}",
        v4_rules.display(),
        v6_rules.display()
    );

    let (mut hostlb, mut iptables) = (Vec::new(), Vec::new());
    for _ in 0..PROGRAM_RUNS {
        let netns = Netns::lone("program");
        let mut init = Command::new(lb);
        init.args(["init", "--port", "tcp:80:8080", "--port", "tcp:443:8443", "--to", &format!("{V4},{V6}")]);
        hostlb.push(timed_in(&netns, init).as_secs_f64() * 1e3);
        let netns = Netns::lone("program");
        let mut restore = Command::new("sh");
        restore.args(["-c", &script]);
        iptables.push(timed_in(&netns, restore).as_secs_f64() * 1e3);
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let (hostlb, iptables) = (median(hostlb), median(iptables));
    eprintln!("program: hostlb-lb init {hostlb:.2} ms, iptables-restore {iptables:.2} ms");
    results.insert("lb_program_ms".into(), rounded(hostlb, 3));
    results.insert("lb_program_iptables_ms".into(), rounded(iptables, 3));
    results.insert("lb_program_ratio_vs_iptables".into(), rounded(hostlb / iptables, 3));
}

/// `lb_hold_rss_kib`: the resident memory of the long-running container's process, and of it
/// `lb_hold_rss_anon_kib`, the part that is the process's own; the rest are pages of the
/// binary, shared through the page cache by every proxy pod on the node.
fn hold_rss(lb: &str, results: &mut Results) {
    let mut hold = Command::new(lb).arg("hold").stderr(Stdio::null()).spawn().expect("starting hostlb-lb hold");
    std::thread::sleep(Duration::from_millis(300));
    let status = std::fs::read_to_string(format!("/proc/{}/status", hold.id())).unwrap();
    let kib = |field: &str| kib_field(&status, field).unwrap_or_else(|| panic!("{field} in /proc/PID/status"));
    let (rss, anon) = (kib("VmRSS:"), kib("RssAnon:"));
    kill(Pid::from_raw(hold.id() as i32), Signal::SIGTERM).unwrap();
    let exit = hold.wait().unwrap();
    assert!(exit.success(), "hostlb-lb hold exits 0 on SIGTERM: {exit}");
    eprintln!("hold: {rss} KiB resident, {anon} KiB of it anonymous");
    results.insert("lb_hold_rss_kib".into(), rss);
    results.insert("lb_hold_rss_anon_kib".into(), anon);
}

/// One table of `iptables-restore` input: its chains, then its rules in the order added.
struct Table {
    name: &'static str,
    /// Each chain with its policy: ACCEPT for the built-in ones, `-` for the rest.
    chains: Vec<(String, &'static str)>,
    rules: Vec<String>,
}

impl Table {
    fn new(name: &'static str, builtins: &[&str]) -> Table {
        let chains = builtins.iter().map(|chain| (chain.to_string(), "ACCEPT")).collect();
        Table { name, chains, rules: Vec::new() }
    }

    fn declare(&mut self, chain: &str) {
        if !self.chains.iter().any(|(name, _)| name == chain) {
            self.chains.push((chain.to_string(), "-"));
        }
    }

    fn add(&mut self, chain: &str, rule: &str) {
        self.declare(chain);
        self.rules.push(format!("-A {chain} {rule}"));
    }

    fn text(&self) -> String {
        let chains = self.chains.iter().map(|(chain, policy)| format!(":{chain} {policy} [0:0]\n"));
        let rules = self.rules.iter().map(|rule| format!("{rule}\n"));
        format!("*{}\n{}{}COMMIT\n", self.name, chains.collect::<String>(), rules.collect::<String>())
    }
}

/// A chain name as kube-proxy and portmap make them: a prefix and a hash of what it serves.
fn chain_name(prefix: &str, of: &str) -> String {
    let mut hasher = DefaultHasher::new();
    of.hash(&mut hasher);
    format!("{prefix}-{:016X}", hasher.finish())
}

const MARK_MASQ: &str = "KUBE-MARK-MASQ";

/// kube-proxy's nat rules for one Service port with one endpoint, as its iptables mode writes
/// them (1.20): the ClusterIP match in KUBE-SERVICES (marked for masquerade when the source is
/// outside the pods' network), the NodePort in KUBE-NODEPORTS, then KUBE-SVC-* to KUBE-SEP-*,
/// which marks hairpin traffic and DNATs to the endpoint.
fn kube_proxy_port(nat: &mut Table, service: &str, cluster_ip: &str, port: &ServicePort, endpoint: &str) {
    let ServicePort { name, protocol, port, target, node_port } = *port;
    let svc = chain_name("KUBE-SVC", &format!("{service}:{name}{protocol}"));
    let sep = chain_name("KUBE-SEP", &format!("{service}:{name}{protocol}{endpoint}"));
    let match_port =
        format!("-p {protocol} -m comment --comment \"{service}:{name} cluster IP\" -m {protocol} --dport {port}");
    nat.add("KUBE-SERVICES", &format!("! -s {CLUSTER_CIDR} -d {cluster_ip}/32 {match_port} -j {MARK_MASQ}"));
    nat.add("KUBE-SERVICES", &format!("-d {cluster_ip}/32 {match_port} -j {svc}"));
    let comment = format!("-m comment --comment \"{service}:{name}\"");
    if let Some(node_port) = node_port {
        let match_node_port = format!("-p {protocol} {comment} -m {protocol} --dport {node_port}");
        nat.add("KUBE-NODEPORTS", &format!("{match_node_port} -j {MARK_MASQ}"));
        nat.add("KUBE-NODEPORTS", &format!("{match_node_port} -j {svc}"));
    }
    nat.add(&svc, &format!("{comment} -j {sep}"));
    nat.add(&sep, &format!("-s {endpoint}/32 {comment} -j {MARK_MASQ}"));
    nat.add(&sep, &format!("-p {protocol} {comment} -m {protocol} -j DNAT --to-destination {endpoint}:{target}"));
}

/// The node's rules: kube-proxy's (1.20, iptables mode) and CNI portmap's for both proxy pods,
/// in the order a node's `iptables-save` shows them: kube-proxy's jump first in PREROUTING, so
/// that a hostPort's packets scan KUBE-SERVICES before portmap's chain.
fn node_rules() -> String {
    let mut nat = Table::new("nat", &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"]);
    for hook in ["PREROUTING", "OUTPUT"] {
        nat.add(hook, "-m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES");
        nat.add(hook, "-m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT");
    }
    nat.add("POSTROUTING", "-m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING");
    nat.add("POSTROUTING", "-m comment --comment \"CNI portfwd requiring masquerade\" -j CNI-HOSTPORT-MASQ");
    nat.add(MARK_MASQ, "-j MARK --set-xmark 0x4000/0x4000");
    nat.add("KUBE-MARK-DROP", "-j MARK --set-xmark 0x8000/0x8000");
    nat.add("KUBE-POSTROUTING", "-m mark ! --mark 0x4000/0x4000 -j RETURN");
    nat.add("KUBE-POSTROUTING", "-j MARK --set-xmark 0x4000/0x0");
    nat.add(
        "KUBE-POSTROUTING",
        "-m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
    );
    nat.declare("KUBE-NODEPORTS");
    let other = |nat: &mut Table, i: usize| {
        let port = ServicePort { name: "http", protocol: "tcp", port: 80, target: 8080, node_port: None };
        let (cluster_ip, endpoint) =
            (format!("10.43.{}.{}", 1 + i / 250, 1 + i % 250), format!("10.42.{}.{}", 100 + i / 250, 1 + i % 250));
        kube_proxy_port(nat, &format!("default/other-{i}"), &cluster_ip, &port, &endpoint);
    };
    (0..OTHER_SERVICES / 2).for_each(|i| other(&mut nat, i));
    for port in &SERVICE_PORTS {
        kube_proxy_port(&mut nat, "bench/web", CLUSTER_IP, port, BACKEND);
    }
    (OTHER_SERVICES / 2..OTHER_SERVICES).for_each(|i| other(&mut nat, i));
    nat.add(
        "KUBE-SERVICES",
        "-m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" \
         -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS",
    );

    // portmap: one entry rule per container and protocol (multiport), then per hostPort the
    // marks for hairpin and localhost sources, and the DNAT.
    nat.add(
        "CNI-HOSTPORT-SETMARK",
        "-m comment --comment \"CNI portfwd masquerade mark\" -j MARK --set-xmark 0x2000/0x2000",
    );
    nat.add("CNI-HOSTPORT-MASQ", "-m mark --mark 0x2000/0x2000 -j MASQUERADE");
    for pod in [&HOSTLB, &KLIPPER] {
        let dn = chain_name("CNI-DN", pod.name);
        let comment = format!("-m comment --comment \"dnat name: \\\"cbr0\\\" id: \\\"{}\\\"\"", pod.name);
        for protocol in ["tcp", "udp"] {
            let ports: Vec<String> = SERVICE_PORTS
                .iter()
                .filter(|port| port.protocol == protocol)
                .map(|port| (port.port + pod.host_port_offset).to_string())
                .collect();
            nat.add(
                "CNI-HOSTPORT-DNAT",
                &format!("{comment} -m multiport -p {protocol} --dports {} -j {dn}", ports.join(",")),
            );
        }
        for port in &SERVICE_PORTS {
            let base =
                format!("-p {} -m {} --dport {}", port.protocol, port.protocol, port.port + pod.host_port_offset);
            nat.add(&dn, &format!("-s {}/32 {base} -j CNI-HOSTPORT-SETMARK", pod.address));
            nat.add(&dn, &format!("-s 127.0.0.1/32 {base} -j CNI-HOSTPORT-SETMARK"));
            nat.add(&dn, &format!("{base} -j DNAT --to-destination {}:{}", pod.address, port.port));
        }
    }

    let mut filter = Table::new("filter", &["INPUT", "FORWARD", "OUTPUT"]);
    let portals = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES";
    let external = "-m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" \
                    -j KUBE-EXTERNAL-SERVICES";
    filter.add("INPUT", portals);
    filter.add("INPUT", external);
    filter.add("INPUT", "-j KUBE-FIREWALL");
    filter.add("FORWARD", "-m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD");
    filter.add("FORWARD", portals);
    filter.add("FORWARD", external);
    filter.add("OUTPUT", portals);
    filter.add("OUTPUT", "-j KUBE-FIREWALL");
    filter.declare("KUBE-SERVICES");
    filter.declare("KUBE-EXTERNAL-SERVICES");
    filter.add(
        "KUBE-FIREWALL",
        "-m comment --comment \"kubernetes firewall for dropping marked packets\" -m mark --mark 0x8000/0x8000 -j DROP",
    );
    filter.add("KUBE-FORWARD", "-m conntrack --ctstate INVALID -j DROP");
    filter.add(
        "KUBE-FORWARD",
        "-m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT",
    );
    for (side, comment) in [("-s", "source"), ("-d", "destination")] {
        filter.add(
            "KUBE-FORWARD",
            &format!(
                "{side} {CLUSTER_CIDR} -m comment --comment \"kubernetes forwarding conntrack pod {comment} rule\" \
                 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
            ),
        );
    }
    nat.text() + &filter.text()
}

/// What the node agent programs for the measured Service, `externalTrafficPolicy: Cluster`:
/// its ports on the node's address, forwarded to the backend pod and masqueraded.
fn agent_rules() -> NodeRules {
    let ports = SERVICE_PORTS.map(|ServicePort { protocol, port, target, .. }| PortMap {
        protocol: Protocol::from_arg(protocol).expect("a known protocol"),
        listen: port + AGENT_PORT_OFFSET,
        target,
    });
    let args = RuleArgs {
        ports: ports.to_vec(),
        to: vec![Destination::Address(BACKEND.parse().unwrap())],
        families: Vec::new(),
        source_ranges: Vec::new(),
    };
    let forwarding = PortForwarding::new(&args).expect("a valid port forwarding");
    NodeRules { addresses: vec![NODE.parse().unwrap()], services: vec![ServiceRules { forwarding, masquerade: true }] }
}

/// klipper-lb's rules for the measured Service, as its entry script adds them with `iptables`
/// in its pod (one container per port, all in the pod's namespace): per port, an ACCEPT in
/// FORWARD for each source range (all, when the Service sets none) and a DROP after them, a
/// DNAT in PREROUTING for packets not from the ClusterIP, a MASQUERADE in POSTROUTING to it.
/// The script needs forwarding on; k3s sets it with the pod's sysctls.
fn klipper_commands() -> Vec<Vec<String>> {
    let mut commands = Vec::new();
    for ServicePort { protocol, port, .. } in SERVICE_PORTS {
        let rules = [
            format!("-t filter -I FORWARD -s 0.0.0.0/0 -p {protocol} --dport {port} -j ACCEPT"),
            format!("-t filter -A FORWARD -d {CLUSTER_IP}/32 -p {protocol} --dport {port} -j DROP"),
            format!("-t nat -I PREROUTING ! -s {CLUSTER_IP}/32 -p {protocol} --dport {port} -j DNAT --to {CLUSTER_IP}:{port}"),
            format!("-t nat -I POSTROUTING -d {CLUSTER_IP}/32 -p {protocol} -j MASQUERADE"),
        ];
        commands.extend(rules.map(|rule| rule.split(' ').map(String::from).collect()));
    }
    commands
}

/// The namespaces, linked and routed, and what runs in them; all stopped and deleted on drop.
struct Bench {
    // Field order is drop order: processes and threads first, then namespaces.
    children: Vec<Child>,
    servers: Vec<StoppableThreads>,
    client: Netns,
    node: Netns,
    hostlb: Netns,
    klipper: Netns,
    backend: Netns,
}

impl Bench {
    fn new(lb: &str) -> Bench {
        let prefix = format!("hlb-bench-{}", std::process::id());
        let netns = |role: &str| Netns::new(format!("{prefix}-{role}"));
        let mut bench = Bench {
            children: Vec::new(),
            servers: Vec::new(),
            client: netns("client"),
            node: netns("node"),
            hostlb: netns("hostlb"),
            klipper: netns("klipper"),
            backend: netns("backend"),
        };
        let first_client = client_address(0).to_string();
        for (peer, node_address, peer_address) in [
            (&bench.client, NODE, first_client.as_str()),
            (&bench.hostlb, "10.42.1.1", HOSTLB.address),
            (&bench.klipper, "10.42.2.1", KLIPPER.address),
            (&bench.backend, "10.42.3.1", BACKEND),
        ] {
            let node_side = format!("to-{}", peer.name.rsplit('-').next().unwrap());
            let node = &bench.node;
            node.ip(&["link", "add", &node_side, "type", "veth", "peer", "name", "eth0", "netns", &peer.name]);
            node.ip(&["addr", "add", &format!("{node_address}/24"), "dev", &node_side]);
            node.ip(&["link", "set", &node_side, "up"]);
            peer.ip(&["addr", "add", &format!("{peer_address}/24"), "dev", "eth0"]);
            peer.ip(&["link", "set", "eth0", "up"]);
            peer.ip(&["route", "add", "default", "via", node_address]);
        }
        for client in 1..CLIENTS {
            bench.client.ip(&["addr", "add", &format!("{}/24", client_address(client)), "dev", "eth0"]);
        }
        bench.exec(&bench.node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        bench.restore(&bench.node, &node_rules());
        let agent = node_ruleset(&agent_rules());
        bench.node.run(move || kernel::apply(&agent)).unwrap_or_else(|error| panic!("the agent's table: {error}"));
        // Many short connections from one address: the whole port range, and reuse of ports
        // whose connections wait in TIME_WAIT.
        let client_sysctls = ["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"];
        bench.exec(&bench.client, &client_sysctls);

        let mut init = vec![lb.to_string(), "init".into(), "--to".into(), CLUSTER_IP.into()];
        for ServicePort { protocol, port, .. } in SERVICE_PORTS {
            init.extend(["--port".into(), format!("{protocol}:{port}:{port}")]);
        }
        bench.exec(&bench.hostlb, &init.iter().map(String::as_str).collect::<Vec<_>>());

        bench.exec(&bench.klipper, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        for command in klipper_commands() {
            let argv: Vec<&str> = ["iptables"].into_iter().chain(command.iter().map(String::as_str)).collect();
            bench.exec(&bench.klipper, &argv);
        }

        let backend = bench.backend.name.clone();
        let iperf_port = SERVICE_PORTS[IPERF].target.to_string();
        bench.spawn(&backend, &["iperf3", "--server", "--bind", BACKEND, "--port", &iperf_port]);
        let http_port = SERVICE_PORTS[HTTP].target;
        let listener =
            bench.backend.run(move || TcpListener::bind((BACKEND, http_port)).expect("binding the HTTP server"));
        bench.servers.push(http_server(listener));
        let echo_port = SERVICE_PORTS[ECHO].target;
        let socket = bench.backend.run(move || UdpSocket::bind((BACKEND, echo_port)).expect("binding the echo server"));
        bench.servers.push(udp_echo_server(socket));
        bench
    }

    /// A command that must succeed, in `netns`.
    fn exec(&self, netns: &Netns, argv: &[&str]) -> String {
        sh("ip", &[&["netns", "exec", netns.name.as_str()], argv].concat())
    }

    /// `iptables-restore` of `rules` in `netns`; a rule it refuses fails the run.
    fn restore(&self, netns: &Netns, rules: &str) {
        let mut restore = Command::new("ip")
            .args(["netns", "exec", &netns.name, "iptables-restore"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running iptables-restore");
        restore.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        let output = restore.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "iptables-restore in {}: {}\n{rules}",
            netns.name,
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `ip netns exec` execs the program itself, so the child's pid is the program's.
    fn spawn(&mut self, netns: &str, argv: &[&str]) {
        let child = Command::new("ip")
            .args(["netns", "exec", netns])
            .args(argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {argv:?}: {e}"));
        self.children.push(child);
    }

    fn namespaces(&self) -> [&Netns; 5] {
        [&self.client, &self.node, &self.hostlb, &self.klipper, &self.backend]
    }

    fn flush_conntrack(&self) {
        for netns in self.namespaces() {
            self.exec(netns, &["conntrack", "-F"]);
        }
    }

    /// Conntrack entries per new connection on `path`, all namespaces together, from a flushed
    /// table; also checks that the connections went through the path's proxy pod and no other.
    fn conntrack_per_connection(&self, path: &Path) -> f64 {
        self.flush_conntrack();
        let at = path.at(HTTP);
        self.client.run(move || (0..CONNTRACK_PROBES).for_each(|_| _ = http_get(at)));
        let count = |netns: &Netns| {
            netns.run(|| {
                let text = std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_count").unwrap();
                text.trim().parse::<usize>().expect("a count")
            })
        };
        for (pod, netns) in [(&HOSTLB, &self.hostlb), (&KLIPPER, &self.klipper)] {
            let entries = count(netns);
            let through = path.via.is_some_and(|via| via.name == pod.name);
            assert!(
                if through { entries >= CONNTRACK_PROBES } else { entries == 0 },
                "{CONNTRACK_PROBES} connections on path {} left {entries} conntrack entries in the {} pod",
                path.name,
                pod.name
            );
        }
        self.namespaces().into_iter().map(count).sum::<usize>() as f64 / CONNTRACK_PROBES as f64
    }

    /// One iperf3 run from the client; its receiver's rate in Gbit/s.
    fn iperf_gbps(&self, at: SocketAddr) -> f64 {
        let (to, port) = (at.ip().to_string(), at.port().to_string());
        let report = self.exec(&self.client, &["iperf3", "--json", "-c", &to, "-p", &port, "-t", IPERF_SECONDS]);
        let report: serde_json::Value = serde_json::from_str(&report).expect("iperf3 --json prints JSON");
        let rate = report["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3's receiver rate") / 1e9;
        assert!(rate > 0.0, "iperf3 to {at} moved nothing");
        rate
    }

    /// Runs `work(i)` for each of `clients` threads at once, each inside the client's namespace.
    fn client_threads<T: Send + 'static>(
        &self,
        clients: usize,
        work: impl Fn(usize) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let path = format!("/run/netns/{}", self.client.name);
        let work = Arc::new(work);
        let threads: Vec<JoinHandle<T>> = (0..clients)
            .map(|client| {
                let (path, work) = (path.clone(), work.clone());
                std::thread::spawn(move || {
                    setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
                    work(client)
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    }

    /// HTTP/1.0 requests, each on a new connection, from `clients` threads for `window`;
    /// returns requests per second and every request's time in microseconds.
    fn http_load(&self, at: SocketAddr, clients: usize, window: Duration) -> (f64, Vec<f64>) {
        let times = self.client_threads(clients, move |_| {
            let deadline = Instant::now() + window;
            let mut times = Vec::new();
            while Instant::now() < deadline {
                times.push(http_get(at));
            }
            times
        });
        let times: Vec<f64> = times.into_iter().flatten().collect();
        (times.len() as f64 / window.as_secs_f64(), times)
    }

    /// UDP transactions per second: from `CLIENTS` threads for `window`, each datagram from a
    /// new socket on an address and port not used before in this run (a new conntrack flow),
    /// answered by the backend's echo server; and how many were lost.
    fn udp_load(&self, at: SocketAddr, window: Duration) -> (f64, usize) {
        let counts = self.client_threads(CLIENTS, move |client| {
            let deadline = Instant::now() + window;
            let (mut sent, mut lost) = (0, 0);
            while Instant::now() < deadline {
                assert!(sent < UDP_PORTS, "UDP client {client} used all its ports in {window:?}");
                let port = UDP_FIRST_PORT + ((client * UDP_PORTS / CLIENTS + sent) % UDP_PORTS) as u16;
                let socket = UdpSocket::bind((client_address(client), port)).expect("binding a UDP client");
                socket.set_read_timeout(Some(UDP_TIMEOUT)).unwrap();
                socket.send_to(b"ping", at).unwrap_or_else(|e| panic!("sending to {at}: {e}"));
                sent += 1;
                let mut answer = [0u8; 16];
                match socket.recv_from(&mut answer) {
                    Ok((len, from)) => {
                        assert!(from == at && &answer[..len] == b"ping", "{from} answered {:?}", &answer[..len])
                    }
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => lost += 1,
                    Err(e) => panic!("receiving from {at}: {e}"),
                }
            }
            (sent, lost)
        });
        let (sent, lost) = counts.into_iter().fold((0, 0), |(sent, lost), (s, l)| (sent + s, lost + l));
        assert!(lost * UDP_LOSS_LIMIT <= sent, "{lost} of {sent} UDP transactions to {at} got no answer");
        ((sent - lost) as f64 / window.as_secs_f64(), lost)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.0 request on a new connection; its time from connect to the answer's end, in µs.
fn http_get(at: SocketAddr) -> f64 {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&at, ANSWER_TIMEOUT).unwrap_or_else(|e| panic!("connect {at}: {e}"));
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 128];
    while answer.len() < ANSWER.len() {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the answer from {at}: {e}"),
        }
    }
    assert!(answer == ANSWER, "{at} answered {}", String::from_utf8_lossy(&answer));
    started.elapsed().as_secs_f64() * 1e6
}

/// Threads serving until dropped.
struct StoppableThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl StoppableThreads {
    /// `CLIENTS` threads calling `serve_one` until stopped; it must return within a moment
    /// when there is nothing to serve, so that they see the stop.
    fn start(serve_one: impl Fn() + Send + Sync + 'static) -> StoppableThreads {
        let serve_one = Arc::new(serve_one);
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..CLIENTS)
            .map(|_| {
                let (serve_one, stop) = (serve_one.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) {
                        serve_one();
                    }
                })
            })
            .collect();
        StoppableThreads { stop, threads }
    }
}

impl Drop for StoppableThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A minimal HTTP/1.0 server: reads the request head, answers 200, and closes once the client
/// has.
fn http_server(listener: TcpListener) -> StoppableThreads {
    listener.set_nonblocking(true).unwrap();
    StoppableThreads::start(move || {
        // Woken by a connection at once (a sleep between tries would be in every request's
        // time), and now and then to see whether to stop.
        let mut ready = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut ready, PollTimeout::from(100u8)), Ok(n) if n > 0) {
            return;
        }
        // Another thread may have taken it.
        let Ok((mut stream, _)) = listener.accept() else { return };
        let _ = stream.set_nonblocking(false);
        let mut head = Vec::new();
        let mut buf = [0u8; 512];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        if stream.write_all(ANSWER).is_ok() {
            let _ = stream.set_read_timeout(Some(ANSWER_TIMEOUT));
            while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
        }
    })
}

/// Sends every datagram back to where it came from.
fn udp_echo_server(socket: UdpSocket) -> StoppableThreads {
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    StoppableThreads::start(move || {
        let mut buf = [0u8; 512];
        if let Ok((len, peer)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(&buf[..len], peer);
        }
    })
}

/// The order of the paths in each round, shuffled (splitmix64) so that no path always runs
/// right after the same other one: a run inherits the state the one before left (caches, the
/// backend's TIME_WAIT sockets) and meets the same moment of anything else on the machine.
struct Shuffle(u64);

impl Shuffle {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, (self.next() % (i as u64 + 1)) as usize);
        }
    }
}

/// What one path measured, round by round.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    gbps: Vec<f64>,
    tps: Vec<f64>,
    conntrack: Vec<f64>,
    /// Every request's time, one request at a time, over all rounds.
    latency: Vec<f64>,
}

/// `ROUNDS` rounds, the paths in a new order each round; per path and round a run from flushed
/// conntrack tables: entries per connection, bulk TCP, new connections per second, request
/// times one at a time, UDP transactions per second. Each figure is reported as the median of
/// the rounds with their minimum and maximum, each ratio as hostlb's median over another path's.
fn data_path(lb: &str, results: &mut Results) {
    let bench = Bench::new(lb);
    let seed = std::env::var("HOSTLB_BENCH_SEED")
        .map(|seed| seed.parse().expect("HOSTLB_BENCH_SEED is a number"))
        .unwrap_or_else(|_| SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_nanos() as u64);
    eprintln!("data path: path order seed {seed} (HOSTLB_BENCH_SEED={seed} repeats the order)");
    let mut shuffle = Shuffle(seed);
    // Every path answers before anything is measured, neighbours resolved; meanwhile iperf3 has
    // started listening.
    for path in paths() {
        bench.http_load(path.at(HTTP), 1, Duration::from_millis(200));
        bench.udp_load(path.at(ECHO), Duration::from_millis(100));
    }
    let mut samples: BTreeMap<&str, Samples> = BTreeMap::new();
    for round in 0..ROUNDS {
        let mut order = paths();
        shuffle.shuffle(&mut order);
        for path in order {
            let conntrack = bench.conntrack_per_connection(&path);
            let gbps = bench.iperf_gbps(path.at(IPERF));
            let (rps, _) = bench.http_load(path.at(HTTP), CLIENTS, RPS_WINDOW);
            // One request at a time, so that the times are the path's, not a queue's.
            let (_, latency) = bench.http_load(path.at(HTTP), 1, LATENCY_WINDOW);
            let (tps, lost) = bench.udp_load(path.at(ECHO), UDP_WINDOW);
            eprintln!(
                "round {round} {}: {gbps:.2} Gbit/s, {rps:.0} req/s, {tps:.0} UDP/s ({lost} lost), \
                 {conntrack:.2} conntrack entries per connection",
                path.name
            );
            let samples = samples.entry(path.name).or_default();
            samples.rps.push(rps);
            samples.gbps.push(gbps);
            samples.tps.push(tps);
            samples.conntrack.push(conntrack);
            samples.latency.extend(latency);
        }
    }

    let mut medians = BTreeMap::new();
    for (path, samples) in &mut samples {
        for (figure, values, digits) in
            [("rps", &samples.rps, 0), ("tcp_gbps", &samples.gbps, 2), ("udp_tps", &samples.tps, 0)]
        {
            let (min, median, max) = min_median_max(values);
            results.insert(format!("dp_{figure}_{path}"), rounded(median, digits));
            results.insert(format!("dp_{figure}_{path}_min"), rounded(min, digits));
            results.insert(format!("dp_{figure}_{path}_max"), rounded(max, digits));
            medians.insert((figure, *path), median);
        }
        results.insert(format!("dp_conntrack_per_conn_{path}"), rounded(median(samples.conntrack.clone()), 2));
        samples.latency.sort_by(f64::total_cmp);
        for (name, p) in [("p50", 0.5), ("p99", 0.99)] {
            let at = percentile(&samples.latency, p);
            results.insert(format!("dp_{name}_us_{path}"), rounded(at, 1));
            medians.insert((name, *path), at);
        }
    }
    for name in ["p50", "p99"] {
        let added = medians[&(name, "hostlb")] - medians[&(name, "direct")];
        results.insert(format!("dp_{name}_us_added"), rounded(added, 1));
    }
    // Ratios of the medians: with the order shuffled, rounds no longer pair the paths.
    let ratios = [
        ("hostlb", "", "direct"),
        ("hostlb", "_vs_klipper", "klipper"),
        ("hostlb", "_vs_nodeport", "nodeport"),
        ("agent", "_agent_vs_nodeport", "nodeport"),
    ];
    for (figure, short) in [("rps", "rps"), ("tcp_gbps", "tcp"), ("udp_tps", "udp")] {
        for (path, suffix, baseline) in ratios {
            let ratio = medians[&(figure, path)] / medians[&(figure, baseline)];
            results.insert(format!("dp_{short}_ratio{suffix}"), rounded(ratio, 3));
        }
    }
}
