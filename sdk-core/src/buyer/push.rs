//! Push for sleeping apps (issue 19): registering the platform token and
//! turning a received push into exactly the missed items.
//!
//! A push carries `channel`, the highest `seq` it covers and a count
//! (`waypost_protocol::PushData`). [`BuyerClient::handle_push`](super::BuyerClient::handle_push)
//! reads what this device does not have yet over HTTP: for a chat room,
//! the messages after the store's last seq (stored like live ones, so the
//! timeline and the next resume include them); for an order, the timeline
//! entries after the last one this device has (the newest of what live
//! tracking delivered and what a push sync returned, kept in the store);
//! for a vendor's notifications, those after the last one a push sync
//! returned (`GET /v1/vendors/{id}/notifications?after_seq=`). Every read
//! stops at the pushed seq: exactly the gap, nothing after it (a later
//! push covers what came since).

use serde::Deserialize;
use waypost_protocol::{
    ChatMessage, DeviceRegistered, FrameEntry, MessagesResponse, NotificationsResponse, PushData,
    PushKind, TimelineEntry, TimelineResponse,
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
    /// Vendor notifications fetched (seq order), for kind `notification`.
    pub notifications: Vec<VendorNotification>,
    /// Whether everything up to `seq` was fetched.
    pub complete: bool,
}

/// A stored vendor notification, as a push sync fetched it.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct VendorNotification {
    pub vendor_id: String,
    /// Per vendor, gap-free from 1 (the SSE `id:`).
    pub seq: u64,
    /// The event name (e.g. `new-order`).
    pub event: String,
    /// The posted `data`, as JSON.
    pub data_json: String,
    /// When it was stored, Unix ms.
    pub ts_ms: i64,
}

/// Most pages one push sync reads.
pub const MAX_PUSH_PAGES: usize = 20;
/// Page size of one timeline or notification read.
const TIMELINE_PAGE: u64 = 100;

/// The store key of the last order entry or vendor notification this
/// device has, per channel (`order:{id}`, `vendor:{id}`).
pub(crate) fn cursor_key(channel: &str) -> String {
    format!("push_cursor:{channel}")
}

/// The page size that reads at most up to `seq` after `after`.
fn page_limit(after: u64, seq: u64) -> u64 {
    seq.saturating_sub(after).clamp(1, TIMELINE_PAGE)
}

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

/// Reads a gap page by page: `fetch(after)` answers the page of items
/// after `after` and whether more follow; `seq_of` is an item's seq.
/// Returns the items up to `seq` in order and whether the gap is complete
/// (false when the log was trimmed or expired, or after
/// [`MAX_PUSH_PAGES`] pages).
async fn read_gap<T, F, Fut>(
    mut after: u64,
    seq: u64,
    seq_of: fn(&T) -> u64,
    mut fetch: F,
) -> Result<(Vec<T>, bool), WaypostError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, bool), WaypostError>>,
{
    let mut out = Vec::new();
    for _ in 0..MAX_PUSH_PAGES {
        if after >= seq {
            return Ok((out, true));
        }
        let (items, more) = fetch(after).await?;
        let Some(last) = items.last().map(seq_of) else {
            // Trimmed or expired: nothing more to read.
            return Ok((out, false));
        };
        after = last;
        out.extend(items.into_iter().filter(|i| seq_of(i) <= seq));
        if !more {
            return Ok((out, after >= seq));
        }
    }
    Ok((out, after >= seq))
}

/// `GET {url}` with the bearer `token`, parsed as JSON.
async fn get_json<T: serde::de::DeserializeOwned>(
    transport: &dyn HttpTransport,
    url: String,
    token: &str,
) -> Result<T, WaypostError> {
    let response = transport
        .send(HttpRequest {
            method: "GET".into(),
            url,
            headers: vec![bearer(token)],
            body: Vec::new(),
        })
        .await?;
    Ok(HttpError::json(&response)?)
}

