use super::*;
use crate::fixtures::{failed_create, index_of, proxy_pod, settings, NodeBuilder, ServiceBuilder, NAMESPACE};
use crate::state::index::kept_whole;
use k8s_openapi::api::core::v1::{NodeCondition, Pod};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::watcher;

fn claim(service: &Service) -> Option<hostlb_model::options::ServiceLb> {
    crate::decide::claim(service, &settings())
}

fn names(triggers: Vec<ObjectRef<Service>>) -> Vec<String> {
    triggers.into_iter().map(|service| service.name).collect()
}

fn relist<K: Clone>(objects: &[K]) -> Vec<watcher::Event<K>> {
    let mut events = vec![watcher::Event::Init];
    events.extend(objects.iter().cloned().map(watcher::Event::InitApply));
    events.push(watcher::Event::InitDone);
    events
}

fn with_version(mut service: Service, version: &str) -> Service {
    service.metadata.resource_version = Some(version.into());
    service
}

fn everyone() -> Vec<ObjectRef<Service>> {
    vec![ObjectRef::new("web").within(NAMESPACE)]
}

/// The Services each event of a node watch triggers, once applied.
fn node_triggers(index: &mut Index, events: &[watcher::Event<Node>]) -> Vec<Vec<String>> {
    events.iter().map(|event| names(of_nodes(&index.apply_node(event), everyone))).collect()
}

#[test]
fn a_service_that_frees_or_takes_a_port_wakes_the_others_on_it() {
    let first = with_version(ServiceBuilder::new("first").port("TCP", 80, 0).uid("1").build(), "1");
    let second = with_version(ServiceBuilder::new("second").port("TCP", 80, 0).uid("2").build(), "1");
    let elsewhere = ServiceBuilder::new("elsewhere").port("TCP", 81, 0).uid("3").build();
    let mut index = index_of(&[first.clone(), second.clone(), elsewhere], &[], &[], &[]);
    let mut apply = |event: watcher::Event<Service>| {
        let changes = index.apply_service(&event, claim);
        names(of_services(&changes, &index))
    };

    assert!(apply(watcher::Event::Apply(first.clone())).is_empty(), "the same version changes nothing");
    let status_only = with_version(first.clone(), "2");
    assert_eq!(apply(watcher::Event::Apply(status_only)), ["first"], "its claim did not change");

    let moved = with_version(ServiceBuilder::new("first").port("TCP", 81, 0).uid("1").build(), "3");
    assert_eq!(apply(watcher::Event::Apply(moved.clone())), ["first", "elsewhere", "second"]);

    let mut deleting = with_version(moved.clone(), "4");
    deleting.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
    assert_eq!(apply(watcher::Event::Apply(deleting)), ["first", "elsewhere"]);
    assert_eq!(apply(watcher::Event::Delete(moved)), ["first"], "gone, with nothing left to free");

    assert_eq!(apply(watcher::Event::Apply(with_version(first, "5"))), ["first", "second"]);
    assert_eq!(apply(watcher::Event::Delete(second)), ["second", "first"]);
}

#[test]
fn a_node_whose_address_changed_while_the_watch_was_away_triggers_its_services_after_the_relist() {
    let before = NodeBuilder::new("n1").internal("10.0.0.1").build();
    let mut index = index_of(&[], std::slice::from_ref(&before), &[], &[]);
    let moved = NodeBuilder::new("n1").internal("10.0.0.9").build();
    let triggered = node_triggers(&mut index, &relist(&[moved, NodeBuilder::new("n2").build()]));
    assert_eq!(triggered, [vec![], vec![], vec![], vec!["web".to_string()]], "at the end of the relist only");
    assert!(index.node("n2").is_some(), "the new list is in place when the trigger leaves");
}

#[test]
fn a_node_gone_while_the_watch_was_away_triggers_its_services_after_the_relist() {
    let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
    let mut index = index_of(&[], &nodes, &[], &[]);
    let triggered = node_triggers(&mut index, &relist(&nodes[..1]));
    assert_eq!(triggered.last().unwrap(), &["web"]);
}

