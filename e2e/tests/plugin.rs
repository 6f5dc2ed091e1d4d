//! `kubectl hostlb status` against the harness's cluster (`make up`). Runs the plugin binary
//! that `cargo build -p kubectl-hostlb` put beside this test's own build.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use hostlb_e2e::cluster::{setup, Cluster};
use hostlb_e2e::namespace::ECHO_HTTP_PORT;
use hostlb_e2e::poll::eventually;
use serde_json::{json, Value};

const SETTLE: Duration = Duration::from_secs(90);

/// `target/<profile>/kubectl-hostlb`: tests run from `target/<profile>/deps`.
fn plugin_binary() -> Result<PathBuf> {
    let test = std::env::current_exe()?;
    let profile_dir =
        test.parent().and_then(|deps| deps.parent()).ok_or_else(|| anyhow!("{test:?} has no profile folder"))?;
    let binary = profile_dir.join("kubectl-hostlb");
    ensure!(binary.exists(), "{binary:?} is missing: run `cargo build -p kubectl-hostlb` first");
    Ok(binary)
}

/// Runs `kubectl-hostlb ARGS` as kubectl would, with the cluster's kubeconfig in KUBECONFIG.
fn run_plugin(cluster: &Cluster, args: &[&str]) -> Result<Output> {
    Ok(Command::new(plugin_binary()?).env("KUBECONFIG", cluster.var("KUBECONFIG")?).args(args).output()?)
}

/// What `kubectl-hostlb ARGS` prints, failing unless it succeeds.
fn plugin(cluster: &Cluster, args: &[&str]) -> Result<String> {
    let output = run_plugin(cluster, args)?;
    if !output.status.success() {
        bail!("kubectl-hostlb {} failed: {}", args.join(" "), String::from_utf8_lossy(&output.stderr));
    }
    Ok(String::from_utf8(output.stdout)?)
}

fn service<'a>(status: &'a Value, name: &str) -> Result<&'a Value> {
    let services = status["services"].as_array().ok_or_else(|| anyhow!("no services in {status}"))?;
    services.iter().find(|s| s["name"] == name).ok_or_else(|| anyhow!("{name} is not in {status}"))
}

fn strings<'a>(values: impl IntoIterator<Item = &'a Value>, field: &str) -> BTreeSet<String> {
    values.into_iter().filter_map(|v| v[field].as_str()).map(String::from).collect()
}

fn array(value: &Value) -> &[Value] {
    value.as_array().map_or(&[], Vec::as_slice)
}

