//! Conntrack over netlink (`linux/netfilter/nfnetlink_conntrack.h`): a dump of every entry,
//! the deletion of one, and which flows a change of destinations leaves stale. Pure, like
//! `netlink`, whose framing it shares; the socket lives in `kernel`.
//!
//! NAT is decided on a flow's first packet, and conntrack keeps that decision for as long as
//! packets keep coming. A UDP client that keeps sending therefore stays with the backend the old
//! rules chose, even once that backend is gone, and a flow that arrived while a port had no
//! backend stays un-NATed (where conntrack tracks it: the source filter's `ct direction` keeps
//! it on in a namespace without any NAT rule). Deleting such a flow's entry makes its next
//! datagram a first packet, which the rules now in place send where new flows go.
//!
//! TCP and SCTP flows are left alone, as kube-proxy leaves them: an endpoint that leaves the
//! ready set often still serves the connections it has (a pod that drains as it terminates), and
//! a connection whose backend is really gone fails, and its client reconnects.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hostlb_contract::{Family, Protocol};
use nix::errno::Errno;

use crate::netlink::{
    attributes, messages, nfproto, parse_error, Reply, Writer, AF_UNSPEC, NLMSG_DONE, NLMSG_ERROR, NLM_F_ACK,
    NLM_F_DUMP, NLM_F_REQUEST,
};
use crate::port_forwarding::PortForwarding;

const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// In CTA_STATUS (`linux/netfilter/nf_conntrack_common.h`): the destination was rewritten.
const IPS_DST_NAT: u32 = 1 << 5;

/// One direction of a conntrack entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuple {
    pub source: SocketAddr,
    pub destination: SocketAddr,
}

/// A conntrack entry of a protocol with ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    /// The IP protocol number.
    pub protocol: u8,
    /// As the flow's first packet came, before NAT: the key the kernel deletes by.
    pub original: Tuple,
    /// As answers come back: its source is where DNAT sent the flow.
    pub reply: Tuple,
    /// Whether the destination was rewritten.
    pub destination_nat: bool,
    /// The kernel's id of the entry: a delete that names it cannot remove a newer entry of the
    /// same flow, made by the rules now in place after the dump.
    pub id: u32,
}

/// Whether `flow` is a UDP flow to a port `forwarding` listens on that its rules would not make
/// anew: DNATed to a backend that the port no longer has, or not DNATed at all although the
/// port now has backends (it arrived while it had none).
pub fn is_stale(forwarding: &PortForwarding, flow: &Flow) -> bool {
    let listen = flow.original.destination.port();
    let udp = Protocol::Udp;
    if flow.protocol != udp.number() || !forwarding.ports.iter().any(|p| (p.protocol, p.listen) == (udp, listen)) {
        return false;
    }
    let family = Family::of(&flow.original.destination.ip());
    let forwards = forwarding.forwards.get(&family).into_iter().flatten();
    let backends = forwards.filter(|f| (f.protocol, f.listen) == (udp, listen)).flat_map(|f| &f.backends);
    if flow.destination_nat {
        !backends.clone().any(|backend| *backend == flow.reply.source)
    } else {
        backends.count() > 0
    }
}

fn message(kind: u16) -> u16 {
    (NFNL_SUBSYS_CTNETLINK << 8) | kind
}

/// A request for every conntrack entry of both families.
pub fn encode_dump(seq: u32) -> Vec<u8> {
    let mut w = Writer::default();
    let start = w.begin(message(IPCTNL_MSG_CT_GET), NLM_F_REQUEST | NLM_F_DUMP, seq, AF_UNSPEC, 0);
    w.end(start);
    w.buf
}

/// One acknowledged delete per flow, by its original tuple and its id; the flow at index `i`
/// gets the sequence number `first + i`.
pub fn encode_deletes(flows: &[Flow], first: u32) -> Vec<u8> {
    let mut w = Writer::default();
    for (index, flow) in flows.iter().enumerate() {
        let seq = first.wrapping_add(index as u32);
        let family = nfproto(Family::of(&flow.original.source.ip()));
        let start = w.begin(message(IPCTNL_MSG_CT_DELETE), NLM_F_REQUEST | NLM_F_ACK, seq, family, 0);
        write_tuple(&mut w, CTA_TUPLE_ORIG, flow.protocol, &flow.original);
        w.attr_be32(CTA_ID, flow.id);
        w.end(start);
    }
    w.buf
}

