//! What follows a stored order change, written once for the HTTP route,
//! the stream intake and ingest: the `order` frames on `order:{id}` (through
//! [`Engine::publish`], so every process's subscribers get them), the
//! driver's `location` frames on the channels of its active orders, and
//! the webhooks.

use std::sync::Arc;

use waypost_protocol::{
    Channel, EntryBody, Fix, OrderEvent, OrderFrame, ServerFrame, TimelineEntry,
};

use super::eta::Point;
use super::{Applied, Order, OrderError, Orders};
use crate::engine::Engine;
use crate::frame::{About, Frame};
use crate::webhooks::{WebhookEvent, Webhooks};

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
}

impl OrderService {
    pub fn new(orders: Orders, engine: Arc<Engine>, webhooks: Option<Arc<Webhooks>>) -> Self {
        Self {
            orders,
            engine,
            webhooks,
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

    /// Feeds a driver's newly stored fixes to its active orders (entries
    /// published) and forwards `latest` as a `location` frame on each active
    /// order's channel. Returns the driver's active orders.
    pub async fn on_fixes(
        &self,
        driver_id: &str,
        fixes: &[Fix],
        latest: Option<&Fix>,
        now_ms: i64,
        origin_us: i64,
    ) -> Result<Vec<Order>, OrderError> {
        if let Some(hooks) = &self.webhooks {
            hooks.driver_seen(driver_id, now_ms).await;
        }
        let active = self.orders.active_orders_of(driver_id).await?;
        if active.is_empty() {
            return Ok(active);
        }
        let mut points: Vec<Point> = fixes
            .iter()
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
        if let Some(fix) = latest {
            for o in &active {
                let frame = order_location_frame(&o.order_id, driver_id, fix, origin_us);
                self.engine
                    .publish(&Channel::order(&o.order_id), frame)
                    .await?;
            }
        }
        Ok(active)
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
