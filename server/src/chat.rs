//! Chat, presence and vendor notification operations, shared by the HTTP
//! routes and the WebSocket: posting a message (store, then publish on
//! `chat:{room}` and on the sender's `user:{sub}` channel so its other
//! devices see it), reading history, typing and presence notices, and
//! posting a notification (store, then publish on `vendor:{id}`).
//!
//! They know nothing of HTTP or WebSocket frames: failures are
//! [`ChatError`], which the routes map to `AppError` (HTTP) and to `error`
//! frames (WebSocket, through the same mapping).

use waypost_protocol::{validate_id, Channel, Claims, IdError};

use crate::auth::may_subscribe;
use crate::config::Limits;
use crate::engine::chat::{
    Appended, ChatStores, History, NewMessage, Notification, PresenceChanges,
};
use crate::engine::{Engine, EngineError};
use crate::frame::{now_us, Frame};
use crate::now_ms;

/// Why a chat, presence or notification operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A malformed room, client or vendor id.
    #[error("{0}")]
    BadId(#[from] IdError),
    /// A malformed notification event name.
    #[error("{0}")]
    BadEvent(IdError),
    #[error("body is empty")]
    EmptyBody,
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("engine unavailable")]
    Engine(#[from] EngineError),
}

/// The operations, over the engine, the stores and the limits.
#[derive(Clone, Copy)]
pub struct Chat<'a> {
    pub engine: &'a Engine,
    pub stores: &'a ChatStores,
    pub limits: &'a Limits,
}

/// Checks the room id and that the caller's token grants `chat:{room}`.
pub fn authorize_room(claims: &Claims, room: &str) -> Result<(), ChatError> {
    validate_id("room", room)?;
    if may_subscribe(claims, &Channel::chat(room)) {
        Ok(())
    } else {
        Err(ChatError::Forbidden(format!(
            "token does not grant chat:{room}"
        )))
    }
}

impl Chat<'_> {
    /// Stores a message (idempotent by `(sender, client_id)`) and publishes
    /// it when it is new. Authorization is the caller's job.
    pub async fn post_message(
        &self,
        room: &str,
        from: &str,
        client_id: String,
        body: String,
    ) -> Result<Appended, ChatError> {
        let origin = now_us();
        validate_id("client_id", &client_id)?;
        if body.is_empty() {
            return Err(ChatError::EmptyBody);
        }
        // Characters (Unicode scalar values), as the schema's `maxLength`
        // counts.
        if body.chars().count() > self.limits.max_chat_body_chars {
            return Err(ChatError::TooLarge(format!(
                "body longer than {} characters",
                self.limits.max_chat_body_chars
            )));
        }
        let appended = self
            .stores
            .chat
            .append(NewMessage {
                room: room.to_owned(),
                from: from.to_owned(),
                client_id,
                body,
                ts: now_ms(),
            })
            .await?;
        if let Appended::New(msg) = &appended {
            let frame = Frame::message(msg, origin);
            // The message is stored: a failed publish is healed by receivers
            // filling the gap from history at the next message, or by `sync`.
            let room_channel = Channel::chat(room);
            let user = Channel::user(from);
            let (to_room, to_user) = futures_util::future::join(
                self.engine.publish(&room_channel, frame.clone()),
                self.engine.publish(&user, frame),
            )
            .await;
            for (channel, result) in [(room_channel, to_room), (user, to_user)] {
                if let Err(e) = result {
                    tracing::warn!(error = %e, %channel, "publishing a chat message failed");
                }
            }
        }
        Ok(appended)
    }

    /// Reads a page of history after `after_seq` (at most the sync limit).
    pub async fn history(
        &self,
        room: &str,
        after_seq: u64,
        limit: Option<usize>,
    ) -> Result<History, ChatError> {
        let max = self.limits.chat_sync_limit;
        let limit = limit.unwrap_or(max).clamp(1, max);
        Ok(self.stores.chat.after(room, after_seq, limit).await?)
    }

    /// Publishes an ephemeral `typing` notice (never stored).
    pub async fn publish_typing(&self, room: &str, user: &str) -> Result<(), ChatError> {
        let frame = Frame::typing(room, user, now_us());
        self.engine.publish(&Channel::chat(room), frame).await?;
        Ok(())
    }

    /// Adds or refreshes device `conn` of `user` in `room`'s presence and
    /// publishes what changed. Failures are logged: presence heals at the
    /// next heartbeat.
    pub async fn join_presence(&self, room: &str, user: &str, conn: &str) {
        match self.stores.presence.join(room, user, conn, now_ms()).await {
            Ok(changes) => self.publish_presence(room, changes).await,
            Err(e) => tracing::debug!(error = %e, room, "presence join failed"),
        }
    }

    /// Removes device `conn` from `room`'s presence and publishes what
    /// changed.
    pub async fn leave_presence(&self, room: &str, user: &str, conn: &str) {
        match self.stores.presence.leave(room, user, conn, now_ms()).await {
            Ok(changes) => self.publish_presence(room, changes).await,
            Err(e) => tracing::debug!(error = %e, room, "presence leave failed"),
        }
    }

    /// Users online in `room` now (empty when the store fails).
    pub async fn online(&self, room: &str) -> Vec<String> {
        self.stores
            .presence
            .online(room, now_ms(), self.limits.max_presence_per_room)
            .await
            .unwrap_or_default()
    }

    /// Publishes `presence` frames for what a presence call changed.
    async fn publish_presence(&self, room: &str, changes: PresenceChanges) {
        let channel = Channel::chat(room);
        let frames = changes
            .online
            .into_iter()
            .map(|u| (u, true))
            .chain(changes.offline.into_iter().map(|u| (u, false)));
        for (user, online) in frames {
            let frame = Frame::presence(room, user, online, now_us());
            if let Err(e) = self.engine.publish(&channel, frame).await {
                tracing::debug!(error = %e, %channel, "publishing presence failed");
            }
        }
    }

    /// Stores a vendor notification and publishes it. Authorization is the
    /// caller's job.
    pub async fn notify(
        &self,
        vendor: &str,
        event: &str,
        data: serde_json::Value,
    ) -> Result<Notification, ChatError> {
        let origin = now_us();
        validate_id("vendor_id", vendor)?;
        validate_id("event", event).map_err(ChatError::BadEvent)?;
        let size = serde_json::to_string(&data).map_or(0, |s| s.len());
        if size > self.limits.max_notification_bytes {
            return Err(ChatError::TooLarge(format!(
                "data larger than {} bytes",
                self.limits.max_notification_bytes
            )));
        }
        let n = self
            .stores
            .notifications
            .append(vendor, event, data, now_ms())
            .await?;
        // Stored first: a stream that misses the publish fills the gap from
        // history when the next one arrives, or on reconnect.
        let frame = Frame::notification(n.seq, n.to_sse(), origin);
        if let Err(e) = self.engine.publish(&Channel::vendor(vendor), frame).await {
            tracing::warn!(error = %e, vendor, "publishing a notification failed");
        }
        Ok(n)
    }
}
