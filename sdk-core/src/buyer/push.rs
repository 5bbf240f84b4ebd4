//! Push for sleeping apps (issue 19): registering the platform token and
//! turning a received push into exactly the missed items.
//!
//! A push carries `channel`, the highest `seq` it covers and a count
//! (`waypost_protocol::PushData`). [`BuyerClient::handle_push`](super::BuyerClient::handle_push)
//! reads what this device does not have yet over HTTP: for a chat room,
//! the messages after the store's last seq (stored like live ones, so the
//! timeline and the next resume include them); for an order, the timeline
//! entries after the last one a push sync returned (kept in the store).
//! Vendor notifications are not fetched (their stream resumes with
//! `Last-Event-ID`); the push data is returned as is.

use serde::Deserialize;
use waypost_protocol::{
    ChatMessage, DeviceRegistered, FrameEntry, MessagesResponse, PushData, PushKind,
    TimelineResponse,
};

use super::types::{ChatEntry, OrderEntry};
use crate::error::WaypostError;
use crate::transport::{HttpError, HttpHeader, HttpRequest, HttpTransport};

/// Which push service a token belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum PushPlatform {
    /// Apple Push Notification service (iOS): the device token as hex.
    Apns,
    /// Firebase Cloud Messaging (Android): the registration token.
    Fcm,
}

impl PushPlatform {
    pub fn as_str(self) -> &'static str {
        match self {
            PushPlatform::Apns => "apns",
            PushPlatform::Fcm => "fcm",
        }
    }
}

/// What [`handle_push`](super::BuyerClient::handle_push) fetched.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PushSync {
    /// `message`, `order`, `notification` or `test`.
    pub kind: String,
    pub channel: String,
    /// The highest seq the push covered.
    pub seq: u64,
    /// Items the push said it covers.
    pub count: u32,
    /// Chat messages fetched (seq order), stored like live ones.
    pub messages: Vec<ChatEntry>,
    /// Order timeline entries fetched (seq order).
    pub order_entries: Vec<OrderEntry>,
    /// Whether everything up to `seq` was fetched.
    pub complete: bool,
}

/// Most pages one push sync reads.
pub const MAX_PUSH_PAGES: usize = 20;
/// Page size of one timeline read.
const TIMELINE_PAGE: usize = 100;

pub(crate) fn bearer(token: &str) -> HttpHeader {
    HttpHeader::new("authorization", format!("Bearer {token}"))
}

/// `POST /v1/devices`.
pub(crate) async fn register(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    device_id: &str,
    platform: PushPlatform,
    push_token: &str,
) -> Result<DeviceRegistered, WaypostError> {
    let body = serde_json::json!({
        "device_id": device_id,
        "platform": platform.as_str(),
        "token": push_token,
    });
    let response = transport
        .send(HttpRequest {
            method: "POST".into(),
            url: format!("{base}/v1/devices"),
            headers: vec![
                bearer(token),
                HttpHeader::new("content-type", "application/json"),
            ],
            body: body.to_string().into_bytes(),
        })
        .await?;
    Ok(HttpError::json(&response)?)
}

/// `DELETE /v1/devices/{device_id}`; an unknown device is fine.
pub(crate) async fn unregister(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    device_id: &str,
) -> Result<(), WaypostError> {
    let response = transport
        .send(HttpRequest {
            method: "DELETE".into(),
            url: format!("{base}/v1/devices/{device_id}"),
            headers: vec![bearer(token)],
            body: Vec::new(),
        })
        .await?;
    if response.status == 404 || (200..300).contains(&response.status) {
        return Ok(());
    }
    Err(HttpError::json::<serde_json::Value>(&response)
        .err()
        .map(WaypostError::from)
        .unwrap_or_else(|| WaypostError::invalid("unexpected reply")))
}

/// Parses a push payload (APNs `userInfo`, FCM `data`, or the bare
/// object).
pub fn parse(payload: &str) -> Result<PushData, WaypostError> {
    PushData::parse(payload).map_err(|e| WaypostError::invalid(format!("not a Waypost push: {e}")))
}

pub(crate) fn kind_name(kind: PushKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Chat messages after `after` up to `seq`, page by page.
pub(crate) async fn chat_gap(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    room: &str,
    mut after: u64,
    seq: u64,
) -> Result<(Vec<ChatMessage>, bool), WaypostError> {
    let mut out = Vec::new();
    for _ in 0..MAX_PUSH_PAGES {
        if after >= seq {
            return Ok((out, true));
        }
        let page: MessagesResponse =
            super::chat::fetch_page(transport, base, token, room, after).await?;
        let Some(last) = page.messages.last().map(|m| m.seq) else {
            // Trimmed or expired: nothing more to read.
            return Ok((out, false));
        };
        after = last;
        out.extend(page.messages);
        if !page.more {
            return Ok((out, after >= seq));
        }
    }
    Ok((out, after >= seq))
}

#[derive(Deserialize)]
struct Entry {
    seq: u64,
    #[serde(flatten)]
    entry: FrameEntry,
}

/// Order timeline entries after `after` up to `seq`.
pub(crate) async fn order_gap(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    order_id: &str,
    mut after: u64,
    seq: u64,
) -> Result<(Vec<OrderEntry>, bool), WaypostError> {
    let mut out = Vec::new();
    for _ in 0..MAX_PUSH_PAGES {
        if after >= seq {
            return Ok((out, true));
        }
        let response = transport
            .send(HttpRequest {
                method: "GET".into(),
                url: format!(
                    "{base}/v1/orders/{order_id}/timeline?after_seq={after}&limit={TIMELINE_PAGE}"
                ),
                headers: vec![bearer(token)],
                body: Vec::new(),
            })
            .await?;
        let page: TimelineResponse = HttpError::json(&response)?;
        let Some(last) = page.entries.last().map(|e| e.seq) else {
            return Ok((out, false));
        };
        after = last;
        for e in page.entries {
            let v = serde_json::to_value(&e).map_err(|e| WaypostError::invalid(e.to_string()))?;
            let parsed: Entry =
                serde_json::from_value(v).map_err(|e| WaypostError::invalid(e.to_string()))?;
            out.push(OrderEntry::from_wire(order_id, parsed.seq, parsed.entry));
        }
        if !page.more {
            return Ok((out, after >= seq));
        }
    }
    Ok((out, after >= seq))
}
