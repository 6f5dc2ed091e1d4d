//! The echo backend's protocol: every request, HTTP or UDP, is answered with one line that says
//! which pod on which node saw which client address, so a test can tell which path a packet took.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

/// Who answers: from the pod's downward-API environment.
pub struct Identity {
    pub pod: String,
    pub node: String,
}

impl Identity {
    pub fn from_env() -> Identity {
        let var = |key: &str| std::env::var(key).unwrap_or_else(|_| "unknown".into());
        Identity { pod: var("POD_NAME"), node: var("NODE_NAME") }
    }

    pub fn answer(&self, client: SocketAddr) -> String {
        format!("pod={} node={} client={client}\n", self.pod, self.node)
    }
}

pub fn port_from_env(key: &str, default: u16) -> Result<u16, String> {
    match std::env::var(key) {
        Ok(text) => text.parse().map_err(|_| format!("{key}={text:?} is not a port number")),
        Err(_) => Ok(default),
    }
}

pub fn bind_tcp(port: u16) -> io::Result<TcpListener> {
    TcpListener::bind((Ipv4Addr::UNSPECIFIED, port))
}

pub fn bind_udp(port: u16) -> io::Result<UdpSocket> {
    UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port))
}

/// One thread per connection: the tests send a handful of requests, and a slow client must not
/// hold up the next one.
pub fn serve_http(listener: TcpListener, identity: Arc<Identity>) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                let identity = Arc::clone(&identity);
                thread::spawn(move || {
                    if let Err(err) = answer_http(stream, &identity) {
                        eprintln!("echo-server: HTTP: {err}");
                    }
                });
            }
            Err(err) => eprintln!("echo-server: accept: {err}"),
        }
    }
}

fn answer_http(mut stream: TcpStream, identity: &Identity) -> io::Result<()> {
    let client = stream.peer_addr()?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    read_request_head(&mut stream)?;
    let body = identity.answer(client);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

/// Reads up to the blank line that ends the request head; the body, if any, is not needed.
fn read_request_head(stream: &mut TcpStream) -> io::Result<()> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buffer)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the request ended"));
        }
        head.extend_from_slice(&buffer[..n]);
        if head.len() > 16 * 1024 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "request head over 16 KiB"));
        }
    }
    Ok(())
}

pub fn serve_udp(socket: UdpSocket, identity: Arc<Identity>) {
    let mut buffer = [0u8; 2048];
    loop {
        match socket.recv_from(&mut buffer) {
            Ok((_, client)) => {
                if let Err(err) = socket.send_to(identity.answer(client).as_bytes(), client) {
                    eprintln!("echo-server: UDP reply to {client}: {err}");
                }
            }
            Err(err) => eprintln!("echo-server: UDP receive: {err}"),
        }
    }
}
