//! The proxy pod data plane, hostlb's default: each Service gets a DaemonSet of proxy pods that
//! claim its ports as host ports on every node it is wanted on.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use hostlb_model::names;
use hostlb_model::readiness::pod_is_ready;
use hostlb_model::reason::Reason;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use super::{no_pods_of_class, served_uids, service_selector, Answer, DataPlane, NO_PODS_QUOTA};
use crate::cluster::{Cluster, Nodes, SYSTEM_NAMESPACE};
use crate::figures::{figure, traffic_figures};
use crate::namespace::{http, TestNamespace};
use crate::poll::eventually;
use crate::traffic::{PathRecord, Target};

/// A DaemonSet of proxy pods per Service.
pub struct ProxyPods;

impl Cluster {
    /// Proxy DaemonSets serving the named Service.
    pub async fn proxy_daemonsets(&self, namespace: &str, service: &str) -> Result<Vec<DaemonSet>> {
        let selector = service_selector(namespace, service);
        Ok(self.daemonsets().list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// Proxy pods serving the named Service.
    pub async fn proxy_pods(&self, namespace: &str, service: &str) -> Result<Vec<Pod>> {
        let selector = service_selector(namespace, service);
        let api: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
    }
}

/// The Service's one proxy DaemonSet.
async fn proxy_daemonset(cluster: &Cluster, namespace: &str, service: &str) -> Result<DaemonSet> {
    let mut daemonsets = cluster.proxy_daemonsets(namespace, service).await?;
    ensure!(daemonsets.len() == 1, "{namespace}/{service} has {} proxy DaemonSets", daemonsets.len());
    Ok(daemonsets.remove(0))
}

/// The (hostPort, protocol) pairs the DaemonSet's pod template claims, sorted.
fn host_ports_of(daemonset: &DaemonSet) -> Result<Vec<(i32, String)>> {
    let spec = daemonset.spec.as_ref().and_then(|s| s.template.spec.as_ref()).context("DaemonSet without pod spec")?;
    let mut ports: Vec<(i32, String)> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .map(|p| (p.host_port.unwrap_or(0), p.protocol.clone().unwrap_or_default()))
        .collect();
    ports.sort();
    Ok(ports)
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref().and_then(|spec| spec.node_name.as_deref())
}

fn pod_ip(pod: &Pod) -> Option<IpAddr> {
    pod.status.as_ref()?.pod_ip.as_deref()?.parse().ok()
}

impl DataPlane for ProxyPods {
    fn name(&self) -> &'static str {
        "pods"
    }

    fn pod_noun(&self) -> &'static str {
        "proxy pod"
    }

