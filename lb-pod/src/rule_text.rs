//! A step's nft spelling, for logs and error messages. A rule's is read back from its
//! expressions rather than written beside them, so that they show what the kernel is given. It
//! is how `nft list ruleset` prints our rules, except that `dnat` names its family, as the
//! expression carries it.

use hostlb_contract::{bytes_address, Family, Protocol};

use crate::port_forwarding::socket_text;
use crate::rules::{
    address_fields, address_number, ChainType, CtOriginalKey, Expr, Hook, Interval, PayloadBase, Reg, Step, Verdict,
    DESTINATION_PORT, DIRECTION_ORIGINAL, DIRECTION_REPLY, TABLE,
};

/// Intervals an `add element` text shows; the rest are counted, so that an error message about a
/// step of thousands of ranges stays short.
const SHOWN_INTERVALS: usize = 3;

/// The step in `nft` syntax.
pub fn step_text(step: &Step) -> String {
    let table = format!("{} {TABLE}", nft_family(step.family()));
    match step {
        Step::EnsureTable(_) => format!("add table {table}"),
        Step::DeleteTable(_) => format!("delete table {table}"),
        Step::AddTable(_) => format!("add table {table} (anew)"),
        Step::AddChain { name, base: None, .. } => format!("add chain {table} {name}"),
        Step::AddChain { name, base: Some(base), .. } => format!(
            "add chain {table} {name} {{ type {} hook {} priority {}; }}",
            match base.kind {
                ChainType::Nat => "nat",
                ChainType::Filter => "filter",
            },
            match base.hook {
                Hook::Prerouting => "prerouting",
                Hook::Output => "output",
                Hook::Postrouting => "postrouting",
            },
            base.priority
        ),
        Step::AddRule { family, chain, exprs } => format!("add rule {table} {chain} {}", nft_text(*family, exprs)),
        Step::AddSet { family, name } => {
            let key = match family {
                Family::V4 => "ipv4_addr",
                Family::V6 => "ipv6_addr",
            };
            format!("add set {table} {name} {{ type {key}; flags constant,interval; }}")
        }
        Step::AddIntervals { set, intervals, .. } => {
            let mut shown: Vec<String> = intervals.iter().take(SHOWN_INTERVALS).map(interval_text).collect();
            if intervals.len() > SHOWN_INTERVALS {
                shown.push(format!("and {} more", intervals.len() - SHOWN_INTERVALS));
            }
            format!("add element {table} {set} {{ {} }}", shown.join(", "))
        }
    }
}

/// As nft shows an interval: one address, a prefix where it is one, else `FIRST-LAST`.
fn interval_text(interval: &Interval) -> String {
    if interval.first == interval.last {
        return interval.first.to_string();
    }
    let bits = address_fields(Family::of(&interval.first)).len * 8;
    let first = address_number(interval.first);
    let host = address_number(interval.last) - first;
    // A prefix: the host part is all ones (one less than a power of two, or every bit for a /0),
    // and the first address has none of its bits.
    if host & host.wrapping_add(1) == 0 && first & host == 0 {
        format!("{}/{}", interval.first, bits - host.count_ones())
    } else {
        format!("{}-{}", interval.first, interval.last)
    }
}

/// The text of a rule of a `family` table.
pub fn nft_text(family: Family, exprs: &[Expr]) -> String {
    let mut reader = Reader { family, registers: [None; 3], words: Vec::new(), protocol_matched: None };
    for expr in exprs {
        reader.read(expr);
    }
    reader.words.join(" ")
}

/// A header field that a payload expression loads.
#[derive(Clone, Copy)]
enum Field {
    SourceAddress,
    DestinationAddress,
    DestinationPort,
    Raw { base: PayloadBase, offset: u32, len: u32 },
}

/// What a register was last loaded with, as far as the rule has been read.
#[derive(Clone, Copy)]
enum Loaded<'a> {
    L4Proto,
    CtDirection,
    CtOriginal(CtOriginalKey),
    Field(Field),
    Data(&'a [u8]),
    /// `numgen random mod` this modulus.
    Random(u32),
}

struct Reader<'a> {
    family: Family,
    registers: [Option<Loaded<'a>>; 3],
    words: Vec<String>,
    /// The protocol of an `l4proto` match that is the last word so far: nft folds it into the
    /// port match that follows (`tcp dport 80`).
    protocol_matched: Option<String>,
}

