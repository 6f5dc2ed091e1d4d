//! The I/O layer: watches, apply, status, events, finalizer. Every decision is made by the pure
//! modules; this one only reads the caches and writes what they computed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::conflicts::{port_conflicts, Claimant};
use crate::daemonset::{config_hash_of, desired_daemonset, ProxySettings};
use crate::error::{Error, Result};
use crate::finalizer::finalizer_patch;
use crate::mapping::{orphaned, owning_service, services_affected_by_node, NodeChangeFilter};
use crate::metrics::Metrics;
use crate::names;
use crate::placement::{enablelb_in_use, Placement};
use crate::service_lb::{is_handled, ServiceLb};
use crate::status::{desired_addresses, ingress, needs_update, published_addresses};

/// Cluster-wide choices of this controller.
#[derive(Clone, Debug)]
pub struct Settings {
    pub load_balancer_class: String,
    pub address_type: crate::status::AddressType,
    pub proxy: ProxySettings,
    /// Names this replica in the Events it publishes.
    pub instance: Option<String>,
}

pub struct Context {
    client: Client,
    settings: Settings,
    services: Store<Service>,
    nodes: Store<Node>,
    pods: Store<Pod>,
    daemonsets: Store<DaemonSet>,
    metrics: Arc<Metrics>,
    /// Set once every watch has listed its objects; shared with /readyz.
    synced: Arc<AtomicBool>,
    /// Warnings already published per Service, so that a problem is reported once, not on
    /// every reconciliation.
    reported: Mutex<HashMap<ObjectRef<Service>, ReportedWarnings>>,
}

/// (reason, message) pairs.
type ReportedWarnings = BTreeSet<(String, String)>;

/// A problem to tell the user about on the Service.
struct Warning {
    reason: &'static str,
    message: String,
}

pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
) -> Result<()> {
    let namespace = settings.proxy.namespace.clone();
    let all = watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    let managed = all.clone().labels(&names::managed_selector());

    let (nodes, node_writer) = reflector::store();
    let node_events = reflector::reflector(node_writer, watcher(Api::<Node>::all(client.clone()), all.clone()))
        .default_backoff()
        .touched_objects();
    let (pods, pod_writer) = reflector::store();
    let pod_events =
        reflector::reflector(pod_writer, watcher(Api::<Pod>::namespaced(client.clone(), &namespace), managed.clone()))
            .default_backoff()
            .touched_objects();
    let (daemonsets, daemonset_writer) = reflector::store();
    let daemonset_events = reflector::reflector(
        daemonset_writer,
        watcher(Api::<DaemonSet>::namespaced(client.clone(), &namespace), managed),
    )
    .default_backoff()
    .touched_objects();

    let controller = Controller::new(Api::<Service>::all(client.clone()), all);
    let services = controller.store();
    let context = Arc::new(Context {
        client,
        settings: settings.clone(),
        services: services.clone(),
        nodes: nodes.clone(),
        pods,
        daemonsets,
        metrics: metrics.clone(),
        synced: ready.clone(),
        reported: Mutex::default(),
    });

    let node_filter = Mutex::new(NodeChangeFilter::default());
    let class = settings.load_balancer_class.clone();
    let services_for_nodes = services.clone();
    let node_mapper = move |node: Node| {
        // The reflector has applied the event already: a node missing from the cache is gone.
        let current = nodes.get(&ObjectRef::from_obj(&node));
        let changed = node_filter.lock().expect("node filter lock").changed(&node.name_any(), current.as_deref());
        if changed {
            services_affected_by_node(services_for_nodes.state().iter().map(|s| s.as_ref()), &class)
        } else {
            Vec::new()
        }
    };

    // Readiness, then the orphan sweeps. A replica whose watches never list would sit not-Ready
    // forever; failing lets the kubelet start a fresh one, as controller-runtime does after its
    // cache sync timeout.
    let after_sync = {
        let context = context.clone();
        async move {
            context.watches_synced(sync_timeout).await?;
            ready.store(true, Ordering::Release);
            info!("all watches synced; ready");
            let mut sweeps = tokio::time::interval(ORPHAN_SWEEP);
            loop {
                sweeps.tick().await;
                context.delete_orphans().await;
            }
        }
    };

    let reconciling = controller
        .watches_stream(daemonset_events, |ds| owning_service(&ds))
        .watches_stream(pod_events, |pod| owning_service(&pod))
        .watches_stream(node_events, node_mapper)
        .shutdown_on_signal()
        .run(reconcile, error_policy, context)
        .for_each(|result| async move {
            match result {
                Ok(_) => {}
                // Triggers from proxy objects whose Service is already gone.
                Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                    debug!(%object, "no such Service; nothing to reconcile")
                }
                Err(error) => warn!(%error, "reconciliation did not run"),
            }
        });
    tokio::select! {
        () = reconciling => Ok(()),
        failed = after_sync => failed,
    }
}

