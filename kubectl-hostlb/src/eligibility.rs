//! Whether a proxy DaemonSet may put a pod on a node, read from the pod template the controller
//! applied (node selector, required node affinity, tolerations), so that the answer is the one
//! the DaemonSet controller and the scheduler act on. Taints are judged by the same function
//! the controller uses for its own count of eligible nodes.

use std::collections::BTreeMap;

use hostlb_model::taints::{describe_taint, repelling_taint};
use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, NodeSelectorTerm, PodSpec};

/// Why a node gets no proxy pod of a DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The node lacks a label the template selects on (`key=value`, or a requirement).
    MissingLabel(String),
    /// The node carries a label the template forbids.
    ForbiddenLabel(String),
    /// The template leaves the node out by name: hostlb does so where an older Service holds
    /// one of the ports.
    LeftOutByName,
    /// A taint the proxy pods do not tolerate (`key=value:Effect`).
    Taint(String),
}

/// `Ok` when the template admits the node, otherwise the first reason it does not.
pub fn admission(template: &PodSpec, node: &Node) -> Result<(), Refusal> {
    let empty = BTreeMap::new();
    let labels = node.metadata.labels.as_ref().unwrap_or(&empty);
    for (key, value) in template.node_selector.iter().flatten() {
        if labels.get(key) != Some(value) {
            return Err(Refusal::MissingLabel(format!("{key}={value}")));
        }
    }
    let required = template
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| a.required_during_scheduling_ignored_during_execution.as_ref());
    if let Some(required) = required {
        // The terms are alternatives: a node matching any of them is admitted.
        let refusals: Vec<Refusal> = required
            .node_selector_terms
            .iter()
            .map(|term| term_refusal(term, labels, node.metadata.name.as_deref().unwrap_or_default()))
            .collect::<Option<_>>()
            .unwrap_or_default();
        if let Some(first) = refusals.into_iter().next() {
            return Err(first);
        }
    }
    let tolerations = template.tolerations.as_deref().unwrap_or_default();
    match repelling_taint(node, tolerations) {
        Some(taint) => Err(Refusal::Taint(describe_taint(taint))),
        None => Ok(()),
    }
}

/// `None` when the term matches the node.
fn term_refusal(term: &NodeSelectorTerm, labels: &BTreeMap<String, String>, node_name: &str) -> Option<Refusal> {
    let expressions = term.match_expressions.iter().flatten();
    let by_label = expressions.filter(|r| !holds(r, labels.get(&r.key).map(String::as_str))).map(|r| {
        if r.operator == "DoesNotExist" {
            Refusal::ForbiddenLabel(r.key.clone())
        } else {
            Refusal::MissingLabel(describe_requirement(r))
        }
    });
    let mut by_field = term.match_fields.iter().flatten().filter(|r| {
        let value = (r.key == "metadata.name").then_some(node_name);
        !holds(r, value)
    });
    let by_field = by_field.next().map(|_| Refusal::LeftOutByName);
    by_label.chain(by_field).next()
}

/// Whether a node's label (or field) value satisfies a requirement; `None` when it has none.
fn holds(requirement: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = requirement.values.as_deref().unwrap_or_default();
    let number = |text: &str| text.parse::<i64>().ok();
    let compared = |wanted: fn(i64, i64) -> bool| matches!((value.and_then(number), values.first().and_then(|v| number(v))), (Some(have), Some(limit)) if wanted(have, limit));
    match requirement.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|w| w == v)),
        "NotIn" => value.is_none_or(|v| values.iter().all(|w| w != v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" => compared(|have, limit| have > limit),
        "Lt" => compared(|have, limit| have < limit),
        _ => false,
    }
}

