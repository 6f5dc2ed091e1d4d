//! Addresses as numbers, and ranges of them as the intervals a set contains.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use hostlb_contract::{Cidr, Family};

/// The addresses `first..=last` of one family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl Interval {
    /// The first address after the interval, where the kernel keeps its end; None when it runs
    /// to the family's last address, where an interval needs no end.
    pub fn end(&self) -> Option<IpAddr> {
        let family = Family::of(&self.last);
        let last = address_number(self.last);
        (last < last_number(family)).then(|| number_address(family, last + 1))
    }
}

/// The addresses of `ranges` as the fewest intervals, ascending (IPv4 first): ranges of a family
/// that overlap or touch are one interval.
pub fn merged<'a>(ranges: impl Iterator<Item = &'a Cidr>) -> Vec<Interval> {
    let mut bounds: Vec<(Family, u128, u128)> =
        ranges.map(|range| (range.family(), address_number(range.network), address_number(range.last()))).collect();
    bounds.sort();
    let mut merged: Vec<(Family, u128, u128)> = Vec::new();
    for (family, first, last) in bounds {
        match merged.last_mut() {
            // Saturating: nothing comes after an interval that ends at the last IPv6 address.
            Some((previous, _, end)) if *previous == family && first <= end.saturating_add(1) => {
                *end = (*end).max(last)
            }
            _ => merged.push((family, first, last)),
        }
    }
    merged
        .into_iter()
        .map(|(family, first, last)| Interval {
            first: number_address(family, first),
            last: number_address(family, last),
        })
        .collect()
}

/// An address as a number, so that ranges can be compared, merged and counted.
pub fn address_number(address: IpAddr) -> u128 {
    match address {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(a) => a.to_bits(),
    }
}

fn number_address(family: Family, number: u128) -> IpAddr {
    match family {
        Family::V4 => IpAddr::V4(Ipv4Addr::from_bits(number as u32)),
        Family::V6 => IpAddr::V6(Ipv6Addr::from_bits(number)),
    }
}

/// The number of the family's last address.
fn last_number(family: Family) -> u128 {
    match family {
        Family::V4 => u128::from(u32::MAX),
        Family::V6 => u128::MAX,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::port_forwarding::tests::forwarding;

    #[test]
    fn overlapping_repeated_and_touching_ranges_become_one_interval() {
        let ranges = ["10.0.0.0/24", "10.0.0.128/25", "10.0.0.0/24", "10.0.1.0/24", "10.0.3.0/24", "0.0.0.0/32"];
        let v4 = forwarding(&["tcp:80:80"], &["10.96.0.10"], &ranges);
        let text: Vec<String> =
            merged(v4.ranges(Family::V4)).iter().map(|i| format!("{}-{}", i.first, i.last)).collect();
        assert_eq!(text, ["0.0.0.0-0.0.0.0", "10.0.0.0-10.0.1.255", "10.0.3.0-10.0.3.255"]);
        let everything = forwarding(&["tcp:80:80"], &["fd00::10"], &["fd00::/8", "::/0", "ffff::/16"]);
        let all = merged(everything.ranges(Family::V6));
        assert_eq!(all.len(), 1);
        assert_eq!((all[0].first.to_string(), all[0].end()), ("::".to_string(), None), "no end after the last address");
        let inner = merged(everything.ranges(Family::V6).filter(|range| range.prefix == 8));
        assert_eq!(inner[0].end(), Some("fe00::".parse().unwrap()));
    }
}
