//! The node agent data plane (`--dataplane agent`): instead of a DaemonSet of proxy pods per
//! Service, a plan per Service (a `ForwardingPlan` naming its ports, destination, source ranges
//! and the nodes that may serve it) and one DaemonSet of agents that program every plan of their
//! node in the node's network namespace and report back which Services the node forwards, in
//! the status of a `NodeReport` per node that the controller makes for them. Their Role, which
//! the controller keeps too, lets them read the plans and write those statuses and nothing
//! else. No scheduler reads a plan: the checks the API server and the scheduler make of a proxy
//! pod (its tolerations) are made here, and the agents' own pods say why a node does not
//! forward. An upgrade from the ConfigMap plans of older releases writes every plan anew before
//! the agents roll, and deletes the old ones once every node's new agent has reported.

use std::collections::{BTreeMap, BTreeSet};

use hostlb_contract::agent::{PlanSpec, GROUP, PLAN_PLURAL, REPORT_PLURAL};
use hostlb_contract::{self as proxy, NAMESPACE_ENV, NODE_NAME_ENV};
use hostlb_model::agent::{
    self as objects, plan_resource, report_resource, ForwardingPlan, AGENT_SERVICE_ACCOUNT, COMPONENT_AGENT,
    COMPONENT_PLAN,
};
use hostlb_model::names;
use hostlb_model::options::{FieldError, ServiceLb};
use hostlb_model::reason::{Reason, Warning};
use hostlb_model::service::ServiceView;
use hostlb_model::taints::{invalid_tolerations, repelling_taint};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerPort, HTTPGetAction, Node, PodSpec, PodTemplateSpec, Probe, Toleration,
};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::core::ApiResource;
use kube::ResourceExt;

use super::proxy_daemonset::{
    config_hash_of, field_env, follow_args, log_env, net_admin, resources, service_labels, tolerations,
    with_config_hash,
};
use super::{
    apply, typed, DataPlane, Forwarded, Forwarding, ForwardingKind, ForwardingObject, ForwardingSettings, SharedChange,
    SharedObject,
};
use crate::decide::proxy_health::{creation_failure, failing_pods, unschedulable, NODE_AGENT};
use crate::state::{Index, ProxyPod};

pub struct NodeAgents;

static PLAN: ForwardingKind = ForwardingKind {
    noun: "plan",
    resource: plan_resource,
    applied: Reason::PlanApplied,
    deleted: Reason::PlanDeleted,
    selector: objects::plan_selector,
    written_by_hostlb_alone: true,
};

