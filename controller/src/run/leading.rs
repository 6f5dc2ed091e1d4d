//! Terms of leadership: while this replica leads, every Service is reconciled once, then each
//! Service the watches' triggers name, and the orphan sweep runs; when the term ends, the
//! reconciles and the sweep under way finish. The triggers reach a term through a broadcast
//! channel that only a term listens to.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::{stream, Stream, StreamExt};
use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{controller, Controller};
use kube::Client;
use tokio::sync::{broadcast, watch};
use tracing::{debug, info, warn};

use crate::decide::Settings;
use crate::run::metrics::Metrics;
use crate::run::reconcile::{error_policy, reconcile, Context};
use crate::run::watches::Triggers;
use crate::state::Index;

/// How often proxy DaemonSets that no Service will clean up are looked for.
const ORPHAN_SWEEP: Duration = Duration::from_secs(30);

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
    ) -> Self {
        let (trigger_sender, _) = broadcast::channel(PENDING_TRIGGERS);
        Leader { client, settings, services, index, metrics, ready, trigger_sender }
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

    /// Reconciles during every term of leadership; returns once stopping and the last term's
    /// writes are done.
    pub async fn lead_while_elected(&self, mut leading: watch::Receiver<bool>, mut stopping: watch::Receiver<bool>) {
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
