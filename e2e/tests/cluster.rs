//! hostlb on a real two-node cluster: Services, proxy pods, and packets from a client network
//! namespace. Needs the harness's cluster (`make up`); run one test at a time
//! (`--test-threads=1`): some change nodes that all tests share.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{setup, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::figures::report_timing;
use hostlb_e2e::namespace::{http, TestNamespace, ECHO_HTTP_PORT, ECHO_UDP_PORT};
use hostlb_e2e::poll::{eventually, eventually_blocking};
use hostlb_e2e::status::published;
use hostlb_e2e::traffic::{refuses, EchoReply};
use hostlb_model::names::{self, FINALIZER};
use hostlb_model::reason::Reason;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, ResourceQuota};
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(90);
/// The 1.20 kubelet of the test cluster sometimes keeps a deleted pod until its container
/// garbage collection, which runs once a minute.
const KUBELET_CONTAINER_GC: Duration = Duration::from_secs(60);
const POD_GONE: Duration = SETTLE.saturating_add(KUBELET_CONTAINER_GC);
/// A DaemonSet rolls one node after the other, and a node's new proxy pod must wait for the old
/// one to be gone.
const ROLLED_ON_BOTH_NODES: Duration = POD_GONE.saturating_add(KUBELET_CONTAINER_GC);
/// How long a refused request is retried before the test believes it is refused for good.
const STAYS_REFUSED: Duration = Duration::from_secs(6);

/// The echo backend on node-1, so that the proxy pod there reaches it without the pod network's
/// own masquerading between nodes.
async fn backend_on_node1(cluster: &Cluster, ns: &TestNamespace, nodes: &Nodes) -> Result<()> {
    ns.echo_on_node1(cluster, nodes, SETTLE).await
}

/// The note of the first Event with this reason about the Service, once there is one.
async fn warned(cluster: &Cluster, namespace: &str, service: &str, reason: Reason) -> Result<String> {
    cluster.first_event_note(namespace, service, reason, SETTLE).await
}

async fn answered_http(cluster: &Cluster, address: IpAddr, port: u16) -> Result<EchoReply> {
    let client = cluster.client()?;
    eventually_blocking(SETTLE, move || client.http_get(address, port)).await
}

/// A request that keeps failing for `STAYS_REFUSED` is refused.
async fn refused_http(cluster: &Cluster, address: IpAddr, port: u16) -> Result<()> {
    refuses(cluster, address, port, STAYS_REFUSED).await
}

/// Waits until `node` forwards the Service, on the test's data plane.
async fn forwarded_on(cluster: &Cluster, ns: &str, service: &str, node: &str) -> Result<()> {
    eventually(SETTLE, || async {
        let forwarding = cluster.dataplane.forwarding(cluster, ns, service).await?;
        ensure!(forwarding.iter().any(|(on, forwards)| on == node && *forwards), "{node} does not forward yet");
        Ok(())
    })
    .await
}

