//! The WebSocket endpoint `/v1/ws`: authentication, subscriptions, the
//! per-connection writer with its bounded queue, heartbeats and limits.
//!
//! One task per connection selects over: the kill switch (4101 from the
//! hub), server shutdown (4100), the outgoing queue, incoming frames and the
//! ping timer. Frames from the hub are written in batches (`feed` then one
//! `flush`) so a busy connection costs one syscall per batch.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use std::future::Future;
use std::pin::Pin;

use futures_util::future::Either;
use futures_util::SinkExt;
use prometheus::IntGauge;
use tokio_util::task::task_tracker::TrackedFuture;
use waypost_protocol::{close_code, Channel, ChannelKind, Claims, ClientFrame, ServerFrame};

use crate::admission::{ConnectionPermit, Full, TokenBucket};
use crate::auth::{may_subscribe, token_from_parts};
use crate::engine::chat::{SeqCursor, SeqStep};
use crate::hub::{connection, ConnHandle, Event, Outbound, Receiver};
use crate::now_ms;
use crate::routes::chat as chat_ops;
use crate::state::AppState;

/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// Consecutive rate-limit violations after which the connection is closed.
const MAX_RATE_VIOLATIONS: u32 = 100;
/// How long a close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Small read/write buffers keep idle connections cheap; messages are small.
/// tungstenite zero-fills the whole read buffer on every read, so its size is
/// resident memory per connection: 512 bytes hold any client frame but a
/// long chat message (those take a few reads). Measured with
/// `waypost-bench connections` (BENCHMARKS.md).
const READ_BUFFER: usize = 512;
const WRITE_BUFFER: usize = 4 * 1024;

/// Why a connection was refused before its loop started.
enum Refusal {
    Unauthorized(String),
    Full(Full),
}

/// The outcome of the handshake checks, boxed so the upgrade callback that
/// carries it while the HTTP upgrade completes stays small.
type Verdict = Box<Result<(Claims, ConnectionPermit), Refusal>>;

/// `GET /v1/ws`
pub async fn upgrade(State(state): State<AppState>, parts: Parts) -> Response {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let mut parts = parts;
    let ws =
        match <WebSocketUpgrade as axum::extract::FromRequestParts<AppState>>::from_request_parts(
            &mut parts, &state,
        )
        .await
        {
            Ok(ws) => ws,
            Err(rejection) => return rejection.into_response(),
        };
    let verdict: Verdict = Box::new(match token_from_parts(&parts) {
        None => Err(Refusal::Unauthorized("missing token".into())),
        Some(t) => match state.keys.verify(&t) {
            Err(e) => Err(Refusal::Unauthorized(e.to_string())),
            Ok(claims) => match state.connection_slot(&claims.sub) {
                Ok(permit) => Ok((claims, permit)),
                Err(full) => Err(Refusal::Full(full)),
            },
        },
    });
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(state.limits.max_frame_bytes)
        .max_frame_size(state.limits.max_frame_bytes);
    ws.on_upgrade(move |socket| connected(socket, state, verdict))
}

/// The task of an upgraded socket: the connection, or its refusal. A plain
/// function returning the future (no `async fn` wrapper) so the arguments
/// are stored once in the task, not twice (rust-lang/rust#62958).
#[allow(clippy::boxed_local)] // boxed on purpose: see `Verdict`
fn connected(
    socket: WebSocket,
    state: AppState,
    verdict: Verdict,
) -> Either<Pin<Box<dyn Future<Output = ()> + Send>>, TrackedFuture<impl Future<Output = ()> + Send>>
{
    match *verdict {
        Ok((claims, permit)) => {
            let tasks = state.tasks.clone();
            Either::Right(tasks.track_future(run(socket, state, claims, permit)))
        }
        Err(refusal) => Either::Left(Box::pin(async move {
            refuse(socket, refusal).await;
        })),
    }
}

