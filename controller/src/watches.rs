//! The watches: on every replica, they keep the index and the Service cache current and say
//! which Services a change affects, so that a replica that starts to lead has a warm view at
//! once. While this replica leads, the controller runs the executor for those Services and the
//! orphan sweep runs. Also readiness (every watch has listed) and the graceful stop.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::{stream, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event as CoreEvent, Node, Pod, Service};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{controller, watcher, Controller, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::election::Elector;
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

/// Services to reconcile that the leader has not taken yet; one that falls behind by more
/// reconciles every Service instead.
const PENDING_TRIGGERS: usize = 4096;

type Triggers = Result<Vec<ObjectRef<Service>>, watcher::Error>;

/// Reconciles under way at once. A change that touches every Service (a node's address) would
/// otherwise send the API server a request per Service at the same moment; in the scale bench,
/// 1,400 Services followed such a change in 45 s that way and in 7 s with this bound.
const RECONCILE_CONCURRENCY: u16 = 32;

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
    let clock = stream::unfold(tokio::time::interval(LEASE_CHECK), |mut interval| async move {
        interval.tick().await;
        Some((Tick::Clock, interval))
    });
    stream::select(watched, clock).flat_map(move |tick| {
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
        stream::iter(changes)
    })
}

/// Watches the cluster and, while `elector` wins the Lease, reconciles every LoadBalancer
/// Service, until SIGTERM or SIGINT. Then the writes under way finish and the Lease is released.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
    mut elector: Elector,
) -> Result<()> {
    let (leading_sender, leading) = watch::channel(false);
    let (stop_sender, stopping) = watch::channel(false);
    let signalled = async {
        shutdown_signal().await;
        info!("stopping: finishing the writes under way");
        stop_sender.send_replace(true);
        std::future::pending::<Infallible>().await
    };
    // Only a replica whose caches are warm stands for election, so that a restarted replica
    // does not take the Lease back and then sit idle while it lists. The campaign goes on
    // renewing the Lease while the last writes finish.
    let campaign = async {
        while !ready.load(Ordering::Acquire) {
            tokio::time::sleep(SYNC_POLL).await;
        }
        elector.campaign(&leading_sender, &metrics).await
    };
    let ended = tokio::select! {
        ended = watch_and_lead(client, settings, metrics.clone(), ready.clone(), sync_timeout, leading, stopping) => ended,
        never = campaign => match never {},
        never = signalled => match never {},
    };
    elector.release().await;
    ended
}

