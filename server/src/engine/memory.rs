//! The in-memory engine: one process, nothing to install. State lives in
//! sharded maps; publishing hands the frame straight to the local hub.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::watch;
use waypost_protocol::{Channel, Fix};

use super::{Bus, Engine, EngineError, IngestOutcome, IngestTime, StoredFix, TrackingStore};
use crate::config::Limits;
use crate::frame::Frame;
use crate::hub::Hub;

const SHARDS: usize = 16;
/// Devices remembered per driver for de-duplication (oldest forgotten).
const MAX_DEVICES_PER_DRIVER: usize = 8;

/// Remembers the last `cap` seqs of one device; anything at or below the
/// oldest forgotten seq counts as seen.
#[derive(Debug, Default)]
struct DedupWindow {
    seen: BTreeSet<u64>,
    floor: Option<u64>,
    last_used_ms: i64,
}

impl DedupWindow {
    /// Records `seq`; false when it was seen before.
    fn insert(&mut self, seq: u64, cap: usize) -> bool {
        if self.floor.is_some_and(|f| seq <= f) || !self.seen.insert(seq) {
            return false;
        }
        while self.seen.len() > cap.max(1) {
            self.floor = self.seen.pop_first();
        }
        true
    }
}

#[derive(Debug, Default)]
struct DriverState {
    latest: Option<StoredFix>,
    /// Sorted by seq, bounded by `trail_len`.
    trail: VecDeque<Fix>,
    devices: HashMap<String, DedupWindow>,
}

/// In-process engine.
pub struct MemoryEngine {
    shards: Vec<Mutex<HashMap<String, DriverState>>>,
    hasher: RandomState,
    hub: Arc<Hub>,
    limits: Limits,
    /// Never changes: a process's own hub is never disconnected.
    resubscribed: watch::Sender<u64>,
}

impl MemoryEngine {
    pub fn new(hub: Arc<Hub>, limits: Limits) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            hub,
            limits,
            resubscribed: watch::Sender::new(0),
        }
    }

    fn shard(&self, driver_id: &str) -> &Mutex<HashMap<String, DriverState>> {
        let i = (self.hasher.hash_one(driver_id) as usize) % SHARDS;
        &self.shards[i]
    }

    fn ttl_ms(&self) -> i64 {
        self.limits.online_ttl.as_millis() as i64
    }
}

impl Engine {
    /// The in-memory engine (one process): one [`MemoryEngine`] as both bus
    /// and tracking store.
    pub fn memory(hub: Arc<Hub>, limits: Limits) -> Self {
        let engine = Arc::new(MemoryEngine::new(hub, limits));
        Self::new("memory", engine.clone(), engine)
    }
}

