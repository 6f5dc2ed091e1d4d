//! A Service as hostlb reads it, parsed once: who it is, whether it is being deleted, its
//! options (`options::parse`), its ports and NodePorts, and what hostlb has published on it
//! (addresses and condition). Decisions read this view, never the raw object; `ingress` is the
//! way back.

use k8s_openapi::api::core::v1::{LoadBalancerIngress, Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ManagedFieldsEntry};

use crate::address::{Address, IpMode};
use crate::names;
use crate::options::{self, Parsed};

/// One Service, as every decision about it reads it.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub generation: Option<i64>,
    /// `spec.type` is LoadBalancer.
    pub is_load_balancer: bool,
    pub load_balancer_class: Option<String>,
    pub deleting: bool,
    pub finalizers: Vec<String>,
    pub parsed: Parsed,
    /// Every port with its protocol as the Service declares it, valid or not.
    pub ports: Vec<(i32, String)>,
    /// `PORT/PROTOCOL` of every NodePort the Service has.
    pub node_ports: Vec<String>,
    /// `spec.loadBalancerIP`, which hostlb cannot honour: it publishes its nodes' addresses.
    pub load_balancer_ip: Option<String>,
    pub published: Published,
    /// hostlb's condition as the Service has it.
    pub condition: Option<Condition>,
    /// The field managers other than hostlb that own fields of `status.loadBalancer` (as
    /// `keep_what_hostlb_reads` leaves the managed fields, or as the API server has them).
    pub other_status_writers: Vec<String>,
}

/// What `status.loadBalancer.ingress` contains now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Published {
    /// The addresses, in order.
    pub addresses: Vec<Address>,
    /// Entries, readable or not.
    pub entries: usize,
    /// The `ipMode` of each entry with an IP.
    pub ip_modes: Vec<Option<String>>,
}

impl ServiceView {
    pub fn of(service: &Service) -> Self {
        let meta = &service.metadata;
        let spec = service.spec.as_ref();
        let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
        let ingress = ingress.map_or(&[][..], Vec::as_slice);
        let ports = spec.and_then(|spec| spec.ports.as_deref()).unwrap_or_default();
        let protocol = |port: &ServicePort| port.protocol.clone().unwrap_or_else(|| "TCP".into());
        let conditions = service.status.as_ref().and_then(|status| status.conditions.as_ref());
        ServiceView {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name: meta.name.clone().unwrap_or_default(),
            uid: meta.uid.clone().unwrap_or_default(),
            generation: meta.generation,
            is_load_balancer: spec.and_then(|spec| spec.type_.as_deref()) == Some("LoadBalancer"),
            load_balancer_class: spec.and_then(|spec| spec.load_balancer_class.clone()),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone().unwrap_or_default(),
            parsed: options::parse(service),
            ports: ports.iter().map(|port| (port.port, protocol(port))).collect(),
            node_ports: ports
                .iter()
                .filter_map(|port| Some(format!("{}/{}", port.node_port?, protocol(port))))
                .collect(),
            load_balancer_ip: spec.and_then(|spec| spec.load_balancer_ip.clone()).filter(|ip| !ip.is_empty()),
            published: Published {
                addresses: ingress.iter().filter_map(entry_address).collect(),
                entries: ingress.len(),
                ip_modes: ingress
                    .iter()
                    .filter(|entry| entry.ip.is_some())
                    .map(|entry| entry.ip_mode.clone())
                    .collect(),
            },
            condition: conditions.into_iter().flatten().find(|c| c.type_ == names::CONDITION_READY).cloned(),
            other_status_writers: meta
                .managed_fields
                .iter()
                .flatten()
                .filter(|entry| entry.manager.as_deref() != Some(names::MANAGER))
                .filter(|entry| entry.fields_v1.is_none() || writes_load_balancer_status(entry))
                .filter_map(|entry| entry.manager.clone())
                .collect(),
        }
    }

    /// Whether an install of this class is responsible for the Service (`options::is_handled`).
    pub fn is_handled(&self, load_balancer_class: &str, serve_unclassed: bool) -> bool {
        options::handled(
            self.is_load_balancer,
            self.load_balancer_class.as_deref(),
            load_balancer_class,
            serve_unclassed,
        )
    }

    pub fn has_finalizer(&self, finalizer: &str) -> bool {
        self.finalizers.iter().any(|f| f == finalizer)
    }

    /// Whether the Service carries addresses or a condition of hostlb's, to clear when hostlb
    /// lets it go.
    pub fn carries_status(&self) -> bool {
        !self.published.addresses.is_empty() || self.condition.is_some()
    }

    /// Whether the published status must be rewritten. `ipMode` is compared only when hostlb
    /// sets it: API servers that do not know it drop it, and newer ones fill it in themselves.
    pub fn needs_update(&self, desired: &[Address], ip_mode: Option<IpMode>) -> bool {
        let mode_differs = ip_mode.is_some_and(|mode| {
            self.published.ip_modes.iter().any(|published| published.as_deref() != Some(mode.api_name()))
        });
        self.published.addresses != desired || self.published.entries != desired.len() || mode_differs
    }
}