async fn shutdown_signal() {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a tokio runtime with signal handling");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

async fn watch_and_lead(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
    leading: watch::Receiver<bool>,
    stopping: watch::Receiver<bool>,
) -> Result<()> {
    let namespace = settings.proxy.namespace.clone();
    let all = watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    let proxy_pods = all.clone().labels(&names::managed_selector());
    let proxy_daemonsets = all.clone().labels(&names::daemonset_selector(&settings.proxy.install_id));
    let index = Arc::new(RwLock::new(Index::new(&settings)));

    let (services, service_writer) = reflector::store();
    let index_for_services = index.clone();
    let service_triggers = watched(Api::<Service>::all(client.clone()), all.clone())
        .reflect(service_writer)
        .map_ok(move |event| index_for_services.write().expect("index lock").apply_service(&event));
    let daemonset_triggers = indexed(
        Api::<DaemonSet>::namespaced(client.clone(), &namespace),
        proxy_daemonsets,
        &index,
        Index::apply_daemonset,
    )
    .touched_objects()
    .map_ok(|daemonset| owning_service(&daemonset).into_iter().collect());
    let pod_triggers =
        indexed(Api::<Pod>::namespaced(client.clone(), &namespace), proxy_pods, &index, Index::apply_proxy_pod)
            .touched_objects()
            .map_ok(|pod| owning_service(&pod).into_iter().collect());

    let node_filter = Mutex::new(NodeChangeFilter::default());
    let settings_for_nodes = settings.clone();
    let services_for_nodes = services.clone();
    let index_for_nodes = index.clone();
    let node_triggers = indexed(Api::<Node>::all(client.clone()), all.clone(), &index, Index::apply_node)
        .touched_objects()
        .map_ok(move |node| {
            // The index has applied the event already: a node missing from it is gone.
            let current = index_for_nodes.read().expect("index lock").nodes.get(&key_of(&node)).cloned();
            let mut filter = node_filter.lock().expect("node filter lock");
            if filter.changed(&node.name_any(), current.as_deref()) {
                let services = services_for_nodes.state();
                services_affected_by_node(services.iter().map(|s| s.as_ref()), &settings_for_nodes)
            } else {
                Vec::new()
            }
        });

    let services_for_leases = services.clone();
    let settings_for_leases = settings.clone();
    let lease_events = indexed(
        Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
        all.clone(),
        &index,
        Index::apply_node_lease,
    );
    let lease_triggers = lease_liveness(lease_events, index.clone()).map_ok(move |_| {
        let services = services_for_leases.state();
        services_affected_by_node(services.iter().map(|s| s.as_ref()), &settings_for_leases)
    });

    // The DaemonSet controller reports pods it cannot create only as Events on the DaemonSet.
    let failed_creations = all.clone().fields("involvedObject.kind=DaemonSet,reason=FailedCreate");
    let index_for_failures = index.clone();
    let failure_triggers = indexed(
        Api::<CoreEvent>::namespaced(client.clone(), &namespace),
        failed_creations,
        &index,
        Index::apply_creation_failure,
    )
    .touched_objects()
    .map_ok(move |failure| {
        let daemonset = &failure.involved_object;
        let namespace = daemonset.namespace.as_deref().unwrap_or_default();
        let key = format!("{namespace}/{}", daemonset.name.as_deref().unwrap_or_default());
        let index = index_for_failures.read().expect("index lock");
        index.daemonsets.get(&key).and_then(|daemonset| owning_service(daemonset.as_ref())).into_iter().collect()
    });

    let (trigger_sender, _) = broadcast::channel(PENDING_TRIGGERS);
    let watching = {
        let (trigger_sender, metrics) = (trigger_sender.clone(), metrics.clone());
        stream::select_all([
            service_triggers.boxed(),
            daemonset_triggers.boxed(),
            pod_triggers.boxed(),
            node_triggers.boxed(),
            lease_triggers.boxed(),
            failure_triggers.boxed(),
        ])
        .for_each(move |triggers: Triggers| {
            match triggers {
                // Only the leader's term listens; while following there is nothing to do.
                Ok(services) => services.into_iter().for_each(|service| {
                    if trigger_sender.receiver_count() > 0 {
                        metrics.reconcile_owed(&service);
                        drop(trigger_sender.send(service));
                    }
                }),
                Err(error) => warn!(%error, "watch failed; retrying"),
            }
            std::future::ready(())
        })
    };

    // A replica whose watches never list would sit not-Ready forever; failing lets the kubelet
    // start a fresh one, as controller-runtime does after its cache sync timeout.
    let leader =
        Leader { client, settings, services, index: index.clone(), metrics, ready: ready.clone(), trigger_sender };
    let syncing = async {
        watches_synced(&index, sync_timeout).await?;
        ready.store(true, Ordering::Release);
        info!("all watches synced; ready");
        std::future::pending::<Result<()>>().await
    };

    tokio::select! {
        () = watching => Ok(()),
        failed = syncing => failed,
        () = leader.lead_while_elected(leading, stopping) => Ok(()),
    }
}

/// What a term of leadership needs to reconcile.
struct Leader {
    client: Client,
    settings: Settings,
    services: Store<Service>,
    index: Arc<RwLock<Index>>,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    trigger_sender: broadcast::Sender<ObjectRef<Service>>,
}

impl Leader {
    /// Reconciles during every term of leadership; returns once stopping and the last term's
    /// writes are done.
    async fn lead_while_elected(&self, mut leading: watch::Receiver<bool>, mut stopping: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                elected = leading.wait_for(|leading| *leading) => if elected.is_err() { return },
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
            info!("reconciling as the leader");
            self.term(term_over(&leading, &stopping)).await;
            info!("stopped reconciling");
        }
    }

    /// One term: every Service once, then those the watches say changed, and the orphan sweep,
    /// until `over`; the reconciles and the sweep under way then finish.
    async fn term(&self, over: impl Fn() -> TermOver) {
        // Each term starts from what the API server has: what an earlier term applied may
        // have been changed by another leader since.
        let context = Arc::new(Context::new(
            self.client.clone(),
            self.settings.clone(),
            self.services.clone(),
            self.index.clone(),
            self.metrics.clone(),
            self.ready.clone(),
        ));
        // Subscribed before the Services are listed, so that no change falls in between.
        let changed = changed_services(self.trigger_sender.subscribe(), self.services.clone());
        let reconciling = Controller::for_stream(stream::empty(), self.services.clone())
            .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
            .reconcile_all_on(stream::once(std::future::ready(())))
            .reconcile_on(changed)
            .graceful_shutdown_on(over())
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| async move {
                match result {
                    Ok(_) => {}
                    // Triggers from proxy objects whose Service is already gone.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        let service = ObjectRef::<Service>::new(&object.name)
                            .within(object.namespace.as_deref().unwrap_or_default());
                        self.metrics.reconcile_dequeued(&service);
                        debug!(%object, "no such Service; nothing to reconcile")
                    }
                    Err(error) => warn!(%error, "reconciliation did not run"),
                }
            });
        let sweeping = async {
            let mut sweeps = tokio::time::interval(ORPHAN_SWEEP);
            let mut over = std::pin::pin!(over());
            loop {
                tokio::select! {
                    _ = sweeps.tick() => context.delete_orphans().await,
                    () = &mut over => return,
                }
            }
        };
        tokio::join!(reconciling, sweeping);
        self.metrics.forget_owed_reconciles();
    }
}

