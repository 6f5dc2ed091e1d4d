//! `hostlb-controller node-agent`: the opt-in data plane. One pod per node, in the node's
//! network namespace, programs one nftables table for every Service the controller's plans
//! give the node (`agent_rules`), in one transaction per change, and reports per Service
//! whether the node forwards it, renewing the report every `HEARTBEAT` so that the controller
//! can tell an agent that stopped. Its rules stay when it stops, so that an agent restart or
//! upgrade loses no packet, and when the API server refuses it; they go when its DaemonSet is
//! gone (an uninstall, or the controller back on proxy pods).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use hostlb_contract::agent::{ReportStatus, ServiceReport, Transaction};
use hostlb_contract::{AgentArgs, Family, Protocol};
use hostlb_lb::node_table::{node_ruleset, removal, NodeRules, ServiceRules};
use hostlb_lb::{conntrack, kernel};
use hostlb_model::agent::{self, plan_resource, report_resource};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use crate::agent_rules::{desired, PlanEntry, ServiceSlice};
use crate::health::Health;
use crate::listed::Listed;
use crate::{endpoint_slice, endpoint_slice_resource, forget_stale_flows, signal, watch_config, Error, Result};
use crate::{listening, local_addresses};

/// How soon a failed transaction or report is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// How often the node's addresses are read: an address added later (DHCP, a second NIC) is
/// served within this long.
const ADDRESS_POLL: Duration = Duration::from_secs(10);

/// How often the report is written though nothing changed, as a kubelet renews its node's
/// Lease: the controller takes a report not renewed for its bound (40 s by default) as unknown.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// How long a stopping agent whose DaemonSet is still there watches for it to go: deleting a
/// namespace stops the pods and deletes the DaemonSet in one pass, in either order.
const UNINSTALL_WAIT: Duration = Duration::from_secs(5);

enum Update {
    Plan(watcher::Event<DynamicObject>),
    Slice(watcher::Event<DynamicObject>),
    Own(Box<watcher::Event<DaemonSet>>),
}

/// The agent's own DaemonSet as its watch shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct OwnDaemonSet {
    uid: String,
    generation: i64,
    deleting: bool,
}

impl OwnDaemonSet {
    fn of(daemonset: &DaemonSet) -> OwnDaemonSet {
        OwnDaemonSet {
            uid: daemonset.uid().unwrap_or_default(),
            generation: daemonset.metadata.generation.unwrap_or_default(),
            deleting: daemonset.metadata.deletion_timestamp.is_some(),
        }
    }
}

/// What the watches and the kernel have told so far.
#[derive(Default)]
struct Seen {
    plans: Listed<PlanEntry>,
    slices: Listed<ServiceSlice>,
    own: Listed<OwnDaemonSet>,
    addresses: Option<Vec<IpAddr>>,
    /// The ports processes of the node hold on its addresses.
    held_on_node: BTreeSet<(Protocol, u16)>,
}

impl Seen {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Plan(event) => self.plans.apply(event, PlanEntry::of),
            Update::Slice(event) => self.slices.apply(event, |object| {
                ServiceSlice::of(&object.namespace().unwrap_or_default(), object.labels(), endpoint_slice(object)?)
            }),
            Update::Own(event) => self.own.apply(*event, |daemonset| Some(OwnDaemonSet::of(daemonset))),
        };
    }

    /// Nothing is programmed before every watch has listed: an agent that restarts would
    /// otherwise replace the rules in place with a partial set.
    fn synced(&self) -> bool {
        self.plans.synced && self.slices.synced && self.addresses.is_some()
    }

    /// Whether the watch has seen the agent's own DaemonSet (`started` as the agent started
    /// with it) deleted, being deleted, or replaced by another of the same name.
    fn uninstalled(&self, started: &OwnDaemonSet) -> bool {
        self.own.synced && self.own.current.values().next().is_none_or(|own| own.uid != started.uid || own.deleting)
    }
}

