use std::collections::BTreeMap;

use super::*;
use crate::port_forwarding::tests::forwarding;
use crate::rule_text::step_text;

fn described(steps: &[Step]) -> Vec<String> {
    steps.iter().map(step_text).collect()
}

#[test]
fn single_stack_replaces_both_tables_and_builds_only_its_own() {
    let steps = ruleset(&forwarding(&["tcp:80:8080", "udp:53:53"], &["10.96.0.10"], &[]));
    assert_eq!(
        described(&steps),
        vec![
            "add table ip hostlb",
            "delete table ip hostlb",
            "add table ip6 hostlb",
            "delete table ip6 hostlb",
            "add table ip hostlb (anew)",
            "add chain ip hostlb prerouting { type nat hook prerouting priority -100; }",
            "add chain ip hostlb postrouting { type nat hook postrouting priority 100; }",
            "add rule ip hostlb prerouting tcp dport 80 dnat ip to 10.96.0.10:8080",
            "add rule ip hostlb prerouting udp dport 53 dnat ip to 10.96.0.10:53",
            "add rule ip hostlb postrouting ip daddr 10.96.0.10 tcp dport 8080 masquerade",
            "add rule ip hostlb postrouting ip daddr 10.96.0.10 udp dport 53 masquerade",
        ]
    );
}

#[test]
fn dual_stack_builds_one_table_per_family_with_its_own_destination() {
    let steps = ruleset(&forwarding(&["tcp:443:443"], &["10.96.0.10", "fd00::10"], &[]));
    let text = described(&steps);
    assert!(text.contains(&"add rule ip hostlb prerouting tcp dport 443 dnat ip to 10.96.0.10:443".to_string()));
    assert!(text.contains(&"add rule ip6 hostlb prerouting tcp dport 443 dnat ip6 to [fd00::10]:443".to_string()));
    assert!(text.contains(&"add rule ip6 hostlb postrouting ip6 daddr fd00::10 tcp dport 443 masquerade".into()));
    assert_eq!(steps.iter().filter(|s| matches!(s, Step::AddTable(_))).count(), 2);
}

#[test]
fn several_backends_share_new_connections_evenly_and_none_means_no_forwarding() {
    let waiting = forwarding(&["tcp:80:80", "udp:53:53"], &["node-endpoints"], &[]);
    let text = described(&ruleset(&waiting));
    assert!(text.iter().all(|line| !line.contains("add rule")), "no endpoint yet, no rule: {text:?}");
    assert!(text.contains(&"add chain ip6 hostlb prerouting { type nat hook prerouting priority -100; }".into()));

    let backends = ["10.1.0.9:8080", "10.1.0.7:8080", "10.1.0.8:8080"].map(|b| b.parse().unwrap()).to_vec();
    let forward = Forward { protocol: Protocol::Tcp, listen: 80, backends };
    let filled = waiting.with_endpoints(BTreeMap::from([(Family::V4, vec![forward])]));
    let rules: Vec<String> = described(&ruleset(&filled)).into_iter().filter(|l| l.contains("add rule")).collect();
    assert_eq!(
        rules,
        vec![
            "add rule ip hostlb prerouting tcp dport 80 numgen random mod 3 0 dnat ip to 10.1.0.7:8080",
            "add rule ip hostlb prerouting tcp dport 80 numgen random mod 2 0 dnat ip to 10.1.0.8:8080",
            "add rule ip hostlb prerouting tcp dport 80 dnat ip to 10.1.0.9:8080",
            "add rule ip hostlb postrouting ip daddr 10.1.0.7 tcp dport 8080 masquerade",
            "add rule ip hostlb postrouting ip daddr 10.1.0.8 tcp dport 8080 masquerade",
            "add rule ip hostlb postrouting ip daddr 10.1.0.9 tcp dport 8080 masquerade",
        ]
    );
}

#[test]
fn a_fresh_namespace_gets_the_same_tables_without_removals() {
    let forwarding = forwarding(&["tcp:80:8080"], &["10.96.0.10", "fd00::10"], &["10.0.0.0/8"]);
    let fresh = fresh_ruleset(&forwarding);
    assert!(fresh.iter().all(|step| !matches!(step, Step::EnsureTable(_) | Step::DeleteTable(_))));
    assert_eq!(ruleset(&forwarding)[4..], fresh[..]);
}

