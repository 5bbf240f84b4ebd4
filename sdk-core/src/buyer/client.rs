//! [`BuyerClient`]: the object a buyer app holds. It owns one background
//! task that runs the connection manager with the buyer `Core` on top:
//! tracking state, chat rooms, the outbox and the local store. App calls
//! become commands to that task (bounded queue), so all state changes and
//! all listener calls happen on it, one at a time and in order.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{
    validate_id, Channel, ChannelKind, ChatMessage, ClientFrame, PushKind, ReceiptKind, ServerFrame,
};

use super::chat::{fetch_page, Filling, Offer, Room, MAX_HTTP_PAGES};
use super::connection::{self, ConnectionConfig, Control, Deps, Session};
use super::orders::Orders;
use super::outbox::{Outbox, Verdict};
use super::push::{self, PushPlatform, PushSync};
use super::store::{Store, MAX_BODY_BYTES};
use super::tracking::{Tracking, MAX_TRACKED};
use super::transport::{TungsteniteConnector, WsConnector};
use super::types::{
    Attachment, BuyerListener, ChatEntry, ChatEvent, ChatListener, ConnectionState,
    ConnectionStateListener, DriverStatusUpdate, LocationListener, LocationUpdate, OrderListener,
    PresenceUpdate, ReceiptUpdate, Receipts, TrailUpdate, TypingUpdate,
};
use crate::backoff::{BackoffPolicy, RandomSource, SeededRandom};
use crate::clock::{Clock, SystemClock};
use crate::env::{Environment, ManualEnvironment};
use crate::error::WaypostError;
use crate::subscription::{Listeners, Subscription, MAX_LISTENERS};
use crate::tokens::{TokenProvider, Tokens};
use crate::transport::{HttpError, HttpTransport, ReqwestTransport};

/// Commands queued per client at most (app calls beyond this get `Busy`).
const COMMAND_QUEUE: usize = 1_024;
/// Chat rooms one client may join at once.
pub const MAX_ROOMS: usize = 64;
/// Presence entries remembered for deduplication (all rooms).
const MAX_PRESENCE: usize = 10_000;
/// At most one `typing` per room in this period.
const TYPING_EVERY_MS: u64 = 2_000;

/// Store key of this installation's push device id.
const PUSH_DEVICE_KEY: &str = "push_device_id";

/// Settings of a buyer client (plain data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuyerConfig {
    /// `http(s)://host:port` of the Waypost server; the WebSocket URL is
    /// derived from it (`ws(s)://host:port/v1/ws`).
    pub base_url: String,
    /// This user's id (the token's `sub`), to recognise own messages.
    pub user_id: String,
    /// SQLite file for the message store and outbox; `None` keeps them in
    /// memory (nothing survives a restart).
    pub db_path: Option<String>,
    /// Application ping period; a connection silent for two periods is
    /// dropped. The server pings every 25 s on its own.
    pub ping_interval_ms: u64,
    pub connect_timeout_ms: u64,
    /// Timeout of one HTTP request (chat history reads).
    pub request_timeout_ms: u64,
    /// Full-jitter backoff: first window and cap.
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// A chat message unacknowledged this long is sent again.
    pub ack_timeout_ms: u64,
    /// Unanswered or refused sends after which a message is failed.
    pub max_send_attempts: u32,
}

impl BuyerConfig {
    pub fn new(base_url: impl Into<String>, user_id: impl Into<String>) -> Self {
        Self {
            base_url: base_url.into(),
            user_id: user_id.into(),
            db_path: None,
            ping_interval_ms: 15_000,
            connect_timeout_ms: 10_000,
            request_timeout_ms: 15_000,
            backoff_base_ms: 500,
            backoff_cap_ms: 30_000,
            ack_timeout_ms: 10_000,
            max_send_attempts: 10,
        }
    }

    fn ws_url(&self) -> Result<String, WaypostError> {
        let base = self.base_url.trim_end_matches('/');
        let ws = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}")
        } else if let Some(rest) = base.strip_prefix("http://") {
            format!("ws://{rest}")
        } else {
            return Err(WaypostError::InvalidArgument {
                details: format!("base_url must start with http:// or https://: {base}"),
            });
        };
        Ok(format!("{ws}/v1/ws"))
    }
}

/// The I/O edges of a buyer client, named as in
/// [`DriverDeps`](crate::DriverDeps), for tests and embedders (Rust only;
/// [`BuyerClient::start`] fills in the real ones with [`BuyerDeps::real`]).
#[derive(Clone)]
pub struct BuyerDeps {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness for backoff jitter.
    pub random: Arc<dyn RandomSource>,
    /// Network state (a [`ManualEnvironment`] that always says Wi-Fi means
    /// "always online": the app then calls `reconnect` when it knows
    /// better).
    pub environment: Arc<dyn Environment>,
    /// HTTP (chat history reads).
    pub transport: Arc<dyn HttpTransport>,
    /// WebSockets.
    pub connector: Arc<dyn WsConnector>,
}

impl BuyerDeps {
    /// The real clock, entropy-seeded jitter, reqwest with the config's
    /// request timeout and tokio-tungstenite; always online.
    pub fn real(config: &BuyerConfig) -> Result<Self, WaypostError> {
        let transport =
            ReqwestTransport::new(Duration::from_millis(config.request_timeout_ms.max(1)))
                .map_err(|e| WaypostError::InvalidArgument {
                    details: e.to_string(),
                })?;
        Ok(Self {
            clock: Arc::new(SystemClock::new()),
            random: Arc::new(SeededRandom::from_entropy()),
            environment: Arc::new(ManualEnvironment::default()),
            transport: Arc::new(transport),
            connector: Arc::new(TungsteniteConnector::default()),
        })
    }
}

/// App commands and internal events, processed by the client task.
pub enum Command {
    /// Track a driver; `sub` is the id of a new per-subscription listener
    /// (it gets the newest known position at once).
    Track {
        driver_id: String,
        sub: Option<u64>,
    },
    /// Somebody stopped wanting a driver: untrack it unless another
    /// subscription (or the client-wide `track_driver`) still wants it.
    Untrack(String),
    TrackOrder(String, Arc<dyn OrderListener>),
    UntrackOrder(String),
    Join(String),
    /// Like [`Command::Untrack`] for a room.
    Leave(String),
    /// A new connection-state listener: tell it the current state.
    WatchState(u64),
    Queued(ChatEntry),
    Retry {
        room: String,
        client_id: String,
    },
    Typing(String),
    /// This user read `room` up to a seq.
    MarkRead(String, u64),
    /// An edit or delete of one of this user's messages is in the outbox.
    Amended,
    EnvironmentChanged,
    Reconnect,
    /// A page of HTTP history for a room that could not be recovered.
    HttpPage {
        room: String,
        result: Result<(Vec<ChatMessage>, bool), HttpError>,
    },
}

/// What the app may read without going through the task.
#[derive(Default)]
struct Snapshot {
    state: Option<ConnectionState>,
    locations: HashMap<String, LocationUpdate>,
}

