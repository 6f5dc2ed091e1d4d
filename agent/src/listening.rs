//! The ports that processes of the node hold on its addresses: TCP sockets listening and UDP
//! sockets bound, as the kernel lists them in `/proc/net` of the agent's network namespace,
//! which is the node's. A node agent takes no port a process of the node holds, as the scheduler
//! gives no proxy pod a port another pod of the node holds.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostlb_contract::Protocol;

/// The kernel's state of a listening TCP socket (`TCP_LISTEN`); UDP sockets count in any state.
const TCP_LISTEN: &str = "0A";

/// The ports held on one of `addresses`, or on every address, read from the node's `/proc/net`.
pub fn held_ports(addresses: &[IpAddr]) -> std::io::Result<BTreeSet<(Protocol, u16)>> {
    let mut held = BTreeSet::new();
    for (file, protocol) in
        [("tcp", Protocol::Tcp), ("tcp6", Protocol::Tcp), ("udp", Protocol::Udp), ("udp6", Protocol::Udp)]
    {
        let table = match std::fs::read_to_string(format!("/proc/net/{file}")) {
            Ok(table) => table,
            // A kernel without IPv6 has no tcp6 or udp6.
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        held.extend(
            sockets(&table, protocol)
                .filter(|(address, _)| address.is_unspecified() || addresses.contains(address))
                .map(|(_, port)| (protocol, port)),
        );
    }
    Ok(held)
}

/// The local address and port of each socket of a `/proc/net/{tcp,tcp6,udp,udp6}` table that
/// holds a port: for TCP, those listening.
fn sockets(table: &str, protocol: Protocol) -> impl Iterator<Item = (IpAddr, u16)> + '_ {
    table.lines().skip(1).filter_map(move |line| {
        let mut fields = line.split_whitespace().skip(1);
        let (local, _remote, state) = (fields.next()?, fields.next()?, fields.next()?);
        if protocol == Protocol::Tcp && state != TCP_LISTEN {
            return None;
        }
        let (address, port) = local.split_once(':')?;
        Some((kernel_address(address)?, u16::from_str_radix(port, 16).ok()?))
    })
}

/// An address as `/proc/net` writes it: the bytes of each 32-bit word in the host's order, which
/// on every architecture Kubernetes runs on is little-endian.
fn kernel_address(hex: &str) -> Option<IpAddr> {
    let words: Vec<u32> = (0..hex.len() / 8)
        .map(|word| u32::from_str_radix(hex.get(word * 8..word * 8 + 8)?, 16).ok())
        .collect::<Option<_>>()?;
    let bytes: Vec<u8> = words.iter().flat_map(|word| word.to_le_bytes()).collect();
    match bytes.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        16 => <[u8; 16]>::try_from(bytes).ok().map(|octets| IpAddr::V6(Ipv6Addr::from(octets))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0000000000000000 100 0 0 10 0
   1: 0100007F:0035 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2 1 0000000000000000 100 0 0 10 0
   2: 0B00FA0A:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3 1 0000000000000000 100 0 0 10 0
   3: 0100FA0A:D431 0200FA0A:01BB 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0000000000000000 100 0 0 10 0
";
    const UDP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  0: 00000000000000000000000000000000:14E9 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 5 2 0000000000000000 0
  1: B80D0120000000000000000001000000:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 6 2 0000000000000000 0
";

    #[test]
    fn listening_tcp_and_bound_udp_sockets_are_read_with_their_addresses() {
        let tcp: Vec<(IpAddr, u16)> = sockets(TCP, Protocol::Tcp).collect();
        assert_eq!(
            tcp,
            [
                ("0.0.0.0".parse().unwrap(), 80),
                ("127.0.0.1".parse().unwrap(), 53),
                ("10.250.0.11".parse().unwrap(), 8080)
            ],
            "the connection on 54321 listens on nothing"
        );
        let udp: Vec<(IpAddr, u16)> = sockets(UDP6, Protocol::Udp).collect();
        assert_eq!(udp, [("::".parse().unwrap(), 5353), ("2001:db8::1".parse().unwrap(), 53)]);
    }
}
