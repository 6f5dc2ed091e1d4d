//! Whether a node's taints keep a proxy pod off it, as the scheduler and the DaemonSet
//! controller decide: the controller's eligibility and the kubectl plugin both ask this, so
//! that the two never disagree.

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

use crate::names;
use crate::options::{annotation_error, is_label_value, FieldError};

/// Taints the DaemonSet controller tolerates on every DaemonSet pod by itself.
const TOLERATED_BY_DAEMONSETS: [&str; 6] = [
    "node.kubernetes.io/not-ready",
    "node.kubernetes.io/unreachable",
    "node.kubernetes.io/disk-pressure",
    "node.kubernetes.io/memory-pressure",
    "node.kubernetes.io/pid-pressure",
    "node.kubernetes.io/unschedulable",
];

/// The first of the node's taints that keeps a DaemonSet pod with these tolerations off it:
/// a NoSchedule or NoExecute taint that none of them tolerates.
pub fn repelling_taint<'a>(node: &'a Node, tolerations: &[Toleration]) -> Option<&'a Taint> {
    let taints = node.spec.as_ref().and_then(|spec| spec.taints.as_deref()).unwrap_or_default();
    taints.iter().find(|taint| {
        matches!(taint.effect.as_str(), "NoSchedule" | "NoExecute")
            && !TOLERATED_BY_DAEMONSETS.contains(&taint.key.as_str())
            && !tolerations.iter().any(|toleration| tolerates(toleration, taint))
    })
}

fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect_matches = toleration.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
    let key_matches = toleration.key.as_deref().is_none_or(|k| k.is_empty() || k == taint.key);
    let value_matches = match toleration.operator.as_deref() {
        Some("Exists") => true,
        _ => toleration.value.as_deref().unwrap_or_default() == taint.value.as_deref().unwrap_or_default(),
    };
    effect_matches && key_matches && value_matches
}

/// What the API server would refuse in the Service's tolerations, as it checks a pod's: one
/// error for the whole list, naming each bad item. Where no pod carries them (the node agents
/// read them to choose nodes), nothing else would say so.
pub fn invalid_tolerations(tolerations: &[Toleration]) -> Option<FieldError> {
    let problems: Vec<String> = tolerations
        .iter()
        .enumerate()
        .filter_map(|(index, toleration)| Some(format!("item {index}: {}", toleration_problem(toleration)?)))
        .collect();
    let shown: Vec<&str> = problems.iter().take(3).map(String::as_str).collect();
    let more = problems.len().saturating_sub(shown.len());
    let more = if more > 0 { format!(", and {more} more") } else { String::new() };
    (!problems.is_empty())
        .then(|| annotation_error(names::ANNOTATION_TOLERATIONS, format!("{}{more}", shown.join("; "))))
}

fn toleration_problem(toleration: &Toleration) -> Option<String> {
    let value = toleration.value.as_deref().unwrap_or_default();
    let effect = toleration.effect.as_deref().unwrap_or_default();
    match toleration.operator.as_deref().unwrap_or_default() {
        "Exists" if !value.is_empty() => return Some(format!("operator Exists with value {value:?}")),
        "Exists" => {}
        "" | "Equal" if !is_label_value(value) => return Some(format!("value {value:?} is not a label value")),
        "" | "Equal" => {}
        other => return Some(format!("operator {other:?} is neither Equal nor Exists")),
    }
    if !matches!(effect, "" | "NoSchedule" | "PreferNoSchedule" | "NoExecute") {
        return Some(format!("effect {effect:?} is not NoSchedule, PreferNoSchedule or NoExecute"));
    }
    if toleration.toleration_seconds.is_some() && effect != "NoExecute" {
        return Some("tolerationSeconds needs effect NoExecute".into());
    }
    None
}

/// `key=value:Effect`, or `key:Effect` without a value, as kubectl writes taints.
pub fn describe_taint(taint: &Taint) -> String {
    match taint.value.as_deref().filter(|v| !v.is_empty()) {
        Some(value) => format!("{}={value}:{}", taint.key, taint.effect),
        None => format!("{}:{}", taint.key, taint.effect),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tolerations_the_api_server_would_refuse_are_named_in_one_error() {
        let tolerations: Vec<Toleration> = serde_json::from_value(json!([
            { "key": "a", "operator": "Exists" },
            { "key": "b", "operator": "Equal", "value": "v", "effect": "NoExecute", "tolerationSeconds": 30 },
            { "key": "c", "operator": "Sometimes" },
            { "key": "d", "operator": "Exists", "value": "v" },
            { "key": "e", "value": "not a value!" },
            { "key": "f", "effect": "Never" },
            { "key": "g", "tolerationSeconds": 5 },
        ]))
        .unwrap();
        assert!(invalid_tolerations(&tolerations[..2]).is_none());
        let error = invalid_tolerations(&tolerations).unwrap();
        assert_eq!(error.field, "metadata.annotations[hostlb.io/tolerations]");
        assert_eq!(
            error.message,
            "item 2: operator \"Sometimes\" is neither Equal nor Exists; item 3: operator Exists with value \"v\"; \
             item 4: value \"not a value!\" is not a label value, and 2 more"
        );
    }

    fn tainted(taints: serde_json::Value) -> Node {
        serde_json::from_value(json!({ "metadata": { "name": "n1" }, "spec": { "taints": taints } })).unwrap()
    }

    fn tolerations(list: serde_json::Value) -> Vec<Toleration> {
        serde_json::from_value(list).unwrap()
    }

    #[test]
    fn untolerated_scheduling_taints_repel_and_others_do_not() {
        let control_plane =
            tolerations(json!([{ "key": "node-role.kubernetes.io/control-plane", "operator": "Exists" }]));
        let repelled = |taints| repelling_taint(&tainted(taints), &control_plane).map(describe_taint);
        let tolerated = json!([{ "key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule" }]);
        assert_eq!(repelled(tolerated), None);
        let cordoned = json!([{ "key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule" }]);
        assert_eq!(repelled(cordoned), None, "DaemonSet pods tolerate cordons");
        assert_eq!(repelled(json!([{ "key": "gpu", "effect": "PreferNoSchedule" }])), None);
        let dedicated = json!([{ "key": "dedicated", "value": "db", "effect": "NoExecute" }]);
        assert_eq!(repelled(dedicated).as_deref(), Some("dedicated=db:NoExecute"));
        assert_eq!(repelled(json!([{ "key": "x", "effect": "NoSchedule" }])).as_deref(), Some("x:NoSchedule"));
    }

    #[test]
    fn an_equal_toleration_needs_the_taints_value_and_effect() {
        let lb =
            tolerations(json!([{ "key": "dedicated", "operator": "Equal", "value": "lb", "effect": "NoSchedule" }]));
        let taint =
            |value: &str, effect: &str| tainted(json!([{ "key": "dedicated", "value": value, "effect": effect }]));
        assert!(repelling_taint(&taint("lb", "NoSchedule"), &lb).is_none());
        assert!(repelling_taint(&taint("db", "NoSchedule"), &lb).is_some());
        assert!(repelling_taint(&taint("lb", "NoExecute"), &lb).is_some());
        let everything = tolerations(json!([{ "operator": "Exists" }]));
        assert!(repelling_taint(&taint("db", "NoExecute"), &everything).is_none());
    }
}
