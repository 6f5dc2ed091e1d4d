//! `probe`: kube-proxy's `healthCheckNodePort` check, as a readiness probe. kube-proxy answers
//! `GET /` with 200 while the node has a ready local endpoint for the Service, 503 otherwise.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::plan::socket_text;

pub const ARG_ADDRESS: &str = "--address";
pub const ARG_PORT: &str = "--port";

/// The whole check, connect to answer, must fit in kubelet's probe timeout (2 s).
pub const TIMEOUT: Duration = Duration::from_millis(1500);

/// Where to probe: the first address of a comma list (the downward API's `status.hostIPs`
/// form), an IPv6 address with or without brackets.
pub fn target(address: Option<&str>, port: Option<&str>) -> Result<SocketAddr, Error> {
    let address = address.ok_or_else(|| Error::missing(ARG_ADDRESS, "no address given (nor HOSTLB_PROBE_ADDRESS)"))?;
    let first = address.split(',').map(str::trim).find(|a| !a.is_empty()).unwrap_or_default();
    let unbracketed = first.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(first);
    let ip: IpAddr =
        unbracketed.parse().map_err(|_| Error::bad(ARG_ADDRESS, address, "not an IPv4 or IPv6 address"))?;
    let port = port.ok_or_else(|| Error::missing(ARG_PORT, "no port given (nor HOSTLB_PROBE_PORT)"))?;
    let port = port
        .trim()
        .parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::bad(ARG_PORT, port, "the port must be 1 to 65535"))?;
    Ok(SocketAddr::new(ip, port))
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
    fn target_takes_the_first_address_of_a_list() {
        assert_eq!(target(Some("10.0.0.1,fd00::1"), Some("32100")).unwrap(), "10.0.0.1:32100".parse().unwrap());
        assert_eq!(target(Some(" fd00::1 "), Some("80")).unwrap(), "[fd00::1]:80".parse().unwrap());
        assert_eq!(target(Some("[fd00::1]"), Some("80")).unwrap(), "[fd00::1]:80".parse().unwrap());
    }

    #[test]
    fn target_needs_an_address_and_a_port() {
        let message = |a: Option<&str>, p: Option<&str>| {
            let error = target(a, p).unwrap_err();
            assert_eq!(error.exit_code(), 2);
            error.to_string()
        };
        assert!(message(None, Some("80")).starts_with("--address: no address"));
        assert_eq!(message(Some("node-1"), Some("80")), r#"--address "node-1": not an IPv4 or IPv6 address"#);
        assert!(message(Some(""), Some("80")).contains("not an IPv4"));
        assert!(message(Some("10.0.0.1"), None).starts_with("--port: no port"));
        assert_eq!(message(Some("10.0.0.1"), Some("0")), r#"--port "0": the port must be 1 to 65535"#);
        assert!(message(Some("10.0.0.1"), Some("http")).contains("1 to 65535"));
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
