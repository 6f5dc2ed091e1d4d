//! What the node agent programs and reports, from the controller's plans, the EndpointSlices
//! and the node's own addresses. Pure.
//!
//! The agent forwards to endpoint addresses, never to a ClusterIP: in the node's network
//! namespace a connection is NATed once per hook, so a DNAT to the ClusterIP at prerouting
//! would keep kube-proxy's own DNAT of it from ever applying, and the ClusterIP routes nowhere.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostlb_contract::agent::{PlanSpec, ServiceReport};
use hostlb_contract::Protocol;
use hostlb_lb::node_table::{NodeRules, ServiceRules};
use hostlb_lb::port_forwarding::PortForwarding;
use hostlb_model::names;
use kube::api::DynamicObject;
use kube::ResourceExt;

use crate::endpoints::{endpoint_forwards, EndpointSlice, SERVICE_NAME_LABEL};

/// A plan as the controller wrote it: its spec, or why it cannot be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanEntry {
    pub uid: String,
    /// `namespace/name` of the Service.
    pub service: String,
    pub spec: Result<PlanSpec, String>,
}

impl PlanEntry {
    /// `None` for an object without the labels the controller gives plans.
    pub fn of(plan: &DynamicObject) -> Option<PlanEntry> {
        let labels = plan.labels();
        let uid = labels.get(names::LABEL_SERVICE_UID)?.clone();
        let service =
            format!("{}/{}", labels.get(names::LABEL_SERVICE_NAMESPACE)?, labels.get(names::LABEL_SERVICE_NAME)?);
        let spec = plan.data.get("spec").cloned().unwrap_or_default();
        let spec = serde_json::from_value(spec).map_err(|error| format!("spec: {error}"));
        Some(PlanEntry { uid, service, spec })
    }

    /// Whether the plan gives the Service to `node`; one that cannot be read may.
    fn names(&self, node: &str) -> bool {
        self.spec.as_ref().map_or(true, |spec| spec.nodes.iter().any(|n| n == node))
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

/// Everything the agent on `node` does: the rules of every plan that names the node, by Service
/// UID, and a report entry for each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    pub services: BTreeMap<String, ServiceRules>,
    pub reports: BTreeMap<String, ServiceReport>,
}

impl Desired {
    pub fn rules(&self, addresses: Vec<IpAddr>) -> NodeRules {
        NodeRules { addresses, services: self.services.values().cloned().collect() }
    }
}

/// What the agent on `node` programs, given what it programmed last (`programmed`, by Service
/// UID): a plan it cannot read keeps the rules last programmed from it, with a problem that says
/// so, so that a plan written by a newer or broken controller never empties the node's table.
/// Two plans never share a port on the node: the one programmed already keeps it (the
/// controller gives a port to one Service per node, so two only meet in a race), and of two new
/// ones, the first by UID; the other is not forwarded, and says which port is held. Nor does a
/// new plan take a port a process of the node holds (`held_on_node`): first served, first kept.
pub fn desired<'a>(
    node: &str,
    plans: impl IntoIterator<Item = &'a PlanEntry>,
    slices: impl IntoIterator<Item = &'a ServiceSlice>,
    programmed: &BTreeMap<String, ServiceRules>,
    held_on_node: &BTreeSet<(Protocol, u16)>,
) -> Desired {
    let mut by_service: BTreeMap<&str, Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in slices {
        by_service.entry(&slice.service).or_default().push(&slice.slice);
    }
    let mut desired = Desired::default();
    let mut plans: Vec<&PlanEntry> = plans.into_iter().filter(|plan| plan.names(node)).collect();
    plans.sort_by_key(|plan| (!programmed.contains_key(&plan.uid), plan.uid.as_str()));
    let mut held: BTreeMap<(Protocol, u16), &str> = BTreeMap::new();
    let mut claim = |uid: &'a str, rules: &ServiceRules| -> Result<(), String> {
        let ports: Vec<(Protocol, u16)> =
            rules.forwarding.ports.iter().map(|port| (port.protocol, port.listen)).collect();
        let in_use = (!programmed.contains_key(uid)).then(|| ports.iter().find(|port| held_on_node.contains(port)));
        if let Some((protocol, port)) = in_use.flatten() {
            return Err(format!(
                "port {}/{port} is in use on {node}: a process of the node listens on it; it is not forwarded here",
                protocol.api_name()
            ));
        }
        let taken = ports.iter().find(|port| held.get(port).is_some_and(|holder| *holder != uid));
        if let Some((protocol, port)) = taken {
            return Err(format!(
                "port {}/{port} is held on {node} by another Service's plan; it is not forwarded here",
                protocol.api_name()
            ));
        }
        held.extend(ports.into_iter().map(|port| (port, uid)));
        Ok(())
    };
    for plan in plans {
        let report = |forwarding: bool, problem: Option<String>| ServiceReport {
            service: plan.service.clone(),
            forwarding,
            problem,
        };
        let parsed = plan.spec.clone().and_then(|spec| {
            let follow = spec.follow_args(node)?;
            Ok((PortForwarding::new(&follow.rules).map_err(|e| e.to_string())?, follow))
        });
        let (port_forwarding, service_args) = match parsed {
            Ok(parsed) => parsed,
            Err(problem) => {
                let kept = programmed.get(&plan.uid);
                let problem = match kept {
                    Some(_) => format!("its plan cannot be read ({problem}); the rules last programmed from it stay"),
                    None => format!("its plan cannot be read ({problem})"),
                };
                let kept = kept.filter(|kept| claim(&plan.uid, kept).is_ok());
                if let Some(kept) = kept {
                    desired.services.insert(plan.uid.clone(), kept.clone());
                }
                desired.reports.insert(plan.uid.clone(), report(kept.is_some(), Some(problem)));
                continue;
            }
        };
        let local = port_forwarding.follows_endpoints;
        let service_slices = by_service.get(plan.service.as_str()).into_iter().flatten().copied();
        let forwards = endpoint_forwards(&service_args, service_slices, local.then_some(node));
        // Local: published only where an endpoint is ready, as kube-proxy's health check says.
        // Cluster: wherever the rules are, as a proxy pod is Ready once its rules are in.
        let forwarding = !local || !forwards.is_empty();
        let rules = ServiceRules { forwarding: port_forwarding.with_endpoints(forwards), masquerade: !local };
        if let Err(problem) = claim(&plan.uid, &rules) {
            desired.reports.insert(plan.uid.clone(), report(false, Some(problem)));
            continue;
        }
        desired.services.insert(plan.uid.clone(), rules);
        desired.reports.insert(plan.uid.clone(), report(forwarding, None));
    }
    desired
}

