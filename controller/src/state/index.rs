//! What reconciles need to know about objects other than their own Service, kept current by
//! the watches and grouped the way reconciles look it up: the nodes (and whether any carries
//! `enablelb`) and their Leases; port claims by protocol and port; every Service's
//! resourceVersion; of the proxy pod data plane, proxy pods by Service UID and proxy
//! DaemonSets by name; of the node agent data plane, plans by name, the agents' reports by the
//! Services they name (and when each was last seen renewed), the agents' pods by node, their
//! DaemonSet, Role and RoleBinding, and the ConfigMap plans and reports of older releases; and
//! the DaemonSet controller's FailedCreate Events by DaemonSet. A reconcile reads its own groups and the
//! nodes, so it costs what its own Service costs plus a pass or two over the nodes. Each `apply_*` returns what the event
//! changed once committed, for `triggers`. Pure: the watches hand it their events; nothing
//! here talks to the API server.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hostlb_contract::Protocol;
use hostlb_model::agent::COMPONENT_AGENT;
use hostlb_model::names;
use hostlb_model::node_labels::carries_enablelb;
use hostlb_model::options::ServiceLb;
use hostlb_model::readiness::{daemon_pod_target_node, node_can_serve};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, PodTemplateSpec, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::DynamicObject;
use kube::runtime::watcher;
use kube::ResourceExt;

use crate::state::agent_report::AgentReport;
use crate::state::node_liveness::{Renewal, NODE_LEASE_NAMESPACE};
use crate::state::proxy_pod::ProxyPod;
use crate::state::section::{Change, Section};

/// A host port: what two Services cannot both hold on one node.
pub type PortKey = (Protocol, u16);

/// The only group nodes are sorted into: any node in it turns ServiceLB's opt-in rule on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CarriesEnableLb;

/// A valid Service that hostlb serves, as other Services' reconciles see it.
pub type Claim = Arc<ServiceLb>;

/// What reconciles read of a proxy DaemonSet: its metadata (labels, configuration hash,
/// generation), status, and of its spec only the `rollout restart` mark of its pod template.
/// The rest of the spec, the pod template hostlb wrote, is most of it.
fn proxy_daemonset_essentials(daemonset: &DaemonSet) -> DaemonSet {
    let restart_mark = daemonset.spec.as_ref().and_then(|spec| {
        let annotations = spec.template.metadata.as_ref()?.annotations.as_ref()?;
        let (key, value) = annotations.get_key_value(names::ANNOTATION_RESTARTED_AT)?;
        let template = PodTemplateSpec {
            metadata: Some(ObjectMeta {
                annotations: Some([(key.clone(), value.clone())].into_iter().collect()),
                ..Default::default()
            }),
            spec: None,
        };
        Some(DaemonSetSpec { template, ..Default::default() })
    });
    DaemonSet { metadata: daemonset.metadata.clone(), spec: restart_mark, status: daemonset.status.clone() }
}

/// How long a node is remembered as having lost its proxy pod: longer than any decision waits
/// for the DaemonSet controller to create the replacement.
const DEPARTURE_MEMORY: Duration = Duration::from_secs(120);

/// How long after this controller regained sight of the node Leases no address is withdrawn:
/// the node controller marks nodes NotReady on its first look after the same blindness (its
/// grace is 40 s), and their kubelets report Ready again within their 10 s status period.
const AFTER_BLINDNESS: Duration = Duration::from_secs(30);

/// The node whose kubelet renews the Lease of this key: node Leases are named after their node.
fn node_of_lease(key: &str) -> Option<&str> {
    key.strip_prefix(NODE_LEASE_NAMESPACE)?.strip_prefix('/')
}

/// What is kept of an object kept whole, in no group: one of the node agents' own objects.
pub fn kept_whole<K: Clone>(object: &K) -> Option<(Arc<K>, Vec<()>)> {
    Some((Arc::new(object.clone()), Vec::new()))
}

/// What a Service event changed: the Service itself (its resourceVersion) and its claim.
#[derive(Debug, Default)]
pub struct ServiceChanges {
    pub services: Vec<Change<String>>,
    pub claims: Vec<Change<Claim>>,
}

