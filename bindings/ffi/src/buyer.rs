//! [`BuyerClient`]: a buyer's live view of a courier and the order chat,
//! over one WebSocket that survives flaky networks. Wraps
//! `waypost_sdk::buyer::BuyerClient`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Weak};

use waypost_sdk::subscription::Subscription as CoreSubscription;

use waypost_sdk::buyer as sdk;
use waypost_sdk::buyer::{
    Attachment, ChatEntry, ChatEvent, ConnectionState, DriverStatusUpdate, LocationUpdate,
    OrderEntry, PresenceUpdate, PushPlatform, PushSync, ReceiptUpdate, Receipts, TrailUpdate,
    TypingUpdate,
};

use crate::error::WaypostError;
use crate::lifecycle::Lifecycle;
use crate::platform::PlatformState;
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
    /// A tracked driver's path through a dead zone (the fixes watchers
    /// missed, oldest first, thinned), right before the `on_location` that
    /// follows it: draw it instead of a jump.
    fn on_trail(&self, trail: TrailUpdate);
    /// A tracked driver went dark (no upload for the server's online TTL)
    /// or came back (`dark_ms`, and `reason` when its phone said why).
    fn on_driver_status(&self, status: DriverStatusUpdate);
    /// A participant (this user's other devices included) delivered or
    /// read a room up to a seq (`read` false: delivered). May repeat a
    /// state already reported; `receipts(room)` has them all.
    fn on_receipt(&self, update: ReceiptUpdate);
}

/// Calls a foreign listener; a callback that throws is logged, not
/// propagated into the SDK task.
fn guarded(listener: &str, what: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        tracing::error!("{listener}.{what} failed");
    }
}

struct ListenerAdapter(Arc<dyn BuyerListener>);

impl ListenerAdapter {
    fn guard(&self, what: &str, f: impl FnOnce(&dyn BuyerListener)) {
        guarded("BuyerListener", what, || f(&*self.0));
    }
}

impl sdk::BuyerListener for ListenerAdapter {
    fn on_connection_state(&self, state: sdk::ConnectionState) {
        self.guard("on_connection_state", |l| l.on_connection_state(state));
    }
    fn on_location(&self, update: sdk::LocationUpdate) {
        self.guard("on_location", |l| l.on_location(update));
    }
    fn on_message(&self, message: sdk::ChatEntry) {
        self.guard("on_message", |l| l.on_message(message));
    }
    fn on_outgoing(&self, message: sdk::ChatEntry) {
        self.guard("on_outgoing", |l| l.on_outgoing(message));
    }
    fn on_presence(&self, update: sdk::PresenceUpdate) {
        self.guard("on_presence", |l| l.on_presence(update));
    }
    fn on_typing(&self, update: sdk::TypingUpdate) {
        self.guard("on_typing", |l| l.on_typing(update));
    }
    fn on_error(&self, reference: String, code: String, message: String) {
        self.guard("on_error", |l| l.on_error(reference, code, message));
    }
    fn on_trail(&self, trail: sdk::TrailUpdate) {
        self.guard("on_trail", |l| l.on_trail(trail));
    }
    fn on_driver_status(&self, status: sdk::DriverStatusUpdate) {
        self.guard("on_driver_status", |l| l.on_driver_status(status));
    }
    fn on_receipt(&self, update: ReceiptUpdate) {
        self.guard("on_receipt", |l| l.on_receipt(update));
    }
}

/// Hears one driver subscription (`BuyerClient.track_driver(id, listener)`):
/// that driver's positions only. Called on an SDK thread, one call at a
/// time and in order; return quickly. A callback that throws is logged and
/// does not stop the SDK.
#[uniffi::export(with_foreign)]
pub trait LocationListener: Send + Sync {
    /// The driver moved: its newest known position first (when there is
    /// one), then every newer fix, across reconnects.
    fn on_location(&self, update: LocationUpdate);
    /// The server refused the subscription (e.g. `forbidden`); nothing
    /// more arrives.
    fn on_refused(&self, code: String, message: String);
    /// The driver's path through a dead zone (the fixes watchers missed,
    /// oldest first, thinned), right before the `on_location` that follows
    /// it.
    fn on_trail(&self, trail: TrailUpdate);
    /// The driver went dark (no upload for the server's online TTL) or
    /// came back.
    fn on_driver_status(&self, status: DriverStatusUpdate);
}

