//! The report as `kubectl get` prints objects: one row per Service in aligned columns, then a
//! block per Service that has nodes not serving or Warnings, saying why.

use std::fmt::Write as _;

use k8s_openapi::jiff::Timestamp;

use crate::report::{Report, ServiceReport};

const NONE: &str = "<none>";

/// `wide` adds the proxy DaemonSet and the names of the serving nodes, as `-o wide` does.
pub fn render(report: &Report, now: Timestamp, wide: bool) -> String {
    if report.services.is_empty() {
        return "No LoadBalancer Services found.\n".into();
    }
    let mut header = row(["NAMESPACE", "NAME", "ADDRESSES", "PORTS", "NODES", "WARNINGS"]);
    if wide {
        header.extend(row(["DAEMONSET", "SERVING"]));
    }
    let mut rows = vec![header];
    rows.extend(report.services.iter().map(|service| {
        let mut cells = vec![
            service.namespace.clone(),
            service.name.clone(),
            or_none(service.addresses.join(",")),
            or_none(ports(service)),
            format!("{}/{}", service.serving_nodes(), service.nodes.len()),
            or_none(warning_reasons(service)),
        ];
        if wide {
            let serving: Vec<&str> =
                service.nodes.iter().filter(|node| node.serving).map(|node| node.name.as_str()).collect();
            // With the node agents, the Service's plan stands where its DaemonSet would.
            cells.push(or_none(service.daemon_set.clone().or_else(|| service.plan.clone()).unwrap_or_default()));
            cells.push(or_none(serving.join(",")));
        }
        cells
    }));
    let mut out = aligned(&rows, "");
    for service in report.services.iter().filter(|s| needs_details(s)) {
        let _ = write!(out, "\n{}/{}:\n", service.namespace, service.name);
        out.push_str(&details(service, now));
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|cell| cell.to_string()).collect()
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        NONE.into()
    } else {
        text
    }
}

/// `80/TCP,22/TCP(unclaimed)`: the ports no proxy pod claims, because they were refused or the
/// Service has no proxies, are marked.
fn ports(service: &ServiceReport) -> String {
    let port = |p: &crate::report::PortReport| {
        let mark = if p.claimed { "" } else { "(unclaimed)" };
        format!("{}/{}{mark}", p.port, p.protocol)
    };
    service.ports.iter().map(port).collect::<Vec<_>>().join(",")
}

/// The distinct reasons of the latest Warnings, newest first.
fn warning_reasons(service: &ServiceReport) -> String {
    let mut reasons: Vec<&str> = Vec::new();
    for warning in &service.warnings {
        if !reasons.contains(&warning.reason.as_str()) {
            reasons.push(&warning.reason);
        }
    }
    reasons.join(",")
}

fn needs_details(service: &ServiceReport) -> bool {
    service.serving_nodes() < service.nodes.len() || !service.warnings.is_empty() || !service.conflicts.is_empty()
}

fn details(service: &ServiceReport, now: Timestamp) -> String {
    let mut rows = vec![row(["NODE", "STATE", "REASON"])];
    rows.extend(service.nodes.iter().map(|node| {
        let mut reason = node.reason.clone().unwrap_or_else(|| "-".into());
        let held: Vec<String> = service
            .conflicts
            .iter()
            .filter(|c| c.node == node.name)
            .map(|c| format!("{}/{} held by Service {}", c.port, c.protocol, c.held_by))
            .collect();
        if !held.is_empty() {
            let _ = write!(reason, " ({})", held.join(", "));
        }
        // With the node agents, how old the word of the node's agent is.
        if let Some(reported) = node.reported_at.filter(|_| !node.serving) {
            let _ = write!(reason, " (last report {} ago)", age(now.duration_since(reported)));
        }
        vec![node.name.clone(), format!("{:?}", node.state), reason]
    }));
    let mut out = aligned(&rows, "  ");
    if !service.warnings.is_empty() {
        let mut rows = vec![row(["WARNING", "AGE", "COUNT", "MESSAGE"])];
        rows.extend(service.warnings.iter().map(|warning| {
            let age = warning.last_seen.map_or_else(|| "-".into(), |seen| age(now.duration_since(seen)));
            vec![warning.reason.clone(), age, warning.count.to_string(), warning.message.clone()]
        }));
        out.push_str(&aligned(&rows, "  "));
    }
    out
}

/// Each column as wide as its widest cell, three spaces apart, the last one not padded.
fn aligned(rows: &[Vec<String>], indent: &str) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|cell| cell.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = indent.to_string();
        for (column, cell) in row.iter().enumerate() {
            if column + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}   ", width = widths[column]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// How long ago, the way kubectl prints ages: `45s`, `12m`, `5h`, `3d`.
