//! The cluster-wide choices of how Services' traffic is carried: which data plane, and how
//! each is set up. Read by both implementations; imports neither.

/// Which data plane carries the Services' traffic on the nodes (`--dataplane`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum DataPlaneKind {
    /// A DaemonSet of proxy pods per Service, each claiming the Service's ports as host ports;
    /// only an init container holds a capability.
    #[default]
    Pods,
    /// One agent pod per node programs every Service the node serves; it holds NET_ADMIN in the
    /// node's network namespace for its whole life.
    Agent,
}

/// How proxy pods get forwarding turned on in their network namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ForwardingMode {
    /// A privileged init container sets forwarding and installs the rules; the long-running
    /// container has no capabilities at all. Works on every cluster.
    InitContainer,
    /// ServiceLB's way: the pod asks kubelet for the forwarding sysctls and one container with
    /// NET_ADMIN installs the rules. Needs kubelets that allow those sysctls.
    Sysctls,
}

/// Cluster-wide choices that shape what carries every Service's traffic.
#[derive(Clone, Debug)]
pub struct ForwardingSettings {
    pub namespace: String,
    /// The lb image, of the proxy pods.
    pub image: String,
    pub image_pull_policy: String,
    pub forwarding_mode: ForwardingMode,
    pub default_priority_class: String,
    /// The controller's own image, whose binary follows the endpoints in the proxy pods of
    /// `externalTrafficPolicy: Local` Services and runs the node agents.
    pub controller_image: String,
    /// `names::install_id` of the install, labelled on its objects.
    pub install_id: String,
    pub dataplane: DataPlaneKind,
    /// The agents' DaemonSet (`hostlb_model::agent::agent_name`).
    pub agent: String,
    /// The environment that gives the endpoint followers and the node agents the controller's
    /// log format and filter (`HOSTLB_LOG_FORMAT`, `RUST_LOG`); empty for the defaults, so that
    /// proxy pods are not rolled for them.
    pub log_env: Vec<(String, String)>,
    /// Whether the placement labels a node's kubelet may write place proxy pods too
    /// (`--trust-node-labels`).
    pub trust_node_labels: bool,
}
