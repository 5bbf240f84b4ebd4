//! The WebSocket endpoint `/v1/ws`.
//!
//! - this file: the upgrade, its checks (token, connection slot) and the
//!   refusal of a socket that failed them;
//! - `conn.rs`: one live connection: a task that waits on just two things,
//!   its hub mailbox (a kill, queued frames, ticks) and its socket
//!   (incoming frames, rate-limited), plus the writer that sends queued
//!   frames in batches with one flush; and the process-wide ticker that
//!   drives every connection's pings and presence heartbeats and closes
//!   all with 4100 on shutdown (no per-connection timers or shutdown
//!   futures);
//! - `client.rs`: what the client asks for: subscribe (tracking replay,
//!   chat through `rooms.rs`), unsubscribe, send, sync, typing, ping;
//! - `orders.rs`: the connection's order channels: per order the seq
//!   cursor (in-order, exactly-once entries) and whether it ended (no
//!   location after that);
//! - `session.rs`: the token the connection runs on: expiry
//!   (`token_expiring`, then 4001 at `exp`, driven by the process-wide
//!   expiry wheel), in-band `refresh`, revocation and operator disconnects;
//! - `rooms.rs`: the connection's chat rooms: per room the seq cursor that
//!   turns live copies into in-order, exactly-once delivery, the typing
//!   rate limit and this device's presence.
//!
//! A client that offers `Sec-WebSocket-Protocol: waypost.v1.msgpack` gets
//! it back and speaks MessagePack both ways ([`Encoding`]); one that offers
//! `waypost.v1.lean` (alone or with msgpack) gets that: MessagePack with
//! lean location frames (`conn.rs`, `Conn::outgoing`). Any other offer, or
//! none, gets JSON text frames and no protocol header.

use std::future::Future;
use std::pin::Pin;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::future::Either;
use tokio_util::task::task_tracker::TrackedFuture;
use waypost_protocol::{close_code, ServerFrame, LEAN_PROTOCOL, MSGPACK_PROTOCOL};

use crate::admission::{ConnectionPermit, Full};
use crate::auth::token_from_parts;
use crate::keys::Verified;
use crate::state::AppState;

mod client;
mod conn;
mod encoding;
mod lazy_map;
mod orders;
mod rooms;
mod session;

use conn::{close_message, CLOSE_TIMEOUT};
use encoding::Encoding;

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
type Verdict = Box<Result<(Verified, ConnectionPermit), Refusal>>;

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
        Some(t) => match state.keys.verify_token(&t) {
            Err(e) => Err(Refusal::Unauthorized(e.to_string())),
            Ok(token) => match state.connection_slot(&token.claims.sub) {
                Ok(permit) => Ok((token, permit)),
                Err(full) => Err(Refusal::Full(full)),
            },
        },
    });
    // The server's preference among what the client offers: lean, then
    // MessagePack; an unknown protocol offered alone gets JSON without a
    // protocol header.
    let ws = ws.protocols([LEAN_PROTOCOL, MSGPACK_PROTOCOL]);
    let encoding = match ws.selected_protocol() {
        Some(p) if p == LEAN_PROTOCOL => Encoding::Lean,
        Some(_) => Encoding::Msgpack,
        None => Encoding::Json,
    };
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(state.limits.max_frame_bytes)
        .max_frame_size(state.limits.max_frame_bytes);
    ws.on_upgrade(move |socket| connected(socket, state, verdict, encoding))
}

/// The task of an upgraded socket: the connection, or its refusal. A plain
/// function returning the future (no `async fn` wrapper) so the arguments
/// are stored once in the task, not twice (rust-lang/rust#62958).
#[allow(clippy::boxed_local)] // boxed on purpose: see `Verdict`
fn connected(
    socket: WebSocket,
    state: AppState,
    verdict: Verdict,
    encoding: Encoding,
) -> Either<Pin<Box<dyn Future<Output = ()> + Send>>, TrackedFuture<impl Future<Output = ()> + Send>>
{
    match *verdict {
        Ok((token, permit)) => {
            let tasks = state.tasks.clone();
            Either::Right(tasks.track_future(conn::run(socket, state, token, permit, encoding)))
        }
        Err(refusal) => Either::Left(Box::pin(async move {
            refuse(socket, refusal, encoding).await;
        })),
    }
}

async fn refuse(mut socket: WebSocket, refusal: Refusal, encoding: Encoding) {
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
        let _ = socket.send(encoding.message(frame.into())).await;
        let _ = socket.send(close_message(code, err)).await;
    })
    .await;
}
