//! The node agent's /livez, /readyz and /metrics, on the node's port `AgentArgs::http_port`:
//! its probes, and what a scrape of every node tells of the node's table.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use hostlb_contract::release;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The agent's loop turns at least this often (the address poll); one that has not turned for
/// this long is wedged, and the liveness probe fails, so that the kubelet restarts it.
pub const LIVENESS_BOUND: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

impl ResultLabels {
    pub fn of(succeeded: bool) -> ResultLabels {
        ResultLabels { result: if succeeded { "succeeded" } else { "failed" } }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    revision: &'static str,
}

/// Registers `build_info`: the release's version and commit as labels, always 1; the same for
/// every binary of hostlb that exports metrics.
pub fn register_build_info(registry: &mut Registry, help: &str) {
    let build = Family::<BuildLabels, Gauge>::default();
    build.get_or_create(&BuildLabels { version: release::VERSION, revision: release::REVISION }).set(1);
    registry.register("build_info", help, build);
}

/// The registry in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("writing to a String cannot fail");
    text
}

/// The answer to a scrape of `registry`.
pub fn scrape(registry: &Registry) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], render(registry))
}

pub struct AgentMetrics {
    registry: Registry,
    /// The Services the node's table forwards.
    pub services_programmed: Gauge,
    /// Kernel transactions, by result.
    pub transactions: Family<ResultLabels, Counter>,
    pub last_transaction_seconds: Gauge<f64, AtomicU64>,
    pub last_transaction_timestamp_seconds: Gauge<f64, AtomicU64>,
    /// Reports written (heartbeats included), by result.
    pub report_writes: Family<ResultLabels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        let services_programmed = Gauge::default();
        let transactions = Family::default();
        let last_transaction_seconds = Gauge::default();
        let last_transaction_timestamp_seconds = Gauge::default();
        let report_writes = Family::default();
        let mut registry = Registry::with_prefix("hostlb_agent");
        registry.register("services_programmed", "Services the node's table forwards", services_programmed.clone());
        registry.register("transactions", "Kernel transactions of the node's table, by result", transactions.clone());
        registry.register(
            "last_transaction_seconds",
            "How long the last transaction took",
            last_transaction_seconds.clone(),
        );
        registry.register(
            "last_transaction_timestamp_seconds",
            "When the last transaction ended, in seconds since the epoch",
            last_transaction_timestamp_seconds.clone(),
        );
        registry.register("report_writes", "Writes of the node's report, by result", report_writes.clone());
        register_build_info(&mut registry, "The agent's version and commit, as labels; always 1");
        AgentMetrics {
            registry,
            services_programmed,
            transactions,
            last_transaction_seconds,
            last_transaction_timestamp_seconds,
            report_writes,
        }
    }
}

impl AgentMetrics {
    pub fn transaction(&self, took: Duration, services: usize, succeeded: bool) {
        self.transactions.get_or_create(&ResultLabels::of(succeeded)).inc();
        self.last_transaction_seconds.set(took.as_secs_f64());
        self.last_transaction_timestamp_seconds.set(seconds_since_epoch());
        if succeeded {
            self.services_programmed.set(i64::try_from(services).unwrap_or(i64::MAX));
        }
    }
}

fn seconds_since_epoch() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs_f64()
}

/// What the probes and the scrape read, which the agent's loop keeps up to date.
#[derive(Clone, Default)]
pub struct Health {
    pub metrics: Arc<AgentMetrics>,
    /// Set once every watch has listed and the node's table matches them.
    pub ready: Arc<AtomicBool>,
    /// When the loop last turned, in milliseconds since the epoch.
    last_turn_ms: Arc<AtomicU64>,
}

impl Health {
    pub fn turned(&self) {
        let now = u64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis());
        self.last_turn_ms.store(now.unwrap_or(u64::MAX), Ordering::Release);
    }

    fn alive(&self) -> bool {
        let since = seconds_since_epoch() - self.last_turn_ms.load(Ordering::Acquire) as f64 / 1000.0;
        since < LIVENESS_BOUND.as_secs_f64()
    }
}

fn router(health: Health) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(health)
}

async fn livez(State(health): State<Health>) -> impl IntoResponse {
    if health.alive() {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the agent's loop has not turned within its bound")
    }
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    if health.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "the node's table does not yet match the plans")
    }
}

async fn metrics(State(health): State<Health>) -> impl IntoResponse {
    scrape(&health.metrics.registry)
}

/// Serves until the process ends; a port that cannot be bound is logged, and the agent goes on
/// forwarding without its probes answering, so that the kubelet says why.
pub async fn serve(port: u16, health: Health) {
    let address = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let served = async {
        let listener = tokio::net::TcpListener::bind(address).await?;
        tracing::info!(%address, "serving /livez, /readyz and /metrics");
        axum::serve(listener, router(health)).await
    };
    if let Err(error) = served.await {
        tracing::error!(%error, %address, "cannot serve the probes and metrics");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_that_stopped_turning_is_not_alive() {
        let health = Health::default();
        assert!(!health.alive(), "never turned");
        health.turned();
        assert!(health.alive());
        let long_ago = u64::try_from(LIVENESS_BOUND.as_millis() + 1000).unwrap();
        let now = health.last_turn_ms.load(Ordering::Acquire);
        health.last_turn_ms.store(now - long_ago, Ordering::Release);
        assert!(!health.alive());
    }

    #[test]
    fn the_scrape_names_the_transactions_and_the_release() {
        let metrics = AgentMetrics::default();
        metrics.transaction(Duration::from_millis(12), 3, true);
        metrics.transaction(Duration::from_millis(40), 4, false);
        let text = render(&metrics.registry);
        assert!(text.contains("hostlb_agent_services_programmed 3"), "{text}");
        assert!(text.contains("hostlb_agent_transactions_total{result=\"failed\"} 1"), "{text}");
        assert!(text.contains("hostlb_agent_last_transaction_seconds 0.04"), "{text}");
        assert!(text.contains("hostlb_agent_build_info{"), "{text}");
    }
}
