//! What the node agent programs and reports, from the controller's plans, the EndpointSlices
//! and the node's own addresses. Pure.
//!
//! The agent forwards to endpoint addresses, never to a ClusterIP: in the node's network
//! namespace a connection is NATed once per hook, so a DNAT to the ClusterIP at prerouting
//! would keep kube-proxy's own DNAT of it from ever applying, and the ClusterIP routes nowhere.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hostlb_contract::agent::{plan_lines, ServiceReport, PLAN_ARGS, PLAN_NODES};
use hostlb_contract::PlannedService;
use hostlb_lb::node_table::{NodeRules, ServiceRules};
use hostlb_lb::port_forwarding::PortForwarding;
use hostlb_model::names;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;

use crate::endpoints::{endpoint_forwards, EndpointSlice, SERVICE_NAME_LABEL};

/// A plan as the controller wrote it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    pub uid: String,
    /// `namespace/name` of the Service.
    pub service: String,
    pub args: Vec<String>,
    pub nodes: Vec<String>,
}

impl PlanEntry {
    /// `None` for a ConfigMap without the labels the controller gives plans.
    pub fn of(config_map: &ConfigMap) -> Option<PlanEntry> {
        let labels = config_map.labels();
        let uid = labels.get(names::LABEL_SERVICE_UID)?.clone();
        let service =
            format!("{}/{}", labels.get(names::LABEL_SERVICE_NAMESPACE)?, labels.get(names::LABEL_SERVICE_NAME)?);
        let lines =
            |key: &str| -> Vec<String> { plan_lines(config_map.data.as_ref(), key).map(str::to_string).collect() };
        Some(PlanEntry { uid, service, args: lines(PLAN_ARGS), nodes: lines(PLAN_NODES) })
    }
}

/// An EndpointSlice with the Service it belongs to (`namespace/name`).
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceSlice {
    pub service: String,
    pub slice: EndpointSlice,
}

impl ServiceSlice {
    pub fn of(namespace: &str, labels: &BTreeMap<String, String>, slice: EndpointSlice) -> Option<ServiceSlice> {
        Some(ServiceSlice { service: format!("{namespace}/{}", labels.get(SERVICE_NAME_LABEL)?), slice })
    }
}

/// Everything the agent on `node` does: the rules of every plan that names the node, and a
/// report entry for each, by Service UID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub rules: NodeRules,
    pub reports: BTreeMap<String, ServiceReport>,
}

pub fn desired<'a>(
    node: &str,
    addresses: Vec<IpAddr>,
    plans: impl IntoIterator<Item = &'a PlanEntry>,
    slices: impl IntoIterator<Item = &'a ServiceSlice>,
) -> Desired {
    let mut by_service: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        by_service.entry(&slice.service).or_default().push(&slice.slice);
    }
    let mut services = Vec::new();
    let mut reports = BTreeMap::new();
    for plan in plans.into_iter().filter(|plan| plan.nodes.iter().any(|n| n == node)) {
        let report = |forwarding: bool, problem: Option<String>| ServiceReport {
            service: plan.service.clone(),
            forwarding,
            problem,
        };
        let parsed = PlannedService::parse(&plan.args, node)
            .map_err(|error| error.to_string().lines().next().unwrap_or_default().to_string())
            .and_then(|parsed| {
                Ok((PortForwarding::new(&parsed.follow.rules).map_err(|e| e.to_string())?, parsed.follow))
            });
        let (port_forwarding, service_args) = match parsed {
            Ok(parsed) => parsed,
            Err(problem) => {
                reports.insert(plan.uid.clone(), report(false, Some(format!("its plan cannot be read: {problem}"))));
                continue;
            }
        };
        let local = port_forwarding.follows_endpoints;
        let service_slices = by_service.get(plan.service.as_str()).into_iter().flatten().copied();
        let forwards = endpoint_forwards(&service_args, service_slices, local.then_some(node));
        // Local: published only where an endpoint is ready, as kube-proxy's health check says.
        // Cluster: wherever the rules are, as a proxy pod is Ready once its rules are in.
        let forwarding = !local || !forwards.is_empty();
        services.push(ServiceRules { forwarding: port_forwarding.with_endpoints(forwards), masquerade: !local });
        reports.insert(plan.uid.clone(), report(forwarding, None));
    }
    Desired { rules: NodeRules { addresses, services }, reports }
}

