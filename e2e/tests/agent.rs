//! The node agent data plane (`--dataplane agent`) on the real two-node cluster: each test puts
//! the controller in that mode (a rollout, once), and the last one puts it back. Traffic to a
//! node's unpublished address can only cross the agent's rules: kube-proxy knows only the
//! published one. Run one test at a time (`--test-threads=1`).

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use hostlb_e2e::cluster::{nodes, setup_on, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::dataplane::DataPlane;
use hostlb_e2e::dataplane::{use_dataplane, NodeAgents, ProxyPods};
use hostlb_e2e::figures::{figure, report_timing, traffic_figures};
use hostlb_e2e::namespace::{http, ECHO_HTTP_PORT, ECHO_UDP_PORT};
use hostlb_e2e::poll::{eventually, eventually_blocking};
use hostlb_e2e::status::StatusWatch;
use hostlb_e2e::traffic::{answers, refuses, Traffic};
use hostlb_model::agent;
use hostlb_model::readiness::pod_is_ready;
use hostlb_model::reason::Reason;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{DeleteParams, ListParams};
use kube::{Api, ResourceExt};
use serde_json::json;

const SETTLE: Duration = Duration::from_secs(90);
/// How often traffic probes a path while something changes under it.
const PROBE_EVERY: Duration = Duration::from_millis(100);

fn node_of(pod: &Pod) -> &str {
    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref()).unwrap_or_default()
}

/// The controller in agent mode, with a Ready agent on each node.
async fn agent_mode(cluster: &Cluster) -> Result<Vec<Pod>> {
    use_dataplane(cluster, &NodeAgents).await?;
    eventually(SETTLE, || async {
        let pods = cluster.agent_pods().await?;
        let ready: BTreeSet<&str> = pods.iter().filter(|pod| pod_is_ready(pod)).map(node_of).collect();
        ensure!(ready.len() == 2 && pods.len() == 2, "agents Ready on {ready:?} of {} pods", pods.len());
        Ok(pods)
    })
    .await
}

/// The agents on each node: one, whatever the number of Services. (The proxy pods of other
/// tests' Services may still be going away, so they are not counted here; make bench counts
/// every hostlb pod with 1,000 Services.)
async fn agents_per_node(cluster: &Cluster) -> Result<Vec<usize>> {
    let agents = cluster.agent_pods().await?;
    let nodes = nodes(cluster)?;
    Ok([&nodes.node1, &nodes.node2].iter().map(|node| agents.iter().filter(|p| node_of(p) == *node).count()).collect())
}

#[tokio::test]
async fn a_service_is_forwarded_by_one_agent_per_node_and_no_proxy_pod() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-basic", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.echo_on_node1(&cluster, &nodes, SETTLE).await?;
    let created = Instant::now();
    ns.load_balancer(
        "web",
        "echo",
        &[("http", "TCP", 18300, ECHO_HTTP_PORT), ("dns", "UDP", 18300, ECHO_UDP_PORT)],
        json!({}),
    )
    .await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    report_timing("agent: Service creation to status with both nodes", created.elapsed());

    // Node-2's unpublished address: the agent there forwards to the backend on node-1.
    for address in [nodes.unpublished1, nodes.unpublished2, nodes.ip1] {
        let reply = answers(&cluster, address, 18300, SETTLE).await?;
        ensure!(reply.pod.starts_with("echo-"), "unexpected answer {reply:?}");
        let client = cluster.client()?;
        let udp = eventually_blocking(SETTLE, move || client.udp_echo(address, 18300)).await?;
        ensure!(udp.pod.starts_with("echo-"), "unexpected UDP answer {udp:?}");
    }
    ensure!(cluster.proxy_daemonsets(&ns.name, "web").await?.is_empty(), "a proxy DaemonSet was made");
    ensure!(cluster.proxy_pods(&ns.name, "web").await?.is_empty(), "proxy pods run");
    let plan = cluster.plans(&ns.name, "web").await?.into_iter().next().context("no plan for the Service")?;
    ensure!(plan.spec.nodes == [nodes.node1.clone(), nodes.node2.clone()], "{:?}", plan.spec);
    ensure!(agents_per_node(&cluster).await? == [1, 1], "not one agent per node");
    Ok(())
}

