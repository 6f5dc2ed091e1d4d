//! The writes to the objects that carry Services' forwarding, of every data plane through one
//! path: each data plane names its kind (`decide::dataplane::ForwardingKind`) and the executor
//! reads, applies, lists and deletes them as dynamic objects. Also the clean-up of a Service
//! hostlb no longer serves, the orphan sweep, the data planes' shared objects, and uninstall.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use kube::api::{DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::reflector::{self, ObjectRef};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{info, warn};

use hostlb_model::reason::Reason;
use hostlb_model::service::ServiceView;
use hostlb_model::{agent, names};

use crate::decide::dataplane::Applied;
use crate::decide::dataplane::{
    DataPlaneKind, ForwardingAction, ForwardingChange, ForwardingKind, ForwardingObject, SharedChange, SharedObject,
};
use crate::decide::orphans::orphaned;
use crate::decide::{forwarding_key, Settings};
use crate::error::{Error, Result};
use crate::run::metrics::Metrics;
use crate::run::reconcile::{AppliedKey, Context};
use crate::run::watches::SERVICE_PAGE_SIZE;
use crate::state::proxy_pod::owning_service_key;
use crate::state::triggers::service_ref;
use crate::state::{key_of, Index};

/// Releases every Service this install serves or left something on, as if each were no longer
/// served (status cleared, an older version's finalizer removed), then deletes whatever
/// forwarding object and shared object (`DataPlane::uninstalled`) of this install is left.
/// Returns how many Services it released.
pub async fn uninstall(client: Client, settings: Settings) -> Result<usize> {
    let (services, _) = reflector::store();
    let index = Arc::new(RwLock::new(Index::default()));
    let synced = Arc::new(AtomicBool::new(true));
    let context = Context::new(client.clone(), settings, services, index, Arc::new(Metrics::default()), synced);
    let services = Api::<Service>::all(client.clone());
    let mut released = 0;
    // In pages, as the controller's watch lists them, so that Services with large annotations
    // do not have to fit in memory all at once.
    let mut page = ListParams::default().limit(SERVICE_PAGE_SIZE);
    loop {
        let listed = services.list(&page).await.map_err(Error::kube("list Services"))?;
        for service in &listed.items {
            let view = ServiceView::of(service);
            // The forwarding of Services not served any more is among the objects deleted below.
            if !context.settings.serves(&view) && !context.settings.must_release(&view, false) {
                continue;
            }
            let clear_status = !view.deleting && view.carries_status();
            context.clean_up(service, clear_status).await?;
            info!(service = %ObjectRef::from_obj(service), "released");
            released += 1;
        }
        match listed.metadata.continue_.filter(|token| !token.is_empty()) {
            Some(token) => page = page.continue_token(&token),
            None => break,
        }
    }
    for kind in DataPlaneKind::ALL.map(|kind| kind.implementation().kind()) {
        for object in context.list_forwarding(kind, None).await? {
            let action = format!("delete {} {}", object_kind(&object), key_of(&object));
            context.delete_object(&context.forwarding_api(kind), &object).await.map_err(Error::kube(action))?;
        }
    }
    // The ConfigMap plans and reports of an older release whose upgrade did not finish.
    let config_maps = Api::<ConfigMap>::namespaced(client, &context.settings.forwarding.namespace);
    let install_id = &context.settings.forwarding.install_id;
    for selector in [agent::plan_selector(install_id), agent::report_selector(install_id)] {
        let listed = config_maps.list(&ListParams::default().labels(&selector)).await;
        for config_map in listed.map_err(Error::kube(format!("list ConfigMaps {selector}")))?.items {
            let action = format!("delete ConfigMap {}", key_of(&config_map));
            config_maps.delete(&config_map.name_any(), &DeleteParams::default()).await.map_err(Error::kube(action))?;
        }
    }
    for plane in DataPlaneKind::ALL.map(DataPlaneKind::implementation) {
        for shared in plane.uninstalled(&context.settings.forwarding) {
            let change = SharedChange::Delete(shared);
            context.change_shared(&change).await.map_err(Error::kube(change.to_string()))?;
        }
    }
    context.events.flush().await;
    Ok(released)
}

fn object_kind(object: &ForwardingObject) -> &str {
    object.types.as_ref().map_or("object", |types| types.kind.as_str())
}

impl Context {
    pub(super) fn forwarding_api(&self, kind: &ForwardingKind) -> Api<ForwardingObject> {
        Api::namespaced_with(self.client.clone(), &self.settings.forwarding.namespace, &(kind.resource)())
    }

