//! `make bench`'s proxy-pod part: real packets through `hostlb-lb init`'s rules, each figure
//! taken beside a baseline in the same run, in network namespaces this program creates
//! (`hlb-bench-<pid>-*`). Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.
//!
//! Topology, IPv4: client --- node --- pod, and node --- backend. The node stands for a
//! Kubernetes node: it routes, and DNATs its own address's ports to the pod the way CNI's
//! portmap does for a hostPort. The pod runs `hostlb-lb init` (DNAT to the backend and
//! MASQUERADE), so hostlb's traffic crosses the node twice, as it does in a cluster.
//! - direct: the client talks to the backend through the node, no NAT;
//! - hostport: the node DNATs a port of its own straight to the backend: what the node's part
//!   of the path (CNI's portmap) costs alone;
//! - hostlb: the client talks to the node's hostPorts, forwarded by the pod's rules;
//! - userspace: the same ports forwarded by HAProxy in the pod (mode tcp).
//!
//! Needs root, iproute2, iperf3 and haproxy (`make bench` installs them).

#[path = "../../e2e/bench/stats.rs"]
mod stats;
#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use stats::{median, percentile, rounded};
use support::{sh, Netns, LB};

const CLIENT: &str = "10.126.1.2";
const NODE: &str = "10.126.1.1";
const POD: &str = "10.126.2.2";
const BACKEND: &str = "10.126.3.2";
const IPERF_PORT: u16 = 5201;
/// hostlb's ports on the node and the pod; HAProxy's are these plus one, and the node's own
/// DNAT to the backend these plus two.
const HOSTLB_HTTP: u16 = 80;
const HOSTLB_IPERF: u16 = 5301;

/// One way from the client to the backend's HTTP server and iperf3.
#[derive(Clone, Copy)]
struct Path {
    name: &'static str,
    to: &'static str,
    http: u16,
    iperf: u16,
    /// The backend's HTTP port for this path alone. The backend closes first, so it keeps each
    /// connection in TIME_WAIT for a minute; a new connection of another path that lands on one
    /// of those sockets, its timestamps on another clock, is refused and only retried a second
    /// later. The shared port made hostlb's requests per second fall round by round after
    /// HAProxy's.
    backend_http: u16,
}

const PATHS: [Path; 4] = [
    Path { name: "direct", to: BACKEND, http: 8080, iperf: IPERF_PORT, backend_http: 8080 },
    Path { name: "hostport", to: NODE, http: HOSTLB_HTTP + 2, iperf: HOSTLB_IPERF + 2, backend_http: 8083 },
    Path { name: "hostlb", to: NODE, http: HOSTLB_HTTP, iperf: HOSTLB_IPERF, backend_http: 8081 },
    Path { name: "userspace", to: NODE, http: HOSTLB_HTTP + 1, iperf: HOSTLB_IPERF + 1, backend_http: 8082 },
];

fn path(name: &str) -> Path {
    *PATHS.iter().find(|path| path.name == name).expect("a known path")
}

const ROUNDS: usize = 5;
const IPERF_SECONDS: &str = "2";
const RPS_WINDOW: Duration = Duration::from_secs(2);
const RPS_CLIENTS: usize = 4;
const PROGRAM_RUNS: usize = 15;

fn main() {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/proxy.json".into());
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

type Results = BTreeMap<&'static str, f64>;

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
    results.insert("lb_program_ms", rounded(hostlb, 3));
    results.insert("lb_program_iptables_ms", rounded(iptables, 3));
    results.insert("lb_program_ratio_vs_iptables", rounded(hostlb / iptables, 3));
}

