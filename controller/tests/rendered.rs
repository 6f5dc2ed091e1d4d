//! The objects hostlb writes for a set of Services, compared with those it wrote before
//! (`rendered.json`): a proxy DaemonSet whose rendering changes rolls every proxy pod on
//! upgrade, and a plan that changes is reprogrammed on every node. An intended change is
//! written anew with `HOSTLB_WRITE_RENDERED=1 cargo test -p hostlb-controller --test rendered`,
//! and its diff read in review.

use hostlb_controller::decide::dataplane::node_agents::{desired_agent as agent, desired_plan as plan};
use hostlb_controller::decide::dataplane::proxy_daemonset::desired_daemonset as daemonset;
use hostlb_controller::decide::dataplane::settings::{DataPlaneKind, ForwardingMode, ForwardingSettings};
use hostlb_controller::decide::placement::Placement;
use hostlb_model::fixtures::ServiceBuilder;
use hostlb_model::options::ServiceLb;
use k8s_openapi::api::core::v1::Service;

fn settings(forwarding_mode: ForwardingMode) -> ForwardingSettings {
    ForwardingSettings {
        namespace: "hostlb-system".into(),
        image: "example.org/hostlb/lb:1".into(),
        image_pull_policy: "IfNotPresent".into(),
        forwarding_mode,
        default_priority_class: "hostlb-proxy".into(),
        controller_image: "example.org/hostlb/controller:1".into(),
        install_id: hostlb_model::names::install_id(hostlb_model::names::DEFAULT_LOAD_BALANCER_CLASS),
        dataplane: DataPlaneKind::Pods,
        agent: "hostlb-agent".into(),
        log_env: Vec::new(),
        trust_node_labels: false,
    }
}
fn services() -> Vec<(&'static str, Service)> {
    let tolerations = r#"[{"key":"example.com/dedicated","operator":"Exists","effect":"NoSchedule"}]"#;
    vec![
        ("cluster-tcp", ServiceBuilder::new("web").port("TCP", 80, 30080).port("TCP", 443, 30443).build()),
        ("udp-sctp", ServiceBuilder::new("dns").port("UDP", 53, 30053).port("SCTP", 9, 30009).build()),
        ("local", ServiceBuilder::new("edge").port("TCP", 80, 30081).local(32000).build()),
        (
            "ranges",
            ServiceBuilder::new("db").port("TCP", 5432, 30432).source_ranges(&["10.1.0.0/16", "fd00::/8"]).build(),
        ),
        ("dual", ServiceBuilder::new("dual").port("TCP", 8080, 30090).cluster_ips(&["10.96.0.10", "fd00::10"]).build()),
        (
            "tolerations",
            ServiceBuilder::new("tol").port("TCP", 81, 30091).annotation("hostlb.io/tolerations", tolerations).build(),
        ),
        (
            "priority",
            ServiceBuilder::new("prio").port("TCP", 82, 30092).annotation("hostlb.io/priority-class", "custom").build(),
        ),
        ("pool", ServiceBuilder::new("pooled").port("TCP", 83, 30093).label("hostlb.io/lbpool", "edge").build()),
    ]
}

#[test]
fn the_rendered_daemonsets_plans_and_agents_are_those_of_before() {
    let mut out = serde_json::Map::new();
    for mode in [ForwardingMode::InitContainer, ForwardingMode::Sysctls] {
        let s = settings(mode);
        for (name, service) in services() {
            let lb = ServiceLb::from_service(&service).unwrap();
            let mut placement = Placement::for_service(&lb, name == "pool");
            if name == "ranges" {
                placement.excluded_nodes.insert("n2".into());
            }
            out.insert(
                format!("{mode:?}/{name}/daemonset"),
                serde_json::to_value(daemonset(&lb, &placement, &s)).unwrap(),
            );
            out.insert(format!("{mode:?}/{name}/plan"), serde_json::to_value(plan(&lb, &["n1", "n2"], &s)).unwrap());
        }
        out.insert(format!("{mode:?}/agent"), serde_json::to_value(agent(&s)).unwrap());
    }
    let rendered = serde_json::to_string_pretty(&out).unwrap() + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rendered.json");
    if std::env::var_os("HOSTLB_WRITE_RENDERED").is_some() {
        std::fs::write(&path, &rendered).unwrap();
    }
    let before = std::fs::read_to_string(&path).unwrap();
    let (before, now): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&before).unwrap(), serde_json::from_str(&rendered).unwrap());
    let changed: Vec<&String> = now
        .as_object()
        .unwrap()
        .iter()
        .filter(|(key, object)| before.get(key.as_str()) != Some(object))
        .map(|(key, _)| key)
        .collect();
    assert!(changed.is_empty(), "rendered differently from tests/rendered.json: {changed:?}");
    assert_eq!(before, now, "tests/rendered.json names objects no longer rendered");
}
