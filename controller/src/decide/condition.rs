//! hostlb's own condition on a Service, `hostlb.io/Ready`: whether the Service is published and,
//! when not on every node it could be, why, for `kubectl wait`, `kubectl describe` and GitOps
//! health checks. Pure: the executor adds the transition time.

use std::collections::BTreeMap;

use hostlb_model::names;
use hostlb_model::options::is_handled;
use hostlb_model::reason::{bounded, Reason, Warning};
use hostlb_model::service::ServiceView;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::decide::settings::Settings;

/// How many of the Services this install serves carry each reason of its condition, as the
/// API server has them: the same on every replica, leading or not.
pub fn reasons_of_served<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    settings: &Settings,
) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    let served = services
        .into_iter()
        .filter(|service| is_handled(service, &settings.load_balancer_class, settings.serve_unclassed));
    for service in served {
        let conditions = service.status.iter().flat_map(|status| status.conditions.iter().flatten());
        if let Some(ready) = conditions.into_iter().find(|condition| condition.type_ == names::CONDITION_READY) {
            *counts.entry(ready.reason.clone()).or_default() += 1;
        }
    }
    counts
}

/// The condition as hostlb wants it, without its transition time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ready {
    pub ready: bool,
    pub reason: &'static str,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What the decision found out about a Service, as the condition reports it.
pub struct Findings<'a> {
    /// Whether the Service's options could be honoured at all.
    pub valid: bool,
    /// Nodes that may serve it (admitted, no taint its proxies do not tolerate, Ready, not
    /// cordoned, not held by an older Service).
    pub eligible_nodes: usize,
    /// Nodes whose proxy pod is Ready there.
    pub serving_nodes: usize,
    /// Whether any of its nodes or ports go to other Services or are refused.
    pub partly_held: bool,
    pub warnings: &'a [Warning],
}

/// Which Warning explains an unpublished or partly published Service, most telling first.
const EXPLAINING: [(Reason, &str); 8] = [
    (Reason::InvalidOption, "InvalidOption"),
    (Reason::NoEligibleNode, "NoEligibleNodes"),
    (Reason::PortRefused, "PortRefused"),
    (Reason::PortConflict, "PortConflict"),
    (Reason::ForwardingNameTaken, "DaemonSetNameTaken"),
    (Reason::ProxyPodsNotCreated, "ProxyPodsFailing"),
    (Reason::ProxyPodUnschedulable, "ProxyPodsFailing"),
    (Reason::ProxyPodFailing, "ProxyPodsFailing"),
];

pub fn ready(service: &ServiceView, findings: &Findings<'_>) -> Ready {
    let explanation = EXPLAINING
        .iter()
        .find_map(|(reason, name)| Some((*name, findings.warnings.iter().find(|w| w.reason == *reason)?)));
    let served = format!("{} of {} eligible nodes serve", findings.serving_nodes, findings.eligible_nodes);
    let (ready, reason, message) = match explanation {
        None if findings.serving_nodes == 0 => {
            (false, "Pending", format!("{served}: waiting for proxy pods to become ready"))
        }
        None if findings.serving_nodes < findings.eligible_nodes || findings.partly_held => {
            (true, "PartiallyServing", served)
        }
        None => (true, "Serving", served),
        Some((name, warning)) if findings.serving_nodes == 0 => (false, name, warning.message.clone()),
        Some((name, warning)) => {
            let reason = if findings.valid { "PartiallyServing" } else { name };
            (true, reason, format!("{served}; {name}: {}", warning.message))
        }
    };
    // Bounded like an Event's note: a status over the API server's limits would be refused
    // as a whole.
    Ready { ready, reason, message: bounded(message), observed_generation: service.generation }
}

/// Whether the Service's condition is not yet `desired`.
pub fn differs(service: &ServiceView, desired: &Ready) -> bool {
    service.condition.as_ref().is_none_or(|c| {
        c.status != status_text(desired.ready)
            || c.reason != desired.reason
            || c.message != desired.message
            || c.observed_generation != desired.observed_generation
    })
}

/// The condition to write: its transition time moves only when its status changes.
pub fn to_api(desired: &Ready, existing: Option<&Condition>, now: Time) -> Condition {
    let unchanged = existing.filter(|c| c.status == status_text(desired.ready));
    Condition {
        type_: names::CONDITION_READY.into(),
        status: status_text(desired.ready).into(),
        reason: desired.reason.into(),
        message: desired.message.clone(),
        observed_generation: desired.observed_generation,
        last_transition_time: unchanged.map_or(now, |c| c.last_transition_time.clone()),
    }
}