fn error_policy(service: Arc<Service>, error: &Error, context: Arc<Context>) -> Action {
    context.metrics.reconcile_failed(error);
    warn!(service = %ObjectRef::from_obj(service.as_ref()), %error, "reconciliation failed; retrying");
    Action::requeue(Duration::from_secs(5))
}

/// A resync now and then repairs anything a missed watch event left behind.
const RESYNC: Duration = Duration::from_secs(600);

/// Below the client's read timeout, so that a quiet watch ends before the read timeout would cut it.
const WATCH_TIMEOUT_SECONDS: u32 = 50;

/// How often proxy DaemonSets that no Service will clean up are looked for.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);

/// How soon a Service reconciled before the watches have synced is looked at again.
const UNTIL_SYNCED: Duration = Duration::from_millis(500);

#[tracing::instrument(skip_all, fields(service = %ObjectRef::from_obj(service.as_ref())))]
async fn reconcile(service: Arc<Service>, context: Arc<Context>) -> Result<Action> {
    // Status computed from half-filled caches would withdraw addresses that are fine. Waiting
    // here instead would stall the controller, which is what feeds those caches.
    if !context.synced.load(Ordering::Acquire) {
        return Ok(Action::requeue(UNTIL_SYNCED));
    }
    let handled = is_handled(&service, &context.settings.load_balancer_class);
    let deleting = service.meta().deletion_timestamp.is_some();
    let has_finalizer = service.finalizers().iter().any(|f| f == names::FINALIZER);
    if !handled || deleting {
        if has_finalizer {
            let _timer = context.metrics.reconcile_started();
            context.clean_up(&service, !deleting).await?;
        }
        return Ok(Action::await_change());
    }
    let _timer = context.metrics.reconcile_started();
    if !has_finalizer {
        context.set_finalizer(&service, true).await?;
    }
    let lb = match ServiceLb::from_service(&service) {
        Ok(lb) => lb,
        Err(errors) => {
            let warnings = errors
                .into_iter()
                .map(|e| Warning { reason: "InvalidOption", message: format!("{e}; the Service is left as it was") })
                .collect();
            context.report(&service, warnings).await;
            return Ok(Action::await_change());
        }
    };

    let nodes = context.nodes.state();
    let node_refs: Vec<&Node> = nodes.iter().map(Arc::as_ref).collect();
    let enablelb = enablelb_in_use(node_refs.iter().copied());
    let placement = Placement::for_service(&lb, enablelb);
    let mut warnings = Vec::new();
    if !node_refs.iter().any(|n| placement.admits(n)) {
        warnings.push(Warning { reason: "NoEligibleNode", message: placement.explain_empty(&lb, &node_refs) });
    }
    warnings.extend(
        context
            .port_conflicts(&lb, &placement, &node_refs, enablelb)
            .into_iter()
            .map(|message| Warning { reason: "PortConflict", message }),
    );

    let desired = desired_daemonset(&lb, &placement, &context.settings.proxy);
    if let Err(warning) = context.ensure_daemonset(&service, &lb, &desired).await? {
        warnings.push(warning);
        context.report(&service, warnings).await;
        return Ok(Action::requeue(RESYNC));
    }

    let proxy_pods: Vec<Arc<Pod>> = context
        .pods
        .state()
        .into_iter()
        .filter(|p| p.labels().get(names::LABEL_SERVICE_UID) == Some(&lb.uid))
        .collect();
    warnings.extend(unschedulable_pods(&proxy_pods));
    let nodes_by_name: BTreeMap<String, &Node> = node_refs.iter().map(|n| (n.name_any(), *n)).collect();
    let addresses = desired_addresses(
        proxy_pods.iter().map(Arc::as_ref),
        &nodes_by_name,
        &placement,
        context.settings.address_type,
        &lb.families,
    );
    if needs_update(&service, &addresses) {
        context.write_status(&service, &addresses).await?;
        let shown: Vec<String> = addresses.iter().map(ToString::to_string).collect();
        let message = if shown.is_empty() { "no node is ready to serve".to_string() } else { shown.join(", ") };
        info!(addresses = %message, "published load balancer status");
        context.publish(service.as_ref(), EventType::Normal, "StatusUpdated", "PublishAddresses", message).await;
    }
    context.report(&service, warnings).await;
    Ok(Action::requeue(RESYNC))
}

