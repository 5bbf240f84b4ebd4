//! The buyer SDK's public surface as plain data: records and enums the app
//! receives, the listener and token-provider callback traits it implements,
//! and the one error type. No generics, no lifetimes, no futures, so each
//! item maps one to one onto a uniffi record, enum, error or callback
//! interface when the bindings are generated.

use waypost_protocol::{ChatMessage, Fix};

/// The connection as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ConnectionState {
    /// Opening a WebSocket (attempt counts from 1 since the last success).
    Connecting { attempt: u32 },
    /// Open, and the server has answered (pong or any other frame).
    Connected,
    /// Waiting before the next attempt; `retry_in_ms` is the drawn delay.
    BackingOff { attempt: u32, retry_in_ms: u64 },
    /// The app said the network is gone; reconnects as soon as it is back.
    Offline,
    /// Stopped for good until the app calls `reconnect()` (or it was shut
    /// down). `reason` says why.
    Closed { reason: CloseReason },
}

/// Why the connection stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum CloseReason {
    /// The app called `shutdown()`.
    Shutdown,
    /// 4001 and a fresh token from the token provider was refused as well,
    /// or the provider could not give one.
    Unauthorized { message: String },
    /// Another 4000–4099 close code (4003 forbidden, 4008 bad frame, 4029
    /// too many connections or messages): do not reconnect as is.
    Refused { code: u16, message: String },
}

/// A driver's position, as delivered live or replayed at (re)subscribe.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct LocationUpdate {
    pub driver_id: String,
    pub seq: u64,
    /// When the fix was taken, Unix epoch ms.
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub accuracy_m: Option<f64>,
    pub speed_mps: Option<f64>,
    pub heading_deg: Option<f64>,
    /// Taken under reduced (approximate) accuracy: may be kilometres off;
    /// draw it as an area, not a pin.
    #[cfg_attr(feature = "uniffi", uniffi(default = false))]
    pub coarse: bool,
}

impl LocationUpdate {
    pub(crate) fn from_fix(driver_id: &str, fix: &Fix) -> Self {
        Self {
            driver_id: driver_id.to_owned(),
            seq: fix.seq,
            ts_ms: fix.ts,
            lat: fix.lat,
            lon: fix.lon,
            accuracy_m: fix.accuracy_m,
            speed_mps: fix.speed_mps,
            heading_deg: fix.heading_deg,
            coarse: fix.is_coarse(),
        }
    }
}

/// The part of a driver's path the watchers missed (a dead zone), oldest
/// first, delivered before the position that followed it. `order_id` is
/// set when it came on an order's channel.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct TrailUpdate {
    pub driver_id: String,
    pub order_id: Option<String>,
    pub fixes: Vec<LocationUpdate>,
}

impl TrailUpdate {
    pub(crate) fn from_fixes(driver_id: &str, order_id: Option<&str>, fixes: &[Fix]) -> Self {
        Self {
            driver_id: driver_id.to_owned(),
            order_id: order_id.map(str::to_owned),
            fixes: fixes
                .iter()
                .map(|f| LocationUpdate::from_fix(driver_id, f))
                .collect(),
        }
    }
}

/// A driver went dark (no upload for the server's online TTL) or came back.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct DriverStatusUpdate {
    pub driver_id: String,
    /// Set when it came on an order's channel.
    pub order_id: Option<String>,
    /// `true`: back online; `false`: gone quiet.
    pub online: bool,
    /// Server time of the driver's last upload before the change, Unix ms.
    pub last_seen_ms: i64,
    /// Back online: how long it was dark, ms.
    pub dark_ms: Option<u64>,
    /// Back online: why, as the driver's SDK said (`offline`,
    /// `network_error`, `battery_saver`, `permission`, `unknown`).
    pub reason: Option<String>,
    /// Back online: fixes the driver's phone had buffered meanwhile.
    pub buffered: Option<u64>,
}

impl DriverStatusUpdate {
    pub(crate) fn from_wire(
        driver_id: &str,
        order_id: Option<&str>,
        b: &waypost_protocol::DriverStatusBody,
    ) -> Self {
        Self {
            driver_id: driver_id.to_owned(),
            order_id: order_id.map(str::to_owned),
            online: b.status == waypost_protocol::DriverState::Online,
            last_seen_ms: b.last_seen_ms,
            dark_ms: b.dark_ms,
            reason: b.reason.and_then(|r| {
                serde_json::to_value(r)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            }),
            buffered: b.buffered,
        }
    }
}

/// Where a chat message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum MessageStatus {
    /// Written here, not yet acknowledged by the server (kept in the outbox).
    Pending,
    /// Written here and acknowledged: it has its seq.
    Sent,
    /// Written here and given up on (refused by the server, or too many
    /// attempts); `retry_message` puts it back in the outbox.
    Failed,
    /// Written by someone else (or by this user on another device).
    Received,
}

