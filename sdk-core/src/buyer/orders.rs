//! Order tracking (`track_order`): per order the highest timeline seq
//! delivered to the app, so a resubscribe asks only for what is newer
//! (`after`) and every entry reaches the app once, in seq order, with no
//! gap; plus the driver's newest fix while the order is active (the server
//! shares it on the same `order:{id}` channel and stops at the entry that
//! ends the order, and so does this state).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use waypost_protocol::{Channel, ClientFrame, EntryBody, Fix, FrameEntry};

use super::types::{
    DriverStatusUpdate, LocationUpdate, OrderEntry, OrderEntryKind, OrderListener, TrailUpdate,
};

/// Orders one client may track at once.
pub const MAX_ORDERS: usize = 64;
/// Entries held per order while waiting for a missing seq.
const MAX_BUFFERED: usize = 1_024;

struct Tracked {
    listener: Arc<dyn OrderListener>,
    /// Highest seq handed to the app (0: none yet).
    delivered: u64,
    /// Entries above `delivered + 1`, waiting for the gap to fill.
    pending: BTreeMap<u64, FrameEntry>,
    /// A resubscribe to fill a gap is in flight on this connection.
    filling: bool,
    /// The highest seq the server said it has (`subscribed`'s `high_seq`).
    target: u64,
    /// `delivered` at the last tick: no progress for a whole tick while
    /// behind `target` means the replay stopped short (`recovered: false`).
    at_last_tick: u64,
    /// Whether the driver's location is shared (the last status entry's
    /// `active`).
    active: bool,
    last_fix: Option<Fix>,
}

#[derive(Default)]
pub struct Orders {
    orders: HashMap<String, Tracked>,
}

impl Orders {
    /// Starts tracking `order_id` (replaces the listener when already
    /// tracked); false when at the limit.
    pub fn add(&mut self, order_id: &str, listener: Arc<dyn OrderListener>) -> bool {
        if let Some(t) = self.orders.get_mut(order_id) {
            t.listener = listener;
            return true;
        }
        if self.orders.len() >= MAX_ORDERS {
            return false;
        }
        self.orders.insert(
            order_id.to_owned(),
            Tracked {
                listener,
                delivered: 0,
                pending: BTreeMap::new(),
                filling: false,
                target: 0,
                at_last_tick: 0,
                active: false,
                last_fix: None,
            },
        );
        true
    }

    /// The last entry delivered in order for a tracked order.
    pub fn delivered(&self, order_id: &str) -> Option<u64> {
        self.orders.get(order_id).map(|t| t.delivered)
    }

    pub fn is_tracked(&self, order_id: &str) -> bool {
        self.orders.contains_key(order_id)
    }

    pub fn remove(&mut self, order_id: &str) -> bool {
        self.orders.remove(order_id).is_some()
    }

    pub fn channel(order_id: &str) -> String {
        Channel::order(order_id).to_string()
    }

    /// The subscribe frame for `order_id`: the whole timeline the first
    /// time (`after: 0`), then only what is newer than the last entry seen.
    pub fn subscribe_frame(&self, order_id: &str) -> ClientFrame {
        ClientFrame::Subscribe {
            channel: Self::channel(order_id),
            after: Some(self.orders.get(order_id).map_or(0, |t| t.delivered)),
        }
    }

    /// Subscribe frames for every tracked order (a connection opened).
    pub fn resubscribe(&mut self, out: &mut Vec<ClientFrame>) {
        let ids: Vec<String> = self.orders.keys().cloned().collect();
        for id in ids {
            if let Some(t) = self.orders.get_mut(&id) {
                t.filling = false;
            }
            out.push(self.subscribe_frame(&id));
        }
    }

    /// The connection is gone.
    pub fn closed(&mut self) {
        for t in self.orders.values_mut() {
            t.filling = false;
        }
    }

    /// `subscribed` on `order:{id}`: remembers how far the server's
    /// timeline goes. When it could not replay everything (more than its
    /// replay limit), the next live entry leaves a gap that
    /// [`on_entry`](Self::on_entry) fills, and [`tick`](Self::tick) asks
    /// again when no entry comes.
    pub fn on_subscribed(&mut self, order_id: &str, high_seq: Option<u64>) {
        if let Some(t) = self.orders.get_mut(order_id) {
            t.filling = false;
            t.target = t.target.max(high_seq.unwrap_or(0));
        }
    }

