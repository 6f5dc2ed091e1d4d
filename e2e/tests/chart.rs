//! The Helm chart and the kustomize base, rendered: the two make the same objects with the same
//! permissions, the chart's values reach the controller, names follow the release, and overlays
//! can move the base and change its images. Needs helm and a kubectl with kustomize v5, named by
//! HOSTLB_HELM and HOSTLB_KUSTOMIZE_KUBECTL (e2e/test-all.sh installs both with
//! e2e/chart/tools.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use hostlb_model::agent::AGENT_SERVICE_ACCOUNT;
use hostlb_model::names::{short_hash, PROXY_SERVICE_ACCOUNT};
use serde::Deserialize;
use serde_json::Value;

/// Controller settings that are not chart settings: the chart fills them in itself.
const SET_BY_THE_CHART: [&str; 5] =
    ["HOSTLB_NAMESPACE", "HOSTLB_LB_IMAGE", "HOSTLB_CONTROLLER_IMAGE", "HOSTLB_INSTANCE", "HOSTLB_HTTP_ADDRESS"];

/// Kind and name; the chart leaves namespaces to Helm.
type Key = (String, String);

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn tool(variable: &str) -> Result<String> {
    std::env::var(variable).with_context(|| format!("{variable} is not set; e2e/chart/tools.sh installs the tool"))
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let output =
        Command::new(program).args(args).current_dir(repository()).output().with_context(|| program.to_string())?;
    if !output.status.success() {
        bail!("{program} {}: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn helm(args: &[&str]) -> Result<String> {
    run(&tool("HOSTLB_HELM")?, args)
}

/// The chart's objects for release `release`, hooks left out.
fn helm_template(release: &str, extra: &[&str]) -> Result<BTreeMap<Key, Value>> {
    let args = [&["template", release, "charts/hostlb", "--namespace", "hostlb-system", "--no-hooks"], extra].concat();
    objects(&helm(&args)?)
}

fn kustomize(directory: &str) -> Result<BTreeMap<Key, Value>> {
    objects(&run(&tool("HOSTLB_KUSTOMIZE_KUBECTL")?, &["kustomize", directory])?)
}

fn field(object: &Value, path: &str) -> String {
    object.pointer(path).and_then(Value::as_str).unwrap_or_default().to_string()
}

/// The objects of a multi-document YAML stream, by kind and name; a generated name's hash
/// suffix is dropped.
fn objects(yaml: &str) -> Result<BTreeMap<Key, Value>> {
    let mut objects = BTreeMap::new();
    for document in serde_yaml_ng::Deserializer::from_str(yaml) {
        let object = Value::deserialize(document)?;
        if object.is_null() {
            continue;
        }
        let name = field(&object, "/metadata/name");
        let name = match name.strip_prefix("hostlb-images-") {
            Some(_) => "hostlb-images".to_string(),
            None => name,
        };
        let key = (field(&object, "/kind"), name);
        ensure!(objects.insert(key.clone(), object).is_none(), "{key:?} twice");
    }
    Ok(objects)
}

fn object<'a>(objects: &'a BTreeMap<Key, Value>, kind: &str, name: &str) -> Result<&'a Value> {
    objects.get(&(kind.to_string(), name.to_string())).with_context(|| format!("no {kind} {name}"))
}

/// The chart's appVersion: the default tag of its images, and of those images/build.sh makes.
fn app_version() -> Result<String> {
    let chart = std::fs::read_to_string(repository().join("charts/hostlb/Chart.yaml"))?;
    Ok(field(&serde_yaml_ng::from_str::<Value>(&chart)?, "/appVersion"))
}

fn controller_env(objects: &BTreeMap<Key, Value>, deployment: &str) -> Result<BTreeMap<String, Value>> {
    let deployment = object(objects, "Deployment", deployment)?;
    let env = deployment.pointer("/spec/template/spec/containers/0/env").and_then(Value::as_array).context("no env")?;
    Ok(env.iter().map(|e| (field(e, "/name"), e.clone())).collect())
}

