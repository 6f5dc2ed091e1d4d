use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;

use hostlb_controller::decide::daemonset::{version_at_least, ForwardingMode, ProxySettings};
use hostlb_controller::decide::leadership::LeaseTiming;
use hostlb_controller::decide::port_policy::{self, PortPolicy, PortRange};
use hostlb_controller::decide::tenancy::TenantPolicy;
use hostlb_controller::run::leader_election::Elector;
use hostlb_controller::run::{metrics, server};
use hostlb_controller::Settings;
use hostlb_model::address::{AddressKind, AddressPolicy, AddressType};
use hostlb_model::names;
use hostlb_proxy_spec::{FollowArgs, FOLLOW_ENDPOINTS};

/// Serves Kubernetes Services of type LoadBalancer from the nodes' own addresses.
#[derive(Debug, Parser)]
#[command(version, args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct Cli {
    #[command(subcommand)]
    proxy: Option<ProxyCommand>,
    #[command(flatten)]
    controller: Args,
}

/// What the binary does in proxy pods instead of controlling.
#[derive(Debug, clap::Subcommand)]
enum ProxyCommand {
    /// Keep a proxy pod's forwarding on its node's ready endpoints of the Service
    /// (externalTrafficPolicy: Local); needs NET_ADMIN in the pod's network namespace.
    #[command(name = FOLLOW_ENDPOINTS)]
    FollowEndpoints(FollowArgs),
}

