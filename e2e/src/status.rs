//! What a Service's status publishes: read once, waited for, counted in writes, and watched
//! while something changes under it.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hostlb_model::reason::Reason;
use k8s_openapi::api::core::v1::Service;
use kube::Api;

use crate::cluster::Cluster;

/// The IP addresses the Service's status publishes.
pub fn published(service: &Service) -> BTreeSet<IpAddr> {
    let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

impl Cluster {
    /// Waits until the Service publishes exactly these addresses; returns how long that took.
    pub async fn wait_for_addresses(
        &self,
        namespace: &str,
        service: &str,
        expected: &[IpAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        let started = Instant::now();
        let mut last = BTreeSet::new();
        while started.elapsed() < timeout {
            last = published(&api.get(service).await?);
            if last == expected {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{namespace}/{service} publishes {last:?} after {timeout:?}, expected {expected:?}")
    }

    /// How many times the Service's status was written, as its StatusUpdated Events count them.
    pub async fn status_writes(&self, namespace: &str, service: &str) -> Result<i32> {
        let events = self.events(namespace, service, Reason::StatusUpdated).await?;
        Ok(events.iter().map(|event| event.series.as_ref().map_or(1, |series| series.count)).sum())
    }
}

/// Reads the Services' statuses every quarter second until `finish`, keeping every read that
/// published fewer addresses than `expected`.
pub struct StatusWatch {
    stop: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<Result<StatusRecord>>,
}

/// Status reads and those that showed fewer addresses than expected, with when and what.
#[derive(Debug, Default)]
pub struct StatusRecord {
    pub reads: u32,
    pub shrunk: Vec<(Duration, String, BTreeSet<IpAddr>)>,
}

impl StatusWatch {
    pub fn start(services: Api<Service>, names: &[&str], expected: BTreeSet<IpAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let stopped = stop.clone();
        let watcher = tokio::spawn(async move {
            let (started, mut record) = (Instant::now(), StatusRecord::default());
            while !stopped.load(Ordering::Acquire) {
                for name in &names {
                    // A read the API server does not answer within a second tells nothing.
                    if let Ok(Ok(service)) = tokio::time::timeout(Duration::from_secs(1), services.get(name)).await {
                        record.reads += 1;
                        let addresses = published(&service);
                        if !expected.is_subset(&addresses) {
                            record.shrunk.push((started.elapsed(), name.clone(), addresses));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(record)
        });
        StatusWatch { stop, watcher }
    }

    pub async fn finish(self) -> Result<StatusRecord> {
        self.stop.store(true, Ordering::Release);
        self.watcher.await?
    }
}
