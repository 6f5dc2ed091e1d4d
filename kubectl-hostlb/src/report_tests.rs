//! The report from fetched objects, for both data planes: each node's state and reason, the
//! ports claimed, the conflicts, the Warnings kept, and which Services are reported.

use super::*;
use crate::fixtures::*;
use hostlb_model::agent;
use serde_json::json;

const HTTP: &[(i32, &str)] = &[(80, "TCP")];

fn one_service(daemonset_template: serde_json::Value, nodes: Vec<Node>, pods: Vec<Pod>) -> ServiceReport {
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
        nodes,
        daemonsets: vec![daemonset("web", UID, HTTP, daemonset_template)],
        pods,
        ..Default::default()
    };
    report(&observed).services.into_iter().next().expect("the Service is reported")
}

fn states(service: &ServiceReport) -> Vec<(&str, NodeState, Option<&str>)> {
    service.nodes.iter().map(|n| (n.name.as_str(), n.state, n.reason.as_deref())).collect()
}

fn pod_on(node: &str, status: serde_json::Value) -> Pod {
    proxy_pod("web", UID, node, HTTP, status)
}

#[test]
fn a_node_with_a_ready_proxy_pod_serves_and_one_without_is_explained() {
    let service = one_service(json!({}), vec![ready_node("n2"), ready_node("n1")], vec![pod_on("n1", ready())]);
    assert_eq!(
        states(&service),
        vec![
            ("n1", NodeState::Serving, None),
            ("n2", NodeState::NoProxyPod, Some("the DaemonSet has not created a proxy pod here")),
        ]
    );
    assert_eq!(service.serving_nodes(), 1);
    assert_eq!(service.addresses, vec!["10.0.0.1"]);
    assert_eq!(service.daemon_set.as_deref(), Some("hostlb-web"));
}

#[test]
fn a_node_outside_the_pool_is_not_eligible_and_says_which_label_it_lacks() {
    let pool = json!({ "nodeSelector": { "hostlb.io/lbpool": "edge" } });
    let service = one_service(pool, vec![ready_node("n1")], vec![]);
    assert_eq!(states(&service), vec![("n1", NodeState::NotEligible, Some("node lacks label hostlb.io/lbpool=edge"))]);
}

#[test]
fn not_ready_and_cordoned_nodes_do_not_serve_even_with_a_ready_pod() {
    let mut down = ready_node("down");
    down.status.as_mut().unwrap().conditions.as_mut().unwrap()[0].status = "False".into();
    let mut cordoned = ready_node("cordoned");
    cordoned.spec.get_or_insert_default().unschedulable = Some(true);
    let pods = vec![pod_on("down", ready()), pod_on("cordoned", ready())];
    let service = one_service(json!({}), vec![down, cordoned], pods);
    assert_eq!(
        states(&service),
        vec![("cordoned", NodeState::NodeCordoned, None), ("down", NodeState::NodeNotReady, None)]
    );
}

#[test]
fn an_unschedulable_pod_gives_the_schedulers_message() {
    let pending = json!({ "phase": "Pending", "conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
    }]});
    let service = one_service(json!({}), vec![ready_node("n1")], vec![pod_on("n1", pending)]);
    assert_eq!(
        states(&service),
        vec![(
            "n1",
            NodeState::Unschedulable,
            Some(
                "Unschedulable: 0/2 nodes are available: 1 node(s) didn't have free ports for the requested pod ports."
            )
        )]
    );
}

#[test]
fn a_crashing_container_is_failing_with_its_last_words_and_a_starting_one_is_not() {
    let waiting = |reason: &str| {
        json!({ "phase": "Pending", "initContainerStatuses": [{
            "name": "install-rules", "image": "lb", "imageID": "", "ready": false, "restartCount": 4,
            "state": { "waiting": { "reason": reason } },
            "lastState": { "terminated": { "exitCode": 3, "message": "nf_tables: not supported\n" } }
        }]})
    };
    let nodes = vec![ready_node("n1"), ready_node("n2")];
    let pods = vec![pod_on("n1", waiting("CrashLoopBackOff")), pod_on("n2", waiting("PodInitializing"))];
    let service = one_service(json!({}), nodes, pods);
    assert_eq!(
        states(&service),
        vec![
            (
                "n1",
                NodeState::Failing,
                Some("container install-rules: CrashLoopBackOff; last exit 3: nf_tables: not supported")
            ),
            (
                "n2",
                NodeState::Starting,
                Some("container install-rules: PodInitializing; last exit 3: nf_tables: not supported")
            ),
        ]
    );
}

