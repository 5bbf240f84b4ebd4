//! Orders (issue 18): the lifecycle of one delivery order, its gap-free
//! timeline, and arrival/ETA from the assigned driver's fixes.
//!
//! - [`domain`]: pure rules — applying an event to an order (statuses only
//!   move forward, fields update), whether it is active.
//! - [`eta`]: pure arrival/departure/ETA from fixes by their `ts`.
//! - [`store`]: the narrow storage trait (load, compare-and-commit,
//!   timeline, the driver → orders index) with [`memory`] and [`redis`]
//!   implementations checked by one conformance suite (`tests.rs`).
//! - [`Orders`]: the operations the routes and the stream intake call,
//!   written once over any store (optimistic concurrency: load, decide in
//!   Rust, commit if nobody committed in between, retry).

pub mod domain;
mod error;
pub mod eta;
pub mod live;
pub mod memory;
pub mod presence;
pub mod redis;
pub mod store;
pub mod stream;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use waypost_protocol::{validate_id, OrderEvent, TimelineEntry};

use crate::engine::EngineError;
pub use domain::Order;
pub use error::OrderError;
use eta::{EtaConfig, Point};
use store::{Commit, CommitOutcome, OrderStore, Timeline};

/// Bounds of the order stores.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OrderLimits {
    /// Timeline entries kept per order (oldest trimmed; their event ids are
    /// forgotten with them, so this is also the de-duplication window).
    pub timeline_len: usize,
    /// An order untouched this long expires.
    pub ttl: Duration,
    /// Orders the memory store keeps (least recently updated evicted).
    pub max_orders: usize,
    /// Active orders listed per driver.
    pub max_orders_per_driver: usize,
}

impl Default for OrderLimits {
    fn default() -> Self {
        Self {
            timeline_len: 1000,
            ttl: Duration::from_secs(7 * 24 * 3600),
            max_orders: 100_000,
            max_orders_per_driver: 32,
        }
    }
}

/// Checks an event for `order_id` before it is applied (ids, bounds, and
/// that a body's `order_id`, when present, names the same order); the
/// message is the 400's.
pub fn check_event(order_id: &str, ev: &OrderEvent) -> Result<(), String> {
    validate_id("order_id", order_id).map_err(|e| e.to_string())?;
    ev.validate().map_err(|e| e.to_string())?;
    if ev.order_id.as_deref().is_some_and(|id| id != order_id) {
        return Err("order_id in the body differs from the path".into());
    }
    Ok(())
}

/// What [`Orders::apply_event`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Stored: publish `entry`. `before` is the order as it was (`None` when
    /// the event created it).
    New {
        before: Option<Box<Order>>,
        order: Box<Order>,
        entry: TimelineEntry,
    },
    /// The event id was applied before (seq of its entry); nothing stored.
    Duplicate { seq: u64 },
}

/// Commits retried on conflict before giving up with `Contended`.
const MAX_ATTEMPTS: u32 = 64;

/// Waits a little before retrying a conflicted commit (full jitter, at
/// most 50 µs × attempt), so many writers of one order spread out.
async fn conflict_pause(attempt: u32) {
    let cap_us = 50 * u64::from(attempt + 1);
    let us = rand::random::<u64>() % cap_us;
    tokio::time::sleep(std::time::Duration::from_micros(us)).await;
}

/// Order operations over a store.
#[derive(Clone)]
pub struct Orders {
    store: Arc<dyn OrderStore>,
    eta: EtaConfig,
}

impl Orders {
    pub fn new(store: Arc<dyn OrderStore>) -> Self {
        Self {
            store,
            eta: EtaConfig::default(),
        }
    }

    pub fn store(&self) -> &dyn OrderStore {
        self.store.as_ref()
    }

    /// Applies an order event: creates the order or updates it, appends one
    /// `status` entry, keeps the driver index. Idempotent by `event_id`.
    pub async fn apply_event(
        &self,
        order_id: &str,
        ev: &OrderEvent,
        now_ms: i64,
    ) -> Result<Applied, OrderError> {
        for attempt in 0..MAX_ATTEMPTS {
            let loaded = self.store.load(order_id, Some(&ev.event_id)).await?;
            if let Some(seq) = loaded.seen_event {
                // Re-run the index step: a process that died between the
                // commit and the index update is repaired by the replay.
                if let Some(o) = &loaded.order {
                    self.sync_index(None, o).await?;
                }
                return Ok(Applied::Duplicate { seq });
            }
            let before = loaded.order;
            let (order, entry) = domain::apply(before.as_ref(), order_id, ev, now_ms)?;
            let commit = Commit {
                order_id,
                expected_seq: before.as_ref().map_or(0, |o| o.seq),
                order: &order,
                entries: std::slice::from_ref(&entry),
                event_id: Some(&ev.event_id),
            };
            match self.store.commit(commit).await? {
                CommitOutcome::Committed => {
                    self.sync_index(before.as_ref(), &order).await?;
                    return Ok(Applied::New {
                        before: before.map(Box::new),
                        order: Box::new(order),
                        entry,
                    });
                }
                CommitOutcome::Duplicate(seq) => return Ok(Applied::Duplicate { seq }),
                CommitOutcome::Conflict => conflict_pause(attempt).await,
            }
        }
        Err(OrderError::Contended)
    }