impl MessageStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Sent => "sent",
            MessageStatus::Failed => "failed",
            MessageStatus::Received => "received",
        }
    }

    pub(crate) fn parse(s: &str) -> Self {
        match s {
            "pending" => MessageStatus::Pending,
            "sent" => MessageStatus::Sent,
            "failed" => MessageStatus::Failed,
            _ => MessageStatus::Received,
        }
    }
}

/// Metadata of a file attached to a message (the file itself lives in the
/// app's storage). The server accepts `https://` URLs only, a
/// `type/subtype` mime, a size of 1 byte to 100 MiB, width and height of
/// 1..=20000, a name of 1..=255 characters, at most 10 per message.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Attachment {
    pub url: String,
    pub mime: String,
    pub size: u64,
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub width: Option<u32>,
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub height: Option<u32>,
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub name: Option<String>,
}

impl From<waypost_protocol::Attachment> for Attachment {
    fn from(a: waypost_protocol::Attachment) -> Self {
        Self {
            url: a.url,
            mime: a.mime,
            size: a.size,
            width: a.width,
            height: a.height,
            name: a.name,
        }
    }
}

impl From<Attachment> for waypost_protocol::Attachment {
    fn from(a: Attachment) -> Self {
        Self {
            url: a.url,
            mime: a.mime,
            size: a.size,
            width: a.width,
            height: a.height,
            name: a.name,
        }
    }
}

/// One chat message as the app renders it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ChatEntry {
    pub room: String,
    /// The room's gap-free seq; `None` while pending or failed.
    pub seq: Option<u64>,
    /// Server id; `None` while pending or failed.
    pub id: Option<String>,
    /// Who wrote it.
    pub sender: String,
    pub client_id: String,
    pub body: String,
    /// Server time once stored, local time of writing before.
    pub ts_ms: i64,
    pub status: MessageStatus,
    /// The sender (or a moderator) changed the body.
    pub edited: bool,
    /// The sender (or a moderator) deleted it: `body` is empty.
    pub deleted: bool,
    pub attachments: Vec<Attachment>,
}

impl ChatEntry {
    pub(crate) fn from_wire(m: &ChatMessage, me: &str) -> Self {
        Self {
            room: m.room.clone(),
            seq: Some(m.seq),
            id: Some(m.id.clone()),
            sender: m.from.clone(),
            client_id: m.client_id.clone(),
            body: m.body.clone(),
            ts_ms: m.ts,
            status: if m.from == me {
                MessageStatus::Sent
            } else {
                MessageStatus::Received
            },
            edited: false,
            deleted: false,
            attachments: m
                .attachments
                .iter()
                .cloned()
                .map(Attachment::from)
                .collect(),
        }
    }
}

/// Someone came online or went offline in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PresenceUpdate {
    pub room: String,
    pub user: String,
    pub online: bool,
}

/// Someone is typing in a room (ephemeral; show for a few seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct TypingUpdate {
    pub room: String,
    pub user: String,
}

/// A participant's receipt markers in a room: the highest seq its devices
/// delivered and the highest it read (0: none).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Receipts {
    pub user: String,
    pub delivered: u64,
    pub read: u64,
}

/// A participant's marker moved (`read` is false for `delivered`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ReceiptUpdate {
    pub room: String,
    pub user: String,
    pub read: bool,
    pub seq: u64,
}

/// What the app implements to hear from the SDK. Called from SDK tasks, one
/// call at a time and in order; keep the work short (post to the UI thread).
pub trait BuyerListener: Send + Sync + 'static {
    fn on_connection_state(&self, state: ConnectionState);
    /// A tracked driver moved (only newer fixes are reported).
    fn on_location(&self, update: LocationUpdate);
    /// A message entered a room's timeline: called once per seq, in seq
    /// order, with no gaps (own messages too, once acknowledged).
    fn on_message(&self, message: ChatEntry);
    /// One of this user's own messages was queued or changed status
    /// (pending → sent, pending → failed, failed → pending).
    fn on_outgoing(&self, message: ChatEntry);
    fn on_presence(&self, update: PresenceUpdate);
    fn on_typing(&self, update: TypingUpdate);
    /// The server refused something: `reference` is the channel of a
    /// refused subscribe (e.g. `forbidden` for `tracking:d-9`) or of a
    /// subscription a refreshed token no longer allows (`forbidden`), the
    /// client id or room of a refused message, or `token` when an in-band
    /// token refresh was refused (`forbidden`: another user or role;
    /// `unauthorized`: a bad token; the connection then reconnects with a
    /// fresh token when the old one expires).
    fn on_error(&self, reference: String, code: String, message: String);
    /// A tracked driver's missed segment after a dead zone, before the
    /// `on_location` that follows it. Default: ignored.
    fn on_trail(&self, trail: TrailUpdate) {
        let _ = trail;
    }
    /// A tracked driver went dark or came back. Default: ignored.
    fn on_driver_status(&self, status: DriverStatusUpdate) {
        let _ = status;
    }
    /// A participant (this user's other devices included) delivered or
    /// read a room up to a seq. May repeat a state already reported.
    fn on_receipt(&self, update: ReceiptUpdate) {
        let _ = update;
    }
}