#[test]
fn a_running_pod_that_is_not_ready_points_at_local_endpoints_for_local_services() {
    let running = json!({ "phase": "Running", "conditions": [{ "type": "Ready", "status": "False" }] });
    let mut local = service("web", UID, HTTP, &[]);
    local.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
    let observed = Observed {
        services: vec![local],
        nodes: vec![ready_node("n1")],
        daemonsets: vec![daemonset("web", UID, HTTP, json!({}))],
        pods: vec![pod_on("n1", running.clone())],
        ..Default::default()
    };
    let reason = &report(&observed).services[0].nodes[0].reason;
    assert_eq!(reason.as_deref(), Some("not Ready: no ready endpoint of the Service on this node"));
    let cluster_policy = one_service(json!({}), vec![ready_node("n1")], vec![pod_on("n1", running)]);
    assert_eq!(states(&cluster_policy), vec![("n1", NodeState::NotReady, Some("not Ready"))]);
}

#[test]
fn a_replaced_pod_is_judged_by_its_successor() {
    let mut old = pod_on("n1", ready());
    old.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::UNIX_EPOCH));
    let service =
        one_service(json!({}), vec![ready_node("n1")], vec![old.clone(), pod_on("n1", json!({ "phase": "Pending" }))]);
    assert_eq!(states(&service)[0].1, NodeState::NotReady);
    let only_old = one_service(json!({}), vec![ready_node("n1")], vec![old]);
    assert_eq!(states(&only_old)[0].1, NodeState::Terminating);
}

#[test]
fn a_port_held_by_an_older_service_names_it_per_node() {
    let left_out = json!({ "affinity": { "nodeAffinity": { "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{ "matchFields": [{ "key": "metadata.name", "operator": "NotIn", "values": ["n1"] }] }]
    }}}});
    let holder = proxy_pod("first", "uid-first", "n1", &[(80, "TCP"), (443, "TCP")], ready());
    let elsewhere = proxy_pod("other", "uid-other", "n2", HTTP, ready());
    let service = one_service(left_out, vec![ready_node("n1"), ready_node("n2")], vec![holder, elsewhere]);
    assert_eq!(states(&service)[0].1, NodeState::PortHeld);
    assert_eq!(
        service.conflicts,
        vec![Conflict { port: 80, protocol: "TCP".into(), node: "n1".into(), held_by: "shop/first".into() }]
    );
}

#[test]
fn ports_the_proxies_do_not_claim_are_marked() {
    let observed = Observed {
        services: vec![service("web", UID, &[(22, "TCP"), (80, "TCP"), (53, "UDP")], &[])],
        daemonsets: vec![daemonset("web", UID, &[(80, "TCP"), (53, "UDP")], json!({}))],
        ..Default::default()
    };
    let claimed: Vec<(i32, bool)> = report(&observed).services[0].ports.iter().map(|p| (p.port, p.claimed)).collect();
    assert_eq!(claimed, vec![(22, false), (80, true), (53, true)]);
}

/// The fixtures' Service with the node agents: its plan on `planned`, the nodes' reports.
fn with_agents(nodes: &[&str], planned: &[&str], reports: Vec<agent::NodeReport>) -> ServiceReport {
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
        nodes: nodes.iter().copied().map(ready_node).collect(),
        plans: vec![plan("web", UID, HTTP, planned)],
        agent_reports: reports,
        ..Default::default()
    };
    report(&observed).services.into_iter().next().expect("the Service is reported")
}

const NOT_REPORTED: &str = "the node's agent has not reported the Service yet";

fn reported_at(service: &ServiceReport) -> Vec<(&str, Option<Timestamp>)> {
    service.nodes.iter().map(|n| (n.name.as_str(), n.reported_at)).collect()
}

