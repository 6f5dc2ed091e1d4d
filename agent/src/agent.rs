//! `hostlb-controller node-agent`: the opt-in data plane. One pod per node, in the node's
//! network namespace, programs one nftables table for every Service the controller's plans
//! give the node (`agent_rules`), in one transaction per change, and reports per Service
//! whether the node forwards it. Its rules stay when it stops, so that an agent restart or
//! upgrade loses no packet; they go when its DaemonSet is gone (an uninstall, or the
//! controller back on proxy pods).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use futures::stream::{self, BoxStream};
use futures::{FutureExt, StreamExt};
use hostlb_contract::agent::ServiceReport;
use hostlb_contract::{AgentArgs, Family, Protocol};
use hostlb_lb::node_table::{node_ruleset, removal, NodeRules};
use hostlb_lb::{conntrack, kernel};
use hostlb_model::agent;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Client, ResourceExt};

use crate::agent_rules::{desired, PlanEntry, ServiceSlice};
use crate::listed::Listed;
use crate::local_addresses;
use crate::{endpoint_slice, endpoint_slice_resource, forget_stale_flows, signal, watch_config, Error, Result};

/// The field manager of the agents' reports.
const MANAGER: &str = "hostlb-agent";
/// How soon a failed transaction or report is tried again.
const RETRY: Duration = Duration::from_secs(5);

/// How often the node's addresses are read: an address added later (DHCP, a second NIC) is
/// served within this long.
const ADDRESS_POLL: Duration = Duration::from_secs(10);

enum Update {
    Plan(watcher::Event<ConfigMap>),
    Slice(watcher::Event<DynamicObject>),
}

/// What the watches and the kernel have told so far.
#[derive(Default)]
struct Seen {
    plans: Listed<PlanEntry>,
    slices: Listed<ServiceSlice>,
    addresses: Option<Vec<IpAddr>>,
}

impl Seen {
    fn apply(&mut self, update: Update) {
        match update {
            Update::Plan(event) => self.plans.apply(event, PlanEntry::of),
            Update::Slice(event) => self.slices.apply(event, |object| {
                ServiceSlice::of(&object.namespace().unwrap_or_default(), object.labels(), endpoint_slice(object)?)
            }),
        };
    }

    /// Nothing is programmed before every watch has listed: an agent that restarts would
    /// otherwise replace the rules in place with a partial set.
    fn synced(&self) -> bool {
        self.plans.synced && self.slices.synced && self.addresses.is_some()
    }
}

pub async fn run(client: Client, args: AgentArgs) -> Result<()> {
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), &args.namespace);
    let own = daemonsets.get(&args.daemonset).await.map_err(Error::api(format!("get DaemonSet {}", args.daemonset)))?;
    for family in Family::ALL {
        if let Err(error) = kernel::enable_forwarding(family) {
            tracing::warn!(%error, family = family.name(), "cannot turn forwarding on");
        }
    }
    let resource = endpoint_slice_resource(&client).await?;
    let config = watch_config();
    let plans = Api::<ConfigMap>::namespaced(client.clone(), &args.namespace);
    let plans = watcher(plans, config.clone().labels(&agent::plan_selector(&args.install)));
    let slices = watcher(Api::<DynamicObject>::all_with(client.clone(), &resource), config);
    let mut updates: BoxStream<'static, Result<Update, watcher::Error>> = stream::select_all([
        plans.default_backoff().map(|event| event.map(Update::Plan)).boxed(),
        slices.default_backoff().map(|event| event.map(Update::Slice)).boxed(),
    ])
    .boxed();
    tracing::info!(node = args.node, namespace = args.namespace, "programming this node's plans");

    let report_name = agent::report_name(&args.daemonset, &args.node);
    let reports: Api<ConfigMap> = Api::namespaced(client.clone(), &args.namespace);
    let mut seen = Seen::default();
    let mut installed: Option<NodeRules> = None;
    let mut reported: Option<BTreeMap<String, ServiceReport>> = None;
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut address_poll = tokio::time::interval(ADDRESS_POLL);
    loop {
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
            _ = address_poll.tick() => match local_addresses::read().await {
                Ok(addresses) if seen.addresses.as_ref() == Some(&addresses) => continue,
                Ok(addresses) => seen.addresses = Some(addresses),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the node's addresses; trying again");
                    continue;
                }
            },
            _ = terminate.recv() => return stop(&daemonsets, &own).await,
        }
        if !seen.synced() {
            continue;
        }
        let addresses = seen.addresses.clone().unwrap_or_default();
        let mut wanted = desired(&args.node, addresses, seen.plans.current.values(), seen.slices.current.values());
        if installed.as_ref() != Some(&wanted.rules) {
            match program(&wanted.rules) {
                Ok(()) => installed = Some(wanted.rules.clone()),
                Err(error) => {
                    tracing::error!(%error, "programming the node's table failed; the rules in place stay");
                    kept_in_place(&mut wanted.reports, reported.as_ref(), &args.node);
                    retry_at = Some(tokio::time::Instant::now() + RETRY);
                }
            }
        }
        if reported.as_ref() != Some(&wanted.reports) {
            match write_report(&reports, &report_name, &args, &own, &wanted.reports).await {
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

/// The node's report, into the one the controller made for this node, which this agent may
/// patch and not create: until it is there (a node that just joined) the write fails and is
/// tried again.
async fn write_report(
    reports: &Api<ConfigMap>,
    name: &str,
    args: &AgentArgs,
    own: &DaemonSet,
    entries: &BTreeMap<String, ServiceReport>,
) -> Result<()> {
    let report = agent::report(own, &args.install, &args.node, hostlb_contract::agent::report_data(entries));
    let params = PatchParams::apply(MANAGER).force();
    // Until the controller has made it and let this agent write it, the API server refuses
    // the write (403): it is tried again like any failed write.
    let action = format!("apply ConfigMap {name}, which the controller makes for each node");
    reports.patch(name, &params, &Patch::Apply(&report)).await.map_err(Error::api(action))?;
    Ok(())
}

/// On SIGTERM: the rules stay while the agent's DaemonSet does (a restart, an upgrade, a node
/// drain); they go when it is gone or being deleted, or when the agent may no longer read it
/// (its ServiceAccount deleted with the namespace). The report goes with the DaemonSet, which
/// owns it.
async fn stop(daemonsets: &Api<DaemonSet>, own: &DaemonSet) -> Result<()> {
    let current = daemonsets.get_opt(&own.name_any()).await;
    let uninstalled = match &current {
        Ok(Some(daemonset)) => daemonset.uid() != own.uid() || daemonset.metadata.deletion_timestamp.is_some(),
        Ok(None) => true,
        Err(kube::Error::Api(status)) => status.code == 401 || status.code == 403,
        Err(_) => false,
    };
    if !uninstalled {
        if let Err(error) = &current {
            tracing::warn!(%error, "cannot tell whether hostlb is being uninstalled; the rules stay");
        } else {
            tracing::info!("stopping; the node's rules stay in place for the next agent");
        }
        return Ok(());
    }
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
