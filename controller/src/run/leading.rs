//! Terms of leadership: while this replica leads, every Service is reconciled once, then each
//! Service the watches' triggers name, and the orphan sweep runs (every 30 s, and at once when a
//! Service is gone), with the data planes' shared objects kept (every 30 s, and at once when what
//! they follow changes). Every request of a term goes
//! through its fence (`fence`); when the term ends, the reconciles and the sweep under way are
//! dropped. When the process is told to stop, nothing new starts and what is under way has the
//! grace period to finish. The triggers reach a term through a broadcast channel that only a
//! term listens to.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{controller, Controller};
use kube::Client;
use tokio::sync::{broadcast, watch, Notify};
use tracing::{debug, info, warn};

use crate::decide::leadership::Term;
use crate::decide::Settings;
use crate::run::fence::Fence;
use crate::run::metrics::Metrics;
use crate::run::reconcile::{error_policy, reconcile, Context};
use crate::run::watches::Triggers;
use crate::state::Index;

/// How often proxy DaemonSets that no Service will clean up are looked for.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);
/// How soon a sweep that found the watches not yet synced looks again.
const SWEEP_UNTIL_SYNCED: Duration = Duration::from_millis(500);

/// Services to reconcile that the leader has not taken yet; one that falls behind by more
/// reconciles every Service instead.
const PENDING_TRIGGERS: usize = 4096;

/// Reconciles under way at once. A change that touches every Service (a node's address) would
/// otherwise send the API server a request per Service at the same moment; in the scale bench,
/// 1,400 Services followed such a change in 45 s that way and in 7 s with this bound.
const RECONCILE_CONCURRENCY: u16 = 32;

/// What a term of leadership needs to reconcile.
pub struct Leader {
    pub client: Client,
    pub settings: Settings,
    pub services: Store<Service>,
    pub index: Arc<RwLock<Index>>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    /// Told when the data planes' shared objects are due a look.
    pub shared_objects_due: Arc<Notify>,
    trigger_sender: broadcast::Sender<ObjectRef<Service>>,
}

impl Leader {
    pub fn new(
        client: Client,
        settings: Settings,
        services: Store<Service>,
        index: Arc<RwLock<Index>>,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        shared_objects_due: Arc<Notify>,
    ) -> Self {
        let (trigger_sender, _) = broadcast::channel(PENDING_TRIGGERS);
        Leader { client, settings, services, index, metrics, ready, shared_objects_due, trigger_sender }
    }

    /// Hands the watches' triggers to the term under way; while following there is nothing to
    /// do with them. Runs as long as the watches do.
    pub async fn take_triggers(&self, triggers: impl Stream<Item = Triggers>) {
        triggers
            .for_each(|triggers| {
                match triggers {
                    Ok(services) => services.into_iter().for_each(|service| {
                        if self.trigger_sender.receiver_count() > 0 {
                            self.metrics.reconcile_owed(&service);
                            drop(self.trigger_sender.send(service));
                        }
                    }),
                    Err(error) => warn!(%error, "watch failed; retrying"),
                }
                std::future::ready(())
            })
            .await
    }

    /// Reconciles during every term of leadership; returns once stopping and the last term is
    /// over. `stopping` carries, once the process is told to stop, when the writes under way
    /// must be done.
    pub async fn lead_while_elected(&self, leading: watch::Receiver<Option<Term>>, stopping: Stopping) {
        let mut last_term = 0;
        loop {
            let (mut elected, mut stop) = (leading.clone(), stopping.clone());
            // A term that is over may still be published (its end passed, the elector has not
            // said so yet): only a later one begins a term here.
            let next = tokio::select! {
                term = elected.wait_for(|term| term.is_some_and(|term| term.number > last_term)) => {
                    term.ok().and_then(|term| *term)
                }
                _ = stop.wait_for(Option::is_some) => None,
            };
            let Some(term) = next else { return };
            last_term = term.number;
            info!(term = term.number, "reconciling as the leader");
            self.term(Fence::new(term, leading.clone()), stopping.clone()).await;
            info!(term = term.number, "stopped reconciling");
        }
    }

    /// One term: every Service once, then those the watches say changed, and the orphan sweep,
    /// all through `fence`, until the term is over or the writes under way are due after a stop.
    async fn term(&self, fence: Fence, stopping: Stopping) {
        // Each term starts from what the API server has: what an earlier term applied may
        // have been changed by another leader since.
        let context = Arc::new(Context::new(
            fence.client(&self.client, self.metrics.clone()),
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
            .graceful_shutdown_on(stop_requested(stopping.clone()))
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| {
                let context = context.clone();
                async move {
                    match result {
                        Ok(_) => {}
                        // A Service that is gone, or proxy objects of one: its proxies, which no
                        // finalizer kept it for, are orphans now and go at once.
                        Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                            let service = ObjectRef::<Service>::new(&object.name)
                                .within(object.namespace.as_deref().unwrap_or_default());
                            self.metrics.reconcile_dequeued(&service);
                            debug!(%object, "no such Service; sweeping orphaned proxies");
                            context.delete_orphans().await;
                        }
                        Err(error) => warn!(%error, "reconciliation did not run"),
                    }
                }
            });
        let sweeping = async {
            let mut sweeps = tokio::time::interval(ORPHAN_SWEEP);
            let mut stopped = std::pin::pin!(stop_requested(stopping.clone()));
            loop {
                tokio::select! {
                    _ = sweeps.tick() => {
                        // The first sweep of a term waits for the watches, not a whole period.
                        if !context.synced() {
                            sweeps.reset_after(SWEEP_UNTIL_SYNCED);
                            continue;
                        }
                        context.keep_shared_objects().await;
                        context.delete_orphans().await;
                    }
                    // A node that joins gets its report, and its agent the right to write it, at once.
                    () = self.shared_objects_due.notified() => context.keep_shared_objects().await,
                    () = &mut stopped => return,
                }
            }
        };
        let grace_over = async {
            stop_requested(stopping.clone()).await;
            let due = *stopping.borrow();
            if let Some(due) = due {
                tokio::time::sleep_until(due).await;
            }
        };
        tokio::select! {
            _ = async { tokio::join!(reconciling, sweeping) } => {}
            () = fence.over() => info!("the term is over: dropping the reconciles and the sweep under way"),
            () = grace_over => warn!("stopping: dropping the writes not done within the grace period"),
        }
        // The Events still queued go out from a task of their own, which outlives the term.
        fence.close();
        self.metrics.forget_owed_reconciles();
    }
}

