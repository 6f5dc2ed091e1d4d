//! The two programs as the cluster runs them: answering on the ports from the environment and
//! leaving with status 0 on SIGTERM.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A program under test, killed and reaped when dropped, also by a test that panics: left
/// running, it would keep the test run's output pipe open, and whoever reads it would wait forever.
struct Running {
    child: Child,
}

impl Running {
    fn start(command: &mut Command) -> Running {
        let child = command.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("starting {command:?}: {e}"));
        Running { child }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns the exit status, which must come within 5 s.
    fn terminate(&mut self) -> ExitStatus {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM).expect("signal our own child");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "no exit within 5 s of SIGTERM");
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Until the program waits for SIGTERM, the signal would end it by its default action, with no
/// exit status at all. The kernel names the system call a thread sleeps in; the blocked set in
/// /proc cannot tell, because a thread in sigwait has the awaited signals unblocked meanwhile.
fn wait_until_waiting_for_signals(pid: u32) {
    // x86_64 numbering, the one architecture the images are built for.
    const RT_SIGTIMEDWAIT: &str = "128";
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if syscall.split_whitespace().next() == Some(RT_SIGTIMEDWAIT) {
            return;
        }
        thread::sleep(Duration::from_millis(10));
    }
    panic!("pid {pid} was not waiting for a signal within 5 s");
}

/// A port that was free a moment ago, for a program that takes its port from the environment.
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap().local_addr().unwrap().port()
}

fn connect_within(port: u16, timeout: Duration) -> TcpStream {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)) {
            Ok(stream) => return stream,
            Err(_) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
            Err(err) => panic!("echo-server never listened on {port}: {err}"),
        }
    }
}

#[test]
fn pause_exits_zero_on_sigterm() {
    let mut pause = Running::start(&mut Command::new(env!("CARGO_BIN_EXE_pause")));
    wait_until_waiting_for_signals(pause.pid());
    assert!(pause.terminate().success());
}

#[test]
fn echo_server_answers_http_and_udp_then_exits_zero_on_sigterm() {
    let (http_port, udp_port) = (free_port(), free_port());
    let mut echo_server = Running::start(
        Command::new(env!("CARGO_BIN_EXE_echo-server"))
            .env("ECHO_HTTP_PORT", http_port.to_string())
            .env("ECHO_UDP_PORT", udp_port.to_string())
            .env("POD_NAME", "echo-1")
            .env("NODE_NAME", "node-2"),
    );

    let mut stream = connect_within(http_port, Duration::from_secs(5));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let client_port = stream.local_addr().unwrap().port();
    stream.write_all(b"GET / HTTP/1.1\r\nHost: echo\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.ends_with(&format!("\r\n\r\npod=echo-1 node=node-2 client=127.0.0.1:{client_port}\n")), "{answer}");

    let udp = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    udp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    udp.send_to(b"ping\n", (Ipv4Addr::LOCALHOST, udp_port)).unwrap();
    let mut buffer = [0u8; 256];
    let n = udp.recv(&mut buffer).unwrap();
    let udp_client_port = udp.local_addr().unwrap().port();
    assert_eq!(
        std::str::from_utf8(&buffer[..n]).unwrap(),
        format!("pod=echo-1 node=node-2 client=127.0.0.1:{udp_client_port}\n")
    );

    assert!(echo_server.terminate().success());
}
