//! The command line of `hostlb-lb`. The controller builds a `Command` and writes it into the
//! proxy containers with `to_args`; `hostlb-lb` parses its arguments with clap into the same
//! `Command`. Every flag, subcommand and environment variable is spelled once, here.

use std::fmt;
use std::net::IpAddr;

use crate::{port_number, release, Cidr, Destination, Family, NamedPort, PortMap};

/// Where the proxy image has the binary.
pub const LB_BINARY: &str = "/hostlb-lb";
/// Where the controller's image has its binary, which also follows endpoints in proxy pods.
pub const CONTROLLER_BINARY: &str = "/hostlb-controller";
/// The controller binary's subcommand that runs `FollowArgs`.
pub const FOLLOW_ENDPOINTS: &str = "follow-endpoints";
/// The controller binary's subcommand that runs `AgentArgs`.
pub const NODE_AGENT: &str = "node-agent";
/// Filled in by kubelet from the downward API (`spec.nodeName`).
pub const NODE_NAME_ENV: &str = "HOSTLB_NODE_NAME";
/// Filled in by kubelet from the downward API (`metadata.namespace`).
pub const NAMESPACE_ENV: &str = "HOSTLB_NAMESPACE";
/// kubelet does not expand downward-API variables in exec probes, so the probe reads its own.
pub const PROBE_ADDRESS_ENV: &str = "HOSTLB_PROBE_ADDRESS";
pub const PROBE_PORT_ENV: &str = "HOSTLB_PROBE_PORT";
pub const PORTS_ENV: &str = "HOSTLB_PORTS";
pub const TO_ENV: &str = "HOSTLB_TO";
pub const FAMILIES_ENV: &str = "HOSTLB_FAMILIES";
pub const SOURCE_RANGES_ENV: &str = "HOSTLB_SOURCE_RANGES";

/// The long flags, without their leading `--` as clap takes them; `hostlb-lb`'s own checks
/// name them in their messages.
pub mod flag {
    pub const PORT: &str = "port";
    pub const TO: &str = "to";
    pub const FAMILY: &str = "family";
    pub const SOURCE_RANGE: &str = "source-range";
    pub const ADDRESS: &str = "address";
    pub const SERVICE_NAMESPACE: &str = "service-namespace";
    pub const SERVICE_NAME: &str = "service-name";
    pub const NODE: &str = "node";
    pub const PORT_NAME: &str = "port-name";
    pub const NAMESPACE: &str = "namespace";
    pub const INSTALL: &str = "install";
    pub const DAEMONSET: &str = "daemonset";
    pub const HTTP_PORT: &str = "http-port";
}

/// Where a node agent serves /livez, /readyz and /metrics, on the node's addresses: a port of
/// the node, which Services are refused by default.
pub const AGENT_HTTP_PORT: u16 = 10267;

const INIT: &str = "init";
const RUN: &str = "run";
const HOLD: &str = "hold";
const PROBE: &str = "probe";

/// What a proxy container runs.
#[derive(Clone, Debug, PartialEq, Eq, clap::Parser)]
#[command(
    name = "hostlb-lb",
    version = release::VERSION_AND_REVISION,
    about = "hostlb's proxy pod: nftables forwarding of a Service's ports",
    long_about = None
)]
pub enum Command {
    /// Turn on forwarding and install the rules in one nftables transaction, then exit.
    #[command(name = INIT)]
    Init(RuleArgs),
    /// `init`, then wait for SIGTERM.
    #[command(name = RUN)]
    Run(RuleArgs),
    /// Wait for SIGTERM or SIGINT and exit 0; needs no privilege.
    #[command(name = HOLD)]
    Hold,
    /// Exit 0 iff kube-proxy's health check at ADDRESS:PORT answers 200.
    #[command(name = PROBE)]
    Probe(ProbeArgs),
}

impl Command {
    /// Whether the arguments after the binary are exactly `hold`. `hold` runs for the pod's
    /// whole life, so `hostlb-lb` takes it without the parser, whose code pages then never
    /// become part of its resident memory.
    pub fn is_hold<S: AsRef<std::ffi::OsStr>>(args: impl IntoIterator<Item = S>) -> bool {
        let mut args = args.into_iter();
        args.next().is_some_and(|first| first.as_ref() == HOLD) && args.next().is_none()
    }

