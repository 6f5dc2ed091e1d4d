//! The objects of the node agent data plane (`--dataplane agent`), by name and label: the
//! per-Service plan the controller writes and the per-node report each agent writes back.
//! Both are ConfigMaps in hostlb's namespace: a plan per served Service, named as its proxy
//! DaemonSet would be; a report per node, named after the node. What they carry is
//! `hostlb_contract::agent`'s.

use crate::names::{self, LABEL_COMPONENT, LABEL_INSTALL, LABEL_MANAGED_BY, MANAGED_BY};

pub const COMPONENT_PLAN: &str = "forwarding-plan";
pub const COMPONENT_AGENT: &str = "node-agent";
pub const COMPONENT_REPORT: &str = "node-agent-report";
/// The agents' DaemonSet, for the default class (`agent_name`).
pub const AGENT: &str = "hostlb-agent";
pub const AGENT_SERVICE_ACCOUNT: &str = "hostlb-agent";
/// The node a report speaks for.
pub const LABEL_NODE: &str = "hostlb.io/node";

/// The agents' DaemonSet of the install serving `load_balancer_class`.
pub fn agent_name(load_balancer_class: &str) -> String {
    names::for_install(AGENT, load_balancer_class)
}

/// The report of the agent on `node`.
pub fn report_name(agent: &str, node: &str) -> String {
    format!("{agent}.{node}")
}

pub fn plan_selector(install_id: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_PLAN},{LABEL_INSTALL}={install_id}")
}

/// Label selector matching the pods that forward, of either data plane: proxy pods and node
/// agents.
pub fn forwarding_pod_selector() -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT} in ({},{COMPONENT_AGENT})", names::COMPONENT_PROXY)
}

pub fn report_selector(install_id: &str) -> String {
    format!("{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_COMPONENT}={COMPONENT_REPORT},{LABEL_INSTALL}={install_id}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_selectors_of_the_default_install() {
        assert_eq!(agent_name(names::DEFAULT_LOAD_BALANCER_CLASS), "hostlb-agent");
        assert_eq!(report_name("hostlb-agent", "node-1"), "hostlb-agent.node-1");
        assert_eq!(
            plan_selector("abc"),
            "app.kubernetes.io/managed-by=hostlb,app.kubernetes.io/component=forwarding-plan,hostlb.io/install=abc"
        );
        assert_eq!(
            forwarding_pod_selector(),
            "app.kubernetes.io/managed-by=hostlb,app.kubernetes.io/component in (lb-proxy,node-agent)"
        );
    }
}
