//! Installing, upgrading and uninstalling hostlb as the README says, with the real Helm and
//! kubectl, on the harness's cluster: the harness's own install is scaled to zero while Helm's
//! runs (both would serve the same Services), and is itself deleted with `kubectl delete -k`
//! and applied again. Needs the cluster (`make up`), and helm and a current kubectl, named by
//! HOSTLB_HELM and HOSTLB_KUSTOMIZE_KUBECTL (e2e/chart/tools.sh installs both).

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{setup, Cluster, Nodes, SYSTEM_NAMESPACE};
use hostlb_e2e::figures::report_timing;
use hostlb_e2e::namespace::TestNamespace;
use hostlb_e2e::poll::eventually;
use hostlb_e2e::status::published;
use hostlb_e2e::traffic::answers;
use hostlb_model::names::FINALIZER;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};

const RELEASE: &str = "e2e-helm";
const RELEASE_NAMESPACE: &str = "e2e-helm-system";
const SETTLE: Duration = Duration::from_secs(90);
/// The 1.20 kubelet sometimes keeps a deleted pod until its container garbage collection,
/// which runs once a minute.
const POD_GONE: Duration = Duration::from_secs(150);
/// What the issue of safe uninstalls promises.
const NAMESPACE_DELETED: Duration = Duration::from_secs(30);
/// hostlb's own namespace waits for its pods, proxies included, which the 1.20 kubelet may keep
/// until its next garbage collection.
const INSTALL_GONE: Duration = Duration::from_secs(240);
/// The harness's install, as `make up` applies it.
const HARNESS_OVERLAY: &str = "e2e/cluster/install/";

fn helm(cluster: &Cluster, args: &[&str]) -> Result<String> {
    run_tool(cluster, "helm", "HOSTLB_HELM", "e2e/chart/tools.sh installs helm", args)
}

/// kubectl as users run it on the harness's install: a current one, whose kustomize builds the
/// overlay (1.20's does not).
fn kustomize_kubectl(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let hint = "e2e/chart/tools.sh installs a current kubectl";
    run_tool(cluster, "kubectl", "HOSTLB_KUSTOMIZE_KUBECTL", hint, args)
}

/// Runs the program the environment variable `program_var` names against the cluster, from the
/// repository's root, and prints what it printed.
fn run_tool(cluster: &Cluster, name: &str, program_var: &str, hint: &str, args: &[&str]) -> Result<String> {
    let program = std::env::var(program_var).with_context(|| format!("{program_var} is not set; {hint}"))?;
    let output = Command::new(&program)
        .env("KUBECONFIG", cluster.var("KUBECONFIG")?)
        .args(args)
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .output()?;
    let printed = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    println!("$ {name} {}\n{printed}", args.join(" "));
    if !output.status.success() {
        bail!("{name} {} failed: {printed}", args.join(" "));
    }
    Ok(printed)
}

/// Deletes the namespace of a Service as a user would, once its backends are gone (their own
/// shutdown is not what is measured), and returns how long it took to go.
async fn delete_namespace_of_service(cluster: &Cluster, ns: &TestNamespace) -> Result<Duration> {
    ns.scale("echo", 0).await?;
    let backends: Api<Pod> = Api::namespaced(cluster.client.clone(), &ns.name);
    eventually(POD_GONE, || async {
        let left = backends.list(&ListParams::default()).await?.items.len();
        ensure!(left == 0, "{left} backend pods are still there");
        Ok(())
    })
    .await?;
    let started = Instant::now();
    cluster.kubectl(&["delete", "namespace", &ns.name, "--wait=false"])?;
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    eventually(NAMESPACE_DELETED, || async {
        ensure!(namespaces.get_opt(&ns.name).await?.is_none(), "namespace {} is still there", ns.name);
        Ok(())
    })
    .await?;
    Ok(started.elapsed())
}

