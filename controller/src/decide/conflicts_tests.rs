use super::*;
use crate::fixtures::index_of;
use crate::fixtures::{NodeBuilder, ServiceBuilder};
use hostlb_model::names;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

fn created_at(mut service: Service, second: i64) -> Service {
    service.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap()));
    service
}

fn held(service: &Service, index: &Index) -> ClaimedPorts {
    let lb = ServiceLb::from_service(service).unwrap();
    let placement = Placement::for_service(&lb, index.enablelb_in_use());
    held_by_other_services(&lb, &placement, index)
}

fn two_nodes() -> [k8s_openapi::api::core::v1::Node; 2] {
    [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()]
}

#[test]
fn the_older_service_keeps_its_port_and_the_newer_one_leaves_its_nodes_out() {
    let older = created_at(ServiceBuilder::new("a").uid("2").port("TCP", 80, 0).port("UDP", 53, 0).build(), 10);
    let newer = created_at(ServiceBuilder::new("b").uid("1").port("TCP", 80, 0).build(), 20);
    let other_protocol = created_at(ServiceBuilder::new("c").uid("3").port("UDP", 80, 0).build(), 5);
    let index = index_of(&[older.clone(), newer.clone(), other_protocol], &two_nodes(), &[], &[]);
    assert_eq!(held(&older, &index), ClaimedPorts::default());
    let held = held(&newer, &index);
    assert_eq!(held.nodes, ["n1".to_string(), "n2".to_string()].into());
    assert_eq!(
        held.messages,
        vec![
            "port 80/TCP is held on n1, n2 by Service shop/a, which claimed it first; this Service's proxies \
              leave those nodes out"
        ]
    );
}

#[test]
fn ties_go_to_the_smaller_uid_and_other_namespaces_stay_unnamed() {
    let first = ServiceBuilder::new("a").uid("1").build();
    let mut second = ServiceBuilder::new("b").uid("2").build();
    second.metadata.namespace = Some("team-b".into());
    let (first, second) = (created_at(first, 10), created_at(second, 10));
    let index = index_of(&[first.clone(), second.clone()], &two_nodes(), &[], &[]);
    assert!(held(&first, &index).nodes.is_empty());
    let messages = held(&second, &index).messages;
    assert!(messages[0].contains("by a Service in another namespace"), "{messages:?}");
    assert!(!messages[0].contains("shop"), "{messages:?}");
}

#[test]
fn services_in_disjoint_pools_share_their_port() {
    let nodes = [
        NodeBuilder::new("n1").label(names::POOL, "a").build(),
        NodeBuilder::new("n2").label(names::POOL, "b").build(),
    ];
    let a = created_at(ServiceBuilder::new("a").uid("1").label(names::POOL, "a").build(), 10);
    let b = created_at(ServiceBuilder::new("b").uid("2").label(names::POOL, "b").build(), 20);
    let index = index_of(&[a, b.clone()], &nodes, &[], &[]);
    assert_eq!(held(&b, &index), ClaimedPorts::default());
}

#[test]
fn a_node_in_two_pools_is_held_by_the_first_service_of_either() {
    let nodes = [
        NodeBuilder::new("n1").label(names::POOL, "a").build(),
        NodeBuilder::new("n2").label("pool.hostlb.io/a", "true").label("pool.hostlb.io/b", "true").build(),
    ];
    let a = created_at(ServiceBuilder::new("a").uid("1").label(names::POOL, "a").build(), 10);
    let b = created_at(ServiceBuilder::new("b").uid("2").label(names::POOL, "b").build(), 20);
    let index = index_of(&[a, b.clone()], &nodes, &[], &[]);
    assert_eq!(held(&b, &index).nodes, ["n2".to_string()].into());
}

/// A proxy pod of the Service with UID `uid` on `node`.
fn pod_of(uid: &str, node: &str) -> k8s_openapi::api::core::v1::Pod {
    let mut pod = crate::fixtures::proxy_pod(&format!("{uid}-{node}"), node, true);
    pod.metadata.labels.get_or_insert_default().insert(names::LABEL_SERVICE_UID.into(), uid.into());
    pod
}

#[test]
fn a_port_served_on_a_node_stays_with_its_service_whatever_the_age_of_a_later_claimant() {
    // `old` was made first, as a ClusterIP Service; `young` took the port and serves it on n1 and
    // n2; then `old` became a LoadBalancer.
    let old = created_at(ServiceBuilder::new("old").uid("old").port("TCP", 80, 0).build(), 10);
    let young = created_at(ServiceBuilder::new("young").uid("young").port("TCP", 80, 0).build(), 20);
    let pods = [pod_of("young", "n1"), pod_of("young", "n2")];
    let index = index_of(&[old.clone(), young.clone()], &two_nodes(), &pods, &[]);
    assert_eq!(held(&young, &index), ClaimedPorts::default(), "young keeps what it serves");
    let lost = held(&old, &index);
    assert_eq!(lost.nodes, ["n1".to_string(), "n2".to_string()].into());
    assert_eq!(
        lost.messages,
        ["port 80/TCP is held on n1, n2 by Service shop/young, which serves it there; this Service's proxies leave \
          those nodes out"]
    );

    // Where young holds nothing (a node it has no pod on), the older claim wins as before.
    let index = index_of(&[old.clone(), young.clone()], &two_nodes(), &pods[..1], &[]);
    assert_eq!(held(&old, &index).nodes, ["n1".to_string()].into());
    assert_eq!(held(&young, &index).nodes, ["n2".to_string()].into());

    // A node agents' plan holds the nodes it names alike.
    let lb = ServiceLb::from_service(&young).unwrap();
    let plan = crate::decide::dataplane::node_agents::desired_plan(
        &lb,
        &["n1", "n2"],
        &crate::fixtures::settings().forwarding,
    );
    let mut index = index_of(&[old.clone(), young], &two_nodes(), &[], &[]);
    index.apply_plan(&kube::runtime::watcher::Event::Apply(crate::decide::dataplane::erased(&plan)));
    assert_eq!(held(&old, &index).nodes, ["n1".to_string(), "n2".to_string()].into());
}
