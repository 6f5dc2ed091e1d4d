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
