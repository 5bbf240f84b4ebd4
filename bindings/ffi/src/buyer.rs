//! [`BuyerClient`]: a buyer's live view of a courier and the order chat,
//! over one WebSocket that survives flaky networks. Wraps
//! `waypost_sdk::buyer::BuyerClient`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};

use waypost_sdk::buyer as sdk;

use crate::error::WaypostError;
use crate::platform::{self, PlatformInfo};
use crate::runtime;
use crate::task_handle::Subscription;
use crate::tokens::{self, TokenProvider};

/// Settings of a [`BuyerClient`]. Only `base_url` and `user_id` are
/// required; other fields default to the SDK's defaults when left out.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct BuyerConfig {
    /// `http(s)://host:port` of the Waypost server.
    pub base_url: String,
    /// This user's id (the token's `sub`), to recognise own messages.
    pub user_id: String,
    /// SQLite file for the chat store and outbox; `None` keeps them in
    /// memory (nothing survives a restart).
    #[uniffi(default = None)]
    pub db_path: Option<String>,
    /// Application ping period, ms (default 15,000).
    #[uniffi(default = None)]
    pub ping_interval_ms: Option<u64>,
    /// Timeout of one connection attempt, ms (default 10,000).
    #[uniffi(default = None)]
    pub connect_timeout_ms: Option<u64>,
    /// Timeout of one HTTP request (chat history reads), ms (default
    /// 15,000).
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
    /// First reconnect backoff window, ms (default 500).
    #[uniffi(default = None)]
    pub backoff_base_ms: Option<u64>,
    /// Largest reconnect backoff window, ms (default 30,000).
    #[uniffi(default = None)]
    pub backoff_cap_ms: Option<u64>,
    /// A chat message unacknowledged this long is sent again, ms (default
    /// 10,000).
    #[uniffi(default = None)]
    pub ack_timeout_ms: Option<u64>,
    /// Unanswered or refused sends after which a message is failed
    /// (default 10).
    #[uniffi(default = None)]
    pub max_send_attempts: Option<u32>,
}

impl From<BuyerConfig> for sdk::BuyerConfig {
    fn from(c: BuyerConfig) -> Self {
        let mut out = sdk::BuyerConfig::new(c.base_url, c.user_id);
        out.db_path = c.db_path;
        let set = |field: &mut u64, v: Option<u64>| {
            if let Some(v) = v {
                *field = v;
            }
        };
        set(&mut out.ping_interval_ms, c.ping_interval_ms);
        set(&mut out.connect_timeout_ms, c.connect_timeout_ms);
        set(&mut out.request_timeout_ms, c.request_timeout_ms);
        set(&mut out.backoff_base_ms, c.backoff_base_ms);
        set(&mut out.backoff_cap_ms, c.backoff_cap_ms);
        set(&mut out.ack_timeout_ms, c.ack_timeout_ms);
        if let Some(n) = c.max_send_attempts {
            out.max_send_attempts = n;
        }
        out
    }
}

/// Why the connection stopped for good.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum CloseReason {
    /// The app called `shutdown()`.
    Shutdown,
    /// The server refused the token, also a fresh one.
    Unauthorized { message: String },
    /// The server refused the connection (4003 forbidden, 4008 bad frame,
    /// 4029 too many connections, ...); `reconnect()` tries again.
    Refused { code: u16, message: String },
}

/// The connection as the app sees it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionState {
    /// Opening a WebSocket (attempt counts from 1 since the last success).
    Connecting { attempt: u32 },
    /// Open and subscribed.
    Connected,
    /// Waiting `retry_in_ms` before the next attempt.
    BackingOff { attempt: u32, retry_in_ms: u64 },
    /// The platform reports no network; reconnects when it is back.
    Offline,
    /// Stopped until `reconnect()` (or shut down).
    Closed { reason: CloseReason },
}

impl From<sdk::CloseReason> for CloseReason {
    fn from(r: sdk::CloseReason) -> Self {
        match r {
            sdk::CloseReason::Shutdown => Self::Shutdown,
            sdk::CloseReason::Unauthorized { message } => Self::Unauthorized { message },
            sdk::CloseReason::Refused { code, message } => Self::Refused { code, message },
        }
    }
}

impl From<sdk::ConnectionState> for ConnectionState {
    fn from(s: sdk::ConnectionState) -> Self {
        use sdk::ConnectionState as S;
        match s {
            S::Connecting { attempt } => Self::Connecting { attempt },
            S::Connected => Self::Connected,
            S::BackingOff {
                attempt,
                retry_in_ms,
            } => Self::BackingOff {
                attempt,
                retry_in_ms,
            },
            S::Offline => Self::Offline,
            S::Closed { reason } => Self::Closed {
                reason: reason.into(),
            },
        }
    }
}

/// A driver's position (live, or replayed when tracking starts).
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct LocationUpdate {
    /// The driver this position belongs to.
    pub driver_id: String,
    /// The fix's seq (per device, increasing).
    pub seq: u64,
    /// When the fix was taken, Unix epoch ms.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    pub accuracy_m: Option<f64>,
    /// Speed over ground, m/s.
    pub speed_mps: Option<f64>,
    /// Course, degrees clockwise from north.
    pub heading_deg: Option<f64>,
}

