//! `hostlb-controller follow-endpoints`: runs beside the proxy of an `externalTrafficPolicy:
//! Local` Service, in the proxy pod's network namespace, and keeps its nftables forwarding on
//! the Service's ready endpoints on this node (`endpoints`) as they come and go.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hostlb_contract::{Family, FollowArgs};
use hostlb_lb::port_forwarding::{Forward, PortForwarding};
use hostlb_lb::{conntrack, kernel, rules};
use kube::api::{Api, DynamicObject};
use kube::runtime::{watcher, WatchStreamExt};

use crate::endpoints::{endpoint_forwards, EndpointSlice, SERVICE_NAME_LABEL};
use crate::listed::Listed;
use crate::{endpoint_slice, endpoint_slice_resource, forget_stale_flows, signal, watch_config, Error, Result};

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