    /// Periodic: an order still behind the server's `high_seq` that made no
    /// progress since the last tick subscribes again from what it has.
    pub fn tick(&mut self, connected: bool, out: &mut Vec<ClientFrame>) {
        for (id, t) in &mut self.orders {
            let stalled = t.delivered < t.target && t.delivered == t.at_last_tick;
            t.at_last_tick = t.delivered;
            if stalled && connected {
                tracing::debug!(order_id = %id, after = t.delivered, high = t.target, "order replay stopped short; resubscribing");
                t.filling = true;
                out.push(ClientFrame::Subscribe {
                    channel: Self::channel(id),
                    after: Some(t.delivered),
                });
            }
        }
    }

    /// An `order` frame: delivers it and whatever it unblocks, in seq
    /// order; a gap asks the server again from the last delivered seq.
    pub fn on_entry(
        &mut self,
        order_id: &str,
        seq: u64,
        entry: FrameEntry,
        connected: bool,
        out: &mut Vec<ClientFrame>,
    ) {
        let Some(t) = self.orders.get_mut(order_id) else {
            return;
        };
        if seq <= t.delivered {
            return;
        }
        if t.pending.len() < MAX_BUFFERED || t.pending.contains_key(&seq) {
            t.pending.insert(seq, entry);
        }
        while let Some(e) = t.pending.remove(&(t.delivered + 1)) {
            t.delivered += 1;
            if let EntryBody::Status { active, .. } = &e.body {
                t.active = *active;
                if !*active {
                    t.last_fix = None;
                }
            }
            t.listener
                .on_entry(OrderEntry::from_wire(order_id, t.delivered, e));
        }
        if t.pending.is_empty() {
            t.filling = false;
        } else if !t.filling && connected {
            tracing::debug!(
                order_id,
                after = t.delivered,
                "order timeline gap; resubscribing"
            );
            t.filling = true;
            out.push(ClientFrame::Subscribe {
                channel: Self::channel(order_id),
                after: Some(t.delivered),
            });
        }
    }

    /// A `location` frame on `order:{id}`: reported while the order is
    /// active and when newer than the last one; returns what was reported
    /// (so the client's latest-location state learns it too).
    pub fn on_location(
        &mut self,
        order_id: &str,
        driver_id: &str,
        fix: Fix,
    ) -> Option<LocationUpdate> {
        let t = self.orders.get_mut(order_id)?;
        if !t.active {
            return None;
        }
        let newer = t
            .last_fix
            .as_ref()
            .is_none_or(|l| fix.seq > l.seq || fix.ts > l.ts);
        if !newer {
            return None;
        }
        let update = LocationUpdate::from_fix(driver_id, &fix);
        t.last_fix = Some(fix);
        t.listener.on_location(update.clone());
        Some(update)
    }
}

impl Orders {
    /// A `trail` frame on `order:{id}`: reported while the order is active.
    pub fn on_trail(&self, order_id: &str, driver_id: &str, fixes: &[Fix]) {
        if let Some(t) = self.orders.get(order_id).filter(|t| t.active) {
            t.listener
                .on_trail(TrailUpdate::from_fixes(driver_id, Some(order_id), fixes));
        }
    }

    /// A `driver_status` frame on `order:{id}`: reported while the order is
    /// active.
    pub fn on_driver_status(
        &self,
        order_id: &str,
        driver_id: &str,
        body: &waypost_protocol::DriverStatusBody,
    ) {
        if let Some(t) = self.orders.get(order_id).filter(|t| t.active) {
            t.listener.on_driver_status(DriverStatusUpdate::from_wire(
                driver_id,
                Some(order_id),
                body,
            ));
        }
    }
}

