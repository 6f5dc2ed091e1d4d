//! What hostlb tells users on their objects: the reasons of its Events, and publishing them so
//! that a lasting problem is reported once, not on every reconcile.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use tracing::{debug, warn};

use crate::metrics::Metrics;
use crate::names;

/// The reason of every Event hostlb publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    DaemonSetApplied,
    DaemonSetDeleted,
    OrphanDeleted,
    StatusUpdated,
    /// An option or field of the Service cannot be honoured.
    InvalidOption,
    /// No node may run the Service's proxy pods.
    NoEligibleNode,
    /// Another Service claims one of its ports on a node they share.
    PortConflict,
    /// A DaemonSet of the name hostlb would use exists and is not hostlb's for this Service.
    DaemonSetNameTaken,
    ProxyPodUnschedulable,
}

impl Reason {
    pub const ALL: [Reason; 9] = [
        Reason::DaemonSetApplied,
        Reason::DaemonSetDeleted,
        Reason::OrphanDeleted,
        Reason::StatusUpdated,
        Reason::InvalidOption,
        Reason::NoEligibleNode,
        Reason::PortConflict,
        Reason::DaemonSetNameTaken,
        Reason::ProxyPodUnschedulable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DaemonSetApplied => "DaemonSetApplied",
            Reason::DaemonSetDeleted => "DaemonSetDeleted",
            Reason::OrphanDeleted => "OrphanDeleted",
            Reason::StatusUpdated => "StatusUpdated",
            Reason::InvalidOption => "InvalidOption",
            Reason::NoEligibleNode => "NoEligibleNode",
            Reason::PortConflict => "PortConflict",
            Reason::DaemonSetNameTaken => "DaemonSetNameTaken",
            Reason::ProxyPodUnschedulable => "ProxyPodUnschedulable",
        }
    }

    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::DaemonSetApplied | Reason::DaemonSetDeleted | Reason::OrphanDeleted | Reason::StatusUpdated
        )
    }

    /// The `action` of the Event: what hostlb was doing when it happened.
    fn action(self) -> &'static str {
        match self {
            Reason::DaemonSetApplied => "ApplyDaemonSet",
            Reason::DaemonSetDeleted | Reason::OrphanDeleted => "DeleteDaemonSet",
            Reason::StatusUpdated => "PublishAddresses",
            _ => "Reconcile",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem to tell the user about on the Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Warning {
    pub reason: Reason,
    pub message: String,
}

impl Warning {
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        debug_assert!(reason.is_warning(), "{reason} is not a warning");
        Warning { reason, message: message.into() }
    }
}

/// Publishes Events and remembers which warnings each Service has been told of.
pub struct Events {
    client: Client,
    reporter: Reporter,
    reported: Mutex<HashMap<ObjectRef<Service>, BTreeSet<Warning>>>,
}

impl Events {
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: names::MANAGER.into(), instance };
        Events { client, reporter, reported: Mutex::default() }
    }

    /// Publishes the warnings not yet published for this Service; forgets the ones that went
    /// away so that they are reported again if they come back.
    pub async fn report(&self, service: &Service, warnings: Vec<Warning>, metrics: &Metrics) {
        let key = ObjectRef::from_obj(service);
        let current: BTreeSet<Warning> = warnings.into_iter().collect();
        let previous = self.reported.lock().expect("reported lock").insert(key.clone(), current.clone());
        for warning in current.difference(&previous.unwrap_or_default()) {
            warn!(service = %key, reason = %warning.reason, "{}", warning.message);
            metrics.warned(warning.reason);
            self.publish(service, warning.reason, warning.message.clone()).await;
        }
    }

    /// Forgets a Service that hostlb no longer serves.
    pub fn forget(&self, service: &Service) {
        self.reported.lock().expect("reported lock").remove(&ObjectRef::from_obj(service));
    }

    pub async fn publish<K: Resource<DynamicType = ()>>(&self, regarding: &K, reason: Reason, note: String) {
        // A fresh recorder each time: a shared one would fold different notes with the same
        // reason into one series and hide all but the first. `report` already de-duplicates.
        let recorder = Recorder::new(self.client.clone(), self.reporter.clone());
        let type_ = if reason.is_warning() { EventType::Warning } else { EventType::Normal };
        let event = Event {
            type_,
            reason: reason.as_str().into(),
            note: Some(note),
            action: reason.action().into(),
            secondary: None,
        };
        match recorder.publish(&event, &regarding.object_ref(&())).await {
            Ok(()) => {}
            // The Service's namespace is being deleted: nobody is left to read the Event.
            Err(kube::Error::Api(status)) if namespace_terminating(&status) => {
                debug!(%reason, "no Event: the namespace is being deleted")
            }
            Err(error) => warn!(%error, %reason, "could not publish Event"),
        }
    }
}

fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.details.iter().flat_map(|details| &details.causes).any(|cause| cause.reason == "NamespaceTerminating")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_spelled_as_their_names_and_only_normal_ones_are_not_warnings() {
        for reason in Reason::ALL {
            assert_eq!(reason.as_str(), format!("{reason:?}"));
        }
        let normal: Vec<Reason> = Reason::ALL.into_iter().filter(|r| !r.is_warning()).collect();
        assert_eq!(
            normal,
            vec![Reason::DaemonSetApplied, Reason::DaemonSetDeleted, Reason::OrphanDeleted, Reason::StatusUpdated]
        );
    }
}
