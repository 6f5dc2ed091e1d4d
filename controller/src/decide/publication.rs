//! The addresses a Service is published on: those of nodes whose proxy pod is Ready.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostlb_contract::Family;
use hostlb_model::address::{Address, AddressKind, AddressPolicy, AddressType, NodeAskedAddresses};
use hostlb_model::names;
use hostlb_model::readiness::node_can_serve;
use hostlb_model::service::ServiceView;
use k8s_openapi::api::core::v1::Node;

use crate::decide::placement::Placement;
use crate::state::ProxyPod;

/// The published addresses and what stood in the way of some.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Publication {
    pub addresses: Vec<Address>,
    /// Nodes whose proxy pod is Ready and that may serve, before any cap.
    pub serving_nodes: usize,
    /// Node annotations that could not be used, each naming the node and the field.
    pub problems: Vec<String>,
}

/// A node's addresses of the Service's families and of the policy's kinds. An IP family named
/// by the node's `hostlb.io/public-address` annotation is published as the annotation says
/// (a VM behind 1:1 NAT has no ExternalIP); other families per the address type. The hostname
/// is the node's `hostlb.io/public-hostname` annotation, else its `Hostname` address.
fn node_addresses(
    node: &Node,
    policy: &AddressPolicy,
    families: &[Family],
    problems: &mut Vec<String>,
) -> Vec<Address> {
    let reported = node.status.as_ref().and_then(|s| s.addresses.as_ref()).into_iter().flatten();
    let annotations = node.metadata.annotations.as_ref();
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let name = node.metadata.name.as_deref().unwrap_or_default();
    let mut chosen = Vec::new();
    if policy.kinds.contains(&AddressKind::Ip) {
        let mut by_kind: BTreeMap<(&str, Family), Vec<IpAddr>> = BTreeMap::new();
        for address in reported.clone() {
            if let Ok(ip) = address.address.parse::<IpAddr>() {
                by_kind.entry((address.type_.as_str(), Family::of(&ip))).or_default().push(ip);
            }
        }
        let overrides = annotation(names::NODE_ANNOTATION_PUBLIC_ADDRESS)
            .map(|text| {
                public_addresses(text, &policy.node_asked)
                    .map_err(|why| node_problem(name, names::NODE_ANNOTATION_PUBLIC_ADDRESS, text, &why))
            })
            .transpose()
            .unwrap_or_else(|problem| {
                problems.push(problem);
                None
            })
            .unwrap_or_default();
        for family in families {
            if let Some(ip) = overrides.get(family) {
                chosen.push(Address::Ip(*ip));
                continue;
            }
            let of = |kind: &str| by_kind.get(&(kind, *family)).cloned().unwrap_or_default();
            let ips = match policy.address_type {
                AddressType::ExternalIp => of("ExternalIP"),
                AddressType::InternalIp => of("InternalIP"),
                AddressType::Auto => {
                    Some(of("ExternalIP")).filter(|ips| !ips.is_empty()).unwrap_or_else(|| of("InternalIP"))
                }
            };
            chosen.extend(ips.into_iter().map(Address::Ip));
        }
    }
    if policy.kinds.contains(&AddressKind::Hostname) {
        let own = reported.filter(|a| a.type_ == "Hostname").map(|a| a.address.as_str()).next();
        let hostname = match annotation(names::NODE_ANNOTATION_PUBLIC_HOSTNAME) {
            Some(text) if is_dns_name(text) && policy.node_asked.allows_hostname(text) => Some(text),
            Some(text) => {
                let why = if is_dns_name(text) { NOT_ALLOWED_HOSTNAME } else { "is not a DNS name" };
                problems.push(node_problem(name, names::NODE_ANNOTATION_PUBLIC_HOSTNAME, text, why));
                own
            }
            None => own,
        };
        chosen.extend(hostname.filter(|h| is_dns_name(h)).map(|h| Address::Hostname(h.to_string())));
    }
    chosen
}

fn node_problem(node: &str, key: &str, value: &str, why: &str) -> String {
    format!("node {node}: metadata.annotations[{key}]: {value:?} {why}; the node's own is published")
}