#[derive(Debug, clap::Args)]
struct Args {
    /// Namespace of the proxy DaemonSets.
    #[arg(long, env = "HOSTLB_NAMESPACE", default_value = names::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Services with this spec.loadBalancerClass are served; others are left alone.
    #[arg(long, env = "HOSTLB_LOAD_BALANCER_CLASS", default_value = names::DEFAULT_LOAD_BALANCER_CLASS)]
    load_balancer_class: String,
    /// Whether Services without a class are served too; of several installs, give it to one.
    #[arg(long, env = "HOSTLB_SERVE_UNCLASSED", default_value_t = true, action = clap::ArgAction::Set)]
    serve_unclassed: bool,
    /// Release every Service this install serves (proxies deleted, status cleared, finalizer
    /// removed), then exit: run it after scaling the controller to zero, before removing it.
    #[arg(long)]
    uninstall: bool,
    /// Image of the proxy pods (the hostlb-lb binary).
    #[arg(long, env = "HOSTLB_LB_IMAGE", required_unless_present = "uninstall")]
    lb_image: Option<String>,
    #[arg(long, env = "HOSTLB_LB_IMAGE_PULL_POLICY", default_value = "IfNotPresent")]
    lb_image_pull_policy: String,
    /// This controller's own image: proxy pods of externalTrafficPolicy: Local Services run it
    /// beside hostlb-lb to follow the endpoints on their node.
    #[arg(long, env = "HOSTLB_CONTROLLER_IMAGE", required_unless_present = "uninstall")]
    controller_image: Option<String>,
    /// How proxy pods turn on forwarding.
    #[arg(long, env = "HOSTLB_FORWARDING_MODE", value_enum, default_value_t = ForwardingMode::InitContainer)]
    forwarding_mode: ForwardingMode,
    /// Which node addresses to publish.
    #[arg(long, env = "HOSTLB_ADDRESS_TYPE", value_enum, default_value_t = AddressType::Auto)]
    address_type: AddressType,
    /// What of each serving node is published, unless a Service's hostlb.io/publish says
    /// otherwise: its IP addresses, its hostname, or both (comma-separated).
    #[arg(long, env = "HOSTLB_PUBLISH", value_enum, value_delimiter = ',', default_value = "ip")]
    publish: Vec<AddressKind>,
    /// At most this many nodes are published per Service unless its hostlb.io/max-nodes says
    /// otherwise; 0 for all.
    #[arg(long, env = "HOSTLB_MAX_NODES", default_value_t = 0)]
    max_nodes: usize,
    /// PriorityClass of proxy pods unless a Service names another. The install's own class
    /// never preempts other pods.
    #[arg(long, env = "HOSTLB_DEFAULT_PRIORITY_CLASS", default_value = "hostlb-proxy")]
    default_priority_class: String,
    /// PriorityClasses a Service may name in hostlb.io/priority-class, besides the default.
    #[arg(long, env = "HOSTLB_ALLOWED_PRIORITY_CLASSES", value_delimiter = ',')]
    allowed_priority_classes: Vec<String>,
    /// Taint keys a Service's hostlb.io/tolerations may name.
    #[arg(long, env = "HOSTLB_ALLOWED_TOLERATION_KEYS", value_delimiter = ',')]
    allowed_toleration_keys: Vec<String>,
    /// Namespaces whose Services may ask for any PriorityClass and toleration.
    #[arg(long, env = "HOSTLB_TRUSTED_NAMESPACES", value_delimiter = ',')]
    trusted_namespaces: Vec<String>,
    /// Host ports no Service may claim (PORT or FIRST-LAST, comma-separated): the node's own
    /// daemons listen there.
    #[arg(long, env = "HOSTLB_DENIED_PORTS", value_delimiter = ',', value_parser = PortRange::parse,
          default_value = port_policy::DEFAULT_DENIED_PORTS)]
    denied_ports: Vec<PortRange>,
    /// Host ports Services may claim even if denied or in the NodePort range.
    #[arg(long, env = "HOSTLB_ALLOWED_PORTS", value_delimiter = ',', value_parser = PortRange::parse)]
    allowed_ports: Vec<PortRange>,
    /// The API server's --service-node-port-range: kube-proxy listens there, so Services may not.
    #[arg(long, env = "HOSTLB_NODE_PORT_RANGE", value_parser = PortRange::parse,
          default_value = port_policy::DEFAULT_NODE_PORT_RANGE)]
    node_port_range: PortRange,
    /// Seconds by which a kubelet may miss a renewal of its node Lease before the node leaves
    /// every status (long before the node controller marks it NotReady); 0 to wait for NotReady.
    #[arg(long, env = "HOSTLB_NODE_LEASE_GRACE_SECONDS", default_value_t = 10)]
    node_lease_grace_seconds: u64,
    /// Address of the /livez, /readyz and /metrics endpoints.
    #[arg(long, env = "HOSTLB_HTTP_ADDRESS", default_value = "0.0.0.0:8080")]
    http_address: SocketAddr,
    #[arg(long, env = "HOSTLB_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Names this replica in Events; the pod name is a good choice.
    #[arg(long, env = "HOSTLB_INSTANCE")]
    instance: Option<String>,
    /// Seconds to wait for the watches to list their objects before exiting, so that the
    /// kubelet restarts a replica that cannot see the cluster.
    #[arg(long, env = "HOSTLB_SYNC_TIMEOUT_SECONDS", default_value_t = 120)]
    sync_timeout_seconds: u64,
    /// The Lease (in --namespace) whose holder leads; only the leader writes. Default:
    /// `hostlb-controller` for the default class, one per install for the others.
    #[arg(long, env = "HOSTLB_LEASE_NAME")]
    lease_name: Option<String>,
    /// How long the leader's claim stands without renewal: the longest a failover takes
    /// when the leader dies without releasing the Lease.
    #[arg(long, env = "HOSTLB_LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
    /// How long a leader that cannot renew its claim goes on leading; below the lease duration.
    #[arg(long, env = "HOSTLB_LEASE_RENEW_DEADLINE_SECONDS", default_value_t = 10)]
    lease_renew_deadline_seconds: u64,
    /// How often the Lease is read and renewed: the longest a failover takes after the leader
    /// released the Lease on shutdown.
    #[arg(long, env = "HOSTLB_LEASE_RETRY_PERIOD_SECONDS", default_value_t = 1)]
    lease_retry_period_seconds: u64,
}