#[test]
fn a_service_on_a_later_page_of_a_relist_is_triggered_once_the_new_list_is_in_place() {
    let kept = with_version(ServiceBuilder::new("kept").uid("1").build(), "1");
    let mut index = index_of(std::slice::from_ref(&kept), &[], &[], &[]);
    let changed = with_version(kept.clone(), "2");
    let arrived = with_version(ServiceBuilder::new("arrived").port("TCP", 8080, 0).uid("2").build(), "7");
    let mut triggered = Vec::new();
    for event in relist(&[changed, arrived]) {
        let changes = index.apply_service(&event, claim);
        let names = names(of_services(&changes, &index));
        if !names.is_empty() {
            assert!(matches!(event, watcher::Event::InitDone), "nothing leaves before the list is complete");
            assert_eq!(index.claims.get("shop/arrived").map(|lb| lb.ports.len()), Some(1), "its claim is in");
        }
        triggered.extend(names);
    }
    assert_eq!(triggered, ["arrived", "kept"]);
}

#[test]
fn an_unchanged_object_triggers_nothing_after_a_relist() {
    let services = [with_version(ServiceBuilder::new("web").build(), "1")];
    let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
    let pods = [proxy_pod("p1", "n1", true)];
    let mut index = index_of(&services, &nodes, &pods, &[]);
    let service_triggers: Vec<String> =
        relist(&services).iter().flat_map(|e| names(of_services(&index.apply_service(e, claim), &index))).collect();
    assert!(service_triggers.is_empty(), "{service_triggers:?}");
    assert!(node_triggers(&mut index, &relist(&nodes)).iter().all(Vec::is_empty));
    let pod_triggers: Vec<String> =
        relist(&pods).iter().flat_map(|e| names(of_proxy_pods(&index.apply_proxy_pod(e, Timestamp::now())))).collect();
    assert!(pod_triggers.is_empty(), "{pod_triggers:?}");
}

#[test]
fn a_node_heartbeat_triggers_nothing_and_a_readiness_change_every_service() {
    let node = NodeBuilder::new("n1").internal("10.0.0.1").build();
    let mut index = index_of(&[], std::slice::from_ref(&node), &[], &[]);
    let mut heartbeat = node.clone();
    heartbeat.metadata.resource_version = Some("2".into());
    let triggered = node_triggers(&mut index, &[watcher::Event::Apply(heartbeat)]);
    assert_eq!(triggered, [Vec::<String>::new()]);
    let not_ready = NodeBuilder::new("n1").internal("10.0.0.1").not_ready().build();
    assert_eq!(node_triggers(&mut index, &[watcher::Event::Apply(not_ready)]), [vec!["web".to_string()]]);
}

#[test]
fn proxy_pods_trigger_the_service_they_serve_and_foreign_pods_nothing() {
    let mut index = Index::default();
    let pod = proxy_pod("p", "n1", true);
    assert_eq!(
        names(of_proxy_pods(&index.apply_proxy_pod(&watcher::Event::Apply(pod.clone()), Timestamp::now()))),
        ["web"]
    );
    let mut ready_changed = pod.clone();
    ready_changed.status = proxy_pod("p", "n1", false).status;
    assert_eq!(
        names(of_proxy_pods(&index.apply_proxy_pod(&watcher::Event::Apply(ready_changed), Timestamp::now()))),
        ["web"]
    );
    assert_eq!(names(of_proxy_pods(&index.apply_proxy_pod(&watcher::Event::Delete(pod), Timestamp::now()))), ["web"]);

    let mut foreign: Pod = proxy_pod("q", "n1", true);
    foreign.metadata.labels.as_mut().unwrap().insert(names::LABEL_MANAGED_BY.into(), "someone-else".into());
    assert!(of_proxy_pods(&index.apply_proxy_pod(&watcher::Event::Apply(foreign), Timestamp::now())).is_empty());
}