async fn refuse(mut socket: WebSocket, refusal: Refusal) {
    let (code, err, message) = match refusal {
        Refusal::Unauthorized(m) => (close_code::UNAUTHORIZED, "unauthorized", m),
        Refusal::Full(Full::User(max)) => (
            close_code::RATE_LIMITED,
            "too_many_connections",
            format!("at most {max} connections per user"),
        ),
        // Another process (or this one, later) can take the client: 4102
        // tells it to come back with backoff and jitter.
        Refusal::Full(Full::Process(max)) => (
            close_code::OVERLOADED,
            "overloaded",
            format!("this server holds its maximum of {max} connections; retry later"),
        ),
    };
    let frame = ServerFrame::error(err, message, None).to_json();
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = socket.send(Message::Text(frame.into())).await;
        let _ = socket.send(close_message(code, err)).await;
    })
    .await;
}

/// Reason sent with a close the hub asked for.
fn kill_reason(code: u16) -> &'static str {
    match code {
        close_code::TOO_SLOW => "too slow to read",
        close_code::SHUTTING_DOWN => "server shutting down",
        _ => "engine unavailable, reconnect later",
    }
}

fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

/// How many slots one ticker round is spread over: each connection is
/// ticked once per round, an eighth of them at a time.
const TICK_SLOTS: u64 = 8;

/// How often each connection is ticked: often enough for both its pings and
/// its presence heartbeats.
fn tick_round(limits: &crate::config::Limits) -> Duration {
    heartbeat_every(limits)
        .min(limits.ws_ping_interval)
        .max(Duration::from_millis(TICK_SLOTS))
}

/// How often a connection in chat rooms refreshes its presence.
fn heartbeat_every(limits: &crate::config::Limits) -> Duration {
    (limits.presence_ttl / 3).max(Duration::from_millis(100))
}

/// Starts the process-wide ticker on the first connection.
fn start_ticker(state: &AppState) {
    state.ws_ticker.call_once(|| {
        state.tasks.spawn(ticker(state.clone()));
    });
}

/// One task for the whole process drives pings, liveness checks and
/// presence heartbeats of every WebSocket (one timer instead of two per
/// connection), and on shutdown asks every connection to close with 4100.
async fn ticker(state: AppState) {
    let round = tick_round(&state.limits);
    let mut every = tokio::time::interval(round / TICK_SLOTS as u32);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = every.tick() => {
                state.hub.tick_slice(slot, TICK_SLOTS);
                slot = (slot + 1) % TICK_SLOTS;
            }
        }
    }
    let n = state.hub.kill_all(close_code::SHUTTING_DOWN);
    tracing::debug!(
        connections = n,
        "asked WebSocket connections to close: shutdown"
    );
}

/// State of one live connection.
struct Conn {
    state: AppState,
    claims: Claims,
    handle: ConnHandle,
    subscriptions: HashSet<String>,
    bucket: TokenBucket,
    rate_violations: u32,
    /// Subscribed chat rooms: the highest seq delivered on this connection,
    /// so live messages go out in order and once (see `deliver`).
    rooms: HashMap<String, SeqCursor>,
    /// Last `typing` published per room, for its rate limit.
    typing_at: HashMap<String, Instant>,
    /// This connection in presence entries: `{node}:{conn}`.
    presence_key: String,
    /// `user:{sub}`: the user's own messages from any device.
    user_channel: String,
    /// Last frame of any kind from the client (pongs included).
    last_seen: Instant,
    last_ping: Instant,
    last_heartbeat: Instant,
    gauge: IntGauge,
    _permit: Option<ConnectionPermit>,
}

