//! The node agents data plane (`--dataplane agent`): a Service is forwarded by the agent of
//! each node its `ForwardingPlan` names, on the ports of the plan, and each agent says in the
//! status of its node's `NodeReport` whether it forwards the Service.

use hostlb_contract::agent::{ReportStatus, ServiceReport as AgentEntry};
use hostlb_model::agent::{ForwardingPlan, NodeReport as AgentReport};
use hostlb_model::names;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use super::{conflicts, serves, Forwarding, Holding, NodeState, Port, Standing, PORT_HELD};

/// The plan of the Service of this UID, if the controller wrote one.
pub(super) fn plan_of<'a>(uid: &str, plans: &'a [ForwardingPlan]) -> Option<&'a ForwardingPlan> {
    plans.iter().find(|plan| is_plan_of(plan, uid))
}

fn is_plan_of(plan: &ForwardingPlan, uid: &str) -> bool {
    plan.metadata.labels.as_ref().is_some_and(|labels| serves(labels, uid))
}

fn plan_names(plan: &ForwardingPlan, node: &str) -> bool {
    plan.spec.nodes.iter().any(|planned| planned == node)
}

/// The ports a plan forwards, with their protocol as the Service spells it.
fn plan_ports(plan: &ForwardingPlan) -> Vec<Port> {
    plan.spec.ports.iter().map(|port| (i32::from(port.port), port.protocol.clone())).collect()
}

fn install_of(metadata: &ObjectMeta) -> Option<&String> {
    metadata.labels.as_ref()?.get(names::LABEL_INSTALL)
}

/// A Service's plan, the other Services' plans and the nodes' reports.
pub(super) struct NodeAgents<'a> {
    uid: &'a str,
    plan: &'a ForwardingPlan,
    claimed: Vec<Port>,
    other_plans: Vec<&'a ForwardingPlan>,
    reports: &'a [AgentReport],
}

impl<'a> NodeAgents<'a> {
    pub(super) fn new(
        uid: &'a str,
        plan: &'a ForwardingPlan,
        plans: &'a [ForwardingPlan],
        reports: &'a [AgentReport],
    ) -> Self {
        NodeAgents {
            uid,
            plan,
            claimed: plan_ports(plan),
            other_plans: plans.iter().filter(|other| !is_plan_of(other, uid)).collect(),
            reports,
        }
    }

    /// The report of the node's agent, as far as the agent has written it: the report of the
    /// plan's install where several installs have agents on the node.
    fn written_on(&self, node: &str) -> Option<&'a ReportStatus> {
        let on_node = || self.reports.iter().filter(move |report| report.spec.node == node);
        let install = install_of(&self.plan.metadata);
        let report = on_node().find(|report| install_of(&report.metadata) == install).or_else(|| on_node().next());
        report?.status.as_ref()
    }
}

impl Forwarding for NodeAgents<'_> {
    fn daemon_set(&self) -> Option<String> {
        None
    }

    fn plan(&self) -> Option<String> {
        Some(self.plan.metadata.name.clone().unwrap_or_default())
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

    /// A report its agent has not written yet says nothing of the Service.
    fn forwards_on(&self, node: &str, local: bool) -> Standing {
        let status = self.written_on(node);
        let entry = status.and_then(|status| status.services.iter().find(|entry| entry.uid == self.uid));
        match entry.map(|entry| &entry.report) {
            None => (NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet".into())),
            Some(entry) if entry.forwarding => (NodeState::Serving, None),
            Some(AgentEntry { problem: Some(problem), .. }) => (NodeState::Failing, Some(problem.clone())),
            Some(_) if local => {
                (NodeState::NotReady, Some("the node's agent forwards nothing: no ready endpoint on this node".into()))
            }
            Some(_) => (NodeState::NotReady, Some("the node's agent does not forward it".into())),
        }
    }

    fn reported_at(&self, node: &str) -> Option<Timestamp> {
        self.written_on(node)?.written_at.parse().ok()
    }

    /// The ports of other Services' plans that name the node.
    fn held_on(&self, node: &str) -> Vec<Holding<'_>> {
        let on_node = self.other_plans.iter().filter(|plan| plan_names(plan, node));
        on_node.map(|plan| Holding { holder: &plan.metadata, ports: plan_ports(plan) }).collect()
    }
}
