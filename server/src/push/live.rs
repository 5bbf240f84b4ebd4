//! Which users are live on which pushed channel, per user and across
//! processes (issue 19: "a user who has no live connection subscribed to
//! that channel on any process" is pushed; anyone else watching the same
//! order does not count).
//!
//! Chat rooms already have per-user presence (refreshed by the socket's
//! heartbeats). Order (`order:{id}`) and vendor (`vendor:{id}`) channels
//! are tracked here:
//!
//! - **Local.** Every live subscription (WebSocket, SSE stream, long poll)
//!   counts `(channel, user)` in this process's table while it is open
//!   ([`LiveChannels::join`] / [`LiveChannels::leave`], called by
//!   `routes::subscription::Subscription`). Only while a push provider is
//!   configured: without one nothing is recorded.
//! - **Shared.** With the Redis engine the first local subscription of a
//!   `(channel, user)` marks it in the device store (a hash per
//!   `(channel, user)`: process → expiry), the last one unmarks it, and
//!   [`LiveChannels::refresh`] re-marks every local pair each
//!   [`LIVE_REFRESH`] so a process that died stops counting after
//!   [`LIVE_TTL`].
//! - **Asked** by the push fan-out: live here, or marked unexpired by any
//!   process.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use waypost_protocol::{Channel, ChannelKind};

use super::devices::DeviceStore;
use crate::engine::EngineError;

/// How long a shared mark lasts without a refresh.
pub const LIVE_TTL: Duration = Duration::from_secs(30);
/// How often this process re-marks its live pairs.
pub const LIVE_REFRESH: Duration = Duration::from_secs(10);

/// Whether subscriptions to `channel` are tracked here (chat rooms use
/// chat presence; other kinds are never pushed).
pub fn tracked(channel: &Channel) -> bool {
    matches!(channel.kind, ChannelKind::Order | ChannelKind::Vendor)
}

/// This process's live `(channel, user)` pairs and their shared marks.
pub struct LiveChannels {
    /// Identifies this process in shared marks.
    node: String,
    local: Mutex<HashMap<(String, String), u32>>,
    store: Arc<dyn DeviceStore>,
}

impl LiveChannels {
    pub fn new(store: Arc<dyn DeviceStore>) -> Self {
        Self {
            node: format!("{:016x}", rand::random::<u64>()),
            local: Mutex::default(),
            store,
        }
    }

    /// One more local subscription of `user` to `channel`; the first one
    /// is marked for every process before this returns (an error is
    /// logged: the refresh marks it later).
    pub async fn join(&self, channel: &str, user: &str) {
        let first = {
            let mut local = self.local.lock();
            let n = local
                .entry((channel.to_owned(), user.to_owned()))
                .or_insert(0);
            *n += 1;
            *n == 1
        };
        if first && self.store.shares_live() {
            let until = crate::now_ms() + LIVE_TTL.as_millis() as i64;
            let pair = [(channel.to_owned(), user.to_owned())];
            if let Err(e) = self.store.mark_live(&pair, &self.node, until).await {
                tracing::debug!(channel, user, error = %e, "live mark failed");
            }
        }
    }

    /// One local subscription fewer; true when it was the last one (the
    /// caller then runs [`LiveChannels::unmark`], which may wait on I/O).
    pub fn leave(&self, channel: &str, user: &str) -> bool {
        let mut local = self.local.lock();
        let key = (channel.to_owned(), user.to_owned());
        match local.get_mut(&key) {
            Some(n) if *n > 1 => {
                *n -= 1;
                false
            }
            Some(_) => {
                local.remove(&key);
                self.store.shares_live()
            }
            None => false,
        }
    }

    /// Removes this process's shared mark of `(channel, user)` unless a new
    /// local subscription came meanwhile.
    pub async fn unmark(&self, channel: &str, user: &str) {
        if self.is_live_here(channel, user) {
            return;
        }
        if let Err(e) = self.store.unmark_live(channel, user, &self.node).await {
            tracing::debug!(channel, user, error = %e, "live unmark failed");
        }
    }

    fn is_live_here(&self, channel: &str, user: &str) -> bool {
        self.local
            .lock()
            .contains_key(&(channel.to_owned(), user.to_owned()))
    }

    /// Whether `user` has a live subscription to `channel` here or, per
    /// the shared marks, on any process.
    pub async fn is_live(&self, channel: &str, user: &str) -> Result<bool, EngineError> {
        if self.is_live_here(channel, user) {
            return Ok(true);
        }
        if !self.store.shares_live() {
            return Ok(false);
        }
        self.store
            .live_elsewhere(channel, user, crate::now_ms())
            .await
    }

    /// Local `(channel, user)` pairs.
    pub fn local_len(&self) -> usize {
        self.local.lock().len()
    }

    /// Re-marks every local pair for [`LIVE_TTL`] (in chunks, so a long
    /// list never holds the lock across I/O).
    pub async fn refresh(&self) -> Result<(), EngineError> {
        if !self.store.shares_live() {
            return Ok(());
        }
        let pairs: Vec<(String, String)> = self.local.lock().keys().cloned().collect();
        let until = crate::now_ms() + LIVE_TTL.as_millis() as i64;
        for chunk in pairs.chunks(REFRESH_CHUNK) {
            self.store.mark_live(chunk, &self.node, until).await?;
        }
        Ok(())
    }
}

/// Pairs marked per store call by a refresh.
const REFRESH_CHUNK: usize = 64;
