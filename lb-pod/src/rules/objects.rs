//! nftables' objects as plain values: chains, rules and their expressions, address sets, and
//! the steps of a batch that add them.

use std::fmt;

use hostlb_contract::Family;

use super::Interval;

/// What `ct direction` loads, one byte, as `enum ip_conntrack_dir` numbers it
/// (`linux/netfilter/nf_conntrack_tuple_common.h`).
pub const DIRECTION_ORIGINAL: u8 = 0;
pub const DIRECTION_REPLY: u8 = 1;

/// The name of a chain or set in our table: a fixed stem, numbered by Service where the node's
/// table has one per Service (`allowed-sources-3`). A value rather than a string, so that names
/// stay constants that patterns can match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Name {
    stem: &'static str,
    service: Option<usize>,
}

impl Name {
    pub const fn new(stem: &'static str) -> Name {
        Name { stem, service: None }
    }

    /// This name numbered for the `service`th Service's own chain or set.
    pub const fn of_service(self, service: usize) -> Name {
        Name { stem: self.stem, service: Some(service) }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.service {
            None => f.write_str(self.stem),
            Some(service) => write!(f, "{}-{service}", self.stem),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChainType {
    Nat,
    Filter,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    Prerouting,
    /// Packets the host itself sends.
    Output,
    Postrouting,
}

/// What makes a chain a base chain: its type, hook and priority.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseChain {
    pub kind: ChainType,
    pub hook: Hook,
    pub priority: i32,
}

/// nftables registers: the verdict register and two 16-byte data registers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    Verdict,
    R1,
    R2,
}

impl Reg {
    /// As `enum nft_registers` numbers them (`linux/netfilter/nf_tables.h`).
    pub fn number(self) -> u32 {
        match self {
            Reg::Verdict => 0,
            Reg::R1 => 1,
            Reg::R2 => 2,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadBase {
    Network,
    Transport,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    Drop,
    Jump(Name),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Expr {
    /// `meta l4proto` into a register.
    MetaL4Proto {
        dreg: Reg,
    },
    /// `ct direction` into a register: `DIRECTION_ORIGINAL` or `DIRECTION_REPLY`.
    CtDirection {
        dreg: Reg,
    },
    /// `ct original KEY` into a register: a field of the connection's first packet as it
    /// arrived, before any NAT.
    CtOriginal {
        key: CtOriginalKey,
        dreg: Reg,
    },
    Payload {
        base: PayloadBase,
        offset: u32,
        len: u32,
        dreg: Reg,
    },
    CmpEq {
        sreg: Reg,
        data: Vec<u8>,
    },
    /// Whether the register's value is in the set: the rule goes on if it is.
    Lookup {
        sreg: Reg,
        set: Name,
    },
    Immediate {
        dreg: Reg,
        data: Vec<u8>,
    },
    Verdict(Verdict),
    /// `numgen random mod MODULUS` into a register: a 32-bit number below the modulus.
    Numgen {
        dreg: Reg,
        modulus: u32,
    },
    Dnat {
        family: Family,
        addr: Reg,
        port: Reg,
    },
    Masquerade,
}

/// What `Expr::CtOriginal` loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CtOriginalKey {
    /// The destination address, of the table's family: 4 or 16 bytes.
    DestinationAddress(Family),
    /// The destination port, 2 bytes.
    DestinationPort,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Creates the table if it is missing and does nothing otherwise, so that the delete
    /// that follows cannot fail with ENOENT (`nft` does the same).
    EnsureTable(Family),
    DeleteTable(Family),
    AddTable(Family),
    AddChain {
        family: Family,
        name: Name,
        base: Option<BaseChain>,
    },
    AddRule {
        family: Family,
        chain: Name,
        exprs: Vec<Expr>,
    },
    /// A set of addresses of the family, `flags constant, interval`: filled in the same batch
    /// (`AddIntervals`) and never changed after, as the whole table is replaced instead.
    AddSet {
        family: Family,
        name: Name,
    },
    /// Intervals into a set, ascending, neither overlapping nor touching: the kernel refuses
    /// overlapping ones.
    AddIntervals {
        family: Family,
        set: Name,
        intervals: Vec<Interval>,
    },
}

impl Step {
    pub fn family(&self) -> Family {
        match self {
            Step::EnsureTable(family) | Step::DeleteTable(family) | Step::AddTable(family) => *family,
            Step::AddChain { family, .. }
            | Step::AddRule { family, .. }
            | Step::AddSet { family, .. }
            | Step::AddIntervals { family, .. } => *family,
        }
    }
}