/// `lb_hold_rss_kib`: the resident memory of the long-running container's process, and of it
/// `lb_hold_rss_anon_kib`, the part that is the process's own; the rest are pages of the
/// binary, shared through the page cache by every proxy pod on the node.
fn hold_rss(lb: &str, results: &mut Results) {
    let mut hold = Command::new(lb).arg("hold").stderr(Stdio::null()).spawn().expect("starting hostlb-lb hold");
    std::thread::sleep(Duration::from_millis(300));
    let status = std::fs::read_to_string(format!("/proc/{}/status", hold.id())).unwrap();
    let kib = |field: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(field))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
    };
    let (rss, anon) = (kib("VmRSS:"), kib("RssAnon:"));
    kill(Pid::from_raw(hold.id() as i32), Signal::SIGTERM).unwrap();
    let exit = hold.wait().unwrap();
    assert!(exit.success(), "hostlb-lb hold exits 0 on SIGTERM: {exit}");
    eprintln!("hold: {rss} KiB resident, {anon} KiB of it anonymous");
    results.insert("lb_hold_rss_kib", rss);
    results.insert("lb_hold_rss_anon_kib", anon);
}

/// The four namespaces, linked and routed, and what runs in them; all stopped and deleted on drop.
struct Bench {
    // Field order is drop order: processes and threads first, then namespaces.
    children: Vec<Child>,
    servers: Vec<StoppableThreads>,
    client: Netns,
    /// Only configured in `new`; kept so that it is deleted with the others.
    _node: Netns,
    pod: Netns,
    backend: Netns,
    haproxy_config: std::path::PathBuf,
}

