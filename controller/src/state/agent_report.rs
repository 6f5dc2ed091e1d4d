//! What is kept of a node agent's report: for each Service it names, a `ProxyPod` of that node,
//! Ready when the node forwards the Service, so that every decision reads both data planes
//! alike.

use std::collections::BTreeMap;

use hostlb_contract::agent::read_report;
use hostlb_model::agent::COMPONENT_REPORT;
use hostlb_model::names;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::state::proxy_pod::ProxyPod;
use crate::state::section::key_of;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    pub node: String,
    /// By Service UID.
    pub services: BTreeMap<String, ProxyPod>,
}

impl AgentReport {
    /// The report of the agent DaemonSet `agent`, named `agent.NODE`; `None` for any other
    /// ConfigMap.
    pub fn of(config_map: &ConfigMap, agent: &str) -> Option<AgentReport> {
        if config_map.labels().get(names::LABEL_COMPONENT).map(String::as_str) != Some(COMPONENT_REPORT) {
            return None;
        }
        let node = config_map.name_any().strip_prefix(&format!("{agent}."))?.to_string();
        let key = key_of(config_map);
        let entries = read_report(config_map.data.as_ref().unwrap_or(&BTreeMap::new()));
        let services = entries
            .into_iter()
            .map(|(uid, entry)| {
                let pod = ProxyPod {
                    key: key.clone(),
                    service: Some(entry.service).filter(|service| !service.is_empty()),
                    service_uid: Some(uid.clone()),
                    node: Some(node.clone()),
                    ready: entry.forwarding,
                    running: true,
                    failure: entry.problem,
                    ..ProxyPod::default()
                };
                (uid, pod)
            })
            .collect();
        Some(AgentReport { node, services })
    }
}

#[cfg(test)]
mod tests {
    use hostlb_contract::agent::{report_data, ServiceReport};
    use kube::api::ObjectMeta;

    use super::*;

    #[test]
    fn each_entry_is_a_proxy_of_the_node_ready_when_it_forwards() {
        let entries = BTreeMap::from([
            ("uid-1".to_string(), ServiceReport { service: "shop/web".into(), forwarding: true, problem: None }),
            (
                "uid-2".to_string(),
                ServiceReport { service: "shop/db".into(), forwarding: false, problem: Some("cannot".into()) },
            ),
        ]);
        let labels = BTreeMap::from([(names::LABEL_COMPONENT.to_string(), COMPONENT_REPORT.to_string())]);
        let report = ConfigMap {
            metadata: ObjectMeta {
                name: Some("hostlb-agent.node-1".into()),
                namespace: Some("hostlb-system".into()),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some(report_data(&entries)),
            ..Default::default()
        };
        let read = AgentReport::of(&report, "hostlb-agent").unwrap();
        assert_eq!(read.node, "node-1");
        let web = &read.services["uid-1"];
        assert!(web.ready && web.node.as_deref() == Some("node-1") && web.service.as_deref() == Some("shop/web"));
        assert_eq!(web.key, "hostlb-system/hostlb-agent.node-1");
        let db = &read.services["uid-2"];
        assert!(!db.ready && db.failure.as_deref() == Some("cannot"));
        assert!(AgentReport::of(&report, "other-agent").is_none(), "another install's report");
    }
}
