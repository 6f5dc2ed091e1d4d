//! What a node's or a pod's own status says: whether the node can carry traffic, whether the
//! pod is Ready, and why it is not: unschedulable, failed or stuck, or still starting.

use k8s_openapi::api::core::v1::{ContainerStatus, Node, Pod};

/// A node can carry traffic when it is Ready and not cordoned: cordoning is how users drain a
/// node before maintenance, and its address should leave the status first.
pub fn node_can_serve(node: &Node) -> bool {
    let schedulable = !node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
    schedulable && node_is_ready(node)
}

/// Whether the node's Ready condition is True.
pub fn node_is_ready(node: &Node) -> bool {
    condition_true(node.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
}

/// The node the pod is bound to, if any yet.
pub fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref())
}

/// The node a DaemonSet made the pod for, before the scheduler binds it: the DaemonSet
/// controller pins each pod to its node with a required affinity on the node's name.
pub fn daemon_pod_target_node(pod: &Pod) -> Option<&str> {
    let affinity = pod.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()?;
    let terms = &affinity.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    let fields = terms.iter().flat_map(|term| term.match_fields.iter().flatten());
    let pinned = fields.filter(|field| field.key == "metadata.name" && field.operator == "In");
    pinned.filter_map(|field| field.values.as_ref()?.first()).map(String::as_str).next()
}

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && condition_true(pod.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
}

/// Whether every container of the pod runs: started, though not necessarily Ready (a proxy of
/// an `externalTrafficPolicy: Local` Service on a node without endpoints never is).
pub fn containers_running(pod: &Pod) -> bool {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    pod.metadata.deletion_timestamp.is_none()
        && statuses.is_some_and(|list| {
            !list.is_empty() && list.iter().all(|c| c.state.as_ref().is_some_and(|state| state.running.is_some()))
        })
}

fn condition_true<C: HasTypeAndStatus>(conditions: Option<&Vec<C>>, type_: &str) -> bool {
    conditions.is_some_and(|list| list.iter().any(|c| c.type_() == type_ && c.status() == "True"))
}

trait HasTypeAndStatus {
    fn type_(&self) -> &str;
    fn status(&self) -> &str;
}

impl HasTypeAndStatus for k8s_openapi::api::core::v1::NodeCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

impl HasTypeAndStatus for k8s_openapi::api::core::v1::PodCondition {
    fn type_(&self) -> &str {
        &self.type_
    }
    fn status(&self) -> &str {
        &self.status
    }
}

/// Waiting reasons that do not pass by themselves; ContainerCreating and PodInitializing do.
const STUCK: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// The scheduler's message while it reports the pod Unschedulable.
pub fn unschedulable_message(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref().and_then(|status| status.conditions.as_ref());
    let unschedulable = conditions
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))?;
    Some(unschedulable.message.clone().unwrap_or_else(|| "no reason given".into()))
}

/// Why the pod failed or is stuck, when that is not normal start-up.
pub fn failure_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.as_deref().unwrap_or("Failed");
        Some(format!("{reason}: {}", status.message.as_deref().unwrap_or("no message")))
    } else {
        containers(pod).find_map(container_failure)
    }
}

/// Which container the pod waits for in normal start-up, and why; `failure_of` says when the
/// wait will not end by itself.
pub fn start_up_of(pod: &Pod) -> Option<String> {
    containers(pod).find_map(|container| waiting(container).filter(|wait| !wait.stuck).map(|wait| wait.detail))
}

/// Why the container is stuck, with its last exit, when it waits for something that does not pass by itself.
pub fn container_failure(container: &ContainerStatus) -> Option<String> {
    waiting(container).filter(|wait| wait.stuck).map(|wait| wait.detail)
}

/// The init containers, then the others: the order in which they start.
fn containers(pod: &Pod) -> impl Iterator<Item = &ContainerStatus> {
    let status = pod.status.as_ref();
    let init = status.and_then(|s| s.init_container_statuses.as_ref()).into_iter().flatten();
    init.chain(status.and_then(|s| s.container_statuses.as_ref()).into_iter().flatten())
}

struct Waiting {
    stuck: bool,
    detail: String,
}

fn waiting(container: &ContainerStatus) -> Option<Waiting> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    let last_exit = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|exit| {
        let said = exit.message.as_deref().or(exit.reason.as_deref()).unwrap_or("no message");
        format!("; last exit {}: {}", exit.exit_code, said.trim())
    });
    // CrashLoopBackOff's message is the kubelet's wait before the next try ("back-off 40s
    // restarting failed container=..."), which grows at every try: a text that changed would
    // be told anew each time, and the last exit says more.
    let message = waiting.message.as_deref().filter(|_| reason != "CrashLoopBackOff");
    let message = message.map(|m| format!(" ({m})")).unwrap_or_default();
    Some(Waiting {
        stuck: STUCK.contains(&reason),
        detail: format!("container {}: {reason}{message}{}", container.name, last_exit.unwrap_or_default()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(status: serde_json::Value) -> Pod {
        serde_json::from_value(json!({ "status": status })).expect("a valid pod")
    }

    fn waiting_in(reason: &str) -> Pod {
        pod(json!({ "phase": "Pending",
            "initContainerStatuses": [{
                "name": "install-rules", "image": "lb", "imageID": "", "ready": false, "restartCount": 4,
                "state": { "waiting": { "reason": reason, "message": "back-off 40s" } },
                "lastState": { "terminated": { "exitCode": 3, "message": "nf_tables: not supported\n" } }
            }],
            "containerStatuses": [{
                "name": "proxy", "image": "lb", "imageID": "", "ready": false, "restartCount": 0,
                "state": { "waiting": { "reason": "PodInitializing" } }
            }]
        }))
    }

    #[test]
    fn a_stuck_container_is_a_failure_with_its_last_exit_and_a_starting_one_is_start_up() {
        let crashing = waiting_in("CrashLoopBackOff");
        let said = "container install-rules: CrashLoopBackOff; last exit 3: nf_tables: not supported";
        assert_eq!(failure_of(&crashing).as_deref(), Some(said));
        assert_eq!(start_up_of(&crashing).as_deref(), Some("container proxy: PodInitializing"));
        let creating = waiting_in("ContainerCreating");
        assert_eq!(failure_of(&creating), None);
        let said = "container install-rules: ContainerCreating (back-off 40s); last exit 3: nf_tables: not supported";
        assert_eq!(start_up_of(&creating).as_deref(), Some(said));
    }

    #[test]
    fn a_failed_pod_says_why_even_without_a_message() {
        assert_eq!(
            failure_of(&pod(json!({ "phase": "Failed", "reason": "Evicted" }))).as_deref(),
            Some("Evicted: no message")
        );
        assert_eq!(failure_of(&pod(json!({ "phase": "Running" }))), None);
    }

    #[test]
    fn only_the_scheduler_refusing_the_pod_is_unschedulable() {
        let scheduled = |reason: &str| {
            pod(json!({ "conditions": [{ "type": "PodScheduled", "status": "False", "reason": reason,
                "message": "0/2 nodes are available" }] }))
        };
        assert_eq!(unschedulable_message(&scheduled("Unschedulable")).as_deref(), Some("0/2 nodes are available"));
        assert_eq!(unschedulable_message(&scheduled("SchedulingGated")), None);
        let silent =
            pod(json!({ "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable" }] }));
        assert_eq!(unschedulable_message(&silent).as_deref(), Some("no reason given"));
    }
}
