use super::*;
use crate::decide::dataplane::node_agents::{desired_agent, desired_plan};
use crate::decide::dataplane::proxy_daemonset::{config_hash_of, desired_daemonset};
use crate::decide::dataplane::proxy_pods::needs_apply;
use crate::decide::dataplane::{erased, typed};
use crate::fixtures::index_of;
use crate::fixtures::{failed_create, made_from, proxy_pod, settings, NodeBuilder, ServiceBuilder, UID};
use crate::state::key_of;
use hostlb_model::address::IpMode;
use k8s_openapi::api::apps::v1::DaemonSet;
use kube::runtime::watcher;

const SECOND: k8s_openapi::jiff::SignedDuration = k8s_openapi::jiff::SignedDuration::from_secs(1);
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::{LoadBalancerStatus, PodCondition, ServiceStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// An agent's report that node `node` forwards (or not) the fixtures' Service.
fn agent_report(node: &str, forwarding: bool) -> kube::api::DynamicObject {
    crate::fixtures::written_report(node, &[(UID, "shop/web", forwarding)])
}

#[test]
fn switching_data_planes_removes_the_old_forwarding_only_once_the_new_one_forwards_everywhere_it_did() {
    let service = ServiceBuilder::new("web").build();
    let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
    let view = ServiceView::of(&service);
    let lb = ServiceLb::from_service(&service).unwrap();
    let mut agent_settings = settings();
    agent_settings.forwarding.dataplane = DataPlaneKind::Agent;
    let daemonset = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings().forwarding);
    let plan = desired_plan(&lb, &["n1", "n2"], &agent_settings.forwarding);
    let pods = [made_from(proxy_pod("p1", "n1", true), &daemonset), made_from(proxy_pod("p2", "n2", true), &daemonset)];
    let objects = [(DataPlaneKind::Pods, erased(&daemonset)), (DataPlaneKind::Agent, erased(&plan))];
    let decide_in = |index: &Index, settings: &Settings| {
        let current = settings.forwarding.dataplane;
        let observed = Observed {
            service: &view,
            forwarding: objects.iter().find(|(kind, _)| *kind == current).map(|(_, object)| object),
            last_applied: None,
            previous: objects
                .iter()
                .filter(|(kind, _)| *kind != current)
                .map(|(kind, object)| (*kind, object))
                .collect(),
            now: Timestamp::now(),
        };
        match decide(&observed, index, settings) {
            Decision::Serve(serving) => *serving,
            other => panic!("expected to serve, got {other:?}"),
        }
    };
    let mut index = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&daemonset));
    index.apply_plan(&watcher::Event::Apply(erased(&plan)));
    index.apply_agent_report(&watcher::Event::Apply(agent_report("n1", true)), std::time::Instant::now());
    index.apply_agent_report(&watcher::Event::Apply(agent_report("n2", false)), std::time::Instant::now());

    let to_agents = decide_in(&index, &agent_settings);
    assert!(!touches(&to_agents, "DaemonSet"), "n2's agent does not forward yet: the proxy pods stay");
    let to_pods = decide_in(&index, &settings());
    assert!(deletes(&to_pods, "ForwardingPlan"), "the pods forward wherever the agents do");

    index.apply_agent_report(&watcher::Event::Apply(agent_report("n2", true)), std::time::Instant::now());
    let to_agents = decide_in(&index, &agent_settings);
    assert!(deletes(&to_agents, "DaemonSet"), "both agents forward now");
    index.apply_proxy_pod(&watcher::Event::Delete(pods[1].clone()), Timestamp::now());
    let to_pods = decide_in(&index, &settings());
    assert!(!touches(&to_pods, "ForwardingPlan"), "n2's proxy pod is gone: the agents keep forwarding there");
}

fn served_by_agents(service: &Service, index: &Index) -> Serving {
    let mut settings = settings();
    settings.forwarding.dataplane = DataPlaneKind::Agent;
    let view = ServiceView::of(service);
    let observed =
        Observed { service: &view, forwarding: None, last_applied: None, previous: Vec::new(), now: Timestamp::now() };
    match decide(&observed, index, &settings) {
        Decision::Serve(serving) => *serving,
        other => panic!("expected to serve, got {other:?}"),
    }
}

#[test]
fn with_the_node_agents_a_service_says_why_the_agent_of_a_node_it_may_use_does_not_run() {
    let service = ServiceBuilder::new("web").build();
    let nodes = [NodeBuilder::new("n1").build(), NodeBuilder::new("n2").build()];
    let pods = [crate::fixtures::agent_pod("n1", "ImagePullBackOff")];
    let mut index = index_of(std::slice::from_ref(&service), &nodes, &pods, &[]);
    let agents = desired_agent(&settings().forwarding);
    index
        .agents
        .apply(&watcher::Event::Apply(agents.clone()), |agents| Some((std::sync::Arc::new(agents.clone()), vec![])));
    let failed =
        failed_create("f1", &agents, "Error creating: pods \"hostlb-agent-x\" is forbidden: exceeded quota: q");
    index.apply_creation_failure(&watcher::Event::Apply(failed));

    let serving = served_by_agents(&service, &index);
    let messages: Vec<(Reason, &str)> = serving.warnings.iter().map(|w| (w.reason, w.message.as_str())).collect();
    assert_eq!(
        messages,
        [
            (
                Reason::ProxyPodFailing,
                "node agent hostlb-system/hostlb-agent-n1 on n1: container agent: ImagePullBackOff (cannot pull)"
            ),
            (Reason::ProxyPodsNotCreated, "DaemonSet hostlb-system/hostlb-agent cannot create pods: exceeded quota: q"),
        ]
    );
    assert!(served(&service, &index, None).warnings.is_empty(), "proxy pods need no agent");
}

