//! The data planes: what carries a Service's traffic on the nodes. `decide` runs what they
//! share once (admission, placement, ports, publication, condition, Events) and asks the
//! Service's data plane, through `DataPlane`, for what differs: the object that carries the
//! forwarding, the checks and warnings only that plane makes, which nodes forward through it,
//! and the objects it shares between Services. `proxy_pods` and `node_agents` are the two
//! implementations; `hand_over` moves a Service from one to the other without withdrawing a
//! node. Pure.

pub mod node_agents;
pub mod proxy_daemonset;
pub mod proxy_pods;
pub mod settings;

use std::collections::BTreeSet;

use hostlb_model::names;
use hostlb_model::options::{FieldError, ServiceLb};
use hostlb_model::reason::{listed, Reason, Warning};
use hostlb_model::service::ServiceView;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::jiff::Timestamp;
use kube::core::{ApiResource, DynamicObject};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::decide::placement::Placement;
use crate::state::{key_of, Index, ProxyPod};
use node_agents::NodeAgents;
use proxy_pods::ProxyPods;
pub use settings::{DataPlaneKind, ForwardingSettings};

impl DataPlaneKind {
    /// Every data plane, for what is done to each alike: clean-up, orphans, uninstall.
    pub const ALL: [DataPlaneKind; 2] = [DataPlaneKind::Pods, DataPlaneKind::Agent];

    /// The one choice of implementation.
    pub fn implementation(self) -> &'static dyn DataPlane {
        match self {
            DataPlaneKind::Pods => &ProxyPods,
            DataPlaneKind::Agent => &NodeAgents,
        }
    }

    /// The data planes other than this one, whose objects a Service may still have.
    pub fn others(self) -> impl Iterator<Item = DataPlaneKind> {
        DataPlaneKind::ALL.into_iter().filter(move |kind| *kind != self)
    }
}

impl ForwardingSettings {
    pub fn data_plane(&self) -> &'static dyn DataPlane {
        self.dataplane.implementation()
    }
}

/// A forwarding object as hostlb's own apply left it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub generation: i64,
    pub config_hash: String,
}

/// The kind of object that carries one Service's forwarding in a data plane, as the executor
/// reads, writes, lists and deletes it.
pub struct ForwardingKind {
    /// What Events about an applied one call it.
    pub noun: &'static str,
    pub resource: fn() -> ApiResource,
    pub applied: Reason,
    pub deleted: Reason,
    /// The label selector of an install's objects of the kind.
    pub selector: fn(install_id: &str) -> String,
    /// Whether hostlb alone writes its objects, so that an apply may name the version read: a
    /// DaemonSet's status changes with its pods, and would make most such applies conflict.
    pub written_by_hostlb_alone: bool,
}

/// A Service's forwarding object of any kind, as the executor handles every kind alike.
pub type ForwardingObject = DynamicObject;

#[derive(Debug)]
pub enum ForwardingAction {
    Apply {
        object: ForwardingObject,
        created: bool,
        /// The ports it serves, for the Event.
        ports: String,
    },
    /// The Service has no port left that it may claim, or another data plane serves it now.
    Delete(ForwardingObject),
}

/// What becomes of one of the Service's forwarding objects.
#[derive(Debug)]
pub struct ForwardingChange {
    pub kind: &'static ForwardingKind,
    pub action: ForwardingAction,
}

impl std::fmt::Debug for ForwardingKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str((self.resource)().kind.as_str())
    }
}

/// What a data plane is given to decide the forwarding of a valid Service with ports to serve.
pub struct Forwarded<'a> {
    pub lb: &'a ServiceLb,
    pub placement: &'a Placement,
    /// hostlb's own object named for the Service's forwarding in this data plane.
    pub existing: Option<&'a ForwardingObject>,
    /// What this replica's own last apply left on it.
    pub last_applied: Option<&'a Applied>,
    pub index: &'a Index,
    pub settings: &'a ForwardingSettings,
    pub now: Timestamp,
}