impl<'a> Reader<'a> {
    fn read(&mut self, expr: &'a Expr) {
        match expr {
            Expr::MetaL4Proto { dreg } => self.load(*dreg, Some(Loaded::L4Proto)),
            Expr::CtDirection { dreg } => self.load(*dreg, Some(Loaded::CtDirection)),
            Expr::CtOriginal { key, dreg } => self.load(*dreg, Some(Loaded::CtOriginal(*key))),
            Expr::Payload { base, offset, len, dreg } => {
                self.load(*dreg, Some(Loaded::Field(self.field(*base, *offset, *len))))
            }
            Expr::Lookup { sreg, set } => {
                let value = match self.loaded(*sreg) {
                    Some(Loaded::Field(field)) => self.field_name(field),
                    Some(Loaded::CtOriginal(key)) => ct_original_name(key),
                    _ => self.operand(*sreg),
                };
                self.push(format!("{value} @{set}"));
            }
            Expr::CmpEq { sreg, data } => self.compare(*sreg, data),
            Expr::Immediate { dreg, data } => self.load(*dreg, Some(Loaded::Data(data))),
            Expr::Numgen { dreg, modulus } => self.load(*dreg, Some(Loaded::Random(*modulus))),
            Expr::Verdict(Verdict::Accept) => self.push("accept".into()),
            Expr::Verdict(Verdict::Drop) => self.push("drop".into()),
            Expr::Verdict(Verdict::Jump(chain)) => self.push(format!("jump {chain}")),
            Expr::Dnat { family, addr, port } => {
                let to = match (self.data(*addr).and_then(bytes_address), self.data(*port).and_then(port_number)) {
                    (Some(address), Some(port)) => socket_text(address, port),
                    _ => format!("{}:{}", self.operand(*addr), self.operand(*port)),
                };
                self.push(format!("dnat {} to {to}", nft_family(*family)));
            }
            Expr::Masquerade => self.push("masquerade".into()),
        }
    }

    fn compare(&mut self, sreg: Reg, data: &[u8]) {
        let text = match (self.loaded(sreg), self.protocol_matched.take()) {
            (Some(Loaded::L4Proto), _) => {
                let name = match data {
                    [number] => Protocol::ALL
                        .into_iter()
                        .find(|protocol| protocol.number() == *number)
                        .map_or_else(|| number.to_string(), |protocol| protocol.arg_name().to_string()),
                    _ => value(data),
                };
                self.push(format!("meta l4proto {name}"));
                self.protocol_matched = Some(name);
                return;
            }
            (Some(Loaded::Field(Field::DestinationPort)), Some(protocol)) => {
                self.words.pop();
                format!("{protocol} dport {}", value(data))
            }
            (Some(Loaded::CtDirection), _) => match data {
                [DIRECTION_ORIGINAL] => "ct direction original".into(),
                [DIRECTION_REPLY] => "ct direction reply".into(),
                _ => format!("ct direction {}", value(data)),
            },
            (Some(Loaded::CtOriginal(key)), _) => format!("{} {}", ct_original_name(key), value(data)),
            // The kernel stores the number in host order.
            (Some(Loaded::Random(modulus)), _) => match <[u8; 4]>::try_from(data) {
                Ok(bytes) => format!("numgen random mod {modulus} {}", u32::from_ne_bytes(bytes)),
                Err(_) => format!("numgen random mod {modulus} {}", value(data)),
            },
            (Some(Loaded::Field(field @ Field::Raw { .. })), _) => format!("{} {}", self.field_name(field), hex(data)),
            (Some(Loaded::Field(field)), _) => format!("{} {}", self.field_name(field), value(data)),
            (Some(Loaded::Data(_)) | None, _) => format!("{} == {}", self.operand(sreg), value(data)),
        };
        self.push(text);
    }

    fn push(&mut self, word: String) {
        self.protocol_matched = None;
        self.words.push(word);
    }

    fn load(&mut self, reg: Reg, loaded: Option<Loaded<'a>>) {
        self.registers[reg.number() as usize] = loaded;
    }

