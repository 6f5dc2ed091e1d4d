//! Shared by the controller benches: when each step of a Service's way to its status was first
//! seen by this program's watches (all steps carry the same watch delay), and small statistics.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use hostlb_e2e::cluster::SYSTEM_NAMESPACE;
use hostlb_e2e::status::published;
use hostlb_model::names;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};

/// When this program first saw each step of one Service.
#[derive(Default, Debug)]
pub struct Steps {
    pub created: Option<Instant>,
    pub daemonset: Option<Instant>,
    pub pods: BTreeMap<String, PodSteps>,
    pub status: Option<Instant>,
    /// The addresses its status publishes now.
    pub published: BTreeSet<IpAddr>,
}

#[derive(Default, Debug)]
pub struct PodSteps {
    pub created: Option<Instant>,
    pub ready: Option<Instant>,
}

impl Steps {
    /// The moment the last of `nodes` pods reached a step, once all of them have.
    pub fn last_pod(&self, nodes: usize, step: impl Fn(&PodSteps) -> Option<Instant>) -> Option<Instant> {
        let times: Vec<Instant> = self.pods.values().filter_map(step).collect();
        if times.len() < nodes {
            return None;
        }
        times.into_iter().max()
    }
}

pub type Timeline = Arc<Mutex<BTreeMap<String, Steps>>>;

pub fn first(slot: &mut Option<Instant>) {
    slot.get_or_insert_with(Instant::now);
}

/// Follows the Services of `namespace` and their proxy DaemonSets and pods.
pub fn watch(client: &Client, namespace: &str, addresses: usize) -> Timeline {
    let timeline: Timeline = Arc::default();
    let selector = format!("{}={namespace}", names::LABEL_SERVICE_NAMESPACE);
    let config = watcher::Config::default().labels(&selector);
    let service_of = |labels: &BTreeMap<String, String>| labels.get(names::LABEL_SERVICE_NAME).cloned();

    let t = timeline.clone();
    follow(Api::<Service>::namespaced(client.clone(), namespace), watcher::Config::default(), move |service| {
        let mut timeline = t.lock().unwrap();
        let steps = timeline.entry(service.name_any()).or_default();
        steps.published = published(&service);
        if steps.published.len() >= addresses {
            first(&mut steps.status);
        }
    });

    let t = timeline.clone();
    follow(Api::<DaemonSet>::namespaced(client.clone(), SYSTEM_NAMESPACE), config.clone(), move |daemonset| {
        if let Some(service) = service_of(daemonset.labels()) {
            first(&mut t.lock().unwrap().entry(service).or_default().daemonset);
        }
    });

    let t = timeline.clone();
    follow(Api::<Pod>::namespaced(client.clone(), SYSTEM_NAMESPACE), config, move |pod| {
        if let Some(service) = service_of(pod.labels()) {
            let mut timeline = t.lock().unwrap();
            let steps = timeline.entry(service).or_default().pods.entry(pod.name_any()).or_default();
            first(&mut steps.created);
            if pod_ready(&pod) {
                first(&mut steps.ready);
            }
        }
    });
    timeline
}

/// Runs `apply` on every object the watch reports, for as long as this program runs, riding out
/// the watch's errors (printed) with kube's back-off rather than stopping at the first.
fn follow<K>(api: Api<K>, config: watcher::Config, mut apply: impl FnMut(K) + Send + 'static)
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    tokio::spawn(watcher(api, config).default_backoff().applied_objects().for_each(move |object| {
        match object {
            Ok(object) => apply(object),
            Err(error) => eprintln!("timeline: watch of {}: {error}", K::plural(&())),
        }
        futures::future::ready(())
    }));
}

pub fn pod_ready(pod: &Pod) -> bool {
    let conditions = pod.status.as_ref().and_then(|s| s.conditions.as_ref());
    conditions.into_iter().flatten().any(|c| c.type_ == "Ready" && c.status == "True")
}

pub fn ms(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e3
}