fn write_tuple(w: &mut Writer, kind: u16, protocol: u8, tuple: &Tuple) {
    let nest = w.nest(kind);
    let ip = w.nest(CTA_TUPLE_IP);
    let (source, destination) = match tuple.source {
        SocketAddr::V4(_) => (CTA_IP_V4_SRC, CTA_IP_V4_DST),
        SocketAddr::V6(_) => (CTA_IP_V6_SRC, CTA_IP_V6_DST),
    };
    w.attr(source, &hostlb_contract::address_bytes(&tuple.source.ip()));
    w.attr(destination, &hostlb_contract::address_bytes(&tuple.destination.ip()));
    w.end_nest(ip);
    let ports = w.nest(CTA_TUPLE_PROTO);
    w.attr(CTA_PROTO_NUM, &[protocol]);
    w.attr(CTA_PROTO_SRC_PORT, &tuple.source.port().to_be_bytes());
    w.attr(CTA_PROTO_DST_PORT, &tuple.destination.port().to_be_bytes());
    w.end_nest(ports);
    w.end_nest(nest);
}

/// What one datagram of a dump's answers contains.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DumpPart {
    /// Its entries of protocols with ports; entries of others (ICMP) are skipped.
    pub flows: Vec<Flow>,
    /// None while more datagrams follow; the dump's outcome once it is over.
    pub end: Option<Result<(), Errno>>,
}

pub fn parse_dump(buf: &[u8]) -> DumpPart {
    let mut part = DumpPart::default();
    for answer in messages(buf) {
        match answer.kind {
            // After the nfgenmsg header: family, version, resource id.
            kind if kind == message(IPCTNL_MSG_CT_NEW) => {
                part.flows.extend(answer.payload.get(4..).and_then(parse_flow))
            }
            // Its payload is the dump's outcome: 0, or a negative errno.
            NLMSG_DONE => {
                let error = answer.payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                part.end = Some(outcome(-error));
            }
            NLMSG_ERROR => {
                let errno = parse_error(answer.payload, answer.flags).map_or(Errno::EPROTO as i32, |r| r.errno);
                part.end = Some(outcome(errno));
            }
            _ => {}
        }
    }
    part
}

fn outcome(errno: i32) -> Result<(), Errno> {
    match errno {
        0 => Ok(()),
        errno => Err(Errno::from_raw(errno)),
    }
}

fn parse_flow(attrs: &[u8]) -> Option<Flow> {
    let (mut original, mut reply, mut status, mut id) = (None, None, 0, 0);
    for (kind, data) in attributes(attrs) {
        match kind {
            CTA_TUPLE_ORIG => original = parse_tuple(data),
            CTA_TUPLE_REPLY => reply = parse_tuple(data),
            CTA_STATUS => status = be32(data)?,
            CTA_ID => id = be32(data)?,
            _ => {}
        }
    }
    let ((protocol, original), (_, reply)) = (original?, reply?);
    Some(Flow { protocol, original, reply, destination_nat: status & IPS_DST_NAT != 0, id })
}

