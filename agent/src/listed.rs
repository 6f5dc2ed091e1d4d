//! Objects of one watch as the follower and the node agent act on them: a relist is gathered
//! aside and replaces what was known only once complete, so that a half-listed watch never
//! removes rules.

use std::collections::BTreeMap;

use kube::runtime::watcher;
use kube::ResourceExt;

/// What is kept of each object, by `namespace/name`.
#[derive(Debug)]
pub struct Listed<T> {
    pub current: BTreeMap<String, T>,
    relist: BTreeMap<String, T>,
    /// Whether a first complete list has arrived.
    pub synced: bool,
}

impl<T> Default for Listed<T> {
    fn default() -> Self {
        Listed { current: BTreeMap::new(), relist: BTreeMap::new(), synced: false }
    }
}

impl<T: PartialEq> Listed<T> {
    /// Takes one watch event, keeping what `view` reads of each object (an object it reads
    /// nothing of is left out); true when `current` may have changed.
    pub fn apply<K: ResourceExt>(&mut self, event: watcher::Event<K>, view: impl Fn(&K) -> Option<T>) -> bool {
        let key = |object: &K| format!("{}/{}", object.namespace().unwrap_or_default(), object.name_any());
        match event {
            watcher::Event::Init => {
                self.relist.clear();
                false
            }
            watcher::Event::InitApply(object) => {
                if let Some(value) = view(&object) {
                    self.relist.insert(key(&object), value);
                }
                false
            }
            watcher::Event::InitDone => {
                self.current = std::mem::take(&mut self.relist);
                self.synced = true;
                true
            }
            watcher::Event::Apply(object) => match view(&object) {
                Some(value) => {
                    let key = key(&object);
                    let changed = self.current.get(&key) != Some(&value);
                    self.current.insert(key, value);
                    changed
                }
                None => self.current.remove(&key(&object)).is_some(),
            },
            watcher::Event::Delete(object) => self.current.remove(&key(&object)).is_some(),
        }
    }
}

#[cfg(test)]
mod tests {
    use kube::api::{DynamicObject, ObjectMeta};
    use serde_json::json;

    use super::*;
    use crate::endpoint_slice;

    fn object(name: &str, address: &str) -> DynamicObject {
        DynamicObject {
            types: None,
            metadata: ObjectMeta { name: Some(name.into()), namespace: Some("shop".into()), ..Default::default() },
            data: json!({"addressType": "IPv4", "endpoints": [{"addresses": [address]}]}),
        }
    }

    #[test]
    fn a_relist_replaces_what_was_known_only_when_complete() {
        let mut slices = Listed::default();
        let names = |slices: &Listed<_>| slices.current.keys().cloned().collect::<Vec<String>>();
        assert!(slices.apply(watcher::Event::Apply(object("a", "10.0.0.1")), endpoint_slice));
        assert!(!slices.apply(watcher::Event::Apply(object("a", "10.0.0.1")), endpoint_slice), "unchanged");
        assert!(!slices.synced);
        assert!(!slices.apply(watcher::Event::Init, endpoint_slice));
        assert!(!slices.apply(watcher::Event::InitApply(object("b", "10.0.0.2")), endpoint_slice));
        assert_eq!(names(&slices), ["shop/a"], "the old state stands during the relist");
        assert!(slices.apply(watcher::Event::InitDone, endpoint_slice));
        assert!(slices.synced);
        assert_eq!(names(&slices), ["shop/b"]);
        assert!(slices.apply(watcher::Event::Delete(object("b", "10.0.0.2")), endpoint_slice));
        assert!(!slices.apply(watcher::Event::Delete(object("b", "10.0.0.2")), endpoint_slice));
        let unreadable = DynamicObject { data: json!({"endpoints": "many"}), ..object("c", "") };
        slices.apply(watcher::Event::Apply(unreadable), endpoint_slice);
        assert!(slices.current.is_empty(), "an unreadable slice is skipped");
    }
}
