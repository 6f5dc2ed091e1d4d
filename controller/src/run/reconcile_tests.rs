//! The executor against a mock API server: each test plays the API server's side of one
//! reconcile, request by request, asserting the method, URL and body hostlb sends.

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, Service};
use kube::runtime::controller::Action;
use kube::runtime::reflector;
use kube::runtime::watcher;
use kube::ResourceExt;
use serde_json::{json, Value};

use super::{error_policy, reconcile, retry_delay, Context};
use crate::decide::dataplane::proxy_daemonset::{config_hash_of, desired_daemonset};
use crate::decide::dataplane::Applied;
use crate::decide::leadership::Term;
use crate::decide::placement::Placement;
use crate::fixtures::index_of;
use crate::fixtures::{made_from, proxy_pod, settings, NodeBuilder, ServiceBuilder, UID};
use crate::run::fence::Fence;
use crate::run::metrics::Metrics;
use crate::run::mock_api::{mock_api, rejected, ApiServer};
use crate::state::key_of;
use hostlb_model::names;
use hostlb_model::options::ServiceLb;

fn context(services: &[Service], index: crate::state::index::Index) -> (Arc<Context>, ApiServer) {
    let (client, api_server) = mock_api();
    (context_with(client, services, index, Arc::new(Metrics::default())), api_server)
}

fn context_with(
    client: kube::Client,
    services: &[Service],
    index: crate::state::index::Index,
    metrics: Arc<Metrics>,
) -> Arc<Context> {
    let (store, mut writer) = reflector::store();
    for service in services {
        writer.apply_watcher_event(&watcher::Event::Apply(service.clone()));
    }
    Arc::new(Context::new(
        client,
        settings(),
        store,
        Arc::new(RwLock::new(index)),
        metrics,
        Arc::new(AtomicBool::new(true)),
    ))
}

/// A context whose requests go through the fence of a term that ends 10 s from now unless the
/// returned sender publishes otherwise.
fn fenced_context(
    services: &[Service],
    index: crate::state::index::Index,
) -> (Arc<Context>, ApiServer, tokio::sync::watch::Sender<Option<Term>>, Arc<Metrics>) {
    let (client, api_server) = mock_api();
    let term = Term { number: 1, until: (tokio::time::Instant::now() + Duration::from_secs(10)).into_std() };
    let (leading, published) = tokio::sync::watch::channel(Some(term));
    let metrics = Arc::new(Metrics::default());
    let fenced = Fence::new(term, published).client(&client, metrics.clone());
    (context_with(fenced, services, index, metrics.clone()), api_server, leading, metrics)
}

fn with_finalizer(mut service: Service) -> Service {
    service.metadata.finalizers = Some(vec![names::FINALIZER.into()]);
    service
}

fn ours(service: &Service, generation: i64) -> DaemonSet {
    let lb = ServiceLb::from_service(service).unwrap();
    let mut daemonset = desired_daemonset(&lb, &Placement::for_service(&lb, false), &settings().forwarding);
    daemonset.metadata.generation = Some(generation);
    daemonset.metadata.uid = Some("ds-uid".into());
    daemonset
}

fn daemonset_path(service: &Service) -> String {
    format!("/apis/apps/v1/namespaces/hostlb-system/daemonsets/{}", names::forwarding_name(&service.name_any(), UID))
}

const SERVICE_PATH: &str = "/api/v1/namespaces/shop/services/web";

fn json_of(object: &impl serde::Serialize) -> Value {
    serde_json::to_value(object).unwrap()
}

/// Answers a status apply and returns its body with the condition's transition time, which is
/// the clock's, checked and taken out.
async fn expect_status_apply(api: &mut ApiServer, service: &Service) -> Value {
    let mut status = api.expect("PATCH", &format!("{SERVICE_PATH}/status"), 200, json_of(service)).await;
    assert!(status.query.contains("fieldManager=hostlb-controller") && status.query.contains("force=true"));
    let condition = &mut status.body["status"]["conditions"][0];
    let time = condition.as_object_mut().and_then(|c| c.remove("lastTransitionTime"));
    assert!(time.as_ref().and_then(Value::as_str).is_some_and(|t| t.ends_with('Z')), "{time:?}");
    status.body
}

