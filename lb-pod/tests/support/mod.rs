//! Network-namespace fixtures for the lb-pod's data-path tests.
//!
//! Every test builds its own namespaces (`hlb-<pid>-<n>-<role>`), deleted by a guard even when
//! the test panics. Traffic never leaves them. These tests need root and iproute2; without
//! them they fail, on purpose: a data-path test that skips would pass without proving anything.

#![allow(dead_code)] // each test file uses a different part

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hostlb_contract::{FAMILIES_ENV, PORTS_ENV, PROBE_ADDRESS_ENV, PROBE_PORT_ENV, SOURCE_RANGES_ENV, TO_ENV};
use nix::sched::{setns, CloneFlags};

pub const LB: &str = env!("CARGO_BIN_EXE_hostlb-lb");

/// Environment variables the binary reads; cleared so that the caller's environment cannot
/// change a test.
const LB_ENV: [&str; 6] = [PORTS_ENV, TO_ENV, FAMILIES_ENV, SOURCE_RANGES_ENV, PROBE_PORT_ENV, PROBE_ADDRESS_ENV];

/// Fails the test unless it runs as root with `ip` available.
pub fn require_root_and_ip() {
    static CHECKED: Once = Once::new();
    CHECKED.call_once(|| {
        assert!(
            nix::unistd::geteuid().is_root(),
            "the lb-pod's data-path tests create network namespaces and must run as root"
        );
        let ip = Command::new("ip").arg("-V").output();
        assert!(
            matches!(&ip, Ok(output) if output.status.success()),
            "the lb-pod's data-path tests need iproute2's `ip` on PATH: {ip:?}"
        );
    });
}

