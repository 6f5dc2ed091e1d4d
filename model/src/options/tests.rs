use hostlb_contract::Protocol;

use super::*;
use crate::address::{AddressKind, AddressPolicy, AddressType};
use crate::fixtures::ServiceBuilder;

#[test]
fn handles_unclassed_and_own_class_load_balancers_only() {
    let class = "hostlb.io/hostlb";
    assert!(is_handled(&ServiceBuilder::new("web").build(), class, true));
    assert!(is_handled(&ServiceBuilder::new("web").class(class).build(), class, true));
    assert!(!is_handled(&ServiceBuilder::new("web").class("metallb.io/metallb").build(), class, true));
    assert!(!is_handled(&ServiceBuilder::new("web").type_("ClusterIP").build(), class, true));
    assert!(!is_handled(&ServiceBuilder::new("web").type_("NodePort").build(), class, true));
}

#[test]
fn a_second_install_serves_only_its_own_class() {
    let class = "example.com/edge";
    assert!(!is_handled(&ServiceBuilder::new("web").build(), class, false));
    assert!(is_handled(&ServiceBuilder::new("web").class(class).build(), class, false));
}

#[test]
fn cluster_policy_forwards_each_port_to_the_cluster_ips() {
    let service = ServiceBuilder::new("web")
        .port("TCP", 80, 30080)
        .port("UDP", 53, 30053)
        .cluster_ips(&["10.96.0.10", "fd00::10"])
        .build();
    let lb = ServiceLb::from_service(&service).unwrap();
    assert_eq!(
        lb.ports,
        vec![
            PortMap { protocol: Protocol::Tcp, listen: 80, target: 80 },
            PortMap { protocol: Protocol::Udp, listen: 53, target: 53 },
        ]
    );
    assert_eq!(
        lb.destination,
        Destination::ClusterIps(vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()])
    );
    assert_eq!(lb.families, vec![Family::V4, Family::V6]);
}

#[test]
fn local_policy_keeps_the_port_names_and_the_health_check_port_and_needs_no_node_ports() {
    let mut service = ServiceBuilder::new("web").port("TCP", 443, 0).port("UDP", 53, 0).local(32000).build();
    service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("https".into());
    let lb = ServiceLb::from_service(&service).unwrap();
    assert_eq!(
        lb.ports,
        vec![
            PortMap { protocol: Protocol::Tcp, listen: 443, target: 443 },
            PortMap { protocol: Protocol::Udp, listen: 53, target: 53 }
        ]
    );
    let https = NamedPort { protocol: Protocol::Tcp, listen: 443, name: "https".into() };
    assert_eq!(lb.destination, Destination::NodeLocal { health_check_node_port: 32000 });
    assert_eq!(lb.port_names, vec![https]);
}

#[test]
fn local_policy_is_read_while_another_option_is_wrong() {
    let service = ServiceBuilder::new("web").local(32000).annotation(names::ANNOTATION_TOLERATIONS, "{").build();
    let parsed = parse(&service);
    assert!(parsed.options.is_err());
    assert!(parsed.local);
    assert!(!parse(&ServiceBuilder::new("web").build()).local);
}

#[test]
fn a_port_name_that_is_no_dns_label_is_named() {
    let mut service = ServiceBuilder::new("web").port("TCP", 443, 0).build();
    service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("HTTPS".into());
    let errors = ServiceLb::from_service(&service).unwrap_err();
    assert_eq!(errors[0].field, "spec.ports[0].name");
}

#[test]
fn unknown_protocol_is_refused_naming_the_port() {
    let service = ServiceBuilder::new("web").port("TCP", 80, 1).port("QUIC", 443, 2).build();
    let errors = ServiceLb::from_service(&service).unwrap_err();
    assert_eq!(errors[0].field, "spec.ports[1].protocol");
    assert!(errors[0].message.contains("QUIC"));
}

