//! The reasons of the Events hostlb publishes, and the Warnings a decision finds: what users
//! see on their Services and what the tests look for.

use std::fmt;

/// The reason of every Event hostlb publishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    DaemonSetApplied,
    DaemonSetDeleted,
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
    /// A DaemonSet of the name hostlb would use exists and is not hostlb's for this Service.
    DaemonSetNameTaken,
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
}

impl Reason {
    pub const ALL: [Reason; 17] = [
        Reason::DaemonSetApplied,
        Reason::DaemonSetDeleted,
        Reason::OrphanDeleted,
        Reason::StatusUpdated,
        Reason::ProxyPodReplaced,
        Reason::InvalidOption,
        Reason::NoEligibleNode,
        Reason::PortConflict,
        Reason::DaemonSetNameTaken,
        Reason::ProxyPodUnschedulable,
        Reason::PortRefused,
        Reason::ApplyRefused,
        Reason::ProxyPodFailing,
        Reason::ProxyPodsNotCreated,
        Reason::OptionIgnored,
        Reason::NodePortsOpen,
        Reason::NodeAnnotationIgnored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::DaemonSetApplied => "DaemonSetApplied",
            Reason::DaemonSetDeleted => "DaemonSetDeleted",
            Reason::OrphanDeleted => "OrphanDeleted",
            Reason::StatusUpdated => "StatusUpdated",
            Reason::ProxyPodReplaced => "ProxyPodReplaced",
            Reason::InvalidOption => "InvalidOption",
            Reason::NoEligibleNode => "NoEligibleNode",
            Reason::PortConflict => "PortConflict",
            Reason::DaemonSetNameTaken => "DaemonSetNameTaken",
            Reason::ProxyPodUnschedulable => "ProxyPodUnschedulable",
            Reason::PortRefused => "PortRefused",
            Reason::ApplyRefused => "ApplyRefused",
            Reason::ProxyPodFailing => "ProxyPodFailing",
            Reason::ProxyPodsNotCreated => "ProxyPodsNotCreated",
            Reason::OptionIgnored => "OptionIgnored",
            Reason::NodePortsOpen => "NodePortsOpen",
            Reason::NodeAnnotationIgnored => "NodeAnnotationIgnored",
        }
    }

    pub fn is_warning(self) -> bool {
        !matches!(
            self,
            Reason::DaemonSetApplied
                | Reason::DaemonSetDeleted
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
    pub fn new(reason: Reason, message: impl Into<String>) -> Self {
        debug_assert!(reason.is_warning(), "{reason} is not a warning");
        Warning { reason, message: message.into() }
    }
}

/// How many items of a list an Event names before it only counts the rest.
const LISTED_ITEMS: usize = 20;

/// `a, b, c`, or `a, b, ... and 7 more` for long lists.
pub fn listed(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().collect();
    let shown = items[..items.len().min(LISTED_ITEMS)].join(", ");
    match items.len().saturating_sub(LISTED_ITEMS) {
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
}
