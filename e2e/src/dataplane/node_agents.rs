//! The node agent data plane (`--dataplane agent`): one agent per node, from one DaemonSet,
//! programs the plan (a `ForwardingPlan`) the controller writes per Service, and reports per node
//! what it forwards (in the status of the node's `NodeReport`).

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use hostlb_contract::agent::{API_VERSION, PLAN_KIND};
use hostlb_model::agent::{self, ForwardingPlan, NodeReport};
use hostlb_model::names;
use hostlb_model::reason::Reason;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, DynamicObject, ListParams, PostParams};
use kube::Api;
use serde_json::json;

use super::{
    no_pods_of_class, served_uids, service_selector, use_dataplane, Answer, DataPlane, ProxyPods, NO_PODS_QUOTA,
};
use crate::cluster::{Cluster, Nodes, SYSTEM_NAMESPACE};
use crate::figures::traffic_figures;
use crate::namespace::{http, TestNamespace};
use crate::poll::eventually;
use crate::traffic::{answers, PathRecord, Target};

/// One node agent per node, programming a plan per Service.
pub struct NodeAgents;

impl Cluster {
    /// The node agents' pods.
    pub async fn agent_pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        Ok(api.list(&ListParams::default().labels(&agent_selector())).await?.items)
    }

    /// The Service's plans for the node agents.
    pub async fn plans(&self, namespace: &str, service: &str) -> Result<Vec<ForwardingPlan>> {
        let selector = format!("{},{}", agent::plan_selector(&harness_install()), service_selector(namespace, service));
        typed(plan_api(self).list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// The plans in hostlb's namespace, as objects to write.
    pub fn plan_objects(&self) -> Api<DynamicObject> {
        plan_api(self)
    }

    /// Every node's report.
    pub async fn node_reports(&self) -> Result<Vec<NodeReport>> {
        let selector = ListParams::default().labels(&agent::report_selector(&harness_install()));
        typed(report_api(self).list(&selector).await?.items)
    }

    /// The nodes whose network namespace still holds the node agents' IPv4 table: node-1's is
    /// this machine's, node-2's the harness's network namespace.
    pub fn nodes_with_agent_table(&self) -> Result<Vec<String>> {
        let mut left = Vec::new();
        for (node, netns) in [("NODE1_NAME", None), ("NODE2_NAME", Some(self.var("NODE2_NETNS")?))] {
            let mut nft = match netns {
                Some(netns) => {
                    let mut command = Command::new("ip");
                    command.args(["netns", "exec", netns, "nft"]);
                    command
                }
                None => Command::new("nft"),
            };
            let listed = nft.args(["list", "table", "ip", "hostlb"]).output().context("running nft")?;
            if listed.status.success() {
                left.push(self.var(node)?.to_string());
            }
        }
        Ok(left)
    }
}

/// The install the harness's cluster runs, which serves the default class.
fn harness_install() -> String {
    names::install_id(names::DEFAULT_LOAD_BALANCER_CLASS)
}

/// Selects the node agents' pods.
fn agent_selector() -> String {
    format!("{}={}", names::LABEL_COMPONENT, agent::COMPONENT_AGENT)
}

/// The plans in hostlb's namespace.
fn plan_api(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), SYSTEM_NAMESPACE, &agent::plan_resource())
}

/// The nodes' reports in hostlb's namespace.
fn report_api(cluster: &Cluster) -> Api<DynamicObject> {
    Api::namespaced_with(cluster.client.clone(), SYSTEM_NAMESPACE, &agent::report_resource())
}

/// Objects of hostlb's own kinds as their types.
fn typed<T: serde::de::DeserializeOwned>(objects: Vec<DynamicObject>) -> Result<Vec<T>> {
    objects.into_iter().map(|object| Ok(serde_json::from_value(serde_json::to_value(object)?)?)).collect()
}

/// The Service's one plan.
async fn plan(cluster: &Cluster, namespace: &str, service: &str) -> Result<ForwardingPlan> {
    let mut plans = cluster.plans(namespace, service).await?;
    ensure!(plans.len() == 1, "{namespace}/{service} has {} plans", plans.len());
    Ok(plans.remove(0))
}