async fn wait_gone(cluster: &Cluster, ns: &str, service: &str) -> Result<Duration> {
    let started = Instant::now();
    eventually(POD_GONE, || async {
        let forwarders = cluster.dataplane.forwarders(cluster, ns, service).await?;
        let forwarding = cluster.dataplane.forwarding(cluster, ns, service).await?;
        ensure!(forwarders.is_empty() && forwarding.is_empty(), "{forwarders:?} left, forwarding on {forwarding:?}");
        Ok(())
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::test]
async fn publishes_node_addresses_and_carries_traffic_on_both_paths() -> Result<()> {
    let (cluster, ns, nodes) = setup("basic").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let created = Instant::now();
    ns.load_balancer("web", "echo", &http(18080), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    report_timing("Service creation to status with both nodes", created.elapsed());

    let row = cluster.kubectl(&["get", "service", "web", "-n", &ns.name, "--no-headers"])?;
    let external_ip = row.split_whitespace().nth(3).unwrap_or_default();
    ensure!(external_ip.split(',').any(|a| a == nodes.ip1.to_string()), "EXTERNAL-IP column is {external_ip:?}");

    let published = answered_http(&cluster, nodes.ip1, 18080).await?;
    ensure!(published.pod.starts_with("echo-"), "unexpected answer {published:?}");

    // An address kube-proxy does not know: only hostlb's own rules can carry this, masqueraded
    // to the proxy pod's address, or to node-1's own on the pod network.
    let masqueraded_to = cluster.dataplane.node1_masquerade_source(&cluster, &ns.name, "web", SETTLE).await?;
    let through_proxy = answered_http(&cluster, nodes.unpublished1, 18080).await?;
    ensure!(
        through_proxy.client == masqueraded_to,
        "the backend saw {} instead of {masqueraded_to}",
        through_proxy.client,
    );
    Ok(())
}

#[tokio::test]
async fn udp_service_answers_through_the_node_address() -> Result<()> {
    let (cluster, ns, nodes) = setup("udp").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("dns", "echo", &[("dns", "UDP", 18053, ECHO_UDP_PORT)], json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "dns", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let client = cluster.client()?;
    for address in [nodes.ip1, nodes.unpublished1] {
        let client = client.clone();
        let reply = eventually_blocking(SETTLE, move || client.udp_echo(address, 18053)).await?;
        ensure!(reply.pod.starts_with("echo-"), "unexpected UDP answer {reply:?}");
    }
    Ok(())
}

#[tokio::test]
async fn one_port_number_over_two_protocols_is_served_on_both() -> Result<()> {
    let (cluster, ns, nodes) = setup("mixed").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let ports = [("http", "TCP", 18090, ECHO_HTTP_PORT), ("echo", "UDP", 18090, ECHO_UDP_PORT)];
    ns.load_balancer("mixed", "echo", &ports, json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "mixed", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let claimed = cluster.dataplane.claimed_ports(&cluster, &ns.name, "mixed").await?;
    ensure!(claimed == vec![(18090, "TCP".into()), (18090, "UDP".into())], "claims {claimed:?}");
    answered_http(&cluster, nodes.unpublished1, 18090).await?;
    let client = cluster.client()?;
    let address = nodes.unpublished1;
    eventually_blocking(SETTLE, move || client.udp_echo(address, 18090)).await?;
    Ok(())
}

#[tokio::test]
async fn changing_the_service_port_rolls_the_proxies_and_traffic_follows() -> Result<()> {
    let (cluster, ns, nodes) = setup("portchange").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18100), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18100).await?;

    let changed = Instant::now();
    let ports = json!([{ "name": "http", "protocol": "TCP", "port": 18101, "targetPort": ECHO_HTTP_PORT }]);
    ns.patch_service("web", json!({ "spec": { "ports": ports } })).await?;
    cluster.dataplane.wait_rolled_to(&cluster, &ns.name, "web", 18101, ROLLED_ON_BOTH_NODES).await?;
    answered_http(&cluster, nodes.unpublished1, 18101).await?;
    answered_http(&cluster, nodes.ip1, 18101).await?;
    report_timing("port change to traffic on the new port", changed.elapsed());
    refused_http(&cluster, nodes.unpublished1, 18100).await
}

#[tokio::test]
async fn deleting_or_retyping_a_service_removes_its_proxies_and_no_finalizer_holds_it() -> Result<()> {
    let (cluster, ns, nodes) = setup("cleanup").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("deleted", "echo", &http(18110), json!({})).await?;
    ns.load_balancer("retyped", "echo", &http(18111), json!({})).await?;
    for name in ["deleted", "retyped"] {
        cluster.wait_for_addresses(&ns.name, name, &[nodes.ip1, nodes.ip2], SETTLE).await?;
        let service = ns.services().get(name).await?;
        ensure!(service.finalizers().is_empty(), "{name} has finalizers {:?}", service.finalizers());
    }

    ns.delete_service("deleted").await?;
    report_timing("Service deletion to proxies gone", wait_gone(&cluster, &ns.name, "deleted").await?);
    eventually(SETTLE, || async {
        ensure!(ns.services().get_opt("deleted").await?.is_none(), "Service still there");
        Ok(())
    })
    .await?;

    ns.patch_service("retyped", json!({ "spec": { "type": "ClusterIP" } })).await?;
    report_timing("type change to proxies gone", wait_gone(&cluster, &ns.name, "retyped").await?);
    eventually(SETTLE, || async {
        let service = ns.services().get("retyped").await?;
        ensure!(!service.finalizers().iter().any(|f| f == FINALIZER), "finalizer still set");
        ensure!(published(&service).is_empty(), "status still lists {:?}", published(&service));
        Ok(())
    })
    .await
}

#[tokio::test]
async fn an_older_versions_finalizer_goes_and_a_deleted_services_proxies_are_swept_at_once() -> Result<()> {
    let (cluster, ns, nodes) = setup("orphan").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("released", "echo", &http(18115), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "released", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let forwarders = cluster.dataplane.forwarders(&cluster, &ns.name, "released").await?;
    let forwarder = forwarders.first().cloned().context("nothing forwards the Service")?;

    // As hostlb 0.1.0 left it.
    ns.patch_service("released", json!({ "metadata": { "finalizers": [FINALIZER] } })).await?;
    eventually(SETTLE, || async {
        let service = ns.services().get("released").await?;
        ensure!(service.finalizers().is_empty(), "finalizers {:?} are still there", service.finalizers());
        Ok(())
    })
    .await?;

    // Nothing holds the Service: its proxies are orphans the moment it is gone.
    ns.delete_service("released").await?;
    report_timing("Service deletion to orphaned proxies gone", wait_gone(&cluster, &ns.name, "released").await?);
    refused_http(&cluster, nodes.unpublished1, 18115).await?;
    // Normal Events follow what they tell of from a queue of their own.
    eventually(SETTLE, || async {
        let events = cluster.events(SYSTEM_NAMESPACE, &forwarder, Reason::OrphanDeleted).await?;
        ensure!(events.len() == 1, "expected one OrphanDeleted Event about {forwarder}, found {}", events.len());
        Ok(())
    })
    .await
}

/// First served, first kept: an older Service that becomes a LoadBalancer on a port a younger
/// one serves is not published for it, says which port is held, and the traffic stays with the
/// younger one.
#[tokio::test]
async fn an_older_service_switched_to_load_balancer_does_not_take_a_served_port() -> Result<()> {
    let (cluster, ns, nodes) = setup("first-served").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.echo_backend(&cluster, "older-echo", 1, Some(&nodes.node1)).await?;
    ns.wait_ready("older-echo", 1, SETTLE).await?;
    ns.older_switched_onto_a_served_port(&cluster, &nodes, "older-echo", 18125, SETTLE).await?;
    let note = warned(&cluster, &ns.name, "older", Reason::PortConflict).await?;
    ensure!(note.contains("port 18125/TCP is held on") && note.contains("which serves it there"), "{note}");
    let older_left_out = || async {
        let wanted = cluster.dataplane.nodes_wanted(&cluster, &ns.name, "older").await.unwrap_or(0);
        ensure!(wanted == 0, "the older Service's forwarding is wanted on {wanted} nodes");
        let older = ns.services().get("older").await?;
        ensure!(published(&older).is_empty(), "the older Service publishes {:?}", published(&older));
        Ok(())
    };
    eventually(SETTLE, older_left_out).await?;
    // Some seconds later, nothing has moved.
    tokio::time::sleep(Duration::from_secs(5)).await;
    older_left_out().await?;
    cluster.wait_for_addresses(&ns.name, "younger", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    for address in [nodes.ip1, nodes.ip2, nodes.unpublished1, nodes.unpublished2] {
        let reply = answered_http(&cluster, address, 18125).await?;
        ensure!(
            reply.pod.starts_with("echo-"),
            "{address}:18125 answered from {}, not the younger's backend",
            reply.pod
        );
    }
    println!("timing: the older Service became a LoadBalancer on a served port: {note}");
    Ok(())
}

#[tokio::test]
async fn the_first_service_on_a_port_keeps_every_node_through_its_rolls() -> Result<()> {
    let (cluster, ns, nodes) = setup("conflict").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("first", "echo", &http(18120), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "first", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    ns.a_second_after("first").await?;
    ns.load_balancer("second", "echo", &http(18120), json!({})).await?;

    let note = warned(&cluster, &ns.name, "second", Reason::PortConflict).await?;
    ensure!(note.contains("which serves it there") && note.contains("leave those nodes out"), "{note:?}");
    let second_left_out = || async {
        let wanted = cluster.dataplane.nodes_wanted(&cluster, &ns.name, "second").await?;
        ensure!(wanted == 0, "the second Service's forwarding is wanted on {wanted} nodes");
        let second = ns.services().get("second").await?;
        ensure!(published(&second).is_empty(), "the second Service publishes {:?}", published(&second));
        Ok(())
    };
    eventually(SETTLE, second_left_out).await?;

    // Each change of the first Service rolls its proxy pods: a pending pod of the second one
    // would take a node over while the first one's pod is replaced. The agents roll nothing.
    let ranges = [vec!["0.0.0.0/0"], vec!["0.0.0.0/1", "128.0.0.0/1"], vec!["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/1"]];
    for (roll, ranges) in ranges.into_iter().enumerate() {
        let before = cluster.dataplane.forwarding_revision(&cluster, &ns.name, "first").await?;
        ns.patch_service("first", json!({ "spec": { "loadBalancerSourceRanges": ranges } })).await?;
        eventually(SETTLE, || async {
            let now = cluster.dataplane.forwarding_revision(&cluster, &ns.name, "first").await?;
            ensure!(now != before, "roll {roll}: the forwarding is still at revision {now}");
            Ok(())
        })
        .await?;
        let started = Instant::now();
        cluster.dataplane.wait_rolled_to(&cluster, &ns.name, "first", 18120, ROLLED_ON_BOTH_NODES).await?;
        println!("timing: roll {} of the first Service: {:.2}s", roll + 1, started.elapsed().as_secs_f64());
        cluster.wait_for_addresses(&ns.name, "first", &[nodes.ip1, nodes.ip2], SETTLE).await?;
        second_left_out().await?;
    }
    answered_http(&cluster, nodes.unpublished1, 18120).await?;
    answered_http(&cluster, nodes.ip1, 18120).await?;
    Ok(())
}

#[tokio::test]
async fn source_ranges_refuse_other_clients_on_both_paths() -> Result<()> {
    let (cluster, ns, nodes) = setup("ranges").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let elsewhere = json!({ "loadBalancerSourceRanges": ["192.0.2.0/24"] });
    ns.load_balancer("web", "echo", &http(18130), elsewhere).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    forwarded_on(&cluster, &ns.name, "web", &nodes.node1).await?;
    refused_http(&cluster, nodes.ip1, 18130).await.context("published path")?;
    refused_http(&cluster, nodes.unpublished1, 18130).await.context("proxy pod path")?;

    let client_range = format!("{}/24", cluster.var("CLIENT_IP")?);
    ns.patch_service("web", json!({ "spec": { "loadBalancerSourceRanges": [client_range] } })).await?;
    answered_http(&cluster, nodes.unpublished1, 18130).await?;
    answered_http(&cluster, nodes.ip1, 18130).await?;
    Ok(())
}

#[tokio::test]
async fn source_ranges_warn_of_open_node_ports_which_a_service_can_do_without() -> Result<()> {
    let (cluster, ns, nodes) = setup("nodeports").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let elsewhere = json!({ "loadBalancerSourceRanges": ["192.0.2.0/24"] });
    ns.load_balancer("open", "echo", &http(18131), elsewhere.clone()).await?;
    let note = warned(&cluster, &ns.name, "open", Reason::NodePortsOpen).await?;
    ensure!(note.contains("allocateLoadBalancerNodePorts: false"), "the Event gives no remedy: {note:?}");

    // Needs the ServiceLBNodePortControl feature gate on 1.20, which the harness turns on.
    let closed = json!({ "loadBalancerSourceRanges": ["192.0.2.0/24"], "allocateLoadBalancerNodePorts": false });
    let service = ns.load_balancer("closed", "echo", &http(18132), closed).await?;
    let node_ports: Vec<i32> =
        service.spec.and_then(|s| s.ports).into_iter().flatten().filter_map(|p| p.node_port).collect();
    ensure!(node_ports.is_empty(), "NodePorts {node_ports:?} were allocated");
    cluster.wait_for_addresses(&ns.name, "closed", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    refused_http(&cluster, nodes.unpublished1, 18132).await.context("proxy pod path")?;
    let client_range = format!("{}/24", cluster.var("CLIENT_IP")?);
    ns.patch_service("closed", json!({ "spec": { "loadBalancerSourceRanges": [client_range] } })).await?;
    answered_http(&cluster, nodes.unpublished1, 18132).await?;
    answered_http(&cluster, nodes.ip1, 18132).await?;
    ensure!(cluster.events(&ns.name, "closed", Reason::NodePortsOpen).await?.is_empty(), "a warning without NodePorts");
    Ok(())
}

#[tokio::test]
async fn local_policy_publishes_only_nodes_with_a_ready_endpoint_and_keeps_the_client_address() -> Result<()> {
    let (cluster, ns, nodes) = setup("local").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18140), json!({ "externalTrafficPolicy": "Local" })).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1], SETTLE).await?;

    // Until kube-proxy has written its rule for the new address, packets still take the proxy
    // pod's path and arrive masqueraded; the client's own address must show up soon after.
    let (client, client_ip, address) = (cluster.client()?, cluster.ip("CLIENT_IP")?, nodes.ip1);
    eventually_blocking(SETTLE, move || {
        let reply = client.http_get(address, 18140)?;
        ensure!(reply.client == client_ip, "the backend saw {} instead of the client", reply.client);
        Ok(())
    })
    .await?;
    answered_http(&cluster, nodes.unpublished1, 18140).await?;

    let scaled = Instant::now();
    ns.scale("echo", 0).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[], SETTLE).await?;
    report_timing("Local: last endpoint gone to address withdrawn", scaled.elapsed());
    let scaled = Instant::now();
    ns.scale("echo", 1).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1], SETTLE).await?;
    report_timing("Local: endpoint back to address published", scaled.elapsed());
    answered_http(&cluster, nodes.ip1, 18140).await?;
    Ok(())
}

