use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use hostlb_contract::release;

use hostlb_controller::run::flags::{Args, Cli, ProxyCommand};
use hostlb_controller::run::leader_election::Elector;
use hostlb_controller::run::{self, metrics, server};
use hostlb_model::names;

/// The API server's own default --request-timeout: no answer but a watch takes longer.
const API_READ_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    cli.controller.log_format.init();
    let outcome = match cli.proxy {
        Some(ProxyCommand::FollowEndpoints(follow)) => match client().await {
            Ok(client) => hostlb_agent::follow(client, follow).await.map_err(anyhow::Error::from),
            Err(error) => Err(error),
        },
        Some(ProxyCommand::NodeAgent(agent)) => match client().await {
            Ok(client) => hostlb_agent::run_agent(client, agent).await.map_err(anyhow::Error::from),
            Err(error) => Err(error),
        },
        None => control(cli.controller).await,
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

async fn control(args: Args) -> anyhow::Result<()> {
    let client = client().await?;
    let server = client.apiserver_version().await.context("cannot read the API server's version")?;
    let settings = args.settings(&server);
    if args.uninstall {
        if let Some(deployment) = &args.stop_deployment {
            run::stop::stop_deployment(client.clone(), &settings.forwarding.namespace, deployment).await?;
            tracing::info!(%deployment, "stopped the controller");
        }
        let released = run::uninstall(client, settings).await?;
        tracing::info!("uninstalled: released {released} Services; deleted their proxy DaemonSets");
        return Ok(());
    }
    let timing = args.lease_timing().map_err(anyhow::Error::msg)?;
    let (lease_name, identity) = (args.lease_name(), settings.instance.clone().unwrap_or_else(names::process_identity));
    tracing::info!(?settings, server = %server.git_version, "starting hostlb-controller {}", release::VERSION_AND_REVISION);
    tracing::info!(lease = %lease_name, %identity, ?timing, "electing a leader");
    let elector = Elector::new(client.clone(), &settings.forwarding.namespace, &lease_name, &identity, timing);
    let sync_timeout = Duration::from_secs(args.sync_timeout_seconds);
    let metrics = Arc::new(metrics::Metrics::default());
    let ready = Arc::new(AtomicBool::new(false));
    let health = server::Health { metrics: metrics.clone(), ready: ready.clone() };
    tokio::select! {
        served = server::serve(args.http_address, health) => served.context("HTTP server stopped")?,
        ran = run::run(client, settings, metrics, ready, sync_timeout, elector) => ran?,
    }
    Ok(())
}
