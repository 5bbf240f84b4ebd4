//! Chat, presence and vendor notification operations, shared by the HTTP
//! routes and the WebSocket: posting a message (store, then publish on
//! `chat:{room}` and on the sender's `user:{sub}` channel so its other
//! devices see it), reading history, typing and presence notices, and
//! posting a notification (store, then publish on `vendor:{id}`).
//!
//! They know nothing of HTTP or WebSocket frames: failures are
//! [`ChatError`], which the routes map to `AppError` (HTTP) and to `error`
//! frames (WebSocket, through the same mapping).

use waypost_protocol::{
    validate_id, Attachment, Channel, Claims, IdError, MessageKind, ParticipantReceipts, PushKind,
    ReceiptKind, ServerFrame,
};

use crate::auth::may_subscribe;
use crate::config::Limits;
use crate::engine::chat::{
    Appended, ChatStores, History, NewMessage, Notification, PresenceChanges,
};
use crate::engine::{Engine, EngineError};
use crate::frame::{now_us, Frame};
use crate::now_ms;
use crate::push::{Push, PushEvent};

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
    /// An attachment's metadata is refused (scheme, type, size, count).
    #[error("{0}")]
    BadAttachment(String),
    /// `kind` is not allowed here (e.g. `system` from a user).
    #[error("{0}")]
    BadKind(String),
    /// An edit or delete names a seq that is not in the room's history.
    #[error("message {0} is not in the room's history")]
    UnknownSeq(u64),
    /// An edit or delete of a message that is deleted, or is itself an
    /// edit or delete.
    #[error("{0}")]
    NotEditable(String),
    #[error("engine unavailable")]
    Engine(#[from] EngineError),
}

/// Limits on attachment metadata (documented in docs/API-EXTENSIONS.md).
pub const MAX_ATTACHMENTS: usize = 10;
pub const MAX_ATTACHMENT_BYTES: u64 = 100 * 1024 * 1024;
pub const MAX_ATTACHMENT_URL_CHARS: usize = 2048;
pub const MAX_ATTACHMENT_NAME_CHARS: usize = 255;
pub const MAX_ATTACHMENT_DIMENSION: u32 = 20_000;

/// A message to post: plain (`kind` absent) or `system` (from `service`).
#[derive(Debug, Clone, Default)]
pub struct Post {
    pub client_id: String,
    pub body: String,
    pub attachments: Vec<Attachment>,
    pub kind: Option<MessageKind>,
}

/// Checks attachment metadata: `https` URLs only, a `type/subtype` media
/// type, bounded size, dimensions, name and count.
pub fn validate_attachments(list: &[Attachment]) -> Result<(), ChatError> {
    let bad = |i: usize, what: String| {
        Err(ChatError::BadAttachment(format!(
            "attachments[{i}]: {what}"
        )))
    };
    if list.len() > MAX_ATTACHMENTS {
        return Err(ChatError::BadAttachment(format!(
            "at most {MAX_ATTACHMENTS} attachments per message"
        )));
    }
    for (i, a) in list.iter().enumerate() {
        let Some(rest) = a.url.strip_prefix("https://") else {
            return bad(i, "url must be https://".into());
        };
        let host = rest.split(['/', '?', '#']).next().unwrap_or("");
        if host.is_empty()
            || a.url.chars().count() > MAX_ATTACHMENT_URL_CHARS
            || a.url.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return bad(
                i,
                format!("url must be an https URL with a host, at most {MAX_ATTACHMENT_URL_CHARS} characters, without spaces"),
            );
        }
        if !valid_mime(&a.mime) {
            return bad(
                i,
                format!("mime {:?} is not a type/subtype media type", a.mime),
            );
        }
        if a.size == 0 || a.size > MAX_ATTACHMENT_BYTES {
            return bad(i, format!("size must be 1..={MAX_ATTACHMENT_BYTES} bytes"));
        }
        for (name, v) in [("width", a.width), ("height", a.height)] {
            if v.is_some_and(|v| v == 0 || v > MAX_ATTACHMENT_DIMENSION) {
                return bad(i, format!("{name} must be 1..={MAX_ATTACHMENT_DIMENSION}"));
            }
        }
        if let Some(name) = &a.name {
            let n = name.chars().count();
            if n == 0 || n > MAX_ATTACHMENT_NAME_CHARS || name.chars().any(char::is_control) {
                return bad(
                    i,
                    format!("name must be 1..={MAX_ATTACHMENT_NAME_CHARS} characters without control characters"),
                );
            }
        }
    }
    Ok(())
}