    /// The container's arguments, after `LB_BINARY` as its command.
    pub fn to_args(&self) -> Vec<String> {
        let (name, args) = match self {
            Command::Init(rules) => (INIT, rules.to_args()),
            Command::Run(rules) => (RUN, rules.to_args()),
            Command::Hold => (HOLD, Vec::new()),
            Command::Probe(probe) => (PROBE, probe.to_args()),
        };
        [vec![name.to_string()], args].concat()
    }

    /// The binary and its arguments, as an exec probe runs them.
    pub fn command_line(&self) -> Vec<String> {
        [vec![LB_BINARY.to_string()], self.to_args()].concat()
    }
}

/// What `init` and `run` forward where. Every flag may be repeated, and each value may be a
/// comma-separated list, as the environment fallbacks are.
#[derive(Clone, Debug, Default, PartialEq, Eq, clap::Args)]
pub struct RuleArgs {
    /// A forwarded port: packets of PROTO (tcp, udp, sctp) to LISTEN go to the destination's TARGET.
    #[arg(
        long = flag::PORT,
        value_name = "PROTO:LISTEN:TARGET",
        env = PORTS_ENV,
        value_delimiter = ',',
        value_parser = PortMap::parse
    )]
    pub ports: Vec<PortMap>,
    /// Destination address(es), at most one IPv4 and one IPv6.
    #[arg(long = flag::TO, value_name = "ADDR[,ADDR]", env = TO_ENV, value_delimiter = ',', value_parser = Destination::parse)]
    pub to: Vec<Destination>,
    /// The Service's IP families (ipv4, ipv6); destinations of other families are ignored.
    #[arg(long = flag::FAMILY, value_name = "FAMILY", env = FAMILIES_ENV, value_delimiter = ',', value_parser = Family::parse_arg)]
    pub families: Vec<Family>,
    /// Only sources in these ranges may reach the ports (loadBalancerSourceRanges).
    #[arg(
        long = flag::SOURCE_RANGE,
        value_name = "CIDR",
        env = SOURCE_RANGES_ENV,
        value_delimiter = ',',
        value_parser = Cidr::parse
    )]
    pub source_ranges: Vec<Cidr>,
}

impl RuleArgs {
    /// One flag per value, in the order ports, destinations, families, source ranges: the order
    /// proxy DaemonSets have always had, so that a new controller does not roll them.
    pub fn to_args(&self) -> Vec<String> {
        let families = self.families.iter().map(|family| family.arg_name());
        flag_values(flag::PORT, &self.ports)
            .chain(flag_values(flag::TO, &self.to))
            .chain(flag_values(flag::FAMILY, families))
            .chain(flag_values(flag::SOURCE_RANGE, &self.source_ranges))
            .collect()
    }
}

/// Where `probe` finds kube-proxy's health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::Args)]
pub struct ProbeArgs {
    /// The health check's port (the Service's healthCheckNodePort).
    #[arg(long = flag::PORT, value_name = "N", env = PROBE_PORT_ENV, value_parser = parse_probe_port)]
    pub port: u16,
    /// The node's address; of a comma-separated list the first is used.
    // Optional because the controller's probe command cannot refer to the node: the pod gives
    // the address in `PROBE_ADDRESS_ENV` instead.
    #[arg(long = flag::ADDRESS, value_name = "ADDR", env = PROBE_ADDRESS_ENV, value_parser = parse_probe_address)]
    pub address: Option<IpAddr>,
}

impl ProbeArgs {
    pub fn to_args(&self) -> Vec<String> {
        flag_values(flag::PORT, [self.port]).chain(flag_values(flag::ADDRESS, self.address)).collect()
    }
}

/// What the endpoint follower keeps installed in a proxy pod of an `externalTrafficPolicy:
/// Local` Service: the rules of `rules`, whose destination is `Destination::NodeEndpoints`,
/// with each listened port forwarded to the ready endpoints, on `node`, of the Service port
/// of the same name. The follower runs from the controller's image (`CONTROLLER_BINARY
/// FOLLOW_ENDPOINTS`), which has the Kubernetes client that `hostlb-lb` goes without.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct FollowArgs {
    #[arg(long = flag::SERVICE_NAMESPACE, value_name = "NAMESPACE")]
    pub namespace: String,
    #[arg(long = flag::SERVICE_NAME, value_name = "NAME")]
    pub service: String,
    /// The proxy pod's node.
    #[arg(long = flag::NODE, value_name = "NODE", env = NODE_NAME_ENV)]
    pub node: String,
    /// The name of a listened port's Service port; a port without one is the unnamed port.
    #[arg(long = flag::PORT_NAME, value_name = "PROTO:LISTEN:NAME", value_parser = NamedPort::parse)]
    pub port_names: Vec<NamedPort>,
    #[command(flatten)]
    pub rules: RuleArgs,
}

