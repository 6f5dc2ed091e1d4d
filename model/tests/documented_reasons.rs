//! Every Event reason hostlb publishes has a row in the Events table of
//! docs/events-and-metrics.md, of the type it is published as.

use std::collections::BTreeMap;

use hostlb_model::reason::Reason;

const EVENTS_DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/events-and-metrics.md"));

/// Every variant of `Reason`. The match makes a new variant fail to compile until it is listed
/// here, and the test below then fails until it is documented.
macro_rules! every_reason {
    ($($variant:ident),* $(,)?) => {{
        fn listed(reason: Reason) {
            match reason {
                $(Reason::$variant => {})*
            }
        }
        let _ = listed;
        [$(Reason::$variant),*]
    }};
}

fn every_reason() -> Vec<Reason> {
    every_reason![
        DaemonSetApplied,
        DaemonSetDeleted,
        PlanApplied,
        PlanDeleted,
        OrphanDeleted,
        StatusUpdated,
        ProxyPodReplaced,
        InvalidOption,
        NoEligibleNode,
        PortConflict,
        ForwardingNameTaken,
        ProxyPodUnschedulable,
        PortRefused,
        ApplyRefused,
        ProxyPodFailing,
        ProxyPodsNotCreated,
        OptionIgnored,
        NodePortsOpen,
        NodeAnnotationIgnored,
        LongOutage,
        StatusContested,
    ]
    .to_vec()
}

/// The rows of the doc's Events table: reason string to the type it names (`Normal` or
/// `Warning`), from every table row whose first cell is one of the two. Each row is counted, so
/// that a reason with two rows is seen.
fn documented() -> BTreeMap<String, Vec<String>> {
    let mut rows: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in EVENTS_DOC.lines().filter(|line| line.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if let [kind @ ("Normal" | "Warning"), reason, ..] = cells[..] {
            rows.entry(reason.trim_matches('`').to_string()).or_default().push(kind.to_string());
        }
    }
    rows
}

#[test]
fn every_variant_is_in_reason_all() {
    let mut listed = every_reason();
    let mut all = Reason::ALL.to_vec();
    listed.sort();
    all.sort();
    assert_eq!(listed, all, "Reason::ALL and the variants of Reason differ");
}

#[test]
fn every_reason_has_one_row_of_its_type_in_the_events_doc() {
    let rows = documented();
    let mut problems = Vec::new();
    for reason in every_reason() {
        let expected = if reason.is_warning() { "Warning" } else { "Normal" };
        match rows.get(reason.as_str()).map(Vec::as_slice) {
            None => problems.push(format!("{reason} has no row")),
            Some([kind]) if kind == expected => {}
            Some([kind]) => problems.push(format!("{reason} is a {expected} Event, its row says {kind}")),
            Some(kinds) => problems.push(format!("{reason} has {} rows", kinds.len())),
        }
    }
    assert!(problems.is_empty(), "docs/events-and-metrics.md: {}", problems.join("; "));
}

#[test]
fn every_row_of_the_events_doc_names_a_reason_hostlb_publishes() {
    let published: Vec<&str> = every_reason().into_iter().map(Reason::as_str).collect();
    let unknown: Vec<String> =
        documented().into_keys().filter(|reason| !published.contains(&reason.as_str())).collect();
    assert!(unknown.is_empty(), "docs/events-and-metrics.md documents reasons hostlb has not: {unknown:?}");
}
