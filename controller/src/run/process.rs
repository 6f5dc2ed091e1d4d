//! The controller process: watches on every replica, reconciles while this replica leads,
//! and on SIGTERM or SIGINT lets the writes under way finish (for at most the renew deadline,
//! and only while the Lease is held), then releases the Lease.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use tokio::sync::watch;
use tracing::info;

use crate::decide::leadership::Term;
use crate::decide::Settings;
use crate::error::Result;
use crate::run::api_contact::ApiContact;
use crate::run::leader_election::Elector;
use crate::run::leading::Leader;
use crate::run::metrics::Metrics;
use crate::run::watches::{watch, watches_synced, SYNC_POLL};

/// Watches the cluster and, while `elector` wins the Lease, reconciles every LoadBalancer
/// Service, until SIGTERM or SIGINT. Then the writes under way finish, or are dropped at the
/// renew deadline, and the Lease is released.
pub async fn run(
    client: Client,
    settings: Settings,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    sync_timeout: Duration,
    mut elector: Elector,
) -> Result<()> {
    let (leading_sender, leading) = watch::channel(None);
    let (stop_sender, stopping) = watch::channel(None);
    let grace = elector.timing().renew_deadline;
    let contact = elector.contact();
    let signalled = async {
        shutdown_signal().await;
        info!(?grace, "stopping: finishing the writes under way");
        stop_sender.send_replace(Some(tokio::time::Instant::now() + grace));
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
        ended = watch_and_lead(client, settings, metrics.clone(), ready.clone(), sync_timeout, contact, (leading, stopping)) => ended,
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
    contact: ApiContact,
    (leading, stopping): (watch::Receiver<Option<Term>>, watch::Receiver<Option<tokio::time::Instant>>),
) -> Result<()> {
    let (watched, triggers) = watch(&client, &settings, contact, metrics.clone());
    let due = watched.shared_objects_due;
    let leader = Leader::new(client, settings, watched.services, watched.index.clone(), metrics, ready.clone(), due);
    // A replica whose watches never list would sit not-Ready forever; failing lets the kubelet
    // start a fresh one, as controller-runtime does after its cache sync timeout.
    let syncing = async {
        watches_synced(&watched.index, sync_timeout).await?;
        ready.store(true, Ordering::Release);
        info!("all watches synced; ready");
        std::future::pending::<Result<()>>().await
    };
    tokio::select! {
        () = leader.take_triggers(triggers) => Ok(()),
        failed = syncing => failed,
        () = leader.lead_while_elected(leading, stopping) => Ok(()),
    }
}
