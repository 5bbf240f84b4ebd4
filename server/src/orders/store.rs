//! The narrow storage trait of orders. It knows nothing of statuses or
//! ETAs: it loads an order, commits a new state with its new timeline
//! entries if nobody committed in between (compare-and-set on the seq) and
//! the event id is new, reads the timeline, and keeps a driver → orders
//! index. The rules live in [`super::domain`] and [`super::Orders`], once.

use async_trait::async_trait;
use waypost_protocol::TimelineEntry;

use super::domain::Order;
use crate::engine::EngineError;

/// An order with what `load` was asked about its event id.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Loaded {
    pub order: Option<Order>,
    /// Seq of the entry of the asked event id, when it was applied before.
    pub seen_event: Option<u64>,
}

/// A state change to commit atomically.
#[derive(Debug, Clone, Copy)]
pub struct Commit<'a> {
    pub order_id: &'a str,
    /// The order's seq the change was computed from (0: create).
    pub expected_seq: u64,
    /// The new state; `order.seq == expected_seq + entries.len()`.
    pub order: &'a Order,
    /// New entries, seqs `expected_seq + 1 ..`.
    pub entries: &'a [TimelineEntry],
    /// Remembered with the first entry's seq, refused when known.
    pub event_id: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// The order's seq is not `expected_seq` any more: reload and retry.
    Conflict,
    /// The event id was applied before (seq of its entry); nothing stored.
    Duplicate(u64),
}

/// Entries above a seq, with the order's highest seq.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    /// Lowest seq first, at most the limit.
    pub entries: Vec<TimelineEntry>,
    pub high_seq: u64,
}

impl Timeline {
    pub fn more(&self) -> bool {
        self.entries.last().is_some_and(|e| e.seq < self.high_seq)
    }

    /// Whether every entry after `after` up to `high_seq` is here.
    pub fn complete_after(&self, after: u64) -> bool {
        if after > self.high_seq {
            return false;
        }
        let missing = self.high_seq - after;
        missing == 0
            || (self.entries.len() as u64 == missing
                && self.entries.first().is_some_and(|e| e.seq == after + 1))
    }
}

/// Order storage. Guarantees: a commit is atomic (state, entries, event id
/// together) and only happens on the expected seq, so timeline seqs are
/// gap-free from 1; an event id is applied at most once while its entry is
/// retained; the timeline keeps at most the configured number of entries;
/// an order untouched for the TTL expires.
#[async_trait]
pub trait OrderStore: Send + Sync + 'static {
    /// The order, and whether `event_id` was applied to it.
    async fn load(&self, order_id: &str, event_id: Option<&str>) -> Result<Loaded, EngineError>;

    async fn commit(&self, c: Commit<'_>) -> Result<CommitOutcome, EngineError>;

    /// Entries with `seq > after`, lowest first, at most `limit`.
    async fn timeline(
        &self,
        order_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Timeline, EngineError>;

    /// Adds (or removes) `order_id` to the driver's order set (bounded:
    /// adding beyond the per-driver limit drops the oldest-added).
    async fn index_driver(
        &self,
        driver_id: &str,
        order_id: &str,
        add: bool,
    ) -> Result<(), EngineError>;

    /// The order ids indexed for the driver (may include ended ones;
    /// callers check).
    async fn driver_orders(&self, driver_id: &str) -> Result<Vec<String>, EngineError>;
}
