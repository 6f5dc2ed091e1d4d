//! The Helm chart renders the very objects of the kustomize base, and has a value for every
//! controller setting. Needs helm and a kubectl with kustomize v5, named by HOSTLB_HELM and
//! HOSTLB_KUSTOMIZE_KUBECTL (e2e/test-all.sh installs both with e2e/chart/tools.sh).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context as _, Result};
use serde::Deserialize;
use serde_json::Value;

/// The base generates it with a hash suffix; the chart names it plainly.
const IMAGES_CONFIG_MAP: &str = "hostlb-images";
const IMAGES_HASH_LEN: usize = 10;

/// Controller settings that are not chart settings: the chart fills them in itself.
const SET_BY_THE_CHART: [&str; 5] =
    ["HOSTLB_NAMESPACE", "HOSTLB_LB_IMAGE", "HOSTLB_CONTROLLER_IMAGE", "HOSTLB_INSTANCE", "HOSTLB_HTTP_ADDRESS"];

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

fn helm_template(extra: &[&str]) -> Result<String> {
    run(
        &tool("HOSTLB_HELM")?,
        &[&["template", "hostlb", "charts/hostlb", "--namespace", "hostlb-system"], extra].concat(),
    )
}

/// `hostlb-images-HASH` as `hostlb-images`, wherever it is named.
fn without_hash_suffix(text: &str) -> String {
    let prefix = format!("{IMAGES_CONFIG_MAP}-");
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find(&prefix) {
        let after = &rest[at + prefix.len()..];
        let hash: String = after.chars().take_while(char::is_ascii_alphanumeric).collect();
        out.push_str(&rest[..at]);
        out.push_str(IMAGES_CONFIG_MAP);
        rest = if hash.len() == IMAGES_HASH_LEN { &after[hash.len()..] } else { &rest[at + IMAGES_CONFIG_MAP.len()..] };
    }
    out.push_str(rest);
    out
}

/// The objects of a multi-document YAML stream, by kind, namespace and name.
fn objects(yaml: &str) -> Result<BTreeMap<(String, String, String), Value>> {
    let mut objects = BTreeMap::new();
    for document in serde_yaml_ng::Deserializer::from_str(&without_hash_suffix(yaml)) {
        let object = Value::deserialize(document)?;
        if object.is_null() {
            continue;
        }
        let field = |path: &str| object.pointer(path).and_then(Value::as_str).unwrap_or_default().to_string();
        let key = (field("/kind"), field("/metadata/namespace"), field("/metadata/name"));
        ensure!(objects.insert(key.clone(), object).is_none(), "{key:?} twice");
    }
    Ok(objects)
}

fn controller_env(objects: &BTreeMap<(String, String, String), Value>) -> Result<BTreeMap<String, Value>> {
    let deployment = objects
        .iter()
        .find(|((kind, _, _), _)| kind == "Deployment")
        .map(|(_, object)| object)
        .context("no Deployment")?;
    let env = deployment.pointer("/spec/template/spec/containers/0/env").and_then(Value::as_array).context("no env")?;
    Ok(env.iter().map(|e| (e["name"].as_str().unwrap_or_default().to_string(), e.clone())).collect())
}

#[test]
fn the_chart_renders_the_kustomize_base_with_its_default_values() -> Result<()> {
    let chart = objects(&helm_template(&[])?)?;
    let base = objects(&run(&tool("HOSTLB_KUSTOMIZE_KUBECTL")?, &["kustomize", "manifests"])?)?;
    let keys = |objects: &BTreeMap<(String, String, String), Value>| objects.keys().cloned().collect::<BTreeSet<_>>();
    ensure!(keys(&chart) == keys(&base), "objects differ:\nchart {:?}\nbase  {:?}", keys(&chart), keys(&base));
    for (key, object) in &base {
        ensure!(chart[key] == *object, "{key:?} differs:\nchart {}\nbase  {}", chart[key], object);
    }
    println!("the chart renders the {} objects of the kustomize base", base.len());
    Ok(())
}

#[test]
fn settings_become_the_controllers_environment_and_the_namespace_follows_the_release() -> Result<()> {
    let rendered = helm_template(&[
        "--set",
        "settings.maxNodes=3",
        "--set",
        "settings.allowedPorts={80,443,8000-8100}",
        "--set",
        "settings.serveUnclassed=false",
        "--set",
        "image.lb.tag=v9",
    ])?;
    let set = objects(&rendered)?;
    let env = controller_env(&set)?;
    ensure!(env["HOSTLB_MAX_NODES"]["value"] == "3", "{:?}", env.get("HOSTLB_MAX_NODES"));
    ensure!(env["HOSTLB_ALLOWED_PORTS"]["value"] == "80,443,8000-8100", "{:?}", env.get("HOSTLB_ALLOWED_PORTS"));
    ensure!(env["HOSTLB_SERVE_UNCLASSED"]["value"] == "false", "{:?}", env.get("HOSTLB_SERVE_UNCLASSED"));
    ensure!(!env.contains_key("HOSTLB_LOG_FORMAT"), "an empty setting leaves the controller's default");
    let images = &set[&("ConfigMap".to_string(), "hostlb-system".to_string(), IMAGES_CONFIG_MAP.to_string())];
    ensure!(images["data"]["lb-image"] == "localhost/hostlb/lb:v9", "{images}");

    let elsewhere = run(
        &tool("HOSTLB_HELM")?,
        &["template", "hostlb", "charts/hostlb", "--namespace", "lb", "--set", "createNamespace=false"],
    )?;
    let elsewhere = objects(&elsewhere)?;
    ensure!(!elsewhere.keys().any(|(kind, _, _)| kind == "Namespace"), "no Namespace without createNamespace");
    for ((kind, namespace, name), object) in &elsewhere {
        ensure!(namespace != "hostlb-system", "{kind} {name} stayed in hostlb-system");
        for subject in object["subjects"].as_array().into_iter().flatten() {
            ensure!(subject["namespace"] == "lb", "{kind} {name}: {subject}");
        }
    }
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
