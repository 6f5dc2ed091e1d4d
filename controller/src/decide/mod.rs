//! What hostlb decides, pure: no client, no clock (the time is one of the inputs), no await.
//! `decide` is the one decision of a reconcile: from a Service (read once into a
//! `ServiceView`), what hostlb knows of the cluster (the index) and its settings, everything
//! the executor must do. The modules beside it are its pieces, and `leadership` decides who
//! leads from the Lease as read.

pub mod agent;
pub mod condition;
pub mod conflicts;
pub mod daemonset;
pub mod finalizer;
pub mod leadership;
pub mod limits;
pub mod orphans;
pub mod placement;
pub mod port_policy;
pub mod proxy_health;
pub mod publication;
pub mod roll;
pub mod settings;
pub mod tenancy;

use std::time::Duration;

use hostlb_model::address::{Address, IpMode};
use hostlb_model::names;
use hostlb_model::options::{is_handled, FieldError, ServiceLb};
use hostlb_model::reason::{listed, one_per_reason, Reason, Warning};
use hostlb_model::service::ServiceView;
use hostlb_model::taints::{describe_taint, invalid_tolerations, repelling_taint};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Service, Toleration};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use crate::state::{key_of, Index, ProxyPod};
use agent::{desired_plan, plan_needs_apply};
use conflicts::held_by_older_services;
use daemonset::{config_hash_of, desired_daemonset, pod_template_marks, Dataplane};
use placement::Placement;
use port_policy::RefusedPort;
use proxy_health::{creation_failure, failing_pods, unschedulable, NODE_AGENT, PROXY_POD};
use publication::{desired_addresses, Publication};
pub use settings::Settings;

/// What the executor read for this Service besides the index.
pub struct Observed<'a> {
    pub service: &'a ServiceView,
    /// The DaemonSet with the name hostlb gives this Service's proxies, whoever made it.
    pub daemonset: Option<&'a DaemonSet>,
    /// What hostlb itself last wrote to that DaemonSet, if this replica remembers it.
    pub last_applied: Option<&'a Applied>,
    /// The ConfigMap with the name of the Service's plan for the node agents, whoever made it.
    pub plan: Option<&'a ConfigMap>,
    pub now: Timestamp,
}

/// How long proxies that are starting hold back a status write that would only add to what is
/// published, so that proxies started together are published together, in one write, rather
/// than one node at a time. Withdrawals and problems are written at once.
pub const STARTING_PROXIES_WINDOW: Duration = Duration::from_secs(5);

/// A DaemonSet as hostlb's own apply left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub generation: i64,
    pub config_hash: String,
}

#[derive(Debug)]
pub enum Decision {
    /// Not served, and nothing of hostlb's is left on it.
    Ignore,
    /// No longer served (deleted, or its type or class changed): delete its proxies, clear the
    /// status unless the Service itself is going away, and remove an older version's finalizer.
    CleanUp {
        clear_status: bool,
    },
    Serve(Box<Serving>),
}

#[derive(Debug, Default)]
pub struct Serving {
    /// The Service carries the finalizer an older hostlb put on: it goes, so that nothing has
    /// to run for the Service or its namespace to be deleted once hostlb is gone.
    pub remove_finalizer: bool,
    pub daemonset: Option<DaemonSetAction>,
    /// With the node agents as data plane.
    pub plan: Option<PlanAction>,
    /// The addresses to publish, when they (or their `ipMode`) differ from those published.
    pub publish: Option<Vec<Address>>,
    /// The `ipMode` to publish them with, where the API server keeps it.
    pub ip_mode: Option<IpMode>,
    /// hostlb's condition, when the Service does not have it yet.
    pub condition: Option<condition::Ready>,
    pub warnings: Vec<Warning>,
    /// Proxies are starting: the status is left as it is for now, and looked at again after
    /// this long at the latest (their pods' changes bring the next look sooner).
    pub hold: Option<Duration>,
    /// A proxy pod (`namespace/name`) to delete, so that the DaemonSet controller replaces it
    /// with a current one.
    pub replace_pod: Option<String>,
    /// Proxy pods someone else is deleting gracefully, to remove at once (`serve`).
    pub finish_deleting: Vec<String>,
    /// A node is held published while its proxy is replaced: look again when its window ends.
    pub recheck: Option<Duration>,
}

/// What becomes of the object that carries a Service's forwarding: its proxy DaemonSet, or its
/// plan for the node agents.
#[derive(Debug)]
pub enum ProxyAction<K> {
    Apply {
        object: K,
        created: bool,
        /// The ports it serves, for the Event.
        ports: String,
    },
    /// The Service has no port left that it may claim, or the other data plane serves it.
    Delete(K),
}

pub type DaemonSetAction = ProxyAction<DaemonSet>;
pub type PlanAction = ProxyAction<ConfigMap>;

pub fn decide(observed: &Observed<'_>, index: &Index, settings: &Settings) -> Decision {
    let service = observed.service;
    let deleting = service.deleting;
    if !settings.serves(service) || deleting {
        let has_proxies = index.daemonsets.get(&proxy_key(service, settings)).is_some();
        return if settings.must_release(service, has_proxies) {
            Decision::CleanUp { clear_status: !deleting && service.holds_status() }
        } else {
            Decision::Ignore
        };
    }
    Decision::Serve(Box::new(serve(observed, index, settings)))
}

/// The index's key of the proxy DaemonSet the Service would have.
fn proxy_key(service: &ServiceView, settings: &Settings) -> String {
    format!("{}/{}", settings.proxy.namespace, names::daemonset_name(&service.name, &service.uid))
}

