//! Which Services a committed change concerns. Every reconcile after the first of a term
//! starts here: the watches apply an event to the index, and the changes it reports (one
//! object's, or a whole relist's difference) become the Services to reconcile, so a relist
//! wakes exactly the Services whose objects changed while the watch was away, and only once
//! the new list is in place.

use std::collections::hash_map::DefaultHasher;
use std::collections::BTreeSet;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use hostlb_model::names;
use k8s_openapi::api::core::v1::{Event, Node, Service};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::state::agent_report::AgentReport;
use crate::state::index::{Index, PortKey, ServiceChanges};
use crate::state::proxy_pod::{owning_service_key, ProxyPod};
use crate::state::section::{Change, Key};

/// The Service of a `namespace/name` key.
pub fn service_ref(key: &str) -> ObjectRef<Service> {
    match key.split_once('/') {
        Some((namespace, name)) => ObjectRef::new(name).within(namespace),
        None => ObjectRef::new(key),
    }
}

/// A changed Service, also one that is gone (its reconcile finds no Service and sweeps its
/// proxies away at once); and, when what it claims changed, every other Service that claims
/// one of its ports before or after, since a port it frees or takes changes where they run.
pub fn of_services(changes: &ServiceChanges, index: &Index) -> Vec<ObjectRef<Service>> {
    let mut triggers: Vec<ObjectRef<Service>> =
        changes.services.iter().map(|change| service_ref(&change.key)).collect();
    let mut neighbours = BTreeSet::new();
    for change in &changes.claims {
        let ports: BTreeSet<PortKey> = change
            .before
            .iter()
            .chain(&change.after)
            .flat_map(|lb| lb.ports.iter().map(|p| (p.protocol, p.listen)))
            .collect();
        let others = ports.iter().flat_map(|port| index.claims.group(port));
        neighbours.extend(others.map(|other| format!("{}/{}", other.namespace, other.name)));
    }
    // A changed Service is itself above.
    let own: BTreeSet<Key> = changes.services.iter().map(|change| change.key.clone()).collect();
    triggers.extend(neighbours.iter().filter(|key| !own.contains(*key)).map(|key| service_ref(key)));
    triggers
}

/// Every Service `concerned` lists, when what hostlb reads of any node changed: any of them
/// may publish, or be placed on, that node. Heartbeats change nothing hostlb reads.
pub fn of_nodes(
    changes: &[Change<Arc<Node>>],
    concerned: impl FnOnce() -> Vec<ObjectRef<Service>>,
) -> Vec<ObjectRef<Service>> {
    when_read_changed(changes, |node| node_fingerprint(node), concerned)
}

/// `concerned()` when some change altered what `read` takes of an object (its coming and going
/// included); nothing otherwise.
fn when_read_changed<V, R: PartialEq>(
    changes: &[Change<V>],
    read: impl Fn(&V) -> R,
    concerned: impl FnOnce() -> Vec<ObjectRef<Service>>,
) -> Vec<ObjectRef<Service>> {
    let read = |object: &Option<V>| object.as_ref().map(&read);
    if changes.iter().any(|change| read(&change.before) != read(&change.after)) {
        concerned()
    } else {
        Vec::new()
    }
}

/// The Services whose proxy pods changed.
pub fn of_proxy_pods(changes: &[Change<Arc<ProxyPod>>]) -> Vec<ObjectRef<Service>> {
    owners(
        changes
            .iter()
            .flat_map(|change| [&change.before, &change.after])
            .flatten()
            .filter_map(|pod| pod.service.clone()),
    )
}

/// The Services whose proxy DaemonSets, or plans, changed.
pub fn of_proxy_objects<K: ResourceExt>(changes: &[Change<Arc<K>>]) -> Vec<ObjectRef<Service>> {
    owners(
        changes
            .iter()
            .flat_map(|change| [&change.before, &change.after])
            .flatten()
            .filter_map(|object| owning_service_key(object.as_ref())),
    )
}

/// The Services whose entries in a node agent's report changed.
pub fn of_agent_reports(changes: &[Change<Arc<AgentReport>>]) -> Vec<ObjectRef<Service>> {
    let entries = |report: &Option<Arc<AgentReport>>| report.as_ref().map(|r| r.services.clone()).unwrap_or_default();
    owners(changes.iter().flat_map(|change| {
        let (before, after) = (entries(&change.before), entries(&change.after));
        let changed: Vec<Key> = before
            .iter()
            .chain(&after)
            .filter(|(uid, pod)| before.get(*uid) != Some(pod) || after.get(*uid) != Some(pod))
            .filter_map(|(_, pod)| pod.service.clone())
            .collect();
        changed
    }))
}