/// Who wants what, shared by the app's threads (subscribe, cancel) and the
/// client task (delivery). Locked briefly; listeners are called outside.
#[derive(Default)]
struct Registry {
    drivers: Listeners<dyn LocationListener>,
    rooms: Listeners<dyn ChatListener>,
    states: Listeners<dyn ConnectionStateListener>,
    /// Drivers and rooms followed through the client-wide listener
    /// (`track_driver`, `join_chat`).
    wide_drivers: HashSet<String>,
    wide_rooms: HashSet<String>,
    /// The task ended: no new listeners.
    stopped: bool,
}

impl Registry {
    fn wants_driver(&self, driver_id: &str) -> bool {
        self.wide_drivers.contains(driver_id) || self.drivers.has(driver_id)
    }

    fn wants_room(&self, room: &str) -> bool {
        self.wide_rooms.contains(room) || self.rooms.has(room)
    }

    fn check_open(&self) -> Result<(), WaypostError> {
        if self.stopped {
            return Err(WaypostError::ShutDown);
        }
        Ok(())
    }
}

/// Adds `key` to a client-wide set (bounded); whether it was new.
fn add_wide(set: &mut HashSet<String>, key: &str) -> Result<bool, WaypostError> {
    if set.contains(key) {
        return Ok(false);
    }
    if set.len() >= MAX_LISTENERS {
        return Err(WaypostError::Busy {
            details: format!("more than {MAX_LISTENERS} subscriptions"),
        });
    }
    Ok(set.insert(key.to_owned()))
}