/// What a data plane decided of a Service's forwarding.
#[derive(Debug, Default)]
pub struct Forwarding {
    /// The forwarding object to write, when it differs from what is there.
    pub apply: Option<ForwardingChange>,
    /// A proxy pod (`namespace/name`) to delete, so that a current one replaces it.
    pub replace_pod: Option<String>,
}

/// An object a data plane shares between Services, as the executor writes every kind alike.
#[derive(Clone, Debug)]
pub struct SharedObject {
    pub resource: ApiResource,
    pub object: DynamicObject,
}

impl SharedObject {
    pub fn of<K: Resource<DynamicType = ()> + Serialize>(object: &K) -> Self {
        SharedObject::dynamic(ApiResource::erase::<K>(&()), object)
    }

    /// An object of a kind the API server serves but no Rust type here names (hostlb's own
    /// custom resources).
    pub fn dynamic(resource: ApiResource, object: &impl Serialize) -> Self {
        SharedObject { resource, object: erased(object) }
    }

    /// The object at `key` (`namespace/name`), with nothing but its name, for a delete.
    pub fn named(resource: ApiResource, key: &str) -> Self {
        let (namespace, name) = key.split_once('/').unwrap_or_default();
        let object = DynamicObject::new(name, &resource).within(namespace);
        SharedObject { resource, object }
    }
}

/// What becomes of one of a data plane's objects that serve every Service at once.
#[derive(Debug)]
pub enum SharedChange {
    /// Written as it is here, hostlb's fields forced.
    Apply(SharedObject),
    /// Made as it is here, for another to fill in, if it is still missing.
    Create(SharedObject),
    Delete(SharedObject),
}

impl SharedChange {
    pub fn object(&self) -> &SharedObject {
        match self {
            SharedChange::Apply(shared) | SharedChange::Create(shared) | SharedChange::Delete(shared) => shared,
        }
    }
}

/// As `apply Role hostlb-system/hostlb-agent`.
impl std::fmt::Display for SharedChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = match self {
            SharedChange::Apply(_) => "apply",
            SharedChange::Create(_) => "create",
            SharedChange::Delete(_) => "delete",
        };
        let SharedObject { resource, object } = self.object();
        write!(f, "{verb} {} {}", resource.kind, key_of(object))
    }
}

/// One data plane: the object that carries a Service's forwarding and what only this plane
/// checks, warns of and counts.
pub trait DataPlane: Sync {
    /// The kind of its per-Service forwarding object.
    fn kind(&self) -> &'static ForwardingKind;
    /// What it refuses in a Service's options that no API server refuses for it.
    fn refusals(&self, lb: &ServiceLb) -> Vec<FieldError>;
    /// An option the Service sets that this data plane has no use for.
    fn unused_option(&self, service: &ServiceView) -> Option<Warning>;
    /// The forwarding of a valid Service with ports to serve, on `service.placement`.
    fn forward(&self, service: &Forwarded<'_>) -> Forwarding;
    /// Since when its forwarders for the Service are being created, given its forwarding object
    /// (and whether this decision creates it): since the object was made. Proxies that start
    /// together are published together, and a node agent's report of a new plan counts as a
    /// proxy pod that started: a Service with fewer addresses than nodes chooses among all.
    fn creating_since(&self, existing: Option<&ForwardingObject>, created: bool, now: Timestamp) -> Option<Timestamp> {
        match existing {
            _ if created => Some(now),
            Some(object) => object.metadata.creation_timestamp.as_ref().map(|time| time.0),
            None => None,
        }
    }
    /// Why the forwarders of the nodes the Service may use do not run.
    fn not_running(
        &self,
        existing: Option<&ForwardingObject>,
        forwarders: &[&ProxyPod],
        nodes: &[&Node],
        index: &Index,
    ) -> Vec<Warning>;
    /// The nodes that forward the Service through this data plane now.
    fn nodes_forwarding<'a>(&self, index: &'a Index, service_uid: &str) -> BTreeSet<&'a str>;
    /// hostlb's own forwarding object of this kind at `key` (`namespace/name`), as indexed.
    fn indexed(&self, index: &Index, key: &str) -> Option<ForwardingObject>;
    /// Every forwarding object of this kind of this install, as indexed.
    fn all_indexed(&self, index: &Index) -> Vec<ForwardingObject>;
    /// What its objects shared by every Service need, in order: a change may need the ones
    /// before it done.
    fn shared_changes(&self, settings: &ForwardingSettings, index: &Index) -> Vec<SharedChange>;
    /// Its objects shared by every Service that an uninstall deletes, in that order; the objects
    /// they own go with them.
    fn uninstalled(&self, settings: &ForwardingSettings) -> Vec<SharedObject>;
}