impl Bench {
    fn new(lb: &str) -> Bench {
        let prefix = format!("hlb-bench-{}", std::process::id());
        let netns = |role: &str| Netns::new(format!("{prefix}-{role}"));
        let (client, node, pod, backend) = (netns("client"), netns("node"), netns("pod"), netns("backend"));
        for (peer, node_side, node_address, peer_address) in [
            (&client, "to-client", NODE, CLIENT),
            (&pod, "to-pod", "10.126.2.1", POD),
            (&backend, "to-backend", "10.126.3.1", BACKEND),
        ] {
            node.ip(&["link", "add", node_side, "type", "veth", "peer", "name", "eth0", "netns", &peer.name]);
            node.ip(&["addr", "add", &format!("{node_address}/24"), "dev", node_side]);
            node.ip(&["link", "set", node_side, "up"]);
            peer.ip(&["addr", "add", &format!("{peer_address}/24"), "dev", "eth0"]);
            peer.ip(&["link", "set", "eth0", "up"]);
            peer.ip(&["route", "add", "default", "via", node_address]);
        }
        let in_netns =
            |netns: &Netns, args: &[&str]| sh("ip", &[&["netns", "exec", netns.name.as_str()], args].concat());
        in_netns(&node, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        // Conntrack's table size is the machine's, shared by every namespace: a run's 10^5 short
        // connections, each kept 120 s in TIME_WAIT by the node and the pod, would fill it and
        // make later rounds (and anything else on the machine) drop packets.
        for netns in [&node, &pod] {
            in_netns(netns, &["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_timeout_time_wait=1"]);
        }
        // Many short connections from one address: the whole port range, and reuse of ports
        // whose connections wait in TIME_WAIT.
        in_netns(&client, &["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65000", "net.ipv4.tcp_tw_reuse=1"]);
        let hostports = [HOSTLB_HTTP, HOSTLB_IPERF, HOSTLB_HTTP + 1, HOSTLB_IPERF + 1];
        let ports = hostports.map(|port| port.to_string()).join(", ");
        let own = path("hostport");
        let portmap = format!(
            "add table ip hostport {{ chain prerouting {{ type nat hook prerouting priority dstnat; \
             ip daddr {NODE} tcp dport {{ {ports} }} dnat to {POD}; \
             ip daddr {NODE} tcp dport {} dnat to {BACKEND}:{}; \
             ip daddr {NODE} tcp dport {} dnat to {BACKEND}:{IPERF_PORT}; }}; }}",
            own.http, own.backend_http, own.iperf
        );
        in_netns(&node, &["nft", &portmap]);
        let mut init = Command::new("ip");
        init.args(["netns", "exec", &pod.name, lb, "init", "--to", BACKEND]);
        init.args(["--port", &format!("tcp:{HOSTLB_HTTP}:{}", path("hostlb").backend_http)]);
        init.args(["--port", &format!("tcp:{HOSTLB_IPERF}:{IPERF_PORT}")]);
        let output = init.output().expect("running hostlb-lb init");
        assert!(output.status.success(), "hostlb-lb init: {}", String::from_utf8_lossy(&output.stderr));

        let haproxy_config = std::env::temp_dir().join(format!("{prefix}-haproxy.cfg"));
        let listen = |name: &str, port: u16, target: u16| {
            format!("listen {name}\n  bind {POD}:{port}\n  server backend {BACKEND}:{target}\n")
        };
        let config = format!(
            "global\n  maxconn 4000\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
             timeout server 30s\n{}{}",
            listen("http", HOSTLB_HTTP + 1, path("userspace").backend_http),
            listen("iperf", HOSTLB_IPERF + 1, IPERF_PORT)
        );
        std::fs::write(&haproxy_config, config).unwrap();
        let mut bench =
            Bench { children: Vec::new(), servers: Vec::new(), client, _node: node, pod, backend, haproxy_config };
        let config = bench.haproxy_config.display().to_string();
        bench.spawn_in_pod(&["haproxy", "-db", "-f", &config]);
        let iperf_port = IPERF_PORT.to_string();
        bench.spawn_in_backend(&["iperf3", "--server", "--port", &iperf_port]);
        for path in PATHS {
            let port = path.backend_http;
            let listener =
                bench.backend.run(move || TcpListener::bind((BACKEND, port)).expect("binding an HTTP server"));
            bench.servers.push(http_server(listener));
        }
        std::thread::sleep(Duration::from_millis(500));
        bench
    }

    fn spawn_in_pod(&mut self, argv: &[&str]) {
        let name = self.pod.name.clone();
        self.spawn(&name, argv);
    }

    fn spawn_in_backend(&mut self, argv: &[&str]) {
        let name = self.backend.name.clone();
        self.spawn(&name, argv);
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

    /// One iperf3 run from the client; its receiver's rate in Gbit/s.
    fn iperf_gbps(&self, to: &str, port: u16) -> f64 {
        let port = port.to_string();
        let report = sh(
            "ip",
            &["netns", "exec", &self.client.name, "iperf3", "--json", "-c", to, "-p", &port, "-t", IPERF_SECONDS],
        );
        let report: serde_json::Value = serde_json::from_str(&report).expect("iperf3 --json prints JSON");
        report["end"]["sum_received"]["bits_per_second"].as_f64().expect("iperf3's receiver rate") / 1e9
    }

    /// HTTP/1.0 requests, each on a new connection, from `clients` threads for `window`;
    /// returns requests per second and every request's time from connect to the answer's end.
    fn http_load(&self, to: &str, port: u16, clients: usize, window: Duration) -> (f64, Vec<f64>) {
        let at: SocketAddr = format!("{to}:{port}").parse().unwrap();
        let path = format!("/run/netns/{}", self.client.name);
        let threads: Vec<JoinHandle<Vec<f64>>> = (0..clients)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    setns(File::open(&path).unwrap(), CloneFlags::CLONE_NEWNET).unwrap();
                    let deadline = Instant::now() + window;
                    let mut times = Vec::new();
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        let mut stream = TcpStream::connect(at).unwrap_or_else(|e| panic!("connect {at}: {e}"));
                        stream.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
                        let mut answer = Vec::new();
                        stream.read_to_end(&mut answer).unwrap();
                        assert!(answer.starts_with(b"HTTP/1.0 200"), "{}", String::from_utf8_lossy(&answer));
                        times.push(started.elapsed().as_secs_f64() * 1e6);
                    }
                    times
                })
            })
            .collect();
        let mut times: Vec<f64> = threads.into_iter().flat_map(|thread| thread.join().unwrap()).collect();
        times.sort_by(f64::total_cmp);
        (times.len() as f64 / window.as_secs_f64(), times)
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.haproxy_config);
    }
}

