//! The DaemonSet of proxy pods that serves one Service, built from its `ServiceLb`.

use std::collections::BTreeMap;

use hostlb_contract::{self as proxy, Family, LB_BINARY, NODE_NAME_ENV, PROBE_ADDRESS_ENV};
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, ExecAction, NodeAffinity, NodeSelector,
    NodeSelectorRequirement, NodeSelectorTerm, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec,
    Probe, ResourceRequirements, SeccompProfile, SecurityContext, Sysctl, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::decide::dataplane::settings::{ForwardingMode, ForwardingSettings};
use crate::decide::placement::Placement;
use hostlb_model::names;
use hostlb_model::options::{Destination, ServiceLb};

const UNPRIVILEGED_UID: i64 = 65534;

/// Labels that tie an object to the Service it serves.
pub fn service_labels(lb: &ServiceLb, forwarding_name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (names::LABEL_NAME.into(), names::APP_NAME.into()),
        (names::LABEL_COMPONENT.into(), names::COMPONENT_PROXY.into()),
        (names::LABEL_MANAGED_BY.into(), names::MANAGED_BY.into()),
        (names::LABEL_INSTANCE.into(), forwarding_name.into()),
        (names::LABEL_SERVICE_NAMESPACE.into(), lb.namespace.clone()),
        (names::LABEL_SERVICE_NAME.into(), lb.name.clone()),
        (names::LABEL_SERVICE_UID.into(), lb.uid.clone()),
    ])
}

/// The desired DaemonSet, carrying a hash of itself so an unchanged one need not be re-applied.
pub fn desired_daemonset(lb: &ServiceLb, placement: &Placement, settings: &ForwardingSettings) -> DaemonSet {
    let name = names::forwarding_name(&lb.name, &lb.uid);
    let labels = service_labels(lb, &name);
    let selector = BTreeMap::from([
        (names::LABEL_MANAGED_BY.to_string(), names::MANAGED_BY.to_string()),
        (names::LABEL_SERVICE_UID.to_string(), lb.uid.clone()),
    ]);
    let spec = pod_spec(lb, placement, settings);
    let template_annotations =
        BTreeMap::from([(names::ANNOTATION_PROXY_SPEC_HASH.to_string(), proxy_spec_hash(&spec))]);
    let daemonset = DaemonSet {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(settings.namespace.clone()),
            // On the DaemonSet only: a new pod label would roll every proxy on upgrade.
            labels: Some(
                labels
                    .clone()
                    .into_iter()
                    .chain([(names::LABEL_INSTALL.to_string(), settings.install_id.clone())])
                    .collect(),
            ),
            ..Default::default()
        },
        spec: Some(DaemonSetSpec {
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(template_annotations),
                    ..Default::default()
                }),
                spec: Some(spec),
            },
            // hostlb replaces the pods itself, one node at a time and only when what they do
            // changes (`decide::roll`): a change of where they may run (a node joining, a label,
            // a port conflict) leaves the pods that serve alone.
            update_strategy: Some(DaemonSetUpdateStrategy { type_: Some("OnDelete".into()), rolling_update: None }),
            ..Default::default()
        }),
        status: None,
    };
    with_config_hash(daemonset)
}

/// The DaemonSet carrying a hash of itself, so that an unchanged one need not be re-applied.
pub fn with_config_hash(mut daemonset: DaemonSet) -> DaemonSet {
    let hash = config_hash(&daemonset);
    daemonset.metadata.annotations = Some(BTreeMap::from([(names::ANNOTATION_CONFIG_HASH.to_string(), hash)]));
    daemonset
}

/// The hash stored on a DaemonSet by `desired_daemonset`.
pub fn config_hash_of(daemonset: &DaemonSet) -> Option<&str> {
    daemonset.metadata.annotations.as_ref()?.get(names::ANNOTATION_CONFIG_HASH).map(String::as_str)
}

