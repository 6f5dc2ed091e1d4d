//! `make bench`'s controller part at scale, against the loopback control plane of
//! `e2e/bench/scale-apiserver.sh` (no kubelet, no scheduler): SIMULATED nodes, Node objects
//! that no kubelet keeps, and a simulator here that binds each proxy pod to its node and marks
//! it Running and Ready in its status, as a scheduler and a kubelet would. The controller runs as
//! a process of its own. Rounds of 100, 300 and 1,000 Services, each round's Services added to
//! the earlier ones (they stay, idle). Writes flat JSON (numbers only) to `HOSTLB_BENCH_OUT`.
//!
//! Environment: HOSTLB_BENCH_STATE (the control plane's state folder: kubeconfigs, audit log),
//! HOSTLB_CONTROLLER_BINARY, HOSTLB_LB_IMAGE, HOSTLB_BENCH_LAGS (where every Service's status
//! lag goes, one line per Service and round).

#[path = "../bench/stats.rs"]
mod stats;
mod timeline;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use futures::{StreamExt, TryStreamExt};
use hostlb_e2e::{names, SYSTEM_NAMESPACE};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{json, Value};
use stats::{median, percentile, rounded};
use timeline::{ms, watch, Timeline};

const NODES: usize = 10;
const ROUNDS: [usize; 3] = [100, 300, 1000];
const FIRST_PORT: usize = 20000;
/// Per round. On two busy cores the 1,000 round's 10,000 proxy pods took more than 10 minutes.
const TIMEOUT: Duration = Duration::from_secs(1500);
/// Requests in flight from this program at once (Service creation, the simulator's writes).
const IN_FLIGHT: usize = 32;
const IDLE_WINDOW: Duration = Duration::from_secs(30);
const CONTROLLER_USER: &str = "hostlb-controller";
/// The bench's own user, the simulator's writes among them.
const BENCH_USER: &str = "hostlb-bench";

type Results = BTreeMap<&'static str, f64>;

#[tokio::main]
async fn main() -> Result<()> {
    let out = std::env::var("HOSTLB_BENCH_OUT").unwrap_or_else(|_| "target/bench/scale.json".into());
    let state = std::env::var("HOSTLB_BENCH_STATE").context("HOSTLB_BENCH_STATE is not set")?;
    let client = connect(&format!("{state}/admin.kubeconfig")).await?;
    let addresses = prepare(&client).await?;
    tokio::spawn(simulate_kubelets(client.clone(), addresses.clone()));
    let mut controller = Controller::start(&state)?;
    let lags = std::env::var("HOSTLB_BENCH_LAGS").unwrap_or_else(|_| "target/bench/lags.tsv".into());
    // What was measured is written also when a later step fails, so that a slow machine still
    // reports its figures.
    let mut results = Results::new();
    let measured =
        measure(&client, &mut controller, &addresses, &format!("{state}/audit.log"), &lags, &mut results).await;
    controller.stop();
    std::fs::write(&out, serde_json::to_string_pretty(&results)? + "\n")?;
    eprintln!("wrote {out}");
    if measured.is_err() {
        // The state folder goes with the control plane; the controller's last words stay here.
        let log = std::fs::read_to_string(format!("{state}/controller.log")).unwrap_or_default();
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

fn node_name(i: usize) -> String {
    format!("simulated-node-{i}")
}

fn node_address(i: usize, generation: u8) -> IpAddr {
    IpAddr::from([10, 200, generation, i as u8 + 1])
}

/// The install's namespace and PriorityClass, and the simulated nodes; returns each node's address.
async fn prepare(client: &Client) -> Result<BTreeMap<String, IpAddr>> {
    let create = PostParams::default();
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": SYSTEM_NAMESPACE } }))?;
    Api::<Namespace>::all(client.clone()).create(&create, &namespace).await?;
    let manifest = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/priorityclass.yaml"))?;
    let name = manifest.lines().find_map(|line| line.trim().strip_prefix("name: ")).context("priorityclass.yaml")?;
    let class: PriorityClass = serde_json::from_value(json!({
        "metadata": { "name": name }, "value": 1000, "preemptionPolicy": "Never"
    }))?;
    Api::<PriorityClass>::all(client.clone()).create(&create, &class).await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let mut addresses = BTreeMap::new();
    for i in 0..NODES {
        let name = node_name(i);
        let node: Node = serde_json::from_value(
            json!({ "metadata": { "name": name, "labels": { "kubernetes.io/hostname": name, "kubernetes.io/os": "linux" } } }),
        )?;
        nodes.create(&create, &node).await?;
        // The API server taints a new node not-ready until the node lifecycle controller, which
        // does not run here, sees it Ready.
        nodes.patch(&name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "taints": null } }))).await?;
        nodes.patch_status(&name, &PatchParams::default(), &Patch::Merge(node_status(node_address(i, 0)))).await?;
        addresses.insert(name, node_address(i, 0));
    }
    Ok(addresses)
}

