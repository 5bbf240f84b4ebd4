//! Wire types of the Waypost v1 contract (`shared/design/API.md`).
//!
//! Everything a client and the server exchange lives here as plain serde
//! types: HTTP request and response bodies, WebSocket frames in both
//! directions, channel names, JWT claims and close codes. The server and the
//! SDK both depend on this crate so the two can never drift apart; it has no
//! I/O and no async.

pub mod backoff;
mod channel;
mod close;
mod fix;
mod frames;
mod http;
mod ids;
pub mod lean;
pub mod msgpack;
mod order;
mod push;
mod status;

pub use channel::{Channel, ChannelError, ChannelKind};
pub use close::{close_code, should_reconnect, CloseDisposition};
pub use fix::{Fix, FixError, MAX_FUTURE_SKEW_MS};
pub use frames::{
    Attachment, ChatMessage, ClientFrame, MessageKind, ReceiptKind, ServerFrame, UnsubscribeReason,
};
pub use http::{
    ChatPost, Claims, ErrorBody, ErrorDetail, IngestRequest, IngestResponse, LocationResponse,
    MessagesResponse, NotificationAccepted, NotificationPost, NotificationsResponse,
    ParticipantReceipts, PolicyHint, PolicyMode, Role, TrailResponse, VendorNotification,
    MAX_BATCH_BYTES, MAX_BATCH_FIXES,
};
pub use ids::{validate_id, IdError, MAX_ID_LEN};
pub use lean::{LeanError, LEAN_PROTOCOL};
pub use msgpack::{MsgpackError, MSGPACK_PROTOCOL};
pub use order::{
    ActiveOrder, Destination, EntryBody, FrameEntry, OrderEvent, OrderEventAccepted,
    OrderEventError, OrderFrame, OrderFrameType, OrderStatus, OrderView, TimelineEntry,
    TimelineResponse, DEFAULT_ARRIVAL_RADIUS_M, MAX_ORDER_BUYERS, MAX_ORDER_DATA_BYTES,
};
pub use push::{DeviceRegistered, DeviceRegistration, PushData, PushKind};
pub use status::{DriverState, DriverStatusBody, Silence, SilenceReason, MAX_TRAIL_FIXES};
