//! Builders of synthetic Services, Nodes and proxy Pods for the pure-layer tests of every crate.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStatus, LoadBalancerIngress, LoadBalancerStatus, Node, NodeAddress, NodeCondition,
    NodeSpec, NodeStatus, Pod, PodCondition, PodSpec, PodStatus, Service, ServicePort, ServiceSpec, ServiceStatus,
    Taint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::names;

pub const NAMESPACE: &str = "shop";
pub const UID: &str = "5b6c7d8e-0000-4000-8000-000000000001";

pub struct ServiceBuilder {
    service: Service,
    ports: Vec<ServicePort>,
}

impl ServiceBuilder {
    pub fn new(name: &str) -> Self {
        let service = Service {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(NAMESPACE.into()),
                uid: Some(UID.into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                type_: Some("LoadBalancer".into()),
                cluster_ip: Some("10.96.0.10".into()),
                cluster_ips: Some(vec!["10.96.0.10".into()]),
                ip_families: Some(vec!["IPv4".into()]),
                external_traffic_policy: Some("Cluster".into()),
                ..Default::default()
            }),
            status: None,
        };
        ServiceBuilder { service, ports: Vec::new() }
    }

    fn spec(&mut self) -> &mut ServiceSpec {
        self.service.spec.as_mut().expect("builder always has a spec")
    }

    pub fn uid(mut self, uid: &str) -> Self {
        self.service.metadata.uid = Some(uid.into());
        self
    }

    pub fn type_(mut self, type_: &str) -> Self {
        self.spec().type_ = Some(type_.into());
        self
    }

    pub fn class(mut self, class: &str) -> Self {
        self.spec().load_balancer_class = Some(class.into());
        self
    }

    pub fn port(mut self, protocol: &str, port: i32, node_port: i32) -> Self {
        self.ports.push(ServicePort {
            protocol: Some(protocol.into()),
            port,
            node_port: (node_port > 0).then_some(node_port),
            ..Default::default()
        });
        self
    }

    pub fn cluster_ips(mut self, addresses: &[&str]) -> Self {
        let spec = self.spec();
        spec.cluster_ip = Some(addresses[0].into());
        spec.cluster_ips = Some(addresses.iter().map(|a| a.to_string()).collect());
        spec.ip_families =
            Some(addresses.iter().map(|a| if a.contains(':') { "IPv6".into() } else { "IPv4".into() }).collect());
        self
    }

    pub fn local(mut self, health_check_node_port: i32) -> Self {
        let spec = self.spec();
        spec.external_traffic_policy = Some("Local".into());
        spec.health_check_node_port = Some(health_check_node_port);
        self
    }

    pub fn source_ranges(mut self, ranges: &[&str]) -> Self {
        self.spec().load_balancer_source_ranges = Some(ranges.iter().map(|r| r.to_string()).collect());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.service.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.service.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    /// The Service as if these entries were published (see `service::ingress`).
    pub fn ingress(mut self, ingress: Vec<LoadBalancerIngress>) -> Self {
        self.service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
            ..Default::default()
        });
        self
    }

    pub fn build(mut self) -> Service {
        if self.ports.is_empty() {
            self = self.port("TCP", 80, 30080);
        }
        let ports = std::mem::take(&mut self.ports);
        self.spec().ports = Some(ports);
        self.service
    }
}

pub struct NodeBuilder {
    node: Node,
}

impl NodeBuilder {
    pub fn new(name: &str) -> Self {
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some(BTreeMap::from([(names::NODE_LABEL_OS.to_string(), "linux".to_string())])),
                ..Default::default()
            },
            spec: Some(NodeSpec::default()),
            status: Some(NodeStatus {
                conditions: Some(vec![NodeCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    ..Default::default()
                }]),
                addresses: Some(Vec::new()),
                ..Default::default()
            }),
        };
        NodeBuilder { node }
    }

    pub fn address(mut self, type_: &str, address: &str) -> Self {
        let status = self.node.status.as_mut().expect("builder always has a status");
        status
            .addresses
            .get_or_insert_with(Vec::new)
            .push(NodeAddress { type_: type_.into(), address: address.into() });
        self
    }

    pub fn internal(self, address: &str) -> Self {
        self.address("InternalIP", address)
    }

    pub fn external(self, address: &str) -> Self {
        self.address("ExternalIP", address)
    }

    pub fn hostname(self, name: &str) -> Self {
        self.address("Hostname", name)
    }

    pub fn annotation(mut self, key: &str, value: &str) -> Self {
        self.node.metadata.annotations.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.node.metadata.labels.get_or_insert_with(BTreeMap::new).insert(key.into(), value.into());
        self
    }

    pub fn unschedulable(mut self) -> Self {
        self.node.spec.get_or_insert_with(NodeSpec::default).unschedulable = Some(true);
        self
    }

    pub fn taint(mut self, key: &str, effect: &str) -> Self {
        let taint = Taint { key: key.into(), effect: effect.into(), ..Default::default() };
        self.node.spec.get_or_insert_with(NodeSpec::default).taints.get_or_insert_with(Vec::new).push(taint);
        self
    }

    pub fn not_ready(mut self) -> Self {
        let status = self.node.status.as_mut().expect("builder always has a status");
        status.conditions =
            Some(vec![NodeCondition { type_: "Ready".into(), status: "Unknown".into(), ..Default::default() }]);
        self
    }

    pub fn build(self) -> Node {
        self.node
    }
}

/// A proxy pod of the fixture Service that is being deleted.
pub fn terminating_proxy_pod(name: &str, node: &str) -> Pod {
    let mut pod = proxy_pod(name, node, true);
    pod.metadata.deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    pod
}

/// A proxy pod of the fixture Service.
pub fn proxy_pod(name: &str, node: &str, ready: bool) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("hostlb-system".into()),
            labels: Some(BTreeMap::from([
                (names::LABEL_MANAGED_BY.to_string(), names::MANAGED_BY.to_string()),
                (names::LABEL_COMPONENT.to_string(), names::COMPONENT_PROXY.to_string()),
                (names::LABEL_SERVICE_NAMESPACE.to_string(), NAMESPACE.to_string()),
                (names::LABEL_SERVICE_NAME.to_string(), "web".to_string()),
                (names::LABEL_SERVICE_UID.to_string(), UID.to_string()),
            ])),
            ..Default::default()
        },
        spec: Some(PodSpec { node_name: Some(node.into()), ..Default::default() }),
        status: Some(PodStatus {
            phase: Some(if ready { "Running" } else { "Pending" }.into()),
            conditions: Some(vec![PodCondition {
                type_: "Ready".into(),
                status: if ready { "True" } else { "False" }.into(),
                ..Default::default()
            }]),
            container_statuses: ready.then(|| {
                vec![ContainerStatus {
                    name: "hold".into(),
                    ready: true,
                    state: Some(ContainerState { running: Some(Default::default()), ..Default::default() }),
                    ..Default::default()
                }]
            }),
            ..Default::default()
        }),
    }
}
