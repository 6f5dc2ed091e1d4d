//! The only part that talks to the API server: lists what a report is made of, all at once.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Service};
use kube::api::ListParams;
use kube::{Api, Client};

use hostlb_model::names;

use crate::report::Observed;

/// Which Services: those of a namespace or of every one, optionally one by name, or those
/// matching a label selector.
pub struct Scope<'a> {
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub selector: Option<&'a str>,
}

/// The Services of `scope`; `hostlb_namespace`: where the controller puts the proxy DaemonSets.
pub async fn observe(client: &Client, scope: &Scope<'_>, hostlb_namespace: &str) -> kube::Result<Observed> {
    let namespace = scope.namespace;
    let (services, events): (Api<Service>, Api<Event>) = match namespace {
        Some(namespace) => (Api::namespaced(client.clone(), namespace), Api::namespaced(client.clone(), namespace)),
        None => (Api::all(client.clone()), Api::all(client.clone())),
    };
    let nodes: Api<Node> = Api::all(client.clone());
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), hostlb_namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), hostlb_namespace);
    let everything = ListParams::default();
    let mut chosen = ListParams::default();
    if let Some(name) = scope.name {
        chosen = chosen.fields(&format!("metadata.name={name}"));
    }
    if let Some(selector) = scope.selector {
        chosen = chosen.labels(selector);
    }
    let proxies = ListParams::default().labels(&names::managed_selector());
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), hostlb_namespace);
    let agents = ListParams::default().labels(&format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY));
    let warnings = ListParams::default().fields("type=Warning,involvedObject.kind=Service");
    let (services, nodes, daemonsets, pods, agent_objects, warnings) = tokio::try_join!(
        services.list(&chosen),
        nodes.list(&everything),
        daemonsets.list(&proxies),
        pods.list(&proxies),
        config_maps.list(&agents),
        events.list(&warnings),
    )?;
    Ok(Observed {
        services: services.items,
        nodes: nodes.items,
        daemonsets: daemonsets.items,
        pods: pods.items,
        agent_objects: agent_objects.items,
        warnings: warnings.items,
    })
}
