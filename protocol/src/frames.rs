//! WebSocket text frames: one JSON object each, discriminated by `type`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::fix::Fix;

/// Frames a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Join `tracking:{driver}` or `chat:{room}`; with `after`, replay what
    /// came after that seq first.
    Subscribe {
        channel: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    Unsubscribe {
        channel: String,
    },
    /// Post a chat message; `client_id` makes retries idempotent.
    Send {
        room: String,
        client_id: String,
        body: String,
        /// Attachment metadata (the files live in the app's own storage).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        attachments: Vec<Attachment>,
    },
    /// Replace the body of message `seq` (its sender, or `service`); stored
    /// as a new `message` with `kind: "edit"` and `ref_seq`. An optional
    /// `client_id` makes a resend idempotent (the stored entry takes it and
    /// a repeat is acked with the original, as for `send`).
    Edit {
        room: String,
        seq: u64,
        body: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// Delete message `seq` (its sender, or `service`); stored as a new
    /// `message` with `kind: "delete"` and `ref_seq`; `client_id` as for
    /// `edit`.
    Delete {
        room: String,
        seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client_id: Option<String>,
    },
    /// This user's devices delivered (or the user read) the room up to `seq`.
    Receipt {
        room: String,
        seq: u64,
        kind: ReceiptKind,
    },
    /// Fetch chat messages after a seq.
    Sync {
        room: String,
        after_seq: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Typing {
        room: String,
    },
    /// Application-level ping; `id` is echoed in the `pong`.
    Ping {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    /// In-band token refresh: the connection goes on with `token` (same
    /// user and role), answered by `refreshed` or an `error` frame.
    Refresh {
        token: String,
    },
}

/// Why the server ended a subscription (`unsubscribed.reason`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnsubscribeReason {
    /// A refreshed token no longer allows the channel.
    Forbidden,
    /// A reason this version does not know (a newer server).
    #[serde(other)]
    Other,
}

impl UnsubscribeReason {
    /// The wire name (`error` frame codes use the same words).
    pub fn as_str(&self) -> &'static str {
        match self {
            UnsubscribeReason::Forbidden => "forbidden",
            UnsubscribeReason::Other => "other",
        }
    }
}

/// Metadata of a file attached to a message; the upload itself goes to the
/// app's own storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub url: String,
    pub mime: String,
    /// Bytes.
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What a stored message is, when it is not a plain message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// New body for message `ref_seq`.
    Edit,
    /// Message `ref_seq` was deleted.
    Delete,
    /// Posted by `service` (e.g. "courier assigned").
    System,
}

/// Which tick a receipt moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Delivered,
    Read,
}

impl ReceiptKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReceiptKind::Delivered => "delivered",
            ReceiptKind::Read => "read",
        }
    }
}

/// A stored chat message as delivered to clients.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Per room, gap-free, starting at 1.
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub client_id: String,
    pub body: String,
    pub ts: i64,
    /// Absent for a plain message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<MessageKind>,
    /// The message an `edit` or `delete` refers to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// Frames the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    Subscribed {
        channel: String,
        /// True when every missed item was replayed.
        recovered: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        high_seq: Option<u64>,
    },
    Unsubscribed {
        channel: String,
        /// Why the server ended it (absent when the client asked):
        /// `forbidden` when a refreshed token no longer allows it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<UnsubscribeReason>,
    },
    /// The connection's token expires at `exp` (Unix s): refresh in band
    /// before then, or the connection closes with 4001.
    TokenExpiring {
        exp: u64,
    },
    /// The answer to `refresh`: the connection now runs on a token that
    /// expires at `exp` (Unix s).
    Refreshed {
        exp: u64,
    },
    Location {
        channel: String,
        driver_id: String,
        fix: Fix,
    },
    Message(ChatMessage),
    /// The segment of a driver's path watchers missed (a dead zone), oldest
    /// first, thinned to at most [`MAX_TRAIL_FIXES`](crate::MAX_TRAIL_FIXES);
    /// sent before the `location` of the upload that filled it.
    Trail {
        channel: String,
        driver_id: String,
        fixes: Vec<Fix>,
    },
    /// A driver went quiet past the online TTL, or came back.
    DriverStatus {
        channel: String,
        driver_id: String,
        #[serde(flatten)]
        body: crate::DriverStatusBody,
    },
    /// An order timeline entry on `order:{id}` (the shape of
    /// [`OrderFrame`](crate::OrderFrame), which the server writes).
    Order {
        channel: String,
        seq: u64,
        entry: crate::FrameEntry,
    },
    /// The ack of a `send`; the same answer on a retry.
    Sent {
        client_id: String,
        room: String,
        seq: u64,
        id: String,
    },
    Synced {
        room: String,
        messages: Vec<ChatMessage>,
        more: bool,
    },
    Presence {
        room: String,
        user: String,
        online: bool,
    },
    /// `user` delivered or read the room up to `seq` (monotonic per user,
    /// room and kind).
    Receipt {
        room: String,
        user: String,
        kind: ReceiptKind,
        seq: u64,
    },
    Typing {
        room: String,
        user: String,
    },
    Pong {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Value>,
    },
    Error {
        code: String,
        message: String,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<String>,
    },
}