impl DataPlane for NodeAgents {
    fn kind(&self) -> &'static ForwardingKind {
        &PLAN
    }

    /// A proxy DaemonSet's tolerations are checked by the API server; the agents only read them.
    fn refusals(&self, lb: &ServiceLb) -> Vec<FieldError> {
        invalid_tolerations(&lb.extra_tolerations).into_iter().collect()
    }

    /// The node agents forward every Service at the one class the admin gave them: a Service's
    /// own PriorityClass has nothing to apply to.
    fn unused_option(&self, service: &ServiceView) -> Option<Warning> {
        let lb = service.parsed.options.as_ref().ok()?;
        let class = lb.priority_class.as_deref()?;
        let message = format!(
            "metadata.annotations[{}]: PriorityClass {class:?} is not used: the node agents (--dataplane agent) \
             forward every Service at the class the admin gave them; it applies to proxy pods only",
            names::ANNOTATION_PRIORITY_CLASS
        );
        Some(Warning::new(Reason::OptionIgnored, message))
    }

    /// The plan: the nodes it may be served on are those the placement admits and whose taints
    /// the Service tolerates, as the scheduler would place its proxy pods.
    fn forward(&self, service: &Forwarded<'_>) -> Forwarding {
        let Forwarded { lb, placement, index, .. } = *service;
        let tolerations = tolerations(&lb.extra_tolerations);
        let mut nodes: Vec<&str> = index
            .nodes
            .values()
            .filter(|node| placement.admits(node) && repelling_taint(node, &tolerations).is_none())
            .filter_map(|node| node.metadata.name.as_deref())
            .collect();
        nodes.sort_unstable();
        let desired = desired_plan(lb, &nodes, service.settings);
        let existing: Option<ForwardingPlan> = service.existing.and_then(typed);
        let apply = plan_needs_apply(existing.as_ref(), &desired).then(|| apply(&PLAN, &desired, service.existing, lb));
        Forwarding { apply, replace_pod: None }
    }

    /// Each agent of those nodes that cannot be scheduled or fails, and the DaemonSet
    /// controller's reason when nodes have none.
    fn not_running(
        &self,
        _: Option<&ForwardingObject>,
        _: &[&ProxyPod],
        nodes: &[&Node],
        index: &Index,
    ) -> Vec<Warning> {
        let nodes: Vec<&str> = nodes.iter().filter_map(|node| node.metadata.name.as_deref()).collect();
        let agents: Vec<&ProxyPod> =
            nodes.iter().flat_map(|node| index.agent_pods.group(&node.to_string())).map(AsRef::as_ref).collect();
        let mut warnings = unschedulable(NODE_AGENT, &agents);
        warnings.extend(failing_pods(NODE_AGENT, &agents));
        let without_agent = nodes.iter().any(|node| index.agent_pods.group_is_empty(&node.to_string()));
        for daemonset in index.agents.values() {
            let failures = index.creation_failures.group(&daemonset.name_any()).map(AsRef::as_ref);
            warnings.extend(creation_failure(daemonset, without_agent, failures));
        }
        warnings
    }

    fn nodes_forwarding<'a>(&self, index: &'a Index, service_uid: &str) -> BTreeSet<&'a str> {
        index.nodes_forwarding_through_agents(service_uid)
    }

    fn indexed(&self, index: &Index, key: &str) -> Option<ForwardingObject> {
        index.plans.get(key).map(|plan| plan.as_ref().clone())
    }

    fn all_indexed(&self, index: &Index) -> Vec<ForwardingObject> {
        index.plans.values().map(|plan| plan.as_ref().clone()).collect()
    }

    /// The agents' Role and RoleBinding, then their DaemonSet, when missing or different, so
    /// that agents start with their permissions in place; then a report for each node that
    /// has none, owned by the DaemonSet once it is made, since agents may fill reports in but
    /// not create them. The report of a node that is gone goes once its agent has. After an
    /// upgrade from ConfigMap plans, the agents roll only once every Service has its plan anew
    /// (an agent programs what it lists), and the old plans and reports go once every node's
    /// new agent has reported.
    fn shared_changes(&self, settings: &ForwardingSettings, index: &Index) -> Vec<SharedChange> {
        let nodes: BTreeSet<&str> = index.nodes.values().filter_map(|node| node.metadata.name.as_deref()).collect();
        let role = desired_role(settings, &nodes);
        let binding = desired_binding(settings);
        let agents = desired_agent(settings);
        let mut changes = Vec::new();
        if index.agent_role.values().next().is_none_or(|current| current.rules != role.rules) {
            changes.push(SharedChange::Apply(SharedObject::of(&role)));
        }
        let bound =
            |current: &RoleBinding| current.role_ref == binding.role_ref && current.subjects == binding.subjects;
        if !index.agent_binding.values().next().is_some_and(|current| bound(current)) {
            changes.push(SharedChange::Apply(SharedObject::of(&binding)));
        }
        let current_agents = index.agents.values().next();
        let replanned = index.legacy_plans.entries().all(|(key, _)| index.plans.get(key).is_some());
        if replanned && current_agents.is_none_or(|current| config_hash_of(current) != config_hash_of(&agents)) {
            changes.push(SharedChange::Apply(SharedObject::of(&agents)));
        }
        let reported: BTreeSet<&str> = index.agent_reports.values().map(|report| report.node.as_str()).collect();
        if let Some(owner) = current_agents {
            let missing = nodes.difference(&reported);
            let made = missing.map(|node| objects::report(owner, &settings.install_id, node));
            changes.extend(made.map(|report| SharedChange::Create(SharedObject::dynamic(report_resource(), &report))));
        }
        let departed = index
            .agent_reports
            .values()
            .filter(|report| !nodes.contains(report.node.as_str()) && index.agent_pods.group_is_empty(&report.node));
        let departed = departed.map(|report| SharedObject::named(report_resource(), &report.key));
        changes.extend(departed.map(SharedChange::Delete));
        let legacy = legacy_objects(index);
        if !legacy.is_empty() {
            let written = index.agent_reports.values().filter(|report| report.written_at.is_some());
            let written: BTreeSet<&str> = written.map(|report| report.node.as_str()).collect();
            if nodes.is_subset(&written) {
                changes.extend(legacy.into_iter().map(SharedChange::Delete));
            }
        }
        changes
    }

    /// The agents' DaemonSet first, whose agents, seeing it gone, remove their nodes' rules, and
    /// whose reports go with it; then their permissions.
    fn uninstalled(&self, settings: &ForwardingSettings) -> Vec<SharedObject> {
        let role = desired_role(settings, &BTreeSet::new());
        vec![
            SharedObject::of(&desired_agent(settings)),
            SharedObject::of(&desired_binding(settings)),
            SharedObject::of(&role),
        ]
    }
}

