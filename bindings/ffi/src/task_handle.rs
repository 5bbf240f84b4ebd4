//! [`Subscription`]: what `track_driver` and `join_chat` return. Updates
//! flow to the listener while it is alive; `cancel()` (or dropping it:
//! Kotlin `close()`, Swift `deinit`, Python garbage collection) ends them.
//! Keep it in a field for as long as the screen shows the data.

use std::sync::Mutex;

type Cancel = Box<dyn FnOnce() + Send>;

/// A live subscription; ends on `cancel()` or when dropped.
#[derive(uniffi::Object)]
pub struct Subscription {
    on_cancel: Mutex<Option<Cancel>>,
}

impl Subscription {
    pub(crate) fn new(on_cancel: impl FnOnce() + Send + 'static) -> Self {
        Self {
            on_cancel: Mutex::new(Some(Box::new(on_cancel))),
        }
    }
}

#[uniffi::export]
impl Subscription {
    /// Ends the subscription (idempotent).
    pub fn cancel(&self) {
        let f = self
            .on_cancel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(f) = f {
            f();
        }
    }

    /// Whether `cancel()` was called.
    pub fn is_cancelled(&self) -> bool {
        self.on_cancel
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .is_none()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

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
}