/// images/build.sh stamps the binaries with the appVersion and a plain cargo build with the
/// crates' version, and the base must name the images images/build.sh makes.
#[test]
fn the_chart_the_base_and_the_crates_name_one_version() -> Result<()> {
    let version = app_version()?;
    ensure!(version == env!("CARGO_PKG_VERSION"), "appVersion {version}, crates {}", env!("CARGO_PKG_VERSION"));
    let base = kustomize("manifests")?;
    let deployment = object(&base, "Deployment", "hostlb-controller")?;
    let image = field(deployment, "/spec/template/spec/containers/0/image");
    ensure!(image == format!("localhost/hostlb/controller:{version}"), "the base's controller runs {image}");
    let images = object(&base, "ConfigMap", "hostlb-images")?;
    for (key, repository) in [("controller-image", "controller"), ("lb-image", "lb")] {
        ensure!(images["data"][key] == format!("localhost/hostlb/{repository}:{version}"), "{images}");
    }
    Ok(())
}

/// Two image digests, as `--set` values and as the references they make.
const CONTROLLER_DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const LB_DIGEST: &str = "sha256:fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210";

/// Every value an umbrella chart or an install commonly overrides, set at once.
fn overrides() -> Vec<String> {
    [
        "global.foo=bar".to_string(),
        "nameOverride=lb".to_string(),
        "fullnameOverride=edge-lb".to_string(),
        "namespaceOverride=lb-system".to_string(),
        "podLabels.team=net".to_string(),
        format!("image.controller.digest={CONTROLLER_DIGEST}"),
        format!("image.lb.digest={LB_DIGEST}"),
        "metrics.serviceMonitor.enabled=true".to_string(),
        "metrics.podMonitor.enabled=true".to_string(),
        "metrics.prometheusRule.enabled=true".to_string(),
        "metrics.prometheusRule.labels.release=prometheus".to_string(),
    ]
    .into_iter()
    .flat_map(|value| ["--set".to_string(), value])
    .collect()
}

#[test]
fn the_chart_passes_helm_lint_strict() -> Result<()> {
    helm(&["lint", "--strict", "charts/hostlb"])?;
    let overrides = overrides();
    let args = [&["lint", "--strict", "charts/hostlb"][..], &overrides.iter().map(String::as_str).collect::<Vec<_>>()]
        .concat();
    helm(&args)?;
    Ok(())
}

#[test]
fn the_chart_and_the_kustomize_base_make_the_same_objects_with_the_same_permissions() -> Result<()> {
    let chart = helm_template("hostlb", &[])?;
    let mut base = kustomize("manifests")?;
    // The chart renders what the base leaves to components where the cluster can have it.
    for component in ["disruption-budget/poddisruptionbudget.yaml", "agent-report-guard/policy.yaml"] {
        let path = repository().join("manifests/components").join(component);
        base.extend(objects(&std::fs::read_to_string(path)?)?);
    }
    base.remove(&("Namespace".to_string(), "hostlb-system".to_string()));
    let keys = |objects: &BTreeMap<Key, Value>| objects.keys().cloned().collect::<BTreeSet<_>>();
    ensure!(keys(&chart) == keys(&base), "objects differ:\nchart {:?}\nbase  {:?}", keys(&chart), keys(&base));
    for (key, base_object) in &base {
        let chart_object = &chart[key];
        let paths = ["/rules", "/roleRef", "/spec/ports", "/spec/maxUnavailable", "/value", "/preemptionPolicy"];
        let custom = ["/spec/versions", "/spec/names", "/spec/validations", "/spec/matchConstraints"];
        for path in paths.into_iter().chain(custom) {
            ensure!(chart_object.pointer(path) == base_object.pointer(path), "{key:?} {path} differs");
        }
        for path in ["/ports", "/livenessProbe", "/readinessProbe", "/securityContext", "/resources"] {
            let container =
                |object: &Value| object.pointer(&format!("/spec/template/spec/containers/0{path}")).cloned();
            ensure!(container(chart_object) == container(base_object), "{key:?} container {path} differs");
        }
    }
    let chart_names: BTreeSet<String> = chart.values().map(|o| field(o, "/metadata/namespace")).collect();
    ensure!(chart_names == BTreeSet::from([String::new()]), "the chart names namespaces: {chart_names:?}");
    println!("the chart and the base make the same {} objects", base.len());
    Ok(())
}

