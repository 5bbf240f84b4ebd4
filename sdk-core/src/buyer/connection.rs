//! The connection manager: one WebSocket to `/v1/ws`, kept open for as long
//! as the app wants it, with explicit states the app can see.
//!
//! ```text
//!            ┌──────── network gone ───────┐
//!            ▼                             │
//!   Offline ──network back──▶ Connecting ──open──▶ Connected
//!                              ▲     │                 │
//!            timer / network back    │ failed          │ closed 4100–4199, transport
//!                              │     ▼                 │ error, heartbeat missed
//!                          BackingOff ◀────────────────┘
//!   Connected ──4000–4099──▶ Closed (4001: fetch a fresh token once, reconnect)
//! ```
//!
//! What the connection carries is not its business: a [`Session`] (the
//! buyer's tracking and chat state) is told when the connection opens (to
//! resubscribe and flush the outbox), gets every server frame, every app
//! command and a periodic tick, and answers with frames to send.
//!
//! Tokens: the token a connection runs on is renewed *in band*, without
//! reconnecting: ahead of its `exp` (the JWT's own claim, or the one the
//! server's `token_expiring` names) the manager asks the [`Tokens`] cache
//! for another one (the app's `TokenProvider`, asynchronously, while frames
//! keep flowing) and sends `refresh` on the same socket; `refreshed` moves
//! the connection onto it. A refresh the server refuses (`error`
//! `forbidden`/`unauthorized`) is reported to the session
//! ([`Session::refresh_refused`]) and not retried in band: the connection
//! ends with 4001 at `exp` and reconnects with a fresh token, as after any
//! 4001. A provider that has no token is asked again every
//! [`RENEW_RETRY`] until `exp`.
//!
//! Liveness: the manager sends an application `ping` every
//! `ping_interval` and counts *anything* received (pong, data, the server's
//! WebSocket pings) as a sign of life; nothing for two intervals means the
//! connection is half-open and it is dropped. Time comes from a
//! [`Clock`], randomness for the full-jitter backoff from a
//! [`RandomSource`], so tests run the whole state machine in simulated time.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{close_code, should_reconnect, ClientFrame, CloseDisposition, ServerFrame};

use super::transport::{TransportError, WsConnector, WsEvent, WsTransport};
use super::types::{CloseReason, ConnectionState};
use crate::backoff::{Backoff, BackoffPolicy, RandomSource, RetryDecision};
use crate::clock::Clock;
use crate::env::{Environment, NetworkType};
use crate::tokens::Tokens;

/// How long one frame write may take before the connection counts as dead.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the close handshake may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// After a renewal the provider could not serve, the next try.
pub const RENEW_RETRY: Duration = Duration::from_secs(2);
/// In-band renewals of one connection are at least this far apart.
const MIN_RENEW_GAP: Duration = Duration::from_secs(1);

/// Knobs of the manager (plain data).
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// `ws://host:port/v1/ws` or `wss://…`; the token is appended.
    pub ws_url: String,
    /// Application ping period; two silent periods drop the connection.
    pub ping_interval: Duration,
    /// Bound on opening a connection.
    pub connect_timeout: Duration,
    /// Full-jitter backoff between attempts.
    pub backoff: BackoffPolicy,
    /// Period of [`Session::tick`].
    pub tick: Duration,
}

/// What an app command asks of the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Nothing for the manager.
    Continue,
    /// The environment changed: re-read the network (gone → Offline, back →
    /// connect at once).
    EnvironmentChanged,
    /// Connect again now (from Closed or BackingOff; a live connection stays).
    Reconnect,
}

/// The traffic on top of the connection (see the module docs).
pub trait Session: Send {
    type Command: Send + 'static;
    fn state_changed(&mut self, state: &ConnectionState);
    /// A connection opened: queue subscribes and pending sends.
    fn opened(&mut self, out: &mut Vec<ClientFrame>);
    fn frame(&mut self, frame: ServerFrame, out: &mut Vec<ClientFrame>);
    /// An app command; `out` is discarded unless `connected`.
    fn command(
        &mut self,
        cmd: Self::Command,
        connected: bool,
        out: &mut Vec<ClientFrame>,
    ) -> Control;
    /// Periodic; `out` is discarded unless `connected`.
    fn tick(&mut self, connected: bool, out: &mut Vec<ClientFrame>);
    /// The connection is gone (anything in flight is unanswered).
    fn closed(&mut self);
    /// The server refused an in-band `refresh` (`code` `forbidden` for
    /// another user or role, `unauthorized` for a bad token): the
    /// connection keeps its old token until `exp`, then reconnects with a
    /// fresh one.
    fn refresh_refused(&mut self, code: String, message: String) {
        tracing::warn!(%code, %message, "in-band token refresh refused");
    }
}