#[test]
fn with_the_node_agents_bad_tolerations_are_refused_and_a_priority_class_is_said_to_be_unused() {
    let tolerations = r#"[{"key":"example.com/dedicated","operator":"Sometimes"}]"#;
    let service = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, tolerations).build();
    let mut index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let serving = served_by_agents(&service, &index);
    assert_eq!(reasons(&serving.warnings), [Reason::InvalidOption]);
    assert!(serving.warnings[0].message.contains("item 0: operator \"Sometimes\" is neither Equal nor Exists"));
    assert!(!touches(&serving, "ForwardingPlan"), "the plan is left as it was");

    let classed = ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "hostlb-proxy").build();
    index = index_of(std::slice::from_ref(&classed), &[NodeBuilder::new("n1").build()], &[], &[]);
    let serving = served_by_agents(&classed, &index);
    assert_eq!(reasons(&serving.warnings), [Reason::OptionIgnored]);
    assert!(touches(&serving, "ForwardingPlan"), "served all the same");
}

fn served(service: &Service, index: &Index, daemonset: Option<&DaemonSet>) -> Serving {
    served_at(service, index, daemonset, Timestamp::now())
}

fn served_at(service: &Service, index: &Index, daemonset: Option<&DaemonSet>, now: Timestamp) -> Serving {
    let last_applied = daemonset.map(|d| Applied {
        generation: d.metadata.generation.unwrap_or_default(),
        config_hash: config_hash_of(d).unwrap_or_default().into(),
    });
    let view = ServiceView::of(service);
    let daemonset = daemonset.map(erased);
    let observed = Observed {
        service: &view,
        forwarding: daemonset.as_ref(),
        last_applied: last_applied.as_ref(),
        previous: Vec::new(),
        now,
    };
    match decide(&observed, index, &settings()) {
        Decision::Serve(serving) => *serving,
        other => panic!("expected to serve, got {other:?}"),
    }
}

fn with_finalizer(mut service: Service) -> Service {
    service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
    service
}

#[test]
fn the_finalizer_of_an_older_version_is_removed_from_a_served_service() {
    let service = with_finalizer(ServiceBuilder::new("web").build());
    let serving = served(&service, &index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]), None);
    assert!(serving.remove_finalizer);
}

fn ips(addresses: &[&str]) -> Vec<Address> {
    addresses.iter().map(|a| Address::Ip(a.parse().unwrap())).collect()
}

fn published(mut service: Service, addresses: &[&str]) -> Service {
    let ingress = hostlb_model::service::ingress(&ips(addresses), Some(IpMode::Vip));
    service.status = Some(ServiceStatus {
        load_balancer: Some(LoadBalancerStatus { ingress: Some(ingress) }),
        ..Default::default()
    });
    service
}

fn reasons(warnings: &[Warning]) -> Vec<Reason> {
    warnings.iter().map(|w| w.reason).collect()
}

fn desired_for(service: &Service) -> DaemonSet {
    let lb = ServiceLb::from_service(service).unwrap();
    desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings().forwarding)
}

#[test]
fn a_new_service_gets_its_daemonset_created_and_no_finalizer() {
    let service = ServiceBuilder::new("web").build();
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let serving = served(&service, &index, None);
    assert!(!serving.remove_finalizer);
    let Some((daemonset, created, ports)) = daemonset_applied(&serving) else {
        panic!("expected a DaemonSet to create, got {:?}", serving.forwarding)
    };
    assert!(created);
    assert_eq!(ports, "80/TCP");
    assert_eq!(daemonset.metadata.name, Some(names::forwarding_name("web", UID)));
    assert!(serving.publish.is_none(), "nothing to publish before a proxy pod is ready");
    assert!(serving.warnings.is_empty());
}

#[test]
fn ready_proxy_pods_publish_their_nodes_and_an_unchanged_daemonset_is_left_alone() {
    let service = ServiceBuilder::new("web").build();
    let nodes =
        [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
    let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", false)];
    let existing = desired_for(&service);
    let index = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
    let serving = served(&service, &index, Some(&existing));
    assert!(!touches(&serving, "DaemonSet"));
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])));

    let ready = serving.condition.clone().expect("a first condition");
    assert_eq!(
        (ready.ready, ready.reason, ready.message.as_str()),
        (true, "PartiallyServing", "1 of 2 eligible nodes serve")
    );

    let mut already = published(service, &["10.0.0.1"]);
    let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    already.status.as_mut().unwrap().conditions = Some(vec![condition::to_api(&ready, None, now)]);
    let again = served(&already, &index, Some(&existing));
    assert!(again.publish.is_none() && again.condition.is_none(), "nothing changed, nothing is written");
}

fn created_at(mut pod: Pod, at: Timestamp) -> Pod {
    pod.metadata.creation_timestamp = Some(Time(at));
    pod
}