/// The protocol and the addresses and ports of a tuple; None for a protocol without ports.
fn parse_tuple(attrs: &[u8]) -> Option<(u8, Tuple)> {
    let (mut source, mut destination) = (None, None);
    let (mut protocol, mut source_port, mut destination_port) = (None, None, None);
    for (kind, data) in attributes(attrs) {
        match kind {
            CTA_TUPLE_IP => {
                for (kind, data) in attributes(data) {
                    match kind {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => source = ip_address(data),
                        CTA_IP_V4_DST | CTA_IP_V6_DST => destination = ip_address(data),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (kind, data) in attributes(data) {
                    match kind {
                        CTA_PROTO_NUM => protocol = data.first().copied(),
                        CTA_PROTO_SRC_PORT => source_port = port(data),
                        CTA_PROTO_DST_PORT => destination_port = port(data),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let tuple = Tuple {
        source: SocketAddr::new(source?, source_port?),
        destination: SocketAddr::new(destination?, destination_port?),
    };
    Some((protocol?, tuple))
}

fn ip_address(data: &[u8]) -> Option<IpAddr> {
    match data.len() {
        4 => Some(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?).into()),
        16 => Some(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?).into()),
        _ => None,
    }
}

fn port(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

fn be32(data: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(data.try_into().ok()?))
}

/// The answers to one datagram of deletes from `encode_deletes`.
#[derive(Debug)]
pub struct Deletes {
    first: u32,
    answered: Vec<bool>,
    deleted: usize,
    refused: Option<Errno>,
}

impl Deletes {
    pub fn new(first: u32, count: usize) -> Self {
        Deletes { first, answered: vec![false; count], deleted: 0, refused: None }
    }

    pub fn record(&mut self, reply: &Reply) {
        let index = reply.seq.wrapping_sub(self.first) as usize;
        match self.answered.get_mut(index) {
            Some(answered) if !*answered => *answered = true,
            _ => return, // not ours, or told twice
        }
        match reply.errno {
            0 => self.deleted += 1,
            // The entry ended since the dump, or it is a newer one with another id: either way
            // nothing stale is left.
            errno if errno == Errno::ENOENT as i32 => {}
            errno => {
                self.refused.get_or_insert(Errno::from_raw(errno));
            }
        }
    }

    pub fn done(&self) -> bool {
        self.answered.iter().all(|a| *a)
    }

    /// How many entries were deleted, or the first errno other than ENOENT.
    pub fn result(&self) -> Result<usize, Errno> {
        self.refused.map_or(Ok(self.deleted), Err)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::netlink::tests::{be32 as be32_attr, decode_messages, error_message, Attr};
    use crate::port_forwarding::tests::{forward, forwarding};

    fn tuple(source: &str, destination: &str) -> Tuple {
        Tuple { source: source.parse().unwrap(), destination: destination.parse().unwrap() }
    }

    /// A UDP flow from a client to port 53 of the pod, answered from `answered_by`.
    fn udp_flow(answered_by: &str, destination_nat: bool) -> Flow {
        Flow {
            protocol: 17,
            original: tuple("192.0.2.7:40000", "10.0.0.1:53"),
            reply: tuple(answered_by, "10.9.0.1:40000"),
            destination_nat,
            id: 7,
        }
    }

    /// The kernel's answer to a dump for `flow`, as ctnetlink writes it.
    fn dumped(w: &mut Writer, flow: &Flow) {
        let start = w.begin(message(IPCTNL_MSG_CT_NEW), 0x2, 1, nfproto(Family::of(&flow.original.source.ip())), 0);
        write_tuple(w, CTA_TUPLE_ORIG, flow.protocol, &flow.original);
        write_tuple(w, CTA_TUPLE_REPLY, flow.protocol, &flow.reply);
        w.attr_be32(CTA_STATUS, if flow.destination_nat { IPS_DST_NAT | 0x8 } else { 0x8 });
        w.attr_be32(CTA_ID, flow.id);
        w.end(start);
    }

    fn done(w: &mut Writer, error: i32) {
        w.buf.extend([20u32.to_ne_bytes(), [NLMSG_DONE as u8, 0, 2, 0], 1u32.to_ne_bytes(), [0; 4]].concat());
        w.buf.extend(error.to_ne_bytes());
    }

    #[test]
    fn a_delete_names_the_original_tuple_and_the_id_in_these_exact_bytes() {
        let flow = udp_flow("10.1.1.5:5353", true);
        let bytes = encode_deletes(&[flow], 9);
        let mut expected = Vec::new();
        // DELETE (0x0102), REQUEST|ACK, seq 9, pid 0, AF_INET, v0, res_id 0
        expected
            .extend([80u32.to_ne_bytes(), [0x02, 0x01, 0x05, 0], 9u32.to_ne_bytes(), [0; 4], [2, 0, 0, 0]].concat());
        let attr = |len: u16, kind: u16| [len.to_ne_bytes(), kind.to_ne_bytes()].concat();
        expected.extend(attr(52, CTA_TUPLE_ORIG | 0x8000));
        expected.extend(attr(20, CTA_TUPLE_IP | 0x8000));
        expected
            .extend([attr(8, CTA_IP_V4_SRC), vec![192, 0, 2, 7], attr(8, CTA_IP_V4_DST), vec![10, 0, 0, 1]].concat());
        expected.extend(attr(28, CTA_TUPLE_PROTO | 0x8000));
        expected.extend([attr(5, CTA_PROTO_NUM), vec![17, 0, 0, 0]].concat());
        expected.extend([attr(6, CTA_PROTO_SRC_PORT), 40000u16.to_be_bytes().to_vec(), vec![0, 0]].concat());
        expected.extend([attr(6, CTA_PROTO_DST_PORT), 53u16.to_be_bytes().to_vec(), vec![0, 0]].concat());
        expected.extend([attr(8, CTA_ID), 7u32.to_be_bytes().to_vec()].concat());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn deletes_of_both_families_are_numbered_in_order_and_acknowledged() {
        let v6 = Flow {
            original: tuple("[2001:db8::7]:40000", "[fd00::1]:53"),
            reply: tuple("[fd00:1::5]:5353", "[fd00:9::1]:40000"),
            ..udp_flow("10.1.1.5:5353", true)
        };
        let messages = decode_messages(&encode_deletes(&[udp_flow("10.1.1.5:5353", true), v6], 41));
        let headers: Vec<_> = messages.iter().map(|m| (m.kind, m.flags, m.seq, m.family)).collect();
        assert_eq!(headers, [(0x0102, 0x5, 41, 2), (0x0102, 0x5, 42, 10)]);
        let address = |text: &str| text.parse::<Ipv6Addr>().unwrap().octets().to_vec();
        assert_eq!(
            messages[1].attrs,
            [
                Attr::Nest(
                    CTA_TUPLE_ORIG,
                    vec![
                        Attr::Nest(
                            CTA_TUPLE_IP,
                            vec![
                                Attr::Bytes(CTA_IP_V6_SRC, address("2001:db8::7")),
                                Attr::Bytes(CTA_IP_V6_DST, address("fd00::1")),
                            ]
                        ),
                        Attr::Nest(
                            CTA_TUPLE_PROTO,
                            vec![
                                Attr::Bytes(CTA_PROTO_NUM, vec![17]),
                                Attr::Bytes(CTA_PROTO_SRC_PORT, 40000u16.to_be_bytes().to_vec()),
                                Attr::Bytes(CTA_PROTO_DST_PORT, 53u16.to_be_bytes().to_vec()),
                            ]
                        ),
                    ]
                ),
                be32_attr(CTA_ID, 7),
            ]
        );
    }

    #[test]
    fn the_dump_request_asks_for_every_entry_of_both_families() {
        let expected = [20u32.to_ne_bytes(), [0x01, 0x01, 0x01, 0x03], 5u32.to_ne_bytes(), [0; 4], [0; 4]].concat();
        assert_eq!(encode_dump(5), expected);
    }

    #[test]
    fn a_dump_gives_the_flows_with_ports_and_ends_with_done() {
        let nat = udp_flow("10.1.1.5:5353", true);
        let v6 = Flow {
            protocol: 6,
            original: tuple("[2001:db8::7]:40000", "[fd00::1]:80"),
            reply: tuple("[fd00::1]:80", "[2001:db8::7]:40000"),
            destination_nat: false,
            id: 8,
        };
        let mut w = Writer::default();
        dumped(&mut w, &nat);
        // An ICMP echo: its tuples have an id and no ports.
        let start = w.begin(message(IPCTNL_MSG_CT_NEW), 0x2, 1, 2, 0);
        let nest = w.nest(CTA_TUPLE_ORIG);
        let ip = w.nest(CTA_TUPLE_IP);
        w.attr(CTA_IP_V4_SRC, &[192, 0, 2, 7]);
        w.attr(CTA_IP_V4_DST, &[10, 0, 0, 1]);
        w.end_nest(ip);
        let proto = w.nest(CTA_TUPLE_PROTO);
        w.attr(CTA_PROTO_NUM, &[1]);
        w.end_nest(proto);
        w.end_nest(nest);
        w.end(start);
        let first = w.buf.len();
        dumped(&mut w, &v6);

        let part = parse_dump(&w.buf[..first]);
        assert_eq!(part, DumpPart { flows: vec![nat.clone()], end: None }, "more parts follow");
        done(&mut w, 0);
        assert_eq!(parse_dump(&w.buf), DumpPart { flows: vec![nat, v6], end: Some(Ok(())) });
    }

    #[test]
    fn a_refused_or_broken_off_dump_ends_with_its_errno() {
        let refused = error_message(1, -(Errno::EPERM as i32), 0x100, &[], &[]);
        assert_eq!(parse_dump(&refused), DumpPart { flows: vec![], end: Some(Err(Errno::EPERM)) });
        let mut w = Writer::default();
        done(&mut w, -(Errno::EINTR as i32));
        assert_eq!(parse_dump(&w.buf).end, Some(Err(Errno::EINTR)));
    }

    #[test]
    fn deletes_count_what_went_and_tolerate_entries_that_are_gone() {
        let reply = |seq, errno| Reply { seq, errno, message: None };
        let mut deletes = Deletes::new(10, 3);
        deletes.record(&reply(10, 0));
        deletes.record(&reply(10, 0));
        deletes.record(&reply(13, 0));
        deletes.record(&reply(11, Errno::ENOENT as i32));
        assert!(!deletes.done(), "a repeated or foreign answer does not count");
        deletes.record(&reply(12, 0));
        assert!(deletes.done());
        assert_eq!(deletes.result(), Ok(2));
        deletes = Deletes::new(10, 1);
        deletes.record(&reply(10, Errno::EPERM as i32));
        assert_eq!((deletes.done(), deletes.result()), (true, Err(Errno::EPERM)));
    }

    fn with_endpoints(udp_53: &[&str], tcp_80: &[&str]) -> PortForwarding {
        let forwards = [forward(Protocol::Udp, 53, udp_53), forward(Protocol::Tcp, 80, tcp_80)]
            .into_iter()
            .filter(|f| !f.backends.is_empty())
            .collect();
        forwarding(&["udp:53:53", "tcp:80:80"], &["node-endpoints"], &[])
            .with_endpoints(BTreeMap::from([(Family::V4, forwards)]))
    }

    #[test]
    fn a_udp_flow_to_a_backend_the_port_no_longer_has_is_stale() {
        let forwarding = with_endpoints(&["10.1.1.6:5353"], &[]);
        assert!(is_stale(&forwarding, &udp_flow("10.1.1.5:5353", true)));
        assert!(!is_stale(&forwarding, &udp_flow("10.1.1.6:5353", true)));
        assert!(is_stale(&forwarding, &udp_flow("10.1.1.6:5354", true)), "the port counts too");
        let none = with_endpoints(&[], &["10.1.1.5:8080"]);
        assert!(is_stale(&none, &udp_flow("10.1.1.6:5353", true)), "a port left without backends");
    }

    #[test]
    fn an_un_natted_udp_flow_is_stale_once_its_port_has_backends() {
        let unnatted = udp_flow("10.0.0.1:53", false);
        assert!(is_stale(&with_endpoints(&["10.1.1.6:5353"], &[]), &unnatted));
        assert!(!is_stale(&with_endpoints(&[], &["10.1.1.5:8080"]), &unnatted), "new flows would not be NATed either");
    }

    #[test]
    fn tcp_flows_and_other_ports_are_left_alone() {
        let forwarding = with_endpoints(&["10.1.1.6:5353"], &["10.1.1.6:8080"]);
        let mut tcp = udp_flow("10.1.1.5:8080", true);
        tcp.protocol = 6;
        tcp.original.destination.set_port(80);
        assert!(!is_stale(&forwarding, &tcp));
        let mut other = udp_flow("10.0.0.1:54", false);
        other.original.destination.set_port(54);
        assert!(!is_stale(&forwarding, &other));
        let mut v6 = udp_flow("[fd00:1::5]:5353", true);
        v6.original = tuple("[2001:db8::7]:40000", "[fd00::1]:53");
        assert!(is_stale(&forwarding, &v6), "the IPv6 table has no backend, so none of its DNATs applies");
    }
}