    fn loaded(&self, reg: Reg) -> Option<Loaded<'a>> {
        self.registers[reg.number() as usize]
    }

    fn data(&self, reg: Reg) -> Option<&'a [u8]> {
        match self.loaded(reg) {
            Some(Loaded::Data(data)) => Some(data),
            _ => None,
        }
    }

    /// A register as an operand: its immediate value if it has one, else its name.
    fn operand(&self, reg: Reg) -> String {
        self.data(reg).map_or_else(|| format!("reg {}", reg.number()), value)
    }

    fn field(&self, base: PayloadBase, offset: u32, len: u32) -> Field {
        let addresses = address_fields(self.family);
        match base {
            PayloadBase::Network if (offset, len) == (addresses.source, addresses.len) => Field::SourceAddress,
            PayloadBase::Network if (offset, len) == (addresses.destination, addresses.len) => {
                Field::DestinationAddress
            }
            PayloadBase::Transport if (offset, len) == DESTINATION_PORT => Field::DestinationPort,
            _ => Field::Raw { base, offset, len },
        }
    }

    fn field_name(&self, field: Field) -> String {
        let ip = nft_family(self.family);
        match field {
            Field::SourceAddress => format!("{ip} saddr"),
            Field::DestinationAddress => format!("{ip} daddr"),
            Field::DestinationPort => "th dport".into(),
            Field::Raw { base, offset, len } => {
                let header = match base {
                    PayloadBase::Network => "nh",
                    PayloadBase::Transport => "th",
                };
                format!("@{header},{},{}", offset * 8, len * 8)
            }
        }
    }
}

fn ct_original_name(key: CtOriginalKey) -> String {
    match key {
        CtOriginalKey::DestinationAddress(family) => format!("ct original {} daddr", nft_family(family)),
        CtOriginalKey::DestinationPort => "ct original proto-dst".into(),
    }
}

fn nft_family(family: Family) -> &'static str {
    match family {
        Family::V4 => "ip",
        Family::V6 => "ip6",
    }
}

/// Data as nft shows it, by its length: an address, a port, a byte, else hexadecimal.
fn value(data: &[u8]) -> String {
    if let Some(address) = bytes_address(data) {
        return address.to_string();
    }
    match data {
        [byte] => byte.to_string(),
        _ => port_number(data).map_or_else(|| hex(data), |port| port.to_string()),
    }
}

fn hex(data: &[u8]) -> String {
    format!("0x{}", data.iter().map(|byte| format!("{byte:02x}")).collect::<String>())
}

