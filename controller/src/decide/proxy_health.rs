//! Why a Service's proxy pods are not created, not running or not ready, when that is not
//! normal start-up: read from the pods' own status and from the DaemonSet controller's
//! FailedCreate Events, so that a failure anywhere in the chain shows on the Service.

use hostlb_model::reason::{Reason, Warning};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Event;

use crate::state::{key_of, ProxyPod};

/// What forwards on a node: a Service's proxy pod, or the node agent.
pub const PROXY_POD: &str = "proxy pod";
pub const NODE_AGENT: &str = "node agent";

/// One Warning per pod (`what`: `PROXY_POD` or `NODE_AGENT`) that failed or is stuck, naming
/// the pod, its node and the reason.
pub fn failing_pods(what: &str, pods: &[&ProxyPod]) -> Vec<Warning> {
    let failing = pods.iter().filter(|pod| !pod.deleting);
    failing
        .filter_map(|pod| {
            let node = pod.node.as_deref().unwrap_or("no node yet");
            let message = format!("{what} {} on {node}: {}", pod.key, pod.failure.as_deref()?);
            Some(Warning::new(Reason::ProxyPodFailing, message))
        })
        .collect()
}

/// One Warning per pod (`what`, as for `failing_pods`) that the scheduler cannot place, with
/// the scheduler's message.
pub fn unschedulable(what: &str, pods: &[&ProxyPod]) -> Vec<Warning> {
    let message =
        |pod: &ProxyPod| Some(format!("{what} {} cannot be scheduled: {}", pod.key, pod.unschedulable.as_deref()?));
    pods.iter().filter_map(|pod| Some(Warning::new(Reason::ProxyPodUnschedulable, message(pod)?))).collect()
}

/// The DaemonSet controller's latest reason for not creating proxy pods, while some are
/// missing: fewer proxy pods exist than nodes they may run on (`fewer_pods_than_nodes`), or the
/// DaemonSet's status says so. A DaemonSet whose pods cannot be created at all may never get
/// a status, hence the count. Older Events about a problem since fixed are not reported.
pub fn creation_failure<'a>(
    daemonset: &DaemonSet,
    fewer_pods_than_nodes: bool,
    failures: impl Iterator<Item = &'a Event>,
) -> Option<Warning> {
    let status = daemonset.status.clone().unwrap_or_default();
    if !fewer_pods_than_nodes && status.current_number_scheduled >= status.desired_number_scheduled {
        return None;
    }
    let latest = failures.max_by_key(|event| event.last_timestamp.as_ref().map(|time| time.0))?;
    let message = latest.message.as_deref().unwrap_or("no message");
    // "Error creating: pods "NAME" is forbidden: WHY": the pod name changes with every try.
    let why = message.split_once(" is forbidden: ").map_or(message, |(_, why)| why);
    let message = format!("DaemonSet {} cannot create pods: {why}", key_of(daemonset));
    Some(Warning::new(Reason::ProxyPodsNotCreated, message))
}

#[cfg(test)]
#[path = "proxy_health_tests.rs"]
mod tests;
