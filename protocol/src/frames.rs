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

/// A stored chat message as delivered to clients.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub room: String,
    /// Per room, gap-free, starting at 1.
    pub seq: u64,
    pub id: String,
    pub from: String,
    pub client_id: String,
    pub body: String,
    pub ts: i64,
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
