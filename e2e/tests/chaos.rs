//! Faults injected into the local cluster while hostlb serves: its leader killed during churn,
//! stopped gracefully or frozen past its renew deadline, the API server and etcd restarted, the
//! controller away, a proxy pod killed, the proxies rolled under traffic, every kubelet silent at
//! once, a node's kubelet and containerd restarted. Each test says what it broke and checks that
//! nothing was lost; the figures are printed as `chaos:` lines. With `HOSTLB_E2E_DATAPLANE=agent`
//! the same faults strike the node agent data plane: the agent of node-1 killed, the agents
//! rolled.
//!
//! The faults go through the harness (`cluster.sh`), which signals only the processes it
//! started. Run with `--test-threads=1`: the tests share the controller.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{running_container, setup, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::figures::figure;
use hostlb_e2e::namespace::{http, TestNamespace, ECHO_HTTP_PORT};
use hostlb_e2e::poll::eventually;
use hostlb_e2e::status::{published, StatusWatch};
use hostlb_e2e::traffic::{answers, Target, Traffic};
use hostlb_model::names;
use hostlb_model::readiness::pod_is_ready;
use hostlb_model::reason::Reason;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde_json::json;

/// The controller's settings in the manifests: how long a dead leader's claim stands, and how
/// often a follower reads the Lease.
const LEASE_DURATION: Duration = Duration::from_secs(15);
const RENEW_DEADLINE: Duration = Duration::from_secs(10);
const RETRY_PERIOD: Duration = Duration::from_secs(1);
/// Room for a busy two-core machine on top of the bounds the settings give.
const MARGIN: Duration = Duration::from_secs(10);
const SETTLE: Duration = Duration::from_secs(300);
/// A pool only node-2 joins during the churn, and one no node is in.
const POOL_NODE2: &str = "chaos-node2";
const POOL_NOWHERE: &str = "chaos-nowhere";

fn say(line: String) {
    println!("chaos: {line}");
}

fn system_pods(cluster: &Cluster) -> Api<Pod> {
    Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE)
}

/// The Lease's holder and when it was last renewed.
async fn lease(cluster: &Cluster) -> Result<(Option<String>, Option<SystemTime>)> {
    let api: Api<Lease> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let spec = api.get(names::LEASE).await?.spec.unwrap_or_default();
    let renewed = spec.renew_time.map(|time| SystemTime::from(time.0));
    Ok((spec.holder_identity.filter(|holder| !holder.is_empty()), renewed))
}

/// Waits until both controller replicas are Ready and one of them holds the Lease; returns
/// the leader's pod.
async fn leader_with_a_standby(cluster: &Cluster, timeout: Duration) -> Result<Pod> {
    eventually(timeout, || async {
        let pods = cluster.controller_pods().await?;
        let ready: Vec<&Pod> = pods.iter().filter(|pod| pod_is_ready(pod)).collect();
        ensure!(ready.len() == 2, "{} of {} controller pods are Ready", ready.len(), pods.len());
        let (holder, _) = lease(cluster).await?;
        let holder = holder.context("nobody holds the Lease")?;
        ready
            .into_iter()
            .find(|pod| pod.name_any() == holder)
            .cloned()
            .with_context(|| format!("{holder} leads but is not Ready"))
    })
    .await
}

