//! Storage and cross-process fan-out, split where backends differ: a
//! [`Bus`] (publish, subscriptions, watcher counts) and stores behind
//! narrow traits ([`TrackingStore`] here; chat, presence and notifications
//! in [`chat`]; orders in `crate::orders`). [`open`] builds all of them
//! from the configuration with one connection setup and one key prefix.
//!
//! Backends: memory (one process, nothing to install, the default; one
//! [`memory::MemoryEngine`] is bus and store), Redis (stores and pub/sub bus
//! on one Redis, [`redis`]) and NATS as the bus with the stores on Redis
//! ([`nats`]). Each trait has one conformance suite (`engine/tests.rs`) run
//! against every backend.

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use waypost_protocol::{Channel, Fix};

use crate::frame::Frame;

pub mod chat;
pub mod chat_memory;
pub mod chat_redis;
pub mod counted;
pub mod memory;
pub mod nats;
pub mod open;
pub mod redis;
mod tasks;

#[cfg(test)]
mod chat_tests;
#[cfg(test)]
mod tests;

/// A failure of the engine's backing store. Handlers map it to 503.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("redis: {0}")]
    Redis(String),
    #[error("nats: {0}")]
    Nats(String),
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

/// Where drivers' positions are kept: the latest one and a bounded trail,
/// de-duplicated per device. Shared (`Arc<dyn TrackingStore>`) by every
/// request; no method holds a lock across an await.
#[async_trait]
pub trait TrackingStore: Send + Sync + 'static {
    /// `"memory"` or `"redis"`.
    fn name(&self) -> &'static str;

    /// Stores a batch of validated fixes (in seq order) for one device.
    /// Atomic per fix and idempotent: a fix whose `(driver, device, seq)` was
    /// stored before counts as a duplicate and changes nothing, so a resent
    /// batch stores and broadcasts each fix once. Accepted fixes go to the
    /// trail (bounded); the newest becomes the latest position unless a newer
    /// one (by `ts`) is already there. The latest position expires after the
    /// online TTL. A store paired with its own bus may broadcast the new
    /// latest position itself (then it reports `published`); otherwise
    /// [`Engine::ingest`] publishes it on the bus.
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

    /// Whether the store answers (for `/readyz`). The chat, presence and
    /// notification stores of the same backend share its connection, so
    /// this covers them too.
    async fn ready(&self) -> Result<(), EngineError>;
}

/// Cross-process fan-out: publish, per-channel subscriptions that follow the
/// local hub, and watcher counts. Shared (`Arc<dyn Bus>`).
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `"memory"`, `"redis"` or `"nats"`.
    fn name(&self) -> &'static str;

    /// Delivers a serialized frame to every subscriber of `channel` on every
    /// process (including this one, through the local hub). At most once:
    /// a process that is not subscribed at publish time does not get it.
    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError>;

    /// Makes the bus's subscription of `channel` match the local hub:
    /// subscribed while the hub has a local subscriber, unsubscribed when the
    /// last one left. Resolves once publishes on `channel` reach this process
    /// (so a client told `subscribed` misses nothing published afterwards).
    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError>;

    /// Subscribers of `channel` across every process.
    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError>;

    /// Whether the bus is connected (for `/readyz`).
    async fn ready(&self) -> Result<(), EngineError>;

    /// Counts the times the bus resubscribed every local channel after
    /// losing its connection (0 until the first loss). Publishes made while
    /// it was down never reach this process, so a change is the cue to
    /// re-dispatch the newest stored item of every local channel (see
    /// `crate::tail`).
    fn resubscribed(&self) -> watch::Receiver<u64>;

    /// Stops background tasks. Idempotent.
    async fn shutdown(&self);
}

/// How long [`Engine::publish`] waits before its one retry.
pub const PUBLISH_RETRY_AFTER: std::time::Duration = std::time::Duration::from_millis(200);

/// A bus and the stores it fans out for, built together by [`open`]: what
/// handlers use. A new latest position is broadcast once: by the store when
/// it reports `published` (Redis store with the Redis bus: stored and
/// published in one atomic step), else here after it was stored.
#[derive(Clone)]
pub struct Engine {
    pub bus: Arc<dyn Bus>,
    pub tracking: Arc<dyn TrackingStore>,
    name: &'static str,
    /// Whether a resent batch publishes the latest position again: only
    /// behind `--redis-wait-replicas`, where a first attempt can be stored
    /// and yet answered with an error before its live frame went out.
    republish_resends: bool,
}

