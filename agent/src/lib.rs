//! `hostlb-agent`: the programs of the controller's image that program nftables on the nodes
//! from what the API server says. They need a Kubernetes client, which the controller has and
//! the proxy's own static binary does without; their rules are built by its library
//! (`hostlb_lb`).
//!
//! - The endpoint follower (`follower`, `hostlb-controller follow-endpoints`) runs beside the
//!   proxy of an `externalTrafficPolicy: Local` Service, in the proxy pod's network namespace,
//!   and keeps its forwarding on the Service's ready endpoints on this node.
//! - The node agent (`agent`, `hostlb-controller node-agent`) is the opt-in data plane: one pod
//!   per node that programs every Service the controller's plans give the node, in the node's
//!   own network namespace.
//!
//! Both read EndpointSlices (`endpoints`) through watches whose relists replace what is known
//! only once complete (`listed`). After each change both delete the conntrack entries of the
//! UDP flows that the new rules would send elsewhere (`forget_stale_flows`), since a client that
//! keeps sending would otherwise stay where the old rules sent it.

mod agent;
mod agent_rules;
mod endpoints;
mod error;
mod follower;
pub mod health;
mod listed;
mod listening;
mod local_addresses;

use hostlb_lb::{conntrack, kernel};
use kube::api::{ApiResource, DynamicObject};
use kube::discovery::oneshot;
use kube::runtime::watcher;

pub use agent::run as run_agent;
use endpoints::EndpointSlice;
pub use error::{Error, Result};
pub use follower::follow;

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

/// What the follower and the node agent keep of an EndpointSlice; one that cannot be read is
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

/// Forgets the flows `is_stale` picks, for the follower and the node agent. A failure is logged, not
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
