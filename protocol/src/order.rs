//! Order wire types (issue 18): the event a backend posts (or `XADD`s),
//! the order as read back, and its timeline entries.

use serde::{Deserialize, Serialize};

use crate::ids::{validate_id, IdError};

/// Default radius around the destination inside which the driver counts as
/// arrived.
pub const DEFAULT_ARRIVAL_RADIUS_M: f64 = 100.0;
/// Most buyers one order may list.
pub const MAX_ORDER_BUYERS: usize = 16;
/// Largest `data` object of one event, serialized.
pub const MAX_ORDER_DATA_BYTES: usize = 8 * 1024;

/// An order's lifecycle status. Statuses only move forward in the order
/// below; `cancelled` may follow any status except `delivered`; `delivered`
/// and `cancelled` end the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Placed,
    Accepted,
    Preparing,
    Ready,
    PickedUp,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    /// Position in the lifecycle; a status change must not lower it.
    pub fn rank(self) -> u8 {
        match self {
            OrderStatus::Placed => 0,
            OrderStatus::Accepted => 1,
            OrderStatus::Preparing => 2,
            OrderStatus::Ready => 3,
            OrderStatus::PickedUp => 4,
            OrderStatus::Delivered | OrderStatus::Cancelled => 5,
        }
    }

    /// `delivered` or `cancelled`.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Delivered | OrderStatus::Cancelled)
    }

    /// Whether an order in status `self` may move to `next` (the same status
    /// again is allowed: an event that only updates fields).
    pub fn may_become(self, next: OrderStatus) -> bool {
        if self == next {
            return true;
        }
        if self.is_final() {
            return false;
        }
        next == OrderStatus::Cancelled || next.rank() >= self.rank()
    }

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Placed => "placed",
            OrderStatus::Accepted => "accepted",
            OrderStatus::Preparing => "preparing",
            OrderStatus::Ready => "ready",
            OrderStatus::PickedUp => "picked_up",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }
}

/// Where the order goes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Destination {
    pub lat: f64,
    pub lon: f64,
    /// Arrival radius; [`DEFAULT_ARRIVAL_RADIUS_M`] when absent.
    #[serde(default = "default_radius")]
    pub radius_m: f64,
}

fn default_radius() -> f64 {
    DEFAULT_ARRIVAL_RADIUS_M
}

/// Body of `POST /v1/orders/{order_id}/events`, and the `event` field of an
/// order stream entry (which adds `order_id`). Only `event_id` and `status`
/// are required; the first event creates the order, later ones update the
/// fields they carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEvent {
    pub event_id: String,
    pub status: OrderStatus,
    /// Set by stream entries (the HTTP path carries it in the URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buyers: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Why an order event is malformed (400).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OrderEventError {
    #[error(transparent)]
    Id(#[from] IdError),
    #[error("buyers lists more than {MAX_ORDER_BUYERS} ids")]
    TooManyBuyers,
    #[error("destination is not a valid coordinate with a radius in (0, 100000] m")]
    BadDestination,
    #[error("data must be a JSON object of at most {MAX_ORDER_DATA_BYTES} bytes")]
    BadData,
}

impl OrderEvent {
    /// Checks ids, bounds and the destination.
    pub fn validate(&self) -> Result<(), OrderEventError> {
        validate_id("event_id", &self.event_id)?;
        if let Some(id) = &self.order_id {
            validate_id("order_id", id)?;
        }
        if let Some(id) = &self.driver_id {
            validate_id("driver_id", id)?;
        }
        if let Some(id) = &self.vendor_id {
            validate_id("vendor_id", id)?;
        }
        if let Some(buyers) = &self.buyers {
            if buyers.len() > MAX_ORDER_BUYERS {
                return Err(OrderEventError::TooManyBuyers);
            }
            for b in buyers {
                validate_id("buyers[]", b)?;
            }
        }
        if let Some(d) = &self.destination {
            let ok = d.lat.is_finite()
                && d.lon.is_finite()
                && (-90.0..=90.0).contains(&d.lat)
                && (-180.0..=180.0).contains(&d.lon)
                && d.radius_m > 0.0
                && d.radius_m <= 100_000.0;
            if !ok {
                return Err(OrderEventError::BadDestination);
            }
        }
        if let Some(data) = &self.data {
            let size = serde_json::to_string(data)
                .map(|s| s.len())
                .unwrap_or(usize::MAX);
            if !data.is_object() || size > MAX_ORDER_DATA_BYTES {
                return Err(OrderEventError::BadData);
            }
        }
        Ok(())
    }
}