/// The ConfigMap plans and reports of releases before `ForwardingPlan` and `NodeReport`.
pub fn legacy_objects(index: &Index) -> Vec<SharedObject> {
    let plans = index.legacy_plans.entries().map(|(key, _)| key);
    let config_maps = plans.chain(index.legacy_agent_reports.entries().map(|(key, _)| key));
    config_maps.map(|key| SharedObject::named(ApiResource::erase::<ConfigMap>(&()), key)).collect()
}

/// The agents' Role. They read the plans, may write the status of each node's report and no
/// other object, and watch their own DaemonSet to tell an uninstall from a restart. RBAC cannot
/// hold an agent to its own node's report: any of them may write the status of any node's (see
/// docs/dataplanes.md), which the controller's checks and, from Kubernetes 1.30 on, the
/// admission policy bound.
pub fn desired_role(settings: &ForwardingSettings, nodes: &BTreeSet<&str>) -> Role {
    let rule = |group: &str, resource: &str, resource_names: Vec<String>, verbs: &[&str]| PolicyRule {
        api_groups: Some(vec![group.into()]),
        resources: Some(vec![resource.into()]),
        resource_names: Some(resource_names).filter(|resource_names| !resource_names.is_empty()),
        verbs: verbs.iter().map(ToString::to_string).collect(),
        non_resource_urls: None,
    };
    let mut rules = vec![rule(GROUP, PLAN_PLURAL, Vec::new(), &["get", "list", "watch"])];
    // A rule without names would grant every report: with no node, there is no such rule.
    if !nodes.is_empty() {
        let reports = nodes.iter().map(|node| objects::report_name(&settings.agent, node)).collect();
        rules.push(rule(GROUP, &format!("{REPORT_PLURAL}/status"), reports, &["patch"]));
    }
    rules.push(rule("apps", "daemonsets", vec![settings.agent.clone()], &["get", "list", "watch"]));
    Role { metadata: agents_metadata(settings), rules: Some(rules) }
}

/// Binds the agents' ServiceAccount to their Role.
pub fn desired_binding(settings: &ForwardingSettings) -> RoleBinding {
    RoleBinding {
        metadata: agents_metadata(settings),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: settings.agent.clone(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: AGENT_SERVICE_ACCOUNT.into(),
            namespace: Some(settings.namespace.clone()),
            api_group: None,
        }]),
    }
}

/// The labels of the agents' objects and pods.
fn agents_labels(settings: &ForwardingSettings) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_NAME.to_string(), names::APP_NAME.to_string()),
        (names::LABEL_COMPONENT.to_string(), COMPONENT_AGENT.to_string()),
        (names::LABEL_MANAGED_BY.to_string(), names::MANAGED_BY.to_string()),
        (names::LABEL_INSTALL.to_string(), settings.install_id.clone()),
    ])
}

/// The agents' DaemonSet, Role and RoleBinding are named alike.
fn agents_metadata(settings: &ForwardingSettings) -> ObjectMeta {
    ObjectMeta {
        name: Some(settings.agent.clone()),
        namespace: Some(settings.namespace.clone()),
        labels: Some(agents_labels(settings)),
        ..Default::default()
    }
}