/// Chat messages after `after` up to `seq`, page by page.
pub(crate) async fn chat_gap(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    room: &str,
    after: u64,
    seq: u64,
) -> Result<(Vec<ChatMessage>, bool), WaypostError> {
    read_gap(
        after,
        seq,
        |m: &ChatMessage| m.seq,
        |after| async move {
            let page: MessagesResponse =
                super::chat::fetch_page(transport, base, token, room, after).await?;
            Ok((page.messages, page.more))
        },
    )
    .await
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
    after: u64,
    seq: u64,
) -> Result<(Vec<OrderEntry>, bool), WaypostError> {
    let (entries, complete) = read_gap(
        after,
        seq,
        |e: &TimelineEntry| e.seq,
        |after| {
            let url = format!(
                "{base}/v1/orders/{order_id}/timeline?after_seq={after}&limit={}",
                page_limit(after, seq)
            );
            async move {
                let page: TimelineResponse = get_json(transport, url, token).await?;
                Ok((page.entries, page.more))
            }
        },
    )
    .await?;
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        let v = serde_json::to_value(&e).map_err(|e| WaypostError::invalid(e.to_string()))?;
        let parsed: Entry =
            serde_json::from_value(v).map_err(|e| WaypostError::invalid(e.to_string()))?;
        out.push(OrderEntry::from_wire(order_id, parsed.seq, parsed.entry));
    }
    Ok((out, complete))
}