impl FollowArgs {
    /// The container's command: the controller binary, the subcommand and one flag per value.
    /// The node is left to `NODE_NAME_ENV`.
    pub fn command_line(&self) -> Vec<String> {
        [CONTROLLER_BINARY.to_string(), FOLLOW_ENDPOINTS.to_string()].into_iter().chain(self.to_args()).collect()
    }

    /// The flags without the node, which a proxy pod gives from `NODE_NAME_ENV`.
    pub fn to_args(&self) -> Vec<String> {
        flag_values(flag::SERVICE_NAMESPACE, [&self.namespace])
            .chain(flag_values(flag::SERVICE_NAME, [&self.service]))
            .chain(flag_values(flag::PORT_NAME, &self.port_names))
            .chain(self.rules.to_args())
            .collect()
    }

    /// The Service port name of a listened port: "" for the unnamed one.
    pub fn port_name(&self, port: &PortMap) -> &str {
        let named = |named: &&NamedPort| (named.protocol, named.listen) == (port.protocol, port.listen);
        self.port_names.iter().find(named).map_or("", |named| named.name.as_str())
    }
}

/// What the node agent runs with (`CONTROLLER_BINARY NODE_AGENT`): one per node, in the node's
/// network namespace, programming the plans the controller writes into its namespace.
#[derive(Clone, Debug, PartialEq, Eq, clap::Args)]
pub struct AgentArgs {
    /// Where the controller writes the plans and the agents their reports.
    #[arg(long = flag::NAMESPACE, value_name = "NAMESPACE", env = NAMESPACE_ENV)]
    pub namespace: String,
    /// The install whose plans this agent programs (`hostlb.io/install`).
    #[arg(long = flag::INSTALL, value_name = "ID")]
    pub install: String,
    /// The agent's DaemonSet: once it is gone, a stopping agent removes its rules.
    #[arg(long = flag::DAEMONSET, value_name = "NAME")]
    pub daemonset: String,
    #[arg(long = flag::NODE, value_name = "NODE", env = NODE_NAME_ENV)]
    pub node: String,
    /// The node's port of /livez, /readyz and /metrics.
    #[arg(long = flag::HTTP_PORT, value_name = "PORT", default_value_t = AGENT_HTTP_PORT)]
    pub http_port: u16,
}

impl AgentArgs {
    /// The container's command; the node and namespace are left to the downward API.
    pub fn command_line(&self) -> Vec<String> {
        [CONTROLLER_BINARY.to_string(), NODE_AGENT.to_string()]
            .into_iter()
            .chain(flag_values(flag::INSTALL, [&self.install]))
            .chain(flag_values(flag::DAEMONSET, [&self.daemonset]))
            .chain(flag_values(flag::HTTP_PORT, [self.http_port]))
            .collect()
    }
}

fn flag_values<T: fmt::Display>(
    flag: &'static str,
    values: impl IntoIterator<Item = T>,
) -> impl Iterator<Item = String> {
    values.into_iter().flat_map(move |value| [format!("--{flag}"), value.to_string()])
}

fn parse_probe_port(text: &str) -> Result<u16, String> {
    port_number(text).ok_or_else(|| "the port must be 1 to 65535".into())
}