/// What a node's credentials may write, asked of the API server with `kubectl auth can-i` for
/// every write verb: of each kind in hostlb's namespace (and by name, the images, a plan, each
/// node's report and its status, and the agents' own objects) and of the cluster-scoped kinds
/// hostlb uses. Printed as a table; the only writes allowed must be patches of the status of
/// the nodes' reports, of any node's, since RBAC cannot tell one node's agent from another's.
#[tokio::test]
async fn an_agents_credentials_write_nothing_but_the_status_of_the_nodes_reports() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-rbac", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.load_balancer("web", "echo", &http(18380), json!({})).await?;
    let plan = eventually(SETTLE, || async {
        cluster.plans(&ns.name, "web").await?.into_iter().next().context("no plan for the Service yet")
    })
    .await?;
    let plan_name = plan.metadata.name.clone().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let mut names = config_maps.list(&ListParams::default()).await?.items.into_iter().map(|c| c.name_any());
    let images = names.find(|name| name.starts_with("hostlb-images")).context("no images ConfigMap")?;
    let reports = [&nodes.node1, &nodes.node2]
        .map(|node| format!("nodereports.hostlb.io/{}", agent::report_name(agent::AGENT, node)));
    let in_namespace: Vec<(String, Option<&str>)> = [
        "configmaps",
        &format!("configmaps/{images}"),
        "forwardingplans.hostlb.io",
        &format!("forwardingplans.hostlb.io/{plan_name}"),
        "nodereports.hostlb.io",
        &reports[0],
        &reports[1],
        "daemonsets.apps",
        &format!("daemonsets.apps/{}", agent::AGENT),
        "deployments.apps",
        "deployments.apps/hostlb-controller",
        "pods",
        "services",
        "services/status",
        "serviceaccounts",
        "secrets",
        "roles.rbac.authorization.k8s.io",
        &format!("roles.rbac.authorization.k8s.io/{}", agent::AGENT),
        "rolebindings.rbac.authorization.k8s.io",
        &format!("rolebindings.rbac.authorization.k8s.io/{}", agent::AGENT),
        "leases.coordination.k8s.io",
        "leases.coordination.k8s.io/hostlb-controller",
        "events",
        "events.events.k8s.io",
        "endpointslices.discovery.k8s.io",
    ]
    .into_iter()
    .map(|resource| (resource.to_string(), None))
    .chain(
        ["forwardingplans.hostlb.io", &reports[0], &reports[1]].map(|resource| (resource.to_string(), Some("status"))),
    )
    .collect();
    let cluster_wide = [
        "nodes",
        "namespaces",
        "priorityclasses.scheduling.k8s.io",
        "clusterroles.rbac.authorization.k8s.io",
        "clusterrolebindings.rbac.authorization.k8s.io",
        "customresourcedefinitions.apiextensions.k8s.io",
        "endpointslices.discovery.k8s.io",
        "services",
        "leases.coordination.k8s.io",
    ];
    let asked = in_namespace
        .iter()
        .map(|(resource, subresource)| (resource.as_str(), *subresource, Some(SYSTEM_NAMESPACE)))
        .chain(cluster_wide.iter().map(|resource| (*resource, None, None)));
    let mut table = vec![format!("{:<78} {:<17} allowed", "resource", "verb")];
    let mut unintended = Vec::new();
    for (resource, subresource, namespace) in asked {
        for verb in ["create", "update", "patch", "delete", "deletecollection"] {
            let allowed = can_agent(&cluster, verb, resource, subresource, namespace)?;
            let resource_shown = match subresource {
                Some(subresource) => format!("{resource} ({subresource})"),
                None => resource.to_string(),
            };
            let shown = match namespace {
                Some(namespace) => format!("{namespace}: {resource_shown}"),
                None => format!("(cluster) {resource_shown}"),
            };
            table.push(format!("{shown:<78} {verb:<17} {}", if allowed { "YES" } else { "no" }));
            let intended = verb == "patch" && subresource == Some("status") && reports.iter().any(|r| r == resource);
            if allowed != intended {
                unintended.push(format!("{verb} {shown}: {}", if allowed { "allowed" } else { "refused" }));
            }
        }
    }
    println!("kubectl auth can-i --as={AGENT_USER}\n{}", table.join("\n"));
    ensure!(unintended.is_empty(), "not as intended: {unintended:?}");
    Ok(())
}