#[test]
fn proxies_that_are_starting_hold_back_additions_but_not_withdrawals() {
    let service = ServiceBuilder::new("web").build();
    let nodes =
        [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
    let now = Timestamp::now();
    let second = k8s_openapi::jiff::SignedDuration::from_secs(1);
    let existing = desired_for(&service);
    let decide_with = |service: &Service, pods: &[Pod]| {
        let index = index_of(std::slice::from_ref(service), &nodes, pods, std::slice::from_ref(&existing));
        served_at(service, &index, Some(&existing), now)
    };
    let ready_one = created_at(proxy_pod("p1", "n1", true), now - 3 * second);
    let starting = created_at(proxy_pod("p2", "n2", false), now - 2 * second);

    let held = decide_with(&service, &[ready_one.clone(), starting.clone()]);
    assert_eq!(held.wait_for_starting, Some(Duration::from_secs(3)), "until the starting pod is 5 s old");
    assert!(held.publish.is_none() && held.condition.is_none());

    let slow = created_at(proxy_pod("p2", "n2", false), now - 6 * second);
    let waited = decide_with(&service, &[ready_one.clone(), slow]);
    assert_eq!(
        (waited.wait_for_starting, waited.publish),
        (None, Some(ips(&["10.0.0.1"]))),
        "a slow pod holds back no more"
    );

    let both = decide_with(&service, &[ready_one.clone(), created_at(proxy_pod("p2", "n2", true), now)]);
    assert_eq!(
        (both.wait_for_starting, both.publish),
        (None, Some(ips(&["10.0.0.1", "10.0.0.2"]))),
        "all ready: one write"
    );

    // n2 has no pod yet: the DaemonSet is older than the window, but its first pod is not.
    let first = created_at(proxy_pod("p1", "n1", true), now - 2 * second);
    let first_batch = decide_with(&service, std::slice::from_ref(&first));
    assert_eq!(
        (first_batch.wait_for_starting, first_batch.publish),
        (Some(Duration::from_secs(3)), None),
        "more to come"
    );
    let lone = decide_with(&service, &[created_at(proxy_pod("p1", "n1", true), now - 6 * second)]);
    assert_eq!((lone.wait_for_starting, lone.publish), (None, Some(ips(&["10.0.0.1"]))), "no pod came for n2 in 5 s");

    // n2's pod turned unready (it is not being replaced) while n3's is starting.
    let was_on_both = published(service, &["10.0.0.1", "10.0.0.2"]);
    let unready = created_at(proxy_pod("p2", "n2", false), now - 60 * second);
    let with_n3 = [nodes[0].clone(), nodes[1].clone(), NodeBuilder::new("n3").internal("10.0.0.3").build()];
    let pods = [ready_one, unready, created_at(proxy_pod("p3", "n3", false), now)];
    let index = index_of(std::slice::from_ref(&was_on_both), &with_n3, &pods, std::slice::from_ref(&existing));
    let withdrawn = served_at(&was_on_both, &index, Some(&existing), now);
    assert_eq!((withdrawn.wait_for_starting, withdrawn.publish), (None, Some(ips(&["10.0.0.1"]))), "withdrawn at once");
}

#[test]
fn a_published_node_stays_published_while_its_proxy_pod_is_replaced() {
    let service = published(ServiceBuilder::new("web").build(), &["10.0.0.1", "10.0.0.2"]);
    let nodes =
        [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
    let now = Timestamp::now();
    let existing = desired_for(&service);
    let ready_one = made_from(proxy_pod("p1", "n1", true), &existing);
    let mut index = index_of(
        std::slice::from_ref(&service),
        &nodes,
        &[ready_one.clone(), proxy_pod("old", "n2", true)],
        std::slice::from_ref(&existing),
    );
    let serving = served_at(&service, &index, Some(&existing), now);
    assert_eq!(serving.replace_pod.as_deref(), Some("hostlb-system/old"), "the out-of-date pod goes");

    let mut old = proxy_pod("old", "n2", true);
    old.metadata.deletion_timestamp = Some(Time(now));
    drop(index.apply_proxy_pod(&watcher::Event::Apply(old.clone()), now));
    let terminating = served_at(&service, &index, Some(&existing), now);
    assert_eq!((terminating.publish, terminating.replace_pod), (None, None), "n2 stays; one pod at a time");
    assert_eq!(terminating.finish_deleting, ["hostlb-system/old"], "a graceful deletion is finished at once");

    drop(index.apply_proxy_pod(&watcher::Event::Delete(old), now));
    let gone = served_at(&service, &index, Some(&existing), now + 2 * SECOND);
    assert_eq!((gone.publish, gone.replace_pod), (None, None), "n2 waits for its new pod");
    assert_eq!(gone.recheck, Some(Duration::from_secs(28)), "looked at again when the window ends");
    let never_came = served_at(&service, &index, Some(&existing), now + 31 * SECOND);
    assert_eq!(never_came.publish, Some(ips(&["10.0.0.1"])), "withdrawn when no pod came in time");

    let new = created_at(made_from(proxy_pod("new", "n2", false), &existing), now + SECOND);
    drop(index.apply_proxy_pod(&watcher::Event::Apply(new), now + SECOND));
    let starting = served_at(&service, &index, Some(&existing), now + 3 * SECOND);
    assert_eq!((starting.publish, starting.condition), (None, None), "still published, still Serving");
}

#[test]
fn a_foreign_daemonset_with_our_name_is_refused_and_nothing_else_happens() {
    let service = ServiceBuilder::new("web").build();
    let mut foreign = desired_for(&service);
    foreign.metadata.labels = None;
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[proxy_pod("p", "n1", true)], &[]);
    let serving = served(&service, &index, Some(&foreign));
    assert_eq!(reasons(&serving.warnings), vec![Reason::ForwardingNameTaken]);
    assert!(!touches(&serving, "DaemonSet") && serving.publish.is_none());
}

#[test]
fn an_invalid_service_keeps_publishing_the_nodes_its_running_proxies_can_serve_on() {
    let valid = ServiceBuilder::new("web").build();
    let service = published(
        ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{").build(),
        &["10.0.0.1", "10.0.0.2"],
    );
    let nodes = [
        NodeBuilder::new("n1").internal("10.0.0.1").build(),
        NodeBuilder::new("n2").internal("10.0.0.2").not_ready().build(),
    ];
    let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
    let existing = desired_for(&valid);
    let index = index_of(&[], &nodes, &pods, std::slice::from_ref(&existing));
    let serving = served(&service, &index, Some(&existing));
    assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
    assert!(!touches(&serving, "DaemonSet"), "the running proxies are left as they were");
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])), "the dead node leaves the status");
}