/// The first address of a comma list (the downward API's `status.hostIPs` form), an IPv6
/// address with or without brackets.
fn parse_probe_address(text: &str) -> Result<IpAddr, String> {
    let first = text.split(',').map(str::trim).find(|a| !a.is_empty()).unwrap_or_default();
    let unbracketed = first.strip_prefix('[').and_then(|a| a.strip_suffix(']')).unwrap_or(first);
    unbracketed.parse().map_err(|_| "not an IPv4 or IPv6 address".into())
}

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;
    use clap::Parser;

    use super::*;
    use crate::Protocol;

    fn reads_back(command: Command) {
        let line = command.command_line();
        let parsed = Command::try_parse_from(&line).unwrap_or_else(|error| panic!("{line:?}: {error}"));
        assert_eq!(parsed, command, "{line:?}");
    }

    fn parsed(args: &[&str]) -> Command {
        Command::try_parse_from([LB_BINARY].iter().chain(args)).unwrap_or_else(|error| panic!("{args:?}: {error}"))
    }

    /// The message of a value clap refuses, which must exit 2 as every usage error does.
    fn refused(args: &[&str]) -> String {
        let error = Command::try_parse_from([LB_BINARY].iter().chain(args)).expect_err("expected a refused value");
        assert_eq!((error.kind(), error.exit_code()), (ErrorKind::ValueValidation, 2), "{error}");
        error.to_string()
    }

    fn cluster_rules() -> RuleArgs {
        RuleArgs {
            ports: Protocol::ALL
                .into_iter()
                .flat_map(|protocol| {
                    [PortMap { protocol, listen: 80, target: 8080 }, PortMap { protocol, listen: 53, target: 53 }]
                })
                .collect(),
            to: vec![
                Destination::Address("10.96.0.10".parse().unwrap()),
                Destination::Address("fd00::10".parse().unwrap()),
            ],
            families: vec![Family::V4, Family::V6],
            source_ranges: vec![Cidr::parse("10.0.0.0/8").unwrap(), Cidr::parse("fd00:1::/32").unwrap()],
        }
    }

    #[test]
    fn clap_accepts_the_definition() {
        <Command as clap::CommandFactory>::command().debug_assert();
    }

    #[test]
    fn the_version_names_the_release_and_its_commit() {
        let error = Command::try_parse_from([LB_BINARY, "--version"]).expect_err("--version exits");
        assert_eq!((error.kind(), error.exit_code()), (ErrorKind::DisplayVersion, 0));
        assert_eq!(error.to_string(), format!("hostlb-lb {} (revision {})\n", release::VERSION, release::REVISION));
    }

    #[test]
    fn every_subcommand_reads_back_what_it_writes() {
        let local = RuleArgs { to: vec![Destination::NodeEndpoints], families: vec![Family::V6], ..cluster_rules() };
        reads_back(Command::Init(cluster_rules()));
        reads_back(Command::Run(cluster_rules()));
        reads_back(Command::Init(local.clone()));
        reads_back(Command::Run(local));
        reads_back(Command::Init(RuleArgs::default()));
        reads_back(Command::Hold);
        assert!(Command::is_hold(Command::Hold.to_args()));
        assert!(!Command::is_hold(["hold", "--help"]) && !Command::is_hold(["init"]) && !Command::is_hold([""; 0]));
        reads_back(Command::Probe(ProbeArgs { port: 32100, address: None }));
        reads_back(Command::Probe(ProbeArgs { port: 1, address: Some("fd00::1".parse().unwrap()) }));
    }

    #[test]
    fn arguments_are_written_one_flag_per_value_in_a_fixed_order() {
        let rules = RuleArgs {
            ports: vec![PortMap { protocol: Protocol::Udp, listen: 53, target: 30053 }],
            to: vec![Destination::NodeEndpoints],
            families: vec![Family::V4],
            source_ranges: vec![Cidr::parse("10.250.0.0/24").unwrap()],
        };
        assert_eq!(
            Command::Run(rules).to_args(),
            [
                "run",
                "--port",
                "udp:53:30053",
                "--to",
                "node-endpoints",
                "--family",
                "ipv4",
                "--source-range",
                "10.250.0.0/24"
            ]
        );
        assert_eq!(
            Command::Probe(ProbeArgs { port: 32100, address: None }).command_line(),
            ["/hostlb-lb", "probe", "--port", "32100"]
        );
    }

    /// The controller binary's view of the follower's command line.
    #[derive(Debug, clap::Parser)]
    enum FollowerCommand {
        #[command(name = FOLLOW_ENDPOINTS)]
        Follow(FollowArgs),
    }

    #[test]
    fn the_follower_reads_back_what_it_writes_with_the_node_from_the_environment() {
        let follow = FollowArgs {
            namespace: "shop".into(),
            service: "web".into(),
            node: "$(HOSTLB_NODE_NAME)".into(),
            port_names: vec![NamedPort { protocol: Protocol::Tcp, listen: 443, name: "https".into() }],
            rules: RuleArgs { to: vec![Destination::NodeEndpoints], ..cluster_rules() },
        };
        let line = follow.command_line();
        assert_eq!(
            line[..6],
            ["/hostlb-controller", "follow-endpoints", "--service-namespace", "shop", "--service-name", "web"]
        );
        assert!(!line.contains(&"--node".to_string()), "{line:?}");
        let with_node: Vec<String> = line.iter().cloned().chain(["--node".into(), follow.node.clone()]).collect();
        let FollowerCommand::Follow(parsed) = FollowerCommand::try_parse_from(&with_node).unwrap();
        assert_eq!(parsed, follow);
        let https = PortMap { protocol: Protocol::Tcp, listen: 443, target: 443 };
        assert_eq!(parsed.port_name(&https), "https");
        assert_eq!(parsed.port_name(&PortMap { listen: 80, ..https }), "", "a port without a name");
    }

    #[test]
    fn the_agent_takes_its_node_and_namespace_from_the_environment() {
        let agent = AgentArgs {
            namespace: String::new(),
            install: "0a1b2c3d".into(),
            daemonset: "hostlb-agent".into(),
            node: String::new(),
            http_port: AGENT_HTTP_PORT,
        };
        assert_eq!(
            agent.command_line(),
            [
                "/hostlb-controller",
                "node-agent",
                "--install",
                "0a1b2c3d",
                "--daemonset",
                "hostlb-agent",
                "--http-port",
                "10267"
            ]
        );
    }

    #[test]
    fn comma_lists_are_split_as_kubelet_expands_host_ips() {
        let Command::Init(rules) = parsed(&["init", "--port", "tcp:80:80, udp:80:80", "--to", "10.0.0.1,fd00::1"])
        else {
            panic!("not init");
        };
        assert_eq!(rules.ports.len(), 2);
        assert_eq!(
            rules.to,
            vec![Destination::Address("10.0.0.1".parse().unwrap()), Destination::Address("fd00::1".parse().unwrap())]
        );
    }

    #[test]
    fn the_probe_address_is_the_first_of_a_list_with_or_without_brackets() {
        for (text, expected) in [("10.0.0.1,fd00::1", "10.0.0.1"), (" fd00::1 ", "fd00::1"), ("[fd00::1]", "fd00::1")] {
            let probe = parsed(&["probe", "--port", "80", "--address", text]);
            let address = Some(expected.parse().unwrap());
            assert_eq!(probe, Command::Probe(ProbeArgs { port: 80, address }), "{text}");
        }
    }

    #[test]
    fn refused_values_name_the_flag_and_what_is_wrong() {
        let cases: &[(&[&str], &str)] = &[
            (
                &["init", "--port", "tcp:80"],
                "'tcp:80' for '--port <PROTO:LISTEN:TARGET>': expected PROTO:LISTEN:TARGET",
            ),
            (&["init", "--port", "TCP:80:80"], "unknown protocol \"TCP\"; expected tcp, udp or sctp"),
            (&["init", "--port", "tcp:0:80"], "the listen port must be 1 to 65535"),
            (&["run", "--port", "tcp:80:65536"], "the target port must be 1 to 65535"),
            (&["init", "--port", "tcp:80:80,"], "'' for '--port <PROTO:LISTEN:TARGET>'"),
            (&["init", "--to", "node-1"], "'node-1' for '--to <ADDR[,ADDR]>': not an IPv4 or IPv6 address"),
            (&["init", "--to", "10.0.0.1:80"], "not an IPv4 or IPv6 address"),
            (&["init", "--family", "ipx"], "'ipx' for '--family <FAMILY>': expected ipv4 or ipv6"),
            (&["init", "--source-range", "10.0.0.1"], "'10.0.0.1' for '--source-range <CIDR>': expected a CIDR"),
            (&["init", "--source-range", "fd00::/129"], "from 0 to 128"),
            (&["probe", "--port", "0"], "'0' for '--port <N>': the port must be 1 to 65535"),
            (&["probe", "--port", "80", "--address", "node-1"], "'node-1' for '--address <ADDR>': not an IPv4"),
        ];
        for (args, expected) in cases {
            let message = refused(args);
            assert!(message.contains(expected), "{args:?}: expected {expected:?} in {message}");
        }
    }
}
