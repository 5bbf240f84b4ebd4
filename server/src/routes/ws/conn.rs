//! One live WebSocket connection: its task (mailbox and socket in one
//! loop), the batched writer, client frames, subscriptions, and the
//! process-wide ticker that drives every connection's pings and presence
//! heartbeats.

use std::future::Future;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures_util::SinkExt;
use waypost_protocol::{close_code, Channel, ChannelKind, Claims, ServerFrame};

use super::encoding::Encoding;
use super::orders::OrderChannels;
use super::rooms::Rooms;
use crate::admission::{ConnectionPermit, TokenBucket};
use crate::config::Limits;
use crate::expiry::Expiry;
use crate::frame::About;
use crate::hub::{connection, ConnHandle, Event, Outbound, Receiver, TICK_SLOTS};
use crate::keys::Verified;
use crate::revocation::Listed;
use crate::routes::subscription::{Open, Subscription, Subscriptions};
use crate::state::AppState;

/// How long a close handshake may take.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Frames written per flush when the queue has a backlog.
const WRITE_BATCH: usize = 64;
/// Consecutive rate-limit violations after which the connection is closed.
pub(super) const MAX_RATE_VIOLATIONS: u32 = 100;
/// The ticker's shortest step. One round walks all [`TICK_SLOTS`] slots in
/// the most steps of at least this length (1,024 steps of ~20 ms at the
/// default intervals: each connection's pings, liveness checks and presence
/// heartbeats come at its own phase, 1/1024 of the connections at a time).
const MIN_TICK_STEP: Duration = Duration::from_millis(5);

/// How often each connection is ticked: often enough for both its pings and
/// its presence heartbeats.
fn tick_round(limits: &Limits) -> Duration {
    heartbeat_every(limits)
        .min(limits.ws_ping_interval)
        .max(MIN_TICK_STEP)
}

/// Steps per round: a power of two (so they split the slots evenly), at
/// most [`TICK_SLOTS`], each at least [`MIN_TICK_STEP`] long.
fn tick_steps(round: Duration) -> usize {
    let fit = (round.as_nanos() / MIN_TICK_STEP.as_nanos()).clamp(1, TICK_SLOTS as u128) as usize;
    1 << fit.ilog2()
}

