//! The clock that judges node Leases and the node agents' reports: nothing changes in the API
//! when a kubelet or an agent stops, so only the clock can tell that a Lease or a report went
//! stale.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::{stream, Stream, StreamExt};
use kube::runtime::watcher;
use kube::ResourceExt;
use tracing::{info, warn};

use crate::run::api_contact::ApiContact;
use crate::run::metrics::Metrics;
use crate::state::Index;

/// How often node Leases are judged against the clock.
const LEASE_CHECK: Duration = Duration::from_secs(1);

/// When the clock judges the node Leases, and how long a pause in withdrawals may last.
pub struct LeaseClock {
    /// How far a kubelet may miss a renewal (`None`: leave it to the node's Ready condition).
    pub grace: Option<Duration>,
    pub pause_limit: Duration,
    /// How long a node agent's report stands without renewal.
    pub report_expiry: Duration,
    /// Whether the API server answers this process.
    pub contact: ApiContact,
    pub metrics: Arc<Metrics>,
}

/// Judges every node's Lease each `LEASE_CHECK` while the Lease watch (whose events only feed
/// the index) runs; yields once whenever that changes what decisions see: a node whose Lease
/// went stale or came back, or the end of a pause in withdrawals (the nodes came back, or it
/// lasted `pause_limit`). Nothing changes in the API when a kubelet stops, so only the clock
/// can tell.
pub fn lease_liveness<T>(
    lease_events: impl Stream<Item = Result<T, watcher::Error>> + Send + 'static,
    index: Arc<RwLock<Index>>,
    clock: LeaseClock,
) -> impl Stream<Item = Result<(), watcher::Error>> + Send + 'static {
    let LeaseClock { grace, pause_limit, report_expiry, contact, metrics } = clock;
    enum Tick {
        Watched(Result<(), watcher::Error>),
        Clock,
    }
    let watched = lease_events.map(|event| Tick::Watched(event.map(|_| ())));
    let clock = stream::unfold(tokio::time::interval(LEASE_CHECK), |mut interval| async move {
        interval.tick().await;
        Some((Tick::Clock, interval))
    });
    let was_paused = AtomicBool::new(false);
    stream::select(watched, clock).filter_map(move |tick| {
        let changed = match tick {
            Tick::Watched(Ok(())) => None,
            Tick::Watched(Err(error)) => {
                index.write().expect("index lock").lease_watch_failed();
                Some(Err(error))
            }
            Tick::Clock => {
                let mut index = index.write().expect("index lock");
                let now = Instant::now();
                let answering = contact.answering(now);
                let flipped = index.judge_leases(now, grace, answering);
                for node in &flipped {
                    info!(node = %node.name_any(), serves = index.serves(node), "node Lease renewal judged anew");
                }
                // Reports are judged only while this controller sees the API server: a
                // report it cannot read is not one its agent failed to write.
                let reports_judged = answering && index.judge_reports(now, report_expiry);
                if reports_judged {
                    info!(expired = ?index.expired_report_nodes(), "node agents' reports judged anew");
                }
                if index.bound_pause(now, pause_limit) {
                    metrics.withdrawal_pauses_ended.inc();
                    warn!(limit = ?pause_limit, "most nodes have looked down for the pause limit: those still down leave the status");
                }
                let paused = index.withdrawals_paused();
                let pause_changed = paused != was_paused.swap(paused, Ordering::Relaxed);
                if pause_changed && paused {
                    warn!("nodes look down at once or just after the control plane was away: no address is withdrawn meanwhile");
                } else if pause_changed {
                    info!("addresses follow the nodes again");
                }
                (!flipped.is_empty() || reports_judged || pause_changed && !paused).then_some(Ok(()))
            }
        };
        std::future::ready(changed)
    })
}