fn node_status(address: IpAddr) -> Value {
    let room = json!({ "cpu": "64", "memory": "256Gi", "pods": "5000" });
    json!({ "status": {
        "capacity": room, "allocatable": room,
        "addresses": [{ "type": "InternalIP", "address": address.to_string() }],
        "conditions": [{ "type": "Ready", "status": "True", "reason": "Simulated",
                         "lastHeartbeatTime": now(), "lastTransitionTime": now() }]
    }})
}

fn now() -> String {
    k8s_openapi::jiff::Timestamp::now().to_string()
}

/// The scheduler's and kubelets' part for proxy pods: bind each to the node its DaemonSet chose,
/// then report it Running and Ready.
async fn simulate_kubelets(client: Client, addresses: BTreeMap<String, IpAddr>) {
    let pods: Api<Pod> = Api::namespaced(client, SYSTEM_NAMESPACE);
    let addresses = Arc::new(addresses);
    watcher(pods.clone(), watcher::Config::default())
        .applied_objects()
        .for_each_concurrent(IN_FLIGHT, |pod| {
            let (pods, addresses) = (pods.clone(), addresses.clone());
            async move {
                // A pod seen twice before its binding shows is bound once and refused once: harmless.
                if let Err(error) = simulate_kubelet(&pods, &addresses, pod).await {
                    eprintln!("simulator: {error:#}");
                }
            }
        })
        .await;
}

async fn simulate_kubelet(
    pods: &Api<Pod>,
    addresses: &BTreeMap<String, IpAddr>,
    pod: Result<Pod, watcher::Error>,
) -> Result<()> {
    let pod = pod?;
    let name = pod.name_any();
    match pod.spec.as_ref().and_then(|spec| spec.node_name.clone()) {
        None => {
            let node = daemonset_node(&pod).context("a proxy pod without its DaemonSet's node")?;
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding", "metadata": { "name": name },
                "target": { "apiVersion": "v1", "kind": "Node", "name": node }
            });
            pods.create_subresource::<Value, Value>("binding", &name, &PostParams::default(), &binding).await?;
        }
        Some(node) if !timeline::pod_ready(&pod) => {
            let address = addresses.get(&node).context("a pod on an unknown node")?.to_string();
            let condition = |type_: &str| json!({ "type": type_, "status": "True", "lastTransitionTime": now() });
            let conditions = ["PodScheduled", "Initialized", "ContainersReady", "Ready"].map(condition);
            let status = json!({ "status": {
                "phase": "Running", "hostIP": address, "podIP": address, "startTime": now(), "conditions": conditions
            }});
            pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(status)).await?;
        }
        Some(_) => {}
    }
    Ok(())
}

/// The node a DaemonSet pod is meant for, from the node affinity the DaemonSet controller sets.
fn daemonset_node(pod: &Pod) -> Option<String> {
    let affinity = pod.spec.as_ref()?.affinity.as_ref()?.node_affinity.as_ref()?;
    let terms = &affinity.required_during_scheduling_ignored_during_execution.as_ref()?.node_selector_terms;
    terms
        .iter()
        .flat_map(|term| term.match_fields.iter().flatten())
        .find_map(|field| (field.key == "metadata.name").then(|| field.values.as_ref()?.first().cloned()).flatten())
}

/// hostlb-controller as a process of this program's, so that its memory and CPU time can be read.
struct Controller {
    child: Child,
}

impl Controller {
    fn start(state: &str) -> Result<Controller> {
        let binary = std::env::var("HOSTLB_CONTROLLER_BINARY").context("HOSTLB_CONTROLLER_BINARY is not set")?;
        let image = std::env::var("HOSTLB_LB_IMAGE").unwrap_or_else(|_| "localhost/hostlb/lb:dev".into());
        // Written into Local Services' proxy pods only; the bench's Services are Cluster.
        let controller_image = "localhost/hostlb/controller:dev";
        let log = std::fs::File::create(format!("{state}/controller.log"))?;
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
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting hostlb-controller")?;
        Ok(Controller { child })
    }

