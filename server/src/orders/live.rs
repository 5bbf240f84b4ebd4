//! What follows a stored order change, written once for the HTTP route,
//! the stream intake and ingest: the `order` frames on `order:{id}` (through
//! [`Engine::publish`], so every process's subscribers get them), the
//! driver's `location` frames on the channels of its active orders, and
//! the webhooks.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waypost_protocol::{
    Channel, DriverState, DriverStatusBody, EntryBody, Fix, OrderEvent, OrderFrame, ServerFrame,
    Silence, TimelineEntry,
};

use super::eta::Point;
use super::presence::{presence_event, DriverPresence, Seen};
use super::{Applied, Order, OrderError, Orders};
use crate::engine::Engine;
use crate::frame::{About, Frame};
use crate::trail::{status_frame, trail_frame};
use crate::webhooks::{WebhookEvent, Webhooks};

/// Offline drivers reported per sweep.
const SWEEP_BATCH: usize = 1000;

/// What one upload of a driver brings to its watchers, in this order:
/// `driver_status` (back online), `trail` (the segment they missed), then
/// the new latest position.
#[derive(Debug, Default)]
pub struct DriverUpdate<'a> {
    /// The newest fix, when it became the latest position.
    pub latest: Option<&'a Fix>,
    /// The thinned segment before it that watchers missed (may be empty).
    pub trail: &'a [Fix],
    /// What the SDK said about a silence before this upload.
    pub silence: Option<&'a Silence>,
    /// Whether the engine already published `latest` on the tracking
    /// channel (else this does, after the trail).
    pub published: bool,
    /// Subscribers of the tracking channel (no tracking frames without).
    pub watchers: u64,
}

/// The `order` frame of a timeline entry, serialized once.
pub fn order_frame(order_id: &str, entry: &TimelineEntry, origin_us: i64) -> Frame {
    let text = serde_json::to_string(&OrderFrame::new(order_id, entry)).unwrap_or_default();
    let about = About::Order {
        order: order_id.to_owned(),
        seq: entry.seq,
        ends: super::domain::entry_ends(entry),
    };
    Frame::new(text, about, origin_us)
}

/// The driver's `location` frame on an order's channel.
pub fn order_location_frame(order_id: &str, driver_id: &str, fix: &Fix, origin_us: i64) -> Frame {
    let text = ServerFrame::Location {
        channel: Channel::order(order_id).to_string(),
        driver_id: driver_id.to_owned(),
        fix: fix.clone(),
    }
    .to_json();
    let about = About::OrderLocation {
        order: order_id.to_owned(),
    };
    Frame::new(text, about, origin_us)
}

/// Orders with their fan-out.
#[derive(Clone)]
pub struct OrderService {
    pub orders: Orders,
    engine: Arc<Engine>,
    webhooks: Option<Arc<Webhooks>>,
    /// Online drivers: `driver_status` frames and presence webhooks.
    presence: Arc<dyn DriverPresence>,
}

impl OrderService {
    pub fn new(
        orders: Orders,
        engine: Arc<Engine>,
        webhooks: Option<Arc<Webhooks>>,
        presence: Arc<dyn DriverPresence>,
    ) -> Self {
        Self {
            orders,
            engine,
            webhooks,
            presence,
        }
    }

    /// Applies an order event; a new entry is published (and webhooked)
    /// before this returns, so an acknowledged event was also fanned out.
    pub async fn apply_event(
        &self,
        order_id: &str,
        ev: &OrderEvent,
        now_ms: i64,
    ) -> Result<Applied, OrderError> {
        let origin_us = crate::frame::now_us();
        let applied = self.orders.apply_event(order_id, ev, now_ms).await?;
        if let Applied::New { order, entry, .. } = &applied {
            self.fan_out(order, std::slice::from_ref(entry), origin_us)
                .await?;
        }
        Ok(applied)
    }

    /// After an upload of `driver_id` was stored: records it online (a
    /// `driver_status` frame and the webhook when it comes back), feeds the
    /// fixes to its active orders (entries published), and sends watchers
    /// of the tracking channel and of each active order's channel the
    /// status, the trail and the latest position, in that order. Returns
    /// the driver's active orders.
    pub async fn on_fixes(
        &self,
        driver_id: &str,
        fixes: &[Fix],
        update: DriverUpdate<'_>,
        now_ms: i64,
        origin_us: i64,
    ) -> Result<Vec<Order>, OrderError> {
        let back = self.driver_seen(driver_id, update.silence, now_ms).await;
        let active = self.orders.active_orders_of(driver_id).await?;
        let mut channels = Vec::with_capacity(active.len() + 1);
        if update.watchers > 0 {
            channels.push(Channel::tracking(driver_id));
        }
        channels.extend(active.iter().map(|o| Channel::order(&o.order_id)));
        if let Some(body) = &back {
            for ch in &channels {
                self.engine
                    .publish(ch, status_frame(ch, driver_id, body, origin_us))
                    .await?;
            }
        }
        if update.latest.is_some() && !update.trail.is_empty() {
            for ch in &channels {
                let frame = trail_frame(ch, driver_id, update.trail, origin_us);
                self.engine.publish(ch, frame).await?;
            }
        }
        if let (Some(fix), false) = (update.latest, update.published) {
            let frame = Frame::location(driver_id, fix, origin_us);
            self.engine
                .publish(&Channel::tracking(driver_id), frame)
                .await?;
        }
        if active.is_empty() {
            return Ok(active);
        }
        // Coarse fixes (reduced accuracy, kilometres off) never count for
        // arrival, departure or ETA.
        let mut points: Vec<Point> = fixes
            .iter()
            .filter(|f| !f.is_coarse())
            .map(|f| Point {
                ts: f.ts,
                lat: f.lat,
                lon: f.lon,
            })
            .collect();
        points.sort_by_key(|p| p.ts);
        for (order, entries) in self
            .orders
            .observe_fixes(driver_id, &points, now_ms)
            .await?
        {
            self.fan_out(&order, &entries, origin_us).await?;
        }
        if let Some(fix) = update.latest {
            for o in &active {
                let frame = order_location_frame(&o.order_id, driver_id, fix, origin_us);
                self.engine
                    .publish(&Channel::order(&o.order_id), frame)
                    .await?;
            }
        }
        Ok(active)
    }

