//! The reasons of the Events hostlb publishes, and the Warnings a decision finds: what users
//! see on their Services and what the tests look for.

use std::fmt;

/// The reason of every Event hostlb publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    DaemonSetApplied,
    DaemonSetDeleted,
    /// The Service's plan for the node agents was written or deleted (`--dataplane agent`).
    PlanApplied,
    PlanDeleted,
    OrphanDeleted,
    StatusUpdated,
    /// An out-of-date proxy pod was deleted for the DaemonSet controller to replace.
    ProxyPodReplaced,
    /// An option or field of the Service cannot be honoured.
    InvalidOption,
    /// No node may run the Service's proxy pods.
    NoEligibleNode,
    /// Another Service claims one of its ports on a node they share.
    PortConflict,
    /// An object of the name hostlb would give the Service's forwarding (a DaemonSet, or a
    /// plan's ConfigMap) exists and is not hostlb's for this Service. Its Event reason keeps the
    /// name it had before the node agents, `DaemonSetNameTaken`, so that alerts on it hold.
    ForwardingNameTaken,
    ProxyPodUnschedulable,
    /// A port the admin's port policy does not let Services claim.
    PortRefused,
    /// The API server refused the proxy DaemonSet hostlb wrote for the Service.
    ApplyRefused,
    /// A proxy pod failed or is stuck (image, crashing container, refused by the kubelet).
    ProxyPodFailing,
    /// The DaemonSet controller cannot create proxy pods (quota, unknown PriorityClass, ...).
    ProxyPodsNotCreated,
    /// An option this cluster cannot honour; the Service is served without it.
    OptionIgnored,
    /// Source ranges are set, but NodePorts, which they do not cover, are open.
    NodePortsOpen,
    /// A serving node's hostlb annotation cannot be used; the node's own address is published.
    NodeAnnotationIgnored,
    /// Most nodes have looked down for longer than withdrawals may pause: those still down
    /// leave the status.
    LongOutage,
    /// Another controller writes the status of a Service without a class, which hostlb then
    /// leaves to it.
    StatusContested,
}

impl Reason {
    pub const ALL: [Reason; 21] = [
        Reason::DaemonSetApplied,
        Reason::DaemonSetDeleted,
        Reason::PlanApplied,
        Reason::PlanDeleted,
        Reason::OrphanDeleted,
        Reason::StatusUpdated,
        Reason::ProxyPodReplaced,
        Reason::InvalidOption,
        Reason::NoEligibleNode,
        Reason::PortConflict,
        Reason::ForwardingNameTaken,
        Reason::ProxyPodUnschedulable,
        Reason::PortRefused,
        Reason::ApplyRefused,
        Reason::ProxyPodFailing,
        Reason::ProxyPodsNotCreated,
        Reason::OptionIgnored,
        Reason::NodePortsOpen,
        Reason::NodeAnnotationIgnored,
        Reason::LongOutage,
        Reason::StatusContested,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DaemonSetApplied => "DaemonSetApplied",
            Reason::DaemonSetDeleted => "DaemonSetDeleted",
            Reason::PlanApplied => "PlanApplied",
            Reason::PlanDeleted => "PlanDeleted",
            Reason::OrphanDeleted => "OrphanDeleted",
            Reason::StatusUpdated => "StatusUpdated",
            Reason::ProxyPodReplaced => "ProxyPodReplaced",
            Reason::InvalidOption => "InvalidOption",
            Reason::NoEligibleNode => "NoEligibleNode",
            Reason::PortConflict => "PortConflict",
            Reason::ForwardingNameTaken => "DaemonSetNameTaken",
            Reason::ProxyPodUnschedulable => "ProxyPodUnschedulable",
            Reason::PortRefused => "PortRefused",
            Reason::ApplyRefused => "ApplyRefused",
            Reason::ProxyPodFailing => "ProxyPodFailing",
            Reason::ProxyPodsNotCreated => "ProxyPodsNotCreated",
            Reason::OptionIgnored => "OptionIgnored",
            Reason::NodePortsOpen => "NodePortsOpen",
            Reason::NodeAnnotationIgnored => "NodeAnnotationIgnored",
            Reason::LongOutage => "LongOutage",
            Reason::StatusContested => "StatusContested",
        }
    }

    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::DaemonSetApplied
                | Reason::DaemonSetDeleted
                | Reason::PlanApplied
                | Reason::PlanDeleted
                | Reason::OrphanDeleted
                | Reason::StatusUpdated
                | Reason::ProxyPodReplaced
        )
    }

    /// The `action` of the Event: what hostlb was doing when it happened.
    pub fn action(self) -> &'static str {
        match self {
            Reason::DaemonSetApplied => "ApplyDaemonSet",
            Reason::DaemonSetDeleted | Reason::OrphanDeleted => "DeleteDaemonSet",
            Reason::PlanApplied => "ApplyPlan",
            Reason::PlanDeleted => "DeletePlan",
            Reason::StatusUpdated => "PublishAddresses",
            Reason::ProxyPodReplaced => "ReplaceProxyPod",
            _ => "Reconcile",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A problem to tell the user about on the Service.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Warning {
    pub reason: Reason,
    pub message: String,
}

impl Warning {
    /// The message is cut to what an Event's note may contain.
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        debug_assert!(reason.is_warning(), "{reason} is not a warning");
        Warning { reason, message: bounded(message.into()) }
    }
}