#[test]
fn invalid_options_are_warnings_and_change_nothing() {
    let service = ServiceBuilder::new("web").annotation(names::ANNOTATION_TOLERATIONS, "{").build();
    let serving = served(&service, &index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]), None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
    assert!(serving.warnings[0].message.contains(names::ANNOTATION_TOLERATIONS));
    assert!(!touches(&serving, "DaemonSet") && serving.publish.is_none());
}

#[test]
fn no_eligible_node_port_conflicts_and_unschedulable_pods_are_warned() {
    let service = ServiceBuilder::new("web").label(names::POOL, "edge").build();
    let mut rival = ServiceBuilder::new("rival").uid("rival-uid").build();
    rival.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let mut stuck = proxy_pod("p", "n1", false);
    stuck.status.as_mut().unwrap().conditions = Some(vec![PodCondition {
        type_: "PodScheduled".into(),
        status: "False".into(),
        reason: Some("Unschedulable".into()),
        message: Some("0/1 nodes are available".into()),
        ..Default::default()
    }]);
    let index = index_of(&[rival], &[NodeBuilder::new("n1").build()], &[stuck], &[]);
    let serving = served(&service, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::NoEligibleNode, Reason::ProxyPodUnschedulable]);

    let everywhere = ServiceBuilder::new("web").build();
    let serving = served(&everywhere, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::PortConflict, Reason::ProxyPodUnschedulable]);
    assert!(serving.warnings[0].message.contains("shop/rival"), "{:?}", serving.warnings);
    let Some((daemonset, ..)) = daemonset_applied(&serving) else { panic!("expected a DaemonSet") };
    let affinity = daemonset.spec.unwrap().template.spec.unwrap().affinity.unwrap().node_affinity.unwrap();
    let term = &affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms[0];
    assert_eq!(term.match_fields.as_ref().unwrap()[0].values, Some(vec!["n1".to_string()]), "n1 is left out");
}

#[test]
fn refused_ports_are_warned_and_left_out_while_the_others_are_served() {
    let service = ServiceBuilder::new("web").port("TCP", 22, 0).port("TCP", 443, 0).build();
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let serving = served(&service, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::PortRefused]);
    assert_eq!(
        serving.warnings[0].message,
        "spec.ports: port 22/TCP is refused: the node's own daemons listen there (--denied-ports); an admin can \
         allow it with --allowed-ports"
    );
    let Some((_, _, ports)) = daemonset_applied(&serving) else { panic!("expected a DaemonSet") };
    assert_eq!(ports, "443/TCP");
}

#[test]
fn a_node_whose_taint_the_proxies_do_not_tolerate_is_not_eligible_anywhere_in_the_decision() {
    let service = ServiceBuilder::new("web").build();
    let existing = desired_for(&service);
    let nodes = [
        NodeBuilder::new("n1").internal("10.0.0.1").build(),
        NodeBuilder::new("n2").internal("10.0.0.2").taint("dedicated", "NoSchedule").build(),
    ];
    let failed = failed_create("f1", &existing, "Error creating: pods \"x\" is forbidden: an hour ago");
    // A pod created just now: a podless eligible node would hold the status write for more.
    let mut new_pod = proxy_pod("p1", "n1", true);
    new_pod.metadata.creation_timestamp = Some(Time(Timestamp::now()));
    let mut index = index_of(std::slice::from_ref(&service), &nodes, &[new_pod], std::slice::from_ref(&existing));
    index.apply_creation_failure(&kube::runtime::watcher::Event::Apply(failed));
    let serving = served_at(&service, &index, Some(&existing), Timestamp::now());
    assert!(serving.wait_for_starting.is_none(), "nothing waits for a pod the scheduler would not place");
    assert!(serving.warnings.is_empty(), "no old FailedCreate reported: {:?}", serving.warnings);
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])));
    let ready = serving.condition.expect("a condition");
    assert_eq!((ready.reason, ready.message.as_str()), ("Serving", "1 of 1 eligible nodes serve"));

    let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)];
    let tainted_later = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
    let ready = served(&service, &tainted_later, Some(&existing)).condition.expect("a condition");
    assert_eq!(ready.message, "2 of 2 eligible nodes serve", "a NoSchedule taint leaves a running pod be");
}

