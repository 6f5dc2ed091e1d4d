//! What hostlb tells users on their objects: the reasons of its Events, and publishing them so
//! that a lasting problem is reported once, not on every reconcile.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
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
    /// A port the admin's port policy does not let Services claim.
    PortRefused,
    /// The API server refused the proxy DaemonSet hostlb wrote for the Service.
    ApplyRefused,
    /// A proxy pod failed or is stuck (image, crashing container, refused by the kubelet).
    ProxyPodFailing,
    /// The DaemonSet controller cannot create proxy pods (quota, unknown PriorityClass, ...).
    ProxyPodsNotCreated,
    /// An option this cluster cannot honour; the Service is served without it.
    OptionIgnored,
    /// Source ranges are set, but NodePorts, which they do not cover, are open.
    NodePortsOpen,
    /// A serving node's hostlb annotation cannot be used; the node's own address is published.
    NodeAnnotationIgnored,
}

impl Reason {
    pub const ALL: [Reason; 16] = [
        Reason::DaemonSetApplied,
        Reason::DaemonSetDeleted,
        Reason::OrphanDeleted,
        Reason::StatusUpdated,
        Reason::InvalidOption,
        Reason::NoEligibleNode,
        Reason::PortConflict,
        Reason::DaemonSetNameTaken,
        Reason::ProxyPodUnschedulable,
        Reason::PortRefused,
        Reason::ApplyRefused,
        Reason::ProxyPodFailing,
        Reason::ProxyPodsNotCreated,
        Reason::OptionIgnored,
        Reason::NodePortsOpen,
        Reason::NodeAnnotationIgnored,
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
            Reason::PortRefused => "PortRefused",
            Reason::ApplyRefused => "ApplyRefused",
            Reason::ProxyPodFailing => "ProxyPodFailing",
            Reason::ProxyPodsNotCreated => "ProxyPodsNotCreated",
            Reason::OptionIgnored => "OptionIgnored",
            Reason::NodePortsOpen => "NodePortsOpen",
            Reason::NodeAnnotationIgnored => "NodeAnnotationIgnored",
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
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
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

/// The API server refuses an Event whose note is longer (events.k8s.io/v1 `note`).
pub const MAX_NOTE_BYTES: usize = 1024;

/// How many items of a list an Event names before it only counts the rest.
const LISTED_ITEMS: usize = 20;

/// `a, b, c`, or `a, b, ... and 7 more` for long lists.
pub fn listed(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    let shown = items[..items.len().min(LISTED_ITEMS)].join(", ");
    match items.len().saturating_sub(LISTED_ITEMS) {
        0 => shown,
        left_out => format!("{shown} and {left_out} more"),
    }
}

/// The note cut to what the API server accepts, saying how much was left out.
pub fn bounded(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    // Room for the ending, whose number has at most as many digits as the note's length.
    let ending_room = " ... (9999999999 more bytes)".len();
    let mut cut = MAX_NOTE_BYTES - ending_room;
    while !note.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ... ({} more bytes)", &note[..cut], note.len() - cut)
}

/// How many one-off Events may wait for the API server; past that they are dropped (and
/// logged), as client-go's event broadcaster drops them.
const QUEUED_EVENTS: usize = 4096;

/// How many queued Events are written at once: few, so that status writes, which clients read,
/// keep most of the API server when every Service changes at once.
const EVENTS_IN_FLIGHT: usize = 4;

/// A one-off Event waiting for the API server.
struct Queued {
    regarding: ObjectReference,
    reason: Reason,
    note: String,
}

/// Publishes Events and remembers which warnings each Service has been told of.
pub struct Events {
    client: Client,
    reporter: Reporter,
    reported: Mutex<HashMap<ObjectRef<Service>, BTreeSet<Warning>>>,
    /// One recorder per warning and Service, so that a warning that comes back counts up on
    /// its earlier Event (a series) instead of adding another.
    recorders: Mutex<HashMap<(ObjectRef<Service>, Warning), Recorder>>,
    /// One-off Events go out from a task of their own, so that no reconcile waits for one;
    /// both are taken by `flush`.
    queue: Mutex<Option<mpsc::Sender<Queued>>>,
    sender: Mutex<Option<JoinHandle<()>>>,
}

impl Events {
    /// Starts the task that writes one-off Events: needs a Tokio runtime.
    pub fn new(client: Client, instance: Option<String>) -> Self {
        let reporter = Reporter { controller: names::MANAGER.into(), instance };
        let (queue, queued) = mpsc::channel(QUEUED_EVENTS);
        let sender = tokio::spawn(send_queued(client.clone(), reporter.clone(), queued));
        Events {
            client,
            reporter,
            reported: Mutex::default(),
            recorders: Mutex::default(),
            queue: Mutex::new(Some(queue)),
            sender: Mutex::new(Some(sender)),
        }
    }

    /// Writes the Events still queued and stops taking more: for a process about to exit.
    pub async fn flush(&self) {
        drop(self.queue.lock().expect("queue lock").take());
        let sender = self.sender.lock().expect("sender lock").take();
        if let Some(sender) = sender {
            let _ = sender.await;
        }
    }

    /// Publishes the warnings not yet published for this Service; forgets the ones that went
    /// away so that they are reported again if they come back. A warning counts as reported
    /// once its Event is published, so one that could not be is tried again next time.
    pub async fn report(&self, service: &Service, warnings: Vec<Warning>, metrics: &Metrics) {
        let key = ObjectRef::from_obj(service);
        let current: BTreeSet<Warning> = warnings.into_iter().collect();
        let previous = self.reported.lock().expect("reported lock").get(&key).cloned().unwrap_or_default();
        let mut reported: BTreeSet<Warning> = current.intersection(&previous).cloned().collect();
        for warning in current.difference(&previous) {
            warn!(service = %key, reason = %warning.reason, "{}", warning.message);
            metrics.warned(warning.reason);
            let recorder = self.recorder_for(&key, warning);
            let regarding = service.object_ref(&());
            if publish_with(&recorder, &regarding, warning.reason, warning.message.clone()).await {
                reported.insert(warning.clone());
            }
        }
        self.reported.lock().expect("reported lock").insert(key, reported);
    }

    /// Forgets a Service that hostlb no longer serves.
    pub fn forget(&self, service: &Service) {
        let key = ObjectRef::from_obj(service);
        self.reported.lock().expect("reported lock").remove(&key);
        self.recorders.lock().expect("recorders lock").retain(|(service, _), _| *service != key);
    }

    fn recorder_for(&self, service: &ObjectRef<Service>, warning: &Warning) -> Recorder {
        let mut recorders = self.recorders.lock().expect("recorders lock");
        let key = (service.clone(), warning.clone());
        recorders.entry(key).or_insert_with(|| Recorder::new(self.client.clone(), self.reporter.clone())).clone()
    }

    /// Queues a one-off Event. Each is written with a recorder of its own: a shared one would
    /// fold different notes with the same reason into one series and hide all but the first.
    pub fn publish<K: Resource<DynamicType = ()>>(&self, regarding: &K, reason: Reason, note: String) {
        let queued = Queued { regarding: regarding.object_ref(&()), reason, note };
        let queue = self.queue.lock().expect("queue lock");
        let Some(queue) = queue.as_ref() else { return };
        if let Err(error) = queue.try_send(queued) {
            let dropped = match &error {
                mpsc::error::TrySendError::Full(queued) | mpsc::error::TrySendError::Closed(queued) => queued,
            };
            warn!(regarding = ?dropped.regarding.name, reason = %dropped.reason, "Event dropped: {error}");
        }
    }
}

async fn send_queued(client: Client, reporter: Reporter, mut queued: mpsc::Receiver<Queued>) {
    futures::stream::poll_fn(|cx| queued.poll_recv(cx))
        .for_each_concurrent(EVENTS_IN_FLIGHT, |Queued { regarding, reason, note }| {
            let recorder = Recorder::new(client.clone(), reporter.clone());
            async move {
                publish_with(&recorder, &regarding, reason, note).await;
            }
        })
        .await;
}

/// Whether the Event was published (or needs not be: its namespace is going away).
async fn publish_with(recorder: &Recorder, regarding: &ObjectReference, reason: Reason, note: String) -> bool {
    let type_ = if reason.is_warning() { EventType::Warning } else { EventType::Normal };
    let event = Event {
        type_,
        reason: reason.as_str().into(),
        note: Some(bounded(note)),
        action: reason.action().into(),
        secondary: None,
    };
    match recorder.publish(&event, regarding).await {
        Ok(()) => true,
        // The Service's namespace is being deleted: nobody is left to read the Event.
        Err(kube::Error::Api(status)) if namespace_terminating(&status) => {
            debug!(%reason, "no Event: the namespace is being deleted");
            true
        }
        Err(error) => {
            warn!(%error, %reason, "could not publish Event");
            false
        }
    }
}

fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.details.iter().flat_map(|details| &details.causes).any(|cause| cause.reason == "NamespaceTerminating")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;
    use crate::mock_api::mock_api;

    #[tokio::test]
    async fn one_off_events_are_written_in_the_background_and_flush_waits_for_them() {
        let (client, mut api) = mock_api();
        let events = Events::new(client, None);
        let service = ServiceBuilder::new("web").build();
        events.publish(&service, Reason::DaemonSetApplied, "created DaemonSet x".into());
        events.publish(&service, Reason::StatusUpdated, "10.0.0.1".into());
        let flushed = tokio::spawn(async move {
            events.flush().await;
            events.publish(&service, Reason::StatusUpdated, "after the flush: dropped".into());
        });
        let applied = api.expect_event("shop", "DaemonSetApplied").await;
        assert_eq!((&applied["note"], &applied["type"]), (&serde_json::json!("created DaemonSet x"), &"Normal".into()));
        api.expect_event("shop", "StatusUpdated").await;
        tokio::time::timeout(std::time::Duration::from_secs(5), flushed).await.unwrap().unwrap();
        api.expect_nothing_more().await;
    }

    #[test]
    fn long_lists_name_the_first_items_and_count_the_rest() {
        assert_eq!(listed(["a".to_string(), "b".to_string()]), "a, b");
        let ports = listed((1..=100).map(|p| format!("{p}/TCP")));
        assert!(ports.starts_with("1/TCP, 2/TCP"), "{ports}");
        assert!(ports.ends_with("20/TCP and 80 more"), "{ports}");
    }

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(2000);
        let cut = bounded(long.clone());
        assert!(cut.len() <= MAX_NOTE_BYTES, "{} bytes", cut.len());
        let kept = cut.split(" ... (").next().unwrap().len();
        assert!(cut.ends_with(&format!("({} more bytes)", long.len() - kept)), "{cut}");
    }

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
