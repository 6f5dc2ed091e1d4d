//! The JSON patch that removes the finalizer older versions of hostlb put on the Services they
//! served. It carries a `test` of exactly what it changes, so it fails if the finalizers changed
//! meanwhile, yet does not collide with unrelated writes (such as the status hostlb just wrote),
//! as a resourceVersion check would.

use json_patch::{Patch, PatchOperation};
use serde_json::json;

/// The patch that removes `finalizer` from `finalizers`; `None` when they do not hold it.
pub fn finalizer_removal(finalizers: &[String], finalizer: &str) -> Option<Patch> {
    let index = finalizers.iter().position(|f| f == finalizer)?;
    let operations = json!([
        { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer },
        { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
    ]);
    let operations: Vec<PatchOperation> =
        serde_json::from_value(operations).expect("the operations above are valid JSON patch operations");
    Some(Patch(operations))
}

#[cfg(test)]
#[path = "finalizer_tests.rs"]
mod tests;