#[test]
fn a_service_whose_every_node_is_tainted_is_told_which_taints_keep_it_off() {
    let service = ServiceBuilder::new("web").build();
    let nodes = [NodeBuilder::new("n1").taint("dedicated", "NoExecute").build()];
    let index = index_of(std::slice::from_ref(&service), &nodes, &[], &[]);
    let serving = served(&service, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::NoEligibleNode]);
    assert!(serving.warnings[0].message.contains("n1 (dedicated:NoExecute)"), "{:?}", serving.warnings);
    let tolerated = ServiceBuilder::new("web")
        .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"dedicated","operator":"Exists"}]"#);
    let mut trusting = settings();
    trusting.tenants.toleration_keys = vec!["dedicated".into()];
    let view = ServiceView::of(&tolerated.build());
    let observed =
        Observed { service: &view, forwarding: None, last_applied: None, previous: Vec::new(), now: Timestamp::now() };
    let Decision::Serve(serving) = decide(&observed, &index, &trusting) else { panic!("expected to serve") };
    assert!(serving.warnings.is_empty(), "{:?}", serving.warnings);
}

#[test]
fn a_service_over_a_limit_is_warned_and_nothing_of_it_is_applied_nor_claimed() {
    let ranges: Vec<String> = (0..5000).map(|i| format!("10.{}.{}.0/24", i / 256, i % 256)).collect();
    let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
    let service = ServiceBuilder::new("web").source_ranges(&ranges).build();
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let serving = served(&service, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
    assert!(serving.warnings[0].message.contains("5000 source ranges"), "{:?}", serving.warnings);
    assert!(serving.warnings[0].message.contains("--max-source-ranges"), "{:?}", serving.warnings);
    assert!(!touches(&serving, "DaemonSet") && serving.publish.is_none());
    assert!(index.claims.values().next().is_none(), "it holds no port that another Service could want");
}

#[test]
fn refused_ports_of_one_cause_are_one_warning() {
    let service = ServiceBuilder::new("web").port("UDP", 6081, 0).port("TCP", 4240, 0).port("TCP", 31000, 0).build();
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let messages: Vec<String> = served(&service, &index, None).warnings.into_iter().map(|w| w.message).collect();
    assert_eq!(
        messages,
        ["spec.ports: ports 6081/UDP, 4240/TCP are refused: the node's own daemons listen there \
             (--denied-ports); an admin can allow them with --allowed-ports; spec.ports: port 31000/TCP is \
             refused: kube-proxy listens there, in the NodePort range (--node-port-range 30000-32767); an admin \
             can allow it with --allowed-ports"]
    );
}

#[test]
fn a_service_left_without_ports_loses_its_daemonset_and_addresses() {
    let before = ServiceBuilder::new("web").port("TCP", 80, 0).build();
    let existing = desired_for(&before);
    let service = published(ServiceBuilder::new("web").port("TCP", 10250, 0).build(), &["10.0.0.1"]);
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let serving = served(&service, &index, Some(&existing));
    assert_eq!(reasons(&serving.warnings), vec![Reason::PortRefused]);
    assert!(deletes(&serving, "DaemonSet"));
    assert_eq!(serving.publish, Some(Vec::new()));
}

#[test]
fn with_the_node_agents_a_service_left_without_ports_loses_its_plan_and_a_daemonset_it_was_handed_over_from() {
    let before = ServiceBuilder::new("web").port("TCP", 80, 0).build();
    let lb = ServiceLb::from_service(&before).unwrap();
    let mut agent_settings = settings();
    agent_settings.forwarding.dataplane = DataPlaneKind::Agent;
    let (daemonset, plan) =
        (erased(&desired_for(&before)), erased(&desired_plan(&lb, &["n1"], &agent_settings.forwarding)));
    let service = ServiceBuilder::new("web").port("TCP", 10250, 0).build();
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let view = ServiceView::of(&service);
    let observed = Observed {
        service: &view,
        forwarding: Some(&plan),
        last_applied: None,
        previous: vec![(DataPlaneKind::Pods, &daemonset)],
        now: Timestamp::now(),
    };
    let Decision::Serve(serving) = decide(&observed, &index, &agent_settings) else { panic!("expected to serve") };
    assert!(deletes(&serving, "ForwardingPlan") && deletes(&serving, "DaemonSet"), "{:?}", serving.forwarding);
}

#[test]
fn ip_mode_proxy_is_published_where_the_api_server_keeps_it_and_otherwise_reported_as_ignored() {
    let proxy =
        published(ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "Proxy").build(), &["10.0.0.1"]);
    let existing = desired_for(&proxy);
    let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
    let index = index_of(std::slice::from_ref(&proxy), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
    let serving = served(&proxy, &index, Some(&existing));
    assert_eq!(serving.ip_mode, Some(IpMode::Proxy));
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])), "VIP is published: rewrite as Proxy");

    let mut old_server = settings();
    old_server.server_has_ip_mode = false;
    let existing = erased(&existing);
    let observed = Observed {
        service: &ServiceView::of(&proxy),
        forwarding: Some(&existing),
        last_applied: None,
        previous: Vec::new(),
        now: Timestamp::now(),
    };
    let Decision::Serve(serving) = decide(&observed, &index, &old_server) else { panic!("expected to serve") };
    assert_eq!(serving.ip_mode, None);
    assert!(serving.publish.is_none());
    assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);

    let wrong = ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "proxy").build();
    let serving = served(&wrong, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::InvalidOption]);
}

