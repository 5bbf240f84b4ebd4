//! Orders in process memory (the memory engine). One mutex over a map of
//! orders bounded in count: when full, the least recently written order is
//! evicted (it starts over like an expired Redis key). The driver index is
//! bounded per driver and in drivers.

use std::collections::{BTreeSet, HashMap, VecDeque};

use async_trait::async_trait;
use parking_lot::Mutex;
use waypost_protocol::{EntryBody, TimelineEntry};

use super::store::{Commit, CommitOutcome, Loaded, OrderStore, Timeline};
use super::{Order, OrderLimits};
use crate::engine::EngineError;

struct Rec {
    order: Order,
    log: VecDeque<TimelineEntry>,
    /// event id → seq, for retained entries.
    events: HashMap<String, u64>,
    /// Write clock tick of the last commit (eviction order).
    touched: u64,
}

#[derive(Default)]
struct Inner {
    orders: HashMap<String, Rec>,
    /// (touched, order id), oldest first.
    lru: BTreeSet<(u64, String)>,
    clock: u64,
    drivers: HashMap<String, VecDeque<String>>,
}

pub struct MemoryOrderStore {
    inner: Mutex<Inner>,
    limits: OrderLimits,
}

impl MemoryOrderStore {
    pub fn new(limits: OrderLimits) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            limits,
        }
    }

    /// Orders held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.inner.lock().orders.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl OrderStore for MemoryOrderStore {
    async fn load(&self, order_id: &str, event_id: Option<&str>) -> Result<Loaded, EngineError> {
        let inner = self.inner.lock();
        let Some(rec) = inner.orders.get(order_id) else {
            return Ok(Loaded::default());
        };
        Ok(Loaded {
            order: Some(rec.order.clone()),
            seen_event: event_id.and_then(|e| rec.events.get(e).copied()),
        })
    }

    async fn commit(&self, c: Commit<'_>) -> Result<CommitOutcome, EngineError> {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        let current = inner.orders.get(c.order_id);
        if let (Some(rec), Some(e)) = (current, c.event_id) {
            if let Some(seq) = rec.events.get(e) {
                return Ok(CommitOutcome::Duplicate(*seq));
            }
        }
        if current.map_or(0, |r| r.order.seq) != c.expected_seq {
            return Ok(CommitOutcome::Conflict);
        }
        inner.clock += 1;
        let tick = inner.clock;
        if current.is_none() {
            while inner.orders.len() >= self.limits.max_orders.max(1) {
                let Some((t, id)) = inner.lru.pop_first() else {
                    break;
                };
                debug_assert!(t < tick);
                inner.orders.remove(&id);
            }
        }
        let rec = inner
            .orders
            .entry(c.order_id.to_owned())
            .or_insert_with(|| Rec {
                order: c.order.clone(),
                log: VecDeque::new(),
                events: HashMap::new(),
                touched: 0,
            });
        inner.lru.remove(&(rec.touched, c.order_id.to_owned()));
        rec.touched = tick;
        inner.lru.insert((tick, c.order_id.to_owned()));
        rec.order = c.order.clone();
        if let (Some(e), Some(first)) = (c.event_id, c.entries.first()) {
            rec.events.insert(e.to_owned(), first.seq);
        }
        rec.log.extend(c.entries.iter().cloned());
        while rec.log.len() > self.limits.timeline_len.max(1) {
            if let Some(old) = rec.log.pop_front() {
                if let EntryBody::Status { event_id, .. } = &old.body {
                    rec.events.remove(event_id);
                }
            }
        }
        Ok(CommitOutcome::Committed)
    }

    async fn timeline(
        &self,
        order_id: &str,
        after: u64,
        limit: usize,
    ) -> Result<Timeline, EngineError> {
        let inner = self.inner.lock();
        let Some(rec) = inner.orders.get(order_id) else {
            return Ok(Timeline::default());
        };
        Ok(Timeline {
            entries: rec
                .log
                .iter()
                .filter(|e| e.seq > after)
                .take(limit)
                .cloned()
                .collect(),
            high_seq: rec.order.seq,
        })
    }

    async fn index_driver(
        &self,
        driver_id: &str,
        order_id: &str,
        add: bool,
    ) -> Result<(), EngineError> {
        let mut inner = self.inner.lock();
        if add
            && !inner.drivers.contains_key(driver_id)
            && inner.drivers.len() >= self.limits.max_orders.max(1)
        {
            // Bounded: drop an arbitrary driver's index (it is rebuilt by
            // that driver's next order event).
            if let Some(k) = inner.drivers.keys().next().cloned() {
                inner.drivers.remove(&k);
            }
        }
        let set = inner.drivers.entry(driver_id.to_owned()).or_default();
        set.retain(|o| o != order_id);
        if add {
            set.push_back(order_id.to_owned());
            while set.len() > self.limits.max_orders_per_driver.max(1) {
                set.pop_front();
            }
        }
        if set.is_empty() {
            inner.drivers.remove(driver_id);
        }
        Ok(())
    }

    async fn driver_orders(&self, driver_id: &str) -> Result<Vec<String>, EngineError> {
        Ok(self
            .inner
            .lock()
            .drivers
            .get(driver_id)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default())
    }
}