impl From<sdk::LocationUpdate> for LocationUpdate {
    fn from(u: sdk::LocationUpdate) -> Self {
        Self {
            driver_id: u.driver_id,
            seq: u.seq,
            ts_ms: u.ts,
            lat: u.lat,
            lon: u.lon,
            accuracy_m: u.accuracy_m,
            speed_mps: u.speed_mps,
            heading_deg: u.heading_deg,
        }
    }
}

/// Where a chat message stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum MessageStatus {
    /// Written here, waiting for the server's acknowledgement (kept in the
    /// outbox, survives restarts with a `db_path`).
    Pending,
    /// Written here and stored by the server.
    Sent,
    /// Written here and given up on; `retry_message` queues it again.
    Failed,
    /// Written by someone else (or this user on another device).
    Received,
}

impl From<sdk::MessageStatus> for MessageStatus {
    fn from(s: sdk::MessageStatus) -> Self {
        match s {
            sdk::MessageStatus::Pending => Self::Pending,
            sdk::MessageStatus::Sent => Self::Sent,
            sdk::MessageStatus::Failed => Self::Failed,
            sdk::MessageStatus::Received => Self::Received,
        }
    }
}

/// One chat message as the app renders it.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct ChatEntry {
    /// The chat room.
    pub room: String,
    /// The room's gap-free seq; `None` while pending or failed.
    pub seq: Option<u64>,
    /// Server id; `None` while pending or failed.
    pub id: Option<String>,
    /// Author's user id (`from` on the wire; renamed because `from` is a
    /// Python keyword).
    pub sender: String,
    /// Idempotency key chosen when the message was written.
    pub client_id: String,
    /// The text.
    pub body: String,
    /// Server time once stored, local time of writing before (epoch ms).
    pub ts_ms: i64,
    /// Where the message stands (pending, sent, failed, received).
    pub status: MessageStatus,
}

impl From<sdk::ChatEntry> for ChatEntry {
    fn from(e: sdk::ChatEntry) -> Self {
        Self {
            room: e.room,
            seq: e.seq,
            id: e.id,
            sender: e.from,
            client_id: e.client_id,
            body: e.body,
            ts_ms: e.ts,
            status: e.status.into(),
        }
    }
}

/// Someone came online or went offline in a room.
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct PresenceUpdate {
    /// The chat room.
    pub room: String,
    /// Who.
    pub user: String,
    /// Whether they are online now.
    pub online: bool,
}

/// Someone is typing in a room (show it for a few seconds).
#[derive(Debug, Clone, PartialEq, Eq, uniffi::Record)]
pub struct TypingUpdate {
    /// The chat room.
    pub room: String,
    /// Who is typing.
    pub user: String,
}

/// What the app implements to hear from a [`BuyerClient`]. Every call
/// arrives on an SDK thread (`waypost-rt`), one at a time and in order:
/// return quickly and post to the UI thread. Must not throw.
#[uniffi::export(with_foreign)]
pub trait BuyerListener: Send + Sync {
    /// The connection changed state (show it, e.g. "reconnecting…").
    fn on_connection_state(&self, state: ConnectionState);
    /// A tracked driver moved (only newer fixes are reported).
    fn on_location(&self, update: LocationUpdate);
    /// A message entered a room's timeline: once per seq, in order, no gaps
    /// (own messages too, once acknowledged).
    fn on_message(&self, message: ChatEntry);
    /// One of this user's messages was queued or changed status.
    fn on_outgoing(&self, message: ChatEntry);
    /// Someone came online or went offline in a joined room.
    fn on_presence(&self, update: PresenceUpdate);
    /// Someone is typing in a joined room.
    fn on_typing(&self, update: TypingUpdate);
    /// The server refused something: `reference` is the channel of a
    /// refused subscription, or the client id or room of a refused message.
    fn on_error(&self, reference: String, code: String, message: String);
}

struct ListenerAdapter(Arc<dyn BuyerListener>);

impl ListenerAdapter {
    fn guard(&self, what: &str, f: impl FnOnce(&dyn BuyerListener)) {
        if catch_unwind(AssertUnwindSafe(|| f(&*self.0))).is_err() {
            tracing::error!("BuyerListener.{what} failed");
        }
    }
}

