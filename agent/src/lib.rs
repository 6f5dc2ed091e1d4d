//! `hostlb-controller follow-endpoints`: runs beside the proxy of an `externalTrafficPolicy:
//! Local` Service, in the proxy pod's network namespace, and keeps its nftables forwarding on
//! the Service's ready endpoints on this node (`endpoints`) as they come and go. After each
//! change it deletes the conntrack entries of the UDP flows that the new rules would send
//! elsewhere (`hostlb_lb::conntrack`), since a client that keeps sending would otherwise stay
//! where the old rules sent it.
//!
//! `hostlb-controller node-agent` (`agent`): the opt-in data plane, one pod per node that
//! programs every Service the node serves in the node's own network namespace.
//!
//! Programs that ship in the controller's binary and image: they need a Kubernetes client,
//! which the controller has and the proxy's own static binary does without.

mod agent;
mod agent_rules;
mod endpoints;
mod error;
mod listed;
mod local_addresses;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hostlb_contract::{Family, FollowArgs};
use hostlb_lb::port_forwarding::{Forward, PortForwarding};
use hostlb_lb::{conntrack, kernel, rules};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::oneshot;
use kube::runtime::{watcher, WatchStreamExt};

pub use agent::run as run_agent;
use endpoints::{endpoint_forwards, EndpointSlice, SERVICE_NAME_LABEL};
pub use error::{Error, Result};
use listed::Listed;

/// Without a first list by then the follower exits, so that the pod restarts and the Service
/// gets a ProxyPodFailing Warning instead of a node that silently forwards nothing.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Follows the Service's EndpointSlices until the stream ends or SIGTERM arrives.
pub async fn follow(client: kube::Client, args: FollowArgs) -> Result<()> {
    let forwarding = PortForwarding::new(&args.rules).map_err(Error::Rules)?;
    let resource = endpoint_slice_resource(&client).await?;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &args.namespace, &resource);
    let selector = format!("{SERVICE_NAME_LABEL}={}", args.service);
    tracing::info!(
        service = format!("{}/{}", args.namespace, args.service),
        node = args.node,
        api = resource.api_version,
        "following the Service's endpoints on this node"
    );
    let mut events = watcher(api, watch_config().labels(&selector)).default_backoff().boxed();
    let mut slices: Listed<EndpointSlice> = Listed::default();
    let mut installed: Option<BTreeMap<Family, Vec<Forward>>> = None;
    let first_list = tokio::time::sleep(FIRST_LIST_TIMEOUT);
    tokio::pin!(first_list);
    let mut terminate = signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let event = tokio::select! {
            event = events.try_next() => event,
            _ = &mut first_list, if installed.is_none() => return Err(Error::EndpointsNotListed(FIRST_LIST_TIMEOUT)),
            _ = terminate.recv() => return Ok(()),
        };
        let changed = match event {
            Ok(Some(event)) => slices.apply(event, endpoint_slice),
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, "watching EndpointSlices failed; retrying");
                false
            }
        };
        if !changed {
            continue;
        }
        let forwards = endpoint_forwards(&args, slices.current.values(), Some(&args.node));
        if installed.as_ref() == Some(&forwards) {
            continue;
        }
        let applied = forwarding.with_endpoints(forwards.clone());
        kernel::apply(&rules::ruleset(&applied)).map_err(Error::Rules)?;
        log_forwards(&forwards);
        forget_stale_flows(|flow| conntrack::is_stale(&applied, flow));
        installed = Some(forwards);
    }
}

/// The EndpointSlice API the server serves: v1 from Kubernetes 1.21 on, v1beta1 before, with
/// the same fields either way.
async fn endpoint_slice_resource(client: &kube::Client) -> Result<ApiResource> {
    let group = oneshot::group(client, "discovery.k8s.io").await.map_err(|error| Error::Discovery(Box::new(error)))?;
    let (resource, _) = group.recommended_kind("EndpointSlice").ok_or(Error::NoEndpointSlices)?;
    Ok(resource)
}

/// Below the client's read timeout (the controller binary's 60 s), so that the API server ends a
/// quiet watch, which is then resumed, before the read timeout cuts it and forces a relist.
const WATCH_TIMEOUT_SECONDS: u32 = 50;

fn watch_config() -> watcher::Config {
    watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS)
}

/// What the follower and the agent keep of an EndpointSlice; one that cannot be read is
/// skipped with a warning.
fn endpoint_slice(object: &DynamicObject) -> Option<EndpointSlice> {
    match serde_json::from_value(object.data.clone()) {
        Ok(slice) => Some(slice),
        Err(error) => {
            tracing::warn!(slice = object.metadata.name, %error, "an EndpointSlice that cannot be read is skipped");
            None
        }
    }
}

fn log_forwards(forwards: &BTreeMap<Family, Vec<Forward>>) {
    if forwards.is_empty() {
        tracing::info!("no ready endpoint on this node: nothing is forwarded");
    }
    for (family, forwards) in forwards {
        for forward in forwards {
            tracing::info!("{} {forward}", family.name());
        }
    }
}

/// Forgets the flows `is_stale` picks, for the follower and the agent. A failure is logged, not
/// returned: the rules are in place and new flows follow them, and ending the process would not
/// make the next attempt succeed.
fn forget_stale_flows(is_stale: impl Fn(&conntrack::Flow) -> bool) {
    match kernel::forget_stale_flows(is_stale) {
        Ok(0) => {}
        Ok(forgotten) => tracing::info!(forgotten, "forgot the UDP flows that the old rules sent elsewhere"),
        Err(error) => tracing::warn!(
            %error,
            "cannot forget the UDP flows that the old rules sent elsewhere; they stay there while their clients keep sending"
        ),
    }
}

fn signal(kind: tokio::signal::unix::SignalKind) -> Result<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(kind).map_err(Error::Signal)
}
