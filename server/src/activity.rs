//! What this process has seen recently, for the operations dashboard: the
//! drivers that posted a location (with their last position and watcher
//! count at that time) and the latest vendor notifications.
//!
//! Kept in the server rather than in the engine: it is a per-process view
//! fed by ingest, bounded in size, and costs one short lock per ingest. With
//! several replicas behind a balancer each dashboard shows the drivers whose
//! uploads reached its replica.

use std::collections::{HashMap, VecDeque};

use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::Notify;
use waypost_protocol::Fix;

/// Most drivers remembered at once; the least recently seen go first.
pub const MAX_DRIVERS: usize = 10_000;
/// Vendor notifications kept for the dashboard.
pub const MAX_NOTIFICATIONS: usize = 50;

/// One driver as last seen by ingest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriverSeen {
    pub driver_id: String,
    pub device_id: String,
    /// Server time of the last accepted upload, Unix ms.
    pub seen_ms: i64,
    pub seq: u64,
    /// Device time of the position, Unix ms.
    pub fix_ts: i64,
    pub lat: f64,
    pub lon: f64,
    /// Subscribers of `tracking:{driver}` at the last upload.
    pub watchers: u64,
}

/// One vendor notification as accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NotificationSeen {
    pub vendor_id: String,
    pub event: String,
    pub id: String,
    pub at_ms: i64,
}

/// The bounded registry. Shared as `Arc<Activity>`.
#[derive(Debug, Default)]
pub struct Activity {
    drivers: Mutex<HashMap<String, DriverSeen>>,
    notifications: Mutex<VecDeque<NotificationSeen>>,
    /// Wakes dashboard streams waiting in [`Activity::changed`].
    changed: Notify,
}

impl Activity {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an accepted upload whose newest fix is `fix`.
    pub fn driver_seen(
        &self,
        driver_id: &str,
        device_id: &str,
        fix: &Fix,
        watchers: u64,
        now_ms: i64,
    ) {
        let seen = DriverSeen {
            driver_id: driver_id.to_owned(),
            device_id: device_id.to_owned(),
            seen_ms: now_ms,
            seq: fix.seq,
            fix_ts: fix.ts,
            lat: fix.lat,
            lon: fix.lon,
            watchers,
        };
        let mut map = self.drivers.lock();
        if !map.contains_key(driver_id) && map.len() >= MAX_DRIVERS {
            // Rare: drop the least recently seen driver (O(n) once per
            // insertion past the bound).
            if let Some(oldest) = map
                .values()
                .min_by_key(|d| d.seen_ms)
                .map(|d| d.driver_id.clone())
            {
                map.remove(&oldest);
            }
        }
        map.insert(driver_id.to_owned(), seen);
        drop(map);
        self.changed.notify_waiters();
    }

    /// Drivers seen within `ttl_ms` of `now_ms`, most recent first, at most
    /// `limit`; also how many there are in all.
    pub fn drivers_online(
        &self,
        now_ms: i64,
        ttl_ms: i64,
        limit: usize,
    ) -> (usize, Vec<DriverSeen>) {
        let mut online: Vec<DriverSeen> = {
            let mut map = self.drivers.lock();
            map.retain(|_, d| now_ms - d.seen_ms <= ttl_ms);
            map.values().cloned().collect()
        };
        let total = online.len();
        online.sort_by(|a, b| {
            b.seen_ms
                .cmp(&a.seen_ms)
                .then_with(|| a.driver_id.cmp(&b.driver_id))
        });
        online.truncate(limit);
        (total, online)
    }

    /// Records an accepted vendor notification.
    pub fn notification(&self, vendor_id: &str, event: &str, id: &str, now_ms: i64) {
        let mut q = self.notifications.lock();
        if q.len() >= MAX_NOTIFICATIONS {
            q.pop_front();
        }
        q.push_back(NotificationSeen {
            vendor_id: vendor_id.to_owned(),
            event: event.to_owned(),
            id: id.to_owned(),
            at_ms: now_ms,
        });
        drop(q);
        self.changed.notify_waiters();
    }

    /// Resolves at the next recorded upload or notification.
    pub async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The latest notifications, newest first.
    pub fn recent_notifications(&self) -> Vec<NotificationSeen> {
        self.notifications.lock().iter().rev().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drivers_expire_sort_and_stay_bounded() {
        let a = Activity::new();
        a.driver_seen("d-1", "dev", &Fix::new(1, 0, 1.0, 2.0), 0, 1_000);
        a.driver_seen("d-2", "dev", &Fix::new(5, 0, 3.0, 4.0), 2, 2_000);
        a.driver_seen("d-1", "dev", &Fix::new(2, 0, 1.5, 2.5), 1, 3_000);
        let (n, list) = a.drivers_online(3_500, 10_000, 10);
        assert_eq!(n, 2);
        assert_eq!(list[0].driver_id, "d-1");
        assert_eq!(list[0].seq, 2);
        assert_eq!(list[0].watchers, 1);
        assert_eq!(list[1].driver_id, "d-2");
        // d-2 is older than the TTL at 12_500, d-1 is not.
        let (n, list) = a.drivers_online(12_500, 10_000, 10);
        assert_eq!(n, 1);
        assert_eq!(list[0].driver_id, "d-1");

        for i in 0..MAX_DRIVERS + 10 {
            a.driver_seen(
                &format!("x-{i}"),
                "dev",
                &Fix::new(1, 0, 0.0, 0.0),
                0,
                20_000 + i as i64,
            );
        }
        let (n, list) = a.drivers_online(30_000, 1_000_000, 3);
        assert_eq!(n, MAX_DRIVERS);
        assert_eq!(list.len(), 3);
        assert_eq!(list[0].driver_id, format!("x-{}", MAX_DRIVERS + 9));
    }

    #[test]
    fn notifications_are_bounded_newest_first() {
        let a = Activity::new();
        for i in 0..MAX_NOTIFICATIONS + 5 {
            a.notification("v-1", "new-order", &i.to_string(), i as i64);
        }
        let list = a.recent_notifications();
        assert_eq!(list.len(), MAX_NOTIFICATIONS);
        assert_eq!(list[0].id, (MAX_NOTIFICATIONS + 4).to_string());
        assert_eq!(list.last().map(|n| n.id.as_str()), Some("5"));
    }
}
