//! `make bench`'s controller part at scale, against the loopback control plane of
//! `e2e/bench/scale-apiserver.sh` (the real kube-scheduler and DaemonSet controller, no
//! kubelet): SIMULATED nodes, Node objects with a real node's pod budget (110 pods, two of them
//! the bench's kube-proxy and CNI pods), and a simulator here that plays their kubelets: it
//! renews each node's Lease every 10 s and walks each proxy pod the scheduler binds through a
//! kubelet's status writes to Ready. The controller runs as a process of its own. Rounds of 100,
//! 300 and 1,000 Services, each round's Services added to the earlier ones (they stay, idle),
//! then: one node's address changes, one node's kubelet falls silent, one node is offered more
//! Services than it has room for, and the controller restarts with everything in place. Writes
//! flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.
//!
//! Environment: HOSTLB_BENCH_STATE (the control plane's state folder: kubeconfigs, audit log),
//! HOSTLB_CONTROLLER_BINARY, HOSTLB_LB_IMAGE, HOSTLB_BENCH_LAGS (where every Service's status
//! lag goes, one line per Service and round).

#[path = "../bench/stats.rs"]
mod stats;
mod timeline;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use hostlb_e2e::cluster::SYSTEM_NAMESPACE;
use hostlb_e2e::status::published;
use hostlb_model::names;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Event, Namespace, Node, Pod, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{json, Value};
use stats::{kib_field, median, percentile, rounded};
use timeline::{ms, watch, Timeline};

/// Services per pool and nodes per pool. A node has room for 110 pods (the kubelet's default)
/// less its own kube-proxy and CNI pods, and each Service costs one proxy pod on every node of
/// its pool, so no node can serve 1,000 Services: each 100 get a pool of their own, as an
/// operator would have to do.
const POOL_SERVICES: usize = 100;
const POOL_NODES: usize = 10;
/// Services created per round; each round's Services take pools of their own, so the rounds
/// take 1, 3 and 10 pools and the nodes of all 14 stay.
const ROUNDS: [usize; 3] = [100, 300, 1000];
const POOLS: usize = (ROUNDS[0] + ROUNDS[1] + ROUNDS[2]) / POOL_SERVICES;
/// A node's pod budget and the pods on every node before hostlb's: kube-proxy and the CNI's.
const NODE_PODS: usize = 110;
const SYSTEM_PODS: [&str; 2] = ["kube-proxy", "cni"];
/// Services offered to one node of a pool of its own: more than its budget holds.
const SOLO_SERVICES: usize = 120;
const SOLO_POOL: &str = "solo";
const FIRST_PORT: usize = 20000;
/// Per round. On two busy cores the 1,000 round's 10,000 proxy pods took more than 10 minutes.
const TIMEOUT: Duration = Duration::from_secs(1500);
/// Requests in flight from this program at once (Service creation, the simulator's writes).
const IN_FLIGHT: usize = 32;
const IDLE_WINDOW: Duration = Duration::from_secs(30);
/// kubelet's defaults: a 40 s Lease renewed every quarter of it.
const NODE_LEASE_SECONDS: u64 = 40;
const NODE_LEASE_RENEWAL: Duration = Duration::from_secs(NODE_LEASE_SECONDS / 4);
const NODE_LEASE_NAMESPACE: &str = "kube-node-lease";
/// Status writes of the simulated kubelet per proxy pod (`kubelet_statuses`).
const KUBELET_WRITES: usize = 3;
/// How long the restarted controller must go without a reconcile to count as settled.
const SETTLED_QUIET: Duration = Duration::from_secs(5);
const CONTROLLER_USER: &str = "hostlb-controller";
/// The bench's own user, the simulator's writes among them.
const BENCH_USER: &str = "hostlb-bench";

type Results = BTreeMap<&'static str, f64>;

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/scale.json".into());
    let state = std::env::var("HOSTLB_BENCH_STATE").context("HOSTLB_BENCH_STATE is not set")?;
    let client = connect(&format!("{state}/admin.kubeconfig")).await?;
    let nodes = prepare(&client).await?;
    let kubelets = Kubelets::start(&client, &nodes);
    let mut controller = Controller::start(&state, "controller.log")?;
    let lags = std::env::var("HOSTLB_BENCH_LAGS").unwrap_or_else(|_| "target/bench/lags.tsv".into());
    // What was measured is written also when a later step fails, so that a slow machine still
    // reports its figures.
    let mut results = Results::new();
    let run = Run { client: &client, nodes: &nodes, kubelets: &kubelets, state: &state, audit: AuditLog::new(&state) };
    let measured = run.measure(&mut controller, &lags, &mut results).await;
    controller.stop();
    std::fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {out}");
    if measured.is_err() {
        // The state folder goes with the control plane; the controller's last words stay here.
        let log = std::fs::read_to_string(format!("{state}/{}", controller.log)).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("the controller's last log lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    measured
}

async fn connect(kubeconfig: &str) -> Result<Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(Client::try_from(config)?)
}

/// A simulated node: its name, pool and address.
#[derive(Clone, Debug)]
struct SimulatedNode {
    name: String,
    pool: String,
    index: usize,
}

impl SimulatedNode {
    fn address(&self, generation: u8) -> IpAddr {
        IpAddr::from([10, 200, generation, self.index as u8 + 1])
    }
}

fn pool_name(pool: usize) -> String {
    format!("pool-{pool}")
}

/// The nodes of every round's pools, then the solo node in a pool of its own.
fn simulated_nodes() -> Vec<SimulatedNode> {
    let pools = (0..POOLS * POOL_NODES).map(|index| pool_name(index / POOL_NODES));
    pools
        .chain([SOLO_POOL.to_string()])
        .enumerate()
        .map(|(index, pool)| SimulatedNode { name: format!("simulated-node-{index}"), pool, index })
        .collect()
}