#[test]
fn settings_become_the_controllers_environment() -> Result<()> {
    let set = helm_template(
        "hostlb",
        &[
            "--set",
            "settings.maxNodes=3",
            "--set",
            "settings.allowedPorts={80,443,8000-8100}",
            "--set",
            "settings.serveUnclassed=false",
            "--set",
            "image.lb.tag=v9",
            "--set",
            "logLevel=debug",
            "--set",
            "extraArgs={--sync-timeout-seconds=60}",
        ],
    )?;
    let env = controller_env(&set, "hostlb-controller")?;
    ensure!(env["HOSTLB_MAX_NODES"]["value"] == "3", "{:?}", env.get("HOSTLB_MAX_NODES"));
    ensure!(env["HOSTLB_ALLOWED_PORTS"]["value"] == "80,443,8000-8100", "{:?}", env.get("HOSTLB_ALLOWED_PORTS"));
    ensure!(env["HOSTLB_SERVE_UNCLASSED"]["value"] == "false", "{:?}", env.get("HOSTLB_SERVE_UNCLASSED"));
    ensure!(env["RUST_LOG"]["value"] == "debug", "{:?}", env.get("RUST_LOG"));
    ensure!(!env.contains_key("HOSTLB_LOG_FORMAT"), "an empty setting leaves the controller's default");
    let deployment = object(&set, "Deployment", "hostlb-controller")?;
    ensure!(deployment["spec"]["template"]["spec"]["containers"][0]["args"][0] == "--sync-timeout-seconds=60");
    let images = object(&set, "ConfigMap", "hostlb-images")?;
    ensure!(images["data"]["lb-image"] == "localhost/hostlb/lb:v9", "{images}");
    let version = app_version()?;
    ensure!(images["data"]["controller-image"] == format!("localhost/hostlb/controller:{version}"), "{images}");

    // The controller reads the images from the ConfigMap only at start: a change rolls it.
    let checksum = |objects: &BTreeMap<Key, Value>| -> Result<Value> {
        Ok(object(objects, "Deployment", "hostlb-controller")?["spec"]["template"]["metadata"]["annotations"]
            ["checksum/images"]
            .clone())
    };
    ensure!(checksum(&set)? != checksum(&helm_template("hostlb", &[])?)?, "the checksum ignores image.lb");
    Ok(())
}

#[test]
fn names_lease_and_bindings_follow_the_release() -> Result<()> {
    let rendered = helm_template("edge", &["--namespace", "lb"])?;
    let env = controller_env(&rendered, "edge-hostlb-controller")?;
    ensure!(env["HOSTLB_LEASE_NAME"]["value"] == "edge-hostlb-controller", "{:?}", env.get("HOSTLB_LEASE_NAME"));
    ensure!(env["HOSTLB_DEFAULT_PRIORITY_CLASS"]["value"] == "edge-hostlb-proxy");
    object(&rendered, "PriorityClass", "edge-hostlb-proxy")?;
    let role = object(&rendered, "Role", "edge-hostlb-controller")?;
    let leases = role["rules"].as_array().into_iter().flatten().find(|rule| rule["resourceNames"].is_array());
    ensure!(leases.is_some_and(|rule| rule["resourceNames"].to_string().contains("edge-hostlb-controller")), "{role}");
    for ((kind, name), object) in &rendered {
        if kind.starts_with("Cluster") || kind == "PriorityClass" {
            ensure!(name.starts_with("edge-hostlb-"), "{kind} {name} is not named after the release");
        }
        for subject in object["subjects"].as_array().into_iter().flatten() {
            ensure!(subject["namespace"] == "lb", "{kind} {name}: {subject}");
        }
        ensure!(kind != "Namespace", "the chart renders a Namespace; --create-namespace makes it");
    }
    let leased = helm_template("edge", &["--set", "settings.leaseName=mine"])?;
    let role = object(&leased, "Role", "edge-hostlb-controller")?;
    ensure!(role.to_string().contains("\"resourceNames\":[\"mine\"]"), "{role}");
    Ok(())
}

