//! The executor: for one Service it reads what the decision needs, lets `decide` choose, and
//! carries the decision out in a fixed order: an older version's finalizer off, DaemonSet,
//! status, Events. The orphan sweep and the clean-up of Services hostlb no longer serves live
//! here too: every write to the API server goes through this file.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use tracing::{info, warn};

use hostlb_model::address::{Address, IpMode};
use hostlb_model::reason::{listed, Reason};
use hostlb_model::service::{ingress, ServiceView};
use hostlb_model::{agent, names};

use crate::decide::agent::desired_agent;
use crate::decide::condition;
use crate::decide::daemonset::{config_hash_of, Dataplane};
use crate::decide::finalizer::finalizer_removal;
use crate::decide::orphans::orphaned;
use crate::decide::{decide, Applied, DaemonSetAction, Decision, Observed, PlanAction, Serving, Settings};
use crate::error::{Error, Result};
use crate::run::events::Events;
use crate::run::metrics::Metrics;
use crate::state::proxy_pod::owning_service_key;
use crate::state::triggers::service_ref;
use crate::state::{key_of, Index, Key};

/// The kinds of object that carry a Service's forwarding: a proxy DaemonSet, or a plan for the
/// node agents.
trait ProxyObject:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + DeserializeOwned
    + Serialize
    + std::fmt::Debug
    + Send
    + Sync
    + 'static
{
    const KIND: &'static str;
    /// The Event of its deletion for the Service.
    const DELETED: Reason;
    /// The label selector of this install's objects of the kind.
    fn selector(install_id: &str) -> String;
}

impl ProxyObject for DaemonSet {
    const KIND: &'static str = "DaemonSet";
    const DELETED: Reason = Reason::DaemonSetDeleted;
    fn selector(install_id: &str) -> String {
        names::daemonset_selector(install_id)
    }
}

impl ProxyObject for ConfigMap {
    const KIND: &'static str = "ConfigMap";
    const DELETED: Reason = Reason::PlanDeleted;
    fn selector(install_id: &str) -> String {
        agent::plan_selector(install_id)
    }
}

/// A resync now and then repairs anything a missed watch event left behind.
const RESYNC: Duration = Duration::from_secs(600);

/// How soon a Service reconciled before the watches have synced is looked at again.
const UNTIL_SYNCED: Duration = Duration::from_millis(500);

/// How soon a failed reconcile is tried again, at first and at most.
const FIRST_RETRY: Duration = Duration::from_secs(5);
const LAST_RETRY: Duration = Duration::from_secs(300);

