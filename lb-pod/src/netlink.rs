//! The nftables netlink wire format: encodes `Step`s as one nfnetlink batch and reads the
//! kernel's answers. Pure: bytes in, bytes out; the socket lives in `kernel`. Its framing (the
//! `Writer`, `messages`, `attributes`) serves `conntrack` too.
//!
//! Constants are those of `linux/netlink.h`, `linux/netfilter/nfnetlink.h` and
//! `linux/netfilter/nf_tables.h`. Netlink headers are in host byte order, nftables' integer
//! attributes in network byte order.

use std::net::IpAddr;

use nix::errno::Errno;

use crate::error::Error;
use crate::rule_text::step_text;
use crate::rules::{
    BaseChain, ChainType, CtOriginalKey, Expr, Hook, Interval, PayloadBase, Reg, Step, Verdict, DIRECTION_ORIGINAL,
    TABLE,
};
use hostlb_contract::{address_bytes, Family};

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

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNETLINK_V0: u8 = 0;
pub(crate) const AF_UNSPEC: u8 = 0;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;

const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFT_MSG_NEWSETELEM: u16 = 12;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
const NFT_SET_CONSTANT: u32 = 0x2;
const NFT_SET_INTERVAL: u32 = 0x4;
/// The kernel wants an id for a set made in a batch, for anonymous sets; ours are named
/// wherever they are used, so they can all have the same.
const SET_ID: u32 = 1;
/// The key types as `nft` numbers them (`enum datatypes` in nftables' `datatype.h`): the kernel
/// keeps them for `nft list`, which prints addresses by them.
const NFT_TYPE_IPV4_ADDR: u32 = 7;
const NFT_TYPE_IPV6_ADDR: u32 = 8;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_FLAGS: u16 = 3;
const NFT_SET_ELEM_INTERVAL_END: u32 = 0x1;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;

const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_L4PROTO: u32 = 16;
const NFTA_CT_DREG: u16 = 1;
const NFTA_CT_KEY: u16 = 2;
const NFTA_CT_DIRECTION: u16 = 3;
const NFT_CT_DIRECTION: u32 = 1;
const NFT_CT_PROTO_DST: u32 = 12;
const NFT_CT_DST_IP: u32 = 20;
const NFT_CT_DST_IP6: u32 = 22;
const NFTA_NG_DREG: u16 = 1;
const NFTA_NG_MODULUS: u16 = 2;
const NFTA_NG_TYPE: u16 = 3;
const NFT_NG_RANDOM: u32 = 1;
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFTA_LOOKUP_SET: u16 = 1;
const NFTA_LOOKUP_SREG: u16 = 2;
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
const NFTA_NAT_TYPE: u16 = 1;
const NFTA_NAT_FAMILY: u16 = 2;
const NFTA_NAT_REG_ADDR_MIN: u16 = 3;
const NFTA_NAT_REG_PROTO_MIN: u16 = 5;
const NFT_NAT_DNAT: u32 = 1;

const NF_INET_PRE_ROUTING: u32 = 0;
const NF_INET_LOCAL_OUT: u32 = 3;
const NF_INET_POST_ROUTING: u32 = 4;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;

/// Sequence numbers of a batch: the begin message has `first`, step `i` has `first + 1 + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sequence {
    pub first: u32,
}

impl Sequence {
    pub fn of_step(self, index: usize) -> u32 {
        self.first.wrapping_add(1).wrapping_add(index as u32)
    }

    /// The index of the step with sequence number `seq`, if it is one.
    pub fn step_of(self, seq: u32, steps: usize) -> Option<usize> {
        let index = seq.wrapping_sub(self.first).wrapping_sub(1) as usize;
        (index < steps).then_some(index)
    }
}