struct LocationAdapter(Arc<dyn LocationListener>);

impl sdk::LocationListener for LocationAdapter {
    fn on_location(&self, update: LocationUpdate) {
        guarded("LocationListener", "on_location", || {
            self.0.on_location(update)
        });
    }
    fn on_refused(&self, code: String, message: String) {
        guarded("LocationListener", "on_refused", || {
            self.0.on_refused(code, message)
        });
    }
    fn on_trail(&self, trail: TrailUpdate) {
        guarded("LocationListener", "on_trail", || self.0.on_trail(trail));
    }
    fn on_driver_status(&self, status: DriverStatusUpdate) {
        guarded("LocationListener", "on_driver_status", || {
            self.0.on_driver_status(status)
        });
    }
}

/// Hears one room subscription (`BuyerClient.join_chat(room, listener)`):
/// that room's events only. Same threading as [`LocationListener`].
#[uniffi::export(with_foreign)]
pub trait ChatListener: Send + Sync {
    fn on_chat_event(&self, event: ChatEvent);
}

struct ChatAdapter(Arc<dyn ChatListener>);

impl sdk::ChatListener for ChatAdapter {
    fn on_chat_event(&self, event: ChatEvent) {
        guarded("ChatListener", "on_chat_event", || {
            self.0.on_chat_event(event)
        });
    }
}

/// Hears the connection state (`BuyerClient.watch_connection_state`): the
/// current state first, then every change. Same threading as
/// [`LocationListener`].
#[uniffi::export(with_foreign)]
pub trait ConnectionStateListener: Send + Sync {
    fn on_connection_state(&self, state: ConnectionState);
}

struct StateAdapter(Arc<dyn ConnectionStateListener>);

impl sdk::ConnectionStateListener for StateAdapter {
    fn on_connection_state(&self, state: ConnectionState) {
        guarded("ConnectionStateListener", "on_connection_state", || {
            self.0.on_connection_state(state)
        });
    }
}

fn subscription(s: CoreSubscription) -> Arc<Subscription> {
    Arc::new(s.into())
}

/// Follows one order (`BuyerClient.track_order`): its timeline entries
/// once each, in seq order, across reconnects, and its driver's position
/// while the order is active. Called from an SDK thread, one call at a
/// time; keep the work short.
#[uniffi::export(with_foreign)]
pub trait OrderListener: Send + Sync {
    fn on_entry(&self, entry: OrderEntry);
    fn on_location(&self, update: LocationUpdate);
    /// The driver's path through a dead zone (while the order is active).
    fn on_trail(&self, trail: TrailUpdate);
    /// The driver went dark or came back (while the order is active).
    fn on_driver_status(&self, status: DriverStatusUpdate);
}

struct OrderAdapter(Arc<dyn OrderListener>);

impl OrderAdapter {
    fn guard(&self, what: &str, f: impl FnOnce(&dyn OrderListener)) {
        guarded("OrderListener", what, || f(&*self.0));
    }
}

impl sdk::OrderListener for OrderAdapter {
    fn on_entry(&self, entry: sdk::OrderEntry) {
        self.guard("on_entry", |l| l.on_entry(entry));
    }
    fn on_location(&self, update: sdk::LocationUpdate) {
        self.guard("on_location", |l| l.on_location(update));
    }
    fn on_trail(&self, trail: sdk::TrailUpdate) {
        self.guard("on_trail", |l| l.on_trail(trail));
    }
    fn on_driver_status(&self, status: sdk::DriverStatusUpdate) {
        self.guard("on_driver_status", |l| l.on_driver_status(status));
    }
}

/// A buyer's connection to Waypost: live tracking and chat. It connects at
/// once and reconnects on its own (backoff with jitter; immediately when
/// the platform reports the network back). Safe to use from any thread.
#[derive(uniffi::Object)]
pub struct BuyerClient {
    inner: Arc<sdk::BuyerClient>,
    /// Warns when released without `shutdown()`.
    lifecycle: Lifecycle,
}

