//! Storage for chat, presence and vendor notifications, each behind its own
//! narrow trait so the memory and Redis implementations
//! ([`super::chat_memory`], [`super::chat_redis`]) can be swapped and
//! checked by one conformance suite (`chat_tests.rs`).
//!
//! These traits only store. Live fan-out goes through
//! [`super::Engine::publish`], so it reaches every process on Redis. A
//! message is stored (and gets its seq) before it is published, which is
//! what lets a receiver fill a gap from history: if seq `n` arrived, every
//! seq below `n` is already readable (see [`SeqCursor`]).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use waypost_protocol::{Attachment, ChatMessage, MessageKind, ParticipantReceipts, ReceiptKind};

use super::EngineError;

/// A message to store; the store assigns `seq` and `id`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NewMessage {
    pub room: String,
    pub from: String,
    pub client_id: String,
    pub body: String,
    pub ts: i64,
    pub kind: Option<MessageKind>,
    pub ref_seq: Option<u64>,
    pub attachments: Vec<Attachment>,
}

impl NewMessage {
    /// The stored form, once the store assigned `seq` and `id`.
    pub fn into_message(self, seq: u64, id: String) -> ChatMessage {
        ChatMessage {
            room: self.room,
            seq,
            id,
            from: self.from,
            client_id: self.client_id,
            body: self.body,
            ts: self.ts,
            kind: self.kind,
            ref_seq: self.ref_seq,
            attachments: self.attachments,
        }
    }
}

/// What an append did.
#[derive(Debug, Clone, PartialEq)]
pub enum Appended {
    /// Stored now with a fresh seq; publish it.
    New(ChatMessage),
    /// `(from, client_id)` was stored before: this is the original message,
    /// nothing new was stored and nothing should be published.
    Duplicate(ChatMessage),
}

impl Appended {
    pub fn message(&self) -> &ChatMessage {
        match self {
            Appended::New(m) | Appended::Duplicate(m) => m,
        }
    }
}

/// Messages with seq above some point, read together with the room's
/// highest seq so a reader knows exactly what it is missing.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct History {
    /// Lowest seq first, consecutive, at most the requested limit.
    pub messages: Vec<ChatMessage>,
    /// Highest seq ever assigned in the room (0 when empty).
    pub high_seq: u64,
}

impl History {
    /// Whether every message after `after` up to `high_seq` is in
    /// `messages` (nothing trimmed, nothing cut by the limit).
    pub fn complete_after(&self, after: u64) -> bool {
        if after > self.high_seq {
            // The client knows seqs the server never assigned (the room
            // expired and started over): it cannot be resumed.
            return false;
        }
        let missing = self.high_seq - after;
        missing == 0
            || (self.messages.len() as u64 == missing
                && self.messages.first().is_some_and(|m| m.seq == after + 1))
    }

    /// Whether messages above the returned ones exist.
    pub fn more(&self) -> bool {
        self.messages.last().is_some_and(|m| m.seq < self.high_seq)
    }
}

/// Chat history per room.
///
/// Guarantees: seqs in a room start at 1 and are gap-free (assigned
/// atomically with the store); `(from, client_id)` is unique per room while
/// the original message is retained, a repeat returns the original and
/// stores nothing; history keeps at most the configured number of messages
/// per room (oldest trimmed) and an idle room expires after the configured
/// TTL (after which its seqs start over).
#[async_trait]
pub trait ChatStore: Send + Sync + 'static {
    async fn append(&self, msg: NewMessage) -> Result<Appended, EngineError>;

    /// Messages with `seq > after`, lowest first, at most `limit`, and the
    /// room's highest seq, read atomically.
    async fn after(&self, room: &str, after: u64, limit: usize) -> Result<History, EngineError>;

    /// Moves `user`'s `kind` marker in `room` up to `seq`, atomically: never
    /// down, never above the room's highest seq; `read` also moves
    /// `delivered`. Returns the user's markers when one moved, `None` when
    /// nothing moved (or the room already holds markers of the maximum
    /// number of users and `user` is new). Markers expire with the room.
    async fn mark(
        &self,
        room: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<Option<ParticipantReceipts>, EngineError>;

    /// Every user's markers in `room`, sorted by user.
    async fn receipts(&self, room: &str) -> Result<Vec<ParticipantReceipts>, EngineError>;
}

/// Presence of users in rooms, per device (connection), with expiry.
///
/// A user is online in a room while at least one of its connections has an
/// unexpired entry there. Entries expire `ttl` after their last join or
/// heartbeat, so a device that vanishes (process killed, network gone)
/// goes offline without a leave.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Adds or refreshes `conn`'s entry for `user` in `room` until
    /// `now_ms + ttl`. Returns the presence changes it caused: `user` coming
    /// online, and users whose last entry had expired (gone offline).
    async fn join(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError>;

    /// Removes `conn`'s entry. Reports `user` going offline when it was its
    /// last unexpired entry, plus any expired users.
    async fn leave(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError>;

    /// Users online in `room` now, sorted, at most `limit`.
    async fn online(
        &self,
        room: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, EngineError>;
}

/// Users that came online or went offline because of one presence call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceChanges {
    pub online: Vec<String>,
    pub offline: Vec<String>,
}

/// A stored vendor notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Per vendor, gap-free, from 1; the SSE `id:` is its decimal form.
    pub seq: u64,
    pub event: String,
    pub data: serde_json::Value,
    pub ts: i64,
}

