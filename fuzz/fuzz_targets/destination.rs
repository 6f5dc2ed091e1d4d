//! `Destination::parse` on any text: never panics, and what it accepts is written back as text
//! that it reads as the same destination.

#![no_main]

use hostlb_contract::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(destination) = Destination::parse(text) else { return };
    let written = destination.to_string();
    assert_eq!(Destination::parse(&written), Ok(destination), "{text:?} was written as {written:?}");
});