/// The hash of what a proxy pod does: its spec without where it may run and at what priority,
/// which the scheduler reads only when it places a pod.
fn proxy_spec_hash(spec: &PodSpec) -> String {
    let behaviour =
        PodSpec { node_selector: None, affinity: None, tolerations: None, priority_class_name: None, ..spec.clone() };
    let json = serde_json::to_vec(&behaviour).expect("a PodSpec always serialises");
    names::hex_digest(&json)[..16].to_string()
}

/// What the pods of a DaemonSet should carry to count as current: its proxy spec hash and its
/// last `rollout restart` mark.
pub fn pod_template_marks(daemonset: &DaemonSet) -> (Option<&str>, Option<&str>) {
    let annotations = daemonset.spec.as_ref().and_then(|s| s.template.metadata.as_ref()?.annotations.as_ref());
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    (get(names::ANNOTATION_PROXY_SPEC_HASH), get(names::ANNOTATION_RESTARTED_AT))
}

fn config_hash(daemonset: &DaemonSet) -> String {
    let json = serde_json::to_vec(daemonset).expect("a DaemonSet always serialises");
    names::hex_digest(&json)[..16].to_string()
}

fn pod_spec(lb: &ServiceLb, placement: &Placement, settings: &ForwardingSettings) -> PodSpec {
    let rule_args = rule_args(lb);
    let ports: Vec<ContainerPort> = lb
        .ports
        .iter()
        .map(|p| ContainerPort {
            container_port: i32::from(p.listen),
            host_port: Some(i32::from(p.listen)),
            protocol: Some(p.protocol.api_name().into()),
            ..Default::default()
        })
        .collect();
    let (readiness_probe, probe_env, follower) = match &lb.destination {
        Destination::NodeLocal { health_check_node_port } => {
            let probe = Probe {
                exec: Some(ExecAction {
                    command: Some(
                        proxy::Command::Probe(proxy::ProbeArgs { port: *health_check_node_port, address: None })
                            .command_line(),
                    ),
                }),
                period_seconds: Some(5),
                timeout_seconds: Some(2),
                failure_threshold: Some(2),
                ..Default::default()
            };
            // The health check answers on every node address; the primary one is enough.
            let env = vec![field_env(PROBE_ADDRESS_ENV, "status.hostIP")];
            let follow = follow_args(lb);
            let follower = Container {
                name: "follow-endpoints".into(),
                image: Some(settings.controller_image.clone()),
                image_pull_policy: Some(settings.image_pull_policy.clone()),
                command: Some(follow.command_line()),
                env: Some([field_env(NODE_NAME_ENV, "spec.nodeName")].into_iter().chain(log_env(settings)).collect()),
                security_context: Some(net_admin()),
                resources: Some(resources("5m", "16Mi", "64Mi")),
                ..Default::default()
            };
            (Some(probe), Some(env), Some(follower))
        }
        Destination::ClusterIps(_) => (None, None, None),
    };
    let base = Container {
        image: Some(settings.image.clone()),
        image_pull_policy: Some(settings.image_pull_policy.clone()),
        command: Some(vec![LB_BINARY.into()]),
        ..Default::default()
    };
    let hold = Container {
        name: "hold".into(),
        args: Some(proxy::Command::Hold.to_args()),
        security_context: Some(unprivileged()),
        ..base.clone()
    };
    let (init_containers, main, sysctls) = match settings.forwarding_mode {
        ForwardingMode::InitContainer => {
            let init = Container {
                name: "install-rules".into(),
                args: Some(proxy::Command::Init(rule_args).to_args()),
                security_context: Some(SecurityContext { privileged: Some(true), ..Default::default() }),
                resources: Some(resources("10m", "16Mi", "64Mi")),
                ..base
            };
            (Some(vec![init]), hold, None)
        }
        // The endpoint follower installs the rules itself: a `run` beside it could replace
        // them after its first install.
        ForwardingMode::Sysctls if follower.is_some() => (None, hold, Some(forwarding_sysctls(&lb.families))),
        ForwardingMode::Sysctls => {
            let run = Container {
                name: "lb".into(),
                args: Some(proxy::Command::Run(rule_args).to_args()),
                security_context: Some(net_admin()),
                ..base
            };
            (None, run, Some(forwarding_sysctls(&lb.families)))
        }
    };
    let main = Container {
        ports: Some(ports),
        readiness_probe,
        env: probe_env,
        resources: Some(resources("1m", "4Mi", "32Mi")),
        ..main
    };
    let follows_endpoints = follower.is_some();
    PodSpec {
        init_containers,
        containers: [main].into_iter().chain(follower).collect(),
        // The install's own ServiceAccount, which carries its image pull secrets; the namespace's
        // default one may not. Only the endpoint follower talks to the API server.
        automount_service_account_token: Some(follows_endpoints),
        service_account_name: Some(names::PROXY_SERVICE_ACCOUNT.into()),
        enable_service_links: Some(false),
        priority_class_name: Some(lb.priority_class.clone().unwrap_or_else(|| settings.default_priority_class.clone())),
        node_selector: Some(placement.required_labels.clone()),
        affinity: Some(node_affinity(placement, settings.trust_node_labels)),
        tolerations: Some(tolerations(&lb.extra_tolerations)),
        security_context: sysctls.map(|sysctls| PodSecurityContext { sysctls: Some(sysctls), ..Default::default() }),
        termination_grace_period_seconds: Some(10),
        ..Default::default()
    }
}

