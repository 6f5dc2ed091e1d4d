//! The contract between the controller and the node agents (`--dataplane agent`), as the
//! custom resources of `hostlb.io/v1alpha1` carry it: a `ForwardingPlan` per served Service,
//! whose spec the controller writes and the agents only read, and a `NodeReport` per node,
//! whose spec (the node) the controller writes and whose status that node's agent fills in.
//! Readers ignore the fields they do not know, so that a newer writer may add some during an
//! upgrade; the objects' names and labels are `hostlb_model::agent`'s.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Destination, Family, FollowArgs, NamedPort, PortMap, Protocol, RuleArgs};

pub const GROUP: &str = "hostlb.io";
pub const VERSION: &str = "v1alpha1";
pub const API_VERSION: &str = "hostlb.io/v1alpha1";
pub const PLAN_KIND: &str = "ForwardingPlan";
pub const PLAN_PLURAL: &str = "forwardingplans";
pub const REPORT_KIND: &str = "NodeReport";
pub const REPORT_PLURAL: &str = "nodereports";

/// The Service a plan forwards.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedServiceRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

/// One forwarded port of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanPort {
    /// TCP, UDP or SCTP, as the Service spells it.
    pub protocol: String,
    /// The port listened on at the node's addresses.
    pub port: u16,
    /// The Service port behind it, on the ClusterIP.
    pub target_port: u16,
    /// The Service port's name, by which EndpointSlices name its endpoints' ports.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// Whether a plan's traffic goes to the endpoints of every node, or of the node alone (the
/// client's address kept), as `externalTrafficPolicy` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficPolicy {
    #[default]
    Cluster,
    Local,
}

/// What the agents of `nodes` forward for one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    pub service: PlannedServiceRef,
    pub ports: Vec<PlanPort>,
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
    /// The Service's ClusterIPs, whose families are those forwarded (with `Cluster`).
    #[serde(default, rename = "clusterIPs", skip_serializing_if = "Vec::is_empty")]
    pub cluster_ips: Vec<IpAddr>,
    /// The Service's IP families (IPv4, IPv6).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub families: Vec<String>,
    /// loadBalancerSourceRanges: only these sources may reach the ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    /// The nodes that may serve the Service.
    #[serde(default)]
    pub nodes: Vec<String>,
}

impl PlanSpec {
    /// The plan of the follower's arguments `follow` (its node left out), for `nodes`.
    pub fn new(follow: &FollowArgs, uid: &str, nodes: Vec<String>) -> PlanSpec {
        let rules = &follow.rules;
        let local = rules.to.contains(&Destination::NodeEndpoints);
        let port = |port: &PortMap| PlanPort {
            protocol: port.protocol.api_name().to_string(),
            port: port.listen,
            target_port: port.target,
            name: follow.port_name(port).to_string(),
        };
        let addresses = rules.to.iter().filter_map(|to| match to {
            Destination::Address(address) => Some(*address),
            Destination::NodeEndpoints => None,
        });
        PlanSpec {
            service: PlannedServiceRef {
                namespace: follow.namespace.clone(),
                name: follow.service.clone(),
                uid: uid.to_string(),
            },
            ports: rules.ports.iter().map(port).collect(),
            traffic_policy: if local { TrafficPolicy::Local } else { TrafficPolicy::Cluster },
            cluster_ips: addresses.collect(),
            families: rules.families.iter().map(|family| family.name().to_string()).collect(),
            source_ranges: rules.source_ranges.iter().map(ToString::to_string).collect(),
            nodes,
        }
    }

    /// The follower's arguments of the plan on `node`; the error names what cannot be read.
    pub fn follow_args(&self, node: &str) -> Result<FollowArgs, String> {
        let mut ports = Vec::new();
        let mut port_names = Vec::new();
        for (index, port) in self.ports.iter().enumerate() {
            let protocol = Protocol::from_api_name(&port.protocol)
                .ok_or_else(|| format!("spec.ports[{index}].protocol: {:?} is not TCP, UDP or SCTP", port.protocol))?;
            if port.port == 0 || port.target_port == 0 {
                return Err(format!("spec.ports[{index}]: a port must be 1 to 65535"));
            }
            ports.push(PortMap { protocol, listen: port.port, target: port.target_port });
            if !port.name.is_empty() {
                let named = format!("{}:{}:{}", protocol.arg_name(), port.port, port.name);
                port_names.push(NamedPort::parse(&named).map_err(|e| format!("spec.ports[{index}].name: {e}"))?);
            }
        }
        let families = self.families.iter().enumerate().map(|(index, family)| {
            Family::from_name(family).ok_or_else(|| format!("spec.families[{index}]: {family:?} is not IPv4 or IPv6"))
        });
        let source_ranges = self
            .source_ranges
            .iter()
            .enumerate()
            .map(|(index, range)| Cidr::parse(range).map_err(|e| format!("spec.sourceRanges[{index}]: {e}")));
        let to = match self.traffic_policy {
            TrafficPolicy::Local => vec![Destination::NodeEndpoints],
            TrafficPolicy::Cluster => self.cluster_ips.iter().copied().map(Destination::Address).collect(),
        };
        Ok(FollowArgs {
            namespace: self.service.namespace.clone(),
            service: self.service.name.clone(),
            node: node.to_string(),
            port_names,
            rules: RuleArgs {
                ports,
                to,
                families: families.collect::<Result<_, _>>()?,
                source_ranges: source_ranges.collect::<Result<_, _>>()?,
            },
        })
    }
}