/// Runs a command that must succeed; panics with its output otherwise.
pub fn sh(program: &str, args: &[&str]) -> String {
    let output = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("running {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// A unique number per test in this process, for names and subnets.
fn next_id() -> u32 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    NEXT.fetch_add(1, Ordering::SeqCst)
}

/// A named network namespace, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(name: String) -> Netns {
        require_root_and_ip();
        sh("ip", &["netns", "add", &name]);
        let netns = Netns { name };
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// A lone namespace for tests that need no links.
    pub fn lone(role: &str) -> Netns {
        Netns::new(format!("hlb-{}-{}-{role}", std::process::id(), next_id()))
    }

    pub fn ip(&self, args: &[&str]) {
        sh("ip", &[&["-n", self.name.as_str()], args].concat());
    }

    /// Runs `f` on a thread that has entered this namespace; sockets made there stay in it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("entering {path}: {e}"));
            f()
        })
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// `hostlb-lb ARGS` inside this namespace, with a clean environment plus `env`.
    pub fn lb_command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, LB]).args(args);
        for name in LB_ENV {
            command.env_remove(name);
        }
        command.envs(env.iter().copied());
        command
    }

    pub fn lb(&self, args: &[&str]) -> Output {
        self.lb_command(args, &[]).output().expect("running hostlb-lb")
    }

    /// `hostlb-lb ARGS`, which must succeed.
    pub fn lb_ok(&self, args: &[&str]) -> String {
        let output = self.lb(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "hostlb-lb {} failed ({}): {stderr}", args.join(" "), output.status);
        stderr
    }

    /// `nft list ruleset` in this namespace: used to inspect, never to program.
    pub fn ruleset(&self) -> String {
        let output = Command::new("ip")
            .args(["netns", "exec", &self.name, "nft", "list", "ruleset"])
            .output()
            .expect("running nft (needed to inspect the rules)");
        assert!(output.status.success(), "nft list ruleset: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// client --veth-- pod --veth-- backend, dual-stack, with the pod's namespace as the router.
pub struct Topology {
    // Field order is drop order: servers first, then namespaces.
    servers: Vec<Server>,
    /// How many UDP datagrams each server address has received.
    datagrams: Vec<(SocketAddr, Arc<AtomicUsize>)>,
    /// How many TCP connections each server address has accepted.
    connections: Vec<(SocketAddr, Arc<AtomicUsize>)>,
    pub client: Netns,
    pub pod: Netns,
    pub backend: Netns,
    front: u32,
    back: u32,
}

impl Topology {
    pub fn new() -> Topology {
        require_root_and_ip();
        let id = next_id();
        let prefix = format!("hlb-{}-{id}", std::process::id());
        let client = Netns::new(format!("{prefix}-client"));
        let pod = Netns::new(format!("{prefix}-pod"));
        let backend = Netns::new(format!("{prefix}-backend"));
        // Two /24s and two /64s per topology, distinct between the tests of one run.
        let (front, back) = ((id * 2) % 250, (id * 2 + 1) % 250);
        let topology = Topology {
            servers: Vec::new(),
            datagrams: Vec::new(),
            connections: Vec::new(),
            client,
            pod,
            backend,
            front,
            back,
        };
        topology.client.ip(&[
            "link",
            "add",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "front",
            "netns",
            &topology.pod.name,
        ]);
        topology.pod.ip(&[
            "link",
            "add",
            "back",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &topology.backend.name,
        ]);
        let link = |netns: &Netns, dev: &str, v4: IpAddr, v6: IpAddr| {
            netns.ip(&["addr", "add", &format!("{v4}/24"), "dev", dev]);
            netns.ip(&["addr", "add", &format!("{v6}/64"), "dev", dev, "nodad"]);
            netns.ip(&["link", "set", dev, "up"]);
        };
        link(&topology.client, "eth0", topology.client_v4(), topology.client_v6());
        link(&topology.pod, "front", topology.pod_v4(), topology.pod_v6());
        link(&topology.pod, "back", topology.pod_back_v4(), topology.pod_back_v6());
        link(&topology.backend, "eth0", topology.backend_v4(), topology.backend_v6());
        // Without masquerade, answers would still come back through the pod, showing the
        // client's address: a clear failure rather than a timeout.
        for (netns, v4, v6) in [
            (&topology.client, topology.pod_v4(), topology.pod_v6()),
            (&topology.backend, topology.pod_back_v4(), topology.pod_back_v6()),
        ] {
            netns.ip(&["route", "add", "default", "via", &v4.to_string()]);
            netns.ip(&["-6", "route", "add", "default", "via", &v6.to_string()]);
        }
        // On fresh veths a neighbour solicitation that a peer sends *to* the pod first goes
        // unanswered here (the pod counts Ip6InNoRoutes) and is retried after a second, which
        // would make each test's first IPv6 exchange take 1 s. Resolving from the pod's side
        // first (a connection to a closed port: refused in a millisecond) avoids that.
        for peer in [topology.client_v6(), topology.backend_v6()] {
            let refused =
                topology.pod.run(move || TcpStream::connect_timeout(&SocketAddr::new(peer, 9), ANSWER_TIMEOUT));
            assert!(refused.is_err(), "nothing listens on port 9 of {peer}");
        }
        topology
    }

    fn v4(subnet: u32, host: u8) -> IpAddr {
        format!("10.123.{subnet}.{host}").parse().unwrap()
    }

    fn v6(subnet: u32, host: u8) -> IpAddr {
        format!("fd00:123:{subnet:x}::{host}").parse().unwrap()
    }

    pub fn client_v4(&self) -> IpAddr {
        Self::v4(self.front, 2)
    }
    pub fn client_v6(&self) -> IpAddr {
        Self::v6(self.front, 2)
    }
    /// The pod's address as clients see it.
    pub fn pod_v4(&self) -> IpAddr {
        Self::v4(self.front, 1)
    }
    pub fn pod_v6(&self) -> IpAddr {
        Self::v6(self.front, 1)
    }
    /// The pod's address as the backend sees it, once masqueraded.
    pub fn pod_back_v4(&self) -> IpAddr {
        Self::v4(self.back, 1)
    }
    pub fn pod_back_v6(&self) -> IpAddr {
        Self::v6(self.back, 1)
    }
    pub fn backend_v4(&self) -> IpAddr {
        Self::v4(self.back, 2)
    }
    pub fn backend_v6(&self) -> IpAddr {
        Self::v6(self.back, 2)
    }

    /// Starts a TCP and a UDP echo-the-peer server on the backend, for both families.
    pub fn serve(&mut self, port: u16) {
        for address in [self.backend_v4(), self.backend_v6()] {
            let at = SocketAddr::new(address, port);
            let (datagrams, connections) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
            let counted = (datagrams.clone(), connections.clone());
            let server = self.backend.run(move || Server::start(at, counted.0, counted.1));
            self.servers.push(server);
            self.datagrams.push((at, datagrams));
            self.connections.push((at, connections));
        }
    }

    /// How many UDP datagrams the server at `at` has received so far.
    pub fn datagrams_to(&self, at: SocketAddr) -> usize {
        count_at(&self.datagrams, at)
    }

    /// How many TCP connections the server at `at` has accepted so far.
    pub fn connections_to(&self, at: SocketAddr) -> usize {
        count_at(&self.connections, at)
    }

    /// Starts sending to `to` from the client, every few milliseconds from one socket: a UDP flow
    /// that never goes idle. It stops when the returned guard is dropped.
    pub fn udp_stream(&self, to: SocketAddr) -> UdpStream {
        let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
        let socket = self.client.run(move || bind_udp(SocketAddr::new(any, 0)).expect("binding the client's socket"));
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let thread = std::thread::spawn(move || {
            while !thread_stop.load(Ordering::SeqCst) {
                // Unconnected, so an ICMP error for one datagram does not stop the next.
                let _ = socket.send_to(b"still here", to);
                std::thread::sleep(STREAM_INTERVAL);
            }
        });
        UdpStream(Server { stop, threads: vec![thread] })
    }

    /// Asks over TCP from the client: Ok(the address the backend saw), or why not.
    pub fn tcp(&self, to: IpAddr, port: u16) -> Result<String, String> {
        self.client.run(move || tcp_ask(SocketAddr::new(to, port)))
    }

    /// Asks over UDP from the client: Ok(the address the backend saw), or why not.
    pub fn udp(&self, to: IpAddr, port: u16) -> Result<String, String> {
        self.udp_from(0, to, port)
    }

    /// `udp`, from the client's port `source_port` (0: any).
    pub fn udp_from(&self, source_port: u16, to: IpAddr, port: u16) -> Result<String, String> {
        self.client.run(move || udp_ask(source_port, SocketAddr::new(to, port)))
    }
}

fn count_at(counts: &[(SocketAddr, Arc<AtomicUsize>)], at: SocketAddr) -> usize {
    let (_, count) = counts.iter().find(|(server, _)| *server == at).expect("a server at that address");
    count.load(Ordering::SeqCst)
}

const ANSWER_TIMEOUT: Duration = Duration::from_millis(700);
const STREAM_INTERVAL: Duration = Duration::from_millis(5);

/// A client's UDP flow from `Topology::udp_stream`, stopped on drop.
pub struct UdpStream(Server);

/// Asks over TCP from the calling thread's namespace: Ok(the address the server saw), or why not.
pub fn tcp_ask(to: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect_timeout(&to, ANSWER_TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    stream.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).map_err(|e| format!("read: {e}"))?;
    Ok(answer.trim().to_string())
}

fn udp_ask(source_port: u16, to: SocketAddr) -> Result<String, String> {
    let any: IpAddr = if to.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
    let socket = bind_udp(SocketAddr::new(any, source_port)).map_err(|e| format!("bind: {e}"))?;
    socket.set_read_timeout(Some(ANSWER_TIMEOUT)).unwrap();
    socket.send_to(b"who am i", to).map_err(|e| format!("send: {e}"))?;
    let mut buf = [0u8; 256];
    let (len, from) = socket.recv_from(&mut buf).map_err(|e| format!("recv: {e}"))?;
    if from != to {
        return Err(format!("answer from {from}, not {to}"));
    }
    Ok(String::from_utf8_lossy(&buf[..len]).trim().to_string())
}

/// A fixed port that this thread has just closed can still be taken for a moment: a child that a
/// parallel test forked meanwhile keeps a copy of the socket until its exec closes it.
fn bind_udp(at: SocketAddr) -> std::io::Result<UdpSocket> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        match UdpSocket::bind(at) {
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            bound => return bound,
        }
    }
}