fn serve(observed: &Observed<'_>, index: &Index, settings: &Settings) -> Serving {
    let service = observed.service;
    let mut serving = Serving { remove_finalizer: settings.holds(service), ..Serving::default() };
    let admission = service.parsed.options.clone().and_then(|lb| admit(lb, settings));
    let valid = admission.is_ok();
    let (placement, families, address_options, tolerations) = match admission {
        Ok((lb, refused)) => {
            serving.warnings.extend(refused_ports_warnings(refused));
            let placement = plan_proxies(&mut serving, observed, &lb, index, settings);
            (placement, lb.families, lb.addresses, daemonset::tolerations(&lb.extra_tolerations))
        }
        Err(errors) => {
            serving.warnings = errors
                .into_iter()
                .map(|e| Warning::new(Reason::InvalidOption, format!("{e}; the proxies are left as they were")))
                .collect();
            // The proxies that run go on serving, so their nodes stay published while they can.
            let (families, addresses) = (service.parsed.declared_families.clone(), service.parsed.addresses.clone());
            (Some(Placement::anywhere()), families, addresses, daemonset::tolerations(&[]))
        }
    };

    let uid = &service.uid;
    let pods: Vec<&ProxyPod> = index.proxy_pods_of(uid).collect();
    // A pod deleted gracefully (an eviction, `kubectl delete pod`) claims its host ports in the
    // scheduler's view until its kubelet has torn it down, and its replacement waits for that:
    // removed at once, the replacement is placed while the old pod still forwards.
    serving.finish_deleting = pods.iter().filter(|pod| pod.deleting).map(|pod| pod.key.clone()).collect();
    serving.warnings.extend(unschedulable(PROXY_POD, &pods));
    serving.warnings.extend(failing_pods(PROXY_POD, &pods));
    let schedulable = placement.as_ref().map_or_else(Vec::new, |p| schedulable_nodes(p, &tolerations, &pods, index));
    if settings.proxy.dataplane == Dataplane::Agent {
        serving.warnings.extend(agents_missing(&schedulable, index));
    }
    if let Some(placement) = placement.as_ref().filter(|_| valid && schedulable.is_empty()) {
        serving.warnings.extend(all_repelled(placement, &tolerations, index));
    }
    if let Some(ours) = observed.daemonset.filter(|existing| made_by_hostlb_for(*existing, uid)) {
        let failures = index.creation_failures.group(&ours.name_any()).map(AsRef::as_ref);
        serving.warnings.extend(creation_failure(ours, pods.len() < schedulable.len(), failures));
    }
    let policy = address_options.policy(&settings.addresses);
    let serving_nodes: Vec<&Node> = schedulable.iter().copied().filter(|node| index.serves(node)).collect();
    let eligible_nodes = serving_nodes.len();
    let partly_held = placement.as_ref().is_some_and(|placement| !placement.excluded_nodes.is_empty());
    let starting = placement.as_ref().and_then(|_| {
        let daemonset_since = match (&serving.daemonset, observed.daemonset) {
            (Some(DaemonSetAction::Apply { created: true, .. }), _) => Some(observed.now),
            (_, Some(daemonset)) => daemonset.metadata.creation_timestamp.as_ref().map(|time| time.0),
            _ => None,
        };
        let podless = serving_nodes.iter().any(|node| !has_pod(&pods, node));
        // The DaemonSet controller creates pods in growing batches, the first of one pod: while
        // nodes wait for theirs, the newest pod tells that it is still at work.
        let newest_pod = pods.iter().filter_map(|pod| pod.created).max();
        starting_until(&pods, daemonset_since.max(newest_pod).filter(|_| podless), observed.now)
    });
    let replacements = placement.as_ref().map(|placement| {
        let nodes = eligible_node_names(index, placement);
        roll::replacements(&pods, nodes, |node| index.departed(uid, node), observed.now)
    });
    let replacements = replacements.unwrap_or_default();
    serving.recheck = replacements.next_deadline.map(|deadline| until(deadline, observed.now));
    let publication = match placement {
        Some(placement) => desired_addresses(
            service,
            pods,
            |name| index.serving_node(name),
            &replacements.nodes,
            &placement,
            &policy,
            &families,
        ),
        None => Publication::default(),
    };
    let problems = publication.problems.into_iter().map(|problem| Warning::new(Reason::NodeAnnotationIgnored, problem));
    serving.warnings.extend(problems);
    serving.ip_mode = ip_mode(service, settings, &mut serving.warnings);
    serving.warnings.extend(load_balancer_ip_ignored(service));
    if settings.proxy.dataplane == Dataplane::Agent {
        serving.warnings.extend(priority_class_ignored(service));
    }
    serving.warnings = one_per_reason(std::mem::take(&mut serving.warnings));
    let findings = condition::Findings {
        valid,
        eligible_nodes,
        serving_nodes: publication.serving_nodes,
        partly_held: partly_held || serving.warnings.iter().any(|w| w.reason == Reason::PortRefused),
        warnings: &serving.warnings,
    };
    let ready = condition::ready(service, &findings);
    let adds_only = service.published.addresses.iter().all(|address| publication.addresses.contains(address));
    if let Some(deadline) = starting.filter(|_| adds_only && serving.warnings.is_empty()) {
        serving.hold = Some(until(deadline, observed.now));
        return serving;
    }
    // Most nodes failing at once, or nodes failing just after the control plane was away, is
    // more likely the control plane's blindness: nothing is withdrawn meanwhile; the end of the
    // hold and the nodes' changes bring the next look.
    if index.withdrawals_held() && !adds_only {
        return serving;
    }
    serving.condition = condition::differs(service, &ready).then_some(ready);
    if service.needs_update(&publication.addresses, serving.ip_mode) {
        serving.publish = Some(publication.addresses);
    }
    serving
}

fn until(deadline: Timestamp, now: Timestamp) -> Duration {
    let millis = deadline.as_millisecond().saturating_sub(now.as_millisecond());
    Duration::from_millis(u64::try_from(millis).unwrap_or_default())
}

/// The nodes the placement admits and whose Lease and Ready condition say they serve.
fn eligible_node_names<'a>(index: &'a Index, placement: &'a Placement) -> impl Iterator<Item = &'a str> {
    index
        .nodes
        .values()
        .filter(|node| placement.admits(node) && index.serves(node))
        .filter_map(|node| node.metadata.name.as_deref())
}

/// The nodes the proxies may run on as the scheduler sees them, for every count of eligible
/// nodes in a decision: those the placement admits and that have no taint the proxies do not
/// tolerate, or that run a proxy pod already (a NoSchedule taint set later leaves it running).
fn schedulable_nodes<'a>(
    placement: &Placement,
    tolerations: &[Toleration],
    pods: &[&ProxyPod],
    index: &'a Index,
) -> Vec<&'a Node> {
    let nodes = index.nodes.values().map(AsRef::as_ref).filter(|node| placement.admits(node));
    nodes.filter(|node| repelling_taint(node, tolerations).is_none() || has_pod(pods, node)).collect()
}

