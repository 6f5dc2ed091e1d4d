//! The proxy pods data plane (the default): a Service is forwarded on a node by the pod its
//! proxy DaemonSet puts there, on the host ports of the DaemonSet's pod template. Which nodes
//! get one is read from that template (`eligibility`), how the pod does from the pod itself.

use hostlb_model::readiness::{failure_of, pod_is_ready, pod_node, start_up_of, unschedulable_message};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ContainerPort, Node, Pod, PodSpec};
use kube::ResourceExt;

use super::{serves, Forwarding, Holding, NodeState, Port, Standing, PORT_HELD};
use crate::eligibility::{admission, Refusal};

/// A Service's proxy DaemonSet, if the controller applied one, and the proxy pods of the hostlb
/// namespace: the Service's own and those of other Services.
pub(super) struct ProxyPods<'a> {
    daemonset: Option<&'a DaemonSet>,
    template: Option<&'a PodSpec>,
    claimed: Vec<Port>,
    own: Vec<&'a Pod>,
    others: Vec<&'a Pod>,
}

impl<'a> ProxyPods<'a> {
    pub(super) fn new(uid: &str, daemonset: Option<&'a DaemonSet>, pods: &'a [Pod]) -> Self {
        let template = daemonset.and_then(|ds| ds.spec.as_ref()).and_then(|s| s.template.spec.as_ref());
        let (own, others) = pods.iter().partition(|pod| serves(pod.labels(), uid));
        ProxyPods { daemonset, template, claimed: template.map(host_ports).unwrap_or_default(), own, others }
    }
}

impl Forwarding for ProxyPods<'_> {
    fn daemon_set(&self) -> Option<String> {
        self.daemonset.map(|ds| ds.name_any())
    }

    fn plan(&self) -> Option<String> {
        None
    }

    fn claimed(&self) -> &[Port] {
        &self.claimed
    }

    fn leaves_out(&self, node: &Node) -> Option<Standing> {
        let Some(template) = self.template else {
            return Some((NodeState::NoProxyPod, Some("the Service has no proxy DaemonSet".into())));
        };
        let refusal = admission(template, node).err()?;
        Some(match refusal {
            Refusal::MissingLabel(label) => (NodeState::NotEligible, Some(format!("node lacks label {label}"))),
            Refusal::ForbiddenLabel(label) => (NodeState::NotEligible, Some(format!("node has label {label}"))),
            Refusal::Taint(taint) => {
                (NodeState::NotEligible, Some(format!("proxy pods do not tolerate taint {taint}")))
            }
            Refusal::LeftOutByName => (NodeState::PortHeld, Some(PORT_HELD.into())),
        })
    }

    fn forwards_on(&self, node: &str, local: bool) -> Standing {
        // Of a pod being replaced, the new one tells what comes next.
        let pod = self
            .own
            .iter()
            .filter(|pod| pod_node(pod) == Some(node))
            .min_by_key(|pod| (pod.metadata.deletion_timestamp.is_some(), !pod_is_ready(pod)));
        match pod {
            None => (NodeState::NoProxyPod, Some("the DaemonSet has not created a proxy pod here".into())),
            Some(pod) if pod_is_ready(pod) => (NodeState::Serving, None),
            Some(pod) => pod_trouble(pod, local),
        }
    }

    /// The host ports of other Services' proxy pods on the node.
    fn held_on(&self, node: &str) -> Vec<Holding<'_>> {
        let on_node = self.others.iter().filter(|pod| pod_node(pod) == Some(node));
        on_node
            .map(|pod| Holding { holder: &pod.metadata, ports: pod.spec.as_ref().map(host_ports).unwrap_or_default() })
            .collect()
    }
}

/// The host ports (with protocol) a proxy pod claims.
fn host_ports(spec: &PodSpec) -> Vec<Port> {
    let ports = spec.containers.iter().flat_map(|c| c.ports.iter().flatten());
    ports
        .filter_map(|ContainerPort { host_port, protocol, .. }| {
            Some(((*host_port)?, protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect()
}

/// Why a proxy pod on an eligible node is not Ready.
fn pod_trouble(pod: &Pod, local: bool) -> Standing {
    if pod.metadata.deletion_timestamp.is_some() {
        (NodeState::Terminating, None)
    } else if let Some(failure) = failure_of(pod) {
        (NodeState::Failing, Some(failure))
    } else if let Some(message) = unschedulable_message(pod) {
        (NodeState::Unschedulable, Some(format!("Unschedulable: {message}")))
    } else if let Some(waiting) = start_up_of(pod) {
        (NodeState::Starting, Some(waiting))
    } else if local {
        (NodeState::NotReady, Some("not Ready: no ready endpoint of the Service on this node".into()))
    } else {
        (NodeState::NotReady, Some("not Ready".into()))
    }
}
