//! `make bench`'s controller part on the local cluster (`cluster.sh up`): 30 LoadBalancer
//! Services created at once, each followed from creation to a status with every node, through
//! the steps between (DaemonSet applied, pods created, running, ready). Every time is when this
//! program's watches saw the change, so all phases carry the same watch delay.
//! While those proxy pods run, it reads from /proc what each one holds on its node.
//! Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.

#[path = "../bench/stats.rs"]
mod stats;
mod timeline;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{Cluster, SYSTEM_NAMESPACE};
use hostlb_e2e::namespace::TestNamespace;
use hostlb_model::names;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde_json::json;
use stats::{kib_field, median, rounded};
use timeline::{first, ms, watch, Steps};

const SERVICES: u16 = 30;
const FIRST_PORT: u16 = 20000;
const TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/controller.json".into());
    let cluster = Cluster::connect().await?;
    let namespace = cluster.namespace("bench").await?;
    let mut results = burst(&cluster, &namespace).await?;
    results.extend(proxy_pod_memory(&cluster, &namespace.name).await?);
    let name = namespace.name.clone();
    drop(namespace);
    torn_down(&cluster, &name).await?;
    let json = serde_json::to_string_pretty(&results)?;
    std::fs::write(&out, json + "\n")?;
    eprintln!("wrote {out}");
    Ok(())
}