/// The token a live connection runs on and its in-band renewal.
struct Renewal {
    /// The token the server holds for this connection.
    token: String,
    /// Its `exp`, Unix ms: the JWT claim, or what the server said.
    exp_ms: Option<i64>,
    /// Its `iat` (the JWT claim), else when it went on the socket (wall
    /// clock, ms): its lifetime is `exp_ms - since_ms`.
    since_ms: i64,
    /// When to renew next (monotonic ms); `None`: not scheduled.
    due: Option<u64>,
    /// A `refresh` sent, waiting for `refreshed` (or a refusal).
    sent: Option<String>,
    /// The server refused a refresh: no more tries on this connection.
    refused: bool,
    /// Renewals done on this connection.
    done: u32,
}

impl Renewal {
    fn new(token: String, clock: &dyn Clock) -> Self {
        let exp_ms = crate::tokens::jwt_exp_ms(&token);
        let since_ms = crate::tokens::jwt_iat_ms(&token).unwrap_or_else(|| clock.now_ms());
        let mut r = Self {
            token,
            exp_ms,
            since_ms,
            due: None,
            sent: None,
            refused: false,
            done: 0,
        };
        r.schedule(clock, Duration::ZERO);
        r
    }

    /// Renews at `exp - min(REFRESH_AHEAD, lifetime / 2)`, not before
    /// `gap` from now.
    fn schedule(&mut self, clock: &dyn Clock, gap: Duration) {
        let Some(exp) = self.exp_ms else {
            self.due = None;
            return;
        };
        let ahead = crate::tokens::renew_ahead_ms(exp, Some(self.since_ms));
        let now = clock.now_ms();
        if exp <= now {
            // Expired: the server closes with 4001 and the reconnect
            // fetches a fresh token.
            self.due = None;
            return;
        }
        let wait = (exp - ahead - now).max(gap.as_millis() as i64).max(0) as u64;
        self.due = Some(clock.monotonic_ms() + wait);
    }

    /// The server named the token's `exp` (`token_expiring`): renew by then
    /// even if the token's own claim could not be read.
    fn warned(&mut self, exp_s: u64, clock: &dyn Clock) {
        let exp = (exp_s as i64).saturating_mul(1000);
        if self.exp_ms.is_some_and(|e| e <= exp) {
            return; // what we knew already (or we are renewing past it)
        }
        self.exp_ms = Some(exp);
        if self.sent.is_none() && !self.refused {
            self.schedule(clock, Duration::ZERO);
        }
    }

    /// The provider gave `fresh`: send it.
    fn fetched(&mut self, fresh: Option<String>, clock: &dyn Clock) -> Option<ClientFrame> {
        match fresh {
            Some(token) => {
                self.sent = Some(token.clone());
                Some(ClientFrame::Refresh { token })
            }
            None => {
                // Try again soon; at `exp` the server closes with 4001 and
                // the reconnect asks the provider once more.
                self.due = Some(clock.monotonic_ms() + RENEW_RETRY.as_millis() as u64);
                None
            }
        }
    }

    /// `refreshed`: the connection now runs on the token sent.
    fn refreshed(&mut self, exp_s: u64, clock: &dyn Clock) -> bool {
        let Some(token) = self.sent.take() else {
            return false;
        };
        self.since_ms = crate::tokens::jwt_iat_ms(&token).unwrap_or_else(|| clock.now_ms());
        self.token = token;
        self.exp_ms = Some((exp_s as i64).saturating_mul(1000));
        self.done += 1;
        self.schedule(clock, MIN_RENEW_GAP);
        true
    }

