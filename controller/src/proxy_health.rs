//! Why a Service's proxy pods are not created, not running or not ready, when that is not
//! normal start-up: read from the pods' own status and from the DaemonSet controller's
//! FailedCreate Events, so that a failure anywhere in the chain shows on the Service.

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use k8s_openapi::jiff::Timestamp;

use crate::events::{Reason, Warning};
use crate::index::key_of;
use crate::status::{pod_is_ready, pod_node};

/// What decisions read of a proxy pod, and all the index keeps of one. A whole k8s-openapi
/// `Pod` is about 5 KB in memory even with most fields unset (its `PodSpec` alone is 1.4 KB,
/// for the one field read here), and a controller with many Services on many nodes keeps
/// thousands of proxy pods.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyPod {
    /// `namespace/name`, as messages name it.
    pub key: String,
    /// The node it is bound to, if any yet.
    pub node: Option<String>,
    pub created: Option<Timestamp>,
    pub deleting: bool,
    /// Ready, and not being deleted.
    pub ready: bool,
    /// The scheduler's message while it reports the pod Unschedulable.
    pub unschedulable: Option<String>,
    /// Why it failed or is stuck, when that is not normal start-up.
    pub failure: Option<String>,
}

impl ProxyPod {
    pub fn of(pod: &Pod) -> Self {
        let conditions = pod.status.as_ref().and_then(|status| status.conditions.as_ref());
        let unschedulable = conditions
            .into_iter()
            .flatten()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False" && c.reason.as_deref() == Some("Unschedulable"));
        ProxyPod {
            key: key_of(pod),
            node: pod_node(pod).map(str::to_string),
            created: pod.metadata.creation_timestamp.as_ref().map(|time| time.0),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            ready: pod_is_ready(pod),
            unschedulable: unschedulable.map(|c| c.message.clone().unwrap_or_else(|| "no reason given".into())),
            failure: failure_of(pod),
        }
    }
}

/// Waiting reasons that do not pass by themselves; ContainerCreating and PodInitializing do.
const STUCK: [&str; 7] = [
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
];

/// One Warning per proxy pod that failed or is stuck, naming the pod, its node and the reason.
pub fn failing_pods(pods: &[&ProxyPod]) -> Vec<Warning> {
    let failing = pods.iter().filter(|pod| !pod.deleting);
    failing
        .filter_map(|pod| {
            let node = pod.node.as_deref().unwrap_or("no node yet");
            let message = format!("proxy pod {} on {node}: {}", pod.key, pod.failure.as_deref()?);
            Some(Warning::new(Reason::ProxyPodFailing, message))
        })
        .collect()
}

/// One Warning per proxy pod that the scheduler cannot place, with the scheduler's message.
pub fn unschedulable(pods: &[&ProxyPod]) -> Vec<Warning> {
    let message =
        |pod: &ProxyPod| Some(format!("proxy pod {} cannot be scheduled: {}", pod.key, pod.unschedulable.as_deref()?));
    pods.iter().filter_map(|pod| Some(Warning::new(Reason::ProxyPodUnschedulable, message(pod)?))).collect()
}

fn failure_of(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if status.phase.as_deref() == Some("Failed") {
        let reason = status.reason.as_deref().unwrap_or("Failed");
        Some(format!("{reason}: {}", status.message.as_deref().unwrap_or("no message")))
    } else {
        let init = status.init_container_statuses.iter().flatten();
        init.chain(status.container_statuses.iter().flatten()).find_map(container_failure)
    }
}

fn container_failure(container: &ContainerStatus) -> Option<String> {
    let waiting = container.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref().filter(|reason| STUCK.contains(reason))?;
    let last_exit = container.last_state.as_ref().and_then(|s| s.terminated.as_ref()).map(|exit| {
        let said = exit.message.as_deref().or(exit.reason.as_deref()).unwrap_or("no message");
        format!("; last exit {}: {}", exit.exit_code, said.trim())
    });
    let message = waiting.message.as_deref().map(|m| format!(" ({m})")).unwrap_or_default();
    Some(format!("container {}: {reason}{message}{}", container.name, last_exit.unwrap_or_default()))
}

