//! The controller's command line: its flags (each also an environment variable), and the
//! settings, Lease timing and logging they make.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::time::Duration;

use hostlb_contract::{release, AgentArgs, Cidr, FollowArgs, FOLLOW_ENDPOINTS, NODE_AGENT};
use hostlb_model::address::{AddressKind, AddressPolicy, AddressType, NodeAskedAddresses};
use hostlb_model::{agent, names};
use k8s_openapi::apimachinery::pkg::version::Info;

use crate::decide::dataplane::settings::ForwardingMode;
use crate::decide::dataplane::{DataPlaneKind, ForwardingSettings};
use crate::decide::leadership::LeaseTiming;
use crate::decide::limits::{self, ServiceLimits};
use crate::decide::port_policy::{self, PortPolicy, PortRange};
use crate::decide::tenancy::TenantPolicy;
use crate::decide::Settings;
use crate::run::api_version::version_at_least;

/// Serves Kubernetes Services of type LoadBalancer from the nodes' own addresses.
#[derive(Debug, clap::Parser)]
#[command(version = release::VERSION_AND_REVISION, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Cli {
    #[command(subcommand)]
    pub proxy: Option<ProxyCommand>,
    #[command(flatten)]
    pub controller: Args,
}

/// What the binary does in proxy pods instead of controlling.
#[derive(Debug, clap::Subcommand)]
pub enum ProxyCommand {
    /// Keep a proxy pod's forwarding on its node's ready endpoints of the Service
    /// (externalTrafficPolicy: Local); needs NET_ADMIN in the pod's network namespace.
    #[command(name = FOLLOW_ENDPOINTS)]
    FollowEndpoints(FollowArgs),
    /// Program every Service this node serves in its network namespace (--dataplane agent);
    /// needs NET_ADMIN in the node's network namespace.
    #[command(name = NODE_AGENT)]
    NodeAgent(AgentArgs),
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace of the proxy DaemonSets.
    #[arg(long, env = "HOSTLB_NAMESPACE", default_value = names::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Services with this spec.loadBalancerClass are served; others are left alone.
    #[arg(long, env = "HOSTLB_LOAD_BALANCER_CLASS", default_value = names::DEFAULT_LOAD_BALANCER_CLASS)]
    pub load_balancer_class: String,
    /// Whether Services without a class are served too; of several installs, give it to one.
    #[arg(long, env = "HOSTLB_SERVE_UNCLASSED", default_value_t = true, action = clap::ArgAction::Set)]
    pub serve_unclassed: bool,
    /// Release every Service this install serves (proxies deleted, status cleared, an older
    /// version's finalizer removed), then exit: run it after scaling the controller to zero,
    /// before removing it.
    #[arg(long)]
    pub uninstall: bool,
    /// With --uninstall: first scale this Deployment (in --namespace), the controller's own, to
    /// zero and wait until its pods are gone, so that the uninstall can run while it is installed.
    #[arg(long, requires = "uninstall")]
    pub stop_deployment: Option<String>,
    /// Image of the proxy pods (the hostlb-lb binary).
    #[arg(long, env = "HOSTLB_LB_IMAGE", required_unless_present = "uninstall")]
    pub lb_image: Option<String>,
    #[arg(long, env = "HOSTLB_LB_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    pub lb_image_pull_policy: String,
    /// This controller's own image: proxy pods of externalTrafficPolicy: Local Services run it
    /// beside hostlb-lb to follow the endpoints on their node.
    #[arg(long, env = "HOSTLB_CONTROLLER_IMAGE", required_unless_present = "uninstall")]
    pub controller_image: Option<String>,
    /// What carries the traffic: a DaemonSet of proxy pods per Service, or one agent per node
    /// that programs every Service in the node's network namespace (see docs/dataplanes.md for
    /// what each holds).
    #[arg(long, env = "HOSTLB_DATAPLANE", value_enum, default_value_t = DataPlaneKind::Pods)]
    pub dataplane: DataPlaneKind,
    /// How proxy pods turn on forwarding.
    #[arg(long, env = "HOSTLB_FORWARDING_MODE", value_enum, default_value_t = ForwardingMode::InitContainer)]
    pub forwarding_mode: ForwardingMode,
    /// Which node addresses to publish.
    #[arg(long, env = "HOSTLB_ADDRESS_TYPE", value_enum, default_value_t = AddressType::Auto)]
    pub address_type: AddressType,
    /// What of each serving node is published, unless a Service's hostlb.io/publish says
    /// otherwise: its IP addresses, its hostname, or both (comma-separated).
    #[arg(long, env = "HOSTLB_PUBLISH", value_enum, value_delimiter = ',', default_value = "ip")]
    pub publish: Vec<AddressKind>,
    /// At most this many nodes are published per Service unless its hostlb.io/max-nodes says
    /// otherwise; 0 for all.
    #[arg(long, env = "HOSTLB_MAX_NODES", default_value_t = 0)]
    pub max_nodes: usize,
    /// The ranges a node may ask to be published in, through its hostlb.io/public-address
    /// annotation (which its kubelet may write); comma-separated CIDRs. None by default: the
    /// node's own addresses are published.
    #[arg(long, env = "HOSTLB_NODE_PUBLIC_ADDRESS_RANGES", value_delimiter = ',', value_parser = Cidr::parse)]
    pub node_public_address_ranges: Vec<Cidr>,
    /// The DNS domains a node's hostlb.io/public-hostname annotation may name (the domain or a
    /// name under it); comma-separated. None by default.
    #[arg(long, env = "HOSTLB_NODE_PUBLIC_HOSTNAME_DOMAINS", value_delimiter = ',')]
    pub node_public_hostname_domains: Vec<String>,
    /// PriorityClass of proxy pods unless a Service names another. The install's own class
    /// never preempts other pods.
    #[arg(long, env = "HOSTLB_DEFAULT_PRIORITY_CLASS", default_value = "hostlb-proxy")]
    pub default_priority_class: String,
    /// PriorityClasses a Service may name in hostlb.io/priority-class, besides the default.
    #[arg(long, env = "HOSTLB_ALLOWED_PRIORITY_CLASSES", value_delimiter = ',')]
    pub allowed_priority_classes: Vec<String>,
    /// Taint keys a Service's hostlb.io/tolerations may name.
    #[arg(long, env = "HOSTLB_ALLOWED_TOLERATION_KEYS", value_delimiter = ',')]
    pub allowed_toleration_keys: Vec<String>,
    /// Namespaces whose Services may ask for any PriorityClass and toleration.
    #[arg(long, env = "HOSTLB_TRUSTED_NAMESPACES", value_delimiter = ',')]
    pub trusted_namespaces: Vec<String>,
    /// Host ports no Service may claim (PORT or FIRST-LAST, comma-separated): the node's own
    /// daemons listen there.
    #[arg(long, env = "HOSTLB_DENIED_PORTS", value_delimiter = ',', value_parser = PortRange::parse,
          default_value = port_policy::DEFAULT_DENIED_PORTS)]
    pub denied_ports: Vec<PortRange>,
    /// Host ports Services may claim even if denied or in the NodePort range.
    #[arg(long, env = "HOSTLB_ALLOWED_PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    pub allowed_ports: Vec<PortRange>,
    /// The API server's --service-node-port-range: kube-proxy listens there, so Services may not.
    #[arg(long, env = "HOSTLB_NODE_PORT_RANGE", value_parser = PortRange::parse,
          default_value = port_policy::DEFAULT_NODE_PORT_RANGE)]
    pub node_port_range: PortRange,
    /// At most this many ports per Service: each is a hostPort on every serving node. A Service
    /// with more gets a Warning and nothing of it is applied.
    #[arg(long, env = "HOSTLB_MAX_SERVICE_PORTS", default_value_t = limits::DEFAULT_MAX_SERVICE_PORTS)]
    pub max_service_ports: usize,
    /// At most this many source ranges per Service: each is copied into the proxy DaemonSet and
    /// every proxy pod. A Service with more gets a Warning and nothing of it is applied.
    #[arg(long, env = "HOSTLB_MAX_SOURCE_RANGES", default_value_t = limits::DEFAULT_MAX_SOURCE_RANGES)]
    pub max_source_ranges: usize,
    /// Seconds by which a kubelet may miss a renewal of its node Lease before the node leaves
    /// every status (long before the node controller marks it NotReady); 0 to wait for NotReady.
    #[arg(long, env = "HOSTLB_NODE_LEASE_GRACE_SECONDS", default_value_t = 10)]
    pub node_lease_grace_seconds: u64,
    /// Seconds for which no address is withdrawn while more than half the nodes look down at
    /// once (more likely the control plane's blindness than the nodes); after that, the nodes
    /// still down leave the status.
    #[arg(long, env = "HOSTLB_WITHDRAWAL_PAUSE_LIMIT_SECONDS", default_value_t = 300)]
    pub withdrawal_pause_limit_seconds: u64,
    /// Whether the pool and enablelb labels a node's own kubelet may write (hostlb.io/lbpool,
    /// pool.hostlb.io/POOL, hostlb.io/enablelb and k3s ServiceLB's) place Services, beside the
    /// admin's node-restriction.kubernetes.io/hostlb-* labels, which no kubelet may write. Off by
    /// default: with it, root on a node can put the node in every pool.
    #[arg(long, env = "HOSTLB_TRUST_NODE_LABELS", default_value_t = false, action = clap::ArgAction::Set)]
    pub trust_node_labels: bool,
    /// Seconds a node agent's report stands without renewal (agents renew it every 10) before
    /// what its node forwards counts as unknown and the node leaves the status of the Services
    /// it reports; as long as the node controller waits for a silent kubelet.
    #[arg(long, env = "HOSTLB_AGENT_REPORT_EXPIRY_SECONDS", default_value_t = 40)]
    pub agent_report_expiry_seconds: u64,
    /// Address of the /livez, /readyz and /metrics endpoints.
    #[arg(long, env = "HOSTLB_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    pub http_address: SocketAddr,
    #[arg(long, env = "HOSTLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Names this replica in Events; the pod name is a good choice.
    #[arg(long, env = "HOSTLB_INSTANCE")]
    pub instance: Option<String>,
    /// Seconds to wait for the watches to list their objects before exiting, so that the
    /// kubelet restarts a replica that cannot see the cluster.
    #[arg(long, env = "HOSTLB_SYNC_TIMEOUT_SECONDS", default_value_t = 120)]
    pub sync_timeout_seconds: u64,
    /// The Lease (in --namespace) whose holder leads; only the leader writes. Default:
    /// `hostlb-controller` for the default class, one per install for the others.
    #[arg(long, env = "HOSTLB_LEASE_NAME")]
    pub lease_name: Option<String>,
    /// How long the leader's claim stands without renewal: the longest a failover takes
    /// when the leader dies without releasing the Lease.
    #[arg(long, env = "HOSTLB_LEASE_DURATION_SECONDS", default_value_t = 15)]
    pub lease_duration_seconds: u64,
    /// How long after it sent its last successful renewal a leader goes on leading, and how
    /// long the writes under way may go on after SIGTERM; below the lease duration.
    #[arg(long, env = "HOSTLB_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    pub lease_renew_deadline_seconds: u64,
    /// How often the Lease is read and renewed: the longest a failover takes after the leader
    /// released the Lease on shutdown.
    #[arg(long, env = "HOSTLB_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 1)]
    pub lease_retry_period_seconds: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `RUST_LOG` as this process has it, for the processes it starts on the nodes; nothing for