/// `ctl_burst30_s` and its phases, each a median over the Services.
async fn burst(cluster: &Cluster, namespace: &TestNamespace) -> Result<BTreeMap<&'static str, f64>> {
    let nodes = Api::<Node>::all(cluster.client.clone()).list(&ListParams::default()).await?.items.len();
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
            steps.last_pod(nodes, |p| p.ready),
            steps.status,
        );
        let (Some(created), Some(daemonset), Some(pods), Some(ready), Some(status)) = steps_seen else {
            bail!("{name}: a step was never seen: {steps:?}");
        };
        last_status = last_status.max(status);
        for (phase, from, to) in [
            ("ctl_burst30_phase_daemonset_ms", created, daemonset),
            ("ctl_burst30_phase_pods_created_ms", daemonset, pods),
            // Running and Ready come in one status write of the kubelet (no readiness probe), so
            // a phase between them would be 0 by construction.
            ("ctl_burst30_phase_ready_ms", pods, ready),
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

/// Waits until the burst's proxy pods are gone. The tests `make bench` runs next on this cluster
/// time a proxy pod's replacement; with 60 pods still being torn down, the kubelets' teardown
/// would be what they time (a replacement took 9 s behind it, against 2.5 s on its own).
async fn torn_down(cluster: &Cluster, namespace: &str) -> Result<()> {
    let started = Instant::now();
    loop {
        let left = proxy_pods_of(cluster, namespace).await?.len();
        if left == 0 {
            let gone_after = started.elapsed().as_secs_f64();
            eprintln!("the burst's proxy pods were gone {gone_after:.1}s after its namespace was deleted");
            return Ok(());
        }
        ensure!(started.elapsed() < TIMEOUT, "{left} proxy pods of {namespace} left after {TIMEOUT:?}");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// `node_rss_kib_per_service` and its parts, medians over the bench's proxy pods: the resident
/// memory of what runs on a node for each (the runc shim containerd starts per pod, the
/// sandbox's pause process and `hostlb-lb hold`), and their proportional share (PSS), which
/// splits the pages pods share, such as the binaries' own, between them.
async fn proxy_pod_memory(cluster: &Cluster, namespace: &str) -> Result<BTreeMap<&'static str, f64>> {
    let pods = proxy_pods_of(cluster, namespace).await?;
    let processes = node_processes()?;
    let mut parts: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    for pod in &pods {
        let uid = pod.metadata.uid.as_deref().context("a pod without a uid")?;
        let own: Vec<&NodeProcess> = processes.iter().filter(|p| p.pod_uid.as_deref() == Some(uid)).collect();
        let containers: BTreeSet<&str> = own.iter().filter_map(|p| p.container.as_deref()).collect();
        let shim = processes.iter().find(|p| p.shim_of.as_deref().is_some_and(|id| containers.contains(id)));
        let hold = own.iter().find(|p| p.command == "hostlb-lb");
        let pause = own.iter().find(|p| p.command != "hostlb-lb");
        let (Some(shim), Some(hold), Some(pause)) = (shim, hold, pause) else {
            bail!("{}: no shim, pause and hold process found among {own:?}", pod.name_any());
        };
        let each = [shim, *pause, *hold];
        parts.entry("node_rss_kib_shim").or_default().push(shim.rss_kib);
        parts.entry("node_rss_kib_pause").or_default().push(pause.rss_kib);
        parts.entry("node_rss_kib_hold").or_default().push(hold.rss_kib);
        parts.entry("node_rss_kib_per_service").or_default().push(each.iter().map(|p| p.rss_kib).sum());
        parts.entry("node_pss_kib_per_service").or_default().push(each.iter().map(|p| p.pss_kib).sum());
    }
    ensure!(!pods.is_empty(), "no proxy pods of {namespace} to measure");
    let results: BTreeMap<&'static str, f64> = parts.into_iter().map(|(key, kib)| (key, median(kib))).collect();
    eprintln!("memory per proxy pod, {} pods: {results:?}", pods.len());
    Ok(results)
}

/// The proxy pods of every Service in `namespace`.
async fn proxy_pods_of(cluster: &Cluster, namespace: &str) -> Result<Vec<Pod>> {
    let selector = format!("{}={namespace}", names::LABEL_SERVICE_NAMESPACE);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    Ok(pods.list(&ListParams::default().labels(&selector)).await?.items)
}

/// A process of this machine, as far as telling which pod it serves needs.
#[derive(Debug)]
struct NodeProcess {
    command: String,
    /// The pod and container whose cgroup holds it (kubelet's cgroupfs layout:
    /// `.../pod<uid>/<container id>`).
    pod_uid: Option<String>,
    container: Option<String>,
    /// For a containerd runc shim, the sandbox it was started for (`-id`).
    shim_of: Option<String>,
    rss_kib: f64,
    pss_kib: f64,
}

fn node_processes() -> Result<Vec<NodeProcess>> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        if path.file_name().and_then(|name| name.to_str()).is_none_or(|name| name.parse::<u32>().is_err()) {
            continue;
        }
        // A process may end between the listing and the reads; it is then no proxy pod's.
        let read = |file: &str| std::fs::read_to_string(path.join(file)).ok();
        let (Some(cgroup), Some(command), Some(cmdline), Some(status), Some(rollup)) =
            (read("cgroup"), read("comm"), read("cmdline"), read("status"), read("smaps_rollup"))
        else {
            continue;
        };
        let leaf = cgroup.lines().find_map(|line| line.split_once("/pod").map(|(_, rest)| rest.to_string()));
        let (pod_uid, container) = match leaf.as_deref().map(|rest| rest.split_once('/')) {
            Some(Some((uid, container))) => (Some(uid.to_string()), Some(container.to_string())),
            Some(None) => (leaf, None),
            None => (None, None),
        };
        let args: Vec<&str> = cmdline.split('\0').collect();
        let shim_of = (args[0].ends_with("containerd-shim-runc-v2"))
            .then(|| args.windows(2).find(|pair| pair[0] == "-id").map(|pair| pair[1].to_string()))
            .flatten();
        processes.push(NodeProcess {
            command: command.trim().to_string(),
            pod_uid,
            container,
            shim_of,
            rss_kib: kib_field(&status, "VmRSS:").unwrap_or(0.0),
            pss_kib: kib_field(&rollup, "Pss:").unwrap_or(0.0),
        });
    }
    Ok(processes)
}