/// The node agents' ServiceAccount, as the API server names its user.
const AGENT_USER: &str = "system:serviceaccount:hostlb-system:hostlb-agent";

/// Whether the node agents' ServiceAccount may `verb` the `resource` (or its `subresource`) in
/// `namespace` (or in every namespace, or of a cluster-scoped kind).
fn can_agent(
    cluster: &Cluster,
    verb: &str,
    resource: &str,
    subresource: Option<&str>,
    namespace: Option<&str>,
) -> Result<bool> {
    let mut args = vec!["auth", "can-i", verb, resource, "--as", AGENT_USER];
    if let Some(subresource) = subresource {
        args.extend(["--subresource", subresource]);
    }
    match namespace {
        Some(namespace) => args.extend(["-n", namespace]),
        None => args.push("--all-namespaces"),
    }
    let output =
        Command::new(cluster.var("KUBECTL")?).env("KUBECONFIG", cluster.var("KUBECONFIG")?).args(&args).output()?;
    let (answer, errors) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    // kubectl says "no" for a kind it does not know, with a warning: that would hide a typo here.
    ensure!(errors.trim().is_empty(), "kubectl {}: {errors}", args.join(" "));
    match answer.trim() {
        "yes" => Ok(true),
        "no" => Ok(false),
        other => anyhow::bail!("kubectl {}: {other:?}", args.join(" ")),
    }
}

#[tokio::test]
async fn a_new_service_forwards_on_every_node_within_a_second_of_its_creation() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-new", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.echo_on_node1(&cluster, &nodes, SETTLE).await?;
    let started = Instant::now();
    ns.load_balancer("web", "echo", &http(18310), json!({})).await?;
    // From the creation, which is before the controller's decision: an upper bound.
    let client = cluster.client()?;
    let mut forwarding = Vec::new();
    for address in [nodes.unpublished1, nodes.unpublished2] {
        let client = client.clone();
        eventually_blocking(SETTLE, move || client.http_get(address, 18310)).await?;
        forwarding.push(started.elapsed());
    }
    let every_node = forwarding.iter().max().copied().unwrap_or_default();
    figure("agent_program_ms_new_service", every_node.as_millis() as f64)?;
    ensure!(every_node <= Duration::from_secs(3), "forwarding on every node took {every_node:?}");
    Ok(())
}