#[tokio::test]
async fn status_shows_served_nodes_refused_ports_and_who_holds_a_port() -> Result<()> {
    let (cluster, ns, _) = setup("plugin").await?;
    let (node1, node2) = (cluster.var("NODE1_NAME")?, cluster.var("NODE2_NAME")?);
    let (ip1, ip2) = (cluster.ip("NODE1_IP")?, cluster.ip("NODE2_IP")?);
    ns.echo_backend(&cluster, "echo", 1, Some(node1)).await?;
    ns.wait_ready("echo", 1, SETTLE).await?;
    let ports = [("http", "TCP", 18300, ECHO_HTTP_PORT), ("ssh", "TCP", 22, ECHO_HTTP_PORT)];
    ns.load_balancer("web", "echo", &ports, json!({})).await?;
    cluster.wait_for_addresses(&ns.name, "web", &[ip1, ip2], SETTLE).await?;
    ns.a_second_after("web").await?;
    ns.load_balancer("second", "echo", &[("http", "TCP", 18300, ECHO_HTTP_PORT)], json!({})).await?;

    let status = eventually(SETTLE, || async {
        let status: Value = serde_json::from_str(&plugin(&cluster, &["status", "-n", &ns.name, "-o", "json"])?)?;
        let second = service(&status, "second")?;
        let states = strings(array(&second["nodes"]), "state");
        ensure!(states == BTreeSet::from(["PortHeld".to_string()]), "the second Service's nodes are {states:?}");
        let reasons = strings(array(&second["warnings"]), "reason");
        ensure!(reasons.contains("PortConflict"), "the second Service's Warnings are {reasons:?}");
        let web_reasons = strings(array(&service(&status, "web")?["warnings"]), "reason");
        ensure!(web_reasons.contains("PortRefused"), "web's Warnings are {web_reasons:?}");
        Ok(status)
    })
    .await?;
    println!("{}", serde_json::to_string_pretty(&status)?);

    let web = service(&status, "web")?;
    let published: BTreeSet<String> =
        array(&web["addresses"]).iter().filter_map(Value::as_str).map(String::from).collect();
    ensure!(published == BTreeSet::from([ip1.to_string(), ip2.to_string()]), "web publishes {published:?}");
    let both_nodes = BTreeSet::from([node1.to_string(), node2.to_string()]);
    let serving = strings(array(&web["nodes"]).iter().filter(|n| n["serving"] == true), "name");
    ensure!(serving == both_nodes, "web is served by {serving:?}");
    ensure!(
        web["ports"]
            == json!([
                { "port": 18300, "protocol": "TCP", "claimed": true },
                { "port": 22, "protocol": "TCP", "claimed": false }
            ]),
        "web's ports are {}",
        web["ports"]
    );

    let second = service(&status, "second")?;
    ensure!(array(&second["addresses"]).is_empty(), "the second Service publishes {}", second["addresses"]);
    let held_by = strings(array(&second["conflicts"]), "heldBy");
    ensure!(held_by == BTreeSet::from([format!("{}/web", ns.name)]), "the port is held by {held_by:?}");
    let conflict_nodes = strings(array(&second["conflicts"]), "node");
    ensure!(conflict_nodes == both_nodes, "conflicts on {conflict_nodes:?}");

    let table = plugin(&cluster, &["status", "-n", &ns.name])?;
    println!("{table}");
    let web_row = table.lines().find(|l| l.split_whitespace().take(2).eq([ns.name.as_str(), "web"]));
    let web_row = web_row.with_context(|| format!("no row for web in\n{table}"))?;
    ensure!(web_row.contains("2/2") && web_row.contains("22/TCP(unclaimed)"), "web's row is {web_row:?}");
    ensure!(table.contains(&format!("{}/second:", ns.name)), "no block for the second Service in\n{table}");

    // kubectl's conventions: a NAME, flags before the command, a missing NAME, -l, -o name, yaml
    // and wide.
    let one = plugin(&cluster, &["-n", &ns.name, "status", "web", "-o", "name"])?;
    ensure!(one == "service/web\n", "`-n NS status web -o name` printed {one:?}");
    let missing = run_plugin(&cluster, &["status", "-n", &ns.name, "absent"])?;
    let (code, stderr) = (missing.status.code(), String::from_utf8_lossy(&missing.stderr));
    ensure!(
        code == Some(1)
            && missing.stdout.is_empty()
            && stderr == "Error from server (NotFound): services \"absent\" not found\n",
        "`status absent` exited {code:?} with {stderr:?}"
    );
    let unlabelled = plugin(&cluster, &["status", "-n", &ns.name, "-l", "e2e.hostlb.io/absent=yes"])?;
    ensure!(unlabelled == "No LoadBalancer Services found.\n", "-l matched {unlabelled:?}");
    let yaml: Value = serde_yaml_ng::from_str(&plugin(&cluster, &["status", "-n", &ns.name, "-o", "yaml"])?)?;
    let names = |report: &Value| strings(array(&report["services"]), "name");
    ensure!(names(&yaml) == names(&status), "-o yaml lists {:?}", names(&yaml));
    ensure!(service(&yaml, "web")?["addresses"] == web["addresses"], "-o yaml: {yaml}");
    let wide = plugin(&cluster, &["status", "-n", &ns.name, "-o", "wide"])?;
    let header: Vec<&str> = wide.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(header.ends_with(&["DAEMONSET", "SERVING"]), "{wide}");
    Ok(())
}