/// The install's namespace and PriorityClass, and the simulated nodes with their Leases and
/// system pods.
async fn prepare(client: &Client) -> Result<Vec<SimulatedNode>> {
    let create = PostParams::default();
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": SYSTEM_NAMESPACE } }))?;
    Api::<Namespace>::all(client.clone()).create(&create, &namespace).await?;
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/priorityclass.yaml"))?;
    let name = manifest.lines().find_map(|line| line.trim().strip_prefix("name: ")).context("priorityclass.yaml")?;
    let class: PriorityClass = serde_json::from_value(json!({
        "metadata": { "name": name }, "value": 1000, "preemptionPolicy": "Never"
    }))?;
    Api::<PriorityClass>::all(client.clone()).create(&create, &class).await?;
    let nodes = simulated_nodes();
    futures::stream::iter(nodes.iter().map(Ok))
        .try_for_each_concurrent(IN_FLIGHT / 4, |node| prepare_node(client, node))
        .await?;
    Ok(nodes)
}

async fn prepare_node(client: &Client, node: &SimulatedNode) -> Result<()> {
    let create = PostParams::default();
    let nodes: Api<Node> = Api::all(client.clone());
    let labels = json!({ "kubernetes.io/hostname": node.name, "kubernetes.io/os": "linux", (names::POOL): node.pool });
    let object: Node = serde_json::from_value(json!({ "metadata": { "name": node.name, "labels": labels } }))?;
    nodes.create(&create, &object).await?;
    // The API server taints a new node not-ready until the node lifecycle controller, which
    // does not run here, sees it Ready.
    nodes.patch(&node.name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "taints": null } }))).await?;
    nodes.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(node_status(node.address(0)))).await?;
    let lease: Lease = serde_json::from_value(json!({
        "metadata": { "name": node.name },
        "spec": { "holderIdentity": node.name, "leaseDurationSeconds": NODE_LEASE_SECONDS, "renewTime": MicroTime(Timestamp::now()) }
    }))?;
    Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE).create(&create, &lease).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "kube-system");
    for (i, system) in SYSTEM_PODS.iter().enumerate() {
        // kube-proxy asks for nothing; a CNI daemon such as flannel asks for a little.
        let requests = if i == 0 { json!({}) } else { json!({ "cpu": "100m", "memory": "50Mi" }) };
        let name = format!("{system}-{}", node.name);
        let pod: Pod = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { "app": system } },
            "spec": { "nodeName": node.name, "hostNetwork": true, "priorityClassName": "system-node-critical",
                      "containers": [{ "name": system, "image": format!("{system}:bench"),
                                       "resources": { "requests": requests } }] }
        }))?;
        let pod = pods.create(&create, &pod).await?;
        let [.., ready] = kubelet_statuses(&pod, node.address(0), node.address(0), &now());
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(ready)).await?;
    }
    Ok(())
}

/// A node's status as its kubelet reports it, with the default pod budget and the cpu and
/// memory of a small node, which the proxy pods' requests never exhaust before the budget.
fn node_status(address: IpAddr) -> Value {
    let room = json!({ "cpu": "4", "memory": "16Gi", "pods": NODE_PODS.to_string(), "ephemeral-storage": "100Gi" });
    json!({ "status": {
        "capacity": room, "allocatable": room,
        "addresses": [{ "type": "InternalIP", "address": address.to_string() }],
        "conditions": [{ "type": "Ready", "status": "True", "reason": "KubeletReady",
                         "lastHeartbeatTime": now(), "lastTransitionTime": now() }]
    }})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The kubelets' part: node Leases renewed, and proxy pods the scheduler binds walked to Ready.
struct Kubelets {
    /// Nodes whose kubelet is made to stop renewing its Lease, as when it hangs.
    silent: Arc<Mutex<BTreeSet<String>>>,
    /// Each node's last Lease renewal written.
    renewed: Arc<Mutex<BTreeMap<String, Timestamp>>>,
}

impl Kubelets {
    fn start(client: &Client, nodes: &[SimulatedNode]) -> Kubelets {
        let kubelets = Kubelets { silent: Arc::default(), renewed: Arc::default() };
        let addresses: BTreeMap<String, IpAddr> =
            nodes.iter().map(|node| (node.name.clone(), node.address(0))).collect();
        tokio::spawn(run_pods(client.clone(), addresses));
        for (i, node) in nodes.iter().enumerate() {
            // Kubelets start at different times, so their renewals are spread over the interval.
            let offset = NODE_LEASE_RENEWAL.mul_f64(i as f64 / nodes.len() as f64);
            let (client, name) = (client.clone(), node.name.clone());
            let (silent, renewed) = (kubelets.silent.clone(), kubelets.renewed.clone());
            tokio::spawn(async move {
                let leases: Api<Lease> = Api::namespaced(client, NODE_LEASE_NAMESPACE);
                let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + offset, NODE_LEASE_RENEWAL);
                loop {
                    ticks.tick().await;
                    if silent.lock().unwrap().contains(&name) {
                        continue;
                    }
                    let renewal = Timestamp::now();
                    let patch = json!({ "spec": { "renewTime": MicroTime(renewal) } });
                    match leases.patch(&name, &PatchParams::default(), &Patch::Merge(patch)).await {
                        Ok(_) => {
                            renewed.lock().unwrap().insert(name.clone(), renewal);
                        }
                        Err(error) => eprintln!("simulator: renewing {name}'s Lease: {error}"),
                    }
                }
            });
        }
        kubelets
    }

    /// Stops or resumes the renewals of `node`'s Lease.
    fn silence(&self, node: &str, silent: bool) {
        let mut nodes = self.silent.lock().unwrap();
        if silent {
            nodes.insert(node.to_string());
        } else {
            nodes.remove(node);
        }
    }

    fn last_renewal(&self, node: &str) -> Option<Timestamp> {
        self.renewed.lock().unwrap().get(node).copied()
    }
}

