//! What `kubectl hostlb status` says about each LoadBalancer Service, computed from the objects
//! it fetched: no client, no clock. What both data planes share is computed here once; what
//! differs is asked of the Service's `Forwarding`: its proxy pods (`proxy_pods`) or the node
//! agents following its plan (`node_agents`).

mod node_agents;
mod proxy_pods;

use std::collections::BTreeMap;
use std::fmt;

use hostlb_model::agent::{self, ForwardingPlan};
use hostlb_model::names;
use hostlb_model::readiness::node_can_serve;
use hostlb_model::service::ServiceView;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::{Serialize, Serializer};

use node_agents::NodeAgents;
use proxy_pods::ProxyPods;

/// How many of a Service's newest Warnings are shown.
pub const LATEST_WARNINGS: usize = 3;

/// The objects a report is made of: the Services asked about, every node, the proxy
/// DaemonSets and pods and the node agents' plans and reports of the hostlb namespace, and the
/// Warning Events about Services.
#[derive(Debug, Default)]
pub struct Observed {
    pub services: Vec<Service>,
    pub nodes: Vec<Node>,
    pub daemonsets: Vec<DaemonSet>,
    pub pods: Vec<Pod>,
    /// The node agents' plans (`--dataplane agent`): one per Service they forward.
    pub plans: Vec<ForwardingPlan>,
    /// The node agents' reports: one per node, its status written by the node's agent.
    pub agent_reports: Vec<agent::NodeReport>,
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
    /// Whether the Service's forwarding claims it (a proxy pod's host port, a plan's port); a
    /// refused port is not claimed.
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
    /// With the node agents: when the node's agent wrote the report its state is read from.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_rfc3339")]
    pub reported_at: Option<Timestamp>,
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
    /// The DaemonSet has no pod there (yet, or it cannot create one); with the node agents, the
    /// node's agent has not reported the Service.
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

/// A port of the Service that another Service's proxy pod, or plan, holds on a node.
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
            let forwarding = forwarding_of(&service.uid, observed);
            let applied = forwarding.daemon_set().is_some() || forwarding.plan().is_some();
            let ours =
                service.is_handled(names::DEFAULT_LOAD_BALANCER_CLASS, true) || (applied && service.is_load_balancer);
            ours.then(|| service_report(&service, forwarding.as_ref(), observed))
        })
        .collect();
    services.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Report { services }
}

/// Why the Service named on the command line is not in the report. kubectl fails on a name it
/// cannot show, where a list that comes out empty succeeds.
#[derive(Debug, PartialEq)]
pub enum Unreported {
    /// The namespace has no Service of that name.
    NotFound { name: String },
    /// The Service is of another type; hostlb serves only LoadBalancer Services.
    NotLoadBalancer { name: String, type_: String },
    /// A LoadBalancer Service of another class without proxies: another controller's.
    OtherClass { name: String, class: String },
}

impl fmt::Display for Unreported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // kubectl's very words, which scripts match.
            Unreported::NotFound { name } => write!(f, "Error from server (NotFound): services \"{name}\" not found"),
            Unreported::NotLoadBalancer { name, type_ } => {
                write!(f, "error: service \"{name}\" is of type {type_}, not LoadBalancer")
            }
            Unreported::OtherClass { name, class } => {
                write!(f, "error: service \"{name}\" is not served by hostlb: its loadBalancerClass is {class}")
            }
        }
    }
}

/// The report of the Services asked for, or why the one asked for by `name` is not in it.
pub fn report_of(name: Option<&str>, observed: &Observed) -> Result<Report, Unreported> {
    let report = report(observed);
    match name {
        Some(name) if !report.services.iter().any(|service| service.name == name) => Err(unreported(name, observed)),
        _ => Ok(report),
    }
}

fn unreported(name: &str, observed: &Observed) -> Unreported {
    let name = name.to_string();
    let Some(service) = observed.services.iter().find(|service| service.name_any() == name) else {
        return Unreported::NotFound { name };
    };
    let view = ServiceView::of(service);
    if view.is_load_balancer {
        Unreported::OtherClass { name, class: view.load_balancer_class.unwrap_or_default() }
    } else {
        // The API server defaults an absent type to ClusterIP.
        let type_ = service.spec.as_ref().and_then(|spec| spec.type_.clone());
        Unreported::NotLoadBalancer { name, type_: type_.unwrap_or_else(|| "ClusterIP".into()) }
    }
}

/// A port with its protocol as the API spells it: `(80, "TCP")`.
type Port = (i32, String);

/// Where a node stands for a Service and, unless it serves, why.
type Standing = (NodeState, Option<String>);

/// Ports that another Service's proxy pod or plan holds on a node.
struct Holding<'a> {
    /// The holder's metadata, whose labels name its Service.
    holder: &'a ObjectMeta,
    ports: Vec<Port>,
}

