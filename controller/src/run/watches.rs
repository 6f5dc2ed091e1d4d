//! The watches, wiring only: on every replica each watch applies its events to the index (the
//! Services also to the Service cache, which keeps only what hostlb reads of them), and what
//! each event changed once committed becomes the Services it concerns (`state::triggers`).
//! The node Leases also feed the clock that judges them (`lease_clock`). The events of what the
//! data planes' shared objects follow (nodes, plans, the agents' own objects) tell the leader to
//! keep those objects. Also readiness: every watch has listed.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::stream::BoxStream;
use futures::{stream, Stream, StreamExt, TryStreamExt};
use hostlb_model::agent::{plan_resource, report_resource};
use hostlb_model::node_labels::placement_labels;
use hostlb_model::service::keep_what_hostlb_reads;
use hostlb_model::{agent, names};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event as CoreEvent, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;

use crate::decide::condition::reasons_of_served;
use crate::decide::{claim, Settings};
use crate::error::{Error, Result};
use crate::run::api_contact::ApiContact;
use crate::run::lease_clock::{lease_liveness, LeaseClock};
use crate::run::metrics::Metrics;
use crate::state::index::kept_whole;
use crate::state::node_liveness::NODE_LEASE_NAMESPACE;
use crate::state::{triggers, Index};

/// Below the client's read timeout, so that a quiet watch ends before the read timeout would cut it.
const WATCH_TIMEOUT_SECONDS: u32 = 50;

/// Services are listed this many at a time: the API server accepts about 256 KiB of annotations
/// on each, which hostlb drops only once a page is read, so a page must fit in the controller's
/// memory many times over (50 such Services are 13 MiB of JSON), whatever the cluster holds.
pub const SERVICE_PAGE_SIZE: u32 = 50;

/// How often readiness looks whether the watches have listed.
pub const SYNC_POLL: Duration = Duration::from_millis(100);

/// The Services one watch event concerns, or the watch's error.
pub type Triggers = Result<Vec<ObjectRef<Service>>, watcher::Error>;

/// What the watches keep current.
pub struct Watched {
    pub services: Store<Service>,
    pub index: Arc<RwLock<Index>>,
    /// Told of each change to what the data planes' shared objects follow, for the leader to
    /// keep them (`Context::keep_shared_objects`).
    pub shared_objects_due: Arc<Notify>,
}