impl sdk::BuyerListener for ListenerAdapter {
    fn on_connection_state(&self, state: sdk::ConnectionState) {
        self.guard("on_connection_state", |l| {
            l.on_connection_state(state.into())
        });
    }
    fn on_location(&self, update: sdk::LocationUpdate) {
        self.guard("on_location", |l| l.on_location(update.into()));
    }
    fn on_message(&self, message: sdk::ChatEntry) {
        self.guard("on_message", |l| l.on_message(message.into()));
    }
    fn on_outgoing(&self, message: sdk::ChatEntry) {
        self.guard("on_outgoing", |l| l.on_outgoing(message.into()));
    }
    fn on_presence(&self, update: sdk::PresenceUpdate) {
        self.guard("on_presence", |l| {
            l.on_presence(PresenceUpdate {
                room: update.room,
                user: update.user,
                online: update.online,
            })
        });
    }
    fn on_typing(&self, update: sdk::TypingUpdate) {
        self.guard("on_typing", |l| {
            l.on_typing(TypingUpdate {
                room: update.room,
                user: update.user,
            })
        });
    }
    fn on_error(&self, reference: String, code: String, message: String) {
        self.guard("on_error", |l| l.on_error(reference, code, message));
    }
}

/// A buyer's connection to Waypost: live tracking and chat. It connects at
/// once and reconnects on its own (backoff with jitter; immediately when
/// the platform reports the network back). Safe to use from any thread.
#[derive(uniffi::Object)]
pub struct BuyerClient {
    inner: Arc<sdk::BuyerClient>,
}

#[uniffi::export]
impl BuyerClient {
    /// Starts the client. `platform` (optional) tells it when the phone is
    /// offline so it waits instead of retrying.
    #[uniffi::constructor]
    pub fn new(
        config: BuyerConfig,
        listener: Arc<dyn BuyerListener>,
        tokens: Arc<dyn TokenProvider>,
        platform: Option<Arc<dyn PlatformInfo>>,
    ) -> Result<Arc<Self>, WaypostError> {
        let _guard = runtime::get()?.enter();
        let config: sdk::BuyerConfig = config.into();
        let mut deps = sdk::BuyerDeps::real(&config)?;
        if let Some(p) = platform {
            deps.environment = Arc::new(platform::Adapter(p));
        }
        let inner = sdk::BuyerClient::start_with(
            config,
            Arc::new(ListenerAdapter(listener)),
            Arc::new(tokens::Adapter(tokens)),
            deps,
        )?;
        Ok(Arc::new(Self { inner }))
    }

    /// Watches a driver: `on_location` gets its position now (if known) and
    /// every newer one, across reconnects, until the returned subscription
    /// is cancelled or dropped (which stops tracking this driver).
    pub fn track_driver(&self, driver_id: String) -> Result<Arc<Subscription>, WaypostError> {
        self.inner.track_driver(driver_id.clone())?;
        let client = Arc::downgrade(&self.inner);
        Ok(Arc::new(Subscription::new(move || {
            if let Some(c) = Weak::upgrade(&client) {
                // Shut down or busy: the subscription is gone either way.
                let _ = c.untrack_driver(driver_id);
            }
        })))
    }

    /// Joins a chat room: `on_message` gets its timeline after the last
    /// stored seq, then every new message, until the returned subscription
    /// is cancelled or dropped (which leaves the room).
    pub fn join_chat(&self, room: String) -> Result<Arc<Subscription>, WaypostError> {
        self.inner.join_chat(room.clone())?;
        let client = Arc::downgrade(&self.inner);
        Ok(Arc::new(Subscription::new(move || {
            if let Some(c) = Weak::upgrade(&client) {
                let _ = c.leave_chat(room);
            }
        })))
    }

    /// Writes a message: stored in the outbox at once (works offline), sent
    /// when connected, retried with the same client id until acknowledged.
    /// Returns the pending entry.
    pub fn send_message(&self, room: String, body: String) -> Result<ChatEntry, WaypostError> {
        Ok(self.inner.send_message(room, body)?.into())
    }

    /// Puts a failed message back in the outbox.
    pub fn retry_message(&self, room: String, client_id: String) -> Result<(), WaypostError> {
        Ok(self.inner.retry_message(room, client_id)?)
    }

    /// Tells the room this user is typing (rate-limited; dropped offline).
    pub fn send_typing(&self, room: String) -> Result<(), WaypostError> {
        Ok(self.inner.send_typing(room)?)
    }

    /// The room's timeline from the local store (works offline): the newest
    /// `limit` messages in seq order, then pending and failed ones.
    pub fn messages(&self, room: String, limit: u32) -> Result<Vec<ChatEntry>, WaypostError> {
        Ok(self
            .inner
            .messages(room, limit)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// The newest position seen for a tracked driver.
    pub fn latest_location(&self, driver_id: String) -> Option<LocationUpdate> {
        self.inner.latest_location(driver_id).map(Into::into)
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.connection_state().into()
    }

    /// The network changed: re-read [`PlatformInfo`]; network back means
    /// reconnect now.
    pub fn environment_changed(&self) -> Result<(), WaypostError> {
        Ok(self.inner.environment_changed()?)
    }

    /// Reconnects now: after `Closed` (e.g. with a new token), or to skip
    /// a backoff wait.
    pub fn reconnect(&self) -> Result<(), WaypostError> {
        Ok(self.inner.reconnect()?)
    }

    /// Closes the connection and stops the client (idempotent). Pending
    /// messages stay in the outbox for the next start (with a `db_path`).
    pub async fn shutdown(&self) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.shutdown().await }).await
    }
}