#[test]
fn with_the_node_agents_each_node_says_what_its_agent_reports() {
    let reports = vec![
        agent_report("n1", written(100, &[(UID, true, None)])),
        agent_report("n2", written(200, &[(UID, false, Some("no table")), ("uid-other", true, None)])),
        agent_report("n4", written(300, &[])),
    ];
    let service = with_agents(&["n1", "n2", "n3", "n4"], &["n1", "n2", "n3"], reports);
    assert_eq!((service.daemon_set.as_deref(), service.plan.as_deref()), (None, Some("hostlb-web-1234")));
    assert!(service.ports.iter().all(|port| port.claimed), "{:?}", service.ports);
    assert_eq!(
        states(&service),
        vec![
            ("n1", NodeState::Serving, None),
            ("n2", NodeState::Failing, Some("no table")),
            ("n3", NodeState::NoProxyPod, Some(NOT_REPORTED)),
            ("n4", NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint")),
        ]
    );
    let at = |second| Some(Timestamp::from_second(second).unwrap());
    assert_eq!(reported_at(&service), vec![("n1", at(100)), ("n2", at(200)), ("n3", None), ("n4", None)]);
}

#[test]
fn with_the_node_agents_a_node_whose_agent_has_not_written_its_report_has_no_report_yet() {
    let service = with_agents(&["n1", "n2"], &["n1", "n2"], vec![agent_report("n1", serde_json::Value::Null)]);
    assert_eq!(
        states(&service),
        vec![("n1", NodeState::NoProxyPod, Some(NOT_REPORTED)), ("n2", NodeState::NoProxyPod, Some(NOT_REPORTED))]
    );
    assert_eq!(reported_at(&service), vec![("n1", None), ("n2", None)]);
}

#[test]
fn with_the_node_agents_a_report_speaks_for_the_node_its_spec_names_whatever_its_name() {
    let mut renamed = agent_report("n1", written(0, &[(UID, true, None)]));
    renamed.metadata.name = Some("hostlb-agent.n2".into());
    let service = with_agents(&["n1", "n2"], &["n1", "n2"], vec![renamed]);
    assert_eq!(
        states(&service),
        vec![("n1", NodeState::Serving, None), ("n2", NodeState::NoProxyPod, Some(NOT_REPORTED))]
    );
}

#[test]
fn with_the_node_agents_of_several_installs_a_node_is_read_from_the_report_of_the_plans_install() {
    let install = |mut object_meta: kube::api::ObjectMeta, id: &str| {
        object_meta.labels.get_or_insert_default().insert(names::LABEL_INSTALL.into(), id.into());
        object_meta
    };
    let mut other = agent_report("n1", written(0, &[]));
    other.metadata = install(other.metadata, "other");
    let mut own = agent_report("n1", written(0, &[(UID, true, None)]));
    own.metadata = install(own.metadata, "abc");
    let mut planned = plan("web", UID, HTTP, &["n1"]);
    planned.metadata = install(planned.metadata, "abc");
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &[])],
        nodes: vec![ready_node("n1")],
        plans: vec![planned],
        agent_reports: vec![other, own],
        ..Default::default()
    };
    assert_eq!(states(&report(&observed).services[0]), vec![("n1", NodeState::Serving, None)]);
}

#[test]
fn with_the_node_agents_a_node_an_older_services_plan_holds_the_port_on_is_port_held() {
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &[])],
        nodes: ["n1", "n2", "n3"].map(ready_node).to_vec(),
        plans: vec![plan("web", UID, HTTP, &["n2"]), plan("older", "uid-older", &[(80, "TCP"), (53, "UDP")], &["n1"])],
        ..Default::default()
    };
    let service = &report(&observed).services[0];
    assert_eq!(
        states(service),
        vec![
            ("n1", NodeState::PortHeld, Some(PORT_HELD)),
            ("n2", NodeState::NoProxyPod, Some(NOT_REPORTED)),
            ("n3", NodeState::NotEligible, Some("not among its plan's nodes: its placement, or a taint")),
        ]
    );
    let held: Vec<(&str, i32, &str)> =
        service.conflicts.iter().map(|c| (c.node.as_str(), c.port, c.held_by.as_str())).collect();
    assert_eq!(held, vec![("n1", 80, "shop/older")]);
}

#[test]
fn with_the_node_agents_json_names_the_plan_and_when_each_node_reported() {
    let reports = vec![agent_report("n1", written(0, &[(UID, true, None)]))];
    let json = serde_json::to_value(with_agents(&["n1", "n2"], &["n1", "n2"], reports)).unwrap();
    assert_eq!((&json["daemonSet"], &json["plan"]), (&json!(null), &json!("hostlb-web-1234")));
    assert_eq!(
        json["nodes"],
        json!([
            { "name": "n1", "serving": true, "state": "Serving", "reason": null, "reportedAt": "1970-01-01T00:00:00Z" },
            { "name": "n2", "serving": false, "state": "NoProxyPod", "reason": NOT_REPORTED },
        ])
    );
}

#[test]
fn without_a_daemonset_every_node_says_so() {
    let observed = Observed {
        services: vec![service("web", UID, &[(22, "TCP")], &[])],
        nodes: vec![ready_node("n1")],
        ..Default::default()
    };
    let service = &report(&observed).services[0];
    assert_eq!(service.daemon_set, None);
    assert_eq!(states(service), vec![("n1", NodeState::NoProxyPod, Some("the Service has no proxy DaemonSet"))]);
}