/// The DaemonSet controller's latest reason for not creating proxy pods, while some are
/// missing: fewer proxy pods exist than nodes they may run on (`fewer_pods_than_nodes`), or the
/// DaemonSet's status says so. A DaemonSet whose pods cannot be created at all may never get
/// a status, hence the count. Older Events about a problem since fixed are not reported.
pub fn creation_failure<'a>(
    daemonset: &DaemonSet,
    fewer_pods_than_nodes: bool,
    failures: impl Iterator<Item = &'a Event>,
) -> Option<Warning> {
    let status = daemonset.status.clone().unwrap_or_default();
    if !fewer_pods_than_nodes && status.current_number_scheduled >= status.desired_number_scheduled {
        return None;
    }
    let latest = failures.max_by_key(|event| event.last_timestamp.as_ref().map(|time| time.0))?;
    let message = latest.message.as_deref().unwrap_or("no message");
    // "Error creating: pods "NAME" is forbidden: WHY": the pod name changes with every try.
    let why = message.split_once(" is forbidden: ").map_or(message, |(_, why)| why);
    let message = format!("DaemonSet {} cannot create proxy pods: {why}", key_of(daemonset));
    Some(Warning::new(Reason::ProxyPodsNotCreated, message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::proxy_pod;
    use k8s_openapi::api::apps::v1::DaemonSetStatus;
    use k8s_openapi::api::core::v1::{ContainerState, ContainerStateTerminated, ContainerStateWaiting};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn waiting(name: &str, reason: &str, message: Option<&str>, last_exit: Option<(i32, &str)>) -> ContainerStatus {
        ContainerStatus {
            name: name.into(),
            state: Some(ContainerState {
                waiting: Some(ContainerStateWaiting { reason: Some(reason.into()), message: message.map(Into::into) }),
                ..Default::default()
            }),
            last_state: last_exit.map(|(code, message)| ContainerState {
                terminated: Some(ContainerStateTerminated {
                    exit_code: code,
                    message: Some(message.into()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn with_init(status: ContainerStatus) -> Pod {
        let mut pod = proxy_pod("p1", "n1", false);
        pod.status.as_mut().unwrap().init_container_statuses = Some(vec![status]);
        pod
    }

    fn messages(pods: &[Pod]) -> Vec<String> {
        let pods: Vec<ProxyPod> = pods.iter().map(ProxyPod::of).collect();
        failing_pods(&pods.iter().collect::<Vec<_>>()).into_iter().map(|w| w.message).collect()
    }

    #[test]
    fn a_crashing_init_container_is_reported_with_its_last_words() {
        let pod =
            with_init(waiting("install-rules", "CrashLoopBackOff", None, Some((3, "nf_tables: not supported\n"))));
        assert_eq!(
            messages(&[pod]),
            vec![
                "proxy pod hostlb-system/p1 on n1: container install-rules: CrashLoopBackOff; last exit 3: nf_tables: \
                  not supported"
            ]
        );
    }

    #[test]
    fn an_image_that_cannot_be_pulled_is_reported() {
        let mut pod = proxy_pod("p1", "n1", false);
        let status = waiting("hold", "ImagePullBackOff", Some("Back-off pulling image \"x\""), None);
        pod.status.as_mut().unwrap().container_statuses = Some(vec![status]);
        assert_eq!(
            messages(&[pod]),
            vec!["proxy pod hostlb-system/p1 on n1: container hold: ImagePullBackOff (Back-off pulling image \"x\")"]
        );
    }

    #[test]
    fn a_pod_the_kubelet_refused_is_reported() {
        let mut pod = proxy_pod("p1", "n1", false);
        let status = pod.status.as_mut().unwrap();
        status.phase = Some("Failed".into());
        status.reason = Some("SysctlForbidden".into());
        status.message = Some("forbidden sysctl: \"net.ipv4.ip_forward\" not allowlisted".into());
        assert!(
            messages(&[pod])[0].ends_with("SysctlForbidden: forbidden sysctl: \"net.ipv4.ip_forward\" not allowlisted")
        );
    }

    #[test]
    fn normal_start_up_and_ready_pods_are_not_failures() {
        let creating = with_init(waiting("install-rules", "PodInitializing", None, None));
        assert!(messages(&[creating, proxy_pod("p2", "n2", true)]).is_empty());
    }

    fn daemonset(desired: i32, current: i32) -> DaemonSet {
        let mut daemonset = DaemonSet::default();
        daemonset.metadata.name = Some("hostlb-web-1".into());
        daemonset.metadata.namespace = Some("hostlb-system".into());
        daemonset.status = Some(DaemonSetStatus {
            desired_number_scheduled: desired,
            current_number_scheduled: current,
            ..Default::default()
        });
        daemonset
    }

    fn failed_create(seconds: i64, message: &str) -> Event {
        Event {
            message: Some(message.into()),
            last_timestamp: Some(Time(k8s_openapi::jiff::Timestamp::from_second(seconds).unwrap())),
            ..Default::default()
        }
    }

    #[test]
    fn missing_pods_are_explained_by_the_latest_failed_creation() {
        let events = [
            failed_create(10, "Error creating: pods \"hostlb-web-1-aaaaa\" is forbidden: old reason"),
            failed_create(20, "Error creating: pods \"hostlb-web-1-bbbbb\" is forbidden: exceeded quota: q"),
        ];
        let warning = creation_failure(&daemonset(2, 0), false, events.iter()).unwrap();
        assert_eq!(warning.reason, Reason::ProxyPodsNotCreated);
        assert_eq!(warning.message, "DaemonSet hostlb-system/hostlb-web-1 cannot create proxy pods: exceeded quota: q");
        assert!(creation_failure(&daemonset(2, 2), false, events.iter()).is_none(), "a fixed problem is not reported");
        assert!(creation_failure(&daemonset(2, 0), false, [].iter()).is_none());
        let never_counted = daemonset(0, 0);
        assert!(creation_failure(&never_counted, true, events.iter()).is_some(), "no status, but no pods either");
        assert!(creation_failure(&never_counted, false, events.iter()).is_none());
    }
}