fn status_text(ready: bool) -> &'static str {
    if ready {
        "True"
    } else {
        "False"
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::ServiceStatus;
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::fixtures::ServiceBuilder;
    use hostlb_model::reason::MAX_NOTE_BYTES;

    fn findings(valid: bool, eligible: usize, serving: usize, warnings: &[Warning]) -> Findings<'_> {
        Findings { valid, eligible_nodes: eligible, serving_nodes: serving, partly_held: false, warnings }
    }

    fn summary(condition: Ready) -> (bool, &'static str, String) {
        (condition.ready, condition.reason, condition.message)
    }

    #[test]
    fn served_services_are_counted_by_the_reason_of_their_condition() {
        let with_reason = |name: &str, class: Option<&str>, reason: &str| {
            let mut builder = ServiceBuilder::new(name);
            if let Some(class) = class {
                builder = builder.class(class);
            }
            let mut service = builder.build();
            let condition = Condition {
                type_: names::CONDITION_READY.into(),
                status: "True".into(),
                reason: reason.into(),
                message: String::new(),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
                observed_generation: None,
            };
            service.status = Some(ServiceStatus { conditions: Some(vec![condition]), ..Default::default() });
            service
        };
        let services = [
            with_reason("a", None, "Serving"),
            with_reason("b", None, "Serving"),
            with_reason("c", None, "PortConflict"),
            with_reason("d", Some("example.com/other"), "Serving"),
            ServiceBuilder::new("e").build(),
        ];
        let counts = reasons_of_served(&services, &crate::fixtures::settings());
        assert_eq!(counts, BTreeMap::from([("PortConflict".to_string(), 1), ("Serving".to_string(), 2)]));
    }

    #[test]
    fn reasons_say_how_much_is_served_and_what_stands_in_the_way() {
        let service = ServiceView::of(&ServiceBuilder::new("web").build());
        let conflict = [Warning::new(Reason::PortConflict, "port 80/TCP is held on n1, n2")];
        let failing = [Warning::new(Reason::ProxyPodFailing, "proxy pod x: ImagePullBackOff")];
        let invalid = [Warning::new(Reason::InvalidOption, "spec.ports[0].protocol: QUIC")];
        let cases = [
            (findings(true, 2, 2, &[]), (true, "Serving", "2 of 2 eligible nodes serve")),
            (findings(true, 2, 1, &[]), (true, "PartiallyServing", "1 of 2 eligible nodes serve")),
            (
                findings(true, 2, 0, &[]),
                (false, "Pending", "0 of 2 eligible nodes serve: waiting for proxy pods to become ready"),
            ),
            (findings(true, 0, 0, &conflict), (false, "PortConflict", "port 80/TCP is held on n1, n2")),
            (
                findings(true, 2, 1, &failing),
                (
                    true,
                    "PartiallyServing",
                    "1 of 2 eligible nodes serve; ProxyPodsFailing: proxy pod x: ImagePullBackOff",
                ),
            ),
            (findings(true, 2, 0, &failing), (false, "ProxyPodsFailing", "proxy pod x: ImagePullBackOff")),
            (
                findings(false, 2, 2, &invalid),
                (true, "InvalidOption", "2 of 2 eligible nodes serve; InvalidOption: spec.ports[0].protocol: QUIC"),
            ),
            (findings(false, 2, 0, &invalid), (false, "InvalidOption", "spec.ports[0].protocol: QUIC")),
        ];
        for (findings, (ready, reason, message)) in cases {
            assert_eq!(summary(super::ready(&service, &findings)), (ready, reason, message.to_string()));
        }
        let held = Findings { partly_held: true, ..findings(true, 1, 1, &[]) };
        assert_eq!(super::ready(&service, &held).reason, "PartiallyServing");
    }

    #[test]
    fn messages_are_bounded_like_event_notes() {
        let service = ServiceView::of(&ServiceBuilder::new("web").build());
        let failing = [Warning::new(Reason::ProxyPodFailing, "x".repeat(40_000))];
        let condition = super::ready(&service, &findings(true, 3, 2, &failing));
        assert!(condition.message.len() <= MAX_NOTE_BYTES, "{} bytes", condition.message.len());
        assert!(condition.message.starts_with("2 of 3 eligible nodes serve; ProxyPodsFailing: xxx"));
    }

    #[test]
    fn the_transition_time_moves_only_with_the_status() {
        let mut service = ServiceBuilder::new("web").build();
        let desired = super::ready(&ServiceView::of(&service), &findings(true, 1, 1, &[]));
        assert!(differs(&ServiceView::of(&service), &desired), "no condition yet");
        let then = Time(Timestamp::from_second(1_000).unwrap());
        let now = Time(Timestamp::from_second(2_000).unwrap());
        let written = to_api(&desired, None, then.clone());
        service.status = Some(ServiceStatus { conditions: Some(vec![written.clone()]), ..Default::default() });
        let view = ServiceView::of(&service);
        assert!(!differs(&view, &desired));

        let fewer = super::ready(&view, &findings(true, 2, 1, &[]));
        assert!(differs(&view, &fewer));
        assert_eq!(to_api(&fewer, view.condition.as_ref(), now.clone()).last_transition_time, then, "still True");
        let none = super::ready(&view, &findings(true, 2, 0, &[]));
        assert_eq!(to_api(&none, view.condition.as_ref(), now.clone()).last_transition_time, now, "True to False");
    }
}