#[tokio::test]
async fn a_port_change_rolls_no_pod_and_moves_the_traffic() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-change", &NodeAgents).await?;
    let agents: BTreeSet<String> =
        agent_mode(&cluster).await?.iter().map(|pod| pod.uid().unwrap_or_default()).collect();
    ns.echo_on_node1(&cluster, &nodes, SETTLE).await?;
    ns.load_balancer("web", "echo", &http(18320), json!({})).await?;
    answers(&cluster, nodes.unpublished2, 18320, SETTLE).await?;

    let changed = Instant::now();
    ns.patch_service("web", json!({ "spec": { "ports": [{ "name": "http", "protocol": "TCP", "port": 18321, "targetPort": ECHO_HTTP_PORT }] } })).await?;
    for address in [nodes.unpublished1, nodes.unpublished2] {
        answers(&cluster, address, 18321, SETTLE).await?;
    }
    let moved = changed.elapsed();
    figure("agent_program_ms_port_change", moved.as_millis() as f64)?;
    refuses(&cluster, nodes.unpublished2, 18320, Duration::from_secs(3)).await?;
    let now: BTreeSet<String> = cluster.agent_pods().await?.iter().map(|pod| pod.uid().unwrap_or_default()).collect();
    ensure!(now == agents, "the agents were replaced: {agents:?} then {now:?}");
    ensure!(cluster.proxy_pods(&ns.name, "web").await?.is_empty(), "proxy pods run");
    Ok(())
}