/// What one driver subscription (`BuyerClient::subscribe_driver`) hears:
/// that driver's positions only. Called from the client task, one call at
/// a time and in order; keep the work short.
pub trait LocationListener: Send + Sync + 'static {
    /// The driver moved: its newest known position first (when there is
    /// one), then every newer fix, across reconnects.
    fn on_location(&self, update: LocationUpdate);
    /// The server refused the subscription (e.g. `forbidden`): nothing
    /// more will arrive until it is subscribed again.
    fn on_refused(&self, code: String, message: String);
    /// The driver's missed segment after a dead zone, before the
    /// `on_location` that follows it. Default: ignored.
    fn on_trail(&self, trail: TrailUpdate) {
        let _ = trail;
    }
    /// The driver went dark or came back. Default: ignored.
    fn on_driver_status(&self, status: DriverStatusUpdate) {
        let _ = status;
    }
}

/// What happens in one chat room, as a room subscription
/// (`BuyerClient::subscribe_chat`) hears it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum ChatEvent {
    /// A message entered the timeline: once per seq, in seq order, no gaps.
    Message {
        entry: ChatEntry,
    },
    /// One of this user's messages in the room was queued or changed
    /// status.
    Outgoing {
        entry: ChatEntry,
    },
    Presence {
        update: PresenceUpdate,
    },
    Typing {
        update: TypingUpdate,
    },
    /// A participant (this user's other devices included) delivered or
    /// read the room up to a seq.
    Receipt {
        update: ReceiptUpdate,
    },
    /// The server refused the room's subscription (e.g. `forbidden`), or
    /// one of this user's messages in it (`reference` is the client id).
    Refused {
        reference: String,
        code: String,
        message: String,
    },
}

/// What one room subscription hears: that room's [`ChatEvent`]s only.
pub trait ChatListener: Send + Sync + 'static {
    fn on_chat_event(&self, event: ChatEvent);
}

/// What a connection-state subscription hears: the current state first,
/// then every change, in order.
pub trait ConnectionStateListener: Send + Sync + 'static {
    fn on_connection_state(&self, state: ConnectionState);
}

/// What an order timeline entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum OrderEntryKind {
    /// An accepted order event: `status`, `active`, maybe `driver_id`.
    Status,
    /// The estimate moved: `eta_s`, `distance_m`.
    Eta,
    /// The driver entered the destination radius: `driver_id`.
    Arrival,
    /// The driver left the radius again before delivery: `driver_id`.
    Departure,
}

/// One entry of an order's timeline (gap-free `seq` from 1), flattened so
/// every binding gets a plain record: the fields `kind` does not use are
/// `None`.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct OrderEntry {
    pub order_id: String,
    pub seq: u64,
    /// Unix ms: when the event was accepted (`Status`), or the `ts` of the
    /// driver's fix that caused it.
    pub ts_ms: i64,
    pub kind: OrderEntryKind,
    /// The status after the event (`placed`, `accepted`, `preparing`,
    /// `ready`, `picked_up`, `delivered`, `cancelled`).
    pub status: Option<String>,
    /// Whether the driver's position is shared from now on; `false` on
    /// the entry that ends the order.
    pub active: Option<bool>,
    pub driver_id: Option<String>,
    pub eta_s: Option<u64>,
    pub distance_m: Option<f64>,
}

/// What the app implements to follow one order (`track_order`). Called from
/// the SDK task, one call at a time; keep the work short.
pub trait OrderListener: Send + Sync + 'static {
    /// An entry of the order's timeline: once per seq, in seq order, with
    /// no gaps, across reconnects (the first subscribe replays from seq 1).
    fn on_entry(&self, entry: OrderEntry);
    /// The assigned driver moved (only while the order is active, only
    /// newer fixes).
    fn on_location(&self, update: LocationUpdate);
    /// The assigned driver's missed segment after a dead zone (only while
    /// the order is active). Default: ignored.
    fn on_trail(&self, trail: TrailUpdate) {
        let _ = trail;
    }
    /// The assigned driver went dark or came back (only while the order is
    /// active). Default: ignored.
    fn on_driver_status(&self, status: DriverStatusUpdate) {
        let _ = status;
    }
}