/// What the reader asks the loop to do next.
enum Next {
    Continue,
    Close(u16, &'static str),
}

/// A connection: set up synchronously, then one `async move` block that
/// owns the socket, the state and the mailbox and uses them in place.
fn run(
    mut socket: WebSocket,
    state: AppState,
    claims: Claims,
    permit: ConnectionPermit,
) -> impl Future<Output = ()> + Send {
    let conn_id = state.hub.next_conn_id();
    let (handle, rx) = connection(conn_id, state.limits.ws_queue_frames);
    start_ticker(&state);
    state.hub.register(&handle);
    // Registered first, then checked: either the ticker's `kill_all` sees
    // this connection or this check sees the shutdown.
    if state.shutdown.is_cancelled() {
        handle.kill(close_code::SHUTTING_DOWN);
    }
    let gauge = state.metrics.connections.with_label_values(&["ws"]);
    gauge.inc();
    tracing::debug!(conn_id, sub = %claims.sub, "websocket connected");
    let rate = state.limits.ws_messages_per_s;
    let now = Instant::now();
    let mut conn = Conn {
        bucket: TokenBucket::new(rate, rate.saturating_mul(2), now),
        presence_key: format!("{}:{conn_id}", state.node_id),
        state,
        claims,
        handle,
        subscriptions: HashSet::new(),
        rate_violations: 0,
        rooms: HashMap::new(),
        typing_at: HashMap::new(),
        user_channel: String::new(),
        last_seen: now,
        last_ping: now,
        last_heartbeat: now,
        gauge,
        _permit: Some(permit),
    };
    async move {
        conn.join_user_channel().await;
        let close = conn.serve(&mut socket, &rx).await;
        conn.finish(&mut socket, close).await;
    }
}

/// Runs a write (frames or a ping) unless the connection is killed first: a
/// client that stops reading blocks the write for good, and a kill (queue
/// full 4101, shutdown 4100) must still end it. `Err` carries the close to
/// send (`None`: the socket already failed).
async fn unless_killed<E>(
    rx: &Receiver,
    write: impl Future<Output = Result<(), E>>,
) -> Result<(), Option<(u16, &'static str)>> {
    tokio::select! {
        biased;
        code = rx.killed() => Err(Some((code, kill_reason(code)))),
        written = write => written.map_err(|_| None),
    }
}

fn is_capacity_error(e: &axum::Error) -> bool {
    e.to_string().to_ascii_lowercase().contains("too long")
        || e.to_string().to_ascii_lowercase().contains("capacity")
}

/// The connection's life: joining, the event loop, leaving.
impl Conn {
    /// Only chat participants listen on their user channel (a Redis
    /// subscription per user per process): drivers and services skip it.
    async fn join_user_channel(&mut self) {
        let chat = self
            .claims
            .channels
            .as_ref()
            .is_some_and(|list| list.iter().any(|c| c.starts_with("chat:")));
        if !chat {
            return;
        }
        self.user_channel = chat_ops::user_channel(&self.claims.sub);
        self.state.hub.add(&self.user_channel, self.handle.clone());
        if let Err(e) = self
            .state
            .engine
            .sync_subscription(&self.user_channel)
            .await
        {
            // Only this user's cross-device copies are affected; rooms work.
            tracing::warn!(error = %e, "user channel subscribe failed");
        }
    }

    /// Selects over the mailbox (kill, frames, ticks) and the socket until
    /// the connection ends; returns the close to send, if any.
    async fn serve(
        &mut self,
        socket: &mut WebSocket,
        rx: &Receiver,
    ) -> Option<(u16, &'static str)> {
        let conn_id = self.handle.id;
        loop {
            let event = tokio::select! {
                biased;
                event = rx.next() => event,
                incoming = socket.recv() => {
                    match incoming {
                        None => return None,
                        Some(Err(e)) => {
                            tracing::debug!(conn_id, error = %e, "websocket read error");
                            if is_capacity_error(&e) {
                                return Some((close_code::BAD_FRAME, "frame too large"));
                            }
                            return None;
                        }
                        Some(Ok(msg)) => {
                            self.last_seen = Instant::now();
                            // Boxed: the handler's future is large and only
                            // lives while a client frame is handled; inline
                            // it would be part of every idle connection.
                            match Box::pin(self.on_message(socket, msg)).await {
                                Ok(Next::Continue) => continue,
                                Ok(Next::Close(code, reason)) => return Some((code, reason)),
                                Err(()) => return None,
                            }
                        }
                    }
                }
            };
            let written = match event {
                Event::Killed(code) => return Some((code, kill_reason(code))),
                Event::Frame(first) => unless_killed(rx, self.deliver(socket, first, rx)).await,
                Event::Tick => unless_killed(rx, self.on_tick(socket)).await,
            };
            if let Err(close) = written {
                return close;
            }
        }
    }