pub struct Context {
    client: Client,
    settings: Settings,
    /// The Services as the controller's own watch sees them; the orphan sweep reads every one.
    services: Store<Service>,
    pub(crate) index: Arc<RwLock<Index>>,
    /// What this replica's own applies left on each proxy DaemonSet, by `namespace/name`.
    applied: Mutex<HashMap<Key, Applied>>,
    events: Events,
    metrics: Arc<Metrics>,
    /// Failed reconciles in a row, per Service, for the back-off.
    failures: Mutex<HashMap<ObjectRef<Service>, u32>>,
    /// Set once every watch has listed its objects; shared with /readyz.
    synced: Arc<AtomicBool>,
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

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("index lock")
    }

    fn proxy_api<K: ProxyObject>(&self) -> Api<K> {
        Api::namespaced(self.client.clone(), &self.settings.proxy.namespace)
    }

    fn service_api(&self, service: &Service) -> Api<Service> {
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

/// Releases every Service this install serves or left something on, as if each were no longer
/// served (status cleared, an older version's finalizer removed), then deletes whatever proxy
/// DaemonSet, plan and node agent of this install is left. Returns how many Services it released.
pub async fn uninstall(client: Client, settings: Settings) -> Result<usize> {
    let (services, _) = reflector::store();
    let index = Arc::new(RwLock::new(Index::default()));
    let synced = Arc::new(AtomicBool::new(true));
    let context = Context::new(client.clone(), settings, services, index, Arc::new(Metrics::default()), synced);
    let all = Api::<Service>::all(client).list(&ListParams::default()).await.map_err(Error::kube("list Services"))?;
    let mut released = 0;
    for service in &all.items {
        let view = ServiceView::of(service);
        // Proxies of Services not served any more are among the DaemonSets deleted below.
        if !context.settings.serves(&view) && !context.settings.must_release(&view, false) {
            continue;
        }
        let clear_status = !view.deleting && view.holds_status();
        context.clean_up(service, clear_status).await?;
        info!(service = %ObjectRef::from_obj(service), "released");
        released += 1;
    }
    for daemonset in context.list_proxies::<DaemonSet>(None).await? {
        let action = format!("delete DaemonSet {}", key_of(&daemonset));
        context.delete_proxy_object(&daemonset).await.map_err(Error::kube(action))?;
    }
    for plan in context.list_proxies::<ConfigMap>(None).await? {
        let action = format!("delete ConfigMap {}", key_of(&plan));
        context.delete_proxy_object(&plan).await.map_err(Error::kube(action))?;
    }
    // Its agents, seeing it gone, remove their nodes' rules.
    let agents = context.proxy_api::<DaemonSet>().get_opt(&context.settings.proxy.agent).await;
    if let Some(agents) = agents.map_err(Error::kube("get the node agents' DaemonSet"))? {
        context.delete_proxy_object(&agents).await.map_err(Error::kube("delete the node agents' DaemonSet"))?;
    }
    context.events.flush().await;
    Ok(released)
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
    let daemonset = context.fetch_proxy_object(&view, Dataplane::Pods, |index, key| index.daemonsets.get(key).cloned());
    let plan = context.fetch_proxy_object(&view, Dataplane::Agent, |index, key| index.plans.get(key).cloned());
    let (daemonset, plan) = (daemonset.await?, plan.await?);
    let decision = {
        let key = daemonset.as_deref().map(key_of);
        let applied = context.applied.lock().expect("applied lock");
        let last_applied = key.and_then(|key| applied.get(&key));
        let observed = Observed {
            service: &view,
            daemonset: daemonset.as_deref(),
            last_applied,
            plan: plan.as_deref(),
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
            let next = [serving.hold, serving.recheck].into_iter().flatten().min().unwrap_or(RESYNC);
            context.serve(&service, &view, *serving).await?;
            Action::requeue(next)
        }
    };
    context.failures.lock().expect("failures lock").remove(&ObjectRef::from_obj(service.as_ref()));
    Ok(action)
}

impl Context {
    /// The object named for this Service's forwarding (its proxy DaemonSet or its plan), if the
    /// Service is served: from the index, or, as only hostlb's own are indexed, from the API
    /// server when `dataplane` is the one in use, so that one of the same name that is not ours
    /// is seen before it would be overwritten. Of the other data plane, only the index's, which
    /// are hostlb's own, left to delete.
    async fn fetch_proxy_object<K: ProxyObject>(
        &self,
        service: &ServiceView,
        dataplane: Dataplane,
        indexed: impl FnOnce(&Index, &str) -> Option<Arc<K>>,
    ) -> Result<Option<Arc<K>>> {
        if !self.settings.serves(service) || service.deleting {
            return Ok(None);
        }
        let name = names::daemonset_name(&service.name, &service.uid);
        let namespace = &self.settings.proxy.namespace;
        let found = indexed(&self.read_index(), &format!("{namespace}/{name}"));
        if found.is_some() || dataplane != self.settings.proxy.dataplane {
            return Ok(found);
        }
        let action = format!("get {} {namespace}/{name}", K::KIND);
        let found = self.proxy_api::<K>().get_opt(&name).await.map_err(Error::kube(action))?;
        Ok(found.map(Arc::new))
    }

    /// A DaemonSet the API server refuses does not stop the status from following the proxies
    /// that run: the refusal becomes a Warning, and the reconcile fails afterwards so that it
    /// is retried with back-off.
    async fn serve(&self, service: &Service, view: &ServiceView, mut serving: Serving) -> Result<()> {
        if serving.remove_finalizer {
            self.remove_finalizer(service).await?;
        }
        let mut proxies = match &serving.daemonset {
            Some(DaemonSetAction::Apply { object, created, ports }) => {
                self.apply_daemonset(service, object, *created, ports).await
            }
            Some(DaemonSetAction::Delete(daemonset)) => self.delete_proxies(service, daemonset).await,
            None => Ok(()),
        };
        let plan = match &serving.plan {
            Some(PlanAction::Apply { object, created, ports }) => {
                self.apply_plan(service, object, *created, ports).await
            }
            Some(PlanAction::Delete(plan)) => self.delete_proxies(service, plan).await,
            None => Ok(()),
        };
        if proxies.is_ok() {
            proxies = plan;
        }
        if let Err(refused) = &proxies {
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
        proxies
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
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.settings.proxy.namespace);
        let at_once = DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() };
        match pods.delete(name, &at_once).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.is_not_found() => Ok(false),
            Err(error) => Err(Error::kube(format!("delete proxy pod {key}"))(error)),
        }
    }

    async fn apply_daemonset(&self, service: &Service, desired: &DaemonSet, created: bool, ports: &str) -> Result<()> {
        let key = key_of(desired);
        let applied = self
            .proxy_api::<DaemonSet>()
            .patch(&desired.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(Error::kube(format!("apply DaemonSet {key}")))?;
        let record = Applied {
            generation: applied.metadata.generation.unwrap_or_default(),
            config_hash: config_hash_of(desired).unwrap_or_default().into(),
        };
        self.applied.lock().expect("applied lock").insert(key.clone(), record);
        self.metrics.daemonset_applies.inc();
        let verb = if created { "created" } else { "updated" };
        info!(daemonset = %key, verb, "applied proxy DaemonSet");
        let message = format!("{verb} DaemonSet {key} for ports {ports}");
        self.events.publish(service, Reason::DaemonSetApplied, message);
        Ok(())
    }

    async fn apply_plan(&self, service: &Service, desired: &ConfigMap, created: bool, ports: &str) -> Result<()> {
        let key = key_of(desired);
        let params = PatchParams::apply(names::MANAGER).force();
        let api = self.proxy_api::<ConfigMap>();
        api.patch(&desired.name_any(), &params, &Patch::Apply(desired))
            .await
            .map_err(Error::kube(format!("apply ConfigMap {key}")))?;
        self.metrics.daemonset_applies.inc();
        let verb = if created { "created" } else { "updated" };
        info!(plan = %key, verb, "applied the plan for the node agents");
        self.events.publish(service, Reason::PlanApplied, format!("{verb} plan {key} for ports {ports}"));
        Ok(())
    }

    async fn write_status(
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
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": service.name_any() },
            "status": status,
        });
        self.service_api(service)
            .patch_status(&service.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube("write Service status"))?;
        self.metrics.status_updates.inc();
        Ok(())
    }

    /// Removes the finalizer an older version put on, with a guarded JSON patch.
    async fn remove_finalizer(&self, service: &Service) -> Result<()> {
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

    /// Removes everything hostlb made for a Service that is deleted or no longer ours. Lists
    /// from the API server, not the index, so that nothing created just before is missed.
    async fn clean_up(&self, service: &Service, clear_status: bool) -> Result<()> {
        // An empty UID selects nothing, never every DaemonSet.
        let uid = service.uid().unwrap_or_default();
        for daemonset in self.list_proxies::<DaemonSet>(Some(&uid)).await? {
            self.delete_proxies(service, &daemonset).await?;
        }
        for plan in self.list_proxies::<ConfigMap>(Some(&uid)).await? {
            self.delete_proxies(service, &plan).await?;
        }
        if clear_status {
            self.write_status(service, &[], None, None).await?;
        }
        self.remove_finalizer(service).await?;
        self.events.forget(service);
        Ok(())
    }

    /// This install's proxy DaemonSets or plans, or those of the Service with this UID, as the
    /// API server has them.
    async fn list_proxies<K: ProxyObject>(&self, service_uid: Option<&str>) -> Result<Vec<K>> {
        let mut selector = K::selector(&self.settings.proxy.install_id);
        if let Some(uid) = service_uid {
            selector = format!("{selector},{}={uid}", names::LABEL_SERVICE_UID);
        }
        let listed = self.proxy_api::<K>().list(&ListParams::default().labels(&selector)).await;
        Ok(listed.map_err(Error::kube(format!("list {}s", K::KIND)))?.items)
    }

    async fn delete_proxies<K: ProxyObject>(&self, service: &Service, object: &K) -> Result<()> {
        let action = format!("delete {} {}", K::KIND, key_of(object));
        if let Some(deleted) = self.delete_proxy_object(object).await.map_err(Error::kube(action))? {
            info!(object = %deleted, kind = K::KIND, "deleted the Service's forwarding");
            self.events.publish(service, K::DELETED, format!("deleted {} {deleted}", K::KIND));
        }
        Ok(())
    }

    /// Deletes this very object (a UID precondition guards against a new one of the same
    /// name). Its `namespace/name` when deleted; `None` when it was gone already.
    async fn delete_proxy_object<K: ProxyObject>(&self, object: &K) -> Result<Option<String>, kube::Error> {
        let only_this_one = DeleteParams {
            preconditions: Some(Preconditions { uid: object.uid(), resource_version: None }),
            ..DeleteParams::background()
        };
        let key = key_of(object);
        match self.proxy_api::<K>().delete(&object.name_any(), &only_this_one).await {
            Ok(_) => {
                self.metrics.daemonset_deletes.inc();
                self.applied.lock().expect("applied lock").remove(&key);
                Ok(Some(key))
            }
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether the proxy object is still orphaned against its Service as the API server has
    /// it now.
    async fn orphaned_by_the_api_server<K: ProxyObject>(&self, object: &K) -> Result<bool> {
        let Some(service) = owning_service_key(object).map(|key| service_ref(&key)) else { return Ok(true) };
        let namespace = service.namespace.as_deref().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let action = format!("get Service {namespace}/{}", service.name);
        let live = services.get_opt(&service.name).await.map_err(Error::kube(action))?;
        Ok(!orphaned([object], &live.iter().collect::<Vec<_>>(), &self.settings).is_empty())
    }

    /// Deletes the proxy DaemonSets and plans that no Service will clean up. Failures are only
    /// logged: the next sweep tries again.
    pub async fn delete_orphans(&self) {
        // Before the Services have listed, every DaemonSet would look orphaned.
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let (daemonsets, plans): (Vec<Arc<DaemonSet>>, Vec<Arc<ConfigMap>>) = {
            let index = self.read_index();
            (index.daemonsets.values().cloned().collect(), index.plans.values().cloned().collect())
        };
        self.delete_orphaned(&daemonsets).await;
        self.delete_orphaned(&plans).await;
    }

    async fn delete_orphaned<K: ProxyObject>(&self, objects: &[Arc<K>]) {
        let services = self.services.state();
        let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
        for object in orphaned(objects.iter().map(Arc::as_ref), &services, &self.settings) {
            let service = owning_service_key(object).unwrap_or_else(|| "an unknown Service".into());
            // The cache may lag (a new leader whose Service watch is behind its DaemonSet
            // watch): only what the API server says now deletes proxies that serve.
            match self.orphaned_by_the_api_server(object).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    warn!(object = %key_of(object), %error, "could not read its Service; the object is kept");
                    continue;
                }
            }
            match self.delete_proxy_object(object).await {
                Ok(Some(deleted)) => {
                    info!(object = %deleted, kind = K::KIND, %service, "deleted an orphaned proxy object");
                    let note = format!("deleted {} {deleted}: {service} no longer needs it", K::KIND);
                    self.events.publish(object, Reason::OrphanDeleted, note);
                }
                Ok(None) => {}
                Err(error) => warn!(object = %key_of(object), %error, "could not delete an orphaned proxy object"),
            }
        }
    }

    /// Keeps the agents' DaemonSet as the data plane needs it: applied with the node agents
    /// (when it is missing or differs), deleted with proxy pods once no plan is left, whose
    /// agents then remove their nodes' rules.
    pub async fn keep_agents(&self) {
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let desired = desired_agent(&self.settings.proxy);
        let name = desired.name_any();
        let existing = self.read_index().agents.values().next().cloned();
        let outcome = match (self.settings.proxy.dataplane, existing) {
            (Dataplane::Agent, existing)
                if existing.as_ref().is_none_or(|e| config_hash_of(e) != config_hash_of(&desired)) =>
            {
                let params = PatchParams::apply(names::MANAGER).force();
                let applied = self.proxy_api::<DaemonSet>().patch(&name, &params, &Patch::Apply(&desired)).await;
                applied.map(|_| info!(daemonset = %name, "applied the node agents"))
            }
            // Once no plan is left, every Service's proxy pods have taken over from its agents.
            (Dataplane::Pods, Some(existing)) if self.read_index().plans.values().next().is_none() => self
                .delete_proxy_object(existing.as_ref())
                .await
                .map(|_| info!(daemonset = %name, "deleted the node agents")),
            _ => Ok(()),
        };
        if let Err(error) = outcome {
            warn!(daemonset = %name, %error, "could not bring the node agents' DaemonSet in line; trying again");
        }
    }
}

#[cfg(test)]
#[path = "reconcile_tests.rs"]
mod tests;
