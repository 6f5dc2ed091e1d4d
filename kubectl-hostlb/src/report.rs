//! What `kubectl hostlb status` says about each LoadBalancer Service, computed from the objects
//! it fetched: no client, no clock.

use std::collections::BTreeMap;

use hostlb_contract::agent::{self as contract, read_report, ServiceReport as AgentEntry};
use hostlb_model::agent;
use hostlb_model::names;
use hostlb_model::readiness::{failure_of, node_can_serve, pod_is_ready, pod_node, start_up_of, unschedulable_message};
use hostlb_model::service::ServiceView;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, ContainerPort, Event, Node, Pod, PodSpec, Service};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Serialize, Serializer};

use crate::eligibility::{admission, Refusal};

/// How many of a Service's newest Warnings are shown.
pub const LATEST_WARNINGS: usize = 3;

/// The objects a report is made of: the Services asked about, every node, the proxy
/// DaemonSets and pods of the hostlb namespace, and the Warning Events about Services.
#[derive(Debug, Default)]
pub struct Observed {
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
    pub daemonsets: Vec<DaemonSet>,
    pub pods: Vec<Pod>,
    /// The node agents' plans and reports (`--dataplane agent`), of the hostlb namespace.
    pub agent_objects: Vec<ConfigMap>,
    pub warnings: Vec<Event>,
}

#[derive(Debug, PartialEq, Serialize)]
pub struct Report {
    pub services: Vec<ServiceReport>,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceReport {
    pub namespace: String,
    pub name: String,
    /// What `status.loadBalancer.ingress` publishes now.
    pub addresses: Vec<String>,
    pub ports: Vec<PortReport>,
    /// The proxy DaemonSet in the hostlb namespace, if the controller applied one.
    pub daemon_set: Option<String>,
    /// With the node agents: the Service's plan in the hostlb namespace.
    pub plan: Option<String>,
    pub nodes: Vec<NodeReport>,
    pub conflicts: Vec<Conflict>,
    /// The newest Warnings about the Service, newest first.
    pub warnings: Vec<WarningReport>,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortReport {
    pub port: i32,
    pub protocol: String,
    /// Whether the proxy pods claim it as a host port; a refused port is not claimed.
    pub claimed: bool,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    pub name: String,
    pub serving: bool,
    pub state: NodeState,
    /// Why the node does not serve, in the words of the object that says so.
    pub reason: Option<String>,
}

/// Where a node stands for one Service, from the most fundamental cause down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum NodeState {
    Serving,
    /// The Service's placement (pool, `enablelb`, exclusion label) or a taint keeps it off.
    NotEligible,
    /// An older Service holds one of the ports there.
    PortHeld,
    NodeNotReady,
    NodeCordoned,
    /// The DaemonSet has no pod there (yet, or it cannot create one).
    NoProxyPod,
    /// The scheduler cannot place the proxy pod there.
    Unschedulable,
    /// A container of the proxy pod is starting.
    Starting,
    /// The proxy pod failed, or a container waits for something that does not pass by itself.
    Failing,
    /// The proxy pod runs but is not Ready (with `externalTrafficPolicy: Local`: no ready
    /// endpoint on the node).
    NotReady,
    Terminating,
}

/// A host port of the Service that another Service's proxy pod holds on a node.
#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Conflict {
    pub port: i32,
    pub protocol: String,
    pub node: String,
    /// `namespace/name` of the Service whose proxy pod, or plan, holds the port there.
    pub held_by: String,
}

#[derive(Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WarningReport {
    pub reason: String,
    pub message: String,
    pub count: i32,
    #[serde(serialize_with = "as_rfc3339")]
    pub last_seen: Option<Timestamp>,
}

fn as_rfc3339<S: Serializer>(time: &Option<Timestamp>, serializer: S) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => serializer.collect_str(time),
        None => serializer.serialize_none(),
    }
}

impl ServiceReport {
    pub fn serving_nodes(&self) -> usize {
        self.nodes.iter().filter(|n| n.serving).count()
    }
}

