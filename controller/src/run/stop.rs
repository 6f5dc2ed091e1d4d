//! Stopping the controller's own Deployment before `--uninstall` releases the Services: a
//! replica still running would put back the statuses and proxies the uninstall removes.

use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use crate::error::{Error, Result};

/// Longer than a replica's shutdown: the writes under way finish within the renew deadline.
const STOP_TIMEOUT: Duration = Duration::from_secs(90);
const POLL: Duration = Duration::from_secs(1);

/// Scales the Deployment to zero and waits until none of its pods is left. A Deployment that
/// does not exist is stopped already.
pub async fn stop_deployment(client: Client, namespace: &str, name: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let action = format!("stop Deployment {namespace}/{name}");
    let Some(deployment) = deployments.get_opt(name).await.map_err(Error::kube(action.clone()))? else {
        return Ok(());
    };
    let selector = deployment
        .spec
        .and_then(|spec| spec.selector.match_labels)
        .unwrap_or_default()
        .into_iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect::<Vec<_>>()
        .join(",");
    let zero = Patch::Merge(json!({ "spec": { "replicas": 0 } }));
    deployments.patch_scale(name, &PatchParams::default(), &zero).await.map_err(Error::kube(action.clone()))?;
    let pods: Api<Pod> = Api::namespaced(client, namespace);
    let started = Instant::now();
    loop {
        let left = pods.list(&ListParams::default().labels(&selector)).await.map_err(Error::kube(action.clone()))?;
        if left.items.is_empty() {
            return Ok(());
        }
        if started.elapsed() > STOP_TIMEOUT {
            return Err(Error::NotStopped { deployment: format!("{namespace}/{name}"), waited: STOP_TIMEOUT });
        }
        tokio::time::sleep(POLL).await;
    }
}