fn condition(status: &str, reason: &str, message: &str) -> Value {
    json!([{ "type": "hostlb.io/Ready", "status": status, "reason": reason, "message": message }])
}

async fn finish(running: tokio::task::JoinHandle<crate::error::Result<Action>>) -> crate::error::Result<Action> {
    tokio::time::timeout(Duration::from_secs(5), running).await.expect("the reconcile finishes").expect("no panic")
}

#[tokio::test]
async fn a_new_service_gets_its_daemonset_applied_and_no_finalizer() {
    let service = ServiceBuilder::new("web").build();
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let (context, mut api) = context(std::slice::from_ref(&service), index);
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context.clone()));

    let lookup = api.expect("GET", &daemonset_path(&service), 404, rejected(404, "NotFound", "not found")).await;
    assert!(lookup.body.is_null());
    let applied = api.expect("PATCH", &daemonset_path(&service), 200, json_of(&ours(&service, 1))).await;
    assert!(applied.query.contains("fieldManager=hostlb-controller") && applied.query.contains("force=true"));
    assert_eq!(
        applied.body,
        json_of(&ours(&service, 1))
            .as_object()
            .map(|o| {
                let mut sent = Value::Object(o.clone());
                sent["metadata"].as_object_mut().unwrap().remove("generation");
                sent["metadata"].as_object_mut().unwrap().remove("uid");
                sent
            })
            .unwrap()
    );
    let event = api.expect_event("shop", "DaemonSetApplied").await;
    assert_eq!(event["type"], "Normal");
    assert!(event["note"].as_str().unwrap().starts_with("created DaemonSet hostlb-system/hostlb-web-"), "{event}");
    // Its proxies are starting: the status waits for them, and the reconcile comes back when
    // the window is over if no pod change brings it back sooner.
    api.expect_nothing_more().await;
    let next = finish(running).await.expect("the reconcile succeeds");
    assert_eq!(next, Action::requeue(crate::decide::STARTING_PROXIES_WINDOW));
    let remembered =
        context.applied.lock().unwrap().get(&("DaemonSet".to_string(), key_of(&ours(&service, 1)))).cloned();
    assert_eq!(remembered.map(|a| a.generation), Some(1));
}

#[tokio::test]
async fn an_older_versions_finalizer_is_removed_where_it_is_now_when_the_cache_is_behind() {
    let service = with_finalizer(ServiceBuilder::new("web").build());
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let (context, mut api) = context(std::slice::from_ref(&service), index);
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context));

    api.expect("GET", &daemonset_path(&service), 404, rejected(404, "NotFound", "not found")).await;
    let failed_test = rejected(422, "Invalid", "the server rejected our request due to an error in our request");
    let first = api.expect("PATCH", SERVICE_PATH, 422, failed_test).await;
    assert_eq!(first.body[1], json!({ "op": "remove", "path": "/metadata/finalizers/0" }));
    let mut moved = service.clone();
    moved.metadata.finalizers = Some(vec!["other".into(), names::FINALIZER.into()]);
    api.expect("GET", SERVICE_PATH, 200, json_of(&moved)).await;
    let second = api.expect("PATCH", SERVICE_PATH, 200, json_of(&service)).await;
    assert_eq!(second.body[1], json!({ "op": "remove", "path": "/metadata/finalizers/1" }));
    api.expect("PATCH", &daemonset_path(&service), 200, json_of(&ours(&service, 1))).await;
    api.expect_event("shop", "DaemonSetApplied").await;
    api.expect_nothing_more().await;
    finish(running).await.expect("the reconcile succeeds");
}

#[tokio::test]
async fn a_foreign_daemonset_with_our_name_is_refused_with_a_warning() {
    let service = ServiceBuilder::new("web").build();
    let index = index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").build()], &[], &[]);
    let (context, mut api) = context(std::slice::from_ref(&service), index);
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context));

    let mut foreign = ours(&service, 7);
    foreign.metadata.labels = Some([("app".to_string(), "someone-elses".to_string())].into());
    api.expect("GET", &daemonset_path(&service), 200, json_of(&foreign)).await;
    let status = expect_status_apply(&mut api, &service).await;
    let conditions = &status["status"]["conditions"];
    assert_eq!((&conditions[0]["status"], &conditions[0]["reason"]), (&json!("False"), &json!("DaemonSetNameTaken")));
    let event = api.expect_event("shop", "DaemonSetNameTaken").await;
    assert_eq!(event["type"], "Warning");
    assert!(event["note"].as_str().unwrap().contains("was not made by hostlb"), "{event}");
    api.expect_nothing_more().await;
    finish(running).await.expect("a refusal is not a failure");
}

