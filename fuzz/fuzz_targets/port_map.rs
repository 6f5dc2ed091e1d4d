//! `PortMap::parse` on any text: never panics, and what it accepts is written back as text that
//! it reads as the same map.

#![no_main]

use hostlb_contract::PortMap;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(map) = PortMap::parse(text) else { return };
    assert!(map.listen != 0 && map.target != 0, "{text:?} gave port 0: {map:?}");
    let written = map.to_string();
    assert_eq!(PortMap::parse(&written), Ok(map), "{text:?} was written as {written:?}");
});
