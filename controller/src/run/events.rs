//! What hostlb tells users on their objects: the reasons of its Events, and publishing them so
//! that a lasting problem is reported once, not on every reconcile.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::run::metrics::Metrics;
use hostlb_model::names;
use hostlb_model::reason::{bounded, one_per_reason, Reason, Warning};

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

/// A recorder, and the message it published last.
struct LastPublished {
    message: String,
    recorder: Recorder,
}

/// Publishes Events and remembers which warnings each Service has been told of.
pub struct Events {
    client: Client,
    reporter: Reporter,
    reported: Mutex<HashMap<ObjectRef<Service>, BTreeSet<Warning>>>,
    /// One recorder per Service and reason, with the message it last published: the same
    /// warning coming back counts up on its earlier Event (a series) instead of adding
    /// another, and a new message of the reason takes the place of the old one, so that a
    /// Service costs at most one recorder per reason however its messages change.
    recorders: Mutex<HashMap<(ObjectRef<Service>, Reason), LastPublished>>,
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
        let current: BTreeSet<Warning> = one_per_reason(warnings).into_iter().collect();
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
        let fresh = || LastPublished {
            message: warning.message.clone(),
            recorder: Recorder::new(self.client.clone(), self.reporter.clone()),
        };
        let last = recorders.entry((service.clone(), warning.reason)).or_insert_with(fresh);
        if last.message != warning.message {
            *last = fresh();
        }
        last.recorder.clone()
    }

    /// Queues a one-off Event. Each is written with a recorder of its own: a shared one would
    /// fold different notes with the same reason into one series and hide all but the first.
    pub fn publish<K: Resource<DynamicType = ()>>(&self, regarding: &K, reason: Reason, note: String) {
        self.publish_regarding(regarding.object_ref(&()), reason, note);
    }

    /// `publish`, about the object `regarding` refers to.
    pub fn publish_regarding(&self, regarding: ObjectReference, reason: Reason, note: String) {
        let queued = Queued { regarding, reason, note };
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
    use crate::run::mock_api::mock_api;

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

    #[tokio::test]
    async fn two_thousand_warnings_of_one_reason_are_one_event_and_one_recorder() {
        let (client, mut api) = mock_api();
        let events = Events::new(client, None);
        let service = ServiceBuilder::new("web").build();
        let warnings = (0..2000).map(|i| Warning::new(Reason::InvalidOption, format!("item {i} is refused"))).collect();
        let reported = tokio::spawn(async move {
            events.report(&service, warnings, &Metrics::default()).await;
            let changed = vec![Warning::new(Reason::InvalidOption, "back-off 20s")];
            events.report(&service, changed, &Metrics::default()).await;
            events
        });
        let note = api.expect_event("shop", "InvalidOption").await["note"].clone();
        assert!(note.as_str().unwrap().ends_with("item 19 is refused and 1980 more"), "{note}");
        api.expect_event("shop", "InvalidOption").await;
        let events = tokio::time::timeout(std::time::Duration::from_secs(5), reported).await.unwrap().unwrap();
        api.expect_nothing_more().await;
        assert_eq!(events.recorders.lock().unwrap().len(), 1, "one recorder per reason, whatever its messages");
    }

    #[test]
    fn reasons_are_spelled_as_their_names_and_only_normal_ones_are_not_warnings() {
        for reason in Reason::ALL {
            // Renamed in the code when it came to cover plans too; its Event keeps its name.
            let spelled =
                if reason == Reason::ForwardingNameTaken { "DaemonSetNameTaken".into() } else { format!("{reason:?}") };
            assert_eq!(reason.as_str(), spelled);
        }
        let normal: Vec<Reason> = Reason::ALL.into_iter().filter(|r| !r.is_warning()).collect();
        assert_eq!(
            normal,
            vec![
                Reason::DaemonSetApplied,
                Reason::DaemonSetDeleted,
                Reason::PlanApplied,
                Reason::PlanDeleted,
                Reason::OrphanDeleted,
                Reason::StatusUpdated,
                Reason::ProxyPodReplaced
            ]
        );
    }
}
