//! The data plane a test runs on, behind one interface, `DataPlane`, with one implementation per
//! plane: `ProxyPods` (a DaemonSet of hostPort proxy pods per Service, the default) and
//! `NodeAgents` (one agent per node, programming a plan per Service). Whatever the tests look at
//! or expect differently on the two planes is answered here; `of_suite` is the one place that
//! picks a plane.

mod node_agents;
mod proxy_pods;

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use hostlb_model::names;
use hostlb_model::reason::Reason;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use kube::api::PostParams;
use kube::{Api, ResourceExt};
use serde_json::json;

pub use node_agents::NodeAgents;
pub use proxy_pods::ProxyPods;

use crate::cluster::{Cluster, Nodes, SYSTEM_NAMESPACE};
use crate::namespace::TestNamespace;
use crate::poll::eventually;
use crate::traffic::{PathRecord, Target};

/// What a data plane finds out from the cluster. Boxed: the plane is picked at run time.
pub type Answer<'a, T> = Pin<Box<dyn Future<Output = Result<T>> + Send + 'a>>;

/// What the tests ask of the data plane they run on. A Service is named by `namespace` and
/// `service`; `timeout` bounds each wait.
pub trait DataPlane: Send + Sync {
    /// The plane as `--dataplane` and `HOSTLB_E2E_DATAPLANE` spell it.
    fn name(&self) -> &'static str;

    /// What a test's report calls one of the pods that forward.
    fn pod_noun(&self) -> &'static str;

    /// Waits until the plane's own pods are in place: an earlier test may have left them
    /// rolling, or not yet made.
    fn wait_running<'a>(&'a self, cluster: &'a Cluster) -> Answer<'a, ()>;

    /// The names of what carries the Service's forwarding: its proxy DaemonSets, or its plans.
    fn forwarders<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, Vec<String>>;

    /// Where the Service is forwarded, a pair per forwarder: each proxy pod's node ("" until it
    /// is placed) and whether it is Ready; or each node whose agent reports on the Service, and
    /// whether it forwards it.
    fn forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(String, bool)>>;

    /// The (port, protocol) pairs the Service's forwarding claims, sorted: its proxy DaemonSet's
    /// host ports, or its plan's ports.
    fn claimed_ports<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<(i32, String)>>;

    /// The nodes the Service's forwarding is wanted on: as its DaemonSet's status counts them,
    /// or as its plan lists them.
    fn nodes_wanted<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, usize>;

    /// A mark that changes with each change hostlb makes to the Service's forwarding: its
    /// DaemonSet's generation, or its plan's resource version.
    fn forwarding_revision<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, String>;

    /// The pods that forward the Service: its proxy pods, or the node agents, which forward
    /// every Service.
    fn forwarding_pods<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, Vec<Pod>>;

    /// The DaemonSet whose pods forward the Service: its proxy DaemonSet, or the node agents'.
    fn forwarding_daemonset<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, DaemonSet>;

    /// Every proxy DaemonSet, or every plan: its name, and the UID of the Service it serves.
    fn forwarder_owners<'a>(&'a self, cluster: &'a Cluster) -> Answer<'a, Vec<(String, String)>>;

    /// Fails unless every node the Service's forwarding is wanted on forwards it as it is now:
    /// with proxy pods, a Ready pod of the DaemonSet's current template on every node.
    fn ensure_rolled_out<'a>(&'a self, cluster: &'a Cluster, namespace: &'a str, service: &'a str) -> Answer<'a, ()>;

