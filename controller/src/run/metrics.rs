//! Prometheus metrics of the reconciler.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use kube::runtime::reflector::ObjectRef;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use hostlb_agent::health::{register_build_info, render};

use crate::error::Error;
use hostlb_model::reason::Reason;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    pub verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// A condition's reason as the API server has it, which any writer may have set.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConditionLabels {
    pub reason: String,
}

pub struct Metrics {
    pub registry: Registry,
    reconciliations: Counter,
    failures: Family<ErrorLabels, Counter>,
    duration: Histogram,
    queue: Histogram,
    /// Per Service with a reconcile owed, when the oldest change it owes it for was seen.
    owed_since: Mutex<HashMap<ObjectRef<Service>, Instant>>,
    pub forwarding_applies: Counter,
    pub forwarding_deletes: Counter,
    pub status_updates: Counter,
    /// Pauses in withdrawals that outlasted their limit.
    pub withdrawal_pauses_ended: Counter,
    /// Requests other than reads that terms of leadership sent, by HTTP method.
    api_writes: Family<VerbLabels, Counter>,
    warnings: Family<ReasonLabels, Counter>,
    /// The Services this install serves, by the reason of their `hostlb.io/Ready` condition.
    services: Family<ConditionLabels, Gauge>,
    /// 1 while this replica holds the Lease and reconciles, else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("hostlb");
        let metrics = Metrics {
            reconciliations: Counter::default(),
            failures: Family::default(),
            duration: Histogram::new(exponential_buckets(0.001, 2.0, 14)),
            queue: Histogram::new(exponential_buckets(0.0005, 2.0, 16)),
            owed_since: Mutex::default(),
            forwarding_applies: Counter::default(),
            forwarding_deletes: Counter::default(),
            status_updates: Counter::default(),
            withdrawal_pauses_ended: Counter::default(),
            api_writes: Family::default(),
            warnings: Family::default(),
            services: Family::default(),
            leader: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register("reconciliations", "Reconciliations of Services", metrics.reconciliations.clone());
        registry.register("reconcile_failures", "Failed reconciliations by cause", metrics.failures.clone());
        registry.register("reconcile_duration_seconds", "Time spent per reconciliation", metrics.duration.clone());
        registry.register(
            "reconcile_queue_seconds",
            "Time from a watch event that concerns a Service to the start of its reconcile",
            metrics.queue.clone(),
        );
        registry.register(
            "daemonset_applies",
            "Forwarding objects (proxy DaemonSets, node-agent plans) created or changed",
            metrics.forwarding_applies.clone(),
        );
        registry.register(
            "daemonset_deletes",
            "Forwarding objects (proxy DaemonSets, node-agent plans) deleted",
            metrics.forwarding_deletes.clone(),
        );
        registry.register("status_updates", "Writes of status.loadBalancer", metrics.status_updates.clone());
        registry.register(
            "withdrawal_pauses_ended",
            "Pauses in withdrawals, while most nodes looked down, that outlasted --withdrawal-pause-limit-seconds",
            metrics.withdrawal_pauses_ended.clone(),
        );
        registry.register(
            "api_writes",
            "Write requests sent to the API server while leading (reconciles, orphan sweep, Events), by HTTP method",
            metrics.api_writes.clone(),
        );
        registry.register("warnings", "Warning Events published on Services, by reason", metrics.warnings.clone());
        registry.register(
            "services",
            "Services served, by the reason of their hostlb.io/Ready condition (Serving, Pending, PortConflict, ...)",
            metrics.services.clone(),
        );
        register_build_info(&mut registry, "The running controller's version and commit, as labels; always 1");
        registry.register(
            "leader",
            "Whether this replica leads (holds the Lease and reconciles)",
            metrics.leader.clone(),
        );
        Metrics { registry, ..metrics }
    }
}