impl Notification {
    /// The event in `text/event-stream` form, ready to write.
    pub fn to_sse(&self) -> String {
        // serde_json's compact form never contains a raw newline, so the
        // data fits on one `data:` line.
        let data = serde_json::to_string(&self.data).unwrap_or_else(|_| "null".into());
        format!("id: {}\nevent: {}\ndata: {data}\n\n", self.seq, self.event)
    }
}

/// Notifications after some seq, read with the vendor's highest seq.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NotificationHistory {
    pub items: Vec<Notification>,
    pub high_seq: u64,
}

/// Vendor notification history: gap-free seq per vendor, bounded history,
/// expiring when idle.
#[async_trait]
pub trait NotificationStore: Send + Sync + 'static {
    async fn append(
        &self,
        vendor: &str,
        event: &str,
        data: serde_json::Value,
        now_ms: i64,
    ) -> Result<Notification, EngineError>;

    /// Notifications with `seq > after`, lowest first, at most `limit`.
    async fn after(
        &self,
        vendor: &str,
        after: u64,
        limit: usize,
    ) -> Result<NotificationHistory, EngineError>;
}

/// The three stores, as the app state holds them.
#[derive(Clone)]
pub struct ChatStores {
    pub chat: Arc<dyn ChatStore>,
    pub presence: Arc<dyn PresenceStore>,
    pub notifications: Arc<dyn NotificationStore>,
}

/// Where a live item stands relative to what a receiver already delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqStep {
    /// Already delivered (replayed, or a second copy): drop it.
    Duplicate,
    /// The next one: deliver it.
    Next,
    /// Items `from..=to` are missing before it: read them from history,
    /// deliver them, then this one.
    Gap { from: u64, to: u64 },
}

/// Per receiver and sequence (one room on one connection, one SSE stream):
/// turns live items that may arrive twice or out of order (several
/// publishers on several processes) into gap-free, in-order delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeqCursor {
    /// Highest seq delivered (0: none).
    pub delivered: u64,
}

impl SeqCursor {
    pub fn new(delivered: u64) -> Self {
        Self { delivered }
    }

    pub fn step(&self, seq: u64) -> SeqStep {
        if seq <= self.delivered {
            SeqStep::Duplicate
        } else if seq == self.delivered + 1 {
            SeqStep::Next
        } else {
            SeqStep::Gap {
                from: self.delivered + 1,
                to: seq - 1,
            }
        }
    }

    /// Records that `seq` was delivered (never moves backwards).
    pub fn advance(&mut self, seq: u64) {
        self.delivered = self.delivered.max(seq);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: format!("m{seq}"),
            from: "u".into(),
            client_id: format!("c{seq}"),
            body: "b".into(),
            ts: 0,
            ..Default::default()
        }
    }

    #[test]
    fn completeness_of_history() {
        let h = History {
            messages: vec![msg(4), msg(5)],
            high_seq: 5,
        };
        assert!(h.complete_after(3));
        assert!(h.complete_after(5), "nothing missing");
        assert!(!h.complete_after(2), "seq 3 was trimmed");
        assert!(!h.complete_after(9), "client ahead of the server");
        assert!(!h.more());
        let cut = History {
            messages: vec![msg(4)],
            high_seq: 5,
        };
        assert!(!cut.complete_after(3), "cut by the limit");
        assert!(cut.more());
        assert!(History::default().complete_after(0));
    }

    #[test]
    fn cursor_orders_and_dedupes() {
        let mut c = SeqCursor::new(3);
        assert_eq!(c.step(3), SeqStep::Duplicate);
        assert_eq!(c.step(4), SeqStep::Next);
        assert_eq!(c.step(7), SeqStep::Gap { from: 4, to: 6 });
        c.advance(7);
        assert_eq!(c.step(5), SeqStep::Duplicate, "late copy of a filled gap");
        c.advance(2);
        assert_eq!(c.delivered, 7);
    }

    #[test]
    fn notification_sse_form() {
        let n = Notification {
            seq: 7,
            event: "new-order".into(),
            data: serde_json::json!({"order": "o-1", "note": "a\nb"}),
            ts: 1,
        };
        assert_eq!(
            n.to_sse(),
            "id: 7\nevent: new-order\ndata: {\"note\":\"a\\nb\",\"order\":\"o-1\"}\n\n"
        );
    }
}