#[test]
fn a_creation_failure_triggers_the_service_of_its_daemonset() {
    let lb = hostlb_model::options::ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
    let placement = crate::decide::placement::Placement::for_service(&lb, false);
    let daemonset =
        crate::decide::dataplane::proxy_daemonset::desired_daemonset(&lb, &placement, &settings().forwarding);
    let mut index = index_of(&[], &[], &[], std::slice::from_ref(&daemonset));
    let changes = index.apply_creation_failure(&watcher::Event::Apply(failed_create("f1", &daemonset, "quota")));
    let every_service = || vec![service_ref("shop/other")];
    assert_eq!(names(of_creation_failures(&changes, &index, every_service)), ["web"]);

    let agents = crate::decide::dataplane::node_agents::desired_agent(&settings().forwarding);
    index.agents.apply(&watcher::Event::Apply(agents.clone()), kept_whole);
    let changes = index.apply_creation_failure(&watcher::Event::Apply(failed_create("f2", &agents, "quota")));
    assert_eq!(names(of_creation_failures(&changes, &index, every_service)), ["other"], "the agents serve them all");
}

#[test]
fn a_node_agent_triggers_every_service_when_it_comes_goes_or_fails_and_not_when_it_only_restarts() {
    let mut index = index_of(&[], &[], &[], &[]);
    let install = settings().forwarding.install_id;
    let every_service = || vec![service_ref("shop/web")];
    let pulling = crate::fixtures::agent_pod("n1", "ImagePullBackOff");
    let came = index.apply_agent_pod(&watcher::Event::Apply(pulling.clone()), &install);
    assert_eq!(names(of_agent_pods(&came, every_service)), ["web"]);

    let mut restarting = pulling.clone();
    let state = &mut restarting.status.as_mut().unwrap().container_statuses.as_mut().unwrap()[0];
    state.restart_count = 3;
    let restarted = index.apply_agent_pod(&watcher::Event::Apply(restarting.clone()), &install);
    assert!(of_agent_pods(&restarted, every_service).is_empty(), "the same failure, told already");

    let running = crate::fixtures::agent_pod("n1", "ContainerCreating");
    let recovered = index.apply_agent_pod(&watcher::Event::Apply(running), &install);
    assert_eq!(names(of_agent_pods(&recovered, every_service)), ["web"], "the failure is over");

    let mut proxy = proxy_pod("p1", "n1", true);
    proxy.metadata.namespace = Some("hostlb-system".into());
    assert!(index.apply_agent_pod(&watcher::Event::Apply(proxy), &install).is_empty(), "a proxy pod is no agent");
}

#[test]
fn node_fingerprint_ignores_heartbeats_but_sees_addresses_labels_our_annotations_readiness_and_cordons() {
    let base = NodeBuilder::new("n1").internal("10.0.0.1").build();
    let mut heartbeat = base.clone();
    heartbeat.status.as_mut().unwrap().conditions.as_mut().unwrap().push(NodeCondition {
        type_: "MemoryPressure".into(),
        status: "False".into(),
        ..Default::default()
    });
    heartbeat.metadata.resource_version = Some("999".into());
    heartbeat.metadata.annotations = Some([("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string())].into());
    assert_eq!(node_fingerprint(&base), node_fingerprint(&heartbeat));

    for changed in [
        NodeBuilder::new("n1").internal("10.0.0.9").build(),
        NodeBuilder::new("n1").internal("10.0.0.1").label(names::POOL, "edge").build(),
        NodeBuilder::new("n1").internal("10.0.0.1").not_ready().build(),
        NodeBuilder::new("n1").internal("10.0.0.1").unschedulable().build(),
        NodeBuilder::new("n1")
            .internal("10.0.0.1")
            .annotation(names::NODE_ANNOTATION_PUBLIC_ADDRESS, "1.2.3.4")
            .build(),
        NodeBuilder::new("n1").internal("10.0.0.1").annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME, "a.b").build(),
    ] {
        assert_ne!(node_fingerprint(&base), node_fingerprint(&changed));
    }
}