impl Metrics {
    /// Counts a reconciliation and, when the guard drops, its duration.
    pub fn reconcile_started(&self) -> ReconcileTimer<'_> {
        self.reconciliations.inc();
        ReconcileTimer { histogram: &self.duration, started: Instant::now() }
    }

    /// A watch event concerns `service`: a reconcile of it is owed from now, unless one was
    /// owed already.
    pub fn reconcile_owed(&self, service: &ObjectRef<Service>) {
        self.owed_since.lock().expect("owed lock").entry(service.clone()).or_insert_with(Instant::now);
    }

    /// A reconcile of `service` starts: observes how long the oldest change it answers waited.
    pub fn reconcile_dequeued(&self, service: &ObjectRef<Service>) {
        if let Some(since) = self.owed_since.lock().expect("owed lock").remove(service) {
            self.queue.observe(since.elapsed().as_secs_f64());
        }
    }

    /// A term of leadership ends: what it owed is for the next term's first pass over every
    /// Service, which would count the time in between as queueing.
    pub fn forget_owed_reconciles(&self) {
        self.owed_since.lock().expect("owed lock").clear();
    }

    pub fn reconcile_failed(&self, error: &Error) {
        self.failures.get_or_create(&ErrorLabels { error: error.metric_label() }).inc();
    }

    /// A request of a term of leadership goes out: counted if it may change something.
    pub fn request_sent(&self, method: &http::Method) {
        let verb = match *method {
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS => return,
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            _ => "other",
        };
        self.api_writes.get_or_create(&VerbLabels { verb }).inc();
    }

    pub fn warned(&self, reason: Reason) {
        self.warnings.get_or_create(&ReasonLabels { reason: reason.as_str() }).inc();
    }

    /// Replaces the count of Services by condition reason: reasons no Service has any more go.
    pub fn count_services(&self, by_reason: BTreeMap<String, i64>) {
        self.services.clear();
        for (reason, count) in by_reason {
            self.services.get_or_create(&ConditionLabels { reason }).set(count);
        }
    }

    pub fn render(&self) -> String {
        render(&self.registry)
    }
}

pub struct ReconcileTimer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.histogram.observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostlb_contract::release;

    #[test]
    fn rendered_metrics_carry_the_prefix_and_failure_causes() {
        let metrics = Metrics::default();
        drop(metrics.reconcile_started());
        let conflict =
            kube::core::Status { code: 409, ..kube::core::Status::failure("modified meanwhile", "Conflict") };
        metrics.reconcile_failed(&Error::kube("applying")(kube::Error::Api(conflict.boxed())));
        metrics.warned(Reason::PortConflict);
        metrics.leader.set(1);
        metrics.request_sent(&http::Method::GET);
        metrics.request_sent(&http::Method::PATCH);
        let service = ObjectRef::new("web").within("shop");
        metrics.reconcile_dequeued(&service);
        metrics.reconcile_owed(&service);
        metrics.reconcile_owed(&service);
        metrics.reconcile_dequeued(&service);
        metrics.reconcile_dequeued(&service);
        metrics.count_services(BTreeMap::from([("Pending".into(), 3), ("Serving".into(), 2)]));
        metrics.count_services(BTreeMap::from([("Serving".into(), 5)]));
        let text = metrics.render();
        assert!(text.contains("hostlb_reconciliations_total 1"), "{text}");
        assert!(text.contains("hostlb_reconcile_failures_total{error=\"conflict\"} 1"), "{text}");
        assert!(text.contains("hostlb_reconcile_duration_seconds_count 1"), "{text}");
        assert!(text.contains("hostlb_warnings_total{reason=\"PortConflict\"} 1"), "{text}");
        assert!(text.contains("hostlb_leader 1"), "{text}");
        assert!(text.contains("hostlb_services{reason=\"Serving\"} 5"), "{text}");
        assert!(!text.contains("reason=\"Pending\""), "a reason no Service has any more goes: {text}");
        let build_info =
            format!("hostlb_build_info{{version=\"{}\",revision=\"{}\"}} 1", release::VERSION, release::REVISION);
        assert!(text.contains(&build_info), "{text}");
        assert!(text.contains("hostlb_api_writes_total{verb=\"PATCH\"} 1"), "{text}");
        assert!(!text.contains("verb=\"GET\""), "{text}");
        // Once per reconcile owed, however many events owed it.
        assert!(text.contains("hostlb_reconcile_queue_seconds_count 1"), "{text}");
    }
}