    /// Pings (dropping a client silent for two ping intervals) and presence
    /// heartbeats, when due.
    async fn on_tick(&mut self, socket: &mut WebSocket) -> Result<(), ()> {
        let limits = &self.state.limits;
        let now = Instant::now();
        // Ticks come once per round; half a round of slack keeps a due
        // action from slipping to the next round.
        let slack = tick_round(limits) / 2;
        let ping_every = limits.ws_ping_interval;
        if now.duration_since(self.last_ping) + slack >= ping_every {
            if now.duration_since(self.last_seen) > ping_every * 2 {
                tracing::debug!(
                    conn_id = self.handle.id,
                    "no pong within two ping intervals: dropping"
                );
                return Err(());
            }
            self.last_ping = now;
            socket
                .send(Message::Ping(Default::default()))
                .await
                .map_err(|_| ())?;
        }
        if now.duration_since(self.last_heartbeat) + slack >= heartbeat_every(limits) {
            self.last_heartbeat = now;
            if !self.rooms.is_empty() {
                Box::pin(self.presence_heartbeat()).await;
            }
        }
        Ok(())
    }

    /// Leaves every channel, unregisters and sends the close frame.
    async fn finish(&mut self, socket: &mut WebSocket, close: Option<(u16, &'static str)>) {
        let conn_id = self.handle.id;
        self.state.hub.unregister(conn_id);
        for channel in std::mem::take(&mut self.subscriptions) {
            self.leave(&channel).await;
        }
        if !self.user_channel.is_empty() && self.state.hub.remove(&self.user_channel, conn_id) {
            if let Err(e) = self
                .state
                .engine
                .sync_subscription(&self.user_channel)
                .await
            {
                tracing::debug!(error = %e, "user channel unsubscribe failed");
            }
        }
        if let Some((code, reason)) = close {
            let _ =
                tokio::time::timeout(CLOSE_TIMEOUT, socket.send(close_message(code, reason))).await;
        }
        self.gauge.dec();
        self._permit = None;
        tracing::debug!(conn_id, ?close, "websocket closed");
    }
}

impl Conn {
    async fn reply(&self, socket: &mut WebSocket, frame: &ServerFrame) -> Result<(), ()> {
        socket
            .send(Message::Text(frame.to_json().into()))
            .await
            .map_err(|_| ())
    }

    async fn error(
        &self,
        socket: &mut WebSocket,
        code: &str,
        message: impl Into<String>,
        reference: Option<String>,
    ) -> Result<(), ()> {
        self.reply(socket, &ServerFrame::error(code, message, reference))
            .await
    }

