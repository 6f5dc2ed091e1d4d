//! The JSON patches that add or remove hostlb's finalizer. Each carries a `test` of exactly what
//! it changes, so it fails if the finalizers changed meanwhile, yet does not collide with
//! unrelated writes (such as the status hostlb just wrote), as a resourceVersion check would.

use json_patch::{Patch, PatchOperation};
use serde_json::json;

/// The patch that makes `finalizers` hold `finalizer` (`present`) or not; `None` when they
/// already do.
pub fn finalizer_patch(finalizers: &[String], finalizer: &str, present: bool) -> Option<Patch> {
    let index = finalizers.iter().position(|f| f == finalizer);
    let operations = match (present, index) {
        (true, Some(_)) | (false, None) => return None,
        // An absent list reads as null to the API server's `test`.
        (true, None) if finalizers.is_empty() => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": null },
            { "op": "add", "path": "/metadata/finalizers", "value": [finalizer] },
        ]),
        (true, None) => json!([
            { "op": "test", "path": "/metadata/finalizers", "value": finalizers },
            { "op": "add", "path": "/metadata/finalizers/-", "value": finalizer },
        ]),
        (false, Some(index)) => json!([
            { "op": "test", "path": format!("/metadata/finalizers/{index}"), "value": finalizer },
            { "op": "remove", "path": format!("/metadata/finalizers/{index}") },
        ]),
    };
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

    fn applied(document: Value, finalizers: &[&str], present: bool) -> Result<Value, json_patch::PatchError> {
        let patch = finalizer_patch(&strings(finalizers), FINALIZER, present).expect("a change is needed");
        let mut document = document;
        json_patch::patch(&mut document, &patch)?;
        Ok(document)
    }

    #[test]
    fn adds_the_finalizer_beside_others_and_removes_only_it() {
        let added = applied(json!({ "metadata": { "finalizers": ["other"] } }), &["other"], true).unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!(["other", FINALIZER]));
        let removed =
            applied(json!({ "metadata": { "finalizers": ["a", FINALIZER, "b"] } }), &["a", FINALIZER, "b"], false)
                .unwrap();
        assert_eq!(removed["metadata"]["finalizers"], json!(["a", "b"]));
    }

    #[test]
    fn adds_the_first_finalizer() {
        let patch = finalizer_patch(&[], FINALIZER, true).unwrap();
        assert_eq!(
            serde_json::to_value(&patch).unwrap()[1],
            json!({ "op": "add", "path": "/metadata/finalizers", "value": [FINALIZER] })
        );
        let added = applied(json!({ "metadata": { "finalizers": null } }), &[], true).unwrap();
        assert_eq!(added["metadata"]["finalizers"], json!([FINALIZER]));
    }

    #[test]
    fn nothing_to_do_when_the_finalizer_is_already_as_wanted() {
        assert!(finalizer_patch(&strings(&[FINALIZER]), FINALIZER, true).is_none());
        assert!(finalizer_patch(&strings(&["other"]), FINALIZER, false).is_none());
    }

    #[test]
    fn fails_when_the_finalizers_changed_meanwhile() {
        let moved = json!({ "metadata": { "finalizers": ["new", "a", FINALIZER] } });
        assert!(applied(moved, &["a", FINALIZER], false).is_err());
        let grown = json!({ "metadata": { "finalizers": ["other", "new"] } });
        assert!(applied(grown, &["other"], true).is_err());
    }
}