impl OrderEntry {
    pub(crate) fn from_wire(order_id: &str, seq: u64, e: FrameEntry) -> Self {
        let mut out = OrderEntry {
            order_id: order_id.to_owned(),
            seq,
            ts_ms: e.ts,
            kind: OrderEntryKind::Status,
            status: None,
            active: None,
            driver_id: None,
            eta_s: None,
            distance_m: None,
        };
        match e.body {
            EntryBody::Status {
                status,
                active,
                driver_id,
                ..
            } => {
                out.status = Some(status.as_str().to_owned());
                out.active = Some(active);
                out.driver_id = driver_id;
            }
            EntryBody::Eta { eta_s, distance_m } => {
                out.kind = OrderEntryKind::Eta;
                out.eta_s = Some(eta_s);
                out.distance_m = Some(distance_m);
            }
            EntryBody::Arrival { driver_id } => {
                out.kind = OrderEntryKind::Arrival;
                out.driver_id = Some(driver_id);
            }
            EntryBody::Departure { driver_id } => {
                out.kind = OrderEntryKind::Departure;
                out.driver_id = Some(driver_id);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;
    use waypost_protocol::OrderStatus;

    use super::*;

    #[derive(Default)]
    struct Rec {
        entries: Mutex<Vec<u64>>,
        fixes: Mutex<Vec<u64>>,
    }

    impl OrderListener for Rec {
        fn on_entry(&self, entry: OrderEntry) {
            self.entries.lock().push(entry.seq);
        }
        fn on_location(&self, update: LocationUpdate) {
            self.fixes.lock().push(update.seq);
        }
    }

    fn status(s: OrderStatus, active: bool) -> FrameEntry {
        FrameEntry {
            body: EntryBody::Status {
                event_id: "e".into(),
                status: s,
                active,
                driver_id: None,
                vendor_id: None,
                destination: None,
                data: None,
            },
            ts: 1,
        }
    }

    #[test]
    fn delivers_once_in_order_fills_gaps_and_stops_locations_at_the_end() {
        let rec = Arc::new(Rec::default());
        let mut o = Orders::default();
        assert!(o.add("o1", rec.clone()));
        assert_eq!(
            o.subscribe_frame("o1"),
            ClientFrame::Subscribe {
                channel: "order:o1".into(),
                after: Some(0)
            }
        );
        let mut out = Vec::new();
        o.on_entry("o1", 1, status(OrderStatus::Placed, false), true, &mut out);
        o.on_location("o1", "d1", Fix::new(1, 10, 1.0, 2.0));
        o.on_entry("o1", 2, status(OrderStatus::Accepted, true), true, &mut out);
        o.on_entry("o1", 2, status(OrderStatus::Accepted, true), true, &mut out);
        o.on_location("o1", "d1", Fix::new(2, 20, 1.0, 2.0));
        o.on_location("o1", "d1", Fix::new(2, 20, 1.0, 2.0));
        assert!(out.is_empty());
        // 3 missing: 4 waits, one resubscribe after 2.
        o.on_entry("o1", 4, status(OrderStatus::PickedUp, true), true, &mut out);
        o.on_entry("o1", 5, status(OrderStatus::PickedUp, true), true, &mut out);
        assert_eq!(
            out,
            vec![ClientFrame::Subscribe {
                channel: "order:o1".into(),
                after: Some(2)
            }]
        );
        o.on_entry("o1", 3, status(OrderStatus::Ready, true), true, &mut out);
        o.on_entry(
            "o1",
            6,
            status(OrderStatus::Delivered, false),
            true,
            &mut out,
        );
        o.on_location("o1", "d1", Fix::new(3, 30, 1.0, 2.0));
        assert_eq!(*rec.entries.lock(), vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(*rec.fixes.lock(), vec![2]);
        assert_eq!(
            o.subscribe_frame("o1"),
            ClientFrame::Subscribe {
                channel: "order:o1".into(),
                after: Some(6)
            }
        );
        o.on_entry(
            "other",
            1,
            status(OrderStatus::Placed, false),
            true,
            &mut out,
        );
        for i in 0..MAX_ORDERS {
            o.add(&format!("x{i}"), rec.clone());
        }
        assert!(!o.add("one-too-many", rec.clone()));
    }

    #[test]
    fn a_short_replay_is_asked_again_when_nothing_comes() {
        let rec = Arc::new(Rec::default());
        let mut o = Orders::default();
        o.add("o1", rec.clone());
        let mut out = Vec::new();
        // The server has 5 entries but replays only 2.
        o.on_subscribed("o1", Some(5));
        o.on_entry("o1", 1, status(OrderStatus::Placed, false), true, &mut out);
        o.on_entry("o1", 2, status(OrderStatus::Accepted, true), true, &mut out);
        o.tick(true, &mut out);
        assert!(out.is_empty(), "progress since the last tick");
        o.tick(true, &mut out);
        assert_eq!(
            out,
            vec![ClientFrame::Subscribe {
                channel: "order:o1".into(),
                after: Some(2)
            }]
        );
        out.clear();
        o.on_subscribed("o1", Some(5));
        for seq in 3..=5 {
            o.on_entry(
                "o1",
                seq,
                status(OrderStatus::PickedUp, true),
                true,
                &mut out,
            );
        }
        o.tick(true, &mut out);
        o.tick(true, &mut out);
        assert!(out.is_empty(), "caught up: {out:?}");
        assert_eq!(*rec.entries.lock(), vec![1, 2, 3, 4, 5]);
    }
}