fn entry_address(entry: &LoadBalancerIngress) -> Option<Address> {
    match (&entry.ip, &entry.hostname) {
        (Some(ip), _) => ip.parse().ok().map(Address::Ip),
        (None, Some(hostname)) => Some(Address::Hostname(hostname.clone())),
        (None, None) => None,
    }
}

/// What hostlb keeps of a Service in its cache: all that a `ServiceView` reads, and the little
/// the cache's other readers need (identity, finalizers, deletion, status). Annotations and
/// labels hostlb does not read go, whatever their size. Of a Service that is not a
/// LoadBalancer, only what tells whether hostlb must still clean up after it stays (it may have
/// been one, with hostlb's finalizer and status): hostlb serves none of its ports, so no
/// decision reads them.
pub fn keep_what_hostlb_reads(service: &mut Service) {
    let is_load_balancer = service.spec.as_ref().and_then(|spec| spec.type_.as_deref()) == Some("LoadBalancer");
    let meta = &mut service.metadata;
    // Of the managed fields, only who else writes status.loadBalancer, and when.
    if let Some(entries) = meta.managed_fields.as_mut().filter(|_| is_load_balancer) {
        entries.retain(|entry| entry.manager.as_deref() != Some(names::MANAGER) && writes_load_balancer_status(entry));
        for entry in entries.iter_mut() {
            *entry =
                ManagedFieldsEntry { manager: entry.manager.take(), time: entry.time.take(), ..Default::default() };
        }
    } else {
        meta.managed_fields = None;
    }
    if !is_load_balancer {
        meta.annotations = None;
        meta.labels = None;
        if let Some(spec) = service.spec.as_mut() {
            *spec = ServiceSpec {
                type_: spec.type_.take(),
                load_balancer_class: spec.load_balancer_class.take(),
                ..ServiceSpec::default()
            };
        }
        return;
    }
    let read = |key: &String| key.starts_with(names::OPTION_PREFIX) || key == names::ANNOTATION_LEGACY_SOURCE_RANGES;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|key, _| read(key));
    }
    if let Some(labels) = meta.labels.as_mut() {
        labels.retain(|key, _| key == names::POOL || key == names::K3S_POOL);
    }
}

/// Whether a managed-fields entry owns fields of `status.loadBalancer`.
fn writes_load_balancer_status(entry: &ManagedFieldsEntry) -> bool {
    entry.fields_v1.as_ref().is_some_and(|fields| fields.0.pointer("/f:status/f:loadBalancer").is_some())
}

