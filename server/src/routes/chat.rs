//! Chat over HTTP: `GET`/`POST /v1/chats/{room}/messages`. The operations
//! themselves live in `crate::chat`, shared with the WebSocket.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::Json;
use serde::{Deserialize, Serialize};
use waypost_protocol::{ChatPost, MessageKind, MessagesResponse, Role};

use crate::auth::Authed;
use crate::chat::{authorize_room, ChatError, Post};
use crate::engine::chat::Appended;
use crate::error::AppError;
use crate::state::AppState;

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
    let chat = state.chat();
    let h = chat.history(&room, q.after_seq, limit).await?;
    let (receipts, unread) = chat.receipts_and_unread(&room, &claims.sub).await?;
    Ok(Json(MessagesResponse {
        more: h.more(),
        messages: h.messages,
        receipts,
        unread,
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
    let service = claims.role == Role::Service;
    let chat = state.chat();
    let appended = match (post.kind, post.ref_seq) {
        (Some(MessageKind::Edit), Some(seq)) => {
            chat.amend(&room, &claims.sub, service, seq, Some(post.body), None)
                .await?
        }
        (Some(MessageKind::Delete), Some(seq)) => {
            chat.amend(&room, &claims.sub, service, seq, None, None)
                .await?
        }
        (kind @ (None | Some(MessageKind::System)), None) => {
            let post = Post {
                client_id: post.client_id,
                body: post.body,
                attachments: post.attachments,
                kind,
            };
            chat.post_message(&room, &claims.sub, service, post).await?
        }
        _ => {
            return Err(AppError::bad(
                "bad_kind",
                "ref_seq goes with kind edit or delete, and only with them",
            ))
        }
    };
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

/// Chat, presence and notification failures as HTTP (and, through
/// [`AppError::code`], WebSocket `error` frame) errors.
impl From<ChatError> for AppError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::BadId(e) => AppError::bad("bad_id", e.to_string()),
            ChatError::BadEvent(e) => AppError::bad("bad_event", e.to_string()),
            ChatError::EmptyBody => AppError::bad("empty_body", e.to_string()),
            ChatError::TooLarge(m) => AppError::TooLarge(m),
            ChatError::Forbidden(m) => AppError::Forbidden(m),
            ChatError::BadAttachment(m) => AppError::bad("bad_attachment", m),
            ChatError::BadKind(m) => AppError::bad("bad_kind", m),
            ChatError::UnknownSeq(_) => AppError::NotFound(e.to_string()),
            ChatError::NotEditable(m) => AppError::Conflict(m),
            ChatError::Engine(e) => AppError::Engine(e),
        }
    }
}
