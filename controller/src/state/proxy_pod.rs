//! What is kept of a proxy pod: the little that decisions and triggers read.

use hostlb_model::names;
use hostlb_model::readiness::{containers_running, failure_of, pod_is_ready, pod_node, unschedulable_message};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::state::section::{key_of, Key};

/// What decisions read of a proxy pod, and all the index keeps of one. A whole k8s-openapi
/// `Pod` is about 5 KB in memory even with most fields unset (its `PodSpec` alone is 1.4 KB,
/// for the one field read here), and a controller with many Services on many nodes keeps
/// thousands of proxy pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPod {
    /// `namespace/name`, as messages name it.
    pub key: String,
    /// `namespace/name` of the Service it serves, from the labels hostlb gave it.
    pub service: Option<Key>,
    /// The UID of the Service it serves, from its labels.
    pub service_uid: Option<String>,
    /// The node it is bound to, if any yet.
    pub node: Option<String>,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    /// Ready, and not being deleted.
    pub ready: bool,
    /// Every container runs, and it is not being deleted.
    pub running: bool,
    /// What it does (`names::ANNOTATION_PROXY_SPEC_HASH`), and the last `rollout restart` it
    /// came after: a pod whose two differ from its DaemonSet's is replaced.
    pub spec_hash: Option<String>,
    pub restarted_at: Option<String>,
    /// The scheduler's message while it reports the pod Unschedulable.
    pub unschedulable: Option<String>,
    /// Why it failed or is stuck, when that is not normal start-up.
    pub failure: Option<String>,
}

impl ProxyPod {
    pub fn of(pod: &Pod) -> Self {
        ProxyPod {
            key: key_of(pod),
            service: owning_service_key(pod),
            service_uid: pod.labels().get(names::LABEL_SERVICE_UID).cloned(),
            node: pod_node(pod).map(str::to_string),
            created: pod.metadata.creation_timestamp.as_ref().map(|time| time.0),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            ready: pod_is_ready(pod),
            running: containers_running(pod),
            spec_hash: pod.annotations().get(names::ANNOTATION_PROXY_SPEC_HASH).cloned(),
            restarted_at: pod.annotations().get(names::ANNOTATION_RESTARTED_AT).cloned(),
            unschedulable: unschedulable_message(pod),
            failure: failure_of(pod),
        }
    }
}

/// `namespace/name` of the Service a proxy DaemonSet or Pod serves, read from the labels hostlb
/// set; `None` for objects hostlb did not make.
pub fn owning_service_key(object: &impl ResourceExt) -> Option<Key> {
    let labels = object.labels();
    if labels.get(names::LABEL_MANAGED_BY).map(String::as_str) != Some(names::MANAGED_BY) {
        return None;
    }
    let name = labels.get(names::LABEL_SERVICE_NAME)?;
    let namespace = labels.get(names::LABEL_SERVICE_NAMESPACE)?;
    Some(format!("{namespace}/{name}"))
}