/// A reconcile of `service` with nodes n1 and n2, its DaemonSet as this replica last applied it,
/// and `pods`.
fn reconcile_on_two_nodes(
    service: &Service,
    daemonset: &DaemonSet,
    pods: &[Pod],
) -> (ApiServer, tokio::task::JoinHandle<crate::error::Result<Action>>) {
    let nodes =
        [NodeBuilder::new("n1").internal("10.0.0.1").build(), NodeBuilder::new("n2").internal("10.0.0.2").build()];
    let index = index_of(std::slice::from_ref(service), &nodes, pods, std::slice::from_ref(daemonset));
    let (context, api) = context(std::slice::from_ref(service), index);
    let applied = Applied { generation: 2, config_hash: config_hash_of(daemonset).unwrap().into() };
    context.applied.lock().unwrap().insert(("DaemonSet".to_string(), key_of(daemonset)), applied);
    (api, tokio::spawn(reconcile(Arc::new(service.clone()), context)))
}

#[tokio::test]
async fn ready_proxy_pods_are_published_with_a_status_apply() {
    let mut service = ServiceBuilder::new("web").build();
    service.metadata.resource_version = Some("41".into());
    let daemonset = ours(&service, 2);
    let pods = [proxy_pod("p1", "n1", true), proxy_pod("p2", "n2", true)].map(|pod| made_from(pod, &daemonset));
    let (mut api, running) = reconcile_on_two_nodes(&service, &daemonset, &pods);

    let status = expect_status_apply(&mut api, &service).await;
    assert_eq!(
        status,
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": { "name": "web", "resourceVersion": "41" },
            "status": {
                "loadBalancer": { "ingress": [
                    { "ip": "10.0.0.1", "ipMode": "VIP" },
                    { "ip": "10.0.0.2", "ipMode": "VIP" },
                ] },
                "conditions": condition("True", "Serving", "2 of 2 eligible nodes serve"),
            },
        })
    );
    let event = api.expect_event("shop", "StatusUpdated").await;
    assert_eq!(event["note"], "10.0.0.1, 10.0.0.2");
    api.expect_nothing_more().await;
    finish(running).await.expect("the reconcile succeeds");
}

#[tokio::test]
async fn an_out_of_date_proxy_pod_is_deleted_for_its_daemonset_to_replace() {
    let service = ServiceBuilder::new("web").build();
    let daemonset = ours(&service, 2);
    let pods = [proxy_pod("old", "n1", true), made_from(proxy_pod("new", "n2", true), &daemonset)];
    let (mut api, running) = reconcile_on_two_nodes(&service, &daemonset, &pods);

    let deleted = api.expect("DELETE", "/api/v1/namespaces/hostlb-system/pods/old", 200, json_of(&pods[0])).await;
    assert_eq!(deleted.body["gracePeriodSeconds"], 0);
    expect_status_apply(&mut api, &service).await;
    let event = api.expect_event("shop", "ProxyPodReplaced").await;
    assert_eq!(event["note"], "replacing out-of-date proxy pod hostlb-system/old");
    api.expect_event("shop", "StatusUpdated").await;
    api.expect_nothing_more().await;
    finish(running).await.expect("the reconcile succeeds");
}