/// A buyer's connection to Waypost: live tracking and chat.
pub struct BuyerClient {
    config: BuyerConfig,
    /// HTTP edges shared with the task (push registration and sync).
    transport: Arc<dyn HttpTransport>,
    tokens: Arc<Tokens>,
    random: Arc<dyn RandomSource>,
    cmd: mpsc::Sender<Command>,
    cancel: CancellationToken,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    snapshot: Arc<Mutex<Snapshot>>,
    registry: Arc<Mutex<Registry>>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl BuyerClient {
    /// Starts a client on the current tokio runtime with the real network,
    /// clock and randomness.
    pub fn start(
        config: BuyerConfig,
        listener: Arc<dyn BuyerListener>,
        tokens: Arc<dyn TokenProvider>,
    ) -> Result<Arc<Self>, WaypostError> {
        let deps = BuyerDeps::real(&config)?;
        Self::start_with(config, listener, tokens, deps)
    }

    /// Like [`start`](Self::start) with replaceable edges.
    pub fn start_with(
        config: BuyerConfig,
        listener: Arc<dyn BuyerListener>,
        tokens: Arc<dyn TokenProvider>,
        deps: BuyerDeps,
    ) -> Result<Arc<Self>, WaypostError> {
        let runtime =
            tokio::runtime::Handle::try_current().map_err(|e| WaypostError::Internal {
                details: e.to_string(),
            })?;
        validate_id("user_id", &config.user_id).map_err(|e| WaypostError::InvalidArgument {
            details: e.to_string(),
        })?;
        let ws_url = config.ws_url()?;
        let store = Arc::new(Store::open(config.db_path.as_deref())?);
        let (tx, mut rx) = mpsc::channel(COMMAND_QUEUE);
        let cancel = CancellationToken::new();
        let snapshot = Arc::new(Mutex::new(Snapshot::default()));
        let registry = Arc::new(Mutex::new(Registry::default()));
        let tokens = Arc::new(Tokens::new(tokens, Arc::clone(&deps.clock)));
        let conn_cfg = ConnectionConfig {
            ws_url,
            ping_interval: Duration::from_millis(config.ping_interval_ms),
            connect_timeout: Duration::from_millis(config.connect_timeout_ms),
            backoff: BackoffPolicy {
                base: Duration::from_millis(config.backoff_base_ms.max(1)),
                cap: Duration::from_millis(config.backoff_cap_ms.max(config.backoff_base_ms)),
                max_elapsed: None,
            },
            tick: Duration::from_millis(500),
        };
        let conn_deps = Deps {
            connector: Arc::clone(&deps.connector),
            tokens: Arc::clone(&tokens),
            clock: Arc::clone(&deps.clock),
            random: Arc::clone(&deps.random),
            environment: Arc::clone(&deps.environment),
        };
        let http_tokens = Arc::clone(&tokens);
        let mut core = Core {
            me: config.user_id.clone(),
            base_url: config.base_url.trim_end_matches('/').to_owned(),
            listener,
            store: Arc::clone(&store),
            clock: Arc::clone(&deps.clock),
            transport: Arc::clone(&deps.transport),
            tokens,
            cmd: tx.downgrade(),
            snapshot: Arc::clone(&snapshot),
            registry: Arc::clone(&registry),
            connected: false,
            tracking: Tracking::default(),
            orders: Orders::default(),
            rooms: HashMap::new(),
            outbox: Outbox::new(config.ack_timeout_ms, config.max_send_attempts),
            http_tasks: HashMap::new(),
            last_typing: HashMap::new(),
            unsent_reads: HashMap::new(),
            unsent_delivered: HashMap::new(),
            presence: HashMap::new(),
        };
        let task_cancel = cancel.clone();
        // A PlatformState notifies: a network change reaches the connection
        // as `EnvironmentChanged` without the app calling anything. Lives
        // and ends with the client task.
        let follow = follow_platform(deps.environment.watch(), tx.downgrade());
        let task = runtime.spawn(async move {
            tokio::select! {
                () = connection::run(conn_cfg, conn_deps, &mut core, &mut rx, task_cancel) => {}
                () = follow => {}
            }
            core.stop();
        });
        Ok(Arc::new(Self {
            config,
            transport: Arc::clone(&deps.transport),
            tokens: http_tokens,
            random: Arc::clone(&deps.random),
            cmd: tx,
            cancel,
            store,
            clock: deps.clock,
            snapshot,
            registry,
            task: Mutex::new(Some(task)),
        }))
    }

    fn send(&self, cmd: Command) -> Result<(), WaypostError> {
        self.cmd.try_send(cmd).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => WaypostError::Busy {
                details: "too many queued requests".into(),
            },
            mpsc::error::TrySendError::Closed(_) => WaypostError::ShutDown,
        })
    }

    /// Watches a driver through the client-wide listener: `on_location`
    /// gets its position now (if known) and every newer one, across
    /// reconnects, until [`untrack_driver`](Self::untrack_driver).
    pub fn track_driver(&self, driver_id: String) -> Result<(), WaypostError> {
        check_id("driver_id", &driver_id)?;
        let new = {
            let mut r = self.registry.lock();
            r.check_open()?;
            add_wide(&mut r.wide_drivers, &driver_id)?
        };
        let sent = self.send(Command::Track {
            driver_id: driver_id.clone(),
            sub: None,
        });
        if sent.is_err() && new {
            self.registry.lock().wide_drivers.remove(&driver_id);
        }
        sent
    }

    /// Stops [`track_driver`](Self::track_driver). The wire subscription
    /// ends unless a [`subscribe_driver`](Self::subscribe_driver) still
    /// wants the driver.
    pub fn untrack_driver(&self, driver_id: String) -> Result<(), WaypostError> {
        self.registry.lock().wide_drivers.remove(&driver_id);
        self.send(Command::Untrack(driver_id))
    }

    /// Watches a driver for one listener: `listener` gets that driver's
    /// newest known position (if any) and every newer one, across
    /// reconnects, and nothing about other drivers (the client-wide
    /// listener still hears them too). Cancelling or dropping the returned
    /// [`Subscription`] removes the listener at once and ends the wire
    /// subscription when nothing else wants the driver.
    pub fn subscribe_driver(
        &self,
        driver_id: String,
        listener: Arc<dyn LocationListener>,
    ) -> Result<Subscription, WaypostError> {
        check_id("driver_id", &driver_id)?;
        let remove = |r: &mut Registry, id| r.drivers.remove(id);
        let id = self.register(
            |r| r.drivers.add(&driver_id, listener),
            |id| Command::Track {
                driver_id: driver_id.clone(),
                sub: Some(id),
            },
            remove,
        )?;
        Ok(self.release_on_cancel(id, remove, Command::Untrack))
    }

    /// Adds a listener to the registry (with `add`) and queues `command`
    /// for the task; takes the listener out again (with `remove`) when the
    /// queue refuses. The listener's id.
    fn register(
        &self,
        add: impl FnOnce(&mut Registry) -> Result<u64, WaypostError>,
        command: impl FnOnce(u64) -> Command,
        remove: fn(&mut Registry, u64) -> Option<String>,
    ) -> Result<u64, WaypostError> {
        let id = {
            let mut r = self.registry.lock();
            r.check_open()?;
            add(&mut r)?
        };
        if let Err(e) = self.send(command(id)) {
            remove(&mut self.registry.lock(), id);
            return Err(e);
        }
        Ok(id)
    }

    /// A subscription whose cancel removes listener `id` (with `remove`)
    /// and asks the task to release the key. When the queue is full the
    /// task's periodic sweep releases it instead.
    fn release_on_cancel(
        &self,
        id: u64,
        remove: fn(&mut Registry, u64) -> Option<String>,
        release: fn(String) -> Command,
    ) -> Subscription {
        let registry: Weak<Mutex<Registry>> = Arc::downgrade(&self.registry);
        let cmd = self.cmd.downgrade();
        Subscription::new(move || {
            let Some(registry) = registry.upgrade() else {
                return;
            };
            let key = remove(&mut registry.lock(), id);
            if let (Some(key), Some(tx)) = (key, cmd.upgrade()) {
                // Full or closed: the sweep (or the shutdown) takes care.
                let _ = tx.try_send(release(key));
            }
        })
    }

    /// Follows an order: `listener` gets its timeline entries (status,
    /// ETA, arrival, departure) from seq 1, each once and in order across
    /// reconnects, and the assigned driver's position while the order is
    /// active. Tracking it again replaces the listener.
    pub fn track_order(
        &self,
        order_id: String,
        listener: Arc<dyn OrderListener>,
    ) -> Result<(), WaypostError> {
        check_id("order_id", &order_id)?;
        self.send(Command::TrackOrder(order_id, listener))
    }

    pub fn untrack_order(&self, order_id: String) -> Result<(), WaypostError> {
        self.send(Command::UntrackOrder(order_id))
    }

    /// Joins a chat room for the client-wide listener: its timeline
    /// resumes after the last stored seq, until
    /// [`leave_chat`](Self::leave_chat).
    pub fn join_chat(&self, room: String) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        let new = {
            let mut r = self.registry.lock();
            r.check_open()?;
            add_wide(&mut r.wide_rooms, &room)?
        };
        let sent = self.send(Command::Join(room.clone()));
        if sent.is_err() && new {
            self.registry.lock().wide_rooms.remove(&room);
        }
        sent
    }

    /// Stops [`join_chat`](Self::join_chat); the room is left unless a
    /// [`subscribe_chat`](Self::subscribe_chat) still wants it.
    pub fn leave_chat(&self, room: String) -> Result<(), WaypostError> {
        self.registry.lock().wide_rooms.remove(&room);
        self.send(Command::Leave(room))
    }

    /// Joins a chat room for one listener: `listener` gets that room's
    /// [`ChatEvent`]s (new messages after the last stored seq, own
    /// messages' status, presence, typing, a refused subscription) and
    /// nothing about other rooms. Read the stored timeline with
    /// [`messages`](Self::messages). Cancelling or dropping the returned
    /// [`Subscription`] removes the listener at once and leaves the room
    /// when nothing else wants it.
    pub fn subscribe_chat(
        &self,
        room: String,
        listener: Arc<dyn ChatListener>,
    ) -> Result<Subscription, WaypostError> {
        check_id("room", &room)?;
        let remove = |r: &mut Registry, id| r.rooms.remove(id);
        let id = self.register(
            |r| r.rooms.add(&room, listener),
            |_| Command::Join(room.clone()),
            remove,
        )?;
        Ok(self.release_on_cancel(id, remove, Command::Leave))
    }

    /// Follows the connection state for one listener: the current state
    /// first, then every change, in order, until the returned
    /// [`Subscription`] is cancelled or dropped.
    pub fn watch_connection_state(
        &self,
        listener: Arc<dyn ConnectionStateListener>,
    ) -> Result<Subscription, WaypostError> {
        let id = self.register(
            |r| r.states.add("", listener),
            Command::WatchState,
            |r, id| r.states.remove(id),
        )?;
        let registry = Arc::downgrade(&self.registry);
        Ok(Subscription::new(move || {
            if let Some(r) = registry.upgrade() {
                r.lock().states.remove(id);
            }
        }))
    }

    /// Per-subscription listeners alive now (all kinds).
    pub fn subscription_count(&self) -> usize {
        let r = self.registry.lock();
        r.drivers.len() + r.rooms.len() + r.states.len()
    }

    /// Writes a message: stored in the outbox at once (works offline) and
    /// sent when connected. Returns the pending entry.
    pub fn send_message(&self, room: String, body: String) -> Result<ChatEntry, WaypostError> {
        self.send_message_with_attachments(room, body, Vec::new())
    }

    /// [`BuyerClient::send_message`] with attachment metadata (the files
    /// go to the app's own storage first; the body may then be empty).
    pub fn send_message_with_attachments(
        &self,
        room: String,
        body: String,
        attachments: Vec<Attachment>,
    ) -> Result<ChatEntry, WaypostError> {
        check_id("room", &room)?;
        if self.cancel.is_cancelled() {
            return Err(WaypostError::ShutDown);
        }
        let client_id = uuid::Uuid::new_v4().to_string();
        let wire: Vec<waypost_protocol::Attachment> =
            attachments.into_iter().map(Into::into).collect();
        let entry = self.store.enqueue_with(
            &room,
            &self.config.user_id,
            &client_id,
            &body,
            &wire,
            self.clock.now_ms(),
        )?;
        // The entry is durable; if the queue is full the next pump sends it.
        let _ = self.send(Command::Queued(entry.clone()));
        Ok(entry)
    }

    /// Puts a failed message back in the outbox.
    pub fn retry_message(&self, room: String, client_id: String) -> Result<(), WaypostError> {
        self.send(Command::Retry { room, client_id })
    }

    /// Tells the room this user is typing (rate-limited; dropped offline).
    pub fn send_typing(&self, room: String) -> Result<(), WaypostError> {
        self.send(Command::Typing(room))
    }

    /// The room's timeline from the local store (works offline): the
    /// newest `limit` messages in seq order, then pending and failed ones.
    /// Edits and deletes are applied to the messages they refer to
    /// (`edited`, `deleted`), not listed themselves.
    pub fn messages(&self, room: String, limit: u32) -> Result<Vec<ChatEntry>, WaypostError> {
        self.store.messages(&room, limit)
    }

    /// Tells the room this user read it up to `seq` (the app says the user
    /// saw it). Recorded locally at once; sent when connected (the latest
    /// one per room, at the next connection when offline). Delivered
    /// receipts are sent by the SDK itself as messages are stored.
    pub fn mark_read(&self, room: String, seq: u64) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        self.store
            .mark_receipt(&room, &self.config.user_id, ReceiptKind::Read, seq)?;
        self.send(Command::MarkRead(room, seq))
    }

    /// Every known participant's receipt markers in `room` (local store).
    pub fn receipts(&self, room: String) -> Result<Vec<Receipts>, WaypostError> {
        self.store.receipts(&room)
    }

    /// Messages from others in `room` above this user's read marker (local
    /// store).
    pub fn unread_count(&self, room: String) -> Result<u64, WaypostError> {
        self.store.unread_count(&room, &self.config.user_id)
    }

    /// Replaces the body of this user's message `seq`. Queued in the
    /// outbox like a message (works offline, sent once connected, exactly
    /// once, in order with messages written before it); the result arrives
    /// as `on_message` with `edited`, or `on_error` with the room as
    /// reference.
    pub fn edit_message(&self, room: String, seq: u64, body: String) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        if body.is_empty() || body.len() > MAX_BODY_BYTES {
            return Err(WaypostError::InvalidArgument {
                details: format!("an edit needs a body of 1..={MAX_BODY_BYTES} bytes"),
            });
        }
        self.amend(room, seq, Some(body))
    }

    /// Deletes this user's message `seq`: queued like an edit; the result
    /// arrives as `on_message` with `deleted`.
    pub fn delete_message(&self, room: String, seq: u64) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        self.amend(room, seq, None)
    }

    fn amend(&self, room: String, seq: u64, body: Option<String>) -> Result<(), WaypostError> {
        if self.cancel.is_cancelled() {
            return Err(WaypostError::ShutDown);
        }
        if seq == 0 {
            return Err(WaypostError::InvalidArgument {
                details: "messages are numbered from 1".into(),
            });
        }
        let client_id = uuid::Uuid::new_v4().to_string();
        self.store.enqueue_amend(
            &room,
            &self.config.user_id,
            &client_id,
            seq,
            body.as_deref(),
            self.clock.now_ms(),
        )?;
        // The entry is durable; if the queue is full the next pump sends it.
        let _ = self.send(Command::Amended);
        Ok(())
    }

    /// The newest position seen for a driver, from its `tracking:` channel
    /// or from a tracked order it is assigned to (while that order is active).
    pub fn latest_location(&self, driver_id: String) -> Option<LocationUpdate> {
        self.snapshot.lock().locations.get(&driver_id).cloned()
    }

    pub fn connection_state(&self) -> ConnectionState {
        self.snapshot
            .lock()
            .state
            .clone()
            .unwrap_or(ConnectionState::Connecting { attempt: 0 })
    }

    /// The platform's network (or battery) changed: re-read the
    /// [`Environment`]. Network back means reconnect now, skipping backoff.
    /// Not needed with a [`PlatformState`](crate::env::PlatformState),
    /// which the client follows by itself.
    pub fn environment_changed(&self) -> Result<(), WaypostError> {
        self.send(Command::EnvironmentChanged)
    }

    /// Reconnects now: after `Closed` (e.g. the app has a new token), or to
    /// skip a backoff wait.
    pub fn reconnect(&self) -> Result<(), WaypostError> {
        self.send(Command::Reconnect)
    }

    /// Closes the connection and stops the background task; waits for it.
    /// The store keeps the outbox for the next start.
    /// A token for an HTTP call, or `Unauthorized` when the app has none.
    async fn http_token(&self) -> Result<String, WaypostError> {
        self.tokens.get().await.ok_or(WaypostError::Unauthorized {
            details: "the token provider returned no token".into(),
            http_status: None,
        })
    }

    fn base(&self) -> &str {
        self.config.base_url.trim_end_matches('/')
    }

    /// This installation's push device id (made once, kept in the store).
    fn push_device_id(&self) -> Result<String, WaypostError> {
        if let Some(id) = self.store.get(PUSH_DEVICE_KEY)? {
            return Ok(id);
        }
        let id = format!(
            "dev-{:016x}{:016x}",
            self.random.next_u64(),
            self.random.next_u64()
        );
        self.store.set(PUSH_DEVICE_KEY, &id)?;
        Ok(id)
    }

    /// Registers this device's push token (call from FCM's `onNewToken` or
    /// iOS's `didRegisterForRemoteNotificationsWithDeviceToken`, and again
    /// after a token change). Returns the channels pushes will come for.
    pub async fn register_push_token(
        &self,
        platform: PushPlatform,
        token: String,
    ) -> Result<Vec<String>, WaypostError> {
        if token.is_empty() {
            return Err(WaypostError::invalid("push token is empty"));
        }
        let device_id = self.push_device_id()?;
        let auth = self.http_token().await?;
        let reg = push::register(
            &*self.transport,
            self.base(),
            &auth,
            &device_id,
            platform,
            &token,
        )
        .await?;
        Ok(reg.channels)
    }

    /// Stops pushes to this device (e.g. at logout).
    pub async fn unregister_push_token(&self) -> Result<(), WaypostError> {
        let Some(device_id) = self.store.get(PUSH_DEVICE_KEY)? else {
            return Ok(());
        };
        let auth = self.http_token().await?;
        push::unregister(&*self.transport, self.base(), &auth, &device_id).await
    }

    /// Handles a received push (`userInfo` on iOS, `RemoteMessage.data` on
    /// Android, as JSON): reads exactly what this device misses on the
    /// pushed channel up to the pushed seq and returns it. Chat messages
    /// are stored like live ones (the room's next resume starts after
    /// them). Bounded to [`push::MAX_PUSH_PAGES`] pages per call.
    pub async fn handle_push(&self, payload: String) -> Result<PushSync, WaypostError> {
        let data = push::parse(&payload)?;
        let mut out = PushSync {
            kind: push::kind_name(data.kind),
            channel: data.channel.clone(),
            seq: data.seq,
            count: data.count,
            messages: Vec::new(),
            order_entries: Vec::new(),
            notifications: Vec::new(),
            complete: true,
        };
        let Some(channel) = Channel::from_name(&data.channel) else {
            return Ok(out);
        };
        match (data.kind, channel.kind) {
            (PushKind::Message, ChannelKind::Chat) => {
                check_id("room", &channel.id)?;
                let auth = self.http_token().await?;
                let after = self.store.last_seq(&channel.id)?;
                let (msgs, complete) = push::chat_gap(
                    &*self.transport,
                    self.base(),
                    &auth,
                    &channel.id,
                    after,
                    data.seq,
                )
                .await?;
                for m in &msgs {
                    if m.seq > self.store.last_seq(&channel.id)? {
                        // An edit or delete updates the entry it refers to
                        // and returns it; nothing else to hand back.
                        if let (Some(entry), _) = self.store.apply(m, &self.config.user_id)? {
                            out.messages.push(entry);
                        }
                    }
                }
                out.complete = complete;
            }
            (PushKind::Order, ChannelKind::Order) => {
                check_id("order_id", &channel.id)?;
                let after = push_cursor(&self.store, &data.channel)?;
                let auth = self.http_token().await?;
                let (entries, complete) = push::order_gap(
                    &*self.transport,
                    self.base(),
                    &auth,
                    &channel.id,
                    after,
                    data.seq,
                )
                .await?;
                if let Some(last) = entries.last() {
                    advance_push_cursor(&self.store, &data.channel, last.seq)?;
                }
                out.order_entries = entries;
                out.complete = complete;
            }
            (PushKind::Notification, ChannelKind::Vendor) => {
                check_id("vendor_id", &channel.id)?;
                let after = push_cursor(&self.store, &data.channel)?;
                let auth = self.http_token().await?;
                let (notifications, complete) = push::notification_gap(
                    &*self.transport,
                    self.base(),
                    &auth,
                    &channel.id,
                    after,
                    data.seq,
                )
                .await?;
                if let Some(last) = notifications.last() {
                    advance_push_cursor(&self.store, &data.channel, last.seq)?;
                }
                out.notifications = notifications;
                out.complete = complete;
            }
            _ => {}
        }
        Ok(out)
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(t) = task {
            let _ = t.await;
        }
    }
}