/// The object of another data plane that carried the Service's forwarding, to delete once this
/// one forwards wherever that one did, so that switching data planes withdraws no node and
/// loses no path.
pub fn hand_over(
    current: DataPlaneKind,
    previous: DataPlaneKind,
    object: &ForwardingObject,
    service_uid: &str,
    index: &Index,
) -> Option<ForwardingChange> {
    let (now, before) = (current.implementation(), previous.implementation());
    let taken_over = before.nodes_forwarding(index, service_uid).is_subset(&now.nodes_forwarding(index, service_uid));
    (made_by_hostlb_for(object, service_uid) && taken_over)
        .then(|| ForwardingChange { kind: before.kind(), action: ForwardingAction::Delete(object.clone()) })
}

/// Whether the object carries the labels hostlb gives what it makes for this very Service.
pub fn made_by_hostlb_for(object: &impl ResourceExt, service_uid: &str) -> bool {
    let labels = object.labels();
    labels.get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::MANAGED_BY)
        && labels.get(names::LABEL_SERVICE_UID).map(String::as_str) == Some(service_uid)
}

/// The Warning for an object of the forwarding's name that hostlb did not make for the Service.
pub fn name_taken(existing: &ForwardingObject) -> Warning {
    let kind = existing.types.as_ref().map_or("object", |types| types.kind.as_str());
    Warning::new(
        Reason::ForwardingNameTaken,
        format!("{kind} {} exists and was not made by hostlb for this Service; it is left alone", key_of(existing)),
    )
}

/// The change that writes `desired`.
/// The change that writes `desired` over `existing`: where hostlb alone writes the kind, only
/// over that very version of it, so that a write of a replica whose term of leadership ended
/// meanwhile, landing late, cannot undo its successor's (the API server refuses it with a
/// conflict). A late DaemonSet apply is undone by the successor's next look, as its
/// configuration hash differs.
fn apply(
    kind: &'static ForwardingKind,
    desired: &impl Serialize,
    existing: Option<&ForwardingObject>,
    lb: &ServiceLb,
) -> ForwardingChange {
    let ports = listed(lb.ports.iter().map(|p| format!("{}/{}", p.listen, p.protocol.api_name())));
    let mut object = erased(desired);
    let read = existing.filter(|_| kind.written_by_hostlb_alone);
    object.metadata.resource_version = read.and_then(|existing| existing.metadata.resource_version.clone());
    ForwardingChange { kind, action: ForwardingAction::Apply { object, created: existing.is_none(), ports } }
}

/// A typed object as a forwarding object.
pub fn erased(object: &impl Serialize) -> ForwardingObject {
    let value = serde_json::to_value(object).expect("an API object always serialises");
    serde_json::from_value(value).expect("an API object always reads back as a dynamic object")
}

/// A forwarding object as the type of its kind; `None` when it is of another.
pub(crate) fn typed<K: DeserializeOwned>(object: &ForwardingObject) -> Option<K> {
    serde_json::to_value(object).ok().and_then(|value| serde_json::from_value(value).ok())
}