/// How often a connection in chat rooms refreshes its presence.
fn heartbeat_every(limits: &Limits) -> Duration {
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
    let steps = tick_steps(round);
    let per_step = TICK_SLOTS / steps;
    let mut every = tokio::time::interval(round / steps as u32);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut slot = 0;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => break,
            _ = every.tick() => {
                for s in slot..slot + per_step {
                    state.hub.tick_slot(s);
                }
                slot = (slot + per_step) % TICK_SLOTS;
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
pub(super) struct Conn {
    pub(super) state: AppState,
    pub(super) claims: Claims,
    pub(super) handle: ConnHandle,
    pub(super) subscriptions: Subscriptions,
    /// `user:{sub}`: the user's own messages from any device (chat
    /// participants only; boxed: most connections have none).
    pub(super) user_channel: Option<Box<Subscription>>,
    pub(super) rooms: Rooms,
    pub(super) orders: OrderChannels,
    pub(super) bucket: TokenBucket,
    pub(super) rate_violations: u32,
    /// Last frame of any kind from the client (pongs included).
    pub(super) last_seen: Instant,
    pub(super) last_ping: Instant,
    pub(super) last_heartbeat: Instant,
    pub(super) open: Option<Open<1>>,
    /// The token's expiry in the process-wide wheel.
    pub(super) expiry: Expiry,
    /// This connection in the user registry (revocations, disconnects).
    pub(super) listed: Listed,
    /// JSON, MessagePack or lean MessagePack, both directions.
    pub(super) encoding: Encoding,
}

/// What the reader asks the loop to do next.
pub(super) enum Next {
    Continue,
    Close(u16, &'static str),
}

/// A connection: set up synchronously, then one `async move` block that
/// owns the socket, the state and the mailbox and uses them in place.
pub(super) fn run(
    mut socket: WebSocket,
    state: AppState,
    token: Verified,
    permit: ConnectionPermit,
    encoding: Encoding,
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
    let open = Open::new(&state, "ws", [permit]);
    let expiry = state
        .expiry
        .watch(&handle, token.claims.exp, true, crate::now_s());
    let listed = state
        .user_conns
        .list(&token, &handle, crate::revocation::Transport::Ws);
    let claims = token.claims;
    tracing::debug!(conn_id, sub = %claims.sub, ?encoding, "websocket connected");
    let rate = state.limits.ws_messages_per_s;
    let now = Instant::now();
    let mut conn = Conn {
        bucket: TokenBucket::new(rate, rate.saturating_mul(2), now),
        rooms: Rooms::new(conn_id),
        orders: OrderChannels::default(),
        state,
        claims,
        handle,
        subscriptions: Subscriptions::default(),
        user_channel: None,
        rate_violations: 0,
        last_seen: now,
        last_ping: now,
        last_heartbeat: now,
        open: Some(open),
        expiry,
        listed,
        encoding,
    };
    // Joining and finishing are boxed: their futures (Redis calls, the
    // close handshake under a timeout) only live at the two ends of the
    // connection; inline they would size every idle connection's task.
    async move {
        Box::pin(conn.join_user_channel()).await;
        let close = conn.serve(&mut socket, &rx).await;
        Box::pin(conn.finish(&mut socket, close)).await;
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
        let chat = self.claims.channels.as_ref().is_some_and(|list| {
            list.iter()
                .filter_map(|c| Channel::from_name(c))
                .any(|c| c.kind == ChannelKind::Chat)
        });
        if !chat {
            return;
        }
        let channel = Channel::user(&self.claims.sub);
        let (sub, synced) = Subscription::join_keeping(&self.state, channel, &self.handle).await;
        if let Err(e) = synced {
            // Only this user's cross-device copies are affected; rooms work.
            tracing::warn!(error = %e, "user channel subscribe failed");
        }
        self.user_channel = Some(Box::new(sub));
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
                Box::pin(self.rooms.heartbeat(&self.state, &self.claims.sub)).await;
            }
        }
        Ok(())
    }

    /// Leaves every channel, unregisters and sends the close frame.
    async fn finish(&mut self, socket: &mut WebSocket, close: Option<(u16, &'static str)>) {
        let conn_id = self.handle.id;
        self.state.hub.unregister(conn_id);
        for sub in self.subscriptions.take_all() {
            self.leave(sub).await;
        }
        if let Some(sub) = self.user_channel.take() {
            sub.leave().await;
        }
        if let Some((code, reason)) = close {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                // The wheel closes an expired token's connection with 4001:
                // warn (when the kill dropped the queued warning) and say
                // why first.
                if code == close_code::UNAUTHORIZED {
                    if let Some(exp) = self.expiry.unwritten_warning() {
                        let warning = ServerFrame::TokenExpiring { exp };
                        let warning = self.encoding.message(warning.to_json().into());
                        let _ = socket.send(warning).await;
                    }
                    let frame = ServerFrame::error(
                        "token_expired",
                        "the token expired; reconnect with a new one or refresh in band",
                        None,
                    );
                    let _ = socket
                        .send(self.encoding.message(frame.to_json().into()))
                        .await;
                }
                socket.send(close_message(code, reason)).await
            })
            .await;
        }
        self.open = None;
        tracing::debug!(conn_id, ?close, "websocket closed");
    }

    /// Leaves one channel; leaving a chat room also ends this device's
    /// presence there.
    pub(super) async fn leave(&mut self, sub: Subscription) {
        let channel = sub.channel();
        if channel.kind == ChannelKind::Chat {
            let room = channel.id.clone();
            self.rooms.leave(&self.state, &self.claims.sub, &room).await;
        }
        if channel.kind == ChannelKind::Order {
            self.orders.leave(&channel.id);
        }
        sub.leave().await;
    }
}

