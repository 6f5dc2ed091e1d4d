//! The Service's fields and labels, each read on its own, with what cannot be used of them
//! pushed onto `errors`; and what makes a valid label value or DNS subdomain.

use std::collections::BTreeMap;
use std::net::IpAddr;

use hostlb_contract::{Cidr, Family, NamedPort, PortMap, Protocol};

use crate::names;

use super::field_error::error;
use super::FieldError;

pub(super) fn cluster_ips(
    list: &Option<Vec<String>>,
    single: &Option<String>,
    errors: &mut Vec<FieldError>,
) -> Vec<IpAddr> {
    let texts: Vec<&String> = match list {
        Some(list) if !list.is_empty() => list.iter().collect(),
        _ => single.iter().collect(),
    };
    let mut addresses = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        match text.parse::<IpAddr>() {
            Ok(address) => addresses.push(address),
            Err(_) => errors.push(error(
                format!("spec.clusterIPs[{index}]"),
                format!("{text:?} is not an IP address (headless Services cannot be load balanced)"),
            )),
        }
    }
    if texts.is_empty() {
        errors.push(error("spec.clusterIPs", "no ClusterIP is allocated"));
    }
    addresses
}

pub(super) fn families(
    declared: &Option<Vec<String>>,
    cluster_ips: &[IpAddr],
    errors: &mut Vec<FieldError>,
) -> Vec<Family> {
    let mut families = Vec::new();
    match declared {
        Some(declared) if !declared.is_empty() => {
            for (index, family) in declared.iter().enumerate() {
                match Family::from_name(family) {
                    Some(family) => families.push(family),
                    None => {
                        errors.push(error(format!("spec.ipFamilies[{index}]"), format!("unknown IP family {family:?}")))
                    }
                }
            }
        }
        // Servers from before dual-stack do not fill ipFamilies; the ClusterIPs say it as well.
        _ => families.extend(cluster_ips.iter().map(Family::of)),
    }
    let mut seen = Vec::new();
    families.retain(|family| {
        let first = !seen.contains(family);
        seen.push(*family);
        first
    });
    families
}

/// The listened ports, each to the same port of the ClusterIP, and the names of the named ones.
pub(super) fn ports(
    service_ports: &[k8s_openapi::api::core::v1::ServicePort],
    errors: &mut Vec<FieldError>,
) -> (Vec<PortMap>, Vec<NamedPort>) {
    if service_ports.is_empty() {
        errors.push(error("spec.ports", "a LoadBalancer Service needs at least one port"));
    }
    let (mut ports, mut names) = (Vec::new(), Vec::new());
    for (index, service_port) in service_ports.iter().enumerate() {
        let protocol_name = service_port.protocol.as_deref().unwrap_or("TCP");
        let Some(protocol) = Protocol::from_api_name(protocol_name) else {
            errors.push(error(
                format!("spec.ports[{index}].protocol"),
                format!("unsupported protocol {protocol_name:?}"),
            ));
            continue;
        };
        let Some(port) = u16::try_from(service_port.port).ok().filter(|p| *p > 0) else {
            errors.push(error(
                format!("spec.ports[{index}].port"),
                format!("{} is not a port number", service_port.port),
            ));
            continue;
        };
        if let Some(name) = service_port.name.as_deref().filter(|name| !name.is_empty()) {
            match NamedPort::parse(&format!("{}:{port}:{name}", protocol.arg_name())) {
                Ok(named) => names.push(named),
                Err(message) => errors.push(error(format!("spec.ports[{index}].name"), message)),
            }
        }
        ports.push(PortMap { protocol, listen: port, target: port });
    }
    (ports, names)
}

pub(super) fn source_ranges(
    spec_ranges: &Option<Vec<String>>,
    annotations: &BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Vec<Cidr> {
    let (field, texts): (String, Vec<String>) = match spec_ranges {
        Some(ranges) if !ranges.is_empty() => ("spec.loadBalancerSourceRanges".into(), ranges.clone()),
        _ => match annotations.get(names::ANNOTATION_LEGACY_SOURCE_RANGES) {
            Some(list) => (
                format!("metadata.annotations[{}]", names::ANNOTATION_LEGACY_SOURCE_RANGES),
                list.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect(),
            ),
            None => return Vec::new(),
        },
    };
    let mut ranges = Vec::new();
    for (index, text) in texts.iter().enumerate() {
        match Cidr::parse(text) {
            Ok(cidr) => ranges.push(cidr),
            Err(message) => errors.push(error(format!("{field}[{index}]"), format!("{text:?}: {message}"))),
        }
    }
    ranges.sort();
    ranges.dedup();
    ranges
}

pub(super) fn pool(
    labels: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    let from_label = labels.get(names::POOL);
    let from_annotation = annotations.get(names::POOL);
    let (field, value) = match (from_label, from_annotation) {
        (Some(label), Some(annotation)) if label != annotation => {
            errors.push(error(
                format!("metadata.labels[{}]", names::POOL),
                format!("{label:?} disagrees with the annotation of the same name ({annotation:?})"),
            ));
            return None;
        }
        (Some(label), _) => (format!("metadata.labels[{}]", names::POOL), label),
        (None, Some(annotation)) => (format!("metadata.annotations[{}]", names::POOL), annotation),
        // k3s ServiceLB's label, so that Services moved over keep their pool.
        (None, None) => (format!("metadata.labels[{}]", names::K3S_POOL), labels.get(names::K3S_POOL)?),
    };
    if is_label_value(value) && !value.is_empty() {
        Some(value.clone())
    } else {
        errors.push(error(field, format!("{value:?} is not a valid label value")));
        None
    }
}

pub(crate) fn is_label_value(value: &str) -> bool {
    let alnum = |c: char| c.is_ascii_alphanumeric();
    value.len() <= 63
        && value.chars().all(|c| alnum(c) || matches!(c, '-' | '_' | '.'))
        && value.chars().next().is_none_or(alnum)
        && value.chars().last().is_none_or(alnum)
}

pub(super) fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}