#[test]
fn a_fresh_namespace_gets_both_tables_so_that_either_already_there_is_found() {
    let v4_only = forwarding(&["tcp:80:8080"], &["10.96.0.10"], &[]);
    let tables: Vec<Step> =
        fresh_ruleset(&v4_only).into_iter().filter(|step| matches!(step, Step::AddTable(_))).collect();
    assert_eq!(tables, vec![Step::AddTable(Family::V4), Step::AddTable(Family::V6)]);
    assert!(fresh_ruleset(&v4_only)
        .iter()
        .all(|step| matches!(step, Step::AddTable(Family::V6)) || step.family() == Family::V4));
}

#[test]
fn ipv6_only_has_no_ipv4_table_but_still_deletes_an_old_one() {
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["fd00::10"], &[]));
    assert!(steps.contains(&Step::DeleteTable(Family::V4)));
    assert!(!steps.contains(&Step::AddTable(Family::V4)));
    assert!(steps.iter().skip(4).all(|step| step.family() == Family::V6));
}

#[test]
fn source_ranges_jump_listened_ports_to_one_set_lookup_ending_in_drop() {
    let ranges = ["192.168.0.0/16", "10.0.0.7/32", "fd00::/8"];
    let steps = ruleset(&forwarding(&["tcp:80:8080"], &["10.96.0.10", "fd00::10"], &ranges));
    let text = described(&steps);
    let v4: Vec<&String> = text.iter().filter(|t| t.contains("ip hostlb") && t.contains("source")).collect();
    assert_eq!(
        v4,
        vec![
            "add chain ip hostlb source-filter { type filter hook prerouting priority -150; }",
            "add chain ip hostlb allowed-sources",
            "add rule ip hostlb source-filter ct direction original tcp dport 80 jump allowed-sources",
            "add set ip hostlb source-ranges { type ipv4_addr; flags constant,interval; }",
            "add element ip hostlb source-ranges { 10.0.0.7, 192.168.0.0/16 }",
            "add rule ip hostlb allowed-sources ip saddr @source-ranges accept",
            "add rule ip hostlb allowed-sources drop",
        ]
    );
    assert!(text.contains(&"add element ip6 hostlb source-ranges { fd00::/8 }".into()), "{text:#?}");
}

/// How many intervals each step that fills a set adds.
fn intervals_per_step(steps: &[Step]) -> Vec<usize> {
    let counts = steps.iter().filter_map(|step| match step {
        Step::AddIntervals { intervals, .. } => Some(intervals.len()),
        _ => None,
    });
    counts.collect()
}

#[test]
fn thousands_of_ranges_are_one_set_filled_in_steps_the_netlink_attribute_can_carry() {
    let ranges: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 256 * 2, i % 256)).collect();
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.96.0.10"], &ranges));
    let sets = steps.iter().filter(|step| matches!(step, Step::AddSet { .. })).count();
    let filled = intervals_per_step(&steps);
    // Every other /16 is full (256 /24s that touch), so the 5,000 ranges are 20 intervals.
    assert_eq!((sets, filled), (1, vec![20]));
    let allowed = steps.iter().filter(|s| matches!(s, Step::AddRule { chain: CHAIN_ALLOWED_SOURCES, .. })).count();
    assert_eq!(allowed, 2, "one lookup and the drop");

    let apart: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 128, i % 128 * 2)).collect();
    let apart: Vec<&str> = apart.iter().map(String::as_str).collect();
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.96.0.10"], &apart));
    let filled = intervals_per_step(&steps);
    assert_eq!(filled.iter().sum::<usize>(), 5000);
    assert!(filled.iter().all(|count| *count <= INTERVALS_PER_STEP), "{filled:?}");
}