#[test]
fn a_load_balancer_ip_is_served_without_and_said_to_be_ignored() {
    let index = index_of(&[], &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let mut service = ServiceBuilder::new("web").build();
    service.spec.as_mut().unwrap().load_balancer_ip = Some("192.0.2.10".into());
    let serving = served(&service, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);
    assert!(serving.warnings[0].message.starts_with("spec.loadBalancerIP 192.0.2.10 is not honoured"));
    assert!(touches(&serving, "DaemonSet"), "the Service is served all the same");
    service.spec.as_mut().unwrap().load_balancer_ip = Some(String::new());
    assert!(served(&service, &index, None).warnings.is_empty(), "an empty field asks for nothing");
}

#[test]
fn addresses_stored_without_ip_mode_are_not_rewritten_for_it() {
    let mut service = published(ServiceBuilder::new("web").build(), &["10.0.0.1"]);
    let ingress = &mut service.status.as_mut().unwrap().load_balancer.as_mut().unwrap().ingress;
    ingress.as_mut().unwrap().iter_mut().for_each(|entry| entry.ip_mode = None);
    let existing = desired_for(&service);
    let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
    let index = index_of(std::slice::from_ref(&service), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
    let serving = served(&service, &index, Some(&existing));
    assert_eq!((serving.publish, serving.ip_mode), (None, None), "the server drops ipMode: nothing to write");
    assert!(serving.warnings.is_empty());

    let proxy = ServiceBuilder::new("web").annotation(names::ANNOTATION_IP_MODE, "Proxy").build();
    let mut proxy = published(proxy, &["10.0.0.1"]);
    proxy.status = service.status.clone();
    let serving = served(&proxy, &index, Some(&existing));
    assert!(serving.publish.is_none());
    assert_eq!(reasons(&serving.warnings), vec![Reason::OptionIgnored]);
    assert!(serving.warnings[0].message.contains("LoadBalancerIPMode"), "{:?}", serving.warnings);
}

#[test]
fn source_ranges_with_node_ports_warn_that_the_node_ports_stay_open() {
    let index = index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]);
    let open = ServiceBuilder::new("web").port("TCP", 80, 31080).source_ranges(&["10.0.0.0/8"]).build();
    let serving = served(&open, &index, None);
    assert_eq!(reasons(&serving.warnings), vec![Reason::NodePortsOpen]);
    assert!(serving.warnings[0].message.contains("NodePorts 31080/TCP"), "{:?}", serving.warnings);
    assert!(serving.warnings[0].message.contains("allocateLoadBalancerNodePorts: false"));
    let closed = ServiceBuilder::new("web").port("TCP", 80, 0).source_ranges(&["10.0.0.0/8"]).build();
    assert!(served(&closed, &index, None).warnings.is_empty());
    let unrestricted = ServiceBuilder::new("web").port("TCP", 80, 31080).build();
    assert!(served(&unrestricted, &index, None).warnings.is_empty());
}

#[test]
fn a_changed_service_updates_its_daemonset() {
    let service = ServiceBuilder::new("web").port("TCP", 443, 0).build();
    let old = desired_for(&ServiceBuilder::new("web").port("TCP", 80, 0).build());
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], std::slice::from_ref(&old));
    let Some((_, created, ports)) = daemonset_applied(&served(&service, &index, Some(&old))) else {
        panic!("expected an update")
    };
    assert!(!created);
    assert_eq!(ports, "443/TCP");
}

#[test]
fn hand_edits_and_unknown_history_are_applied_over_but_a_lagging_cache_is_not() {
    let desired = desired_for(&ServiceBuilder::new("web").build());
    let at = |generation: i64| {
        let mut daemonset = desired.clone();
        daemonset.metadata.generation = Some(generation);
        daemonset
    };
    let ours = Applied { generation: 3, config_hash: config_hash_of(&desired).unwrap().into() };
    assert!(needs_apply(None, &desired, None));
    assert!(!needs_apply(Some(&at(3)), &desired, Some(&ours)));
    assert!(needs_apply(Some(&at(4)), &desired, Some(&ours)), "edited by someone else");
    assert!(needs_apply(Some(&at(3)), &desired, None), "not applied by this replica yet");
    let mut stale = at(2);
    stale.metadata.annotations = None;
    assert!(!needs_apply(Some(&stale), &desired, Some(&ours)), "the cache lags behind our own write");
    let older = Applied { generation: 3, config_hash: "something-else".into() };
    assert!(needs_apply(Some(&stale), &desired, Some(&older)));
}

