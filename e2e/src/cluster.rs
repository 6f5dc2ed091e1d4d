//! The cluster the harness brought up (`e2e/cluster/cluster.sh up`), as its `cluster.env`
//! describes it: kubectl and the harness's own commands against it, Events, the controller's
//! pods, the two nodes, and the set-up every test starts from.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use hostlb_model::reason::Reason;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use kube::api::ListParams;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};

/// The namespace the harness installs hostlb in.
pub use hostlb_model::names::DEFAULT_NAMESPACE as SYSTEM_NAMESPACE;

use crate::dataplane::{self, DataPlane};
use crate::namespace::TestNamespace;
use crate::poll::eventually;
use crate::traffic::{PathRecord, Target};

/// The cluster the harness brought up, as described by its `cluster.env`.
pub struct Cluster {
    env: BTreeMap<String, String>,
    pub client: Client,
    /// The data plane the test runs on, which the helpers that look at forwarding follow.
    pub dataplane: &'static dyn DataPlane,
}

impl Cluster {
    pub async fn connect() -> Result<Self> {
        let state = std::env::var("HOSTLB_E2E_STATE").unwrap_or_else(|_| "/var/lib/hostlb-e2e".into());
        let path = format!("{state}/cluster.env");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("{path} is missing: bring the cluster up first (`make up`)"))?;
        let env = parse_env(&text);
        let kubeconfig_path = env.get("KUBECONFIG").ok_or_else(|| anyhow!("{path} has no KUBECONFIG"))?;
        let kubeconfig = Kubeconfig::read_from(kubeconfig_path)?;
        let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
        Ok(Cluster { client: Client::try_from(config)?, env, dataplane: dataplane::of_suite()? })
    }

    pub fn var(&self, key: &str) -> Result<&str> {
        self.env.get(key).map(String::as_str).ok_or_else(|| anyhow!("cluster.env has no {key}"))
    }

    pub fn ip(&self, key: &str) -> Result<IpAddr> {
        let text = self.var(key)?;
        text.parse().with_context(|| format!("cluster.env: {key}={text} is not an IP address"))
    }

    /// Runs kubectl against the test cluster and returns its standard output.
    pub fn kubectl(&self, args: &[&str]) -> Result<String> {
        let output =
            Command::new(self.var("KUBECTL")?).env("KUBECONFIG", self.var("KUBECONFIG")?).args(args).output()?;
        if !output.status.success() {
            bail!("kubectl {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs a harness subcommand, such as `kubelet stop node-2`.
    pub fn harness(&self, args: &[&str]) -> Result<()> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/cluster/cluster.sh");
        let status = Command::new("bash").arg(script).args(args).status()?;
        if !status.success() {
            bail!("cluster.sh {} failed", args.join(" "));
        }
        Ok(())
    }

    /// The DaemonSets of hostlb's namespace.
    pub fn daemonsets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
    }

    /// Warning or Normal Events about the named object with this reason.
    pub async fn events(&self, namespace: &str, regarding: &str, reason: Reason) -> Result<Vec<Event>> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), namespace);
        let events = api.list(&ListParams::default()).await?.items;
        Ok(events
            .into_iter()
            .filter(|e| {
                e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(regarding)
                    && e.reason.as_deref() == Some(reason.as_str())
            })
            .collect())
    }

    /// The note of the first Event with this reason about the named object, once there is one
    /// within `timeout` (Normal Events too, which follow what they tell of from a queue of their
    /// own).
    pub async fn first_event_note(
        &self,
        namespace: &str,
        regarding: &str,
        reason: Reason,
        timeout: Duration,
    ) -> Result<String> {
        let events = eventually(timeout, || async {
            let events = self.events(namespace, regarding, reason).await?;
            ensure!(!events.is_empty(), "no {reason} Event on {namespace}/{regarding} yet");
            Ok(events)
        })
        .await?;
        Ok(events[0].note.clone().unwrap_or_default())
    }
}

/// Each controller pod's container restart count, by pod name.
pub type ControllerRestarts = BTreeMap<String, i32>;

impl Cluster {
    pub async fn controller_restarts(&self) -> Result<ControllerRestarts> {
        Ok(self.controller_pods().await?.iter().map(|pod| (pod.name_any(), restart_count(pod))).collect())
    }