/// Fails unless the agents' DaemonSet has rolled out within `timeout`, as kubectl spells it.
fn agents_rolled_out(cluster: &Cluster, timeout: &str) -> Result<()> {
    let agents = format!("daemonset/{}", agent::AGENT);
    cluster.kubectl(&["-n", SYSTEM_NAMESPACE, "rollout", "status", &agents, &format!("--timeout={timeout}")])?;
    Ok(())
}

impl DataPlane for NodeAgents {
    fn name(&self) -> &'static str {
        "agent"
    }

    fn pod_noun(&self) -> &'static str {
        "node agent"
    }

    fn wait_running<'a>(&'a self, cluster: &'a Cluster) -> Answer<'a, ()> {
        Box::pin(eventually(Duration::from_secs(180), move || async move { agents_rolled_out(cluster, "60s") }))
    }

    fn forwarders<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, Vec<String>> {
        Box::pin(async move {
            let plans = cluster.plans(namespace, service).await?;
            Ok(plans.into_iter().filter_map(|plan| plan.metadata.name).collect())
        })
    }

    fn forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(String, bool)>> {
        Box::pin(async move {
            let wanted = format!("{namespace}/{service}");
            let mut forwarding = Vec::new();
            for report in cluster.node_reports().await? {
                let entries = report.status.unwrap_or_default().entries();
                let entry = entries.into_values().find(|entry| entry.service == wanted);
                forwarding.extend(entry.map(|entry| (report.spec.node.clone(), entry.forwarding)));
            }
            Ok(forwarding)
        })
    }

    fn claimed_ports<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(i32, String)>> {
        Box::pin(async move {
            let plan = plan(cluster, namespace, service).await?;
            let mut ports: Vec<(i32, String)> =
                plan.spec.ports.into_iter().map(|port| (i32::from(port.port), port.protocol)).collect();
            ports.sort();
            Ok(ports)
        })
    }

    fn nodes_wanted<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, usize> {
        Box::pin(async move { Ok(plan(cluster, namespace, service).await?.spec.nodes.len()) })
    }

    fn forwarding_revision<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, String> {
        Box::pin(
            async move { Ok(plan(cluster, namespace, service).await?.metadata.resource_version.unwrap_or_default()) },
        )
    }

    fn forwarding_pods<'a>(&'a self, cluster: &'a Cluster, _: &'a str, _: &'a str) -> Answer<'a, Vec<Pod>> {
        Box::pin(cluster.agent_pods())
    }

    fn forwarding_daemonset<'a>(&'a self, cluster: &'a Cluster, _: &'a str, _: &'a str) -> Answer<'a, DaemonSet> {
        Box::pin(async move { Ok(cluster.daemonsets().get(agent::AGENT).await?) })
    }

    fn forwarder_owners<'a>(&'a self, cluster: &'a Cluster) -> Answer<'a, Vec<(String, String)>> {
        Box::pin(async move {
            let selector = ListParams::default().labels(names::LABEL_SERVICE_UID);
            Ok(served_uids(&plan_api(cluster).list(&selector).await?.items))
        })
    }

    fn ensure_rolled_out<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let plan = plan(cluster, namespace, service).await?;
            let planned: BTreeSet<&str> = plan.spec.nodes.iter().map(String::as_str).collect();
            let forwarding = self.forwarding(cluster, namespace, service).await?;
            let forwarding: BTreeSet<&str> =
                forwarding.iter().filter(|(_, forwards)| *forwards).map(|(node, _)| node.as_str()).collect();
            ensure!(planned.is_subset(&forwarding), "forwarded on {forwarding:?} of {planned:?}");
            Ok(())
        })
    }

    fn node1_masquerade_source<'a>(
        &'a self,
        cluster: &'a Cluster,
        _: &'a str,
        _: &'a str,
        _: Duration,
    ) -> Answer<'a, IpAddr> {
        Box::pin(async move { cluster.ip("NODE1_POD_GATEWAY") })
    }

    fn image_variable(&self) -> &'static str {
        "HOSTLB_CONTROLLER_IMAGE"
    }

    fn refused_toleration_reason(&self) -> Reason {
        Reason::InvalidOption
    }

    fn missing_priority_class_warning(&self) -> (Reason, &'static str) {
        (Reason::OptionIgnored, "not used")
    }

    fn applied_reason(&self) -> Reason {
        Reason::PlanApplied
    }

    fn occupy_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let foreign: DynamicObject = serde_json::from_value(json!({
                "apiVersion": API_VERSION,
                "kind": PLAN_KIND,
                "metadata": { "name": name },
                "spec": { "service": { "namespace": "elsewhere", "name": "other", "uid": "not-hostlbs" }, "ports": [] }
            }))?;
            plan_api(cluster).create(&PostParams::default(), &foreign).await?;
            Ok(())
        })
    }

    fn release_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            plan_api(cluster).delete(name, &DeleteParams::default()).await?;
            Ok(())
        })
    }

    fn explains_pods_not_created<'a>(
        &'a self,
        cluster: &'a Cluster,
        ns: &'a TestNamespace,
        nodes: &'a Nodes,
        timeout: Duration,
    ) -> Answer<'a, ()> {
        Box::pin(agent_not_created(cluster, ns, nodes, timeout))
    }

    fn make_way_for_another_install<'a>(&'a self, cluster: &'a Cluster, timeout: Duration) -> Answer<'a, ()> {
        Box::pin(async move {
            use_dataplane(cluster, &ProxyPods).await?;
            let agents = ListParams::default().fields(&format!("metadata.name={}", agent::AGENT));
            eventually(timeout, || async {
                ensure!(
                    cluster.daemonsets().list(&agents).await?.items.is_empty(),
                    "the harness's agents are still there"
                );
                let left = cluster.nodes_with_agent_table()?;
                ensure!(left.is_empty(), "the harness's agents left their table on {left:?}");
                Ok(())
            })
            .await
        })
    }

    fn ensure_current_forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, ()> {
        Box::pin(async move {
            let forwarding = self.forwarding(cluster, namespace, service).await?;
            let forwarded = forwarding.iter().filter(|(_, forwards)| *forwards).count();
            ensure!(forwarded == 2, "the agents forward on {forwarding:?}");
            let left = cluster.proxy_pods(namespace, service).await?.len();
            ensure!(left == 0, "{left} proxy pods are left");
            Ok(())
        })
    }

    fn ensure_roll_kept(&self, records: &[(Target, PathRecord)], _: Duration, _: i32, _: Duration) -> Result<()> {
        traffic_figures("agent_roll", records)?;
        let lost: u32 = records.iter().map(|(_, record)| record.lost).sum();
        ensure!(lost == 0, "{lost} requests lost while the agents rolled");
        Ok(())
    }

    fn killed_pod_figures(&self) -> &'static str {
        "killed_agent"
    }

    fn upgrade_figures(&self) -> (&'static str, &'static str) {
        ("upgrade_to_agents", "upgrade_to_agents_forwarding_s")
    }
}