/// What a node does for one Service.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceReport {
    /// `namespace/name`.
    pub service: String,
    /// Whether packets to the node's addresses on the Service's ports are forwarded.
    pub forwarding: bool,
    /// Why not, or what is wrong though it forwards, when that is a fault rather than a node
    /// without a ready endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

/// One Service's line in a report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportEntry {
    pub uid: String,
    #[serde(flatten)]
    pub report: ServiceReport,
}

/// The node's last kernel transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Transaction {
    /// RFC 3339.
    pub at: String,
    pub milliseconds: u64,
    /// The Services it programmed.
    pub services: usize,
    pub succeeded: bool,
}

/// What a node's agent writes of its node: every Service it was planned, and a summary for
/// `kubectl get nodereports`. `written_at` is renewed at least every heartbeat, so that the
/// controller can tell an agent that stopped from one with nothing new to say.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportStatus {
    /// RFC 3339, when the agent wrote this.
    #[serde(default)]
    pub written_at: String,
    /// The agent's release.
    #[serde(default)]
    pub agent_version: String,
    #[serde(default)]
    pub services: Vec<ReportEntry>,
    /// How many of them the node forwards, and how many have a problem.
    #[serde(default)]
    pub forwarding: usize,
    #[serde(default)]
    pub problems: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_transaction: Option<Transaction>,
}

impl ReportStatus {
    pub fn new(
        entries: &BTreeMap<String, ServiceReport>,
        written_at: String,
        last_transaction: Option<Transaction>,
    ) -> ReportStatus {
        let services: Vec<ReportEntry> =
            entries.iter().map(|(uid, report)| ReportEntry { uid: uid.clone(), report: report.clone() }).collect();
        ReportStatus {
            written_at,
            agent_version: crate::release::VERSION.to_string(),
            forwarding: services.iter().filter(|entry| entry.report.forwarding).count(),
            problems: services.iter().filter(|entry| entry.report.problem.is_some()).count(),
            services,
            last_transaction,
        }
    }

    /// Each Service's entry by UID.
    pub fn entries(&self) -> BTreeMap<String, ServiceReport> {
        self.services.iter().map(|entry| (entry.uid.clone(), entry.report.clone())).collect()
    }
}

/// The node a report speaks for, which only the controller writes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportSpec {
    pub node: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn follow(to: Destination) -> FollowArgs {
        FollowArgs {
            namespace: "shop".into(),
            service: "web".into(),
            node: String::new(),
            port_names: vec![NamedPort { protocol: Protocol::Tcp, listen: 80, name: "http".into() }],
            rules: RuleArgs {
                ports: vec![
                    PortMap { protocol: Protocol::Tcp, listen: 80, target: 8080 },
                    PortMap { protocol: Protocol::Udp, listen: 53, target: 5353 },
                ],
                to: vec![to],
                families: vec![Family::V4],
                source_ranges: vec![Cidr::parse("10.0.0.0/8").unwrap()],
            },
        }
    }

    #[test]
    fn a_plan_reads_back_as_the_followers_arguments_on_each_node() {
        for to in [Destination::Address("10.96.0.10".parse().unwrap()), Destination::NodeEndpoints] {
            let spec = PlanSpec::new(&follow(to), "uid-1", vec!["node-1".into(), "node-2".into()]);
            let read = spec.follow_args("node-2").unwrap();
            assert_eq!(read, FollowArgs { node: "node-2".into(), ..follow(to) });
            assert_eq!(spec.service.uid, "uid-1");
        }
    }

    #[test]
    fn fields_a_reader_does_not_know_are_ignored_and_bad_values_are_named() {
        let written = serde_json::json!({
            "service": {"namespace": "shop", "name": "web", "uid": "u"},
            "ports": [{"protocol": "TCP", "port": 80, "targetPort": 8080, "appProtocol": "h2c"}],
            "trafficPolicy": "Cluster",
            "clusterIPs": ["10.96.0.10"],
            "nodes": ["node-1"],
            "aFieldFromANewerController": {"anything": true}
        });
        let spec: PlanSpec = serde_json::from_value(written).unwrap();
        let read = spec.follow_args("node-1").unwrap();
        assert_eq!(read.rules.ports.len(), 1);
        assert_eq!(read.rules.to, [Destination::Address("10.96.0.10".parse().unwrap())]);

        let mut bad = spec.clone();
        bad.ports[0].protocol = "QUIC".into();
        assert_eq!(bad.follow_args("node-1").unwrap_err(), "spec.ports[0].protocol: \"QUIC\" is not TCP, UDP or SCTP");
        let mut bad = spec;
        bad.source_ranges = vec!["10.0.0.0/99".into()];
        assert!(bad.follow_args("node-1").unwrap_err().starts_with("spec.sourceRanges[0]: "));
    }

    #[test]
    fn a_report_counts_what_it_forwards_and_reads_back_by_uid() {
        let entries = BTreeMap::from([
            ("uid-1".to_string(), ServiceReport { service: "shop/web".into(), forwarding: true, problem: None }),
            (
                "uid-2".to_string(),
                ServiceReport { service: "shop/db".into(), forwarding: false, problem: Some("bad".into()) },
            ),
        ]);
        let status = ReportStatus::new(&entries, "2026-12-08T00:00:00Z".into(), None);
        assert_eq!((status.forwarding, status.problems), (1, 1));
        let json = serde_json::to_value(&status).unwrap();
        assert_eq!(json["services"][0], serde_json::json!({"uid": "uid-1", "service": "shop/web", "forwarding": true}));
        let read: ReportStatus = serde_json::from_value(json).unwrap();
        assert_eq!(read.entries(), entries);
    }
}