#[test]
fn services_no_longer_served_are_cleaned_up_while_something_of_hostlb_is_left() {
    let proxies = index_of(&[], &[], &[], &[desired_for(&ServiceBuilder::new("web").build())]);
    let nothing = index_of(&[], &[], &[], &[]);
    let decide_for = |service: &Service, index: &Index| {
        let view = ServiceView::of(service);
        let observed = Observed {
            service: &view,
            forwarding: None,
            last_applied: None,
            previous: Vec::new(),
            now: Timestamp::now(),
        };
        decide(&observed, index, &settings())
    };
    let changed_type = published(ServiceBuilder::new("web").type_("ClusterIP").build(), &["10.0.0.1"]);
    assert!(matches!(decide_for(&changed_type, &proxies), Decision::CleanUp { clear_status: true }));
    let mut deleted = ServiceBuilder::new("web").build();
    deleted.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let deleted = published(deleted, &["10.0.0.1"]);
    assert!(matches!(decide_for(&deleted, &proxies), Decision::CleanUp { clear_status: false }));
    let finalized_by_an_older_version = with_finalizer(ServiceBuilder::new("web").type_("ClusterIP").build());
    assert!(matches!(decide_for(&finalized_by_an_older_version, &nothing), Decision::CleanUp { .. }));

    let released = ServiceBuilder::new("web").type_("ClusterIP").build();
    assert!(matches!(decide_for(&released, &nothing), Decision::Ignore));
    let other_class = ServiceBuilder::new("web").class("metallb.io/metallb").build();
    assert!(matches!(decide_for(&other_class, &nothing), Decision::Ignore));
}

/// Each Service publishes its own two nodes however many others the index holds. It also
/// prints the time per decision (`--nocapture`); `make bench` measures the controller as a
/// whole.
#[test]
fn each_of_1000_services_is_decided_from_its_own_groups() {
    let services: Vec<Service> = (0..1000)
        .map(|i| {
            let mut service = ServiceBuilder::new(&format!("svc-{i}")).port("TCP", 1000 + i, 0).build();
            service.metadata.uid = Some(format!("uid-{i}"));
            service
        })
        .collect();
    let nodes: Vec<Node> =
        (0..10).map(|i| NodeBuilder::new(&format!("n{i}")).internal(&format!("10.0.0.{i}")).build()).collect();
    // Service i has ready proxy pods on nodes i % 10 and (i + 3) % 10, and a pod that is not
    // ready on (i + 6) % 10: each must publish exactly its own two nodes.
    let own_nodes = |i: i32| [i % 10, (i + 3) % 10];
    let pods: Vec<Pod> = (0..1000)
        .flat_map(|i| {
            let ready = own_nodes(i).map(|n| (n, true));
            ready.into_iter().chain([((i + 6) % 10, false)]).map(move |(n, ready)| {
                let mut pod = proxy_pod(&format!("p-{i}-{n}"), &format!("n{n}"), ready);
                pod.metadata.labels.as_mut().unwrap().insert(names::LABEL_SERVICE_UID.into(), format!("uid-{i}"));
                pod
            })
        })
        .collect();
    let daemonsets: Vec<DaemonSet> = services.iter().map(desired_for).collect();
    let index = index_of(&services, &nodes, &pods, &daemonsets);
    let started = std::time::Instant::now();
    for (i, (service, daemonset)) in (0..).zip(services.iter().zip(&daemonsets)) {
        let serving = served(service, &index, Some(daemonset));
        let mut expected: Vec<String> = own_nodes(i).iter().map(|n| format!("10.0.0.{n}")).collect();
        expected.sort();
        let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
        assert_eq!(serving.publish, Some(ips(&expected)), "svc-{i}");
        assert!(!touches(&serving, "DaemonSet") && serving.warnings.is_empty(), "svc-{i}: {:?}", serving.warnings);
    }
    let per_reconcile = started.elapsed() / 1000;
    println!("decide for one Service among 1000 (10 nodes, 3000 proxy pods): {per_reconcile:?}");
}

#[test]
fn a_proxy_daemonset_is_kept_without_its_pod_template_and_still_counts_as_applied() {
    use k8s_openapi::api::apps::v1::DaemonSetStatus;

    let settings = crate::fixtures::settings();
    let lb = ServiceLb::from_service(&ServiceBuilder::new("web").port("TCP", 80, 0).build()).unwrap();
    let desired = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings.forwarding);
    let mut existing = desired.clone();
    existing.metadata.generation = Some(3);
    existing.status = Some(DaemonSetStatus { desired_number_scheduled: 2, ..DaemonSetStatus::default() });
    let mut index = Index::default();
    index.apply_daemonset(&kube::runtime::watcher::Event::Apply(existing.clone()));

    let kept = index.daemonsets.get(&key_of(&existing)).expect("indexed");
    assert!(kept.spec.is_none());
    assert_eq!((&kept.metadata, &kept.status), (&existing.metadata, &existing.status));
    let applied = Applied { generation: 3, config_hash: config_hash_of(&desired).unwrap().into() };
    assert!(!needs_apply(Some(kept), &desired, Some(&applied)));
    assert!(needs_apply(Some(kept), &desired, None), "a replica that has not applied it yet applies it once");
}

/// Three nodes of which n2 and n3 are not Ready, a proxy pod Ready on each, and the Service
/// (published on all three) with its DaemonSet.
struct TwoOfThreeDown {
    service: Service,
    all_three: Service,
    existing: DaemonSet,
    nodes: [Node; 3],
    pods: [Pod; 3],
}