/// `type/subtype` with RFC 6838 restricted names, no parameters.
fn valid_mime(mime: &str) -> bool {
    fn name(s: &str) -> bool {
        let mut chars = s.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && s.len() <= 127
            && chars.all(|c| c.is_ascii_alphanumeric() || "!#$&^_.+-".contains(c))
    }
    mime.split_once('/')
        .is_some_and(|(t, sub)| name(t) && name(sub))
}

/// The operations, over the engine, the stores and the limits.
#[derive(Clone, Copy)]
pub struct Chat<'a> {
    pub engine: &'a Engine,
    pub stores: &'a ChatStores,
    pub limits: &'a Limits,
    /// Told of every new message and notification (for users offline).
    pub push: &'a Push,
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
    /// it when it is new. Authorization is the caller's job; `system`
    /// messages only come from a `service` token (`service`).
    pub async fn post_message(
        &self,
        room: &str,
        from: &str,
        service: bool,
        post: Post,
    ) -> Result<Appended, ChatError> {
        validate_id("client_id", &post.client_id)?;
        match post.kind {
            None => {}
            Some(MessageKind::System) if service => {}
            Some(MessageKind::System) => {
                return Err(ChatError::Forbidden(
                    "only service may post system messages".into(),
                ))
            }
            Some(k @ (MessageKind::Edit | MessageKind::Delete)) => {
                return Err(ChatError::BadKind(format!(
                    "{k:?} is sent with its own operation and a ref_seq"
                )))
            }
        }
        // An attachment may stand alone; otherwise a message needs a body.
        if post.attachments.is_empty() || !post.body.is_empty() {
            self.check_body(&post.body)?;
        }
        validate_attachments(&post.attachments)?;
        self.store_and_publish(NewMessage {
            room: room.to_owned(),
            from: from.to_owned(),
            client_id: post.client_id,
            body: post.body,
            ts: now_ms(),
            kind: post.kind,
            ref_seq: None,
            attachments: post.attachments,
        })
        .await
    }

    /// Edits (`body` is `Some`) or deletes message `seq` of `room`: stored
    /// as a new entry with `kind` and `ref_seq`. Only the original sender or
    /// `service` may do it; a deleted message, an edit or a delete cannot
    /// be edited or deleted. `moderator` is whether the caller is `service`.
    /// With a `client_id` the entry is stored under it: a repeat (an SDK
    /// resending from its outbox) is acked with the original, even a
    /// delete whose message is deleted by then.
    pub async fn amend(
        &self,
        room: &str,
        from: &str,
        moderator: bool,
        seq: u64,
        body: Option<String>,
        client_id: Option<String>,
    ) -> Result<Appended, ChatError> {
        if let Some(body) = &body {
            self.check_body(body)?;
        }
        if let Some(id) = &client_id {
            validate_id("client_id", id)?;
        }
        let page = self
            .stores
            .chat
            .after(room, seq.saturating_sub(1), 1)
            .await?;
        let target = page
            .messages
            .into_iter()
            .next()
            .filter(|m| seq > 0 && m.seq == seq)
            .ok_or(ChatError::UnknownSeq(seq))?;
        if matches!(target.kind, Some(MessageKind::Edit | MessageKind::Delete)) {
            return Err(ChatError::NotEditable(format!(
                "message {seq} is an edit or a delete itself"
            )));
        }
        if target.from != from && !moderator {
            return Err(ChatError::Forbidden(format!(
                "only the sender of message {seq} (or service) may change it"
            )));
        }
        if let Some(deletion) = self.deletion(room, seq).await? {
            let repeat = body.is_none()
                && client_id.is_some()
                && deletion.from == from
                && Some(&deletion.client_id) == client_id.as_ref();
            if repeat {
                return Ok(Appended::Duplicate(deletion));
            }
            return Err(ChatError::NotEditable(format!("message {seq} is deleted")));
        }
        let (kind, client_id) = match (&body, client_id) {
            (Some(_), Some(id)) => (MessageKind::Edit, id),
            (Some(_), None) => (
                MessageKind::Edit,
                format!("edit-{seq}-{}", uuid::Uuid::new_v4().simple()),
            ),
            (None, Some(id)) => (MessageKind::Delete, id),
            // Deterministic: a repeated delete is a duplicate of the first.
            (None, None) => (MessageKind::Delete, format!("delete-{seq}")),
        };
        self.store_and_publish(NewMessage {
            room: room.to_owned(),
            from: from.to_owned(),
            client_id,
            body: body.unwrap_or_default(),
            ts: now_ms(),
            kind: Some(kind),
            ref_seq: Some(seq),
            attachments: Vec::new(),
        })
        .await
    }

    /// The `delete` of `seq` in the room's history, if any.
    async fn deletion(
        &self,
        room: &str,
        seq: u64,
    ) -> Result<Option<waypost_protocol::ChatMessage>, ChatError> {
        let mut deletion = None;
        self.scan_after(room, seq, |m| {
            if deletion.is_none() && m.kind == Some(MessageKind::Delete) && m.ref_seq == Some(seq) {
                deletion = Some(m.clone());
            }
        })
        .await?;
        Ok(deletion)
    }

    /// Calls `f` on every message of `room` after `after`, read in pages
    /// (history is bounded by `--chat-history`).
    async fn scan_after(
        &self,
        room: &str,
        mut after: u64,
        mut f: impl FnMut(&waypost_protocol::ChatMessage),
    ) -> Result<(), ChatError> {
        loop {
            let page = self
                .stores
                .chat
                .after(room, after, self.limits.chat_sync_limit.max(1))
                .await?;
            page.messages.iter().for_each(&mut f);
            match page.messages.last() {
                Some(last) if page.more() => after = last.seq,
                _ => return Ok(()),
            }
        }
    }

    /// Moves `user`'s receipt marker (see [`crate::engine::chat::ChatStore::mark`])
    /// and, when it moved, publishes a `receipt` frame to the room and to
    /// the user's other devices.
    pub async fn receipt(
        &self,
        room: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<Option<ParticipantReceipts>, ChatError> {
        let origin = now_us();
        let moved = self.stores.chat.mark(room, user, kind, seq).await?;
        if let Some(r) = &moved {
            let seq = match kind {
                ReceiptKind::Delivered => r.delivered,
                ReceiptKind::Read => r.read,
            };
            let frame = Frame::receipt(room, user, kind, seq, origin);
            for channel in [Channel::chat(room), Channel::user(user)] {
                if let Err(e) = self.engine.publish(&channel, frame.clone()).await {
                    tracing::debug!(error = %e, %channel, "publishing a receipt failed");
                }
            }
        }
        Ok(moved)
    }

    /// Every participant's markers in `room`, and how many messages from
    /// others (plain and system) `user` has not read.
    pub async fn receipts_and_unread(
        &self,
        room: &str,
        user: &str,
    ) -> Result<(Vec<ParticipantReceipts>, u64), ChatError> {
        let receipts = self.stores.chat.receipts(room).await?;
        let read = receipts
            .iter()
            .find(|r| r.user == user)
            .map_or(0, |r| r.read);
        let mut unread = 0;
        self.scan_after(room, read, |m| {
            if m.from != user && matches!(m.kind, None | Some(MessageKind::System)) {
                unread += 1;
            }
        })
        .await?;
        Ok((receipts, unread))
    }

    /// The `receipt` frames that draw every participant's ticks.
    pub async fn receipt_frames(&self, room: &str) -> Result<Vec<ServerFrame>, ChatError> {
        let receipts = self.stores.chat.receipts(room).await?;
        Ok(receipts
            .into_iter()
            .flat_map(|r| {
                [
                    (ReceiptKind::Delivered, r.delivered),
                    (ReceiptKind::Read, r.read),
                ]
                .into_iter()
                .filter(|(_, seq)| *seq > 0)
                .map(move |(kind, seq)| ServerFrame::Receipt {
                    room: room.to_owned(),
                    user: r.user.clone(),
                    kind,
                    seq,
                })
            })
            .collect())
    }

    fn check_body(&self, body: &str) -> Result<(), ChatError> {
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
        Ok(())
    }

    async fn store_and_publish(&self, msg: NewMessage) -> Result<Appended, ChatError> {
        let origin = now_us();
        let room = msg.room.clone();
        let from = msg.from.clone();
        let appended = self.stores.chat.append(msg).await?;
        // Behind `--redis-wait-replicas`, a repeat of a stored message is
        // published again on the room: its first attempt may have been
        // stored but answered with an error before publishing (`WAIT` not
        // met during a failover), and room subscribers drop a seq they have. Only a new
        // message goes to the sender's `user:` channel and to push.
        if let (Appended::Duplicate(msg), true) = (&appended, self.engine.republishes_resends()) {
            let frame = Frame::message(msg, origin);
            if let Err(e) = self.engine.publish(&Channel::chat(&room), frame).await {
                tracing::debug!(error = %e, %room, "publishing a repeated chat message failed");
            }
        }
        if let Appended::New(msg) = &appended {
            let frame = Frame::message(msg, origin);
            // The message is stored: a failed publish is healed by receivers
            // filling the gap from history at the next message, or by `sync`.
            let room_channel = Channel::chat(&room);
            let user = Channel::user(&from);
            let (to_room, to_user) = futures_util::future::join(
                self.engine.publish(&room_channel, frame.clone()),
                self.engine.publish(&user, frame),
            )
            .await;
            for (channel, result) in [(room_channel.clone(), to_room), (user, to_user)] {
                if let Err(e) = result {
                    tracing::warn!(error = %e, %channel, "publishing a chat message failed");
                }
            }
            self.push.event(PushEvent {
                kind: PushKind::Message,
                channel: room_channel,
                seq: msg.seq,
                from: Some(from.to_owned()),
                preview: Some(msg.body.clone()),
                origin_us: origin,
            });
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
        let channel = Channel::vendor(vendor);
        if let Err(e) = self.engine.publish(&channel, frame).await {
            tracing::warn!(error = %e, vendor, "publishing a notification failed");
        }
        self.push.event(PushEvent {
            kind: PushKind::Notification,
            channel,
            seq: n.seq,
            from: None,
            preview: Some(n.event.clone()),
            origin_us: origin,
        });
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(url: &str, mime: &str, size: u64) -> Attachment {
        Attachment {
            url: url.into(),
            mime: mime.into(),
            size,
            width: None,
            height: None,
            name: None,
        }
    }

    fn refused(list: &[Attachment]) -> String {
        match validate_attachments(list) {
            Err(ChatError::BadAttachment(m)) => m,
            other => panic!("expected bad_attachment, got {other:?}"),
        }
    }

    #[test]
    fn attachment_metadata_is_validated() {
        let ok = att("https://cdn.example/p/a.jpg?x=1", "image/jpeg", 10);
        validate_attachments(std::slice::from_ref(&ok)).unwrap();
        validate_attachments(&[att("https://h", "application/vnd.api+json", 1)]).unwrap();
        assert!(refused(&[att("http://cdn.example/a.jpg", "image/jpeg", 1)]).contains("https"));
        assert!(refused(&[att("javascript:alert(1)", "image/jpeg", 1)]).contains("https"));
        assert!(refused(&[att("https:///nohost", "image/jpeg", 1)]).contains("host"));
        assert!(refused(&[att("https://h/a b", "image/jpeg", 1)]).contains("spaces"));
        for mime in [
            "image",
            "image/",
            "/jpeg",
            "image/jpeg; q=1",
            "im age/x",
            "",
        ] {
            assert!(
                refused(&[att("https://h", mime, 1)]).contains("mime"),
                "{mime}"
            );
        }
        assert!(refused(&[att("https://h", "image/png", 0)]).contains("size"));
        assert!(
            refused(&[att("https://h", "image/png", MAX_ATTACHMENT_BYTES + 1)]).contains("size")
        );
        let mut wide = ok.clone();
        wide.width = Some(0);
        assert!(refused(&[wide]).contains("width"));
        let mut tall = ok.clone();
        tall.height = Some(MAX_ATTACHMENT_DIMENSION + 1);
        assert!(refused(&[tall]).contains("height"));
        let mut named = ok.clone();
        named.name = Some("x".repeat(MAX_ATTACHMENT_NAME_CHARS + 1));
        assert!(refused(&[named]).contains("name"));
        let many = vec![ok; MAX_ATTACHMENTS + 1];
        assert!(refused(&many).contains("at most"));
    }
}
