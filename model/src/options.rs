//! What a LoadBalancer Service asks of hostlb, checked field by field in one pass: every later
//! step works on a `ServiceLb` and so never sees an invalid option.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use hostlb_contract::{Cidr, Family, NamedPort, PortMap, Protocol};
use k8s_openapi::api::core::v1::{Service, ServiceSpec, Toleration};

use crate::address::{AddressKind, AddressPolicy, IpMode};
use crate::names;
use crate::reason::joined;

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

/// A Service option or field that hostlb cannot honour, named the way the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
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

/// The errors of the items of one list (thousands of invalid source ranges, say) as one error
/// on the list that names the first items and counts the rest: a Service costs a few
/// Warnings, whatever its lists hold.
fn one_per_list(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut lists: Vec<(String, Vec<FieldError>)> = Vec::new();
    for error in errors {
        let kind = list_item(&error.field).map_or_else(|| error.field.clone(), |item| item.kind);
        match lists.iter_mut().find(|(known, _)| *known == kind) {
            Some((_, errors)) => errors.push(error),
            None => lists.push((kind, vec![error])),
        }
    }
    let fold = |(_, mut errors): (String, Vec<FieldError>)| {
        if errors.len() == 1 {
            return errors.remove(0);
        }
        let list = list_item(&errors[0].field).map_or_else(|| errors[0].field.clone(), |item| item.list);
        let items = errors.iter().map(|error| {
            let item = list_item(&error.field).map_or_else(String::new, |item| format!("{}: ", item.item));
            format!("{item}{}", error.message)
        });
        error(list, format!("{} items cannot be used: {}", errors.len(), joined(items, "; ")))
    };
    lists.into_iter().map(fold).collect()
}

/// A field of an item of a list, `spec.ports[3].protocol`, in its parts.
struct ListItem {
    /// `spec.ports`
    list: String,
    /// `[3].protocol`
    item: String,
    /// `spec.ports[].protocol`: the same for this field of every item.
    kind: String,
}

fn list_item(field: &str) -> Option<ListItem> {
    let mut from = 0;
    while let Some(open) = field[from..].find('[').map(|at| at + from) {
        let close = field[open..].find(']')? + open;
        let index = &field[open + 1..close];
        if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
            return Some(ListItem {
                list: field[..open].to_string(),
                item: field[open..].to_string(),
                kind: format!("{}[]{}", &field[..open], &field[close + 1..]),
            });
        }
        from = close + 1;
    }
    None
}

/// What a Service asks of its addresses; unset means the controller's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressOptions {
    pub kinds: Option<Vec<AddressKind>>,
    pub max_nodes: Option<usize>,
}

impl AddressOptions {
    /// The controller's defaults with what the Service asks for.
    pub fn policy(&self, defaults: &AddressPolicy) -> AddressPolicy {
        AddressPolicy {
            address_type: defaults.address_type,
            kinds: self.kinds.clone().unwrap_or_else(|| defaults.kinds.clone()),
            max_nodes: self.max_nodes.or(defaults.max_nodes),
        }
    }
}

/// The Service's `hostlb.io/publish` (`ip`, `hostname` or both, comma-separated) and
/// `hostlb.io/max-nodes` (a positive number): what can be read of them.
fn address_options(annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) -> AddressOptions {
    let kinds = annotations.get(names::ANNOTATION_PUBLISH).and_then(|text| {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim) {
            match AddressKind::from_name(part) {
                Some(kind) => kinds.push(kind),
                None => {
                    errors.push(annotation_error(
                        names::ANNOTATION_PUBLISH,
                        format!("{part:?} is neither ip nor hostname"),
                    ));
                    return None;
                }
            }
        }
        kinds.sort();
        kinds.dedup();
        Some(kinds)
    });
    let max_nodes = annotations.get(names::ANNOTATION_MAX_NODES).and_then(|text| {
        let max = text.trim().parse::<usize>().ok().filter(|max| *max > 0);
        if max.is_none() {
            errors.push(annotation_error(names::ANNOTATION_MAX_NODES, format!("{text:?} is not a positive number")));
        }
        max
    });
    AddressOptions { kinds, max_nodes }
}

