//! The proxy pod data plane (the default): a DaemonSet per Service, whose pods claim the
//! Service's ports as host ports on every node it may use (`proxy_daemonset`). The scheduler
//! places them, so it also keeps two Services off one port of a node; hostlb replaces their
//! pods itself, one node at a time and only when what they do changes (`decide::roll`).

use std::collections::BTreeSet;

use hostlb_model::names;
use hostlb_model::options::{FieldError, ServiceLb};
use hostlb_model::reason::Warning;
use hostlb_model::service::ServiceView;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Node;
use kube::core::ApiResource;

use super::node_agents::legacy_objects;
use super::proxy_daemonset::{config_hash_of, desired_daemonset, pod_template_marks};
use super::{
    apply, erased, typed, Applied, DataPlane, Forwarded, Forwarding, ForwardingKind, ForwardingObject,
    ForwardingSettings, SharedChange, SharedObject,
};
use crate::decide::proxy_health::creation_failure;
use crate::decide::roll::{self, eligible_node_names};
use crate::state::{Index, ProxyPod};

pub struct ProxyPods;

static PROXY_DAEMONSET: ForwardingKind = ForwardingKind {
    noun: "DaemonSet",
    resource: || ApiResource::erase::<DaemonSet>(&()),
    applied: hostlb_model::reason::Reason::DaemonSetApplied,
    deleted: hostlb_model::reason::Reason::DaemonSetDeleted,
    selector: names::proxy_daemonset_selector,
    written_by_hostlb_alone: false,
};

impl DataPlane for ProxyPods {
    fn kind(&self) -> &'static ForwardingKind {
        &PROXY_DAEMONSET
    }

    /// The API server checks a DaemonSet's pod template itself.
    fn refusals(&self, _: &ServiceLb) -> Vec<FieldError> {
        Vec::new()
    }

    fn unused_option(&self, _: &ServiceView) -> Option<Warning> {
        None
    }

    /// The proxy DaemonSet, or else the next out-of-date proxy pod to replace.
    fn forward(&self, service: &Forwarded<'_>) -> Forwarding {
        let Forwarded { lb, placement, index, now, .. } = *service;
        let existing: Option<DaemonSet> = service.existing.and_then(typed);
        let desired = desired_daemonset(lb, placement, service.settings);
        if needs_apply(existing.as_ref(), &desired, service.last_applied) {
            let apply = Some(apply(&PROXY_DAEMONSET, &desired, service.existing, lb));
            return Forwarding { apply, replace_pod: None };
        }
        let (Some(spec_hash), Some(existing)) = (pod_template_marks(&desired).0, existing.as_ref()) else {
            return Forwarding::default();
        };
        let current = roll::Current { spec_hash, restarted_at: pod_template_marks(existing).1 };
        let pods: Vec<&ProxyPod> = index.proxy_pods_of(&lb.uid).collect();
        let nodes = eligible_node_names(index, placement);
        let pending = roll::departure_pending(&pods, nodes, |node| index.departed(&lb.uid, node), now);
        let next = roll::next_to_replace(&pods, current, pending);
        Forwarding { apply: None, replace_pod: next.map(|pod| pod.key.clone()) }
    }

    /// The DaemonSet controller's reason for not creating the proxy pods.
    fn not_running(
        &self,
        existing: Option<&ForwardingObject>,
        forwarders: &[&ProxyPod],
        nodes: &[&Node],
        index: &Index,
    ) -> Vec<Warning> {
        let Some(daemonset) = existing.and_then(typed::<DaemonSet>) else { return Vec::new() };
        let name = daemonset.metadata.name.clone().unwrap_or_default();
        let failures = index.creation_failures.group(&name).map(AsRef::as_ref);
        creation_failure(&daemonset, forwarders.len() < nodes.len(), failures).into_iter().collect()
    }

    fn nodes_forwarding<'a>(&self, index: &'a Index, service_uid: &str) -> BTreeSet<&'a str> {
        index.nodes_forwarding_through_pods(service_uid)
    }

    fn indexed(&self, index: &Index, key: &str) -> Option<ForwardingObject> {
        index.daemonsets.get(key).map(|daemonset| erased(daemonset.as_ref()))
    }

    fn all_indexed(&self, index: &Index) -> Vec<ForwardingObject> {
        index.daemonsets.values().map(|daemonset| erased(daemonset.as_ref())).collect()
    }

    /// Once no plan is left, every Service's proxy pods have taken over from the node agents,
    /// whose DaemonSet then goes (its agents, seeing it gone, remove their nodes' rules, and its
    /// reports go with it); their RoleBinding and Role go once no agent is left, so that those
    /// still stopping can read their DaemonSet, and so do an older release's ConfigMap plans and
    /// reports.
    fn shared_changes(&self, _: &ForwardingSettings, index: &Index) -> Vec<SharedChange> {
        if let Some(agents) = index.agents.values().next() {
            let taken_over = index.plans.values().next().is_none();
            return taken_over.then(|| SharedChange::Delete(SharedObject::of(agents.as_ref()))).into_iter().collect();
        }
        if index.agent_pods.values().next().is_some() {
            return Vec::new();
        }
        let bindings = index.agent_binding.values().map(|binding| SharedObject::of(binding.as_ref()));
        let roles = index.agent_role.values().map(|role| SharedObject::of(role.as_ref()));
        bindings.chain(roles).chain(legacy_objects(index)).map(SharedChange::Delete).collect()
    }

    /// Proxy DaemonSets are the Services' own.
    fn uninstalled(&self, _: &ForwardingSettings) -> Vec<SharedObject> {
        Vec::new()
    }
}