/// Why the node agents of nodes the Service may be served on do not run: each such agent
/// pod's scheduling or failure, and the DaemonSet controller's reason when nodes have none.
fn agents_missing(nodes: &[&Node], index: &Index) -> Vec<Warning> {
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

fn has_pod(pods: &[&ProxyPod], node: &Node) -> bool {
    pods.iter().any(|pod| pod.node.is_some() && pod.node.as_deref() == node.metadata.name.as_deref())
}

/// When every node the placement admits has a taint the proxies do not tolerate, a Warning
/// naming the nodes and their taints.
fn all_repelled(placement: &Placement, tolerations: &[Toleration], index: &Index) -> Option<Warning> {
    let repelled: Vec<String> = index
        .nodes
        .values()
        .filter(|node| placement.admits(node))
        .filter_map(|node| {
            Some(format!("{} ({})", node.name_any(), describe_taint(repelling_taint(node, tolerations)?)))
        })
        .collect();
    let message = format!(
        "every node the Service may use has a taint its proxy pods do not tolerate: {}; see {} and \
         --allowed-toleration-keys",
        listed(repelled.iter().cloned()),
        names::ANNOTATION_TOLERATIONS
    );
    (!repelled.is_empty()).then(|| Warning::new(Reason::NoEligibleNode, message))
}

/// When the last of the proxies still starting stops counting as starting: pods not Ready yet
/// that were created within the window, and, while the DaemonSet or its newest pod is that
/// young (`pods_to_come_since`, given when eligible nodes have no pod yet), the pods still to come.
/// `None` when nothing is starting.
fn starting_until(pods: &[&ProxyPod], pods_to_come_since: Option<Timestamp>, now: Timestamp) -> Option<Timestamp> {
    let pods_since = pods.iter().filter(|pod| !pod.ready && !pod.deleting).filter_map(|pod| pod.created);
    let window = k8s_openapi::jiff::SignedDuration::try_from(STARTING_PROXIES_WINDOW).ok()?;
    pods_since
        .chain(pods_to_come_since)
        .filter_map(|since| since.checked_add(window).ok())
        .filter(|until| *until > now)
        .max()
}

/// One Warning per reason the ports are refused for, naming the ports.
fn refused_ports_warnings(refused: Vec<RefusedPort>) -> Vec<Warning> {
    let mut by_why: Vec<(String, Vec<String>)> = Vec::new();
    for RefusedPort { port, why } in refused {
        let port = format!("{}/{}", port.listen, port.protocol.api_name());
        match by_why.iter_mut().find(|(reason, _)| *reason == why) {
            Some((_, ports)) => ports.push(port),
            None => by_why.push((why, vec![port])),
        }
    }
    let warning = |(why, ports): (String, Vec<String>)| {
        let (ports, it) = match ports.len() {
            1 => (format!("port {} is", ports[0]), "it"),
            _ => (format!("ports {} are", listed(ports)), "them"),
        };
        let message = format!("spec.ports: {ports} refused: {why}; an admin can allow {it} with --allowed-ports");
        Warning::new(Reason::PortRefused, message)
    };
    by_why.into_iter().map(warning).collect()
}

/// kube-proxy applies source ranges to the load balancer addresses only: a refused client can
/// still reach `NODE_ADDRESS:nodePort`.
fn node_ports_open(service: &ServiceView, lb: &ServiceLb) -> Option<Warning> {
    if lb.source_ranges.is_empty() || service.node_ports.is_empty() {
        return None;
    }
    let message = format!(
        "spec.loadBalancerSourceRanges do not cover the NodePorts {}: any client reaches them on every node; \
         set spec.allocateLoadBalancerNodePorts: false to close them (hostlb needs no NodePorts)",
        listed(service.node_ports.iter().cloned())
    );
    Some(Warning::new(Reason::NodePortsOpen, message))
}

/// `spec.loadBalancerIP` asks for one address, and hostlb has none of its own to give: it
/// publishes the nodes that serve. Said, rather than silently ignored (as k3s ServiceLB does).
fn load_balancer_ip_ignored(service: &ServiceView) -> Option<Warning> {
    let asked = service.load_balancer_ip.as_ref()?;
    let message = format!(
        "spec.loadBalancerIP {asked} is not honoured: hostlb publishes the addresses of the nodes that serve \
         the Service; to publish fewer, choose them with a pool ({}) or {}",
        names::POOL,
        names::ANNOTATION_MAX_NODES
    );
    Some(Warning::new(Reason::OptionIgnored, message))
}

/// The node agents forward every Service at the one class the admin gave them: a Service's own
/// PriorityClass has nothing to apply to.
fn priority_class_ignored(service: &ServiceView) -> Option<Warning> {
    let lb = service.parsed.options.as_ref().ok()?;
    let class = lb.priority_class.as_deref()?;
    let message = format!(
        "metadata.annotations[{}]: PriorityClass {class:?} is not used: the node agents (--dataplane agent) forward \
         every Service at the class the admin gave them; it applies to proxy pods only",
        names::ANNOTATION_PRIORITY_CLASS
    );
    Some(Warning::new(Reason::OptionIgnored, message))
}

/// The Service's `ipMode` (VIP unless it asks for Proxy) where the API server keeps the field.
/// Its version says whether it may; what it stored says whether it does: a server that keeps
/// `ipMode` fills in VIP on every address written without one, so addresses without it were
/// stored by a server that drops the field (1.30 and 1.31 with the LoadBalancerIPMode gate
/// off), and writing it again would only be dropped again, on every reconcile.
fn ip_mode(service: &ServiceView, settings: &Settings, warnings: &mut Vec<Warning>) -> Option<IpMode> {
    let asked = service.parsed.ip_mode;
    let stored = &service.published.ip_modes;
    let dropped = !stored.is_empty() && stored.iter().all(Option::is_none);
    if settings.server_has_ip_mode && !dropped {
        return Some(asked.unwrap_or(IpMode::Vip));
    }
    if asked == Some(IpMode::Proxy) {
        let why = if settings.server_has_ip_mode {
            "the API server does not keep ipMode (is its LoadBalancerIPMode feature gate off?)"
        } else {
            "ipMode needs Kubernetes 1.30 or later"
        };
        let message = format!(
            "metadata.annotations[{}]: {why}; the addresses are published without it",
            names::ANNOTATION_IP_MODE
        );
        warnings.push(Warning::new(Reason::OptionIgnored, message));
    }
    None
}

/// Decides the proxy DaemonSet of a valid Service; the nodes it may be published on, or
/// `None` when it has no port left to serve.
fn plan_proxies(
    serving: &mut Serving,
    observed: &Observed<'_>,
    lb: &ServiceLb,
    index: &Index,
    settings: &Settings,
) -> Option<Placement> {
    if lb.ports.is_empty() {
        let ours = observed.daemonset.filter(|existing| made_by_hostlb_for(*existing, &lb.uid));
        serving.daemonset = ours.map(|existing| DaemonSetAction::Delete(existing.clone()));
        return None;
    }
    serving.warnings.extend(node_ports_open(observed.service, lb));
    let mut placement = Placement::for_service(lb, index.enablelb_in_use());
    if !index.nodes.values().any(|node| placement.admits(node)) {
        let nodes: Vec<&Node> = index.nodes.values().map(AsRef::as_ref).collect();
        serving.warnings.push(Warning::new(Reason::NoEligibleNode, placement.explain_empty(lb, &nodes)));
    }
    let held = held_by_older_services(lb, &placement, index);
    serving.warnings.extend(held.messages.into_iter().map(|m| Warning::new(Reason::PortConflict, m)));
    placement.excluded_nodes = held.nodes;

    // The other data plane's object goes once this one forwards wherever that one did, so that
    // switching data planes withdraws no node and loses no path.
    let (pods, agents) = (index.nodes_forwarding_through_pods(&lb.uid), index.nodes_forwarding_through_agents(&lb.uid));
    match settings.proxy.dataplane {
        Dataplane::Pods => {
            let ours = observed.plan.filter(|existing| made_by_hostlb_for(*existing, &lb.uid));
            serving.plan =
                ours.filter(|_| agents.is_subset(&pods)).map(|existing| PlanAction::Delete(existing.clone()));
            plan_daemonset(serving, observed, lb, &placement, index, settings);
        }
        Dataplane::Agent => {
            let ours = observed.daemonset.filter(|existing| made_by_hostlb_for(*existing, &lb.uid));
            serving.daemonset =
                ours.filter(|_| pods.is_subset(&agents)).map(|existing| DaemonSetAction::Delete(existing.clone()));
            plan_for_agents(serving, observed, lb, &placement, index, settings);
        }
    }
    Some(placement)
}

/// The proxy DaemonSet, and the next out-of-date proxy pod to replace.
fn plan_daemonset(
    serving: &mut Serving,
    observed: &Observed<'_>,
    lb: &ServiceLb,
    placement: &Placement,
    index: &Index,
    settings: &Settings,
) {
    if let Some(existing) = observed.daemonset.filter(|existing| !made_by_hostlb_for(*existing, &lb.uid)) {
        serving.warnings.push(name_taken("DaemonSet", existing));
        return;
    }
    let desired = desired_daemonset(lb, placement, &settings.proxy);
    if needs_apply(observed.daemonset, &desired, observed.last_applied) {
        let created = observed.daemonset.is_none();
        serving.daemonset = Some(DaemonSetAction::Apply { object: desired, created, ports: ports_text(lb) });
    } else if let (Some(spec_hash), Some(existing)) = (pod_template_marks(&desired).0, observed.daemonset) {
        let current = roll::Current { spec_hash, restarted_at: pod_template_marks(existing).1 };
        let pods: Vec<&ProxyPod> = index.proxy_pods_of(&lb.uid).collect();
        let nodes = eligible_node_names(index, placement);
        let pending = roll::departure_pending(&pods, nodes, |node| index.departed(&lb.uid, node), observed.now);
        let next = roll::next_to_replace(&pods, current, pending);
        serving.replace_pod = next.map(|pod| pod.key.clone());
    }
}

/// The plan for the node agents: the nodes it may be served on are those the placement admits
/// and whose taints the Service tolerates, as the scheduler would place its proxy pods.
fn plan_for_agents(
    serving: &mut Serving,
    observed: &Observed<'_>,
    lb: &ServiceLb,
    placement: &Placement,
    index: &Index,
    settings: &Settings,
) {
    if let Some(existing) = observed.plan.filter(|existing| !made_by_hostlb_for(*existing, &lb.uid)) {
        serving.warnings.push(name_taken("ConfigMap", existing));
        return;
    }
    let tolerations = daemonset::tolerations(&lb.extra_tolerations);
    let mut nodes: Vec<&str> = index
        .nodes
        .values()
        .filter(|node| placement.admits(node) && repelling_taint(node, &tolerations).is_none())
        .filter_map(|node| node.metadata.name.as_deref())
        .collect();
    nodes.sort_unstable();
    let desired = desired_plan(lb, &nodes, &settings.proxy);
    if plan_needs_apply(observed.plan, &desired) {
        let created = observed.plan.is_none();
        serving.plan = Some(PlanAction::Apply { object: desired, created, ports: ports_text(lb) });
    }
}

fn name_taken(kind: &str, existing: &impl ResourceExt) -> Warning {
    Warning::new(
        Reason::DaemonSetNameTaken,
        format!("{kind} {} exists and was not made by hostlb for this Service; it is left alone", key_of(existing)),
    )
}

/// The ports a Service serves, as its Events name them.
fn ports_text(lb: &ServiceLb) -> String {
    listed(lb.ports.iter().map(|p| format!("{}/{}", p.listen, p.protocol.api_name())))
}

/// What a Service claims of the nodes' host ports, for the index: the ports it is admitted to,
/// while this install serves it and it is not being deleted.
pub fn claim(service: &Service, settings: &Settings) -> Option<ServiceLb> {
    if !is_handled(service, &settings.load_balancer_class, settings.serve_unclassed)
        || service.metadata.deletion_timestamp.is_some()
    {
        return None;
    }
    let (lb, _) = admit(ServiceLb::from_service(service).ok()?, settings).ok()?;
    Some(lb)
}

/// The valid Service as hostlb may serve it: within the limits per Service and what the admin
/// grants its namespace, and with the ports the port policy refuses taken out (and listed).
fn admit(lb: ServiceLb, settings: &Settings) -> Result<(ServiceLb, Vec<RefusedPort>), Vec<FieldError>> {
    let mut refusals = settings.limits.excess(&lb);
    refusals.extend(settings.tenants.refusals(&lb, &settings.proxy.default_priority_class));
    // A proxy DaemonSet's tolerations are checked by the API server; the agents only read them.
    if settings.proxy.dataplane == Dataplane::Agent {
        refusals.extend(invalid_tolerations(&lb.extra_tolerations));
    }
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(settings.ports.admit(lb))
}

/// Whether the DaemonSet carries the labels hostlb gives the proxies of this very Service.
fn made_by_hostlb_for(object: &impl ResourceExt, service_uid: &str) -> bool {
    let labels = object.labels();
    labels.get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::MANAGED_BY)
        && labels.get(names::LABEL_SERVICE_UID).map(String::as_str) == Some(service_uid)
}