/// The plan of a valid Service with ports to serve, for the agents on `nodes`.
pub fn desired_plan(lb: &ServiceLb, nodes: &[&str], settings: &ForwardingSettings) -> ForwardingPlan {
    let name = names::forwarding_name(&lb.name, &lb.uid);
    let mut labels = service_labels(lb, &name);
    labels.insert(names::LABEL_COMPONENT.into(), COMPONENT_PLAN.into());
    labels.insert(names::LABEL_INSTALL.into(), settings.install_id.clone());
    let metadata = ObjectMeta {
        name: Some(name),
        namespace: Some(settings.namespace.clone()),
        labels: Some(labels),
        ..Default::default()
    };
    ForwardingPlan::new(
        metadata,
        PlanSpec::new(&follow_args(lb), &lb.uid, nodes.iter().map(ToString::to_string).collect()),
    )
}

/// Whether the plan must be written: it is missing, or its spec or labels differ.
pub fn plan_needs_apply(existing: Option<&ForwardingPlan>, desired: &ForwardingPlan) -> bool {
    existing.is_none_or(|existing| existing.spec != desired.spec || existing.metadata.labels != desired.metadata.labels)
}

/// A probe of the agent's own HTTP port, every `period` seconds, failing after `failures`.
fn http_probe(path: &str, period: i32, failures: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("metrics".into()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Default::default()
    }
}

