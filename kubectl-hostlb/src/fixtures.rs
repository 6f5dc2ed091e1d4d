//! Synthetic objects for the tests: Services and nodes from the model's builders; proxy
//! DaemonSets, pods, the node agents' plans and reports, and Events written as the API server
//! would return them.

use hostlb_model::address::Address;
use hostlb_model::agent::{self, ForwardingPlan, NodeReport};
use hostlb_model::fixtures::{NodeBuilder, ServiceBuilder};
use hostlb_model::names;
use hostlb_model::service::ingress;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodSpec, Service};
use serde_json::{json, Value};

pub use hostlb_model::fixtures::UID;

fn object<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("a valid object")
}

/// `base` with the fields of `extra` added or replaced.
fn merged(mut base: Value, extra: Value) -> Value {
    if let (Some(base), Value::Object(extra)) = (base.as_object_mut(), extra) {
        base.extend(extra);
    }
    base
}

pub fn template(spec: Value) -> PodSpec {
    object(merged(json!({ "containers": [] }), spec))
}

/// A Ready node with exactly these labels and this spec.
pub fn node(name: &str, labels: Value, spec: Value) -> Node {
    let mut node = NodeBuilder::new(name).build();
    node.metadata.labels = object(labels);
    node.spec = object(spec);
    node
}

pub fn ready_node(name: &str) -> Node {
    NodeBuilder::new(name).build()
}

/// A LoadBalancer Service in namespace `shop` with these ports (`[port, "TCP"]`) that publishes
/// these addresses.
pub fn service(name: &str, uid: &str, ports: &[(i32, &str)], published: &[&str]) -> Service {
    let builder =
        ports.iter().fold(ServiceBuilder::new(name).uid(uid), |b, (port, protocol)| b.port(protocol, *port, 0));
    let published: Vec<Address> = published.iter().map(|ip| Address::Ip(ip.parse().expect("an IP"))).collect();
    builder.ingress(ingress(&published, None)).build()
}

fn service_labels(service: &str, uid: &str) -> Value {
    json!({
        names::LABEL_SERVICE_NAMESPACE: "shop",
        names::LABEL_SERVICE_NAME: service,
        names::LABEL_SERVICE_UID: uid,
    })
}

/// The proxy DaemonSet of a Service, claiming these host ports, with this pod template besides.
pub fn daemonset(service: &str, uid: &str, host_ports: &[(i32, &str)], template_spec: Value) -> DaemonSet {
    let spec = merged(json!({ "containers": [holding(host_ports)] }), template_spec);
    object(json!({
        "metadata": { "name": format!("hostlb-{service}"), "namespace": names::DEFAULT_NAMESPACE, "labels": service_labels(service, uid) },
        "spec": {
            "selector": { "matchLabels": service_labels(service, uid) },
            "template": { "metadata": { "labels": service_labels(service, uid) }, "spec": spec }
        }
    }))
}

/// A proxy pod of a Service on a node, claiming these host ports, with this status.
pub fn proxy_pod(service: &str, uid: &str, node: &str, host_ports: &[(i32, &str)], status: Value) -> Pod {
    object(json!({
        "metadata": {
            "name": format!("hostlb-{service}-{node}"),
            "namespace": names::DEFAULT_NAMESPACE,
            "labels": service_labels(service, uid)
        },
        "spec": { "nodeName": node, "containers": [holding(host_ports)] },
        "status": status
    }))
}

/// The proxy container, claiming these host ports.
fn holding(host_ports: &[(i32, &str)]) -> Value {
    let ports: Vec<Value> = host_ports
        .iter()
        .map(|(port, protocol)| json!({ "containerPort": port, "hostPort": port, "protocol": protocol }))
        .collect();
    json!({ "name": "hold", "ports": ports })
}

/// The node agents' plan of a Service (`hostlb-{service}-1234`), forwarding these ports
/// (`[port, "TCP"]`) on these nodes.
pub fn plan(service: &str, uid: &str, ports: &[(i32, &str)], nodes: &[&str]) -> ForwardingPlan {
    let mut labels = service_labels(service, uid);
    labels[names::LABEL_MANAGED_BY] = names::MANAGED_BY.into();
    labels[names::LABEL_COMPONENT] = agent::COMPONENT_PLAN.into();
    let ports: Vec<Value> = ports
        .iter()
        .map(|(port, protocol)| json!({ "protocol": protocol, "port": port, "targetPort": 8080 }))
        .collect();
    object(json!({
        "apiVersion": "hostlb.io/v1alpha1",
        "kind": "ForwardingPlan",
        "metadata": {
            "name": format!("hostlb-{service}-1234"),
            "namespace": names::DEFAULT_NAMESPACE,
            "labels": labels
        },
        "spec": {
            "service": { "namespace": "shop", "name": service, "uid": uid },
            "ports": ports,
            "trafficPolicy": "Cluster",
            "clusterIPs": ["10.96.0.10"],
            "nodes": nodes
        }
    }))
}

/// The report of the agent on `node`, named `hostlb-agent.{node}`, with this status (`null`:
/// the agent has not written it yet).
pub fn agent_report(node: &str, status: Value) -> NodeReport {
    let mut report = json!({
        "apiVersion": "hostlb.io/v1alpha1",
        "kind": "NodeReport",
        "metadata": {
            "name": agent::report_name(agent::AGENT, node),
            "namespace": names::DEFAULT_NAMESPACE,
            "labels": {
                names::LABEL_MANAGED_BY: names::MANAGED_BY,
                names::LABEL_COMPONENT: agent::COMPONENT_REPORT,
                agent::LABEL_NODE: node
            }
        },
        "spec": { "node": node }
    });
    if !status.is_null() {
        report["status"] = status;
    }
    object(report)
}

/// A report's status, written at `second`, of these Services (`[uid, forwarding, problem]`).
pub fn written(second: i64, services: &[(&str, bool, Option<&str>)]) -> Value {
    let time = k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid time").to_string();
    let entries: Vec<Value> = services
        .iter()
        .map(|(uid, forwarding, problem)| {
            let mut entry = json!({ "uid": uid, "service": "shop/web", "forwarding": forwarding });
            if let Some(problem) = problem {
                entry["problem"] = (*problem).into();
            }
            entry
        })
        .collect();
    json!({
        "writtenAt": time,
        "agentVersion": "0.1.0",
        "services": entries,
        "forwarding": services.iter().filter(|(_, forwarding, _)| *forwarding).count(),
        "problems": services.iter().filter(|(_, _, problem)| problem.is_some()).count()
    })
}

pub fn ready() -> Value {
    json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "True" }] })
}

/// A Warning about the Service of this UID, last seen at `second`.
pub fn warning(uid: &str, reason: &str, message: &str, second: i64) -> Event {
    let time = k8s_openapi::jiff::Timestamp::from_second(second).expect("a valid time").to_string();
    object(json!({
        "metadata": { "name": format!("{reason}-{second}"), "namespace": "shop" },
        "involvedObject": { "kind": "Service", "namespace": "shop", "uid": uid },
        "type": "Warning",
        "reason": reason,
        "message": message,
        "eventTime": time,
        "series": { "count": 3, "lastObservedTime": time }
    }))
}
