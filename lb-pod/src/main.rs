//! `hostlb-lb`: runs in each proxy pod of a LoadBalancer Service, in the pod's own network
//! namespace, and forwards the Service's ports to its ClusterIP (or, for
//! `externalTrafficPolicy: Local`, to the node's address and NodePort).
//!
//! Layers: `plan` (arguments to a validated description), `rules` (the nftables objects for
//! it), `netlink` (their bytes and the kernel's answers): all pure; `kernel`, `probe` and
//! `hold` do the I/O.

mod error;
mod hold;
mod kernel;
mod netlink;
mod plan;
mod probe;
mod rules;

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use hostlb_proxy_spec::Family;

use crate::error::Error;
use crate::plan::{socket_text, Plan};

#[derive(Parser)]
#[command(name = "hostlb-lb", version, about = "hostlb's proxy pod: nftables forwarding of a Service's ports")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Turn on forwarding and install the rules in one nftables transaction, then exit.
    Init(RuleArgs),
    /// `init`, then wait for SIGTERM.
    Run(RuleArgs),
    /// Wait for SIGTERM or SIGINT and exit 0; needs no privilege.
    Hold,
    /// Exit 0 iff kube-proxy's health check at ADDRESS:PORT answers 200.
    Probe(ProbeArgs),
}

#[derive(Args)]
struct RuleArgs {
    /// A forwarded port: packets of PROTO (tcp, udp, sctp) to LISTEN go to the destination's TARGET.
    #[arg(long = "port", value_name = "PROTO:LISTEN:TARGET", env = "HOSTLB_PORTS", value_delimiter = ',')]
    ports: Vec<String>,
    /// Destination address(es), at most one IPv4 and one IPv6.
    #[arg(long = "to", value_name = "ADDR[,ADDR]", env = "HOSTLB_TO", value_delimiter = ',')]
    to: Vec<String>,
    /// Only sources in these ranges may reach the ports (loadBalancerSourceRanges).
    #[arg(long = "source-range", value_name = "CIDR", env = "HOSTLB_SOURCE_RANGES", value_delimiter = ',')]
    source_ranges: Vec<String>,
    /// The Service's IP families (ipv4, ipv6); destinations of other families are ignored.
    #[arg(long = "family", value_name = "FAMILY", env = "HOSTLB_FAMILIES", value_delimiter = ',')]
    families: Vec<String>,
}

#[derive(Args)]
struct ProbeArgs {
    /// The health check's port (the Service's healthCheckNodePort).
    #[arg(long, value_name = "N", env = "HOSTLB_PROBE_PORT")]
    port: Option<String>,
    /// The node's address; of a comma-separated list the first is used.
    #[arg(long, value_name = "ADDR", env = "HOSTLB_PROBE_ADDRESS")]
    address: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Usage errors exit 2, --help and --version 0.
        Err(error) => error.exit(),
    };
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

fn run(command: Command) -> Result<(), Error> {
    match command {
        Command::Init(args) => install(&args),
        Command::Run(args) => {
            // Signals are blocked first so that one arriving during `install` is not lost.
            let signals = hold::block_signals()?;
            install(&args)?;
            hold::wait(&signals)
        }
        Command::Hold => hold::wait(&hold::block_signals()?),
        Command::Probe(args) => {
            let target = probe::target(args.address.as_deref(), args.port.as_deref())?;
            let status = probe::check(target)?;
            eprintln!("probe {}: {status}", socket_text(target.ip(), target.port()));
            Ok(())
        }
    }
}

fn install(args: &RuleArgs) -> Result<(), Error> {
    let plan = Plan::parse(&args.ports, &args.to, &args.source_ranges)?.only_families(&args.families)?;
    let steps = rules::ruleset(&plan);
    for (family, _) in plan.destinations() {
        let path = kernel::forwarding_sysctl(family);
        if kernel::enable_forwarding(family)? {
            eprintln!("forwarding: wrote 1 to {path}");
        } else {
            eprintln!("forwarding: {path} is already 1");
        }
    }
    kernel::apply(&steps)?;
    for (family, destination) in plan.destinations() {
        for port in &plan.ports {
            eprintln!("{} {} -> {}", port.protocol.arg_name(), port.listen, socket_text(destination, port.target));
        }
        if plan.restricts_sources() {
            let ranges: Vec<String> = plan.ranges(family).map(ToString::to_string).collect();
            if ranges.is_empty() {
                eprintln!("{}: no source range given, every packet to these ports is dropped", family.name());
            } else {
                eprintln!("{}: only sources in {} may connect", family.name(), ranges.join(", "));
            }
        }
    }
    for family in Family::ALL.into_iter().filter(|f| plan.destination(*f).is_none()) {
        eprintln!("{}: no destination, no rules", family.name());
    }
    eprintln!("installed {} nftables changes in one transaction (table {})", steps.len(), rules::TABLE);
    Ok(())
}