/// Why a node's hostname is not published: its kubelet may write the annotation, so the admin
/// names the domains that count.
const NOT_ALLOWED_HOSTNAME: &str =
    "is in none of the domains the admin lets nodes ask for (--node-public-hostname-domains)";

/// `ADDRESS[,ADDRESS]`, at most one per family, each in a range the admin lets nodes ask for.
fn public_addresses(text: &str, allowed: &NodeAskedAddresses) -> Result<BTreeMap<Family, IpAddr>, String> {
    let mut addresses = BTreeMap::new();
    for part in text.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        let ip: IpAddr = part.parse().map_err(|_| format!("has {part:?}, which is not an IP address"))?;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() {
            return Err(format!("has {ip}, which no client can reach"));
        }
        if !allowed.allows_address(&ip) {
            return Err(format!(
                "has {ip}, which is in none of the ranges the admin lets nodes ask for (--node-public-address-ranges)"
            ));
        }
        if addresses.insert(Family::of(&ip), ip).is_some() {
            return Err("names two addresses of one family".into());
        }
    }
    if addresses.is_empty() {
        return Err("names no address".into());
    }
    Ok(addresses)
}

/// A fully qualified or single-label DNS name, as ingress hostnames must be.
fn is_dns_name(text: &str) -> bool {
    let label = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    text.len() <= 253 && text.split('.').all(label)
}

/// What to publish: the addresses of nodes whose proxy pod is Ready (or, already published,
/// that are `replacing` theirs), that can serve and that the placement admits; at most
/// `max_nodes` of them, keeping those already published while they can serve and choosing others by a hash of the Service and the node, so that DNS does
/// not churn and Services spread over the nodes. IPs come first, in the order of the Service's
/// families, each family sorted; then hostnames, sorted. Equal inputs in any order give equal
/// results, so only a real change is written.
pub fn desired_addresses<'a>(
    service: &ServiceView,
    proxy_pods: impl IntoIterator<Item = &'a ProxyPod>,
    node: impl Fn(&str) -> Option<&'a Node>,
    replacing: &BTreeSet<String>,
    placement: &Placement,
    policy: &AddressPolicy,
    families: &[Family],
) -> Publication {
    let mut serving: BTreeMap<&str, &Node> = BTreeMap::new();
    for pod in proxy_pods.into_iter().filter(|pod| pod.ready) {
        let Some((name, node)) = pod.node.as_deref().and_then(|n| Some((n, node(n)?))) else {
            continue;
        };
        if node_can_serve(node) && placement.admits(node) {
            serving.insert(name, node);
        }
    }
    let mut problems = Vec::new();
    let published: BTreeSet<&Address> = service.published.addresses.iter().collect();
    for name in replacing {
        let Some(node) = node(name).filter(|node| node_can_serve(node) && placement.admits(node)) else { continue };
        let addresses = node_addresses(node, policy, families, &mut Vec::new());
        if addresses.iter().any(|address| published.contains(address)) {
            serving.insert(name, node);
        }
    }
    let serving_nodes = serving.len();
    let mut candidates: Vec<(&str, Vec<Address>)> =
        serving.into_iter().map(|(name, node)| (name, node_addresses(node, policy, families, &mut problems))).collect();
    if let Some(max) = policy.max_nodes.filter(|max| candidates.len() > *max) {
        let uid = &service.uid;
        candidates.sort_by_cached_key(|(name, addresses)| {
            let already = addresses.iter().any(|a| published.contains(a));
            (!already, names::hex_digest(format!("{uid}/{name}").as_bytes()))
        });
        candidates.truncate(max);
    }
    let family_rank = |ip: &IpAddr| families.iter().position(|f| *f == Family::of(ip)).unwrap_or(families.len());
    let mut addresses: Vec<Address> = candidates.into_iter().flat_map(|(_, addresses)| addresses).collect();
    addresses.sort_by(|a, b| {
        let key = |address: &Address| match address {
            Address::Ip(ip) => (0, family_rank(ip)),
            Address::Hostname(_) => (1, 0),
        };
        key(a).cmp(&key(b)).then_with(|| a.cmp(b))
    });
    addresses.dedup();
    Publication { addresses, serving_nodes, problems }
}

#[cfg(test)]
#[path = "publication_tests.rs"]
mod tests;