type TermOver = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>;

/// A future that ends when this replica stops leading or is stopped; one for each waiter.
fn term_over(leading: &watch::Receiver<bool>, stopping: &watch::Receiver<bool>) -> impl Fn() -> TermOver {
    let (leading, stopping) = (leading.clone(), stopping.clone());
    move || {
        let (mut leading, mut stopping) = (leading.clone(), stopping.clone());
        Box::pin(async move {
            tokio::select! {
                _ = leading.wait_for(|leading| !*leading) => {}
                _ = stopping.wait_for(|stopping| *stopping) => {}
            }
        })
    }
}

/// The Services the watches said changed; all of them when this term's leader fell behind.
fn changed_services(
    receiver: broadcast::Receiver<ObjectRef<Service>>,
    services: Store<Service>,
) -> impl Stream<Item = ObjectRef<Service>> + Send + 'static {
    stream::unfold(receiver, move |mut receiver| {
        let services = services.clone();
        async move {
            let next = match receiver.recv().await {
                Ok(service) => vec![service],
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    warn!(missed, "fell behind the watches; reconciling every Service");
                    services.state().iter().map(|service| ObjectRef::from_obj(service.as_ref())).collect()
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            Some((stream::iter(next), receiver))
        }
    })
    .flatten()
}

/// A watch whose events update the index before anyone downstream sees them.
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
    watched(api, config).inspect_ok(move |event| apply(&mut index.write().expect("index lock"), event))
}

/// A watch that retries with backoff. Managed fields are dropped: hostlb never reads them, and
/// they are often the larger part of an object.
fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config).default_backoff().modify(|object: &mut K| object.managed_fields_mut().clear())
}

/// Waits until every watch has listed its objects, or fails naming those that have not.
async fn watches_synced(index: &RwLock<Index>, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let pending = index.read().expect("index lock").unsynced();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::WatchesNotSynced { watches: pending.join(", "), waited: timeout });
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}
