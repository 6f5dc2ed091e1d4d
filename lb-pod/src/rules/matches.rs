//! The expressions rules match packets with: direction, protocol and port, addresses.

use std::net::IpAddr;

use hostlb_contract::{address_bytes, Family, Protocol};

use super::{Expr, PayloadBase, Reg, DIRECTION_ORIGINAL};

/// `ct direction original`: from the side that opened the connection, not the answers to it.
pub fn original_direction() -> Vec<Expr> {
    vec![Expr::CtDirection { dreg: Reg::R1 }, Expr::CmpEq { sreg: Reg::R1, data: vec![DIRECTION_ORIGINAL] }]
}

/// Offset and length of the destination port: the same in TCP, UDP and SCTP headers.
pub const DESTINATION_PORT: (u32, u32) = (2, 2);

/// `meta l4proto PROTO th dport PORT`.
pub fn protocol_and_port(protocol: Protocol, port: u16) -> Vec<Expr> {
    let (offset, len) = DESTINATION_PORT;
    let port = [
        Expr::Payload { base: PayloadBase::Transport, offset, len, dreg: Reg::R1 },
        Expr::CmpEq { sreg: Reg::R1, data: port.to_be_bytes().to_vec() },
    ];
    [protocol_is(protocol), port.to_vec()].concat()
}

/// `meta l4proto PROTO`.
pub fn protocol_is(protocol: Protocol) -> Vec<Expr> {
    vec![Expr::MetaL4Proto { dreg: Reg::R1 }, Expr::CmpEq { sreg: Reg::R1, data: vec![protocol.number()] }]
}

/// Where the network header of a family has its addresses.
pub struct AddressFields {
    pub source: u32,
    pub destination: u32,
    pub len: u32,
}

pub fn address_fields(family: Family) -> AddressFields {
    match family {
        Family::V4 => AddressFields { source: 12, destination: 16, len: 4 },
        Family::V6 => AddressFields { source: 8, destination: 24, len: 16 },
    }
}

pub(super) fn destination_is(destination: IpAddr) -> Vec<Expr> {
    let AddressFields { destination: offset, len, .. } = address_fields(Family::of(&destination));
    vec![
        Expr::Payload { base: PayloadBase::Network, offset, len, dreg: Reg::R1 },
        Expr::CmpEq { sreg: Reg::R1, data: address_bytes(&destination) },
    ]
}
