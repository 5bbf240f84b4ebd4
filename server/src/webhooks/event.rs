//! The body of every webhook POST.

use serde::{Deserialize, Serialize};

/// The body of every webhook POST.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookEvent {
    /// Idempotency key (also the `Idempotency-Key` header).
    pub id: String,
    /// `order.status`, `order.arrival`, `order.departure`, `driver.online`,
    /// `driver.offline`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Unix ms of the event.
    pub ts: i64,
    pub data: serde_json::Value,
}
