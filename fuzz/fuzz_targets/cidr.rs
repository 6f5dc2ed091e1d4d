//! `Cidr::parse` on any text: never panics; what it accepts has no host bits, its last address has
//! every host bit set (the host bits counted bit by bit from `prefix`), and it is written back as
//! text that it reads as the same range.

#![no_main]

use hostlb_contract::{address_bytes, Cidr, Family};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(cidr) = Cidr::parse(text) else { return };
    let (network, last) = (address_bytes(&cidr.network), address_bytes(&cidr.last()));
    let len = match cidr.family() {
        Family::V4 => 4,
        Family::V6 => 16,
    };
    assert_eq!((network.len(), last.len()), (len, len), "{text:?}");
    assert!(usize::from(cidr.prefix) <= len * 8, "{text:?}: prefix {}", cidr.prefix);
    let mask = leading_ones(len, cidr.prefix);
    assert!(network.iter().zip(&mask).all(|(byte, mask)| byte & !mask == 0), "{text:?} kept host bits: {cidr}");
    let host_bits_set: Vec<u8> = network.iter().zip(&mask).map(|(byte, mask)| byte | !mask).collect();
    assert_eq!(last, host_bits_set, "{text:?}: last address {}", cidr.last());
    let written = cidr.to_string();
    assert_eq!(Cidr::parse(&written), Ok(cidr), "{text:?} was written as {written:?}");
});

/// `len` bytes whose first `ones` bits are set, counted bit by bit.
fn leading_ones(len: usize, ones: u8) -> Vec<u8> {
    let bits: Vec<bool> = (0..len * 8).map(|bit| bit < usize::from(ones)).collect();
    bits.chunks(8).map(|byte| byte.iter().fold(0, |value, set| value << 1 | u8::from(*set))).collect()
}
