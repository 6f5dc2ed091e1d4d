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
mod tests {
    use super::*;
    use hostlb_model::names::FINALIZER;
    use serde_json::Value;

    fn strings(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| v.to_string()).collect()
    }

    fn applied(document: Value, finalizers: &[&str]) -> Result<Value, json_patch::PatchError> {
        let patch = finalizer_removal(&strings(finalizers), FINALIZER).expect("a change is needed");
        let mut document = document;
        json_patch::patch(&mut document, &patch)?;
        Ok(document)
    }

    #[test]
    fn removes_only_the_finalizer() {
        let removed =
            applied(json!({ "metadata": { "finalizers": ["a", FINALIZER, "b"] } }), &["a", FINALIZER, "b"]).unwrap();
        assert_eq!(removed["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn nothing_to_do_without_the_finalizer() {
        assert!(finalizer_removal(&strings(&["other"]), FINALIZER).is_none());
        assert!(finalizer_removal(&[], FINALIZER).is_none());
    }

    #[test]
    fn fails_when_the_finalizers_changed_meanwhile() {
        let moved = json!({ "metadata": { "finalizers": ["new", "a", FINALIZER] } });
        assert!(applied(moved, &["a", FINALIZER]).is_err());
    }
}