fn two_of_three_down() -> TwoOfThreeDown {
    let service = ServiceBuilder::new("web").build();
    let down = |name: &str, ip: &str| NodeBuilder::new(name).internal(ip).not_ready().build();
    TwoOfThreeDown {
        existing: desired_for(&service),
        all_three: published(service.clone(), &["10.0.0.1", "10.0.0.2", "10.0.0.3"]),
        service,
        nodes: [NodeBuilder::new("n1").internal("10.0.0.1").build(), down("n2", "10.0.0.2"), down("n3", "10.0.0.3")],
        pods: [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true), proxy_pod("p3", "n3", true)],
    }
}

#[test]
fn while_most_nodes_look_down_at_once_nothing_is_withdrawn_and_additions_go_on() {
    let TwoOfThreeDown { service, all_three, existing, nodes, pods } = two_of_three_down();
    let index = index_of(std::slice::from_ref(&all_three), &nodes, &pods, std::slice::from_ref(&existing));
    let serving = served(&all_three, &index, Some(&existing));
    assert!(serving.publish.is_none() && serving.condition.is_none(), "nothing withdrawn: {serving:?}");

    let none_yet = index_of(std::slice::from_ref(&service), &nodes, &pods, std::slice::from_ref(&existing));
    assert_eq!(served(&service, &none_yet, Some(&existing)).publish, Some(ips(&["10.0.0.1"])), "adding goes on");

    let one_down = [nodes[0].clone(), nodes[1].clone()];
    let index = index_of(std::slice::from_ref(&all_three), &one_down, &pods, std::slice::from_ref(&existing));
    assert_eq!(
        served(&all_three, &index, Some(&existing)).publish,
        Some(ips(&["10.0.0.1"])),
        "one of two is no disruption"
    );
}

#[test]
fn once_most_nodes_have_looked_down_past_the_limit_those_still_down_leave_with_a_warning() {
    let TwoOfThreeDown { all_three, existing, nodes, pods, .. } = two_of_three_down();
    let mut index = index_of(std::slice::from_ref(&all_three), &nodes, &pods, std::slice::from_ref(&existing));
    let start = std::time::Instant::now();
    index.bound_pause(start, settings().withdrawal_pause_limit);
    assert!(served(&all_three, &index, Some(&existing)).publish.is_none(), "paused");

    index.bound_pause(start + settings().withdrawal_pause_limit, settings().withdrawal_pause_limit);
    let serving = served(&all_three, &index, Some(&existing));
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])));
    assert_eq!(reasons(&serving.warnings), [Reason::LongOutage]);
    assert_eq!(
        serving.warnings[0].message,
        "2 of 3 nodes have looked down for over 300 s (--withdrawal-pause-limit-seconds): more than a control \
         plane's blindness, so those still down leave the status"
    );
    let withdrawn = published(ServiceBuilder::new("web").build(), &["10.0.0.1"]);
    assert!(served(&withdrawn, &index, Some(&existing)).warnings.is_empty(), "said while addresses go, not after");
}

/// The DaemonSet the decision applies, whether it creates it, and the ports its Event names.
fn daemonset_applied(serving: &Serving) -> Option<(DaemonSet, bool, String)> {
    serving.forwarding.iter().find_map(|change| match &change.action {
        ForwardingAction::Apply { object, created, ports } if kind_of(object) == "DaemonSet" => {
            Some((typed(object)?, *created, ports.clone()))
        }
        _ => None,
    })
}

/// Whether the decision writes or deletes a forwarding object of `kind`.
fn touches(serving: &Serving, kind: &str) -> bool {
    serving.forwarding.iter().any(|change| match &change.action {
        ForwardingAction::Apply { object, .. } | ForwardingAction::Delete(object) => kind_of(object) == kind,
    })
}

/// Whether the decision deletes a forwarding object of `kind`.
fn deletes(serving: &Serving, kind: &str) -> bool {
    let deleted = |change: &ForwardingChange| matches!(&change.action, ForwardingAction::Delete(object) if kind_of(object) == kind);
    serving.forwarding.iter().any(deleted)
}

fn kind_of(object: &ForwardingObject) -> &str {
    object.types.as_ref().map_or("", |types| types.kind.as_str())
}

#[test]
fn a_status_another_controller_writes_is_left_to_it_unless_the_service_has_hostlbs_class() {
    let contested = |mut service: Service| {
        let entry = k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry {
            manager: Some("metallb-controller".into()),
            ..Default::default()
        };
        service.metadata.managed_fields = Some(vec![entry]);
        service
    };
    let service = contested(ServiceBuilder::new("web").build());
    let existing = desired_for(&service);
    let nodes = [NodeBuilder::new("n1").internal("10.0.0.1").build()];
    let index = index_of(std::slice::from_ref(&service), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
    let serving = served(&service, &index, Some(&existing));
    assert_eq!(reasons(&serving.warnings), vec![Reason::StatusContested]);
    let message = &serving.warnings[0].message;
    assert!(message.starts_with("status.loadBalancer is also written by metallb-controller: "), "{message}");
    assert!(serving.publish.is_none() && serving.condition.is_none(), "the status is left alone");

    let classed = contested(ServiceBuilder::new("web").class(crate::fixtures::CLASS).build());
    let index = index_of(std::slice::from_ref(&classed), &nodes, &[proxy_pod("p1", "n1", true)], &[]);
    let serving = served(&classed, &index, Some(&desired_for(&classed)));
    assert!(serving.warnings.is_empty(), "{:?}", serving.warnings);
    assert_eq!(serving.publish, Some(ips(&["10.0.0.1"])), "hostlb's class: hostlb's to write");
}