fn describe_requirement(requirement: &NodeSelectorRequirement) -> String {
    let values = requirement.values.as_deref().unwrap_or_default().join(",");
    match requirement.operator.as_str() {
        "Exists" => requirement.key.clone(),
        operator => format!("{} {operator} ({values})", requirement.key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{node, template};
    use serde_json::json;

    #[test]
    fn a_node_with_the_selected_labels_is_admitted() {
        let template = template(json!({ "nodeSelector": { "kubernetes.io/os": "linux" } }));
        assert_eq!(admission(&template, &node("n1", json!({ "kubernetes.io/os": "linux" }), json!({}))), Ok(()));
    }

    #[test]
    fn a_missing_pool_label_is_named_with_its_value() {
        let template = template(json!({ "nodeSelector": { "hostlb.io/lbpool": "edge" } }));
        let refusal = admission(&template, &node("n1", json!({ "hostlb.io/lbpool": "core" }), json!({})));
        assert_eq!(refusal, Err(Refusal::MissingLabel("hostlb.io/lbpool=edge".into())));
    }

    fn excluding(forbidden: &str, left_out: &[&str]) -> PodSpec {
        let fields: Vec<_> =
            left_out.iter().map(|n| json!({ "key": "metadata.name", "operator": "NotIn", "values": [n] })).collect();
        template(json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{
                "matchExpressions": [{ "key": forbidden, "operator": "DoesNotExist" }],
                "matchFields": fields
            }]
        }}}}))
    }

    #[test]
    fn a_forbidden_label_is_named() {
        let template = excluding("node.kubernetes.io/exclude-from-external-load-balancers", &[]);
        let excluded = node("n1", json!({ "node.kubernetes.io/exclude-from-external-load-balancers": "" }), json!({}));
        assert_eq!(
            admission(&template, &excluded),
            Err(Refusal::ForbiddenLabel("node.kubernetes.io/exclude-from-external-load-balancers".into()))
        );
        assert_eq!(admission(&template, &node("n2", json!({}), json!({}))), Ok(()));
    }

    #[test]
    fn a_node_left_out_by_name_is_told_apart_from_label_refusals() {
        let template = excluding("x", &["n1", "n3"]);
        assert_eq!(admission(&template, &node("n1", json!({}), json!({}))), Err(Refusal::LeftOutByName));
        assert_eq!(admission(&template, &node("n2", json!({}), json!({}))), Ok(()));
    }

    #[test]
    fn any_matching_term_admits_the_node() {
        let template =
            template(json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    { "matchExpressions": [{ "key": "zone", "operator": "In", "values": ["a"] }] },
                    { "matchExpressions": [{ "key": "rank", "operator": "Gt", "values": ["3"] }] }
                ]
            }}}}));
        assert_eq!(admission(&template, &node("n1", json!({ "rank": "4" }), json!({}))), Ok(()));
        assert_eq!(
            admission(&template, &node("n2", json!({ "rank": "2" }), json!({}))),
            Err(Refusal::MissingLabel("zone In (a)".into()))
        );
    }

    #[test]
    fn untolerated_scheduling_taints_are_named_and_others_pass() {
        let template = template(json!({ "tolerations": [
            { "key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule" }
        ]}));
        let taints = |taints| node("n1", json!({}), json!({ "taints": taints }));
        let control_plane = taints(json!([{ "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule" }]));
        assert_eq!(admission(&template, &control_plane), Ok(()));
        let cordoned = taints(json!([{ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" }]));
        assert_eq!(admission(&template, &cordoned), Ok(()), "DaemonSet pods tolerate cordons");
        let preferred = taints(json!([{ "key": "gpu", "effect": "PreferNoSchedule" }]));
        assert_eq!(admission(&template, &preferred), Ok(()));
        let dedicated = taints(json!([{ "key": "dedicated", "value": "db", "effect": "NoExecute" }]));
        assert_eq!(admission(&template, &dedicated), Err(Refusal::Taint("dedicated=db:NoExecute".into())));
    }

    #[test]
    fn an_equal_toleration_needs_the_taints_value() {
        let template = template(json!({ "tolerations": [{ "key": "dedicated", "operator": "Equal", "value": "lb" }] }));
        let tainted = |value| {
            node("n1", json!({}), json!({ "taints": [{ "key": "dedicated", "value": value, "effect": "NoSchedule" }] }))
        };
        assert_eq!(admission(&template, &tainted("lb")), Ok(()));
        assert!(admission(&template, &tainted("db")).is_err());
    }
}
