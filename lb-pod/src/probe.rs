//! `probe`: kube-proxy's `healthCheckNodePort` check, as a readiness probe. kube-proxy answers
//! `GET /` with 200 while the node has a ready local endpoint for the Service, 503 otherwise.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use hostlb_contract::{flag, ProbeArgs, PROBE_ADDRESS_ENV};

use crate::error::Error;
use crate::port_forwarding::socket_text;

/// The whole check, connect to answer, must fit in kubelet's probe timeout (2 s).
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// Where to probe. The address is optional to clap because the controller's `ProbeArgs` has
/// none (the pod gives it in the environment); given neither way, there is nothing to probe.
pub fn target(args: &ProbeArgs) -> Result<SocketAddr, Error> {
    let address = args
        .address
        .ok_or_else(|| Error::missing(flag::ADDRESS, format!("no address given (nor {PROBE_ADDRESS_ENV})")))?;
    Ok(SocketAddr::new(address, args.port))
}

/// The request kube-proxy's health check server expects.
pub fn request(target: SocketAddr) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {}\r\nUser-Agent: hostlb-lb-probe\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        socket_text(target.ip(), target.port())
    )
}

/// The status code of an HTTP/1.x response, from its first bytes.
pub fn status_code(response: &[u8]) -> Option<u16> {
    let line_end = response.windows(2).position(|w| w == b"\r\n")?;
    let line = std::str::from_utf8(&response[..line_end]).ok()?;
    let mut parts = line.splitn(3, ' ');
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let code = parts.next()?;
    (code.len() == 3).then(|| code.parse().ok()).flatten()
}

/// Ok with the status line if the answer is 200.
pub fn check(target: SocketAddr) -> Result<String, Error> {
    let fail = |reason: String| Error::Probe { target: socket_text(target.ip(), target.port()), reason };
    let deadline = Instant::now() + TIMEOUT;
    let left = || deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let mut stream = TcpStream::connect_timeout(&target, TIMEOUT).map_err(|e| fail(format!("connecting: {e}")))?;
    stream.set_write_timeout(Some(left())).map_err(|e| fail(format!("setting a timeout: {e}")))?;
    stream.write_all(request(target).as_bytes()).map_err(|e| fail(format!("sending the request: {e}")))?;
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        stream.set_read_timeout(Some(left())).map_err(|e| fail(format!("setting a timeout: {e}")))?;
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                response.extend_from_slice(&buf[..n]);
                if response.windows(2).any(|w| w == b"\r\n") || response.len() > 8192 {
                    break;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(fail(format!("reading the answer: {e}"))),
        }
    }
    let status_line = String::from_utf8_lossy(response.split(|b| *b == b'\r').next().unwrap_or_default()).into_owned();
    match status_code(&response) {
        Some(200) => Ok(status_line),
        Some(code) => Err(fail(format!("answered {code}, not 200 ({status_line:?})"))),
        None if response.is_empty() => Err(fail("closed without answering".into())),
        None => Err(fail(format!("not an HTTP/1 answer: {status_line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_needs_an_address() {
        let address = Some("fd00::1".parse().unwrap());
        assert_eq!(target(&ProbeArgs { port: 80, address }).unwrap(), "[fd00::1]:80".parse().unwrap());
        let error = target(&ProbeArgs { port: 80, address: None }).unwrap_err();
        assert_eq!(error.exit_code(), 2);
        assert_eq!(error.to_string(), "--address: no address given (nor HOSTLB_PROBE_ADDRESS)");
    }

    #[test]
    fn request_is_http_1_1_with_a_host_header() {
        let text = request("[fd00::1]:10256".parse().unwrap());
        assert!(text.starts_with("GET / HTTP/1.1\r\n"));
        assert!(text.contains("\r\nHost: [fd00::1]:10256\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn status_code_reads_the_status_line() {
        assert_eq!(status_code(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.0 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(status_code(b"HTTP/1.1 200\r\n"), Some(200));
        assert_eq!(status_code(b"HTTP/1.1 200 OK"), None, "an incomplete line");
        assert_eq!(status_code(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(status_code(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(status_code(b"\xff\xfe\r\n"), None);
    }
}
