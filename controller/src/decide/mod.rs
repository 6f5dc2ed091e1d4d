//! What hostlb decides, pure: no client, no clock (the time is one of the inputs), no await.
//! `decide` is the one decision of a reconcile: from a Service (read once into a
//! `ServiceView`), what hostlb knows of the cluster (the index) and its settings, everything
//! the executor must do. `serve` is its pipeline: admission, placement and ports, the
//! forwarding (asked of the Service's data plane, `dataplane`), why forwarders do not run,
//! publication and the condition. The modules beside it are its pieces, and `leadership`
//! decides who leads from the Lease as read.

pub mod condition;
pub mod conflicts;
pub mod dataplane;
pub mod finalizer;
pub mod leadership;
pub mod limits;
pub mod orphans;
pub mod placement;
pub mod port_policy;
pub mod proxy_health;
pub mod publication;
pub mod roll;
pub mod service_warnings;
pub mod settings;
pub mod tenancy;

use std::time::Duration;

use hostlb_model::address::Address;
use hostlb_model::names;
use hostlb_model::options::{is_handled, FieldError, ServiceLb};
use hostlb_model::reason::{one_per_reason, Reason, Warning};
use hostlb_model::service::ServiceView;
use hostlb_model::taints::repelling_taint;
use k8s_openapi::api::core::v1::{Node, Service, Toleration};
use k8s_openapi::jiff::Timestamp;

use crate::state::{Index, ProxyPod};
use conflicts::held_by_other_services;
use dataplane::proxy_daemonset::tolerations;
use dataplane::{
    hand_over, made_by_hostlb_for, name_taken, Applied, DataPlaneKind, Forwarded, ForwardingAction, ForwardingChange,
    ForwardingObject,
};
use placement::Placement;
use port_policy::RefusedPort;
use proxy_health::{failing_pods, unschedulable, PROXY_POD};
use publication::{desired_addresses, Publication};
use service_warnings::{
    all_repelled, ip_mode, load_balancer_ip_ignored, long_outage, node_ports_open, refused_ports_warnings,
    status_contested,
};
pub use settings::Settings;

/// What the executor read for this Service besides the index.
pub struct Observed<'a> {
    pub service: &'a ServiceView,
    /// The object named for the Service's forwarding in the data plane in use, whoever made it.
    pub forwarding: Option<&'a ForwardingObject>,
    /// What hostlb itself last wrote to that object, if this replica remembers it.
    pub last_applied: Option<&'a Applied>,
    /// hostlb's own objects named for the Service's forwarding in the other data planes.
    pub previous: Vec<(DataPlaneKind, &'a ForwardingObject)>,
    pub now: Timestamp,
}

/// How long proxies that are starting hold back a status write that would only add to what is
/// published, so that proxies started together are published together, in one write, rather
/// than one node at a time. Withdrawals and problems are written at once.
pub const STARTING_PROXIES_WINDOW: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub enum Decision {
    /// Not served, and nothing of hostlb's is left on it.
    Ignore,
    /// No longer served (deleted, or its type or class changed): delete its forwarding, clear
    /// the status unless the Service itself is going away, and remove an older version's
    /// finalizer.
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
    /// What becomes of the Service's forwarding objects, of this data plane and of another one
    /// it is handed over from.
    pub forwarding: Vec<ForwardingChange>,
    /// The addresses to publish, when they (or their `ipMode`) differ from those published.
    pub publish: Option<Vec<Address>>,
    /// The `ipMode` to publish them with, where the API server keeps it.
    pub ip_mode: Option<hostlb_model::address::IpMode>,
    /// hostlb's condition, when the Service does not have it yet.
    pub condition: Option<condition::Ready>,
    pub warnings: Vec<Warning>,
    /// Proxies are starting: the status is left as it is for now, and looked at again after
    /// this long at the latest (their pods' changes bring the next look sooner).
    pub wait_for_starting: Option<Duration>,
    /// A proxy pod (`namespace/name`) to delete, so that the DaemonSet controller replaces it
    /// with a current one.
    pub replace_pod: Option<String>,
    /// Proxy pods someone else is deleting gracefully, to remove at once (`serve`).
    pub finish_deleting: Vec<String>,
    /// A node is kept published while its proxy is replaced: look again when its window ends.
    pub recheck: Option<Duration>,
}

pub fn decide(observed: &Observed<'_>, index: &Index, settings: &Settings) -> Decision {
    let service = observed.service;
    let deleting = service.deleting;
    if !settings.serves(service) || deleting {
        let key = forwarding_key(service, settings);
        let has_forwarding =
            DataPlaneKind::ALL.into_iter().any(|kind| kind.implementation().indexed(index, &key).is_some());
        return if settings.must_release(service, has_forwarding) {
            Decision::CleanUp { clear_status: !deleting && service.carries_status() }
        } else {
            Decision::Ignore
        };
    }
    Decision::Serve(Box::new(serve(observed, index, settings)))
}