#[derive(Default)]
pub struct Index {
    pub nodes: Section<Arc<Node>, CarriesEnableLb>,
    /// Proxy pods, grouped by the UID of the Service they serve.
    pub proxy_pods: Section<Arc<ProxyPod>, String>,
    /// Proxy DaemonSets, by `namespace/name`.
    pub daemonsets: Section<Arc<DaemonSet>, ()>,
    /// The node agents' DaemonSet, when there is one.
    pub agents: Section<Arc<DaemonSet>, ()>,
    /// The node agents' Role and RoleBinding, when there are.
    pub agent_role: Section<Arc<Role>, ()>,
    pub agent_binding: Section<Arc<RoleBinding>, ()>,
    /// The node agents' pods, grouped by the node each is for.
    pub agent_pods: Section<Arc<ProxyPod>, String>,
    /// Plans for the node agents, by `namespace/name`, grouped by the UID of their Service.
    pub plans: Section<Arc<DynamicObject>, String>,
    /// The node agents' reports, grouped by the UIDs of the Services they name.
    pub agent_reports: Section<Arc<AgentReport>, String>,
    /// When this process saw each report's `writtenAt` change, by the report's key.
    report_renewals_seen: HashMap<String, (String, Instant)>,
    /// The reports not renewed within their bound when last judged (`judge_reports`), as they
    /// then stand (`AgentReport::expired`), by key.
    expired_reports: HashMap<String, Arc<AgentReport>>,
    /// The ConfigMap plans and reports of releases before `ForwardingPlan` and `NodeReport`,
    /// read and then deleted while an upgrade replaces the agents.
    pub legacy_plans: Section<Arc<ConfigMap>, ()>,
    pub legacy_agent_reports: Section<Arc<AgentReport>, String>,
    /// Every Service's resourceVersion, so that a relist tells which Services changed.
    pub services: Section<String, ()>,
    /// Served Services, grouped by the host ports they claim.
    pub claims: Section<Claim, PortKey>,
    /// The DaemonSet controller's FailedCreate Events, grouped by DaemonSet name.
    pub creation_failures: Section<Arc<Event>, String>,
    /// Each node's Lease as last seen, under the Lease's key.
    pub node_leases: Section<Renewal, ()>,
    /// When this process saw each Lease renewed, by the Lease's key.
    renewals_seen: HashMap<String, Instant>,
    /// Whether the Lease watch has delivered since its last error.
    lease_watch_healthy: bool,
    /// Whether Leases were last judged while this controller may have been blind to renewals.
    pub(super) blind: bool,
    /// When it last regained sight of the renewals, and whether that was under
    /// `AFTER_BLINDNESS` ago when Leases were last judged.
    regained_sight: Option<Instant>,
    pub(super) recovering: bool,
    /// Since when withdrawals have been paused, and whether that pause outlasted its limit
    /// (`bound_pause`).
    pub(super) paused_since: Option<Instant>,
    pub(super) pause_ended: bool,
    /// Nodes whose Lease was stale when the clock was last read (`judge_leases`).
    stale_nodes: BTreeSet<String>,
    /// When each (Service UID, node) last saw its proxy pod go, for `DEPARTURE_MEMORY`.
    departures: HashMap<(String, String), Timestamp>,
}