/// The ingress entries; `ipMode` goes with IPs only, as the API requires.
pub fn ingress(addresses: &[Address], ip_mode: Option<IpMode>) -> Vec<LoadBalancerIngress> {
    let ip_mode = ip_mode.map(|mode| mode.api_name().to_string());
    addresses
        .iter()
        .map(|address| match address {
            Address::Ip(ip) => {
                LoadBalancerIngress { ip: Some(ip.to_string()), ip_mode: ip_mode.clone(), ..Default::default() }
            }
            Address::Hostname(name) => LoadBalancerIngress { hostname: Some(name.clone()), ..Default::default() },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn of_the_managed_fields_only_other_writers_of_the_load_balancer_status_are_kept() {
        let entry = |manager: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            fields_v1: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::FieldsV1(fields)),
            operation: Some("Update".into()),
            ..Default::default()
        };
        let status = serde_json::json!({ "f:status": { "f:loadBalancer": { "f:ingress": {} } } });
        let mut service = Service {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                managed_fields: Some(vec![
                    entry(names::MANAGER, status.clone()),
                    entry("kubectl-client-side-apply", serde_json::json!({ "f:spec": { "f:ports": {} } })),
                    entry("metallb-controller", status.clone()),
                ]),
                ..Default::default()
            },
            spec: Some(ServiceSpec { type_: Some("LoadBalancer".into()), ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(ServiceView::of(&service).other_status_writers, ["metallb-controller"]);
        keep_what_hostlb_reads(&mut service);
        let kept = service.metadata.managed_fields.clone().unwrap();
        assert_eq!(kept.len(), 1);
        assert_eq!((kept[0].manager.as_deref(), kept[0].fields_v1.is_none()), (Some("metallb-controller"), true));
        assert_eq!(ServiceView::of(&service).other_status_writers, ["metallb-controller"]);
    }
    use crate::fixtures::ServiceBuilder;

    fn ips(list: &[&str]) -> Vec<Address> {
        list.iter().map(|s| Address::Ip(s.parse().unwrap())).collect()
    }

    fn published(addresses: &[Address], ip_mode: Option<IpMode>) -> ServiceView {
        ServiceView::of(&ServiceBuilder::new("web").ingress(ingress(addresses, ip_mode)).build())
    }

    #[test]
    fn update_is_needed_only_when_addresses_their_order_or_our_ip_mode_differ() {
        let bare = ServiceView::of(&ServiceBuilder::new("web").build());
        assert!(!bare.needs_update(&[], None));
        assert!(bare.needs_update(&ips(&["10.0.0.1"]), None));
        let one = published(&ips(&["10.0.0.1"]), Some(IpMode::Vip));
        assert!(!one.needs_update(&ips(&["10.0.0.1"]), None), "a mode the server filled in is not ours");
        assert!(!one.needs_update(&ips(&["10.0.0.1"]), Some(IpMode::Vip)));
        assert!(one.needs_update(&ips(&["10.0.0.1"]), Some(IpMode::Proxy)));
        assert!(one.needs_update(&ips(&["10.0.0.1", "10.0.0.2"]), None));
        assert!(one.needs_update(&[], None));
        let two = published(&ips(&["10.0.0.2", "10.0.0.1"]), None);
        assert!(two.needs_update(&ips(&["10.0.0.1", "10.0.0.2"]), None), "an old order is put right once");
    }

    #[test]
    fn the_cache_keeps_all_a_view_reads_of_a_load_balancer_and_no_foreign_annotation() {
        let mut service = ServiceBuilder::new("web")
            .port("TCP", 80, 30080)
            .source_ranges(&["10.0.0.0/8"])
            .label(names::POOL, "edge")
            .label(names::K3S_POOL, "edge")
            .label("team", "shop")
            .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"edge","operator":"Exists"}]"#)
            .annotation(names::ANNOTATION_IP_MODE, "Proxy")
            .annotation(names::ANNOTATION_LEGACY_SOURCE_RANGES, "10.1.0.0/16")
            .annotation("kubectl.kubernetes.io/last-applied-configuration", &"x".repeat(200 * 1024))
            .ingress(ingress(&ips(&["10.0.0.1"]), Some(IpMode::Vip)))
            .build();
        service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let view = ServiceView::of(&service);
        keep_what_hostlb_reads(&mut service);
        assert_eq!(ServiceView::of(&service), view);
        let kept: Vec<&String> = service.metadata.annotations.iter().flatten().map(|(key, _)| key).collect();
        assert_eq!(
            kept,
            [names::ANNOTATION_IP_MODE, names::ANNOTATION_TOLERATIONS, names::ANNOTATION_LEGACY_SOURCE_RANGES]
        );
        assert_eq!(service.metadata.labels.unwrap().len(), 2);
        let options = [names::ANNOTATION_PRIORITY_CLASS, names::ANNOTATION_PUBLISH, names::ANNOTATION_MAX_NODES];
        assert!(options.iter().all(|key| key.starts_with(names::OPTION_PREFIX)), "every option is kept");
    }

    #[test]
    fn the_cache_keeps_of_other_services_what_says_whether_hostlb_must_clean_up() {
        let mut service = ServiceBuilder::new("web")
            .type_("ClusterIP")
            .port("TCP", 80, 0)
            .annotation("example.com/notes", &"x".repeat(200 * 1024))
            .ingress(ingress(&ips(&["10.0.0.1"]), None))
            .build();
        service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        let view = ServiceView::of(&service);
        keep_what_hostlb_reads(&mut service);
        let kept = ServiceView::of(&service);
        assert_eq!((kept.is_load_balancer, kept.carries_status()), (view.is_load_balancer, view.carries_status()));
        assert_eq!((kept.finalizers, kept.uid, kept.name), (view.finalizers, view.uid, view.name));
        let size = serde_json::to_vec(&service).unwrap().len();
        assert!(size < 1024, "{size} bytes kept of a ClusterIP Service");
    }

    #[test]
    fn the_view_reads_identity_node_ports_published_status_and_options_once() {
        let mut service = ServiceBuilder::new("web")
            .port("TCP", 80, 30080)
            .port("UDP", 53, 0)
            .annotation(names::ANNOTATION_MAX_NODES, "2")
            .annotation(names::ANNOTATION_TOLERATIONS, "{")
            .build();
        service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
        service.metadata.generation = Some(7);
        let view = ServiceView::of(&service);
        assert_eq!((view.namespace.as_str(), view.name.as_str(), view.generation), ("shop", "web", Some(7)));
        assert!(view.is_handled(names::DEFAULT_LOAD_BALANCER_CLASS, true));
        assert!(!view.is_handled(names::DEFAULT_LOAD_BALANCER_CLASS, false), "no class: the unclassed install's");
        assert!(view.has_finalizer(names::FINALIZER) && !view.deleting);
        assert_eq!(view.ports, [(80, "TCP".into()), (53, "UDP".into())]);
        assert_eq!(view.node_ports, ["30080/TCP"]);
        assert!(!view.carries_status());
        let errors = view.parsed.options.as_ref().unwrap_err();
        assert_eq!(errors[0].field, "metadata.annotations[hostlb.io/tolerations]");
        assert_eq!(view.parsed.addresses.max_nodes, Some(2), "kept while another option is wrong");
        assert_eq!(view.parsed.declared_families, [hostlb_contract::Family::V4]);
        assert!(published(&ips(&["10.0.0.1"]), None).carries_status());
    }
}
