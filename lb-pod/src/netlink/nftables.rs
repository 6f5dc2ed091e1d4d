//! nftables' messages: `Step`s encoded as one nfnetlink batch, BATCH_BEGIN, one message per
//! step that the kernel acknowledges, BATCH_END.
//!
//! Constants are those of `linux/netfilter/nf_tables.h`, and of `linux/netfilter/nfnetlink.h`
//! for the batch. nftables' integer attributes are in network byte order.

use std::net::IpAddr;

use super::batch::Sequence;
use super::{nfproto, Writer, AF_UNSPEC, NLM_F_ACK, NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use crate::rules::{
    BaseChain, ChainType, CtOriginalKey, Expr, Hook, Interval, PayloadBase, Reg, Step, Verdict, DIRECTION_ORIGINAL,
    TABLE,
};
use hostlb_contract::{address_bytes, Family};

const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFNL_SUBSYS_NFTABLES: u16 = 10;

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

/// nftables' data attributes (`NFTA_DATA_VALUE` in a nest of its own).
impl Writer {
    fn data_value(&mut self, kind: u16, value: &[u8]) {
        let nest = self.nest(kind);
        self.attr(NFTA_DATA_VALUE, value);
        self.end_nest(nest);
    }
}

#[cfg(test)]
#[path = "nftables_tests.rs"]
mod tests;