/// Every proxy pod bound to a simulated node gets its kubelet's status writes, once.
async fn run_pods(client: Client, addresses: BTreeMap<String, IpAddr>) {
    let pods: Api<Pod> = Api::namespaced(client, SYSTEM_NAMESPACE);
    let mut seen = HashSet::new();
    let writes = Arc::new(tokio::sync::Semaphore::new(IN_FLIGHT));
    // Each proxy pod its own address from the pod network, as the CNI would give it.
    let mut pod_ips = (0u32..).map(|n| IpAddr::from((10 << 24 | 128 << 16 | n).to_be_bytes()));
    let mut events =
        std::pin::pin!(watcher(pods.clone(), watcher::Config::default()).default_backoff().applied_objects());
    while let Some(pod) = events.next().await {
        let pod = match pod {
            Ok(pod) => pod,
            Err(error) => {
                eprintln!("simulator: watch of pods: {error}");
                continue;
            }
        };
        let Some(node) = pod.spec.as_ref().and_then(|spec| spec.node_name.clone()) else { continue };
        if pod.metadata.deletion_timestamp.is_some() || !seen.insert(pod.uid().unwrap_or_default()) {
            continue;
        }
        let Some(address) = addresses.get(&node).copied() else { continue };
        let pod_ip = pod_ips.next().expect("endless");
        let (pods, writes) = (pods.clone(), writes.clone());
        tokio::spawn(async move {
            let (name, started) = (pod.name_any(), now());
            for step in 0..KUBELET_WRITES {
                tokio::time::sleep(kubelet_delay(&name, step)).await;
                let status = kubelet_statuses(&pod, address, pod_ip, &started)[step].take();
                let _permit = writes.acquire().await;
                if let Err(error) = pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await {
                    eprintln!("simulator: status of {name}: {error}");
                    return;
                }
            }
        });
    }
}

/// How long a kubelet takes before each of its status writes for a pod (`kubelet_statuses`):
/// 50 to 300 ms to pick the bound pod up, 300 to 1,200 ms to start its sandbox and run its
/// first container, 200 to 1,000 ms until the readiness probe passes, so 0.55 to 2.5 s in all.
/// Spread by a hash of the pod's name, so that a rerun sees the same spread.
fn kubelet_delay(pod: &str, step: usize) -> Duration {
    let (from, to) = [(50, 300), (300, 1200), (200, 1000)][step];
    let mut hasher = DefaultHasher::new();
    (pod, step).hash(&mut hasher);
    Duration::from_millis(from + hasher.finish() % (to - from))
}

/// The `KUBELET_WRITES` status writes a kubelet makes for a pod it started at `started`, in
/// order, as it would write them now: Pending with its first container (the init container, if
/// any) starting; Running, initialised, not Ready; Ready.
fn kubelet_statuses(pod: &Pod, host_ip: IpAddr, pod_ip: IpAddr, started: &str) -> [Value; KUBELET_WRITES] {
    let spec = pod.spec.clone().unwrap_or_default();
    let condition = |type_: &str, ready: bool, reason: &str| {
        let status = if ready { "True" } else { "False" };
        let reason = (!ready).then_some(reason);
        json!({ "type": type_, "status": status, "reason": reason, "lastTransitionTime": now() })
    };
    let container = |name: &str, image: &Option<String>, state: Value, ready: bool| {
        json!({ "name": name, "image": image, "imageID": "", "restartCount": 0, "ready": ready,
                "started": state.get("running").is_some(), "state": state })
    };
    let waiting = |reason: &str| json!({ "waiting": { "reason": reason } });
    let running = json!({ "running": { "startedAt": started } });
    let inits = spec.init_containers.unwrap_or_default();
    let has_init = !inits.is_empty();
    let init_statuses = |state: &Value| -> Vec<Value> {
        inits.iter().map(|c| container(&c.name, &c.image, state.clone(), !state["terminated"].is_null())).collect()
    };
    let main_statuses = |state: &Value, ready: bool| -> Vec<Value> {
        spec.containers.iter().map(|c| container(&c.name, &c.image, state.clone(), ready)).collect()
    };
    let done =
        json!({ "terminated": { "exitCode": 0, "reason": "Completed", "startedAt": started, "finishedAt": now() } });
    let status = |phase: &str, initialized: bool, ready: bool, inits: Vec<Value>, mains: Vec<Value>| {
        json!({ "status": {
            "phase": phase, "hostIP": host_ip.to_string(), "podIP": pod_ip.to_string(), "startTime": started,
            "conditions": [
                condition("Initialized", initialized, "ContainersNotInitialized"),
                condition("Ready", ready, "ContainersNotReady"),
                condition("ContainersReady", ready, "ContainersNotReady"),
                condition("PodScheduled", true, ""),
            ],
            "initContainerStatuses": inits, "containerStatuses": mains,
        }})
    };
    let first_main = if has_init { waiting("PodInitializing") } else { waiting("ContainerCreating") };
    [
        status("Pending", !has_init, false, init_statuses(&running), main_statuses(&first_main, false)),
        status("Running", true, false, init_statuses(&done), main_statuses(&running, false)),
        status("Running", true, true, init_statuses(&done), main_statuses(&running, true)),
    ]
}

/// hostlb-controller as a process of this program's, so that its memory and CPU time can be read.
struct Controller {
    child: Child,
    /// Its log's name in the state folder.
    log: &'static str,
}