impl Drop for BuyerClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The last order entry or vendor notification this device has on
/// `channel` (0: none).
fn push_cursor(store: &Store, channel: &str) -> Result<u64, WaypostError> {
    Ok(store
        .get(&push::cursor_key(channel))?
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0))
}

/// Moves `channel`'s push cursor up to `seq` (never back).
fn advance_push_cursor(store: &Store, channel: &str, seq: u64) -> Result<(), WaypostError> {
    if seq > push_cursor(store, channel)? {
        store.set(&push::cursor_key(channel), &seq.to_string())?;
    }
    Ok(())
}

fn check_id(what: &'static str, id: &str) -> Result<(), WaypostError> {
    validate_id(what, id).map_err(|e| WaypostError::InvalidArgument {
        details: e.to_string(),
    })
}

/// Forwards network changes of a notifying environment to the client task
/// until the client is gone; never returns while it lives (pending forever
/// for environments that cannot notify).
async fn follow_platform(
    rx: Option<tokio::sync::watch::Receiver<crate::env::PlatformSnapshot>>,
    cmd: mpsc::WeakSender<Command>,
) {
    let Some(mut rx) = rx else {
        return std::future::pending().await;
    };
    let mut network = rx.borrow_and_update().network;
    while rx.changed().await.is_ok() {
        let now = rx.borrow_and_update().network;
        if now == network {
            continue;
        }
        network = now;
        let Some(tx) = cmd.upgrade() else { break };
        // Best effort: a full queue means the task is busy and will read
        // the environment on its next decision anyway.
        if tx.try_send(Command::EnvironmentChanged).is_err() {
            tracing::debug!("buyer: command queue full; network change not forwarded");
        }
    }
    // The platform state is gone (cannot happen while the client holds
    // it) or the client is: nothing left to forward.
    std::future::pending().await
}