/// Threads serving one listener until dropped.
struct StoppableThreads {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for StoppableThreads {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A minimal HTTP/1.0 server: reads the request head, answers 200 and closes.
fn http_server(listener: TcpListener) -> StoppableThreads {
    listener.set_nonblocking(true).unwrap();
    let listener = Arc::new(listener);
    let stop = Arc::new(AtomicBool::new(false));
    let threads = (0..RPS_CLIENTS)
        .map(|_| {
            let (listener, stop) = (listener.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    // Woken by a connection at once (a sleep between tries would be in every
                    // request's time), and now and then to see whether to stop.
                    let mut ready = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
                    if !matches!(poll(&mut ready, PollTimeout::from(100u8)), Ok(n) if n > 0) {
                        continue;
                    }
                    // Another thread may have taken it.
                    let Ok((mut stream, _)) = listener.accept() else { continue };
                    let _ = stream.set_nonblocking(false);
                    let mut head = Vec::new();
                    let mut buf = [0u8; 512];
                    while !head.ends_with(b"\r\n\r\n") {
                        match stream.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = stream.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok");
                }
            })
        })
        .collect();
    StoppableThreads { stop, threads }
}

/// The paths interleaved round by round, so that noise hits them all alike.
fn data_path(lb: &str, results: &mut Results) {
    let bench = Bench::new(lb);
    // Warm-up: neighbours resolved, conntrack and HAProxy started.
    for path in PATHS {
        bench.http_load(path.to, path.http, 1, Duration::from_millis(200));
    }
    let mut gbps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut rps: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut latency: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for round in 0..ROUNDS {
        for Path { name, to, http, iperf, .. } in PATHS {
            let rate = bench.iperf_gbps(to, iperf);
            let (requests, _) = bench.http_load(to, http, RPS_CLIENTS, RPS_WINDOW);
            // One request at a time, so that the times are the path's, not a queue's.
            let (_, times) = bench.http_load(to, http, 1, RPS_WINDOW / 2);
            eprintln!("round {round} {name}: {rate:.2} Gbit/s, {requests:.0} req/s");
            gbps.entry(name).or_default().push(rate);
            rps.entry(name).or_default().push(requests);
            latency.entry(name).or_default().extend(times);
        }
    }
    let mut latency_at = |name: &str, p: f64| {
        let times = latency.get_mut(name).unwrap();
        times.sort_by(f64::total_cmp);
        percentile(times, p)
    };
    let (p50_direct, p99_direct) = (latency_at("direct", 0.5), latency_at("direct", 0.99));
    let (p50_hostlb, p99_hostlb) = (latency_at("hostlb", 0.5), latency_at("hostlb", 0.99));
    // A ratio is the median of the rounds' own ratios: both figures of a round share its noise.
    let ratio = |runs: &BTreeMap<&str, Vec<f64>>, of: &str, to: &str| {
        rounded(median(runs[of].iter().zip(&runs[to]).map(|(of, to)| of / to).collect()), 3)
    };
    for (key, of, to) in [
        ("dp_tcp_ratio", "hostlb", "direct"),
        ("dp_tcp_ratio_vs_hostport", "hostlb", "hostport"),
        ("dp_userspace_ratio", "hostlb", "userspace"),
    ] {
        results.insert(key, ratio(&gbps, of, to));
    }
    for (key, of, to) in [
        ("dp_rps_ratio", "hostlb", "direct"),
        ("dp_rps_ratio_vs_hostport", "hostlb", "hostport"),
        ("dp_userspace_rps_ratio", "hostlb", "userspace"),
    ] {
        results.insert(key, ratio(&rps, of, to));
    }
    for (key, path) in [
        ("dp_tcp_gbps_direct", "direct"),
        ("dp_tcp_gbps_hostport", "hostport"),
        ("dp_tcp_gbps_hostlb", "hostlb"),
        ("dp_tcp_gbps_userspace", "userspace"),
    ] {
        results.insert(key, rounded(median(gbps[path].clone()), 2));
    }
    for (key, path) in [
        ("dp_rps_direct", "direct"),
        ("dp_rps_hostport", "hostport"),
        ("dp_rps_hostlb", "hostlb"),
        ("dp_rps_userspace", "userspace"),
    ] {
        results.insert(key, median(rps[path].clone()).round());
    }
    results.insert("dp_p50_us_direct", rounded(p50_direct, 1));
    results.insert("dp_p99_us_direct", rounded(p99_direct, 1));
    results.insert("dp_p50_us_added", rounded(p50_hostlb - p50_direct, 1));
    results.insert("dp_p99_us_added", rounded(p99_hostlb - p99_direct, 1));
}
