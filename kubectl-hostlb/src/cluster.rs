//! The only part that talks to the API server: lists what a report is made of, all at once.

use std::future::Future;

use anyhow::Context as _;
use hostlb_model::agent::{plan_resource, report_resource};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Service};
use kube::api::{ApiResource, DynamicObject, ListParams, TypeMeta};
use kube::{Api, Client, ResourceExt as _};
use serde::de::DeserializeOwned;

use hostlb_model::names;

use crate::report::Observed;

/// Which Services: those of a namespace or of every one, optionally one by name, or those
/// matching a label selector.
pub struct Scope<'a> {
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub selector: Option<&'a str>,
}

/// The Services of `scope`; `hostlb_namespace`: where the controller puts the proxy DaemonSets
/// and the node agents' plans and reports.
pub async fn observe(client: &Client, scope: &Scope<'_>, hostlb_namespace: &str) -> anyhow::Result<Observed> {
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
    let (plan_resource, report_resource) = (plan_resource(), report_resource());
    let plans: Api<DynamicObject> = Api::namespaced_with(client.clone(), hostlb_namespace, &plan_resource);
    let reports: Api<DynamicObject> = Api::namespaced_with(client.clone(), hostlb_namespace, &report_resource);
    let agents = ListParams::default().labels(&format!("{}={}", names::LABEL_MANAGED_BY, names::MANAGED_BY));
    let warnings = ListParams::default().fields("type=Warning,involvedObject.kind=Service");
    let (services, nodes, daemonsets, pods, plans, reports, warnings) = tokio::try_join!(
        services.list(&chosen),
        nodes.list(&everything),
        daemonsets.list(&proxies),
        pods.list(&proxies),
        unless_undefined(plans.list(&agents)),
        unless_undefined(reports.list(&agents)),
        events.list(&warnings),
    )?;
    Ok(Observed {
        services: services.items,
        nodes: nodes.items,
        daemonsets: daemonsets.items,
        pods: pods.items,
        plans: typed(plans, &plan_resource)?,
        agent_reports: typed(reports, &report_resource)?,
        warnings: warnings.items,
    })
}

/// The objects listed, none where the API server does not know their kind: a cluster whose
/// hostlb predates the node agents' custom resources has no plans and no reports.
async fn unless_undefined(
    list: impl Future<Output = kube::Result<kube::api::ObjectList<DynamicObject>>>,
) -> kube::Result<Vec<DynamicObject>> {
    match list.await {
        Ok(list) => Ok(list.items),
        Err(kube::Error::Api(status)) if status.is_not_found() => Ok(Vec::new()),
        Err(error) => Err(error),
    }
}

/// The objects as the model types them; the error names the one that does not read as such.
fn typed<T: DeserializeOwned>(objects: Vec<DynamicObject>, resource: &ApiResource) -> anyhow::Result<Vec<T>> {
    objects
        .into_iter()
        .map(|mut object| {
            let name = format!("{} {}/{}", resource.kind, object.namespace().unwrap_or_default(), object.name_any());
            // Items of a list may leave out their kind, which the typed objects require.
            object.types.get_or_insert_with(|| TypeMeta {
                api_version: resource.api_version.clone(),
                kind: resource.kind.clone(),
            });
            let value = serde_json::to_value(object).with_context(|| format!("cannot read {name}"))?;
            serde_json::from_value(value).with_context(|| format!("cannot read {name}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostlb_model::agent::{ForwardingPlan, NodeReport};
    use serde_json::json;

    fn listed(item: serde_json::Value) -> DynamicObject {
        serde_json::from_value(item).expect("a valid object")
    }

    #[test]
    fn plans_and_reports_read_as_the_model_types_them_with_or_without_their_kind() {
        let plans = plan_resource();
        assert_eq!((plans.api_version.as_str(), plans.plural.as_str()), ("hostlb.io/v1alpha1", "forwardingplans"));
        let plan = listed(json!({
            "metadata": { "name": "hostlb-web-1234", "namespace": "hostlb-system" },
            "spec": {
                "service": { "namespace": "shop", "name": "web", "uid": "uid-web" },
                "ports": [{ "protocol": "TCP", "port": 80, "targetPort": 8080 }],
                "nodes": ["n1"]
            }
        }));
        let read: Vec<ForwardingPlan> = typed(vec![plan], &plans).expect("the plan reads");
        assert_eq!((read[0].kind.as_str(), read[0].spec.nodes.as_slice()), ("ForwardingPlan", &["n1".to_string()][..]));

        let report = listed(json!({
            "apiVersion": "hostlb.io/v1alpha1",
            "kind": "NodeReport",
            "metadata": { "name": "hostlb-agent.n1", "namespace": "hostlb-system" },
            "spec": { "node": "n1" }
        }));
        let read: Vec<NodeReport> = typed(vec![report], &report_resource()).expect("reads");
        assert_eq!((read[0].spec.node.as_str(), read[0].status.as_ref()), ("n1", None));
    }

    #[test]
    fn an_object_that_does_not_read_is_named() {
        let broken = listed(json!({
            "metadata": { "name": "hostlb-agent.n1", "namespace": "hostlb-system" },
            "spec": { "node": 7 }
        }));
        let error = typed::<NodeReport>(vec![broken], &report_resource()).unwrap_err();
        assert_eq!(error.to_string(), "cannot read NodeReport hostlb-system/hostlb-agent.n1");
    }
}
