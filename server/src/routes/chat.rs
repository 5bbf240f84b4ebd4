//! Chat over HTTP (`GET`/`POST /v1/chats/{room}/messages`) and the chat
//! operations the WebSocket shares with it: posting (store, then publish on
//! `chat:{room}` and on the sender's `user:{id}` channel so its other
//! devices see it), reading history, typing and presence notices.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use waypost_protocol::{validate_id, Channel, ChatPost, Claims, MessagesResponse, ServerFrame};

use crate::auth::{may_subscribe, Authed};
use crate::engine::chat::{Appended, History, NewMessage, PresenceChanges};
use crate::error::AppError;
use crate::now_ms;
use crate::state::AppState;

/// The hub channel every connection of user `sub` listens on.
pub fn user_channel(sub: &str) -> String {
    format!("user:{sub}")
}

/// The error code and message of `e` for an `error` frame.
pub fn frame_error(e: &AppError) -> (&'static str, String) {
    if let AppError::Engine(err) = e {
        tracing::warn!(error = %err, "engine error on a chat frame");
        return (
            e.code(),
            "the storage engine is unavailable, retry later".into(),
        );
    }
    (e.code(), e.to_string())
}

/// Checks the room id and that the caller's token grants `chat:{room}`.
pub fn authorize_room(claims: &Claims, room: &str) -> Result<(), AppError> {
    validate_id("room", room).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if may_subscribe(claims, &Channel::chat(room)) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "token does not grant chat:{room}"
        )))
    }
}

/// Stores a message (idempotent by `(sender, client_id)`) and publishes it
/// when it is new. Authorization is the caller's job.
pub async fn post_message(
    state: &AppState,
    room: &str,
    from: &str,
    client_id: String,
    body: String,
) -> Result<Appended, AppError> {
    validate_id("client_id", &client_id).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if body.is_empty() {
        return Err(AppError::bad("empty_body", "body is empty"));
    }
    // Characters (Unicode scalar values), as the schema's `maxLength` counts.
    if body.chars().count() > state.limits.max_chat_body_chars {
        return Err(AppError::TooLarge(format!(
            "body longer than {} characters",
            state.limits.max_chat_body_chars
        )));
    }
    let appended = state
        .stores
        .chat
        .append(NewMessage {
            room: room.to_owned(),
            from: from.to_owned(),
            client_id,
            body,
            ts: now_ms(),
        })
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?;
    if let Appended::New(msg) = &appended {
        let frame: axum::extract::ws::Utf8Bytes =
            ServerFrame::Message(msg.clone()).to_json().into();
        // The message is stored: a failed publish is healed by receivers
        // filling the gap from history at the next message, or by `sync`.
        let room_channel = Channel::chat(room).to_string();
        let user = user_channel(from);
        let (to_room, to_user) = futures_util::future::join(
            state.engine.publish(&room_channel, frame.clone()),
            state.engine.publish(&user, frame),
        )
        .await;
        for (channel, result) in [(room_channel, to_room), (user, to_user)] {
            if let Err(e) = result {
                state.metrics.engine_errors.inc();
                tracing::warn!(error = %e, %channel, "publishing a chat message failed");
            }
        }
    }
    Ok(appended)
}

/// Reads a page of history after `after_seq` (at most the sync limit).
pub async fn history(
    state: &AppState,
    room: &str,
    after_seq: u64,
    limit: Option<usize>,
) -> Result<History, AppError> {
    let max = state.limits.chat_sync_limit;
    let limit = limit.unwrap_or(max).clamp(1, max);
    Ok(state
        .stores
        .chat
        .after(room, after_seq, limit)
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?)
}

/// A `limit` query parameter within `1..=max` (the documented range), or
/// `400 bad_query`.
pub fn checked_limit(limit: Option<u64>, max: usize) -> Result<Option<usize>, AppError> {
    match limit {
        None => Ok(None),
        Some(n) if n >= 1 && n <= max as u64 => Ok(Some(n as usize)),
        Some(n) => Err(AppError::bad(
            "bad_query",
            format!("limit {n} is outside 1..={max}"),
        )),
    }
}

/// Publishes `presence` frames for what a presence call changed.
pub async fn publish_presence(state: &AppState, room: &str, changes: PresenceChanges) {
    let channel = Channel::chat(room).to_string();
    let frames = changes
        .online
        .into_iter()
        .map(|u| (u, true))
        .chain(changes.offline.into_iter().map(|u| (u, false)));
    for (user, online) in frames {
        let frame = ServerFrame::Presence {
            room: room.to_owned(),
            user,
            online,
        };
        if let Err(e) = state.engine.publish(&channel, frame.to_json().into()).await {
            state.metrics.engine_errors.inc();
            tracing::debug!(error = %e, %channel, "publishing presence failed");
        }
    }
}

/// Publishes an ephemeral `typing` notice (never stored).
pub async fn publish_typing(state: &AppState, room: &str, user: &str) -> Result<(), AppError> {
    let frame = ServerFrame::Typing {
        room: room.to_owned(),
        user: user.to_owned(),
    };
    state
        .engine
        .publish(&Channel::chat(room).to_string(), frame.to_json().into())
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?;
    Ok(())
}

#[derive(Debug, Deserialize)]
pub struct MessagesQuery {
    #[serde(default)]
    after_seq: u64,
    limit: Option<u64>,
}

/// `GET /v1/chats/{room}/messages?after_seq=N&limit=M`
pub async fn get_messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<MessagesQuery>, QueryRejection>,
) -> Result<Json<MessagesResponse>, AppError> {
    authorize_room(&claims, &room)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    // HTTP refuses what the schema refuses; the WebSocket `sync` caps instead.
    let limit = checked_limit(q.limit, state.limits.chat_sync_limit)?;
    let h = history(&state, &room, q.after_seq, limit).await?;
    Ok(Json(MessagesResponse {
        more: h.more(),
        messages: h.messages,
    }))
}

/// Reply to `POST /v1/chats/{room}/messages`: the same fields as the
/// WebSocket `sent` ack, plus whether this was a resend.
#[derive(Debug, Serialize)]
pub struct PostReply {
    pub client_id: String,
    pub room: String,
    pub seq: u64,
    pub id: String,
    pub duplicate: bool,
}

/// `POST /v1/chats/{room}/messages` with `{"client_id","body"}`.
pub async fn post_messages(
    State(state): State<AppState>,
    Path(room): Path<String>,
    Authed(claims): Authed,
    body: Result<Json<ChatPost>, JsonRejection>,
) -> Result<Json<PostReply>, AppError> {
    authorize_room(&claims, &room)?;
    if let Err(wait) = state.chat_post_limiter.check(&claims.sub) {
        state
            .metrics
            .limit_hits
            .with_label_values(&["chat_post"])
            .inc();
        return Err(AppError::RateLimited {
            retry_after_s: wait.as_secs().max(1),
        });
    }
    let Json(post) = body.map_err(|e| AppError::bad("bad_json", e.body_text()))?;
    let appended = post_message(&state, &room, &claims.sub, post.client_id, post.body).await?;
    let duplicate = matches!(appended, Appended::Duplicate(_));
    let m = appended.message();
    Ok(Json(PostReply {
        client_id: m.client_id.clone(),
        room: m.room.clone(),
        seq: m.seq,
        id: m.id.clone(),
        duplicate,
    }))
}