/// The chart's own pods (hooks included) name the pull secrets themselves or through their
/// ServiceAccount; the proxy pods and node agents, which the controller makes, through the
/// ServiceAccounts it names.
#[test]
fn the_pull_secrets_reach_every_pod_of_the_install() -> Result<()> {
    let secrets = serde_json::json!([{ "name": "registry-key" }]);
    // With the hooks: the uninstall hook's Job is a pod of the install too.
    let set = ["--namespace", "hostlb-system", "--set", "imagePullSecrets[0].name=registry-key"];
    let rendered = objects(&helm(&[&["template", "hostlb", "charts/hostlb"][..], &set].concat())?)?;
    let carried_by = |account: &str| -> Result<bool> {
        Ok(object(&rendered, "ServiceAccount", account)?["imagePullSecrets"] == secrets)
    };
    let mut pods = 0;
    for ((kind, name), object) in &rendered {
        let Some(pod) = object.pointer("/spec/template/spec") else { continue };
        let account = field(pod, "/serviceAccountName");
        ensure!(
            pod["imagePullSecrets"] == secrets || carried_by(&account)?,
            "{kind} {name} (ServiceAccount {account})"
        );
        pods += 1;
    }
    ensure!(pods >= 2, "only {pods} pod templates: the controller's and the uninstall hook's at least");
    for account in [PROXY_SERVICE_ACCOUNT, AGENT_SERVICE_ACCOUNT] {
        ensure!(carried_by(account)?, "the ServiceAccount {account} does not carry the pull secrets");
    }
    Ok(())
}

#[test]
fn the_schema_refuses_values_the_controller_would_crash_on() -> Result<()> {
    for bad in [
        "settings.maxNodes=abc",
        "settings.addressType=public",
        "replicas=two",
        "settings.unknown=1",
        "image.lb.digest=latest",
        "namespaceOverride=Not_A_Namespace",
        "global=1",
    ] {
        let refused = helm(&["template", "hostlb", "charts/hostlb", "--set", bad]);
        ensure!(refused.is_err(), "{bad} was accepted");
    }
    Ok(())
}

/// Renders an overlay of the base whose kustomization.yaml (after its `resources:` line naming
/// the base) is `rest`.
fn overlay(rest: &str) -> Result<BTreeMap<Key, Value>> {
    let overlay = std::env::temp_dir().join(format!("hostlb-overlay-{}-{}", std::process::id(), short_hash(rest)));
    std::fs::create_dir_all(&overlay)?;
    // kustomize takes only relative paths to bases.
    let manifests = std::iter::repeat_n("..", overlay.components().count() - 1)
        .collect::<PathBuf>()
        .join(repository().join("manifests").canonicalize()?.strip_prefix("/")?);
    let text = format!(
        "resources: [{}]\n{}",
        manifests.display(),
        rest.replace("MANIFESTS", &manifests.display().to_string())
    );
    std::fs::write(overlay.join("kustomization.yaml"), text)?;
    let rendered = kustomize(&overlay.display().to_string());
    std::fs::remove_dir_all(&overlay)?;
    rendered
}

