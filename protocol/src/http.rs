//! HTTP request and response bodies, error bodies and JWT claims.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fix::Fix;
use crate::frames::ChatMessage;

/// Most fixes one ingest batch may carry.
pub const MAX_BATCH_FIXES: usize = 1000;
/// Largest ingest body in bytes (after decompression).
pub const MAX_BATCH_BYTES: usize = 512 * 1024;

/// `POST /v1/drivers/{driver_id}/locations`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IngestRequest {
    pub device_id: String,
    pub fixes: Vec<Fix>,
    /// Why uploads did not get through for a while (optional; sent with the
    /// first upload after such a silence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub silence: Option<crate::Silence>,
}

/// Whether anyone is watching the driver; drives the SDK's upload cadence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyMode {
    Watched,
    Unwatched,
}

/// The server's hint to the SDK in every ingest reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHint {
    pub mode: PolicyMode,
    pub upload_interval_s: u32,
}

/// Reply to an ingest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestResponse {
    pub accepted: u32,
    pub duplicates: u32,
    /// Highest seq in the batch: every fix at or below it is stored.
    pub high_seq: u64,
    pub watchers: u64,
    pub policy: PolicyHint,
}

/// `GET /v1/drivers/{driver_id}/location`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocationResponse {
    pub driver_id: String,
    pub fix: Fix,
    pub age_ms: i64,
    pub online: bool,
}

/// `GET /v1/drivers/{driver_id}/trail`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrailResponse {
    pub fixes: Vec<Fix>,
}

/// `POST /v1/chats/{room}/messages`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatPost {
    pub client_id: String,
    pub body: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<crate::Attachment>,
    /// `"system"` (only `service` may post it), or `"edit"`/`"delete"`
    /// with `ref_seq`; absent for a plain message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<crate::MessageKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_seq: Option<u64>,
}

/// One participant's receipt markers in a room: the highest seq its
/// devices delivered and the highest it read (0: none).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ParticipantReceipts {
    pub user: String,
    pub delivered: u64,
    pub read: u64,
}

/// `GET /v1/chats/{room}/messages`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessagesResponse {
    pub messages: Vec<ChatMessage>,
    pub more: bool,
    /// Every participant's markers (the caller's included), by user.
    #[serde(default)]
    pub receipts: Vec<ParticipantReceipts>,
    /// Messages from others (plain and system) after the caller's read
    /// marker.
    #[serde(default)]
    pub unread: u64,
}

/// `POST /v1/vendors/{vendor_id}/notifications`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationPost {
    pub event: String,
    #[serde(default)]
    pub data: Value,
}

/// `202` reply to a notification post.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationAccepted {
    pub id: String,
}

/// One stored vendor notification, as
/// `GET /v1/vendors/{vendor_id}/notifications` returns it (`id` is the SSE
/// `id:`, the decimal form of `seq`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VendorNotification {
    pub id: String,
    pub seq: u64,
    pub event: String,
    #[serde(default)]
    pub data: Value,
    /// When it was stored, Unix ms.
    pub ts: i64,
}

/// `GET /v1/vendors/{vendor_id}/notifications?after_seq=N&limit=M`:
/// notifications with `seq > N`, lowest first; `more` when newer ones
/// exist beyond this page.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotificationsResponse {
    pub notifications: Vec<VendorNotification>,
    pub more: bool,
}

/// `{"error":{"code":..,"message":..}}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    /// For `bad_fix`: the seq of the first refused fix, so the SDK can
    /// quarantine exactly that fix (a Waypost extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl ErrorBody {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
                seq: None,
            },
        }
    }
}

/// Who holds a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Driver,
    Buyer,
    Vendor,
    Service,
}

/// JWT claims (HS256).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub role: Role,
    /// Expiry, Unix seconds.
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_response_matches_contract_example() {
        let json = r#"{"accepted":1,"duplicates":0,"high_seq":41,"watchers":3,"policy":{"mode":"watched","upload_interval_s":5}}"#;
        let r: IngestResponse = serde_json::from_str(json).unwrap();
        assert_eq!(r.policy.mode, PolicyMode::Watched);
        assert_eq!(serde_json::to_string(&r).unwrap(), json);
    }

    #[test]
    fn ingest_request_with_all_fields() {
        let json = r#"{"device_id":"dev-1","fixes":[{"seq":41,"ts":1700000000000,"lat":52.52,"lon":13.405,"accuracy_m":8.0,"speed_mps":11.2,"heading_deg":270.0,"altitude_m":34.0,"battery":0.62,"charging":false}]}"#;
        let r: IngestRequest = serde_json::from_str(json).unwrap();
        assert_eq!(r.fixes[0].charging, Some(false));
        assert_eq!(r.fixes[0].battery, Some(0.62));
    }

    #[test]
    fn claims_and_roles() {
        let c: Claims = serde_json::from_str(
            r#"{"sub":"b-1","role":"buyer","exp":2000000000,"channels":["tracking:d-1"]}"#,
        )
        .unwrap();
        assert_eq!(c.role, Role::Buyer);
        assert!(serde_json::from_str::<Claims>(r#"{"sub":"x","role":"admin","exp":1}"#).is_err());
    }
}