    fn proc_file(&self, file: &str) -> Result<String> {
        Ok(std::fs::read_to_string(format!("/proc/{}/{file}", self.child.id()))?)
    }

    fn rss_mib(&self) -> Result<f64> {
        let status = self.proc_file("status")?;
        let kib = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .context("VmRSS")?;
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

/// The controller's writes (create, update, patch, delete) in the audit log.
struct AuditLog {
    path: String,
}

impl AuditLog {
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
        // Per pod the first write that made it Ready, with its Service; per Service its status
        // writes in order.
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
                    pod_ready.entry(name).or_insert((service.clone(), written));
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
            (names::daemonset_name(&name, &service.uid().unwrap_or_default()), name)
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

/// Creates `count` LoadBalancer Services from port `first_port` on in a new namespace, and waits
/// until every status has all nodes; returns the namespace's timeline.
async fn round(client: &Client, name: &str, count: usize, first_port: usize) -> Result<Timeline> {
    let namespace: Namespace = serde_json::from_value(json!({ "metadata": { "name": name } }))?;
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &namespace).await?;
    let timeline = watch(client, name, NODES);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let services: Api<Service> = Api::namespaced(client.clone(), name);
    let started = Instant::now();
    futures::stream::iter(0..count)
        .map(Ok)
        .try_for_each_concurrent(IN_FLIGHT, |i| {
            let (services, timeline) = (services.clone(), timeline.clone());
            async move {
                let service_name = format!("lb-{i}");
                let service: Service = serde_json::from_value(json!({
                    "metadata": { "name": service_name },
                    "spec": { "type": "LoadBalancer", "selector": { "app": "none" },
                              "ports": [{ "protocol": "TCP", "port": first_port + i, "targetPort": 8080 }] }
                }))?;
                services.create(&PostParams::default(), &service).await?;
                timeline::first(&mut timeline.lock().unwrap().entry(service_name).or_default().created);
                anyhow::Ok(())
            }
        })
        .await?;
    loop {
        let finished = timeline.lock().unwrap().values().filter(|s| s.created.is_some() && s.status.is_some()).count();
        if finished == count {
            return Ok(timeline);
        }
        if started.elapsed() > TIMEOUT {
            bail!("{name}: only {finished} of {count} Services have all {NODES} nodes after {TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// From its last proxy pod Ready to its status written, per Service (ms), and from the last pod
/// Ready of all to the last status written (s).
fn lags(timeline: &Timeline) -> Result<(Vec<f64>, f64)> {
    let timeline = timeline.lock().unwrap();
    let mut lags = Vec::new();
    let (mut last_ready, mut last_status) = (None::<Instant>, None::<Instant>);
    for (name, steps) in timeline.iter() {
        let (Some(ready), Some(status)) = (steps.last_pod(NODES, |p| p.ready), steps.status) else {
            bail!("{name}: no Ready pods or status seen");
        };
        lags.push(ms(ready, status));
        last_ready = last_ready.max(Some(ready));
        last_status = last_status.max(Some(status));
    }
    let all_ready = ms(last_ready.context("no Services")?, last_status.context("no Services")?) / 1e3;
    lags.sort_by(f64::total_cmp);
    Ok((lags, all_ready))
}

async fn measure(
    client: &Client,
    controller: &mut Controller,
    addresses: &BTreeMap<String, IpAddr>,
    audit_path: &str,
    lags_path: &str,
    results: &mut Results,
) -> Result<()> {
    let audit = AuditLog { path: audit_path.into() };
    let ready = || async {
        let answer = Command::new("curl").args(["-fsS", "--max-time", "1", "http://127.0.0.1:18090/readyz"]).output();
        matches!(answer, Ok(output) if output.status.success())
    };
    let started = Instant::now();
    while !ready().await {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("hostlb-controller is not ready after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    results.insert("ctl_patch_rtt_ms", rounded(patch_rtt(client).await?, 2));

    // Every Service's lag, by round, for the plot of their distribution.
    let mut lag_table = String::from("services\tlag_ms\n");
    let mut first_port = FIRST_PORT;
    for count in ROUNDS {
        let cpu_before = controller.cpu_s()?;
        let audit_offset = audit.end()?;
        let namespace = format!("scale-{count}");
        let timeline = round(client, &namespace, count, first_port).await?;
        let cpu = controller.cpu_s()? - cpu_before;
        first_port += count;
        let (lags, all_ready) = lags(&timeline)?;
        eprintln!(
            "{count} Services: all ready after {all_ready:.2} s, lag p50 {:.0} ms p99 {:.0} ms, {cpu:.1} CPU s",
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
        match count {
            100 => {
                results.insert("ctl_all_ready_s_100", rounded(all_ready, 2));
            }
            300 => {
                results.insert("ctl_all_ready_s_300", rounded(all_ready, 2));
            }
            _ => {
                results.insert("ctl_all_ready_s", rounded(all_ready, 2));
                results.insert("ctl_status_lag_p50_ms", rounded(percentile(&lags, 0.5), 1));
                results.insert("ctl_status_lag_p99_ms", rounded(percentile(&lags, 0.99), 1));
                results.insert("ctl_status_reaction_p50_ms", rounded(percentile(&parts.reaction, 0.5), 1));
                results.insert("ctl_status_reaction_p99_ms", rounded(percentile(&parts.reaction, 0.99), 1));
                results.insert("ctl_status_write_p50_ms", rounded(percentile(&parts.write, 0.5), 1));
                results.insert("ctl_status_write_p99_ms", rounded(percentile(&parts.write, 0.99), 1));
                results.insert("ctl_pod_watch_p50_ms", rounded(percentile(&parts.pod_watch, 0.5), 1));
                results.insert("ctl_pod_watch_p99_ms", rounded(percentile(&parts.pod_watch, 0.99), 1));
                results.insert("ctl_cpu_s_1000", rounded(cpu, 2));
                results.insert("ctl_rss_mib_1000", rounded(controller.rss_mib()?, 1));
            }
        }
    }
    results.insert("ctl_lag_ratio", rounded(results["ctl_status_lag_p99_ms"] / results["ctl_patch_rtt_ms"], 2));

    // Nothing changes: the controller should not write at all.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offset = audit.end()?;
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle = audit.controller_writes_since(offset)?;
    let per_minute = |writes: usize| rounded(writes as f64 * 60.0 / IDLE_WINDOW.as_secs_f64(), 1);
    results.insert("ctl_idle_writes_per_min", per_minute(idle.services));
    results.insert("ctl_idle_lease_writes_per_min", per_minute(idle.lease));

    // One more Service, alone: every write the controller makes for it until it settles.
    let offset = audit.end()?;
    let timeline = round(client, "scale-one", 1, first_port).await?;
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
    let events = one.kinds.iter().filter(|(kind, _)| kind.ends_with(" events")).map(|(_, count)| count).sum::<usize>();
    results.insert("ctl_event_writes_per_service", events as f64);

    let namespace = format!("scale-{}", ROUNDS[ROUNDS.len() - 1]);
    let moved = node_address_change(client, &audit, addresses, &namespace).await?;
    results.insert("ctl_node_addr_change_s", rounded(moved, 2));
    eprintln!("scale: {results:?}");
    Ok(())
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

/// One node's address changes: seconds until every Service of the 1,000 round publishes the new
/// one. Lists of the Services from the API server's watch cache, a second apart, tell when all
/// show it; the audit log then tells when the controller's last status write was answered.
/// (Twice a watch of them, even one listed just before the change, stalled for minutes after
/// the burst of 1,000 status updates; lists in a tight loop slowed the controller's writes.)
async fn node_address_change(
    client: &Client,
    audit: &AuditLog,
    addresses: &BTreeMap<String, IpAddr>,
    namespace: &str,
) -> Result<f64> {
    let services = Api::<Service>::namespaced(client.clone(), namespace);
    let nodes: Api<Node> = Api::all(client.clone());
    let (name, old) = addresses.iter().next().context("no nodes")?;
    let new = node_address(0, 1);
    let offset = audit.end()?;
    let (started, changed_at) = (Instant::now(), Timestamp::now());
    nodes.patch_status(name, &PatchParams::default(), &Patch::Merge(node_status(new))).await?;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let listed = services.list(&ListParams::default().match_any()).await?.items;
        let moved = |service: &Service| {
            let shown = hostlb_e2e::published(service);
            shown.contains(&new) && !shown.contains(old)
        };
        if listed.iter().all(moved) {
            break;
        }
        if started.elapsed() > TIMEOUT {
            bail!("not every Service shows {name}'s new address {new} after {TIMEOUT:?}");
        }
    }
    let last = audit.last_controller_status_write_since(offset)?.context("no status write after the change")?;
    Ok(changed_at.duration_until(last).as_secs_f64())
}
