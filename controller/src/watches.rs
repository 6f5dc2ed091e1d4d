//! The watches: they keep the index and the Service cache current and say which Services a
//! change affects; the controller then runs the executor for those. Also readiness (every
//! watch has listed) and the periodic orphan sweep.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector;
use kube::runtime::{watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{debug, info, warn};

use crate::error::{Error, Result};
use crate::index::{key_of, Index};
use crate::mapping::{owning_service, services_affected_by_node, NodeChangeFilter};
use crate::metrics::Metrics;
use crate::names;
use crate::node_leases::NODE_LEASE_NAMESPACE;
use crate::reconcile::{error_policy, reconcile, Context};
use crate::Settings;

/// Below the client's read timeout, so that a quiet watch ends before the read timeout would cut it.
const WATCH_TIMEOUT_SECONDS: u32 = 50;

/// How often proxy DaemonSets that no Service will clean up are looked for.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);

/// How often readiness looks whether the watches have listed.
const SYNC_POLL: Duration = Duration::from_millis(100);

/// How often node Leases are judged against the clock.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// The nodes whose Lease went stale or came back, judged every `LEASE_CHECK` while the Lease
/// watch (whose events only feed the index) runs; nothing changes in the API when a kubelet
/// stops, so only the clock can tell.
fn lease_liveness(
    lease_events: impl Stream<Item = Result<watcher::Event<Lease>, watcher::Error>> + Send + 'static,
    index: Arc<RwLock<Index>>,
) -> impl Stream<Item = Result<Node, watcher::Error>> + Send + 'static {
    enum Tick {
        Watched(Result<(), watcher::Error>),
        Clock,
    }
    let watched = lease_events.map(|event| Tick::Watched(event.map(|_| ())));
    let clock = futures::stream::unfold(tokio::time::interval(LEASE_CHECK), |mut interval| async move {
        interval.tick().await;
        Some((Tick::Clock, interval))
    });
    futures::stream::select(watched, clock).flat_map(move |tick| {
        let changes: Vec<Result<Node, watcher::Error>> = match tick {
            Tick::Watched(Ok(())) => Vec::new(),
            Tick::Watched(Err(error)) => vec![Err(error)],
            Tick::Clock => {
                let flipped = index.write().expect("index lock").judge_leases(Timestamp::now());
                for node in &flipped {
                    let serves = index.read().expect("index lock").serves(node);
                    info!(node = %node.name_any(), serves, "node Lease renewal judged anew");
                }
                flipped.into_iter().map(|node| Ok(node.as_ref().clone())).collect()
            }
        };
        futures::stream::iter(changes)
    })
}

/// Watches the cluster and reconciles every LoadBalancer Service until SIGTERM or SIGINT.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
) -> Result<()> {
    let namespace = settings.proxy.namespace.clone();
    let all = watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    let proxy_pods = all.clone().labels(&names::managed_selector());
    let proxy_daemonsets = all.clone().labels(&names::daemonset_selector(&settings.proxy.install_id));
    let index = Arc::new(RwLock::new(Index::new(&settings)));

    let (services, service_writer) = reflector::store();
    let service_events = indexed(Api::<Service>::all(client.clone()), all.clone(), &index, Index::apply_service)
        .reflect(service_writer)
        .applied_objects();
    let node_events =
        indexed(Api::<Node>::all(client.clone()), all.clone(), &index, Index::apply_node).touched_objects();
    let pod_events =
        indexed(Api::<Pod>::namespaced(client.clone(), &namespace), proxy_pods, &index, Index::apply_proxy_pod)
            .touched_objects();
    let daemonset_events = indexed(
        Api::<DaemonSet>::namespaced(client.clone(), &namespace),
        proxy_daemonsets,
        &index,
        Index::apply_daemonset,
    )
    .touched_objects();

    // The DaemonSet controller reports pods it cannot create only as Events on the DaemonSet.
    let failed_creations = all.clone().fields("involvedObject.kind=DaemonSet,reason=FailedCreate");
    let failure_events = indexed(
        Api::<CoreEvent>::namespaced(client.clone(), &namespace),
        failed_creations,
        &index,
        Index::apply_creation_failure,
    )
    .touched_objects();

    let lease_events = indexed(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        all.clone(),
        &index,
        Index::apply_node_lease,
    );
    let liveness_changes = lease_liveness(lease_events, index.clone());

    let context =
        Arc::new(Context::new(client, settings.clone(), services.clone(), index.clone(), metrics, ready.clone()));

    let index_for_failures = index.clone();
    let failure_mapper = move |failure: CoreEvent| {
        let daemonset = &failure.involved_object;
        let key = format!("{}/{}", daemonset.namespace.as_deref().unwrap_or_default(), daemonset.name.as_deref()?);
        let index = index_for_failures.read().expect("index lock");
        owning_service(index.daemonsets.get(&key)?.as_ref())
    };

    let node_filter = Mutex::new(NodeChangeFilter::default());
    let settings_for_nodes = settings.clone();
    let services_for_nodes = services.clone();
    let services_for_leases = services.clone();
    let lease_mapper =
        move |_: Node| services_affected_by_node(services_for_leases.state().iter().map(|s| s.as_ref()), &settings);
    let node_mapper = move |node: Node| {
        // The index has applied the event already: a node missing from it is gone.
        let current = index.read().expect("index lock").nodes.get(&key_of(&node)).cloned();
        let changed = node_filter.lock().expect("node filter lock").changed(&node.name_any(), current.as_deref());
        if changed {
            services_affected_by_node(services_for_nodes.state().iter().map(|s| s.as_ref()), &settings_for_nodes)
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
            watches_synced(&context, sync_timeout).await?;
            ready.store(true, Ordering::Release);
            info!("all watches synced; ready");
            let mut sweeps = tokio::time::interval(ORPHAN_SWEEP);
            loop {
                sweeps.tick().await;
                context.delete_orphans().await;
            }
        }
    };

    let reconciling = Controller::for_stream(service_events, services)
        .watches_stream(daemonset_events, |ds| owning_service(&ds))
        .watches_stream(pod_events, |pod| owning_service(&pod))
        .watches_stream(node_events, node_mapper)
        .watches_stream(liveness_changes, lease_mapper)
        .watches_stream(failure_events, failure_mapper)
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

/// A watch whose events update the index before anyone downstream sees them. Managed fields
/// are dropped first: hostlb never reads them, and they are often the larger part of an object.
fn indexed<K>(
    api: Api<K>,
    config: watcher::Config,
    index: &Arc<RwLock<Index>>,
    apply: fn(&mut Index, &watcher::Event<K>),
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let index = index.clone();
    watcher(api, config)
        .default_backoff()
        .modify(|object: &mut K| object.managed_fields_mut().clear())
        .inspect_ok(move |event| apply(&mut index.write().expect("index lock"), event))
}

/// Waits until every watch has listed its objects, or fails naming those that have not.
async fn watches_synced(context: &Context, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let pending = context.index.read().expect("index lock").unsynced();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::WatchesNotSynced { watches: pending.join(", "), waited: timeout });
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}