/// Aborts its task when dropped.
struct Owned(JoinHandle<()>);

impl Drop for Owned {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The buyer's state, driven by the connection manager.
struct Core {
    me: String,
    base_url: String,
    listener: Arc<dyn BuyerListener>,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    transport: Arc<dyn HttpTransport>,
    /// Shared with the connection: HTTP reads use the same token.
    tokens: Arc<Tokens>,
    cmd: mpsc::WeakSender<Command>,
    snapshot: Arc<Mutex<Snapshot>>,
    registry: Arc<Mutex<Registry>>,
    connected: bool,
    tracking: Tracking,
    orders: Orders,
    rooms: HashMap<String, Room>,
    outbox: Outbox,
    http_tasks: HashMap<String, Owned>,
    last_typing: HashMap<String, u64>,
    /// Read receipts made offline, the newest per room (at most
    /// `MAX_ROOMS`), sent when the connection opens.
    unsent_reads: HashMap<String, u64>,
    /// Newest stored seq from others per joined room not yet acknowledged
    /// as `delivered` (sent at the next tick while connected).
    unsent_delivered: HashMap<String, u64>,
    /// Last presence reported per (room, user): the server repeats who is
    /// online at every (re)subscribe; the app hears only changes.
    presence: HashMap<(String, String), bool>,
}

impl Core {
    fn stop(&mut self) {
        self.http_tasks.clear();
        // Release the app's listeners (foreign objects) now, not when the
        // last handle to the client goes.
        let mut r = self.registry.lock();
        r.stopped = true;
        r.drivers.clear();
        r.rooms.clear();
        r.states.clear();
    }

    /// Tells the room's subscriptions about `event`.
    fn room_event(&self, room: &str, event: impl FnOnce() -> ChatEvent) {
        let listeners = self.registry.lock().rooms.get(room);
        if listeners.is_empty() {
            return;
        }
        let event = event();
        for l in listeners {
            l.on_chat_event(event.clone());
        }
    }

    /// An own message was queued or changed status.
    fn outgoing(&self, entry: ChatEntry) {
        let room = entry.room.clone();
        self.room_event(&room, || ChatEvent::Outgoing {
            entry: entry.clone(),
        });
        self.listener.on_outgoing(entry);
    }

    fn release_driver(&mut self, driver_id: &str, out: &mut Vec<ClientFrame>) {
        if self.registry.lock().wants_driver(driver_id) || !self.tracking.remove(driver_id) {
            return;
        }
        self.snapshot.lock().locations.remove(driver_id);
        if self.connected {
            out.push(ClientFrame::Unsubscribe {
                channel: Tracking::channel(driver_id),
            });
        }
    }

    fn release_room(&mut self, room: &str, out: &mut Vec<ClientFrame>) {
        if self.registry.lock().wants_room(room) || self.rooms.remove(room).is_none() {
            return;
        }
        self.http_tasks.remove(room);
        self.presence.retain(|(r, _), _| r != room);
        if self.connected {
            out.push(ClientFrame::Unsubscribe {
                channel: Room::channel(room),
            });
        }
    }

    /// Releases what nobody wants any more (a cancel whose command did
    /// not fit in the queue).
    fn sweep(&mut self, out: &mut Vec<ClientFrame>) {
        let (drivers, rooms): (Vec<String>, Vec<String>) = {
            let r = self.registry.lock();
            (
                self.tracking
                    .drivers()
                    .filter(|d| !r.wants_driver(d))
                    .cloned()
                    .collect(),
                self.rooms
                    .keys()
                    .filter(|k| !r.wants_room(k))
                    .cloned()
                    .collect(),
            )
        };
        for d in drivers {
            self.release_driver(&d, out);
        }
        for room in rooms {
            self.release_room(&room, out);
        }
    }