    pub(super) fn applied_key(&self, object: &ForwardingObject) -> AppliedKey {
        (object_kind(object).to_string(), key_of(object))
    }

    /// The object named for this Service's forwarding in the data plane in use, if the
    /// Service is served: from the index, or, as only hostlb's own are indexed, from the API
    /// server, so that one of the same name that is not ours is seen before it would be
    /// overwritten. With it, hostlb's own of the other data planes, from the index, to hand
    /// the Service over from.
    pub(super) async fn fetch_forwarding(
        &self,
        service: &ServiceView,
    ) -> Result<(Option<ForwardingObject>, Vec<(DataPlaneKind, ForwardingObject)>)> {
        if !self.settings.serves(service) || service.deleting {
            return Ok((None, Vec::new()));
        }
        let key = forwarding_key(service, &self.settings);
        let current = self.settings.forwarding.dataplane;
        let (found, previous) = {
            let index = self.read_index();
            let previous = current
                .others()
                .filter_map(|kind| Some((kind, kind.implementation().indexed(&index, &key)?)))
                .collect();
            (current.implementation().indexed(&index, &key), previous)
        };
        if found.is_some() {
            return Ok((found, previous));
        }
        let kind = current.implementation().kind();
        let name = key.rsplit('/').next().unwrap_or_default();
        let action = format!("get {} {key}", (kind.resource)().kind);
        let found = self.forwarding_api(kind).get_opt(name).await.map_err(Error::kube(action))?;
        Ok((found, previous))
    }

    pub(super) async fn change_forwarding(&self, service: &Service, change: &ForwardingChange) -> Result<()> {
        match &change.action {
            ForwardingAction::Apply { object, created, ports } => {
                self.apply_forwarding(service, change.kind, object, *created, ports).await
            }
            ForwardingAction::Delete(object) => self.delete_forwarding(service, change.kind, object).await,
        }
    }

    async fn apply_forwarding(
        &self,
        service: &Service,
        kind: &ForwardingKind,
        desired: &ForwardingObject,
        created: bool,
        ports: &str,
    ) -> Result<()> {
        let (kind_name, key) = self.applied_key(desired);
        let params = PatchParams::apply(names::MANAGER).force();
        let applied = self
            .forwarding_api(kind)
            .patch(&desired.name_any(), &params, &Patch::Apply(desired))
            .await
            .map_err(Error::kube(format!("apply {kind_name} {key}")))?;
        let record = Applied {
            generation: applied.metadata.generation.unwrap_or_default(),
            config_hash: desired.annotations().get(names::ANNOTATION_CONFIG_HASH).cloned().unwrap_or_default(),
        };
        self.applied.lock().expect("applied lock").insert((kind_name.clone(), key.clone()), record);
        self.metrics.forwarding_applies.inc();
        let verb = if created { "created" } else { "updated" };
        info!(object = %key, kind = %kind_name, verb, "applied the Service's forwarding");
        self.events.publish(service, kind.applied, format!("{verb} {} {key} for ports {ports}", kind.noun));
        Ok(())
    }

    /// Removes everything hostlb made for a Service that is deleted or no longer ours. Lists
    /// from the API server, not the index, so that nothing created just before is missed.
    pub(super) async fn clean_up(&self, service: &Service, clear_status: bool) -> Result<()> {
        // An empty UID selects nothing, never every object.
        let uid = service.uid().unwrap_or_default();
        for kind in DataPlaneKind::ALL.map(|kind| kind.implementation().kind()) {
            for object in self.list_forwarding(kind, Some(&uid)).await? {
                self.delete_forwarding(service, kind, &object).await?;
            }
        }
        if clear_status {
            self.write_status(service, &[], None, None).await?;
        }
        self.remove_finalizer(service).await?;
        self.events.forget(service);
        Ok(())
    }

    /// This install's forwarding objects of the kind, or those of the Service with this UID, as
    /// the API server has them.
    async fn list_forwarding(&self, kind: &ForwardingKind, service_uid: Option<&str>) -> Result<Vec<ForwardingObject>> {
        let mut selector = (kind.selector)(&self.settings.forwarding.install_id);
        if let Some(uid) = service_uid {
            selector = format!("{selector},{}={uid}", names::LABEL_SERVICE_UID);
        }
        let listed = self.forwarding_api(kind).list(&ListParams::default().labels(&selector)).await;
        Ok(listed.map_err(Error::kube(format!("list {}s", (kind.resource)().kind)))?.items)
    }