/// What forwards one Service on each node: its proxy pods, or the node agents following its
/// plan. The report asks it only what the two data planes answer differently.
trait Forwarding {
    /// The proxy DaemonSet the forwarding comes from.
    fn daemon_set(&self) -> Option<String>;
    /// The plan the forwarding comes from.
    fn plan(&self) -> Option<String>;
    /// The ports the forwarding claims on every node it forwards on.
    fn claimed(&self) -> &[Port];
    /// Why the node is not among those the forwarding is placed on, if it is not.
    fn leaves_out(&self, node: &Node) -> Option<Standing>;
    /// Whether the Service is forwarded on a node it is placed on and that can serve, and why not.
    fn forwards_on(&self, node: &str, local: bool) -> Standing;
    /// When what `forwards_on` reads of the node was written, if something on the node writes it.
    fn reported_at(&self, _node: &str) -> Option<Timestamp> {
        None
    }
    /// What other Services' forwarding holds on the node.
    fn held_on(&self, node: &str) -> Vec<Holding<'_>>;
}

/// The node agents forward a Service that has a plan and no proxy DaemonSet; its proxy pods
/// forward any other, and one with neither object on no node. A Service switching data planes
/// has both objects until the new data plane forwards wherever the old one did.
fn forwarding_of<'a>(uid: &'a str, observed: &'a Observed) -> Box<dyn Forwarding + 'a> {
    let daemonset = observed.daemonsets.iter().find(|ds| serves(ds.labels(), uid));
    match (daemonset, node_agents::plan_of(uid, &observed.plans)) {
        (None, Some(plan)) => Box::new(NodeAgents::new(uid, plan, &observed.plans, &observed.agent_reports)),
        (daemonset, _) => Box::new(ProxyPods::new(uid, daemonset, &observed.pods)),
    }
}

fn serves(labels: &BTreeMap<String, String>, uid: &str) -> bool {
    labels.get(names::LABEL_SERVICE_UID).is_some_and(|label| label == uid)
}

fn service_report(service: &ServiceView, forwarding: &dyn Forwarding, observed: &Observed) -> ServiceReport {
    let claimed = forwarding.claimed();
    let ports = service
        .ports
        .iter()
        .map(|port| PortReport { port: port.0, protocol: port.1.clone(), claimed: claimed.contains(port) })
        .collect();
    let local = service.parsed.local;
    let mut nodes: Vec<NodeReport> = observed.nodes.iter().map(|node| node_report(node, forwarding, local)).collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    let conflicts = nodes
        .iter()
        .filter(|node| node.state == NodeState::PortHeld)
        .flat_map(|node| conflicts(forwarding, &node.name))
        .collect();
    ServiceReport {
        namespace: service.namespace.clone(),
        name: service.name.clone(),
        addresses: service.published.addresses.iter().map(ToString::to_string).collect(),
        ports,
        daemon_set: forwarding.daemon_set(),
        plan: forwarding.plan(),
        nodes,
        conflicts,
        warnings: latest_warnings(&service.uid, &observed.warnings),
    }
}

fn node_report(node: &Node, forwarding: &dyn Forwarding, local: bool) -> NodeReport {
    let name = node.name_any();
    let ((state, reason), reported_at) = standing(node, &name, forwarding, local);
    NodeReport { name, serving: state == NodeState::Serving, state, reason, reported_at }
}

/// The most fundamental cause first: the forwarding's placement, then the node's own state, then
/// the forwarding on the node, with when the node wrote what it is read from.
fn standing(node: &Node, name: &str, forwarding: &dyn Forwarding, local: bool) -> (Standing, Option<Timestamp>) {
    if let Some(left_out) = forwarding.leaves_out(node) {
        return (left_out, None);
    }
    if !node_can_serve(node) {
        let cordoned = node.spec.as_ref().and_then(|s| s.unschedulable).unwrap_or(false);
        let state = if cordoned { NodeState::NodeCordoned } else { NodeState::NodeNotReady };
        return ((state, None), None);
    }
    (forwarding.forwards_on(name, local), forwarding.reported_at(name))
}

const PORT_HELD: &str = "an older Service holds one of the ports on this node";

/// The ports the forwarding claims that other Services' forwarding holds on the node.
fn conflicts(forwarding: &dyn Forwarding, node: &str) -> Vec<Conflict> {
    let claimed = forwarding.claimed();
    let conflicts_with = |Holding { holder, ports }: Holding| {
        let label = |key: &str| holder.labels.as_ref().and_then(|labels| labels.get(key)).cloned().unwrap_or_default();
        let held_by = format!("{}/{}", label(names::LABEL_SERVICE_NAMESPACE), label(names::LABEL_SERVICE_NAME));
        let conflicting = claimed.iter().filter(move |port| ports.contains(port));
        conflicting.map(move |(port, protocol)| Conflict {
            port: *port,
            protocol: protocol.clone(),
            node: node.into(),
            held_by: held_by.clone(),
        })
    };
    forwarding.held_on(node).into_iter().flat_map(conflicts_with).collect()
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
#[path = "report_tests.rs"]
mod tests;
