//! The node agents data plane (`--dataplane agent`): a Service is forwarded by the agent of
//! each node its plan names, on the ports of the plan, and each agent says in its node's report
//! whether it forwards the Service.

use hostlb_contract::agent::{plan_nodes, plan_ports, read_report, ServiceReport as AgentEntry};
use hostlb_model::agent;
use hostlb_model::names;
use k8s_openapi::api::core::v1::{ConfigMap, Node};
use kube::ResourceExt;

use super::{conflicts, serves, Forwarding, Holding, NodeState, Port, Standing, PORT_HELD};

/// The plan of the Service of this UID, if the controller wrote one.
pub(super) fn plan_of<'a>(uid: &str, agent_objects: &'a [ConfigMap]) -> Option<&'a ConfigMap> {
    agent_objects.iter().find(|object| is_component(object, agent::COMPONENT_PLAN) && serves(object.labels(), uid))
}

fn is_component(object: &ConfigMap, component: &str) -> bool {
    object.labels().get(names::LABEL_COMPONENT).is_some_and(|label| label == component)
}

fn plan_names(plan: &ConfigMap, node: &str) -> bool {
    plan_nodes(plan.data.as_ref()).any(|planned| planned == node)
}

/// A Service's plan, the other Services' plans and the nodes' reports.
pub(super) struct NodeAgents<'a> {
    uid: &'a str,
    plan: &'a ConfigMap,
    claimed: Vec<Port>,
    other_plans: Vec<&'a ConfigMap>,
    reports: Vec<&'a ConfigMap>,
}

impl<'a> NodeAgents<'a> {
    pub(super) fn new(uid: &'a str, plan: &'a ConfigMap, agent_objects: &'a [ConfigMap]) -> Self {
        let plans = agent_objects.iter().filter(|object| is_component(object, agent::COMPONENT_PLAN));
        NodeAgents {
            uid,
            plan,
            claimed: plan_ports(plan.data.as_ref()),
            other_plans: plans.filter(|other| !serves(other.labels(), uid)).collect(),
            reports: agent_objects.iter().filter(|object| is_component(object, agent::COMPONENT_REPORT)).collect(),
        }
    }
}

impl Forwarding for NodeAgents<'_> {
    fn daemon_set(&self) -> Option<String> {
        None
    }

    fn plan(&self) -> Option<String> {
        Some(self.plan.name_any())
    }

    fn claimed(&self) -> &[Port] {
        &self.claimed
    }

    /// The controller leaves a node out of the plan for the Service's placement, a taint, or
    /// a port an older Service holds there; only the last shows in the objects read.
    fn leaves_out(&self, node: &Node) -> Option<Standing> {
        let name = node.name_any();
        if plan_names(self.plan, &name) {
            None
        } else if conflicts(self, &name).is_empty() {
            Some((NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint".into())))
        } else {
            Some((NodeState::PortHeld, Some(PORT_HELD.into())))
        }
    }

    fn forwards_on(&self, node: &str, local: bool) -> Standing {
        let report = self.reports.iter().find(|report| report.name_any().ends_with(&format!(".{node}")));
        let entry = report.and_then(|report| read_report(report.data.as_ref()?).remove(self.uid));
        match entry {
            None => (NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet".into())),
            Some(entry) if entry.forwarding => (NodeState::Serving, None),
            Some(AgentEntry { problem: Some(problem), .. }) => (NodeState::Failing, Some(problem)),
            Some(_) if local => {
                (NodeState::NotReady, Some("the node's agent forwards nothing: no ready endpoint on this node".into()))
            }
            Some(_) => (NodeState::NotReady, Some("the node's agent does not forward it".into())),
        }
    }

    /// The ports of other Services' plans that name the node.
    fn held_on(&self, node: &str) -> Vec<Holding<'_>> {
        let on_node = self.other_plans.iter().filter(|plan| plan_names(plan, node));
        on_node.map(|plan| Holding { holder: &plan.metadata, ports: plan_ports(plan.data.as_ref()) }).collect()
    }
}