/// Every Service `concerned` lists, when a node agent's pod came, went, or changed in what
/// hostlb tells of it (its node, a failure, the scheduler's refusal): the Services on that
/// node may say why. Restarts and readiness alone tell nothing.
pub fn of_agent_pods(
    changes: &[Change<Arc<ProxyPod>>],
    concerned: impl FnOnce() -> Vec<ObjectRef<Service>>,
) -> Vec<ObjectRef<Service>> {
    let told = |pod: &Arc<ProxyPod>| (pod.node.clone(), pod.failure.clone(), pod.unschedulable.clone());
    when_read_changed(changes, told, concerned)
}

/// The Services whose proxy DaemonSets the DaemonSet controller reported a failure of; every
/// Service `concerned` lists, for a failure of the node agents' DaemonSet.
pub fn of_creation_failures(
    changes: &[Change<Arc<Event>>],
    index: &Index,
    concerned: impl FnOnce() -> Vec<ObjectRef<Service>>,
) -> Vec<ObjectRef<Service>> {
    let keys = changes.iter().flat_map(|change| [&change.before, &change.after]).flatten().filter_map(|failure| {
        let daemonset = &failure.involved_object;
        Some(format!("{}/{}", daemonset.namespace.as_deref().unwrap_or_default(), daemonset.name.as_deref()?))
    });
    let keys: BTreeSet<String> = keys.collect();
    let mut triggers = owners(
        keys.iter()
            .filter_map(|key| index.daemonsets.get(key).and_then(|daemonset| owning_service_key(daemonset.as_ref()))),
    );
    if keys.iter().any(|key| index.agents.get(key).is_some()) {
        triggers.extend(concerned());
    }
    triggers
}

fn owners(keys: impl Iterator<Item = Key>) -> Vec<ObjectRef<Service>> {
    keys.collect::<BTreeSet<Key>>().iter().map(|key| service_ref(key)).collect()
}

/// A fingerprint of what hostlb reads from a Node. kubelet rewrites its Node every few seconds
/// for heartbeats; only a change of this fingerprint is worth a look at every Service.
fn node_fingerprint(node: &Node) -> u64 {
    let mut hasher = DefaultHasher::new();
    node.metadata.name.hash(&mut hasher);
    node.metadata.labels.hash(&mut hasher);
    for key in [names::NODE_ANNOTATION_PUBLIC_ADDRESS, names::NODE_ANNOTATION_PUBLIC_HOSTNAME] {
        node.metadata.annotations.as_ref().and_then(|a| a.get(key)).hash(&mut hasher);
    }
    node.metadata.deletion_timestamp.is_some().hash(&mut hasher);
    node.spec.as_ref().and_then(|s| s.unschedulable).hash(&mut hasher);
    if let Some(status) = &node.status {
        for address in status.addresses.iter().flatten() {
            (&address.type_, &address.address).hash(&mut hasher);
        }
        for condition in status.conditions.iter().flatten().filter(|c| c.type_ == "Ready") {
            condition.status.hash(&mut hasher);
        }
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{failed_create, index_of, proxy_pod, settings, NodeBuilder, ServiceBuilder, NAMESPACE};
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
        let pod_triggers: Vec<String> = relist(&pods)
            .iter()
            .flat_map(|e| names(of_proxy_pods(&index.apply_proxy_pod(e, Timestamp::now()))))
            .collect();
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
        assert_eq!(
            names(of_proxy_pods(&index.apply_proxy_pod(&watcher::Event::Delete(pod), Timestamp::now()))),
            ["web"]
        );

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
        index.agents.apply(&watcher::Event::Apply(agents.clone()), |agents| Some((Arc::new(agents.clone()), vec![])));
        let changes = index.apply_creation_failure(&watcher::Event::Apply(failed_create("f2", &agents, "quota")));
        assert_eq!(
            names(of_creation_failures(&changes, &index, every_service)),
            ["other"],
            "the agents serve them all"
        );
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
            NodeBuilder::new("n1")
                .internal("10.0.0.1")
                .annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME, "a.b")
                .build(),
        ] {
            assert_ne!(node_fingerprint(&base), node_fingerprint(&changed));
        }
    }
}