#[test]
fn only_the_newest_warnings_about_the_service_itself_are_kept_newest_first() {
    let warnings = vec![
        warning(UID, "PortRefused", "port 22/TCP", 10),
        warning(UID, "PortConflict", "port 80/TCP", 40),
        warning(UID, "InvalidOption", "bad", 30),
        warning(UID, "NoEligibleNode", "none", 20),
        warning("uid-other", "PortConflict", "not ours", 50),
    ];
    let observed = Observed { services: vec![service("web", UID, HTTP, &[])], warnings, ..Default::default() };
    let reasons: Vec<String> = report(&observed).services[0].warnings.iter().map(|w| w.reason.clone()).collect();
    assert_eq!(reasons, vec!["PortConflict", "InvalidOption", "NoEligibleNode"]);
}

#[test]
fn services_of_another_class_without_proxies_are_left_out_and_the_rest_sorted() {
    let mut foreign = service("metal", "uid-metal", HTTP, &[]);
    foreign.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/metallb".into());
    let mut cluster_ip = service("internal", "uid-internal", HTTP, &[]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let mut other_install = service("edge", "uid-edge", HTTP, &[]);
    other_install.spec.as_mut().unwrap().load_balancer_class = Some("example.com/edge".into());
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &[]), foreign, cluster_ip, other_install],
        daemonsets: vec![daemonset("edge", "uid-edge", HTTP, json!({}))],
        ..Default::default()
    };
    let names: Vec<String> = report(&observed).services.into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["edge", "web"]);
}

#[test]
fn json_names_fields_in_camel_case_and_states_by_name() {
    let observed = Observed {
        services: vec![service("web", UID, HTTP, &["10.0.0.1"])],
        nodes: vec![ready_node("n1")],
        daemonsets: vec![daemonset("web", UID, HTTP, json!({}))],
        pods: vec![pod_on("n1", ready())],
        warnings: vec![warning(UID, "PortRefused", "port 22/TCP", 0)],
        ..Default::default()
    };
    let json = serde_json::to_value(report(&observed)).unwrap();
    let web = &json["services"][0];
    assert_eq!(web["daemonSet"], "hostlb-web");
    assert_eq!(web["nodes"][0], json!({ "name": "n1", "serving": true, "state": "Serving", "reason": null }));
    assert_eq!(web["ports"][0], json!({ "port": 80, "protocol": "TCP", "claimed": true }));
    assert_eq!(web["warnings"][0]["lastSeen"], "1970-01-01T00:00:00Z");
    assert_eq!(web["warnings"][0]["count"], 3);
}

/// What `kubectl hostlb status NAME` ends with when the API server lists `services` by that name.
fn named_web(services: Vec<Service>) -> Result<Report, Unreported> {
    report_of(Some("web"), &Observed { services, ..Default::default() })
}

#[test]
fn a_named_service_that_does_not_exist_fails_in_kubectls_words() {
    let missing = named_web(vec![]).unwrap_err();
    assert_eq!(missing, Unreported::NotFound { name: "web".into() });
    assert_eq!(missing.to_string(), r#"Error from server (NotFound): services "web" not found"#);
}

#[test]
fn a_named_service_that_is_not_a_load_balancer_fails_saying_its_type() {
    let mut node_port = service("web", UID, HTTP, &[]);
    node_port.spec.as_mut().unwrap().type_ = Some("NodePort".into());
    let refused = named_web(vec![node_port]).unwrap_err();
    assert_eq!(refused.to_string(), r#"error: service "web" is of type NodePort, not LoadBalancer"#);
    let mut untyped = service("web", UID, HTTP, &[]);
    untyped.spec.as_mut().unwrap().type_ = None;
    let refused = named_web(vec![untyped]).unwrap_err();
    assert_eq!(refused, Unreported::NotLoadBalancer { name: "web".into(), type_: "ClusterIP".into() });
}

#[test]
fn a_named_load_balancer_of_another_controllers_class_fails_naming_the_class() {
    let mut foreign = service("web", UID, HTTP, &[]);
    foreign.spec.as_mut().unwrap().load_balancer_class = Some("metallb.io/metallb".into());
    let refused = named_web(vec![foreign]).unwrap_err();
    assert_eq!(
        refused.to_string(),
        r#"error: service "web" is not served by hostlb: its loadBalancerClass is metallb.io/metallb"#
    );
}

#[test]
fn a_named_service_hostlb_serves_is_reported_and_a_list_that_finds_none_succeeds_empty() {
    let served = named_web(vec![service("web", UID, HTTP, &[])]).expect("web is reported");
    assert_eq!(served.services.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), vec!["web"]);
    let mut cluster_ip = service("internal", UID, HTTP, &[]);
    cluster_ip.spec.as_mut().unwrap().type_ = Some("ClusterIP".into());
    let listed = report_of(None, &Observed { services: vec![cluster_ip], ..Default::default() });
    assert_eq!(listed, Ok(Report { services: vec![] }));
}