    /// Fails when a controller pod came or went or restarted since `before`, quoting why each
    /// restarted one last exited and the end of its previous log.
    pub async fn ensure_no_controller_restarted(&self, before: &ControllerRestarts) -> Result<()> {
        let pods = self.controller_pods().await?;
        let now: ControllerRestarts = pods.iter().map(|pod| (pod.name_any(), restart_count(pod))).collect();
        if &now == before {
            return Ok(());
        }
        let mut report = format!("a controller restarted: restart counts {before:?} became {now:?}");
        for pod in pods.iter().filter(|pod| before.get(&pod.name_any()) != Some(&restart_count(pod))) {
            let name = pod.name_any();
            let container = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).and_then(|c| c.first());
            let exit = container.and_then(|c| c.last_state.as_ref()).and_then(|s| s.terminated.as_ref());
            if let Some(exit) = exit {
                let reason = exit.reason.as_deref().unwrap_or("no reason");
                report += &format!("\n{name} last exited with code {} ({reason})", exit.exit_code);
            }
            let log = self.kubectl(&["logs", "--previous", "--tail=40", "-n", SYSTEM_NAMESPACE, &name]);
            report += &format!("\n{name}'s previous log:\n{}", log.unwrap_or_else(|error| error.to_string()));
        }
        bail!(report)
    }

    /// The controller's pods, Ready or not.
    pub async fn controller_pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        Ok(api.list(&ListParams::default().labels(CONTROLLER_SELECTOR)).await?.items)
    }
}

const CONTROLLER_SELECTOR: &str = "app.kubernetes.io/component=controller";

fn restart_count(pod: &Pod) -> i32 {
    let statuses = pod.status.as_ref().and_then(|s| s.container_statuses.as_ref());
    statuses.and_then(|s| s.first()).map_or(0, |s| s.restart_count)
}

/// The two real nodes of the cluster: names, published addresses, and the second address of
/// each that the cluster does not know (the proxy pods' own path).
pub struct Nodes {
    pub node1: String,
    pub node2: String,
    pub ip1: IpAddr,
    pub ip2: IpAddr,
    pub unpublished1: IpAddr,
    pub unpublished2: IpAddr,
}

impl Nodes {
    /// Both ways into a Service on `port` of each node: the published address (kube-proxy's
    /// rules) and the unpublished one (the proxy pod's host port), in the order `path_names` names.
    pub fn paths(&self, port: u16) -> [Target; 4] {
        [(self.ip1, port), (self.ip2, port), (self.unpublished1, port), (self.unpublished2, port)]
    }

    /// Names for the targets of `paths`, in their order.
    pub fn path_names(&self) -> [String; 4] {
        [
            format!("published {}", self.node1),
            format!("published {}", self.node2),
            format!("proxy path {}", self.node1),
            format!("proxy path {}", self.node2),
        ]
    }

    /// The records of traffic on `paths`, each under its name.
    pub fn describe_paths(&self, records: &[(Target, PathRecord)]) -> String {
        let lines = self.path_names().into_iter().zip(records).map(|(name, (_, record))| format!("{name}: {record}"));
        lines.collect::<Vec<_>>().join("; ")
    }
}

pub fn nodes(cluster: &Cluster) -> Result<Nodes> {
    Ok(Nodes {
        node1: cluster.var("NODE1_NAME")?.into(),
        node2: cluster.var("NODE2_NAME")?.into(),
        ip1: cluster.ip("NODE1_IP")?,
        ip2: cluster.ip("NODE2_IP")?,
        unpublished1: cluster.ip("NODE1_UNPUBLISHED_IP")?,
        unpublished2: cluster.ip("NODE2_UNPUBLISHED_IP")?,
    })
}

/// The cluster, on the data plane the suite runs on (`dataplane::of_suite`), a fresh namespace
/// for the test, and the nodes.
pub async fn setup(test: &str) -> Result<(Cluster, TestNamespace, Nodes)> {
    setup_on(test, dataplane::of_suite()?).await
}

/// `setup` on `dataplane`.
pub async fn setup_on(test: &str, dataplane: &'static dyn DataPlane) -> Result<(Cluster, TestNamespace, Nodes)> {
    let mut cluster = Cluster::connect().await?;
    cluster.dataplane = dataplane;
    dataplane::use_dataplane(&cluster, dataplane).await?;
    dataplane.wait_running(&cluster).await?;
    let namespace = cluster.namespace(test).await?;
    let nodes = nodes(&cluster)?;
    Ok((cluster, namespace, nodes))
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches(|c| c == '"' || c == '\'').to_string()))
        .collect()
}

/// The node of a pod and the containerd id of its container that runs and is ready.
pub fn running_container(pod: &Pod) -> Result<(String, String)> {
    let node = pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).context("pod without node")?;
    let statuses = pod.status.as_ref().and_then(|status| status.container_statuses.as_ref());
    let running =
        statuses.into_iter().flatten().find(|s| s.ready && s.state.as_ref().is_some_and(|s| s.running.is_some()));
    let container = running.and_then(|s| s.container_id.clone()).context("no running container")?;
    Ok((node, container))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_env_lines_are_parsed_with_or_without_export_and_quotes() {
        let env = parse_env("# comment\nKUBECONFIG=/a/b\nexport NODE1_IP=\"10.250.0.1\"\n\nX='y'\n");
        assert_eq!(env["KUBECONFIG"], "/a/b");
        assert_eq!(env["NODE1_IP"], "10.250.0.1");
        assert_eq!(env["X"], "y");
    }
}
