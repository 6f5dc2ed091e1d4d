//! The echo backend's protocol: every request, HTTP or UDP, is answered with one line that says
//! which pod on which node saw which client address, so a test can tell which path a packet took.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a client may take to send its request head, and again to close its end after the
/// answer: a client that stalls must not hold a thread for good.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_HEAD: usize = 16 * 1024;

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
    read_request_head(&mut stream)?;
    let body = identity.answer(client);
    let response = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())?;
    close_after_client(&mut stream)
}

/// Reads up to the blank line that ends the request head; the body, if any, is not needed.
fn read_request_head(stream: &mut TcpStream) -> io::Result<()> {
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = read_before(stream, deadline, &mut buffer)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed before the request ended"));
        }
        head.extend_from_slice(&buffer[..n]);
        if head.len() > MAX_REQUEST_HEAD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("request head over {MAX_REQUEST_HEAD} bytes"),
            ));
        }
    }
    Ok(())
}

/// A socket closed with input still unread resets the connection, and the reset can destroy the
/// answer before the client has read it. So our end is shut for writing, which tells the client
/// the answer is complete, and whatever it still sends (a body, another request) is dropped until
/// it closes its end.
fn close_after_client(stream: &mut TcpStream) -> io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let mut buffer = [0u8; 4096];
    while read_before(stream, deadline, &mut buffer)? > 0 {}
    Ok(())
}

fn read_before(stream: &mut TcpStream, deadline: Instant, buffer: &mut [u8]) -> io::Result<usize> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "the client took too long"));
    }
    stream.set_read_timeout(Some(left))?;
    stream.read(buffer)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_larger_than_its_head_still_gets_the_whole_answer() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let identity = Arc::new(Identity { pod: "echo-1".into(), node: "node-2".into() });
        thread::spawn(move || serve_http(listener, identity));

        // Larger than the socket buffers: most of it arrives after the answer was sent.
        let body = vec![b'x'; 1 << 20];
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let client = stream.local_addr().unwrap();
        write!(stream, "POST / HTTP/1.1\r\nHost: echo\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
        stream.write_all(&body).unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        assert!(answer.ends_with(&format!("\r\n\r\npod=echo-1 node=node-2 client={client}\n")), "{answer}");
    }
}