#[cfg(test)]
mod tests {
    use hostlb_contract::{Destination, FollowArgs, NamedPort, PortMap, Protocol, RuleArgs};
    use kube::api::ObjectMeta;
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
            spec: Ok(PlanSpec::new(&service_args, uid, nodes.iter().map(ToString::to_string).collect())),
        }
    }

    /// The plan with its one port listened on at `port` instead.
    fn listening_on(mut entry: PlanEntry, port: u16) -> PlanEntry {
        if let Ok(spec) = entry.spec.as_mut() {
            spec.ports[0].port = port;
        }
        entry
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
        let service = desired.services.values().nth(index).unwrap();
        let forwards = service.forwarding.forwards.values().flatten();
        forwards.flat_map(|f| f.backends.iter().map(ToString::to_string)).collect()
    }

    #[test]
    fn cluster_plans_go_to_every_ready_endpoint_and_local_ones_to_the_nodes_own() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let plans = [
            plan("uid-a", "shop/web", cluster_ip, &["node-1", "node-2"]),
            listening_on(plan("uid-b", "shop/local", Destination::NodeEndpoints, &["node-1", "node-2"]), 81),
            listening_on(plan("uid-c", "shop/elsewhere", cluster_ip, &["node-2"]), 82),
        ];
        let endpoints = json!([
            {"addresses": ["10.1.1.5"], "nodeName": "node-1"},
            {"addresses": ["10.1.2.5"], "nodeName": "node-2"},
            {"addresses": ["10.1.2.6"], "nodeName": "node-2", "conditions": {"ready": false}}
        ]);
        let slices = [slice("shop/web", endpoints.clone()), slice("shop/local", endpoints)];
        let addresses = vec!["192.0.2.1".parse().unwrap()];
        let on_one = desired("node-1", &plans, &slices, &BTreeMap::new(), &BTreeSet::new());
        let rules = on_one.rules(addresses.clone());
        assert_eq!(rules.addresses, addresses);
        assert_eq!(rules.services.len(), 2, "the plan of node-2 alone is not programmed");
        assert_eq!(backends(&on_one, 0), ["10.1.1.5:8080", "10.1.2.5:8080"]);
        assert!(rules.services[0].masquerade);
        assert_eq!(backends(&on_one, 1), ["10.1.1.5:8080"]);
        assert!(!rules.services[1].masquerade, "Local keeps the client's address");
        assert!(on_one.reports.values().all(|report| report.forwarding));
        assert_eq!(on_one.reports.keys().collect::<Vec<_>>(), ["uid-a", "uid-b"]);
    }

    #[test]
    fn local_without_an_endpoint_on_the_node_does_not_forward() {
        let plans = [plan("uid-b", "shop/local", Destination::NodeEndpoints, &["node-1"])];
        let slices = [slice("shop/local", json!([{"addresses": ["10.1.2.5"], "nodeName": "node-2"}]))];
        let on_one = desired("node-1", &plans, &slices, &BTreeMap::new(), &BTreeSet::new());
        assert!(!on_one.reports["uid-b"].forwarding);
        assert_eq!(on_one.reports["uid-b"].problem, None, "no endpoint here is no fault");
    }

    #[test]
    fn a_plan_that_cannot_be_read_keeps_the_rules_last_programmed_from_it() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let good = plan("uid-x", "shop/web", cluster_ip, &["node-1"]);
        let slices = [slice("shop/web", json!([{"addresses": ["10.1.1.5"], "nodeName": "node-1"}]))];
        let before = desired("node-1", [&good], &slices, &BTreeMap::new(), &BTreeSet::new());

        let mut broken = good.clone();
        if let Ok(spec) = broken.spec.as_mut() {
            spec.ports[0].protocol = "QUIC".into();
        }
        let after = desired("node-1", [&broken], &slices, &before.services, &BTreeSet::new());
        assert_eq!(after.services, before.services, "the rules in place stay");
        let report = &after.reports["uid-x"];
        assert!(report.forwarding, "they still forward");
        let problem = report.problem.as_deref().unwrap_or_default();
        assert!(problem.contains("QUIC") && problem.ends_with("the rules last programmed from it stay"), "{problem}");

        let new = desired("node-1", [&broken], &slices, &BTreeMap::new(), &BTreeSet::new());
        assert!(new.services.is_empty() && !new.reports["uid-x"].forwarding, "nothing to keep: nothing forwards");
    }

    #[test]
    fn two_plans_never_share_a_port_the_one_programmed_keeps_it() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let older = plan("uid-b", "shop/web", cluster_ip, &["node-1"]);
        let newer = plan("uid-a", "other/web", cluster_ip, &["node-1"]);
        let slices = [];
        let first = desired("node-1", [&older], &slices, &BTreeMap::new(), &BTreeSet::new());
        let both = desired("node-1", [&newer, &older], &slices, &first.services, &BTreeSet::new());
        assert_eq!(both.services.keys().collect::<Vec<_>>(), ["uid-b"], "the one programmed keeps the port");
        assert!(both.reports["uid-b"].forwarding && both.reports["uid-b"].problem.is_none());
        let loser = &both.reports["uid-a"];
        assert!(!loser.forwarding);
        assert_eq!(
            loser.problem.as_deref(),
            Some("port TCP/80 is held on node-1 by another Service's plan; it is not forwarded here")
        );
        let fresh = desired("node-1", [&older, &newer], &slices, &BTreeMap::new(), &BTreeSet::new());
        assert_eq!(fresh.services.keys().collect::<Vec<_>>(), ["uid-a"], "of two new ones, the first by UID");
    }

    #[test]
    fn a_new_plan_takes_no_port_a_process_of_the_node_holds_and_one_programmed_keeps_its_own() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let web = plan("uid-x", "shop/web", cluster_ip, &["node-1"]);
        let slices = [];
        let listened = BTreeSet::from([(Protocol::Tcp, 80)]);
        let refused = desired("node-1", [&web], &slices, &BTreeMap::new(), &listened);
        assert!(refused.services.is_empty());
        assert_eq!(
            refused.reports["uid-x"].problem.as_deref(),
            Some("port TCP/80 is in use on node-1: a process of the node listens on it; it is not forwarded here")
        );
        let programmed = desired("node-1", [&web], &slices, &BTreeMap::new(), &BTreeSet::new());
        let kept = desired("node-1", [&web], &slices, &programmed.services, &listened);
        assert_eq!(kept.services, programmed.services, "a process that binds the port later takes nothing");
    }

    #[test]
    fn a_plan_is_read_from_its_object_whatever_fields_it_carries_beyond_those_known() {
        let cluster_ip = Destination::Address("10.96.0.10".parse().unwrap());
        let Ok(spec) = plan("uid-x", "shop/web", cluster_ip, &["node-1"]).spec else { unreachable!() };
        let mut written = serde_json::to_value(&spec).unwrap();
        written["fromANewerController"] = json!({"weights": [1, 2]});
        let labels = [
            (names::LABEL_SERVICE_UID, "uid-x"),
            (names::LABEL_SERVICE_NAMESPACE, "shop"),
            (names::LABEL_SERVICE_NAME, "web"),
        ];
        let object = DynamicObject {
            types: None,
            metadata: ObjectMeta {
                labels: Some(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()),
                ..Default::default()
            },
            data: json!({ "spec": written }),
        };
        let read = PlanEntry::of(&object).unwrap();
        assert_eq!((read.uid.as_str(), read.service.as_str()), ("uid-x", "shop/web"));
        assert_eq!(read.spec, Ok(spec));
    }
}