/// The writer.
impl Conn {
    /// Writes `first` and whatever else is queued (up to a batch) with one
    /// flush. Chat frames pass [`Rooms::live`] first.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        first: Outbound,
        rx: &Receiver,
    ) -> Result<(), axum::Error> {
        // Deliveries are counted per run of one kind (one label lookup per
        // batch instead of one per frame).
        let mut counted = (first.kind(), 0u64);
        let mut next = Some(first);
        let mut n = 0;
        while let Some(out) = next.take() {
            let metrics = &self.state.metrics;
            metrics.observe_latency(out.meta.origin_us);
            if out.kind() != counted.0 {
                metrics.delivered(counted.0.name(), counted.1);
                counted = (out.kind(), 0);
            }
            counted.1 += 1;
            if matches!(out.kind(), ChannelKind::Chat | ChannelKind::User) {
                let live = Box::pin(self.rooms.live(&self.state, &self.claims.sub, &out)).await;
                let texts = live.unwrap_or_else(|e| {
                    // Delivering past the gap would skip those messages:
                    // reconnect (4102) instead, the client resubscribes
                    // with `after`.
                    tracing::warn!(error = %e, "chat gap fill failed: closing");
                    self.handle.kill(close_code::OVERLOADED);
                    Vec::new()
                });
                for text in texts {
                    socket.feed(self.outgoing(&out, text)).await?;
                    n += 1;
                }
            } else if out.kind() == ChannelKind::Order {
                let live = Box::pin(self.orders.live(&self.state, &out)).await;
                let texts = live.unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "order gap fill failed: closing");
                    self.handle.kill(close_code::OVERLOADED);
                    Vec::new()
                });
                for text in texts {
                    socket.feed(self.outgoing(&out, text)).await?;
                    n += 1;
                }
            } else {
                socket.feed(self.outgoing(&out, out.text.clone())).await?;
                n += 1;
                if let About::TokenExpiring { exp } = out.meta.about {
                    self.expiry.wrote_warning(exp);
                }
            }
            if n < WRITE_BATCH {
                next = rx.try_frame();
            }
        }
        self.state.metrics.delivered(counted.0.name(), counted.1);
        socket.flush().await
    }
}

impl Conn {
    /// The message for `text`, written for the delivery of `out` (its own
    /// text, or an entry a gap fill fetched). On a `waypost.v1.lean`
    /// connection `out`'s own location frame goes out lean: a delta against
    /// the previous location frame written on its channel (kept in the
    /// subscription), or full when there is none; and becomes the base of
    /// the next. Everything else as [`Encoding::shared`].
    pub(super) fn outgoing(&mut self, out: &Outbound, text: Utf8Bytes) -> Message {
        if self.encoding == Encoding::Lean && out.is_location() && out.is_own_text(&text) {
            if let Some(lean) = out.lean() {
                let sub = self.subscriptions.get_mut(&lean.channel);
                // A frame still queued after an unsubscribe has no
                // subscription (and no base): it goes out full.
                let bytes = match sub {
                    Some(sub) => {
                        let bytes = out.lean_for(sub.last_location.as_ref());
                        sub.last_location = Some(out.clone());
                        bytes
                    }
                    None => out.lean_for(None),
                };
                if let Some(bytes) = bytes {
                    return Message::Binary(bytes);
                }
            }
        }
        self.encoding.shared(out, text)
    }
}

/// Reason sent with a close the hub asked for.
pub(super) fn kill_reason(code: u16) -> &'static str {
    match code {
        close_code::TOO_SLOW => "too slow to read",
        close_code::SHUTTING_DOWN => "server shutting down",
        close_code::UNAUTHORIZED => "token expired",
        close_code::FORBIDDEN => "revoked",
        close_code::DISCONNECTED => "disconnected by an operator",
        _ => "engine unavailable, reconnect later",
    }
}

pub(super) fn close_message(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Default intervals: 1,024 steps of ~20 ms, one slot each; short test
    /// intervals: fewer, longer steps that still cover every slot per round.
    #[test]
    fn ticker_steps_are_fine_and_cover_every_slot() {
        let round = tick_round(&Limits::default());
        assert_eq!(round, Duration::from_secs(20));
        assert_eq!(tick_steps(round), TICK_SLOTS);
        for ms in [1, 5, 7, 100, 333, 5_119, 5_120, 60_000] {
            let round = Duration::from_millis(ms).max(MIN_TICK_STEP);
            let steps = tick_steps(round);
            assert!(
                steps.is_power_of_two() && steps <= TICK_SLOTS,
                "{ms} ms: {steps}"
            );
            assert_eq!(TICK_SLOTS % steps, 0);
            assert!(
                round / steps as u32 >= MIN_TICK_STEP,
                "{ms} ms: {steps} steps"
            );
        }
    }
}
