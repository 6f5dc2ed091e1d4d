//! `hostlb-controller follow-endpoints`: runs beside the proxy of an `externalTrafficPolicy:
//! Local` Service, in the proxy pod's network namespace, and keeps its nftables forwarding on
//! the Service's ready endpoints on this node (`local_endpoints`) as they come and go. After each
//! change it deletes the conntrack entries of the UDP flows that the new rules would send
//! elsewhere (`hostlb_lb::conntrack`), since a client that keeps sending would otherwise stay
//! where the old rules sent it.
//!
//! A program of the proxy pod that ships in the controller's binary and image: it needs a
//! Kubernetes client, which the controller has and the proxy's own static binary does without.

mod error;
mod local_endpoints;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use hostlb_lb::plan::{Forward, Plan};
use hostlb_lb::{kernel, rules};
use hostlb_proxy_spec::{Family, FollowArgs};
use kube::api::{Api, DynamicObject};
use kube::discovery::oneshot;
use kube::runtime::{watcher, WatchStreamExt};

pub use error::{Error, Result};
use local_endpoints::{node_forwards, EndpointSlice, SERVICE_NAME_LABEL};

/// Without a first list by then the follower exits, so that the pod restarts and the Service
/// gets a ProxyPodFailing Warning instead of a node that silently forwards nothing.
const FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(60);

/// Follows the Service's EndpointSlices until the stream ends or SIGTERM arrives.
pub async fn follow(client: kube::Client, args: FollowArgs) -> Result<()> {
    let plan = Plan::new(&args.rules).map_err(Error::Rules)?;
    // v1 from Kubernetes 1.21 on, v1beta1 before: the same fields either way.
    let group = oneshot::group(&client, "discovery.k8s.io").await.map_err(|error| Error::Discovery(Box::new(error)))?;
    let (resource, _) = group.recommended_kind("EndpointSlice").ok_or(Error::NoEndpointSlices)?;
    let api: Api<DynamicObject> = Api::namespaced_with(client, &args.namespace, &resource);
    let selector = format!("{SERVICE_NAME_LABEL}={}", args.service);
    tracing::info!(
        service = format!("{}/{}", args.namespace, args.service),
        node = args.node,
        api = resource.api_version,
        "following the Service's endpoints on this node"
    );
    let mut events = watcher(api, watcher::Config::default().labels(&selector)).default_backoff().boxed();
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut listed: BTreeMap<String, EndpointSlice> = BTreeMap::new();
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
            Ok(Some(event)) => apply_event(event, &mut slices, &mut listed),
            Ok(None) => return Ok(()),
            Err(error) => {
                tracing::warn!(%error, "watching EndpointSlices failed; retrying");
                false
            }
        };
        if !changed {
            continue;
        }
        let forwards = node_forwards(&args, slices.values());
        if installed.as_ref() == Some(&forwards) {
            continue;
        }
        let applied = plan.with_endpoints(forwards.clone());
        kernel::apply(&rules::ruleset(&applied)).map_err(Error::Rules)?;
        log_forwards(&forwards);
        forget_stale_flows(&applied);
        installed = Some(forwards);
    }
}

/// Takes one watch event into `slices`; true when `slices` may have changed. A relist is
/// gathered in `listed` and replaces `slices` only once complete.
fn apply_event(
    event: watcher::Event<DynamicObject>,
    slices: &mut BTreeMap<String, EndpointSlice>,
    listed: &mut BTreeMap<String, EndpointSlice>,
) -> bool {
    let view = |object: &DynamicObject| -> Option<(String, EndpointSlice)> {
        let name = object.metadata.name.clone()?;
        match serde_json::from_value(object.data.clone()) {
            Ok(slice) => Some((name, slice)),
            Err(error) => {
                tracing::warn!(slice = name, %error, "an EndpointSlice that cannot be read is skipped");
                None
            }
        }
    };
    match event {
        watcher::Event::Init => {
            listed.clear();
            false
        }
        watcher::Event::InitApply(object) => {
            listed.extend(view(&object));
            false
        }
        watcher::Event::InitDone => {
            *slices = std::mem::take(listed);
            true
        }
        watcher::Event::Apply(object) => {
            slices.extend(view(&object));
            true
        }
        watcher::Event::Delete(object) => object.metadata.name.is_some_and(|name| slices.remove(&name).is_some()),
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

/// A failure is logged, not returned: the rules are in place and new flows follow them, and
/// ending the follower would not make the next attempt succeed.
fn forget_stale_flows(applied: &Plan) {
    match kernel::forget_stale_flows(applied) {
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

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn object(name: &str, address: &str) -> DynamicObject {
        DynamicObject {
            types: None,
            metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
            data: json!({"addressType": "IPv4", "endpoints": [{"addresses": [address]}]}),
        }
    }

    #[test]
    fn a_relist_replaces_the_slices_only_when_complete() {
        let (mut slices, mut listed) = (BTreeMap::new(), BTreeMap::new());
        assert!(apply_event(watcher::Event::Apply(object("a", "10.0.0.1")), &mut slices, &mut listed));
        assert!(!apply_event(watcher::Event::Init, &mut slices, &mut listed));
        assert!(!apply_event(watcher::Event::InitApply(object("b", "10.0.0.2")), &mut slices, &mut listed));
        assert_eq!(slices.keys().collect::<Vec<_>>(), ["a"], "the old state stands during the relist");
        assert!(apply_event(watcher::Event::InitDone, &mut slices, &mut listed));
        assert_eq!(slices.keys().collect::<Vec<_>>(), ["b"]);
        assert!(apply_event(watcher::Event::Delete(object("b", "10.0.0.2")), &mut slices, &mut listed));
        assert!(!apply_event(watcher::Event::Delete(object("b", "10.0.0.2")), &mut slices, &mut listed));
        let unreadable = DynamicObject { data: json!({"endpoints": "many"}), ..object("c", "") };
        apply_event(watcher::Event::Apply(unreadable), &mut slices, &mut listed);
        assert!(slices.is_empty(), "an unreadable slice is skipped");
    }
}