fn age(elapsed: k8s_openapi::jiff::SignedDuration) -> String {
    let seconds = elapsed.as_secs().max(0);
    match seconds {
        0..120 => format!("{seconds}s"),
        120..7200 => format!("{}m", seconds / 60),
        7200..172_800 => format!("{}h", seconds / 3600),
        _ => format!("{}d", seconds / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Conflict, NodeReport, NodeState, PortReport, WarningReport};

    fn node(name: &str, state: NodeState, reason: Option<&str>) -> NodeReport {
        NodeReport {
            name: name.into(),
            serving: state == NodeState::Serving,
            state,
            reason: reason.map(Into::into),
            reported_at: None,
        }
    }

    fn served(name: &str) -> ServiceReport {
        ServiceReport {
            namespace: "shop".into(),
            name: name.into(),
            addresses: vec!["10.0.0.1".into(), "10.0.0.2".into()],
            ports: vec![PortReport { port: 80, protocol: "TCP".into(), claimed: true }],
            daemon_set: Some(format!("hostlb-{name}")),
            plan: None,
            nodes: vec![node("node-1", NodeState::Serving, None), node("node-2", NodeState::Serving, None)],
            conflicts: vec![],
            warnings: vec![],
        }
    }

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(second).unwrap()
    }

    #[test]
    fn served_services_are_one_aligned_row_each_without_details() {
        let mut long = served("a-much-longer-name");
        long.ports.push(PortReport { port: 22, protocol: "TCP".into(), claimed: false });
        let table = render(&Report { services: vec![served("web"), long] }, at(0), false);
        assert_eq!(
            table,
            "NAMESPACE   NAME                 ADDRESSES           PORTS                      NODES   WARNINGS\n\
             shop        web                  10.0.0.1,10.0.0.2   80/TCP                     2/2     <none>\n\
             shop        a-much-longer-name   10.0.0.1,10.0.0.2   80/TCP,22/TCP(unclaimed)   2/2     <none>\n"
        );
    }

    #[test]
    fn wide_adds_the_daemonset_and_the_serving_nodes() {
        let mut half = served("web");
        half.nodes[1] = node("node-2", NodeState::NodeCordoned, None);
        let table = render(&Report { services: vec![half] }, at(0), true);
        let first_lines: Vec<&str> = table.lines().take(2).collect();
        assert_eq!(
            first_lines,
            [
                "NAMESPACE   NAME   ADDRESSES           PORTS    NODES   WARNINGS   DAEMONSET    SERVING",
                "shop        web    10.0.0.1,10.0.0.2   80/TCP   1/2     <none>     hostlb-web   node-1",
            ]
        );
    }

    #[test]
    fn a_service_with_problems_gets_a_block_of_nodes_and_warnings() {
        let mut second = served("second");
        second.addresses.clear();
        second.nodes = vec![
            node("node-1", NodeState::PortHeld, Some("an older Service holds one of the ports on this node")),
            node("node-2", NodeState::Unschedulable, Some("Unschedulable: no free ports")),
        ];
        second.conflicts =
            vec![Conflict { port: 80, protocol: "TCP".into(), node: "node-1".into(), held_by: "shop/first".into() }];
        let warning = |reason: &str, second: i64| WarningReport {
            reason: reason.into(),
            message: format!("{reason} message"),
            count: 2,
            last_seen: Some(at(second)),
        };
        second.warnings = vec![warning("PortConflict", 3600), warning("PortConflict", 3000), warning("PortRefused", 0)];
        let table = render(&Report { services: vec![second] }, at(3645), false);
        let expected = "\
NAMESPACE   NAME     ADDRESSES   PORTS    NODES   WARNINGS
shop        second   <none>      80/TCP   0/2     PortConflict,PortRefused

shop/second:
  NODE     STATE           REASON
  node-1   PortHeld        an older Service holds one of the ports on this node (80/TCP held by Service shop/first)
  node-2   Unschedulable   Unschedulable: no free ports
  WARNING        AGE   COUNT   MESSAGE
  PortConflict   45s   2       PortConflict message
  PortConflict   10m   2       PortConflict message
  PortRefused    60m   2       PortRefused message
";
        assert_eq!(table, expected);
    }

    #[test]
    fn with_the_node_agents_a_node_not_serving_says_how_old_its_agents_report_is() {
        let mut planned = served("web");
        planned.daemon_set = None;
        planned.plan = Some("hostlb-web-1234".into());
        let reported = |mut node: NodeReport, second| {
            node.reported_at = Some(at(second));
            node
        };
        planned.nodes = vec![
            reported(node("node-1", NodeState::Serving, None), 100),
            reported(node("node-2", NodeState::Failing, Some("no table")), 0),
            node("node-3", NodeState::NoProxyPod, Some("the node's agent has not reported the Service yet")),
        ];
        let table = render(&Report { services: vec![planned] }, at(180), true);
        let expected = "\
NAMESPACE   NAME   ADDRESSES           PORTS    NODES   WARNINGS   DAEMONSET         SERVING
shop        web    10.0.0.1,10.0.0.2   80/TCP   1/3     <none>     hostlb-web-1234   node-1

shop/web:
  NODE     STATE        REASON
  node-1   Serving      -
  node-2   Failing      no table (last report 3m ago)
  node-3   NoProxyPod   the node's agent has not reported the Service yet
";
        assert_eq!(table, expected);
    }

    #[test]
    fn no_services_is_said_in_words() {
        assert_eq!(render(&Report { services: vec![] }, at(0), false), "No LoadBalancer Services found.\n");
    }

    #[test]
    fn ages_read_like_kubectls() {
        let seconds = |s| age(k8s_openapi::jiff::SignedDuration::from_secs(s));
        assert_eq!(
            [seconds(-5), seconds(119), seconds(120), seconds(7199), seconds(7200), seconds(200_000)],
            ["0s", "119s", "2m", "119m", "2h", "2d"]
        );
    }
}
