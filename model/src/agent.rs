//! What the node agent data plane (`--dataplane agent`) shares between the controller and the
//! agents: the per-Service plan the controller writes, and the per-node report each agent
//! writes back. Both are ConfigMaps in hostlb's namespace: a plan per served Service, named as
//! its proxy DaemonSet would be; a report per node, named after the node, which says for each
//! Service whether the node forwards it.

use std::collections::BTreeMap;

use hostlb_proxy_spec::{flag, PortMap};
use k8s_openapi::api::core::v1::ConfigMap;
use serde::{Deserialize, Serialize};

use crate::names::{self, LABEL_COMPONENT, LABEL_INSTALL, LABEL_MANAGED_BY, MANAGED_BY};

pub const COMPONENT_PLAN: &str = "forwarding-plan";
pub const COMPONENT_AGENT: &str = "node-agent";
pub const COMPONENT_REPORT: &str = "node-agent-report";
/// The agents' DaemonSet, for the default class (`agent_name`).
pub const AGENT: &str = "hostlb-agent";
pub const AGENT_SERVICE_ACCOUNT: &str = "hostlb-agent";
/// The node a report speaks for.
pub const LABEL_NODE: &str = "hostlb.io/node";

/// A plan's keys: the follower's arguments of the Service (`FollowArgs::to_args`), one per
/// line, and the nodes that may serve it, one per line.
pub const PLAN_ARGS: &str = "args";
pub const PLAN_NODES: &str = "nodes";

/// The lines of a plan's key (`PLAN_ARGS`, `PLAN_NODES`), empty ones left out.
pub fn plan_lines<'a>(plan: &'a ConfigMap, key: &str) -> impl Iterator<Item = &'a str> {
    let text = plan.data.as_ref().and_then(|data| data.get(key)).map(String::as_str).unwrap_or_default();
    text.lines().filter(|line| !line.is_empty())
}

/// The ports (with protocol, as the API spells it) a plan has the agents listen on: its
/// `--port PROTO:LISTEN:TARGET` arguments, in their order.
pub fn plan_ports(plan: &ConfigMap) -> Vec<(i32, String)> {
    let args: Vec<&str> = plan_lines(plan, PLAN_ARGS).collect();
    args.windows(2)
        .filter(|pair| pair[0] == format!("--{}", flag::PORT))
        .filter_map(|pair| PortMap::parse(pair[1]).ok())
        .map(|port| (i32::from(port.listen), port.protocol.api_name().to_string()))
        .collect()
}

/// The nodes a plan names.
pub fn plan_nodes(plan: &ConfigMap) -> impl Iterator<Item = &str> {
    plan_lines(plan, PLAN_NODES)
}

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

/// What a node does for one Service, under the Service's UID in the report's data.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// `namespace/name`.
    pub service: String,
    /// Whether packets to the node's addresses on the Service's ports are forwarded.
    pub forwarding: bool,
    /// Why not, when that is a fault rather than a node without a ready endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// A report's data: each Service's entry as JSON under its UID.
pub fn report_data(reports: &BTreeMap<String, ServiceReport>) -> BTreeMap<String, String> {
    reports
        .iter()
        .map(|(uid, report)| (uid.clone(), serde_json::to_string(report).expect("a report always serialises")))
        .collect()
}

/// A report's entries; one that cannot be read counts as a fault of that Service on the node.
pub fn read_report(data: &BTreeMap<String, String>) -> BTreeMap<String, ServiceReport> {
    data.iter()
        .map(|(uid, text)| {
            let report = serde_json::from_str(text).unwrap_or_else(|error| ServiceReport {
                service: String::new(),
                forwarding: false,
                problem: Some(format!("unreadable report entry: {error}")),
            });
            (uid.clone(), report)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_reads_back_and_a_broken_entry_is_a_fault() {
        let reports = BTreeMap::from([
            ("uid-1".to_string(), ServiceReport { service: "shop/web".into(), forwarding: true, problem: None }),
            (
                "uid-2".to_string(),
                ServiceReport { service: "shop/db".into(), forwarding: false, problem: Some("bad --port".into()) },
            ),
        ]);
        let mut data = report_data(&reports);
        assert_eq!(data["uid-1"], r#"{"service":"shop/web","forwarding":true}"#);
        assert_eq!(read_report(&data), reports);
        data.insert("uid-3".into(), "{".into());
        let broken = &read_report(&data)["uid-3"];
        assert!(!broken.forwarding && broken.problem.as_deref().is_some_and(|p| p.starts_with("unreadable")));
    }

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