/// Whether the DaemonSet must be applied. A server-side apply on every reconcile would also
/// repair hand edits, but it is a write on every proxy pod event and every resync; instead a
/// DaemonSet is applied when its configuration hash differs from the desired one or when its
/// generation moved past the one hostlb's own last apply produced (someone else changed its
/// spec). A replica that has not applied it yet (just started) applies it once.
pub fn needs_apply(existing: Option<&DaemonSet>, desired: &DaemonSet, last_applied: Option<&Applied>) -> bool {
    let Some(existing) = existing else { return true };
    let generation = existing.metadata.generation.unwrap_or_default();
    let (current_hash, edited_since) = match last_applied {
        // The cache has not caught up with hostlb's own last write yet: that write is current.
        Some(applied) if generation < applied.generation => (Some(applied.config_hash.as_str()), false),
        Some(applied) => (config_hash_of(existing), generation > applied.generation),
        None => (config_hash_of(existing), true),
    };
    current_hash != config_hash_of(desired) || edited_since
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::decide::dataplane::node_agents::{desired_agent, desired_binding, desired_plan, desired_role};
    use crate::fixtures::{agent_pod, index_of, settings, ServiceBuilder};
    use crate::state::index::kept_whole;

    #[test]
    fn the_agents_go_once_no_plan_is_left_and_their_permissions_once_no_agent_is() {
        let settings = &settings().forwarding;
        let mut index = index_of(&[], &[], &[agent_pod("n1", "ContainerCreating")], &[]);
        let described = |index: &Index| -> Vec<String> {
            ProxyPods.shared_changes(settings, index).iter().map(ToString::to_string).collect()
        };
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let plan = erased(&desired_plan(&lb, &["n1"], settings));
        index.apply_plan(&Event::Apply(plan.clone()));
        index.agents.apply(&Event::Apply(desired_agent(settings)), kept_whole);
        index.agent_role.apply(&Event::Apply(desired_role(settings, &BTreeSet::from(["n1"]))), kept_whole);
        index.agent_binding.apply(&Event::Apply(desired_binding(settings)), kept_whole);
        let older_plan = ConfigMap { metadata: desired_plan(&lb, &["n1"], settings).metadata, ..Default::default() };
        index.apply_legacy_plan(&Event::Apply(older_plan));
        assert!(described(&index).is_empty(), "the agents still forward a Service");

        index.apply_plan(&Event::Delete(plan));
        assert_eq!(described(&index), ["delete DaemonSet hostlb-system/hostlb-agent"]);
        index.agents.apply(&Event::Delete(desired_agent(settings)), kept_whole);
        assert!(described(&index).is_empty(), "an agent still stopping reads its DaemonSet");
        index.apply_agent_pod(&Event::Delete(agent_pod("n1", "ContainerCreating")), &settings.install_id);
        assert_eq!(
            described(&index),
            [
                "delete RoleBinding hostlb-system/hostlb-agent",
                "delete Role hostlb-system/hostlb-agent",
                "delete ConfigMap hostlb-system/hostlb-web-9178891c"
            ],
            "and an older release's plans"
        );
    }
}