#[async_trait]
impl TrackingStore for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn ingest(
        &self,
        driver_id: &str,
        device_id: &str,
        fixes: &[Fix],
        at: IngestTime,
    ) -> Result<IngestOutcome, EngineError> {
        let now_ms = at.now_ms;
        let ttl = self.ttl_ms();
        let channel = Channel::tracking(driver_id);
        let (accepted, duplicates, new_latest, previous_ts) = {
            let mut shard = self.shard(driver_id).lock();
            let state = shard.entry(driver_id.to_owned()).or_default();
            if !state.devices.contains_key(device_id)
                && state.devices.len() >= MAX_DEVICES_PER_DRIVER
            {
                if let Some(oldest) = state
                    .devices
                    .iter()
                    .min_by_key(|(_, w)| w.last_used_ms)
                    .map(|(k, _)| k.clone())
                {
                    state.devices.remove(&oldest);
                }
            }
            let window = state.devices.entry(device_id.to_owned()).or_default();
            window.last_used_ms = now_ms;
            let mut accepted = 0u32;
            let mut newest: Option<&Fix> = None;
            for fix in fixes {
                if !window.insert(fix.seq, self.limits.dedup_window) {
                    continue;
                }
                accepted += 1;
                let pos = state.trail.partition_point(|f| f.seq <= fix.seq);
                state.trail.insert(pos, fix.clone());
                if newest.is_none_or(|n| fix.ts >= n.ts) {
                    newest = Some(fix);
                }
            }
            while state.trail.len() > self.limits.trail_len {
                state.trail.pop_front();
            }
            let mut new_latest = None;
            let mut previous_ts = None;
            if let Some(n) = newest {
                let live = state
                    .latest
                    .as_ref()
                    .filter(|cur| now_ms - cur.received_ms <= ttl);
                let replace = live.is_none_or(|cur| n.ts >= cur.fix.ts);
                if replace {
                    previous_ts = live.map(|cur| cur.fix.ts);
                    state.latest = Some(StoredFix {
                        fix: n.clone(),
                        device_id: device_id.to_owned(),
                        received_ms: now_ms,
                    });
                    new_latest = Some(n.clone());
                    // Broadcast under the shard lock: two concurrent batches
                    // of one driver go out in the order they became latest
                    // (dispatch only queues, it never waits).
                    if at.publish_live && self.hub.local_count(&channel) > 0 {
                        self.hub
                            .dispatch(&channel, Frame::location(driver_id, n, at.origin_us));
                    }
                }
            }
            (
                accepted,
                fixes.len() as u32 - accepted,
                new_latest,
                previous_ts,
            )
        };
        let watchers = self.hub.local_count(&channel) as u64;
        Ok(IngestOutcome {
            accepted,
            duplicates,
            watchers,
            new_latest,
            published: at.publish_live,
            previous_ts,
        })
    }

    async fn latest(&self, driver_id: &str, now_ms: i64) -> Result<Option<StoredFix>, EngineError> {
        let shard = self.shard(driver_id).lock();
        Ok(shard
            .get(driver_id)
            .and_then(|s| s.latest.clone())
            .filter(|l| now_ms - l.received_ms <= self.ttl_ms()))
    }

    async fn trail(
        &self,
        driver_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Fix>, EngineError> {
        let shard = self.shard(driver_id).lock();
        Ok(shard.get(driver_id).map_or_else(Vec::new, |s| {
            let start = s.trail.partition_point(|f| f.seq <= after_seq);
            s.trail.iter().skip(start).take(limit).cloned().collect()
        }))
    }

    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }
}

#[async_trait]
impl Bus for MemoryEngine {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        self.hub.dispatch(channel, frame);
        Ok(())
    }

    async fn sync_subscription(&self, _channel: &Channel) -> Result<(), EngineError> {
        Ok(())
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        Ok(self.hub.local_count(channel) as u64)
    }

    async fn ready(&self) -> Result<(), EngineError> {
        Ok(())
    }

    fn resubscribed(&self) -> watch::Receiver<u64> {
        self.resubscribed.subscribe()
    }

    async fn shutdown(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedup_window_forgets_oldest_but_refuses_below_floor() {
        let mut w = DedupWindow::default();
        for s in 1..=5 {
            assert!(w.insert(s, 3));
        }
        assert!(!w.insert(5, 3));
        assert!(!w.insert(1, 3), "below the floor counts as seen");
        assert!(w.insert(7, 3));
        assert!(w.insert(6, 3), "a late seq above the floor is new");
    }

    proptest::proptest! {
        /// Whatever order and repetition seqs arrive in: a seq is accepted at
        /// most once (no duplicates), and a seq above everything seen so far
        /// is always accepted (nothing new is lost).
        #[test]
        fn dedup_never_duplicates_and_never_drops_new(
            seqs in proptest::collection::vec(0u64..200, 0..400),
            cap in 1usize..50,
        ) {
            let mut w = DedupWindow::default();
            let mut accepted = std::collections::HashSet::new();
            let mut max_seen: Option<u64> = None;
            for s in seqs {
                let is_new_max = max_seen.is_none_or(|m| s > m);
                let took = w.insert(s, cap);
                if took {
                    proptest::prop_assert!(accepted.insert(s), "seq {} accepted twice", s);
                }
                if is_new_max {
                    proptest::prop_assert!(took, "new highest seq {} refused", s);
                }
                max_seen = Some(max_seen.map_or(s, |m| m.max(s)));
                proptest::prop_assert!(w.seen.len() <= cap);
            }
        }
    }
}
