//! The executor: for one Service it reads what the decision needs, lets `decide` choose, and
//! carries the decision out in a fixed order: an older version's finalizer off, the Service's
//! forwarding objects (`forwarding`), proxy pods to replace, status, Events. Every write to
//! the API server goes through this file and `forwarding`, which also holds the orphan sweep,
//! the clean-up of Services hostlb no longer serves, and uninstall.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, ResourceExt};
use serde_json::json;
use tracing::{info, warn};

use hostlb_model::address::{Address, IpMode};
use hostlb_model::names;
use hostlb_model::reason::{listed, Reason};
use hostlb_model::service::{ingress, ServiceView};

use crate::decide::condition;
use crate::decide::dataplane::Applied;
use crate::decide::finalizer::finalizer_removal;
use crate::decide::{decide, Decision, Observed, Serving, Settings};
use crate::error::{Error, Result};
use crate::run::events::Events;
use crate::run::metrics::Metrics;
use crate::state::{Index, Key};

/// A resync now and then repairs anything a missed watch event left behind.
const RESYNC: Duration = Duration::from_secs(600);

/// How soon a Service reconciled before the watches have synced is looked at again.
const UNTIL_SYNCED: Duration = Duration::from_millis(500);

/// How soon a failed reconcile is tried again, at first and at most.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);

/// What this replica's applies are remembered by: the object's kind and `namespace/name` (a
/// Service's DaemonSet and plan have the same name).
pub type AppliedKey = (String, Key);

pub struct Context {
    pub(super) client: Client,
    pub(super) settings: Settings,
    /// The Services as the controller's own watch sees them; the orphan sweep reads every one.
    pub(super) services: Store<Service>,
    pub(crate) index: Arc<RwLock<Index>>,
    /// What this replica's own applies left on each forwarding object, by kind and
    /// `namespace/name`.
    pub(super) applied: Mutex<HashMap<AppliedKey, Applied>>,
    pub(super) events: Events,
    pub(super) metrics: Arc<Metrics>,
    /// Failed reconciles in a row, per Service, for the back-off.
    failures: Mutex<HashMap<ObjectRef<Service>, u32>>,
    /// Set once every watch has listed its objects; shared with /readyz.
    pub(super) synced: Arc<AtomicBool>,
}

impl Context {
    pub fn new(
        client: Client,
        settings: Settings,
        services: Store<Service>,
        index: Arc<RwLock<Index>>,
        metrics: Arc<Metrics>,
        synced: Arc<AtomicBool>,
    ) -> Self {
        let events = Events::new(client.clone(), settings.instance.clone());
        let (applied, failures) = (Mutex::default(), Mutex::default());
        Context { client, settings, services, index, applied, events, metrics, failures, synced }
    }

    /// Whether every watch has listed its objects.
    pub fn synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    pub(super) fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    pub(super) fn service_api(&self, service: &Service) -> Api<Service> {
        Api::namespaced(self.client.clone(), &service.namespace().unwrap_or_default())
    }
}

pub fn error_policy(service: Arc<Service>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.reconcile_failed(error);
    let key = ObjectRef::from_obj(service.as_ref());
    let failures = {
        let mut failures = context.failures.lock().expect("failures lock");
        let count = failures.entry(key.clone()).or_default();
        *count += 1;
        *count
    };
    let delay = retry_delay(failures);
    warn!(service = %key, %error, retry_in = ?delay, "reconciliation failed");
    Action::requeue(delay)
}

/// Doubles from `FIRST_RETRY` with each failure in a row, up to `LAST_RETRY`.
fn retry_delay(failures_in_a_row: u32) -> Duration {
    let doublings = failures_in_a_row.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(LAST_RETRY)
}

#[tracing::instrument(skip_all, fields(service = %ObjectRef::from_obj(service.as_ref())))]
pub async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action> {
    context.metrics.reconcile_dequeued(&ObjectRef::from_obj(service.as_ref()));
    // Status computed from half-filled caches would withdraw addresses that are fine. Waiting
    // here instead would stall the controller, which is what feeds those caches.
    if !context.synced.load(Ordering::Acquire) {
        return Ok(Action::requeue(UNTIL_SYNCED));
    }
    let view = ServiceView::of(&service);
    let (forwarding, previous) = context.fetch_forwarding(&view).await?;
    let decision = {
        let applied = context.applied.lock().expect("applied lock");
        let observed = Observed {
            service: &view,
            forwarding: forwarding.as_ref(),
            last_applied: forwarding.as_ref().and_then(|object| applied.get(&context.applied_key(object))),
            previous: previous.iter().map(|(kind, object)| (*kind, object)).collect(),
            now: Timestamp::now(),
        };
        decide(&observed, &context.read_index(), &context.settings)
    };
    let action = match decision {
        Decision::Ignore => Action::await_change(),
        Decision::CleanUp { clear_status } => {
            let _timer = context.metrics.reconcile_started();
            context.clean_up(&service, clear_status).await?;
            Action::await_change()
        }
        Decision::Serve(serving) => {
            let _timer = context.metrics.reconcile_started();
            let next = [serving.wait_for_starting, serving.recheck].into_iter().flatten().min().unwrap_or(RESYNC);
            context.serve(&service, &view, *serving).await?;
            Action::requeue(next)
        }
    };
    context.failures.lock().expect("failures lock").remove(&ObjectRef::from_obj(service.as_ref()));
    Ok(action)
}