    async fn on_message(&mut self, socket: &mut WebSocket, msg: Message) -> Result<Next, ()> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.error(socket, "bad_frame", "binary frames are not supported", None)
                    .await?;
                return Ok(Next::Close(close_code::BAD_FRAME, "binary frame"));
            }
            Message::Close(_) => return Err(()),
            Message::Ping(_) | Message::Pong(_) => return Ok(Next::Continue),
        };
        if self.bucket.take(Instant::now()).is_err() {
            self.rate_violations += 1;
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["ws_rate"])
                .inc();
            if self.rate_violations >= MAX_RATE_VIOLATIONS {
                return Ok(Next::Close(
                    close_code::RATE_LIMITED,
                    "message rate exceeded",
                ));
            }
            self.error(
                socket,
                "rate_limited",
                format!(
                    "more than {} messages per second; message dropped",
                    self.state.limits.ws_messages_per_s
                ),
                None,
            )
            .await?;
            return Ok(Next::Continue);
        }
        self.rate_violations = 0;
        let value: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => {
                self.error(socket, "bad_frame", "frames must be JSON objects", None)
                    .await?;
                return Ok(Next::Close(close_code::BAD_FRAME, "invalid JSON"));
            }
        };
        let frame: ClientFrame = match serde_json::from_value(value) {
            Ok(f) => f,
            Err(e) => {
                self.error(socket, "bad_frame", e.to_string(), None).await?;
                return Ok(Next::Continue);
            }
        };
        match frame {
            ClientFrame::Subscribe { channel, after } => {
                self.subscribe(socket, channel, after).await?
            }
            ClientFrame::Unsubscribe { channel } => {
                if self.subscriptions.remove(&channel) {
                    self.leave(&channel).await;
                }
                self.reply(socket, &ServerFrame::Unsubscribed { channel })
                    .await?;
            }
            ClientFrame::Ping { id } => self.reply(socket, &ServerFrame::Pong { id }).await?,
            ClientFrame::Send {
                room,
                client_id,
                body,
            } => self.send_message(socket, room, client_id, body).await?,
            ClientFrame::Sync {
                room,
                after_seq,
                limit,
            } => self.sync(socket, room, after_seq, limit).await?,
            ClientFrame::Typing { room } => self.typing(socket, room).await?,
        }
        Ok(Next::Continue)
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        name: String,
        after: Option<u64>,
    ) -> Result<(), ()> {
        let channel = match Channel::parse(&name) {
            Ok(c) => c,
            Err(e) => {
                return self
                    .error(socket, "bad_channel", e.to_string(), Some(name))
                    .await
            }
        };
        if !may_subscribe(&self.claims, &channel) {
            return self
                .error(
                    socket,
                    "forbidden",
                    format!("token does not grant {name}"),
                    Some(name),
                )
                .await;
        }
        if !self.subscriptions.contains(&name)
            && self.subscriptions.len() >= self.state.limits.max_channels_per_connection
        {
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["channels"])
                .inc();
            return self
                .error(
                    socket,
                    "too_many_channels",
                    format!(
                        "at most {} channels per connection",
                        self.state.limits.max_channels_per_connection
                    ),
                    Some(name),
                )
                .await;
        }
        self.state.hub.add(&name, self.handle.clone());
        self.subscriptions.insert(name.clone());
        if let Err(e) = self.state.engine.sync_subscription(&name).await {
            tracing::warn!(error = %e, channel = %name, "subscribe failed");
            self.state.metrics.engine_errors.inc();
            self.subscriptions.remove(&name);
            self.leave(&name).await;
            // Told, then closed with 4102: the client reconnects with
            // backoff and subscribes again (nothing else would retry it).
            self.handle.kill(close_code::OVERLOADED);
            return self
                .error(
                    socket,
                    "engine_unavailable",
                    "subscription failed, retry later",
                    Some(name),
                )
                .await;
        }
        if channel.kind == ChannelKind::Chat {
            return self.subscribe_chat(socket, name, channel.id, after).await;
        }
        let latest = match self.state.engine.latest(&channel.id, now_ms()).await {
            Ok(l) => l,
            Err(e) => {
                tracing::debug!(error = %e, "latest position unavailable at subscribe");
                None
            }
        };
        let high_seq = latest.as_ref().map(|l| l.fix.seq);
        self.reply(
            socket,
            &ServerFrame::Subscribed {
                channel: name.clone(),
                recovered: true,
                high_seq,
            },
        )
        .await?;
        // Replay: the current position, unless the client already has it.
        if let Some(l) = latest {
            if after.is_none_or(|a| l.fix.seq > a) {
                let frame = ServerFrame::Location {
                    channel: name,
                    driver_id: channel.id,
                    fix: l.fix,
                };
                self.reply(socket, &frame).await?;
            }
        }
        Ok(())
    }

    /// Removes this connection from `channel` in the hub and lets the engine
    /// drop its subscription when it was the last local one. Leaving a chat
    /// room also ends this device's presence there.
    async fn leave(&mut self, channel: &str) {
        if let Some(room) = channel.strip_prefix("chat:") {
            if self.rooms.remove(room).is_some() {
                match self
                    .state
                    .stores
                    .presence
                    .leave(room, &self.claims.sub, &self.presence_key, now_ms())
                    .await
                {
                    Ok(changes) => chat_ops::publish_presence(&self.state, room, changes).await,
                    Err(e) => {
                        self.state.metrics.engine_errors.inc();
                        tracing::debug!(error = %e, room, "presence leave failed");
                    }
                }
            }
        }
        if self.state.hub.remove(channel, self.handle.id) {
            if let Err(e) = self.state.engine.sync_subscription(channel).await {
                tracing::debug!(error = %e, channel, "unsubscribe failed");
            }
        }
    }
}

fn count_deliveries(metrics: &crate::metrics::Metrics, (kind, n): (&'static str, u64)) {
    if n > 0 {
        metrics.deliveries.with_label_values(&[kind]).inc_by(n);
    }
}

/// The fields of a chat-channel frame the writer needs to order, dedupe or
/// filter it.
#[derive(serde::Deserialize)]
struct ChatPeek<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    room: Option<&'a str>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    user: Option<&'a str>,
}

