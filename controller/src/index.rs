//! What a reconcile needs to know about objects other than its own Service, kept current by the
//! watches and grouped the way reconciles look it up: proxy pods by Service UID, port claims by
//! protocol and port, the nodes (and whether any carries `enablelb`), proxy DaemonSets by name.
//! A reconcile reads only its own groups, so it costs what its own Service costs. Pure: the
//! watches hand it their events; nothing here talks to the API server.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::sync::Arc;

use hostlb_proxy_spec::Protocol;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::decide::admitted;
use crate::names;
use crate::node_leases::{Renewal, NODE_LEASE_NAMESPACE};
use crate::proxy_health::ProxyPod;
use crate::service_lb::ServiceLb;
use crate::status::node_can_serve;
use crate::Settings;

/// `namespace/name`, or `name` for cluster-scoped objects.
pub type Key = String;

pub fn key_of(object: &impl ResourceExt) -> Key {
    match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// One kind of object, each stored under its key and listed in the groups it belongs to.
/// Follows a watch as kube's reflector store does: a relist is buffered and swapped in whole
/// when complete, so a reconcile never sees half a list.
pub struct Section<V, G> {
    objects: HashMap<Key, (V, Vec<G>)>,
    groups: HashMap<G, BTreeMap<Key, V>>,
    relist: Option<Vec<(Key, V, Vec<G>)>>,
    synced: bool,
}

impl<V, G> Default for Section<V, G> {
    fn default() -> Self {
        Section { objects: HashMap::new(), groups: HashMap::new(), relist: None, synced: false }
    }
}

impl<V: Clone, G: Clone + Eq + Hash> Section<V, G> {
    /// Applies one watch event; `extract` says what to keep of an object and in which groups,
    /// or `None` to keep nothing of it.
    pub fn apply<K: ResourceExt>(&mut self, event: &watcher::Event<K>, extract: impl Fn(&K) -> Option<(V, Vec<G>)>) {
        match event {
            watcher::Event::Apply(object) => {
                let key = key_of(object);
                self.remove(&key);
                if let Some((value, groups)) = extract(object) {
                    self.insert(key, value, groups);
                }
            }
            watcher::Event::Delete(object) => self.remove(&key_of(object)),
            watcher::Event::Init => self.relist = Some(Vec::new()),
            watcher::Event::InitApply(object) => {
                if let (Some(buffer), Some((value, groups))) = (self.relist.as_mut(), extract(object)) {
                    buffer.push((key_of(object), value, groups));
                }
            }
            watcher::Event::InitDone => {
                self.objects.clear();
                self.groups.clear();
                for (key, value, groups) in self.relist.take().unwrap_or_default() {
                    self.insert(key, value, groups);
                }
                self.synced = true;
            }
        }
    }

    fn insert(&mut self, key: Key, value: V, groups: Vec<G>) {
        for group in &groups {
            self.groups.entry(group.clone()).or_default().insert(key.clone(), value.clone());
        }
        self.objects.insert(key, (value, groups));
    }

    fn remove(&mut self, key: &str) {
        let Some((_, groups)) = self.objects.remove(key) else { return };
        for group in groups {
            if let Some(members) = self.groups.get_mut(&group) {
                members.remove(key);
                if members.is_empty() {
                    self.groups.remove(&group);
                }
            }
        }
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.objects.get(key).map(|(value, _)| value)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.objects.iter().map(|(key, (value, _))| (key, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.objects.values().map(|(value, _)| value)
    }

    /// The members of a group, in key order.
    pub fn group(&self, group: &G) -> impl Iterator<Item = &V> {
        self.groups.get(group).into_iter().flat_map(BTreeMap::values)
    }

    pub fn group_is_empty(&self, group: &G) -> bool {
        !self.groups.contains_key(group)
    }

    /// Whether the first complete list has arrived.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

/// A host port: what two Services cannot both hold on one node.
pub type PortKey = (Protocol, u16);

/// The only group nodes are sorted into: any node in it turns ServiceLB's opt-in rule on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CarriesEnableLb;

/// A valid Service that hostlb serves, as other Services' reconciles see it.
pub type Claim = Arc<ServiceLb>;

/// What reconciles read of a proxy DaemonSet: its metadata (labels, configuration hash,
/// generation) and status. Its spec, the pod template hostlb wrote, is most of it.
fn proxy_daemonset_essentials(daemonset: &DaemonSet) -> DaemonSet {
    DaemonSet { metadata: daemonset.metadata.clone(), spec: None, status: daemonset.status.clone() }
}

pub struct Index {
    settings: Settings,
    pub nodes: Section<Arc<Node>, CarriesEnableLb>,
    /// Proxy pods, grouped by the UID of the Service they serve.
    pub proxy_pods: Section<Arc<ProxyPod>, String>,
    /// Proxy DaemonSets, by `namespace/name`.
    pub daemonsets: Section<Arc<DaemonSet>, ()>,
    /// Served Services, grouped by the host ports they claim.
    pub claims: Section<Claim, PortKey>,
    /// The DaemonSet controller's FailedCreate Events, grouped by DaemonSet name.
    pub creation_failures: Section<Arc<Event>, String>,
    /// When each node's kubelet last renewed its Lease, under the Lease's key.
    pub node_leases: Section<Renewal, ()>,
    /// Nodes whose Lease was stale when the clock was last read (`judge_leases`).
    stale_nodes: BTreeSet<String>,
}

impl Index {
    pub fn new(settings: &Settings) -> Self {
        Index {
            settings: settings.clone(),
            nodes: Section::default(),
            proxy_pods: Section::default(),
            daemonsets: Section::default(),
            claims: Section::default(),
            creation_failures: Section::default(),
            node_leases: Section::default(),
            stale_nodes: BTreeSet::new(),
        }
    }

    pub fn apply_node_lease(&mut self, event: &watcher::Event<Lease>) {
        self.node_leases.apply(event, |lease| Some((Renewal::of(lease)?, Vec::new())));
    }

    /// Judges every node's Lease at `now`; returns the nodes that went stale or came back.
    pub fn judge_leases(&mut self, now: Timestamp) -> Vec<Arc<Node>> {
        let stale: BTreeSet<String> = match self.settings.node_lease_grace {
            Some(grace) => self
                .node_leases
                .entries()
                .filter(|(_, renewal)| renewal.is_stale(now, grace))
                .filter_map(|(key, _)| {
                    Some(key.strip_prefix(NODE_LEASE_NAMESPACE)?.trim_start_matches('/').to_string())
                })
                .collect(),
            None => BTreeSet::new(),
        };
        let flipped: Vec<Arc<Node>> =
            stale.symmetric_difference(&self.stale_nodes).filter_map(|name| self.nodes.get(name).cloned()).collect();
        self.stale_nodes = stale;
        flipped
    }

    /// Whether the node can carry traffic: Ready, not cordoned, and its kubelet renewing its Lease.
    pub fn serves(&self, node: &Node) -> bool {
        node_can_serve(node) && node.metadata.name.as_ref().is_none_or(|name| !self.stale_nodes.contains(name))
    }

    /// The node, if it `serves`.
    pub fn serving_node(&self, name: &str) -> Option<&Node> {
        self.node(name).filter(|node| self.serves(node))
    }

    pub fn apply_node(&mut self, event: &watcher::Event<Node>) {
        self.nodes.apply(event, |node| {
            let opted = node.labels().contains_key(names::NODE_LABEL_ENABLE_LB);
            Some((Arc::new(node.clone()), opted.then_some(CarriesEnableLb).into_iter().collect()))
        });
    }

    pub fn apply_proxy_pod(&mut self, event: &watcher::Event<Pod>) {
        self.proxy_pods.apply(event, |pod| {
            let uid = pod.labels().get(names::LABEL_SERVICE_UID)?.clone();
            Some((Arc::new(ProxyPod::of(pod)), vec![uid]))
        });
    }

    pub fn apply_daemonset(&mut self, event: &watcher::Event<DaemonSet>) {
        self.daemonsets.apply(event, |daemonset| Some((Arc::new(proxy_daemonset_essentials(daemonset)), Vec::new())));
    }

    /// Services that are served, not being deleted and admitted claim the ports they are
    /// allowed; the rest claim nothing. Returns the Services to reconcile: the one the event
    /// is about while it exists, and, when its claim changed, every other Service that claims
    /// one of its ports before or after, since a port it frees or takes changes where they run.
    pub fn apply_service(&mut self, event: &watcher::Event<Service>) -> Vec<ObjectRef<Service>> {
        let (changed, exists) = match event {
            watcher::Event::Apply(service) | watcher::Event::InitApply(service) => (Some(service), true),
            watcher::Event::Delete(service) => (Some(service), false),
            watcher::Event::Init | watcher::Event::InitDone => (None, false),
        };
        let key = changed.map(key_of);
        let before = key.as_deref().and_then(|key| self.claims.get(key).cloned());
        self.index_claim(event);
        let after = key.as_deref().and_then(|key| self.claims.get(key).cloned());
        let own_uid = changed.and_then(|service| service.metadata.uid.as_deref());

        let mut triggers: Vec<ObjectRef<Service>> =
            changed.filter(|_| exists).map(ObjectRef::from_obj).into_iter().collect();
        if before != after {
            let ports: BTreeSet<PortKey> =
                before.iter().chain(&after).flat_map(|lb| lb.ports.iter().map(|p| (p.protocol, p.listen))).collect();
            let neighbours: BTreeSet<(&str, &str)> = ports
                .iter()
                .flat_map(|port| self.claims.group(port))
                .filter(|other| Some(other.uid.as_str()) != own_uid)
                .map(|other| (other.namespace.as_str(), other.name.as_str()))
                .collect();
            triggers.extend(neighbours.into_iter().map(|(namespace, name)| ObjectRef::new(name).within(namespace)));
        }
        triggers
    }

    fn index_claim(&mut self, event: &watcher::Event<Service>) {
        let settings = &self.settings;
        self.claims.apply(event, |service| {
            if !settings.serves(service) || service.metadata.deletion_timestamp.is_some() {
                return None;
            }
            let (lb, _) = admitted(service, settings).ok()?;
            let mut ports: Vec<PortKey> = lb.ports.iter().map(|p| (p.protocol, p.listen)).collect();
            ports.sort();
            ports.dedup();
            Some((Arc::new(lb), ports))
        });
    }

    pub fn apply_creation_failure(&mut self, event: &watcher::Event<Event>) {
        self.creation_failures.apply(event, |failure| {
            let daemonset = failure.involved_object.name.clone()?;
            Some((Arc::new(failure.clone()), vec![daemonset]))
        });
    }

    pub fn enablelb_in_use(&self) -> bool {
        !self.nodes.group_is_empty(&CarriesEnableLb)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(Arc::as_ref)
    }

    pub fn proxy_pods_of(&self, service_uid: &str) -> impl Iterator<Item = &ProxyPod> {
        self.proxy_pods.group(&service_uid.to_string()).map(Arc::as_ref)
    }

    /// The watches that have not yet delivered their first complete list.
    pub fn unsynced(&self) -> Vec<&'static str> {
        [
            ("services", self.claims.synced()),
            ("nodes", self.nodes.synced()),
            ("proxy pods", self.proxy_pods.synced()),
            ("proxy daemonsets", self.daemonsets.synced()),
            ("proxy creation failures", self.creation_failures.synced()),
            ("node leases", self.node_leases.synced()),
        ]
        .into_iter()
        .filter(|(_, synced)| !synced)
        .map(|(name, _)| name)
        .collect()
    }
}

/// Feeds a whole list to a fresh index, as a watch's first list would.
#[cfg(test)]
pub fn index_of(services: &[Service], nodes: &[Node], pods: &[Pod], daemonsets: &[DaemonSet]) -> Index {
    fn listed<K: Clone>(objects: &[K]) -> Vec<watcher::Event<K>> {
        let mut events = vec![watcher::Event::Init];
        events.extend(objects.iter().cloned().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        events
    }
    let mut index = Index::new(&crate::fixtures::settings());
    listed(services).iter().for_each(|e| drop(index.apply_service(e)));
    listed(nodes).iter().for_each(|e| index.apply_node(e));
    listed(pods).iter().for_each(|e| index.apply_proxy_pod(e));
    listed(daemonsets).iter().for_each(|e| index.apply_daemonset(e));
    listed::<Event>(&[]).iter().for_each(|e| index.apply_creation_failure(e));
    listed::<Lease>(&[]).iter().for_each(|e| index.apply_node_lease(e));
    index
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_pod, NodeBuilder, ServiceBuilder, UID};
    use crate::proxy_health::failing_pods;

    fn node_lease(node: &str, renewed_at_second: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": node, "namespace": NODE_LEASE_NAMESPACE },
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 40,
                "renewTime": Timestamp::from_second(renewed_at_second).unwrap().to_string(),
            }
        }))
        .unwrap()
    }

    #[test]
    fn nodes_whose_lease_goes_stale_stop_serving_and_are_reported_once_each_way() {
        let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
        let mut index = index_of(&[], &nodes, &[], &[]);
        for lease in [node_lease("n1", 1_000), node_lease("n2", 1_015)] {
            index.apply_node_lease(&watcher::Event::Apply(lease));
        }
        let at = |second| Timestamp::from_second(second).unwrap();
        let names = |flipped: Vec<Arc<Node>>| flipped.iter().map(|n| n.name_any()).collect::<Vec<_>>();
        assert!(index.judge_leases(at(1_020)).is_empty(), "10 s renewal interval plus 10 s grace");
        assert_eq!(names(index.judge_leases(at(1_021))), ["n1"]);
        assert!(index.serving_node("n1").is_none() && index.serving_node("n2").is_some());
        assert!(index.judge_leases(at(1_022)).is_empty(), "reported once");
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n1", 1_022)));
        assert_eq!(names(index.judge_leases(at(1_036))), ["n1", "n2"], "n1 is back, n2 went stale");
        assert!(index.serves(&nodes[0]) && !index.serves(&nodes[1]));
    }

    #[test]
    fn without_a_grace_leases_are_not_judged() {
        let mut settings = crate::fixtures::settings();
        settings.node_lease_grace = None;
        let mut index = Index::new(&settings);
        index.apply_node(&watcher::Event::Apply(NodeBuilder::new("n1").build()));
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n1", 1_000)));
        assert!(index.judge_leases(Timestamp::from_second(5_000).unwrap()).is_empty());
        assert!(index.serving_node("n1").is_some());
    }

    #[test]
    fn a_proxy_daemonset_is_kept_without_its_pod_template_and_still_counts_as_applied() {
        use crate::daemonset::{config_hash_of, desired_daemonset};
        use crate::decide::{needs_apply, Applied};
        use crate::placement::Placement;
        use k8s_openapi::api::apps::v1::DaemonSetStatus;

        let settings = crate::fixtures::settings();
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").port("TCP", 80, 0).build()).unwrap();
        let desired = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings.proxy);
        let mut existing = desired.clone();
        existing.metadata.generation = Some(3);
        existing.status = Some(DaemonSetStatus { desired_number_scheduled: 2, ..DaemonSetStatus::default() });
        let mut index = Index::new(&settings);
        index.apply_daemonset(&watcher::Event::Apply(existing.clone()));

        let kept = index.daemonsets.get(&key_of(&existing)).expect("indexed");
        assert!(kept.spec.is_none());
        assert_eq!((&kept.metadata, &kept.status), (&existing.metadata, &existing.status));
        let applied = Applied { generation: 3, config_hash: config_hash_of(&desired).unwrap().into() };
        assert!(!needs_apply(Some(kept), &desired, Some(&applied)));
        assert!(needs_apply(Some(kept), &desired, None), "a replica that has not applied it yet applies it once");
    }

    fn claimants(index: &Index, port: PortKey) -> Vec<String> {
        index.claims.group(&port).map(|lb| lb.name.clone()).collect()
    }

    #[test]
    fn services_claim_each_of_their_ports_until_they_change_or_go() {
        let web = ServiceBuilder::new("web").port("TCP", 80, 0).port("UDP", 80, 0).uid("1").build();
        let dns = ServiceBuilder::new("dns").port("UDP", 80, 0).uid("2").build();
        let mut index = index_of(&[web.clone(), dns], &[], &[], &[]);
        assert_eq!(claimants(&index, (Protocol::Udp, 80)), vec!["dns", "web"]);
        assert_eq!(claimants(&index, (Protocol::Tcp, 80)), vec!["web"]);

        let moved = ServiceBuilder::new("web").port("TCP", 8080, 0).uid("1").build();
        index.apply_service(&watcher::Event::Apply(moved.clone()));
        assert_eq!(claimants(&index, (Protocol::Udp, 80)), vec!["dns"]);
        assert!(index.claims.group_is_empty(&(Protocol::Tcp, 80)));
        assert_eq!(claimants(&index, (Protocol::Tcp, 8080)), vec!["web"]);

        index.apply_service(&watcher::Event::Delete(moved));
        assert!(index.claims.group_is_empty(&(Protocol::Tcp, 8080)));
        assert_eq!(index.claims.values().count(), 1);
    }

    fn triggered(triggers: Vec<ObjectRef<Service>>) -> Vec<String> {
        triggers.into_iter().map(|service| service.name).collect()
    }

    #[test]
    fn a_service_that_frees_or_takes_a_port_wakes_the_others_on_it() {
        let first = ServiceBuilder::new("first").port("TCP", 80, 0).uid("1").build();
        let second = ServiceBuilder::new("second").port("TCP", 80, 0).uid("2").build();
        let elsewhere = ServiceBuilder::new("elsewhere").port("TCP", 81, 0).uid("3").build();
        let mut index = index_of(&[first.clone(), second.clone(), elsewhere], &[], &[], &[]);

        let status_only = watcher::Event::Apply(first.clone());
        assert_eq!(triggered(index.apply_service(&status_only)), ["first"], "its claim did not change");

        let moved = ServiceBuilder::new("first").port("TCP", 81, 0).uid("1").build();
        assert_eq!(
            triggered(index.apply_service(&watcher::Event::Apply(moved.clone()))),
            ["first", "elsewhere", "second"]
        );

        let mut deleting = moved.clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
        assert_eq!(triggered(index.apply_service(&watcher::Event::Apply(deleting))), ["first", "elsewhere"]);
        assert!(triggered(index.apply_service(&watcher::Event::Delete(moved))).is_empty(), "nothing left to free");

        let back = watcher::Event::Apply(first);
        assert_eq!(triggered(index.apply_service(&back)), ["first", "second"]);
        assert_eq!(triggered(index.apply_service(&watcher::Event::Delete(second))), ["first"]);
    }

    #[test]
    fn unserved_invalid_and_deleting_services_claim_nothing() {
        let other_class = ServiceBuilder::new("a").class("metallb.io/metallb").build();
        let cluster_ip = ServiceBuilder::new("b").type_("ClusterIP").build();
        let invalid = ServiceBuilder::new("c").annotation(names::ANNOTATION_TOLERATIONS, "{").build();
        let mut deleting = ServiceBuilder::new("d").build();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let index = index_of(&[other_class, cluster_ip, invalid, deleting], &[], &[], &[]);
        assert_eq!(index.claims.values().count(), 0);
    }

    #[test]
    fn proxy_pods_are_found_by_their_service_uid() {
        let mut foreign = proxy_pod("q", "n1", true);
        foreign.metadata.labels.as_mut().unwrap().insert(names::LABEL_SERVICE_UID.into(), "other".into());
        let index = index_of(&[], &[], &[proxy_pod("p2", "n2", true), proxy_pod("p1", "n1", true), foreign], &[]);
        let keys: Vec<&str> = index.proxy_pods_of(UID).map(|p| p.key.as_str()).collect();
        assert_eq!(keys, vec!["hostlb-system/p1", "hostlb-system/p2"]);
        assert_eq!(index.proxy_pods_of("other").count(), 1);
        assert_eq!(index.proxy_pods_of("none").count(), 0);
    }

    #[test]
    fn proxy_pods_are_kept_as_what_decisions_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": "p1", "namespace": "hostlb-system", "annotations": { "big": "x" },
                          "creationTimestamp": "2026-01-02T03:04:05Z",
                          "labels": { (names::LABEL_SERVICE_UID): UID } },
            "spec": { "nodeName": "n1", "containers": [{ "name": "lb", "image": "hostlb/lb:1" }] },
            "status": {
                "phase": "Pending", "hostIP": "10.0.0.1", "podIP": "10.1.0.1",
                "conditions": [{ "type": "Ready", "status": "False" },
                               { "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                 "message": "0/2 nodes are available" }],
                "containerStatuses": [{ "name": "lb", "image": "hostlb/lb:1", "imageID": "sha256:1", "ready": false,
                    "restartCount": 3, "state": { "waiting": { "reason": "CrashLoopBackOff" } } }]
            }
        }))
        .unwrap();
        let index = index_of(&[], &[], std::slice::from_ref(&pod), &[]);
        let kept = index.proxy_pods_of(UID).next().expect("the pod is indexed");
        assert_eq!(
            kept,
            &ProxyPod {
                key: "hostlb-system/p1".into(),
                node: Some("n1".into()),
                created: Some("2026-01-02T03:04:05Z".parse().unwrap()),
                deleting: false,
                ready: false,
                unschedulable: Some("0/2 nodes are available".into()),
                failure: Some("container lb: CrashLoopBackOff".into()),
            }
        );
        assert_eq!(
            failing_pods(&[kept])[0].message,
            "proxy pod hostlb-system/p1 on n1: container lb: CrashLoopBackOff"
        );
    }

    #[test]
    fn enablelb_is_in_use_while_any_node_carries_the_label() {
        let labelled = NodeBuilder::new("a").label(names::NODE_LABEL_ENABLE_LB, "false").build();
        let mut index = index_of(&[], &[labelled.clone(), NodeBuilder::new("b").build()], &[], &[]);
        assert!(index.enablelb_in_use());
        index.apply_node(&watcher::Event::Apply(NodeBuilder::new("a").build()));
        assert!(!index.enablelb_in_use());
        index.apply_node(&watcher::Event::Apply(labelled.clone()));
        index.apply_node(&watcher::Event::Delete(labelled));
        assert!(!index.enablelb_in_use());
        assert!(index.node("b").is_some() && index.node("a").is_none());
    }

    #[test]
    fn a_relist_replaces_everything_only_once_complete() {
        let mut index = index_of(&[], &[NodeBuilder::new("old").build()], &[], &[]);
        assert!(index.unsynced().is_empty());
        index.apply_node(&watcher::Event::Init);
        index.apply_node(&watcher::Event::InitApply(NodeBuilder::new("new").build()));
        assert!(index.node("old").is_some(), "the old list stays until the new one is complete");
        index.apply_node(&watcher::Event::InitDone);
        assert!(index.node("old").is_none());
        assert!(index.node("new").is_some());
    }

    #[test]
    fn watches_count_as_synced_after_their_first_list() {
        let mut index = Index::new(&crate::fixtures::settings());
        let all = ["services", "nodes", "proxy pods", "proxy daemonsets", "proxy creation failures", "node leases"];
        assert_eq!(index.unsynced(), all);
        index.apply_node(&watcher::Event::Init);
        index.apply_node(&watcher::Event::InitDone);
        let rest = ["services", "proxy pods", "proxy daemonsets", "proxy creation failures", "node leases"];
        assert_eq!(index.unsynced(), rest);
    }
}