/// Node-1's agent cannot come back, and the Service says so, while the rules it left go on
/// forwarding.
async fn agent_not_created(cluster: &Cluster, ns: &TestNamespace, nodes: &Nodes, timeout: Duration) -> Result<()> {
    ns.echo_on_node1(cluster, nodes, timeout).await?;
    ns.load_balancer("web", "echo", &http(18212), json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], timeout).await?;
    let quotas = no_pods_of_class(cluster, "hostlb-proxy", timeout).await?;
    let outcome = async {
        let node1 = format!("spec.nodeName={}", nodes.node1);
        let selector = agent_selector();
        cluster.kubectl(&["-n", SYSTEM_NAMESPACE, "delete", "pod", "-l", &selector, "--field-selector", &node1])?;
        let started = Instant::now();
        let note = cluster.first_event_note(&ns.name, "web", Reason::ProxyPodsNotCreated, timeout).await?;
        ensure!(note.contains("hostlb-agent cannot create pods") && note.contains("exceeded quota"), "{note:?}");
        println!("timing: agent: deleted to ProxyPodsNotCreated: {:.2}s", started.elapsed().as_secs_f64());
        cluster.wait_for_addresses(&ns.name, "web", &[nodes.ip1, nodes.ip2], timeout).await?;
        answers(cluster, nodes.unpublished1, 18212, timeout).await.context("node-1's rules without its agent")?;
        Ok(())
    }
    .await;
    // Whatever happened, the next tests need node-1's agent back.
    quotas.delete(NO_PODS_QUOTA, &Default::default()).await?;
    agents_rolled_out(cluster, "150s")?;
    outcome
}
