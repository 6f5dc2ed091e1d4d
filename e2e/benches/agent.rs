//! `make bench`'s node agent part on the local cluster (`cluster.sh up`): the controller on the
//! agent data plane serves 1,000 LoadBalancer Services; how many pods hostlb then runs per node,
//! what the agent holds, and how long one more Service takes to forward on every node.
//! Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.

#[path = "../bench/stats.rs"]
mod stats;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use hostlb_e2e::cluster::{nodes, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::dataplane::{use_dataplane, NodeAgents, ProxyPods};
use hostlb_e2e::namespace::ECHO_HTTP_PORT;
use hostlb_e2e::poll::{eventually, eventually_blocking};
use hostlb_e2e::status::published;
use hostlb_model::names;
use hostlb_model::readiness::pod_is_ready;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use serde_json::json;
use stats::kib_field;

const SERVICES: u16 = 1000;
const FIRST_PORT: u16 = 21000;
/// Creations in flight at once: what one client of a shared API server would send.
const IN_FLIGHT: usize = 16;
const TIMEOUT: Duration = Duration::from_secs(900);

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/agent.json".into());
    let cluster = Cluster::connect().await?;
    let nodes = nodes(&cluster)?;
    use_dataplane(&cluster, &NodeAgents).await?;
    eventually(Duration::from_secs(120), || async {
        let ready = cluster.agent_pods().await?.iter().filter(|pod| pod_is_ready(pod)).count();
        ensure!(ready == 2, "{ready} agents Ready");
        Ok(())
    })
    .await?;
    let namespace = cluster.namespace("bench-agent").await?;
    namespace.echo_on_node1(&cluster, &nodes, Duration::from_secs(120)).await?;

    let started = Instant::now();
    futures::stream::iter(0..SERVICES)
        .map(|i| {
            let namespace = &namespace;
            async move {
                let port = FIRST_PORT + i;
                namespace
                    .load_balancer(&format!("many-{i}"), "echo", &[("http", "TCP", port, ECHO_HTTP_PORT)], json!({}))
                    .await
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .try_collect::<Vec<_>>()
        .await?;
    let created = started.elapsed();
    loop {
        let services = namespace.services().list(&ListParams::default()).await?.items;
        let complete = services.iter().filter(|service| published(service).len() == 2).count();
        if complete == usize::from(SERVICES) {
            break;
        }
        if started.elapsed() > TIMEOUT {
            bail!("{complete} of {SERVICES} Services publish both nodes after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let all_published = started.elapsed();
    eprintln!("{SERVICES} Services created in {created:?}, all published in {all_published:?}");

    let mut results: BTreeMap<&str, f64> = BTreeMap::new();
    results.insert("agent_ready_s_1000", (all_published.as_secs_f64() * 100.0).round() / 100.0);
    let per_node = pods_per_node(&cluster, &nodes).await?;
    eprintln!("hostlb pods per node with {SERVICES} Services: {per_node:?}");
    results.insert("agent_pods_per_node_1000", per_node.iter().copied().max().unwrap_or_default() as f64);
    results.insert("agent_rss_kib_1000", agent_rss_kib()?);

    // One more, with the 1,000 in place and every EndpointSlice of theirs made (the
    // controller-manager's own queue lags behind a burst): from its creation to forwarding on
    // both nodes, which includes making its EndpointSlice.
    eventually(TIMEOUT, || async {
        let listed = cluster.kubectl(&["get", "endpointslices", "-n", &namespace.name, "--no-headers"])?;
        let made = listed.lines().count();
        ensure!(made >= usize::from(SERVICES), "{made} EndpointSlices of {SERVICES} Services");
        Ok(())
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let one_more = Instant::now();
    namespace
        .load_balancer("one-more", "echo", &[("http", "TCP", FIRST_PORT + SERVICES, ECHO_HTTP_PORT)], json!({}))
        .await?;
    let client = cluster.client()?;
    for address in [nodes.unpublished1, nodes.unpublished2] {
        let client = client.clone();
        eventually_blocking(Duration::from_secs(120), move || client.http_get(address, FIRST_PORT + SERVICES)).await?;
    }
    results.insert("agent_program_ms_new_service_1000", one_more.elapsed().as_millis() as f64);

    let name = namespace.name.clone();
    drop(namespace);
    eventually(TIMEOUT, || async {
        let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
        ensure!(namespaces.get_opt(&name).await?.is_none(), "namespace {name} is still there");
        Ok(())
    })
    .await?;
    use_dataplane(&cluster, &ProxyPods).await?;
    let json = serde_json::to_string_pretty(&results)?;
    eprintln!("wrote {out}: {json}");
    std::fs::write(&out, json + "\n")?;
    Ok(())
}

/// Every pod hostlb made (agents and any proxy pod), per node.
async fn pods_per_node(cluster: &Cluster, nodes: &Nodes) -> Result<Vec<usize>> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let selector = format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY);
    let listed = pods.list(&ListParams::default().labels(&selector)).await?.items;
    let on = |node: &str| {
        listed.iter().filter(|pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)).count()
    };
    Ok(vec![on(&nodes.node1), on(&nodes.node2)])
}

/// The resident memory of node-1's agent, whose process runs on this machine.
fn agent_rss_kib() -> Result<f64> {
    for entry in std::fs::read_dir("/proc")? {
        let path = entry?.path();
        let read = |file: &str| std::fs::read_to_string(path.join(file)).ok();
        let (Some(cmdline), Some(status)) = (read("cmdline"), read("status")) else { continue };
        if cmdline.split('\0').any(|arg| arg == "node-agent") {
            return kib_field(&status, "VmRSS:").context("no VmRSS in the agent's status");
        }
    }
    bail!("no node-agent process on this machine")
}