/// The `ipMode` the Service asks for, if any.
fn requested_ip_mode(annotations: &BTreeMap<String, String>) -> Result<Option<IpMode>, FieldError> {
    let Some(value) = annotations.get(names::ANNOTATION_IP_MODE) else { return Ok(None) };
    IpMode::from_api_name(value)
        .map(Some)
        .ok_or_else(|| annotation_error(names::ANNOTATION_IP_MODE, format!("{value:?} is neither VIP nor Proxy")))
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

pub fn annotation_error(key: &str, message: impl Into<String>) -> FieldError {
    error(format!("metadata.annotations[{key}]"), message)
}

fn cluster_ips(list: &Option<Vec<String>>, single: &Option<String>, errors: &mut Vec<FieldError>) -> Vec<IpAddr> {
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

fn families(declared: &Option<Vec<String>>, cluster_ips: &[IpAddr], errors: &mut Vec<FieldError>) -> Vec<Family> {
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
fn ports(
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

fn source_ranges(
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

fn pool(
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

fn is_dns_subdomain(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 253
        && value.split('.').all(|part| {
            !part.is_empty()
                && part.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::address::AddressType;
    use crate::fixtures::ServiceBuilder;

    #[test]
    fn handles_unclassed_and_own_class_load_balancers_only() {
        let class = "hostlb.io/hostlb";
        assert!(is_handled(&ServiceBuilder::new("web").build(), class, true));
        assert!(is_handled(&ServiceBuilder::new("web").class(class).build(), class, true));
        assert!(!is_handled(&ServiceBuilder::new("web").class("metallb.io/metallb").build(), class, true));
        assert!(!is_handled(&ServiceBuilder::new("web").type_("ClusterIP").build(), class, true));
        assert!(!is_handled(&ServiceBuilder::new("web").type_("NodePort").build(), class, true));
    }

    #[test]
    fn a_second_install_serves_only_its_own_class() {
        let class = "example.com/edge";
        assert!(!is_handled(&ServiceBuilder::new("web").build(), class, false));
        assert!(is_handled(&ServiceBuilder::new("web").class(class).build(), class, false));
    }

    #[test]
    fn cluster_policy_forwards_each_port_to_the_cluster_ips() {
        let service = ServiceBuilder::new("web")
            .port("TCP", 80, 30080)
            .port("UDP", 53, 30053)
            .cluster_ips(&["10.96.0.10", "fd00::10"])
            .build();
        let lb = ServiceLb::from_service(&service).unwrap();
        assert_eq!(
            lb.ports,
            vec![
                PortMap { protocol: Protocol::Tcp, listen: 80, target: 80 },
                PortMap { protocol: Protocol::Udp, listen: 53, target: 53 },
            ]
        );
        assert_eq!(
            lb.destination,
            Destination::ClusterIps(vec!["10.96.0.10".parse().unwrap(), "fd00::10".parse().unwrap()])
        );
        assert_eq!(lb.families, vec![Family::V4, Family::V6]);
    }

    #[test]
    fn local_policy_keeps_the_port_names_and_the_health_check_port_and_needs_no_node_ports() {
        let mut service = ServiceBuilder::new("web").port("TCP", 443, 0).port("UDP", 53, 0).local(32000).build();
        service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("https".into());
        let lb = ServiceLb::from_service(&service).unwrap();
        assert_eq!(
            lb.ports,
            vec![
                PortMap { protocol: Protocol::Tcp, listen: 443, target: 443 },
                PortMap { protocol: Protocol::Udp, listen: 53, target: 53 }
            ]
        );
        let https = NamedPort { protocol: Protocol::Tcp, listen: 443, name: "https".into() };
        assert_eq!(lb.destination, Destination::NodeLocal { health_check_node_port: 32000 });
        assert_eq!(lb.port_names, vec![https]);
    }

    #[test]
    fn local_policy_is_read_while_another_option_is_wrong() {
        let service = ServiceBuilder::new("web").local(32000).annotation(names::ANNOTATION_TOLERATIONS, "{").build();
        let parsed = parse(&service);
        assert!(parsed.options.is_err());
        assert!(parsed.local);
        assert!(!parse(&ServiceBuilder::new("web").build()).local);
    }

    #[test]
    fn a_port_name_that_is_no_dns_label_is_named() {
        let mut service = ServiceBuilder::new("web").port("TCP", 443, 0).build();
        service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("HTTPS".into());
        let errors = ServiceLb::from_service(&service).unwrap_err();
        assert_eq!(errors[0].field, "spec.ports[0].name");
    }

    #[test]
    fn unknown_protocol_is_refused_naming_the_port() {
        let service = ServiceBuilder::new("web").port("TCP", 80, 1).port("QUIC", 443, 2).build();
        let errors = ServiceLb::from_service(&service).unwrap_err();
        assert_eq!(errors[0].field, "spec.ports[1].protocol");
        assert!(errors[0].message.contains("QUIC"));
    }

    #[test]
    fn source_ranges_are_canonicalised_and_bad_ones_named() {
        let service =
            ServiceBuilder::new("web").source_ranges(&["192.168.1.77/24", "2001:db8::1/32", "10.0.0.0/8"]).build();
        let lb = ServiceLb::from_service(&service).unwrap();
        let shown: Vec<String> = lb.source_ranges.iter().map(ToString::to_string).collect();
        assert_eq!(shown, vec!["10.0.0.0/8", "192.168.1.0/24", "2001:db8::/32"]);

        let bad = ServiceBuilder::new("web").source_ranges(&["10.0.0.0/8", "10.0.0.0/33"]).build();
        let errors = ServiceLb::from_service(&bad).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, vec!["spec.loadBalancerSourceRanges[1]"]);
    }

    #[test]
    fn errors_of_many_items_of_a_list_are_one_error_naming_the_first_twenty() {
        let ranges: Vec<String> = (0..5000).map(|i| format!("bad-{i}")).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let service = ServiceBuilder::new("web").port("QUIC", 80, 0).port("GRE", 81, 0).source_ranges(&ranges).build();
        let errors = ServiceLb::from_service(&service).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports", "spec.loadBalancerSourceRanges"]);
        assert!(errors[0].message.starts_with("2 items cannot be used: [0].protocol: unsupported protocol \"QUIC\"; "));
        let ranges = &errors[1].message;
        assert!(ranges.starts_with("5000 items cannot be used: [0]: \"bad-0\": "), "{ranges}");
        assert!(ranges.ends_with("and 4980 more"), "{ranges}");
        assert!(list_item("metadata.annotations[hostlb.io/tolerations]").is_none(), "a key is no index");
    }

    #[test]
    fn legacy_source_range_annotation_is_honoured_when_the_field_is_empty() {
        let service = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_LEGACY_SOURCE_RANGES, "10.1.0.0/16, 10.2.0.0/16")
            .build();
        let lb = ServiceLb::from_service(&service).unwrap();
        assert_eq!(lb.source_ranges.len(), 2);
    }

    #[test]
    fn pool_comes_from_label_or_annotation_and_must_agree() {
        let by_label = ServiceBuilder::new("web").label(names::POOL, "edge").build();
        assert_eq!(ServiceLb::from_service(&by_label).unwrap().pool.as_deref(), Some("edge"));
        let by_annotation = ServiceBuilder::new("web").annotation(names::POOL, "edge").build();
        assert_eq!(ServiceLb::from_service(&by_annotation).unwrap().pool.as_deref(), Some("edge"));
        let both = ServiceBuilder::new("web").label(names::POOL, "a").annotation(names::POOL, "b").build();
        assert_eq!(ServiceLb::from_service(&both).unwrap_err()[0].field, "metadata.labels[hostlb.io/lbpool]");
        let invalid = ServiceBuilder::new("web").annotation(names::POOL, "not a label!").build();
        assert_eq!(ServiceLb::from_service(&invalid).unwrap_err()[0].field, "metadata.annotations[hostlb.io/lbpool]");
    }

    #[test]
    fn servicelbs_pool_label_chooses_the_pool_unless_hostlbs_own_does() {
        let k3s = ServiceBuilder::new("web").label(names::K3S_POOL, "edge").build();
        assert_eq!(ServiceLb::from_service(&k3s).unwrap().pool.as_deref(), Some("edge"));
        let both = ServiceBuilder::new("web").label(names::K3S_POOL, "edge").annotation(names::POOL, "core").build();
        assert_eq!(ServiceLb::from_service(&both).unwrap().pool.as_deref(), Some("core"));
    }

    #[test]
    fn tolerations_annotation_must_be_a_json_list_of_tolerations() {
        let good = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"edge","operator":"Exists","effect":"NoSchedule"}]"#)
            .build();
        let lb = ServiceLb::from_service(&good).unwrap();
        assert_eq!(lb.extra_tolerations[0].key.as_deref(), Some("edge"));

        let bad = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{not json").build();
        let errors = ServiceLb::from_service(&bad).unwrap_err();
        assert_eq!(errors[0].field, "metadata.annotations[hostlb.io/tolerations]");
        assert!(errors[0].message.contains("JSON"), "{}", errors[0].message);
    }

    #[test]
    fn priority_class_annotation_must_be_a_valid_name() {
        let good = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "lb-critical").build();
        assert_eq!(ServiceLb::from_service(&good).unwrap().priority_class.as_deref(), Some("lb-critical"));
        let bad = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "Not_Valid").build();
        assert_eq!(
            ServiceLb::from_service(&bad).unwrap_err()[0].field,
            "metadata.annotations[hostlb.io/priority-class]"
        );
    }

    #[test]
    fn repeated_families_count_once_in_their_first_place() {
        let mut service = ServiceBuilder::new("web").cluster_ips(&["fd00::a", "10.96.0.10"]).build();
        service.spec.as_mut().unwrap().ip_families = Some(vec!["IPv6".into(), "IPv4".into(), "IPv6".into()]);
        assert_eq!(ServiceLb::from_service(&service).unwrap().families, vec![Family::V6, Family::V4]);
    }

    #[test]
    fn families_fall_back_to_cluster_ips_on_servers_without_ip_families() {
        let mut service = ServiceBuilder::new("web").cluster_ips(&["fd00::1"]).build();
        service.spec.as_mut().unwrap().ip_families = None;
        assert_eq!(ServiceLb::from_service(&service).unwrap().families, vec![Family::V6]);
    }

    #[test]
    fn address_options_are_read_with_the_controllers_defaults_beneath() {
        let defaults =
            AddressPolicy { address_type: AddressType::Auto, kinds: vec![AddressKind::Ip], max_nodes: Some(5) };
        let plain = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        assert_eq!(plain.addresses.policy(&defaults), defaults);
        let asked = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_PUBLISH, "hostname, ip,hostname")
            .annotation(names::ANNOTATION_MAX_NODES, "3")
            .build();
        let policy = ServiceLb::from_service(&asked).unwrap().addresses.policy(&defaults);
        assert_eq!(policy.kinds, vec![AddressKind::Ip, AddressKind::Hostname]);
        assert_eq!(policy.max_nodes, Some(3));

        let wrong = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_PUBLISH, "ip,cname")
            .annotation(names::ANNOTATION_MAX_NODES, "0")
            .build();
        let fields: Vec<String> =
            ServiceLb::from_service(&wrong).unwrap_err().iter().map(ToString::to_string).collect();
        assert_eq!(
            fields,
            vec![
                r#"metadata.annotations[hostlb.io/publish]: "cname" is neither ip nor hostname"#,
                r#"metadata.annotations[hostlb.io/max-nodes]: "0" is not a positive number"#,
            ]
        );
        let with_other_error = ServiceBuilder::new("web")
            .annotation(names::ANNOTATION_MAX_NODES, "2")
            .annotation(names::ANNOTATION_TOLERATIONS, "nope")
            .build();
        assert_eq!(parse(&with_other_error).addresses.max_nodes, Some(2), "kept while another option is wrong");
    }

    #[test]
    fn all_problems_are_reported_at_once() {
        let service = ServiceBuilder::new("web")
            .port("QUIC", 80, 1)
            .annotation(names::ANNOTATION_TOLERATIONS, "nope")
            .source_ranges(&["bad"])
            .build();
        assert_eq!(ServiceLb::from_service(&service).unwrap_err().len(), 3);
    }
}