    /// Nothing to wait for: a Service's proxy pods come with it.
    fn wait_running<'a>(&'a self, _: &'a Cluster) -> Answer<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn forwarders<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, Vec<String>> {
        Box::pin(async move {
            Ok(cluster.proxy_daemonsets(namespace, service).await?.iter().map(ResourceExt::name_any).collect())
        })
    }

    fn forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(String, bool)>> {
        Box::pin(async move {
            let pods = cluster.proxy_pods(namespace, service).await?;
            Ok(pods.iter().map(|pod| (node_of(pod).unwrap_or_default().to_string(), pod_is_ready(pod))).collect())
        })
    }

    fn claimed_ports<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(i32, String)>> {
        Box::pin(async move { host_ports_of(&proxy_daemonset(cluster, namespace, service).await?) })
    }

    fn nodes_wanted<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, usize> {
        Box::pin(async move {
            let daemonset = proxy_daemonset(cluster, namespace, service).await?;
            let scheduled = daemonset.status.map_or(0, |status| status.desired_number_scheduled);
            Ok(usize::try_from(scheduled).unwrap_or_default())
        })
    }

    fn forwarding_revision<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, String> {
        Box::pin(async move {
            let generation = proxy_daemonset(cluster, namespace, service).await?.metadata.generation;
            Ok(generation.unwrap_or_default().to_string())
        })
    }

    fn forwarding_pods<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<Pod>> {
        Box::pin(cluster.proxy_pods(namespace, service))
    }

    fn forwarding_daemonset<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, DaemonSet> {
        Box::pin(proxy_daemonset(cluster, namespace, service))
    }

    fn forwarder_owners<'a>(&'a self, cluster: &'a Cluster) -> Answer<'a, Vec<(String, String)>> {
        Box::pin(async move {
            let selector = ListParams::default().labels(names::LABEL_SERVICE_UID);
            Ok(served_uids(&cluster.daemonsets().list(&selector).await?.items))
        })
    }

    fn ensure_rolled_out<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let daemonset = proxy_daemonset(cluster, namespace, service).await?;
            let status = daemonset.status.unwrap_or_default();
            let desired = status.desired_number_scheduled;
            ensure!(
                status.observed_generation == daemonset.metadata.generation
                    && status.updated_number_scheduled == Some(desired)
                    && status.number_ready == desired,
                "not rolled yet: {} of {desired} updated, {} ready",
                status.updated_number_scheduled.unwrap_or(0),
                status.number_ready
            );
            Ok(())
        })
    }

    fn node1_masquerade_source<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
        timeout: Duration,
    ) -> Answer<'a, IpAddr> {
        Box::pin(async move {
            let node1 = cluster.var("NODE1_NAME")?;
            eventually(timeout, || async {
                let pods = cluster.proxy_pods(namespace, service).await?;
                let running_on_node1 = pods.iter().filter(|pod| node_of(pod) == Some(node1)).find_map(pod_ip);
                running_on_node1.with_context(|| format!("no running proxy pod of {namespace}/{service} on {node1}"))
            })
            .await
        })
    }

    fn image_variable(&self) -> &'static str {
        "HOSTLB_LB_IMAGE"
    }

    fn refused_toleration_reason(&self) -> Reason {
        Reason::ApplyRefused
    }

    fn missing_priority_class_warning(&self) -> (Reason, &'static str) {
        (Reason::ProxyPodsNotCreated, "no PriorityClass")
    }

    fn applied_reason(&self) -> Reason {
        Reason::DaemonSetApplied
    }

    fn occupy_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            let foreign: DaemonSet = serde_json::from_value(json!({
                "metadata": { "name": name, "labels": { "app": "foreign" } },
                "spec": {
                    "selector": { "matchLabels": { "app": "foreign" } },
                    "template": {
                        "metadata": { "labels": { "app": "foreign" } },
                        "spec": {
                            "nodeSelector": { "e2e.hostlb.io/nowhere": "true" },
                            "containers": [{ "name": "pause", "image": "localhost/hostlb/pause:dev" }]
                        }
                    }
                }
            }))?;
            cluster.daemonsets().create(&PostParams::default(), &foreign).await?;
            Ok(())
        })
    }

    fn release_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()> {
        Box::pin(async move {
            cluster.daemonsets().delete(name, &DeleteParams::default()).await?;
            Ok(())
        })
    }

    fn explains_pods_not_created<'a>(
        &'a self,
        cluster: &'a Cluster,
        ns: &'a TestNamespace,
        _: &'a Nodes,
        timeout: Duration,
    ) -> Answer<'a, ()> {
        Box::pin(proxy_pods_not_created(cluster, ns, timeout))
    }

    /// Nothing: the other install's proxy pods serve its Services beside the harness's.
    fn make_way_for_another_install<'a>(&'a self, _: &'a Cluster, _: Duration) -> Answer<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn ensure_current_forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, ()> {
        Box::pin(async move {
            let daemonset = proxy_daemonset(cluster, namespace, service).await?;
            let template = daemonset.spec.and_then(|spec| spec.template.metadata).unwrap_or_default();
            let hash = template.annotations.unwrap_or_default().remove(names::ANNOTATION_PROXY_SPEC_HASH);
            let hash = hash.context("the proxy DaemonSet's template has no spec hash yet")?;
            let pods = cluster.proxy_pods(namespace, service).await?;
            let current = pods
                .iter()
                .filter(|pod| {
                    pod.annotations().get(names::ANNOTATION_PROXY_SPEC_HASH) == Some(&hash) && pod_is_ready(pod)
                })
                .count();
            ensure!(current == 2 && pods.len() == 2, "{current} of {} proxy pods current and Ready", pods.len());
            Ok(())
        })
    }

    fn ensure_roll_kept(
        &self,
        records: &[(Target, PathRecord)],
        rolled_after: Duration,
        replaced: i32,
        gap_bound: Duration,
    ) -> Result<()> {
        traffic_figures("roll", records)?;
        figure("roll_s", rolled_after.as_secs_f64())?;
        ensure!(replaced == 2, "hostlb replaced {replaced} proxy pods, not one per node");
        let longest = records[2..].iter().map(|(_, record)| record.longest_gap).max().unwrap_or_default();
        ensure!(longest <= gap_bound, "a gap of {longest:?} on a proxy path");
        Ok(())
    }

    fn killed_pod_figures(&self) -> &'static str {
        "killed_proxy"
    }

    fn upgrade_figures(&self) -> (&'static str, &'static str) {
        ("upgrade", "upgrade_proxies_s")
    }
}

/// Proxy pods of a PriorityClass that does not exist, or that a quota allows none of.
async fn proxy_pods_not_created(cluster: &Cluster, ns: &TestNamespace, timeout: Duration) -> Result<()> {
    let classes: Api<PriorityClass> = Api::all(cluster.client.clone());
    let class = json!({ "metadata": { "name": "e2e-quota" }, "value": 1000, "preemptionPolicy": "Never" });
    match classes.create(&PostParams::default(), &serde_json::from_value(class)?).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        created => drop(created?),
    }
    let quotas = no_pods_of_class(cluster, "e2e-quota", timeout).await?;
    let class_key = names::ANNOTATION_PRIORITY_CLASS;
    let cases = [
        ("missing", 18210, "e2e-missing", "no PriorityClass with name e2e-missing"),
        ("quota", 18211, "e2e-quota", "exceeded quota"),
    ];
    for (service, port, class, expected) in cases {
        let metadata = json!({ "annotations": { class_key: class } });
        ns.load_balancer_with_metadata(service, "echo", &http(port), json!({}), metadata).await?;
        let started = Instant::now();
        let note = cluster.first_event_note(&ns.name, service, Reason::ProxyPodsNotCreated, timeout).await?;
        ensure!(note.contains(expected), "the Event on {service} does not say {expected:?}: {note:?}");
        println!("timing: {service}: creation to ProxyPodsNotCreated: {:.2}s", started.elapsed().as_secs_f64());
    }
    quotas.delete(NO_PODS_QUOTA, &Default::default()).await?;
    classes.delete("e2e-quota", &Default::default()).await?;
    Ok(())
}