/// the default level, which they log at anyway, so that setting it (as the chart does) rolls
/// no proxy pod.
fn log_filter_env() -> Option<(String, String)> {
    let filter = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).ok()?;
    (filter.trim() != DEFAULT_LOG_FILTER).then(|| (tracing_subscriber::EnvFilter::DEFAULT_ENV.to_string(), filter))
}

/// What every binary of hostlb logs without `RUST_LOG`.
const DEFAULT_LOG_FILTER: &str = "info";

impl LogFormat {
    /// The environment that gives another process of this binary the same format.
    fn env(self) -> Option<(String, String)> {
        (self == LogFormat::Json).then(|| ("HOSTLB_LOG_FORMAT".to_string(), "json".to_string()))
    }

    /// Logs to standard output, in colour on a terminal; `RUST_LOG` filters, `info` by default.
    pub fn init(self) {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| DEFAULT_LOG_FILTER.into());
        let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal());
        match self {
            LogFormat::Text => subscriber.init(),
            LogFormat::Json => subscriber.json().init(),
        }
    }
}

impl Args {
    /// The settings these flags give, against an API server of version `server`.
    pub fn settings(&self, server: &Info) -> Settings {
        let mut kinds = self.publish.clone();
        kinds.sort();
        kinds.dedup();
        Settings {
            finalizer: names::finalizer_for(&self.load_balancer_class),
            serve_unclassed: self.serve_unclassed,
            addresses: AddressPolicy {
                address_type: self.address_type,
                kinds,
                max_nodes: Some(self.max_nodes).filter(|max| *max > 0),
                node_asked: NodeAskedAddresses {
                    ranges: self.node_public_address_ranges.clone(),
                    domains: self.node_public_hostname_domains.clone(),
                },
            },
            // ipMode is kept from 1.30 on, where the LoadBalancerIPMode feature is on by default.
            server_has_ip_mode: version_at_least(&server.major, &server.minor, 30),
            instance: self.instance.clone(),
            node_lease_grace: Some(Duration::from_secs(self.node_lease_grace_seconds)).filter(|grace| !grace.is_zero()),
            withdrawal_pause_limit: Duration::from_secs(self.withdrawal_pause_limit_seconds),
            agent_report_expiry: Duration::from_secs(self.agent_report_expiry_seconds),
            tenants: TenantPolicy {
                priority_classes: self.allowed_priority_classes.clone(),
                toleration_keys: self.allowed_toleration_keys.clone(),
                trusted_namespaces: self.trusted_namespaces.clone(),
            },
            limits: ServiceLimits { ports: self.max_service_ports, source_ranges: self.max_source_ranges },
            ports: PortPolicy {
                denied: self.denied_ports.clone(),
                allowed: self.allowed_ports.clone(),
                node_ports: self.node_port_range,
            },
            forwarding: ForwardingSettings {
                namespace: self.namespace.clone(),
                image: self.lb_image.clone().unwrap_or_default(),
                image_pull_policy: self.lb_image_pull_policy.clone(),
                forwarding_mode: self.forwarding_mode,
                default_priority_class: self.default_priority_class.clone(),
                controller_image: self.controller_image.clone().unwrap_or_default(),
                install_id: names::install_id(&self.load_balancer_class),
                dataplane: self.dataplane,
                agent: agent::agent_name(&self.load_balancer_class),
                log_env: self.log_format.env().into_iter().chain(log_filter_env()).collect(),
                trust_node_labels: self.trust_node_labels,
            },
            load_balancer_class: self.load_balancer_class.clone(),
        }
    }

    pub fn lease_timing(&self) -> Result<LeaseTiming, String> {
        LeaseTiming::new(
            Duration::from_secs(self.lease_duration_seconds),
            Duration::from_secs(self.lease_renew_deadline_seconds),
            Duration::from_secs(self.lease_retry_period_seconds),
        )
    }

    pub fn lease_name(&self) -> String {
        self.lease_name.clone().unwrap_or_else(|| names::lease_name(&self.load_balancer_class))
    }
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::Parser;

    use super::*;

    #[test]
    fn the_version_names_the_release_and_its_commit() {
        let error = Cli::try_parse_from(["hostlb-controller", "--version"]).expect_err("--version exits");
        assert_eq!((error.kind(), error.exit_code()), (ErrorKind::DisplayVersion, 0));
        let expected = format!("hostlb-controller {} (revision {})\n", release::VERSION, release::REVISION);
        assert_eq!(error.to_string(), expected);
    }
}