#[tokio::test]
async fn local_policy_traffic_through_a_proxy_pod_stays_on_its_node() -> Result<()> {
    let (cluster, ns, nodes) = setup("local-node").await?;
    for (backend, node) in [("echo-1", &nodes.node1), ("echo-2", &nodes.node2)] {
        ns.echo_backend(&cluster, backend, 1, Some(node)).await?;
        ns.wait_ready(backend, 1, SETTLE).await?;
    }
    // One Service over both Deployments: an extra label on their pods, which their ReplicaSets keep.
    cluster.kubectl(&["label", "pods", "-n", &ns.name, "-l", "app in (echo-1,echo-2)", "tier=echo"])?;
    let local = json!({ "externalTrafficPolicy": "Local", "selector": { "tier": "echo" },
                        "allocateLoadBalancerNodePorts": false });
    let service = ns.load_balancer("web", "unused", &http(18145), local).await?;
    let ports = service.spec.and_then(|spec| spec.ports).unwrap_or_default();
    ensure!(ports.iter().all(|port| port.node_port.is_none()), "NodePorts were allocated: {ports:?}");
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;

    // Each unpublished address exists on one node only: it enters through that node's proxy pod.
    for (address, node) in [(nodes.unpublished1, &nodes.node1), (nodes.unpublished2, &nodes.node2)] {
        answered_http(&cluster, address, 18145).await?;
        let mut served_on = BTreeMap::new();
        for _ in 0..20 {
            let reply = answered_http(&cluster, address, 18145).await?;
            *served_on.entry(reply.node).or_insert(0) += 1;
        }
        println!("Local, proxy pod path into {node}: 20 requests served on {served_on:?}");
        ensure!(served_on.keys().eq([node]), "requests into {node} were served on {served_on:?}");
    }

    // Without an endpoint of its own, a node forwards nothing, rather than to another node.
    ns.scale("echo-1", 0).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip2], SETTLE).await?;
    refused_http(&cluster, nodes.unpublished1, 18145).await?;
    answered_http(&cluster, nodes.unpublished2, 18145).await?;
    Ok(())
}