    fn now(&self) -> u64 {
        self.clock.monotonic_ms()
    }

    fn pump(&mut self, out: &mut Vec<ClientFrame>) {
        if !self.connected {
            return;
        }
        let now = self.now();
        if let Err(e) = self.outbox.pump(&self.store, now, out) {
            tracing::warn!(error = %e, "outbox read failed");
        }
    }

    fn verdict(&mut self, v: Option<Verdict>) {
        if let Some(Verdict::Fail { room, client_id }) = v {
            // An edit or delete given up on is dropped (the app heard the
            // refusal as `on_error` with the room, or hears it now).
            match self.store.amendment(&room, &self.me, &client_id) {
                Ok(Some(_)) => {
                    if let Err(e) = self.store.discard(&room, &self.me, &client_id) {
                        tracing::warn!(error = %e, "could not drop a failed edit");
                    }
                    let (code, message) =
                        ("send_failed", "the edit or delete was not acknowledged");
                    self.listener.on_error(room, code.into(), message.into());
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "outbox read failed"),
            }
            match self.store.fail(&room, &self.me, &client_id) {
                Ok(Some(entry)) => self.outgoing(entry),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not mark message failed"),
            }
        }
    }

    /// Delivers whatever is ready in `room`, then asks for a sync when a
    /// gap remains.
    fn drain(&mut self, room: &str, out: &mut Vec<ClientFrame>) {
        let mut delivered = 0;
        loop {
            let Some(r) = self.rooms.get_mut(room) else {
                return;
            };
            let Some(msg) = r.next_ready() else { break };
            match self.store.apply(&msg, &self.me) {
                Ok((entry, was_unsent)) => {
                    r.mark_delivered(msg.seq);
                    if msg.from != self.me {
                        delivered = msg.seq;
                    }
                    // None: an edit or delete of a message not stored here.
                    let Some(entry) = entry else { continue };
                    if was_unsent {
                        self.outbox.forget(&msg.client_id);
                        self.outgoing(entry.clone());
                    }
                    self.room_event(room, || ChatEvent::Message {
                        entry: entry.clone(),
                    });
                    self.listener.on_message(entry);
                }
                Err(e) => {
                    // Put it back and stop; the next event retries.
                    tracing::warn!(error = %e, room, "could not store message");
                    r.offer(msg);
                    break;
                }
            }
        }
        // `delivered` for the newest from others goes out at the next tick:
        // at most one per room per tick, however long a replay is.
        if delivered > 0 {
            let at = self.unsent_delivered.entry(room.to_owned()).or_default();
            *at = (*at).max(delivered);
        }
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        if r.has_gap() && r.filling == Filling::No && self.connected {
            r.filling = Filling::Ws;
            out.push(r.sync_frame());
        }
    }

    fn offer(&mut self, msg: ChatMessage, out: &mut Vec<ClientFrame>) {
        let room = msg.room.clone();
        self.offer_all(&room, vec![msg], out);
    }

    /// Buffers a batch (a sync page) and delivers once, so a page is not
    /// mistaken for a gap halfway through.
    fn offer_all(&mut self, room: &str, msgs: Vec<ChatMessage>, out: &mut Vec<ClientFrame>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        for msg in msgs {
            if msg.room == room && r.offer(msg) == Offer::Dropped {
                tracing::debug!(room, "chat buffer full; message dropped until synced");
            }
        }
        self.drain(room, out);
    }

    /// Fills `room` from HTTP history (after `recovered: false`).
    fn start_http_fill(&mut self, room: &str) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        r.filling = Filling::Http;
        let (tokens, transport, base, name, mut after) = (
            Arc::clone(&self.tokens),
            Arc::clone(&self.transport),
            self.base_url.clone(),
            room.to_owned(),
            r.delivered,
        );
        let cmd = self.cmd.clone();
        let task = tokio::spawn(async move {
            for _ in 0..MAX_HTTP_PAGES {
                let result = match tokens.get().await {
                    Some(token) => fetch_page(&*transport, &base, &token, &name, after)
                        .await
                        .map(|p| {
                            let more = p.more && !p.messages.is_empty();
                            (p.messages, more)
                        }),
                    None => Err(HttpError::NoToken),
                };
                let more = match &result {
                    Ok((m, more)) => {
                        after = m.last().map_or(after, |l| l.seq);
                        *more
                    }
                    Err(_) => false,
                };
                let Some(tx) = cmd.upgrade() else { return };
                let page = Command::HttpPage {
                    room: name.clone(),
                    result,
                };
                if tx.send(page).await.is_err() || !more {
                    return;
                }
            }
        });
        self.http_tasks.insert(room.to_owned(), Owned(task));
    }

    fn on_page(
        &mut self,
        room: String,
        result: Result<(Vec<ChatMessage>, bool), HttpError>,
        out: &mut Vec<ClientFrame>,
    ) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        match result {
            Err(e) => {
                tracing::info!(room, error = %e, "HTTP history failed; syncing over the WebSocket");
                self.http_tasks.remove(&room);
                r.filling = Filling::No;
                if self.connected {
                    r.filling = Filling::Ws;
                    out.push(r.sync_frame());
                }
            }
            Ok((messages, more)) => {
                if let Some(first) = messages.first() {
                    r.skip_to(first.seq);
                }
                if !more {
                    r.filling = Filling::No;
                    self.http_tasks.remove(&room);
                }
                self.offer_all(&room, messages, out);
            }
        }
        self.drain(&room, out);
    }

    fn join(&mut self, room: String, out: &mut Vec<ClientFrame>) {
        if !self.registry.lock().wants_room(&room) {
            // Cancelled before the task got to it.
            return;
        }
        if self.rooms.contains_key(&room) {
            return;
        }
        if self.rooms.len() >= MAX_ROOMS {
            tracing::warn!(room, "too many chat rooms joined; ignoring");
            return;
        }
        let delivered = match self.store.last_seq(&room) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, room, "could not read room position; starting at 0");
                0
            }
        };
        let r = Room::new(&room, delivered);
        if self.connected {
            out.push(r.subscribe_frame());
        }
        self.rooms.insert(room, r);
    }

    fn on_location(&mut self, driver_id: String, fix: waypost_protocol::Fix) {
        if let Some(update) = self.tracking.on_location(&driver_id, fix) {
            remember_location(&mut self.snapshot.lock().locations, update.clone());
            let listeners = self.registry.lock().drivers.get(&update.driver_id);
            for l in listeners {
                l.on_location(update.clone());
            }
            self.listener.on_location(update);
        }
    }
}

impl Core {
    fn track(&mut self, driver_id: String, sub: Option<u64>, out: &mut Vec<ClientFrame>) {
        if !self.registry.lock().wants_driver(&driver_id) {
            // Cancelled before the task got to it.
            return;
        }
        let new = !self.tracking.drivers().any(|d| *d == driver_id);
        if !self.tracking.add(&driver_id) {
            tracing::warn!(driver = %driver_id, "too many tracked drivers; ignoring");
            let listener = sub.and_then(|id| self.registry.lock().drivers.by_id(id));
            if let Some(l) = listener {
                l.on_refused(
                    "too_many_subscriptions".into(),
                    format!("at most {MAX_TRACKED} drivers per client"),
                );
            }
            return;
        }
        if new && self.connected {
            out.push(self.tracking.subscribe_frame(&driver_id));
        }
        // A later subscriber starts from the newest known position.
        let listener = sub.and_then(|id| self.registry.lock().drivers.by_id(id));
        if let (Some(l), Some(latest)) = (listener, self.tracking.latest(&driver_id)) {
            l.on_location(latest);
        }
    }