#[uniffi::export]
impl BuyerClient {
    /// Starts the client. `platform` (optional; the app's one
    /// `PlatformState`) tells it when the phone is offline so it waits
    /// instead of retrying, and when the network is back so it reconnects
    /// at once.
    /// Opens the local store off the caller's thread and connects.
    #[uniffi::constructor]
    pub async fn open(
        config: BuyerConfig,
        listener: Arc<dyn BuyerListener>,
        tokens: Arc<dyn TokenProvider>,
        platform: Option<Arc<PlatformState>>,
    ) -> Result<Arc<Self>, WaypostError> {
        let handle = runtime::get()?.handle().clone();
        let user_id = config.user_id.clone();
        let inner = runtime::run_blocking(move || {
            let _guard = handle.enter();
            let config: sdk::BuyerConfig = config.into();
            let mut deps = sdk::BuyerDeps::real(&config)?;
            if let Some(p) = platform {
                deps.environment = p.environment();
            }
            sdk::BuyerClient::start_with(
                config,
                Arc::new(ListenerAdapter(listener)),
                Arc::new(tokens::Adapter(tokens)),
                deps,
            )
        })
        .await??;
        Ok(Arc::new(Self {
            inner,
            lifecycle: Lifecycle::new("BuyerClient of user", user_id),
        }))
    }

    /// Watches a driver until the returned subscription is cancelled or
    /// dropped. With a `listener`, that listener gets this driver's
    /// positions only (its newest known one first); without, they go to
    /// the client-wide `BuyerListener.on_location`. The wire subscription
    /// ends when no subscription wants the driver any more.
    #[uniffi::method(default(listener = None))]
    pub fn track_driver(
        &self,
        driver_id: String,
        listener: Option<Arc<dyn LocationListener>>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        if let Some(l) = listener {
            let sub = self
                .inner
                .subscribe_driver(driver_id, Arc::new(LocationAdapter(l)))?;
            return Ok(subscription(sub));
        }
        self.inner.track_driver(driver_id.clone())?;
        let client = Arc::downgrade(&self.inner);
        Ok(subscription(CoreSubscription::new(move || {
            if let Some(c) = Weak::upgrade(&client) {
                // Shut down or busy: the subscription is gone either way.
                let _ = c.untrack_driver(driver_id);
            }
        })))
    }

    /// Follows an order: `listener` gets every timeline entry (status,
    /// ETA, arrival, departure) from seq 1, once and in order across
    /// reconnects, and the driver's position while the order is active.
    /// Cancel the returned subscription to stop.
    pub fn track_order(
        &self,
        order_id: String,
        listener: Arc<dyn OrderListener>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        self.inner
            .track_order(order_id.clone(), Arc::new(OrderAdapter(listener)))?;
        let client = Arc::downgrade(&self.inner);
        Ok(subscription(CoreSubscription::new(move || {
            if let Some(c) = Weak::upgrade(&client) {
                let _ = c.untrack_order(order_id);
            }
        })))
    }

    /// Joins a chat room until the returned subscription is cancelled or
    /// dropped: its timeline resumes after the last stored seq. With a
    /// `listener`, that listener gets this room's [`ChatEvent`]s only;
    /// without, they go to the client-wide `BuyerListener`. The room is
    /// left when no subscription wants it any more.
    #[uniffi::method(default(listener = None))]
    pub fn join_chat(
        &self,
        room: String,
        listener: Option<Arc<dyn ChatListener>>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        if let Some(l) = listener {
            let sub = self.inner.subscribe_chat(room, Arc::new(ChatAdapter(l)))?;
            return Ok(subscription(sub));
        }
        self.inner.join_chat(room.clone())?;
        let client = Arc::downgrade(&self.inner);
        Ok(subscription(CoreSubscription::new(move || {
            if let Some(c) = Weak::upgrade(&client) {
                let _ = c.leave_chat(room);
            }
        })))
    }

    /// Follows the connection state: `listener` gets the current state,
    /// then every change, until the returned subscription is cancelled.
    pub fn watch_connection_state(
        &self,
        listener: Arc<dyn ConnectionStateListener>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        let sub = self
            .inner
            .watch_connection_state(Arc::new(StateAdapter(listener)))?;
        Ok(subscription(sub))
    }

    /// Per-subscription listeners (drivers, rooms, connection state) alive
    /// now: drops back when subscriptions are cancelled.
    pub fn subscription_count(&self) -> u32 {
        u32::try_from(self.inner.subscription_count()).unwrap_or(u32::MAX)
    }