#[tokio::test]
async fn an_agent_restart_under_traffic_loses_no_request() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-restart", &NodeAgents).await?;
    let agents = agent_mode(&cluster).await?;
    ns.echo_service(&cluster, &nodes, "web", 18330, SETTLE).await?;
    let targets = nodes.paths(18330);
    for (address, port) in targets {
        answers(&cluster, address, port, SETTLE).await?;
    }
    let statuses = StatusWatch::start(ns.services(), &["web"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let traffic = Traffic::start(&cluster.client()?, &targets, PROBE_EVERY, SETTLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let restarted = Instant::now();
    for agent in &agents {
        pods.delete(&agent.name_any(), &DeleteParams::default()).await?;
    }
    let old: BTreeSet<String> = agents.iter().map(|pod| pod.name_any()).collect();
    eventually(SETTLE, || async {
        let fresh = cluster.agent_pods().await?;
        let ready = fresh.iter().filter(|pod| !old.contains(&pod.name_any()) && pod_is_ready(pod)).count();
        ensure!(ready == 2, "{ready} new agents Ready");
        Ok(())
    })
    .await?;
    figure("agent_restart_s", restarted.elapsed().as_secs_f64())?;
    nothing_lost(traffic, statuses, &nodes, "agent_restart").await
}

/// Ends the traffic and the status watch started before a change: their figures under `prefix`,
/// and a failure for any request lost or any read that showed fewer nodes.
async fn nothing_lost(traffic: Traffic, statuses: StatusWatch, nodes: &Nodes, prefix: &str) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let records = traffic.finish().await?;
    let shrunk = statuses.finish().await?.shrunk;
    println!("{prefix}: {}", nodes.describe_paths(&records));
    traffic_figures(prefix, &records)?;
    let lost: u32 = records.iter().map(|(_, record)| record.lost).sum();
    ensure!(lost == 0, "{lost} requests lost: {}", nodes.describe_paths(&records));
    ensure!(shrunk.is_empty(), "the status shrank: {shrunk:?}");
    Ok(())
}

#[tokio::test]
async fn switching_from_proxy_pods_to_agents_under_traffic_loses_no_request() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-switch", &ProxyPods).await?;
    ns.echo_service(&cluster, &nodes, "web", 18370, SETTLE).await?;
    let targets = nodes.paths(18370);
    for (address, port) in targets {
        answers(&cluster, address, port, SETTLE).await?;
    }
    let statuses = StatusWatch::start(ns.services(), &["web"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let traffic = Traffic::start(&cluster.client()?, &targets, PROBE_EVERY, SETTLE);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let switched = Instant::now();
    agent_mode(&cluster).await?;
    eventually(SETTLE, || async {
        let left = cluster.proxy_pods(&ns.name, "web").await?.len();
        ensure!(left == 0, "{left} proxy pods left");
        Ok(())
    })
    .await?;
    figure("dataplane_switch_s", switched.elapsed().as_secs_f64())?;
    nothing_lost(traffic, statuses, &nodes, "dataplane_switch").await
}

#[tokio::test]
async fn switching_back_to_proxy_pods_removes_the_agents_their_rules_and_the_plans() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-back", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.echo_service(&cluster, &nodes, "web", 18360, SETTLE).await?;
    answers(&cluster, nodes.unpublished2, 18360, SETTLE).await?;
    ensure!(!cluster.plans(&ns.name, "web").await?.is_empty(), "no plan in agent mode");

    use_dataplane(&cluster, &ProxyPods).await?;
    eventually(SETTLE, || async {
        let left = cluster.agent_pods().await?.len();
        ensure!(left == 0, "{left} agents left");
        ensure!(cluster.plans(&ns.name, "web").await?.is_empty(), "the plan is left");
        Ok(())
    })
    .await?;
    let left = cluster.nodes_with_agent_table()?;
    ensure!(left.is_empty(), "the agents' table is left on {left:?}");
    // Proxy pods take over.
    answers(&cluster, nodes.unpublished2, 18360, SETTLE).await?;
    ensure!(!cluster.proxy_pods(&ns.name, "web").await?.is_empty(), "no proxy pods after the switch");
    Ok(())
}

/// An agent that stops renewing its report (its container frozen, as a wedged process is) is
/// judged by the controller after the report's bound (40 s): the Service says so and the node
/// leaves the status, while the rules the agent left go on forwarding; thawed, it reports again
/// and the node comes back.
#[tokio::test]
async fn a_wedged_agent_leaves_the_status_past_its_reports_bound_and_says_so() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-wedged", &NodeAgents).await?;
    let agents = agent_mode(&cluster).await?;
    ns.echo_service(&cluster, &nodes, "web", 18390, SETTLE).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let agent1 = agents.iter().find(|pod| node_of(pod) == nodes.node1).context("no agent on node-1")?;
    let (node, container) = hostlb_e2e::cluster::running_container(agent1)?;
    cluster.harness(&["pause-container", &node, &container])?;
    let frozen_at = Instant::now();
    let judged = async {
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip2], Duration::from_secs(75)).await?;
        let withdrawn = frozen_at.elapsed();
        let note = cluster.first_event_note(&ns.name, "web", Reason::ProxyPodFailing, SETTLE).await?;
        ensure!(note.contains(&format!("the node agent on {} has not renewed its report", nodes.node1)), "{note}");
        // The kernel forwards without the agent: its rules stay.
        let reply = answers(&cluster, nodes.unpublished1, 18390, SETTLE).await?;
        ensure!(reply.pod.starts_with("echo-"), "unexpected answer {reply:?}");
        anyhow::Ok((withdrawn, note))
    }
    .await;
    let thawed = cluster.harness(&["resume-container", &node, &container]);
    let (withdrawn, note) = judged?;
    thawed?;
    let thawed_at = Instant::now();
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    println!("agent wedged: {} withdrawn after {withdrawn:.1?}: {note}", nodes.node1);
    figure("agent_wedged_withdrawn_s", withdrawn.as_secs_f64())?;
    figure("agent_thawed_published_s", thawed_at.elapsed().as_secs_f64())?;
    // The report was last renewed up to a heartbeat (10 s) before the freeze.
    ensure!(withdrawn >= Duration::from_secs(30), "withdrawn after {withdrawn:?}, before the report's bound");
    Ok(())
}