/// `202` answer to an order event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderEventAccepted {
    /// The timeline seq of the event's `status` entry (the original one for
    /// a duplicate).
    pub seq: u64,
    /// The `event_id` was seen before; nothing was stored.
    pub duplicate: bool,
}

/// `GET /v1/orders/{order_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderView {
    pub order_id: String,
    pub status: OrderStatus,
    pub driver_id: Option<String>,
    pub vendor_id: Option<String>,
    pub destination: Option<Destination>,
    /// Latest estimate of seconds to arrival, as of `eta_ts`'s fix; `None`
    /// before one is known and once the driver arrived or the order ended.
    pub eta_s: Option<u64>,
    /// Highest timeline seq.
    pub seq: u64,
    /// Unix ms of the last change.
    pub updated_ts: i64,
}

/// One timeline entry: gap-free `seq` per order from 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    pub seq: u64,
    #[serde(flatten)]
    pub body: EntryBody,
    /// Unix ms: when the event was accepted (`status`), or the `ts` of the
    /// driver's fix that caused it (`eta`, `arrival`, `departure`).
    pub ts: i64,
}

/// What a timeline entry says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EntryBody {
    /// An accepted order event: the status after it and the fields it
    /// carried. `active` says whether the driver's location is shared on
    /// the order channel from now on; the entry that ends the order says
    /// `active: false`.
    Status {
        event_id: String,
        status: OrderStatus,
        active: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        driver_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vendor_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        destination: Option<Destination>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<serde_json::Value>,
    },
    /// The estimate moved by more than the threshold.
    Eta { eta_s: u64, distance_m: f64 },
    /// The driver entered the destination radius.
    Arrival { driver_id: String },
    /// The driver left the radius again before delivery.
    Departure { driver_id: String },
}

/// `GET /v1/orders/{order_id}/timeline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineResponse {
    pub entries: Vec<TimelineEntry>,
    pub more: bool,
}

/// One of the driver's active orders, listed in the ingest reply (`orders`)
/// so the driver SDK knows where it is going.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActiveOrder {
    pub order_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
}

/// The `order` frame on channel `order:{order_id}`:
/// `{"type":"order","channel","seq","entry":{"kind",...,"ts"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderFrame {
    #[serde(rename = "type")]
    pub frame_type: OrderFrameType,
    pub channel: String,
    pub seq: u64,
    pub entry: FrameEntry,
}

/// The only value of [`OrderFrame::frame_type`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderFrameType {
    Order,
}

/// A timeline entry inside a frame (its seq is the frame's).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameEntry {
    #[serde(flatten)]
    pub body: EntryBody,
    pub ts: i64,
}

impl OrderFrame {
    pub fn new(order_id: &str, entry: &TimelineEntry) -> Self {
        Self {
            frame_type: OrderFrameType::Order,
            channel: format!("order:{order_id}"),
            seq: entry.seq,
            entry: FrameEntry {
                body: entry.body.clone(),
                ts: entry.ts,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    #[test]
    fn statuses_only_move_forward() {
        assert!(Placed.may_become(Preparing));
        assert!(Preparing.may_become(Preparing));
        assert!(Ready.may_become(Cancelled));
        assert!(!Delivered.may_become(Preparing));
        assert!(!PickedUp.may_become(Accepted));
        assert!(!Delivered.may_become(Cancelled));
        assert!(!Cancelled.may_become(Delivered));
        assert!(Delivered.may_become(Delivered));
    }

    #[test]
    fn event_wire_shape() {
        let e: OrderEvent = serde_json::from_str(
            r#"{"event_id":"e1","status":"picked_up","destination":{"lat":52.1,"lon":4.4}}"#,
        )
        .unwrap();
        assert_eq!(e.status, PickedUp);
        assert_eq!(e.destination.unwrap().radius_m, DEFAULT_ARRIVAL_RADIUS_M);
        assert!(e.validate().is_ok());
        let bad = OrderEvent {
            data: Some(serde_json::json!([1])),
            ..e.clone()
        };
        assert_eq!(bad.validate(), Err(OrderEventError::BadData));
        assert!(
            serde_json::from_str::<OrderEvent>(r#"{"event_id":"e1","status":"lost"}"#).is_err()
        );
    }

    #[test]
    fn entry_wire_shape() {
        let e = TimelineEntry {
            seq: 3,
            body: EntryBody::Eta {
                eta_s: 120,
                distance_m: 900.0,
            },
            ts: 5,
        };
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            serde_json::json!({"seq":3,"kind":"eta","eta_s":120,"distance_m":900.0,"ts":5})
        );
        let back: TimelineEntry =
            serde_json::from_value(serde_json::to_value(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }
}