impl Engine {
    /// `name` is what `/readyz` and the dashboard report.
    pub fn new(name: &'static str, bus: Arc<dyn Bus>, tracking: Arc<dyn TrackingStore>) -> Self {
        Self {
            bus,
            tracking,
            name,
            republish_resends: false,
        }
    }

    /// Makes a resent batch (all duplicates) publish the driver's latest
    /// position again, and a resent chat message its room frame: for
    /// stores whose acknowledged writes wait for replicas, where a first
    /// attempt may have been stored but refused (`WAIT` not met) before
    /// its frame went out. Receivers drop a seq they already have.
    pub fn republishing_resends(mut self, on: bool) -> Self {
        self.republish_resends = on;
        self
    }

    /// See [`Engine::republishing_resends`].
    pub fn republishes_resends(&self) -> bool {
        self.republish_resends
    }

    /// `"memory"`, `"redis"`, `"nats+redis"`, ...
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Stores the batch ([`TrackingStore::ingest`]) and broadcasts a new
    /// latest position unless the store already did (or the caller asked to
    /// publish it itself: `publish_live` false, `published` stays false).
    pub async fn ingest(
        &self,
        driver_id: &str,
        device_id: &str,
        fixes: &[Fix],
        at: IngestTime,
    ) -> Result<IngestOutcome, EngineError> {
        let mut outcome = self
            .tracking
            .ingest(driver_id, device_id, fixes, at)
            .await?;
        // Unless the caller has frames to send first (`publish_live`).
        if let (Some(fix), false, true) = (&outcome.new_latest, outcome.published, at.publish_live)
        {
            let frame = Frame::location(driver_id, fix, at.origin_us);
            self.publish(&Channel::tracking(driver_id), frame).await?;
            outcome.published = true;
        } else if self.republish_resends
            && outcome.accepted == 0
            && outcome.duplicates > 0
            && at.publish_live
        {
            // A resent batch: its first attempt may have been stored but
            // answered with an error before (or without) its live frame
            // (`--redis-wait-replicas` not met during a failover). The
            // latest position goes out again; receivers drop a seq they have.
            if let Some(l) = self.tracking.latest(driver_id, at.now_ms).await? {
                let frame = Frame::location(driver_id, &l.fix, at.origin_us);
                self.publish(&Channel::tracking(driver_id), frame).await?;
            }
        }
        Ok(outcome)
    }

    pub async fn latest(
        &self,
        driver_id: &str,
        now_ms: i64,
    ) -> Result<Option<StoredFix>, EngineError> {
        self.tracking.latest(driver_id, now_ms).await
    }

    pub async fn trail(
        &self,
        driver_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Fix>, EngineError> {
        self.tracking.trail(driver_id, after_seq, limit).await
    }

    /// Publishes on the bus; a failed publish is tried once more after
    /// [`PUBLISH_RETRY_AFTER`]. Callers publish what they stored: a publish
    /// lost to a blip (a command connection replaced during a failover)
    /// would otherwise reach subscribers whose own bus stayed up only with
    /// the next item (receivers drop a repeat by seq, so a retry of a
    /// publish that did go out is harmless).
    pub async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        match self.bus.publish(channel, frame.clone()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(error = %e, %channel, "publish failed; trying once more");
                tokio::time::sleep(PUBLISH_RETRY_AFTER).await;
                self.bus.publish(channel, frame).await
            }
        }
    }

    pub async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        self.bus.sync_subscription(channel).await
    }

    pub async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.bus.watchers(channel).await
    }

    /// Ready when the bus and the stores are reachable.
    pub async fn ready(&self) -> Result<(), EngineError> {
        self.bus.ready().await?;
        self.tracking.ready().await
    }

    /// Stops the bus's background tasks. Idempotent.
    pub async fn shutdown(&self) {
        self.bus.shutdown().await;
    }
}

/// `url` without its credentials (`rediss://user:secret@host` ->
/// `rediss://***@host`), for messages.
pub fn redacted(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}
