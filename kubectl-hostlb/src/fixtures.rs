//! Synthetic objects for the tests, written as the API server would return them.

use hostlb_model::names;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, PodSpec, Service};
use serde_json::{json, Value};

pub const UID: &str = "uid-web";

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

pub fn node(name: &str, labels: Value, spec: Value) -> Node {
    object(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
        "status": {
            "conditions": [{ "type": "Ready", "status": "True" }],
            "addresses": [{ "type": "InternalIP", "address": "10.0.0.1" }]
        }
    }))
}

pub fn ready_node(name: &str) -> Node {
    node(name, json!({ "kubernetes.io/os": "linux" }), json!({}))
}

/// A LoadBalancer Service in namespace `shop` with these ports (`[port, "TCP"]`) that publishes
/// these addresses.
pub fn service(name: &str, uid: &str, ports: &[(i32, &str)], published: &[&str]) -> Service {
    let ports: Vec<Value> =
        ports.iter().map(|(port, protocol)| json!({ "port": port, "protocol": protocol })).collect();
    let ingress: Vec<Value> = published.iter().map(|ip| json!({ "ip": ip })).collect();
    object(json!({
        "metadata": { "name": name, "namespace": "shop", "uid": uid },
        "spec": { "type": "LoadBalancer", "ports": ports },
        "status": { "loadBalancer": { "ingress": ingress } }
    }))
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
