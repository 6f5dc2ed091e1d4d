//! The Warnings about what a Service asks that hostlb serves otherwise than asked, or not at
//! all, whatever the data plane: refused ports, open NodePorts, `loadBalancerIP`, `ipMode`,
//! nodes that all repel the Service, and a long outage of most nodes. Pure.

use hostlb_model::address::IpMode;
use hostlb_model::names;
use hostlb_model::options::ServiceLb;
use hostlb_model::reason::{listed, Reason, Warning};
use hostlb_model::service::ServiceView;
use hostlb_model::taints::{describe_taint, repelling_taint};
use k8s_openapi::api::core::v1::Toleration;
use kube::ResourceExt;

use crate::decide::placement::Placement;
use crate::decide::port_policy::RefusedPort;
use crate::decide::settings::Settings;
use crate::state::Index;

/// When every node the placement admits has a taint the proxies do not tolerate, a Warning
/// naming the nodes and their taints.
pub fn all_repelled(placement: &Placement, tolerations: &[Toleration], index: &Index) -> Option<Warning> {
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

/// One Warning per reason the ports are refused for, naming the ports.
pub fn refused_ports_warnings(refused: Vec<RefusedPort>) -> Vec<Warning> {
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
pub fn node_ports_open(service: &ServiceView, lb: &ServiceLb) -> Option<Warning> {
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
pub fn load_balancer_ip_ignored(service: &ServiceView) -> Option<Warning> {
    let asked = service.load_balancer_ip.as_ref()?;
    let message = format!(
        "spec.loadBalancerIP {asked} is not honoured: hostlb publishes the addresses of the nodes that serve \
         the Service; to publish fewer, choose them with a pool ({}) or {}",
        names::POOL,
        names::ANNOTATION_MAX_NODES
    );
    Some(Warning::new(Reason::OptionIgnored, message))
}

/// The Service's `ipMode` (VIP unless it asks for Proxy) where the API server keeps the field.
/// Its version says whether it may; what it stored says whether it does: a server that keeps
/// `ipMode` fills in VIP on every address written without one, so addresses without it were
/// stored by a server that drops the field (1.30 and 1.31 with the LoadBalancerIPMode gate
/// off), and writing it again would only be dropped again, on every reconcile.
pub fn ip_mode(service: &ServiceView, settings: &Settings, warnings: &mut Vec<Warning>) -> Option<IpMode> {
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

/// When most nodes have looked down for longer than withdrawals may pause (`Index::bound_pause`)
/// and the Service loses addresses, a Warning saying why.
pub fn long_outage(index: &Index, settings: &Settings) -> Option<Warning> {
    let (down, nodes) = index.pause_outlasted()?;
    let message = format!(
        "{down} of {nodes} nodes have looked down for over {} s (--withdrawal-pause-limit-seconds): more than a \
         control plane's blindness, so those still down leave the status",
        settings.withdrawal_pause_limit.as_secs()
    );
    Some(Warning::new(Reason::LongOutage, message))
}

/// When another controller writes the status of a Service that has no class, a Warning naming
/// it: two controllers that both serve unclassed Services would overwrite each other's addresses
/// for ever, so hostlb leaves the status to the other one. A Service with hostlb's class is
/// hostlb's whoever else writes it.
pub fn status_contested(service: &ServiceView, settings: &Settings) -> Option<Warning> {
    if service.load_balancer_class.is_some() || service.other_status_writers.is_empty() {
        return None;
    }
    let message = format!(
        "status.loadBalancer is also written by {}: another load balancer controller serves this Service, which has \
         no class; hostlb leaves its status alone. Give the Service spec.loadBalancerClass {} for hostlb, or the other \
         controller's class (or run hostlb with --serve-unclassed=false); a field manager that no longer writes is \
         forgotten once the Service's managed fields are reset",
        listed(service.other_status_writers.iter().cloned()),
        settings.load_balancer_class,
    );
    Some(Warning::new(Reason::StatusContested, message))
}
