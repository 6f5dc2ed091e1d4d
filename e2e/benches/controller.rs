//! `make bench`'s controller part on the local cluster (`cluster.sh up`): 30 LoadBalancer
//! Services created at once, each followed from creation to a status with every node, through
//! the steps between (DaemonSet applied, pods created, running, ready). Every time is when this
//! program's watches saw the change, so all phases carry the same watch delay.
//! Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.

#[path = "../bench/stats.rs"]
mod stats;
mod timeline;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use hostlb_e2e::Cluster;
use k8s_openapi::api::core::v1::Node;
use kube::api::ListParams;
use kube::Api;
use serde_json::json;
use stats::{median, rounded};
use timeline::{first, ms, watch, Steps};

const SERVICES: u16 = 30;
const FIRST_PORT: u16 = 20000;
const TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/controller.json".into());
    let cluster = Cluster::connect().await?;
    let results = burst(&cluster).await?;
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&out, json + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}

/// `ctl_burst30_s` and its phases, each a median over the Services.
async fn burst(cluster: &Cluster) -> Result<BTreeMap<&'static str, f64>> {
    let nodes = Api::<Node>::all(cluster.client.clone()).list(&ListParams::default()).await?.items.len();
    let namespace = cluster.namespace("bench").await?;
    let timeline = watch(&cluster.client, &namespace.name, nodes);
    // Let the watches list first, so that nothing they see afterwards predates them.
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let creations = (0..SERVICES).map(|i| {
        let (namespace, timeline) = (&namespace, timeline.clone());
        async move {
            let name = format!("burst-{i}");
            let port = FIRST_PORT + i;
            namespace.load_balancer(&name, "burst", &[("tcp", "TCP", port, 8080)], json!({})).await?;
            first(&mut timeline.lock().unwrap().entry(name).or_default().created);
            anyhow::Ok(())
        }
    });
    futures::future::try_join_all(creations).await?;

    let done = |timeline: &BTreeMap<String, Steps>| {
        timeline.values().filter(|steps| steps.created.is_some() && steps.status.is_some()).count()
    };
    loop {
        let finished = done(&timeline.lock().unwrap());
        if finished == usize::from(SERVICES) {
            break;
        }
        if started.elapsed() > TIMEOUT {
            bail!("only {finished} of {SERVICES} Services have a status with {nodes} addresses after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let timeline = timeline.lock().unwrap();
    let mut phases: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut last_status = started;
    for (name, steps) in timeline.iter() {
        let steps_seen = (
            steps.created,
            steps.daemonset,
            steps.last_pod(nodes, |p| p.created),
            steps.last_pod(nodes, |p| p.running),
            steps.last_pod(nodes, |p| p.ready),
            steps.status,
        );
        let (Some(created), Some(daemonset), Some(pods), Some(running), Some(ready), Some(status)) = steps_seen else {
            bail!("{name}: a step was never seen: {steps:?}");
        };
        last_status = last_status.max(status);
        for (phase, from, to) in [
            ("ctl_burst30_phase_daemonset_ms", created, daemonset),
            ("ctl_burst30_phase_pods_created_ms", daemonset, pods),
            ("ctl_burst30_phase_running_ms", pods, running),
            ("ctl_burst30_phase_ready_ms", running, ready),
            ("ctl_burst30_phase_status_ms", ready, status),
        ] {
            phases.entry(phase).or_default().push(ms(from, to));
        }
    }
    let mut results: BTreeMap<&'static str, f64> =
        phases.into_iter().map(|(phase, times)| (phase, rounded(median(times), 1))).collect();
    results.insert("ctl_burst30_s", rounded(ms(started, last_status) / 1e3, 2));
    eprintln!("burst of {SERVICES} Services on {nodes} nodes: {results:?}");
    Ok(results)
}