/// Whether the DaemonSet must be applied. A server-side apply on every reconcile would also
/// repair hand edits, but it is a write on every proxy pod event and every resync; instead a
/// DaemonSet is applied when its configuration hash differs from the desired one or when its
/// generation moved past the one hostlb's own last apply produced (someone else changed its
/// spec). A replica that has not applied it yet (just started) applies it once.
pub fn needs_apply(existing: Option<&DaemonSet>, desired: &DaemonSet, last_applied: Option<&Applied>) -> bool {
    let Some(existing) = existing else { return true };
    let generation = existing.metadata.generation.unwrap_or_default();
    let (current_hash, edited_since) = match last_applied {
        // The cache has not caught up with hostlb's own last write yet: that write is current.
        Some(applied) if generation < applied.generation => (Some(applied.config_hash.as_str()), false),
        Some(applied) => (config_hash_of(existing), generation > applied.generation),
        None => (config_hash_of(existing), true),
    };
    current_hash != config_hash_of(desired) || edited_since
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::index_of;
    use crate::fixtures::{failed_create, made_from, proxy_pod, settings, NodeBuilder, ServiceBuilder, UID};
    use kube::runtime::watcher;

    const SECOND: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_secs(1);
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::core::v1::{LoadBalancerStatus, PodCondition, ServiceStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// An agent's report that node `node` forwards (or not) the fixtures' Service.
    fn agent_report(node: &str, forwarding: bool) -> k8s_openapi::api::core::v1::ConfigMap {
        use hostlb_contract::agent::{report_data, ServiceReport};
        use hostlb_model::agent::{AGENT, COMPONENT_REPORT};
        let entry = ServiceReport { service: "shop/web".into(), forwarding, problem: None };
        k8s_openapi::api::core::v1::ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{AGENT}.{node}")),
                namespace: Some("hostlb-system".into()),
                labels: Some([(names::LABEL_COMPONENT.to_string(), COMPONENT_REPORT.to_string())].into()),
                ..Default::default()
            },
            data: Some(report_data(&[(UID.to_string(), entry)].into())),
            ..Default::default()
        }
    }

    #[test]
    fn switching_data_planes_removes_the_old_forwarding_only_once_the_new_one_forwards_everywhere_it_did() {
        let service = ServiceBuilder::new("web").build();
        let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
        let view = ServiceView::of(&service);
        let lb = ServiceLb::from_service(&service).unwrap();
        let mut agent_settings = settings();
        agent_settings.proxy.dataplane = Dataplane::Agent;
        let daemonset = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings().proxy);
        let plan = desired_plan(&lb, &["n1", "n2"], &agent_settings.proxy);
        let pods =
            [made_from(proxy_pod("p1", "n1", true), &daemonset), made_from(proxy_pod("p2", "n2", true), &daemonset)];
        let decide_in = |index: &Index, settings: &Settings| {
            let observed = Observed {
                service: &view,
                daemonset: Some(&daemonset),
                last_applied: None,
                plan: Some(&plan),
                now: Timestamp::now(),
            };
            match decide(&observed, index, settings) {
                Decision::Serve(serving) => *serving,
                other => panic!("expected to serve, got {other:?}"),
            }
        };
        let mut index = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&daemonset));
        index.apply_agent_report(&watcher::Event::Apply(agent_report("n1", true)), hostlb_model::agent::AGENT);
        index.apply_agent_report(&watcher::Event::Apply(agent_report("n2", false)), hostlb_model::agent::AGENT);

        let to_agents = decide_in(&index, &agent_settings);
        assert!(to_agents.daemonset.is_none(), "n2's agent does not forward yet: the proxy pods stay");
        let to_pods = decide_in(&index, &settings());
        assert!(matches!(to_pods.plan, Some(PlanAction::Delete(_))), "the pods forward wherever the agents do");

        index.apply_agent_report(&watcher::Event::Apply(agent_report("n2", true)), hostlb_model::agent::AGENT);
        let to_agents = decide_in(&index, &agent_settings);
        assert!(matches!(to_agents.daemonset, Some(DaemonSetAction::Delete(_))), "both agents forward now");
        index.apply_proxy_pod(&watcher::Event::Delete(pods[1].clone()), Timestamp::now());
        let to_pods = decide_in(&index, &settings());
        assert!(to_pods.plan.is_none(), "n2's proxy pod is gone: the agents keep forwarding there");
    }

    fn served_by_agents(service: &Service, index: &Index) -> Serving {
        let mut settings = settings();
        settings.proxy.dataplane = Dataplane::Agent;
        let view = ServiceView::of(service);
        let observed =
            Observed { service: &view, daemonset: None, last_applied: None, plan: None, now: Timestamp::now() };
        match decide(&observed, index, &settings) {
            Decision::Serve(serving) => *serving,
            other => panic!("expected to serve, got {other:?}"),
        }
    }

    #[test]
    fn with_the_node_agents_a_service_says_why_the_agent_of_a_node_it_may_use_does_not_run() {
        let service = ServiceBuilder::new("web").build();
        let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
        let pods = [crate::fixtures::agent_pod("n1", "ImagePullBackOff")];
        let mut index = index_of(std::slice::from_ref(&service), &nodes, &pods, &[]);
        let agents = agent::desired_agent(&settings().proxy);
        index.agents.apply(&watcher::Event::Apply(agents.clone()), |agents| {
            Some((std::sync::Arc::new(agents.clone()), vec![]))
        });
        let failed =
            failed_create("f1", &agents, "Error creating: pods \"hostlb-agent-x\" is forbidden: exceeded quota: q");
        index.apply_creation_failure(&watcher::Event::Apply(failed));

        let serving = served_by_agents(&service, &index);
        let messages: Vec<(Reason, &str)> = serving.warnings.iter().map(|w| (w.reason, w.message.as_str())).collect();
        assert_eq!(
            messages,
            [
                (
                    Reason::ProxyPodFailing,
                    "node agent hostlb-system/hostlb-agent-n1 on n1: container agent: ImagePullBackOff (cannot pull)"
                ),
                (
                    Reason::ProxyPodsNotCreated,
                    "DaemonSet hostlb-system/hostlb-agent cannot create pods: exceeded quota: q"
                ),
            ]
        );
        assert!(served(&service, &index, None).warnings.is_empty(), "proxy pods need no agent");
    }

    #[test]
    fn with_the_node_agents_bad_tolerations_are_refused_and_a_priority_class_is_said_to_be_unused() {
        let tolerations = r#"[{"key":"example.com/dedicated","operator":"Sometimes"}]"#;
        let service = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, tolerations).build();
        let mut index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
        let serving = served_by_agents(&service, &index);
        assert_eq!(reasons(&serving.warnings), [Reason::InvalidOption]);
        assert!(serving.warnings[0].message.contains("item 0: operator \"Sometimes\" is neither Equal nor Exists"));
        assert!(serving.plan.is_none(), "the plan is left as it was");

        let classed = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "hostlb-proxy").build();
        index = index_of(std::slice::from_ref(&classed), &[NodeBuilder::new("n1").build()], &[], &[]);
        let serving = served_by_agents(&classed, &index);
        assert_eq!(reasons(&serving.warnings), [Reason::OptionIgnored]);
        assert!(serving.plan.is_some(), "served all the same");
    }

    fn served(service: &Service, index: &Index, daemonset: Option<&DaemonSet>) -> Serving {
        served_at(service, index, daemonset, Timestamp::now())
    }

    fn served_at(service: &Service, index: &Index, daemonset: Option<&DaemonSet>, now: Timestamp) -> Serving {
        let last_applied = daemonset.map(|d| Applied {
            generation: d.metadata.generation.unwrap_or_default(),
            config_hash: config_hash_of(d).unwrap_or_default().into(),
        });
        let view = ServiceView::of(service);
        let observed = Observed { service: &view, daemonset, last_applied: last_applied.as_ref(), plan: None, now };
        match decide(&observed, index, &settings()) {
            Decision::Serve(serving) => *serving,
            other => panic!("expected to serve, got {other:?}"),
        }
    }

    fn with_finalizer(mut service: Service) -> Service {
        service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        service
    }

    #[test]
    fn the_finalizer_of_an_older_version_is_removed_from_a_served_service() {
        let service = with_finalizer(ServiceBuilder::new("web").build());
        let serving = served(&service, &index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]), None);
        assert!(serving.remove_finalizer);
    }

    fn ips(addresses: &[&str]) -> Vec<Address> {
        addresses.iter().map(|a| Address::Ip(a.parse().unwrap())).collect()
    }

    fn published(mut service: Service, addresses: &[&str]) -> Service {
        let ingress = hostlb_model::service::ingress(&ips(addresses), Some(IpMode::Vip));
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
            ..Default::default()
        });
        service
    }

    fn reasons(warnings: &[Warning]) -> Vec<Reason> {
        warnings.iter().map(|w| w.reason).collect()
    }

    fn desired_for(service: &Service) -> DaemonSet {
        let lb = ServiceLb::from_service(service).unwrap();
        desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings().proxy)
    }

    #[test]
    fn a_new_service_gets_its_daemonset_created_and_no_finalizer() {
        let service = ServiceBuilder::new("web").build();
        let index =
            index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
        let serving = served(&service, &index, None);
        assert!(!serving.remove_finalizer);
        let Some(DaemonSetAction::Apply { object: daemonset, created, ports }) = serving.daemonset else {
            panic!("expected a DaemonSet to create, got {:?}", serving.daemonset)
        };
        assert!(created);
        assert_eq!(ports, "80/TCP");
        assert_eq!(daemonset.metadata.name, Some(names::daemonset_name("web", UID)));
        assert!(serving.publish.is_none(), "nothing to publish before a proxy pod is ready");
        assert!(serving.warnings.is_empty());
    }

    #[test]
    fn ready_proxy_pods_publish_their_nodes_and_an_unchanged_daemonset_is_left_alone() {
        let service = ServiceBuilder::new("web").build();
        let nodes =
            [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", false)];
        let existing = desired_for(&service);
        let index = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
        let serving = served(&service, &index, Some(&existing));
        assert!(serving.daemonset.is_none());
        assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])));

        let ready = serving.condition.clone().expect("a first condition");
        assert_eq!(
            (ready.ready, ready.reason, ready.message.as_str()),
            (true, "PartiallyServing", "1 of 2 eligible nodes serve")
        );

        let mut already = published(service, &["10.0.0.1"]);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
        already.status.as_mut().unwrap().conditions = Some(vec![condition::to_api(&ready, None, now)]);
        let again = served(&already, &index, Some(&existing));
        assert!(again.publish.is_none() && again.condition.is_none(), "nothing changed, nothing is written");
    }

    fn created_at(mut pod: Pod, at: Timestamp) -> Pod {
        pod.metadata.creation_timestamp = Some(Time(at));
        pod
    }

    #[test]
    fn proxies_that_are_starting_hold_back_additions_but_not_withdrawals() {
        let service = ServiceBuilder::new("web").build();
        let nodes =
            [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
        let now = Timestamp::now();
        let second = k8s_openapi::jiff::SignedDuration::from_secs(1);
        let existing = desired_for(&service);
        let decide_with = |service: &Service, pods: &[Pod]| {
            let index = index_of(std::slice::from_ref(service), &nodes, pods, std::slice::from_ref(&existing));
            served_at(service, &index, Some(&existing), now)
        };
        let ready_one = created_at(proxy_pod("p1", "n1", true), now - 3 * second);
        let starting = created_at(proxy_pod("p2", "n2", false), now - 2 * second);

        let held = decide_with(&service, &[ready_one.clone(), starting.clone()]);
        assert_eq!(held.hold, Some(Duration::from_secs(3)), "until the starting pod is 5 s old");
        assert!(held.publish.is_none() && held.condition.is_none());

        let slow = created_at(proxy_pod("p2", "n2", false), now - 6 * second);
        let waited = decide_with(&service, &[ready_one.clone(), slow]);
        assert_eq!((waited.hold, waited.publish), (None, Some(ips(&["10.0.0.1"]))), "a slow pod holds back no more");

        let both = decide_with(&service, &[ready_one.clone(), created_at(proxy_pod("p2", "n2", true), now)]);
        assert_eq!((both.hold, both.publish), (None, Some(ips(&["10.0.0.1", "10.0.0.2"]))), "all ready: one write");

        // n2 has no pod yet: the DaemonSet is older than the window, but its first pod is not.
        let first = created_at(proxy_pod("p1", "n1", true), now - 2 * second);
        let first_batch = decide_with(&service, std::slice::from_ref(&first));
        assert_eq!((first_batch.hold, first_batch.publish), (Some(Duration::from_secs(3)), None), "more to come");
        let lone = decide_with(&service, &[created_at(proxy_pod("p1", "n1", true), now - 6 * second)]);
        assert_eq!((lone.hold, lone.publish), (None, Some(ips(&["10.0.0.1"]))), "no pod came for n2 in 5 s");

        // n2's pod turned unready (it is not being replaced) while n3's is starting.
        let was_on_both = published(service, &["10.0.0.1", "10.0.0.2"]);
        let unready = created_at(proxy_pod("p2", "n2", false), now - 60 * second);
        let with_n3 = [nodes[0].clone(), nodes[1].clone(), NodeBuilder::new("n3").internal("10.0.0.3").build()];
        let pods = [ready_one, unready, created_at(proxy_pod("p3", "n3", false), now)];
        let index = index_of(std::slice::from_ref(&was_on_both), &with_n3, &pods, std::slice::from_ref(&existing));
        let withdrawn = served_at(&was_on_both, &index, Some(&existing), now);
        assert_eq!((withdrawn.hold, withdrawn.publish), (None, Some(ips(&["10.0.0.1"]))), "withdrawn at once");
    }

    #[test]
    fn a_published_node_stays_published_while_its_proxy_pod_is_replaced() {
        let service = published(ServiceBuilder::new("web").build(), &["10.0.0.1", "10.0.0.2"]);
        let nodes =
            [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
        let now = Timestamp::now();
        let existing = desired_for(&service);
        let ready_one = made_from(proxy_pod("p1", "n1", true), &existing);
        let mut index = index_of(
            std::slice::from_ref(&service),
            &nodes,
            &[ready_one.clone(), proxy_pod("old", "n2", true)],
            std::slice::from_ref(&existing),
        );
        let serving = served_at(&service, &index, Some(&existing), now);
        assert_eq!(serving.replace_pod.as_deref(), Some("hostlb-system/old"), "the out-of-date pod goes");

        let mut old = proxy_pod("old", "n2", true);
        old.metadata.deletion_timestamp = Some(Time(now));
        drop(index.apply_proxy_pod(&watcher::Event::Apply(old.clone()), now));
        let terminating = served_at(&service, &index, Some(&existing), now);
        assert_eq!((terminating.publish, terminating.replace_pod), (None, None), "n2 stays; one pod at a time");
        assert_eq!(terminating.finish_deleting, ["hostlb-system/old"], "a graceful deletion is finished at once");

        drop(index.apply_proxy_pod(&watcher::Event::Delete(old), now));
        let gone = served_at(&service, &index, Some(&existing), now + 2 * SECOND);
        assert_eq!((gone.publish, gone.replace_pod), (None, None), "n2 waits for its new pod");
        assert_eq!(gone.recheck, Some(Duration::from_secs(28)), "looked at again when the window ends");
        let never_came = served_at(&service, &index, Some(&existing), now + 31 * SECOND);
        assert_eq!(never_came.publish, Some(ips(&["10.0.0.1"])), "withdrawn when no pod came in time");

        let new = created_at(made_from(proxy_pod("new", "n2", false), &existing), now + SECOND);
        drop(index.apply_proxy_pod(&watcher::Event::Apply(new), now + SECOND));
        let starting = served_at(&service, &index, Some(&existing), now + 3 * SECOND);
        assert_eq!((starting.publish, starting.condition), (None, None), "still published, still Serving");
    }

    #[test]
    fn a_foreign_daemonset_with_our_name_is_refused_and_nothing_else_happens() {
        let service = ServiceBuilder::new("web").build();
        let mut foreign = desired_for(&service);
        foreign.metadata.labels = None;
        let index = index_of(
            std::slice::from_ref(&service),
            &[NodeBuilder::new("n1").build()],
            &[proxy_pod("p", "n1", true)],
            &[],
        );
        let serving = served(&service, &index, Some(&foreign));
        assert_eq!(reasons(&serving.warnings), vec![Reason::DaemonSetNameTaken]);
        assert!(serving.daemonset.is_none() && serving.publish.is_none());
    }

    #[test]
    fn an_invalid_service_keeps_publishing_the_nodes_its_running_proxies_can_serve_on() {
        let valid = ServiceBuilder::new("web").build();
        let service = published(
            ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{").build(),
            &["10.0.0.1", "10.0.0.2"],
        );
        let nodes = [
            NodeBuilder::new("n1").internal("10.0.0.1").build(),
            NodeBuilder::new("n2").internal("10.0.0.2").not_ready().build(),
        ];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
        let existing = desired_for(&valid);
        let index = index_of(&[], &nodes, &pods, std::slice::from_ref(&existing));
        let serving = served(&service, &index, Some(&existing));
        assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
        assert!(serving.daemonset.is_none(), "the running proxies are left as they were");
        assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])), "the dead node leaves the status");
    }

    #[test]
    fn invalid_options_are_warnings_and_change_nothing() {
        let service = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{").build();
        let serving = served(&service, &index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]), None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
        assert!(serving.warnings[0].message.contains(names::ANNOTATION_TOLERATIONS));
        assert!(serving.daemonset.is_none() && serving.publish.is_none());
    }

    #[test]
    fn no_eligible_node_port_conflicts_and_unschedulable_pods_are_warned() {
        let service = ServiceBuilder::new("web").label(names::POOL, "edge").build();
        let mut rival = ServiceBuilder::new("rival").uid("rival-uid").build();
        rival.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let mut stuck = proxy_pod("p", "n1", false);
        stuck.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
            type_: "PodScheduled".into(),
            status: "False".into(),
            reason: Some("Unschedulable".into()),
            message: Some("0/1 nodes are available".into()),
            ..Default::default()
        }]);
        let index = index_of(&[rival], &[NodeBuilder::new("n1").build()], &[stuck], &[]);
        let serving = served(&service, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::NoEligibleNode, Reason::ProxyPodUnschedulable]);

        let everywhere = ServiceBuilder::new("web").build();
        let serving = served(&everywhere, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::PortConflict, Reason::ProxyPodUnschedulable]);
        assert!(serving.warnings[0].message.contains("shop/rival"), "{:?}", serving.warnings);
        let Some(DaemonSetAction::Apply { object: daemonset, .. }) = serving.daemonset else {
            panic!("expected a DaemonSet")
        };
        let affinity = daemonset.spec.unwrap().template.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
        let term = &affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms[0];
        assert_eq!(term.match_fields.as_ref().unwrap()[0].values, Some(vec!["n1".to_string()]), "n1 is left out");
    }

    #[test]
    fn refused_ports_are_warned_and_left_out_while_the_others_are_served() {
        let service = ServiceBuilder::new("web").port("TCP", 22, 0).port("TCP", 443, 0).build();
        let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
        let serving = served(&service, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::PortRefused]);
        assert_eq!(
            serving.warnings[0].message,
            "spec.ports: port 22/TCP is refused: the node's own daemons listen there (--denied-ports); an admin can \
             allow it with --allowed-ports"
        );
        let Some(DaemonSetAction::Apply { ports, .. }) = serving.daemonset else { panic!("expected a DaemonSet") };
        assert_eq!(ports, "443/TCP");
    }

    #[test]
    fn a_node_whose_taint_the_proxies_do_not_tolerate_is_not_eligible_anywhere_in_the_decision() {
        let service = ServiceBuilder::new("web").build();
        let existing = desired_for(&service);
        let nodes = [
            NodeBuilder::new("n1").internal("10.0.0.1").build(),
            NodeBuilder::new("n2").internal("10.0.0.2").taint("dedicated", "NoSchedule").build(),
        ];
        let failed = failed_create("f1", &existing, "Error creating: pods \"x\" is forbidden: an hour ago");
        // A pod created just now: a podless eligible node would hold the status write for more.
        let mut new_pod = proxy_pod("p1", "n1", true);
        new_pod.metadata.creation_timestamp = Some(Time(Timestamp::now()));
        let mut index = index_of(std::slice::from_ref(&service), &nodes, &[new_pod], std::slice::from_ref(&existing));
        index.apply_creation_failure(&kube::runtime::watcher::Event::Apply(failed));
        let serving = served_at(&service, &index, Some(&existing), Timestamp::now());
        assert!(serving.hold.is_none(), "nothing waits for a pod the scheduler would not place");
        assert!(serving.warnings.is_empty(), "no old FailedCreate reported: {:?}", serving.warnings);
        assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])));
        let ready = serving.condition.expect("a condition");
        assert_eq!((ready.reason, ready.message.as_str()), ("Serving", "1 of 1 eligible nodes serve"));

        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
        let tainted_later = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
        let ready = served(&service, &tainted_later, Some(&existing)).condition.expect("a condition");
        assert_eq!(ready.message, "2 of 2 eligible nodes serve", "a NoSchedule taint leaves a running pod be");
    }

    #[test]
    fn a_service_whose_every_node_is_tainted_is_told_which_taints_keep_it_off() {
        let service = ServiceBuilder::new("web").build();
        let nodes = [NodeBuilder::new("n1").taint("dedicated", "NoExecute").build()];
        let index = index_of(std::slice::from_ref(&service), &nodes, &[], &[]);
        let serving = served(&service, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::NoEligibleNode]);
        assert!(serving.warnings[0].message.contains("n1 (dedicated:NoExecute)"), "{:?}", serving.warnings);
        let tolerated = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"dedicated","operator":"Exists"}]"#);
        let mut trusting = settings();
        trusting.tenants.toleration_keys = vec!["dedicated".into()];
        let view = ServiceView::of(&tolerated.build());
        let observed =
            Observed { service: &view, daemonset: None, last_applied: None, plan: None, now: Timestamp::now() };
        let Decision::Serve(serving) = decide(&observed, &index, &trusting) else { panic!("expected to serve") };
        assert!(serving.warnings.is_empty(), "{:?}", serving.warnings);
    }

    #[test]
    fn a_service_over_a_limit_is_warned_and_nothing_of_it_is_applied_nor_claimed() {
        let ranges: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let service = ServiceBuilder::new("web").source_ranges(&ranges).build();
        let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
        let serving = served(&service, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
        assert!(serving.warnings[0].message.contains("5000 source ranges"), "{:?}", serving.warnings);
        assert!(serving.warnings[0].message.contains("--max-source-ranges"), "{:?}", serving.warnings);
        assert!(serving.daemonset.is_none() && serving.publish.is_none());
        assert!(index.claims.values().next().is_none(), "it holds no port that another Service could want");
    }

    #[test]
    fn refused_ports_of_one_cause_are_one_warning() {
        let service =
            ServiceBuilder::new("web").port("UDP", 6081, 0).port("TCP", 4240, 0).port("TCP", 31000, 0).build();
        let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
        let messages: Vec<String> = served(&service, &index, None).warnings.into_iter().map(|w| w.message).collect();
        assert_eq!(
            messages,
            ["spec.ports: ports 6081/UDP, 4240/TCP are refused: the node's own daemons listen there \
                 (--denied-ports); an admin can allow them with --allowed-ports; spec.ports: port 31000/TCP is \
                 refused: kube-proxy listens there, in the NodePort range (--node-port-range 30000-32767); an admin \
                 can allow it with --allowed-ports"]
        );
    }

    #[test]
    fn a_service_left_without_ports_loses_its_daemonset_and_addresses() {
        let before = ServiceBuilder::new("web").port("TCP", 80, 0).build();
        let existing = desired_for(&before);
        let service = published(ServiceBuilder::new("web").port("TCP", 10250, 0).build(), &["10.0.0.1"]);
        let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
        let serving = served(&service, &index, Some(&existing));
        assert_eq!(reasons(&serving.warnings), vec![Reason::PortRefused]);
        assert!(matches!(serving.daemonset, Some(DaemonSetAction::Delete(_))));
        assert_eq!(serving.publish, Some(Vec::new()));
    }

    #[test]
    fn ip_mode_proxy_is_published_where_the_api_server_keeps_it_and_otherwise_reported_as_ignored() {
        let proxy =
            published(ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "Proxy").build(), &["10.0.0.1"]);
        let existing = desired_for(&proxy);
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
        let index = index_of(std::slice::from_ref(&proxy), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
        let serving = served(&proxy, &index, Some(&existing));
        assert_eq!(serving.ip_mode, Some(IpMode::Proxy));
        assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])), "VIP is published: rewrite as Proxy");

        let mut old_server = settings();
        old_server.server_has_ip_mode = false;
        let observed = Observed {
            service: &ServiceView::of(&proxy),
            daemonset: Some(&existing),
            last_applied: None,
            plan: None,
            now: Timestamp::now(),
        };
        let Decision::Serve(serving) = decide(&observed, &index, &old_server) else { panic!("expected to serve") };
        assert_eq!(serving.ip_mode, None);
        assert!(serving.publish.is_none());
        assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);

        let wrong = ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "proxy").build();
        let serving = served(&wrong, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
    }

    #[test]
    fn a_load_balancer_ip_is_served_without_and_said_to_be_ignored() {
        let index = index_of(&[], &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
        let mut service = ServiceBuilder::new("web").build();
        service.spec.as_mut().unwrap().load_balancer_ip = Some("192.0.2.10".into());
        let serving = served(&service, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);
        assert!(serving.warnings[0].message.starts_with("spec.loadBalancerIP 192.0.2.10 is not honoured"));
        assert!(serving.daemonset.is_some(), "the Service is served all the same");
        service.spec.as_mut().unwrap().load_balancer_ip = Some(String::new());
        assert!(served(&service, &index, None).warnings.is_empty(), "an empty field asks for nothing");
    }

    #[test]
    fn addresses_stored_without_ip_mode_are_not_rewritten_for_it() {
        let mut service = published(ServiceBuilder::new("web").build(), &["10.0.0.1"]);
        let ingress = &mut service.status.as_mut().unwrap().load_balancer.as_mut().unwrap().ingress;
        ingress.as_mut().unwrap().iter_mut().for_each(|entry| entry.ip_mode = None);
        let existing = desired_for(&service);
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
        let index = index_of(std::slice::from_ref(&service), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
        let serving = served(&service, &index, Some(&existing));
        assert_eq!((serving.publish, serving.ip_mode), (None, None), "the server drops ipMode: nothing to write");
        assert!(serving.warnings.is_empty());

        let proxy = ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "Proxy").build();
        let mut proxy = published(proxy, &["10.0.0.1"]);
        proxy.status = service.status.clone();
        let serving = served(&proxy, &index, Some(&existing));
        assert!(serving.publish.is_none());
        assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);
        assert!(serving.warnings[0].message.contains("LoadBalancerIPMode"), "{:?}", serving.warnings);
    }

    #[test]
    fn source_ranges_with_node_ports_warn_that_the_node_ports_stay_open() {
        let index = index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]);
        let open = ServiceBuilder::new("web").port("TCP", 80, 31080).source_ranges(&["10.0.0.0/8"]).build();
        let serving = served(&open, &index, None);
        assert_eq!(reasons(&serving.warnings), vec![Reason::NodePortsOpen]);
        assert!(serving.warnings[0].message.contains("NodePorts 31080/TCP"), "{:?}", serving.warnings);
        assert!(serving.warnings[0].message.contains("allocateLoadBalancerNodePorts: false"));
        let closed = ServiceBuilder::new("web").port("TCP", 80, 0).source_ranges(&["10.0.0.0/8"]).build();
        assert!(served(&closed, &index, None).warnings.is_empty());
        let unrestricted = ServiceBuilder::new("web").port("TCP", 80, 31080).build();
        assert!(served(&unrestricted, &index, None).warnings.is_empty());
    }

    #[test]
    fn a_changed_service_updates_its_daemonset() {
        let service = ServiceBuilder::new("web").port("TCP", 443, 0).build();
        let old = desired_for(&ServiceBuilder::new("web").port("TCP", 80, 0).build());
        let index = index_of(
            std::slice::from_ref(&service),
            &[NodeBuilder::new("n1").build()],
            &[],
            std::slice::from_ref(&old),
        );
        let Some(DaemonSetAction::Apply { created, ports, .. }) = served(&service, &index, Some(&old)).daemonset else {
            panic!("expected an update")
        };
        assert!(!created);
        assert_eq!(ports, "443/TCP");
    }

    #[test]
    fn hand_edits_and_unknown_history_are_applied_over_but_a_lagging_cache_is_not() {
        let desired = desired_for(&ServiceBuilder::new("web").build());
        let at = |generation: i64| {
            let mut daemonset = desired.clone();
            daemonset.metadata.generation = Some(generation);
            daemonset
        };
        let ours = Applied { generation: 3, config_hash: config_hash_of(&desired).unwrap().into() };
        assert!(needs_apply(None, &desired, None));
        assert!(!needs_apply(Some(&at(3)), &desired, Some(&ours)));
        assert!(needs_apply(Some(&at(4)), &desired, Some(&ours)), "edited by someone else");
        assert!(needs_apply(Some(&at(3)), &desired, None), "not applied by this replica yet");
        let mut stale = at(2);
        stale.metadata.annotations = None;
        assert!(!needs_apply(Some(&stale), &desired, Some(&ours)), "the cache lags behind our own write");
        let older = Applied { generation: 3, config_hash: "something-else".into() };
        assert!(needs_apply(Some(&stale), &desired, Some(&older)));
    }

    #[test]
    fn services_no_longer_served_are_cleaned_up_while_something_of_hostlb_is_left() {
        let proxies = index_of(&[], &[], &[], &[desired_for(&ServiceBuilder::new("web").build())]);
        let nothing = index_of(&[], &[], &[], &[]);
        let decide_for = |service: &Service, index: &Index| {
            let view = ServiceView::of(service);
            let observed =
                Observed { service: &view, daemonset: None, last_applied: None, plan: None, now: Timestamp::now() };
            decide(&observed, index, &settings())
        };
        let changed_type = published(ServiceBuilder::new("web").type_("ClusterIP").build(), &["10.0.0.1"]);
        assert!(matches!(decide_for(&changed_type, &proxies), Decision::CleanUp { clear_status: true }));
        let mut deleted = ServiceBuilder::new("web").build();
        deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
        let deleted = published(deleted, &["10.0.0.1"]);
        assert!(matches!(decide_for(&deleted, &proxies), Decision::CleanUp { clear_status: false }));
        let finalized_by_an_older_version = with_finalizer(ServiceBuilder::new("web").type_("ClusterIP").build());
        assert!(matches!(decide_for(&finalized_by_an_older_version, &nothing), Decision::CleanUp { .. }));

        let released = ServiceBuilder::new("web").type_("ClusterIP").build();
        assert!(matches!(decide_for(&released, &nothing), Decision::Ignore));
        let other_class = ServiceBuilder::new("web").class("metallb.io/metallb").build();
        assert!(matches!(decide_for(&other_class, &nothing), Decision::Ignore));
    }

    /// Each Service publishes its own two nodes however many others the index holds. It also
    /// prints the time per decision (`--nocapture`); `make bench` measures the controller as a
    /// whole.
    #[test]
    fn each_of_1000_services_is_decided_from_its_own_groups() {
        let services: Vec<Service> = (0..1000)
            .map(|i| {
                let mut service = ServiceBuilder::new(&format!("svc-{i}")).port("TCP", 1000 + i, 0).build();
                service.metadata.uid = Some(format!("uid-{i}"));
                service
            })
            .collect();
        let nodes: Vec<Node> =
            (0..10).map(|i| NodeBuilder::new(&format!("n{i}")).internal(&format!("10.0.0.{i}")).build()).collect();
        // Service i has ready proxy pods on nodes i % 10 and (i + 3) % 10, and a pod that is not
        // ready on (i + 6) % 10: each must publish exactly its own two nodes.
        let own_nodes = |i: i32| [i % 10, (i + 3) % 10];
        let pods: Vec<Pod> = (0..1000)
            .flat_map(|i| {
                let ready = own_nodes(i).map(|n| (n, true));
                ready.into_iter().chain([((i + 6) % 10, false)]).map(move |(n, ready)| {
                    let mut pod = proxy_pod(&format!("p-{i}-{n}"), &format!("n{n}"), ready);
                    pod.metadata.labels.as_mut().unwrap().insert(names::LABEL_SERVICE_UID.into(), format!("uid-{i}"));
                    pod
                })
            })
            .collect();
        let daemonsets: Vec<DaemonSet> = services.iter().map(desired_for).collect();
        let index = index_of(&services, &nodes, &pods, &daemonsets);
        let started = std::time::Instant::now();
        for (i, (service, daemonset)) in (0..).zip(services.iter().zip(&daemonsets)) {
            let serving = served(service, &index, Some(daemonset));
            let mut expected: Vec<String> = own_nodes(i).iter().map(|n| format!("10.0.0.{n}")).collect();
            expected.sort();
            let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
            assert_eq!(serving.publish, Some(ips(&expected)), "svc-{i}");
            assert!(serving.daemonset.is_none() && serving.warnings.is_empty(), "svc-{i}: {:?}", serving.warnings);
        }
        let per_reconcile = started.elapsed() / 1000;
        println!("decide for one Service among 1000 (10 nodes, 3000 proxy pods): {per_reconcile:?}");
    }

    #[test]
    fn a_proxy_daemonset_is_kept_without_its_pod_template_and_still_counts_as_applied() {
        use k8s_openapi::api::apps::v1::DaemonSetStatus;

        let settings = crate::fixtures::settings();
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").port("TCP", 80, 0).build()).unwrap();
        let desired = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings.proxy);
        let mut existing = desired.clone();
        existing.metadata.generation = Some(3);
        existing.status = Some(DaemonSetStatus { desired_number_scheduled: 2, ..DaemonSetStatus::default() });
        let mut index = Index::default();
        index.apply_daemonset(&kube::runtime::watcher::Event::Apply(existing.clone()));

        let kept = index.daemonsets.get(&key_of(&existing)).expect("indexed");
        assert!(kept.spec.is_none());
        assert_eq!((&kept.metadata, &kept.status), (&existing.metadata, &existing.status));
        let applied = Applied { generation: 3, config_hash: config_hash_of(&desired).unwrap().into() };
        assert!(!needs_apply(Some(kept), &desired, Some(&applied)));
        assert!(needs_apply(Some(kept), &desired, None), "a replica that has not applied it yet applies it once");
    }

    #[test]
    fn while_most_nodes_look_down_at_once_nothing_is_withdrawn_and_additions_go_on() {
        let service = ServiceBuilder::new("web").build();
        let existing = desired_for(&service);
        let down = |name: &str, ip: &str| NodeBuilder::new(name).internal(ip).not_ready().build();
        let nodes =
            [NodeBuilder::new("n1").internal("10.0.0.1").build(), down("n2", "10.0.0.2"), down("n3", "10.0.0.3")];
        let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true), proxy_pod("p3", "n3", true)];
        let all_three = published(service.clone(), &["10.0.0.1", "10.0.0.2", "10.0.0.3"]);
        let index = index_of(std::slice::from_ref(&all_three), &nodes, &pods, std::slice::from_ref(&existing));
        let serving = served(&all_three, &index, Some(&existing));
        assert!(serving.publish.is_none() && serving.condition.is_none(), "nothing withdrawn: {serving:?}");

        let none_yet = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
        assert_eq!(served(&service, &none_yet, Some(&existing)).publish, Some(ips(&["10.0.0.1"])), "adding goes on");

        let one_down = [nodes[0].clone(), nodes[1].clone()];
        let index = index_of(std::slice::from_ref(&all_three), &one_down, &pods, std::slice::from_ref(&existing));
        assert_eq!(
            served(&all_three, &index, Some(&existing)).publish,
            Some(ips(&["10.0.0.1"])),
            "one of two is no disruption"
        );
    }
}
