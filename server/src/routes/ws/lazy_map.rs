//! A map that takes no room in a connection until it holds something.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

/// A `HashMap` behind an optional box: one word in the connection's task
/// (an empty `HashMap` is six) for the state most connections never use
/// (chat rooms, order timelines). Dropped again once empty.
#[allow(clippy::box_collection)] // boxed on purpose: one word while empty
pub(super) struct LazyMap<K, V>(Option<Box<HashMap<K, V>>>);

impl<K, V> Default for LazyMap<K, V> {
    fn default() -> Self {
        Self(None)
    }
}

impl<K: Eq + Hash, V> LazyMap<K, V> {
    pub fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|m| m.is_empty())
    }

    pub fn len(&self) -> usize {
        self.0.as_ref().map_or(0, |m| m.len())
    }

    pub fn get<Q>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.0.as_ref()?.get(k)
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        self.0.get_or_insert_with(Box::default).insert(k, v)
    }

    pub fn remove<Q>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.0.as_mut()?;
        let v = map.remove(k);
        if map.is_empty() {
            self.0 = None;
        }
        v
    }

    pub fn retain(&mut self, f: impl FnMut(&K, &mut V) -> bool) {
        if let Some(map) = self.0.as_mut() {
            map.retain(f);
            if map.is_empty() {
                self.0 = None;
            }
        }
    }

    pub fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().flat_map(|m| m.keys())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxed_only_while_it_holds_something() {
        assert_eq!(
            std::mem::size_of::<LazyMap<String, u64>>(),
            std::mem::size_of::<usize>()
        );
        let mut m: LazyMap<String, u64> = LazyMap::default();
        assert!(m.is_empty() && m.0.is_none());
        assert_eq!(m.get("a"), None);
        assert_eq!(m.insert("a".into(), 1), None);
        assert_eq!(m.insert("b".into(), 2), None);
        assert_eq!(m.insert("a".into(), 3), Some(1));
        assert_eq!((m.len(), m.get("a")), (2, Some(&3)));
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        assert_eq!(keys, ["a", "b"]);
        m.retain(|k, _| k == "b");
        assert_eq!(m.len(), 1);
        assert_eq!(m.remove("b"), Some(2));
        assert!(m.is_empty() && m.0.is_none(), "unboxed once empty");
        m.insert("c".into(), 4);
        m.retain(|_, _| false);
        assert!(m.0.is_none());
        assert_eq!(m.remove("c"), None);
    }
}