/// One Warning per reason, in the order the reasons first come: what a Service is told costs
/// a few Events however many pods, nodes or items share a cause. Several messages of one
/// reason become one that names the first of them and counts the rest.
pub fn one_per_reason(warnings: Vec<Warning>) -> Vec<Warning> {
    let mut by_reason: Vec<(Reason, Vec<String>)> = Vec::new();
    for warning in warnings {
        match by_reason.iter_mut().find(|(reason, _)| *reason == warning.reason) {
            Some((_, messages)) if messages.contains(&warning.message) => {}
            Some((_, messages)) => messages.push(warning.message),
            None => by_reason.push((warning.reason, vec![warning.message])),
        }
    }
    by_reason.into_iter().map(|(reason, messages)| Warning::new(reason, joined(messages, "; "))).collect()
}

/// The API server refuses an Event whose note is longer (events.k8s.io/v1 `note`).
pub const MAX_NOTE_BYTES: usize = 1024;

/// How much of a note's end is kept when it is cut: long lists end with how many items they
/// left out, messages often with the setting to change.
const KEPT_ENDING: usize = 160;

/// The note cut to what the API server accepts: its beginning and its end, and how much was
/// left out between them.
pub fn bounded(note: String) -> String {
    if note.len() <= MAX_NOTE_BYTES {
        return note;
    }
    // Room for the marker, whose number has at most as many digits as the note's length.
    let marker_room = " ... (9999999999 bytes left out) ... ".len();
    let mut head = MAX_NOTE_BYTES - marker_room - KEPT_ENDING;
    while !note.is_char_boundary(head) {
        head -= 1;
    }
    let mut tail = note.len() - KEPT_ENDING;
    while !note.is_char_boundary(tail) {
        tail += 1;
    }
    format!("{} ... ({} bytes left out) ... {}", &note[..head], tail - head, &note[tail..])
}

/// How many items of a list an Event names before it only counts the rest.
const LISTED_ITEMS: usize = 20;

/// `a, b, c`, or `a, b, ... and 7 more` for long lists.
pub fn listed(items: impl IntoIterator<Item = String>) -> String {
    joined(items, ", ")
}

/// The first `LISTED_ITEMS` items with `separator` between them, and how many more there are.
pub fn joined(items: impl IntoIterator<Item = String>, separator: &str) -> String {
    let mut items = items.into_iter();
    let shown: Vec<String> = items.by_ref().take(LISTED_ITEMS).collect();
    let shown = shown.join(separator);
    match items.count() {
        0 => shown,
        left_out => format!("{shown} and {left_out} more"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_name_the_first_items_and_count_the_rest() {
        assert_eq!(listed(["a".to_string(), "b".to_string()]), "a, b");
        let ports = listed((1..=100).map(|p| format!("{p}/TCP")));
        assert!(ports.starts_with("1/TCP, 2/TCP"), "{ports}");
        assert!(ports.ends_with("20/TCP and 80 more"), "{ports}");
    }

    #[test]
    fn notes_are_cut_to_what_the_api_server_accepts() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(2000);
        let cut = bounded(long.clone());
        assert!(cut.len() <= MAX_NOTE_BYTES, "{} bytes", cut.len());
        let (head, rest) = cut.split_once(" ... (").unwrap();
        let (left_out, tail) = rest.split_once(" bytes left out) ... ").unwrap();
        assert_eq!(head.len() + left_out.parse::<usize>().unwrap() + tail.len(), long.len(), "{cut}");
        assert!(Warning::new(Reason::InvalidOption, long).message.len() <= MAX_NOTE_BYTES);
        let items = listed((0..2000).map(|i| format!("item {i} tolerates taint \"team-{i}.example.com/dedicated\"")));
        assert!(bounded(items).ends_with("and 1980 more"), "a long list still says how long it is");
    }

    #[test]
    fn warnings_of_one_reason_fold_into_one_naming_the_first_and_counting_the_rest() {
        let failing = (0..2000).map(|i| Warning::new(Reason::ProxyPodFailing, format!("pod p{i}: crashing")));
        let warnings: Vec<Warning> = [Warning::new(Reason::PortConflict, "port 80/TCP is taken")]
            .into_iter()
            .chain(failing)
            .chain([Warning::new(Reason::PortConflict, "port 80/TCP is taken")])
            .collect();
        let folded = one_per_reason(warnings);
        assert_eq!(
            folded.iter().map(|w| w.reason).collect::<Vec<_>>(),
            [Reason::PortConflict, Reason::ProxyPodFailing]
        );
        assert_eq!(folded[0].message, "port 80/TCP is taken", "a repeated message counts once");
        assert!(folded[1].message.starts_with("pod p0: crashing; pod p1: crashing; "), "{}", folded[1].message);
        assert!(folded[1].message.ends_with("pod p19: crashing and 1980 more"), "{}", folded[1].message);
    }
}