/// Starts every watch; the stream must be polled for any of them to run.
pub fn watch(
    client: &Client,
    settings: &Settings,
    contact: ApiContact,
    metrics: Arc<Metrics>,
) -> (Watched, impl Stream<Item = Triggers> + Send + 'static) {
    let namespace = settings.forwarding.namespace.clone();
    let all = watcher::Config::default().timeout(WATCH_TIMEOUT_SECONDS);
    let index = Arc::new(RwLock::new(Index::default()));
    let (services, service_writer) = reflector::store();

    let service_triggers = {
        let (index, settings, metrics) = (index.clone(), settings.clone(), metrics.clone());
        let cache = services.clone();
        let paged = all.clone().page_size(SERVICE_PAGE_SIZE);
        // Not `watched`: of the managed fields, hostlb reads who else writes the status.
        let services =
            watcher(Api::<Service>::all(client.clone()), paged).default_backoff().modify(keep_what_hostlb_reads);
        services.reflect(service_writer).map_ok(move |event| {
            // Counted over the cache, once a relist is complete rather than for each object in it.
            if !matches!(event, watcher::Event::Init | watcher::Event::InitApply(_)) {
                let cached = cache.state();
                metrics.count_services(reasons_of_served(cached.iter().map(Arc::as_ref), &settings));
            }
            let mut index = index.write().expect("index lock");
            let changes = index.apply_service(&event, |service| claim(service, &settings));
            triggers::of_services(&changes, &index)
        })
    };
    let proxy_daemonsets = all.clone().labels(&names::proxy_daemonset_selector(&settings.forwarding.install_id));
    let daemonset_triggers =
        indexed(Api::<DaemonSet>::namespaced(client.clone(), &namespace), proxy_daemonsets, &index, |index, event| {
            triggers::of_proxy_objects(&index.apply_daemonset(event))
        });
    // Watched in both data planes: the plans and reports of the other are swept or read while
    // it hands over; and so are the ConfigMap plans and reports of older releases, while an
    // upgrade replaces the agents.
    let plans = all.clone().labels(&agent::plan_selector(&settings.forwarding.install_id));
    let plan_api = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &plan_resource());
    let plan_triggers =
        indexed(plan_api, plans.clone(), &index, |index, event| triggers::of_proxy_objects(&index.apply_plan(event)));
    let legacy_plan_triggers =
        indexed(Api::<ConfigMap>::namespaced(client.clone(), &namespace), plans, &index, |index, event| {
            index.apply_legacy_plan(event);
            Vec::new()
        });
    // The agents' DaemonSet, Role and RoleBinding share one name.
    let agents = all.clone().fields(&format!("metadata.name={}", settings.forwarding.agent));
    let agent_triggers =
        indexed(Api::<DaemonSet>::namespaced(client.clone(), &namespace), agents.clone(), &index, |index, event| {
            index.agents.apply(event, kept_whole);
            Vec::new()
        });
    let role_triggers =
        indexed(Api::<Role>::namespaced(client.clone(), &namespace), agents.clone(), &index, |index, event| {
            index.agent_role.apply(event, kept_whole);
            Vec::new()
        });
    let binding_triggers =
        indexed(Api::<RoleBinding>::namespaced(client.clone(), &namespace), agents, &index, |index, event| {
            index.agent_binding.apply(event, kept_whole);
            Vec::new()
        });
    let reports = all.clone().labels(&agent::report_selector(&settings.forwarding.install_id));
    let report_api = Api::<DynamicObject>::namespaced_with(client.clone(), &namespace, &report_resource());
    let report_triggers = indexed(report_api, reports.clone(), &index, |index, event| {
        triggers::of_agent_reports(&index.apply_agent_report(event, Instant::now()))
    });
    let legacy_report_triggers = {
        let agent = settings.forwarding.agent.clone();
        indexed(Api::<ConfigMap>::namespaced(client.clone(), &namespace), reports, &index, move |index, event| {
            triggers::of_agent_reports(&index.apply_legacy_agent_report(event, &agent))
        })
    };
    // The node agents' pods too, so that a Service can say why one does not run.
    let proxy_pods = all.clone().labels(&agent::forwarding_pod_selector());
    let pod_triggers = {
        let (services, settings) = (services.clone(), settings.clone());
        indexed(Api::<Pod>::namespaced(client.clone(), &namespace), proxy_pods, &index, move |index, event| {
            let mut triggers = triggers::of_proxy_pods(&index.apply_proxy_pod(event, Timestamp::now()));
            let agents = index.apply_agent_pod(event, &settings.forwarding.install_id);
            triggers.extend(triggers::of_agent_pods(&agents, || concerned(&services, &settings)));
            triggers
        })
    };
    let node_triggers = {
        let (services, settings) = (services.clone(), settings.clone());
        indexed(Api::<Node>::all(client.clone()), all.clone(), &index, move |index, event| {
            // Placement reads the labels the admin owns (and the nodes' own where trusted).
            let trusted = event.clone().modify(|node| {
                let labels = node.metadata.labels.get_or_insert_default();
                *labels = placement_labels(labels, settings.forwarding.trust_node_labels);
            });
            triggers::of_nodes(&index.apply_node(&trusted), || concerned(&services, &settings))
        })
    };
    let lease_triggers = {
        let lease_events = indexed(
            Api::<Lease>::namespaced(client.clone(), NODE_LEASE_NAMESPACE),
            all.clone(),
            &index,
            |index, event| {
                // Lease renewals change nothing by themselves: the clock judges them.
                index.apply_node_lease(event, Instant::now());
                Vec::new()
            },
        );
        let (services, settings) = (services.clone(), settings.clone());
        let clock = LeaseClock {
            grace: settings.node_lease_grace,
            pause_limit: settings.withdrawal_pause_limit,
            report_expiry: settings.agent_report_expiry,
            contact,
            metrics,
        };
        lease_liveness(lease_events, index.clone(), clock).map_ok(move |_| concerned(&services, &settings))
    };
    // The DaemonSet controller reports pods it cannot create only as Events on the DaemonSet.
    let failed_creations = all.clone().fields("involvedObject.kind=DaemonSet,reason=FailedCreate");
    let failure_triggers = {
        let (services, settings) = (services.clone(), settings.clone());
        indexed(
            Api::<CoreEvent>::namespaced(client.clone(), &namespace),
            failed_creations,
            &index,
            move |index, event| {
                let changes = index.apply_creation_failure(event);
                triggers::of_creation_failures(&changes, index, || concerned(&services, &settings))
            },
        )
    };

    // What the data planes' shared objects follow: the nodes, the plans, and the agents' own
    // objects and pods.
    let shared_objects_due = Arc::new(Notify::new());
    let due = |triggers| shared_objects_follow(triggers, &shared_objects_due);
    let triggers = stream::select_all([
        service_triggers.boxed(),
        daemonset_triggers.boxed(),
        due(plan_triggers.boxed()),
        due(agent_triggers.boxed()),
        due(role_triggers.boxed()),
        due(binding_triggers.boxed()),
        due(report_triggers.boxed()),
        due(legacy_report_triggers.boxed()),
        due(legacy_plan_triggers.boxed()),
        due(pod_triggers.boxed()),
        due(node_triggers.boxed()),
        lease_triggers.boxed(),
        failure_triggers.boxed(),
    ]);
    (Watched { services, index, shared_objects_due }, triggers)
}

/// The watch's triggers, telling `due` of each of its events.
fn shared_objects_follow(triggers: BoxStream<'static, Triggers>, due: &Arc<Notify>) -> BoxStream<'static, Triggers> {
    let due = due.clone();
    triggers.inspect_ok(move |_| due.notify_one()).boxed()
}

/// Every Service this install serves or still has to clean up.
fn concerned(services: &Store<Service>, settings: &Settings) -> Vec<ObjectRef<Service>> {
    services
        .state()
        .iter()
        .filter(|service| settings.concerns(service))
        .map(|s| ObjectRef::from_obj(s.as_ref()))
        .collect()
}

/// A watch whose events are applied to the index, each turned into the Services its committed
/// change concerns.
fn indexed<K>(
    api: Api<K>,
    config: watcher::Config,
    index: &Arc<RwLock<Index>>,
    apply: impl Fn(&mut Index, &watcher::Event<K>) -> Vec<ObjectRef<Service>> + Send + 'static,
) -> impl Stream<Item = Triggers> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let index = index.clone();
    watched(api, config).map_ok(move |event| apply(&mut index.write().expect("index lock"), &event))
}

/// A watch that retries with backoff. Managed fields are dropped: hostlb never reads them, and
/// they are often the larger part of an object.
fn watched<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    watcher(api, config).default_backoff().modify(|object: &mut K| object.managed_fields_mut().clear())
}

/// Waits until every watch has listed its objects, or fails naming those that have not.
pub async fn watches_synced(index: &RwLock<Index>, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    loop {
        let pending = index.read().expect("index lock").unsynced();
        if pending.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(Error::WatchesNotSynced { watches: pending.join(", "), waited: timeout });
        }
        tokio::time::sleep(SYNC_POLL).await;
    }
}