impl ServerFrame {
    /// Serializes the frame. Serializing these types cannot fail (no maps
    /// with non-string keys, no failing `Serialize` impls), so this returns
    /// a `String` rather than a `Result`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            // Unreachable for these types; keep the wire valid regardless.
            format!(r#"{{"type":"error","code":"internal","message":"{e}"}}"#)
        })
    }

    pub fn error(code: &str, message: impl Into<String>, reference: Option<String>) -> Self {
        Self::Error {
            code: code.to_owned(),
            message: message.into(),
            reference,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_frames_parse_from_contract_examples() {
        let f: ClientFrame =
            serde_json::from_str(r#"{"type":"subscribe","channel":"tracking:d1"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Subscribe {
                channel: "tracking:d1".into(),
                after: None
            }
        );
        let f: ClientFrame = serde_json::from_str(
            r#"{"type":"send","room":"order-42","client_id":"c-1","body":"hi"}"#,
        )
        .unwrap();
        assert!(matches!(f, ClientFrame::Send { .. }));
        let f: ClientFrame = serde_json::from_str(r#"{"type":"ping","id":7}"#).unwrap();
        assert_eq!(f, ClientFrame::Ping { id: Some(7.into()) });
        let f: ClientFrame = serde_json::from_str(r#"{"type":"refresh","token":"a.b.c"}"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::Refresh {
                token: "a.b.c".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"type":"refresh","token":"a.b.c"}"#
        );
        assert!(serde_json::from_str::<ClientFrame>(r#"{"type":"nope"}"#).is_err());
    }

    #[test]
    fn chat_extension_frames_round_trip() {
        for text in [
            r#"{"type":"receipt","room":"r","seq":4,"kind":"read"}"#,
            r#"{"type":"edit","room":"r","seq":4,"body":"fixed"}"#,
            r#"{"type":"delete","room":"r","seq":4}"#,
            r#"{"type":"send","room":"r","client_id":"c","body":"pic","attachments":[{"url":"https://x/y.jpg","mime":"image/jpeg","size":10,"width":4,"height":3,"name":"y.jpg"}]}"#,
        ] {
            let f: ClientFrame = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&f).unwrap(), text);
        }
        for text in [
            r#"{"type":"receipt","room":"r","user":"u","kind":"delivered","seq":4}"#,
            r#"{"type":"message","room":"r","seq":5,"id":"r-5","from":"u","client_id":"c","body":"","ts":1,"kind":"delete","ref_seq":4}"#,
            r#"{"type":"message","room":"r","seq":6,"id":"r-6","from":"service","client_id":"c","body":"courier assigned","ts":1,"kind":"system"}"#,
        ] {
            let f: ServerFrame = serde_json::from_str(text).unwrap();
            assert_eq!(f.to_json(), text);
        }
        assert!(serde_json::from_str::<ClientFrame>(
            r#"{"type":"receipt","room":"r","seq":4,"kind":"seen"}"#
        )
        .is_err());
    }

    #[test]
    fn order_frames_parse_as_server_frames() {
        let entry = crate::TimelineEntry {
            seq: 3,
            body: crate::EntryBody::Eta {
                eta_s: 120,
                distance_m: 800.0,
            },
            ts: 1_700_000_000_000,
        };
        let text = serde_json::to_string(&crate::OrderFrame::new("o-1", &entry)).unwrap();
        let f: ServerFrame = serde_json::from_str(&text).unwrap();
        assert_eq!(
            f,
            ServerFrame::Order {
                channel: "order:o-1".into(),
                seq: 3,
                entry: crate::FrameEntry {
                    body: entry.body.clone(),
                    ts: entry.ts
                },
            }
        );
        assert_eq!(f.to_json(), text);
    }

    #[test]
    fn trail_and_driver_status_round_trip() {
        let t = ServerFrame::Trail {
            channel: "tracking:d1".into(),
            driver_id: "d1".into(),
            fixes: vec![Fix::new(4, 10, 1.0, 2.0), Fix::new(5, 20, 1.5, 2.5)],
        };
        let text = t.to_json();
        assert!(
            text.starts_with(
                r#"{"type":"trail","channel":"tracking:d1","driver_id":"d1","fixes":[{"seq":4,"#
            ),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&text).unwrap(), t);

        let back = ServerFrame::DriverStatus {
            channel: "order:o1".into(),
            driver_id: "d1".into(),
            body: crate::DriverStatusBody {
                status: crate::DriverState::Online,
                last_seen_ms: 1_000,
                dark_ms: Some(45_000),
                reason: Some(crate::SilenceReason::Offline),
                buffered: Some(45),
            },
        };
        let text = back.to_json();
        assert_eq!(
            text,
            r#"{"type":"driver_status","channel":"order:o1","driver_id":"d1","status":"online","last_seen_ms":1000,"dark_ms":45000,"reason":"offline","buffered":45}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&text).unwrap(), back);
        let dark = ServerFrame::DriverStatus {
            channel: "tracking:d1".into(),
            driver_id: "d1".into(),
            body: crate::DriverStatusBody {
                status: crate::DriverState::Offline,
                last_seen_ms: 1_000,
                dark_ms: None,
                reason: None,
                buffered: None,
            },
        };
        let text = dark.to_json();
        assert_eq!(
            text,
            r#"{"type":"driver_status","channel":"tracking:d1","driver_id":"d1","status":"offline","last_seen_ms":1000}"#
        );
        assert_eq!(serde_json::from_str::<ServerFrame>(&text).unwrap(), dark);
        // A reason a newer SDK or server knows reads as `unknown`.
        let v: crate::Silence =
            serde_json::from_str(r#"{"reason":"airplane_mode","dark_ms":5}"#).unwrap();
        assert_eq!(v.reason, crate::SilenceReason::Unknown);
        assert_eq!(v.dark_ms, Some(5));
    }

    #[test]
    fn ingest_silence_is_optional_and_compatible() {
        let old: crate::IngestRequest = serde_json::from_str(
            r#"{"device_id":"p","fixes":[{"seq":1,"ts":1,"lat":1.0,"lon":2.0}]}"#,
        )
        .unwrap();
        assert_eq!(old.silence, None);
        assert!(!serde_json::to_string(&old).unwrap().contains("silence"));
        let new = crate::IngestRequest {
            silence: Some(crate::Silence {
                reason: crate::SilenceReason::BatterySaver,
                dark_ms: Some(60_000),
                buffered: Some(12),
            }),
            ..old
        };
        let text = serde_json::to_string(&new).unwrap();
        assert!(
            text.ends_with(
                r#""silence":{"reason":"battery_saver","dark_ms":60000,"buffered":12}}"#
            ),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<crate::IngestRequest>(&text).unwrap(),
            new
        );
    }

    #[test]
    fn server_frames_have_contract_shape() {
        let f = ServerFrame::Location {
            channel: "tracking:d1".into(),
            driver_id: "d1".into(),
            fix: Fix::new(1, 1_700_000_000_000, 52.5, 13.4),
        };
        assert_eq!(
            f.to_json(),
            r#"{"type":"location","channel":"tracking:d1","driver_id":"d1","fix":{"seq":1,"ts":1700000000000,"lat":52.5,"lon":13.4}}"#
        );
        let m = ServerFrame::Message(ChatMessage {
            room: "r".into(),
            seq: 3,
            id: "r-3".into(),
            from: "u".into(),
            client_id: "c".into(),
            body: "hi".into(),
            ts: 5,
            ..Default::default()
        });
        let v: Value = serde_json::from_str(&m.to_json()).unwrap();
        assert_eq!(v["type"], "message");
        assert_eq!(v["seq"], 3);
        let e = ServerFrame::error("forbidden", "no", Some("tracking:x".into()));
        let v: Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["ref"], "tracking:x");
        let back: ServerFrame = serde_json::from_value(v).unwrap();
        assert_eq!(back, e);
    }

    /// The token session frames of docs/API-EXTENSIONS.md, byte for byte.
    #[test]
    fn session_frames_have_contract_shape() {
        let cases = [
            (
                ServerFrame::TokenExpiring { exp: 1000 },
                r#"{"type":"token_expiring","exp":1000}"#,
            ),
            (
                ServerFrame::Refreshed { exp: 2000 },
                r#"{"type":"refreshed","exp":2000}"#,
            ),
            (
                ServerFrame::Unsubscribed {
                    channel: "tracking:d1".into(),
                    reason: Some(UnsubscribeReason::Forbidden),
                },
                r#"{"type":"unsubscribed","channel":"tracking:d1","reason":"forbidden"}"#,
            ),
            (
                ServerFrame::Unsubscribed {
                    channel: "tracking:d1".into(),
                    reason: None,
                },
                r#"{"type":"unsubscribed","channel":"tracking:d1"}"#,
            ),
        ];
        for (frame, text) in cases {
            assert_eq!(frame.to_json(), text);
            assert_eq!(serde_json::from_str::<ServerFrame>(text).unwrap(), frame);
        }
        // A reason from a newer server still parses.
        let f: ServerFrame = serde_json::from_str(
            r#"{"type":"unsubscribed","channel":"tracking:d1","reason":"moved"}"#,
        )
        .unwrap();
        assert_eq!(
            f,
            ServerFrame::Unsubscribed {
                channel: "tracking:d1".into(),
                reason: Some(UnsubscribeReason::Other)
            }
        );
    }
}