impl Controller {
    fn start(state: &str, log: &'static str) -> Result<Controller> {
        let binary = std::env::var("HOSTLB_CONTROLLER_BINARY").context("HOSTLB_CONTROLLER_BINARY is not set")?;
        let image = std::env::var("HOSTLB_LB_IMAGE").unwrap_or_else(|_| "localhost/hostlb/lb:dev".into());
        // Written into Local Services' proxy pods only; the bench's Services are Cluster.
        let controller_image = "localhost/hostlb/controller:dev";
        let log_file = std::fs::File::create(format!("{state}/{log}"))?;
        let mut command = Command::new(binary);
        // SAFETY: one system call between fork and exec. The controller ends with this program,
        // however this program ends.
        unsafe {
            command.pre_exec(|| Ok(nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGTERM)?));
        }
        let child = command
            .args(["--lb-image", &image, "--controller-image", controller_image])
            .args(["--http-address", "127.0.0.1:18090", "--instance", "bench"])
            .env("KUBECONFIG", format!("{state}/controller.kubeconfig"))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting hostlb-controller")?;
        Ok(Controller { child, log })
    }

    /// Waits until it reports itself ready: every watch has listed.
    async fn wait_ready(&self) -> Result<()> {
        let started = Instant::now();
        while controller_get("readyz").is_err() {
            if started.elapsed() > Duration::from_secs(60) {
                bail!("hostlb-controller is not ready after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    fn proc_file(&self, file: &str) -> Result<String> {
        Ok(std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))?)
    }

    /// Its peak resident memory so far (VmHWM), MiB.
    fn peak_rss_mib(&self) -> Result<f64> {
        let status = self.proc_file("status")?;
        let kib = kib_field(&status, "VmHWM:").context("VmHWM")?;
        Ok(kib / 1024.0)
    }

    /// User and system CPU time so far, in seconds (clock ticks of 1/100 s).
    fn cpu_s(&self) -> Result<f64> {
        let stat = self.proc_file("stat")?;
        // Fields after the command name, which ends at the last ')': utime and stime are 14th and 15th.
        let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        Ok(ticks / 100.0)
    }

    fn stop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let _ = self.child.wait();
    }
}

/// The controller's answer at one of its HTTP paths.
fn controller_get(path: &str) -> Result<String> {
    let url = format!("http://127.0.0.1:18090/{path}");
    let output = Command::new("curl").args(["-fsS", "--max-time", "3", &url]).output()?;
    ensure!(output.status.success(), "the controller's {path}: {}", String::from_utf8_lossy(&output.stderr));
    Ok(String::from_utf8(output.stdout)?)
}

/// The controller's writes (create, update, patch, delete) in the audit log.
struct AuditLog {
    path: String,
}

impl AuditLog {
    fn new(state: &str) -> AuditLog {
        AuditLog { path: format!("{state}/audit.log") }
    }

    fn end(&self) -> Result<u64> {
        Ok(std::fs::metadata(&self.path)?.len())
    }

    /// The writes the API server answered from `offset` on, one audit event each.
    fn answered_since(&self, offset: u64) -> Result<impl Iterator<Item = Result<Value>>> {
        let mut file = std::fs::File::open(&self.path)?;
        file.seek(SeekFrom::Start(offset))?;
        let events = BufReader::new(file).lines().map(|line| Ok(serde_json::from_str::<Value>(&line?)?));
        Ok(events.filter(|event| event.as_ref().map_or(true, |event| event["stage"] == "ResponseComplete")))
    }

    /// From `offset` on: when the controller's last status write of a Service was answered.
    fn last_controller_status_write_since(&self, offset: u64) -> Result<Option<Timestamp>> {
        let mut last = None;
        for event in self.answered_since(offset)? {
            let event = event?;
            let object = &event["objectRef"];
            if event["user"]["username"] == CONTROLLER_USER
                && object["resource"] == "services"
                && object["subresource"] == "status"
            {
                last = last.max(Some(audit_time(&event, "stageTimestamp")?));
            }
        }
        Ok(last)
    }

    /// From `offset` on: the writes for Services and their proxies, and apart from them the
    /// renewals of the controller's own Lease, which go on while it leads whatever happens.
    fn controller_writes_since(&self, offset: u64) -> Result<ControllerWrites> {
        let mut writes = ControllerWrites::default();
        for event in self.answered_since(offset)? {
            let event = event?;
            if event["user"]["username"] == CONTROLLER_USER {
                let object = &event["objectRef"];
                if object["resource"] == "leases" {
                    writes.lease += 1;
                } else {
                    writes.services += 1;
                    let what = [&event["verb"], &object["resource"], &object["subresource"]]
                        .map(|field| field.as_str().unwrap_or_default().to_string())
                        .join(" ");
                    *writes.kinds.entry(what.trim_end().to_string()).or_default() += 1;
                }
            }
        }
        Ok(writes)
    }
}

/// Where a round's status lags go, per Service (ms), from the API server's own clock.
#[derive(Debug, Default)]
struct StatusLagParts {
    /// From the simulator's write that made the Service's last proxy pod Ready to the
    /// controller's next status write of the Service, each as the API server received it: the
    /// pod write itself, its watch delivery to the controller, the controller's queue and the
    /// reconcile. (Watchers can hear of a write before its answer is logged, so the answer is no
    /// better a start.)
    reaction: Vec<f64>,
    /// That status write, from received to answered: the API server's and etcd's part.
    write: Vec<f64>,
    /// The baseline of `reaction`: from the same pod write (received) to this program's own
    /// watch showing the pod Ready, what any controller waits for before it can act.
    pod_watch: Vec<f64>,
}

