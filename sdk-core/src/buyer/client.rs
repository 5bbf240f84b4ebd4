//! [`BuyerClient`]: the object a buyer app holds. It owns one background
//! task that runs the connection manager with the buyer [`Core`] on top:
//! tracking state, chat rooms, the outbox and the local store. App calls
//! become commands to that task (bounded queue), so all state changes and
//! all listener calls happen on it, one at a time and in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{
    validate_id, Channel, ChannelKind, ChatMessage, ClientFrame, ReceiptKind, ServerFrame,
};

use super::chat::{fetch_page, Filling, Offer, Room, MAX_HTTP_PAGES};
use super::connection::{self, ConnectionConfig, Control, Deps, Session};
use super::orders::Orders;
use super::outbox::{Outbox, Verdict};
use super::store::{Store, MAX_BODY_BYTES};
use super::tracking::Tracking;
use super::transport::{TungsteniteConnector, WsConnector};
use super::types::{
    Attachment, BuyerListener, ChatEntry, ConnectionState, LocationUpdate, OrderListener,
    PresenceUpdate, ReceiptUpdate, Receipts, TypingUpdate,
};
use crate::backoff::{BackoffPolicy, RandomSource, SeededRandom};
use crate::clock::{Clock, SystemClock};
use crate::env::{Environment, ManualEnvironment};
use crate::error::WaypostError;
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
    Track(String),
    Untrack(String),
    TrackOrder(String, Arc<dyn OrderListener>),
    UntrackOrder(String),
    Join(String),
    Leave(String),
    Queued(ChatEntry),
    Retry {
        room: String,
        client_id: String,
    },
    Typing(String),
    /// This user read `room` up to a seq.
    MarkRead(String, u64),
    /// Edit (with a body) or delete one of this user's messages.
    Amend {
        room: String,
        seq: u64,
        body: Option<String>,
    },
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