/// A vendor's notifications after `after` up to `seq`
/// (`GET /v1/vendors/{vendor_id}/notifications`).
pub(crate) async fn notification_gap(
    transport: &dyn HttpTransport,
    base: &str,
    token: &str,
    vendor_id: &str,
    after: u64,
    seq: u64,
) -> Result<(Vec<VendorNotification>, bool), WaypostError> {
    let (notifications, complete) = read_gap(
        after,
        seq,
        |n: &waypost_protocol::VendorNotification| n.seq,
        |after| {
            let url = format!(
                "{base}/v1/vendors/{vendor_id}/notifications?after_seq={after}&limit={}",
                page_limit(after, seq)
            );
            async move {
                let page: NotificationsResponse = get_json(transport, url, token).await?;
                Ok((page.notifications, page.more))
            }
        },
    )
    .await?;
    let out = notifications
        .into_iter()
        .map(|n| VendorNotification {
            vendor_id: vendor_id.to_owned(),
            seq: n.seq,
            event: n.event,
            data_json: n.data.to_string(),
            ts_ms: n.ts,
        })
        .collect();
    Ok((out, complete))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{HttpResponse, TransportError};
    use async_trait::async_trait;
    use parking_lot::Mutex;
    use waypost_protocol::{EntryBody, OrderStatus, TimelineEntry, VendorNotification as Wire};

    /// Serves an order timeline and a vendor's notifications with seqs
    /// `1..=high`, honouring `after_seq` and `limit` like the server, and
    /// records the URLs asked.
    struct Server {
        high: u64,
        /// Oldest retained seq (older ones were trimmed).
        oldest: u64,
        urls: Mutex<Vec<String>>,
    }

    fn param(url: &str, name: &str) -> Option<u64> {
        url.split(&format!("{name}="))
            .nth(1)
            .and_then(|r| r.split('&').next())
            .and_then(|n| n.parse().ok())
    }

    #[async_trait]
    impl HttpTransport for Server {
        async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
            self.urls.lock().push(request.url.clone());
            let after = param(&request.url, "after_seq").unwrap_or(0);
            let limit = param(&request.url, "limit").unwrap_or(100);
            let seqs: Vec<u64> = (after.max(self.oldest - 1) + 1..=self.high)
                .take(limit as usize)
                .collect();
            let more = seqs.last().is_some_and(|&s| s < self.high);
            let body = if request.url.contains("/timeline") {
                serde_json::to_vec(&TimelineResponse {
                    entries: seqs
                        .iter()
                        .map(|&seq| TimelineEntry {
                            seq,
                            body: EntryBody::Status {
                                event_id: format!("e{seq}"),
                                status: OrderStatus::Preparing,
                                active: true,
                                driver_id: None,
                                vendor_id: None,
                                destination: None,
                                data: None,
                            },
                            ts: seq as i64,
                        })
                        .collect(),
                    more,
                })
            } else {
                serde_json::to_vec(&NotificationsResponse {
                    notifications: seqs
                        .iter()
                        .map(|&seq| Wire {
                            id: seq.to_string(),
                            seq,
                            event: "new-order".into(),
                            data: serde_json::json!({"n": seq}),
                            ts: seq as i64,
                        })
                        .collect(),
                    more,
                })
            }
            .map_err(|e| TransportError::Connect {
                message: e.to_string(),
            })?;
            Ok(HttpResponse {
                status: 200,
                headers: Vec::new(),
                body,
            })
        }
    }

    fn server(high: u64, oldest: u64) -> Server {
        Server {
            high,
            oldest,
            urls: Mutex::new(Vec::new()),
        }
    }

    #[tokio::test]
    async fn notifications_sync_exactly_the_gap() {
        let s = server(300, 1);
        let (got, complete) = notification_gap(&s, "http://x", "t", "v1", 4, 7)
            .await
            .unwrap();
        let seqs: Vec<u64> = got.iter().map(|n| n.seq).collect();
        assert_eq!(seqs, [5, 6, 7]);
        assert!(complete);
        assert_eq!(got[0].vendor_id, "v1");
        assert_eq!(got[0].event, "new-order");
        assert_eq!(got[0].data_json, r#"{"n":5}"#);
        // One page, no more than the gap asked for.
        assert_eq!(
            *s.urls.lock(),
            ["http://x/v1/vendors/v1/notifications?after_seq=4&limit=3"]
        );

        // A long gap reads page by page and still stops at the pushed seq.
        let s = server(300, 1);
        let (got, complete) = notification_gap(&s, "http://x", "t", "v1", 0, 250)
            .await
            .unwrap();
        assert_eq!(got.len(), 250);
        assert!(got.windows(2).all(|w| w[1].seq == w[0].seq + 1));
        assert_eq!(got.last().map(|n| n.seq), Some(250));
        assert!(complete);
        assert_eq!(s.urls.lock().len(), 3);

        // Nothing missing: no request at all.
        let s = server(300, 1);
        let (got, complete) = notification_gap(&s, "http://x", "t", "v1", 9, 9)
            .await
            .unwrap();
        assert!(got.is_empty() && complete);
        assert!(s.urls.lock().is_empty());
    }

    #[tokio::test]
    async fn a_trimmed_history_is_reported_incomplete() {
        // Only 6.. are retained; the push covers 8 and the device has 2.
        let s = server(10, 6);
        let (got, complete) = notification_gap(&s, "http://x", "t", "v1", 2, 8)
            .await
            .unwrap();
        let seqs: Vec<u64> = got.iter().map(|n| n.seq).collect();
        assert_eq!(seqs, [6, 7, 8]);
        assert!(complete, "everything up to the pushed seq was read");
        // Nothing retained after the cursor.
        let s = server(10, 11);
        let (got, complete) = notification_gap(&s, "http://x", "t", "v1", 2, 8)
            .await
            .unwrap();
        assert!(got.is_empty());
        assert!(!complete);
    }

    #[tokio::test]
    async fn order_milestones_sync_exactly_the_gap() {
        let s = server(12, 1);
        let (got, complete) = order_gap(&s, "http://x", "t", "o1", 3, 9).await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|e| e.seq).collect();
        assert_eq!(
            seqs,
            [4, 5, 6, 7, 8, 9],
            "not 10..12: a later push covers them"
        );
        assert!(complete);
        assert!(got.iter().all(|e| e.order_id == "o1"));
        assert_eq!(
            *s.urls.lock(),
            ["http://x/v1/orders/o1/timeline?after_seq=3&limit=6"]
        );
    }
}