impl AuditLog {
    /// `daemonsets`: the round's proxy DaemonSet names, each with its Service's name;
    /// `seen_ready`: when this program's watch saw each pod Ready.
    fn status_lag_parts(
        &self,
        offset: u64,
        namespace: &str,
        daemonsets: &BTreeMap<String, String>,
        seen_ready: &BTreeMap<String, Timestamp>,
    ) -> Result<StatusLagParts> {
        // Per pod the write that made it Ready (the simulated kubelet's last), with its Service;
        // per Service its status writes in order.
        let mut pod_ready: BTreeMap<String, (String, Written)> = BTreeMap::new();
        let mut status_writes: BTreeMap<String, Vec<Written>> = BTreeMap::new();
        for event in self.answered_since(offset)? {
            let event = event?;
            let object = &event["objectRef"];
            let succeeded = event["responseStatus"]["code"].as_u64().is_some_and(|code| (200..300).contains(&code));
            if !succeeded || object["subresource"] != "status" {
                continue;
            }
            let written = Written {
                received: audit_time(&event, "requestReceivedTimestamp")?,
                answered: audit_time(&event, "stageTimestamp")?,
            };
            let name = object["name"].as_str().unwrap_or_default().to_string();
            let user = &event["user"]["username"];
            if user == BENCH_USER && object["resource"] == "pods" && event["verb"] == "patch" {
                // A pod's name is its DaemonSet's and a random suffix.
                let service = name.rsplit_once('-').and_then(|(daemonset, _)| daemonsets.get(daemonset));
                if let Some(service) = service {
                    pod_ready.insert(name, (service.clone(), written));
                }
            } else if user == CONTROLLER_USER && object["resource"] == "services" && object["namespace"] == namespace {
                status_writes.entry(name).or_default().push(written);
            }
        }
        let mut last_ready: BTreeMap<String, (String, Written)> = BTreeMap::new();
        for (pod, (service, ready)) in pod_ready {
            let last = last_ready.entry(service).or_insert((pod.clone(), ready));
            if ready.received > last.1.received {
                *last = (pod, ready);
            }
        }
        let ms = |from: Timestamp, to: Timestamp| from.duration_until(to).as_secs_f64() * 1e3;
        let mut parts = StatusLagParts::default();
        for (service, (pod, ready)) in &last_ready {
            let writes = status_writes.get(service).map(Vec::as_slice).unwrap_or_default();
            let status = writes
                .iter()
                .find(|status| status.received >= ready.received)
                .with_context(|| format!("{namespace}/{service}: no status write after its last pod was Ready"))?;
            parts.reaction.push(ms(ready.received, status.received));
            parts.write.push(ms(status.received, status.answered));
            let seen = seen_ready.get(pod).with_context(|| format!("pod {pod} was not seen Ready"))?;
            parts.pod_watch.push(ms(ready.received, *seen));
        }
        ensure!(
            last_ready.len() == daemonsets.len(),
            "the audit log has Ready pods of only {} of {} Services",
            last_ready.len(),
            daemonsets.len()
        );
        parts.reaction.sort_by(f64::total_cmp);
        parts.write.sort_by(f64::total_cmp);
        parts.pod_watch.sort_by(f64::total_cmp);
        Ok(parts)
    }
}

/// When this program saw each proxy pod of a round Ready, by the wall clock.
fn seen_ready(timeline: &Timeline) -> BTreeMap<String, Timestamp> {
    let (now, wall_now) = (Instant::now(), Timestamp::now());
    let wall = |seen: Instant| wall_now.checked_sub(now.duration_since(seen)).ok();
    let timeline = timeline.lock().unwrap();
    let pods = timeline.values().flat_map(|steps| steps.pods.iter());
    pods.filter_map(|(pod, steps)| Some((pod.clone(), wall(steps.ready?)?))).collect()
}

/// One of an audit event's times.
fn audit_time(event: &Value, field: &str) -> Result<Timestamp> {
    let text = event[field].as_str().with_context(|| format!("an audit event without {field}"))?;
    Ok(text.parse()?)
}

/// When the API server received a write and when it answered it.
#[derive(Clone, Copy, Debug)]
struct Written {
    received: Timestamp,
    answered: Timestamp,
}

/// The proxy DaemonSet names of a namespace's Services, each with its Service's name.
async fn proxy_daemonsets(client: &Client, namespace: &str) -> Result<BTreeMap<String, String>> {
    let services = Api::<Service>::namespaced(client.clone(), namespace).list(&Default::default()).await?.items;
    Ok(services
        .iter()
        .map(|service| {
            let name = service.name_any();
            (names::forwarding_name(&name, &service.uid().unwrap_or_default()), name)
        })
        .collect())
}

#[derive(Debug, Default)]
struct ControllerWrites {
    services: usize,
    /// The `services` writes by verb, resource and subresource.
    kinds: BTreeMap<String, usize>,
    lease: usize,
}

/// Creates `count` LoadBalancer Services in `namespace`, the `i`th on port `first_port + i` and
/// in pool `pool(i)`, and notes each creation in `timeline`.
async fn create_services(
    client: &Client,
    namespace: &str,
    count: usize,
    first_port: usize,
    pool: impl Fn(usize) -> String,
    timeline: &Timeline,
) -> Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    futures::stream::iter(0..count)
        .map(|i| Ok((i, pool(i))))
        .try_for_each_concurrent(IN_FLIGHT, |(i, pool)| {
            let (services, timeline) = (services.clone(), timeline.clone());
            async move {
                let service_name = format!("lb-{i}");
                let service: Service = serde_json::from_value(json!({
                    "metadata": { "name": service_name, "labels": { (names::POOL): pool } },
                    "spec": { "type": "LoadBalancer", "selector": { "app": "none" },
                              "ports": [{ "protocol": "TCP", "port": first_port + i, "targetPort": 8080 }] }
                }))?;
                services.create(&PostParams::default(), &service).await?;
                timeline::first(&mut timeline.lock().unwrap().entry(service_name).or_default().created);
                anyhow::Ok(())
            }
        })
        .await
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    Ok(())
}

