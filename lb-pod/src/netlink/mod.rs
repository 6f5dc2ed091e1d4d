//! Netlink's wire format as hostlb speaks it: the `Writer` that builds messages and their
//! attributes, the iterators that read a datagram's messages and attributes back, and the
//! kernel's error and acknowledgement messages (`Reply`). Pure: bytes in, bytes out; the socket
//! lives in `kernel`. nftables' batch (`nftables`, whose answers `batch` collects) and
//! `conntrack` are written and read with it.
//!
//! Constants are those of `linux/netlink.h` and `linux/netfilter/nfnetlink.h`. Netlink headers
//! are in host byte order, nfnetlink's resource id in network byte order.

mod batch;
mod nftables;

pub use batch::{Acks, Sequence};
pub use nftables::encode_batch;

use hostlb_contract::Family;

const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;

pub(crate) const NLM_F_REQUEST: u16 = 0x1;
pub(crate) const NLM_F_ACK: u16 = 0x4;
/// NLM_F_ROOT | NLM_F_MATCH: every object, in as many answers as it takes.
pub(crate) const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
/// In an error message: only the header of the request is echoed.
const NLM_F_CAPPED: u16 = 0x100;
/// In an error message: extended-ack attributes follow.
const NLM_F_ACK_TLVS: u16 = 0x200;
pub(crate) const NLMSG_ERROR: u16 = 0x2;
pub(crate) const NLMSG_DONE: u16 = 0x3;
const NLMSGERR_ATTR_MSG: u16 = 1;

const NFNETLINK_V0: u8 = 0;
pub(crate) const AF_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

/// Builds netlink messages and their attributes; shared with `conntrack`.
#[derive(Default)]
pub(crate) struct Writer {
    pub(crate) buf: Vec<u8>,
}

impl Writer {
    /// Starts a message with its nfgenmsg header; returns where it starts, for `end`.
    pub(crate) fn begin(&mut self, kind: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, set by `end`
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(&flags.to_ne_bytes());
        self.buf.extend_from_slice(&seq.to_ne_bytes());
        self.buf.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        self.buf.extend_from_slice(&[family, NFNETLINK_V0]);
        self.buf.extend_from_slice(&res_id.to_be_bytes());
        start
    }

    pub(crate) fn end(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u32;
        self.buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
    }

    pub(crate) fn attr(&mut self, kind: u16, data: &[u8]) {
        self.buf.extend_from_slice(&((NLA_HDRLEN + data.len()) as u16).to_ne_bytes());
        self.buf.extend_from_slice(&kind.to_ne_bytes());
        self.buf.extend_from_slice(data);
        self.pad();
    }

    pub(crate) fn attr_be32(&mut self, kind: u16, value: u32) {
        self.attr(kind, &value.to_be_bytes());
    }

    pub(crate) fn attr_str(&mut self, kind: u16, value: &str) {
        let mut data = value.as_bytes().to_vec();
        data.push(0);
        self.attr(kind, &data);
    }

    pub(crate) fn nest(&mut self, kind: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf.extend_from_slice(&(kind | NLA_F_NESTED).to_ne_bytes());
        start
    }

    pub(crate) fn end_nest(&mut self, start: usize) {
        let len = (self.buf.len() - start) as u16;
        self.buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.buf.len() % 4 != 0 {
            self.buf.push(0);
        }
    }
}

/// One NLMSG_ERROR message: an acknowledgement when `errno` is 0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The sequence number of the request it answers.
    pub seq: u32,
    /// 0, or a positive errno.
    pub errno: i32,
    /// The kernel's extended-ack message, if it sent one.
    pub message: Option<String>,
}

/// The NLMSG_ERROR messages in a datagram; other messages are skipped, and a truncated or
/// malformed message ends the parse.
pub fn parse_replies(buf: &[u8]) -> Vec<Reply> {
    messages(buf).filter(|m| m.kind == NLMSG_ERROR).filter_map(|m| parse_error(m.payload, m.flags)).collect()
}

/// One netlink message: its header's type and flags, and what follows the header.
pub(crate) struct Message<'a> {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) payload: &'a [u8],
}

/// The messages of a datagram, up to the first truncated or malformed one.
pub(crate) fn messages(mut buf: &[u8]) -> impl Iterator<Item = Message<'_>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDRLEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            return None;
        }
        let message = Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            payload: &buf[NLMSG_HDRLEN..len],
        };
        buf = &buf[align4(len).min(buf.len())..];
        Some(message)
    })
}

/// The attributes in `buf` as (type without the nested flag, data), up to the first malformed one.
pub(crate) fn attributes(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < NLA_HDRLEN {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & !NLA_F_NESTED;
        if len < NLA_HDRLEN || len > buf.len() {
            return None;
        }
        let data = &buf[NLA_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];
        Some((kind, data))
    })
}