/// The controller's log format and filter, for the followers and agents it starts.
pub fn log_env(settings: &ForwardingSettings) -> impl Iterator<Item = EnvVar> + '_ {
    let var =
        |(name, value): &(String, String)| EnvVar { name: name.clone(), value: Some(value.clone()), value_from: None };
    settings.log_env.iter().map(var)
}

/// What the endpoint follower, or the node agent, needs of the Service; the node is the
/// reader's own.
pub fn follow_args(lb: &ServiceLb) -> proxy::FollowArgs {
    proxy::FollowArgs {
        namespace: lb.namespace.clone(),
        service: lb.name.clone(),
        node: String::new(),
        port_names: lb.port_names.clone(),
        rules: rule_args(lb),
    }
}

/// An environment variable the kubelet fills in from the pod (the downward API).
pub fn field_env(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector { field_path: field_path.into(), ..Default::default() }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Which port goes where, and from where it may come.
fn rule_args(lb: &ServiceLb) -> proxy::RuleArgs {
    let to = match &lb.destination {
        Destination::ClusterIps(addresses) => addresses.iter().copied().map(proxy::Destination::Address).collect(),
        Destination::NodeLocal { .. } => vec![proxy::Destination::NodeEndpoints],
    };
    proxy::RuleArgs {
        ports: lb.ports.clone(),
        to,
        families: lb.families.clone(),
        source_ranges: lb.source_ranges.clone(),
    }
}

fn forwarding_sysctls(families: &[Family]) -> Vec<Sysctl> {
    families
        .iter()
        .map(|family| Sysctl {
            name: match family {
                Family::V4 => "net.ipv4.ip_forward",
                Family::V6 => "net.ipv6.conf.all.forwarding",
            }
            .into(),
            value: "1".into(),
        })
        .collect()
}

/// Programming nftables needs NET_ADMIN in the network namespace, and root: kubelet grants
/// added capabilities to root only.
pub fn net_admin() -> SecurityContext {
    SecurityContext {
        capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into()]), drop: Some(vec!["ALL".into()]) }),
        run_as_user: Some(0),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

fn unprivileged() -> SecurityContext {
    SecurityContext {
        run_as_user: Some(UNPRIVILEGED_UID),
        run_as_group: Some(UNPRIVILEGED_UID),
        run_as_non_root: Some(true),
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
        seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
        ..Default::default()
    }
}

pub fn resources(cpu: &str, memory_request: &str, memory_limit: &str) -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory_request.into())),
        ])),
        limits: Some(BTreeMap::from([("memory".to_string(), Quantity(memory_limit.into()))])),
        ..Default::default()
    }
}

