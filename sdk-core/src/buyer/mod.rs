//! The buyer side of the SDK: watch a courier move and chat with the
//! vendor over one WebSocket that survives flaky networks.
//!
//! - [`BuyerClient`] is the object the app holds ([`client`]).
//! - [`connection`] keeps the WebSocket up: explicit
//!   [`ConnectionState`]s, full-jitter backoff, immediate reconnect when the
//!   network is back, heartbeats, close-code handling, token refresh on 4001.
//! - [`tracking`] and [`chat`] resume every subscription after a reconnect
//!   from the last seq seen, so nothing is shown twice and, for chat,
//!   nothing is missed (dedupe by seq, `sync` for gaps, HTTP history when
//!   the server could not replay).
//! - [`orders`]: `track_order` follows one order's timeline (each entry
//!   once, in seq order, resumed with `after`) and its driver while active.
//! - [`outbox`] and [`store`]: messages written offline wait in SQLite and
//!   go out in order, retried with the same `client_id` until acknowledged;
//!   the room timeline is kept locally for offline rendering.
//! - [`transport`]: the WebSocket behind a connector trait (tests inject
//!   faults in-process).
//!
//! The public surface ([`types`]) is plain records, enums, `Arc` objects and
//! callback traits, ready for uniffi.

pub mod chat;
pub mod client;
pub mod connection;
pub mod orders;
pub mod outbox;
pub mod push;
pub mod store;
pub mod tracking;
pub mod transport;
pub mod types;

#[cfg(test)]
mod tests;

pub use client::{BuyerClient, BuyerConfig, BuyerDeps};
pub use push::{PushPlatform, PushSync, VendorNotification};
pub use transport::{
    TransportError, TungsteniteConnector, WireEncoding, WsConnector, WsEvent, WsTransport,
};
pub use types::{
    Attachment, BuyerListener, ChatEntry, ChatEvent, ChatListener, CloseReason, ConnectionState,
    ConnectionStateListener, DriverStatusUpdate, LocationListener, LocationUpdate, MessageStatus,
    OrderEntry, OrderEntryKind, OrderListener, PresenceUpdate, ReceiptUpdate, Receipts,
    TrailUpdate, TypingUpdate,
};
