//! Storage and cross-process fan-out behind one narrow trait.
//!
//! Two implementations: [`memory::MemoryEngine`] (one process, nothing to
//! install, the default) and [`redis::RedisEngine`] (several processes share
//! state and fan out through Redis pub/sub). Both must behave the same; the
//! conformance tests in `engine/tests.rs` run against each.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_protocol::{Channel, Fix};

use crate::frame::Frame;

pub mod chat;
pub mod chat_memory;
pub mod chat_redis;
pub mod counted;
pub mod memory;
pub mod redis;

#[cfg(test)]
mod chat_tests;
#[cfg(test)]
mod tests;

/// A failure of the engine's backing store. Handlers map it to 503.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("engine is shutting down")]
    Closed,
}

/// A driver's latest position as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFix {
    pub fix: Fix,
    pub device_id: String,
    /// Server time the fix was stored, Unix ms.
    pub received_ms: i64,
}

/// What an ingest did.
#[derive(Debug, Clone, PartialEq)]
pub struct IngestOutcome {
    pub accepted: u32,
    pub duplicates: u32,
    /// Subscribers of `tracking:{driver}` across all processes.
    pub watchers: u64,
    /// The newest accepted fix, when it became the driver's latest position
    /// (only that one is broadcast live).
    pub new_latest: Option<Fix>,
    /// Whether the engine already broadcast `new_latest` (its `location`
    /// frame, [`Frame::location`]) as part of the ingest. Engines do so when
    /// they can make storing and broadcasting one step, so live frames of a
    /// driver go out in the order its latest position changed; otherwise the
    /// caller publishes.
    pub published: bool,
    /// The `ts` of the driver's latest position before this ingest, when
    /// `new_latest` replaced one that had not expired (what watchers saw
    /// last).
    pub previous_ts: Option<i64>,
}

/// When an ingest happens: the server time used for storage and expiry,
/// and when its request was received (the origin of the live frame, for
/// the delivery latency).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IngestTime {
    pub now_ms: i64,
    pub origin_us: i64,
    /// Whether the engine may broadcast the new latest position itself
    /// (false: the caller has frames to send before it, e.g. a `trail`, and
    /// publishes the `location` afterwards).
    pub publish_live: bool,
}

/// A request received at `now_ms`.
impl From<i64> for IngestTime {
    fn from(now_ms: i64) -> Self {
        Self {
            now_ms,
            origin_us: now_ms.saturating_mul(1000),
            publish_live: true,
        }
    }
}

/// Storage and fan-out. Implementations are shared (`Arc<dyn Engine>`) by
/// every request; no method holds a lock across an await.
#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// `"memory"` or `"redis"`.
    fn name(&self) -> &'static str;

    /// Stores a batch of validated fixes (in seq order) for one device.
    /// Atomic per fix and idempotent: a fix whose `(driver, device, seq)` was
    /// stored before counts as a duplicate and changes nothing, so a resent
    /// batch stores and broadcasts each fix once. Accepted fixes go to the
    /// trail (bounded); the newest becomes the latest position unless a newer
    /// one (by `ts`) is already there. The latest position expires after the
    /// online TTL. A new latest position is broadcast on `tracking:{driver}`
    /// by the engine itself when it reports `published`.
    async fn ingest(
        &self,
        driver_id: &str,
        device_id: &str,
        fixes: &[Fix],
        at: IngestTime,
    ) -> Result<IngestOutcome, EngineError>;

    /// The driver's latest position, `None` when unknown or expired.
    async fn latest(&self, driver_id: &str, now_ms: i64) -> Result<Option<StoredFix>, EngineError>;

    /// Trail fixes with `seq > after_seq`, lowest seq first, at most `limit`.
    async fn trail(
        &self,
        driver_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Fix>, EngineError>;

    /// Delivers a serialized frame to every subscriber of `channel` on every
    /// process (including this one, through the local hub). At most once:
    /// a process that is not subscribed at publish time does not get it.
    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError>;

    /// Makes the engine's subscription of `channel` match the local hub:
    /// subscribed while the hub has a local subscriber, unsubscribed when the
    /// last one left. Resolves once publishes on `channel` reach this process
    /// (so a client told `subscribed` misses nothing published afterwards).
    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError>;

    /// Subscribers of `channel` across every process.
    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError>;

    /// Whether the backing store answers (for `/readyz`).
    async fn ready(&self) -> Result<(), EngineError>;

    /// Stops background tasks. Idempotent.
    async fn shutdown(&self);
}