#[tokio::test]
async fn invalid_options_are_reported_and_harm_no_other_service() -> Result<()> {
    let (cluster, ns, nodes) = setup("invalid").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("good", "echo", &http(18170), json!({})).await?;
    ns.load_balancer("bad", "echo", &http(18171), json!({})).await?;
    let tolerations = names::ANNOTATION_TOLERATIONS;
    let bad_tolerations = json!({ "metadata": { "annotations": { tolerations: "{not json" } } });
    // Created without the annotation first, so the bad value also has to leave the running proxies alone.
    cluster.wait_for_addresses(&ns.name, "bad", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    ns.patch_service("bad", bad_tolerations).await?;

    let note = warned(&cluster, &ns.name, "bad", Reason::InvalidOption).await?;
    ensure!(note.contains(names::ANNOTATION_TOLERATIONS), "the Event does not name the field: {note:?}");
    cluster.wait_for_addresses(&ns.name, "good", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18170).await?;
    answered_http(&cluster, nodes.unpublished1, 18171).await?;
    Ok(())
}

#[tokio::test]
async fn ports_of_the_nodes_own_daemons_are_refused_and_the_other_ports_served() -> Result<()> {
    let (cluster, ns, nodes) = setup("deniedports").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let ports = [("ssh", "TCP", 22, ECHO_HTTP_PORT), ("http", "TCP", 18180, ECHO_HTTP_PORT)];
    ns.load_balancer("mixed", "echo", &ports, json!({})).await?;
    // The API server itself refuses 10250; the kubelet's read-only port is hostlb's to refuse.
    ns.load_balancer("kubelet", "echo", &[("kubelet", "TCP", 10255, ECHO_HTTP_PORT)], json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "mixed", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let claimed = cluster.dataplane.claimed_ports(&cluster, &ns.name, "mixed").await?;
    ensure!(claimed == vec![(18180, "TCP".into())], "claims {claimed:?}");
    answered_http(&cluster, nodes.unpublished1, 18180).await?;
    for (service, port) in [("mixed", "port 22/TCP"), ("kubelet", "port 10255/TCP")] {
        let note = warned(&cluster, &ns.name, service, Reason::PortRefused).await?;
        ensure!(note.contains(port) && note.contains("--denied-ports"), "the Event does not name {port}: {note:?}");
    }
    let claimed = cluster.dataplane.forwarders(&cluster, &ns.name, "kubelet").await?;
    ensure!(claimed.is_empty(), "{claimed:?} claim the kubelet's port");
    cluster.wait_for_addresses(&ns.name, "kubelet", &[], SETTLE).await?;
    Ok(())
}

#[tokio::test]
async fn scheduling_privileges_the_admin_did_not_grant_are_refused() -> Result<()> {
    let (cluster, ns, nodes) = setup("privileges").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("plain", "echo", &http(18190), json!({})).await?;
    let (class_key, tolerations_key) = (names::ANNOTATION_PRIORITY_CLASS, names::ANNOTATION_TOLERATIONS);
    let critical = json!({ class_key: "system-node-critical" });
    let everywhere = json!({ tolerations_key: r#"[{"operator":"Exists"}]"# });
    for (service, port, annotations, setting) in [
        ("critical", 18191, critical, "--allowed-priority-classes"),
        ("everywhere", 18192, everywhere, "--allowed-toleration-keys"),
    ] {
        let metadata = json!({ "annotations": annotations });
        ns.load_balancer_with_metadata(service, "echo", &http(port), json!({}), metadata).await?;
        let note = warned(&cluster, &ns.name, service, Reason::InvalidOption).await?;
        ensure!(note.contains(setting), "the Event on {service} does not name {setting}: {note:?}");
        ensure!(cluster.dataplane.forwarders(&cluster, &ns.name, service).await?.is_empty(), "{service} is forwarded");
    }
    cluster.wait_for_addresses(&ns.name, "plain", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    // The agents run at the class the admin gave the proxies.
    let daemonset = cluster.dataplane.forwarding_daemonset(&cluster, &ns.name, "plain").await?;
    let pod_spec = daemonset.spec.as_ref().and_then(|spec| spec.template.spec.as_ref());
    let class = pod_spec.and_then(|spec| spec.priority_class_name.as_deref());
    ensure!(class == Some("hostlb-proxy"), "the {} pods run at {class:?}", daemonset.name_any());
    Ok(())
}

/// The API server refuses the proxy DaemonSet of a toleration Kubernetes does not allow; with
/// the node agents, which only read the tolerations, the controller refuses it itself.
#[tokio::test]
async fn a_toleration_kubernetes_refuses_is_warned_and_the_status_stays() -> Result<()> {
    let (cluster, ns, nodes) = setup("refused").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18200), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    // Valid JSON, a key the harness allows, an operator Kubernetes does not have.
    let tolerations = names::ANNOTATION_TOLERATIONS;
    let invalid = r#"[{"key":"e2e.hostlb.io/allowed","operator":"Sometimes"}]"#;
    ns.patch_service("web", json!({ "metadata": { "annotations": { tolerations: invalid } } })).await?;
    let note = warned(&cluster, &ns.name, "web", cluster.dataplane.refused_toleration_reason()).await?;
    ensure!(note.contains("operator"), "the Event does not name the field: {note:?}");
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18200).await?;
    Ok(())
}

#[tokio::test]
async fn pods_that_cannot_be_created_are_explained_on_the_service() -> Result<()> {
    let (cluster, ns, nodes) = setup("notcreated").await?;
    cluster.dataplane.explains_pods_not_created(&cluster, &ns, &nodes, SETTLE).await
}

/// What a hostile Service must lead to.
enum Expect {
    /// A Warning with this reason whose note contains the text.
    Warning(Reason, &'static str),
    /// Served as any other Service: both nodes published.
    Served,
}

struct Hostile {
    name: String,
    /// Name, protocol, port, target port.
    ports: Vec<(String, &'static str, u16, u16)>,
    spec: serde_json::Value,
    metadata: serde_json::Value,
    expect: Expect,
}

fn hostile(name: &str, port: u16, metadata: serde_json::Value, expect: Expect) -> Hostile {
    let ports = vec![("http".to_string(), "TCP", port, ECHO_HTTP_PORT)];
    Hostile { name: name.into(), ports, spec: json!({}), metadata, expect }
}

fn annotated(key: &str, value: &str) -> serde_json::Value {
    json!({ "annotations": { key: value } })
}

#[tokio::test]
async fn hostile_services_are_each_told_what_is_wrong_and_harm_no_one() -> Result<()> {
    let (cluster, ns, nodes) = setup("hostile").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("healthy", "echo", &http(18300), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "healthy", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18300).await?;
    let controllers = cluster.controller_restarts().await?;

    let (tolerations, class, pool) = (names::ANNOTATION_TOLERATIONS, names::ANNOTATION_PRIORITY_CLASS, names::POOL);
    let ip_mode = names::ANNOTATION_IP_MODE;
    let (missing_class, missing_class_text) = cluster.dataplane.missing_priority_class_warning();
    let invalid = Reason::InvalidOption;
    let many_keys: Vec<serde_json::Value> =
        (0..60).map(|i| json!({ "key": format!("team-{i}.example.com/dedicated"), "operator": "Exists" })).collect();
    let thousands_of_keys: Vec<serde_json::Value> =
        (0..2000).map(|i| json!({ "key": format!("team-{i}.example.com/dedicated"), "operator": "Exists" })).collect();
    let many_ranges: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let mut table = vec![
        hostile("tol-not-json", 18301, annotated(tolerations, "{not json"), Expect::Warning(invalid, tolerations)),
        hostile("tol-shape", 18302, annotated(tolerations, r#"{"key":"a"}"#), Expect::Warning(invalid, tolerations)),
        hostile(
            "tol-everything",
            18303,
            annotated(tolerations, r#"[{"operator":"Exists"}]"#),
            Expect::Warning(invalid, "tolerates every taint"),
        ),
        hostile(
            "tol-unlisted",
            18304,
            annotated(tolerations, r#"[{"key":"gpu","operator":"Exists"}]"#),
            Expect::Warning(invalid, "--allowed-toleration-keys"),
        ),
        hostile(
            "tol-many",
            18305,
            annotated(tolerations, &serde_json::to_string(&many_keys)?),
            Expect::Warning(invalid, "--allowed-toleration-keys"),
        ),
        hostile(
            "tol-bad-operator",
            18306,
            annotated(tolerations, r#"[{"key":"e2e.hostlb.io/allowed","operator":"Sometimes"}]"#),
            // The controller checks what no API server sees with the node agents.
            Expect::Warning(cluster.dataplane.refused_toleration_reason(), "operator"),
        ),
        hostile("class-bad-name", 18307, annotated(class, "Not_A_Name"), Expect::Warning(invalid, class)),
        hostile("class-empty", 18308, annotated(class, ""), Expect::Warning(invalid, class)),
        hostile(
            "class-critical",
            18309,
            annotated(class, "system-node-critical"),
            Expect::Warning(invalid, "--allowed-priority-classes"),
        ),
        hostile(
            "class-missing",
            18310,
            annotated(class, "e2e-missing"),
            Expect::Warning(missing_class, missing_class_text),
        ),
        hostile("port-ssh", 22, json!({}), Expect::Warning(Reason::PortRefused, "port 22/TCP")),
        hostile("port-apiserver", 6443, json!({}), Expect::Warning(Reason::PortRefused, "port 6443/TCP")),
        hostile("port-etcd", 2379, json!({}), Expect::Warning(Reason::PortRefused, "port 2379/TCP")),
        hostile("port-kube-proxy", 10256, json!({}), Expect::Warning(Reason::PortRefused, "port 10256/TCP")),
        hostile("port-nodeport", 30080, json!({}), Expect::Warning(Reason::PortRefused, "--node-port-range")),
        hostile("pool-bad-value", 18311, annotated(pool, "bad value!"), Expect::Warning(invalid, pool)),
        hostile("pool-empty", 18312, annotated(pool, ""), Expect::Warning(invalid, pool)),
        hostile(
            "pool-disagrees",
            18313,
            json!({ "labels": { pool: "a" }, "annotations": { pool: "b" } }),
            Expect::Warning(invalid, "disagrees"),
        ),
        hostile("pool-nowhere", 18314, annotated(pool, "nowhere"), Expect::Warning(Reason::NoEligibleNode, "nowhere")),
        // The API server checks the source-range annotation itself; ipMode is hostlb's to check.
        hostile("ip-mode-bad", 18315, annotated(ip_mode, "proxy"), Expect::Warning(invalid, ip_mode)),
        hostile("ip-mode-old", 18316, annotated(ip_mode, "Proxy"), Expect::Warning(Reason::OptionIgnored, "1.30")),
        hostile(&format!("n{}", "x".repeat(62)), 18317, json!({}), Expect::Served),
        Hostile { spec: json!({ "selector": null }), ..hostile("no-selector", 18318, json!({}), Expect::Served) },
        Hostile {
            ports: vec![("kubelet".into(), "UDP", 10255, ECHO_UDP_PORT)],
            ..hostile("udp-kubelet", 0, json!({}), Expect::Warning(Reason::PortRefused, "port 10255/UDP"))
        },
        Hostile {
            ports: (0..100).map(|i| (format!("p{i}"), "TCP", 18400 + i, ECHO_HTTP_PORT)).collect(),
            ..hostile("hundred-ports", 0, json!({}), Expect::Served)
        },
        Hostile {
            ports: (0..101).map(|i| (format!("p{i}"), "TCP", 18500 + i, ECHO_HTTP_PORT)).collect(),
            ..hostile("too-many-ports", 0, json!({}), Expect::Warning(invalid, "--max-service-ports"))
        },
        Hostile {
            spec: json!({ "loadBalancerSourceRanges": many_ranges }),
            ..hostile("ranges-5000", 18320, json!({}), Expect::Warning(invalid, "5000 source ranges"))
        },
        hostile(
            "tol-2000",
            18321,
            annotated(tolerations, &serde_json::to_string(&thousands_of_keys)?),
            Expect::Warning(invalid, "and 1980 more"),
        ),
        Hostile {
            ports: vec![("geneve".into(), "UDP", 6081, ECHO_UDP_PORT)],
            ..hostile("port-geneve", 0, json!({}), Expect::Warning(Reason::PortRefused, "port 6081/UDP"))
        },
        hostile("port-cilium-health", 4240, json!({}), Expect::Warning(Reason::PortRefused, "port 4240/TCP")),
        hostile("port-rke2", 9345, json!({}), Expect::Warning(Reason::PortRefused, "port 9345/TCP")),
    ];
    for row in &table {
        let ports: Vec<(&str, &str, u16, u16)> =
            row.ports.iter().map(|(name, protocol, port, target)| (name.as_str(), *protocol, *port, *target)).collect();
        ns.load_balancer_with_metadata(&row.name, "echo", &ports, row.spec.clone(), row.metadata.clone()).await?;
    }
    // A DaemonSet (or plan, with the agents) with the name hostlb would give the Service's
    // forwarding, made by someone else before the Service became valid.
    ns.load_balancer_with_metadata("taken", "echo", &http(18319), json!({}), annotated(tolerations, "{")).await?;
    let uid = ns.services().get("taken").await?.uid().context("no UID")?;
    let taken_name = names::forwarding_name("taken", &uid);
    cluster.dataplane.occupy_forwarder_name(&cluster, &taken_name).await?;
    ns.patch_service("taken", json!({ "metadata": { "annotations": { tolerations: null } } })).await?;
    table.push(Hostile {
        ports: Vec::new(),
        ..hostile("taken", 0, json!({}), Expect::Warning(Reason::ForwardingNameTaken, "not made by hostlb"))
    });

    let started = Instant::now();
    let (mut as_expected, mut served) = (0, 0);
    for row in &table {
        match row.expect {
            Expect::Warning(reason, text) => {
                let note = warned(&cluster, &ns.name, &row.name, reason).await?;
                ensure!(note.contains(text), "the {reason} Event on {} does not say {text:?}: {note:?}", row.name);
                as_expected += 1;
            }
            Expect::Served => {
                cluster.wait_for_addresses(&ns.name, &row.name, &[nodes.ip1, nodes.ip2], SETTLE).await?;
                served += 1;
            }
        }
    }
    let all_events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(cluster.client.clone(), &ns.name);
    let all_events = all_events.list(&ListParams::default()).await?.items;
    for event in &all_events {
        let length = event.note.as_deref().map_or(0, str::len);
        ensure!(length <= 1024, "an Event note of {length} bytes: {:?}", event.note);
    }
    for (service, cause) in [("tol-2000", "2,000 refused tolerations"), ("ranges-5000", "5,000 source ranges")] {
        let warnings = all_events
            .iter()
            .filter(|event| event.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(service))
            .filter(|event| event.type_.as_deref() == Some("Warning"))
            .count();
        ensure!(warnings <= 2, "{cause} made {warnings} Warning Events");
        println!("count: bad input: {cause}: {warnings} Warning Event(s)");
        ensure!(cluster.dataplane.forwarders(&cluster, &ns.name, service).await?.is_empty(), "{service} is forwarded");
    }
    let started_after = Instant::now();
    ns.load_balancer("after-hostile", "echo", &http(18322), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "after-hostile", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    report_timing("bad input: a new Service among the hostile ones, creation to status", started_after.elapsed());
    let note = warned(&cluster, &ns.name, "hundred-ports", cluster.dataplane.applied_reason()).await?;
    ensure!(note.ends_with("18419/TCP and 80 more"), "the 100 ports are not summed up: {note:?}");
    cluster.dataplane.release_forwarder_name(&cluster, &taken_name).await?;
    cluster.ensure_no_controller_restarted(&controllers).await?;
    cluster.wait_for_addresses(&ns.name, "healthy", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18300).await?;
    println!(
        "timing: bad input: {} hostile Services, {as_expected} warned as expected, {served} served, all within {:.2}s",
        table.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The API server's refusal of a request, which must be a quota's: its message.
fn refused_by_quota<T: std::fmt::Debug>(result: Result<T>) -> Result<String> {
    let error = match result {
        Ok(accepted) => bail!("accepted over the quota: {accepted:?}"),
        Err(error) => error,
    };
    match error.downcast_ref::<kube::Error>() {
        Some(kube::Error::Api(status)) if status.code == 403 && status.message.contains("exceeded quota") => {
            Ok(status.message.clone())
        }
        _ => Err(error.context("refused, but not by a quota")),
    }
}

#[tokio::test]
async fn a_namespace_quota_of_load_balancers_is_enforced_by_the_api_server() -> Result<()> {
    let (cluster, ns, nodes) = setup("lbquota").await?;
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), &ns.name);
    let quota =
        json!({ "metadata": { "name": "load-balancers" }, "spec": { "hard": { "services.loadbalancers": "1" } } });
    quotas.create(&PostParams::default(), &serde_json::from_value(quota)?).await?;
    // Until the quota controller has counted what the namespace holds, admission refuses every
    // Service ("status unknown for quota"), for a reason that is not the one under test.
    eventually(SETTLE, || async {
        let counted = quotas.get("load-balancers").await?.status.and_then(|status| status.used);
        ensure!(counted.is_some_and(|used| used.contains_key("services.loadbalancers")), "not counted yet");
        Ok(())
    })
    .await?;

    ns.load_balancer("first", "echo", &http(18340), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "first", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let created = refused_by_quota(ns.load_balancer("second", "echo", &http(18341), json!({})).await)?;
    ensure!(created.contains("services.loadbalancers"), "the refusal does not name the quota: {created:?}");
    println!("refused: a second LoadBalancer Service: {created}");

    let internal = json!({ "metadata": { "name": "internal" }, "spec": { "ports": [{ "port": 18342 }] } });
    ns.services().create(&PostParams::default(), &serde_json::from_value(internal)?).await?;
    let retyped = refused_by_quota(ns.patch_service("internal", json!({ "spec": { "type": "LoadBalancer" } })).await)?;
    ensure!(retyped.contains("services.loadbalancers"), "the refusal does not name the quota: {retyped:?}");
    println!("refused: a ClusterIP Service changed to LoadBalancer: {retyped}");
    for service in ["second", "internal"] {
        ensure!(cluster.dataplane.forwarders(&cluster, &ns.name, service).await?.is_empty(), "{service} is forwarded");
    }
    cluster.wait_for_addresses(&ns.name, "first", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    Ok(())
}

async fn node_api(cluster: &Cluster) -> Api<Node> {
    Api::all(cluster.client.clone())
}

async fn patch_node(cluster: &Cluster, node: &str, patch: serde_json::Value) -> Result<()> {
    node_api(cluster).await.patch(node, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// Runs one node change and its undoing, checking the status after each and printing how
/// long it took to follow.
async fn status_follows(
    cluster: &Cluster,
    ns: &str,
    what: &str,
    expected: (&[IpAddr], &[IpAddr]),
    change: impl std::future::Future<Output = Result<()>>,
    undo: impl std::future::Future<Output = Result<()>>,
) -> Result<()> {
    let started = Instant::now();
    change.await?;
    cluster.wait_for_addresses(ns, "web", expected.0, SETTLE * 2).await.with_context(|| what.to_string())?;
    report_timing(&format!("{what}: status followed"), started.elapsed());
    let started = Instant::now();
    undo.await?;
    cluster.wait_for_addresses(ns, "web", expected.1, SETTLE * 2).await.with_context(|| format!("undo {what}"))?;
    report_timing(&format!("{what} undone: status followed"), started.elapsed());
    Ok(())
}

#[tokio::test]
async fn status_follows_node_changes() -> Result<()> {
    let (cluster, ns, nodes) = setup("nodes").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18150), json!({})).await?;
    let both = [nodes.ip1, nodes.ip2];
    cluster.wait_for_addresses(&ns.name, "web", &both, SETTLE).await?;
    // Each unpublished address exists on one node only, so an answer proves that node's proxy pod carried it.
    answered_http(&cluster, nodes.unpublished1, 18150).await?;
    answered_http(&cluster, nodes.unpublished2, 18150).await?;

    let only1 = [nodes.ip1];
    let node2 = nodes.node2.clone();
    status_follows(
        &cluster,
        &ns.name,
        "cordon node-2",
        (&only1, &both),
        patch_node(&cluster, &node2, json!({ "spec": { "unschedulable": true } })),
        patch_node(&cluster, &node2, json!({ "spec": { "unschedulable": null } })),
    )
    .await?;

    let exclude = "node.kubernetes.io/exclude-from-external-load-balancers";
    status_follows(
        &cluster,
        &ns.name,
        "label node-2 out of load balancing",
        (&only1, &both),
        patch_node(&cluster, &node2, json!({ "metadata": { "labels": { exclude: "true" } } })),
        patch_node(&cluster, &node2, json!({ "metadata": { "labels": { exclude: null } } })),
    )
    .await?;
    answered_http(&cluster, nodes.unpublished2, 18150).await?;

    let alternative = cluster.ip("NODE2_ALT_IP")?;
    let (ip2, alt) = (nodes.ip2.to_string(), alternative.to_string());
    status_follows(
        &cluster,
        &ns.name,
        "node-2 address change",
        (&[nodes.ip1, alternative], &both),
        async { cluster.harness(&["set-node-ip", &node2, &alt]) },
        async { cluster.harness(&["set-node-ip", &node2, &ip2]) },
    )
    .await?;

    status_follows(
        &cluster,
        &ns.name,
        "node-2 kubelet stopped",
        (&only1, &both),
        async { cluster.harness(&["kubelet", "stop", &node2]) },
        async { cluster.harness(&["kubelet", "start", &node2]) },
    )
    .await?;

    status_follows(
        &cluster,
        &ns.name,
        "node-2 deleted",
        (&only1, &both),
        async {
            // A running kubelet would register the node again at once.
            cluster.harness(&["kubelet", "stop", &node2])?;
            node_api(&cluster).await.delete(&node2, &Default::default()).await?;
            Ok(())
        },
        async { cluster.harness(&["kubelet", "start", &node2]) },
    )
    .await?;
    answered_http(&cluster, nodes.unpublished2, 18150).await?;
    Ok(())
}

#[tokio::test]
async fn a_controller_that_cannot_list_its_objects_exits_naming_them() -> Result<()> {
    let (cluster, ns, _) = setup("blind").await?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let installed = deployments.get("hostlb-controller").await?;
    let image = installed
        .spec
        .and_then(|spec| spec.template.spec)
        .and_then(|pod| pod.containers.into_iter().next())
        .and_then(|container| container.image)
        .context("the installed controller names no image")?;
    // The namespace's default ServiceAccount is granted nothing: every watch is refused.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "blind-controller" },
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "controller",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "args": ["--lb-image=unused", "--controller-image=unused", "--sync-timeout-seconds=3", "--http-address=127.0.0.1:8080"]
            }]
        }
    }))?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    // Pods are refused until the namespace's ServiceAccount has its token.
    eventually(SETTLE, || async { Ok(pods.create(&PostParams::default(), &pod).await?) }).await?;
    eventually(SETTLE, || async {
        let phase = pods.get("blind-controller").await?.status.and_then(|s| s.phase);
        ensure!(phase.as_deref() == Some("Failed"), "phase is {phase:?}");
        Ok(())
    })
    .await?;
    let logs = pods.logs("blind-controller", &LogParams::default()).await?;
    ensure!(
        logs.contains(
            "the watches of services, nodes, proxy pods, proxy daemonsets, node agents, node agents' role, node agents' role \
             binding, plans, agent reports, older plans, older agent reports, proxy creation failures, node leases did not \
             list their objects within 3s"
        ),
        "the log does not name the watches:\n{logs}"
    );
    Ok(())
}

#[tokio::test]
async fn a_proxy_image_that_cannot_be_pulled_is_reported_on_the_service() -> Result<()> {
    let (cluster, ns, _) = setup("badimage").await?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let installed = deployments.get("hostlb-controller").await?;
    let containers = installed.spec.and_then(|s| s.template.spec).map(|s| s.containers).unwrap_or_default();
    let env = containers.iter().find(|c| c.name == "controller").and_then(|c| c.env.clone()).unwrap_or_default();
    let variable = cluster.dataplane.image_variable();
    let original = env.into_iter().find(|e| e.name == variable).with_context(|| format!("no {variable}"))?;
    let set_image = |value: serde_json::Value, value_from: serde_json::Value| {
        let env = json!([{ "name": variable, "value": value, "valueFrom": value_from }]);
        json!({ "spec": { "template": { "spec": { "containers": [{ "name": "controller", "env": env }] } } } })
    };
    let rollout = ["-n", SYSTEM_NAMESPACE, "rollout", "status", "deployment/hostlb-controller", "--timeout=120s"];

    let missing = set_image(json!("localhost/hostlb/missing:dev"), json!(null));
    deployments.patch("hostlb-controller", &PatchParams::default(), &Patch::Strategic(&missing)).await?;
    let reported = async {
        cluster.kubectl(&rollout)?;
        ns.load_balancer("web", "echo", &http(18230), json!({})).await?;
        let note = warned(&cluster, &ns.name, "web", Reason::ProxyPodFailing).await?;
        ensure!(note.contains("ErrImagePull") || note.contains("ImagePullBackOff"), "{note:?}");
        Ok(())
    }
    .await;
    // Whatever happened, the next tests need the real image back.
    let restored = set_image(json!(null), serde_json::to_value(&original.value_from)?);
    deployments.patch("hostlb-controller", &PatchParams::default(), &Patch::Strategic(&restored)).await?;
    cluster.kubectl(&rollout)?;
    reported
}

#[tokio::test]
async fn uninstall_releases_every_service_so_that_deletions_do_not_hang() -> Result<()> {
    let (cluster, ns, nodes) = setup("uninstall").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18220), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;

    cluster.kubectl(&["-n", SYSTEM_NAMESPACE, "scale", "deployment/hostlb-controller", "--replicas=0"])?;
    let released = uninstall_and_check(&cluster, &ns).await;
    // Whatever happened, the next tests need the controller back.
    cluster.kubectl(&["-n", SYSTEM_NAMESPACE, "scale", "deployment/hostlb-controller", "--replicas=2"])?;
    cluster.kubectl(&[
        "-n",
        SYSTEM_NAMESPACE,
        "rollout",
        "status",
        "deployment/hostlb-controller",
        "--timeout=120s",
    ])?;
    released
}

/// Runs `hostlb-controller --uninstall` as the controller's ServiceAccount, then checks that
/// the Service is released and can be deleted with no controller running.
async fn uninstall_and_check(cluster: &Cluster, ns: &TestNamespace) -> Result<()> {
    let controllers: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/component=controller");
    eventually(POD_GONE, || async {
        let left = controllers.list(&selector).await?.items.len();
        ensure!(left == 0, "{left} controller pods are still there");
        Ok(())
    })
    .await?;
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let image = deployments
        .get("hostlb-controller")
        .await?
        .spec
        .and_then(|spec| spec.template.spec)
        .and_then(|pod| pod.containers.into_iter().next())
        .and_then(|container| container.image)
        .context("the installed controller names no image")?;
    let name = format!("uninstall-{}", ns.name);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "hostlb-controller",
            "containers": [{ "name": "uninstall", "image": image, "imagePullPolicy": "IfNotPresent", "args": ["--uninstall"] }]
        }
    }))?;
    controllers.create(&PostParams::default(), &pod).await?;
    let phase = eventually(SETTLE, || async {
        let phase = controllers.get(&name).await?.status.and_then(|s| s.phase).unwrap_or_default();
        ensure!(phase == "Succeeded" || phase == "Failed", "the uninstall pod is {phase:?}");
        Ok(phase)
    })
    .await?;
    let logs = controllers.logs(&name, &LogParams::default()).await?;
    controllers.delete(&name, &Default::default()).await?;
    ensure!(phase == "Succeeded" && logs.contains("uninstalled: released"), "uninstall {phase}:\n{logs}");

    let service = ns.services().get("web").await?;
    ensure!(!service.finalizers().iter().any(|f| f == FINALIZER), "the finalizer is still set");
    ensure!(published(&service).is_empty(), "the status still publishes {:?}", published(&service));
    ensure!(cluster.dataplane.forwarders(cluster, &ns.name, "web").await?.is_empty(), "the forwarding is still there");
    ns.delete_service("web").await?;
    eventually(Duration::from_secs(10), || async {
        ensure!(ns.services().get_opt("web").await?.is_none(), "the Service is still there");
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_controller_restart_in_the_middle_of_a_change_gives_the_same_result() -> Result<()> {
    let (cluster, ns, nodes) = setup("restart").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("moved", "echo", &http(18160), json!({})).await?;
    ns.load_balancer("removed", "echo", &http(18162), json!({})).await?;
    for name in ["moved", "removed"] {
        cluster.wait_for_addresses(&ns.name, name, &[nodes.ip1, nodes.ip2], SETTLE).await?;
    }

    cluster.kubectl(&[
        "-n",
        SYSTEM_NAMESPACE,
        "delete",
        "pod",
        "-l",
        "app.kubernetes.io/component=controller",
        "--wait=false",
    ])?;
    let ports = json!([{ "name": "http", "protocol": "TCP", "port": 18161, "targetPort": ECHO_HTTP_PORT }]);
    ns.patch_service("moved", json!({ "spec": { "ports": ports } })).await?;
    ns.delete_service("removed").await?;
    ns.load_balancer("added", "echo", &http(18163), json!({})).await?;

    cluster.wait_for_addresses(&ns.name, "added", &[nodes.ip1, nodes.ip2], SETTLE * 2).await?;
    cluster.dataplane.wait_rolled_to(&cluster, &ns.name, "moved", 18161, ROLLED_ON_BOTH_NODES).await?;
    wait_gone(&cluster, &ns.name, "removed").await?;
    cluster.wait_for_addresses(&ns.name, "moved", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    answered_http(&cluster, nodes.unpublished1, 18161).await?;
    answered_http(&cluster, nodes.unpublished1, 18163).await?;
    Ok(())
}

/// Runs `body` with a node patched, and undoes the patch whatever the outcome: every test
/// shares the nodes.
async fn with_node_patched<T>(
    cluster: &Cluster,
    node: &str,
    (change, undo): (serde_json::Value, serde_json::Value),
    body: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    patch_node(cluster, node, change).await?;
    let outcome = body.await;
    patch_node(cluster, node, undo).await?;
    outcome
}

/// The hostnames a Service publishes, in order.
async fn published_hostnames(ns: &TestNamespace, service: &str) -> Result<Vec<String>> {
    let status = ns.services().get(service).await?.status.and_then(|s| s.load_balancer).and_then(|lb| lb.ingress);
    Ok(status.into_iter().flatten().filter_map(|entry| entry.hostname).collect())
}

#[tokio::test]
async fn node_public_addresses_and_hostnames_are_published_as_asked() -> Result<()> {
    let (cluster, ns, nodes) = setup("addresses").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("web", "echo", &http(18155), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let node2 = node_api(&cluster).await.get(&nodes.node2).await?;
    let node2_hostname = node2.status.and_then(|s| s.addresses).into_iter().flatten().find(|a| a.type_ == "Hostname");
    let node2_hostname = node2_hostname.context("node-2 reports no Hostname address")?.address;

    let (address_key, hostname_key) = (names::NODE_ANNOTATION_PUBLIC_ADDRESS, names::NODE_ANNOTATION_PUBLIC_HOSTNAME);
    let public = nodes.unpublished1.to_string();
    let annotate = json!({ "metadata": { "annotations": { address_key: public, hostname_key: "node-1.lb.example" } } });
    let remove = json!({ "metadata": { "annotations": { address_key: null, hostname_key: null } } });
    with_node_patched(&cluster, &nodes.node1, (annotate, remove), async {
        // The address behind 1:1 NAT reaches node-1 through its proxy pod.
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.unpublished1, nodes.ip2], SETTLE).await?;
        answered_http(&cluster, nodes.unpublished1, 18155).await?;

        let publish = |value: &str| json!({ "metadata": { "annotations": { names::ANNOTATION_PUBLISH: value } } });
        ns.patch_service("web", publish("hostname")).await?;
        let expected = vec!["node-1.lb.example".to_string(), node2_hostname.clone()];
        eventually(SETTLE, || async {
            let hostnames = published_hostnames(&ns, "web").await?;
            ensure!(hostnames == expected, "hostnames {hostnames:?}, expected {expected:?}");
            Ok(())
        })
        .await?;
        cluster.wait_for_addresses(&ns.name, "web", &[], SETTLE).await?;
        ns.patch_service("web", publish("ip,hostname")).await?;
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.unpublished1, nodes.ip2], SETTLE).await?;
        ensure!(published_hostnames(&ns, "web").await? == expected, "hostnames went away beside the IPs");
        ns.patch_service("web", publish("ip")).await
    })
    .await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;

    let wrong = json!({ "metadata": { "annotations": { address_key: "gateway" } } });
    let remove = json!({ "metadata": { "annotations": { address_key: null } } });
    with_node_patched(&cluster, &nodes.node1, (wrong, remove), async {
        let note = warned(&cluster, &ns.name, "web", Reason::NodeAnnotationIgnored).await?;
        ensure!(note.contains("node node-1: metadata.annotations[hostlb.io/public-address]"), "{note}");
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await.map(|_| ())
    })
    .await?;

    // Node-2 asks, with its own rights (NodeRestriction lets a kubelet annotate its Node), for an
    // address outside the ranges the install allows: refused, its own address stays published.
    let as_node2 = [format!("--as=system:node:{}", nodes.node2), "--as-group=system:nodes".to_string()];
    let ask = format!("{address_key}=203.0.113.77");
    let as_node2: Vec<&str> = as_node2.iter().map(String::as_str).collect();
    cluster.kubectl(&[&as_node2[..], &["annotate", "node", &nodes.node2, &ask, "--overwrite"]].concat())?;
    let refused = async {
        let note = eventually(SETTLE, || async {
            let notes = cluster.events(&ns.name, "web", Reason::NodeAnnotationIgnored).await?;
            let notes = notes.into_iter().filter_map(|event| event.note);
            let note = notes.into_iter().find(|note| note.contains("203.0.113.77"));
            note.context("no Warning about node-2's address yet")
        })
        .await?;
        ensure!(note.contains("none of the ranges the admin lets nodes ask for"), "{note}");
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
        println!("timing: node-2 asked for 203.0.113.77 with its own rights: refused: {note}");
        Ok(())
    }
    .await;
    patch_node(&cluster, &nodes.node2, json!({ "metadata": { "annotations": { address_key: null } } })).await?;
    refused
}

#[tokio::test]
async fn a_capped_service_keeps_its_chosen_node_and_is_not_rewritten_without_a_change() -> Result<()> {
    let (cluster, ns, nodes) = setup("capped").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let capped = json!({ "annotations": { names::ANNOTATION_MAX_NODES: "1" } });
    ns.load_balancer_with_metadata("web", "echo", &http(18156), json!({}), capped).await?;
    let one_node = || async {
        eventually(SETTLE, || async {
            let addresses = published(&ns.services().get("web").await?);
            ensure!(addresses.len() == 1, "publishes {addresses:?}, expected one node");
            Ok(addresses.into_iter().collect::<Vec<IpAddr>>())
        })
        .await
    };
    let chosen = one_node().await?;
    ensure!(chosen[0] == nodes.ip1 || chosen[0] == nodes.ip2, "{chosen:?} is no node address");
    // Both nodes forward before the status is checked for churn.
    eventually(SETTLE, || async {
        let forwarding = cluster.dataplane.forwarding(&cluster, &ns.name, "web").await?;
        let ready = forwarding.iter().filter(|(_, forwards)| *forwards).count();
        ensure!(ready == 2, "expected both nodes to forward: {forwarding:?}");
        Ok(())
    })
    .await?;

    // The StatusUpdated Event follows the status from a queue of its own.
    let writes = eventually(SETTLE, || async {
        let writes = cluster.status_writes(&ns.name, "web").await?;
        ensure!(writes > 0, "no StatusUpdated Event yet");
        Ok(writes)
    })
    .await?;
    for round in 0..3 {
        let touch = json!({ "metadata": { "annotations": { "example.org/round": round.to_string() } } });
        ns.patch_service("web", touch).await?;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    ensure!(cluster.status_writes(&ns.name, "web").await? == writes, "the status was rewritten without a change");
    cluster.wait_for_addresses(&ns.name, "web", &chosen, SETTLE).await?;

    let cap = |max: &str| json!({ "metadata": { "annotations": { names::ANNOTATION_MAX_NODES: max } } });
    ns.patch_service("web", cap("2")).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    ns.patch_service("web", cap("1")).await?;
    let after = one_node().await?;
    // Back to one of two published nodes: the one the Service's own hash ranks first, as before.
    ensure!(after == chosen, "after the cap went to 2 and back, {after:?} replaced {chosen:?}");
    println!(
        "capped at one node: {chosen:?} kept while nothing changed, and chosen again after the cap went to 2 and back"
    );
    Ok(())
}

#[tokio::test]
async fn a_node_in_two_pools_serves_both_and_k3s_servicelbs_pool_labels_count() -> Result<()> {
    let (cluster, ns, nodes) = setup("pools").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let blue = names::pool_label("e2e-blue");
    let in_pools = |labels: serde_json::Value| json!({ "metadata": { "labels": labels } });
    let node1 = (
        in_pools(json!({ &blue: "true", names::K3S_POOL: "e2e-amber" })),
        in_pools(json!({ &blue: null, names::K3S_POOL: null })),
    );
    let admin_pool = hostlb_model::node_labels::ADMIN_POOL;
    let node2 = (
        in_pools(json!({ names::POOL: "e2e-green", &blue: "true", admin_pool: "e2e-violet" })),
        in_pools(json!({ names::POOL: null, &blue: null, admin_pool: null })),
    );
    with_node_patched(&cluster, &nodes.node1, node1, async {
        with_node_patched(&cluster, &nodes.node2, node2, async {
            let pool = |name: &str| json!({ "labels": { names::POOL: name } });
            ns.load_balancer_with_metadata("blue", "echo", &http(18157), json!({}), pool("e2e-blue")).await?;
            ns.load_balancer_with_metadata("green", "echo", &http(18158), json!({}), pool("e2e-green")).await?;
            cluster.wait_for_addresses(&ns.name, "blue", &[nodes.ip1, nodes.ip2], SETTLE).await?;
            cluster.wait_for_addresses(&ns.name, "green", &[nodes.ip2], SETTLE).await?;
            answered_http(&cluster, nodes.unpublished2, 18158).await?;
            refused_http(&cluster, nodes.unpublished1, 18158).await?;
            // As a Service and a node labelled for k3s ServiceLB come, with the address ServiceLB
            // silently ignores.
            let k3s_pool = json!({ "labels": { names::K3S_POOL: "e2e-amber" } });
            let address = json!({ "loadBalancerIP": "192.0.2.10" });
            ns.load_balancer_with_metadata("amber", "echo", &http(18159), address, k3s_pool).await?;
            cluster.wait_for_addresses(&ns.name, "amber", &[nodes.ip1], SETTLE).await?;
            let note = warned(&cluster, &ns.name, "amber", Reason::OptionIgnored).await?;
            ensure!(note.starts_with("spec.loadBalancerIP 192.0.2.10 is not honoured"), "{note}");
            // The admin's pool label, which no kubelet may set: node-2 cannot join a pool by it.
            ns.load_balancer_with_metadata("violet", "echo", &http(18160), json!({}), pool("e2e-violet")).await?;
            cluster.wait_for_addresses(&ns.name, "violet", &[nodes.ip2], SETTLE).await?;
            let as_node1 = [format!("--as=system:node:{}", nodes.node1), "--as-group=system:nodes".to_string()];
            let joins = format!("{admin_pool}=e2e-violet");
            let args = [as_node1[0].as_str(), &as_node1[1], "label", "node", &nodes.node1, &joins];
            let refused = cluster.kubectl(&args);
            ensure!(refused.is_err(), "node-1 put itself in the admin's pool e2e-violet");
            Ok(())
        })
        .await
    })
    .await
}

/// hostlb's condition on the Service: (status, reason, message).
async fn ready_condition(ns: &TestNamespace, service: &str) -> Result<(String, String, String)> {
    let status = ns.services().get(service).await?.status.and_then(|s| s.conditions).unwrap_or_default();
    let condition = status.into_iter().find(|c| c.type_ == names::CONDITION_READY);
    let condition = condition.with_context(|| format!("{service} has no {} condition", names::CONDITION_READY))?;
    Ok((condition.status, condition.reason, condition.message))
}

#[tokio::test]
async fn the_ready_condition_says_why_a_service_is_not_served() -> Result<()> {
    let (cluster, ns, nodes) = setup("condition").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    ns.load_balancer("first", "echo", &http(18160), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "first", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let waited = [&format!("--namespace={}", ns.name), "--timeout=60s"];
    let wait = ["wait", "--for=condition=hostlb.io/Ready", "service/first", waited[0], waited[1]];
    cluster.kubectl(&wait).context("kubectl wait for the condition")?;
    let first = eventually(SETTLE, || async {
        let condition = ready_condition(&ns, "first").await?;
        ensure!(condition.1 == "Serving", "{condition:?}");
        Ok(condition)
    })
    .await?;
    println!("condition of the first Service on 18160: {first:?}");

    ns.a_second_after("first").await?;
    ns.load_balancer("second", "echo", &http(18160), json!({})).await?;
    let second = eventually(SETTLE, || async {
        let condition = ready_condition(&ns, "second").await?;
        ensure!(condition.0 == "False" && condition.1 == "PortConflict", "{condition:?}");
        Ok(condition)
    })
    .await?;
    ensure!(second.2.contains("port 18160/TCP is held on node-1, node-2"), "{second:?}");
    println!("condition of a second Service on 18160: {second:?}");

    ns.delete_service("first").await?;
    let taken_over = eventually(SETTLE * 2, || async {
        let condition = ready_condition(&ns, "second").await?;
        ensure!(condition.1 == "Serving", "{condition:?}");
        Ok(condition)
    })
    .await?;
    println!("after the first is deleted: {taken_over:?}");
    Ok(())
}

#[tokio::test]
async fn a_node_tainted_against_the_proxies_is_not_counted_as_eligible() -> Result<()> {
    let (cluster, ns, nodes) = setup("tainted").await?;
    backend_on_node1(&cluster, &ns, &nodes).await?;
    let node2 = node_api(&cluster).await.get(&nodes.node2).await?;
    let taints = node2.spec.and_then(|spec| spec.taints).unwrap_or_default();
    let mut tainted = serde_json::to_value(&taints)?;
    let dedicated = json!({ "key": "e2e.hostlb.io/dedicated", "value": "db", "effect": "NoSchedule" });
    tainted.as_array_mut().context("taints are a list")?.push(dedicated);
    let change = (json!({ "spec": { "taints": tainted } }), json!({ "spec": { "taints": taints } }));
    with_node_patched(&cluster, &nodes.node2, change, async {
        ns.load_balancer("web", "echo", &http(18330), json!({})).await?;
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1], SETTLE).await?;
        let condition = eventually(SETTLE, || async {
            let condition = ready_condition(&ns, "web").await?;
            ensure!(condition.1 == "Serving", "{condition:?}");
            Ok(condition)
        })
        .await?;
        ensure!(condition.0 == "True" && condition.2 == "1 of 1 eligible nodes serve", "{condition:?}");
        println!("condition with node-2 tainted NoSchedule: {condition:?}");
        answered_http(&cluster, nodes.unpublished1, 18330).await?;
        Ok(())
    })
    .await
}

/// The controller pods' resident memory, summed, in MiB, as their kubelets report it.
async fn controller_rss_mib(cluster: &Cluster) -> Result<f64> {
    let mut total = 0.0;
    for pod in cluster.controller_pods().await? {
        let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).context("controller pod not placed")?;
        let summary = cluster.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{node}/proxy/stats/summary")])?;
        let summary: serde_json::Value = serde_json::from_str(&summary)?;
        let pods = summary["pods"].as_array().context("no pods in the kubelet's summary")?;
        let stats = pods.iter().find(|stats| stats["podRef"]["name"] == pod.name_any()).context("no stats yet")?;
        let containers = stats["containers"].as_array().context("no container stats")?;
        let bytes: f64 = containers.iter().filter_map(|container| container["memory"]["rssBytes"].as_f64()).sum();
        total += bytes / (1024.0 * 1024.0);
    }
    Ok(total)
}

#[tokio::test]
async fn large_annotations_on_services_hostlb_does_not_serve_cost_it_no_memory() -> Result<()> {
    let (cluster, ns, _) = setup("bigannotations").await?;
    let before = controller_rss_mib(&cluster).await?;
    let notes = "x".repeat(200 * 1024);
    for i in 0..200 {
        let service = json!({
            "metadata": { "name": format!("plain-{i}"), "annotations": { "example.com/notes": notes } },
            "spec": { "ports": [{ "port": 80 }] },
        });
        ns.services().create(&PostParams::default(), &serde_json::from_value(service)?).await?;
    }
    // The kubelet samples containers' memory every 10 to 15 seconds.
    tokio::time::sleep(Duration::from_secs(40)).await;
    let after = controller_rss_mib(&cluster).await?;
    println!(
        "memory: controller pods with 200 ClusterIP Services of 200 KiB annotations (40 MiB) added: {before:.1} MiB \
         before, {after:.1} MiB after"
    );
    ensure!(after - before < 16.0, "the controllers grew from {before:.1} MiB to {after:.1} MiB");
    Ok(())
}

/// Another controller writing the status of a Service without a class (as a second load
/// balancer serving unclassed Services does; here a merge patch of the status by the field manager
/// `other-lb`) is noticed and left alone, with a Warning naming
/// it; once its managed fields are reset, hostlb publishes again.
#[tokio::test]
async fn a_second_writer_of_the_status_is_named_and_not_fought() -> Result<()> {
    let (cluster, ns, nodes) = setup("contested").await?;
    ns.echo_service(&cluster, &nodes, "web", 18165, SETTLE).await?;
    let theirs = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": "192.0.2.50" }] } } });
    let as_other = PatchParams { field_manager: Some("other-lb".into()), ..PatchParams::default() };
    ns.services().patch_status("web", &as_other, &Patch::Merge(&theirs)).await?;
    let service = ["-n", ns.name.as_str(), "patch", "service", "web", "--type=merge"];
    let note = warned(&cluster, &ns.name, "web", Reason::StatusContested).await?;
    ensure!(note.starts_with("status.loadBalancer is also written by other-lb: "), "{note}");
    let other = "192.0.2.50".parse()?;
    for _ in 0..5 {
        cluster.wait_for_addresses(&ns.name, "web", &[other], Duration::from_secs(2)).await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let reset = json!({ "metadata": { "managedFields": [{}] } }).to_string();
    cluster.kubectl(&[&service[..], &["-p", &reset]].concat())?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    println!("timing: a second writer of the status: {note}");
    Ok(())
}