/// How long after `since` (wall clock) a live replica renewed the Lease; returns that and the holder.
async fn next_renewal_after(cluster: &Cluster, since: SystemTime, timeout: Duration) -> Result<(Duration, String)> {
    let started = Instant::now();
    let mut last_read = None;
    while started.elapsed() < timeout {
        match lease(cluster).await {
            Ok((Some(holder), Some(renewed))) if renewed > since => return Ok((started.elapsed(), holder)),
            read => last_read = Some(read),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pods = cluster.controller_pods().await?;
    let states: Vec<String> = pods
        .iter()
        .map(|pod| {
            let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.clone()).unwrap_or_default();
            let restarts: i32 = statuses.iter().map(|s| s.restart_count).sum();
            format!("{} (ready {}, {restarts} restarts)", pod.name_any(), pod_is_ready(pod))
        })
        .collect();
    bail!(
        "nobody renewed the Lease within {timeout:?}; last read {last_read:?}; controller pods: {}",
        states.join(", ")
    )
}

/// SIGKILL to the leader's container through its node's containerd; returns the time until
/// a replica led again, the replica killed and the one that leads.
async fn kill_leader(cluster: &Cluster) -> Result<(Duration, String, String)> {
    // A pod's status may still name a container the kubelet has replaced: read it again then.
    let (leader, killed_at) = eventually(SETTLE, || async {
        let leader = leader_with_a_standby(cluster, SETTLE).await?;
        let (node, container) = running_container(&leader)?;
        cluster.harness(&["kill-container", &node, &container])?;
        // Taken once the signal is delivered: a renewal stamped before it is the dead leader's.
        Ok((leader, SystemTime::now()))
    })
    .await?;
    let (took, holder) = next_renewal_after(cluster, killed_at, LEASE_DURATION + MARGIN).await?;
    Ok((took, leader.name_any(), holder))
}

fn summary(durations: &[Duration]) -> String {
    let max = durations.iter().max().copied().unwrap_or_default();
    let listed: Vec<String> = durations.iter().map(|d| format!("{:.1}s", d.as_secs_f64())).collect();
    format!("max {:.1}s ({})", max.as_secs_f64(), listed.join(", "))
}

/// What a churned Service should end up as.
#[derive(Clone, Debug)]
struct Churned {
    port: u16,
    local: bool,
    pool: Option<&'static str>,
    deleted: bool,
}

impl Churned {
    fn expected(&self, nodes: &Nodes) -> BTreeSet<IpAddr> {
        match (self.pool, self.local) {
            (Some(POOL_NOWHERE), _) => BTreeSet::new(),
            (Some(_), _) => BTreeSet::from([nodes.ip2]),
            // The only backend runs on node-1.
            (None, true) => BTreeSet::from([nodes.ip1]),
            (None, false) => BTreeSet::from([nodes.ip1, nodes.ip2]),
        }
    }
}

fn churn_name(i: usize) -> String {
    format!("churn-{i:02}")
}

async fn create_churned(ns: &TestNamespace, name: &str, service: &Churned) -> Result<()> {
    let metadata = match service.pool {
        Some(pool) => json!({ "annotations": { names::POOL: pool } }),
        None => json!({}),
    };
    ns.load_balancer_with_metadata(name, "echo", &http(service.port), json!({}), metadata).await?;
    Ok(())
}

/// Every remaining churned Service publishes what it should and its forwarding claims its port;
/// every deleted one is gone; no proxy DaemonSet or plan of the install is left without its
/// Service.
async fn settled(
    cluster: &Cluster,
    ns: &TestNamespace,
    nodes: &Nodes,
    churned: &BTreeMap<String, Churned>,
) -> Result<()> {
    let live: BTreeMap<String, Service> =
        ns.services().list(&ListParams::default()).await?.items.into_iter().map(|s| (s.name_any(), s)).collect();
    for (name, wanted) in churned {
        let Some(service) = live.get(name) else {
            ensure!(wanted.deleted, "{name} is gone but was not deleted");
            continue;
        };
        ensure!(!wanted.deleted, "{name} was deleted but is still there (finalizers {:?})", service.finalizers());
        let expected = wanted.expected(nodes);
        ensure!(published(service) == expected, "{name} publishes {:?}, expected {expected:?}", published(service));
        if !expected.is_empty() {
            let ports = cluster.dataplane.claimed_ports(cluster, &ns.name, name).await?;
            ensure!(ports == vec![(i32::from(wanted.port), "TCP".into())], "{name}'s forwarding claims {ports:?}");
        }
    }
    let uids: BTreeSet<String> = Api::<Service>::all(cluster.client.clone())
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|service| service.uid())
        .collect();
    for (forwarder, owner) in cluster.dataplane.forwarder_owners(cluster).await? {
        ensure!(uids.contains(&owner), "{forwarder} is orphaned (Service {owner} is gone)");
    }
    Ok(())
}

