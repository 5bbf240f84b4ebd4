//! Reports a [`Driver`](crate::driver::Driver) or
//! [`BuyerClient`](crate::buyer::BuyerClient) the app let go of without
//! `shutdown()`: when the foreign object was freed (Kotlin `close()` or its
//! Cleaner, Swift `deinit`, Python garbage collection) and `shutdown()` had
//! not been awaited, a warning goes to the SDK's logs (and so to the app's
//! `LogSink`). A client whose listener references it is never freed
//! without `close()` (the native side holds the listener, the listener the
//! client): that case cannot be detected at run time and is documented in
//! bindings/README.md instead.

use std::sync::atomic::{AtomicBool, Ordering};

/// Lives in an FFI object; warns on drop unless [`Lifecycle::shut_down`]
/// was called.
pub(crate) struct Lifecycle {
    what: &'static str,
    id: String,
    shut_down: AtomicBool,
}

impl Lifecycle {
    pub(crate) fn new(what: &'static str, id: String) -> Self {
        Self {
            what,
            id,
            shut_down: AtomicBool::new(false),
        }
    }

    /// `shutdown()` completed: releasing the object is now expected.
    pub(crate) fn shut_down(&self) {
        self.shut_down.store(true, Ordering::Relaxed);
    }
}

impl Drop for Lifecycle {
    fn drop(&mut self) {
        if !self.shut_down.load(Ordering::Relaxed) {
            tracing::warn!(
                target: "waypost::lifecycle",
                "{} {} was released without shutdown(): its background work was cancelled \
                 (pending work stays stored for the next open). Await shutdown() when done, \
                 then close() it (Kotlin); a listener that references its client keeps both \
                 alive until close()",
                self.what,
                self.id
            );
        }
    }
}