/// A buyer's connection to Waypost: live tracking and chat.
pub struct BuyerClient {
    config: BuyerConfig,
    cmd: mpsc::Sender<Command>,
    cancel: CancellationToken,
    store: Arc<Store>,
    clock: Arc<dyn Clock>,
    snapshot: Arc<Mutex<Snapshot>>,
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
        let task = runtime.spawn(async move {
            connection::run(conn_cfg, conn_deps, &mut core, &mut rx, task_cancel).await;
            core.stop();
        });
        Ok(Arc::new(Self {
            config,
            cmd: tx,
            cancel,
            store,
            clock: deps.clock,
            snapshot,
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

    /// Watches a driver: `on_location` gets its position now (if known)
    /// and every newer one, across reconnects.
    pub fn track_driver(&self, driver_id: String) -> Result<(), WaypostError> {
        check_id("driver_id", &driver_id)?;
        self.send(Command::Track(driver_id))
    }

    pub fn untrack_driver(&self, driver_id: String) -> Result<(), WaypostError> {
        self.send(Command::Untrack(driver_id))
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

    /// Joins a chat room: its timeline resumes after the last stored seq.
    pub fn join_chat(&self, room: String) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        self.send(Command::Join(room))
    }

    pub fn leave_chat(&self, room: String) -> Result<(), WaypostError> {
        self.send(Command::Leave(room))
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

    /// Replaces the body of this user's message `seq` (needs a connection;
    /// the result arrives as `on_message` with `edited`, or `on_error` with
    /// the room as reference).
    pub fn edit_message(&self, room: String, seq: u64, body: String) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        if body.is_empty() || body.len() > MAX_BODY_BYTES {
            return Err(WaypostError::InvalidArgument {
                details: format!("an edit needs a body of 1..={MAX_BODY_BYTES} bytes"),
            });
        }
        self.send(Command::Amend {
            room,
            seq,
            body: Some(body),
        })
    }

    /// Deletes this user's message `seq` (needs a connection; the result
    /// arrives as `on_message` with `deleted`).
    pub fn delete_message(&self, room: String, seq: u64) -> Result<(), WaypostError> {
        check_id("room", &room)?;
        self.send(Command::Amend {
            room,
            seq,
            body: None,
        })
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

fn check_id(what: &'static str, id: &str) -> Result<(), WaypostError> {
    validate_id(what, id).map_err(|e| WaypostError::InvalidArgument {
        details: e.to_string(),
    })
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
            match self.store.fail(&room, &self.me, &client_id) {
                Ok(Some(entry)) => self.listener.on_outgoing(entry),
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not mark message failed"),
            }
        }
    }

    /// Delivers whatever is ready in `room`, then asks for a sync when a
    /// gap remains.
    fn drain(&mut self, room: &str, out: &mut Vec<ClientFrame>) {
        let Some(r) = self.rooms.get_mut(room) else {
            return;
        };
        let mut delivered = 0;
        while let Some(msg) = r.next_ready() {
            match self.store.apply(&msg, &self.me) {
                Ok((entry, was_unsent)) => {
                    r.mark_delivered(msg.seq);
                    if msg.from != self.me {
                        delivered = msg.seq;
                    }
                    match entry {
                        Some(entry) if was_unsent => {
                            self.outbox.forget(&msg.client_id);
                            self.listener.on_outgoing(entry.clone());
                            self.listener.on_message(entry);
                        }
                        Some(entry) => self.listener.on_message(entry),
                        None => {}
                    }
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
            self.listener.on_location(update);
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
                    }
                }
            }
            ServerFrame::Message(m) => self.offer(m, out),
            ServerFrame::Sent {
                client_id,
                room,
                seq,
                id,
            } => {
                self.outbox.on_ack(&client_id);
                match self.store.ack(&room, &self.me, &client_id, seq, &id) {
                    Ok(Some(entry)) => {
                        self.listener.on_outgoing(entry.clone());
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
                self.listener
                    .on_presence(PresenceUpdate { room, user, online });
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
                self.listener.on_receipt(ReceiptUpdate {
                    room,
                    user,
                    read: kind == ReceiptKind::Read,
                    seq,
                });
            }
            ServerFrame::Typing { room, user } => {
                if user != self.me {
                    self.listener.on_typing(TypingUpdate { room, user });
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
                    self.listener.on_error(r, code, message);
                }
                self.pump(out);
            }
            ServerFrame::Unsubscribed { .. } | ServerFrame::Pong { .. } => {}
        }
    }

    fn command(&mut self, cmd: Command, connected: bool, out: &mut Vec<ClientFrame>) -> Control {
        debug_assert_eq!(connected, self.connected);
        match cmd {
            Command::Track(d) => {
                if !self.tracking.add(&d) {
                    tracing::warn!(driver = %d, "too many tracked drivers; ignoring");
                } else if self.connected {
                    out.push(self.tracking.subscribe_frame(&d));
                }
            }
            Command::Untrack(d) => {
                if self.tracking.remove(&d) {
                    self.snapshot.lock().locations.remove(&d);
                    if self.connected {
                        out.push(ClientFrame::Unsubscribe {
                            channel: Tracking::channel(&d),
                        });
                    }
                }
            }
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
            Command::Leave(room) => {
                if self.rooms.remove(&room).is_some() {
                    self.http_tasks.remove(&room);
                    self.presence.retain(|(r, _), _| *r != room);
                    if self.connected {
                        out.push(ClientFrame::Unsubscribe {
                            channel: Room::channel(&room),
                        });
                    }
                }
            }
            Command::Queued(entry) => {
                self.listener.on_outgoing(entry);
                self.pump(out);
            }
            Command::Retry { room, client_id } => {
                match self.store.retry(&room, &self.me, &client_id) {
                    Ok(Some(entry)) => self.listener.on_outgoing(entry),
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
            Command::Amend { room, seq, body } => {
                if !self.connected {
                    self.listener.on_error(
                        room,
                        "not_connected".into(),
                        "edits and deletes need a connection".into(),
                    );
                } else {
                    out.push(match body {
                        Some(body) => ClientFrame::Edit { room, seq, body },
                        None => ClientFrame::Delete { room, seq },
                    });
                }
            }
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