/// Creates `count` LoadBalancer Services from port `first_port` on in a new namespace, each
/// `POOL_SERVICES` in a pool of their own from `first_pool` on, and waits until every status
/// has all nodes of its pool; returns the namespace's timeline and when the first Service was
/// created.
async fn round(
    client: &Client,
    name: &str,
    count: usize,
    first_port: usize,
    first_pool: usize,
) -> Result<(Timeline, Instant)> {
    create_namespace(client, name).await?;
    let timeline = watch(client, name, POOL_NODES);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let started = Instant::now();
    let pool = |i: usize| pool_name(first_pool + i / POOL_SERVICES);
    create_services(client, name, count, first_port, pool, &timeline).await?;
    loop {
        let finished = timeline.lock().unwrap().values().filter(|s| s.created.is_some() && s.status.is_some()).count();
        if finished == count {
            return Ok((timeline, started));
        }
        if started.elapsed() > TIMEOUT {
            bail!("{name}: only {finished} of {count} Services have all {POOL_NODES} nodes after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From its last proxy pod Ready to its status written, per Service (ms), sorted.
fn lags(timeline: &Timeline) -> Result<Vec<f64>> {
    let timeline = timeline.lock().unwrap();
    let mut lags = Vec::new();
    for (name, steps) in timeline.iter() {
        let (Some(ready), Some(status)) = (steps.last_pod(POOL_NODES, |p| p.ready), steps.status) else {
            bail!("{name}: no Ready pods or status seen");
        };
        lags.push(ms(ready, status));
    }
    lags.sort_by(f64::total_cmp);
    Ok(lags)
}

/// From `started` to the last status complete, and to the last proxy pod Ready (s).
fn ready_times(timeline: &Timeline, started: Instant) -> Result<(f64, f64)> {
    let timeline = timeline.lock().unwrap();
    let status = timeline.values().filter_map(|steps| steps.status).max().context("no status")?;
    let pods = timeline.values().flat_map(|steps| steps.pods.values());
    let pod_ready = pods.filter_map(|pod| pod.ready).max().context("no pod Ready")?;
    Ok((ms(started, status) / 1e3, ms(started, pod_ready) / 1e3))
}

/// The Services of `namespace` in `pool`, from the API server's watch cache.
async fn pool_services(client: &Client, namespace: &str, pool: &str) -> Result<Vec<Service>> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let selector = format!("{}={pool}", names::POOL);
    Ok(services.list(&ListParams::default().labels(&selector).match_any()).await?.items)
}

/// The reason of hostlb's condition on a Service, and its message.
fn ready_condition(service: &Service) -> Option<(String, String)> {
    let conditions = service.status.as_ref()?.conditions.as_ref()?;
    let ready = conditions.iter().find(|condition| condition.type_ == names::CONDITION_READY)?;
    Some((ready.reason.clone(), ready.message.clone()))
}

/// The controller's reconciles so far (`hostlb_reconciliations_total`).
fn reconciliations() -> Result<u64> {
    let metrics = controller_get("metrics")?;
    let line = metrics.lines().find_map(|line| line.strip_prefix("hostlb_reconciliations_total "));
    Ok(line.context("hostlb_reconciliations_total")?.trim().parse()?)
}

/// What one run of the bench works with.
struct Run<'a> {
    client: &'a Client,
    nodes: &'a [SimulatedNode],
    kubelets: &'a Kubelets,
    state: &'a str,
    audit: AuditLog,
}

impl Run<'_> {
    async fn measure(&self, controller: &mut Controller, lags_path: &str, results: &mut Results) -> Result<()> {
        let (client, audit) = (self.client, &self.audit);
        controller.wait_ready().await?;
        results.insert("ctl_patch_rtt_ms", rounded(patch_rtt(client).await?, 2));

        // Every Service's lag, by round, for the plot of their distribution.
        let mut lag_table = String::from("services\tlag_ms\n");
        let (mut first_port, mut first_pool) = (FIRST_PORT, 0);
        for count in ROUNDS {
            let cpu_before = controller.cpu_s()?;
            let audit_offset = audit.end()?;
            let namespace = format!("scale-{count}");
            let (timeline, started) = round(client, &namespace, count, first_port, first_pool).await?;
            let cpu = controller.cpu_s()? - cpu_before;
            first_port += count;
            first_pool += count / POOL_SERVICES;
            let (ready_s, pods_ready_s) = ready_times(&timeline, started)?;
            let lags = lags(&timeline)?;
            eprintln!(
                "{count} Services: every status complete after {ready_s:.1} s, every proxy pod Ready after \
                 {pods_ready_s:.1} s; lag p50 {:.0} ms p99 {:.0} ms, {cpu:.1} CPU s",
                percentile(&lags, 0.5),
                percentile(&lags, 0.99)
            );
            let daemonsets = proxy_daemonsets(client, &namespace).await?;
            let parts = audit.status_lag_parts(audit_offset, &namespace, &daemonsets, &seen_ready(&timeline))?;
            let p50_p99 =
                |times: &[f64]| format!("p50 {:.1} ms p99 {:.1} ms", percentile(times, 0.5), percentile(times, 0.99));
            eprintln!(
                "{count} Services, by the API server's clock: last pod Ready write to status write received {}; \
                 status write answered {}; pod Ready write to this bench's watch showing it {}",
                p50_p99(&parts.reaction),
                p50_p99(&parts.write),
                p50_p99(&parts.pod_watch)
            );
            lag_table.extend(lags.iter().map(|lag| format!("{count}\t{lag:.1}\n")));
            std::fs::write(lags_path, &lag_table)?;
            let (ready_key, pods_key) = match count {
                100 => ("ctl_ready_s_100", "ctl_pods_ready_s_100"),
                300 => ("ctl_ready_s_300", "ctl_pods_ready_s_300"),
                _ => ("ctl_ready_s_1000", "ctl_pods_ready_s_1000"),
            };
            results.insert(ready_key, rounded(ready_s, 2));
            results.insert(pods_key, rounded(pods_ready_s, 2));
            if count == ROUNDS[ROUNDS.len() - 1] {
                results.insert("ctl_status_lag_p50_ms", rounded(percentile(&lags, 0.5), 1));
                results.insert("ctl_status_lag_p99_ms", rounded(percentile(&lags, 0.99), 1));
                results.insert("ctl_status_reaction_p50_ms", rounded(percentile(&parts.reaction, 0.5), 1));
                results.insert("ctl_status_reaction_p99_ms", rounded(percentile(&parts.reaction, 0.99), 1));
                results.insert("ctl_status_write_p50_ms", rounded(percentile(&parts.write, 0.5), 1));
                results.insert("ctl_status_write_p99_ms", rounded(percentile(&parts.write, 0.99), 1));
                results.insert("ctl_pod_watch_p50_ms", rounded(percentile(&parts.pod_watch, 0.5), 1));
                results.insert("ctl_pod_watch_p99_ms", rounded(percentile(&parts.pod_watch, 0.99), 1));
                results.insert("ctl_cpu_s_1000", rounded(cpu, 2));
                results.insert("ctl_rss_mib_1000", rounded(controller.peak_rss_mib()?, 1));
            }
        }

        // Nothing changes but the kubelets' Lease renewals: the controller should not write at all.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let offset = audit.end()?;
        tokio::time::sleep(IDLE_WINDOW).await;
        let idle = audit.controller_writes_since(offset)?;
        let per_minute = |writes: usize| rounded(writes as f64 * 60.0 / IDLE_WINDOW.as_secs_f64(), 1);
        results.insert("ctl_idle_writes_per_min", per_minute(idle.services));
        results.insert("ctl_idle_lease_writes_per_min", per_minute(idle.lease));

        // One more Service, alone, in the first pool: every write the controller makes for it
        // until it settles.
        let offset = audit.end()?;
        let (timeline, _) = round(client, "scale-one", 1, first_port, 0).await?;
        first_port += 1;
        tokio::time::sleep(Duration::from_secs(3)).await;
        let one = audit.controller_writes_since(offset)?;
        // The same parts for a Service alone on a control plane with nothing else to do.
        let alone = audit.status_lag_parts(
            offset,
            "scale-one",
            &proxy_daemonsets(client, "scale-one").await?,
            &seen_ready(&timeline),
        )?;
        eprintln!("scale: one more Service, alone: {alone:?}");
        results.insert("ctl_status_reaction_alone_ms", rounded(alone.reaction[0], 1));
        results.insert("ctl_pod_watch_alone_ms", rounded(alone.pod_watch[0], 1));
        eprintln!("scale: writes for one more Service: {one:?}");
        results.insert("ctl_writes_per_service", one.services as f64);
        let events =
            one.kinds.iter().filter(|(kind, _)| kind.ends_with(" events")).map(|(_, count)| count).sum::<usize>();
        results.insert("ctl_event_writes_per_service", events as f64);

        // Two nodes of the last round's first pool: one changes its address, one falls silent.
        let namespace = format!("scale-{}", ROUNDS[ROUNDS.len() - 1]);
        let pool_start = (ROUNDS[0] + ROUNDS[1]) / POOL_SERVICES * POOL_NODES;
        let moved = self.node_address_change(&self.nodes[pool_start], &namespace).await?;
        results.insert("ctl_node_addr_change_s", rounded(moved, 2));
        let failover = self.node_lease_failover(&self.nodes[pool_start + 1], &namespace).await?;
        results.insert("ctl_node_lease_failover_s", rounded(failover, 2));

        let served = self.node_max_services(first_port).await?;
        results.insert("node_max_services", served as f64);

        self.restart(controller, ROUNDS.iter().sum::<usize>() + 1 + SOLO_SERVICES, results).await?;
        eprintln!("scale: {results:?}");
        Ok(())
    }

    /// One node's address changes: seconds until every Service of its pool publishes the new
    /// one. Lists of the Services from the API server's watch cache, a second apart, tell when
    /// all show it; the audit log then tells when the controller's last status write was
    /// answered. (Twice a watch of them, even one listed just before the change, stalled for
    /// minutes after the burst of 1,000 status updates; lists in a tight loop slowed the
    /// controller's writes.)
    async fn node_address_change(&self, node: &SimulatedNode, namespace: &str) -> Result<f64> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let (old, new) = (node.address(0), node.address(1));
        let offset = self.audit.end()?;
        let changed_at = Timestamp::now();
        nodes.patch_status(&node.name, &PatchParams::default(), &Patch::Merge(node_status(new))).await?;
        let moved = |service: &Service| {
            let shown = published(service);
            shown.contains(&new) && !shown.contains(&old)
        };
        self.wait_pool(node, namespace, moved, "its new address").await?;
        let last =
            self.audit.last_controller_status_write_since(offset)?.context("no status write after the change")?;
        Ok(changed_at.duration_until(last).as_secs_f64())
    }

    /// One node's kubelet stops renewing its Lease while its Node stays Ready, as when the
    /// kubelet hangs: seconds from its last renewal to the controller's last status write that
    /// leaves it out of its pool's Services. It renews again before this returns, and is back
    /// in them all. The floor is the renewal interval and the controller's grace, 20 s by
    /// default.
    async fn node_lease_failover(&self, node: &SimulatedNode, namespace: &str) -> Result<f64> {
        let address = node.address(0);
        let offset = self.audit.end()?;
        self.kubelets.silence(&node.name, true);
        self.wait_pool(node, namespace, |service| !published(service).contains(&address), "it gone").await?;
        let last = self.audit.last_controller_status_write_since(offset)?.context("no status write after silence")?;
        // Read only now: a renewal may have been under way when the silence began.
        let renewed = self.kubelets.last_renewal(&node.name).context("its Lease was never renewed")?;
        self.kubelets.silence(&node.name, false);
        self.wait_pool(node, namespace, |service| published(service).contains(&address), "it back").await?;
        Ok(renewed.duration_until(last).as_secs_f64())
    }

    /// Waits until every Service of `node`'s pool in `namespace` shows `what`, listing them a
    /// second apart.
    async fn wait_pool(
        &self,
        node: &SimulatedNode,
        namespace: &str,
        shows: impl Fn(&Service) -> bool,
        what: &str,
    ) -> Result<()> {
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let services = pool_services(self.client, namespace, &node.pool).await?;
            ensure!(!services.is_empty(), "no Services in {}", node.pool);
            if services.iter().all(&shows) {
                return Ok(());
            }
            if started.elapsed() > TIMEOUT {
                bail!("not every Service of {} shows {} with {what} after {TIMEOUT:?}", node.pool, node.name);
            }
        }
    }

    /// One node, alone in its pool, is offered more Services than its pod budget holds: how
    /// many it serves once the scheduler has placed what fits. The others should say why.
    async fn node_max_services(&self, first_port: usize) -> Result<usize> {
        let node = self.nodes.iter().find(|node| node.pool == SOLO_POOL).context("no solo node")?;
        let namespace = "scale-solo";
        create_namespace(self.client, namespace).await?;
        let timeline = watch(self.client, namespace, 1);
        create_services(self.client, namespace, SOLO_SERVICES, first_port, |_| SOLO_POOL.into(), &timeline).await?;
        let started = Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let services = pool_services(self.client, namespace, SOLO_POOL).await?;
            let (served, unserved): (Vec<&Service>, Vec<&Service>) =
                services.iter().partition(|service| published(service).contains(&node.address(0)));
            // Pending: hostlb waits for pods it has no news of yet; any other reason is its word.
            let explained: Vec<(String, String)> = unserved
                .iter()
                .filter_map(|service| ready_condition(service))
                .filter(|(reason, _)| reason != "Pending")
                .collect();
            if served.len() + explained.len() == SOLO_SERVICES {
                let mut reasons = BTreeMap::<&str, usize>::new();
                explained.iter().for_each(|(reason, _)| *reasons.entry(reason).or_default() += 1);
                eprintln!("scale: one node of {NODE_PODS} pods serves {} of {SOLO_SERVICES} Services", served.len());
                eprintln!("scale: the others' condition reasons: {reasons:?}; one says: {:?}", explained.first());
                let events = Api::<Event>::namespaced(self.client.clone(), namespace).list(&Default::default()).await?;
                let mut warnings = BTreeMap::<String, usize>::new();
                events.items.iter().for_each(|event| {
                    *warnings.entry(event.reason.clone().unwrap_or_default()).or_default() += 1;
                });
                eprintln!("scale: Events in {namespace} by reason: {warnings:?}");
                return Ok(served.len());
            }
            if started.elapsed() > TIMEOUT {
                bail!("{namespace}: {} Services served, {} explained after {TIMEOUT:?}", served.len(), explained.len());
            }
        }
    }

    /// A fresh controller with every Service in place: its peak memory, its writes until it
    /// settled (its Lease apart), and how long it took to settle: from its start to its last
    /// reconcile before `SETTLED_QUIET` without one, once it reconciled at least `services` times.
    async fn restart(&self, controller: &mut Controller, services: usize, results: &mut Results) -> Result<()> {
        controller.stop();
        let offset = self.audit.end()?;
        let started = Instant::now();
        *controller = Controller::start(self.state, "controller-restart.log")?;
        controller.wait_ready().await?;
        let mut last = (reconciliations()?, Instant::now());
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let count = reconciliations()?;
            if count != last.0 {
                last = (count, Instant::now());
            } else if count >= services as u64 && last.1.elapsed() >= SETTLED_QUIET {
                break;
            }
            if started.elapsed() > TIMEOUT {
                bail!("the restarted controller reconciled {count} times and has not settled after {TIMEOUT:?}");
            }
        }
        let writes = self.audit.controller_writes_since(offset)?;
        eprintln!("scale: the restarted controller's writes: {writes:?}");
        let status_writes = writes
            .kinds
            .iter()
            .filter(|(kind, _)| kind.ends_with("services status"))
            .map(|(_, count)| count)
            .sum::<usize>();
        results.insert("ctl_restart_settled_s", rounded(last.1.duration_since(started).as_secs_f64(), 1));
        results.insert("ctl_restart_writes", writes.services as f64);
        results.insert("ctl_restart_status_writes", status_writes as f64);
        results.insert("ctl_hwm_mib_restart", rounded(controller.peak_rss_mib()?, 1));
        Ok(())
    }
}

/// One status PATCH round trip on this API server, median of 20: the floor of any status lag.
async fn patch_rtt(client: &Client) -> Result<f64> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let service: Service = serde_json::from_value(json!({
        "metadata": { "name": "patch-rtt" },
        "spec": { "type": "ClusterIP", "ports": [{ "protocol": "TCP", "port": 80 }] }
    }))?;
    services.create(&PostParams::default(), &service).await?;
    let mut times = Vec::new();
    for i in 0..20u8 {
        let status = json!({ "status": { "loadBalancer": { "ingress": [{ "ip": format!("192.0.2.{i}") }] } } });
        let started = Instant::now();
        services.patch_status("patch-rtt", &PatchParams::default(), &Patch::Merge(status)).await?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(times))
}
