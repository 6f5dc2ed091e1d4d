//! Which Services a change to a watched Node, proxy Pod or DaemonSet affects, and which proxy
//! objects no Service owns any more.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use k8s_openapi::api::core::v1::{Node, Service};
use kube::runtime::reflector::ObjectRef;
use kube::ResourceExt;

use crate::names;
use crate::Settings;

/// The Service a proxy DaemonSet or Pod serves, read from the labels the controller set.
pub fn owning_service(object: &impl ResourceExt) -> Option<ObjectRef<Service>> {
    let labels = object.labels();
    if labels.get(names::LABEL_MANAGED_BY).map(String::as_str) != Some(names::MANAGED_BY) {
        return None;
    }
    let name = labels.get(names::LABEL_SERVICE_NAME)?;
    let namespace = labels.get(names::LABEL_SERVICE_NAMESPACE)?;
    Some(ObjectRef::new(name).within(namespace))
}

/// Every Service hostlb handles (or still has to clean up): any of them may publish, or be
/// placed on, the node that changed.
pub fn services_affected_by_node<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    settings: &Settings,
) -> Vec<ObjectRef<Service>> {
    services.into_iter().filter(|s| served_or_cleaning_up(s, settings)).map(ObjectRef::from_obj).collect()
}

fn served_or_cleaning_up(service: &Service, settings: &Settings) -> bool {
    settings.serves(service) || settings.holds(service)
}

/// Proxy objects that no Service will ever clean up: the Service of their UID is gone, or
/// neither served nor holding the finalizer (someone removed it by hand). Left alone, they
/// would hold their host ports for good.
pub fn orphaned<'a, K: ResourceExt>(
    proxies: impl IntoIterator<Item = &'a K>,
    services: &[&Service],
    settings: &Settings,
) -> Vec<&'a K> {
    let claimed: HashSet<&str> = services
        .iter()
        .filter(|s| served_or_cleaning_up(s, settings))
        .filter_map(|s| s.metadata.uid.as_deref())
        .collect();
    proxies
        .into_iter()
        .filter(|proxy| proxy.meta().deletion_timestamp.is_none())
        .filter(|proxy| proxy.labels().get(names::LABEL_SERVICE_UID).is_none_or(|uid| !claimed.contains(uid.as_str())))
        .collect()
}

/// A fingerprint of what hostlb reads from a Node. kubelet rewrites its Node every few seconds
/// for heartbeats; only a change of this fingerprint is worth a look at every Service.
pub fn node_fingerprint(node: &Node) -> Option<u64> {
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
    Some(hasher.finish())
}

/// Remembers each node's fingerprint so that only real changes (and deletions) pass.
#[derive(Default)]
pub struct NodeChangeFilter {
    seen: HashMap<String, u64>,
}

impl NodeChangeFilter {
    /// `current` is `None` when the node is gone.
    pub fn changed(&mut self, name: &str, current: Option<&Node>) -> bool {
        match current.and_then(node_fingerprint) {
            Some(fingerprint) => self.seen.insert(name.to_string(), fingerprint) != Some(fingerprint),
            None => {
                self.seen.remove(name);
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{proxy_pod, settings, terminating_proxy_pod, NodeBuilder, ServiceBuilder, NAMESPACE};
    use k8s_openapi::api::core::v1::NodeCondition;

    #[test]
    fn proxy_pods_map_to_their_service() {
        let pod = proxy_pod("p", "n1", true);
        assert_eq!(owning_service(&pod), Some(ObjectRef::new("web").within(NAMESPACE)));
    }

    #[test]
    fn objects_not_managed_by_hostlb_map_to_nothing() {
        let mut pod = proxy_pod("p", "n1", true);
        pod.metadata.labels.as_mut().unwrap().insert(names::LABEL_MANAGED_BY.into(), "someone-else".into());
        assert_eq!(owning_service(&pod), None);
    }

    #[test]
    fn nodes_affect_handled_services_and_those_awaiting_cleanup() {
        let handled = ServiceBuilder::new("web").build();
        let other_class = ServiceBuilder::new("metal").class("metallb.io/metallb").build();
        let mut leaving = ServiceBuilder::new("leaving").type_("ClusterIP").build();
        leaving.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let plain = ServiceBuilder::new("plain").type_("ClusterIP").build();
        let refs = services_affected_by_node([&handled, &other_class, &leaving, &plain], &settings());
        let names: Vec<&str> = refs.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, vec!["web", "leaving"]);
    }

    #[test]
    fn proxies_are_orphaned_once_no_served_or_finalizing_service_has_their_uid() {
        let proxy = proxy_pod("p", "n1", true);
        let served = ServiceBuilder::new("web").build();
        let mut finalizing = ServiceBuilder::new("web").type_("ClusterIP").build();
        finalizing.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let released_by_hand = ServiceBuilder::new("web").type_("ClusterIP").build();
        let mut recreated = ServiceBuilder::new("web").build();
        recreated.metadata.uid = Some("another-uid".into());
        let class = &settings();

        assert!(orphaned([&proxy], &[&served], class).is_empty());
        assert!(orphaned([&proxy], &[&finalizing], class).is_empty());
        assert_eq!(orphaned([&proxy], &[&released_by_hand], class).len(), 1);
        assert_eq!(orphaned([&proxy], &[&recreated], class).len(), 1);
        assert_eq!(orphaned([&proxy], &[], class).len(), 1);

        assert!(orphaned([&terminating_proxy_pod("p", "n1")], &[], class).is_empty());
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

    #[test]
    fn node_change_filter_passes_first_sight_changes_and_deletions_only() {
        let mut filter = NodeChangeFilter::default();
        let node = NodeBuilder::new("n1").internal("10.0.0.1").build();
        assert!(filter.changed("n1", Some(&node)));
        assert!(!filter.changed("n1", Some(&node)));
        let moved = NodeBuilder::new("n1").internal("10.0.0.2").build();
        assert!(filter.changed("n1", Some(&moved)));
        assert!(filter.changed("n1", None));
        assert!(filter.changed("n1", Some(&moved)));
    }
}
