//! The objects of the node agent data plane (`--dataplane agent`), by name and label: the
//! per-Service `ForwardingPlan` the controller writes and the per-node `NodeReport` whose
//! status each agent writes back, both custom resources in hostlb's namespace: a plan per
//! served Service, named as its proxy DaemonSet would be; a report per node, named after the
//! node. What they carry is `hostlb_contract::agent`'s. Releases before them carried both as
//! ConfigMaps with the same names and labels, which an upgrade removes once every agent is new.

use std::collections::BTreeMap;

use hostlb_contract::agent::{
    PlanSpec, ReportSpec, ReportStatus, API_VERSION, GROUP, PLAN_KIND, PLAN_PLURAL, REPORT_KIND, REPORT_PLURAL, VERSION,
};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube_core::ApiResource;
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

/// The agents' DaemonSet of the install serving `load_balancer_class`.
pub fn agent_name(load_balancer_class: &str) -> String {
    names::for_install(AGENT, load_balancer_class)
}

/// The report of the agent on `node`.
pub fn report_name(agent: &str, node: &str) -> String {
    format!("{agent}.{node}")
}

/// The Services' plans, which the controller writes and the agents read.
pub fn plan_resource() -> ApiResource {
    contract_resource(PLAN_KIND, PLAN_PLURAL)
}

/// The nodes' reports, whose status each node's agent writes.
pub fn report_resource() -> ApiResource {
    contract_resource(REPORT_KIND, REPORT_PLURAL)
}

fn contract_resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: API_VERSION.into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// A Service's plan.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingPlan {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: PlanSpec,
}

impl ForwardingPlan {
    pub fn new(metadata: ObjectMeta, spec: PlanSpec) -> ForwardingPlan {
        ForwardingPlan { api_version: API_VERSION.into(), kind: PLAN_KIND.into(), metadata, spec }
    }
}

/// A node's report: which node, as the controller made it, and what its agent last wrote.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    pub spec: ReportSpec,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ReportStatus>,
}

/// The report of `node`, as the controller makes it before the node's agent may fill its
/// status in: labelled as this install's report, and owned by the agents' DaemonSet, so that it
/// goes with it.
pub fn report(agents: &DaemonSet, install_id: &str, node: &str) -> NodeReport {
    let agent = agents.metadata.name.clone().unwrap_or_default();
    let mut labels = BTreeMap::from([
        (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
        (LABEL_COMPONENT.to_string(), COMPONENT_REPORT.to_string()),
        (LABEL_INSTALL.to_string(), install_id.to_string()),
    ]);
    // A node name longer than a label value allows is named by the report's name alone.
    if node.len() <= 63 {
        labels.insert(LABEL_NODE.into(), node.into());
    }
    let owner = OwnerReference {
        api_version: "apps/v1".into(),
        kind: "DaemonSet".into(),
        name: agent.clone(),
        uid: agents.metadata.uid.clone().unwrap_or_default(),
        ..Default::default()
    };
    NodeReport {
        api_version: API_VERSION.into(),
        kind: REPORT_KIND.into(),
        metadata: ObjectMeta {
            name: Some(report_name(&agent, node)),
            namespace: agents.metadata.namespace.clone(),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        spec: ReportSpec { node: node.to_string() },
        status: None,
    }
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

    #[test]
    fn a_report_is_selected_as_the_installs_named_after_its_node_and_owned_by_the_agents() {
        let agents = DaemonSet {
            metadata: ObjectMeta {
                name: Some(AGENT.into()),
                namespace: Some("hostlb-system".into()),
                uid: Some("ds-uid".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let report = report(&agents, "abc", "node-1");
        assert_eq!(report.spec.node, "node-1");
        assert_eq!((report.api_version.as_str(), report.kind.as_str()), ("hostlb.io/v1alpha1", "NodeReport"));
        assert_eq!(report.metadata.name.as_deref(), Some("hostlb-agent.node-1"));
        assert_eq!(report.metadata.namespace.as_deref(), Some("hostlb-system"));
        let labels = report.metadata.labels.unwrap();
        let selected = report_selector("abc").split(',').all(|term| {
            let (key, value) = term.split_once('=').unwrap();
            labels.get(key).map(String::as_str) == Some(value)
        });
        assert!(selected, "{labels:?}");
        assert_eq!(labels[LABEL_NODE], "node-1");
        let owner = &report.metadata.owner_references.unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()), ("DaemonSet", AGENT, "ds-uid"));
    }
}
