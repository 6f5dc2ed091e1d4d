//! Helpers for the end-to-end tests: the cluster the harness brought up (`e2e/cluster/cluster.sh
//! up`), a namespace per test, the echo backend, and requests from the client network namespace.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::IpAddr;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use hostlb_model::agent;
use hostlb_model::readiness::pod_is_ready;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::events::v1::Event;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{json, Value};

pub use hostlb_model::names::{self, DEFAULT_NAMESPACE as SYSTEM_NAMESPACE, FINALIZER};
pub use hostlb_model::reason::Reason;
pub const ECHO_HTTP_PORT: u16 = 8080;
pub const ECHO_UDP_PORT: u16 = 8081;

/// The cluster the harness brought up, as described by its `cluster.env`.
pub struct Cluster {
    env: BTreeMap<String, String>,
    pub client: Client,
    /// The data plane the test runs on, which the helpers that look at forwarding follow.
    pub dataplane: Dataplane,
}

/// hostlb's two data planes, as `--dataplane` and `DATAPLANE_ENV` spell them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dataplane {
    /// A proxy DaemonSet per Service.
    Pods,
    /// One node agent per node, programming a plan per Service.
    Agent,
}

impl Dataplane {
    pub fn name(self) -> &'static str {
        match self {
            Dataplane::Pods => "pods",
            Dataplane::Agent => "agent",
        }
    }

    /// The one `DATAPLANE_ENV` asks for; proxy pods when it is unset.
    pub fn of_suite() -> Result<Dataplane> {
        match std::env::var(DATAPLANE_ENV).as_deref() {
            Err(_) | Ok("pods") => Ok(Dataplane::Pods),
            Ok("agent") => Ok(Dataplane::Agent),
            Ok(other) => bail!("{DATAPLANE_ENV}={other}: expected pods or agent"),
        }
    }
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
        Ok(Cluster { client: Client::try_from(config)?, env, dataplane: Dataplane::of_suite()? })
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

    /// A fresh namespace, deleted when the returned guard drops (also when the test fails).
    pub async fn namespace(&self, test: &str) -> Result<TestNamespace> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
        let name = format!("e2e-{test}-{:05x}", nanos % 0xfffff);
        let api: Api<Namespace> = Api::all(self.client.clone());
        let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
        api.create(&PostParams::default(), &namespace).await?;
        Ok(TestNamespace {
            name,
            client: self.client.clone(),
            kubectl: self.var("KUBECTL")?.into(),
            kubeconfig: self.var("KUBECONFIG")?.into(),
        })
    }

    pub fn daemonsets(&self) -> Api<DaemonSet> {
        Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE)
    }

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

    /// The Service's plans for the node agents.
    pub async fn plans(&self, namespace: &str, service: &str) -> Result<Vec<ConfigMap>> {
        let install = names::install_id(names::DEFAULT_LOAD_BALANCER_CLASS);
        let selector = format!("{},{}", agent::plan_selector(&install), service_selector(namespace, service));
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// The names of what carries the Service's forwarding on the test's data plane: its proxy
    /// DaemonSets, or its plans.
    pub async fn forwarders(&self, namespace: &str, service: &str) -> Result<Vec<String>> {
        Ok(match self.dataplane {
            Dataplane::Pods => {
                self.proxy_daemonsets(namespace, service).await?.iter().map(ResourceExt::name_any).collect()
            }
            Dataplane::Agent => self.plans(namespace, service).await?.iter().map(ResourceExt::name_any).collect(),
        })
    }

    /// Where the Service is forwarded on the test's data plane, a pair per forwarder: each proxy
    /// pod's node ("" until it is placed) and whether it is Ready; or each node whose agent
    /// reports on the Service, and whether it forwards it.
    pub async fn forwarding(&self, namespace: &str, service: &str) -> Result<Vec<(String, bool)>> {
        if self.dataplane == Dataplane::Pods {
            let pods = self.proxy_pods(namespace, service).await?;
            let node = |pod: &Pod| pod.spec.as_ref().and_then(|spec| spec.node_name.clone()).unwrap_or_default();
            return Ok(pods.iter().map(|pod| (node(pod), pod_is_ready(pod))).collect());
        }
        let install = names::install_id(names::DEFAULT_LOAD_BALANCER_CLASS);
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let reports = api.list(&ListParams::default().labels(&agent::report_selector(&install))).await?.items;
        let wanted = format!("{namespace}/{service}");
        let mut forwarding = Vec::new();
        for report in reports {
            let name = report.name_any();
            let node = name.strip_prefix(&format!("{}.", agent::AGENT)).unwrap_or(&name).to_string();
            let entries = hostlb_contract::agent::read_report(report.data.as_ref().unwrap_or(&BTreeMap::new()));
            let entry = entries.into_values().find(|entry| entry.service == wanted);
            forwarding.extend(entry.map(|entry| (node.clone(), entry.forwarding)));
        }
        Ok(forwarding)
    }

    /// The (port, protocol) pairs the Service's forwarding claims on the test's data plane, sorted:
    /// its proxy DaemonSet's host ports, or its plan's ports.
    pub async fn claimed_ports(&self, namespace: &str, service: &str) -> Result<Vec<(i32, String)>> {
        match self.dataplane {
            Dataplane::Pods => host_ports_of(&proxy_daemonset(self, namespace, service).await?),
            Dataplane::Agent => {
                let mut ports = hostlb_contract::agent::plan_ports(self.plan(namespace, service).await?.data.as_ref());
                ports.sort();
                Ok(ports)
            }
        }
    }

    /// The nodes the Service's forwarding is wanted on: as its DaemonSet's status counts them, or
    /// as its plan lists them.
    pub async fn nodes_wanted(&self, namespace: &str, service: &str) -> Result<usize> {
        match self.dataplane {
            Dataplane::Pods => {
                let daemonset = proxy_daemonset(self, namespace, service).await?;
                let scheduled = daemonset.status.map_or(0, |status| status.desired_number_scheduled);
                Ok(usize::try_from(scheduled).unwrap_or_default())
            }
            Dataplane::Agent => {
                Ok(hostlb_contract::agent::plan_nodes(self.plan(namespace, service).await?.data.as_ref()).count())
            }
        }
    }

    /// A mark that changes with each change hostlb makes to the Service's forwarding: its
    /// DaemonSet's generation, or its plan's resource version.
    pub async fn forwarding_revision(&self, namespace: &str, service: &str) -> Result<String> {
        Ok(match self.dataplane {
            Dataplane::Pods => {
                let generation = proxy_daemonset(self, namespace, service).await?.metadata.generation;
                generation.unwrap_or_default().to_string()
            }
            Dataplane::Agent => self.plan(namespace, service).await?.resource_version().unwrap_or_default(),
        })
    }

    /// The pods that forward the Service on the test's data plane: its proxy pods, or the node
    /// agents, which forward every Service.
    pub async fn forwarding_pods(&self, namespace: &str, service: &str) -> Result<Vec<Pod>> {
        match self.dataplane {
            Dataplane::Pods => self.proxy_pods(namespace, service).await,
            Dataplane::Agent => self.agent_pods().await,
        }
    }

    /// The node agents' pods.
    pub async fn agent_pods(&self) -> Result<Vec<Pod>> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
        let selector = format!("{}={}", names::LABEL_COMPONENT, agent::COMPONENT_AGENT);
        Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
    }

    /// The name of the DaemonSet whose pods forward the Service on the test's data plane.
    pub async fn forwarding_daemonset(&self, namespace: &str, service: &str) -> Result<String> {
        Ok(match self.dataplane {
            Dataplane::Pods => proxy_daemonset(self, namespace, service).await?.name_any(),
            Dataplane::Agent => agent::AGENT.to_string(),
        })
    }

    /// Every proxy DaemonSet, or every plan, of the test's data plane: its name, and the UID of
    /// the Service it serves.
    pub async fn forwarder_owners(&self) -> Result<Vec<(String, String)>> {
        let selector = ListParams::default().labels(names::LABEL_SERVICE_UID);
        Ok(match self.dataplane {
            Dataplane::Pods => served_uids(&self.daemonsets().list(&selector).await?.items),
            Dataplane::Agent => {
                let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), SYSTEM_NAMESPACE);
                served_uids(&api.list(&selector).await?.items)
            }
        })
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

    /// The Service's one plan.
    async fn plan(&self, namespace: &str, service: &str) -> Result<ConfigMap> {
        let mut plans = self.plans(namespace, service).await?;
        ensure!(plans.len() == 1, "{namespace}/{service} has {} plans", plans.len());
        Ok(plans.remove(0))
    }

    /// The client network namespace, the one place test traffic comes from.
    pub fn client(&self) -> Result<ClientNetns> {
        Ok(ClientNetns { netns: self.var("CLIENT_NETNS")?.into() })
    }

    /// Waits until the Service publishes exactly these addresses; returns how long that took.
    pub async fn wait_for_addresses(
        &self,
        namespace: &str,
        service: &str,
        expected: &[IpAddr],
        timeout: Duration,
    ) -> Result<Duration> {
        let api: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let expected: BTreeSet<IpAddr> = expected.iter().copied().collect();
        let started = Instant::now();
        let mut last = BTreeSet::new();
        while started.elapsed() < timeout {
            last = published(&api.get(service).await?);
            if last == expected {
                return Ok(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("{namespace}/{service} publishes {last:?} after {timeout:?}, expected {expected:?}")
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

    /// How many times the Service's status was written, as its StatusUpdated Events count them.
    pub async fn status_writes(&self, namespace: &str, service: &str) -> Result<i32> {
        let events = self.events(namespace, service, Reason::StatusUpdated).await?;
        Ok(events.iter().map(|event| event.series.as_ref().map_or(1, |series| series.count)).sum())
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

/// The data plane the suite runs on (`pods`, `agent`); proxy pods when unset, whatever an
/// earlier test left the controller on.
pub const DATAPLANE_ENV: &str = "HOSTLB_E2E_DATAPLANE";

/// The cluster, on the data plane `DATAPLANE_ENV` asks for, a fresh namespace for the test, and
/// the nodes.
pub async fn setup(test: &str) -> Result<(Cluster, TestNamespace, Nodes)> {
    setup_on(test, Dataplane::of_suite()?).await
}

/// `setup` on the data plane `mode`.
pub async fn setup_on(test: &str, mode: Dataplane) -> Result<(Cluster, TestNamespace, Nodes)> {
    let mut cluster = Cluster::connect().await?;
    cluster.dataplane = mode;
    use_dataplane(&cluster, mode).await?;
    if mode == Dataplane::Agent {
        // An earlier test may have left the agents rolling, or not yet made.
        let agents = format!("daemonset/{}", agent::AGENT);
        let rolled = ["-n", SYSTEM_NAMESPACE, "rollout", "status", &agents, "--timeout=60s"];
        eventually(Duration::from_secs(180), || async { cluster.kubectl(&rolled).map(drop) }).await?;
    }
    let namespace = cluster.namespace(test).await?;
    let nodes = nodes(&cluster)?;
    Ok((cluster, namespace, nodes))
}

/// One TCP port of a Service, to the echo backend's HTTP port.
pub fn http(port: u16) -> Vec<(&'static str, &'static str, u16, u16)> {
    vec![("http", "TCP", port, ECHO_HTTP_PORT)]
}

/// Selects the proxy objects of the named Service.
/// Each object's name and the UID of the Service it serves, from hostlb's label.
fn served_uids<K: ResourceExt>(objects: &[K]) -> Vec<(String, String)> {
    let uid = |object: &K| object.labels().get(names::LABEL_SERVICE_UID).cloned().unwrap_or_default();
    objects.iter().map(|object| (object.name_any(), uid(object))).collect()
}

fn service_selector(namespace: &str, service: &str) -> String {
    format!("{}={namespace},{}={service}", names::LABEL_SERVICE_NAMESPACE, names::LABEL_SERVICE_NAME)
}

/// Sends requests from the client network namespace. Blocking: call it from
/// `eventually_blocking` or `spawn_blocking`.
#[derive(Clone)]
pub struct ClientNetns {
    netns: String,
}

impl ClientNetns {
    /// An HTTP GET from the client network namespace; returns the echo backend's answer.
    pub fn http_get(&self, address: IpAddr, port: u16) -> Result<EchoReply> {
        let url = match address {
            IpAddr::V4(v4) => format!("http://{v4}:{port}/"),
            IpAddr::V6(v6) => format!("http://[{v6}]:{port}/"),
        };
        let output =
            Command::new("ip").args(["netns", "exec", &self.netns, "curl", "-sS", "--max-time", "3", &url]).output()?;
        if !output.status.success() {
            bail!("GET {url} from the client failed: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        EchoReply::parse(&String::from_utf8_lossy(&output.stdout))
    }

    /// A UDP datagram from the client network namespace; returns the echo backend's answer.
    pub fn udp_echo(&self, address: IpAddr, port: u16) -> Result<EchoReply> {
        let target = match address {
            IpAddr::V4(v4) => format!("UDP4:{v4}:{port}"),
            IpAddr::V6(v6) => format!("UDP6:[{v6}]:{port}"),
        };
        let output = Command::new("ip")
            .args(["netns", "exec", &self.netns, "socat", "-T", "2", "-", &target])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("piped stdin").write_all(b"ping\n")?;
                child.wait_with_output()
            })?;
        let text = String::from_utf8_lossy(&output.stdout);
        if text.trim().is_empty() {
            bail!("no UDP answer from {target}: {}", String::from_utf8_lossy(&output.stderr).trim());
        }
        EchoReply::parse(&text)
    }
}

pub fn published(service: &Service) -> BTreeSet<IpAddr> {
    let ingress = service.status.as_ref().and_then(|s| s.load_balancer.as_ref()).and_then(|lb| lb.ingress.as_ref());
    ingress.into_iter().flatten().filter_map(|i| i.ip.as_deref()?.parse().ok()).collect()
}

fn parse_env(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("export ").unwrap_or(l).split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().trim_matches(|c| c == '"' || c == '\'').to_string()))
        .collect()
}

/// What the echo backend answers: which pod served, and the address it saw the request from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EchoReply {
    pub pod: String,
    pub node: String,
    pub client: IpAddr,
}

impl EchoReply {
    pub fn parse(text: &str) -> Result<Self> {
        let fields: BTreeMap<&str, &str> = text.split_whitespace().filter_map(|w| w.split_once('=')).collect();
        let field = |key: &str| fields.get(key).copied().ok_or_else(|| anyhow!("echo reply {text:?} has no {key}="));
        let client = field("client")?;
        let client_ip = client.rsplit_once(':').map_or(client, |(ip, _)| ip).trim_matches(|c| c == '[' || c == ']');
        Ok(EchoReply {
            pod: field("pod")?.into(),
            node: field("node")?.into(),
            client: client_ip.parse().with_context(|| format!("echo reply {text:?}: bad client address"))?,
        })
    }
}

/// A namespace of one test; deleted on drop with kubectl so that it works from a panic too.
pub struct TestNamespace {
    pub name: String,
    client: Client,
    kubectl: String,
    kubeconfig: String,
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let _ = Command::new(&self.kubectl)
            .env("KUBECONFIG", &self.kubeconfig)
            .args(["delete", "namespace", &self.name, "--wait=false"])
            .output();
    }
}

impl TestNamespace {
    pub fn services(&self) -> Api<Service> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// The echo backend: `replicas` pods labelled `app=<name>`, optionally pinned to one node.
    pub async fn echo_backend(&self, cluster: &Cluster, name: &str, replicas: i32, node: Option<&str>) -> Result<()> {
        let mut pod_spec = json!({
            "containers": [{
                "name": "echo",
                "image": cluster.var("ECHO_IMAGE")?,
                "imagePullPolicy": "IfNotPresent",
                "env": [
                    { "name": "POD_NAME", "valueFrom": { "fieldRef": { "fieldPath": "metadata.name" } } },
                    { "name": "NODE_NAME", "valueFrom": { "fieldRef": { "fieldPath": "spec.nodeName" } } }
                ],
                "ports": [
                    { "containerPort": ECHO_HTTP_PORT, "protocol": "TCP" },
                    { "containerPort": ECHO_UDP_PORT, "protocol": "UDP" }
                ],
                "readinessProbe": { "tcpSocket": { "port": ECHO_HTTP_PORT }, "periodSeconds": 1 }
            }],
            "terminationGracePeriodSeconds": 1
        });
        if let Some(node) = node {
            pod_spec["nodeSelector"] = json!({ "kubernetes.io/hostname": node });
        }
        let deployment: Deployment = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": {
                "replicas": replicas,
                "selector": { "matchLabels": { "app": name } },
                "template": { "metadata": { "labels": { "app": name } }, "spec": pod_spec }
            }
        }))?;
        self.deployments().create(&PostParams::default(), &deployment).await?;
        Ok(())
    }

    pub async fn scale(&self, deployment: &str, replicas: i32) -> Result<()> {
        let patch = json!({ "spec": { "replicas": replicas } });
        self.deployments().patch(deployment, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    /// Waits until the Deployment has exactly `replicas` ready pods.
    pub async fn wait_ready(&self, deployment: &str, replicas: i32, timeout: Duration) -> Result<()> {
        eventually(timeout, || async {
            let d = self.deployments().get(deployment).await?;
            let status = d.status.unwrap_or_default();
            let ready = status.ready_replicas.unwrap_or(0);
            let total = status.replicas.unwrap_or(0);
            if ready == replicas && total == replicas {
                Ok(())
            } else {
                bail!("{deployment}: {ready}/{total} ready, want {replicas}")
            }
        })
        .await
    }

    /// The echo backend `echo`, one replica on node-1, once Ready (within `timeout`).
    pub async fn echo_on_node1(&self, cluster: &Cluster, nodes: &Nodes, timeout: Duration) -> Result<()> {
        self.echo_backend(cluster, "echo", 1, Some(&nodes.node1)).await?;
        self.wait_ready("echo", 1, timeout).await
    }

    /// A LoadBalancer Service for the echo backend `app`; `ports` are (name, protocol, port, targetPort).
    pub async fn load_balancer(
        &self,
        name: &str,
        app: &str,
        ports: &[(&str, &str, u16, u16)],
        extra_spec: Value,
    ) -> Result<Service> {
        self.load_balancer_with_metadata(name, app, ports, extra_spec, json!({})).await
    }

    /// A LoadBalancer Service whose metadata (annotations, labels) is there from its creation on.
    pub async fn load_balancer_with_metadata(
        &self,
        name: &str,
        app: &str,
        ports: &[(&str, &str, u16, u16)],
        extra_spec: Value,
        extra_metadata: Value,
    ) -> Result<Service> {
        let ports: Vec<Value> = ports
            .iter()
            .map(|(port_name, protocol, port, target)| {
                json!({ "name": port_name, "protocol": protocol, "port": port, "targetPort": target })
            })
            .collect();
        let mut spec = json!({ "type": "LoadBalancer", "selector": { "app": app }, "ports": ports });
        if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra_spec.as_object()) {
            spec.extend(extra.clone());
        }
        let mut metadata = json!({ "name": name });
        if let (Some(metadata), Some(extra)) = (metadata.as_object_mut(), extra_metadata.as_object()) {
            metadata.extend(extra.clone());
        }
        let service: Service = serde_json::from_value(json!({ "metadata": metadata, "spec": spec }))?;
        Ok(self.services().create(&PostParams::default(), &service).await?)
    }

    /// A merge patch. The 1.20 API server's Service storage can answer a patch with 409 Conflict
    /// when another write (the controller's status or finalizer) lands at the same moment, even
    /// though the patch names no resourceVersion; a conflict is retried, as kubectl's patch does.
    /// The echo backend on node-1 and a LoadBalancer Service for it on `port`, once the Service
    /// publishes both nodes (each wait bounded by `timeout`).
    pub async fn echo_service(
        &self,
        cluster: &Cluster,
        nodes: &Nodes,
        name: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<()> {
        self.echo_on_node1(cluster, nodes, timeout).await?;
        self.load_balancer(name, "echo", &http(port), json!({})).await?;
        cluster.wait_for_addresses(&self.name, name, &[nodes.ip1, nodes.ip2], timeout).await?;
        Ok(())
    }

    pub async fn patch_service(&self, name: &str, patch: Value) -> Result<Service> {
        let mut attempts = 0;
        loop {
            match self.services().patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await {
                Err(kube::Error::Api(status)) if status.code == 409 && attempts < 5 => attempts += 1,
                patched => return Ok(patched?),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn delete_service(&self, name: &str) -> Result<()> {
        self.services().delete(name, &DeleteParams::default()).await?;
        Ok(())
    }
}

/// Retries `check` until it succeeds or `timeout` passes; the last error explains a failure.
pub async fn eventually<F, Fut, T>(timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let started = Instant::now();
    loop {
        match check().await {
            Ok(value) => return Ok(value),
            Err(error) if started.elapsed() >= timeout => {
                return Err(error.context(format!("still failing after {timeout:?}")))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
}

/// Runs a blocking check (a request from the client netns) until it succeeds.
pub async fn eventually_blocking<T: Send + 'static>(
    timeout: Duration,
    check: impl Fn() -> Result<T> + Send + Sync + Clone + 'static,
) -> Result<T> {
    eventually(timeout, || {
        let check = check.clone();
        async move { tokio::task::spawn_blocking(check).await? }
    })
    .await
}

/// The Service's one proxy DaemonSet.
pub async fn proxy_daemonset(cluster: &Cluster, ns: &str, service: &str) -> Result<DaemonSet> {
    let mut daemonsets = cluster.proxy_daemonsets(ns, service).await?;
    ensure!(daemonsets.len() == 1, "{ns}/{service} has {} proxy DaemonSets", daemonsets.len());
    Ok(daemonsets.remove(0))
}

/// The (hostPort, protocol) pairs the DaemonSet's pod template claims, sorted.
pub fn host_ports_of(daemonset: &DaemonSet) -> Result<Vec<(i32, String)>> {
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

/// Waits until the Service's forwarding claims `port` over TCP and every node it is wanted on
/// forwards it: with proxy pods, a ready pod of the current template on every node.
pub async fn wait_rolled_to(cluster: &Cluster, ns: &str, service: &str, port: i32, timeout: Duration) -> Result<()> {
    eventually(timeout, || async {
        let ports = cluster.claimed_ports(ns, service).await?;
        ensure!(ports == vec![(port, "TCP".to_string())], "the claimed ports are {ports:?}");
        if cluster.dataplane == Dataplane::Agent {
            let plan = cluster.plan(ns, service).await?;
            let planned: BTreeSet<&str> = hostlb_contract::agent::plan_nodes(plan.data.as_ref()).collect();
            let forwarding = cluster.forwarding(ns, service).await?;
            let forwarding: BTreeSet<&str> =
                forwarding.iter().filter(|(_, forwards)| *forwards).map(|(node, _)| node.as_str()).collect();
            ensure!(planned.is_subset(&forwarding), "forwarded on {forwarding:?} of {planned:?}");
            return Ok(());
        }
        let daemonset = proxy_daemonset(cluster, ns, service).await?;
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
    .await
}

/// What one path answered while a change went on: requests sent and lost, and the longest run of
/// failures, from the first failed request to the next answered one.
#[derive(Debug, Default, Clone, Copy)]
pub struct PathRecord {
    pub sent: u32,
    pub lost: u32,
    pub longest_gap: Duration,
}

impl std::fmt::Display for PathRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} sent, {} lost, longest gap {:.1}s", self.sent, self.lost, self.longest_gap.as_secs_f64())
    }
}

/// Sends a request to `target` every `every` until `stop` is set and the path answers again;
/// fails when it has not answered for `give_up`.
pub async fn record_path(
    client: ClientNetns,
    target: Target,
    every: Duration,
    stop: Arc<AtomicBool>,
    give_up: Duration,
) -> Result<PathRecord> {
    let mut record = PathRecord::default();
    let mut failing_since = None::<Instant>;
    while !stop.load(Ordering::Acquire) || failing_since.is_some() {
        let client = client.clone();
        let answered = tokio::task::spawn_blocking(move || client.http_get(target.0, target.1).is_ok()).await?;
        record.sent += 1;
        match (answered, failing_since) {
            (false, None) => failing_since = Some(Instant::now()),
            (true, Some(since)) => {
                record.longest_gap = record.longest_gap.max(since.elapsed());
                failing_since = None;
            }
            _ => {}
        }
        if !answered {
            record.lost += 1;
        }
        if failing_since.is_some_and(|since| since.elapsed() > give_up) {
            bail!("{}:{} has not answered for {give_up:?}", target.0, target.1);
        }
        tokio::time::sleep(every).await;
    }
    Ok(record)
}

/// An address and port requests go to.
pub type Target = (IpAddr, u16);

/// Requests on several paths at once, each recorded on its own, until `finish`.
pub struct Traffic {
    stop: Arc<AtomicBool>,
    recorders: Vec<(Target, tokio::task::JoinHandle<Result<PathRecord>>)>,
}

impl Traffic {
    pub fn start(client: &ClientNetns, targets: &[Target], every: Duration, give_up: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let recorders = targets
            .iter()
            .map(|&target| {
                let recording = record_path(client.clone(), target, every, stop.clone(), give_up);
                (target, tokio::spawn(recording))
            })
            .collect();
        Traffic { stop, recorders }
    }

    /// Each path's record, in the order of the targets.
    pub async fn finish(self) -> Result<Vec<(Target, PathRecord)>> {
        self.stop.store(true, Ordering::Release);
        let mut records = Vec::new();
        for (target, recorder) in self.recorders {
            records.push((target, recorder.await??));
        }
        Ok(records)
    }
}

/// Reads the Services' statuses every quarter second until `finish`, keeping every read that
/// published fewer addresses than `expected`.
pub struct StatusWatch {
    stop: Arc<AtomicBool>,
    watcher: tokio::task::JoinHandle<Result<StatusRecord>>,
}

/// Status reads and those that showed fewer addresses than expected, with when and what.
#[derive(Debug, Default)]
pub struct StatusRecord {
    pub reads: u32,
    pub shrunk: Vec<(Duration, String, BTreeSet<IpAddr>)>,
}

impl StatusWatch {
    pub fn start(services: Api<Service>, names: &[&str], expected: BTreeSet<IpAddr>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let names: Vec<String> = names.iter().map(|name| name.to_string()).collect();
        let stopped = stop.clone();
        let watcher = tokio::spawn(async move {
            let (started, mut record) = (Instant::now(), StatusRecord::default());
            while !stopped.load(Ordering::Acquire) {
                for name in &names {
                    // A read the API server does not answer within a second tells nothing.
                    if let Ok(Ok(service)) = tokio::time::timeout(Duration::from_secs(1), services.get(name)).await {
                        record.reads += 1;
                        let addresses = published(&service);
                        if !expected.is_subset(&addresses) {
                            record.shrunk.push((started.elapsed(), name.clone(), addresses));
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Ok(record)
        });
        StatusWatch { stop, watcher }
    }

    pub async fn finish(self) -> Result<StatusRecord> {
        self.stop.store(true, Ordering::Release);
        self.watcher.await?
    }
}

/// Waits until `address:port` answers a request from the client; returns the answer.
pub async fn answers(cluster: &Cluster, address: IpAddr, port: u16, timeout: Duration) -> Result<EchoReply> {
    let client = cluster.client()?;
    eventually_blocking(timeout, move || client.http_get(address, port)).await
}

/// Fails unless every request to `address:port` from the client fails for `during`.
pub async fn refuses(cluster: &Cluster, address: IpAddr, port: u16, during: Duration) -> Result<()> {
    let started = Instant::now();
    while started.elapsed() < during {
        let client = cluster.client()?;
        if let Ok(reply) = tokio::task::spawn_blocking(move || client.http_get(address, port)).await? {
            bail!("{address}:{port} answered ({reply:?}) but should refuse");
        }
    }
    Ok(())
}

/// Puts the controller on the data plane `mode` (`pods` or `agent`, as `--dataplane` spells
/// them) and waits for its rollout; nothing when it is there already. A reinstall of the
/// harness's install (`cluster.sh install`) puts it back on proxy pods.
pub async fn use_dataplane(cluster: &Cluster, mode: Dataplane) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let deployment = deployments.get("hostlb-controller").await?;
    let containers = deployment.spec.and_then(|spec| spec.template.spec).map(|spec| spec.containers);
    let env = containers.into_iter().flatten().flat_map(|container| container.env.unwrap_or_default());
    let current = env.filter(|var| var.name == "HOSTLB_DATAPLANE").find_map(|var| var.value);
    let mode = mode.name();
    if current.as_deref().unwrap_or("pods") == mode {
        return Ok(());
    }
    let deployment = ["-n", SYSTEM_NAMESPACE, "deployment/hostlb-controller"];
    cluster.kubectl(&[&["set", "env"], &deployment[..], &[&format!("HOSTLB_DATAPLANE={mode}")]].concat())?;
    cluster.kubectl(&[&["rollout", "status"], &deployment[..], &["--timeout=180s"]].concat())?;
    Ok(())
}

/// Prints a measured figure in one greppable form.
pub fn report_timing(what: &str, took: Duration) {
    println!("timing: {what}: {:.2}s", took.as_secs_f64());
}

/// A figure a test measured, printed, and for `make bench` also appended as a one-key JSON
/// object per line to the file `HOSTLB_FIGURES` names, so that the bench reports the figures of
/// the very tests that assert on them.
pub fn figure(key: &str, value: f64) -> Result<()> {
    println!("figure: {key} = {value}");
    let Ok(path) = std::env::var("HOSTLB_FIGURES") else { return Ok(()) };
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(&path).context(path.clone())?;
    writeln!(file, "{}", json!({ key: value })).context(path)?;
    Ok(())
}

/// The figures of traffic recorded on `Nodes::paths`, under `prefix`: on the published addresses
/// and on the proxy path, the requests sent and lost (both nodes together) and the longest gap
/// (the worse node's).
pub fn traffic_figures(prefix: &str, records: &[(Target, PathRecord)]) -> Result<()> {
    ensure!(records.len() == 4, "{} records, not one per path of Nodes::paths", records.len());
    for (kind, records) in [("published", &records[..2]), ("proxy_path", &records[2..])] {
        let sent: u32 = records.iter().map(|(_, record)| record.sent).sum();
        let lost: u32 = records.iter().map(|(_, record)| record.lost).sum();
        let gap = records.iter().map(|(_, record)| record.longest_gap).max().unwrap_or_default();
        figure(&format!("{prefix}_sent_{kind}"), sent.into())?;
        figure(&format!("{prefix}_lost_{kind}"), lost.into())?;
        figure(&format!("{prefix}_gap_ms_{kind}"), gap.as_millis() as f64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_reply_is_parsed_for_both_families() {
        let v4 = EchoReply::parse("pod=echo-1 node=node-1 client=10.250.0.2:51234\n").unwrap();
        assert_eq!(v4.client, "10.250.0.2".parse::<IpAddr>().unwrap());
        assert_eq!((v4.pod.as_str(), v4.node.as_str()), ("echo-1", "node-1"));
        let v6 = EchoReply::parse("pod=p node=n client=[fd00::2]:80").unwrap();
        assert_eq!(v6.client, "fd00::2".parse::<IpAddr>().unwrap());
        assert!(EchoReply::parse("garbage").is_err());
    }

    #[test]
    fn cluster_env_lines_are_parsed_with_or_without_export_and_quotes() {
        let env = parse_env("# comment\nKUBECONFIG=/a/b\nexport NODE1_IP=\"10.250.0.1\"\n\nX='y'\n");
        assert_eq!(env["KUBECONFIG"], "/a/b");
        assert_eq!(env["NODE1_IP"], "10.250.0.1");
        assert_eq!(env["X"], "y");
    }
}