async fn scale_harness_install(cluster: &Cluster, replicas: u32) -> Result<()> {
    let replicas = format!("--replicas={replicas}");
    cluster.kubectl(&["-n", SYSTEM_NAMESPACE, "scale", "deployment/hostlb-controller", &replicas])?;
    let controllers: Api<Pod> = Api::namespaced(cluster.client.clone(), SYSTEM_NAMESPACE);
    let selector = ListParams::default().labels("app.kubernetes.io/component=controller");
    if replicas == "--replicas=0" {
        eventually(POD_GONE, || async {
            let left = controllers.list(&selector).await?.items.len();
            ensure!(left == 0, "{left} controller pods of the harness's install are still there");
            Ok(())
        })
        .await
    } else {
        let rollout = ["-n", SYSTEM_NAMESPACE, "rollout", "status", "deployment/hostlb-controller", "--timeout=180s"];
        cluster.kubectl(&rollout).map(drop)
    }
}

/// The pull secret the Helm release is installed with; it need not exist, as the images are on
/// the nodes already.
const PULL_SECRET: &str = "e2e-registry";

/// Every pod of the release (the controller's, and the proxy pods or node agents it made) names
/// the release's pull secret, which reaches them through the ServiceAccounts they run as.
async fn every_pod_names_the_pull_secret(cluster: &Cluster) -> Result<()> {
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), RELEASE_NAMESPACE);
    let pods = pods.list(&ListParams::default()).await?.items;
    ensure!(pods.len() >= 3, "{} pods in {RELEASE_NAMESPACE}: the controller's and the forwarders", pods.len());
    let mut named = Vec::new();
    for pod in &pods {
        let secrets = pod.spec.as_ref().and_then(|spec| spec.image_pull_secrets.clone()).unwrap_or_default();
        ensure!(
            secrets.iter().any(|secret| secret.name == PULL_SECRET),
            "pod {} names no pull secret {PULL_SECRET}: {secrets:?}",
            pod.name_any()
        );
        named.push(pod.name_any());
    }
    println!("timing: every pod of the release names the pull secret {PULL_SECRET}: {}", named.join(", "));
    Ok(())
}