fn port_number(data: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(data.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::Name;

    fn ipv4(exprs: &[Expr]) -> String {
        nft_text(Family::V4, exprs)
    }

    fn load(base: PayloadBase, offset: u32, len: u32) -> Expr {
        Expr::Payload { base, offset, len, dreg: Reg::R1 }
    }

    fn compare(data: &[u8]) -> Expr {
        Expr::CmpEq { sreg: Reg::R1, data: data.to_vec() }
    }

    #[test]
    fn a_protocol_match_folds_into_the_port_match_after_it() {
        let udp_port = [Expr::MetaL4Proto { dreg: Reg::R1 }, compare(&[17]), load(PayloadBase::Transport, 2, 2)];
        assert_eq!(ipv4(&[&udp_port[..], &[compare(&[0, 53])]].concat()), "udp dport 53");
        assert_eq!(ipv4(&[Expr::MetaL4Proto { dreg: Reg::R1 }, compare(&[1])]), "meta l4proto 1");
        assert_eq!(ipv4(&[load(PayloadBase::Transport, 2, 2), compare(&[0, 53])]), "th dport 53");
    }

    #[test]
    fn conntrack_directions_are_named_and_other_values_shown_as_they_are() {
        let direction = |data: &[u8]| [Expr::CtDirection { dreg: Reg::R1 }, compare(data)];
        assert_eq!(ipv4(&direction(&[0])), "ct direction original");
        assert_eq!(ipv4(&direction(&[1])), "ct direction reply");
        assert_eq!(ipv4(&direction(&[2])), "ct direction 2");
        let udp_port = [
            Expr::MetaL4Proto { dreg: Reg::R1 },
            compare(&[17]),
            load(PayloadBase::Transport, 2, 2),
            compare(&[0, 53]),
        ];
        assert_eq!(ipv4(&[&direction(&[0])[..], &udp_port].concat()), "ct direction original udp dport 53");
    }

    #[test]
    fn the_original_tuple_is_named_as_nft_lists_it() {
        let address = |family| Expr::CtOriginal { key: CtOriginalKey::DestinationAddress(family), dreg: Reg::R1 };
        let port = [Expr::CtOriginal { key: CtOriginalKey::DestinationPort, dreg: Reg::R1 }, compare(&[0, 80])];
        let tcp = [Expr::MetaL4Proto { dreg: Reg::R1 }, compare(&[6])];
        assert_eq!(
            ipv4(&[&[address(Family::V4), compare(&[10, 0, 0, 1])][..], &tcp, &port].concat()),
            "ct original ip daddr 10.0.0.1 meta l4proto tcp ct original proto-dst 80"
        );
        let lookup = [address(Family::V6), Expr::Lookup { sreg: Reg::R1, set: Name::new("node-addresses") }];
        assert_eq!(nft_text(Family::V6, &lookup), "ct original ip6 daddr @node-addresses");
    }

    #[test]
    fn addresses_are_named_by_family_and_direction() {
        let daddr = [load(PayloadBase::Network, 16, 4), compare(&[10, 0, 0, 1])];
        assert_eq!(ipv4(&daddr), "ip daddr 10.0.0.1");
        let saddr = [load(PayloadBase::Network, 8, 16), compare(&[vec![0xfd], vec![0; 15]].concat())];
        assert_eq!(nft_text(Family::V6, &saddr), "ip6 saddr fd00::");
        assert_eq!(ipv4(&[load(PayloadBase::Network, 9, 1), compare(&[6])]), "@nh,72,8 0x06");
    }

    #[test]
    fn a_set_lookup_names_the_field_and_the_set() {
        let lookup = [load(PayloadBase::Network, 8, 16), Expr::Lookup { sreg: Reg::R1, set: Name::new("allowed") }];
        assert_eq!(
            nft_text(Family::V6, &[&lookup[..], &[Expr::Verdict(Verdict::Accept)]].concat()),
            "ip6 saddr @allowed accept"
        );
        assert_eq!(ipv4(&[Expr::Lookup { sreg: Reg::R2, set: Name::new("allowed") }]), "reg 2 @allowed");
    }

    #[test]
    fn intervals_read_as_addresses_prefixes_or_ranges_and_many_are_counted() {
        let interval =
            |first: &str, last: &str| Interval { first: first.parse().unwrap(), last: last.parse().unwrap() };
        let intervals = vec![
            interval("10.0.0.7", "10.0.0.7"),
            interval("10.1.0.0", "10.1.255.255"),
            interval("10.3.0.0", "10.4.0.255"),
            interval("10.6.0.0", "10.6.0.1"),
        ];
        let step = |intervals: &[Interval]| {
            step_text(&Step::AddIntervals {
                family: Family::V4,
                set: Name::new("ranges"),
                intervals: intervals.to_vec(),
            })
        };
        assert_eq!(
            step(&intervals[..3]),
            "add element ip hostlb ranges { 10.0.0.7, 10.1.0.0/16, 10.3.0.0-10.4.0.255 }"
        );
        assert_eq!(
            step(&intervals),
            "add element ip hostlb ranges { 10.0.0.7, 10.1.0.0/16, 10.3.0.0-10.4.0.255, and 1 more }"
        );
        assert_eq!(interval_text(&interval("0.0.0.0", "255.255.255.255")), "0.0.0.0/0");
        assert_eq!(interval_text(&interval("::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff")), "::/0");
        assert_eq!(interval_text(&interval("10.0.0.1", "10.0.0.2")), "10.0.0.1-10.0.0.2");
        assert_eq!(interval_text(&interval("fd00::", "fd00::ff")), "fd00::/120");
    }

    #[test]
    fn dnat_shows_the_immediate_address_and_port() {
        let dnat = |address: Vec<u8>| {
            vec![
                Expr::Immediate { dreg: Reg::R1, data: address },
                Expr::Immediate { dreg: Reg::R2, data: vec![0x1f, 0x90] },
                Expr::Dnat { family: Family::V6, addr: Reg::R1, port: Reg::R2 },
            ]
        };
        let address = "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
        assert_eq!(nft_text(Family::V6, &dnat(address)), "dnat ip6 to [fd00::10]:8080");
        assert_eq!(nft_text(Family::V6, &dnat(vec![1, 2, 3])), "dnat ip6 to 0x010203:8080");
    }

    #[test]
    fn verdicts_end_the_text() {
        let jump = [
            load(PayloadBase::Network, 12, 4),
            compare(&[10, 0, 0, 7]),
            Expr::Verdict(Verdict::Jump(Name::new("next"))),
        ];
        assert_eq!(ipv4(&jump), "ip saddr 10.0.0.7 jump next");
        assert_eq!(ipv4(&[Expr::Verdict(Verdict::Accept)]), "accept");
        assert_eq!(ipv4(&[compare(&[1, 2, 3])]), "reg 1 == 0x010203");
    }
}
