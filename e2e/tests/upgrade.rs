//! Upgrading from a previous release under traffic, as an operator does: the release named for a
//! data plane in `e2e/upgrade/previous-release`, built from its commit with its own install
//! (previous.sh), serves a Service; then this tree's install is applied over it (`cluster.sh
//! install`, the same apply `make up` does). The figures are printed as `upgrade:` lines. Needs
//! the cluster (`make up`). From the last release, on proxy pods: with `HOSTLB_E2E_DATAPLANE=agent`
//! the upgraded install is then put on the node agents, still under traffic. From the node agents'
//! ConfigMap plans and reports: the agents are rolled onto the custom resources that replace them.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{setup, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::dataplane::{use_dataplane, DataPlane, NodeAgents, ProxyPods};
use hostlb_e2e::figures::{figure, traffic_figures};
use hostlb_e2e::namespace::TestNamespace;
use hostlb_e2e::poll::eventually;
use hostlb_e2e::status::StatusWatch;
use hostlb_e2e::traffic::{answers, Traffic};
use hostlb_model::{agent, names};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const SETTLE: Duration = Duration::from_secs(300);
const PORT: u16 = 19700;

fn say(line: String) {
    println!("upgrade: {line}");
}

fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// Builds the images and install of the release named for `dataplane`; returns its version and
/// where they are.
fn previous_release(dataplane: &str) -> Result<(String, PathBuf)> {
    let out = repo().join("_out/upgrade").join(dataplane);
    let built =
        Command::new("bash").arg("e2e/upgrade/previous.sh").arg(&out).arg(dataplane).current_dir(repo()).output()?;
    if !built.status.success() {
        let printed = String::from_utf8_lossy(&built.stderr);
        let tail: Vec<&str> = printed.lines().rev().take(30).collect();
        bail!("e2e/upgrade/previous.sh failed:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    Ok((String::from_utf8(built.stdout)?.trim().to_string(), out))
}

#[tokio::test]
async fn an_upgrade_from_the_previous_release_loses_no_request_on_a_published_address() -> Result<()> {
    upgraded_from(&ProxyPods, "upgrade").await
}

#[tokio::test]
async fn an_upgrade_from_configmap_plans_loses_no_request_on_a_published_address() -> Result<()> {
    upgraded_from(&NodeAgents, "upgrade-plans").await
}

/// Builds the release named for `from`, installs it on that data plane, and upgrades it under
/// traffic; ends with this tree's install on the suite's data plane.
async fn upgraded_from(from: &dyn DataPlane, namespace: &str) -> Result<()> {
    let started = Instant::now();
    let (version, out) = previous_release(from.name())?;
    say(format!("{version} built from its commit in {:.0}s", started.elapsed().as_secs_f64()));
    let (cluster, ns, nodes) = setup(namespace).await?;
    cluster.harness(&["import-release", &out.join("images").to_string_lossy(), &version])?;
    let outcome = upgrade(&cluster, &ns, &nodes, from, &version, &out).await;
    // Whatever happened, the next tests need this tree's install, and nothing of the old one.
    let restored = cluster.harness(&["install"]);
    let switched = use_dataplane(&cluster, cluster.dataplane).await;
    outcome.and(restored).and(switched)
}

async fn upgrade(
    cluster: &Cluster,
    ns: &TestNamespace,
    nodes: &Nodes,
    from: &dyn DataPlane,
    version: &str,
    out: &Path,
) -> Result<()> {
    cluster.kubectl(&["apply", "-f", &out.join("install.yaml").to_string_lossy()])?;
    let rollout = ["-n", SYSTEM_NAMESPACE, "rollout", "status", "deployment/hostlb-controller", "--timeout=180s"];
    cluster.kubectl(&rollout)?;
    ensure_controller_image(cluster, version).await?;
    use_dataplane(cluster, from).await?;
    from.wait_running(cluster).await?;

    ns.echo_service(cluster, nodes, "web", PORT, SETTLE).await?;
    let targets = nodes.paths(PORT);
    for (address, port) in targets {
        answers(cluster, address, port, SETTLE).await?;
    }
    started_as_released(cluster, ns, from, version).await?;

    // On the node agents the upgrade keeps their data plane; from proxy pods it ends on the
    // suite's.
    let to = if from.name() == NodeAgents.name() { from } else { cluster.dataplane };
    let statuses = StatusWatch::start(ns.services(), &["web"], BTreeSet::from([nodes.ip1, nodes.ip2]));
    let traffic = Traffic::start(&cluster.client()?, &targets, Duration::from_millis(200), Duration::from_secs(90));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let upgrade_started = Instant::now();
    let upgraded = match cluster.harness(&["install"]) {
        Ok(()) => {
            let controller_rolled = upgrade_started.elapsed();
            let switched = use_dataplane(cluster, to).await;
            let current = eventually(SETTLE, || to.ensure_current_forwarding(cluster, &ns.name, "web"));
            switched.and(current.await).map(|()| controller_rolled)
        }
        Err(failed) => Err(failed),
    };
    let proxies_rolled = upgrade_started.elapsed();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (records, statuses) = (traffic.finish().await?, statuses.finish().await?);
    let controller_rolled = upgraded?;
    let stranded = stranded_node_lease_rbac(cluster).await?;
    let older_objects = eventually(SETTLE, || async {
        let left = configmap_plans_and_reports(cluster).await?;
        ensure!(left.is_empty(), "the older release's plans and reports are left: {left:?}");
        Ok(())
    });
    let older_objects_swept = older_objects.await.map(|()| upgrade_started.elapsed());

    say(format!(
        "{version} ({}) -> this tree ({}): controller rolled out after {:.1}s, the Service forwarded by this \
         tree's {}s after {:.1}s; {}; {} status reads, {} showed fewer than both nodes; left by `kubectl apply`: {}",
        from.name(),
        to.name(),
        controller_rolled.as_secs_f64(),
        to.pod_noun(),
        proxies_rolled.as_secs_f64(),
        nodes.describe_paths(&records),
        statuses.reads,
        statuses.shrunk.len(),
        if stranded.is_empty() { "nothing".to_string() } else { stranded.join(", ") }
    ));
    let (prefix, forwarded) = if from.name() == NodeAgents.name() {
        ("upgrade_from_configmap_plans", "upgrade_from_configmap_plans_forwarding_s")
    } else {
        to.upgrade_figures()
    };
    traffic_figures(prefix, &records)?;
    figure(&format!("{prefix}_controller_s"), controller_rolled.as_secs_f64())?;
    figure(forwarded, proxies_rolled.as_secs_f64())?;
    let swept = older_objects_swept?;
    figure(&format!("{prefix}_older_objects_swept_s"), swept.as_secs_f64())?;
    ensure!(statuses.shrunk.is_empty(), "the status shrank: {:?}", statuses.shrunk);
    let lost_published: u32 = records[..2].iter().map(|(_, record)| record.lost).sum();
    ensure!(lost_published == 0, "{lost_published} requests lost on the published addresses");
    Ok(())
}

/// Fails unless the Service is forwarded as the release forwards it: by proxy pods without the
/// spec hash that later releases give them, or by node agents from a ConfigMap plan.
async fn started_as_released(cluster: &Cluster, ns: &TestNamespace, from: &dyn DataPlane, version: &str) -> Result<()> {
    if from.name() == NodeAgents.name() {
        let plans = configmap_plans_and_reports(cluster).await?;
        ensure!(
            !plans.is_empty(),
            "{version}'s node agents have no ConfigMap plan: not the release this test starts from"
        );
        return Ok(());
    }
    let served_by_old = cluster.proxy_pods(&ns.name, "web").await?;
    ensure!(
        served_by_old.iter().all(|pod| !pod.annotations().contains_key(names::ANNOTATION_PROXY_SPEC_HASH)),
        "the proxy pods of {version} already carry a spec hash: not the release this test starts from"
    );
    Ok(())
}

/// The ConfigMap plans and reports of the node agents of releases before their custom resources.
async fn configmap_plans_and_reports(cluster: &Cluster) -> Result<Vec<String>> {
    let config_maps: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let selector = format!(
        "{}={},{} in ({},{})",
        names::LABEL_MANAGED_BY,
        names::MANAGED_BY,
        names::LABEL_COMPONENT,
        agent::COMPONENT_PLAN,
        agent::COMPONENT_REPORT
    );
    Ok(config_maps
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .map(ResourceExt::name_any)
        .collect())
}

async fn ensure_controller_image(cluster: &Cluster, version: &str) -> Result<()> {
    let deployments: Api<Deployment> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let deployment = deployments.get("hostlb-controller").await?;
    let containers = deployment.spec.and_then(|spec| spec.template.spec).map(|spec| spec.containers);
    let image = containers.unwrap_or_default().into_iter().find_map(|c| c.image).context("no controller image")?;
    ensure!(image.ends_with(&format!(":{version}")), "the controller runs {image}, not {version}");
    Ok(())
}

/// The previous release's Role and RoleBinding in kube-node-lease, which this one no longer has
/// and `kubectl apply` does not delete; deleted here once named.
async fn stranded_node_lease_rbac(cluster: &Cluster) -> Result<Vec<String>> {
    let selector = ListParams::default().labels("app.kubernetes.io/name=hostlb");
    let roles: Api<Role> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let bindings: Api<RoleBinding> = Api::namespaced(cluster.client.clone(), "kube-node-lease");
    let mut stranded = Vec::new();
    for role in roles.list(&selector).await?.items {
        stranded.push(format!("kube-node-lease/role/{}", role.name_any()));
        cluster.kubectl(&["-n", "kube-node-lease", "delete", "role", &role.name_any()])?;
    }
    for binding in bindings.list(&selector).await?.items {
        stranded.push(format!("kube-node-lease/rolebinding/{}", binding.name_any()));
        cluster.kubectl(&["-n", "kube-node-lease", "delete", "rolebinding", &binding.name_any()])?;
    }
    Ok(stranded)
}