async fn label_node(cluster: &Cluster, node: &str, pool: Option<&str>) -> Result<()> {
    let patch = json!({ "metadata": { "labels": { names::POOL: pool } } });
    Api::<Node>::all(cluster.client.clone()).patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// At least this many Services go through the churn.
const CHURNED: usize = 66;
/// Of those, the ones created while the churn is under way.
const CREATED_LATE: usize = 6;
const MIN_KILLS: usize = 4;

#[tokio::test]
async fn leader_killed_again_and_again_during_churn_loses_nothing() -> Result<()> {
    let (cluster, ns, nodes) = with_backend("churn").await?;
    label_node(&cluster, &nodes.node2, Some(POOL_NODE2)).await?;
    let outcome = churn_while_killing_the_leader(&cluster, &ns, &nodes).await;
    label_node(&cluster, &nodes.node2, None).await?;
    outcome
}

async fn churn_while_killing_the_leader(cluster: &Cluster, ns: &TestNamespace, nodes: &Nodes) -> Result<()> {
    // A third everywhere, a third on node-2's pool, a third in a pool no node is in.
    let mut churned: BTreeMap<String, Churned> = (0..CHURNED)
        .map(|i| {
            let pool = [None, Some(POOL_NODE2), Some(POOL_NOWHERE)][i % 3];
            (churn_name(i), Churned { port: 19000 + i as u16, local: false, pool, deleted: false })
        })
        .collect();
    for (name, service) in churned.iter().take(CHURNED - CREATED_LATE) {
        create_churned(ns, name, service).await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let killing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let cluster = Cluster::connect().await?;
            let mut failovers = Vec::new();
            while failovers.len() < MIN_KILLS || !stop.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_secs(3)).await;
                let (took, killed, successor) = kill_leader(&cluster).await?;
                say(format!("SIGKILL to leader {killed}: {successor} led {:.1}s later", took.as_secs_f64()));
                failovers.push(took);
            }
            anyhow::Ok(failovers)
        }
    });

    let (mut changed, mut deleted) = (0, 0);
    for i in 0..CHURNED {
        let name = churn_name(i);
        if i >= CHURNED - CREATED_LATE {
            create_churned(ns, &name, &churned[&name]).await?;
        }
        let service = churned.get_mut(&name).expect("every churned Service is listed");
        let patch = match i % 3 {
            0 if i % 2 == 0 => {
                service.local = true;
                Some(json!({ "spec": { "externalTrafficPolicy": "Local" } }))
            }
            1 if i % 2 == 1 => {
                service.port += 500;
                let ports =
                    json!([{ "name": "http", "protocol": "TCP", "port": service.port, "targetPort": ECHO_HTTP_PORT }]);
                Some(json!({ "spec": { "ports": ports } }))
            }
            2 if i % 2 == 0 => {
                service.pool = Some(POOL_NODE2);
                Some(json!({ "metadata": { "annotations": { names::POOL: POOL_NODE2 } } }))
            }
            _ => None,
        };
        if let Some(patch) = patch {
            ns.patch_service(&name, patch).await?;
            changed += 1;
        }
        if i % 5 == 4 {
            ns.services().delete(&name, &DeleteParams::default()).await?;
            service.deleted = true;
            deleted += 1;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    stop.store(true, Ordering::Release);
    let failovers = killing.await??;
    let churn_over = Instant::now();
    let bound = LEASE_DURATION + MARGIN;
    ensure!(failovers.iter().all(|took| *took <= bound), "a failover after SIGKILL took over {bound:?}");

    eventually(SETTLE, || settled(cluster, ns, nodes, &churned)).await?;
    let remaining = churned.values().filter(|s| !s.deleted).count();
    let serving = churned.values().filter(|s| !s.deleted && !s.expected(nodes).is_empty()).count();
    say(format!(
        "churn ({}): {CHURNED} Services created, {changed} changed, {deleted} deleted, {remaining} remain ({serving} \
         forwarded); {} leader kills; settled {:.1}s after the churn; 0 wrong statuses, 0 orphaned DaemonSets or plans, \
         0 Services stuck on the finalizer",
        cluster.dataplane.name(),
        failovers.len(),
        churn_over.elapsed().as_secs_f64()
    ));
    say(format!("failover after SIGKILL: {}", summary(&failovers)));
    Ok(())
}

/// The metrics endpoint of a controller pod, as text.
fn metrics_of(pod: &Pod) -> Result<String> {
    let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).context("controller pod without address")?;
    let output = std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "3", &format!("http://{ip}:8080/metrics")])
        .output()?;
    ensure!(output.status.success(), "metrics of {}: {}", pod.name_any(), String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The figure the metrics endpoint of a controller pod shows for `metric` (a name with no labels).
fn metric(pod: &Pod, metric: &str) -> Result<String> {
    let text = metrics_of(pod)?;
    let figure = text.lines().find_map(|line| line.strip_prefix(metric)?.strip_prefix(' '));
    Ok(figure.with_context(|| format!("no {metric} in the metrics of {}", pod.name_any()))?.to_string())
}

/// The write requests a controller pod has sent while leading, over every verb.
fn api_writes(pod: &Pod) -> Result<u64> {
    let text = metrics_of(pod)?;
    let counts = text.lines().filter(|line| line.starts_with("hostlb_api_writes_total{"));
    counts.map(|line| Ok(line.rsplit(' ').next().unwrap_or_default().parse::<u64>()?)).sum()
}

#[tokio::test]
async fn a_leader_stopped_gracefully_hands_the_lease_over_within_seconds() -> Result<()> {
    let cluster = Cluster::connect().await?;
    let leader = leader_with_a_standby(&cluster, SETTLE).await?;
    ensure!(metric(&leader, "hostlb_leader")? == "1", "the leader's hostlb_leader is not 1");
    let stopped_at = Instant::now();
    system_pods(&cluster).delete(&leader.name_any(), &DeleteParams::default()).await?;
    let successor = loop {
        if let (Some(holder), _) = lease(&cluster).await? {
            if holder != leader.name_any() {
                break holder;
            }
        }
        ensure!(stopped_at.elapsed() < LEASE_DURATION + MARGIN, "nobody took the Lease over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let took = stopped_at.elapsed();
    say(format!(
        "failover after SIGTERM: {successor} led {:.2}s after {} was deleted",
        took.as_secs_f64(),
        leader.name_any()
    ));
    // A follower reads the Lease once per retry period; the rest is the kubelet and the API server.
    let bound = RETRY_PERIOD + Duration::from_secs(4);
    ensure!(took <= bound, "the Lease was handed over after {took:?}, not within {bound:?}");
    let new_leader = leader_with_a_standby(&cluster, SETTLE).await?;
    ensure!(metric(&new_leader, "hostlb_leader")? == "1", "the new leader's hostlb_leader is not 1");
    let pods = cluster.controller_pods().await?;
    let followers = pods.iter().filter(|pod| pod_is_ready(pod));
    for follower in followers.filter(|pod| pod.name_any() != new_leader.name_any()) {
        ensure!(metric(follower, "hostlb_leader")? == "0", "follower {}'s hostlb_leader is not 0", follower.name_any());
    }
    Ok(())
}

#[tokio::test]
async fn a_leader_frozen_past_its_renew_deadline_writes_nothing_when_it_wakes() -> Result<()> {
    let (cluster, ns, _nodes) = setup("frozen").await?;
    let leader = leader_with_a_standby(&cluster, SETTLE).await?;
    let restarts = cluster.controller_restarts().await?;
    let (node, container) = running_container(&leader)?;
    // Idle, the leader writes nothing: what it counts now is what it counts when frozen.
    let before = api_writes(&leader)?;
    cluster.harness(&["pause-container", &node, &container])?;
    let frozen_at = Instant::now();
    let frozen = async {
        let successor = eventually(LEASE_DURATION + MARGIN, || async {
            match lease(&cluster).await? {
                (Some(holder), _) if holder != leader.name_any() => Ok(holder),
                (holder, _) => bail!("the Lease is still held by {holder:?}"),
            }
        })
        .await?;
        let took_over = frozen_at.elapsed();
        // Work for the new leader, and for the frozen one to find in its watches when it wakes.
        ns.load_balancer("woken", "echo", &http(19640), json!({})).await?;
        eventually(MARGIN, || async {
            let forwarders = cluster.dataplane.forwarders(&cluster, &ns.name, "woken").await?;
            ensure!(!forwarders.is_empty(), "{successor} has not created the Service's forwarding yet");
            Ok(())
        })
        .await?;
        anyhow::Ok((successor, took_over))
    }
    .await;
    // Whatever happened, the next tests need it thawed.
    cluster.harness(&["resume-container", &node, &container])?;
    let frozen_for = frozen_at.elapsed();
    let (successor, took_over) = frozen?;

    // What it would write, it writes as soon as it wakes: from then on, and until it could
    // have led again, it must count no write.
    let (mut samples, mut after) = (0, before);
    let watched_since = Instant::now();
    while watched_since.elapsed() < RENEW_DEADLINE {
        after = api_writes(&leader)?;
        ensure!(after == before, "{} sent {} writes after it woke up as a follower", leader.name_any(), after - before);
        ensure!(lease(&cluster).await?.0.as_deref() != Some(&leader.name_any()), "the frozen leader led again");
        samples += 1;
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    cluster.ensure_no_controller_restarted(&restarts).await?;
    // The counter that stayed still counts: the new leader's moved with what it made.
    let pods = cluster.controller_pods().await?;
    let new_leader = pods.iter().find(|pod| pod.name_any() == successor).context("the new leader's pod")?;
    ensure!(api_writes(new_leader)? > 0, "{successor} counts no API writes although it created the forwarding");
    say(format!(
        "leader {} frozen for {:.1}s: {successor} led {:.1}s after the freeze; the woken one counted {before} writes \
         before and {after} over {samples} reads in the {}s after it woke: 0 writes once past its renew deadline",
        leader.name_any(),
        frozen_for.as_secs_f64(),
        took_over.as_secs_f64(),
        RENEW_DEADLINE.as_secs()
    ));
    Ok(())
}

/// Waits until every node forwards the Service on `port` (with proxy pods, a Ready one of the
/// current template), and the Service publishes both nodes.
async fn serves_on_both_nodes(
    cluster: &Cluster,
    ns: &TestNamespace,
    nodes: &Nodes,
    name: &str,
    port: u16,
) -> Result<()> {
    cluster.dataplane.wait_rolled_to(cluster, &ns.name, name, i32::from(port), SETTLE).await?;
    cluster.wait_for_addresses(&ns.name, name, &[nodes.ip1, nodes.ip2], SETTLE).await?;
    Ok(())
}

/// A test's namespace with the echo backend Ready on node-1.
async fn with_backend(test: &str) -> Result<(Cluster, TestNamespace, Nodes)> {
    let (cluster, ns, nodes) = setup(test).await?;
    ns.echo_backend(&cluster, "echo", 1, Some(&nodes.node1)).await?;
    ns.wait_ready("echo", 1, SETTLE).await?;
    Ok((cluster, ns, nodes))
}

/// A test's namespace with a LoadBalancer Service for the echo backend, served on both nodes.
async fn serving(test: &str, service: &str, port: u16) -> Result<(Cluster, TestNamespace, Nodes)> {
    let (cluster, ns, nodes) = with_backend(test).await?;
    ns.load_balancer(service, "echo", &http(port), json!({})).await?;
    serves_on_both_nodes(&cluster, &ns, &nodes, service, port).await?;
    Ok((cluster, ns, nodes))
}

#[tokio::test]
async fn api_server_and_etcd_restarted_in_the_middle_of_a_change_the_change_completes() -> Result<()> {
    let (cluster, ns, nodes) = serving("api-restart", "moving", 19600).await?;
    leader_with_a_standby(&cluster, SETTLE).await?;
    let restarts = cluster.controller_restarts().await?;

    let ports = json!([{ "name": "http", "protocol": "TCP", "port": 19601, "targetPort": ECHO_HTTP_PORT }]);
    ns.patch_service("moving", json!({ "spec": { "ports": ports } })).await?;
    let changed_at = Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.harness(&["restart-control-plane"])?;
    let back_after = changed_at.elapsed();
    serves_on_both_nodes(&cluster, &ns, &nodes, "moving", 19601).await?;
    answers(&cluster, nodes.unpublished1, 19601, SETTLE).await?;
    answers(&cluster, nodes.ip1, 19601, SETTLE).await?;
    say(format!(
        "API server and etcd restarted 0.5s into a port change: API back after {:.1}s, change complete after {:.1}s",
        back_after.as_secs_f64(),
        changed_at.elapsed().as_secs_f64()
    ));
    cluster.ensure_no_controller_restarted(&restarts).await?;
    // The proxies rolled to the new port after the restart: their watch events queued reconciles.
    let leader = leader_with_a_standby(&cluster, SETTLE).await?;
    let queued: u64 = metric(&leader, "hostlb_reconcile_queue_seconds_count")?.parse()?;
    ensure!(queued > 0, "the leader {} counts no queued reconcile", leader.name_any());
    Ok(())
}

/// One probe round: which of the paths answered.
async fn probe_all(cluster: &Cluster, targets: &[(IpAddr, u16)]) -> Result<Vec<bool>> {
    let client = cluster.client()?;
    let targets = targets.to_vec();
    tokio::task::spawn_blocking(move || targets.iter().map(|(ip, port)| client.http_get(*ip, *port).is_ok()).collect())
        .await
        .map_err(Into::into)
}

async fn scale_controller(cluster: &Cluster, replicas: u8) -> Result<()> {
    cluster.kubectl(&[
        "-n",
        SYSTEM_NAMESPACE,
        "scale",
        "deployment/hostlb-controller",
        &format!("--replicas={replicas}"),
    ])?;
    Ok(())
}

/// A Service served on both nodes, once it answers on both paths of each: the published
/// address (kube-proxy's rules) and the unpublished one (the proxy pod's hostPort).
async fn answering_on_both_paths(
    test: &str,
    service: &str,
    port: u16,
) -> Result<(Cluster, TestNamespace, Nodes, [Target; 4])> {
    let (cluster, ns, nodes) = serving(test, service, port).await?;
    let targets = nodes.paths(port);
    for (ip, port) in targets {
        answers(&cluster, ip, port, SETTLE).await?;
    }
    Ok((cluster, ns, nodes, targets))
}

#[tokio::test]
async fn services_keep_answering_on_both_paths_while_the_controller_is_away() -> Result<()> {
    let (cluster, _namespace, _nodes, targets) = answering_on_both_paths("away", "steady", 19610).await?;

    scale_controller(&cluster, 0).await?;
    let away = async {
        eventually(SETTLE, || async {
            let left = cluster.controller_pods().await?.len();
            ensure!(left == 0, "{left} controller pods are still there");
            Ok(())
        })
        .await?;
        let started = Instant::now();
        let (mut answered, mut failed) = (0, Vec::new());
        while started.elapsed() < Duration::from_secs(60) {
            for (answer, target) in probe_all(&cluster, &targets).await?.into_iter().zip(targets) {
                if answer {
                    answered += 1;
                } else {
                    failed.push(target);
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        anyhow::Ok((answered, failed))
    }
    .await;
    // Whatever happened, the next tests need the controller back.
    scale_controller(&cluster, 2).await?;
    let (answered, failed) = away?;
    leader_with_a_standby(&cluster, SETTLE).await?;
    say(format!(
        "controller scaled to 0 for 60s: {answered} requests answered, {} failed, over the published and the proxy path of both nodes",
        failed.len()
    ));
    ensure!(failed.is_empty(), "requests failed while the controller was away: {failed:?}");
    Ok(())
}

/// How often the traffic of a test goes out on each path.
const PROBE_EVERY: Duration = Duration::from_millis(200);

/// A proxy pod, or with the node agents the agent, of node-1 deleted.
#[tokio::test]
async fn a_killed_proxy_pod_comes_back_and_traffic_resumes() -> Result<()> {
    let (cluster, ns, nodes) = serving("proxy-kill", "struck", 19620).await?;
    let proxy_path = (nodes.unpublished1, 19620);
    let published_path = (nodes.ip1, 19620);
    answers(&cluster, proxy_path.0, proxy_path.1, SETTLE).await?;

    let on_node1 = |pod: &Pod| pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(nodes.node1.as_str());
    let pods = cluster.dataplane.forwarding_pods(&cluster, &ns.name, "struck").await?;
    let victim = pods.into_iter().find(on_node1).context("no pod forwards on node-1")?;
    let traffic = Traffic::start(&cluster.client()?, &[proxy_path, published_path], PROBE_EVERY, SETTLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let killed_at = Instant::now();
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    pods.delete(&victim.name_any(), &DeleteParams::default()).await?;
    let replacement = eventually(SETTLE, || async {
        let pods = cluster.dataplane.forwarding_pods(&cluster, &ns.name, "struck").await?;
        let back =
            pods.into_iter().find(|pod| on_node1(pod) && pod.name_any() != victim.name_any() && pod_is_ready(pod));
        back.context("no new Ready pod forwards on node-1 yet")
    })
    .await?;
    let back_after = killed_at.elapsed();
    cluster.wait_for_addresses(&ns.name, "struck", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answers(&cluster, proxy_path.0, proxy_path.1, SETTLE).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = traffic.finish().await?;
    let (proxy_gap, published_gap) = (records[0].1.longest_gap, records[1].1.longest_gap);
    let figures = cluster.dataplane.killed_pod_figures();
    say(format!(
        "{} {} deleted: {} Ready {:.1}s later; traffic gap {:.1}s through hostlb's own rules, {:.1}s to the \
         published address",
        cluster.dataplane.pod_noun(),
        victim.name_any(),
        replacement.name_any(),
        back_after.as_secs_f64(),
        proxy_gap.as_secs_f64(),
        published_gap.as_secs_f64()
    ));
    figure(&format!("{figures}_gap_ms_proxy_path"), proxy_gap.as_millis() as f64)?;
    figure(&format!("{figures}_gap_ms_published"), published_gap.as_millis() as f64)?;
    ensure!(published_gap.is_zero(), "the published address failed for {published_gap:?}");
    ensure!(proxy_gap <= PROXY_PATH_GAP_BOUND, "a gap of {proxy_gap:?} through the proxy pod");
    Ok(())
}

#[tokio::test]
async fn a_restarted_node_gets_its_proxies_and_its_address_back() -> Result<()> {
    let (cluster, ns, nodes) = serving("node-restart", "rebooted", 19630).await?;

    let stopped_at = Instant::now();
    cluster.harness(&["node", "stop", &nodes.node2])?;
    // Whatever happens, the next tests need node-2 back.
    let withdrawn = cluster.wait_for_addresses(&ns.name, "rebooted", &[nodes.ip1], SETTLE).await;
    let started_at = Instant::now();
    cluster.harness(&["node", "start", &nodes.node2])?;
    let withdrawn = withdrawn?;
    let returned = cluster.wait_for_addresses(&ns.name, "rebooted", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answers(&cluster, nodes.unpublished2, 19630, SETTLE).await?;
    answers(&cluster, nodes.ip2, 19630, SETTLE).await?;
    say(format!(
        "node-2's kubelet and containerd stopped: its address left the status after {:.1}s; restarted after {:.1}s, \
         its proxy was Ready and its address back in the status {:.1}s later",
        withdrawn.as_secs_f64(),
        started_at.duration_since(stopped_at).as_secs_f64(),
        returned.as_secs_f64()
    ));
    figure("node_failover_s", withdrawn.as_secs_f64())?;
    figure("node_return_s", returned.as_secs_f64())?;
    Ok(())
}

/// How long the API server is hung: past the node controller's 40 s grace, the controller's
/// 10 s renew deadline and its 20 s view of a silent kubelet.
const HUNG_FOR: Duration = Duration::from_secs(45);

#[tokio::test]
async fn an_api_server_hung_for_45_s_withdraws_no_healthy_node_and_fails_no_path() -> Result<()> {
    let (cluster, ns, nodes, targets) = answering_on_both_paths("hung", "steady", 19650).await?;
    let restarts = cluster.controller_restarts().await?;
    let both = BTreeSet::from([nodes.ip1, nodes.ip2]);
    let writes_before = cluster.status_writes(&ns.name, "steady").await?;

    let hang = {
        let cluster = Cluster::connect().await?;
        let seconds = HUNG_FOR.as_secs().to_string();
        tokio::task::spawn_blocking(move || cluster.harness(&["hang-apiserver", &seconds]))
    };
    // Every status read, through the hang and for a minute after it, by a client that gives up
    // on a request after a second; and every request on both paths of both nodes meanwhile.
    let started = Instant::now();
    let (mut reads, mut shrunk, mut rounds) = (0, Vec::new(), Vec::new());
    while started.elapsed() < HUNG_FOR + Duration::from_secs(60) {
        let read = tokio::time::timeout(Duration::from_secs(1), ns.services().get("steady")).await;
        if let Ok(Ok(service)) = read {
            reads += 1;
            let addresses = published(&service);
            if addresses != both {
                shrunk.push((started.elapsed(), addresses));
            }
        }
        rounds.push((started.elapsed(), probe_all(&cluster, &targets).await?));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // All four paths end at the backend: when every one fails at once, it is the backend's
    // endpoint that is gone (the node controller marks pods NotReady on its first look after
    // the hang), and the rounds next to those see it go and come back midway. A path failing
    // alone at any other time is the path's own failure.
    let all_failed = |round: usize| rounds.get(round).is_some_and(|(_, answers)| answers.iter().all(|a| !a));
    let backend_gone = (0..rounds.len()).filter(|round| all_failed(*round)).count();
    let partial: Vec<_> = (0..rounds.len())
        .filter(|round| rounds[*round].1.iter().any(|answered| !answered) && !all_failed(*round))
        .filter(|round| !(all_failed(round + 1) || round.checked_sub(1).is_some_and(all_failed)))
        .map(|round| &rounds[round])
        .collect();
    hang.await??;
    let writes_after = cluster.status_writes(&ns.name, "steady").await?;
    cluster.ensure_no_controller_restarted(&restarts).await?;
    say(format!(
        "API server hung for {}s: {reads} status reads over {}s, {} showed fewer than both nodes; {} status writes; \
         {} rounds of a request on both paths of both nodes: {} with a path failing alone, \
         {backend_gone} with every path failing at once (the backend's endpoint withdrawn)",
        HUNG_FOR.as_secs(),
        started.elapsed().as_secs(),
        shrunk.len(),
        writes_after - writes_before,
        rounds.len(),
        partial.len(),
    ));
    ensure!(shrunk.is_empty(), "the status shrank: {shrunk:?}");
    ensure!(writes_after == writes_before, "the status was written {} times", writes_after - writes_before);
    ensure!(partial.is_empty(), "paths failed on their own: {partial:?}");
    Ok(())
}

/// How long a path may fail before a test gives up on it.
const PATH_GIVE_UP: Duration = Duration::from_secs(90);

#[tokio::test]
async fn a_proxy_roll_under_traffic_loses_no_request_on_a_published_address() -> Result<()> {
    let (cluster, ns, nodes, targets) = answering_on_both_paths("roll", "rolled", 19660).await?;
    let daemonset = cluster.dataplane.forwarding_daemonset(&cluster, &ns.name, "rolled").await?.name_any();
    let pods = cluster.dataplane.forwarding_pods(&cluster, &ns.name, "rolled").await?;
    let old: BTreeSet<String> = pods.iter().map(|pod| pod.name_any()).collect();
    let statuses = StatusWatch::start(ns.services(), &["rolled"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let traffic = Traffic::start(&cluster.client()?, &targets, PROBE_EVERY, PATH_GIVE_UP);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let started = Instant::now();
    let restart = ["-n", SYSTEM_NAMESPACE, "rollout", "restart", &format!("daemonset/{daemonset}")];
    let rolled = match cluster.kubectl(&restart) {
        Ok(_) => {
            eventually(SETTLE, || async {
                let pods = cluster.dataplane.forwarding_pods(&cluster, &ns.name, "rolled").await?;
                let fresh = pods.iter().filter(|pod| !old.contains(&pod.name_any()) && pod_is_ready(pod)).count();
                ensure!(fresh == 2 && pods.len() == 2, "{fresh} of 2 pods replaced and Ready, {} pods", pods.len());
                Ok(())
            })
            .await
        }
        Err(failed) => Err(failed),
    };
    let rolled_after = started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (records, statuses) = (traffic.finish().await?, statuses.finish().await?);
    rolled?;
    let replaced = cluster.events(&ns.name, "rolled", Reason::ProxyPodReplaced).await?;
    let replaced: i32 = replaced.iter().map(|event| event.series.as_ref().map_or(1, |series| series.count)).sum();
    say(format!(
        "{daemonset} rolled (kubectl rollout restart): both replaced and Ready after {:.1}s, {replaced} \
         ProxyPodReplaced Events; {}; {} status reads, {} showed fewer than both nodes",
        rolled_after.as_secs_f64(),
        nodes.describe_paths(&records),
        statuses.reads,
        statuses.shrunk.len()
    ));
    ensure!(statuses.shrunk.is_empty(), "the status shrank: {:?}", statuses.shrunk);
    let lost_published: u32 = records[..2].iter().map(|(_, record)| record.lost).sum();
    ensure!(lost_published == 0, "{lost_published} requests lost on the published addresses");
    cluster.dataplane.ensure_roll_kept(&records, rolled_after, replaced, PROXY_PATH_GAP_BOUND)
}

/// The aim for a proxy pod's replacement is a second; the bound is loose for a busy machine, and
/// tight enough to catch a replacement that waits for the old pod's graceful end (10 to 40 s here).
const PROXY_PATH_GAP_BOUND: Duration = Duration::from_secs(5);

/// Longer than both this cluster's node controller (a 16 s grace) and the controller (a 3 s
/// renewal interval and 10 s of grace) allow a kubelet: the node controller marks both nodes and
/// their pods NotReady meanwhile, as it would in a real outage of this kind.
const KUBELETS_SILENT_FOR: Duration = Duration::from_secs(27);

/// How long any node was NotReady, polled every quarter second until `stop`.
async fn not_ready_time(cluster: Cluster, stop: Arc<AtomicBool>) -> Result<Duration> {
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let mut not_ready = Duration::ZERO;
    while !stop.load(Ordering::Acquire) {
        let looked = Instant::now();
        if let Ok(Ok(list)) = tokio::time::timeout(Duration::from_secs(1), nodes.list(&ListParams::default())).await {
            if !list.items.iter().all(hostlb_model::readiness::node_is_ready) {
                not_ready += Duration::from_millis(250).max(looked.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(250).saturating_sub(looked.elapsed())).await;
    }
    Ok(not_ready)
}

/// Every kubelet silent at once looks to the controller like a stalled node-Lease watch: no
/// status may shrink. The requests are only reported: once the node controller marks the
/// backend's pod NotReady, kube-proxy drops its endpoint, and no load balancer routes around that.
#[tokio::test]
async fn every_kubelet_silent_at_once_withdraws_no_node() -> Result<()> {
    let (cluster, ns, nodes, targets) = answering_on_both_paths("silent", "steady", 19670).await?;
    let restarts = cluster.controller_restarts().await?;
    let writes_before = cluster.status_writes(&ns.name, "steady").await?;
    let statuses = StatusWatch::start(ns.services(), &["steady"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let traffic = Traffic::start(&cluster.client()?, &targets, PROBE_EVERY, PATH_GIVE_UP);
    let stop = Arc::new(AtomicBool::new(false));
    let not_ready = tokio::spawn(not_ready_time(Cluster::connect().await?, stop.clone()));

    let hang = {
        let cluster = Cluster::connect().await?;
        let seconds = KUBELETS_SILENT_FOR.as_secs().to_string();
        tokio::task::spawn_blocking(move || cluster.harness(&["hang-kubelets", &seconds]))
    };
    // Near the end of the silence, the node Leases show it: neither renewed for longer than the
    // controller allows a kubelet.
    tokio::time::sleep(KUBELETS_SILENT_FOR - Duration::from_secs(2)).await;
    let leases: Api<Lease> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let mut silences = Vec::new();
    for node in [&nodes.node1, &nodes.node2] {
        let renewed =
            leases.get(node).await?.spec.and_then(|spec| spec.renew_time).context("a Lease without renewTime")?;
        let since = SystemTime::now().duration_since(SystemTime::from(renewed.0)).unwrap_or_default();
        silences.push(since);
    }
    hang.await??;
    // After the silence, the node controller and the kubelets catch up; the status must hold
    // through that too.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Release);
    let not_ready = not_ready.await??;
    let (records, statuses) = (traffic.finish().await?, statuses.finish().await?);
    let writes_after = cluster.status_writes(&ns.name, "steady").await?;
    cluster.ensure_no_controller_restarted(&restarts).await?;
    say(format!(
        "both kubelets stopped for {}s (Leases unrenewed for {:.0}s and {:.0}s when looked at; nodes NotReady for \
         {:.1}s by the node controller): {} status reads, {} showed fewer than both nodes; {} status writes; \
         requests, lost while the backend's pod was NotReady with its node: {}",
        KUBELETS_SILENT_FOR.as_secs(),
        silences[0].as_secs_f64(),
        silences[1].as_secs_f64(),
        not_ready.as_secs_f64(),
        statuses.reads,
        statuses.shrunk.len(),
        writes_after - writes_before,
        nodes.describe_paths(&records)
    ));
    ensure!(
        silences.iter().all(|silence| *silence > Duration::from_secs(13)),
        "the Leases were renewed during the silence: {silences:?}"
    );
    ensure!(statuses.shrunk.is_empty(), "the status shrank: {:?}", statuses.shrunk);
    ensure!(writes_after == writes_before, "the status was written {} times", writes_after - writes_before);
    Ok(())
}

/// The uid of the pod that forwards the Service on `node`.
async fn forwarding_pod_on(cluster: &Cluster, ns: &TestNamespace, service: &str, node: &str) -> Result<String> {
    let pods = cluster.dataplane.forwarding_pods(cluster, &ns.name, service).await?;
    let here = pods.iter().find(|pod| pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()) == Some(node));
    here.and_then(|pod| pod.uid()).with_context(|| format!("no pod forwards {service} on {node}"))
}

#[tokio::test]
async fn a_node_leaving_and_joining_the_pool_replaces_no_proxy_that_serves() -> Result<()> {
    const POOL: &str = "chaos-moving";
    let (cluster, ns, nodes) = with_backend("pool-moves").await?;
    let node_api = Api::<Node>::all(cluster.client.clone());
    let node2_pool = node_api.get(&nodes.node2).await?.labels().get(names::POOL).cloned();
    label_node(&cluster, &nodes.node1, Some(POOL)).await?;
    label_node(&cluster, &nodes.node2, Some(POOL)).await?;
    let outcome = async {
        let metadata = json!({ "annotations": { names::POOL: POOL } });
        ns.load_balancer_with_metadata("pooled", "echo", &http(19680), json!({}), metadata).await?;
        serves_on_both_nodes(&cluster, &ns, &nodes, "pooled", 19680).await?;
        let serving = forwarding_pod_on(&cluster, &ns, "pooled", &nodes.node1).await?;

        label_node(&cluster, &nodes.node2, None).await?;
        let left = cluster.wait_for_addresses(&ns.name, "pooled", &[nodes.ip1], SETTLE).await?;
        label_node(&cluster, &nodes.node2, Some(POOL)).await?;
        let joined = cluster.wait_for_addresses(&ns.name, "pooled", &[nodes.ip1, nodes.ip2], SETTLE).await?;
        let still = forwarding_pod_on(&cluster, &ns, "pooled", &nodes.node1).await?;
        say(format!(
            "node-2 left the Service's pool: out of the status after {:.1}s; joined again: back after {:.1}s; \
             node-1's forwarding pod {}",
            left.as_secs_f64(),
            joined.as_secs_f64(),
            if still == serving { "was left alone" } else { "was replaced" }
        ));
        ensure!(still == serving, "node-1's forwarding pod was replaced when node-2 left and joined the pool");
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, the next tests need the nodes as they were.
    label_node(&cluster, &nodes.node1, None).await?;
    label_node(&cluster, &nodes.node2, node2_pool.as_deref()).await?;
    outcome
}

/// First served, first kept, through a failover: with an older Service refused the port a
/// younger one serves, the leader is killed; its successor, reading who holds the port from the
/// pods and plans, keeps the younger one published and the older one out.
#[tokio::test]
async fn a_port_conflict_outlives_a_failover() -> Result<()> {
    let (cluster, ns, nodes) = setup("conflict-failover").await?;
    ns.echo_on_node1(&cluster, &nodes, SETTLE).await?;
    ns.older_switched_onto_a_served_port(&cluster, &nodes, "echo", 19660, SETTLE).await?;
    cluster.first_event_note(&ns.name, "older", Reason::PortConflict, SETTLE).await?;

    let statuses = StatusWatch::start(ns.services(), &["younger"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let (took, killed, successor) = kill_leader(&cluster).await?;
    // Long enough for the successor to have looked at both Services.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let shrunk = statuses.finish().await?.shrunk;
    ensure!(shrunk.is_empty(), "the younger Service lost nodes through the failover: {shrunk:?}");
    let older_published = published(&ns.services().get("older").await?);
    ensure!(older_published.is_empty(), "after the failover the older Service publishes {older_published:?}");
    cluster.wait_for_addresses(&ns.name, "younger", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    println!("chaos: a port conflict through a failover ({killed} -> {successor} in {took:.1?}): kept as it was");
    Ok(())
}