    async fn delete_forwarding(
        &self,
        service: &Service,
        kind: &ForwardingKind,
        object: &ForwardingObject,
    ) -> Result<()> {
        let kind_name = object_kind(object);
        let action = format!("delete {kind_name} {}", key_of(object));
        let deleted = self.delete_object(&self.forwarding_api(kind), object).await.map_err(Error::kube(action))?;
        if let Some(deleted) = deleted {
            info!(object = %deleted, kind = kind_name, "deleted the Service's forwarding");
            self.events.publish(service, kind.deleted, format!("deleted {kind_name} {deleted}"));
        }
        Ok(())
    }

    /// Deletes this very object (a UID precondition guards against a new one of the same
    /// name). Its `namespace/name` when deleted; `None` when it was gone already.
    async fn delete_object<K>(&self, api: &Api<K>, object: &K) -> Result<Option<String>, kube::Error>
    where
        K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    {
        let only_this_one = DeleteParams {
            preconditions: Some(Preconditions { uid: object.uid(), resource_version: None }),
            ..DeleteParams::background()
        };
        let key = key_of(object);
        match api.delete(&object.name_any(), &only_this_one).await {
            Ok(_) => {
                self.metrics.forwarding_deletes.inc();
                self.applied.lock().expect("applied lock").retain(|(_, applied), _| *applied != key);
                Ok(Some(key))
            }
            Err(kube::Error::Api(status)) if status.is_not_found() || status.code == 409 => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// Whether the forwarding object is still orphaned against its Service as the API server
    /// has it now.
    async fn orphaned_by_the_api_server(&self, object: &ForwardingObject) -> Result<bool> {
        let Some(service) = owning_service_key(object).map(|key| service_ref(&key)) else { return Ok(true) };
        let namespace = service.namespace.as_deref().unwrap_or_default();
        let services: Api<Service> = Api::namespaced(self.client.clone(), namespace);
        let action = format!("get Service {namespace}/{}", service.name);
        let live = services.get_opt(&service.name).await.map_err(Error::kube(action))?;
        Ok(!orphaned([object], &live.iter().collect::<Vec<_>>(), &self.settings).is_empty())
    }

    /// Deletes the forwarding objects, of every data plane, that no Service will clean up.
    /// Failures are only logged: the next sweep tries again.
    pub async fn delete_orphans(&self) {
        // Before the Services have listed, every object would look orphaned.
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        for plane in DataPlaneKind::ALL.map(DataPlaneKind::implementation) {
            let objects = plane.all_indexed(&self.read_index());
            self.delete_orphaned(plane.kind(), &objects).await;
        }
    }

    async fn delete_orphaned(&self, kind: &ForwardingKind, objects: &[ForwardingObject]) {
        let services = self.services.state();
        let services: Vec<&Service> = services.iter().map(Arc::as_ref).collect();
        for object in orphaned(objects, &services, &self.settings) {
            let service = owning_service_key(object).unwrap_or_else(|| "an unknown Service".into());
            // The cache may lag (a new leader whose Service watch is behind its DaemonSet
            // watch): only what the API server says now deletes forwarding that serves.
            match self.orphaned_by_the_api_server(object).await {
                Ok(true) => {}
                Ok(false) => continue,
                Err(error) => {
                    warn!(object = %key_of(object), %error, "could not read its Service; the object is kept");
                    continue;
                }
            }
            let kind_name = object_kind(object);
            match self.delete_object(&self.forwarding_api(kind), object).await {
                Ok(Some(deleted)) => {
                    info!(object = %deleted, kind = kind_name, %service, "deleted an orphaned forwarding object");
                    let note = format!("deleted {kind_name} {deleted}: {service} no longer needs it");
                    self.events.publish_regarding(object.object_ref(&(kind.resource)()), Reason::OrphanDeleted, note);
                }
                Ok(None) => {}
                Err(error) => warn!(object = %key_of(object), %error, "could not delete an orphaned forwarding object"),
            }
        }
    }

    /// Keeps the objects a data plane shares between Services as the data plane in use needs
    /// them (`DataPlane::shared_changes`), in order; a change that fails leaves the rest to the
    /// next pass, since they may need it done.
    pub async fn keep_shared_objects(&self) {
        if !self.synced.load(Ordering::Acquire) {
            return;
        }
        let changes =
            self.settings.forwarding.data_plane().shared_changes(&self.settings.forwarding, &self.read_index());
        for change in &changes {
            if let Err(error) = self.change_shared(change).await {
                warn!(%change, %error, "could not keep a shared object of the data plane; trying again");
                return;
            }
        }
    }

    async fn change_shared(&self, change: &SharedChange) -> Result<(), kube::Error> {
        let SharedObject { resource, object } = change.object();
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), &self.settings.forwarding.namespace, resource);
        let changed = match change {
            SharedChange::Apply(_) => {
                let params = PatchParams::apply(names::MANAGER).force();
                api.patch(&object.name_any(), &params, &Patch::Apply(object)).await?;
                true
            }
            SharedChange::Create(_) => match api.create(&PostParams::default(), object).await {
                Ok(_) => true,
                // Made since the watch last said: it is there, as wanted.
                Err(kube::Error::Api(status)) if status.code == 409 => false,
                Err(error) => return Err(error),
            },
            SharedChange::Delete(_) => self.delete_object(&api, object).await?.is_some(),
        };
        if changed {
            info!(%change, "changed a shared object of the data plane");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use kube::runtime::watcher::Event;
    use serde_json::{json, Value};

    use super::*;
    use crate::decide::dataplane::node_agents::{desired_agent, desired_binding, desired_role};
    use crate::fixtures::{index_of, settings, NodeBuilder};
    use crate::run::mock_api::{mock_api, rejected, ApiServer};
    use crate::state::index::kept_whole;

    const ROLE: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/hostlb-system/roles/hostlb-agent";
    const BINDING: &str = "/apis/rbac.authorization.k8s.io/v1/namespaces/hostlb-system/rolebindings/hostlb-agent";
    const AGENTS: &str = "/apis/apps/v1/namespaces/hostlb-system/daemonsets/hostlb-agent";

    fn with_the_agents(index: Index) -> (Context, ApiServer) {
        let (client, api) = mock_api();
        let mut settings = settings();
        settings.forwarding.dataplane = DataPlaneKind::Agent;
        let (services, _) = reflector::store();
        let (index, synced) = (Arc::new(RwLock::new(index)), Arc::new(AtomicBool::new(true)));
        (Context::new(client, settings, services, index, Arc::new(Metrics::default()), synced), api)
    }

    fn written(kind: &str) -> Value {
        json!({ "apiVersion": "v1", "kind": kind, "metadata": { "name": "hostlb-agent" } })
    }

    #[tokio::test]
    async fn shared_objects_are_kept_in_order_and_a_failure_leaves_the_rest_to_the_next_pass() {
        let (context, mut api) = with_the_agents(index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]));
        tokio::join!(context.keep_shared_objects(), async {
            api.expect("PATCH", ROLE, 403, rejected(403, "Forbidden", "attempting to grant RBAC permissions")).await;
            api.expect_nothing_more().await;
        });
        tokio::join!(context.keep_shared_objects(), async {
            let role = api.expect("PATCH", ROLE, 200, written("Role")).await;
            assert_eq!(role.body["rules"][1]["resourceNames"], json!(["hostlb-agent.n1"]), "{}", role.body);
            api.expect("PATCH", BINDING, 200, written("RoleBinding")).await;
            api.expect("PATCH", AGENTS, 200, written("DaemonSet")).await;
            api.expect_nothing_more().await;
        });
    }

    #[tokio::test]
    async fn a_report_made_meanwhile_is_left_as_it_is() {
        let settings = &settings().forwarding;
        let mut index = index_of(&[], &[NodeBuilder::new("n1").build()], &[], &[]);
        let mut agents = desired_agent(settings);
        agents.metadata.uid = Some("agents-uid".into());
        index.agents.apply(&Event::Apply(agents), kept_whole);
        index.agent_role.apply(&Event::Apply(desired_role(settings, &BTreeSet::from(["n1"]))), kept_whole);
        index.agent_binding.apply(&Event::Apply(desired_binding(settings)), kept_whole);
        let (context, mut api) = with_the_agents(index);
        tokio::join!(context.keep_shared_objects(), async {
            let path = "/apis/hostlb.io/v1alpha1/namespaces/hostlb-system/nodereports";
            let made = api.expect("POST", path, 409, rejected(409, "AlreadyExists", "exists")).await;
            assert_eq!(made.body["metadata"]["name"], "hostlb-agent.n1");
            assert_eq!(made.body["spec"], json!({ "node": "n1" }));
            assert_eq!(made.body.get("status"), None, "the agent's to write");
            api.expect_nothing_more().await;
        });
    }
}
