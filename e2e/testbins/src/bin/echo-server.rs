//! The end-to-end backend: HTTP on ECHO_HTTP_PORT (8080) and UDP on ECHO_UDP_PORT (8081), each
//! answered with `pod=<POD_NAME> node=<NODE_NAME> client=<ip>:<port>`; exits 0 on SIGTERM.

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;

use hostlb_testbins::echo::{self, Identity};
use hostlb_testbins::signals::Termination;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("echo-server: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    // First, so that the server threads inherit the blocked signals.
    let termination = Termination::block().map_err(|e| format!("blocking signals: {e}"))?;
    let http_port = echo::port_from_env("ECHO_HTTP_PORT", 8080)?;
    let udp_port = echo::port_from_env("ECHO_UDP_PORT", 8081)?;
    let listener = echo::bind_tcp(http_port).map_err(|e| format!("HTTP port {http_port}: {e}"))?;
    let socket = echo::bind_udp(udp_port).map_err(|e| format!("UDP port {udp_port}: {e}"))?;
    let identity = Arc::new(Identity::from_env());
    eprintln!("echo-server: pod={} node={} http={http_port} udp={udp_port}", identity.pod, identity.node);

    let http_identity = Arc::clone(&identity);
    thread::spawn(move || echo::serve_http(listener, http_identity));
    thread::spawn(move || echo::serve_udp(socket, identity));

    let signal = termination.wait().map_err(|e| format!("waiting for a signal: {e}"))?;
    eprintln!("echo-server: signal {signal}, exiting");
    Ok(())
}