impl Index {
    /// Applies a Lease event seen at `now`: a renewal counts from when it is seen. A relist
    /// brings news only of the Leases whose renewal time changed meanwhile (each renewal
    /// changes it): those, and Leases not seen before, count as renewed now; one renewed no
    /// more keeps the time its last renewal was seen, so that a relist or a watch that came
    /// back does not bring a dead node back to life.
    pub fn apply_node_lease(&mut self, event: &watcher::Event<Lease>, now: Instant) {
        for change in self.node_leases.apply(event, |lease| Some((Renewal::of(lease)?, Vec::new()))) {
            match change.after {
                Some(_) => self.renewals_seen.insert(change.key, now),
                None => self.renewals_seen.remove(&change.key),
            };
        }
        if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
            self.lease_watch_healthy = true;
        }
    }

    /// The Lease watch failed: no Lease is judged stale until it delivers again.
    pub fn lease_watch_failed(&mut self) {
        self.lease_watch_healthy = false;
    }

    /// Judges every node's Lease at `now`, allowing `grace` past a missed renewal (`None`: leave
    /// it to the node's Ready condition); returns the nodes that went stale or came back.
    ///
    /// No node goes stale while this controller may be blind: while the API server does not
    /// answer it (`api_answering`, from its other requests), while the Lease watch fails, or
    /// while more than half the nodes fall silent at once, which is far more likely a watch
    /// stalled or an API server away than most kubelets stopping together. Nodes already
    /// stale stay so, and any may come back. When sight returns, the renewals of the nodes
    /// that were not stale count from then: the kubelets that renewed first say nothing of
    /// the others' silence meanwhile.
    pub fn judge_leases(&mut self, now: Instant, grace: Option<Duration>, api_answering: bool) -> Vec<Arc<Node>> {
        let silent = |index: &Index| -> BTreeSet<String> {
            let Some(grace) = grace else { return BTreeSet::new() };
            index
                .node_leases
                .entries()
                .filter(|(key, renewal)| {
                    index.renewals_seen.get(*key).is_some_and(|seen| renewal.is_stale(*seen, now, grace))
                })
                .filter_map(|(key, _)| node_of_lease(key).map(str::to_string))
                .collect()
        };
        let mut stale = silent(self);
        let blind = !api_answering || !self.lease_watch_healthy || stale.len() * 2 > self.node_leases.values().count();
        if blind {
            stale.retain(|node| self.stale_nodes.contains(node));
        } else if self.blind {
            self.regained_sight = Some(now);
            for (key, seen) in &mut self.renewals_seen {
                if node_of_lease(key).is_none_or(|node| !self.stale_nodes.contains(node)) {
                    *seen = now;
                }
            }
            stale = silent(self);
        }
        self.blind = blind;
        self.recovering = self.regained_sight.is_some_and(|since| now < since + AFTER_BLINDNESS);
        self.flip_stale(stale)
    }

    /// Makes `stale` the stale nodes; returns the nodes that went stale or came back.
    fn flip_stale(&mut self, stale: BTreeSet<String>) -> Vec<Arc<Node>> {
        let flipped: Vec<Arc<Node>> =
            stale.symmetric_difference(&self.stale_nodes).filter_map(|name| self.nodes.get(name).cloned()).collect();
        self.stale_nodes = stale;
        flipped
    }

    /// Whether the node can carry traffic: Ready, not cordoned, and its kubelet renewing its Lease.
    pub fn serves(&self, node: &Node) -> bool {
        node_can_serve(node) && self.renews(node)
    }

    /// Whether the node's kubelet is not judged stale (`judge_leases`).
    pub(super) fn renews(&self, node: &Node) -> bool {
        node.metadata.name.as_ref().is_none_or(|name| !self.stale_nodes.contains(name))
    }

    /// The node, if it `serves`.
    pub fn serving_node(&self, name: &str) -> Option<&Node> {
        self.node(name).filter(|node| self.serves(node))
    }

    pub fn apply_node(&mut self, event: &watcher::Event<Node>) -> Vec<Change<Arc<Node>>> {
        self.nodes.apply(event, |node| {
            let opted = carries_enablelb(node.labels());
            Some((Arc::new(node.clone()), opted.then_some(CarriesEnableLb).into_iter().collect()))
        })
    }

    /// Applies a proxy pod event seen at `now`, remembering which nodes just lost a pod.
    pub fn apply_proxy_pod(&mut self, event: &watcher::Event<Pod>, now: Timestamp) -> Vec<Change<Arc<ProxyPod>>> {
        let changes = self.proxy_pods.apply(event, |pod| {
            let kept = ProxyPod::of(pod);
            let uid = kept.service_uid.clone()?;
            Some((Arc::new(kept), vec![uid]))
        });
        let memory = SignedDuration::try_from(DEPARTURE_MEMORY).unwrap_or_default();
        self.departures.retain(|_, at| at.checked_add(memory).is_ok_and(|until| until > now));
        for change in &changes {
            let Some(gone) = change.before.as_ref().filter(|_| change.after.is_none()) else { continue };
            if let (Some(uid), Some(node)) = (gone.service_uid.clone(), gone.node.clone()) {
                self.departures.insert((uid, node), now);
            }
        }
        changes
    }

    /// Keeps the pods of this install's node agents (`install_id`), by the node each is for:
    /// the one it is bound to, or, while the scheduler has not placed it, the one its
    /// DaemonSet made it for.
    pub fn apply_agent_pod(&mut self, event: &watcher::Event<Pod>, install_id: &str) -> Vec<Change<Arc<ProxyPod>>> {
        self.agent_pods.apply(event, |pod| {
            let labels = pod.labels();
            let is_agent = labels.get(names::LABEL_COMPONENT).map(String::as_str) == Some(COMPONENT_AGENT)
                && labels.get(names::LABEL_INSTALL).map(String::as_str) == Some(install_id);
            if !is_agent {
                return None;
            }
            let mut kept = ProxyPod::of(pod);
            kept.node = kept.node.or_else(|| daemon_pod_target_node(pod).map(str::to_string));
            let node = kept.node.clone()?;
            Some((Arc::new(kept), vec![node]))
        })
    }

    /// When the Service's proxy pod on `node` was last seen going, if not long ago.
    pub fn departed(&self, service_uid: &str, node: &str) -> Option<Timestamp> {
        self.departures.get(&(service_uid.to_string(), node.to_string())).copied()
    }

    pub fn apply_daemonset(&mut self, event: &watcher::Event<DaemonSet>) -> Vec<Change<Arc<DaemonSet>>> {
        self.daemonsets.apply(event, |daemonset| Some((Arc::new(proxy_daemonset_essentials(daemonset)), Vec::new())))
    }

    /// Keeps every Service's resourceVersion, and the claim of each that `claim` says claims
    /// host ports (served, not being deleted, admitted: the ports it is allowed).
    pub fn apply_service(
        &mut self,
        event: &watcher::Event<Service>,
        claim: impl Fn(&Service) -> Option<ServiceLb>,
    ) -> ServiceChanges {
        let services = self
            .services
            .apply(event, |service| Some((service.metadata.resource_version.clone().unwrap_or_default(), Vec::new())));
        let claims = self.claims.apply(event, |service| {
            let lb = claim(service)?;
            let mut ports: Vec<PortKey> = lb.ports.iter().map(|p| (p.protocol, p.listen)).collect();
            ports.sort();
            ports.dedup();
            Some((Arc::new(lb), ports))
        });
        ServiceChanges { services, claims }
    }

    pub fn apply_creation_failure(&mut self, event: &watcher::Event<Event>) -> Vec<Change<Arc<Event>>> {
        self.creation_failures.apply(event, |failure| {
            let daemonset = failure.involved_object.name.clone()?;
            Some((Arc::new(failure.clone()), vec![daemonset]))
        })
    }

    pub fn enablelb_in_use(&self) -> bool {
        !self.nodes.group_is_empty(&CarriesEnableLb)
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.get(name).map(Arc::as_ref)
    }

    /// The Service's proxy pods, and, with the node agents, what each node's agent reports of it.
    pub fn proxy_pods_of<'a>(&'a self, service_uid: &'a str) -> impl Iterator<Item = &'a ProxyPod> {
        let pods = self.proxy_pods.group(&service_uid.to_string()).map(Arc::as_ref);
        let reports = self.reports_naming(service_uid);
        pods.chain(reports.filter_map(move |report| report.services.get(service_uid)))
    }

    /// The nodes where the Service holds its ports: where a proxy pod of it runs or starts (not
    /// one being deleted, nor one the scheduler could not place), or that its plan names.
    pub fn nodes_holding(&self, service_uid: &str) -> BTreeSet<&str> {
        let uid = service_uid.to_string();
        let placed = self.proxy_pods.group(&uid).filter(|pod| !pod.deleting && pod.unschedulable.is_none());
        let pods = placed.filter_map(|pod| pod.node.as_deref());
        let plan = self.plans.group(&uid).next();
        let planned = plan.and_then(|plan| plan.data.pointer("/spec/nodes")).and_then(|nodes| nodes.as_array());
        pods.chain(planned.into_iter().flatten().filter_map(|node| node.as_str())).collect()
    }

    /// The nodes whose Ready proxy pod forwards the Service.
    pub fn nodes_forwarding_through_pods(&self, service_uid: &str) -> BTreeSet<&str> {
        let pods = self.proxy_pods.group(&service_uid.to_string()).map(Arc::as_ref);
        pods.filter(|pod| pod.ready).filter_map(|pod| pod.node.as_deref()).collect()
    }

    /// The nodes whose agent reports that it forwards the Service, of those its plan names: a
    /// report is the node's word, the plan the controller's.
    pub fn nodes_forwarding_through_agents(&self, service_uid: &str) -> BTreeSet<&str> {
        let plan = self.plans.group(&service_uid.to_string()).next();
        let planned = plan.and_then(|plan| plan.data.pointer("/spec/nodes")).and_then(|nodes| nodes.as_array());
        let planned: BTreeSet<&str> = planned.into_iter().flatten().filter_map(|node| node.as_str()).collect();
        self.reports_naming(service_uid)
            .filter(|report| report.services.get(service_uid).is_some_and(|entry| entry.ready))
            .map(|r| r.node.as_str())
            .filter(|node| planned.contains(node))
            .collect()
    }

    /// The reports that name the Service, as they stand: a report not renewed within its bound
    /// as expired, and an older release's ConfigMap report for a node whose agent has not yet
    /// written its `NodeReport`.
    fn reports_naming<'a>(&'a self, service_uid: &str) -> impl Iterator<Item = &'a AgentReport> {
        let uid = service_uid.to_string();
        let current = self.agent_reports.group(&uid).filter(|report| report.written_at.is_some());
        let current = current.map(|report| self.expired_reports.get(&report.key).unwrap_or(report));
        let legacy = self.legacy_agent_reports.group(&uid).filter(|report| !self.agent_reported(&report.node));
        current.chain(legacy).map(Arc::as_ref)
    }

    /// The nodes whose agent's report is expired.
    pub fn expired_report_nodes(&self) -> Vec<&str> {
        self.expired_reports.values().map(|report| report.node.as_str()).collect()
    }

    /// Whether the node's agent has written its `NodeReport`.
    fn agent_reported(&self, node: &str) -> bool {
        self.agent_reports.values().any(|report| report.node == node && report.written_at.is_some())
    }

    pub fn apply_plan(&mut self, event: &watcher::Event<DynamicObject>) -> Vec<Change<Arc<DynamicObject>>> {
        self.plans.apply(event, |plan| {
            let uid = plan.labels().get(names::LABEL_SERVICE_UID).cloned();
            Some((Arc::new(plan.clone()), uid.into_iter().collect()))
        })
    }

    pub fn apply_legacy_plan(&mut self, event: &watcher::Event<ConfigMap>) {
        self.legacy_plans.apply(event, |plan| Some((Arc::new(plan.clone()), Vec::new())));
    }

    /// Applies a report event seen at `now`: a report counts as renewed when its `writtenAt`
    /// changes, so that a relist renews none that its agent did not.
    pub fn apply_agent_report(
        &mut self,
        event: &watcher::Event<DynamicObject>,
        now: Instant,
    ) -> Vec<Change<Arc<AgentReport>>> {
        let changes = self.agent_reports.apply(event, |object| {
            let report = AgentReport::of(object)?;
            let uids = report.services.keys().cloned().collect();
            Some((Arc::new(report), uids))
        });
        for change in &changes {
            let written_at = change.after.as_ref().and_then(|report| report.written_at.clone());
            match written_at {
                // An expired report stays so until the clock judges it again (`judge_reports`),
                // which then has the Services it names looked at again.
                Some(at) if self.report_renewals_seen.get(&change.key).is_none_or(|(seen, _)| *seen != at) => {
                    self.report_renewals_seen.insert(change.key.clone(), (at, now));
                }
                Some(_) => {}
                None => {
                    self.report_renewals_seen.remove(&change.key);
                    self.expired_reports.remove(&change.key);
                }
            }
        }
        changes
    }

    pub fn apply_legacy_agent_report(
        &mut self,
        event: &watcher::Event<ConfigMap>,
        agent: &str,
    ) -> Vec<Change<Arc<AgentReport>>> {
        self.legacy_agent_reports.apply(event, |config_map| {
            let report = AgentReport::of_config_map(config_map, agent)?;
            let uids = report.services.keys().cloned().collect();
            Some((Arc::new(report), uids))
        })
    }

    /// Judges every report at `now`: one whose renewal was last seen more than `expiry` ago is
    /// expired. Unless few of them are: more than half silent at once is more likely this
    /// controller's blindness, or a cause common to every node, than agents that stopped, and
    /// withdrawing every node would not help. Returns whether that changed what decisions see.
    pub fn judge_reports(&mut self, now: Instant, expiry: Duration) -> bool {
        let silent: Vec<String> = self
            .report_renewals_seen
            .iter()
            .filter(|(_, (_, seen))| now.saturating_duration_since(*seen) > expiry)
            .map(|(key, _)| key.clone())
            .collect();
        let silent = if silent.len() * 2 > self.report_renewals_seen.len() { Vec::new() } else { silent };
        let unchanged = silent.len() == self.expired_reports.len()
            && silent.iter().all(|key| self.expired_reports.contains_key(key));
        if unchanged {
            return false;
        }
        let bound = format!("{}s", expiry.as_secs());
        self.expired_reports = silent
            .into_iter()
            .filter_map(|key| {
                let report = self.agent_reports.get(&key)?;
                Some((key, Arc::new(report.expired(&bound))))
            })
            .collect();
        true
    }

    /// The watches that have not yet delivered their first complete list.
    pub fn unsynced(&self) -> Vec<&'static str> {
        [
            ("services", self.services.synced()),
            ("nodes", self.nodes.synced()),
            ("proxy pods", self.proxy_pods.synced()),
            ("proxy daemonsets", self.daemonsets.synced()),
            ("node agents", self.agents.synced()),
            ("node agents' role", self.agent_role.synced()),
            ("node agents' role binding", self.agent_binding.synced()),
            ("plans", self.plans.synced()),
            ("agent reports", self.agent_reports.synced()),
            ("older plans", self.legacy_plans.synced()),
            ("older agent reports", self.legacy_agent_reports.synced()),
            ("proxy creation failures", self.creation_failures.synced()),
            ("node leases", self.node_leases.synced()),
        ]
        .into_iter()
        .filter(|(_, synced)| !synced)
        .map(|(name, _)| name)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::proxy_health::{failing_pods, PROXY_POD};
    use crate::fixtures::{index_of, proxy_pod, settings, NodeBuilder, ServiceBuilder, UID};

    const GRACE: Option<Duration> = Some(Duration::from_secs(10));

    fn claim(service: &Service) -> Option<ServiceLb> {
        crate::decide::claim(service, &settings())
    }

    fn node_lease(node: &str, renewed_at_second: i64) -> Lease {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": node, "namespace": NODE_LEASE_NAMESPACE },
            "spec": {
                "holderIdentity": node,
                "leaseDurationSeconds": 40,
                "renewTime": k8s_openapi::jiff::Timestamp::from_second(renewed_at_second).unwrap().to_string(),
            }
        }))
        .unwrap()
    }

    fn names(flipped: Vec<Arc<Node>>) -> Vec<String> {
        flipped.iter().map(|n| n.name_any()).collect()
    }

    /// An index of `nodes`, each with a Lease seen renewed at `start`.
    fn with_leases(nodes: &[&str], start: Instant) -> Index {
        let nodes: Vec<Node> = nodes.iter().map(|name| NodeBuilder::new(name).build()).collect();
        let mut index = index_of(&[], &nodes, &[], &[]);
        let leases: Vec<Lease> = nodes.iter().map(|node| node_lease(&node.name_any(), 1_000)).collect();
        relist(&leases).iter().for_each(|event| index.apply_node_lease(event, start));
        index
    }

    fn relist<K: Clone>(objects: &[K]) -> Vec<watcher::Event<K>> {
        let mut events = vec![watcher::Event::Init];
        events.extend(objects.iter().cloned().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        events
    }

    #[test]
    fn nodes_whose_lease_goes_stale_stop_serving_and_are_reported_once_each_way() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut index = with_leases(&["n1", "n2"], start);
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_015)), at(15));
        assert!(index.judge_leases(at(20), GRACE, true).is_empty(), "10 s renewal interval plus 10 s grace");
        assert_eq!(names(index.judge_leases(at(21), GRACE, true)), ["n1"]);
        assert!(index.serving_node("n1").is_none() && index.serving_node("n2").is_some());
        assert!(index.judge_leases(at(22), GRACE, true).is_empty(), "reported once");
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n1", 1_022)), at(22));
        assert_eq!(names(index.judge_leases(at(36), GRACE, true)), ["n1", "n2"], "n1 is back, n2 went stale");
        assert!(index.serving_node("n1").is_some() && index.serving_node("n2").is_none());
    }

    #[test]
    fn renewals_count_from_when_they_are_seen_not_from_the_kubelets_clock() {
        let start = Instant::now();
        let mut index = with_leases(&["n1", "n2"], start);
        let written_long_ago = node_lease("n1", 10);
        index.apply_node_lease(&watcher::Event::Apply(written_long_ago), start + Duration::from_secs(5));
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_020)), start + Duration::from_secs(20));
        assert!(
            index.judge_leases(start + Duration::from_secs(25), GRACE, true).is_empty(),
            "seen at 5 s: fresh at 25 s"
        );
        assert_eq!(names(index.judge_leases(start + Duration::from_secs(26), GRACE, true)), ["n1"]);
    }

    #[test]
    fn when_most_nodes_fall_silent_at_once_none_goes_stale_and_a_relist_revives_no_dead_node() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut index = with_leases(&["n1", "n2", "n3"], start);
        for (node, second) in [("n2", 15), ("n3", 15)] {
            index.apply_node_lease(&watcher::Event::Apply(node_lease(node, 1_000 + second as i64)), at(second));
        }
        assert_eq!(names(index.judge_leases(at(21), GRACE, true)), ["n1"], "one of three: it died");
        assert!(!index.withdrawals_paused());
        // The watch stalls: every Lease falls silent.
        assert!(index.judge_leases(at(60), GRACE, true).is_empty(), "two more of three at once: not believed");
        assert!(index.serving_node("n2").is_some() && index.serving_node("n1").is_none());
        // It comes back with a relist: n2's and n3's Leases were renewed meanwhile, n1's was not.
        let leases = [node_lease("n1", 1_000), node_lease("n2", 1_055), node_lease("n3", 1_055)];
        relist(&leases).iter().for_each(|event| index.apply_node_lease(event, at(61)));
        assert!(index.judge_leases(at(62), GRACE, true).is_empty(), "the relist revives no dead node");
        assert!(index.serving_node("n1").is_none() && index.serving_node("n2").is_some());
        for node in ["n2", "n3"] {
            index.apply_node_lease(&watcher::Event::Apply(node_lease(node, 1_075)), at(75));
        }
        assert!(index.judge_leases(at(82), GRACE, true).is_empty(), "nor does time");
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n1", 1_083)), at(83));
        assert_eq!(names(index.judge_leases(at(84), GRACE, true)), ["n1"], "a renewal does");
    }

    #[test]
    fn when_sight_returns_the_kubelets_not_yet_heard_from_get_a_full_interval() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut index = with_leases(&["n1", "n2", "n3"], start);
        for node in ["n2", "n3"] {
            index.apply_node_lease(&watcher::Event::Apply(node_lease(node, 1_010)), at(10));
        }
        assert_eq!(names(index.judge_leases(at(25), GRACE, true)), ["n1"], "n1 died");
        // The API server hangs 45 s: n2 and n3 fall silent too, and that is not believed.
        assert!(index.judge_leases(at(70), GRACE, true).is_empty());
        // It answers again: n2 renews first; n3 a few seconds later.
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_071)), at(71));
        assert!(index.judge_leases(at(71), GRACE, true).is_empty(), "n3 is not taken for dead meanwhile");
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n3", 1_074)), at(74));
        assert!(index.judge_leases(at(80), GRACE, true).is_empty());
        assert!(index.serving_node("n1").is_none() && index.serving_node("n3").is_some(), "n1 stays out");
        assert!(index.withdrawals_paused(), "the node controller may still mark nodes it could not hear from");
        for node in ["n2", "n3"] {
            index.apply_node_lease(&watcher::Event::Apply(node_lease(node, 1_100)), at(100));
        }
        index.judge_leases(at(109), GRACE, true);
        assert!(index.withdrawals_paused(), "sight returned at 80 s, when most were heard from again");
        index.judge_leases(at(110), GRACE, true);
        assert!(!index.withdrawals_paused(), "30 s after sight returned");
    }

    #[test]
    fn while_the_api_server_does_not_answer_no_node_goes_stale_even_one_of_two() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let mut index = with_leases(&["n1", "n2"], start);
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_009)), at(9));
        // The API server hangs at 10 s: n1, which renewed first, falls silent first.
        assert!(index.judge_leases(at(21), GRACE, false).is_empty(), "n1 silent 21 s, n2 12 s");
        assert!(index.withdrawals_paused(), "blind");
        assert!(index.judge_leases(at(55), GRACE, false).is_empty());
        // It answers again at 56 s; n2's kubelet renews at 57 s, n1's never: it died meanwhile.
        let mut went_stale = None;
        for second in 56..90 {
            if second == 57 || second == 70 {
                index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_000 + second as i64)), at(second));
            }
            if !index.judge_leases(at(second), GRACE, true).is_empty() {
                went_stale = went_stale.or(Some(second));
            }
            assert_eq!(index.withdrawals_paused(), second < 57 + 30, "at {second} s");
        }
        assert_eq!(went_stale, Some(78), "n1 gets a full interval and grace from when sight returned at 57 s");
    }

    #[test]
    fn while_the_lease_watch_fails_no_node_goes_stale() {
        let start = Instant::now();
        let mut index = with_leases(&["n1", "n2"], start);
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_015)), start + Duration::from_secs(15));
        index.lease_watch_failed();
        assert!(index.judge_leases(start + Duration::from_secs(30), GRACE, true).is_empty());
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_030)), start + Duration::from_secs(30));
        assert!(
            index.judge_leases(start + Duration::from_secs(31), GRACE, true).is_empty(),
            "the silence meanwhile says nothing"
        );
        index.apply_node_lease(&watcher::Event::Apply(node_lease("n2", 1_045)), start + Duration::from_secs(45));
        assert_eq!(
            names(index.judge_leases(start + Duration::from_secs(52), GRACE, true)),
            ["n1"],
            "20 s after sight returned"
        );
    }

    #[test]
    fn most_nodes_not_ready_at_once_is_a_disruption_and_one_of_two_is_not() {
        let ready = NodeBuilder::new("n1").build();
        let not_ready = |name: &str| NodeBuilder::new(name).not_ready().build();
        assert!(!index_of(&[], &[ready.clone(), not_ready("n2")], &[], &[]).withdrawals_paused());
        assert!(index_of(&[], &[ready.clone(), not_ready("n2"), not_ready("n3")], &[], &[]).withdrawals_paused());
        let cordoned = NodeBuilder::new("n2").unschedulable().build();
        assert!(!index_of(&[], &[ready, cordoned], &[], &[]).withdrawals_paused(), "a cordon is no failure");
    }

    #[test]
    fn a_pause_in_withdrawals_ends_once_it_lasted_its_limit_and_begins_anew_after_the_nodes_came_back() {
        let start = Instant::now();
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        let limit = Duration::from_secs(300);
        let not_ready = |name: &str| NodeBuilder::new(name).not_ready().build();
        let mut index = index_of(&[], &[NodeBuilder::new("n1").build(), not_ready("n2"), not_ready("n3")], &[], &[]);
        assert!(!index.bound_pause(at(0), limit) && index.withdrawals_paused());
        assert!(!index.bound_pause(at(299), limit) && index.withdrawals_paused() && index.pause_outlasted().is_none());
        assert!(index.bound_pause(at(300), limit), "ended now");
        assert!(!index.withdrawals_paused() && index.pause_outlasted() == Some((2, 3)));
        assert!(!index.bound_pause(at(301), limit) && !index.withdrawals_paused(), "ended once");

        index.apply_node(&watcher::Event::Apply(NodeBuilder::new("n2").build()));
        assert!(!index.bound_pause(at(302), limit) && !index.withdrawals_paused() && index.pause_outlasted().is_none());
        index.apply_node(&watcher::Event::Apply(not_ready("n2")));
        assert!(!index.bound_pause(at(303), limit) && index.withdrawals_paused(), "a new outage pauses anew");
    }

    #[test]
    fn without_a_grace_leases_are_not_judged() {
        let start = Instant::now();
        let mut index = with_leases(&["n1"], start);
        assert!(index.judge_leases(start + Duration::from_secs(5_000), None, true).is_empty());
        assert!(index.serving_node("n1").is_some());
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
        index.apply_service(&watcher::Event::Apply(moved.clone()), claim);
        assert_eq!(claimants(&index, (Protocol::Udp, 80)), vec!["dns"]);
        assert!(index.claims.group_is_empty(&(Protocol::Tcp, 80)));
        assert_eq!(claimants(&index, (Protocol::Tcp, 8080)), vec!["web"]);

        index.apply_service(&watcher::Event::Delete(moved), claim);
        assert!(index.claims.group_is_empty(&(Protocol::Tcp, 8080)));
        assert_eq!(index.claims.values().count(), 1);
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
            "metadata": { "name": "p1", "namespace": "hostlb-system", "annotations": { "big": "x", (names::ANNOTATION_PROXY_SPEC_HASH): "abc" },
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
                service: None,
                service_uid: Some(UID.into()),
                node: Some("n1".into()),
                created: Some("2026-01-02T03:04:05Z".parse().unwrap()),
                deleting: false,
                ready: false,
                running: false,
                spec_hash: Some("abc".into()),
                restarted_at: None,
                unschedulable: Some("0/2 nodes are available".into()),
                failure: Some("container lb: CrashLoopBackOff".into()),
            }
        );
        assert_eq!(
            failing_pods(PROXY_POD, &[kept])[0].message,
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
        let mut index = Index::default();
        let all = [
            "services",
            "nodes",
            "proxy pods",
            "proxy daemonsets",
            "node agents",
            "node agents' role",
            "node agents' role binding",
            "plans",
            "agent reports",
            "older plans",
            "older agent reports",
            "proxy creation failures",
            "node leases",
        ];
        assert_eq!(index.unsynced(), all);
        index.apply_node(&watcher::Event::Init);
        index.apply_node(&watcher::Event::InitDone);
        assert_eq!(index.unsynced(), all.into_iter().filter(|watch| *watch != "nodes").collect::<Vec<_>>());
    }
}