    /// Feeds a driver's newly accepted fixes (ts order) to each of its
    /// active orders; returns the entries stored, per order, to publish.
    pub async fn observe_fixes(
        &self,
        driver_id: &str,
        fixes: &[Point],
        now_ms: i64,
    ) -> Result<Vec<(Order, Vec<TimelineEntry>)>, OrderError> {
        let mut out = Vec::new();
        for order_id in self.store.driver_orders(driver_id).await? {
            if let Some(done) = self
                .observe_one(&order_id, driver_id, fixes, now_ms)
                .await?
            {
                out.push(done);
            }
        }
        Ok(out)
    }

    async fn observe_one(
        &self,
        order_id: &str,
        driver_id: &str,
        fixes: &[Point],
        now_ms: i64,
    ) -> Result<Option<(Order, Vec<TimelineEntry>)>, OrderError> {
        for attempt in 0..MAX_ATTEMPTS {
            let Some(before) = self.store.load(order_id, None).await?.order else {
                return Ok(None);
            };
            if !before.is_active() || before.driver_id.as_deref() != Some(driver_id) {
                return Ok(None);
            }
            let Some(dest) = before.destination else {
                return Ok(None);
            };
            let mut order = before.clone();
            let mut entries = Vec::new();
            for p in fixes {
                for (body, ts) in order.tracker.observe(*p, &dest, driver_id, &self.eta) {
                    entries.push(TimelineEntry {
                        seq: order.seq + entries.len() as u64 + 1,
                        body,
                        ts,
                    });
                }
            }
            if order.tracker == before.tracker {
                return Ok(None);
            }
            order.seq += entries.len() as u64;
            order.eta_s = if order.tracker.inside {
                Some(0)
            } else {
                order.tracker.eta_sent.map(|(s, _)| s)
            };
            if !entries.is_empty() {
                order.updated_ts = now_ms;
            }
            let commit = Commit {
                order_id,
                expected_seq: before.seq,
                order: &order,
                entries: &entries,
                event_id: None,
            };
            match self.store.commit(commit).await? {
                CommitOutcome::Committed => return Ok(Some((order, entries))),
                CommitOutcome::Conflict => conflict_pause(attempt).await,
                CommitOutcome::Duplicate(_) => return Ok(None),
            }
        }
        Err(OrderError::Contended)
    }

    /// The driver's active orders (validated against each order, so a
    /// stale index entry is never reported).
    pub async fn active_orders_of(&self, driver_id: &str) -> Result<Vec<Order>, OrderError> {
        let mut out = Vec::new();
        for id in self.store.driver_orders(driver_id).await? {
            if let Some(o) = self.store.load(&id, None).await?.order {
                if o.is_active() && o.driver_id.as_deref() == Some(driver_id) {
                    out.push(o);
                } else {
                    self.store.index_driver(driver_id, &id, false).await?;
                }
            }
        }
        Ok(out)
    }

    pub async fn get(&self, order_id: &str) -> Result<Option<Order>, OrderError> {
        Ok(self.store.load(order_id, None).await?.order)
    }

    pub async fn timeline(
        &self,
        order_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Timeline, OrderError> {
        Ok(self.store.timeline(order_id, after, limit).await?)
    }

    /// Keeps `driver → active orders` in step with a committed change. On
    /// Redis the index lives under the driver's hash tag, so it cannot be
    /// part of the order's atomic commit; it is written after it, and a
    /// replayed event or a read repairs it.
    async fn sync_index(&self, before: Option<&Order>, after: &Order) -> Result<(), EngineError> {
        let was = before
            .filter(|o| o.is_active())
            .and_then(|o| o.driver_id.as_deref());
        let now = Some(after)
            .filter(|o| o.is_active())
            .and_then(|o| o.driver_id.as_deref());
        if let Some(d) = was.filter(|d| Some(*d) != now) {
            self.store.index_driver(d, &after.order_id, false).await?;
        }
        if let Some(d) = now {
            self.store.index_driver(d, &after.order_id, true).await?;
        }
        if let (None, Some(d)) = (now, after.driver_id.as_deref()) {
            if after.status.is_final() {
                self.store.index_driver(d, &after.order_id, false).await?;
            }
        }
        Ok(())
    }
}
