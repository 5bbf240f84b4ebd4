//! The encoding a WebSocket negotiated: JSON text frames, MessagePack
//! binary frames (`Sec-WebSocket-Protocol: waypost.v1.msgpack`), or those
//! with lean location frames (`waypost.v1.lean`: see `Conn::outgoing`).

use axum::extract::ws::{Message, Utf8Bytes};
use waypost_protocol::msgpack::json_to_msgpack;

use crate::hub::Outbound;

/// How a connection's frames are written and read: JSON text frames (the
/// default) or, negotiated through `Sec-WebSocket-Protocol:
/// waypost.v1.msgpack`, binary frames holding the same frames as
/// MessagePack maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Msgpack,
    /// MessagePack, with location frames lean (e7 coordinates, deltas).
    Lean,
}

impl Encoding {
    /// A frame of this connection's own (a reply, a replayed or gap-filled
    /// entry) in this encoding. JSON text that does not transcode (none of
    /// the server's frames) goes out as text rather than not at all.
    pub(crate) fn message(self, text: Utf8Bytes) -> Message {
        match self {
            Encoding::Json => Message::Text(text),
            Encoding::Msgpack | Encoding::Lean => match json_to_msgpack(&text) {
                Ok(binary) => Message::Binary(binary.into()),
                Err(_) => Message::Text(text),
            },
        }
    }

    /// A frame for the delivery of the dispatched `out`: when `text` is
    /// `out`'s own text, its MessagePack form is the one shared by every
    /// subscriber (transcoded once per dispatch); other texts (entries a
    /// gap fill fetched) are transcoded here. JSON is written as is. (Lean
    /// location frames are written by `Conn::outgoing`, not here.)
    pub(crate) fn shared(self, out: &Outbound, text: Utf8Bytes) -> Message {
        if self == Encoding::Json {
            return Message::Text(text);
        }
        match out.binary() {
            Some(binary) if out.is_own_text(&text) => Message::Binary(binary.clone()),
            _ => self.message(text),
        }
    }
}