#[tokio::test]
async fn a_type_change_deletes_the_proxies_clears_the_status_and_removes_an_older_versions_finalizer() {
    let mut service = with_finalizer(ServiceBuilder::new("web").type_("ClusterIP").build());
    service.status =
        Some(serde_json::from_value(json!({ "loadBalancer": { "ingress": [{ "ip": "10.0.0.1" }] } })).unwrap());
    let daemonset = ours(&ServiceBuilder::new("web").build(), 1);
    let (context, mut api) = context(
        std::slice::from_ref(&service),
        index_of(std::slice::from_ref(&service), &[], &[], std::slice::from_ref(&daemonset)),
    );
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context));

    let list =
        json!({ "kind": "DaemonSetList", "apiVersion": "apps/v1", "metadata": {}, "items": [json_of(&daemonset)] });
    let listed = api.expect("GET", "/apis/apps/v1/namespaces/hostlb-system/daemonsets", 200, list).await;
    let install = names::proxy_daemonset_selector(&settings().forwarding.install_id);
    let selector = format!("{install},{}={UID}", names::LABEL_SERVICE_UID);
    assert!(
        listed.query.contains(&format!(
            "labelSelector={}",
            selector.replace('/', "%2F").replace('=', "%3D").replace(',', "%2C")
        )),
        "{}",
        listed.query
    );
    let deleted = api.expect("DELETE", &daemonset_path(&service), 200, json_of(&daemonset)).await;
    assert_eq!(deleted.body["preconditions"], json!({ "uid": "ds-uid" }));
    assert_eq!(deleted.body["propagationPolicy"], "Background");
    // A plan the node agents had for it would go too.
    let no_plans =
        json!({ "kind": "ForwardingPlanList", "apiVersion": "hostlb.io/v1alpha1", "metadata": {}, "items": [] });
    let plans =
        api.expect("GET", "/apis/hostlb.io/v1alpha1/namespaces/hostlb-system/forwardingplans", 200, no_plans).await;
    assert!(plans.query.contains("forwarding-plan") && plans.query.contains(UID), "{}", plans.query);
    let cleared = api.expect("PATCH", &format!("{SERVICE_PATH}/status"), 200, json_of(&service)).await;
    assert_eq!(cleared.body["status"], json!({ "loadBalancer": {} }));
    let released = api.expect("PATCH", SERVICE_PATH, 200, json_of(&service)).await;
    assert_eq!(
        released.body,
        json!([
            { "op": "test", "path": "/metadata/finalizers/0", "value": names::FINALIZER },
            { "op": "remove", "path": "/metadata/finalizers/0" },
        ])
    );
    api.expect_event("shop", "DaemonSetDeleted").await;
    api.expect_nothing_more().await;
    finish(running).await.expect("the clean-up succeeds");
}

#[tokio::test]
async fn the_orphan_sweep_deletes_daemonsets_no_service_will_clean_up() {
    let service = ServiceBuilder::new("web").build();
    let served = ours(&service, 1);
    let mut orphan = ours(&service, 1);
    orphan.metadata.name = Some("hostlb-gone-12345678".into());
    orphan.metadata.uid = Some("orphan-uid".into());
    orphan.metadata.labels.as_mut().unwrap().insert(names::LABEL_SERVICE_UID.into(), "gone".into());
    let index = index_of(std::slice::from_ref(&service), &[], &[], &[served, orphan]);
    let service_again = service.clone();
    let (context, mut api) = context(&[service], index);
    let sweeping = tokio::spawn(async move { context.delete_orphans().await });

    // The Service of that name is another one now (another UID): the DaemonSet is still an orphan.
    api.expect("GET", SERVICE_PATH, 200, json_of(&service_again)).await;
    let deleted = api
        .expect(
            "DELETE",
            "/apis/apps/v1/namespaces/hostlb-system/daemonsets/hostlb-gone-12345678",
            200,
            json!({ "kind": "Status", "apiVersion": "v1", "status": "Success" }),
        )
        .await;
    assert_eq!(deleted.body["preconditions"], json!({ "uid": "orphan-uid" }));
    let event = api.expect_event("hostlb-system", "OrphanDeleted").await;
    assert_eq!(event["regarding"]["kind"], "DaemonSet");
    api.expect_nothing_more().await;
    tokio::time::timeout(Duration::from_secs(5), sweeping).await.unwrap().unwrap();
}

