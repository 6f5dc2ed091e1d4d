//! The controller's settings for the pure-layer tests, beside the model's object builders.

pub use hostlb_model::fixtures::*;

use hostlb_model::names;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{DynamicObject, ObjectMeta};
use kube::runtime::watcher;

use crate::decide::claim;
use crate::state::index::kept_whole;
use crate::state::Index;

/// The pod as its DaemonSet's template makes it now: with the template's annotations.
pub fn made_from(mut pod: Pod, daemonset: &DaemonSet) -> Pod {
    let template = daemonset.spec.as_ref().and_then(|spec| spec.template.metadata.as_ref());
    pod.metadata.annotations = template.and_then(|metadata| metadata.annotations.clone());
    pod
}

/// The load balancer class of the fixture settings.
pub const CLASS: &str = "hostlb.io/hostlb";

pub fn settings() -> crate::decide::Settings {
    crate::decide::Settings {
        load_balancer_class: CLASS.into(),
        serve_unclassed: true,
        finalizer: names::FINALIZER.into(),
        addresses: hostlb_model::address::AddressPolicy {
            address_type: hostlb_model::address::AddressType::Auto,
            kinds: vec![hostlb_model::address::AddressKind::Ip],
            max_nodes: None,
            node_asked: Default::default(),
        },
        server_has_ip_mode: true,
        forwarding: crate::decide::dataplane::ForwardingSettings {
            namespace: "hostlb-system".into(),
            image: "example.org/hostlb/lb:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            forwarding_mode: crate::decide::dataplane::settings::ForwardingMode::InitContainer,
            default_priority_class: "hostlb-proxy".into(),
            controller_image: "localhost/hostlb/controller:test".into(),
            install_id: names::install_id(CLASS),
            dataplane: crate::decide::dataplane::DataPlaneKind::Pods,
            agent: hostlb_model::agent::agent_name(CLASS),
            log_env: Vec::new(),
            trust_node_labels: true,
        },
        ports: crate::decide::port_policy::PortPolicy {
            denied: crate::decide::port_policy::DEFAULT_DENIED_PORTS
                .split(',')
                .map(|range| crate::decide::port_policy::PortRange::parse(range).unwrap())
                .collect(),
            allowed: Vec::new(),
            node_ports: crate::decide::port_policy::PortRange::parse(
                crate::decide::port_policy::DEFAULT_NODE_PORT_RANGE,
            )
            .unwrap(),
        },
        tenants: crate::decide::tenancy::TenantPolicy::default(),
        limits: crate::decide::limits::ServiceLimits {
            ports: crate::decide::limits::DEFAULT_MAX_SERVICE_PORTS,
            source_ranges: crate::decide::limits::DEFAULT_MAX_SOURCE_RANGES,
        },
        instance: Some("test".into()),
        node_lease_grace: Some(std::time::Duration::from_secs(10)),
        withdrawal_pause_limit: std::time::Duration::from_secs(300),
        agent_report_expiry: std::time::Duration::from_secs(40),
    }
}

/// The DaemonSet controller's FailedCreate Event `name` about `daemonset`.
pub fn failed_create(name: &str, daemonset: &DaemonSet, message: &str) -> Event {
    serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "namespace": "hostlb-system" },
        "involvedObject": { "kind": "DaemonSet", "namespace": "hostlb-system", "name": daemonset.metadata.name },
        "reason": "FailedCreate", "message": message
    }))
    .expect("a FailedCreate Event")
}

/// A node agent's pod on `node`, of the fixtures' install, its container waiting for `waiting`.
pub fn agent_pod(node: &str, waiting: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": format!("hostlb-agent-{node}"),
            "namespace": "hostlb-system",
            "labels": {
                names::LABEL_MANAGED_BY: names::MANAGED_BY,
                names::LABEL_COMPONENT: hostlb_model::agent::COMPONENT_AGENT,
                names::LABEL_INSTALL: names::install_id(CLASS),
            },
        },
        "spec": { "nodeName": node, "containers": [{ "name": "agent" }] },
        "status": { "containerStatuses": [{
            "name": "agent", "ready": false, "restartCount": 0, "image": "", "imageID": "",
            "state": { "waiting": { "reason": waiting, "message": "cannot pull" } },
        }] },
    }))
    .expect("an agent pod")
}

/// Feeds whole lists to a fresh index, as the watches' first lists would.
pub fn index_of(services: &[Service], nodes: &[Node], pods: &[Pod], daemonsets: &[DaemonSet]) -> Index {
    fn listed<K: Clone>(objects: &[K]) -> Vec<watcher::Event<K>> {
        let mut events = vec![watcher::Event::Init];
        events.extend(objects.iter().cloned().map(watcher::Event::InitApply));
        events.push(watcher::Event::InitDone);
        events
    }
    let settings = settings();
    let mut index = Index::default();
    listed(services).iter().for_each(|e| drop(index.apply_service(e, |s| claim(s, &settings))));
    listed(nodes).iter().for_each(|e| drop(index.apply_node(e)));
    listed(pods).iter().for_each(|e| drop(index.apply_proxy_pod(e, k8s_openapi::jiff::Timestamp::now())));
    listed(pods).iter().for_each(|e| drop(index.apply_agent_pod(e, &settings.forwarding.install_id)));
    listed(daemonsets).iter().for_each(|e| drop(index.apply_daemonset(e)));
    listed::<DaemonSet>(&[]).iter().for_each(|e| drop(index.agents.apply(e, kept_whole)));
    listed::<Role>(&[]).iter().for_each(|e| drop(index.agent_role.apply(e, kept_whole)));
    listed::<RoleBinding>(&[]).iter().for_each(|e| drop(index.agent_binding.apply(e, kept_whole)));
    listed::<DynamicObject>(&[]).iter().for_each(|e| drop(index.apply_plan(e)));
    listed::<DynamicObject>(&[]).iter().for_each(|e| drop(index.apply_agent_report(e, std::time::Instant::now())));
    listed::<ConfigMap>(&[]).iter().for_each(|e| index.apply_legacy_plan(e));
    let agent = hostlb_model::agent::AGENT;
    listed::<ConfigMap>(&[]).iter().for_each(|e| drop(index.apply_legacy_agent_report(e, agent)));
    listed::<Event>(&[]).iter().for_each(|e| drop(index.apply_creation_failure(e)));
    listed::<Lease>(&[]).iter().for_each(|e| index.apply_node_lease(e, std::time::Instant::now()));
    index
}

/// The report of `node` as the agents of the default install write it, saying of each Service
/// (UID, `namespace/name`) whether the node forwards it.
pub fn written_report(node: &str, services: &[(&str, &str, bool)]) -> DynamicObject {
    use hostlb_contract::agent::{ReportStatus, ServiceReport};
    let agents = DaemonSet {
        metadata: ObjectMeta {
            name: Some(hostlb_model::agent::AGENT.into()),
            namespace: Some("hostlb-system".into()),
            uid: Some("agents-uid".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let mut report = hostlb_model::agent::report(&agents, &settings().forwarding.install_id, node);
    let entries = services.iter().map(|(uid, service, forwarding)| {
        (uid.to_string(), ServiceReport { service: service.to_string(), forwarding: *forwarding, problem: None })
    });
    report.status = Some(ReportStatus::new(&entries.collect(), k8s_openapi::jiff::Timestamp::now().to_string(), None));
    crate::decide::dataplane::erased(&report)
}
