use super::*;
use crate::netlink::batch::tests::SEQ;
use crate::netlink::tests::{be32, decode_messages, Attr, Message};
use crate::netlink::NFPROTO_IPV6;
use crate::node_table::{node_ruleset, NodeRules, ServiceRules};
use crate::port_forwarding::tests::{self as forwarding_tests, forwarding};
use crate::rules::{ruleset, INTERVALS_PER_STEP};
use hostlb_contract::Protocol;

fn string(kind: u16, text: &str) -> Attr {
    Attr::Bytes(kind, [text.as_bytes(), &[0]].concat())
}

#[test]
fn batch_of_one_table_step_has_these_exact_bytes() {
    let bytes = encode_batch(&[Step::DeleteTable(Family::V6)], Sequence { first: 7 });
    let mut expected = Vec::new();
    // BATCH_BEGIN: len 20, type 0x10, flags REQUEST, seq 7, pid 0, AF_UNSPEC, v0, res_id 10 (BE)
    expected.extend([20u32.to_ne_bytes(), [0x10, 0, 1, 0], 7u32.to_ne_bytes(), [0; 4], [0, 0, 0, 10]].concat());
    // DELTABLE (0x0a02), REQUEST|ACK, seq 8, NFPROTO_IPV6, attr NAME "hostlb\0" (len 11, padded to 12)
    let table = [11u16.to_ne_bytes(), 1u16.to_ne_bytes()].concat();
    expected.extend([32u32.to_ne_bytes(), [0x02, 0x0a, 0x05, 0], 8u32.to_ne_bytes(), [0; 4], [10, 0, 0, 0]].concat());
    expected.extend([&table[..], b"hostlb\0\0"].concat());
    // BATCH_END: seq 9
    expected.extend([20u32.to_ne_bytes(), [0x11, 0, 1, 0], 9u32.to_ne_bytes(), [0; 4], [0, 0, 0, 10]].concat());
    assert_eq!(bytes, expected);
}

#[test]
fn every_step_is_one_acked_nftables_message_between_begin_and_end() {
    let steps = ruleset(&forwarding(&["tcp:80:8080"], &["10.0.0.1", "fd00::1"], &["10.0.0.0/8"]));
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
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.0.0.1"], &[]));
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
    let steps = ruleset(&forwarding(&["udp:53:5353"], &["10.96.0.10"], &[]));
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
    let steps = ruleset(&forwarding(&["tcp:80:8080"], &["fd00::10"], &[]));
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
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["10.0.0.1"], &["192.168.0.0/16", "255.255.255.255/32"]));
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
    let forwards = vec![forwarding_tests::forward(Protocol::Tcp, 80, &[backend])];
    let forwarding = forwarding(&["tcp:80:80"], &["node-endpoints"], &[]).with_endpoints([(family, forwards)].into());
    let node = NodeRules {
        addresses: vec![address.parse().unwrap()],
        services: vec![ServiceRules { forwarding, masquerade: true }],
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
    let steps = ruleset(&forwarding(&["tcp:80:80"], &["fd00::1"], &ranges));
    let batch = encode_batch(&steps, SEQ);
    let elements = decode_messages(&batch).into_iter().find(|m| m.kind & 0xff == NFT_MSG_NEWSETELEM).unwrap();
    let Attr::Nest(NFTA_SET_ELEM_LIST_ELEMENTS, list) = &elements.attrs[2] else { panic!("no elements") };
    assert_eq!(list.len(), 2 * INTERVALS_PER_STEP, "a start and an end element each");
}