#[tokio::test]
async fn the_orphan_sweep_keeps_a_daemonset_whose_service_the_cache_has_not_seen_yet() {
    let service = ServiceBuilder::new("web").build();
    let index = index_of(&[], &[], &[], &[ours(&service, 1)]);
    let (context, mut api) = context(&[], index);
    let sweeping = tokio::spawn(async move { context.delete_orphans().await });

    api.expect("GET", SERVICE_PATH, 200, json_of(&service)).await;
    api.expect_nothing_more().await;
    tokio::time::timeout(Duration::from_secs(5), sweeping).await.unwrap().unwrap();
}

#[tokio::test]
async fn a_refused_apply_is_warned_while_the_status_follows_the_running_proxies() {
    let service = ServiceBuilder::new("web").build();
    let pods = [proxy_pod("p1", "n1", true)];
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &pods, &[]);
    let (context, mut api) = context(std::slice::from_ref(&service), index);
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context.clone()));

    api.expect("GET", &daemonset_path(&service), 404, rejected(404, "NotFound", "not found")).await;
    let message = "DaemonSet.apps is invalid: spec.template.spec.tolerations[3].operator: Unsupported value";
    api.expect("PATCH", &daemonset_path(&service), 422, rejected(422, "Invalid", message)).await;
    let status = api.expect("PATCH", &format!("{SERVICE_PATH}/status"), 200, json_of(&service)).await;
    assert_eq!(status.body["status"]["loadBalancer"]["ingress"], json!([{ "ip": "10.0.0.1", "ipMode": "VIP" }]));
    api.expect_event("shop", "StatusUpdated").await;
    let warning = api.expect_event("shop", "ApplyRefused").await;
    assert_eq!(warning["type"], "Warning");
    assert!(warning["note"].as_str().unwrap().contains("tolerations[3].operator"), "{warning}");
    api.expect_nothing_more().await;
    let error = finish(running).await.expect_err("the reconcile fails, to be retried");
    assert_eq!(error.metric_label(), "api_rejected");

    let service = Arc::new(service);
    let delays: Vec<Action> = (0..3).map(|_| error_policy(service.clone(), &error, context.clone())).collect();
    assert_eq!(delays, [5, 10, 20].map(|s| Action::requeue(Duration::from_secs(s))));
}

#[test]
fn retries_back_off_exponentially_up_to_five_minutes() {
    let delays: Vec<u64> = [1, 2, 3, 6, 7, 8, 100, u32::MAX].map(|n| retry_delay(n).as_secs()).to_vec();
    assert_eq!(delays, vec![5, 10, 20, 160, 300, 300, 300, 300]);
}

#[tokio::test]
async fn a_write_in_flight_when_the_term_ends_is_dropped_and_nothing_is_sent_after() {
    let service = ServiceBuilder::new("web").build();
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let (context, mut api, leading, metrics) = fenced_context(std::slice::from_ref(&service), index);
    let running = tokio::spawn(reconcile(Arc::new(service.clone()), context));

    api.expect("GET", &daemonset_path(&service), 404, rejected(404, "NotFound", "not found")).await;
    let (_, in_flight) = api.hold("PATCH", &daemonset_path(&service)).await;
    leading.send_replace(None);
    let error = finish(running).await.expect_err("the reconcile is cut off");
    assert_eq!(error.metric_label(), "term_over");
    // Answered only now: nobody waits for it any more, and no Event tells of it.
    in_flight.send_response(http::Response::new(kube::client::Body::empty()));
    api.expect_nothing_more().await;
    assert!(metrics.render().contains("hostlb_api_writes_total{verb=\"PATCH\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn past_the_end_of_its_term_a_replica_sends_nothing_even_before_it_is_told() {
    let service = ServiceBuilder::new("web").build();
    let index =
        index_of(std::slice::from_ref(&service), &[NodeBuilder::new("n1").internal("10.0.0.1").build()], &[], &[]);
    let (context, mut api, _leading, metrics) = fenced_context(std::slice::from_ref(&service), index);
    // As a process frozen past the end of its term wakes up: the elector has not run yet.
    tokio::time::advance(Duration::from_secs(10)).await;
    let error = finish(tokio::spawn(reconcile(Arc::new(service), context))).await.expect_err("nothing is sent");
    assert_eq!(error.metric_label(), "term_over");
    api.expect_nothing_more().await;
    assert!(!metrics.render().contains("hostlb_api_writes_total{"));
}
