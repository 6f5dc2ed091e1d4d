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

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

use hostlb_model::names;

#[derive(Parser)]
#[command(name = "kubectl hostlb", about = "Inspect how hostlb serves LoadBalancer Services")]
struct Args {
    /// Path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then in-cluster).
    #[arg(long, global = true)]
    kubeconfig: Option<String>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    context: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// For each LoadBalancer Service: its addresses, ports, nodes serving and not (with why),
    /// port conflicts and latest Warnings.
    Status {
        /// Only this Service (of the namespace).
        #[arg(conflicts_with = "all_namespaces")]
        name: Option<String>,
        /// The Services of this namespace (default: the context's namespace, as kubectl).
        #[arg(short, long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// The Services of every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Only Services with these labels, as kubectl's -l (`app=web,tier!=cache`).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Where hostlb puts its proxy DaemonSets.
        #[arg(long, default_value = names::DEFAULT_NAMESPACE)]
        hostlb_namespace: String,
        #[arg(short, long, value_enum, default_value_t = Output::Table)]
        output: Output,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    /// `service/NAME`, one a line, as kubectl's `-o name`.
    Name,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let config = config(args.kubeconfig.as_deref(), args.context).await?;
    let context_namespace = config.default_namespace.clone();
    let client = Client::try_from(config)?;
    match args.command {
        Command::Status { name, namespace, all_namespaces, selector, hostlb_namespace, output } => {
            let namespace = (!all_namespaces).then(|| namespace.unwrap_or(context_namespace));
            let scope = cluster::Scope {
                namespace: namespace.as_deref(),
                name: name.as_deref(),
                selector: selector.as_deref(),
            };
            let observed = cluster::observe(&client, &scope, &hostlb_namespace)
                .await
                .context("cannot read the cluster's Services, nodes and hostlb's proxies")?;
            let report = report::report(&observed);
            let now = k8s_openapi::jiff::Timestamp::now();
            match output {
                Output::Table => print!("{}", table::render(&report, now, false)),
                Output::Wide => print!("{}", table::render(&report, now, true)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
                Output::Yaml => print!("{}", serde_yaml_ng::to_string(&report)?),
                Output::Name => report.services.iter().for_each(|service| println!("service/{}", service.name)),
            }
        }
    }
    Ok(())
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