#[test]
fn source_ranges_are_canonicalised_and_bad_ones_named() {
    let service =
        ServiceBuilder::new("web").source_ranges(&["192.168.1.77/24", "2001:db8::1/32", "10.0.0.0/8"]).build();
    let lb = ServiceLb::from_service(&service).unwrap();
    let shown: Vec<String> = lb.source_ranges.iter().map(ToString::to_string).collect();
    assert_eq!(shown, vec!["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]);

    let bad = ServiceBuilder::new("web").source_ranges(&["10.0.0.0/8", "10.0.0.0/33"]).build();
    let errors = ServiceLb::from_service(&bad).unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
    assert_eq!(fields, vec!["spec.loadBalancerSourceRanges[1]"]);
}

#[test]
fn legacy_source_range_annotation_is_honoured_when_the_field_is_empty() {
    let service = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_LEGACY_SOURCE_RANGES, "10.1.0.0/16, 10.2.0.0/16")
        .build();
    let lb = ServiceLb::from_service(&service).unwrap();
    assert_eq!(lb.source_ranges.len(), 2);
}

#[test]
fn pool_comes_from_label_or_annotation_and_must_agree() {
    let by_label = ServiceBuilder::new("web").label(names::POOL, "edge").build();
    assert_eq!(ServiceLb::from_service(&by_label).unwrap().pool.as_deref(), Some("edge"));
    let by_annotation = ServiceBuilder::new("web").annotation(names::POOL, "edge").build();
    assert_eq!(ServiceLb::from_service(&by_annotation).unwrap().pool.as_deref(), Some("edge"));
    let both = ServiceBuilder::new("web").label(names::POOL, "a").annotation(names::POOL, "b").build();
    assert_eq!(ServiceLb::from_service(&both).unwrap_err()[0].field, "metadata.labels[hostlb.io/lbpool]");
    let invalid = ServiceBuilder::new("web").annotation(names::POOL, "not a label!").build();
    assert_eq!(ServiceLb::from_service(&invalid).unwrap_err()[0].field, "metadata.annotations[hostlb.io/lbpool]");
}

#[test]
fn servicelbs_pool_label_chooses_the_pool_unless_hostlbs_own_does() {
    let k3s = ServiceBuilder::new("web").label(names::K3S_POOL, "edge").build();
    assert_eq!(ServiceLb::from_service(&k3s).unwrap().pool.as_deref(), Some("edge"));
    let both = ServiceBuilder::new("web").label(names::K3S_POOL, "edge").annotation(names::POOL, "core").build();
    assert_eq!(ServiceLb::from_service(&both).unwrap().pool.as_deref(), Some("core"));
}

#[test]
fn tolerations_annotation_must_be_a_json_list_of_tolerations() {
    let good = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"edge","operator":"Exists","effect":"NoSchedule"}]"#)
        .build();
    let lb = ServiceLb::from_service(&good).unwrap();
    assert_eq!(lb.extra_tolerations[0].key.as_deref(), Some("edge"));

    let bad = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{not json").build();
    let errors = ServiceLb::from_service(&bad).unwrap_err();
    assert_eq!(errors[0].field, "metadata.annotations[hostlb.io/tolerations]");
    assert!(errors[0].message.contains("JSON"), "{}", errors[0].message);
}

#[test]
fn priority_class_annotation_must_be_a_valid_name() {
    let good = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "lb-critical").build();
    assert_eq!(ServiceLb::from_service(&good).unwrap().priority_class.as_deref(), Some("lb-critical"));
    let bad = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "Not_Valid").build();
    assert_eq!(ServiceLb::from_service(&bad).unwrap_err()[0].field, "metadata.annotations[hostlb.io/priority-class]");
}

#[test]
fn repeated_families_count_once_in_their_first_place() {
    let mut service = ServiceBuilder::new("web").cluster_ips(&["fd00::a", "10.96.0.10"]).build();
    service.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into(), "IPv6".into()]);
    assert_eq!(ServiceLb::from_service(&service).unwrap().families, vec![Family::V6, Family::V4]);
}

#[test]
fn families_fall_back_to_cluster_ips_on_servers_without_ip_families() {
    let mut service = ServiceBuilder::new("web").cluster_ips(&["fd00::1"]).build();
    service.spec.as_mut().unwrap().ip_families = None;
    assert_eq!(ServiceLb::from_service(&service).unwrap().families, vec![Family::V6]);
}

#[test]
fn address_options_are_read_with_the_controllers_defaults_beneath() {
    let defaults = AddressPolicy {
        address_type: AddressType::Auto,
        kinds: vec![AddressKind::Ip],
        max_nodes: Some(5),
        node_asked: Default::default(),
    };
    let plain = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
    assert_eq!(plain.addresses.policy(&defaults), defaults);
    let asked = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_PUBLISH, "hostname, ip,hostname")
        .annotation(names::ANNOTATION_MAX_NODES, "3")
        .build();
    let policy = ServiceLb::from_service(&asked).unwrap().addresses.policy(&defaults);
    assert_eq!(policy.kinds, vec![AddressKind::Ip, AddressKind::Hostname]);
    assert_eq!(policy.max_nodes, Some(3));

    let wrong = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_PUBLISH, "ip,cname")
        .annotation(names::ANNOTATION_MAX_NODES, "0")
        .build();
    let fields: Vec<String> = ServiceLb::from_service(&wrong).unwrap_err().iter().map(ToString::to_string).collect();
    assert_eq!(
        fields,
        vec![
            r#"metadata.annotations[hostlb.io/publish]: "cname" is neither ip nor hostname"#,
            r#"metadata.annotations[hostlb.io/max-nodes]: "0" is not a positive number"#,
        ]
    );
    let with_other_error = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_MAX_NODES, "2")
        .annotation(names::ANNOTATION_TOLERATIONS, "nope")
        .build();
    assert_eq!(parse(&with_other_error).addresses.max_nodes, Some(2), "kept while another option is wrong");
}

#[test]
fn all_problems_are_reported_at_once() {
    let service = ServiceBuilder::new("web")
        .port("QUIC", 80, 1)
        .annotation(names::ANNOTATION_TOLERATIONS, "nope")
        .source_ranges(&["bad"])
        .build();
    assert_eq!(ServiceLb::from_service(&service).unwrap_err().len(), 3);
}