/// The API server's own default --request-timeout: no answer but a watch takes longer.
const API_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let args = cli.controller;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let subscriber = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(std::io::stdout().is_terminal());
    match args.log_format {
        LogFormat::Text => subscriber.init(),
        LogFormat::Json => subscriber.json().init(),
    }
    let outcome = match cli.proxy {
        Some(ProxyCommand::FollowEndpoints(follow)) => follow_endpoints(follow).await,
        None => serve_and_control(args).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // Through the logger, so that a JSON log stays JSON to the end.
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn client() -> anyhow::Result<kube::Client> {
    // Without a read timeout, a list request whose answer never comes holds a watch forever.
    let mut config = kube::Config::infer().await.context("no Kubernetes client configuration")?;
    config.read_timeout = Some(API_READ_TIMEOUT);
    config.reset_reader_on_write = true;
    kube::Client::try_from(config).context("cannot build the Kubernetes client")
}

async fn follow_endpoints(args: FollowArgs) -> anyhow::Result<()> {
    Ok(hostlb_follower::follow(client().await?, args).await?)
}

async fn serve_and_control(args: Args) -> anyhow::Result<()> {
    let client = client().await?;
    let server = client.apiserver_version().await.context("cannot read the API server's version")?;
    let settings = Settings {
        finalizer: names::finalizer_for(&args.load_balancer_class),
        serve_unclassed: args.serve_unclassed,
        addresses: AddressPolicy {
            address_type: args.address_type,
            kinds: {
                let mut kinds = args.publish;
                kinds.sort();
                kinds.dedup();
                kinds
            },
            max_nodes: Some(args.max_nodes).filter(|max| *max > 0),
        },
        // ipMode is kept from 1.30 on, where the LoadBalancerIPMode feature is on by default.
        server_has_ip_mode: version_at_least(&server.major, &server.minor, 30),
        instance: args.instance,
        node_lease_grace: Some(Duration::from_secs(args.node_lease_grace_seconds)).filter(|grace| !grace.is_zero()),
        tenants: TenantPolicy {
            priority_classes: args.allowed_priority_classes,
            toleration_keys: args.allowed_toleration_keys,
            trusted_namespaces: args.trusted_namespaces,
        },
        ports: PortPolicy { denied: args.denied_ports, allowed: args.allowed_ports, node_ports: args.node_port_range },
        proxy: ProxySettings {
            namespace: args.namespace,
            image: args.lb_image.unwrap_or_default(),
            image_pull_policy: args.lb_image_pull_policy,
            forwarding: args.forwarding_mode,
            default_priority_class: args.default_priority_class,
            follower_image: args.controller_image.unwrap_or_default(),
            install_id: names::install_id(&args.load_balancer_class),
        },
        load_balancer_class: args.load_balancer_class,
    };
    if args.uninstall {
        let released = hostlb_controller::run::uninstall(client, settings).await?;
        tracing::info!("uninstalled: released {released} Services; deleted their proxy DaemonSets");
        return Ok(());
    }
    let timing = LeaseTiming::new(
        Duration::from_secs(args.lease_duration_seconds),
        Duration::from_secs(args.lease_renew_deadline_seconds),
        Duration::from_secs(args.lease_retry_period_seconds),
    )
    .map_err(anyhow::Error::msg)?;
    let lease_name = args.lease_name.unwrap_or_else(|| names::lease_name(&settings.load_balancer_class));
    let identity = settings.instance.clone().unwrap_or_else(names::process_identity);
    tracing::info!(?settings, server = %server.git_version, "starting hostlb-controller {}", env!("CARGO_PKG_VERSION"));
    tracing::info!(lease = %lease_name, %identity, ?timing, "electing a leader");
    let elector = Elector::new(client.clone(), &settings.proxy.namespace, &lease_name, &identity, timing);
    let sync_timeout = Duration::from_secs(args.sync_timeout_seconds);
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = server::Health { metrics: metrics.clone(), ready: ready.clone() };
    tokio::select! {
        served = server::serve(args.http_address, health) => served.context("HTTP server stopped")?,
        ran = hostlb_controller::run::run(client, settings, metrics, ready, sync_timeout, elector) => ran?,
    }
    Ok(())
}