/// The whole batch: BATCH_BEGIN, one message per step (each with NLM_F_ACK), BATCH_END.
pub fn encode_batch(steps: &[Step], sequence: Sequence) -> Vec<u8> {
    let mut w = Writer::default();
    let start = w.begin(NFNL_MSG_BATCH_BEGIN, NLM_F_REQUEST, sequence.first, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end(start);
    for (index, step) in steps.iter().enumerate() {
        encode_step(&mut w, step, sequence.of_step(index));
    }
    let start =
        w.begin(NFNL_MSG_BATCH_END, NLM_F_REQUEST, sequence.of_step(steps.len()), AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
    w.end(start);
    w.buf
}

pub(crate) fn nfproto(family: Family) -> u8 {
    match family {
        Family::V4 => NFPROTO_IPV4,
        Family::V6 => NFPROTO_IPV6,
    }
}

fn encode_step(w: &mut Writer, step: &Step, seq: u32) {
    let family = nfproto(step.family());
    let message = |kind: u16| (NFNL_SUBSYS_NFTABLES << 8) | kind;
    let request = NLM_F_REQUEST | NLM_F_ACK;
    match step {
        Step::EnsureTable(_) => {
            let start = w.begin(message(NFT_MSG_NEWTABLE), request | NLM_F_CREATE, seq, family, 0);
            w.attr_str(NFTA_TABLE_NAME, TABLE);
            w.end(start);
        }
        Step::DeleteTable(_) => {
            let start = w.begin(message(NFT_MSG_DELTABLE), request, seq, family, 0);
            w.attr_str(NFTA_TABLE_NAME, TABLE);
            w.end(start);
        }
        Step::AddTable(_) => {
            let start = w.begin(message(NFT_MSG_NEWTABLE), request | NLM_F_CREATE | NLM_F_EXCL, seq, family, 0);
            w.attr_str(NFTA_TABLE_NAME, TABLE);
            w.end(start);
        }
        Step::AddChain { name, base, .. } => {
            let start = w.begin(message(NFT_MSG_NEWCHAIN), request | NLM_F_CREATE | NLM_F_EXCL, seq, family, 0);
            w.attr_str(NFTA_CHAIN_TABLE, TABLE);
            w.attr_str(NFTA_CHAIN_NAME, &name.to_string());
            if let Some(base) = base {
                encode_base_chain(w, base);
            }
            w.end(start);
        }
        Step::AddRule { chain, exprs, .. } => {
            let start = w.begin(message(NFT_MSG_NEWRULE), request | NLM_F_CREATE | NLM_F_APPEND, seq, family, 0);
            w.attr_str(NFTA_RULE_TABLE, TABLE);
            w.attr_str(NFTA_RULE_CHAIN, &chain.to_string());
            let list = w.nest(NFTA_RULE_EXPRESSIONS);
            for expr in exprs {
                let elem = w.nest(NFTA_LIST_ELEM);
                encode_expr(w, expr);
                w.end_nest(elem);
            }
            w.end_nest(list);
            w.end(start);
        }
        Step::AddSet { family: set_family, name } => {
            let start = w.begin(message(NFT_MSG_NEWSET), request | NLM_F_CREATE | NLM_F_EXCL, seq, family, 0);
            let (key_type, key_len) = match set_family {
                Family::V4 => (NFT_TYPE_IPV4_ADDR, 4),
                Family::V6 => (NFT_TYPE_IPV6_ADDR, 16),
            };
            w.attr_str(NFTA_SET_TABLE, TABLE);
            w.attr_str(NFTA_SET_NAME, &name.to_string());
            w.attr_be32(NFTA_SET_FLAGS, NFT_SET_CONSTANT | NFT_SET_INTERVAL);
            w.attr_be32(NFTA_SET_KEY_TYPE, key_type);
            w.attr_be32(NFTA_SET_KEY_LEN, key_len);
            w.attr_be32(NFTA_SET_ID, SET_ID);
            w.end(start);
        }
        Step::AddIntervals { set, intervals, .. } => {
            let start = w.begin(message(NFT_MSG_NEWSETELEM), request | NLM_F_CREATE, seq, family, 0);
            w.attr_str(NFTA_SET_ELEM_LIST_TABLE, TABLE);
            w.attr_str(NFTA_SET_ELEM_LIST_SET, &set.to_string());
            let list = w.nest(NFTA_SET_ELEM_LIST_ELEMENTS);
            for interval in intervals {
                encode_interval(w, interval);
            }
            w.end_nest(list);
            w.end(start);
        }
    }
}

/// An interval as the kernel's interval sets keep it: an element at its first address, and an
/// end element at the first address after it unless it runs to the family's last one.
fn encode_interval(w: &mut Writer, interval: &Interval) {
    let mut element = |key: &IpAddr, end: bool| {
        let elem = w.nest(NFTA_LIST_ELEM);
        w.data_value(NFTA_SET_ELEM_KEY, &address_bytes(key));
        if end {
            w.attr_be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END);
        }
        w.end_nest(elem);
    };
    element(&interval.first, false);
    if let Some(end) = interval.end() {
        element(&end, true);
    }
}

fn encode_base_chain(w: &mut Writer, base: &BaseChain) {
    let hook = w.nest(NFTA_CHAIN_HOOK);
    w.attr_be32(
        NFTA_HOOK_HOOKNUM,
        match base.hook {
            Hook::Prerouting => NF_INET_PRE_ROUTING,
            Hook::Output => NF_INET_LOCAL_OUT,
            Hook::Postrouting => NF_INET_POST_ROUTING,
        },
    );
    w.attr_be32(NFTA_HOOK_PRIORITY, base.priority as u32);
    w.end_nest(hook);
    w.attr_be32(NFTA_CHAIN_POLICY, NF_ACCEPT as u32);
    w.attr_str(
        NFTA_CHAIN_TYPE,
        match base.kind {
            ChainType::Nat => "nat",
            ChainType::Filter => "filter",
        },
    );
}

fn encode_expr(w: &mut Writer, expr: &Expr) {
    let name = match expr {
        Expr::MetaL4Proto { .. } => "meta",
        Expr::CtDirection { .. } | Expr::CtOriginal { .. } => "ct",
        Expr::Payload { .. } => "payload",
        Expr::CmpEq { .. } => "cmp",
        Expr::Lookup { .. } => "lookup",
        Expr::Immediate { .. } | Expr::Verdict(_) => "immediate",
        Expr::Numgen { .. } => "numgen",
        Expr::Dnat { .. } => "nat",
        Expr::Masquerade => "masq",
    };
    w.attr_str(NFTA_EXPR_NAME, name);
    let data = w.nest(NFTA_EXPR_DATA);
    match expr {
        Expr::MetaL4Proto { dreg } => {
            w.attr_be32(NFTA_META_DREG, dreg.number());
            w.attr_be32(NFTA_META_KEY, NFT_META_L4PROTO);
        }
        Expr::CtDirection { dreg } => {
            w.attr_be32(NFTA_CT_DREG, dreg.number());
            w.attr_be32(NFTA_CT_KEY, NFT_CT_DIRECTION);
        }
        // The keys `nft` uses for `ct original ip daddr` and `ct original proto-dst`; the
        // older `NFT_CT_DST` is deprecated.
        Expr::CtOriginal { key, dreg } => {
            w.attr_be32(NFTA_CT_DREG, dreg.number());
            w.attr_be32(
                NFTA_CT_KEY,
                match key {
                    CtOriginalKey::DestinationAddress(Family::V4) => NFT_CT_DST_IP,
                    CtOriginalKey::DestinationAddress(Family::V6) => NFT_CT_DST_IP6,
                    CtOriginalKey::DestinationPort => NFT_CT_PROTO_DST,
                },
            );
            w.attr(NFTA_CT_DIRECTION, &[DIRECTION_ORIGINAL]);
        }
        Expr::Payload { base, offset, len, dreg } => {
            w.attr_be32(NFTA_PAYLOAD_DREG, dreg.number());
            w.attr_be32(
                NFTA_PAYLOAD_BASE,
                match base {
                    PayloadBase::Network => NFT_PAYLOAD_NETWORK_HEADER,
                    PayloadBase::Transport => NFT_PAYLOAD_TRANSPORT_HEADER,
                },
            );
            w.attr_be32(NFTA_PAYLOAD_OFFSET, *offset);
            w.attr_be32(NFTA_PAYLOAD_LEN, *len);
        }
        Expr::CmpEq { sreg, data } => {
            w.attr_be32(NFTA_CMP_SREG, sreg.number());
            w.attr_be32(NFTA_CMP_OP, NFT_CMP_EQ);
            w.data_value(NFTA_CMP_DATA, data);
        }
        Expr::Lookup { sreg, set } => {
            w.attr_str(NFTA_LOOKUP_SET, &set.to_string());
            w.attr_be32(NFTA_LOOKUP_SREG, sreg.number());
        }
        Expr::Immediate { dreg, data } => {
            w.attr_be32(NFTA_IMMEDIATE_DREG, dreg.number());
            w.data_value(NFTA_IMMEDIATE_DATA, data);
        }
        Expr::Verdict(verdict) => {
            w.attr_be32(NFTA_IMMEDIATE_DREG, Reg::Verdict.number());
            let outer = w.nest(NFTA_IMMEDIATE_DATA);
            let inner = w.nest(NFTA_DATA_VERDICT);
            let (code, chain) = match verdict {
                Verdict::Accept => (NF_ACCEPT, None),
                Verdict::Drop => (NF_DROP, None),
                Verdict::Jump(chain) => (NFT_JUMP, Some(*chain)),
            };
            w.attr_be32(NFTA_VERDICT_CODE, code as u32);
            if let Some(chain) = chain {
                w.attr_str(NFTA_VERDICT_CHAIN, &chain.to_string());
            }
            w.end_nest(inner);
            w.end_nest(outer);
        }
        Expr::Numgen { dreg, modulus } => {
            w.attr_be32(NFTA_NG_DREG, dreg.number());
            w.attr_be32(NFTA_NG_MODULUS, *modulus);
            w.attr_be32(NFTA_NG_TYPE, NFT_NG_RANDOM);
        }
        Expr::Dnat { family, addr, port } => {
            w.attr_be32(NFTA_NAT_TYPE, NFT_NAT_DNAT);
            w.attr_be32(NFTA_NAT_FAMILY, u32::from(nfproto(*family)));
            w.attr_be32(NFTA_NAT_REG_ADDR_MIN, addr.number());
            w.attr_be32(NFTA_NAT_REG_PROTO_MIN, port.number());
        }
        Expr::Masquerade => {}
    }
    w.end_nest(data);
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

    pub(crate) fn data_value(&mut self, kind: u16, value: &[u8]) {
        let nest = self.nest(kind);
        self.attr(NFTA_DATA_VALUE, value);
        self.end_nest(nest);
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

/// The answers to a batch collected so far, and what they mean.
#[derive(Debug)]
pub struct Acks {
    sequence: Sequence,
    answered: Vec<bool>,
    /// (step index, or None for the batch itself, errno, message)
    errors: Vec<(Option<usize>, i32, Option<String>)>,
}

impl Acks {
    pub fn new(sequence: Sequence, steps: usize) -> Self {
        Acks { sequence, answered: vec![false; steps], errors: Vec::new() }
    }

    pub fn record(&mut self, reply: Reply) {
        let step = self.sequence.step_of(reply.seq, self.answered.len());
        if let Some(index) = step {
            self.answered[index] = true;
        } else if reply.seq != self.sequence.first {
            return; // not ours
        }
        if reply.errno != 0 {
            self.errors.push((step, reply.errno, reply.message));
        }
    }

    /// Whether more answers are worth waiting for: no when every step has been answered, and
    /// no after an error. The kernel sends a batch's answers in step order once it has
    /// processed them all, so the first error received is the first step that failed; an error
    /// for the batch itself (no privilege, a failed commit) comes before any step's answer.
    pub fn done(&self) -> bool {
        !self.errors.is_empty() || self.answered.iter().all(|a| *a)
    }

    /// Ok if every step was acknowledged without error; otherwise the first failed step.
    pub fn result(&self, steps: &[Step]) -> Result<(), Error> {
        let first = self.errors.iter().min_by_key(|(step, ..)| step.map_or(usize::MAX, |s| s));
        if let Some((step, errno, message)) = first {
            return Err(Error::Refused {
                step: step.map(|index| (index + 1, step_text(&steps[index]))),
                total: steps.len(),
                errno: Errno::from_raw(*errno),
                detail: message.clone(),
            });
        }
        match self.answered.iter().position(|a| !a) {
            Some(index) => Err(Error::Incomplete(format!(
                "no answer from the kernel for step {} of {} ({}) and the following ones",
                index + 1,
                steps.len(),
                step_text(&steps[index])
            ))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::node_table::{node_ruleset, NodeRules, ServiceRules};
    use crate::plan::tests::{self as plan_tests, plan};
    use crate::rules::{ruleset, INTERVALS_PER_STEP};
    use hostlb_contract::Protocol;

    const SEQ: Sequence = Sequence { first: 100 };
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

    fn string(kind: u16, text: &str) -> Attr {
        Attr::Bytes(kind, [text.as_bytes(), &[0]].concat())
    }

    pub(crate) fn be32(kind: u16, value: u32) -> Attr {
        Attr::Bytes(kind, value.to_be_bytes().to_vec())
    }

    #[test]
    fn batch_of_one_table_step_has_these_exact_bytes() {
        let bytes = encode_batch(&[Step::DeleteTable(Family::V6)], Sequence { first: 7 });
        let mut expected = Vec::new();
        // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 7, pid 0, AF_UNSPEC, v0, res_id 10 (BE)
        expected.extend([20u32.to_ne_bytes(), [0x10, 0, 1, 0], 7u32.to_ne_bytes(), [0; 4], [0, 0, 0, 10]].concat());
        // DELTABLE (0x0a02), REQUEST|ACK, seq 8, NFPROTO_IPV6, attr NAME "hostlb\0" (len 11, padded to 12)
        let table = [11u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat();
        expected
            .extend([32u32.to_ne_bytes(), [0x02, 0x0a, 0x05, 0], 8u32.to_ne_bytes(), [0; 4], [10, 0, 0, 0]].concat());
        expected.extend([&table[..], b"hostlb\0\0"].concat());
        // BATCH_END: seq 9
        expected.extend([20u32.to_ne_bytes(), [0x11, 0, 1, 0], 9u32.to_ne_bytes(), [0; 4], [0, 0, 0, 10]].concat());
        assert_eq!(bytes, expected);
    }

    #[test]
    fn every_step_is_one_acked_nftables_message_between_begin_and_end() {
        let steps = ruleset(&plan(&["tcp:80:8080"], &["10.0.0.1", "fd00::1"], &["10.0.0.0/8"]));
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        assert_eq!(messages.len(), steps.len() + 2);
        let (begin, end) = (&messages[0], &messages[messages.len() - 1]);
        assert_eq!((begin.kind, begin.seq, begin.res_id, begin.family), (NFNL_MSG_BATCH_BEGIN, 100, 10, 0));
        assert_eq!((end.kind, end.seq, end.res_id), (NFNL_MSG_BATCH_END, 100 + steps.len() as u32 + 1, 10));
        for (index, (message, step)) in messages[1..messages.len() - 1].iter().zip(&steps).enumerate() {
            assert_eq!(message.seq, SEQ.of_step(index));
            assert_eq!(message.kind >> 8, NFNL_SUBSYS_NFTABLES);
            assert_ne!(message.flags & NLM_F_ACK, 0, "step {index} must be acknowledged");
            assert_eq!(message.family, nfproto(step.family()));
            assert_eq!(message.res_id, 0);
        }
    }

    #[test]
    fn replacing_a_table_ensures_then_deletes_then_creates_exclusively() {
        let steps = [Step::EnsureTable(Family::V4), Step::DeleteTable(Family::V4), Step::AddTable(Family::V4)];
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let kinds: Vec<(u16, u16)> = messages[1..4].iter().map(|m| (m.kind & 0xff, m.flags)).collect();
        assert_eq!(
            kinds,
            vec![
                (NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE),
                (NFT_MSG_DELTABLE, NLM_F_REQUEST | NLM_F_ACK),
                (NFT_MSG_NEWTABLE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL),
            ]
        );
        assert!(messages[1..4].iter().all(|m| m.attrs == vec![string(NFTA_TABLE_NAME, "hostlb")]));
    }

    #[test]
    fn base_chain_carries_hook_priority_policy_and_type() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let chain = messages.iter().find(|m| m.kind & 0xff == NFT_MSG_NEWCHAIN).unwrap();
        assert_eq!(
            chain.attrs,
            vec![
                string(NFTA_CHAIN_TABLE, "hostlb"),
                string(NFTA_CHAIN_NAME, "prerouting"),
                Attr::Nest(NFTA_CHAIN_HOOK, vec![be32(NFTA_HOOK_HOOKNUM, 0), be32(NFTA_HOOK_PRIORITY, -100i32 as u32)]),
                be32(NFTA_CHAIN_POLICY, 1),
                string(NFTA_CHAIN_TYPE, "nat"),
            ]
        );
    }

    fn expr(name: &str, data: Vec<Attr>) -> Attr {
        Attr::Nest(NFTA_LIST_ELEM, vec![string(NFTA_EXPR_NAME, name), Attr::Nest(NFTA_EXPR_DATA, data)])
    }

    fn value(kind: u16, bytes: &[u8]) -> Attr {
        Attr::Nest(kind, vec![Attr::Bytes(NFTA_DATA_VALUE, bytes.to_vec())])
    }

    fn protocol_and_port(protocol: u8, port: u16) -> Vec<Attr> {
        vec![
            expr("meta", vec![be32(NFTA_META_DREG, 1), be32(NFTA_META_KEY, 16)]),
            expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &[protocol])]),
            expr(
                "payload",
                vec![
                    be32(NFTA_PAYLOAD_DREG, 1),
                    be32(NFTA_PAYLOAD_BASE, 2),
                    be32(NFTA_PAYLOAD_OFFSET, 2),
                    be32(NFTA_PAYLOAD_LEN, 2),
                ],
            ),
            expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &port.to_be_bytes())]),
        ]
    }

    fn rule_expressions(message: &Message) -> &Vec<Attr> {
        match &message.attrs[2] {
            Attr::Nest(NFTA_RULE_EXPRESSIONS, exprs) => exprs,
            other => panic!("expected expressions, got {other:?}"),
        }
    }

    #[test]
    fn dnat_rule_encodes_match_registers_and_nat_expression() {
        let steps = ruleset(&plan(&["udp:53:5353"], &["10.96.0.10"], &[]));
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let rule = messages.iter().find(|m| m.kind & 0xff == NFT_MSG_NEWRULE).unwrap();
        assert_eq!(rule.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
        assert_eq!(&rule.attrs[..2], &[string(NFTA_RULE_TABLE, "hostlb"), string(NFTA_RULE_CHAIN, "prerouting")]);
        let mut expected = protocol_and_port(17, 53);
        expected.extend([
            expr("immediate", vec![be32(NFTA_IMMEDIATE_DREG, 1), value(NFTA_IMMEDIATE_DATA, &[10, 96, 0, 10])]),
            expr("immediate", vec![be32(NFTA_IMMEDIATE_DREG, 2), value(NFTA_IMMEDIATE_DATA, &5353u16.to_be_bytes())]),
            expr(
                "nat",
                vec![
                    be32(NFTA_NAT_TYPE, 1),
                    be32(NFTA_NAT_FAMILY, 2),
                    be32(NFTA_NAT_REG_ADDR_MIN, 1),
                    be32(NFTA_NAT_REG_PROTO_MIN, 2),
                ],
            ),
        ]);
        assert_eq!(rule_expressions(rule), &expected);
    }

    #[test]
    fn masquerade_rule_matches_destination_then_port() {
        let steps = ruleset(&plan(&["tcp:80:8080"], &["fd00::10"], &[]));
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let rule = messages.iter().rfind(|m| m.kind & 0xff == NFT_MSG_NEWRULE).unwrap();
        assert_eq!(rule.family, NFPROTO_IPV6);
        let address = "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets();
        let mut expected = vec![
            expr(
                "payload",
                vec![
                    be32(NFTA_PAYLOAD_DREG, 1),
                    be32(NFTA_PAYLOAD_BASE, 1),
                    be32(NFTA_PAYLOAD_OFFSET, 24),
                    be32(NFTA_PAYLOAD_LEN, 16),
                ],
            ),
            expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &address)]),
        ];
        expected.extend(protocol_and_port(6, 8080));
        expected.push(expr("masq", vec![]));
        assert_eq!(rule_expressions(rule), &expected);
    }

    #[test]
    fn source_ranges_encode_direction_jump_set_intervals_lookup_and_drop() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.0.0.1"], &["192.168.0.0/16", "255.255.255.255/32"]));
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let rules: Vec<&Message> = messages.iter().filter(|m| m.kind & 0xff == NFT_MSG_NEWRULE).collect();
        let verdict = |code: i32, chain: Option<&str>| {
            let mut attrs = vec![be32(NFTA_VERDICT_CODE, code as u32)];
            attrs.extend(chain.map(|c| string(NFTA_VERDICT_CHAIN, c)));
            expr(
                "immediate",
                vec![
                    be32(NFTA_IMMEDIATE_DREG, 0),
                    Attr::Nest(NFTA_IMMEDIATE_DATA, vec![Attr::Nest(NFTA_DATA_VERDICT, attrs)]),
                ],
            )
        };
        let mut jump = vec![
            expr("ct", vec![be32(NFTA_CT_DREG, 1), be32(NFTA_CT_KEY, 1)]),
            expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &[0])]),
        ];
        jump.extend(protocol_and_port(6, 80));
        jump.push(verdict(-3, Some("allowed-sources")));
        assert_eq!(rule_expressions(rules[0]), &jump);

        let set = messages.iter().find(|m| m.kind & 0xff == NFT_MSG_NEWSET).unwrap();
        assert_eq!(set.flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(
            set.attrs,
            vec![
                string(NFTA_SET_TABLE, "hostlb"),
                string(NFTA_SET_NAME, "source-ranges"),
                be32(NFTA_SET_FLAGS, NFT_SET_CONSTANT | NFT_SET_INTERVAL),
                be32(NFTA_SET_KEY_TYPE, 7),
                be32(NFTA_SET_KEY_LEN, 4),
                be32(NFTA_SET_ID, SET_ID),
            ]
        );
        let elements = messages.iter().find(|m| m.kind & 0xff == NFT_MSG_NEWSETELEM).unwrap();
        let element = |key: [u8; 4], end: bool| {
            let mut attrs = vec![value(NFTA_SET_ELEM_KEY, &key)];
            attrs.extend(end.then(|| be32(NFTA_SET_ELEM_FLAGS, NFT_SET_ELEM_INTERVAL_END)));
            Attr::Nest(NFTA_LIST_ELEM, attrs)
        };
        assert_eq!(
            elements.attrs,
            vec![
                string(NFTA_SET_ELEM_LIST_TABLE, "hostlb"),
                string(NFTA_SET_ELEM_LIST_SET, "source-ranges"),
                Attr::Nest(
                    NFTA_SET_ELEM_LIST_ELEMENTS,
                    // The last address needs no end element: nothing comes after it.
                    vec![element([192, 168, 0, 0], false), element([192, 169, 0, 0], true), element([255; 4], false)]
                ),
            ]
        );
        assert_eq!(
            rule_expressions(rules[1]),
            &vec![
                expr(
                    "payload",
                    vec![
                        be32(NFTA_PAYLOAD_DREG, 1),
                        be32(NFTA_PAYLOAD_BASE, 1),
                        be32(NFTA_PAYLOAD_OFFSET, 12),
                        be32(NFTA_PAYLOAD_LEN, 4),
                    ],
                ),
                expr("lookup", vec![string(NFTA_LOOKUP_SET, "source-ranges"), be32(NFTA_LOOKUP_SREG, 1)]),
                verdict(1, None),
            ]
        );
        assert_eq!(rule_expressions(rules[2]), &vec![verdict(0, None)]);
    }

    /// The node table of one node address and one masqueraded Service, tcp 80 to `backend`.
    fn node_table(address: &str, backend: &str) -> Vec<Step> {
        let family = Family::of(&address.parse().unwrap());
        let forwards = vec![plan_tests::forward(Protocol::Tcp, 80, &[backend])];
        let plan = plan(&["tcp:80:80"], &["node-endpoints"], &[]).with_endpoints([(family, forwards)].into());
        let node = NodeRules {
            addresses: vec![address.parse().unwrap()],
            services: vec![ServiceRules { plan, masquerade: true }],
        };
        node_ruleset(&node)
    }

    #[test]
    fn node_masquerade_loads_the_original_destination_with_the_keys_nft_uses() {
        let steps = node_table("fd00::10", "[fd00:42::7]:8080");
        let messages = decode_messages(&encode_batch(&steps, SEQ));
        let rule = messages.iter().rfind(|m| m.kind & 0xff == NFT_MSG_NEWRULE).unwrap();
        assert_eq!(rule.attrs[1], string(NFTA_RULE_CHAIN, "postrouting"));
        let ct_original = |key: u32| {
            expr("ct", vec![be32(NFTA_CT_DREG, 1), be32(NFTA_CT_KEY, key), Attr::Bytes(NFTA_CT_DIRECTION, vec![0])])
        };
        assert_eq!(
            rule_expressions(rule),
            &vec![
                ct_original(22),
                expr("lookup", vec![string(NFTA_LOOKUP_SET, "node-addresses"), be32(NFTA_LOOKUP_SREG, 1)]),
                expr("meta", vec![be32(NFTA_META_DREG, 1), be32(NFTA_META_KEY, 16)]),
                expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &[6])]),
                ct_original(12),
                expr("cmp", vec![be32(NFTA_CMP_SREG, 1), be32(NFTA_CMP_OP, 0), value(NFTA_CMP_DATA, &[0, 80])]),
                expr("masq", vec![]),
            ]
        );
        let v4 = node_table("192.168.1.10", "10.42.1.7:8080");
        let messages = decode_messages(&encode_batch(&v4, SEQ));
        let rule = messages.iter().rfind(|m| m.kind & 0xff == NFT_MSG_NEWRULE).unwrap();
        assert_eq!(rule_expressions(rule)[0], ct_original(20));
    }

    #[test]
    fn the_node_output_chain_hooks_local_out() {
        let messages = decode_messages(&encode_batch(&node_table("192.168.1.10", "10.42.1.7:8080"), SEQ));
        let output = messages
            .iter()
            .find(|m| m.kind & 0xff == NFT_MSG_NEWCHAIN && m.attrs[1] == string(NFTA_CHAIN_NAME, "output"))
            .unwrap();
        assert_eq!(
            output.attrs[2],
            Attr::Nest(NFTA_CHAIN_HOOK, vec![be32(NFTA_HOOK_HOOKNUM, 3), be32(NFTA_HOOK_PRIORITY, -100i32 as u32)])
        );
    }

    #[test]
    fn the_elements_of_the_largest_step_fit_one_attribute() {
        let ranges: Vec<String> = (0..INTERVALS_PER_STEP).map(|i| format!("fd00:{:x}::/32", i * 2)).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let steps = ruleset(&plan(&["tcp:80:80"], &["fd00::1"], &ranges));
        let batch = encode_batch(&steps, SEQ);
        let elements = decode_messages(&batch).into_iter().find(|m| m.kind & 0xff == NFT_MSG_NEWSETELEM).unwrap();
        let Attr::Nest(NFTA_SET_ELEM_LIST_ELEMENTS, list) = &elements.attrs[2] else { panic!("no elements") };
        assert_eq!(list.len(), 2 * INTERVALS_PER_STEP, "a start and an end element each");
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

    #[test]
    fn acks_succeed_only_when_every_step_is_acknowledged() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        for index in 0..steps.len() - 1 {
            acks.record(Reply { seq: SEQ.of_step(index), errno: 0, message: None });
        }
        assert!(!acks.done());
        let incomplete = acks.result(&steps).unwrap_err().to_string();
        assert!(incomplete.contains(&format!("step {} of {}", steps.len(), steps.len())), "{incomplete}");
        acks.record(Reply { seq: 5, errno: 1, message: None }); // not ours
        acks.record(Reply { seq: SEQ.of_step(steps.len() - 1), errno: 0, message: None });
        assert!(acks.done());
        assert!(acks.result(&steps).is_ok());
    }

    #[test]
    fn the_first_refused_step_is_reported_with_its_errno() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        for index in 0..steps.len() {
            let errno = if index >= 6 { 22 } else { 0 };
            acks.record(Reply { seq: SEQ.of_step(index), errno, message: None });
        }
        let error = acks.result(&steps).unwrap_err();
        assert_eq!(error.exit_code(), 1);
        assert_eq!(
            error.to_string(),
            format!(
                "nftables: step 7 of {} (add chain ip hostlb postrouting {{ type nat hook postrouting priority 100; }}) \
                 refused by the kernel: EINVAL: Invalid argument",
                steps.len()
            )
        );
    }

    #[test]
    fn an_error_for_the_batch_itself_ends_the_wait_and_is_reported_as_the_batch() {
        let steps = ruleset(&plan(&["tcp:80:80"], &["10.0.0.1"], &[]));
        let mut acks = Acks::new(SEQ, steps.len());
        acks.record(Reply { seq: SEQ.first, errno: 1, message: None });
        assert!(acks.done());
        assert!(acks
            .result(&steps)
            .unwrap_err()
            .to_string()
            .starts_with("nftables: the kernel refused the batch: EPERM"));
    }
}