fn unschedulable_pods(pods: &[Arc<Pod>]) -> Vec<Warning> {
    pods.iter()
        .filter_map(|pod| {
            let condition = pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| {
                c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable")
            })?;
            Some(Warning {
                reason: "ProxyPodUnschedulable",
                message: format!(
                    "proxy pod {}/{} cannot be scheduled: {}",
                    pod.namespace().unwrap_or_default(),
                    pod.name_any(),
                    condition.message.as_deref().unwrap_or("no reason given")
                ),
            })
        })
        .collect()
}

impl Context {
    /// Waits until every watch has listed its objects, or fails naming those that have not.
    async fn watches_synced(&self, timeout: Duration) -> Result<()> {
        let waits = [
            ("services", self.services.wait_until_ready().boxed()),
            ("nodes", self.nodes.wait_until_ready().boxed()),
            ("proxy pods", self.pods.wait_until_ready().boxed()),
            ("proxy daemonsets", self.daemonsets.wait_until_ready().boxed()),
        ];
        let outcomes = futures::future::join_all(waits.map(|(name, wait)| async move {
            (name, matches!(tokio::time::timeout(timeout, wait).await, Ok(Ok(()))))
        }))
        .await;
        let pending: Vec<&str> = outcomes.into_iter().filter(|(_, synced)| !synced).map(|(name, _)| name).collect();
        if pending.is_empty() {
            Ok(())
        } else {
            Err(Error::WatchesNotSynced { watches: pending.join(", "), waited: timeout })
        }
    }

    fn port_conflicts(&self, lb: &ServiceLb, placement: &Placement, nodes: &[&Node], enablelb: bool) -> Vec<String> {
        let class = &self.settings.load_balancer_class;
        let others: Vec<(ServiceLb, Placement)> = self
            .services
            .state()
            .iter()
            .filter(|s| is_handled(s, class) && s.meta().deletion_timestamp.is_none())
            .filter_map(|s| ServiceLb::from_service(s).ok())
            .filter(|other| other.uid != lb.uid)
            .map(|other| {
                let placement = Placement::for_service(&other, enablelb);
                (other, placement)
            })
            .collect();
        let claimants: Vec<Claimant<'_>> = others.iter().map(|(lb, placement)| Claimant { lb, placement }).collect();
        port_conflicts(&Claimant { lb, placement }, &claimants, nodes)
    }

