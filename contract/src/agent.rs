//! The contract between the controller and the node agents (`--dataplane agent`): the keys
//! of a Service's plan, which the controller writes and the agents read, and the entries of a
//! node's report, which its agent writes and the controller reads. Both travel as the string
//! data of a ConfigMap; the objects' names and labels are `hostlb_model::agent`'s.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{flag, PortMap};

/// A plan's keys: the follower's arguments of the Service (`FollowArgs::to_args`), one per
/// line, and the nodes that may serve it, one per line.
pub const PLAN_ARGS: &str = "args";
pub const PLAN_NODES: &str = "nodes";

/// A plan's data (or a report's).
pub type Data = BTreeMap<String, String>;

/// The lines of a plan's key (`PLAN_ARGS`, `PLAN_NODES`), empty ones left out.
pub fn plan_lines<'a>(plan: Option<&'a Data>, key: &str) -> impl Iterator<Item = &'a str> {
    let text = plan.and_then(|data| data.get(key)).map(String::as_str).unwrap_or_default();
    text.lines().filter(|line| !line.is_empty())
}

/// The ports (with protocol, as the API spells it) a plan has the agents listen on: its
/// `--port PROTO:LISTEN:TARGET` arguments, in their order.
pub fn plan_ports(plan: Option<&Data>) -> Vec<(i32, String)> {
    let args: Vec<&str> = plan_lines(plan, PLAN_ARGS).collect();
    args.windows(2)
        .filter(|pair| pair[0] == format!("--{}", flag::PORT))
        .filter_map(|pair| PortMap::parse(pair[1]).ok())
        .map(|port| (i32::from(port.listen), port.protocol.api_name().to_string()))
        .collect()
}

/// The nodes a plan names.
pub fn plan_nodes(plan: Option<&Data>) -> impl Iterator<Item = &str> {
    plan_lines(plan, PLAN_NODES)
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
pub fn report_data(reports: &BTreeMap<String, ServiceReport>) -> Data {
    reports
        .iter()
        .map(|(uid, report)| (uid.clone(), serde_json::to_string(report).expect("a report always serialises")))
        .collect()
}

/// A report's entries; one that cannot be read counts as a fault of that Service on the node.
pub fn read_report(data: &Data) -> BTreeMap<String, ServiceReport> {
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
    fn a_plan_names_its_ports_and_nodes_line_by_line() {
        let plan = Data::from([
            (PLAN_ARGS.into(), "--port\ntcp:80:8080\n--port\nudp:53:53\n--to\n10.0.0.1\n".into()),
            (PLAN_NODES.into(), "node-1\n\nnode-2\n".into()),
        ]);
        assert_eq!(plan_ports(Some(&plan)), [(80, "TCP".to_string()), (53, "UDP".to_string())]);
        assert_eq!(plan_nodes(Some(&plan)).collect::<Vec<_>>(), ["node-1", "node-2"]);
        assert_eq!(plan_nodes(None).count(), 0);
    }
}