/// With the controller stopped, so that nothing puts its objects back: a plan carrying a field no
/// agent knows is programmed as before; a plan no agent can read keeps the rules programmed from
/// it, and the nodes' reports say so; an agent stopped while the API server refuses it (its
/// RoleBinding deleted) leaves its node's table in place, and its successor, refused too,
/// programs nothing over it. The controller back, everything recovers.
#[tokio::test]
async fn plans_an_agent_cannot_read_and_an_api_server_that_refuses_it_remove_no_rule() -> Result<()> {
    let (cluster, ns, nodes) = setup_on("agent-refused", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.echo_service(&cluster, &nodes, "web", 18395, SETTLE).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    let plan = cluster.plans(&ns.name, "web").await?.into_iter().next().context("no plan")?;
    let plan_name = plan.metadata.name.clone().context("a plan without a name")?;
    let controller = ["-n", SYSTEM_NAMESPACE, "deployment/hostlb-controller"];
    cluster.kubectl(&[&["scale", "--replicas=0"], &controller[..]].concat())?;
    let outcome = with_the_controller_stopped(&cluster, &ns.name, &nodes, &plan_name).await;
    cluster.kubectl(&[&["scale", "--replicas=2"], &controller[..]].concat())?;
    cluster.kubectl(&[&["rollout", "status"], &controller[..], &["--timeout=180s"]].concat())?;
    outcome?;
    agent_mode(&cluster).await?;
    eventually(SETTLE, || async {
        let forwarding = NodeAgents.forwarding(&cluster, &ns.name, "web").await?;
        ensure!(forwarding.iter().filter(|(_, forwards)| *forwards).count() == 2, "{forwarding:?}");
        Ok(())
    })
    .await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], SETTLE).await?;
    Ok(())
}

async fn with_the_controller_stopped(cluster: &Cluster, namespace: &str, nodes: &Nodes, plan: &str) -> Result<()> {
    eventually(SETTLE, || async {
        ensure!(cluster.controller_pods().await?.is_empty(), "the controller still runs");
        Ok(())
    })
    .await?;
    let plans = cluster.plan_objects();
    let patch = |spec: serde_json::Value| kube::api::Patch::Merge(json!({ "spec": spec }));
    let params = kube::api::PatchParams::default();
    plans.patch(plan, &params, &patch(json!({ "weights": { "node-1": 2 } }))).await?;
    let kept = plans.get(plan).await?;
    ensure!(kept.data["spec"]["weights"]["node-1"] == 2, "the API server dropped the unknown field: {:?}", kept.data);
    // A heartbeat after the change: the agents have read it, and still forward without a problem.
    let changed_at = k8s_openapi::jiff::Timestamp::now();
    eventually(SETTLE, || reported_after(cluster, namespace, changed_at, None)).await?;
    for address in [nodes.unpublished1, nodes.unpublished2] {
        answers(cluster, address, 18395, SETTLE).await?;
    }

    let mut ports = kept.data["spec"]["ports"].clone();
    ports[0]["protocol"] = json!("QUIC");
    plans.patch(plan, &params, &patch(json!({ "ports": ports }))).await?;
    let broken_at = k8s_openapi::jiff::Timestamp::now();
    let problem = "the rules last programmed from it stay";
    eventually(SETTLE, || reported_after(cluster, namespace, broken_at, Some(problem))).await?;
    for address in [nodes.unpublished1, nodes.unpublished2] {
        answers(cluster, address, 18395, SETTLE).await?;
    }

    let bindings: Api<k8s_openapi::api::rbac::v1::RoleBinding> =
        Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    bindings.delete(agent::AGENT, &DeleteParams::default()).await?;
    let agent1 = cluster.agent_pods().await?.into_iter().find(|pod| node_of(pod) == nodes.node1);
    let agent1 = agent1.context("no agent on node-1")?;
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    pods.delete(&agent1.name_any(), &DeleteParams::default()).await?;
    eventually(SETTLE, || async {
        ensure!(pods.get_opt(&agent1.name_any()).await?.is_none(), "{} is still stopping", agent1.name_any());
        Ok(())
    })
    .await?;
    let with_table = cluster.nodes_with_agent_table()?;
    ensure!(with_table.contains(&nodes.node1), "the refused agent removed node-1's table: left on {with_table:?}");
    // Its successor cannot list the plans: it programs nothing, and the rules stay.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let reply = answers(cluster, nodes.unpublished1, 18395, SETTLE).await?;
    ensure!(reply.pod.starts_with("echo-"), "unexpected answer {reply:?}");
    println!("agent refused: node-1's table stayed, and its unpublished address answered from {}", reply.pod);
    Ok(())
}