/// The agents' DaemonSet: one pod per node, in the node's network namespace, tolerating every
/// taint, since which Service a node serves is decided per plan (with the Service's own
/// tolerations) and not by where the agent runs.
pub fn desired_agent(settings: &ForwardingSettings) -> DaemonSet {
    let labels = agents_labels(settings);
    let args = proxy::AgentArgs {
        namespace: String::new(),
        install: settings.install_id.clone(),
        daemonset: settings.agent.clone(),
        node: String::new(),
        http_port: proxy::AGENT_HTTP_PORT,
    };
    let agent = Container {
        name: "agent".into(),
        image: Some(settings.controller_image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(args.command_line()),
        env: Some(
            [field_env(NODE_NAME_ENV, "spec.nodeName"), field_env(NAMESPACE_ENV, "metadata.namespace")]
                .into_iter()
                .chain(log_env(settings))
                .collect(),
        ),
        // Declared, so that the scheduler counts the node's port as taken, and a PodMonitor can
        // name it.
        ports: Some(vec![ContainerPort {
            name: Some("metrics".into()),
            container_port: i32::from(args.http_port),
            host_port: Some(i32::from(args.http_port)),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // Ready once its table matches the plans; restarted when its loop has not turned for a
        // minute (a wedged agent keeps its rules, but its report goes stale before that).
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/livez", 10, 6)),
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
        metadata: agents_metadata(settings),
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
    use hostlb_contract::agent::TrafficPolicy;
    use k8s_openapi::jiff::Timestamp;
    use kube::runtime::watcher::Event;

    use super::*;
    use crate::decide::dataplane::erased;
    use crate::fixtures::{agent_pod, index_of, settings, written_report, NodeBuilder, ServiceBuilder};
    use crate::state::index::kept_whole;

    #[test]
    fn a_plan_carries_what_a_proxy_pod_would_run_and_reads_back_on_each_node() {
        let service = ServiceBuilder::new("web").port("TCP", 80, 30080).build();
        let lb = ServiceLb::from_service(&service).unwrap();
        let plan = desired_plan(&lb, &["node-1", "node-2"], &settings().forwarding);
        assert_eq!(plan.spec.nodes, ["node-1", "node-2"]);
        assert_eq!(plan.spec.traffic_policy, TrafficPolicy::Cluster);
        let read = plan.spec.follow_args("node-2").unwrap();
        assert_eq!((read.namespace.as_str(), read.service.as_str(), read.node.as_str()), ("shop", "web", "node-2"));
        assert_eq!(read.rules.ports, lb.ports);
        assert_eq!(read, proxy::FollowArgs { node: "node-2".into(), ..follow_args(&lb) });
        let labels = plan.metadata.labels.clone().unwrap();
        assert_eq!(labels[names::LABEL_COMPONENT], COMPONENT_PLAN);
        assert_eq!(labels[names::LABEL_SERVICE_UID], lb.uid);
        assert_eq!(erased(&plan).types.unwrap().kind, "ForwardingPlan");

        assert!(!plan_needs_apply(Some(&plan), &plan));
        assert!(plan_needs_apply(None, &plan));
        let fewer_nodes = desired_plan(&lb, &["node-1"], &settings().forwarding);
        assert!(plan_needs_apply(Some(&plan), &fewer_nodes));
    }

    #[test]
    fn the_agent_runs_on_every_node_in_its_network_namespace_with_net_admin_alone() {
        let agent = desired_agent(&settings().forwarding);
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

    fn described(changes: &[SharedChange]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_agents_may_patch_every_nodes_report_status_and_write_nothing_else() {
        let settings = settings().forwarding;
        let role = desired_role(&settings, &BTreeSet::from(["n1", "n2"]));
        let rules = role.rules.unwrap();
        let writes: Vec<&PolicyRule> = rules
            .iter()
            .filter(|rule| rule.verbs.iter().any(|verb| !["get", "list", "watch"].contains(&verb.as_str())))
            .collect();
        assert_eq!(writes.len(), 1, "{rules:?}");
        assert_eq!(writes[0].verbs, ["patch"]);
        assert_eq!(writes[0].api_groups.as_deref(), Some(&["hostlb.io".to_string()][..]));
        assert_eq!(writes[0].resources.as_deref(), Some(&["nodereports/status".to_string()][..]));
        assert_eq!(
            writes[0].resource_names.as_deref(),
            Some(&["hostlb-agent.n1".to_string(), "hostlb-agent.n2".to_string()][..])
        );
        let reads: Vec<(String, Option<Vec<String>>)> = rules
            .iter()
            .filter(|rule| !writes.contains(rule))
            .map(|rule| (rule.resources.clone().unwrap_or_default().join(","), rule.resource_names.clone()))
            .collect();
        assert_eq!(
            reads,
            [("forwardingplans".into(), None), ("daemonsets".into(), Some(vec!["hostlb-agent".to_string()]))],
            "no ConfigMap, no Secret: only the plans and the agents' own DaemonSet"
        );

        let without_nodes = desired_role(&settings, &BTreeSet::new()).rules.unwrap();
        assert!(
            without_nodes
                .iter()
                .all(|rule| rule.verbs.iter().all(|verb| ["get", "list", "watch"].contains(&verb.as_str()))),
            "a rule with no names would grant every report: {without_nodes:?}"
        );
        let binding = desired_binding(&settings);
        assert_eq!((binding.role_ref.kind.as_str(), binding.role_ref.name.as_str()), ("Role", "hostlb-agent"));
        let subject = &binding.subjects.unwrap()[0];
        assert_eq!((subject.name.as_str(), subject.namespace.as_deref()), ("hostlb-agent", Some("hostlb-system")));
    }

    #[test]
    fn permissions_come_before_the_agents_and_each_node_gets_a_report_once_they_run() {
        let settings = &settings().forwarding;
        let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
        let mut index = index_of(&[], &nodes, &[], &[]);
        assert_eq!(
            described(&NodeAgents.shared_changes(settings, &index)),
            [
                "apply Role hostlb-system/hostlb-agent",
                "apply RoleBinding hostlb-system/hostlb-agent",
                "apply DaemonSet hostlb-system/hostlb-agent"
            ]
        );

        let mut agents = desired_agent(settings);
        agents.metadata.uid = Some("agents-uid".into());
        index.agents.apply(&Event::Apply(agents.clone()), kept_whole);
        index.agent_role.apply(&Event::Apply(desired_role(settings, &BTreeSet::from(["n1", "n2"]))), kept_whole);
        index.agent_binding.apply(&Event::Apply(desired_binding(settings)), kept_whole);
        let report = |node: &str| erased(&objects::report(&agents, &settings.install_id, node));
        let now = std::time::Instant::now();
        index.apply_agent_report(&Event::Apply(report("n1")), now);
        let changes = NodeAgents.shared_changes(settings, &index);
        assert_eq!(described(&changes), ["create NodeReport hostlb-system/hostlb-agent.n2"]);
        let made = &changes[0].object().object;
        assert_eq!(made, &report("n2"), "with the node in its spec, owned by the agents");

        // A node joins: its agent may write its report once the Role names it.
        let n3 = NodeBuilder::new("n3").build();
        index.apply_node(&Event::Apply(n3.clone()));
        index.apply_agent_report(&Event::Apply(report("n2")), now);
        assert_eq!(
            described(&NodeAgents.shared_changes(settings, &index)),
            ["apply Role hostlb-system/hostlb-agent", "create NodeReport hostlb-system/hostlb-agent.n3"]
        );

        // Nodes leave: a report goes once the node's agent has gone too.
        index.agent_role.apply(&Event::Apply(desired_role(settings, &BTreeSet::from(["n1", "n2", "n3"]))), kept_whole);
        index.apply_agent_report(&Event::Apply(report("n3")), now);
        index.apply_node(&Event::Delete(n3));
        index.apply_node(&Event::Delete(nodes[0].clone()));
        index.apply_agent_pod(&Event::Apply(agent_pod("n3", "ContainerCreating")), &settings.install_id);
        assert_eq!(
            described(&NodeAgents.shared_changes(settings, &index)),
            ["apply Role hostlb-system/hostlb-agent", "delete NodeReport hostlb-system/hostlb-agent.n1"]
        );
    }

    #[test]
    fn an_upgrade_from_configmap_plans_rolls_the_agents_once_replanned_and_sweeps_once_every_agent_reported() {
        let settings = &settings().forwarding;
        let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
        let mut index = index_of(&[], &nodes, &[], &[]);
        let mut agents = desired_agent(settings);
        agents.metadata.uid = Some("agents-uid".into());
        // The older release's agents: same name, another template.
        let mut older_agents = agents.clone();
        older_agents.metadata.annotations = None;
        index.agents.apply(&Event::Apply(older_agents), kept_whole);
        index.agent_role.apply(&Event::Apply(desired_role(settings, &BTreeSet::from(["n1", "n2"]))), kept_whole);
        index.agent_binding.apply(&Event::Apply(desired_binding(settings)), kept_whole);
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let plan = desired_plan(&lb, &["n1", "n2"], settings);
        let older_plan = ConfigMap { metadata: plan.metadata.clone(), ..Default::default() };
        index.apply_legacy_plan(&Event::Apply(older_plan));
        let now = std::time::Instant::now();
        for node in ["n1", "n2"] {
            index.apply_agent_report(&Event::Apply(erased(&objects::report(&agents, &settings.install_id, node))), now);
        }
        let changes = described(&NodeAgents.shared_changes(settings, &index));
        assert!(changes.is_empty(), "the Service has no plan of the new kind yet: {changes:?}");

        index.apply_plan(&Event::Apply(erased(&plan)));
        let changes = described(&NodeAgents.shared_changes(settings, &index));
        assert_eq!(changes, ["apply DaemonSet hostlb-system/hostlb-agent"]);

        index.agents.apply(&Event::Apply(agents), kept_whole);
        index.apply_agent_report(&Event::Apply(written_report("n1", &[])), now);
        assert!(described(&NodeAgents.shared_changes(settings, &index)).is_empty(), "n2's agent is not new yet");
        index.apply_agent_report(&Event::Apply(written_report("n2", &[])), now);
        assert_eq!(
            described(&NodeAgents.shared_changes(settings, &index)),
            ["delete ConfigMap hostlb-system/hostlb-web-9178891c"]
        );
    }

    #[test]
    fn a_report_not_renewed_within_its_bound_forwards_nothing_unless_most_are_silent() {
        let nodes: Vec<Node> = ["n1", "n2", "n3"].map(|node| NodeBuilder::new(node).build()).into();
        let mut index = index_of(&[], &nodes, &[], &[]);
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").uid("uid-1").build()).unwrap();
        index.apply_plan(&Event::Apply(erased(&desired_plan(&lb, &["n1", "n2", "n3"], &settings().forwarding))));
        let start = std::time::Instant::now();
        let expiry = std::time::Duration::from_secs(40);
        for node in ["n1", "n2", "n3"] {
            index.apply_agent_report(&Event::Apply(written_report(node, &[("uid-1", "shop/web", true)])), start);
        }
        let later = start + std::time::Duration::from_secs(30);
        index.apply_agent_report(&Event::Apply(written_report("n1", &[("uid-1", "shop/web", true)])), later);
        index.apply_agent_report(&Event::Apply(written_report("n2", &[("uid-1", "shop/web", true)])), later);
        assert!(!index.judge_reports(later, expiry));

        let past_n3 = start + std::time::Duration::from_secs(45);
        assert!(index.judge_reports(past_n3, expiry));
        assert_eq!(NodeAgents.nodes_forwarding(&index, "uid-1"), BTreeSet::from(["n1", "n2"]));
        let n3 = index.proxy_pods_of("uid-1").find(|pod| pod.node.as_deref() == Some("n3")).unwrap();
        assert!(n3.failure.as_deref().is_some_and(|failure| failure.contains("has not renewed its report for 40s")));

        // A relist that brings the same report again renews nothing.
        let unchanged = index.agent_reports.get("hostlb-system/hostlb-agent.n3").unwrap().clone();
        let relisted = written_report("n3", &[("uid-1", "shop/web", true)]);
        let mut same = relisted.clone();
        same.data["status"]["writtenAt"] = unchanged.written_at.clone().unwrap().into();
        index.apply_agent_report(&Event::Apply(same), past_n3);
        assert!(!index.judge_reports(past_n3, expiry), "still expired");
        index.apply_agent_report(&Event::Apply(relisted), past_n3);
        assert_eq!(NodeAgents.nodes_forwarding(&index, "uid-1").len(), 2, "renewed, until the clock says so");
        assert!(index.judge_reports(past_n3, expiry), "a change, for the Services to be looked at again");
        assert_eq!(NodeAgents.nodes_forwarding(&index, "uid-1").len(), 3, "renewed");

        let all_silent = past_n3 + std::time::Duration::from_secs(60);
        assert!(!index.judge_reports(all_silent, expiry) || index.expired_report_nodes().is_empty());
        assert_eq!(NodeAgents.nodes_forwarding(&index, "uid-1").len(), 3, "every agent silent at once: none expired");
    }

    #[test]
    fn a_node_is_counted_only_where_the_plan_names_it_whatever_its_report_says() {
        let nodes: Vec<Node> = ["n1", "n2"].map(|node| NodeBuilder::new(node).build()).into();
        let mut index = index_of(&[], &nodes, &[], &[]);
        let now = std::time::Instant::now();
        for node in ["n1", "n2"] {
            index.apply_agent_report(&Event::Apply(written_report(node, &[("uid-1", "shop/web", true)])), now);
        }
        assert!(NodeAgents.nodes_forwarding(&index, "uid-1").is_empty(), "no plan, no node");
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").uid("uid-1").build()).unwrap();
        // n2 is left out, as a node whose taints the Service does not tolerate is.
        index.apply_plan(&Event::Apply(erased(&desired_plan(&lb, &["n1"], &settings().forwarding))));
        assert_eq!(NodeAgents.nodes_forwarding(&index, "uid-1"), BTreeSet::from(["n1"]));
    }

    #[test]
    fn a_plan_is_rewritten_only_over_the_version_read() {
        let nodes: Vec<Node> = ["n1", "n2"].map(|node| NodeBuilder::new(node).build()).into();
        let index = index_of(&[], &nodes, &[], &[]);
        let settings = settings().forwarding;
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let mut existing = erased(&desired_plan(&lb, &["n1"], &settings));
        existing.metadata.resource_version = Some("7".into());
        let placement = crate::decide::placement::Placement::for_service(&lb, false);
        let forwarded = |existing| Forwarded {
            lb: &lb,
            placement: &placement,
            existing,
            last_applied: None,
            index: &index,
            settings: &settings,
            now: Timestamp::now(),
        };
        let Some(change) = NodeAgents.forward(&forwarded(Some(&existing))).apply else { panic!("n2 joins the plan") };
        let super::super::ForwardingAction::Apply { object, created, .. } = change.action else { panic!("an apply") };
        assert_eq!((object.metadata.resource_version.as_deref(), created), (Some("7"), false));
        let Some(change) = NodeAgents.forward(&forwarded(None)).apply else { panic!("a new plan") };
        let super::super::ForwardingAction::Apply { object, created, .. } = change.action else { panic!("an apply") };
        assert_eq!((object.metadata.resource_version, created), (None, true));
    }

    #[test]
    fn an_uninstall_deletes_the_agents_before_their_permissions() {
        let described: Vec<String> = NodeAgents
            .uninstalled(&settings().forwarding)
            .iter()
            .map(|shared| format!("{} {}", shared.resource.kind, crate::state::key_of(&shared.object)))
            .collect();
        assert_eq!(
            described,
            [
                "DaemonSet hostlb-system/hostlb-agent",
                "RoleBinding hostlb-system/hostlb-agent",
                "Role hostlb-system/hostlb-agent"
            ]
        );
    }
}
