//! What a node's or a pod's own status says: whether the node can carry traffic, whether the
//! pod is Ready, and why it failed or is stuck.

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

pub fn pod_is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && condition_true(pod.status.as_ref().and_then(|s| s.conditions.as_ref()), "Ready")
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

/// Why the pod failed or is stuck, when that is not normal start-up.
pub fn failure_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.as_deref().unwrap_or("Failed");
        Some(format!("{reason}: {}", status.message.as_deref().unwrap_or("no message")))
    } else {
        let init = status.init_container_statuses.iter().flatten();
        init.chain(status.container_statuses.iter().flatten()).find_map(container_failure)
    }
}

/// Why the container is stuck, with its last exit, when it waits for something that does not pass by itself.
pub fn container_failure(container: &ContainerStatus) -> Option<String> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().filter(|reason| STUCK.contains(reason))?;
    let last_exit = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|exit| {
        let said = exit.message.as_deref().or(exit.reason.as_deref()).unwrap_or("no message");
        format!("; last exit {}: {}", exit.exit_code, said.trim())
    });
    let message = waiting.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    Some(format!("container {}: {reason}{message}{}", container.name, last_exit.unwrap_or_default()))
}
