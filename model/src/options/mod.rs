//! What a LoadBalancer Service asks of hostlb, checked field by field in one pass: every later
//! step works on a `ServiceLb` and so never sees an invalid option.
//!
//! The fields are read in `fields`, the address options in `addresses`; what cannot be
//! honoured is a `FieldError` (`field_error`).

mod addresses;
mod field_error;
mod fields;

pub use addresses::AddressOptions;
pub use field_error::{annotation_error, FieldError};
pub(crate) use fields::is_label_value;

use std::collections::BTreeMap;
use std::net::IpAddr;

use hostlb_contract::{Cidr, Family, NamedPort, PortMap};
use k8s_openapi::api::core::v1::{Service, ServiceSpec, Toleration};

use crate::address::IpMode;
use crate::names;
use addresses::{address_options, requested_ip_mode};
use field_error::{error, one_per_list};
use fields::{cluster_ips, families, is_dns_subdomain, pool, ports, source_ranges};

/// Whether an install of this class is responsible for the Service at all. Services without
/// a class go to the install that serves unclassed ones.
pub fn is_handled(service: &Service, load_balancer_class: &str, serve_unclassed: bool) -> bool {
    let Some(spec) = &service.spec else { return false };
    let is_load_balancer = spec.type_.as_deref() == Some("LoadBalancer");
    handled(is_load_balancer, spec.load_balancer_class.as_deref(), load_balancer_class, serve_unclassed)
}

pub(crate) fn handled(is_load_balancer: bool, class: Option<&str>, install_class: &str, serve_unclassed: bool) -> bool {
    is_load_balancer && class.map_or(serve_unclassed, |class| class == install_class)
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// `externalTrafficPolicy: Cluster`: the Service's ClusterIPs, one per family.
    ClusterIps(Vec<IpAddr>),
    /// `externalTrafficPolicy: Local`: the Service's ready endpoints on the proxy pod's own
    /// node, found by the endpoint follower through the names of the Service ports. The health
    /// check port tells the proxy pod whether the node has one.
    NodeLocal { health_check_node_port: u16 },
}

/// A LoadBalancer Service as hostlb serves it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceLb {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub families: Vec<Family>,
    pub ports: Vec<PortMap>,
    /// The Service port behind each listened port that has a name: endpoints are found by it.
    pub port_names: Vec<NamedPort>,
    pub destination: Destination,
    pub source_ranges: Vec<Cidr>,
    pub pool: Option<String>,
    pub extra_tolerations: Vec<Toleration>,
    pub priority_class: Option<String>,
    pub ip_mode: Option<IpMode>,
    pub addresses: AddressOptions,
    /// When the Service was created: of two Services on one host port, the older keeps it.
    pub created: Option<k8s_openapi::jiff::Timestamp>,
}

impl ServiceLb {
    /// Orders claims on a host port: the older Service first, the UID breaking ties. A
    /// Service without a creation time (never from the API server) comes last.
    pub fn claim_order(&self) -> (bool, Option<k8s_openapi::jiff::Timestamp>, &str) {
        (self.created.is_none(), self.created, &self.uid)
    }

    /// Checks every field hostlb uses and reports all problems at once, so a user fixes them in
    /// one go.
    pub fn from_service(service: &Service) -> Result<Self, Vec<FieldError>> {
        parse(service).options
    }
}

/// All that hostlb reads of a Service's options, from one pass over its fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Parsed {
    pub options: Result<ServiceLb, Vec<FieldError>>,
    /// The IP families as far as they can be read, for a Service whose options are invalid as
    /// a whole: every family when nothing says which.
    pub declared_families: Vec<Family>,
    /// Read on their own too, so that a Service with some other invalid option keeps its
    /// address choice.
    pub addresses: AddressOptions,
    /// The `ipMode` asked for, when it can be read.
    pub ip_mode: Option<IpMode>,
    /// `externalTrafficPolicy: Local`, read on its own too: the proxies of a Service with an
    /// invalid option are left as they were, still sending to local endpoints.
    pub local: bool,
}

pub fn parse(service: &Service) -> Parsed {
    let mut errors = Vec::new();
    let meta = &service.metadata;
    let default_spec = ServiceSpec::default();
    let spec = service.spec.as_ref().unwrap_or(&default_spec);
    let empty = BTreeMap::new();
    let annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let labels = meta.labels.as_ref().unwrap_or(&empty);

    let cluster_ips = cluster_ips(&spec.cluster_ips, &spec.cluster_ip, &mut errors);
    let families = families(&spec.ip_families, &cluster_ips, &mut errors);
    let declared_families = if families.is_empty() { Family::ALL.to_vec() } else { families.clone() };
    let local = spec.external_traffic_policy.as_deref() == Some("Local");
    let (ports, port_names) = ports(spec.ports.as_deref().unwrap_or_default(), &mut errors);
    let destination = if local {
        let health_check_node_port =
            spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0).unwrap_or_else(|| {
                errors.push(error("spec.healthCheckNodePort", "is unset; externalTrafficPolicy: Local needs it"));
                0
            });
        Destination::NodeLocal { health_check_node_port }
    } else {
        Destination::ClusterIps(cluster_ips)
    };
    let source_ranges = source_ranges(&spec.load_balancer_source_ranges, annotations, &mut errors);
    let pool = pool(labels, annotations, &mut errors);
    let extra_tolerations = match annotations.get(names::ANNOTATION_TOLERATIONS) {
        None => Vec::new(),
        Some(json) => serde_json::from_str::<Vec<Toleration>>(json).unwrap_or_else(|e| {
            errors.push(annotation_error(
                names::ANNOTATION_TOLERATIONS,
                format!("is not a JSON list of tolerations: {e}"),
            ));
            Vec::new()
        }),
    };
    let priority_class = annotations.get(names::ANNOTATION_PRIORITY_CLASS).and_then(|value| {
        if is_dns_subdomain(value) {
            Some(value.clone())
        } else {
            errors.push(annotation_error(
                names::ANNOTATION_PRIORITY_CLASS,
                format!("{value:?} is not a valid PriorityClass name"),
            ));
            None
        }
    });
    let ip_mode = requested_ip_mode(annotations).unwrap_or_else(|error| {
        errors.push(error);
        None
    });
    let addresses = address_options(annotations, &mut errors);

    let options = if errors.is_empty() {
        Ok(ServiceLb {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            families,
            ports,
            port_names,
            destination,
            source_ranges,
            pool,
            extra_tolerations,
            priority_class,
            ip_mode,
            addresses: addresses.clone(),
            created: meta.creation_timestamp.as_ref().map(|time| time.0),
        })
    } else {
        Err(one_per_list(errors))
    };
    Parsed { options, declared_families, addresses, ip_mode, local }
}

#[cfg(test)]
mod tests;