pub(crate) fn parse_error(payload: &[u8], flags: u16) -> Option<Reply> {
    let error = i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?);
    let request = payload.get(4..4 + NLMSG_HDRLEN)?;
    let request_len = u32::from_ne_bytes(request[0..4].try_into().ok()?) as usize;
    let seq = u32::from_ne_bytes(request[8..12].try_into().ok()?);
    let message = if flags & NLM_F_ACK_TLVS != 0 {
        // The whole request is echoed unless capped, or unless this is a plain ACK.
        let echoed = if flags & NLM_F_CAPPED != 0 || error == 0 { NLMSG_HDRLEN } else { request_len };
        payload.get(4 + align4(echoed)..).and_then(extack_message)
    } else {
        None
    };
    Some(Reply { seq, errno: -error, message })
}

fn extack_message(attrs: &[u8]) -> Option<String> {
    let (_, text) = attributes(attrs).find(|(kind, _)| *kind == NLMSGERR_ATTR_MSG)?;
    let text = text.split(|b| *b == 0).next().unwrap_or_default();
    Some(String::from_utf8_lossy(text).into_owned())
}

fn align4(len: usize) -> usize {
    (len + 3) & !3
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NFGENMSG_LEN: usize = 4;

    /// A decoded netlink attribute tree, to check structure without counting bytes by hand.
    #[derive(Debug, PartialEq)]
    pub(crate) enum Attr {
        Bytes(u16, Vec<u8>),
        Nest(u16, Vec<Attr>),
    }

    pub(crate) fn decode_attrs(mut buf: &[u8]) -> Vec<Attr> {
        let mut attrs = Vec::new();
        while !buf.is_empty() {
            let len = usize::from(u16::from_ne_bytes([buf[0], buf[1]]));
            let kind = u16::from_ne_bytes([buf[2], buf[3]]);
            assert!(len >= NLA_HDRLEN && len <= buf.len(), "bad attribute length {len} in {buf:?}");
            let data = &buf[NLA_HDRLEN..len];
            if kind & NLA_F_NESTED != 0 {
                attrs.push(Attr::Nest(kind & !NLA_F_NESTED, decode_attrs(data)));
            } else {
                attrs.push(Attr::Bytes(kind, data.to_vec()));
            }
            buf = &buf[align4(len)..];
        }
        attrs
    }

    pub(crate) struct Message {
        pub(crate) kind: u16,
        pub(crate) flags: u16,
        pub(crate) seq: u32,
        pub(crate) family: u8,
        pub(crate) res_id: u16,
        pub(crate) attrs: Vec<Attr>,
    }

    pub(crate) fn decode_messages(mut buf: &[u8]) -> Vec<Message> {
        let mut messages = Vec::new();
        while !buf.is_empty() {
            let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
            assert!(len >= NLMSG_HDRLEN + NFGENMSG_LEN && len <= buf.len() && len % 4 == 0, "bad length {len}");
            messages.push(Message {
                kind: u16::from_ne_bytes([buf[4], buf[5]]),
                flags: u16::from_ne_bytes([buf[6], buf[7]]),
                seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
                family: buf[16],
                res_id: u16::from_be_bytes([buf[18], buf[19]]),
                attrs: decode_attrs(&buf[20..len]),
            });
            buf = &buf[len..];
        }
        messages
    }

    pub(crate) fn be32(kind: u16, value: u32) -> Attr {
        Attr::Bytes(kind, value.to_be_bytes().to_vec())
    }

    pub(crate) fn error_message(seq: u32, error: i32, flags: u16, echoed: &[u8], tlvs: &[u8]) -> Vec<u8> {
        let mut request = Vec::new();
        request.extend((NLMSG_HDRLEN as u32 + echoed.len() as u32).to_ne_bytes());
        request.extend([0x06, 0x0a, 0x05, 0x0c]);
        request.extend(seq.to_ne_bytes());
        request.extend(0u32.to_ne_bytes());
        request.extend(echoed);
        let payload = [&error.to_ne_bytes()[..], &request, tlvs].concat();
        [
            &((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes()[..],
            &NLMSG_ERROR.to_ne_bytes(),
            &flags.to_ne_bytes(),
            &[0; 8],
            &payload,
        ]
        .concat()
    }

    #[test]
    fn parses_acks_and_errors_with_their_sequence_numbers() {
        let mut datagram = error_message(101, 0, NLM_F_CAPPED, &[], &[]);
        datagram.extend(error_message(102, -95, 0, &[1, 2, 3, 4, 5, 6, 7, 8], &[]));
        assert_eq!(
            parse_replies(&datagram),
            vec![Reply { seq: 101, errno: 0, message: None }, Reply { seq: 102, errno: 95, message: None },]
        );
        assert_eq!(parse_replies(&datagram[..datagram.len() - 1]).len(), 1, "a truncated message is not read");
    }

    #[test]
    fn reads_the_extended_ack_message() {
        let mut tlv = Vec::new();
        tlv.extend(13u16.to_ne_bytes());
        tlv.extend(NLMSGERR_ATTR_MSG.to_ne_bytes());
        tlv.extend(b"bad rule\0\0\0\0");
        let datagram = error_message(103, -22, NLM_F_CAPPED | NLM_F_ACK_TLVS, &[], &tlv);
        assert_eq!(parse_replies(&datagram)[0].message.as_deref(), Some("bad rule"));
        let uncapped = error_message(103, -22, NLM_F_ACK_TLVS, &[9; 8], &tlv);
        assert_eq!(parse_replies(&uncapped)[0].message.as_deref(), Some("bad rule"));
    }
}
