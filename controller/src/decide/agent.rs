//! The node agent data plane (`--dataplane agent`): instead of a DaemonSet of proxy pods per
//! Service, a plan per Service (a ConfigMap naming its ports, destination, source ranges and
//! the nodes that may serve it) and one DaemonSet of agents that program every plan of their
//! node in the node's network namespace. The decisions are the same in both modes; only what
//! carries them out differs. Pure.

use std::collections::BTreeMap;

use hostlb_contract::agent as contract;
use hostlb_contract::{self as proxy, NAMESPACE_ENV, NODE_NAME_ENV};
use hostlb_model::agent::{AGENT_SERVICE_ACCOUNT, COMPONENT_AGENT, COMPONENT_PLAN};
use hostlb_model::names;
use hostlb_model::options::ServiceLb;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Container, PodSpec, PodTemplateSpec, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::decide::daemonset::{
    field_env, follow_args, net_admin, resources, service_labels, with_config_hash, ProxySettings,
};

/// The plan of a valid Service with ports to serve, for the agents on `nodes`.
pub fn desired_plan(lb: &ServiceLb, nodes: &[&str], settings: &ProxySettings) -> ConfigMap {
    let name = names::daemonset_name(&lb.name, &lb.uid);
    let mut labels = service_labels(lb, &name);
    labels.insert(names::LABEL_COMPONENT.into(), COMPONENT_PLAN.into());
    labels.insert(names::LABEL_INSTALL.into(), settings.install_id.clone());
    let lines = |values: Vec<String>| values.iter().map(|value| format!("{value}\n")).collect::<String>();
    let data = BTreeMap::from([
        (contract::PLAN_ARGS.to_string(), lines(follow_args(lb).to_args())),
        (contract::PLAN_NODES.to_string(), lines(nodes.iter().map(ToString::to_string).collect())),
    ]);
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels),
            ..Default::default()
        },
        data: Some(data),
        ..Default::default()
    }
}

/// Whether the plan must be written: it is missing, or its content or labels differ.
pub fn plan_needs_apply(existing: Option<&ConfigMap>, desired: &ConfigMap) -> bool {
    existing.is_none_or(|existing| existing.data != desired.data || existing.metadata.labels != desired.metadata.labels)
}

/// The agents' DaemonSet: one pod per node, in the node's network namespace, tolerating every
/// taint, since which Service a node serves is decided per plan (with the Service's own
/// tolerations) and not by where the agent runs.
pub fn desired_agent(settings: &ProxySettings) -> DaemonSet {
    let labels = BTreeMap::from([
        (names::LABEL_NAME.to_string(), names::APP_NAME.to_string()),
        (names::LABEL_COMPONENT.to_string(), COMPONENT_AGENT.to_string()),
        (names::LABEL_MANAGED_BY.to_string(), names::MANAGED_BY.to_string()),
        (names::LABEL_INSTALL.to_string(), settings.install_id.clone()),
    ]);
    let args = proxy::AgentArgs {
        namespace: String::new(),
        install: settings.install_id.clone(),
        daemonset: settings.agent.clone(),
        node: String::new(),
    };
    let agent = Container {
        name: "agent".into(),
        image: Some(settings.follower_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(args.command_line()),
        env: Some(vec![field_env(NODE_NAME_ENV, "spec.nodeName"), field_env(NAMESPACE_ENV, "metadata.namespace")]),
        // NET_ADMIN in the node's network namespace, for the pod's whole life: the trade of
        // this mode.
        security_context: Some(net_admin()),
        resources: Some(resources("10m", "32Mi", "256Mi")),
        ..Default::default()
    };
    let spec = PodSpec {
        containers: vec![agent],
        host_network: Some(true),
        dns_policy: Some("ClusterFirstWithHostNet".into()),
        service_account_name: Some(AGENT_SERVICE_ACCOUNT.into()),
        enable_service_links: Some(false),
        priority_class_name: Some(settings.default_priority_class.clone()),
        tolerations: Some(vec![Toleration { operator: Some("Exists".into()), ..Default::default() }]),
        termination_grace_period_seconds: Some(10),
        ..Default::default()
    };
    with_config_hash(DaemonSet {
        metadata: ObjectMeta {
            name: Some(settings.agent.clone()),
            namespace: Some(settings.namespace.clone()),
            labels: Some(labels.clone()),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(spec),
            },
            ..Default::default()
        }),
        status: None,
    })
}

#[cfg(test)]
mod tests {
    use hostlb_contract::{Destination, PlannedService};

    use super::*;
    use crate::fixtures::{settings, ServiceBuilder};

    #[test]
    fn a_plan_carries_what_a_proxy_pod_would_run_and_reads_back_on_each_node() {
        let service = ServiceBuilder::new("web").port("TCP", 80, 30080).build();
        let lb = ServiceLb::from_service(&service).unwrap();
        let plan = desired_plan(&lb, &["node-1", "node-2"], &settings().proxy);
        let data = plan.data.clone().unwrap();
        assert_eq!(data[contract::PLAN_NODES], "node-1\nnode-2\n");
        let args: Vec<String> = data[contract::PLAN_ARGS].lines().map(str::to_string).collect();
        let read = PlannedService::parse(&args, "node-2").unwrap().follow;
        assert_eq!((read.namespace.as_str(), read.service.as_str(), read.node.as_str()), ("shop", "web", "node-2"));
        assert_eq!(read.rules.ports, lb.ports);
        assert!(matches!(read.rules.to[..], [Destination::Address(_)]), "{:?}", read.rules.to);
        let labels = plan.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::LABEL_COMPONENT], COMPONENT_PLAN);
        assert_eq!(labels[names::LABEL_SERVICE_UID], lb.uid);

        assert!(!plan_needs_apply(Some(&plan), &plan));
        assert!(plan_needs_apply(None, &plan));
        let fewer_nodes = desired_plan(&lb, &["node-1"], &settings().proxy);
        assert!(plan_needs_apply(Some(&plan), &fewer_nodes));
    }

    #[test]
    fn the_agent_runs_on_every_node_in_its_network_namespace_with_net_admin_alone() {
        let agent = desired_agent(&settings().proxy);
        let spec = agent.spec.unwrap().template.spec.unwrap();
        assert_eq!(spec.host_network, Some(true));
        assert_eq!(spec.tolerations.unwrap()[0].operator.as_deref(), Some("Exists"));
        let container = &spec.containers[0];
        let capabilities = container.security_context.clone().unwrap().capabilities.unwrap();
        assert_eq!(
            (capabilities.add.unwrap(), capabilities.drop.unwrap()),
            (vec!["NET_ADMIN".into()], vec!["ALL".into()])
        );
        let command = container.command.clone().unwrap();
        assert_eq!(command[..2], ["/hostlb-controller", "node-agent"]);
    }
}
