//! What is kept of a node agent's report: for each Service it names, a `ProxyPod` of that node,
//! Ready when the node forwards the Service, so that every decision reads both data planes
//! alike. A `NodeReport` names its node in its spec, which only the controller writes; the
//! ConfigMap reports of releases before it (named `AGENT.NODE`) are read until their nodes'
//! agents are new.

use std::collections::BTreeMap;

use hostlb_contract::agent::ServiceReport;
use hostlb_model::agent::{NodeReport, COMPONENT_REPORT};
use hostlb_model::names;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::DynamicObject;
use kube::ResourceExt;

use crate::state::proxy_pod::ProxyPod;
use crate::state::section::key_of;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport {
    /// `namespace/name`.
    pub key: String,
    pub node: String,
    /// When the agent last wrote it (RFC 3339); `None` before it has, and for a ConfigMap
    /// report, which carries no time.
    pub written_at: Option<String>,
    /// By Service UID.
    pub services: BTreeMap<String, ProxyPod>,
}

impl AgentReport {
    /// A `NodeReport` of this install; `None` for an object that cannot be read as one.
    pub fn of(object: &DynamicObject) -> Option<AgentReport> {
        let value = serde_json::to_value(object).ok()?;
        let report: NodeReport = serde_json::from_value(value).ok()?;
        let status = report.status.unwrap_or_default();
        let written_at = Some(status.written_at.clone()).filter(|at| !at.is_empty());
        Some(AgentReport::new(key_of(object), report.spec.node, written_at, status.entries()))
    }

    /// The ConfigMap report of the agent DaemonSet `agent`, named `agent.NODE`, as releases
    /// before `NodeReport` wrote it: each Service's entry as JSON under its UID. `None` for any
    /// other ConfigMap.
    pub fn of_config_map(config_map: &ConfigMap, agent: &str) -> Option<AgentReport> {
        if config_map.labels().get(names::LABEL_COMPONENT).map(String::as_str) != Some(COMPONENT_REPORT) {
            return None;
        }
        let node = config_map.name_any().strip_prefix(&format!("{agent}."))?.to_string();
        let entries = config_map.data.iter().flatten().map(|(uid, text)| {
            let entry = serde_json::from_str(text).unwrap_or_else(|error| ServiceReport {
                service: String::new(),
                forwarding: false,
                problem: Some(format!("unreadable report entry: {error}")),
            });
            (uid.clone(), entry)
        });
        Some(AgentReport::new(key_of(config_map), node, None, entries.collect()))
    }

    fn new(
        key: String,
        node: String,
        written_at: Option<String>,
        entries: BTreeMap<String, ServiceReport>,
    ) -> AgentReport {
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
        AgentReport { key, node, written_at, services }
    }

    /// The report as it stands once its agent has not renewed it for `silent` (`40s`): nothing
    /// is known of what the node forwards, so it forwards nothing that the status can count on.
    pub fn expired(&self, silent: &str) -> AgentReport {
        let services = self.services.iter().map(|(uid, pod)| {
            let failure = format!(
                "the node agent on {} has not renewed its report for {silent}: what the node forwards is unknown \
                 until it does",
                self.node
            );
            (uid.clone(), ProxyPod { ready: false, failure: Some(failure), ..pod.clone() })
        });
        AgentReport { services: services.collect(), ..self.clone() }
    }
}

#[cfg(test)]
mod tests {
    use hostlb_contract::agent::ReportStatus;
    use hostlb_model::agent::report;
    use k8s_openapi::api::apps::v1::DaemonSet;
    use kube::api::ObjectMeta;

    use super::*;
    use crate::decide::dataplane::erased;

    fn entries() -> BTreeMap<String, ServiceReport> {
        BTreeMap::from([
            ("uid-1".to_string(), ServiceReport { service: "shop/web".into(), forwarding: true, problem: None }),
            (
                "uid-2".to_string(),
                ServiceReport { service: "shop/db".into(), forwarding: false, problem: Some("cannot".into()) },
            ),
        ])
    }

    fn agents() -> DaemonSet {
        let metadata = ObjectMeta {
            name: Some("hostlb-agent".into()),
            namespace: Some("hostlb-system".into()),
            ..Default::default()
        };
        DaemonSet { metadata, ..Default::default() }
    }

    #[test]
    fn each_entry_is_a_proxy_of_the_node_ready_when_it_forwards() {
        let mut written = report(&agents(), "abc", "node-1");
        let unwritten = AgentReport::of(&erased(&written)).unwrap();
        assert!(unwritten.services.is_empty() && unwritten.written_at.is_none());
        written.status = Some(ReportStatus::new(&entries(), "2026-12-08T00:00:00Z".into(), None));
        let read = AgentReport::of(&erased(&written)).unwrap();
        assert_eq!((read.node.as_str(), read.written_at.as_deref()), ("node-1", Some("2026-12-08T00:00:00Z")));
        let web = &read.services["uid-1"];
        assert!(web.ready && web.node.as_deref() == Some("node-1") && web.service.as_deref() == Some("shop/web"));
        assert_eq!(web.key, "hostlb-system/hostlb-agent.node-1");
        let db = &read.services["uid-2"];
        assert!(!db.ready && db.failure.as_deref() == Some("cannot"));

        let expired = read.expired("40s");
        assert!(expired.services.values().all(|pod| !pod.ready));
        let failure = expired.services["uid-1"].failure.clone().unwrap_or_default();
        assert!(failure.starts_with("the node agent on node-1 has not renewed its report for 40s"), "{failure}");
    }

    #[test]
    fn a_report_of_an_older_release_reads_as_one_of_its_node() {
        let labels = BTreeMap::from([(names::LABEL_COMPONENT.to_string(), COMPONENT_REPORT.to_string())]);
        let data = entries().iter().map(|(uid, entry)| (uid.clone(), serde_json::to_string(entry).unwrap())).collect();
        let mut config_map = ConfigMap {
            metadata: ObjectMeta {
                name: Some("hostlb-agent.node-1".into()),
                namespace: Some("hostlb-system".into()),
                labels: Some(labels),
                ..Default::default()
            },
            data: Some(data),
            ..Default::default()
        };
        let read = AgentReport::of_config_map(&config_map, "hostlb-agent").unwrap();
        assert_eq!((read.node.as_str(), read.written_at.as_deref()), ("node-1", None));
        assert!(read.services["uid-1"].ready && !read.services["uid-2"].ready);
        assert!(AgentReport::of_config_map(&config_map, "other-agent").is_none(), "another install's report");
        config_map.data.get_or_insert_default().insert("uid-3".into(), "{".into());
        let broken = &AgentReport::of_config_map(&config_map, "hostlb-agent").unwrap().services["uid-3"];
        assert!(!broken.ready && broken.failure.as_deref().is_some_and(|p| p.starts_with("unreadable")));
    }
}