/// Chat over the WebSocket: send, sync, typing, subscribe with replay, and
/// the writer that keeps each room's live messages in seq order.
impl Conn {
    /// Writes `first` and whatever else is queued (up to a batch) with one
    /// flush. Chat frames pass [`Conn::chat_frames`] first.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        first: Outbound,
        rx: &Receiver,
    ) -> Result<(), axum::Error> {
        // Deliveries are counted per run of one kind (one label lookup per
        // batch instead of one per frame).
        let mut counted: (&'static str, u64) = (first.kind, 0);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            let metrics = &self.state.metrics;
            metrics
                .delivery_latency
                .observe(out.queued_at.elapsed().as_secs_f64());
            if out.kind != counted.0 {
                count_deliveries(metrics, counted);
                counted = (out.kind, 0);
            }
            counted.1 += 1;
            if matches!(out.kind, "chat" | "user") {
                for text in Box::pin(self.chat_frames(out.text.clone())).await {
                    socket.feed(Message::Text(text)).await?;
                    n += 1;
                }
            } else {
                socket.feed(Message::Text(out.text.clone())).await?;
                n += 1;
            }
            if n < WRITE_BATCH {
                next = rx.try_frame();
            }
        }
        count_deliveries(&self.state.metrics, counted);
        socket.flush().await
    }

    /// What to write for one live frame of a `chat:` or `user:` channel:
    /// nothing for a message already delivered (replayed, or the user-channel
    /// copy of a room message) or for the user's own typing; the missing
    /// messages from history first when it skips ahead (publishes from
    /// several processes can arrive out of order, but a seq exists only
    /// once everything below it is stored).
    async fn chat_frames(&mut self, text: Utf8Bytes) -> Vec<Utf8Bytes> {
        let Ok(peek) = serde_json::from_str::<ChatPeek>(&text) else {
            return vec![text];
        };
        match (peek.kind, peek.room, peek.seq) {
            ("typing", _, _) if peek.user == Some(self.claims.sub.as_str()) => Vec::new(),
            ("message", Some(room), Some(seq)) => {
                let Some(cursor) = self.rooms.get(room).copied() else {
                    // Not subscribed: the user-channel copy of this user's
                    // own message, delivered as is.
                    return vec![text];
                };
                let room = room.to_owned();
                let mut frames = Vec::new();
                let mut delivered = cursor;
                match cursor.step(seq) {
                    SeqStep::Duplicate => return frames,
                    SeqStep::Next => {}
                    SeqStep::Gap { from, to } => {
                        let limit = (to - from + 1) as usize;
                        tracing::debug!(
                            room,
                            from,
                            to,
                            "live message ahead: filling the gap from history"
                        );
                        match self.state.stores.chat.after(&room, from - 1, limit).await {
                            Ok(h) => {
                                for m in h.messages.into_iter().filter(|m| m.seq <= to) {
                                    delivered.advance(m.seq);
                                    frames.push(ServerFrame::Message(m).to_json().into());
                                }
                            }
                            Err(e) => {
                                // Delivering past the gap would skip those
                                // messages: reconnect (4102) instead, the
                                // client resubscribes with `after`.
                                self.state.metrics.engine_errors.inc();
                                tracing::warn!(error = %e, room, "chat gap fill failed: closing");
                                self.handle.kill(close_code::OVERLOADED);
                                return Vec::new();
                            }
                        }
                    }
                }
                delivered.advance(seq);
                self.rooms.insert(room, delivered);
                frames.push(text);
                frames
            }
            _ => vec![text],
        }
    }

    /// Answers an operation's error with an `error` frame.
    async fn op_error(
        &self,
        socket: &mut WebSocket,
        e: &crate::error::AppError,
        reference: String,
    ) -> Result<(), ()> {
        let (code, message) = chat_ops::frame_error(e);
        self.error(socket, code, message, Some(reference)).await
    }

    async fn send_message(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        client_id: String,
        body: String,
    ) -> Result<(), ()> {
        if let Err(e) = chat_ops::authorize_room(&self.claims, &room) {
            return self.op_error(socket, &e, client_id).await;
        }
        let sub = self.claims.sub.clone();
        match chat_ops::post_message(&self.state, &room, &sub, client_id.clone(), body).await {
            Ok(appended) => {
                let m = appended.message();
                let ack = ServerFrame::Sent {
                    client_id: m.client_id.clone(),
                    room: m.room.clone(),
                    seq: m.seq,
                    id: m.id.clone(),
                };
                self.reply(socket, &ack).await
            }
            Err(e) => self.op_error(socket, &e, client_id).await,
        }
    }

    async fn sync(
        &mut self,
        socket: &mut WebSocket,
        room: String,
        after_seq: u64,
        limit: Option<u32>,
    ) -> Result<(), ()> {
        if let Err(e) = chat_ops::authorize_room(&self.claims, &room) {
            return self.op_error(socket, &e, room).await;
        }
        let limit = limit.map(|l| l as usize);
        match chat_ops::history(&self.state, &room, after_seq, limit).await {
            Ok(h) => {
                let more = h.more();
                let frame = ServerFrame::Synced {
                    room,
                    messages: h.messages,
                    more,
                };
                self.reply(socket, &frame).await
            }
            Err(e) => self.op_error(socket, &e, room).await,
        }
    }

    /// Publishes `typing` unless this connection did so for the room within
    /// the typing interval (then it is dropped silently: it is ephemeral).
    async fn typing(&mut self, socket: &mut WebSocket, room: String) -> Result<(), ()> {
        if let Err(e) = chat_ops::authorize_room(&self.claims, &room) {
            return self.op_error(socket, &e, room).await;
        }
        let now = Instant::now();
        let interval = self.state.limits.typing_interval;
        if self
            .typing_at
            .get(&room)
            .is_some_and(|t| now.duration_since(*t) < interval)
        {
            self.state
                .metrics
                .limit_hits
                .with_label_values(&["typing"])
                .inc();
            return Ok(());
        }
        if self.typing_at.len() >= self.state.limits.max_channels_per_connection {
            self.typing_at
                .retain(|_, t| now.duration_since(*t) < interval);
        }
        if self.typing_at.len() < self.state.limits.max_channels_per_connection {
            self.typing_at.insert(room.clone(), now);
        }
        let sub = self.claims.sub.clone();
        if let Err(e) = chat_ops::publish_typing(&self.state, &room, &sub).await {
            return self.op_error(socket, &e, room).await;
        }
        Ok(())
    }

    /// The chat half of `subscribe` (the hub subscription is in place, so
    /// live messages are queued while history is read): `subscribed` with
    /// `recovered` and `high_seq`, the replay when complete, this device's
    /// presence, and who is online.
    async fn subscribe_chat(
        &mut self,
        socket: &mut WebSocket,
        name: String,
        room: String,
        after: Option<u64>,
    ) -> Result<(), ()> {
        let limit = if after.is_some() {
            self.state.limits.chat_replay_limit
        } else {
            0
        };
        let history = match self
            .state
            .stores
            .chat
            .after(&room, after.unwrap_or(0), limit)
            .await
        {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, room, "chat history unavailable at subscribe");
                self.state.metrics.engine_errors.inc();
                self.subscriptions.remove(&name);
                self.leave(&name).await;
                self.handle.kill(close_code::OVERLOADED);
                return self
                    .error(
                        socket,
                        "engine_unavailable",
                        "subscription failed, retry later",
                        Some(name),
                    )
                    .await;
            }
        };
        let recovered = after.is_none_or(|a| history.complete_after(a));
        // Live messages up to high_seq were either replayed now or are the
        // client's to fetch with `sync` (not recovered); later ones follow.
        self.rooms
            .insert(room.clone(), SeqCursor::new(history.high_seq));
        self.reply(
            socket,
            &ServerFrame::Subscribed {
                channel: name,
                recovered,
                high_seq: Some(history.high_seq),
            },
        )
        .await?;
        if after.is_some() && recovered {
            for m in history.messages {
                self.reply(socket, &ServerFrame::Message(m)).await?;
            }
        }
        let presence = &self.state.stores.presence;
        let now = now_ms();
        match presence
            .join(&room, &self.claims.sub, &self.presence_key, now)
            .await
        {
            Ok(changes) => chat_ops::publish_presence(&self.state, &room, changes).await,
            Err(e) => {
                self.state.metrics.engine_errors.inc();
                tracing::debug!(error = %e, room, "presence join failed");
            }
        }
        let online = presence
            .online(&room, now, self.state.limits.max_presence_per_room)
            .await
            .unwrap_or_default();
        for user in online {
            let frame = ServerFrame::Presence {
                room: room.clone(),
                user,
                online: true,
            };
            self.reply(socket, &frame).await?;
        }
        Ok(())
    }

    /// Refreshes this device's presence in every subscribed room; reports
    /// users whose devices expired meanwhile as offline.
    async fn presence_heartbeat(&self) {
        let now = now_ms();
        for room in self.rooms.keys() {
            match self
                .state
                .stores
                .presence
                .join(room, &self.claims.sub, &self.presence_key, now)
                .await
            {
                Ok(changes) => chat_ops::publish_presence(&self.state, room, changes).await,
                Err(e) => {
                    self.state.metrics.engine_errors.inc();
                    tracing::debug!(error = %e, room, "presence heartbeat failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use waypost_protocol::Role;

    use super::*;
    use crate::auth::AuthKeys;
    use crate::config::Limits;
    use crate::engine::chat::NewMessage;
    use crate::engine::memory::MemoryEngine;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    fn state() -> AppState {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let engine = Arc::new(MemoryEngine::new(Arc::clone(&hub), Limits::default()));
        AppState::new(engine, hub, AuthKeys::new(b"k"), Limits::default(), metrics)
    }

    fn conn(state: &AppState, sub: &str) -> Conn {
        let (handle, _rx) = connection(1, 8);
        Conn {
            state: state.clone(),
            claims: Claims {
                sub: sub.into(),
                role: Role::Buyer,
                exp: u64::MAX,
                channels: None,
            },
            handle,
            subscriptions: HashSet::new(),
            bucket: TokenBucket::new(10, 10, Instant::now()),
            rate_violations: 0,
            rooms: HashMap::new(),
            typing_at: HashMap::new(),
            presence_key: "n:1".into(),
            user_channel: String::new(),
            last_seen: Instant::now(),
            last_ping: Instant::now(),
            last_heartbeat: Instant::now(),
            gauge: IntGauge::new("g", "g").unwrap(),
            _permit: None,
        }
    }

    async fn post(state: &AppState, room: &str, cid: &str) -> Utf8Bytes {
        let m = state
            .stores
            .chat
            .append(NewMessage {
                room: room.into(),
                from: "u".into(),
                client_id: cid.into(),
                body: "b".into(),
                ts: 0,
            })
            .await
            .unwrap();
        ServerFrame::Message(m.message().clone()).to_json().into()
    }

    fn seqs(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// Live copies arriving out of order (two processes) or twice (room
    /// and user channel) come out gap-free, in order, once.
    #[tokio::test]
    async fn writer_orders_fills_gaps_and_dedupes() {
        let state = state();
        let mut c = conn(&state, "me");
        let f1 = post(&state, "r", "a").await;
        let f2 = post(&state, "r", "b").await;
        let f3 = post(&state, "r", "c").await;
        let f4 = post(&state, "r", "d").await;
        c.rooms.insert("r".into(), SeqCursor::new(1));
        assert!(c.chat_frames(f1).await.is_empty(), "at or below the cursor");
        assert_eq!(seqs(&c.chat_frames(f3).await), vec![2, 3], "gap filled");
        assert!(
            c.chat_frames(f2.clone()).await.is_empty(),
            "late copy dropped"
        );
        assert!(c.chat_frames(f2).await.is_empty());
        assert_eq!(seqs(&c.chat_frames(f4).await), vec![4]);
        // Not subscribed (the user-channel copy): passed through as is.
        let other = post(&state, "elsewhere", "e").await;
        assert_eq!(c.chat_frames(other.clone()).await, vec![other]);
    }

    #[tokio::test]
    async fn own_typing_is_not_echoed() {
        let state = state();
        let mut c = conn(&state, "me");
        let mine = ServerFrame::Typing {
            room: "r".into(),
            user: "me".into(),
        };
        let theirs = ServerFrame::Typing {
            room: "r".into(),
            user: "you".into(),
        };
        assert!(c.chat_frames(mine.to_json().into()).await.is_empty());
        assert_eq!(c.chat_frames(theirs.to_json().into()).await.len(), 1);
    }
}
