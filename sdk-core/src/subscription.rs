//! Per-subscription delivery: a [`Subscription`] is what `track_driver`,
//! `join_chat`, `watch_connection_state` and `Driver::watch_events` return;
//! its listener hears only what it subscribed to, and cancelling it (or
//! dropping it) removes that listener at once and lets the client end the
//! wire subscription when nothing else wants the channel.
//!
//! `Listeners` is the registry behind it: listeners by key (a driver id,
//! a room, or `""` for client-wide streams), bounded in number, read by
//! the delivering task as a cloned list so that a callback may cancel its
//! own subscription without deadlocking.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::error::WaypostError;

/// Listeners one client may hold at once (all keys together).
pub const MAX_LISTENERS: usize = 1_024;

type Cancel = Box<dyn FnOnce() + Send>;

/// A live subscription: its listener gets updates until [`cancel`] is
/// called or the subscription is dropped. Cancelling is idempotent and
/// never blocks on the client's task.
///
/// [`cancel`]: Subscription::cancel
pub struct Subscription {
    on_cancel: Mutex<Option<Cancel>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

impl Subscription {
    /// A subscription that runs `on_cancel` once, when cancelled or dropped.
    pub fn new(on_cancel: impl FnOnce() + Send + 'static) -> Self {
        Self {
            on_cancel: Mutex::new(Some(Box::new(on_cancel))),
        }
    }

    /// Ends the subscription (idempotent).
    pub fn cancel(&self) {
        let f = self.on_cancel.lock().take();
        if let Some(f) = f {
            f();
        }
    }

    /// Whether [`cancel`](Self::cancel) was called.
    pub fn is_cancelled(&self) -> bool {
        self.on_cancel.lock().is_none()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// Listeners by key, each with a unique id.
pub(crate) struct Listeners<L: ?Sized> {
    next_id: u64,
    by_key: HashMap<String, Vec<(u64, Arc<L>)>>,
    key_of: HashMap<u64, String>,
}

impl<L: ?Sized> Default for Listeners<L> {
    fn default() -> Self {
        Self {
            next_id: 1,
            by_key: HashMap::new(),
            key_of: HashMap::new(),
        }
    }
}

impl<L: ?Sized> Listeners<L> {
    /// Adds a listener for `key`; its id, or `Busy` at [`MAX_LISTENERS`].
    pub fn add(&mut self, key: &str, listener: Arc<L>) -> Result<u64, WaypostError> {
        if self.key_of.len() >= MAX_LISTENERS {
            return Err(WaypostError::Busy {
                details: format!("more than {MAX_LISTENERS} subscriptions"),
            });
        }
        let id = self.next_id;
        self.next_id += 1;
        self.by_key
            .entry(key.to_owned())
            .or_default()
            .push((id, listener));
        self.key_of.insert(id, key.to_owned());
        Ok(id)
    }

    /// Removes listener `id`; its key when it existed.
    pub fn remove(&mut self, id: u64) -> Option<String> {
        let key = self.key_of.remove(&id)?;
        if let Some(list) = self.by_key.get_mut(&key) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                self.by_key.remove(&key);
            }
        }
        Some(key)
    }

    /// The listeners of `key` (a copy: call them without holding a lock).
    pub fn get(&self, key: &str) -> Vec<Arc<L>> {
        self.by_key
            .get(key)
            .map(|l| l.iter().map(|(_, l)| Arc::clone(l)).collect())
            .unwrap_or_default()
    }

    /// One listener by id.
    pub fn by_id(&self, id: u64) -> Option<Arc<L>> {
        let key = self.key_of.get(&id)?;
        self.by_key
            .get(key)?
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, l)| Arc::clone(l))
    }

    /// Whether any listener wants `key`.
    pub fn has(&self, key: &str) -> bool {
        self.by_key.contains_key(key)
    }

    pub fn len(&self) -> usize {
        self.key_of.len()
    }

    /// Drops every listener (the client stopped).
    pub fn clear(&mut self) {
        self.by_key.clear();
        self.key_of.clear();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn cancels_once_whether_cancelled_or_dropped() {
        let calls = Arc::new(AtomicU32::new(0));
        let counted = |calls: &Arc<AtomicU32>| {
            let calls = Arc::clone(calls);
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
            }
        };
        let sub = Subscription::new(counted(&calls));
        assert!(!sub.is_cancelled());
        sub.cancel();
        sub.cancel();
        assert!(sub.is_cancelled());
        drop(sub);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        drop(Subscription::new(counted(&calls)));
        assert_eq!(calls.load(Ordering::SeqCst), 2, "dropping cancels");
    }

    #[test]
    fn listeners_by_key_with_ids_and_a_bound() {
        let mut l: Listeners<str> = Listeners::default();
        let a = l.add("d1", Arc::from("a")).unwrap();
        let b = l.add("d1", Arc::from("b")).unwrap();
        let c = l.add("d2", Arc::from("c")).unwrap();
        assert_eq!(
            l.get("d1").iter().map(|s| &**s).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert_eq!(l.by_id(c).as_deref(), Some("c"));
        assert_eq!(l.remove(a).as_deref(), Some("d1"));
        assert_eq!(l.remove(a), None, "removed once");
        assert!(l.has("d1"));
        l.remove(b);
        assert!(!l.has("d1"), "last listener gone: nobody wants d1");
        assert!(l.get("d1").is_empty());
        for i in l.len()..MAX_LISTENERS {
            l.add(&format!("k{i}"), Arc::from("x")).unwrap();
        }
        assert!(matches!(
            l.add("one-more", Arc::from("x")),
            Err(WaypostError::Busy { .. })
        ));
        l.clear();
        assert_eq!(l.len(), 0);
    }
}