/// Both nodes' reports, written after `after`, say of the Service that it is forwarded, with no
/// problem, or with one that contains `problem`.
async fn reported_after(
    cluster: &Cluster,
    namespace: &str,
    after: k8s_openapi::jiff::Timestamp,
    problem: Option<&str>,
) -> Result<()> {
    let service = format!("{namespace}/web");
    let reports = cluster.node_reports().await?;
    ensure!(reports.len() == 2, "{} reports", reports.len());
    for report in reports {
        let status = report.status.unwrap_or_default();
        let written: k8s_openapi::jiff::Timestamp = status.written_at.parse()?;
        ensure!(written > after, "{}'s report was written before the change", report.spec.node);
        let entry = status.services.iter().find(|entry| entry.report.service == service);
        let entry = entry.with_context(|| format!("{} does not report {service}", report.spec.node))?;
        ensure!(entry.report.forwarding, "{} does not forward {service}: {:?}", report.spec.node, entry.report);
        match problem {
            None => ensure!(entry.report.problem.is_none(), "{}: {:?}", report.spec.node, entry.report),
            Some(problem) => ensure!(
                entry.report.problem.as_deref().is_some_and(|said| said.contains(problem)),
                "{}: {:?}",
                report.spec.node,
                entry.report
            ),
        }
    }
    Ok(())
}

/// A port a process of the node already listens on is left to it: node-1 is this machine's
/// network namespace, so a socket of this test is such a process. The Service is not published
/// on node-1, says which port is in use there, and node-1's address answers from the process.
#[tokio::test]
async fn a_port_a_process_of_the_node_listens_on_is_left_to_it() -> Result<()> {
    const PORT: u16 = 18396;
    let (cluster, ns, nodes) = setup_on("agent-held", &NodeAgents).await?;
    agent_mode(&cluster).await?;
    ns.echo_on_node1(&cluster, &nodes, SETTLE).await?;
    let process = NodeProcess::listen(PORT)?;
    // The agents read the node's sockets with its addresses, every 10 s.
    tokio::time::sleep(Duration::from_secs(11)).await;
    ns.load_balancer("web", "echo", &http(PORT), json!({})).await?;
    let outcome = async {
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip2], SETTLE).await?;
        let note = cluster.first_event_note(&ns.name, "web", Reason::ProxyPodFailing, SETTLE).await?;
        let expected = format!("port TCP/{PORT} is in use on {}: a process of the node listens on it", nodes.node1);
        ensure!(note.contains(&expected), "{note}");
        let from_node1 = answers(&cluster, nodes.unpublished1, PORT, SETTLE).await?;
        ensure!(from_node1.pod == "node-process", "node-1's port answered from {}", from_node1.pod);
        let from_node2 = answers(&cluster, nodes.ip2, PORT, SETTLE).await?;
        ensure!(from_node2.pod.starts_with("echo-"), "node-2's port answered from {}", from_node2.pod);
        println!("agent held port: node-1 left to its process ({note}); node-2 answered from {}", from_node2.pod);
        Ok(())
    }
    .await;
    process.stop();
    outcome
}

/// A process of node-1 answering HTTP on a port as the echo backend does, as `node-process`.
struct NodeProcess {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl NodeProcess {
    fn listen(port: u16) -> Result<NodeProcess> {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind(("0.0.0.0", port))?;
        listener.set_nonblocking(true)?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                let Ok((mut stream, client)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let _ = stream.set_nonblocking(false);
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                let _ = stream.read(&mut [0; 1024]);
                let body = format!("pod=node-process node=node-1 client={client}\n");
                let reply = format!("HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
                let _ = stream.write_all(reply.as_bytes());
            }
        });
        Ok(NodeProcess { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = self.thread.join();
    }
}
