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
#[path = "triggers_tests.rs"]
mod tests;
