//! `hostlb-lb`: parses its command line, runs the command with the library's layers, and turns
//! the outcome into an exit code.

use std::process::ExitCode;

use clap::Parser;
use hostlb_contract::{Command, Family, RuleArgs};

use hostlb_lb::error::Error;
use hostlb_lb::port_forwarding::{socket_text, PortForwarding};
use hostlb_lb::{hold, kernel, probe, rules};

/// Source ranges named in the log, per family; the rest are counted, so that thousands make one
/// short line.
const SHOWN_RANGES: usize = 20;

fn main() -> ExitCode {
    let command = if Command::is_hold(std::env::args_os().skip(1)) {
        Command::Hold
    } else {
        match Command::try_parse() {
            Ok(command) => command,
            // Usage errors exit 2, --help and --version 0.
            Err(error) => error.exit(),
        }
    };
    match run(command) {
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
            let target = probe::target(&args)?;
            let status = probe::check(target)?;
            eprintln!("probe {}: {status}", socket_text(target.ip(), target.port()));
            Ok(())
        }
    }
}

fn install(args: &RuleArgs) -> Result<(), Error> {
    let forwarding = PortForwarding::new(args)?;
    for family in forwarding.families() {
        let path = kernel::forwarding_sysctl(family);
        if kernel::enable_forwarding(family)? {
            eprintln!("forwarding: wrote 1 to {path}");
        } else {
            eprintln!("forwarding: {path} is already 1");
        }
    }
    let mut steps = rules::fresh_ruleset(&forwarding);
    if let Err(error) = kernel::apply(&steps) {
        if !error.is_already_there() {
            return Err(error);
        }
        // Only a second run in the same pod (an init container restarted) finds one.
        eprintln!("table {} is already there ({error}): replacing it", rules::TABLE);
        steps = rules::ruleset(&forwarding);
        kernel::apply(&steps)?;
    }
    for (family, forwards) in &forwarding.forwards {
        if forwarding.follows_endpoints {
            eprintln!("{}: nothing forwarded until the endpoint follower finds the node's endpoints", family.name());
        }
        for forward in forwards {
            eprintln!("{forward}");
        }
        if forwarding.restricts_sources() {
            let ranges: Vec<String> = forwarding.ranges(*family).map(ToString::to_string).collect();
            if ranges.is_empty() {
                eprintln!("{}: no source range given, every packet to these ports is dropped", family.name());
            } else {
                let mut shown = ranges[..ranges.len().min(SHOWN_RANGES)].join(", ");
                if ranges.len() > SHOWN_RANGES {
                    shown.push_str(&format!(" and {} more", ranges.len() - SHOWN_RANGES));
                }
                let intervals = match rules::merged(forwarding.ranges(*family)).len() {
                    1 => "one interval".to_string(),
                    count => format!("{count} intervals"),
                };
                eprintln!("{}: only sources in {shown} may connect ({intervals} in one set)", family.name());
            }
        }
    }
    for family in Family::ALL.into_iter().filter(|f| !forwarding.forwards.contains_key(f)) {
        eprintln!("{}: no destination, no rules", family.name());
    }
    eprintln!("installed {} nftables changes in one transaction (table {})", steps.len(), rules::TABLE);
    Ok(())
}
