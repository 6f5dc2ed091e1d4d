//! One kind of watched object, kept the way reconciles look it up, and what each watch event
//! changed in it: the triggers are computed from these changes, after they are committed.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use kube::runtime::watcher;
use kube::ResourceExt;

/// `namespace/name`, or `name` for cluster-scoped objects.
pub type Key = String;

pub fn key_of(object: &impl ResourceExt) -> Key {
    match object.namespace() {
        Some(namespace) => format!("{namespace}/{}", object.name_any()),
        None => object.name_any(),
    }
}

/// What one watch event changed under a key, as committed: `before` and `after` differ.
#[derive(Clone, Debug, PartialEq)]
pub struct Change<V> {
    pub key: Key,
    pub before: Option<V>,
    pub after: Option<V>,
}

/// One kind of object, each stored under its key and listed in the groups it belongs to.
/// Follows a watch as kube's reflector store does: a relist is buffered and swapped in whole
/// when complete, so a reconcile never sees half a list, and its changes are reported then,
/// all at once, as the difference between the old list and the new.
pub struct Section<V, G> {
    objects: HashMap<Key, (V, Vec<G>)>,
    groups: HashMap<G, BTreeMap<Key, V>>,
    relist: Option<Vec<(Key, V, Vec<G>)>>,
    synced: bool,
}

impl<V, G> Default for Section<V, G> {
    fn default() -> Self {
        Section { objects: HashMap::new(), groups: HashMap::new(), relist: None, synced: false }
    }
}

impl<V: Clone + PartialEq, G: Clone + Eq + Hash> Section<V, G> {
    /// Applies one watch event; `extract` says what to keep of an object and in which groups,
    /// or `None` to keep nothing of it. Returns the keys whose kept value changed: none while
    /// a relist is under way, every difference when it completes.
    pub fn apply<K: ResourceExt>(
        &mut self,
        event: &watcher::Event<K>,
        extract: impl Fn(&K) -> Option<(V, Vec<G>)>,
    ) -> Vec<Change<V>> {
        match event {
            watcher::Event::Apply(object) => {
                let key = key_of(object);
                let before = self.remove(&key);
                let after = extract(object).map(|(value, groups)| {
                    self.insert(key.clone(), value.clone(), groups);
                    value
                });
                changed(key, before, after).into_iter().collect()
            }
            watcher::Event::Delete(object) => {
                let key = key_of(object);
                let before = self.remove(&key);
                changed(key, before, None).into_iter().collect()
            }
            watcher::Event::Init => {
                self.relist = Some(Vec::new());
                Vec::new()
            }
            watcher::Event::InitApply(object) => {
                if let (Some(buffer), Some((value, groups))) = (self.relist.as_mut(), extract(object)) {
                    buffer.push((key_of(object), value, groups));
                }
                Vec::new()
            }
            watcher::Event::InitDone => {
                let mut before: HashMap<Key, V> = self.objects.drain().map(|(key, (value, _))| (key, value)).collect();
                self.groups.clear();
                let mut changes = Vec::new();
                for (key, value, groups) in self.relist.take().unwrap_or_default() {
                    changes.extend(changed(key.clone(), before.remove(&key), Some(value.clone())));
                    self.insert(key, value, groups);
                }
                changes.extend(before.into_iter().filter_map(|(key, value)| changed(key, Some(value), None)));
                changes.sort_by(|a, b| a.key.cmp(&b.key));
                self.synced = true;
                changes
            }
        }
    }

    fn insert(&mut self, key: Key, value: V, groups: Vec<G>) {
        for group in &groups {
            self.groups.entry(group.clone()).or_default().insert(key.clone(), value.clone());
        }
        self.objects.insert(key, (value, groups));
    }

    fn remove(&mut self, key: &str) -> Option<V> {
        let (value, groups) = self.objects.remove(key)?;
        for group in groups {
            if let Some(members) = self.groups.get_mut(&group) {
                members.remove(key);
                if members.is_empty() {
                    self.groups.remove(&group);
                }
            }
        }
        Some(value)
    }

    pub fn get(&self, key: &str) -> Option<&V> {
        self.objects.get(key).map(|(value, _)| value)
    }

    pub fn entries(&self) -> impl Iterator<Item = (&Key, &V)> {
        self.objects.iter().map(|(key, (value, _))| (key, value))
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.objects.values().map(|(value, _)| value)
    }

    /// The members of a group, in key order.
    pub fn group(&self, group: &G) -> impl Iterator<Item = &V> {
        self.groups.get(group).into_iter().flat_map(BTreeMap::values)
    }

    pub fn group_is_empty(&self, group: &G) -> bool {
        !self.groups.contains_key(group)
    }

    /// Whether the first complete list has arrived.
    pub fn synced(&self) -> bool {
        self.synced
    }
}

fn changed<V: PartialEq>(key: Key, before: Option<V>, after: Option<V>) -> Option<Change<V>> {
    (before != after).then_some(Change { key, before, after })
}