    /// Applies the DaemonSet unless it is already as desired. Refuses, with a warning, to touch
    /// a DaemonSet of that name that hostlb did not make for this Service.
    async fn ensure_daemonset(
        &self,
        service: &Service,
        lb: &ServiceLb,
        desired: &DaemonSet,
    ) -> Result<Result<(), Warning>> {
        let name = desired.name_any();
        let namespace = &self.settings.proxy.namespace;
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
        let existing = match self.daemonsets.get(&ObjectRef::new(&name).within(namespace)) {
            Some(cached) => Some(cached),
            // Only our own DaemonSets are cached; one of the same name that is not ours must be
            // looked up before it is overwritten.
            None => api
                .get_opt(&name)
                .await
                .map_err(Error::kube(format!("get DaemonSet {namespace}/{name}")))?
                .map(Arc::new),
        };
        if let Some(existing) = &existing {
            let labels = existing.labels();
            let ours = labels.get(names::LABEL_MANAGED_BY).map(String::as_str) == Some(names::MANAGED_BY)
                && labels.get(names::LABEL_SERVICE_UID) == Some(&lb.uid);
            if !ours {
                return Ok(Err(Warning {
                    reason: "DaemonSetNameTaken",
                    message: format!(
                        "DaemonSet {namespace}/{name} exists and was not made by hostlb for this Service; it is left alone"
                    ),
                }));
            }
            if config_hash_of(existing) == config_hash_of(desired) {
                return Ok(Ok(()));
            }
        }
        api.patch(&name, &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(desired))
            .await
            .map_err(Error::kube(format!("apply DaemonSet {namespace}/{name}")))?;
        self.metrics.daemonset_applies.inc();
        let verb = if existing.is_some() { "updated" } else { "created" };
        info!(daemonset = %format!("{namespace}/{name}"), verb, "applied proxy DaemonSet");
        let message = format!("{verb} DaemonSet {namespace}/{name} for ports {}", describe_ports(lb));
        self.publish(service, EventType::Normal, "DaemonSetApplied", "ApplyDaemonSet", message).await;
        Ok(Ok(()))
    }

