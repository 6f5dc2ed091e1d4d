//! A Service option or field hostlb cannot honour, and the errors of a list's items folded
//! into one.

use std::fmt;

use crate::reason::joined;

/// A Service option or field that hostlb cannot honour, named the way the user wrote it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The errors of the items of one list (thousands of invalid source ranges, say) as one error
/// on the list that names the first items and counts the rest: a Service costs a few
/// Warnings, whatever its lists contain.
pub(super) fn one_per_list(errors: Vec<FieldError>) -> Vec<FieldError> {
    let mut lists: Vec<(String, Vec<FieldError>)> = Vec::new();
    for error in errors {
        let kind = list_item(&error.field).map_or_else(|| error.field.clone(), |item| item.kind);
        match lists.iter_mut().find(|(known, _)| *known == kind) {
            Some((_, errors)) => errors.push(error),
            None => lists.push((kind, vec![error])),
        }
    }
    let fold = |(_, mut errors): (String, Vec<FieldError>)| {
        if errors.len() == 1 {
            return errors.remove(0);
        }
        let list = list_item(&errors[0].field).map_or_else(|| errors[0].field.clone(), |item| item.list);
        let items = errors.iter().map(|error| {
            let item = list_item(&error.field).map_or_else(String::new, |item| format!("{}: ", item.item));
            format!("{item}{}", error.message)
        });
        error(list, format!("{} items cannot be used: {}", errors.len(), joined(items, "; ")))
    };
    lists.into_iter().map(fold).collect()
}

/// A field of an item of a list, `spec.ports[3].protocol`, in its parts.
struct ListItem {
    /// `spec.ports`
    list: String,
    /// `[3].protocol`
    item: String,
    /// `spec.ports[].protocol`: the same for this field of every item.
    kind: String,
}

fn list_item(field: &str) -> Option<ListItem> {
    let mut from = 0;
    while let Some(open) = field[from..].find('[').map(|at| at + from) {
        let close = field[open..].find(']')? + open;
        let index = &field[open + 1..close];
        if !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()) {
            return Some(ListItem {
                list: field[..open].to_string(),
                item: field[open..].to_string(),
                kind: format!("{}[]{}", &field[..open], &field[close + 1..]),
            });
        }
        from = close + 1;
    }
    None
}

pub(super) fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { field: field.into(), message: message.into() }
}

pub fn annotation_error(key: &str, message: impl Into<String>) -> FieldError {
    error(format!("metadata.annotations[{key}]"), message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::ServiceBuilder;
    use crate::options::ServiceLb;

    #[test]
    fn errors_of_many_items_of_a_list_are_one_error_naming_the_first_twenty() {
        let ranges: Vec<String> = (0..5000).map(|i| format!("bad-{i}")).collect();
        let ranges: Vec<&str> = ranges.iter().map(String::as_str).collect();
        let service = ServiceBuilder::new("web").port("QUIC", 80, 0).port("GRE", 81, 0).source_ranges(&ranges).build();
        let errors = ServiceLb::from_service(&service).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["spec.ports", "spec.loadBalancerSourceRanges"]);
        assert!(errors[0].message.starts_with("2 items cannot be used: [0].protocol: unsupported protocol \"QUIC\"; "));
        let ranges = &errors[1].message;
        assert!(ranges.starts_with("5000 items cannot be used: [0]: \"bad-0\": "), "{ranges}");
        assert!(ranges.ends_with("and 4980 more"), "{ranges}");
        assert!(list_item("metadata.annotations[hostlb.io/tolerations]").is_none(), "a key is no index");
    }
}