#[cfg(test)]
mod tests {
    use hostlb_contract::{Destination, FollowArgs, NamedPort, PortMap, Protocol, RuleArgs};
    use serde_json::json;

    use super::*;

    fn plan(uid: &str, service: &str, to: Destination, nodes: &[&str]) -> PlanEntry {
        let (namespace, name) = service.split_once('/').unwrap();
        let service_args = FollowArgs {
            namespace: namespace.into(),
            service: name.into(),
            node: String::new(),
            port_names: vec![NamedPort { protocol: Protocol::Tcp, listen: 80, name: "http".into() }],
            rules: RuleArgs {
                ports: vec![PortMap { protocol: Protocol::Tcp, listen: 80, target: 8080 }],
                to: vec![to],
                ..Default::default()
            },
        };
        PlanEntry {
            uid: uid.into(),
            service: service.into(),
            args: service_args.to_args(),
            nodes: nodes.iter().map(ToString::to_string).collect(),
        }
    }

    fn slice(service: &str, endpoints: serde_json::Value) -> ServiceSlice {
        let slice = serde_json::from_value(json!({
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": [{"name": "http", "port": 8080}]
        }))
        .unwrap();
        ServiceSlice { service: service.into(), slice }
    }

    fn backends(desired: &Desired, index: usize) -> Vec<String> {
        let forwards = desired.rules.services[index].forwarding.forwards.values().flatten();
        forwards.flat_map(|f| f.backends.iter().map(ToString::to_string)).collect()
    }

    #[test]
    fn cluster_plans_go_to_every_ready_endpoint_and_local_ones_to_the_nodes_own() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let plans = [
            plan("uid-a", "shop/web", cluster_ip, &["node-1", "node-2"]),
            plan("uid-b", "shop/local", Destination::NodeEndpoints, &["node-1", "node-2"]),
            plan("uid-c", "shop/elsewhere", cluster_ip, &["node-2"]),
        ];
        let endpoints = json!([
            {"addresses": ["10.1.1.5"], "nodeName": "node-1"},
            {"addresses": ["10.1.2.5"], "nodeName": "node-2"},
            {"addresses": ["10.1.2.6"], "nodeName": "node-2", "conditions": {"ready": false}}
        ]);
        let slices = [slice("shop/web", endpoints.clone()), slice("shop/local", endpoints)];
        let addresses = vec!["192.0.2.1".parse().unwrap()];
        let on_one = desired("node-1", addresses.clone(), &plans, &slices);
        assert_eq!(on_one.rules.addresses, addresses);
        assert_eq!(on_one.rules.services.len(), 2, "the plan of node-2 alone is not programmed");
        assert_eq!(backends(&on_one, 0), ["10.1.1.5:8080", "10.1.2.5:8080"]);
        assert!(on_one.rules.services[0].masquerade);
        assert_eq!(backends(&on_one, 1), ["10.1.1.5:8080"]);
        assert!(!on_one.rules.services[1].masquerade, "Local keeps the client's address");
        assert!(on_one.reports.values().all(|report| report.forwarding));
        assert_eq!(on_one.reports.keys().collect::<Vec<_>>(), ["uid-a", "uid-b"]);
    }

    #[test]
    fn local_without_an_endpoint_on_the_node_does_not_forward_and_a_bad_plan_is_a_problem() {
        let mut broken = plan("uid-x", "shop/broken", Destination::NodeEndpoints, &["node-1"]);
        broken.args.push("--port".into());
        broken.args.push("tcp:0:1".into());
        let plans = [plan("uid-b", "shop/local", Destination::NodeEndpoints, &["node-1"]), broken];
        let slices = [slice("shop/local", json!([{"addresses": ["10.1.2.5"], "nodeName": "node-2"}]))];
        let on_one = desired("node-1", Vec::new(), &plans, &slices);
        assert!(!on_one.reports["uid-b"].forwarding);
        assert_eq!(on_one.reports["uid-b"].problem, None, "no endpoint here is no fault");
        let problem = on_one.reports["uid-x"].problem.clone().unwrap_or_default();
        assert!(!on_one.reports["uid-x"].forwarding && problem.contains("--port"), "{problem}");
        assert_eq!(on_one.rules.services.len(), 1, "a plan that cannot be read is left out");
    }
}