    /// The server refused `reference` (a channel, a client id or a room):
    /// tell the subscriptions of that channel or room.
    fn refused(&self, reference: &str, code: &str, message: &str) {
        match Channel::parse(reference) {
            Ok(ch) if ch.kind == ChannelKind::Tracking => {
                let listeners = self.registry.lock().drivers.get(&ch.id);
                for l in listeners {
                    l.on_refused(code.to_owned(), message.to_owned());
                }
            }
            Ok(ch) if ch.kind == ChannelKind::Chat => {
                self.room_event(&ch.id, || ChatEvent::Refused {
                    reference: reference.to_owned(),
                    code: code.to_owned(),
                    message: message.to_owned(),
                })
            }
            _ if self.rooms.contains_key(reference) => {
                self.room_event(reference, || ChatEvent::Refused {
                    reference: reference.to_owned(),
                    code: code.to_owned(),
                    message: message.to_owned(),
                })
            }
            _ => {}
        }
    }
}

/// Keeps the newest position per driver, whichever channel brought it
/// (`tracking:{driver}` or an order's `order:{id}`): a later seq, or a
/// later timestamp from the driver's other device.
fn remember_location(locations: &mut HashMap<String, LocationUpdate>, update: LocationUpdate) {
    let newer = locations
        .get(&update.driver_id)
        .is_none_or(|l| update.seq > l.seq || update.ts_ms > l.ts_ms);
    if newer {
        locations.insert(update.driver_id.clone(), update);
    }
}

impl Session for Core {
    type Command = Command;

    fn state_changed(&mut self, state: &ConnectionState) {
        self.snapshot.lock().state = Some(state.clone());
        let listeners = self.registry.lock().states.get("");
        for l in listeners {
            l.on_connection_state(state.clone());
        }
        self.listener.on_connection_state(state.clone());
    }

    fn opened(&mut self, out: &mut Vec<ClientFrame>) {
        self.connected = true;
        self.tracking.resubscribe(out);
        self.orders.resubscribe(out);
        for r in self.rooms.values_mut() {
            r.filling = Filling::No;
            out.push(r.subscribe_frame());
        }
        for (room, seq) in std::mem::take(&mut self.unsent_reads) {
            out.push(ClientFrame::Receipt {
                room,
                seq,
                kind: ReceiptKind::Read,
            });
        }
        self.pump(out);
    }

