use super::*;
use crate::fixtures::proxy_pod;
use k8s_openapi::api::apps::v1::DaemonSetStatus;
use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateTerminated, ContainerStateWaiting, ContainerStatus, Pod,
};
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
    failing_pods(PROXY_POD, &pods.iter().collect::<Vec<_>>()).into_iter().map(|w| w.message).collect()
}

#[test]
fn a_crashing_init_container_is_reported_with_its_last_words() {
    let pod = with_init(waiting("install-rules", "CrashLoopBackOff", None, Some((3, "nf_tables: not supported\n"))));
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
    assert!(messages(&[pod])[0].ends_with("SysctlForbidden: forbidden sysctl: \"net.ipv4.ip_forward\" not allowlisted"));
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
    assert_eq!(warning.message, "DaemonSet hostlb-system/hostlb-web-1 cannot create pods: exceeded quota: q");
    assert!(creation_failure(&daemonset(2, 2), false, events.iter()).is_none(), "a fixed problem is not reported");
    assert!(creation_failure(&daemonset(2, 0), false, [].iter()).is_none());
    let never_counted = daemonset(0, 0);
    assert!(creation_failure(&never_counted, true, events.iter()).is_some(), "no status, but no pods either");
    assert!(creation_failure(&never_counted, false, events.iter()).is_none());
}