/// The index's key (`namespace/name`) of the objects that carry the Service's forwarding, of
/// every data plane.
pub fn forwarding_key(service: &ServiceView, settings: &Settings) -> String {
    format!("{}/{}", settings.forwarding.namespace, names::forwarding_name(&service.name, &service.uid))
}

fn serve(observed: &Observed<'_>, index: &Index, settings: &Settings) -> Serving {
    let service = observed.service;
    let plane = settings.forwarding.data_plane();
    let mut serving = Serving { remove_finalizer: settings.holds(service), ..Serving::default() };
    let admission = service.parsed.options.clone().and_then(|lb| admit(lb, settings));
    let valid = admission.is_ok();
    let (placement, families, address_options, tolerations) = match admission {
        Ok((lb, refused)) => {
            serving.warnings.extend(refused_ports_warnings(refused));
            let placement = decide_forwarding(&mut serving, observed, &lb, index, settings);
            (placement, lb.families, lb.addresses, tolerations(&lb.extra_tolerations))
        }
        Err(errors) => {
            serving.warnings = errors
                .into_iter()
                .map(|e| Warning::new(Reason::InvalidOption, format!("{e}; the proxies are left as they were")))
                .collect();
            // The proxies that run go on serving, so their nodes stay published while they can.
            let (families, addresses) = (service.parsed.declared_families.clone(), service.parsed.addresses.clone());
            (Some(Placement::anywhere()), families, addresses, tolerations(&[]))
        }
    };

    let uid = &service.uid;
    let forwarders: Vec<&ProxyPod> = index.proxy_pods_of(uid).collect();
    // A pod deleted gracefully (an eviction, `kubectl delete pod`) claims its host ports in the
    // scheduler's view until its kubelet has torn it down, and its replacement waits for that:
    // removed at once, the replacement is placed while the old pod still forwards.
    serving.finish_deleting = forwarders.iter().filter(|pod| pod.deleting).map(|pod| pod.key.clone()).collect();
    serving.warnings.extend(unschedulable(PROXY_POD, &forwarders));
    serving.warnings.extend(failing_pods(PROXY_POD, &forwarders));
    let schedulable =
        placement.as_ref().map_or_else(Vec::new, |p| schedulable_nodes(p, &tolerations, &forwarders, index));
    let ours = observed.forwarding.filter(|existing| made_by_hostlb_for(*existing, uid));
    serving.warnings.extend(plane.not_running(ours, &forwarders, &schedulable, index));
    if let Some(placement) = placement.as_ref().filter(|_| valid && schedulable.is_empty()) {
        serving.warnings.extend(all_repelled(placement, &tolerations, index));
    }
    let policy = address_options.policy(&settings.addresses);
    let serving_nodes: Vec<&Node> = schedulable.iter().copied().filter(|node| index.serves(node)).collect();
    let eligible_nodes = serving_nodes.len();
    let partly_held = placement.as_ref().is_some_and(|placement| !placement.excluded_nodes.is_empty());
    let starting = placement.as_ref().and_then(|_| {
        let created = serving.forwarding.iter().any(|change| {
            std::ptr::eq(change.kind, plane.kind())
                && matches!(change.action, ForwardingAction::Apply { created: true, .. })
        });
        let forwarding_since = plane.creating_since(observed.forwarding, created, observed.now);
        let podless = serving_nodes.iter().any(|node| !has_pod(&forwarders, node));
        // The DaemonSet controller creates pods in growing batches, the first of one pod: while
        // nodes wait for theirs, the newest pod tells that it is still at work.
        let newest_pod = forwarders.iter().filter_map(|pod| pod.created).max();
        starting_until(&forwarders, forwarding_since.max(newest_pod).filter(|_| podless), observed.now)
    });
    let replacements = placement.as_ref().map(|placement| {
        let nodes = roll::eligible_node_names(index, placement);
        roll::replacements(&forwarders, nodes, |node| index.departed(uid, node), observed.now)
    });
    let replacements = replacements.unwrap_or_default();
    serving.recheck = replacements.next_deadline.map(|deadline| until(deadline, observed.now));
    let publication = match placement {
        Some(placement) => desired_addresses(
            service,
            forwarders,
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
    let adds_only = service.published.addresses.iter().all(|address| publication.addresses.contains(address));
    if !adds_only {
        serving.warnings.extend(long_outage(index, settings));
    }
    serving.ip_mode = ip_mode(service, settings, &mut serving.warnings);
    serving.warnings.extend(load_balancer_ip_ignored(service));
    serving.warnings.extend(plane.unused_option(service));
    let contested = status_contested(service, settings);
    let leave_status = contested.is_some();
    serving.warnings.extend(contested);
    serving.warnings = one_per_reason(std::mem::take(&mut serving.warnings));
    let findings = condition::Findings {
        valid,
        eligible_nodes,
        serving_nodes: publication.serving_nodes,
        partly_held: partly_held || serving.warnings.iter().any(|w| w.reason == Reason::PortRefused),
        warnings: &serving.warnings,
    };
    let ready = condition::ready(service, &findings);
    if let Some(deadline) = starting.filter(|_| adds_only && serving.warnings.is_empty()) {
        serving.wait_for_starting = Some(until(deadline, observed.now));
        return serving;
    }
    // Most nodes failing at once, or nodes failing just after the control plane was away, is
    // more likely the control plane's blindness: nothing is withdrawn meanwhile; the end of the
    // pause and the nodes' changes bring the next look.
    if index.withdrawals_paused() && !adds_only || leave_status {
        return serving;
    }
    serving.condition = condition::differs(service, &ready).then_some(ready);
    if service.needs_update(&publication.addresses, serving.ip_mode) {
        serving.publish = Some(publication.addresses);
    }
    serving
}

/// The forwarding of a valid Service: its data plane's object, the handover from any other,
/// and the nodes it may be published on; `None` when it has no port left to serve.
fn decide_forwarding(
    serving: &mut Serving,
    observed: &Observed<'_>,
    lb: &ServiceLb,
    index: &Index,
    settings: &Settings,
) -> Option<Placement> {
    let plane = settings.forwarding.data_plane();
    let ours = observed.forwarding.filter(|existing| made_by_hostlb_for(*existing, &lb.uid));
    if lb.ports.is_empty() {
        let previous = observed.previous.iter().filter(|(_, object)| made_by_hostlb_for(*object, &lb.uid));
        let every_plane =
            ours.map(|object| (settings.forwarding.dataplane, object)).into_iter().chain(previous.copied());
        let delete = |(kind, object): (DataPlaneKind, &ForwardingObject)| ForwardingChange {
            kind: kind.implementation().kind(),
            action: ForwardingAction::Delete(object.clone()),
        };
        serving.forwarding.extend(every_plane.map(delete));
        return None;
    }
    serving.warnings.extend(node_ports_open(observed.service, lb));
    let mut placement = Placement::for_service(lb, index.enablelb_in_use());
    if !index.nodes.values().any(|node| placement.admits(node)) {
        let nodes: Vec<&Node> = index.nodes.values().map(AsRef::as_ref).collect();
        serving.warnings.push(Warning::new(Reason::NoEligibleNode, placement.explain_empty(lb, &nodes)));
    }
    let claimed = held_by_other_services(lb, &placement, index);
    serving.warnings.extend(claimed.messages.into_iter().map(|m| Warning::new(Reason::PortConflict, m)));
    placement.excluded_nodes = claimed.nodes;

    let current = settings.forwarding.dataplane;
    let handovers =
        observed.previous.iter().filter_map(|(previous, object)| hand_over(current, *previous, object, &lb.uid, index));
    serving.forwarding.extend(handovers);
    if let Some(taken) = observed.forwarding.filter(|_| ours.is_none()) {
        serving.warnings.push(name_taken(taken));
        return Some(placement);
    }
    let forwarded = Forwarded {
        lb,
        placement: &placement,
        existing: ours,
        last_applied: observed.last_applied,
        index,
        settings: &settings.forwarding,
        now: observed.now,
    };
    let forwarding = plane.forward(&forwarded);
    serving.forwarding.extend(forwarding.apply);
    serving.replace_pod = forwarding.replace_pod;
    Some(placement)
}

fn until(deadline: Timestamp, now: Timestamp) -> Duration {
    let millis = deadline.as_millisecond().saturating_sub(now.as_millisecond());
    Duration::from_millis(u64::try_from(millis).unwrap_or_default())
}

/// The nodes the proxies may run on as the scheduler sees them, for every count of eligible
/// nodes in a decision: those the placement admits and that have no taint the proxies do not
/// tolerate, or that run a proxy pod already (a NoSchedule taint set later leaves it running).
fn schedulable_nodes<'a>(
    placement: &Placement,
    tolerations: &[Toleration],
    forwarders: &[&ProxyPod],
    index: &'a Index,
) -> Vec<&'a Node> {
    let nodes = index.nodes.values().map(AsRef::as_ref).filter(|node| placement.admits(node));
    nodes.filter(|node| repelling_taint(node, tolerations).is_none() || has_pod(forwarders, node)).collect()
}

fn has_pod(pods: &[&ProxyPod], node: &Node) -> bool {
    pods.iter().any(|pod| pod.node.is_some() && pod.node.as_deref() == node.metadata.name.as_deref())
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
    refusals.extend(settings.tenants.refusals(&lb, &settings.forwarding.default_priority_class));
    refusals.extend(settings.forwarding.data_plane().refusals(&lb));
    if !refusals.is_empty() {
        return Err(refusals);
    }
    Ok(settings.ports.admit(lb))
}

#[cfg(test)]
mod tests;