#[test]
fn only_the_original_direction_is_filtered_so_answers_to_a_listened_port_pass() {
    let steps = ruleset(&forwarding(&["udp:500:4500"], &["10.96.0.10"], &["192.168.0.0/16"]));
    let filters: Vec<&Vec<Expr>> = steps
        .iter()
        .filter_map(|step| match step {
            Step::AddRule { chain: CHAIN_SOURCE_FILTER, exprs, .. } => Some(exprs),
            _ => None,
        })
        .collect();
    assert_eq!(
        filters,
        vec![&vec![
            Expr::CtDirection { dreg: Reg::R1 },
            Expr::CmpEq { sreg: Reg::R1, data: vec![0] },
            Expr::MetaL4Proto { dreg: Reg::R1 },
            Expr::CmpEq { sreg: Reg::R1, data: vec![17] },
            Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::R1 },
            Expr::CmpEq { sreg: Reg::R1, data: vec![1, 244] },
            Expr::Verdict(Verdict::Jump(CHAIN_ALLOWED_SOURCES)),
        ]]
    );
}

#[test]
fn a_family_without_ranges_drops_everything_when_another_family_has_some() {
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.96.0.10", "fd00::10"], &["192.168.0.0/16"]));
    let v6_allowed: Vec<String> = steps
        .iter()
        .filter(|s| matches!(s, Step::AddRule { family: Family::V6, chain: CHAIN_ALLOWED_SOURCES, .. }))
        .map(step_text)
        .collect();
    assert_eq!(v6_allowed, vec!["add rule ip6 hostlb allowed-sources drop"]);
    assert!(described(&steps)
        .contains(&"add rule ip6 hostlb source-filter ct direction original tcp dport 80 jump allowed-sources".into()));
}

#[test]
fn without_source_ranges_there_is_no_filter_chain() {
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.96.0.10"], &[]));
    assert!(!described(&steps).iter().any(|s| s.contains("source")));
}

#[test]
fn masquerade_is_one_rule_per_protocol_and_target() {
    let steps = ruleset(&forwarding(&["tcp:80:8080", "tcp:81:8080", "udp:80:8080"], &["10.0.0.1"], &[]));
    let masq = steps.iter().filter(|s| matches!(s, Step::AddRule { chain: CHAIN_MASQUERADE, .. })).count();
    assert_eq!(masq, 2);
}

#[test]
fn dnat_rule_loads_protocol_port_address_and_target_port() {
    let steps = ruleset(&forwarding(&["sctp:9:1009"], &["fd00::10"], &[]));
    let Some(Step::AddRule { exprs, .. }) = steps.iter().find(|s| matches!(s, Step::AddRule { chain: CHAIN_DNAT, .. }))
    else {
        panic!("no dnat rule");
    };
    let address = "fd00::10".parse::<std::net::Ipv6Addr>().unwrap().octets().to_vec();
    assert_eq!(
        exprs,
        &vec![
            Expr::MetaL4Proto { dreg: Reg::R1 },
            Expr::CmpEq { sreg: Reg::R1, data: vec![132] },
            Expr::Payload { base: PayloadBase::Transport, offset: 2, len: 2, dreg: Reg::R1 },
            Expr::CmpEq { sreg: Reg::R1, data: vec![0, 9] },
            Expr::Immediate { dreg: Reg::R1, data: address },
            Expr::Immediate { dreg: Reg::R2, data: vec![0x03, 0xf1] },
            Expr::Dnat { family: Family::V6, addr: Reg::R1, port: Reg::R2 },
        ]
    );
}

#[test]
fn every_rule_reads_back_as_the_nft_people_write() {
    let ranges = ["0.0.0.0/0", "10.0.0.0/8", "10.0.0.7/32", "fd00::/8"];
    let steps = ruleset(&forwarding(&["tcp:80:8080", "udp:53:53", "sctp:9:9"], &["10.96.0.10", "fd00::10"], &ranges));
    for text in described(&steps) {
        assert!(
            !["reg ", "0x", "@nh", "@th", "meta l4proto", "th dport"].iter().any(|raw| text.contains(raw)),
            "{text}"
        );
    }
}

#[test]
fn same_forwarding_gives_the_same_steps() {
    let a = ruleset(&forwarding(&["udp:53:53", "tcp:80:80"], &["10.0.0.1"], &["10.0.0.0/8"]));
    let b = ruleset(&forwarding(&["tcp:80:80", "udp:53:53"], &["10.0.0.1"], &["10.0.0.0/8"]));
    assert_eq!(a, b);
}
