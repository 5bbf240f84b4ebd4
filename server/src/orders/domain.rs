//! The order as stored and the pure rule for applying an event to it.

use serde::{Deserialize, Serialize};
use waypost_protocol::{Destination, EntryBody, OrderEvent, OrderStatus, OrderView, TimelineEntry};

use super::error::OrderError;
use super::eta::TrackerState;

/// An order's current state (one JSON value per order in the stores).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: String,
    pub status: OrderStatus,
    #[serde(default)]
    pub driver_id: Option<String>,
    #[serde(default)]
    pub buyers: Vec<String>,
    #[serde(default)]
    pub vendor_id: Option<String>,
    #[serde(default)]
    pub destination: Option<Destination>,
    /// The latest `data` an event carried.
    #[serde(default)]
    pub data: Option<serde_json::Value>,
    /// Seconds to arrival as last emitted; 0 once arrived; `None` before an
    /// estimate and after the order ended.
    #[serde(default)]
    pub eta_s: Option<u64>,
    /// Highest timeline seq.
    pub seq: u64,
    pub created_ts: i64,
    pub updated_ts: i64,
    #[serde(default)]
    pub tracker: TrackerState,
}

impl Order {
    /// A driver is assigned and the order has not ended: the driver's
    /// location is shared on the order channel.
    pub fn is_active(&self) -> bool {
        self.driver_id.is_some() && !self.status.is_final()
    }

    pub fn view(&self) -> OrderView {
        OrderView {
            order_id: self.order_id.clone(),
            status: self.status,
            driver_id: self.driver_id.clone(),
            vendor_id: self.vendor_id.clone(),
            destination: self.destination,
            eta_s: self.eta_s,
            seq: self.seq,
            updated_ts: self.updated_ts,
        }
    }
}

/// Whether a timeline entry ends the order (delivered or cancelled).
pub fn entry_ends(e: &TimelineEntry) -> bool {
    matches!(&e.body, EntryBody::Status { status, .. } if status.is_final())
}

/// Applies `ev` to `current` (`None`: the event creates the order). Returns
/// the new state (seq advanced by one) and its `status` entry, or
/// [`OrderError::Backwards`].
pub fn apply(
    current: Option<&Order>,
    order_id: &str,
    ev: &OrderEvent,
    now_ms: i64,
) -> Result<(Order, TimelineEntry), OrderError> {
    let mut o = match current {
        Some(o) => {
            if !o.status.may_become(ev.status) {
                return Err(OrderError::Backwards {
                    from: o.status.as_str(),
                    to: ev.status.as_str(),
                });
            }
            o.clone()
        }
        None => Order {
            order_id: order_id.to_owned(),
            status: ev.status,
            driver_id: None,
            buyers: Vec::new(),
            vendor_id: None,
            destination: None,
            data: None,
            eta_s: None,
            seq: 0,
            created_ts: now_ms,
            updated_ts: now_ms,
            tracker: TrackerState::default(),
        },
    };
    o.status = ev.status;
    if let Some(d) = &ev.driver_id {
        if o.driver_id.as_ref() != Some(d) {
            // A new driver starts from scratch.
            o.tracker = TrackerState::default();
            o.eta_s = None;
        }
        o.driver_id = Some(d.clone());
    }
    if let Some(b) = &ev.buyers {
        o.buyers = b.clone();
    }
    if let Some(v) = &ev.vendor_id {
        o.vendor_id = Some(v.clone());
    }
    if let Some(d) = ev.destination {
        if o.destination != Some(d) {
            o.tracker = TrackerState::default();
            o.eta_s = None;
        }
        o.destination = Some(d);
    }
    if let Some(data) = &ev.data {
        o.data = Some(data.clone());
    }
    if o.status.is_final() {
        o.eta_s = None;
    }
    o.seq += 1;
    o.updated_ts = now_ms;
    let entry = TimelineEntry {
        seq: o.seq,
        body: EntryBody::Status {
            event_id: ev.event_id.clone(),
            status: o.status,
            active: o.is_active(),
            driver_id: ev.driver_id.clone(),
            vendor_id: ev.vendor_id.clone(),
            destination: ev.destination,
            data: ev.data.clone(),
        },
        ts: now_ms,
    };
    Ok((o, entry))
}

#[cfg(test)]
mod tests {
    use super::*;
    use OrderStatus::*;

    fn ev(id: &str, status: OrderStatus) -> OrderEvent {
        OrderEvent {
            event_id: id.into(),
            status,
            order_id: None,
            driver_id: None,
            buyers: None,
            vendor_id: None,
            destination: None,
            data: None,
        }
    }

    #[test]
    fn life_of_an_order() {
        let (o, e) = apply(None, "o1", &ev("e1", Placed), 10).unwrap();
        assert_eq!(
            (o.seq, e.seq, o.status, o.is_active()),
            (1, 1, Placed, false)
        );
        let assign = OrderEvent {
            driver_id: Some("d1".into()),
            vendor_id: Some("v1".into()),
            ..ev("e2", Accepted)
        };
        let (o, e) = apply(Some(&o), "o1", &assign, 20).unwrap();
        assert!(o.is_active());
        assert_eq!(o.vendor_id.as_deref(), Some("v1"));
        assert!(matches!(e.body, EntryBody::Status { active: true, .. }));
        // Field update keeping the status.
        let (o, _) = apply(
            Some(&o),
            "o1",
            &OrderEvent {
                data: Some(serde_json::json!({"note": "x"})),
                ..ev("e3", Accepted)
            },
            30,
        )
        .unwrap();
        assert_eq!(o.driver_id.as_deref(), Some("d1"), "kept");
        assert_eq!(o.seq, 3);
        let (o, e) = apply(Some(&o), "o1", &ev("e4", Delivered), 40).unwrap();
        assert!(!o.is_active());
        assert!(matches!(
            e.body,
            EntryBody::Status {
                active: false,
                status: Delivered,
                ..
            }
        ));
        assert_eq!(o.created_ts, 10);
        assert_eq!(o.updated_ts, 40);
        let back = apply(Some(&o), "o1", &ev("e5", Preparing), 50);
        assert!(matches!(
            back,
            Err(OrderError::Backwards {
                from: "delivered",
                to: "preparing"
            })
        ));
    }
}