#[tokio::test]
async fn helm_install_upgrade_and_uninstall_leave_no_service_that_cannot_be_deleted() -> Result<()> {
    let (cluster, ns, nodes) = setup("helm").await?;
    // An earlier run's namespace may still be going.
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    eventually(POD_GONE, || async {
        ensure!(namespaces.get_opt(RELEASE_NAMESPACE).await?.is_none(), "{RELEASE_NAMESPACE} is still there");
        Ok(())
    })
    .await?;
    // Before Helm's install takes over, with agents of its own when the test runs on them.
    cluster.dataplane.make_way_for_another_install(&cluster, POD_GONE).await?;
    scale_harness_install(&cluster, 0).await?;
    let outcome = helm_lifecycle(&cluster, &ns, &nodes).await;
    // Whatever happened, the next tests need the harness's install back, and nothing of ours.
    let _ = helm(&cluster, &["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE, "--ignore-not-found"]);
    let _ = cluster.kubectl(&["delete", "namespace", RELEASE_NAMESPACE, "--ignore-not-found", "--wait=false"]);
    scale_harness_install(&cluster, 2).await?;
    outcome
}

async fn helm_lifecycle(cluster: &Cluster, ns: &TestNamespace, nodes: &Nodes) -> Result<()> {
    // The README's command, with the images the harness built, on the test's data plane, from a
    // private registry's pull secret; the harness's install, scaled to zero, keeps the
    // cluster-wide definitions, as a second release does.
    let dataplane = format!("settings.dataplane={}", cluster.dataplane.name());
    helm(
        cluster,
        &[
            "install",
            RELEASE,
            "charts/hostlb",
            "--namespace",
            RELEASE_NAMESPACE,
            "--create-namespace",
            "--set",
            "image.controller.tag=dev",
            "--set",
            "image.lb.tag=dev",
            "--set",
            &dataplane,
            "--set",
            "crds.create=false",
            "--set",
            &format!("imagePullSecrets[0].name={PULL_SECRET}"),
        ],
    )?;
    let deployment = format!("deployment/{RELEASE}-hostlb-controller");
    cluster.kubectl(&["-n", RELEASE_NAMESPACE, "rollout", "status", &deployment, "--timeout=180s"])?;

    ns.echo_service(cluster, nodes, "web", 18400, SETTLE).await?;
    answers(cluster, nodes.ip1, 18400, SETTLE).await?;
    every_pod_names_the_pull_secret(cluster).await?;

    helm(
        cluster,
        &[
            "upgrade",
            RELEASE,
            "charts/hostlb",
            "--namespace",
            RELEASE_NAMESPACE,
            "--reuse-values",
            "--set",
            "settings.maxNodes=1",
        ],
    )?;
    cluster.kubectl(&["-n", RELEASE_NAMESPACE, "rollout", "status", &deployment, "--timeout=180s"])?;
    eventually(SETTLE, || async {
        let published = published(&ns.services().get("web").await?);
        ensure!(published.len() == 1, "after the upgrade to maxNodes=1 the Service publishes {published:?}");
        Ok(())
    })
    .await?;

    if let Err(failed) = helm(cluster, &["uninstall", RELEASE, "--namespace", RELEASE_NAMESPACE]) {
        let hook = format!("job/{RELEASE}-hostlb-uninstall");
        let logs = cluster.kubectl(&["-n", RELEASE_NAMESPACE, "logs", &hook, "--tail=30"]).unwrap_or_default();
        return Err(failed.context(format!("the uninstall hook's log:\n{logs}")));
    }
    let service = ns.services().get("web").await?;
    ensure!(!service.finalizers().iter().any(|f| f == FINALIZER), "the finalizer outlived the release");
    // The uninstall deletes the agents' DaemonSet; the agents, seeing it gone, take their rules.
    eventually(POD_GONE, || async {
        let left = cluster.nodes_with_agent_table()?;
        ensure!(left.is_empty(), "helm uninstall left the node agents' table on {left:?}");
        Ok(())
    })
    .await?;

    let took = delete_namespace_of_service(cluster, ns).await?;
    report_timing("namespace of a Service deleted after helm uninstall", took);
    Ok(())
}

#[tokio::test]
async fn kubectl_delete_k_with_a_served_service_leaves_its_namespace_deletable() -> Result<()> {
    let (cluster, ns, nodes) = setup("delete-k").await?;
    ns.echo_service(&cluster, &nodes, "web", 18410, SETTLE).await?;
    answers(&cluster, nodes.ip1, 18410, SETTLE).await?;

    let outcome = async {
        kustomize_kubectl(&cluster, &["delete", "-k", HARNESS_OVERLAY, "--wait=false"])?;
        let took = delete_namespace_of_service(&cluster, &ns).await?;
        report_timing("namespace of a Service deleted after kubectl delete -k", took);
        anyhow::Ok(())
    }
    .await;
    // Whatever happened, the next tests need the harness's install back.
    let namespaces: Api<Namespace> = Api::all(cluster.client.clone());
    eventually(INSTALL_GONE, || async {
        ensure!(namespaces.get_opt(SYSTEM_NAMESPACE).await?.is_none(), "{SYSTEM_NAMESPACE} is still there");
        Ok(())
    })
    .await?;
    // The node agents take their rules with them when their DaemonSet goes with the namespace.
    let stranded = cluster.nodes_with_agent_table()?;
    kustomize_kubectl(&cluster, &["apply", "-k", HARNESS_OVERLAY])?;
    scale_harness_install(&cluster, 2).await?;
    outcome?;
    ensure!(stranded.is_empty(), "kubectl delete -k left the node agents' table on {stranded:?}");
    Ok(())
}
