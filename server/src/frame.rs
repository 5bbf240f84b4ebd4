//! A server frame on its way to subscribers: the JSON text, serialized once
//! and shared by every subscriber, and beside it the few fields the fan-out
//! paths need ([`Meta`]) so that none of them parses the JSON back.
//!
//! Between processes (Redis pub/sub) a frame travels as an envelope: the
//! meta as one line of JSON, a newline, then the frame text (compact JSON
//! never holds a raw newline). The origin time thus crosses processes, and
//! the delivery latency means the same on every engine.

use axum::extract::ws::Utf8Bytes;
use serde::{Deserialize, Serialize};
use waypost_protocol::{Channel, ChatMessage, Fix, ServerFrame};

/// Wall clock in Unix epoch microseconds (the origin of frames).
pub fn now_us() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// One frame: shared text plus what fan-out needs to know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub text: Utf8Bytes,
    pub meta: Meta,
}

/// What fan-out needs to know about a frame.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    /// When the request that produced the frame was received (ingest, chat
    /// post, notification post), Unix µs; for frames of no request (presence
    /// heartbeats) when it was published.
    #[serde(rename = "o")]
    pub origin_us: i64,
    #[serde(rename = "a")]
    pub about: About,
}

/// The fields of the frame that routing and ordering use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum About {
    /// A `location` frame (its fix, for long polls, and its seq).
    Location { fix: Fix },
    /// A chat `message` with its room and gap-free seq.
    Message { room: String, seq: u64 },
    /// A `typing` notice by `user`.
    Typing { user: String },
    /// A vendor notification event with its gap-free seq.
    Notification { seq: u64 },
    /// An `order` frame with its order, gap-free timeline seq and whether
    /// it ends the order.
    Order { order: String, seq: u64, ends: bool },
    /// The driver's `location` frame on an order's channel.
    OrderLocation { order: String },
    /// A WebSocket's `token_expiring` warning for the token expiring at
    /// `exp` (process-local, never published).
    TokenExpiring { exp: u64 },
    /// A `trail` or `driver_status` frame (`event` is its type) on a
    /// driver's tracking channel, or on an order's channel (`order`), where
    /// it is shared like the driver's location: only while the order is
    /// active.
    DriverNote {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        order: Option<String>,
        event: String,
    },
    /// Anything else (presence, tests): passed through as is.
    Other,
}

/// Why a pub/sub payload was not a frame.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not UTF-8")]
    Utf8,
    #[error("no envelope line")]
    NoMeta,
    #[error("bad envelope: {0}")]
    Meta(#[from] serde_json::Error),
}

impl Frame {
    pub fn new(text: impl Into<Utf8Bytes>, about: About, origin_us: i64) -> Self {
        Self {
            text: text.into(),
            meta: Meta { origin_us, about },
        }
    }

    /// The `location` frame of `tracking:{driver}`.
    pub fn location(driver_id: &str, fix: &Fix, origin_us: i64) -> Self {
        let text = ServerFrame::Location {
            channel: Channel::tracking(driver_id).to_string(),
            driver_id: driver_id.to_owned(),
            fix: fix.clone(),
        }
        .to_json();
        Self::new(text, About::Location { fix: fix.clone() }, origin_us)
    }

    /// A chat `message` frame.
    pub fn message(msg: &ChatMessage, origin_us: i64) -> Self {
        let about = About::Message {
            room: msg.room.clone(),
            seq: msg.seq,
        };
        Self::new(
            ServerFrame::Message(msg.clone()).to_json(),
            about,
            origin_us,
        )
    }

    /// A `typing` notice.
    pub fn typing(room: &str, user: &str, origin_us: i64) -> Self {
        let text = ServerFrame::Typing {
            room: room.to_owned(),
            user: user.to_owned(),
        }
        .to_json();
        let about = About::Typing {
            user: user.to_owned(),
        };
        Self::new(text, about, origin_us)
    }

    /// A `presence` frame.
    pub fn presence(room: &str, user: String, online: bool, origin_us: i64) -> Self {
        let text = ServerFrame::Presence {
            room: room.to_owned(),
            user,
            online,
        }
        .to_json();
        Self::new(text, About::Other, origin_us)
    }

    /// A `receipt` frame.
    pub fn receipt(
        room: &str,
        user: &str,
        kind: waypost_protocol::ReceiptKind,
        seq: u64,
        origin_us: i64,
    ) -> Self {
        let text = ServerFrame::Receipt {
            room: room.to_owned(),
            user: user.to_owned(),
            kind,
            seq,
        }
        .to_json();
        Self::new(text, About::Other, origin_us)
    }

    /// A notification, already in `text/event-stream` form.
    pub fn notification(seq: u64, sse: String, origin_us: i64) -> Self {
        Self::new(sse, About::Notification { seq }, origin_us)
    }

    /// The seq of a location, message or notification.
    pub fn seq(&self) -> Option<u64> {
        match &self.meta.about {
            About::Location { fix } => Some(fix.seq),
            About::Message { seq, .. } | About::Notification { seq } | About::Order { seq, .. } => {
                Some(*seq)
            }
            About::Typing { .. }
            | About::OrderLocation { .. }
            | About::TokenExpiring { .. }
            | About::DriverNote { .. }
            | About::Other => None,
        }
    }

    /// The pub/sub payload: meta line, newline, text.
    pub fn to_envelope(&self) -> String {
        // Serializing plain fields cannot fail; an empty meta would only
        // make receivers drop the frame.
        let meta = serde_json::to_string(&self.meta).unwrap_or_default();
        let mut out = String::with_capacity(meta.len() + 1 + self.text.len());
        out.push_str(&meta);
        out.push('\n');
        out.push_str(&self.text);
        out
    }

    /// Reads a pub/sub payload back.
    pub fn from_envelope(payload: &[u8]) -> Result<Self, EnvelopeError> {
        let text = std::str::from_utf8(payload).map_err(|_| EnvelopeError::Utf8)?;
        let (meta, frame) = text.split_once('\n').ok_or(EnvelopeError::NoMeta)?;
        let meta: Meta = serde_json::from_str(meta)?;
        Ok(Self {
            text: Utf8Bytes::from(frame),
            meta,
        })
    }
}

/// A frame of no particular kind, originating now (tests, probes).
impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Self::new(text.to_owned(), About::Other, now_us())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip() {
        let fix: Fix = serde_json::from_str(r#"{"seq":7,"ts":1,"lat":1.5,"lon":2.5}"#).unwrap();
        for frame in [
            Frame::location("d-1", &fix, 123),
            Frame::typing("r", "u", 5),
            Frame::notification(3, "id: 3\nevent: x\ndata: {}\n\n".into(), 9),
            Frame::from("plain"),
            Frame::new(
                "{}",
                About::DriverNote {
                    order: Some("o-1".into()),
                    event: "trail".into(),
                },
                4,
            ),
        ] {
            let back = Frame::from_envelope(frame.to_envelope().as_bytes()).unwrap();
            assert_eq!(back, frame);
        }
        assert_eq!(Frame::location("d-1", &fix, 0).seq(), Some(7));
        assert!(matches!(
            Frame::from_envelope(b"{\"type\":\"location\"}"),
            Err(EnvelopeError::NoMeta)
        ));
        assert!(Frame::from_envelope(b"{}\n{}").is_err());
    }
}
