//! What a Service asks of its published addresses: `hostlb.io/publish`, `hostlb.io/max-nodes`
//! and `hostlb.io/ip-mode`.

use std::collections::BTreeMap;

use crate::address::{AddressKind, AddressPolicy, IpMode};
use crate::names;

use super::field_error::annotation_error;
use super::FieldError;

/// What a Service asks of its addresses; unset means the controller's defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressOptions {
    pub kinds: Option<Vec<AddressKind>>,
    pub max_nodes: Option<usize>,
}

impl AddressOptions {
    /// The controller's defaults with what the Service asks for.
    pub fn policy(&self, defaults: &AddressPolicy) -> AddressPolicy {
        AddressPolicy {
            address_type: defaults.address_type,
            kinds: self.kinds.clone().unwrap_or_else(|| defaults.kinds.clone()),
            max_nodes: self.max_nodes.or(defaults.max_nodes),
            node_asked: defaults.node_asked.clone(),
        }
    }
}

/// The Service's `hostlb.io/publish` (`ip`, `hostname` or both, comma-separated) and
/// `hostlb.io/max-nodes` (a positive number): what can be read of them.
pub(super) fn address_options(annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) -> AddressOptions {
    let kinds = annotations.get(names::ANNOTATION_PUBLISH).and_then(|text| {
        let mut kinds = Vec::new();
        for part in text.split(',').map(str::trim) {
            match AddressKind::from_name(part) {
                Some(kind) => kinds.push(kind),
                None => {
                    errors.push(annotation_error(
                        names::ANNOTATION_PUBLISH,
                        format!("{part:?} is neither ip nor hostname"),
                    ));
                    return None;
                }
            }
        }
        kinds.sort();
        kinds.dedup();
        Some(kinds)
    });
    let max_nodes = annotations.get(names::ANNOTATION_MAX_NODES).and_then(|text| {
        let max = text.trim().parse::<usize>().ok().filter(|max| *max > 0);
        if max.is_none() {
            errors.push(annotation_error(names::ANNOTATION_MAX_NODES, format!("{text:?} is not a positive number")));
        }
        max
    });
    AddressOptions { kinds, max_nodes }
}

/// The `ipMode` the Service asks for, if any.
pub(super) fn requested_ip_mode(annotations: &BTreeMap<String, String>) -> Result<Option<IpMode>, FieldError> {
    let Some(value) = annotations.get(names::ANNOTATION_IP_MODE) else { return Ok(None) };
    IpMode::from_api_name(value)
        .map(Some)
        .ok_or_else(|| annotation_error(names::ANNOTATION_IP_MODE, format!("{value:?} is neither VIP nor Proxy")))
}