/// The placement's label alternatives and excluded nodes (by `metadata.name`, which the
/// DaemonSet controller and the scheduler both honour).
fn node_affinity(placement: &Placement, trust_node_labels: bool) -> Affinity {
    // The API server takes one value per field requirement; requirements of a term all hold.
    let excluded: Option<Vec<NodeSelectorRequirement>> = (!placement.excluded_nodes.is_empty()).then(|| {
        let not = |node: &String| NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec![node.clone()]),
        };
        placement.excluded_nodes.iter().map(not).collect()
    });
    // Terms are alternatives: each of the placement's, with the exclusions.
    let terms = placement
        .label_alternatives(trust_node_labels)
        .into_iter()
        .map(|requirements| NodeSelectorTerm { match_expressions: Some(requirements), match_fields: excluded.clone() })
        .collect();
    Affinity {
        node_affinity: Some(NodeAffinity {
            required_during_scheduling_ignored_during_execution: Some(NodeSelector { node_selector_terms: terms }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The proxy pods' tolerations: the control plane's taints, and the Service's own.
pub fn tolerations(extra: &[Toleration]) -> Vec<Toleration> {
    let exists = |key: &str, effect: Option<&str>| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: effect.map(Into::into),
        ..Default::default()
    };
    let mut tolerations = vec![
        exists("CriticalAddonsOnly", None),
        exists("node-role.kubernetes.io/control-plane", Some("NoSchedule")),
        exists("node-role.kubernetes.io/master", Some("NoSchedule")),
    ];
    tolerations.extend(extra.iter().cloned());
    tolerations
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{ServiceBuilder, UID};

    fn settings(forwarding: ForwardingMode) -> ForwardingSettings {
        ForwardingSettings {
            namespace: "hostlb-system".into(),
            image: "example.org/hostlb/lb:1".into(),
            image_pull_policy: "IfNotPresent".into(),
            forwarding_mode: forwarding,
            default_priority_class: "system-node-critical".into(),
            controller_image: "example.org/hostlb/controller:1".into(),
            install_id: names::install_id(names::DEFAULT_LOAD_BALANCER_CLASS),
            dataplane: crate::decide::dataplane::DataPlaneKind::Pods,
            agent: hostlb_model::agent::AGENT.into(),
            log_env: Vec::new(),
            trust_node_labels: true,
        }
    }

    #[test]
    fn the_follower_logs_as_the_controller_does_and_takes_nothing_for_the_defaults() {
        let service = ServiceBuilder::new("web").port("TCP", 80, 30080).local(32000).build();
        let follower_env = |settings: &ForwardingSettings| {
            let lb = ServiceLb::from_service(&service).unwrap();
            let daemonset = desired_daemonset(&lb, &Placement::for_service(&lb, false), settings);
            let containers = daemonset.spec.unwrap().template.spec.unwrap().containers;
            let follower = containers.into_iter().find(|c| c.name == "follow-endpoints").unwrap();
            follower.env.unwrap().into_iter().map(|var| var.name).collect::<Vec<_>>()
        };
        let mut json = settings(ForwardingMode::InitContainer);
        assert_eq!(follower_env(&json), [NODE_NAME_ENV]);
        json.log_env = vec![("HOSTLB_LOG_FORMAT".into(), "json".into()), ("RUST_LOG".into(), "debug".into())];
        assert_eq!(follower_env(&json), [NODE_NAME_ENV, "HOSTLB_LOG_FORMAT", "RUST_LOG"]);
    }

    fn build(service: ServiceBuilder, forwarding: ForwardingMode) -> DaemonSet {
        let lb = ServiceLb::from_service(&service.build()).unwrap();
        let placement = Placement::for_service(&lb, false);
        desired_daemonset(&lb, &placement, &settings(forwarding))
    }

    fn pod(daemonset: &DaemonSet) -> &PodSpec {
        daemonset.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    #[test]
    fn pods_are_replaced_by_hostlb_and_only_a_change_of_what_they_do_changes_their_hash() {
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let settings = settings(ForwardingMode::InitContainer);
        let everywhere = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings);
        let strategy = everywhere.spec.as_ref().unwrap().update_strategy.as_ref().unwrap();
        assert_eq!(strategy.type_.as_deref(), Some("OnDelete"));

        let mut placement = Placement::for_service(&lb, true);
        placement.excluded_nodes.insert("n2".into());
        let elsewhere = desired_daemonset(&lb, &placement, &settings);
        assert_ne!(config_hash_of(&everywhere), config_hash_of(&elsewhere), "the DaemonSet is applied anew");
        assert_eq!(pod_template_marks(&everywhere), pod_template_marks(&elsewhere), "its pods stay current");

        let new_image = ForwardingSettings { image: "example.org/hostlb/lb:2".into(), ..settings };
        let changed = desired_daemonset(&lb, &Placement::for_service(&lb, false), &new_image);
        assert_ne!(pod_template_marks(&everywhere).0, pod_template_marks(&changed).0, "new pods are rolled out");
        assert!(pod_template_marks(&changed).0.is_some());
    }

    #[test]
    fn claims_every_service_port_as_host_port_with_its_protocol() {
        let ds = build(
            ServiceBuilder::new("web").port("TCP", 80, 0).port("UDP", 80, 0).port("SCTP", 9, 0),
            ForwardingMode::InitContainer,
        );
        let ports = pod(&ds).containers[0].ports.as_ref().unwrap();
        let claimed: Vec<(i32, Option<i32>, &str)> =
            ports.iter().map(|p| (p.container_port, p.host_port, p.protocol.as_deref().unwrap())).collect();
        assert_eq!(claimed, vec![(80, Some(80), "TCP"), (80, Some(80), "UDP"), (9, Some(9), "SCTP")]);
    }

    #[test]
    fn lives_in_the_system_namespace_labelled_with_its_service() {
        let ds = build(ServiceBuilder::new("web"), ForwardingMode::InitContainer);
        assert_eq!(ds.metadata.namespace.as_deref(), Some("hostlb-system"));
        let labels = ds.metadata.labels.as_ref().unwrap();
        assert_eq!(labels[names::LABEL_SERVICE_NAME], "web");
        assert_eq!(labels[names::LABEL_SERVICE_NAMESPACE], "shop");
        assert_eq!(labels[names::LABEL_SERVICE_UID], UID);
        assert_eq!(labels[names::LABEL_MANAGED_BY], "hostlb");
        assert_eq!(labels[names::LABEL_INSTALL], names::install_id(names::DEFAULT_LOAD_BALANCER_CLASS));
        let template_labels = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.as_ref().unwrap();
        let selector = ds.spec.as_ref().unwrap().selector.match_labels.as_ref().unwrap();
        assert!(selector.iter().all(|(k, v)| template_labels.get(k) == Some(v)));
    }

    #[test]
    fn init_container_mode_keeps_the_long_running_container_without_capabilities() {
        let ds = build(ServiceBuilder::new("web").port("TCP", 443, 0), ForwardingMode::InitContainer);
        let spec = pod(&ds);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.security_context.as_ref().unwrap().privileged, Some(true));
        assert_eq!(
            init.args.as_ref().unwrap(),
            &["init", "--port", "tcp:443:443", "--to", "10.96.0.10", "--family", "ipv4"].map(String::from).to_vec()
        );
        let hold = &spec.containers[0];
        assert_eq!(hold.args.as_ref().unwrap(), &vec!["hold".to_string()]);
        let security = hold.security_context.as_ref().unwrap();
        assert_eq!(security.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &vec!["ALL".to_string()]);
        assert_eq!(security.run_as_non_root, Some(true));
        assert!(security.capabilities.as_ref().unwrap().add.is_none());
        assert!(spec.security_context.is_none());
    }

    #[test]
    fn a_cluster_services_proxy_pods_run_as_the_proxy_service_account_without_its_token() {
        for forwarding in [ForwardingMode::InitContainer, ForwardingMode::Sysctls] {
            let ds = build(ServiceBuilder::new("web"), forwarding);
            let spec = pod(&ds);
            assert_eq!(spec.service_account_name.as_deref(), Some("hostlb-proxy"), "{forwarding:?}");
            assert_eq!(spec.automount_service_account_token, Some(false), "{forwarding:?}");
        }
    }

    #[test]
    fn sysctls_mode_asks_kubelet_for_forwarding_of_each_family_and_adds_net_admin() {
        let ds = build(ServiceBuilder::new("web").cluster_ips(&["10.96.0.10", "fd00::a"]), ForwardingMode::Sysctls);
        let spec = pod(&ds);
        assert!(spec.init_containers.is_none());
        let sysctls: Vec<&str> =
            spec.security_context.as_ref().unwrap().sysctls.as_ref().unwrap().iter().map(|s| s.name.as_str()).collect();
        assert_eq!(sysctls, vec!["net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]);
        let run = &spec.containers[0];
        assert_eq!(run.args.as_ref().unwrap()[0], "run");
        assert!(run.args.as_ref().unwrap().contains(&"fd00::a".to_string()));
        let added = run.security_context.as_ref().unwrap().capabilities.as_ref().unwrap().add.as_ref().unwrap();
        assert_eq!(added, &vec!["NET_ADMIN".to_string()]);
    }

    #[test]
    fn local_policy_follows_the_node_endpoints_with_the_controller_image_and_probes_the_health_check() {
        let mut service = ServiceBuilder::new("web").port("TCP", 80, 30080).port("UDP", 53, 0).local(32100).build();
        service.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].name = Some("http".into());
        let lb = ServiceLb::from_service(&service).unwrap();
        let ds = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings(ForwardingMode::InitContainer));
        let spec = pod(&ds);
        let init = &spec.init_containers.as_ref().unwrap()[0];
        let args = init.args.as_ref().unwrap();
        assert!(args.windows(2).any(|w| w == ["--port", "tcp:80:80"]), "{args:?}");
        assert!(args.windows(2).any(|w| w == ["--to", "node-endpoints"]), "{args:?}");
        assert!(init.env.is_none());
        let hold = &spec.containers[0];
        let probe = hold.readiness_probe.as_ref().unwrap().exec.as_ref().unwrap().command.as_ref().unwrap();
        assert_eq!(probe, &["/hostlb-lb", "probe", "--port", "32100"].map(String::from).to_vec());
        assert_eq!(hold.env.as_ref().unwrap()[0].name, "HOSTLB_PROBE_ADDRESS");
        assert!(hold.security_context.as_ref().unwrap().capabilities.as_ref().unwrap().add.is_none());

        let follower = &spec.containers[1];
        assert_eq!(follower.image.as_deref(), Some("example.org/hostlb/controller:1"));
        let command = follower.command.as_ref().unwrap();
        assert_eq!(
            command[..8],
            [
                "/hostlb-controller",
                "follow-endpoints",
                "--service-namespace",
                "shop",
                "--service-name",
                "web",
                "--port-name",
                "tcp:80:http"
            ]
        );
        assert!(command.windows(2).any(|w| w == ["--to", "node-endpoints"]), "{command:?}");
        let env = &follower.env.as_ref().unwrap()[0];
        assert_eq!(
            (env.name.as_str(), env.value_from.as_ref().unwrap().field_ref.as_ref().unwrap().field_path.as_str()),
            ("HOSTLB_NODE_NAME", "spec.nodeName")
        );
        let security = follower.security_context.as_ref().unwrap();
        assert_eq!(security.capabilities.as_ref().unwrap().add.as_ref().unwrap(), &vec!["NET_ADMIN".to_string()]);
        assert_eq!(security.allow_privilege_escalation, Some(false));
        assert!(security.privileged.is_none());
        assert_eq!(spec.automount_service_account_token, Some(true));
        assert_eq!(spec.service_account_name.as_deref(), Some("hostlb-proxy"));
    }

    #[test]
    fn local_policy_in_sysctls_mode_leaves_the_rules_to_the_follower() {
        let ds = build(ServiceBuilder::new("web").local(32100), ForwardingMode::Sysctls);
        let spec = pod(&ds);
        assert!(spec.init_containers.is_none());
        let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["hold", "follow-endpoints"]);
        assert!(spec.security_context.as_ref().unwrap().sysctls.is_some());
    }

    #[test]
    fn cluster_policy_pods_have_no_readiness_probe() {
        let ds = build(ServiceBuilder::new("web"), ForwardingMode::InitContainer);
        assert!(pod(&ds).containers[0].readiness_probe.is_none());
    }

    #[test]
    fn source_ranges_are_passed_to_the_proxy() {
        let ds = build(ServiceBuilder::new("web").source_ranges(&["10.250.0.0/24"]), ForwardingMode::InitContainer);
        let args = pod(&ds).init_containers.as_ref().unwrap()[0].args.clone().unwrap();
        assert!(args.windows(2).any(|w| w == ["--source-range", "10.250.0.0/24"]), "{args:?}");
    }

    #[test]
    fn a_pool_becomes_alternative_terms_each_keeping_the_exclusions_the_admins_first() {
        let ds = build(ServiceBuilder::new("web").label(names::POOL, "edge"), ForwardingMode::InitContainer);
        let spec = pod(&ds);
        assert!(!spec.node_selector.as_ref().unwrap().contains_key(names::POOL));
        let affinity = spec.affinity.clone().unwrap().node_affinity.unwrap();
        let terms = affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        let described: Vec<Vec<String>> = terms
            .iter()
            .map(|term| {
                let expressions = term.match_expressions.iter().flatten();
                expressions
                    .map(|r| format!("{} {} {:?}", r.key, r.operator, r.values.clone().unwrap_or_default()))
                    .collect()
            })
            .collect();
        let excluded = format!("{} DoesNotExist []", names::NODE_LABEL_EXCLUDE);
        assert_eq!(
            described,
            vec![
                vec![r#"node-restriction.kubernetes.io/hostlb-lbpool In ["edge"]"#.to_string(), excluded.clone()],
                vec!["node-restriction.kubernetes.io/hostlb-pool.edge Exists []".to_string(), excluded.clone()],
                vec![r#"hostlb.io/lbpool In ["edge"]"#.to_string(), excluded.clone()],
                vec!["pool.hostlb.io/edge Exists []".to_string(), excluded.clone()],
                vec![r#"svccontroller.k3s.cattle.io/lbpool In ["edge"]"#.to_string(), excluded.clone()],
            ]
        );
        // Untrusted, the labels a kubelet may write place nothing.
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").label(names::POOL, "edge").build()).unwrap();
        let untrusted = ForwardingSettings { trust_node_labels: false, ..settings(ForwardingMode::InitContainer) };
        let ds = desired_daemonset(&lb, &Placement::for_service(&lb, false), &untrusted);
        let affinity = pod(&ds).affinity.clone().unwrap().node_affinity.unwrap();
        let terms = affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        let keys: Vec<String> =
            terms.iter().map(|term| term.match_expressions.as_ref().unwrap()[0].key.clone()).collect();
        assert_eq!(
            keys,
            ["node-restriction.kubernetes.io/hostlb-lbpool", "node-restriction.kubernetes.io/hostlb-pool.edge"]
        );
    }

    #[test]
    fn enablelb_in_use_admits_nodes_switched_on_by_hostlbs_label_or_else_by_servicelbs() {
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let ds = desired_daemonset(&lb, &Placement::for_service(&lb, true), &settings(ForwardingMode::InitContainer));
        let spec = pod(&ds);
        assert!(!spec.node_selector.as_ref().unwrap().contains_key(names::NODE_LABEL_ENABLE_LB));
        let affinity = spec.affinity.clone().unwrap().node_affinity.unwrap();
        let terms = affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms;
        let described: Vec<Vec<String>> = terms
            .iter()
            .map(|term| term.match_expressions.iter().flatten().map(|r| format!("{} {}", r.key, r.operator)).collect())
            .collect();
        let excluded = format!("{} DoesNotExist", names::NODE_LABEL_EXCLUDE);
        assert_eq!(
            described,
            vec![
                vec!["node-restriction.kubernetes.io/hostlb-enablelb In".to_string(), excluded.clone()],
                vec![
                    "node-restriction.kubernetes.io/hostlb-enablelb DoesNotExist".to_string(),
                    "hostlb.io/enablelb In".to_string(),
                    excluded.clone()
                ],
                vec![
                    "node-restriction.kubernetes.io/hostlb-enablelb DoesNotExist".to_string(),
                    "hostlb.io/enablelb DoesNotExist".to_string(),
                    "svccontroller.k3s.cattle.io/enablelb In".to_string(),
                    excluded
                ],
            ]
        );
    }

    #[test]
    fn nodes_held_by_an_older_service_are_left_out_by_name() {
        let lb = ServiceLb::from_service(&ServiceBuilder::new("web").build()).unwrap();
        let mut placement = Placement::for_service(&lb, false);
        let none = desired_daemonset(&lb, &placement, &settings(ForwardingMode::InitContainer));
        let terms = |ds: &DaemonSet| {
            let affinity = pod(ds).affinity.clone().unwrap().node_affinity.unwrap();
            affinity.required_during_scheduling_ignored_during_execution.unwrap().node_selector_terms
        };
        assert!(terms(&none)[0].match_fields.is_none());
        placement.excluded_nodes = ["n2".to_string(), "n1".to_string()].into();
        let excluded = desired_daemonset(&lb, &placement, &settings(ForwardingMode::InitContainer));
        let fields = terms(&excluded)[0].match_fields.clone().unwrap();
        let fields: Vec<(&str, &str, Option<Vec<String>>)> =
            fields.iter().map(|f| (f.key.as_str(), f.operator.as_str(), f.values.clone())).collect();
        assert_eq!(
            fields,
            vec![
                ("metadata.name", "NotIn", Some(vec!["n1".to_string()])),
                ("metadata.name", "NotIn", Some(vec!["n2".to_string()])),
            ]
        );
    }

    #[test]
    fn tolerates_control_plane_by_default_and_adds_the_users_tolerations() {
        let ds = build(
            ServiceBuilder::new("web")
                .annotation(names::ANNOTATION_TOLERATIONS, r#"[{"key":"edge","operator":"Exists"}]"#),
            ForwardingMode::InitContainer,
        );
        let keys: Vec<&str> = pod(&ds).tolerations.as_ref().unwrap().iter().filter_map(|t| t.key.as_deref()).collect();
        assert_eq!(
            keys,
            vec![
                "CriticalAddonsOnly",
                "node-role.kubernetes.io/control-plane",
                "node-role.kubernetes.io/master",
                "edge"
            ]
        );
    }

    #[test]
    fn priority_class_defaults_and_can_be_overridden() {
        let default = build(ServiceBuilder::new("web"), ForwardingMode::InitContainer);
        assert_eq!(pod(&default).priority_class_name.as_deref(), Some("system-node-critical"));
        let chosen = build(
            ServiceBuilder::new("web").annotation(names::ANNOTATION_PRIORITY_CLASS, "lb"),
            ForwardingMode::InitContainer,
        );
        assert_eq!(pod(&chosen).priority_class_name.as_deref(), Some("lb"));
    }

    #[test]
    fn config_hash_changes_with_the_spec_and_only_then() {
        let a = build(ServiceBuilder::new("web").port("TCP", 80, 0), ForwardingMode::InitContainer);
        let again = build(ServiceBuilder::new("web").port("TCP", 80, 0), ForwardingMode::InitContainer);
        let other_port = build(ServiceBuilder::new("web").port("TCP", 81, 0), ForwardingMode::InitContainer);
        assert_eq!(config_hash_of(&a), config_hash_of(&again));
        assert_ne!(config_hash_of(&a), config_hash_of(&other_port));
        assert!(config_hash_of(&a).is_some());
    }
}
