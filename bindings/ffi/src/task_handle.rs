//! [`Subscription`]: what `track_driver`, `join_chat`, `track_order`,
//! `watch_connection_state` and `Driver.watch_events` return. Updates flow
//! to its listener while it is alive; `cancel()` (or dropping it: Kotlin
//! `close()`, Swift `deinit`, Python garbage collection) removes the
//! listener at once and ends the wire subscription when nothing else wants
//! the channel. Keep it in a field for as long as the screen shows the
//! data (the `-ktx` Flows and Swift AsyncStreams do this for you).

use waypost_sdk::subscription as sdk;

/// A live subscription; ends on `cancel()` or when dropped.
#[derive(uniffi::Object)]
pub struct Subscription(sdk::Subscription);

impl From<sdk::Subscription> for Subscription {
    fn from(s: sdk::Subscription) -> Self {
        Self(s)
    }
}

#[uniffi::export]
impl Subscription {
    /// Ends the subscription (idempotent).
    pub fn cancel(&self) {
        self.0.cancel();
    }

    /// Whether `cancel()` was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.is_cancelled()
    }
}