impl Context {
    /// A forwarding object the API server refuses does not stop the status from following the
    /// forwarders that run: the refusal becomes a Warning, and the reconcile fails afterwards
    /// so that it is retried with back-off.
    async fn serve(&self, service: &Service, view: &ServiceView, mut serving: Serving) -> Result<()> {
        if serving.remove_finalizer {
            self.remove_finalizer(service).await?;
        }
        let mut forwarding = Ok(());
        for change in &serving.forwarding {
            let outcome = self.change_forwarding(service, change).await;
            if forwarding.is_ok() {
                forwarding = outcome;
            }
        }
        if let Err(refused) = &forwarding {
            serving.warnings.extend(refused.as_warning());
        }
        for pod in &serving.finish_deleting {
            if self.delete_pod_at_once(pod).await? {
                info!(pod = %pod, "removed a proxy pod under graceful deletion, so that its replacement is placed now");
            }
        }
        if let Some(pod) = &serving.replace_pod {
            if self.delete_pod_at_once(pod).await? {
                info!(pod = %pod, "replacing out-of-date proxy pod");
                let message = format!("replacing out-of-date proxy pod {pod}");
                self.events.publish(service, Reason::ProxyPodReplaced, message);
            }
        }
        if serving.publish.is_some() || serving.condition.is_some() {
            // Every apply carries hostlb's condition: one without it would drop it.
            let existing = view.condition.as_ref();
            let now = Time(Timestamp::now());
            let ready = serving.condition.as_ref().map(|ready| condition::to_api(ready, existing, now));
            let ready = ready.or_else(|| existing.cloned());
            let addresses = serving.publish.clone().unwrap_or_else(|| view.published.addresses.clone());
            self.write_status(service, &addresses, serving.ip_mode, ready).await?;
        }
        if let Some(addresses) = serving.publish {
            let message = if addresses.is_empty() {
                "no node is ready to serve".to_string()
            } else {
                listed(addresses.iter().map(ToString::to_string))
            };
            info!(addresses = %message, "published load balancer status");
            self.events.publish(service, Reason::StatusUpdated, message);
        }
        self.events.report(service, serving.warnings, &self.metrics).await;
        forwarding
    }

    /// Deletes a proxy pod without a grace period, for the DaemonSet controller to replace; false
    /// when it was gone already.
    ///
    /// The scheduler places no replacement on the node while the old pod's object claims the
    /// host ports, and a graceful deletion keeps it until the kubelet has torn the pod down
    /// (seconds; on 1.20 sometimes a minute). The old pod forwards until its kubelet stops it,
    /// and the node stays published throughout (`decide::roll`).
    async fn delete_pod_at_once(&self, key: &str) -> Result<bool> {
        let name = key.rsplit('/').next().unwrap_or(key);
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.forwarding.namespace);
        let at_once = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        match pods.delete(name, &at_once).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(error) => Err(Error::kube(format!("delete proxy pod {key}"))(error)),
        }
    }

    pub(super) async fn write_status(
        &self,
        service: &Service,
        addresses: &[Address],
        ip_mode: Option<IpMode>,
        ready: Option<Condition>,
    ) -> Result<()> {
        let load_balancer =
            if addresses.is_empty() { json!({}) } else { json!({ "ingress": ingress(addresses, ip_mode) }) };
        // Server-side apply: leaving `ingress` or the condition out drops only what hostlb
        // wrote; conditions are a map by type, so other writers' conditions stay.
        let mut status = json!({ "loadBalancer": load_balancer });
        if let Some(ready) = ready {
            status["conditions"] = json!([ready]);
        }
        // Over the version read only: a write of a replica whose term ended meanwhile, landing
        // late, cannot undo its successor's (the API server refuses it with a conflict, and the
        // Service's next change brings the next look).
        let mut metadata = json!({ "name": service.name_any() });
        if let Some(version) = service.resource_version() {
            metadata["resourceVersion"] = json!(version);
        }
        let patch = json!({ "apiVersion": "v1", "kind": "Service", "metadata": metadata, "status": status });
        self.service_api(service)
            .patch_status(&service.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube("write Service status"))?;
        self.metrics.status_updates.inc();
        Ok(())
    }

    /// Removes the finalizer an older version put on, with a guarded JSON patch.
    pub(super) async fn remove_finalizer(&self, service: &Service) -> Result<()> {
        let action = "remove finalizer";
        let outcome = match self.patch_finalizers(service, service.finalizers()).await {
            // The patch tests the finalizers as the cache had them, and the cache can be behind
            // (someone else changed them just before): the test fails with 422. One fresh read
            // settles it.
            Err(kube::Error::Api(status)) if status.code == 422 => {
                let current = self.service_api(service).get_opt(&service.name_any()).await;
                match current.map_err(Error::kube(action))? {
                    Some(current) if current.uid() == service.uid() => {
                        self.patch_finalizers(service, current.finalizers()).await
                    }
                    // Gone, or another Service of the same name: nothing of this one to change.
                    _ => Ok(()),
                }
            }
            outcome => outcome,
        };
        match outcome {
            Ok(()) => Ok(()),
            // Gone: its finalizer was the last one, removed by an earlier reconciliation.
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(()),
            Err(error) => Err(Error::kube(action)(error)),
        }
    }

    async fn patch_finalizers(&self, service: &Service, current: &[String]) -> kube::Result<()> {
        let Some(patch) = finalizer_removal(current, &self.settings.finalizer) else {
            return Ok(());
        };
        let api = self.service_api(service);
        api.patch(&service.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await.map(drop)
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