    /// Waits until the Service's forwarding claims `port` over TCP and every node it is wanted
    /// on forwards it.
    fn wait_rolled_to<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
        port: i32,
        timeout: Duration,
    ) -> Answer<'a, ()> {
        Box::pin(eventually(timeout, move || async move {
            let ports = self.claimed_ports(cluster, namespace, service).await?;
            ensure!(ports == vec![(port, "TCP".to_string())], "the claimed ports are {ports:?}");
            self.ensure_rolled_out(cluster, namespace, service).await
        }))
    }

    /// The address a backend on node-1 sees a request come from that node-1 forwarded to it:
    /// the proxy pod's there, once one runs; or node-1's own on its pod network.
    fn node1_masquerade_source<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
        timeout: Duration,
    ) -> Answer<'a, IpAddr>;

    /// The controller's environment variable that names the image the plane's pods run: the
    /// proxies' own, or the controller's, which the agents run.
    fn image_variable(&self) -> &'static str;

    /// The reason of the Warning a toleration Kubernetes does not allow leads to: the API server
    /// refuses the proxy DaemonSet; the agents only read the tolerations, and the controller
    /// refuses them itself.
    fn refused_toleration_reason(&self) -> Reason;

    /// The Warning a Service asking for a PriorityClass that does not exist gets, and a text of
    /// its note: its proxy pods cannot be created; the agents run at the class the admin gave
    /// the proxies and use no Service's own.
    fn missing_priority_class_warning(&self) -> (Reason, &'static str);

    /// The reason of the Normal Event that tells what the Service's forwarding became.
    fn applied_reason(&self) -> Reason;

    /// Makes an object that hostlb did not make, of the kind and with the name hostlb would give
    /// a Service's forwarding: a DaemonSet, or a ConfigMap.
    fn occupy_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()>;

    /// Deletes what `occupy_forwarder_name` made.
    fn release_forwarder_name<'a>(&'a self, cluster: &'a Cluster, name: &'a str) -> Answer<'a, ()>;

    /// Keeps the plane's pods from being created and checks that the Service says so: proxy
    /// pods of a PriorityClass that does not exist, or that a quota allows none of; node-1's
    /// agent kept from coming back by such a quota, while the rules it left go on forwarding.
    fn explains_pods_not_created<'a>(
        &'a self,
        cluster: &'a Cluster,
        ns: &'a TestNamespace,
        nodes: &'a Nodes,
        timeout: Duration,
    ) -> Answer<'a, ()>;

    /// Has the harness's install make way for another install of hostlb on the same plane: one
    /// install per cluster may run node agents, so with them the harness's hands its Services
    /// back to proxy pods and waits until its agents and their table are gone.
    fn make_way_for_another_install<'a>(&'a self, cluster: &'a Cluster, timeout: Duration) -> Answer<'a, ()>;

    /// Fails unless the install as it is now forwards the Service on both nodes: with proxy
    /// pods, both carry the spec hash of their DaemonSet's template and are Ready; with the node
    /// agents, both nodes' agents forward it and no proxy pod is left.
    fn ensure_current_forwarding<'a>(
        &'a self,
        cluster: &'a Cluster,
        namespace: &'a str,
        service: &'a str,
    ) -> Answer<'a, ()>;

    /// The figures and the checks of traffic on `Nodes::paths` while the forwarding pods rolled
    /// (`kubectl rollout restart`) for `rolled_after`, with `replaced` ProxyPodReplaced Events:
    /// hostlb replaces each proxy pod itself, leaving a gap of at most `gap_bound` on its node's
    /// own path; the DaemonSet controller rolls the agents, whose rules stay meanwhile, so that
    /// no request is lost.
    fn ensure_roll_kept(
        &self,
        records: &[(Target, PathRecord)],
        rolled_after: Duration,
        replaced: i32,
        gap_bound: Duration,
    ) -> Result<()>;

    /// The prefix of the figures of node-1's forwarding pod deleted under traffic.
    fn killed_pod_figures(&self) -> &'static str;

    /// The names of the figures of an upgrade from the previous release: the prefix of its
    /// traffic and controller figures, and the key of the time until the Service was forwarded
    /// by the upgraded install.
    fn upgrade_figures(&self) -> (&'static str, &'static str);
}