#[test]
fn an_overlay_moves_the_base_and_changes_its_images() -> Result<()> {
    let rendered = overlay(
        "namespace: lb\nimages:\n- name: localhost/hostlb/controller\n  newName: registry.example/controller\n  newTag: v7\n- name: localhost/hostlb/lb\n  newName: registry.example/lb\n  newTag: v7\n",
    )?;
    object(&rendered, "Namespace", "lb")?;
    for ((kind, name), object) in &rendered {
        let namespace = field(object, "/metadata/namespace");
        ensure!(namespace.is_empty() || namespace == "lb", "{kind} {name} is in {namespace}");
        for subject in object["subjects"].as_array().into_iter().flatten() {
            ensure!(subject["namespace"] == "lb", "{kind} {name}: {subject}");
        }
    }
    let deployment = object(&rendered, "Deployment", "hostlb-controller")?;
    ensure!(deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example/controller:v7");
    let images = object(&rendered, "ConfigMap", "hostlb-images")?;
    ensure!(images["data"]["lb-image"] == "registry.example/lb:v7", "{images}");
    ensure!(images["data"]["controller-image"] == "registry.example/controller:v7", "{images}");
    Ok(())
}

#[test]
fn the_node_agent_components_choose_the_agents_and_guard_their_reports() -> Result<()> {
    let rendered = overlay("components: [MANIFESTS/components/node-agent, MANIFESTS/components/agent-report-guard]\n")?;
    let env = controller_env(&rendered, "hostlb-controller")?;
    ensure!(env.get("HOSTLB_DATAPLANE").is_some_and(|var| var["value"] == "agent"), "{env:?}");
    let policy = object(&rendered, "ValidatingAdmissionPolicy", "hostlb-agent-reports")?;
    let rule = field(policy, "/spec/validations/0/expression");
    ensure!(rule.contains("authentication.kubernetes.io/node-name") && rule.contains("object.spec.node"), "{rule}");
    ensure!(field(policy, "/spec/matchConstraints/resourceRules/0/resources/0") == "nodereports/status", "{policy}");
    object(&rendered, "ValidatingAdmissionPolicyBinding", "hostlb-agent-reports")?;
    // The chart's, from Kubernetes 1.30 on: the same rule, named after the release.
    let chart = helm_template("edge", &["--kube-version", "1.30.0"])?;
    let charted = object(&chart, "ValidatingAdmissionPolicy", "edge-hostlb-agent-reports")?;
    ensure!(charted["spec"] == policy["spec"], "the chart's guard differs: {charted}");
    ensure!(
        field(object(&chart, "ValidatingAdmissionPolicyBinding", "edge-hostlb-agent-reports")?, "/spec/policyName")
            == "edge-hostlb-agent-reports",
        "the binding names another policy"
    );
    let older = helm_template("edge", &["--kube-version", "1.29.0"])?;
    ensure!(
        !older.keys().any(|(kind, _)| kind.starts_with("ValidatingAdmissionPolicy")),
        "a guard before Kubernetes 1.30"
    );
    // The agents' Role names every node's report: the controller makes it, in its namespace.
    ensure!(
        !rendered.contains_key(&("Role".to_string(), "hostlb-agent".to_string())),
        "the base grants the agents a Role"
    );
    let role = object(&rendered, "Role", "hostlb-controller")?;
    let rbac =
        role["rules"].as_array().into_iter().flatten().find(|rule| rule["apiGroups"][0] == "rbac.authorization.k8s.io");
    ensure!(rbac.is_some_and(|rule| rule["resources"] == serde_json::json!(["roles", "rolebindings"])), "{role}");
    Ok(())
}

#[test]
fn every_controller_setting_has_a_chart_value() -> Result<()> {
    let flags = std::fs::read_to_string(repository().join("controller/src/run/flags.rs"))?;
    let settings = std::fs::read_to_string(repository().join("charts/hostlb/templates/_settings.tpl"))?;
    let variables: BTreeSet<&str> = flags
        .split("env = \"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next())
        .filter(|name| !SET_BY_THE_CHART.contains(name))
        .collect();
    ensure!(variables.len() > 10, "found only {variables:?} in run/flags.rs");
    let missing: Vec<&&str> = variables.iter().filter(|name| !settings.contains(&format!(": {name}\n"))).collect();
    ensure!(missing.is_empty(), "controller settings without a chart value: {missing:?}");
    Ok(())
}

#[test]
fn a_second_release_leaves_the_cluster_wide_definitions_to_the_first() -> Result<()> {
    let first = helm_template("hostlb", &[])?;
    let definitions =
        |objects: &BTreeMap<Key, Value>| objects.keys().filter(|(kind, _)| kind == "CustomResourceDefinition").count();
    ensure!(definitions(&first) == 2, "the first release makes {} definitions", definitions(&first));
    let second = helm_template("edge", &["--set", "crds.create=false"])?;
    ensure!(definitions(&second) == 0, "the second release makes {} definitions", definitions(&second));
    Ok(())
}

#[test]
fn name_overrides_change_the_prefix_and_the_defaults_keep_it() -> Result<()> {
    for (release, set, controller) in [
        ("hostlb", vec![], "hostlb-controller"),
        ("edge", vec![], "edge-hostlb-controller"),
        ("edge", vec!["--set", "nameOverride=lb"], "edge-lb-controller"),
        ("my-lb", vec!["--set", "nameOverride=lb"], "my-lb-controller"),
        ("edge", vec!["--set", "nameOverride=lb", "--set", "fullnameOverride=front"], "front-controller"),
    ] {
        let rendered = helm_template(release, &set)?;
        let deployment =
            object(&rendered, "Deployment", controller).with_context(|| format!("release {release} with {set:?}"))?;
        let selector = &deployment["spec"]["selector"]["matchLabels"];
        let name = if set.contains(&"nameOverride=lb") { "lb" } else { "hostlb" };
        ensure!(selector["app.kubernetes.io/name"] == name, "{release} {set:?}: {selector}");
        let env = controller_env(&rendered, controller)?;
        ensure!(env["HOSTLB_LEASE_NAME"]["value"] == controller, "{:?}", env.get("HOSTLB_LEASE_NAME"));
    }
    Ok(())
}

/// Kinds the chart makes that have no namespace.
const CLUSTER_WIDE: [&str; 6] = [
    "ClusterRole",
    "ClusterRoleBinding",
    "PriorityClass",
    "CustomResourceDefinition",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Renders the chart as the dependency `hostlb` of an umbrella chart released as `umbrella` in
/// the namespace `default`, whose values are `values`; hooks included.
fn umbrella(values: &str) -> Result<BTreeMap<Key, Value>> {
    let directory = std::env::temp_dir().join(format!("hostlb-umbrella-{}-{}", std::process::id(), short_hash(values)));
    let rendered = (|| {
        std::fs::create_dir_all(&directory)?;
        let chart = repository().join("charts/hostlb").canonicalize()?;
        let manifest = format!(
            "apiVersion: v2\nname: umbrella\nversion: 1.0.0\ndependencies:\n  - name: hostlb\n    version: \">=0.0.0-0\"\n    repository: file://{}\n",
            chart.display()
        );
        std::fs::write(directory.join("Chart.yaml"), manifest)?;
        std::fs::write(directory.join("values.yaml"), values)?;
        let directory = directory.display().to_string();
        // A file:// dependency needs no repository index: nothing is fetched.
        helm(&["dependency", "update", "--skip-refresh", &directory])?;
        objects(&helm(&["template", "umbrella", &directory, "--namespace", "default", "--kube-version", "1.30.0"])?)
    })();
    std::fs::remove_dir_all(&directory)?;
    rendered
}

/// As a dependency of an umbrella chart, which passes `global` down, the chart takes its names
/// from fullnameOverride and its namespace from namespaceOverride, except for the two
/// ServiceAccounts the controller names and the cluster-wide definitions.
#[test]
fn an_umbrella_chart_renders_hostlb_under_its_names_and_namespace() -> Result<()> {
    let rendered = umbrella(
        "global: {foo: bar}\nhostlb:\n  fullnameOverride: edge-lb\n  namespaceOverride: lb-system\n  podLabels: {team: net}\n  metrics:\n    serviceMonitor: {enabled: true}\n    podMonitor: {enabled: true}\n    prometheusRule: {enabled: true}\n",
    )?;
    ensure!(rendered.len() > 20, "only {} objects: {:?}", rendered.len(), rendered.keys());
    let fixed_accounts = [PROXY_SERVICE_ACCOUNT, AGENT_SERVICE_ACCOUNT];
    let mut named = 0;
    for ((kind, name), object) in &rendered {
        let fixed =
            kind == "CustomResourceDefinition" || (kind == "ServiceAccount" && fixed_accounts.contains(&&**name));
        ensure!(fixed || name == "edge-lb" || name.starts_with("edge-lb-"), "{kind} {name} is not named after edge-lb");
        named += usize::from(!fixed);
        let namespace = field(object, "/metadata/namespace");
        if CLUSTER_WIDE.contains(&kind.as_str()) {
            ensure!(namespace.is_empty(), "the cluster-wide {kind} {name} names the namespace {namespace}");
        } else {
            ensure!(namespace == "lb-system", "{kind} {name} is in {namespace:?}, not lb-system");
        }
        for subject in object["subjects"].as_array().into_iter().flatten() {
            ensure!(subject["namespace"] == "lb-system", "{kind} {name}: {subject}");
        }
        ensure!(
            !object.to_string().contains("umbrella-"),
            "{kind} {name} names something after the umbrella's release"
        );
    }
    ensure!(named > 15, "only {named} objects named after edge-lb");
    for account in fixed_accounts {
        object(&rendered, "ServiceAccount", account)?;
    }
    for kind in ["ValidatingAdmissionPolicy", "PrometheusRule", "ServiceMonitor", "PodMonitor", "Job"] {
        ensure!(rendered.keys().any(|(k, _)| k == kind), "no {kind}: {:?}", rendered.keys());
    }

    let deployment = object(&rendered, "Deployment", "edge-lb-controller")?;
    let labels = &deployment["spec"]["template"]["metadata"]["labels"];
    ensure!(labels["team"] == "net", "the pod template's labels: {labels}");
    ensure!(labels["app.kubernetes.io/component"] == "controller", "the pod template's labels: {labels}");
    let selector = &deployment["spec"]["selector"]["matchLabels"];
    ensure!(selector.get("team").is_none(), "podLabels reach the Deployment's selector: {selector}");
    let env = controller_env(&rendered, "edge-lb-controller")?;
    ensure!(env["HOSTLB_LEASE_NAME"]["value"] == "edge-lb-controller", "{:?}", env.get("HOSTLB_LEASE_NAME"));
    ensure!(env["HOSTLB_DEFAULT_PRIORITY_CLASS"]["value"] == "edge-lb-proxy");
    ensure!(env["HOSTLB_LB_IMAGE"]["valueFrom"]["configMapKeyRef"]["name"] == "edge-lb-images");
    let role = object(&rendered, "Role", "edge-lb-controller")?;
    ensure!(role.to_string().contains("\"resourceNames\":[\"edge-lb-controller\"]"), "{role}");
    let hook = object(&rendered, "Job", "edge-lb-uninstall")?;
    let args = hook.pointer("/spec/template/spec/containers/0/args").context("no args")?;
    ensure!(args.to_string().contains("--stop-deployment=edge-lb-controller"), "{args}");
    let monitor = object(&rendered, "PodMonitor", "edge-lb-agent")?;
    ensure!(monitor["spec"]["namespaceSelector"]["matchNames"] == serde_json::json!(["lb-system"]), "{monitor}");
    Ok(())
}

/// A digest pins both images: the controller's pods and the references the controller is given
/// for the pods it makes.
#[test]
fn digests_pin_the_images_the_controller_runs_and_gives_out() -> Result<()> {
    let controller = format!("image.controller.digest={CONTROLLER_DIGEST}");
    let lb = format!("image.lb.digest={LB_DIGEST}");
    let set = ["--namespace", "hostlb-system", "--set", &controller, "--set", &lb, "--set", "image.controller.tag=v9"];
    let rendered = objects(&helm(&[&["template", "hostlb", "charts/hostlb"][..], &set].concat())?)?;
    let controller_image = format!("localhost/hostlb/controller@{CONTROLLER_DIGEST}");
    let lb_image = format!("localhost/hostlb/lb@{LB_DIGEST}");
    for (kind, name) in [("Deployment", "hostlb-controller"), ("Job", "hostlb-uninstall")] {
        let image = field(object(&rendered, kind, name)?, "/spec/template/spec/containers/0/image");
        ensure!(image == controller_image, "{kind} {name} runs {image}");
    }
    let images = object(&rendered, "ConfigMap", "hostlb-images")?;
    ensure!(images["data"]["controller-image"] == controller_image.as_str(), "{images}");
    ensure!(images["data"]["lb-image"] == lb_image.as_str(), "{images}");

    // Only the lb image pinned: the controller's keeps its tag.
    let rendered = helm_template("hostlb", &["--set", &lb])?;
    let images = object(&rendered, "ConfigMap", "hostlb-images")?;
    ensure!(images["data"]["lb-image"] == lb_image.as_str(), "{images}");
    let version = app_version()?;
    ensure!(images["data"]["controller-image"] == format!("localhost/hostlb/controller:{version}"), "{images}");
    Ok(())
}

/// The metric names in a PromQL expression: words that start with hostlb_.
fn metric_names(expr: &str) -> BTreeSet<String> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("hostlb_"))
        .map(str::to_string)
        .collect()
}

#[test]
fn the_prometheus_rule_alerts_on_metrics_the_binaries_export() -> Result<()> {
    let default = helm_template("hostlb", &[])?;
    ensure!(!default.keys().any(|(kind, _)| kind == "PrometheusRule"), "a PrometheusRule without being asked for");

    let set = ["--namespace", "lb", "--set", "metrics.prometheusRule.enabled=true"];
    let labels = ["--set", "metrics.prometheusRule.labels.release=prometheus"];
    let rendered = helm_template("edge", &[&set[..], &labels].concat())?;
    let rule = object(&rendered, "PrometheusRule", "edge-hostlb")?;
    ensure!(field(rule, "/apiVersion") == "monitoring.coreos.com/v1", "{rule}");
    ensure!(rule["metadata"]["labels"]["release"] == "prometheus", "{rule}");
    let rules = rule.pointer("/spec/groups/0/rules").and_then(Value::as_array).context("no rules")?;
    ensure!(rules.len() >= 2, "{rules:?}");

    // The series a counter's family exports carry _total; every name must be registered.
    let controller = std::fs::read_to_string(repository().join("controller/src/run/metrics.rs"))?;
    let agent = std::fs::read_to_string(repository().join("agent/src/health.rs"))?;
    let registered = |metric: &str| -> bool {
        let metric = metric.strip_suffix("_total").unwrap_or(metric);
        match metric.strip_prefix("hostlb_agent_") {
            Some(name) => agent.contains(&format!("\"{name}\"")),
            None => metric.strip_prefix("hostlb_").is_some_and(|name| controller.contains(&format!("\"{name}\""))),
        }
    };
    let mut alerts = BTreeSet::new();
    for rule in rules {
        let alert = field(rule, "/alert");
        let expr = field(rule, "/expr");
        ensure!(!alert.is_empty() && !field(rule, "/annotations/summary").is_empty(), "{rule}");
        let metrics = metric_names(&expr);
        ensure!(!metrics.is_empty(), "{alert}: {expr} names no hostlb metric");
        for metric in &metrics {
            ensure!(registered(metric), "{alert}: {metric} is no metric of the controller or the agents");
        }
        ensure!(expr.contains("namespace=\"lb\""), "{alert}: {expr} does not select the install's namespace");
        ensure!(!expr.contains("{{") && !expr.contains("}}"), "{alert}: {expr} left a template");
        alerts.insert(alert);
    }
    ensure!(alerts.contains("HostlbNoLeader"), "{alerts:?}");
    // Prometheus fills in its own templates of the annotations.
    let text = rule.to_string();
    ensure!(text.contains("{{ $labels.pod }}"), "the agents' alert lost its $labels: {text}");
    Ok(())
}