/// A server thread that answers every TCP connection and UDP datagram with the peer's address;
/// stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Server {
    /// Must run inside the namespace the sockets belong to.
    fn start(at: SocketAddr, datagrams: Arc<AtomicUsize>, connections: Arc<AtomicUsize>) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let tcp = TcpListener::bind(at).unwrap_or_else(|e| panic!("binding tcp {at}: {e}"));
        tcp.set_nonblocking(true).unwrap();
        let udp = UdpSocket::bind(at).unwrap_or_else(|e| panic!("binding udp {at}: {e}"));
        udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        let tcp_stop = stop.clone();
        let tcp_thread = std::thread::spawn(move || {
            while !tcp_stop.load(Ordering::SeqCst) {
                match tcp.accept() {
                    Ok((mut stream, peer)) => {
                        connections.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.set_nonblocking(false);
                        let _ = writeln!(stream, "{}", peer.ip());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        let udp_stop = stop.clone();
        let udp_thread = std::thread::spawn(move || {
            let mut buf = [0u8; 256];
            while !udp_stop.load(Ordering::SeqCst) {
                if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                    datagrams.fetch_add(1, Ordering::SeqCst);
                    let _ = udp.send_to(peer.ip().to_string().as_bytes(), peer);
                }
            }
        });
        Server { stop, threads: vec![tcp_thread, udp_thread] }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// A one-answer-fits-all HTTP server on 127.0.0.1 inside `netns`; returns its port.
pub fn http_server(netns: &Netns, status_line: &'static str) -> (u16, Server) {
    let listener = netns.run(|| TcpListener::bind("127.0.0.1:0").expect("binding the HTTP server"));
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::spawn(move || {
        while !thread_stop.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((stream, _)) => {
                    let _ = stream.set_nonblocking(false);
                    let mut reader = BufReader::new(stream);
                    // Read the request head, then answer as kube-proxy's health server does.
                    let mut line = String::new();
                    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                        line.clear();
                    }
                    let body = r#"{"service":{"namespace":"shop","name":"web"},"localEndpoints":1}"#;
                    let mut stream = reader.into_inner();
                    let _ = write!(
                        stream,
                        "{status_line}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    });
    (port, Server { stop, threads: vec![thread] })
}

/// A started `hostlb-lb` process with its stderr read line by line.
pub struct Running {
    pub child: Child,
    stderr: BufReader<std::process::ChildStderr>,
    pub log: String,
}

impl Running {
    /// A binary copied just before is briefly busy while a child that a parallel test forked
    /// meanwhile still has the copy's file open until its exec closes it; that passes.
    pub fn spawn(mut command: Command) -> Running {
        command.stdout(Stdio::null()).stderr(Stdio::piped());
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut child = loop {
            match command.spawn() {
                Err(e) if e.kind() == ErrorKind::ExecutableFileBusy && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                started => break started.expect("starting hostlb-lb"),
            }
        };
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Running { child, stderr, log: String::new() }
    }

    /// Reads stderr until a line containing `text`; panics if the process ends first.
    pub fn wait_for_line(&mut self, text: &str) {
        loop {
            let mut line = String::new();
            let read = self.stderr.read_line(&mut line).expect("reading hostlb-lb's stderr");
            self.log.push_str(&line);
            if read == 0 {
                panic!("hostlb-lb ended before logging {text:?}: {}", self.log);
            }
            if line.contains(text) {
                return;
            }
        }
    }

    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signalling our own child");
    }

    /// Waits at most `timeout` for the process to end.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for hostlb-lb") {
                let mut rest = String::new();
                let _ = self.stderr.read_to_string(&mut rest);
                self.log.push_str(&rest);
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("hostlb-lb did not exit within {timeout:?}: {}", self.log);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Only our own child, and only if a failed test left it running.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