pub async fn run(client: Client, args: AgentArgs) -> Result<()> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &args.namespace);
    let own = daemonsets.get(&args.daemonset).await.map_err(Error::api(format!("get DaemonSet {}", args.daemonset)))?;
    let started = OwnDaemonSet::of(&own);
    for family in Family::ALL {
        if let Err(error) = kernel::enable_forwarding(family) {
            tracing::warn!(%error, family = family.name(), "cannot turn forwarding on");
        }
    }
    let health = Health::default();
    tokio::spawn(crate::health::serve(args.http_port, health.clone()));
    let resource = endpoint_slice_resource(&client).await?;
    let config = watch_config();
    let plans = Api::<DynamicObject>::namespaced_with(client.clone(), &args.namespace, &plan_resource());
    let plans = watcher(plans, config.clone().labels(&agent::plan_selector(&args.install)));
    let slices = watcher(Api::<DynamicObject>::all_with(client.clone(), &resource), config.clone());
    let own_daemonset = watcher(daemonsets.clone(), config.fields(&format!("metadata.name={}", args.daemonset)));
    let mut updates: BoxStream<'static, Result<Update, watcher::Error>> = stream::select_all([
        plans.default_backoff().map(|event| event.map(Update::Plan)).boxed(),
        slices.default_backoff().map(|event| event.map(Update::Slice)).boxed(),
        own_daemonset.default_backoff().map(|event| event.map(|event| Update::Own(Box::new(event)))).boxed(),
    ])
    .boxed();
    tracing::info!(node = args.node, namespace = args.namespace, "programming this node's plans");

    let report_name = agent::report_name(&args.daemonset, &args.node);
    let reports = Api::<DynamicObject>::namespaced_with(client.clone(), &args.namespace, &report_resource());
    let mut seen = Seen::default();
    let mut installed: Option<NodeRules> = None;
    let mut programmed: BTreeMap<String, ServiceRules> = BTreeMap::new();
    let mut last_transaction: Option<Transaction> = None;
    let mut reported: Option<BTreeMap<String, ServiceReport>> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut address_poll = tokio::time::interval(ADDRESS_POLL);
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        health.turned();
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            update = updates.next() => {
                let Some(update) = update else { return Ok(()) };
                absorb(&mut seen, update);
                // A burst (a relist, many Services at once) makes one transaction.
                while let Some(Some(update)) = updates.next().now_or_never() {
                    absorb(&mut seen, update);
                }
            }
            () = retry => retry_at = None,
            _ = heartbeat.tick() => reported = None,
            _ = address_poll.tick() => match local_addresses::read().await {
                Ok(addresses) => {
                    let held = listening::held_ports(&addresses).unwrap_or_else(|error| {
                        tracing::warn!(%error, "cannot read the node's sockets; taken as holding no port");
                        BTreeSet::new()
                    });
                    if seen.addresses.as_ref() == Some(&addresses) && seen.held_on_node == held {
                        continue;
                    }
                    (seen.addresses, seen.held_on_node) = (Some(addresses), held);
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read the node's addresses; trying again");
                    continue;
                }
            },
            _ = terminate.recv() => return stop(&daemonsets, &args.daemonset, &started, &mut seen, &mut updates).await,
        }
        if !seen.synced() {
            continue;
        }
        let (plans, slices) = (seen.plans.current.values(), seen.slices.current.values());
        let mut wanted = desired(&args.node, plans, slices, &programmed, &seen.held_on_node);
        let rules = wanted.rules(seen.addresses.clone().unwrap_or_default());
        if installed.as_ref() != Some(&rules) {
            let began = std::time::Instant::now();
            let outcome = program(&rules);
            let took = began.elapsed();
            health.metrics.transaction(took, rules.services.len(), outcome.is_ok());
            last_transaction = Some(Transaction {
                at: Timestamp::now().to_string(),
                milliseconds: u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
                services: rules.services.len(),
                succeeded: outcome.is_ok(),
            });
            match outcome {
                Ok(()) => {
                    installed = Some(rules);
                    programmed = wanted.services.clone();
                }
                Err(error) => {
                    tracing::error!(%error, "programming the node's table failed; the rules in place stay");
                    kept_in_place(&mut wanted.reports, reported.as_ref(), &args.node);
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
        health.ready.store(installed.is_some() && retry_at.is_none(), Ordering::Release);
        if reported.as_ref() != Some(&wanted.reports) {
            let status = ReportStatus::new(&wanted.reports, Timestamp::now().to_string(), last_transaction.clone());
            let written = write_report(&reports, &report_name, &status).await;
            health.metrics.report_writes.get_or_create(&crate::health::ResultLabels::of(written.is_ok())).inc();
            match written {
                Ok(()) => reported = Some(wanted.reports),
                Err(error) => {
                    tracing::warn!(%error, report = report_name, "writing the report failed; trying again");
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
    }
}

/// The reports after a transaction failed: the rules in place stay, so each Service forwards as
/// last reported. The kernel's words stay in the agent's log: they may name other Services'
/// backends, and every Service on the node would carry them.
fn kept_in_place(
    reports: &mut BTreeMap<String, ServiceReport>,
    last: Option<&BTreeMap<String, ServiceReport>>,
    node: &str,
) {
    for (uid, report) in reports.iter_mut() {
        let forwarding = last.and_then(|last| last.get(uid)).is_some_and(|before| before.forwarding);
        let problem = format!(
            "the node agent on {node} could not update the node's rules; the rules in place stay and it tries \
             again (its log says why)"
        );
        *report = ServiceReport { forwarding, problem: Some(problem), ..report.clone() };
    }
}

fn absorb(seen: &mut Seen, update: Result<Update, watcher::Error>) {
    match update {
        Ok(update) => seen.apply(update),
        Err(error) => tracing::warn!(%error, "a watch failed; retrying"),
    }
}

/// Replaces the node's table in one transaction, then forgets the UDP flows to the node's
/// addresses that the new rules would send elsewhere.
fn program(rules: &NodeRules) -> Result<(), hostlb_lb::error::Error> {
    let started = std::time::Instant::now();
    kernel::apply(&node_ruleset(rules))?;
    let took_ms = started.elapsed().as_secs_f64() * 1000.0;
    let udp = |service: &&hostlb_lb::node_table::ServiceRules| {
        service.forwarding.ports.iter().any(|port| port.protocol == Protocol::Udp)
    };
    let forwarded: usize = rules.services.iter().flat_map(|s| s.forwarding.forwards.values()).map(Vec::len).sum();
    tracing::info!(services = rules.services.len(), forwarded, took_ms, addresses = ?rules.addresses, "programmed the node's table");
    if rules.services.iter().any(|service| udp(&service)) {
        let to_node = |flow: &conntrack::Flow| rules.addresses.contains(&flow.original.destination.ip());
        let stale = |flow: &conntrack::Flow| {
            to_node(flow) && rules.services.iter().any(|service| conntrack::is_stale(&service.forwarding, flow))
        };
        forget_stale_flows(stale);
    }
    Ok(())
}

/// The node's report, as the status of the one the controller made for this node, which this
/// agent may patch and not create: until it is there (a node that just joined) the write fails
/// and is tried again.
async fn write_report(reports: &Api<DynamicObject>, name: &str, status: &ReportStatus) -> Result<()> {
    let patch = serde_json::json!({ "status": status });
    let action = format!("patch the status of NodeReport {name}, which the controller makes for each node");
    reports.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch)).await.map_err(Error::api(action))?;
    Ok(())
}

/// On SIGTERM: the rules stay while the agent's DaemonSet does (a restart, an upgrade, a node
/// drain), and whenever the agent cannot tell (the API server refuses or does not answer it);
/// they go when its DaemonSet is gone or being deleted, as its watch or a last read shows. The
/// report goes with the DaemonSet, which owns it.
async fn stop(
    daemonsets: &Api<DaemonSet>,
    name: &str,
    started: &OwnDaemonSet,
    seen: &mut Seen,
    updates: &mut BoxStream<'static, Result<Update, watcher::Error>>,
) -> Result<()> {
    let current = daemonsets.get_opt(name).await;
    let rolling = match &current {
        Ok(Some(daemonset)) => {
            let now = OwnDaemonSet::of(daemonset);
            if now.uid != started.uid || now.deleting {
                return remove_table();
            }
            now.generation != started.generation
        }
        Ok(None) => return remove_table(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the agent's DaemonSet; the rules stay unless its watch shows it gone");
            false
        }
    };
    // A new template is a roll: the next agent follows at once. Otherwise the DaemonSet may be
    // about to go with its namespace.
    if !rolling {
        let deadline = tokio::time::Instant::now() + UNINSTALL_WAIT;
        while !seen.uninstalled(started) {
            match tokio::time::timeout_at(deadline, updates.next()).await {
                Ok(Some(update)) => absorb(seen, update),
                Ok(None) | Err(_) => break,
            }
        }
    }
    if seen.uninstalled(started) {
        return remove_table();
    }
    tracing::info!("stopping; the node's rules stay in place for the next agent");
    Ok(())
}

fn remove_table() -> Result<()> {
    kernel::apply(&removal()).map_err(Error::Rules)?;
    tracing::info!("the agent's DaemonSet is gone: removed the node's table");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: &str, forwarding: bool) -> ServiceReport {
        ServiceReport { service: service.into(), forwarding, problem: None }
    }

    #[test]
    fn a_failed_transaction_reports_what_the_rules_in_place_forward_and_no_kernel_words() {
        let last =
            BTreeMap::from([("a".to_string(), entry("shop/web", true)), ("b".to_string(), entry("shop/db", false))]);
        let mut wanted = BTreeMap::from([
            ("a".to_string(), entry("shop/web", true)),
            ("b".to_string(), entry("shop/db", true)),
            ("c".to_string(), entry("shop/new", true)),
        ]);
        kept_in_place(&mut wanted, Some(&last), "node-1");
        let forwarding: Vec<bool> = wanted.values().map(|report| report.forwarding).collect();
        assert_eq!(forwarding, [true, false, false], "as last reported; a new Service has no rules yet");
        let problem = wanted["a"].problem.as_deref().unwrap();
        assert_eq!(
            problem,
            "the node agent on node-1 could not update the node's rules; the rules in place stay and it tries again \
             (its log says why)"
        );
        assert!(wanted.values().all(|report| report.problem.as_deref() == Some(problem)));
    }
}