    /// Writes a message: stored in the outbox at once (works offline), sent
    /// when connected, retried with the same client id until acknowledged.
    /// Returns the pending entry.
    pub async fn send_message(
        &self,
        room: String,
        body: String,
    ) -> Result<ChatEntry, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.send_message(room, body)).await?
    }

    /// [`BuyerClient::send_message`] with attachment metadata: upload the
    /// files to the app's storage first; the body may then be empty.
    pub async fn send_message_with_attachments(
        &self,
        room: String,
        body: String,
        attachments: Vec<Attachment>,
    ) -> Result<ChatEntry, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.send_message_with_attachments(room, body, attachments))
            .await?
    }

    /// Puts a failed message back in the outbox.
    pub fn retry_message(&self, room: String, client_id: String) -> Result<(), WaypostError> {
        self.inner.retry_message(room, client_id)
    }

    /// Tells the room this user is typing (rate-limited; dropped offline).
    pub fn send_typing(&self, room: String) -> Result<(), WaypostError> {
        self.inner.send_typing(room)
    }

    /// The room's timeline from the local store (works offline): the newest
    /// `limit` messages in seq order, then pending and failed ones.
    pub async fn messages(&self, room: String, limit: u32) -> Result<Vec<ChatEntry>, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.messages(room, limit)).await?
    }

    /// Tells the room this user read it up to `seq` (the app says the user
    /// saw it). Recorded locally at once, sent when connected. Delivered
    /// receipts are sent by the SDK as messages are stored.
    pub async fn mark_read(&self, room: String, seq: u64) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.mark_read(room, seq)).await?
    }

    /// Every known participant's delivered and read markers in `room`
    /// (local store; kept current by the server's receipts).
    pub async fn receipts(&self, room: String) -> Result<Vec<Receipts>, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.receipts(room)).await?
    }

    /// Messages from others in `room` above this user's read marker (local
    /// store).
    pub async fn unread_count(&self, room: String) -> Result<u64, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.unread_count(room)).await?
    }

    /// Replaces the body of this user's message `seq`: queued in the
    /// outbox like a message (works offline, sent exactly once when
    /// connected); the message comes back through `on_message` with
    /// `edited`, or a refusal through `on_error` with the room as reference.
    pub async fn edit_message(
        &self,
        room: String,
        seq: u64,
        body: String,
    ) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.edit_message(room, seq, body)).await?
    }

    /// Deletes this user's message `seq` (queued like an edit): it comes
    /// back through `on_message` with `deleted` and an empty body.
    pub async fn delete_message(&self, room: String, seq: u64) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.delete_message(room, seq)).await?
    }

    /// The newest position seen for a driver, from `track_driver` or from a
    /// tracked order it is assigned to (while that order is active).
    pub fn latest_location(&self, driver_id: String) -> Option<LocationUpdate> {
        self.inner.latest_location(driver_id)
    }

    /// The current connection state.
    pub fn connection_state(&self) -> ConnectionState {
        self.inner.connection_state()
    }

    /// Deprecated: the client follows its `PlatformState` by itself. Kept
    /// so older callers compile; it re-reads the network (network back
    /// means reconnect now).
    pub fn environment_changed(&self) -> Result<(), WaypostError> {
        self.inner.environment_changed()
    }

    /// Reconnects now: after `Closed` (e.g. with a new token), or to skip
    /// a backoff wait.
    pub fn reconnect(&self) -> Result<(), WaypostError> {
        self.inner.reconnect()
    }

    /// Registers this device's push token: call from FCM's `onNewToken`
    /// (Android) or `didRegisterForRemoteNotificationsWithDeviceToken`
    /// (iOS, the token as hex), and after every token change. Returns the
    /// channels pushes will come for.
    pub async fn register_push_token(
        &self,
        platform: PushPlatform,
        token: String,
    ) -> Result<Vec<String>, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.register_push_token(platform, token).await }).await?
    }

    /// Stops pushes to this device (e.g. at logout).
    pub async fn unregister_push_token(&self) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.unregister_push_token().await }).await?
    }

    /// Handles a received push payload (iOS `userInfo` or Android
    /// `RemoteMessage.data`, as JSON): fetches exactly the missed chat
    /// messages or order entries up to the pushed seq and returns them.
    pub async fn handle_push(&self, payload: String) -> Result<PushSync, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.handle_push(payload).await }).await?
    }

    /// Closes the connection and stops the client (idempotent). Pending
    /// messages stay in the outbox for the next start (with a `db_path`).
    pub async fn shutdown(&self) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.shutdown().await }).await?;
        self.lifecycle.shut_down();
        Ok(())
    }
}