    /// Records a stored upload; the `driver_status` body when the driver
    /// comes back from offline. Presence errors are logged (the fixes are
    /// stored regardless).
    async fn driver_seen(
        &self,
        driver_id: &str,
        silence: Option<&Silence>,
        now_ms: i64,
    ) -> Option<DriverStatusBody> {
        let seen = match self.presence.seen(driver_id, now_ms).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(driver = driver_id, error = %e, "driver presence unavailable");
                return None;
            }
        };
        if seen != Seen::Online {
            self.webhook(&presence_event(driver_id, true, now_ms)).await;
        }
        let Seen::Back { last_seen_ms } = seen else {
            return None;
        };
        Some(DriverStatusBody {
            status: DriverState::Online,
            last_seen_ms,
            dark_ms: Some(u64::try_from(now_ms - last_seen_ms).unwrap_or(0)),
            reason: silence.map(|s| s.reason),
            buffered: silence.and_then(|s| s.buffered),
        })
    }

    async fn webhook(&self, ev: &WebhookEvent) {
        if let Some(hooks) = &self.webhooks {
            if let Err(e) = hooks.emit(ev).await {
                tracing::warn!(id = %ev.id, error = %e, "presence webhook not queued");
            }
        }
    }

    /// A driver went offline (no fix for the online TTL; last seen at
    /// `last_seen_ms`): `driver_status` on its tracking channel and its
    /// active orders' channels, and the webhook.
    pub async fn driver_offline(
        &self,
        driver_id: &str,
        last_seen_ms: i64,
        now_ms: i64,
    ) -> Result<(), OrderError> {
        self.webhook(&presence_event(driver_id, false, now_ms))
            .await;
        let body = DriverStatusBody {
            status: DriverState::Offline,
            last_seen_ms,
            dark_ms: None,
            reason: None,
            buffered: None,
        };
        let origin_us = crate::frame::now_us();
        let mut channels = vec![Channel::tracking(driver_id)];
        channels.extend(
            self.orders
                .active_orders_of(driver_id)
                .await?
                .iter()
                .map(|o| Channel::order(&o.order_id)),
        );
        for ch in &channels {
            self.engine
                .publish(ch, status_frame(ch, driver_id, &body, origin_us))
                .await?;
        }
        Ok(())
    }

    /// Spawns the sweeper that reports drivers offline after `ttl` without
    /// a fix (checked every `ttl / 4`), stopped by `cancel`.
    pub fn spawn_presence_sweeper(
        &self,
        ttl: Duration,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        let me = self.clone();
        let cancel = cancel.clone();
        tracker.spawn(async move { me.sweep(ttl, cancel).await });
    }

    async fn sweep(&self, ttl: Duration, cancel: CancellationToken) {
        let every = (ttl / 4).max(Duration::from_millis(100));
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
            let now = crate::now_ms();
            let gone = match self.presence.expire(now - ttl_ms, SWEEP_BATCH).await {
                Ok(g) => g,
                Err(e) => {
                    tracing::warn!(error = %e, "driver presence sweep failed");
                    continue;
                }
            };
            for (d, last_seen) in gone {
                if let Err(e) = self.driver_offline(&d, last_seen, now).await {
                    tracing::warn!(driver = %d, error = %e, "offline status not published");
                }
            }
        }
    }

    async fn fan_out(
        &self,
        order: &Order,
        entries: &[TimelineEntry],
        origin_us: i64,
    ) -> Result<(), OrderError> {
        let channel = Channel::order(&order.order_id);
        for e in entries {
            self.engine
                .publish(&channel, order_frame(&order.order_id, e, origin_us))
                .await?;
            if let (Some(hooks), Some(event)) = (&self.webhooks, webhook_event(order, e)) {
                if let Err(err) = hooks.emit(&event).await {
                    // The entry is stored and published; a lost webhook is
                    // logged (and counted by the queue as dropped when full).
                    tracing::warn!(order = %order.order_id, seq = e.seq, error = %err, "webhook not queued");
                }
            }
        }
        Ok(())
    }
}

/// The webhook of an entry: status changes, arrival and departure (ETA
/// updates are not sent). The id names the order's incarnation and seq, so
/// it is the same whichever process emits it.
pub fn webhook_event(order: &Order, e: &TimelineEntry) -> Option<WebhookEvent> {
    let kind = match &e.body {
        EntryBody::Status { .. } => "order.status",
        EntryBody::Arrival { .. } => "order.arrival",
        EntryBody::Departure { .. } => "order.departure",
        EntryBody::Eta { .. } => return None,
    };
    let mut data = serde_json::to_value(e).ok()?;
    if let Some(obj) = data.as_object_mut() {
        obj.insert("order_id".into(), order.order_id.clone().into());
        obj.insert(
            "vendor_id".into(),
            serde_json::to_value(&order.vendor_id).ok()?,
        );
        obj.insert("current_status".into(), order.status.as_str().into());
    }
    Some(WebhookEvent {
        id: format!("{}:{}:{}", order.order_id, order.created_ts, e.seq),
        kind: kind.into(),
        ts: e.ts,
        data,
    })
}