/// Both planes, each once.
const DATAPLANES: [&dyn DataPlane; 2] = [&ProxyPods, &NodeAgents];

/// The variable that names the data plane the suite runs on.
const DATAPLANE_ENV: &str = "HOSTLB_E2E_DATAPLANE";

/// The data plane the suite runs on, as `HOSTLB_E2E_DATAPLANE` names it; proxy pods when it is
/// unset, whatever an earlier test left the controller on.
pub fn of_suite() -> Result<&'static dyn DataPlane> {
    let Ok(wanted) = std::env::var(DATAPLANE_ENV) else { return Ok(&ProxyPods) };
    let named = DATAPLANES.into_iter().find(|dataplane| dataplane.name() == wanted);
    named.with_context(|| format!("{DATAPLANE_ENV}={wanted}: expected pods or agent"))
}

/// Puts the controller on `dataplane` and waits for its rollout; nothing when it is there
/// already. A reinstall of the harness's install (`cluster.sh install`) puts it back on proxy
/// pods.
pub async fn use_dataplane(cluster: &Cluster, dataplane: &dyn DataPlane) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let deployment = deployments.get("hostlb-controller").await?;
    let containers = deployment.spec.and_then(|spec| spec.template.spec).map(|spec| spec.containers);
    let env = containers.into_iter().flatten().flat_map(|container| container.env.unwrap_or_default());
    let current = env.filter(|var| var.name == "HOSTLB_DATAPLANE").find_map(|var| var.value);
    let mode = dataplane.name();
    // Without the variable, the controller runs proxy pods.
    if current.as_deref().unwrap_or(ProxyPods.name()) == mode {
        return Ok(());
    }
    let deployment = ["-n", SYSTEM_NAMESPACE, "deployment/hostlb-controller"];
    cluster.kubectl(&[&["set", "env"], &deployment[..], &[&format!("HOSTLB_DATAPLANE={mode}")]].concat())?;
    cluster.kubectl(&[&["rollout", "status"], &deployment[..], &["--timeout=180s"]].concat())?;
    Ok(())
}

/// Selects what hostlb made for the named Service.
fn service_selector(namespace: &str, service: &str) -> String {
    format!("{}={namespace},{}={service}", names::LABEL_SERVICE_NAMESPACE, names::LABEL_SERVICE_NAME)
}

/// Each object's name and the UID of the Service it serves, from hostlb's label.
fn served_uids<K: ResourceExt>(objects: &[K]) -> Vec<(String, String)> {
    let uid = |object: &K| object.labels().get(names::LABEL_SERVICE_UID).cloned().unwrap_or_default();
    objects.iter().map(|object| (object.name_any(), uid(object))).collect()
}

/// The quota in hostlb's namespace that `no_pods_of_class` makes.
const NO_PODS_QUOTA: &str = "e2e-quota";

/// A quota in hostlb's namespace that allows pods of `class` no pods, once the quota
/// controller has counted what the namespace holds (until then admission refuses every pod,
/// for another reason).
async fn no_pods_of_class(cluster: &Cluster, class: &str, timeout: Duration) -> Result<Api<ResourceQuota>> {
    let quotas: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let quota = json!({
        "metadata": { "name": NO_PODS_QUOTA },
        "spec": {
            "hard": { "pods": "0" },
            "scopeSelector": { "matchExpressions": [{ "scopeName": "PriorityClass", "operator": "In", "values": [class] }] },
        },
    });
    match quotas.create(&PostParams::default(), &serde_json::from_value(quota)?).await {
        Err(kube::Error::Api(status)) if status.code == 409 => {}
        created => drop(created?),
    }
    eventually(timeout, || async {
        let counted = quotas.get(NO_PODS_QUOTA).await?.status.and_then(|status| status.used);
        ensure!(counted.is_some_and(|used| used.contains_key("pods")), "not counted yet");
        Ok(())
    })
    .await?;
    Ok(quotas)
}