    fn frame(&mut self, frame: ServerFrame, out: &mut Vec<ClientFrame>) {
        match frame {
            ServerFrame::Location {
                channel,
                driver_id,
                fix,
            } => match Channel::parse(&channel) {
                Ok(ch) if ch.kind == ChannelKind::Order => {
                    if let Some(update) = self.orders.on_location(&ch.id, &driver_id, fix) {
                        remember_location(&mut self.snapshot.lock().locations, update);
                    }
                }
                _ => self.on_location(driver_id, fix),
            },
            ServerFrame::Order {
                channel,
                seq,
                entry,
            } => {
                if let Ok(ch) = Channel::parse(&channel) {
                    if ch.kind == ChannelKind::Order {
                        let connected = self.connected;
                        self.orders.on_entry(&ch.id, seq, entry, connected, out);
                        // A push for what tracking delivered fetches only
                        // what came after it.
                        if let Some(delivered) = self.orders.delivered(&ch.id) {
                            if let Err(e) = advance_push_cursor(&self.store, &channel, delivered) {
                                tracing::debug!(error = %e, "storing the order cursor failed");
                            }
                        }
                    }
                }
            }
            ServerFrame::Trail {
                channel,
                driver_id,
                fixes,
            } => match Channel::parse(&channel) {
                Ok(ch) if ch.kind == ChannelKind::Order => {
                    self.orders.on_trail(&ch.id, &driver_id, &fixes);
                }
                _ if self.tracking.is_tracked(&driver_id) => {
                    let trail = TrailUpdate::from_fixes(&driver_id, None, &fixes);
                    let listeners = self.registry.lock().drivers.get(&driver_id);
                    for l in listeners {
                        l.on_trail(trail.clone());
                    }
                    self.listener.on_trail(trail);
                }
                _ => {}
            },
            ServerFrame::DriverStatus {
                channel,
                driver_id,
                body,
            } => match Channel::parse(&channel) {
                Ok(ch) if ch.kind == ChannelKind::Order => {
                    self.orders.on_driver_status(&ch.id, &driver_id, &body);
                }
                _ if self.tracking.is_tracked(&driver_id) => {
                    let status = DriverStatusUpdate::from_wire(&driver_id, None, &body);
                    let listeners = self.registry.lock().drivers.get(&driver_id);
                    for l in listeners {
                        l.on_driver_status(status.clone());
                    }
                    self.listener.on_driver_status(status);
                }
                _ => {}
            },
            ServerFrame::Message(m) => self.offer(m, out),
            ServerFrame::Sent {
                client_id,
                room,
                seq,
                id,
            } => {
                self.outbox.on_ack(&client_id);
                // A queued edit or delete: applied when its entry comes in
                // the room's order (the room echo, or this ack's stand-in).
                let amendment = self
                    .store
                    .amendment(&room, &self.me, &client_id)
                    .unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "outbox read failed");
                        None
                    });
                match self.store.ack(&room, &self.me, &client_id, seq, &id) {
                    Ok(Some(entry)) => {
                        if amendment.is_none() {
                            self.outgoing(entry.clone());
                        }
                        if self.rooms.contains_key(&room) {
                            self.offer(
                                ChatMessage {
                                    room: room.clone(),
                                    seq,
                                    id,
                                    from: self.me.clone(),
                                    client_id,
                                    body: entry.body,
                                    ts: entry.ts_ms,
                                    kind: amendment.map(|(kind, _)| kind),
                                    ref_seq: amendment.map(|(_, target)| target),
                                    ..Default::default()
                                },
                                out,
                            );
                        }
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "could not record ack"),
                }
                self.pump(out);
            }
            ServerFrame::Synced {
                room,
                messages,
                more,
            } => {
                if let Some(r) = self.rooms.get_mut(&room) {
                    if r.filling == Filling::Ws {
                        r.filling = Filling::No;
                    }
                    if let Some(first) = messages.first() {
                        r.skip_to(first.seq);
                    } else if !more {
                        // Nothing between what we have and what is
                        // buffered: the server no longer has it.
                        r.skip_to_buffered();
                    }
                }
                self.offer_all(&room, messages, out);
                // More history than one page: keep reading.
                if let Some(r) = self.rooms.get_mut(&room) {
                    if more && r.filling == Filling::No && self.connected {
                        r.filling = Filling::Ws;
                        out.push(r.sync_frame());
                    }
                }
            }
            ServerFrame::Subscribed {
                channel,
                recovered,
                high_seq,
            } => {
                let Ok(ch) = Channel::parse(&channel) else {
                    return;
                };
                if ch.kind == ChannelKind::Order {
                    self.orders.on_subscribed(&ch.id, high_seq);
                    return;
                }
                if ch.kind != ChannelKind::Chat {
                    return;
                }
                let Some(r) = self.rooms.get_mut(&ch.id) else {
                    return;
                };
                if let Some(high) = high_seq {
                    if high < r.delivered {
                        r.restart();
                        if let Err(e) = self.store.set_last_seq(&ch.id, 0) {
                            tracing::warn!(error = %e, "could not reset room position");
                        }
                    }
                }
                if !recovered {
                    self.start_http_fill(&ch.id);
                }
                self.drain(&ch.id, out);
            }
            ServerFrame::Presence { room, user, online } => {
                if !self.rooms.contains_key(&room) {
                    return;
                }
                let key = (room, user);
                if self.presence.get(&key) == Some(&online) {
                    return;
                }
                if self.presence.len() >= MAX_PRESENCE && !self.presence.contains_key(&key) {
                    self.presence.clear();
                }
                self.presence.insert(key.clone(), online);
                let (room, user) = key;
                let update = PresenceUpdate { room, user, online };
                self.room_event(&update.room, || ChatEvent::Presence {
                    update: update.clone(),
                });
                self.listener.on_presence(update);
            }
            ServerFrame::Receipt {
                room,
                user,
                kind,
                seq,
            } => {
                if let Err(e) = self.store.mark_receipt(&room, &user, kind, seq) {
                    tracing::warn!(error = %e, "could not record a receipt");
                }
                let update = ReceiptUpdate {
                    room,
                    user,
                    read: kind == ReceiptKind::Read,
                    seq,
                };
                self.room_event(&update.room, || ChatEvent::Receipt {
                    update: update.clone(),
                });
                self.listener.on_receipt(update);
            }
            ServerFrame::Typing { room, user } => {
                if user != self.me {
                    let update = TypingUpdate { room, user };
                    self.room_event(&update.room, || ChatEvent::Typing {
                        update: update.clone(),
                    });
                    self.listener.on_typing(update);
                }
            }
            ServerFrame::Error {
                code,
                message,
                reference,
            } => {
                tracing::info!(%code, %message, ?reference, "server error frame");
                let now = self.now();
                match self
                    .outbox
                    .on_error(&self.store, &self.me, &code, reference.as_deref(), now)
                {
                    Ok(v) => self.verdict(v),
                    Err(e) => tracing::warn!(error = %e, "outbox error handling failed"),
                }
                if let Some(r) = reference {
                    self.refused(&r, &code, &message);
                    self.listener.on_error(r, code, message);
                }
                self.pump(out);
            }
            // A refreshed token no longer allows the channel: the app hears
            // it as it hears a refused subscribe.
            ServerFrame::Unsubscribed {
                channel,
                reason: Some(reason),
            } => self.frame(
                ServerFrame::Error {
                    code: reason.as_str().to_owned(),
                    message: "the refreshed token no longer allows this channel".into(),
                    reference: Some(channel),
                },
                out,
            ),
            // The token session is the connection manager's.
            ServerFrame::Unsubscribed { reason: None, .. }
            | ServerFrame::Pong { .. }
            | ServerFrame::TokenExpiring { .. }
            | ServerFrame::Refreshed { .. } => {}
        }
    }

    fn command(&mut self, cmd: Command, connected: bool, out: &mut Vec<ClientFrame>) -> Control {
        debug_assert_eq!(connected, self.connected);
        match cmd {
            Command::Track { driver_id, sub } => self.track(driver_id, sub, out),
            Command::Untrack(d) => self.release_driver(&d, out),
            Command::TrackOrder(id, listener) => {
                let new = !self.orders.is_tracked(&id);
                if !self.orders.add(&id, listener) {
                    tracing::warn!(order = %id, "too many tracked orders; ignoring");
                } else if new && self.connected {
                    out.push(self.orders.subscribe_frame(&id));
                }
            }
            Command::UntrackOrder(id) => {
                if self.orders.remove(&id) && self.connected {
                    out.push(ClientFrame::Unsubscribe {
                        channel: Orders::channel(&id),
                    });
                }
            }
            Command::Join(room) => self.join(room, out),
            Command::Leave(room) => self.release_room(&room, out),
            Command::WatchState(id) => {
                let listener = self.registry.lock().states.by_id(id);
                if let Some(l) = listener {
                    let state = self
                        .snapshot
                        .lock()
                        .state
                        .clone()
                        .unwrap_or(ConnectionState::Connecting { attempt: 0 });
                    l.on_connection_state(state);
                }
            }
            Command::Queued(entry) => {
                self.outgoing(entry);
                self.pump(out);
            }
            Command::Retry { room, client_id } => {
                match self.store.retry(&room, &self.me, &client_id) {
                    Ok(Some(entry)) => self.outgoing(entry),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "retry failed"),
                }
                self.pump(out);
            }
            Command::MarkRead(room, seq) => {
                if self.connected {
                    out.push(ClientFrame::Receipt {
                        room,
                        seq,
                        kind: ReceiptKind::Read,
                    });
                } else if self.unsent_reads.len() < MAX_ROOMS
                    || self.unsent_reads.contains_key(&room)
                {
                    let at = self.unsent_reads.entry(room).or_default();
                    *at = (*at).max(seq);
                }
            }
            // Queued in the store by the app's call: send when connected.
            Command::Amended => self.pump(out),
            Command::Typing(room) => {
                let now = self.now();
                let last = self.last_typing.get(&room).copied();
                if self.connected && last.is_none_or(|t| now >= t + TYPING_EVERY_MS) {
                    if self.last_typing.len() >= MAX_ROOMS && last.is_none() {
                        self.last_typing.clear();
                    }
                    self.last_typing.insert(room.clone(), now);
                    out.push(ClientFrame::Typing { room });
                }
            }
            Command::EnvironmentChanged => return Control::EnvironmentChanged,
            Command::Reconnect => return Control::Reconnect,
            Command::HttpPage { room, result } => self.on_page(room, result, out),
        }
        Control::Continue
    }

    fn tick(&mut self, connected: bool, out: &mut Vec<ClientFrame>) {
        self.sweep(out);
        self.orders.tick(connected, out);
        if connected {
            for (room, seq) in std::mem::take(&mut self.unsent_delivered) {
                out.push(ClientFrame::Receipt {
                    room,
                    seq,
                    kind: ReceiptKind::Delivered,
                });
            }
        }
        let now = self.now();
        match self.outbox.on_tick(&self.store, &self.me, now) {
            Ok(v) => self.verdict(v),
            Err(e) => tracing::warn!(error = %e, "outbox tick failed"),
        }
        self.pump(out);
    }

    fn refresh_refused(&mut self, code: String, message: String) {
        tracing::warn!(%code, %message, "in-band token refresh refused");
        self.listener.on_error("token".into(), code, message);
    }

    fn closed(&mut self) {
        self.connected = false;
        self.outbox.on_closed();
        self.orders.closed();
        self.http_tasks.clear();
        for r in self.rooms.values_mut() {
            r.filling = Filling::No;
        }
    }
}