/// One entry per Service that hostlb serves or has proxies for, sorted by namespace and name.
/// LoadBalancer Services of another class without proxies are another controller's and left out.
pub fn report(observed: &Observed) -> Report {
    let mut services: Vec<ServiceReport> = observed
        .services
        .iter()
        .map(ServiceView::of)
        .filter(|service| !service.uid.is_empty())
        .filter_map(|service| {
            let daemonset = observed.daemonsets.iter().find(|ds| serves(ds.labels(), &service.uid));
            let plan = plan_of(&service.uid, &observed.agent_objects);
            let ours = service.is_handled(names::DEFAULT_LOAD_BALANCER_CLASS, true)
                || ((daemonset.is_some() || plan.is_some()) && service.is_load_balancer);
            ours.then(|| service_report(service, daemonset, observed))
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Report { services }
}

fn serves(labels: &BTreeMap<String, String>, uid: &str) -> bool {
    labels.get(names::LABEL_SERVICE_UID).is_some_and(|label| label == uid)
}

fn service_report(service: ServiceView, daemonset: Option<&DaemonSet>, observed: &Observed) -> ServiceReport {
    let uid = service.uid.as_str();
    let plan = plan_of(uid, &observed.agent_objects).filter(|_| daemonset.is_none());
    let template = daemonset.and_then(|ds| ds.spec.as_ref()).and_then(|s| s.template.spec.as_ref());
    let claimed = match plan {
        Some(plan) => contract::plan_ports(plan.data.as_ref()),
        None => template.map(host_ports).unwrap_or_default(),
    };
    let ports = service
        .ports
        .iter()
        .map(|port| PortReport { port: port.0, protocol: port.1.clone(), claimed: claimed.contains(port) })
        .collect();
    let pods: Vec<&Pod> = observed.pods.iter().filter(|pod| serves(pod.labels(), uid)).collect();
    let local = service.parsed.local;
    let mut nodes: Vec<NodeReport> = observed
        .nodes
        .iter()
        .map(|node| match plan {
            Some(plan) => agent_node_report(node, plan, uid, &claimed, &observed.agent_objects, local),
            None => node_report(node, template, &pods, local),
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let conflicts = nodes
        .iter()
        .filter(|node| node.state == NodeState::PortHeld)
        .flat_map(|node| match plan {
            Some(_) => plan_holders(&node.name, uid, &claimed, &observed.agent_objects),
            None => holders(&node.name, uid, &claimed, &observed.pods),
        })
        .collect();
    ServiceReport {
        addresses: service.published.addresses.iter().map(ToString::to_string).collect(),
        ports,
        daemon_set: daemonset.map(|ds| ds.name_any()),
        plan: plan.map(|plan| plan.name_any()),
        nodes,
        conflicts,
        warnings: latest_warnings(uid, &observed.warnings),
        namespace: service.namespace,
        name: service.name,
    }
}

fn plan_of<'a>(uid: &str, agent_objects: &'a [ConfigMap]) -> Option<&'a ConfigMap> {
    agent_objects.iter().find(|object| is_component(object, agent::COMPONENT_PLAN) && serves(object.labels(), uid))
}

fn is_component(object: &ConfigMap, component: &str) -> bool {
    object.labels().get(names::LABEL_COMPONENT).is_some_and(|label| label == component)
}

/// Where a node stands for a Service the node agents serve: from its plan and the node's report.
fn agent_node_report(
    node: &Node,
    plan: &ConfigMap,
    uid: &str,
    claimed: &[(i32, String)],
    agent_objects: &[ConfigMap],
    local: bool,
) -> NodeReport {
    let name = node.name_any();
    let report = agent_objects.iter().find(|object| {
        is_component(object, agent::COMPONENT_REPORT) && object.name_any().ends_with(&format!(".{name}"))
    });
    let entry = report.and_then(|report| read_report(report.data.as_ref()?).remove(uid));
    let (state, reason) = if !plan_names(plan, &name) {
        if plan_holders(&name, uid, claimed, agent_objects).is_empty() {
            (NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint".into()))
        } else {
            (NodeState::PortHeld, Some(PORT_HELD.into()))
        }
    } else if !node_can_serve(node) {
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        if cordoned {
            (NodeState::NodeCordoned, None)
        } else {
            (NodeState::NodeNotReady, None)
        }
    } else {
        match entry {
            None => (NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet".into())),
            Some(entry) if entry.forwarding => (NodeState::Serving, None),
            Some(AgentEntry { problem: Some(problem), .. }) => (NodeState::Failing, Some(problem)),
            Some(_) if local => {
                (NodeState::NotReady, Some("the node's agent forwards nothing: no ready endpoint on this node".into()))
            }
            Some(_) => (NodeState::NotReady, Some("the node's agent does not forward it".into())),
        }
    };
    NodeReport { name, serving: state == NodeState::Serving, state, reason }
}

/// The host ports (with protocol) a proxy pod claims.
fn host_ports(spec: &PodSpec) -> Vec<(i32, String)> {
    let ports = spec.containers.iter().flat_map(|c| c.ports.iter().flatten());
    ports
        .filter_map(|ContainerPort { host_port, protocol, .. }| {
            Some(((*host_port)?, protocol.clone().unwrap_or_else(|| "TCP".into())))
        })
        .collect()
}

const PORT_HELD: &str = "an older Service holds one of the ports on this node";

fn plan_names(plan: &ConfigMap, node: &str) -> bool {
    contract::plan_nodes(plan.data.as_ref()).any(|planned| planned == node)
}

/// Other Services' proxy pods on the node that hold one of these host ports.
fn holders(node: &str, uid: &str, claimed: &[(i32, String)], pods: &[Pod]) -> Vec<Conflict> {
    let on_node = pods.iter().filter(|pod| pod_node(pod) == Some(node) && !serves(pod.labels(), uid));
    on_node
        .flat_map(|pod| held_of(node, pod, &pod.spec.as_ref().map(host_ports).unwrap_or_default(), claimed))
        .collect()
}

/// Other Services' plans that have the node's agent listen on one of these ports.
fn plan_holders(node: &str, uid: &str, claimed: &[(i32, String)], agent_objects: &[ConfigMap]) -> Vec<Conflict> {
    let plans = agent_objects.iter().filter(|object| is_component(object, agent::COMPONENT_PLAN));
    let on_node = plans.filter(|plan| !serves(plan.labels(), uid) && plan_names(plan, node));
    on_node.flat_map(|plan| held_of(node, plan, &contract::plan_ports(plan.data.as_ref()), claimed)).collect()
}

/// The conflicts of `claimed` with the ports `held` on the node by another Service's object.
fn held_of(node: &str, holder: &impl ResourceExt, held: &[(i32, String)], claimed: &[(i32, String)]) -> Vec<Conflict> {
    let label = |key: &str| holder.labels().get(key).cloned().unwrap_or_default();
    let held_by = format!("{}/{}", label(names::LABEL_SERVICE_NAMESPACE), label(names::LABEL_SERVICE_NAME));
    let conflicting = claimed.iter().filter(|port| held.contains(port));
    conflicting
        .map(|(port, protocol)| Conflict {
            port: *port,
            protocol: protocol.clone(),
            node: node.into(),
            held_by: held_by.clone(),
        })
        .collect()
}

fn node_report(node: &Node, template: Option<&PodSpec>, pods: &[&Pod], local: bool) -> NodeReport {
    let name = node.name_any();
    // Of a pod being replaced, the new one tells what comes next.
    let pod = pods
        .iter()
        .filter(|pod| pod_node(pod) == Some(name.as_str()))
        .min_by_key(|pod| (pod.metadata.deletion_timestamp.is_some(), !pod_is_ready(pod)));
    let (state, reason) = node_state(node, template, pod.copied(), local);
    NodeReport { name, serving: state == NodeState::Serving, state, reason }
}

fn node_state(node: &Node, template: Option<&PodSpec>, pod: Option<&Pod>, local: bool) -> (NodeState, Option<String>) {
    let Some(template) = template else {
        return (NodeState::NoProxyPod, Some("the Service has no proxy DaemonSet".into()));
    };
    if let Err(refusal) = admission(template, node) {
        return match refusal {
            Refusal::MissingLabel(label) => (NodeState::NotEligible, Some(format!("node lacks label {label}"))),
            Refusal::ForbiddenLabel(label) => (NodeState::NotEligible, Some(format!("node has label {label}"))),
            Refusal::Taint(taint) => {
                (NodeState::NotEligible, Some(format!("proxy pods do not tolerate taint {taint}")))
            }
            Refusal::LeftOutByName => (NodeState::PortHeld, Some(PORT_HELD.into())),
        };
    }
    if !node_can_serve(node) {
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        return if cordoned { (NodeState::NodeCordoned, None) } else { (NodeState::NodeNotReady, None) };
    }
    let Some(pod) = pod else {
        return (NodeState::NoProxyPod, Some("the DaemonSet has not created a proxy pod here".into()));
    };
    if pod_is_ready(pod) {
        (NodeState::Serving, None)
    } else {
        pod_trouble(pod, local)
    }
}

/// Why a proxy pod on an eligible node is not Ready.
fn pod_trouble(pod: &Pod, local: bool) -> (NodeState, Option<String>) {
    if pod.metadata.deletion_timestamp.is_some() {
        (NodeState::Terminating, None)
    } else if let Some(failure) = failure_of(pod) {
        (NodeState::Failing, Some(failure))
    } else if let Some(message) = unschedulable_message(pod) {
        (NodeState::Unschedulable, Some(format!("Unschedulable: {message}")))
    } else if let Some(waiting) = start_up_of(pod) {
        (NodeState::Starting, Some(waiting))
    } else if local {
        (NodeState::NotReady, Some("not Ready: no ready endpoint of the Service on this node".into()))
    } else {
        (NodeState::NotReady, Some("not Ready".into()))
    }
}

/// The newest Warnings about the Service of this UID, newest first.
fn latest_warnings(uid: &str, events: &[Event]) -> Vec<WarningReport> {
    let mut about: Vec<WarningReport> = events
        .iter()
        .filter(|e| e.type_.as_deref() == Some("Warning") && e.involved_object.uid.as_deref() == Some(uid))
        .map(|e| WarningReport {
            reason: e.reason.clone().unwrap_or_default(),
            message: e.message.clone().unwrap_or_default(),
            count: e.series.as_ref().and_then(|s| s.count).or(e.count).unwrap_or(1),
            last_seen: last_seen(e),
        })
        .collect();
    about.sort_by_key(|warning| std::cmp::Reverse(warning.last_seen));
    about.truncate(LATEST_WARNINGS);
    about
}

/// Events of events.k8s.io/v1 (as hostlb writes them) carry their times in `series` and
/// `eventTime`; older writers use the core fields.
fn last_seen(event: &Event) -> Option<Timestamp> {
    let series = event.series.as_ref().and_then(|s| s.last_observed_time.as_ref()).map(|t| t.0);
    series.or(event.last_timestamp.as_ref().map(|t| t.0)).or(event.event_time.as_ref().map(|t| t.0)).or(event
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::*;
    use serde_json::json;

    const HTTP: &[(i32, &str)] = &[(80, "TCP")];

    fn one_service(daemonset_template: serde_json::Value, nodes: Vec<Node>, pods: Vec<Pod>) -> ServiceReport {
        let observed = Observed {
            services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
            nodes,
            daemonsets: vec![daemonset("web", UID, HTTP, daemonset_template)],
            pods,
            ..Default::default()
        };
        report(&observed).services.into_iter().next().expect("the Service is reported")
    }

    fn states(service: &ServiceReport) -> Vec<(&str, NodeState, Option<&str>)> {
        service.nodes.iter().map(|n| (n.name.as_str(), n.state, n.reason.as_deref())).collect()
    }

    fn pod_on(node: &str, status: serde_json::Value) -> Pod {
        proxy_pod("web", UID, node, HTTP, status)
    }

    #[test]
    fn a_node_with_a_ready_proxy_pod_serves_and_one_without_is_explained() {
        let service = one_service(json!({}), vec![ready_node("n2"), ready_node("n1")], vec![pod_on("n1", ready())]);
        assert_eq!(
            states(&service),
            vec![
                ("n1", NodeState::Serving, None),
                ("n2", NodeState::NoProxyPod, Some("the DaemonSet has not created a proxy pod here")),
            ]
        );
        assert_eq!(service.serving_nodes(), 1);
        assert_eq!(service.addresses, vec!["10.0.0.1"]);
        assert_eq!(service.daemon_set.as_deref(), Some("hostlb-web"));
    }

    #[test]
    fn a_node_outside_the_pool_is_not_eligible_and_says_which_label_it_lacks() {
        let pool = json!({ "nodeSelector": { "hostlb.io/lbpool": "edge" } });
        let service = one_service(pool, vec![ready_node("n1")], vec![]);
        assert_eq!(
            states(&service),
            vec![("n1", NodeState::NotEligible, Some("node lacks label hostlb.io/lbpool=edge"))]
        );
    }

    #[test]
    fn not_ready_and_cordoned_nodes_do_not_serve_even_with_a_ready_pod() {
        let mut down = ready_node("down");
        down.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
        let mut cordoned = ready_node("cordoned");
        cordoned.spec.get_or_insert_default().unschedulable = Some(true);
        let pods = vec![pod_on("down", ready()), pod_on("cordoned", ready())];
        let service = one_service(json!({}), vec![down, cordoned], pods);
        assert_eq!(
            states(&service),
            vec![("cordoned", NodeState::NodeCordoned, None), ("down", NodeState::NodeNotReady, None)]
        );
    }

    #[test]
    fn an_unschedulable_pod_gives_the_schedulers_message() {
        let pending = json!({ "phase": "Pending", "conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
            "message": "0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
        }]});
        let service = one_service(json!({}), vec![ready_node("n1")], vec![pod_on("n1", pending)]);
        assert_eq!(
            states(&service),
            vec![(
                "n1",
                NodeState::Unschedulable,
                Some("Unschedulable: 0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports.")
            )]
        );
    }

    #[test]
    fn a_crashing_container_is_failing_with_its_last_words_and_a_starting_one_is_not() {
        let waiting = |reason: &str| {
            json!({ "phase": "Pending", "initContainerStatuses": [{
                "name": "install-rules", "image": "lb", "imageID": "", "ready": false, "restartCount": 4,
                "state": { "waiting": { "reason": reason } },
                "lastState": { "terminated": { "exitCode": 3, "message": "nf_tables: not supported\n" } }
            }]})
        };
        let nodes = vec![ready_node("n1"), ready_node("n2")];
        let pods = vec![pod_on("n1", waiting("CrashLoopBackOff")), pod_on("n2", waiting("PodInitializing"))];
        let service = one_service(json!({}), nodes, pods);
        assert_eq!(
            states(&service),
            vec![
                (
                    "n1",
                    NodeState::Failing,
                    Some("container install-rules: CrashLoopBackOff; last exit 3: nf_tables: not supported")
                ),
                (
                    "n2",
                    NodeState::Starting,
                    Some("container install-rules: PodInitializing; last exit 3: nf_tables: not supported")
                ),
            ]
        );
    }

    #[test]
    fn a_running_pod_that_is_not_ready_points_at_local_endpoints_for_local_services() {
        let running = json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "False" }] });
        let mut local = service("web", UID, HTTP, &[]);
        local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let observed = Observed {
            services: vec![local],
            nodes: vec![ready_node("n1")],
            daemonsets: vec![daemonset("web", UID, HTTP, json!({}))],
            pods: vec![pod_on("n1", running.clone())],
            ..Default::default()
        };
        let reason = &report(&observed).services[0].nodes[0].reason;
        assert_eq!(reason.as_deref(), Some("not Ready: no ready endpoint of the Service on this node"));
        let cluster_policy = one_service(json!({}), vec![ready_node("n1")], vec![pod_on("n1", running)]);
        assert_eq!(states(&cluster_policy), vec![("n1", NodeState::NotReady, Some("not Ready"))]);
    }

    #[test]
    fn a_replaced_pod_is_judged_by_its_successor() {
        let mut old = pod_on("n1", ready());
        old.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
        let service = one_service(
            json!({}),
            vec![ready_node("n1")],
            vec![old.clone(), pod_on("n1", json!({ "phase": "Pending" }))],
        );
        assert_eq!(states(&service)[0].1, NodeState::NotReady);
        let only_old = one_service(json!({}), vec![ready_node("n1")], vec![old]);
        assert_eq!(states(&only_old)[0].1, NodeState::Terminating);
    }

    #[test]
    fn a_port_held_by_an_older_service_names_it_per_node() {
        let left_out = json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "NotIn", "values": ["n1"] }] }]
        }}}});
        let holder = proxy_pod("first", "uid-first", "n1", &[(80, "TCP"), (443, "TCP")], ready());
        let elsewhere = proxy_pod("other", "uid-other", "n2", HTTP, ready());
        let service = one_service(left_out, vec![ready_node("n1"), ready_node("n2")], vec![holder, elsewhere]);
        assert_eq!(states(&service)[0].1, NodeState::PortHeld);
        assert_eq!(
            service.conflicts,
            vec![Conflict { port: 80, protocol: "TCP".into(), node: "n1".into(), held_by: "shop/first".into() }]
        );
    }

    #[test]
    fn ports_the_proxies_do_not_claim_are_marked() {
        let observed = Observed {
            services: vec![service("web", UID, &[(22, "TCP"), (80, "TCP"), (53, "UDP")], &[])],
            daemonsets: vec![daemonset("web", UID, &[(80, "TCP"), (53, "UDP")], json!({}))],
            ..Default::default()
        };
        let claimed: Vec<(i32, bool)> =
            report(&observed).services[0].ports.iter().map(|p| (p.port, p.claimed)).collect();
        assert_eq!(claimed, vec![(22, false), (80, true), (53, true)]);
    }

    /// A plan for the fixtures' Service on `nodes`, and each node's agent report of it.
    fn agent_objects(nodes: &[&str], reports: &[(&str, bool, Option<&str>)]) -> Vec<ConfigMap> {
        let labelled = |name: String, component: &str| kube::api::ObjectMeta {
            name: Some(name),
            labels: Some(
                [
                    (names::LABEL_MANAGED_BY.to_string(), names::MANAGED_BY.to_string()),
                    (names::LABEL_COMPONENT.to_string(), component.to_string()),
                    (names::LABEL_SERVICE_UID.to_string(), UID.to_string()),
                ]
                .into(),
            ),
            ..Default::default()
        };
        let args = "--service-namespace\nshop\n--service-name\nweb\n--port\ntcp:80:8080\n--to\n10.96.0.10\n";
        let nodes: String = nodes.iter().map(|node| format!("{node}\n")).collect();
        let plan = ConfigMap {
            metadata: labelled("hostlb-web-1234".into(), agent::COMPONENT_PLAN),
            data: Some(
                [(contract::PLAN_ARGS.to_string(), args.to_string()), (contract::PLAN_NODES.to_string(), nodes)].into(),
            ),
            ..Default::default()
        };
        let report = |(node, forwarding, problem): &(&str, bool, Option<&str>)| {
            let entry =
                AgentEntry { service: "shop/web".into(), forwarding: *forwarding, problem: problem.map(Into::into) };
            ConfigMap {
                metadata: labelled(format!("hostlb-agent.{node}"), agent::COMPONENT_REPORT),
                data: Some(contract::report_data(&[(UID.to_string(), entry)].into())),
                ..Default::default()
            }
        };
        [plan].into_iter().chain(reports.iter().map(report)).collect()
    }

    #[test]
    fn with_the_node_agents_each_node_says_what_its_agent_reports() {
        let nodes = ["n1", "n2", "n3", "n4"].map(ready_node).to_vec();
        let observed = Observed {
            services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
            nodes,
            agent_objects: agent_objects(&["n1", "n2", "n3"], &[("n1", true, None), ("n2", false, Some("no table"))]),
            ..Default::default()
        };
        let service = &report(&observed).services[0];
        assert_eq!((service.daemon_set.as_deref(), service.plan.as_deref()), (None, Some("hostlb-web-1234")));
        assert!(service.ports.iter().all(|port| port.claimed), "{:?}", service.ports);
        assert_eq!(
            states(service),
            vec![
                ("n1", NodeState::Serving, None),
                ("n2", NodeState::Failing, Some("no table")),
                ("n3", NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet")),
                ("n4", NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint")),
            ]
        );
    }

    #[test]
    fn with_the_node_agents_a_node_an_older_services_plan_holds_the_port_on_is_port_held() {
        let mut objects = agent_objects(&["n2"], &[]);
        let mut older = objects[0].clone();
        older.metadata.name = Some("hostlb-older-5678".into());
        let labels = older.metadata.labels.as_mut().unwrap();
        labels.insert(names::LABEL_SERVICE_UID.into(), "uid-older".into());
        labels.insert(names::LABEL_SERVICE_NAMESPACE.into(), "shop".into());
        labels.insert(names::LABEL_SERVICE_NAME.into(), "older".into());
        older.data.as_mut().unwrap().insert(contract::PLAN_NODES.into(), "n1\n".into());
        objects.push(older);
        let observed = Observed {
            services: vec![service("web", UID, HTTP, &[])],
            nodes: ["n1", "n2", "n3"].map(ready_node).to_vec(),
            agent_objects: objects,
            ..Default::default()
        };
        let service = &report(&observed).services[0];
        assert_eq!(
            states(service),
            vec![
                ("n1", NodeState::PortHeld, Some(PORT_HELD)),
                ("n2", NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet")),
                ("n3", NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint")),
            ]
        );
        let held: Vec<(&str, i32, &str)> =
            service.conflicts.iter().map(|c| (c.node.as_str(), c.port, c.held_by.as_str())).collect();
        assert_eq!(held, vec![("n1", 80, "shop/older")]);
    }

    #[test]
    fn without_a_daemonset_every_node_says_so() {
        let observed = Observed {
            services: vec![service("web", UID, &[(22, "TCP")], &[])],
            nodes: vec![ready_node("n1")],
            ..Default::default()
        };
        let service = &report(&observed).services[0];
        assert_eq!(service.daemon_set, None);
        assert_eq!(states(service), vec![("n1", NodeState::NoProxyPod, Some("the Service has no proxy DaemonSet"))]);
    }

    #[test]
    fn only_the_newest_warnings_about_the_service_itself_are_kept_newest_first() {
        let warnings = vec![
            warning(UID, "PortRefused", "port 22/TCP", 10),
            warning(UID, "PortConflict", "port 80/TCP", 40),
            warning(UID, "InvalidOption", "bad", 30),
            warning(UID, "NoEligibleNode", "none", 20),
            warning("uid-other", "PortConflict", "not ours", 50),
        ];
        let observed = Observed { services: vec![service("web", UID, HTTP, &[])], warnings, ..Default::default() };
        let reasons: Vec<String> = report(&observed).services[0].warnings.iter().map(|w| w.reason.clone()).collect();
        assert_eq!(reasons, vec!["PortConflict", "InvalidOption", "NoEligibleNode"]);
    }

    #[test]
    fn services_of_another_class_without_proxies_are_left_out_and_the_rest_sorted() {
        let mut foreign = service("metal", "uid-metal", HTTP, &[]);
        foreign.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/metallb".into());
        let mut cluster_ip = service("internal", "uid-internal", HTTP, &[]);
        cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
        let mut other_install = service("edge", "uid-edge", HTTP, &[]);
        other_install.spec.as_mut().unwrap().load_balancer_class = Some("example.com/edge".into());
        let observed = Observed {
            services: vec![service("web", UID, HTTP, &[]), foreign, cluster_ip, other_install],
            daemonsets: vec![daemonset("edge", "uid-edge", HTTP, json!({}))],
            ..Default::default()
        };
        let names: Vec<String> = report(&observed).services.into_iter().map(|s| s.name).collect();
        assert_eq!(names, vec!["edge", "web"]);
    }

    #[test]
    fn json_names_fields_in_camel_case_and_states_by_name() {
        let observed = Observed {
            services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
            nodes: vec![ready_node("n1")],
            daemonsets: vec![daemonset("web", UID, HTTP, json!({}))],
            pods: vec![pod_on("n1", ready())],
            warnings: vec![warning(UID, "PortRefused", "port 22/TCP", 0)],
            ..Default::default()
        };
        let json = serde_json::to_value(report(&observed)).unwrap();
        let web = &json["services"][0];
        assert_eq!(web["daemonSet"], "hostlb-web");
        assert_eq!(web["nodes"][0], json!({ "name": "n1", "serving": true, "state": "Serving", "reason": null }));
        assert_eq!(web["ports"][0], json!({ "port": 80, "protocol": "TCP", "claimed": true }));
        assert_eq!(web["warnings"][0]["lastSeen"], "1970-01-01T00:00:00Z");
        assert_eq!(web["warnings"][0]["count"], 3);
    }
}