    /// An `error` frame without a reference while a refresh is pending is
    /// its refusal; returns the refused token.
    fn refusal(&mut self, code: &str, clock: &dyn Clock) -> Option<String> {
        self.sent.as_ref()?;
        if code == "rate_limited" {
            // The refresh may have been dropped: send it again soon.
            self.sent = None;
            self.due = Some(clock.monotonic_ms() + RENEW_RETRY.as_millis() as u64);
            return None;
        }
        if !matches!(code, "forbidden" | "unauthorized" | "bad_frame") {
            return None;
        }
        let token = self.sent.take()?;
        self.refused = true;
        self.due = None;
        Some(token)
    }
}

/// What the manager needs from outside.
#[derive(Clone)]
pub struct Deps {
    pub connector: Arc<dyn WsConnector>,
    pub tokens: Arc<Tokens>,
    pub clock: Arc<dyn Clock>,
    pub random: Arc<dyn RandomSource>,
    pub environment: Arc<dyn Environment>,
}

impl Deps {
    fn network_up(&self) -> bool {
        self.environment.network() != NetworkType::Offline
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Ended {
    Cancelled,
    /// 4000–4099; `healthy` as for `Retry`.
    Stop {
        code: u16,
        reason: String,
        healthy: bool,
    },
    /// Reconnect with backoff; `healthy` when the server answered at least
    /// once (then the backoff starts over).
    Retry {
        healthy: bool,
        why: String,
    },
    NetworkLost,
    /// The app asked for a new connection.
    Reconnect,
}

/// Result of waiting for something while processing commands.
enum Waited<T> {
    Done(T),
    Cancelled,
    Control(Control),
}

/// The manager's loop. Returns when `cancel` fires or the command channel
/// closes (the client was dropped); the final state is `Closed{Shutdown}`.
pub async fn run<S: Session>(
    cfg: ConnectionConfig,
    deps: Deps,
    session: &mut S,
    rx: &mut mpsc::Receiver<S::Command>,
    cancel: CancellationToken,
) {
    let mut m = Manager {
        cfg,
        deps,
        rx,
        cancel,
        state: None,
    };
    m.run(session).await;
    m.set_state(
        session,
        ConnectionState::Closed {
            reason: CloseReason::Shutdown,
        },
    );
}

struct Manager<'a, C> {
    cfg: ConnectionConfig,
    deps: Deps,
    rx: &'a mut mpsc::Receiver<C>,
    cancel: CancellationToken,
    state: Option<ConnectionState>,
}

impl<C: Send + 'static> Manager<'_, C> {
    fn set_state<S: Session<Command = C>>(&mut self, session: &mut S, state: ConnectionState) {
        if self.state.as_ref() != Some(&state) {
            tracing::debug!(?state, "buyer connection state");
            session.state_changed(&state);
            self.state = Some(state);
        }
    }