/// `None` until the process is told to stop; then when the writes under way must be done.
type Stopping = watch::Receiver<Option<tokio::time::Instant>>;

/// Returns once the process is told to stop (or can no longer be told).
async fn stop_requested(mut stopping: Stopping) {
    let _ = stopping.wait_for(Option::is_some).await;
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

#[cfg(test)]
mod tests {
    use kube::runtime::{reflector, watcher};
    use serde_json::{json, Value};

    use super::*;
    use crate::fixtures::{index_of, settings, NodeBuilder, ServiceBuilder, UID};
    use crate::run::mock_api::{mock_api, rejected, ApiServer, InFlight};
    use hostlb_model::names;

    const RENEW_DEADLINE: Duration = Duration::from_secs(10);
    /// Shorter than what is left of the term, so that the term does not end first.
    const GRACE: Duration = Duration::from_secs(4);

    fn daemonset_path() -> String {
        format!("/apis/apps/v1/namespaces/hostlb-system/daemonsets/{}", names::forwarding_name("web", UID))
    }

    /// A leader in its first term, with the apply of its one Service's DaemonSet in flight.
    struct WriteInFlight {
        led: tokio::task::JoinHandle<()>,
        api: ApiServer,
        in_flight: InFlight,
        leading: watch::Sender<Option<Term>>,
        stopping: watch::Sender<Option<tokio::time::Instant>>,
    }

    /// Starts the leader on the local set (a term is not `Send`).
    async fn leading_with_a_write_in_flight() -> WriteInFlight {
        let (client, mut api) = mock_api();
        let service = ServiceBuilder::new("web").build();
        let (services, mut writer) = reflector::store();
        for event in [watcher::Event::Init, watcher::Event::InitApply(service.clone()), watcher::Event::InitDone] {
            writer.apply_watcher_event(&event);
        }
        let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
        let index = Arc::new(RwLock::new(index_of(std::slice::from_ref(&service), &nodes, &[], &[])));
        let ready = Arc::new(AtomicBool::new(true));
        let leader =
            Leader::new(client, settings(), services, index, Arc::new(Metrics::default()), ready, Arc::default());
        let until = (tokio::time::Instant::now() + RENEW_DEADLINE).into_std();
        let (leading, elected) = watch::channel(Some(Term { number: 1, until }));
        let (stopping, stop) = watch::channel(None);
        let led = tokio::task::spawn_local(async move { leader.lead_while_elected(elected, stop).await });
        api.expect("GET", &daemonset_path(), 404, rejected(404, "NotFound", "not found")).await;
        let (_, in_flight) = api.hold("PATCH", &daemonset_path()).await;
        WriteInFlight { led, api, in_flight, leading, stopping }
    }

    fn answer(in_flight: InFlight, object: &impl serde::Serialize) {
        let body = kube::client::Body::from(serde_json::to_vec(object).unwrap());
        in_flight.send_response(http::Response::new(body));
    }

    async fn returns(led: tokio::task::JoinHandle<()>, within: Duration) {
        tokio::time::timeout(within, led).await.expect("the leader returns").expect("no panic");
    }

    #[tokio::test]
    async fn when_the_term_ends_the_reconcile_under_way_is_dropped_not_awaited() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let WriteInFlight { led, mut api, in_flight: _in_flight, leading, stopping, .. } =
                    leading_with_a_write_in_flight().await;
                leading.send_replace(None);
                api.expect_nothing_more().await;
                // The apply is never answered: a term that waited for it would never end.
                stopping.send_replace(Some(tokio::time::Instant::now() + GRACE));
                returns(led, Duration::from_secs(1)).await;
            })
            .await;
    }

    #[tokio::test]
    async fn stopping_while_leading_lets_the_reconcile_under_way_finish() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let WriteInFlight { led, mut api, in_flight, leading: _still_leading, stopping } =
                    leading_with_a_write_in_flight().await;
                stopping.send_replace(Some(tokio::time::Instant::now() + GRACE));
                let applied: Value =
                    json!({ "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": { "name": "x" } });
                answer(in_flight, &applied);
                api.expect_event("shop", "DaemonSetApplied").await;
                returns(led, Duration::from_secs(5)).await;
                api.expect_nothing_more().await;
            })
            .await;
    }

    #[tokio::test(start_paused = true)]
    async fn stopping_drops_what_is_not_done_within_the_grace_period() {
        tokio::task::LocalSet::new()
            .run_until(async {
                let WriteInFlight { led, mut api, in_flight: _in_flight, leading: _still_leading, stopping, .. } =
                    leading_with_a_write_in_flight().await;
                let stopped_at = tokio::time::Instant::now();
                stopping.send_replace(Some(tokio::time::Instant::now() + GRACE));
                returns(led, RENEW_DEADLINE * 2).await;
                assert_eq!(stopped_at.elapsed(), GRACE);
                api.expect_nothing_more().await;
            })
            .await;
    }
}