    async fn write_status(&self, service: &Service, addresses: &[std::net::IpAddr]) -> Result<()> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace().unwrap_or_default());
        let load_balancer = if addresses.is_empty() { json!({}) } else { json!({ "ingress": ingress(addresses) }) };
        // Server-side apply: leaving `ingress` out when empty drops only what hostlb wrote.
        let patch = json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": service.name_any() },
            "status": { "loadBalancer": load_balancer },
        });
        api.patch_status(&service.name_any(), &PatchParams::apply(names::MANAGER).force(), &Patch::Apply(&patch))
            .await
            .map_err(Error::kube("write Service status"))?;
        self.metrics.status_updates.inc();
        Ok(())
    }

    async fn set_finalizer(&self, service: &Service, present: bool) -> Result<()> {
        let Some(patch) = finalizer_patch(service.finalizers(), present) else { return Ok(()) };
        let api: Api<Service> = Api::namespaced(self.client.clone(), &service.namespace().unwrap_or_default());
        match api.patch(&service.name_any(), &PatchParams::default(), &Patch::Json::<()>(patch)).await {
            Ok(_) => Ok(()),
            // Gone: its finalizer was the last one, removed by an earlier reconciliation.
            Err(kube::Error::Api(status)) if !present && status.is_not_found() => Ok(()),
            Err(error) => Err(Error::kube(if present { "add finalizer" } else { "remove finalizer" })(error)),
        }
    }

    /// Removes everything hostlb made for a Service that is deleted or no longer ours.
    async fn clean_up(&self, service: &Service, clear_status: bool) -> Result<()> {
        let namespace = &self.settings.proxy.namespace;
        let api: Api<DaemonSet> = Api::namespaced(self.client.clone(), namespace);
        let uid = service.uid().unwrap_or_default();
        let selector = format!("{},{}={uid}", names::managed_selector(), names::LABEL_SERVICE_UID);
        let daemonsets =
            api.list(&ListParams::default().labels(&selector)).await.map_err(Error::kube("list proxy DaemonSets"))?;
        for daemonset in daemonsets {
            let action = format!("delete DaemonSet {namespace}/{}", daemonset.name_any());
            let Some(deleted) = self.delete_daemonset(&daemonset).await.map_err(Error::kube(action))? else { continue };
            info!(daemonset = %deleted, "deleted proxy DaemonSet");
            let message = format!("deleted DaemonSet {deleted}");
            self.publish(service, EventType::Normal, "DaemonSetDeleted", "DeleteDaemonSet", message).await;
        }
        if clear_status && !published_addresses(service).is_empty() {
            self.write_status(service, &[]).await?;
        }
        self.set_finalizer(service, false).await?;
        self.reported.lock().expect("reported lock").remove(&ObjectRef::from_obj(service));
        Ok(())
    }

    /// Deletes this very proxy DaemonSet (a UID precondition guards against a new one of the
    /// same name). Its `namespace/name` when deleted; `None` when it was gone already.
    async fn delete_daemonset(&self, daemonset: &DaemonSet) -> Result<Option<String>, kube::Error> {
        let namespace = &self.settings.proxy.namespace;
        let name = daemonset.name_any();
        let only_this_one = DeleteParams {
            preconditions: Some(Preconditions { uid: daemonset.uid(), resource_version: None }),
            ..DeleteParams::background()
        };
        match Api::<DaemonSet>::namespaced(self.client.clone(), namespace).delete(&name, &only_this_one).await {
            Ok(_) => {
                self.metrics.daemonset_deletes.inc();
                Ok(Some(format!("{namespace}/{name}")))
            }
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Deletes the proxy DaemonSets that no Service will clean up. Failures are only logged: the
    /// next sweep tries again.
    async fn delete_orphans(&self) {
        let services = self.services.state();
        let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
        let daemonsets = self.daemonsets.state();
        for daemonset in orphaned(daemonsets.iter().map(Arc::as_ref), &services, &self.settings.load_balancer_class) {
            let service = owning_service(daemonset).map_or_else(|| "an unknown Service".into(), |s| s.to_string());
            match self.delete_daemonset(daemonset).await {
                Ok(Some(deleted)) => {
                    info!(daemonset = %deleted, %service, "deleted orphaned proxy DaemonSet");
                    let note = format!("deleted DaemonSet {deleted}: {service} no longer needs it");
                    self.publish(daemonset, EventType::Normal, "OrphanDeleted", "DeleteDaemonSet", note).await;
                }
                Ok(None) => {}
                Err(error) => {
                    warn!(daemonset = %daemonset.name_any(), %error, "could not delete orphaned proxy DaemonSet")
                }
            }
        }
    }

    /// Publishes the warnings not yet published for this Service; forgets the ones that went
    /// away so that they are reported again if they come back.
    async fn report(&self, service: &Service, warnings: Vec<Warning>) {
        let key = ObjectRef::from_obj(service);
        let current: ReportedWarnings = warnings.iter().map(|w| (w.reason.to_string(), w.message.clone())).collect();
        let previous = self.reported.lock().expect("reported lock").insert(key.clone(), current.clone());
        for (reason, message) in current.difference(&previous.unwrap_or_default()) {
            warn!(service = %key, reason = %reason, "{message}");
            self.metrics.warnings.inc();
            self.publish(service, EventType::Warning, reason, "Reconcile", message.clone()).await;
        }
    }

    async fn publish<K: Resource<DynamicType = ()>>(
        &self,
        regarding: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let reporter = Reporter { controller: names::MANAGER.into(), instance: self.settings.instance.clone() };
        // A fresh recorder each time: the shared one would fold different notes with the same
        // reason into one series and hide all but the first. `report` already de-duplicates.
        let recorder = Recorder::new(self.client.clone(), reporter);
        let event = Event { type_, reason: reason.into(), note: Some(note), action: action.into(), secondary: None };
        match recorder.publish(&event, &regarding.object_ref(&())).await {
            Ok(()) => {}
            // The Service's namespace is being deleted: nobody is left to read the Event.
            Err(kube::Error::Api(status)) if namespace_terminating(&status) => {
                debug!(reason, "no Event: the namespace is being deleted")
            }
            Err(error) => warn!(%error, reason, "could not publish Event"),
        }
    }
}

fn namespace_terminating(status: &kube::core::Status) -> bool {
    status.details.iter().flat_map(|details| &details.causes).any(|cause| cause.reason == "NamespaceTerminating")
}

fn describe_ports(lb: &ServiceLb) -> String {
    lb.ports.iter().map(|p| format!("{}/{}", p.listen, p.protocol.api_name())).collect::<Vec<_>>().join(", ")
}