    /// Awaits `fut` while handing commands to the session; stops early on
    /// cancel or when a command returns a control for the manager.
    async fn wait<S, T>(
        &mut self,
        session: &mut S,
        fut: impl std::future::Future<Output = T>,
    ) -> Waited<T>
    where
        S: Session<Command = C>,
    {
        tokio::pin!(fut);
        let mut discard = Vec::new();
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return Waited::Cancelled,
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else { return Waited::Cancelled };
                    let control = session.command(cmd, false, &mut discard);
                    discard.clear();
                    if control != Control::Continue {
                        return Waited::Control(control);
                    }
                }
                v = &mut fut => return Waited::Done(v),
            }
        }
    }

    async fn run<S: Session<Command = C>>(&mut self, session: &mut S) {
        // The token the server refused with 4001, to be refreshed by the
        // next attempt.
        let mut refused_token: Option<String> = None;
        let mut backoff = Backoff::new(self.cfg.backoff);
        // A fresh token was fetched after a 4001 and has not yet been
        // accepted; a second 4001 then stops for good.
        let mut token_refreshed = false;
        let mut attempt: u32 = 0;
        loop {
            if !self.deps.network_up() {
                self.set_state(session, ConnectionState::Offline);
                match self.wait(session, std::future::pending::<()>()).await {
                    Waited::Cancelled => return,
                    Waited::Done(()) | Waited::Control(_) => {
                        backoff.reset();
                        attempt = 0;
                        continue;
                    }
                }
            }
            attempt = attempt.saturating_add(1);
            self.set_state(session, ConnectionState::Connecting { attempt });

            // The cache answers at once unless the token is near its
            // `exp` (then it is refreshed first) or was refused.
            let tokens = Arc::clone(&self.deps.tokens);
            let refused = refused_token.clone();
            let fetch = async move {
                match refused {
                    Some(r) => tokens.refresh(&r).await,
                    None => tokens.get().await,
                }
            };
            let fetched = match self.wait(session, fetch).await {
                Waited::Cancelled => return,
                Waited::Control(_) => continue,
                Waited::Done(t) => t,
            };
            refused_token = None;
            let Some(tok) = fetched else {
                let message = "the token provider has no token".to_owned();
                if !self
                    .closed(session, CloseReason::Unauthorized { message })
                    .await
                {
                    return;
                }
                (attempt, token_refreshed) = (0, false);
                backoff.reset();
                continue;
            };

            let mut tok = tok;
            let url = with_token(&self.cfg.ws_url, &tok);
            let connector = Arc::clone(&self.deps.connector);
            let timeout = self.deps.clock.sleep(self.cfg.connect_timeout);
            let connect = async move {
                tokio::select! {
                    r = connector.connect(&url) => r,
                    () = timeout => Err(TransportError::Io("connect timed out".to_owned())),
                }
            };
            let connected = self.wait(session, connect).await;
            let ended = match connected {
                Waited::Cancelled => return,
                Waited::Control(Control::Reconnect) => continue,
                Waited::Control(_) => {
                    if self.deps.network_up() {
                        // Network (still) up: the attempt in flight was
                        // dropped; try again at once.
                        continue;
                    }
                    Ended::NetworkLost
                }
                // A refusal before the upgrade means the same as its close
                // code would.
                Waited::Done(Err(TransportError::Http(401))) => Ended::Stop {
                    code: close_code::UNAUTHORIZED,
                    reason: "HTTP 401 at the handshake".into(),
                    healthy: false,
                },
                Waited::Done(Err(TransportError::Http(403))) => Ended::Stop {
                    code: close_code::FORBIDDEN,
                    reason: "HTTP 403 at the handshake".into(),
                    healthy: false,
                },
                Waited::Done(Err(e)) => Ended::Retry {
                    healthy: false,
                    why: e.to_string(),
                },
                Waited::Done(Ok(transport)) => {
                    let mut renewal = Renewal::new(tok, &*self.deps.clock);
                    let ended = self.connected(session, transport, &mut renewal).await;
                    session.closed();
                    // The token the server last held (renewed in band or not).
                    tok = renewal.token;
                    ended
                }
            };
            tracing::debug!(?ended, "buyer connection ended");
            match ended {
                Ended::Cancelled => return,
                Ended::NetworkLost => continue,
                Ended::Reconnect => {
                    backoff.reset();
                    attempt = 0;
                    continue;
                }
                Ended::Stop {
                    code,
                    reason,
                    healthy,
                } => {
                    if healthy {
                        // The token worked on this connection: a 4001 now
                        // (its exp) earns a fresh token again.
                        token_refreshed = false;
                    }
                    if code == close_code::UNAUTHORIZED && !token_refreshed {
                        // The token expired: ask the app for a fresh one and
                        // reconnect right away.
                        refused_token = Some(tok);
                        token_refreshed = true;
                        continue;
                    }
                    let reason = if code == close_code::UNAUTHORIZED {
                        CloseReason::Unauthorized { message: reason }
                    } else {
                        CloseReason::Refused {
                            code,
                            message: reason,
                        }
                    };
                    if !self.closed(session, reason).await {
                        return;
                    }
                    // After a refusal the next start (the app's
                    // `reconnect`) asks for a fresh token.
                    refused_token = (code == close_code::UNAUTHORIZED).then_some(tok);
                    (attempt, token_refreshed) = (0, false);
                    backoff.reset();
                }
                Ended::Retry { healthy, why } => {
                    if healthy {
                        backoff.reset();
                        attempt = 1;
                        token_refreshed = false;
                    }
                    tracing::debug!(%why, attempt, "buyer connection lost; backing off");
                    if !self.deps.network_up() {
                        continue;
                    }
                    let delay = match backoff.fail(
                        self.deps.clock.monotonic_ms(),
                        None,
                        &*self.deps.random,
                    ) {
                        RetryDecision::RetryAfter(d) => d,
                        // `max_elapsed` spent: keep trying at the cap rather
                        // than give up on a buyer who is still waiting.
                        RetryDecision::GiveUp => self.cfg.backoff.cap,
                    };
                    self.set_state(
                        session,
                        ConnectionState::BackingOff {
                            attempt,
                            retry_in_ms: delay.as_millis() as u64,
                        },
                    );
                    let sleep = self.deps.clock.sleep(delay);
                    match self.wait(session, sleep).await {
                        Waited::Cancelled => return,
                        Waited::Done(()) => {}
                        Waited::Control(_) => {
                            // Network back (or the app asked): no reason to
                            // wait out the jitter.
                            backoff.reset();
                            attempt = 0;
                        }
                    }
                }
            }
        }
    }

    /// Shows `Closed{reason}` and waits for `Reconnect`. False when
    /// cancelled instead.
    async fn closed<S: Session<Command = C>>(
        &mut self,
        session: &mut S,
        reason: CloseReason,
    ) -> bool {
        tracing::info!(?reason, "buyer connection closed; waiting for the app");
        self.set_state(session, ConnectionState::Closed { reason });
        loop {
            match self.wait(session, std::future::pending::<()>()).await {
                Waited::Cancelled => return false,
                Waited::Control(Control::Reconnect) => return true,
                Waited::Control(_) | Waited::Done(()) => {}
            }
        }
    }

    /// Runs one open connection until it ends.
    async fn connected<S: Session<Command = C>>(
        &mut self,
        session: &mut S,
        mut ws: Box<dyn WsTransport>,
        renewal: &mut Renewal,
    ) -> Ended {
        type Fetch = std::pin::Pin<Box<dyn std::future::Future<Output = Option<String>> + Send>>;
        // The provider call of an in-band renewal, polled beside the socket.
        let mut fetch: Option<Fetch> = None;
        let clock = Arc::clone(&self.deps.clock);
        let ping_every = self.cfg.ping_interval.max(Duration::from_millis(10));
        let ping_ms = ping_every.as_millis() as u64;
        let tick_ms = self.cfg.tick.max(Duration::from_millis(10)).as_millis() as u64;
        let mut out = Vec::new();
        let mut healthy = false;
        let mut ping_id: u64 = 0;
        // The first ping goes out at once so a healthy server answers
        // immediately (resetting the backoff).
        out.push(ClientFrame::Ping {
            id: Some(ping_id.into()),
        });
        session.opened(&mut out);
        let now = clock.monotonic_ms();
        let mut last_rx = now;
        let mut next_ping = now + ping_ms;
        let mut next_tick = now + tick_ms;
        loop {
            for frame in out.drain(..) {
                let text = match serde_json::to_string(&frame) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(error = %e, "unserializable frame dropped");
                        continue;
                    }
                };
                let sent = tokio::select! {
                    r = ws.send(text) => r.map_err(|e| e.to_string()),
                    () = clock.sleep(SEND_TIMEOUT) => Err("send timed out".to_owned()),
                };
                if let Err(why) = sent {
                    return Ended::Retry { healthy, why };
                }
            }
            let now = clock.monotonic_ms();
            let dead_at = last_rx + 2 * ping_ms;
            let renew_at = match (&fetch, renewal.due) {
                (None, Some(due)) if healthy => due,
                _ => u64::MAX,
            };
            let wake = next_ping.min(next_tick).min(dead_at).min(renew_at);
            let timer = clock.sleep(Duration::from_millis(wake.saturating_sub(now)));
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    close(&mut *ws, &*clock, 1000, "client shutdown").await;
                    return Ended::Cancelled;
                }
                cmd = self.rx.recv() => {
                    let Some(cmd) = cmd else {
                        close(&mut *ws, &*clock, 1000, "client dropped").await;
                        return Ended::Cancelled;
                    };
                    match session.command(cmd, true, &mut out) {
                        Control::Continue => {}
                        Control::Reconnect => {
                            close(&mut *ws, &*clock, 1000, "reconnecting").await;
                            return Ended::Reconnect;
                        }
                        Control::EnvironmentChanged => {
                            if !self.deps.network_up() {
                                return Ended::NetworkLost;
                            }
                        }
                    }
                }
                fresh = async {
                    match fetch.as_mut() {
                        Some(f) => f.await,
                        None => std::future::pending().await,
                    }
                }, if fetch.is_some() => {
                    fetch = None;
                    out.extend(renewal.fetched(fresh, &*clock));
                }
                ev = ws.recv() => {
                    last_rx = clock.monotonic_ms();
                    match ev {
                        Err(e) => return Ended::Retry { healthy, why: e.to_string() },
                        Ok(WsEvent::Alive) => {}
                        Ok(WsEvent::Closed { code, reason }) => {
                            return match (code, should_reconnect(code)) {
                                (Some(code), CloseDisposition::Stop) => Ended::Stop { code, reason, healthy },
                                _ => Ended::Retry {
                                    healthy,
                                    why: format!("closed by server ({code:?} {reason})"),
                                },
                            };
                        }
                        Ok(WsEvent::Text(text)) => match serde_json::from_str::<ServerFrame>(&text) {
                            Ok(frame) => {
                                // Connected once the server answered with
                                // something other than a refusal (a refused
                                // token gets an `error` frame, then 4001).
                                if !healthy && !matches!(frame, ServerFrame::Error { .. }) {
                                    healthy = true;
                                    self.set_state(session, ConnectionState::Connected);
                                }
                                match frame {
                                    ServerFrame::TokenExpiring { exp } => renewal.warned(exp, &*clock),
                                    ServerFrame::Refreshed { exp } => {
                                        if renewal.refreshed(exp, &*clock) {
                                            tracing::debug!(exp, renewals = renewal.done, "token renewed in band");
                                        }
                                    }
                                    ServerFrame::Error { ref code, ref message, reference: None } => {
                                        match renewal.refusal(code, &*clock) {
                                            Some(refused) => {
                                                // Not this token again: the
                                                // reconnect at exp asks anew.
                                                self.deps.tokens.forget(&refused);
                                                session.refresh_refused(code.clone(), message.clone());
                                            }
                                            None => session.frame(frame, &mut out),
                                        }
                                    }
                                    frame => session.frame(frame, &mut out),
                                }
                            }
                            // Newer servers may add frame types: skip them.
                            Err(e) => tracing::debug!(error = %e, "unknown server frame skipped"),
                        },
                    }
                }
                () = timer => {
                    let now = clock.monotonic_ms();
                    if now >= last_rx + 2 * ping_ms {
                        tracing::info!(silent_ms = now - last_rx, "no sign of life for two ping intervals: dropping the connection");
                        close(&mut *ws, &*clock, 1000, "heartbeat missed").await;
                        return Ended::Retry { healthy, why: "heartbeat missed".into() };
                    }
                    if now >= next_ping {
                        ping_id += 1;
                        out.push(ClientFrame::Ping { id: Some(ping_id.into()) });
                        next_ping = now + ping_ms;
                    }
                    if now >= next_tick {
                        session.tick(true, &mut out);
                        next_tick = now + tick_ms;
                    }
                    // Only a connection the server accepted renews in band
                    // (a refused token gets 4001 and a fresh one anyway).
                    if healthy && fetch.is_none() && renewal.sent.is_none() && renewal.due.is_some_and(|d| now >= d) {
                        renewal.due = None;
                        let tokens = Arc::clone(&self.deps.tokens);
                        let current = renewal.token.clone();
                        fetch = Some(Box::pin(async move { tokens.renew(&current).await }));
                    }
                }
            }
        }
    }
}

async fn close(ws: &mut dyn WsTransport, clock: &dyn Clock, code: u16, reason: &str) {
    tokio::select! {
        () = ws.close(code, reason) => {}
        () = clock.sleep(CLOSE_TIMEOUT) => {}
    }
}

/// Appends `token=` to the WebSocket URL.
fn with_token(url: &str, token: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}token={token}")
}
