//! `kubectl hostlb`: how hostlb serves each LoadBalancer Service. kubectl runs any `kubectl-*`
//! on the PATH as a plugin, so this binary is `kubectl hostlb`.
//!
//! `report` turns fetched objects into what is shown, `table` and JSON show it; `cluster` is
//! the one place that talks to the API server.

mod cluster;
mod eligibility;
#[cfg(test)]
mod fixtures;
mod report;
mod table;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::error::ErrorKind;
use clap::{CommandFactory as _, Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use hostlb_model::names;

// kubectl runs the plugin as `kubectl-hostlb`, but users type `kubectl hostlb`: usage says so.
// kubectl takes its flags before or after the command, so every flag here is global.
#[derive(Debug, PartialEq, Parser)]
#[command(
    name = "kubectl hostlb",
    bin_name = "kubectl hostlb",
    version = hostlb_contract::release::VERSION_AND_REVISION,
    about = "Inspect how hostlb serves LoadBalancer Services"
)]
struct Args {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    /// The Services of this namespace (default: the context's namespace, as kubectl).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// The Services of every namespace.
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Only Services with these labels, as kubectl's -l (`app=web,tier!=cache`).
    #[arg(short = 'l', long, global = true)]
    selector: Option<String>,
    /// Where hostlb puts its proxy DaemonSets.
    #[arg(long, global = true, default_value = names::DEFAULT_NAMESPACE)]
    hostlb_namespace: String,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, PartialEq, Subcommand)]
enum Command {
    /// For each LoadBalancer Service: its addresses, ports, nodes serving and not (with why),
    /// port conflicts and latest Warnings.
    Status {
        /// Only this Service (of the namespace); as with kubectl, not with -l or -A.
        name: Option<String>,
    },
    /// Print the plugin's version, as --version does.
    Version,
}

impl Args {
    /// clap leaves out conflicts between a flag before the command and one after it
    /// (clap-rs/clap#1204), so they are checked here, on the flags wherever given.
    fn checked(self) -> Result<Self, clap::Error> {
        let named = matches!(self.command, Command::Status { name: Some(_) });
        let conflicts = [
            (self.namespace.is_some() && self.all_namespaces, "--namespace cannot be used with --all-namespaces"),
            // kubectl's words for the same conflicts.
            (named && self.all_namespaces, "a resource cannot be retrieved by name across all namespaces"),
            (named && self.selector.is_some(), "name cannot be provided when a selector is specified"),
        ];
        match conflicts.into_iter().find(|(conflicting, _)| *conflicting) {
            Some((_, message)) => Err(Args::command().error(ErrorKind::ArgumentConflict, message)),
            None => Ok(self),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    /// `service/NAME`, one a line, as kubectl's `-o name`.
    Name,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse().checked().unwrap_or_else(|error| error.exit());
    match &args.command {
        Command::Status { name } => status(&args, name.as_deref()).await,
        Command::Version => {
            print!("{}", Args::command().render_version());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints the report; fails as kubectl does when the Service named is not in it.
async fn status(args: &Args, name: Option<&str>) -> anyhow::Result<ExitCode> {
    let config = config(args.kubeconfig.as_deref(), args.context.clone()).await?;
    let context_namespace = &config.default_namespace;
    let namespace = (!args.all_namespaces).then(|| args.namespace.as_ref().unwrap_or(context_namespace).clone());
    let client = Client::try_from(config)?;
    let scope = cluster::Scope { namespace: namespace.as_deref(), name, selector: args.selector.as_deref() };
    let observed = cluster::observe(&client, &scope, &args.hostlb_namespace)
        .await
        .context("cannot read the cluster's Services, nodes and hostlb's proxies, plans and reports")?;
    let report = match report::report_of(name, &observed) {
        Ok(report) => report,
        Err(unreported) => {
            eprintln!("{unreported}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    match args.output {
        Output::Table => print!("{}", table::render(&report, now, false)),
        Output::Wide => print!("{}", table::render(&report, now, true)),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(&report)?),
        Output::Name => report.services.iter().for_each(|service| println!("service/{}", service.name)),
    }
    Ok(ExitCode::SUCCESS)
}

/// The configuration kubectl would use: an explicit file or context first, else the usual
/// search (KUBECONFIG, ~/.kube/config, in-cluster).
async fn config(kubeconfig: Option<&str>, context: Option<String>) -> anyhow::Result<Config> {
    let options = KubeConfigOptions { context, ..Default::default() };
    Ok(match kubeconfig {
        Some(path) => Config::from_custom_kubeconfig(Kubeconfig::read_from(path)?, &options).await?,
        None if options.context.is_some() => Config::from_kubeconfig(&options).await?,
        None => Config::infer().await?,
    })
}

#[cfg(test)]
#[path = "main_tests.rs"]
mod tests;
