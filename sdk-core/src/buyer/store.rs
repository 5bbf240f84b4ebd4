//! The buyer's local SQLite store: the chat timeline of every joined room
//! (so the app renders history offline) and the outbox of messages written
//! here that the server has not acknowledged yet. Both live in one table,
//! `messages`: a row is pending or failed (no seq yet) or stored (with the
//! room's seq). `rooms.last_seq` is the highest seq delivered to the app in
//! gap-free order; everything at or below it is in the table (up to the
//! per-room trim bound).
//!
//! One connection behind a mutex: the SDK task writes, app threads read.
//! WAL mode, schema versioned with `PRAGMA user_version`.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use waypost_protocol::{ChatMessage, MessageKind, ReceiptKind};

use super::types::{ChatEntry, MessageStatus, Receipts};
use crate::error::WaypostError;

/// Stored messages kept per room (oldest trimmed beyond this).
pub const MAX_MESSAGES_PER_ROOM: u64 = 2_000;
/// Pending + failed messages allowed at once (all rooms).
pub const MAX_OUTBOX: usize = 1_000;
/// Longest message body accepted locally (the server has its own limit).
pub const MAX_BODY_BYTES: usize = 16 * 1024;
/// Attachments per message (the server's limit).
pub const MAX_ATTACHMENTS: usize = 10;

const SCHEMA_VERSION: i64 = 2;

/// Columns of a [`ChatEntry`], in `row_to_entry` order.
const ENTRY_COLUMNS: &str =
    "room, seq, id, sender, client_id, body, ts, status, edited, deleted, attachments";

/// Attachments stored as their wire JSON (`NULL` for none).
fn attachments_json(list: &[waypost_protocol::Attachment]) -> Option<String> {
    if list.is_empty() {
        None
    } else {
        serde_json::to_string(list).ok()
    }
}

fn attachments_from(json: Option<String>) -> Vec<waypost_protocol::Attachment> {
    json.and_then(|j| serde_json::from_str(&j).ok())
        .unwrap_or_default()
}

/// A message waiting in the outbox, oldest first: a new message, or an
/// edit (`kind` edit, the new body) or delete of this user's message
/// `ref_seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    pub room: String,
    pub client_id: String,
    pub body: String,
    pub attachments: Vec<waypost_protocol::Attachment>,
    pub attempts: u32,
    pub kind: Option<MessageKind>,
    pub ref_seq: Option<u64>,
}

/// The store. Cheap to share behind an `Arc`.
pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    /// Opens (creating and migrating) the database at `path`; `None` keeps
    /// it in memory (nothing survives the process).
    pub fn open(path: Option<&str>) -> Result<Self, WaypostError> {
        let conn = match path {
            Some(p) => Connection::open(p)?,
            None => Connection::open_in_memory()?,
        };
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version > SCHEMA_VERSION {
            return Err(WaypostError::Storage {
                code: crate::error::storage_code::IO.into(),
                details: format!(
                    "database schema {version} is newer than this SDK ({SCHEMA_VERSION})"
                ),
            });
        }
        if version < 1 {
            conn.execute_batch(
                "BEGIN;
                 CREATE TABLE IF NOT EXISTS messages (
                     pk INTEGER PRIMARY KEY AUTOINCREMENT,
                     room TEXT NOT NULL,
                     seq INTEGER,
                     id TEXT,
                     sender TEXT NOT NULL,
                     client_id TEXT NOT NULL,
                     body TEXT NOT NULL,
                     ts INTEGER NOT NULL,
                     status TEXT NOT NULL,
                     attempts INTEGER NOT NULL DEFAULT 0
                 );
                 CREATE UNIQUE INDEX IF NOT EXISTS messages_room_seq
                     ON messages(room, seq) WHERE seq IS NOT NULL;
                 CREATE UNIQUE INDEX IF NOT EXISTS messages_room_client
                     ON messages(room, sender, client_id);
                 CREATE INDEX IF NOT EXISTS messages_outbox ON messages(status, pk);
                 CREATE TABLE IF NOT EXISTS rooms (
                     room TEXT PRIMARY KEY,
                     last_seq INTEGER NOT NULL
                 );
                 PRAGMA user_version = 1;
                 COMMIT;",
            )?;
        }
        // Small settings (the push device id, push sync cursors); created
        // on any schema version, nothing depends on it being there before.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);",
        )?;
        if version < 2 {
            // Edits and deletes (issue 22): the amendment rows keep the
            // room's seqs gap-free; the rows they refer to carry the result.
            conn.execute_batch(
                "BEGIN;
                 ALTER TABLE messages ADD COLUMN kind TEXT;
                 ALTER TABLE messages ADD COLUMN ref_seq INTEGER;
                 ALTER TABLE messages ADD COLUMN edited INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
                 ALTER TABLE messages ADD COLUMN attachments TEXT;
                 CREATE TABLE IF NOT EXISTS receipts (
                     room TEXT NOT NULL,
                     user TEXT NOT NULL,
                     delivered INTEGER NOT NULL,
                     read INTEGER NOT NULL,
                     PRIMARY KEY (room, user)
                 );
                 PRAGMA user_version = 2;
                 COMMIT;",
            )?;
        }
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    /// A stored setting.
    pub fn get(&self, key: &str) -> Result<Option<String>, WaypostError> {
        let conn = self.conn.lock();
        Ok(conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Stores a setting.
    pub fn set(&self, key: &str, value: &str) -> Result<(), WaypostError> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO kv (key, value) VALUES (?1, ?2)
                 ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                params![key, value],
            )
            .map(|_| ())
        })
    }

    /// Removes a setting.
    pub fn remove(&self, key: &str) -> Result<(), WaypostError> {
        self.tx(|tx| {
            tx.execute("DELETE FROM kv WHERE key = ?1", [key])
                .map(|_| ())
        })
    }

    fn tx<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, WaypostError> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction()?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    /// Highest seq delivered in order for `room` (0 when none).
    pub fn last_seq(&self, room: &str) -> Result<u64, WaypostError> {
        let conn = self.conn.lock();
        let v: Option<i64> = conn
            .query_row("SELECT last_seq FROM rooms WHERE room = ?1", [room], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Moves `room`'s delivery point without storing messages (history was
    /// trimmed on the server, or the room started over).
    pub fn set_last_seq(&self, room: &str, seq: u64) -> Result<(), WaypostError> {
        self.tx(|tx| set_last_seq(tx, room, seq))
    }

    /// Puts a message written here in the outbox.
    pub fn enqueue(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
        body: &str,
        ts: i64,
    ) -> Result<ChatEntry, WaypostError> {
        self.enqueue_with(room, me, client_id, body, &[], ts)
    }

    /// [`Store::enqueue`] with attachment metadata.
    pub fn enqueue_with(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
        body: &str,
        attachments: &[waypost_protocol::Attachment],
        ts: i64,
    ) -> Result<ChatEntry, WaypostError> {
        if attachments.len() > MAX_ATTACHMENTS {
            return Err(WaypostError::InvalidArgument {
                details: format!("at most {MAX_ATTACHMENTS} attachments per message"),
            });
        }
        if body.len() > MAX_BODY_BYTES {
            return Err(WaypostError::InvalidArgument {
                details: format!("message body over {MAX_BODY_BYTES} bytes"),
            });
        }
        self.tx(|tx| {
            let queued: i64 = tx.query_row(
                "SELECT COUNT(*) FROM messages WHERE status IN ('pending','failed')",
                [],
                |r| r.get(0),
            )?;
            if queued as usize >= MAX_OUTBOX {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO messages (room, sender, client_id, body, ts, status, attachments)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6)",
                params![room, me, client_id, body, ts, attachments_json(attachments)],
            )?;
            Ok(Some(()))
        })?
        .ok_or(WaypostError::Busy {
            details: "too many queued requests".into(),
        })?;
        Ok(ChatEntry {
            room: room.to_owned(),
            seq: None,
            id: None,
            sender: me.to_owned(),
            client_id: client_id.to_owned(),
            body: body.to_owned(),
            ts_ms: ts,
            status: MessageStatus::Pending,
            edited: false,
            deleted: false,
            attachments: attachments.iter().cloned().map(Into::into).collect(),
        })
    }

    /// Puts an edit (`body` is `Some`) or a delete of this user's message
    /// `ref_seq` in the outbox, behind the messages written before it: it
    /// goes out once connected, exactly once (the server keeps it under
    /// `client_id` and acks a resend with the original). Not listed in
    /// the timeline; the change shows when the server's entry arrives.
    pub fn enqueue_amend(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
        ref_seq: u64,
        body: Option<&str>,
        ts: i64,
    ) -> Result<(), WaypostError> {
        let kind = if body.is_some() {
            MessageKind::Edit
        } else {
            MessageKind::Delete
        };
        self.tx(|tx| {
            let queued: i64 = tx.query_row(
                "SELECT COUNT(*) FROM messages WHERE status IN ('pending','failed')",
                [],
                |r| r.get(0),
            )?;
            if queued as usize >= MAX_OUTBOX {
                return Ok(None);
            }
            tx.execute(
                "INSERT INTO messages (room, sender, client_id, body, ts, status, kind, ref_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, 'pending', ?6, ?7)",
                params![
                    room,
                    me,
                    client_id,
                    body.unwrap_or_default(),
                    ts,
                    kind_str(kind),
                    ref_seq as i64
                ],
            )?;
            Ok(Some(()))
        })?
        .ok_or(WaypostError::Busy {
            details: "too many queued requests".into(),
        })
    }

    /// The kind and target of a queued edit or delete (`None` for a
    /// message, or when nothing is stored under `client_id`).
    pub fn amendment(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
    ) -> Result<Option<(MessageKind, u64)>, WaypostError> {
        let conn = self.conn.lock();
        let row: Option<(Option<String>, Option<i64>)> = conn
            .query_row(
                "SELECT kind, ref_seq FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3",
                params![room, me, client_id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(row.and_then(
            |(kind, ref_seq)| match (kind_from(kind.as_deref()), ref_seq) {
                (Some(k @ (MessageKind::Edit | MessageKind::Delete)), Some(seq)) => {
                    Some((k, seq.max(0) as u64))
                }
                _ => None,
            },
        ))
    }

    /// Drops an unsent entry (an edit or delete given up on).
    pub fn discard(&self, room: &str, me: &str, client_id: &str) -> Result<bool, WaypostError> {
        self.tx(|tx| {
            Ok(tx.execute(
                "DELETE FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3
                     AND status IN ('pending','failed')",
                params![room, me, client_id],
            )? > 0)
        })
    }

    /// Pending messages in the order they were written, at most `limit`.
    pub fn outbox(&self, limit: usize) -> Result<Vec<Outgoing>, WaypostError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT room, client_id, body, attempts, attachments, kind, ref_seq FROM messages
             WHERE status = 'pending' ORDER BY pk LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            Ok(Outgoing {
                room: r.get(0)?,
                client_id: r.get(1)?,
                body: r.get(2)?,
                attempts: r.get::<_, i64>(3)?.max(0) as u32,
                attachments: attachments_from(r.get(4)?),
                kind: kind_from(r.get::<_, Option<String>>(5)?.as_deref()),
                ref_seq: r.get::<_, Option<i64>>(6)?.map(|s| s.max(0) as u64),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Counts one more send of `client_id`; returns the new count.
    pub fn count_attempt(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
    ) -> Result<u32, WaypostError> {
        self.tx(|tx| {
            tx.execute(
                "UPDATE messages SET attempts = attempts + 1
                 WHERE room = ?1 AND sender = ?2 AND client_id = ?3",
                params![room, me, client_id],
            )?;
            let n: Option<i64> = tx
                .query_row(
                    "SELECT attempts FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3",
                    params![room, me, client_id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(n.unwrap_or(0).max(0) as u32)
        })
    }

    /// Records the server's ack of a message written here. Returns the entry
    /// when this changed its status (pending or failed → sent).
    pub fn ack(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
        seq: u64,
        id: &str,
    ) -> Result<Option<ChatEntry>, WaypostError> {
        self.tx(|tx| {
            let Some(mut entry) = entry_by_client(tx, room, me, client_id)? else {
                return Ok(None);
            };
            if entry.status == MessageStatus::Sent {
                return Ok(None);
            }
            // A different row may hold this seq only if the room started
            // over on the server; the ack is authoritative.
            tx.execute(
                "DELETE FROM messages WHERE room = ?1 AND seq = ?2 AND NOT (sender = ?3 AND client_id = ?4)",
                params![room, seq as i64, me, client_id],
            )?;
            tx.execute(
                "UPDATE messages SET seq = ?4, id = ?5, status = 'sent'
                 WHERE room = ?1 AND sender = ?2 AND client_id = ?3",
                params![room, me, client_id, seq as i64, id],
            )?;
            entry.seq = Some(seq);
            entry.id = Some(id.to_owned());
            entry.status = MessageStatus::Sent;
            Ok(Some(entry))
        })
    }

    /// Stores `msg` as the next message of its room's timeline and moves
    /// `last_seq` to its seq. Returns the entry to show and whether it was
    /// one of this user's pending (or failed) messages that is now sent.
    /// An edit or delete is stored too (it holds its seq) and applied to
    /// the message it refers to; the entry to show is then that message as
    /// changed, `None` when it is not stored here (trimmed).
    pub fn apply(
        &self,
        msg: &ChatMessage,
        me: &str,
    ) -> Result<(Option<ChatEntry>, bool), WaypostError> {
        self.tx(|tx| {
            let before = entry_by_client(tx, &msg.room, &msg.from, &msg.client_id)?;
            let was_unsent = before.as_ref().is_some_and(|e| {
                matches!(e.status, MessageStatus::Pending | MessageStatus::Failed)
            });
            let mut entry = ChatEntry::from_wire(msg, me);
            if let Some(b) = before.as_ref().filter(|b| b.sender == me) {
                // Keep the text as written; the server stored the same.
                entry.body = b.body.clone();
                entry.status = MessageStatus::Sent;
            }
            tx.execute(
                "DELETE FROM messages WHERE room = ?1 AND seq = ?2 AND NOT (sender = ?3 AND client_id = ?4)",
                params![msg.room, msg.seq as i64, msg.from, msg.client_id],
            )?;
            let kind = msg.kind.map(kind_str);
            tx.execute(
                "INSERT INTO messages (room, seq, id, sender, client_id, body, ts, status, kind, ref_seq, attachments)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(room, sender, client_id) DO UPDATE SET
                     seq = excluded.seq, id = excluded.id, ts = excluded.ts,
                     status = excluded.status",
                params![
                    msg.room,
                    msg.seq as i64,
                    msg.id,
                    msg.from,
                    msg.client_id,
                    entry.body,
                    msg.ts,
                    entry.status.as_str(),
                    kind,
                    msg.ref_seq.map(|s| s as i64),
                    attachments_json(&msg.attachments),
                ],
            )?;
            set_last_seq(tx, &msg.room, msg.seq)?;
            let shown = match (msg.kind, msg.ref_seq) {
                (Some(MessageKind::Edit), Some(target)) => {
                    tx.execute(
                        "UPDATE messages SET body = ?3, edited = 1
                         WHERE room = ?1 AND seq = ?2 AND deleted = 0",
                        params![msg.room, target as i64, msg.body],
                    )?;
                    entry_by_seq(tx, &msg.room, target)?
                }
                (Some(MessageKind::Delete), Some(target)) => {
                    tx.execute(
                        "UPDATE messages SET body = '', deleted = 1 WHERE room = ?1 AND seq = ?2",
                        params![msg.room, target as i64],
                    )?;
                    entry_by_seq(tx, &msg.room, target)?
                }
                _ => Some(entry),
            };
            if msg.seq > MAX_MESSAGES_PER_ROOM {
                tx.execute(
                    "DELETE FROM messages WHERE room = ?1 AND seq IS NOT NULL AND seq <= ?2",
                    params![msg.room, (msg.seq - MAX_MESSAGES_PER_ROOM) as i64],
                )?;
            }
            Ok((shown, was_unsent))
        })
    }

    /// Marks a pending message failed; returns the entry when it changed.
    pub fn fail(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
    ) -> Result<Option<ChatEntry>, WaypostError> {
        self.set_unsent_status(
            room,
            me,
            client_id,
            MessageStatus::Pending,
            MessageStatus::Failed,
        )
    }

    /// Puts a failed message back in the outbox (attempts start over).
    pub fn retry(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
    ) -> Result<Option<ChatEntry>, WaypostError> {
        self.set_unsent_status(
            room,
            me,
            client_id,
            MessageStatus::Failed,
            MessageStatus::Pending,
        )
    }

    fn set_unsent_status(
        &self,
        room: &str,
        me: &str,
        client_id: &str,
        from: MessageStatus,
        to: MessageStatus,
    ) -> Result<Option<ChatEntry>, WaypostError> {
        self.tx(|tx| {
            let n = tx.execute(
                "UPDATE messages SET status = ?5, attempts = CASE WHEN ?5 = 'pending' THEN 0 ELSE attempts END
                 WHERE room = ?1 AND sender = ?2 AND client_id = ?3 AND status = ?4",
                params![room, me, client_id, from.as_str(), to.as_str()],
            )?;
            if n == 0 {
                return Ok(None);
            }
            entry_by_client(tx, room, me, client_id)
        })
    }

    /// The room's timeline for rendering: the newest `limit` stored messages
    /// in seq order, then this user's pending and failed ones in the order
    /// they were written.
    pub fn messages(&self, room: &str, limit: u32) -> Result<Vec<ChatEntry>, WaypostError> {
        let conn = self.conn.lock();
        let mut out = Vec::new();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM (
                 SELECT * FROM messages WHERE room = ?1 AND seq IS NOT NULL
                     AND (kind IS NULL OR kind = 'system')
                 ORDER BY seq DESC LIMIT ?2
             ) ORDER BY seq"
        ))?;
        for row in stmt.query_map(params![room, limit as i64], row_to_entry)? {
            out.push(row?);
        }
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM messages WHERE room = ?1 AND seq IS NULL
                 AND (kind IS NULL OR kind = 'system') ORDER BY pk"
        ))?;
        for row in stmt.query_map([room], row_to_entry)? {
            out.push(row?);
        }
        Ok(out)
    }

    /// Moves `user`'s marker in `room` up to `seq` (never back; `read` also
    /// moves `delivered`). Returns the markers when one moved.
    pub fn mark_receipt(
        &self,
        room: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<Option<Receipts>, WaypostError> {
        let read = if kind == ReceiptKind::Read { seq } else { 0 };
        self.tx(|tx| {
            let before = receipts_of(tx, room, user)?;
            tx.execute(
                "INSERT INTO receipts (room, user, delivered, read) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(room, user) DO UPDATE SET
                     delivered = MAX(delivered, excluded.delivered),
                     read = MAX(read, excluded.read)",
                params![room, user, seq as i64, read as i64],
            )?;
            let after = receipts_of(tx, room, user)?;
            Ok((after != before).then_some(after).flatten())
        })
    }

    /// Every known participant's markers in `room`, by user.
    pub fn receipts(&self, room: &str) -> Result<Vec<Receipts>, WaypostError> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare_cached(
            "SELECT user, delivered, read FROM receipts WHERE room = ?1 ORDER BY user",
        )?;
        let rows = stmt.query_map([room], row_to_receipts)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Stored messages from others (plain and system, not deleted) above
    /// `me`'s read marker in `room`.
    pub fn unread_count(&self, room: &str, me: &str) -> Result<u64, WaypostError> {
        let conn = self.conn.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM messages WHERE room = ?1 AND seq IS NOT NULL
                 AND sender <> ?2 AND deleted = 0 AND (kind IS NULL OR kind = 'system')
                 AND seq > COALESCE((SELECT read FROM receipts WHERE room = ?1 AND user = ?2), 0)",
            params![room, me],
            |r| r.get(0),
        )?;
        Ok(n.max(0) as u64)
    }
}

fn kind_from(s: Option<&str>) -> Option<MessageKind> {
    match s? {
        "edit" => Some(MessageKind::Edit),
        "delete" => Some(MessageKind::Delete),
        "system" => Some(MessageKind::System),
        _ => None,
    }
}

fn kind_str(k: MessageKind) -> &'static str {
    match k {
        MessageKind::Edit => "edit",
        MessageKind::Delete => "delete",
        MessageKind::System => "system",
    }
}

fn receipts_of(tx: &Transaction<'_>, room: &str, user: &str) -> rusqlite::Result<Option<Receipts>> {
    tx.query_row(
        "SELECT user, delivered, read FROM receipts WHERE room = ?1 AND user = ?2",
        params![room, user],
        row_to_receipts,
    )
    .optional()
}

fn row_to_receipts(r: &rusqlite::Row<'_>) -> rusqlite::Result<Receipts> {
    Ok(Receipts {
        user: r.get(0)?,
        delivered: r.get::<_, i64>(1)?.max(0) as u64,
        read: r.get::<_, i64>(2)?.max(0) as u64,
    })
}

fn entry_by_seq(tx: &Transaction<'_>, room: &str, seq: u64) -> rusqlite::Result<Option<ChatEntry>> {
    tx.query_row(
        &format!("SELECT {ENTRY_COLUMNS} FROM messages WHERE room = ?1 AND seq = ?2"),
        params![room, seq as i64],
        row_to_entry,
    )
    .optional()
}

fn set_last_seq(tx: &Transaction<'_>, room: &str, seq: u64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO rooms (room, last_seq) VALUES (?1, ?2)
         ON CONFLICT(room) DO UPDATE SET last_seq = excluded.last_seq",
        params![room, seq as i64],
    )?;
    Ok(())
}

fn entry_by_client(
    tx: &Transaction<'_>,
    room: &str,
    sender: &str,
    client_id: &str,
) -> rusqlite::Result<Option<ChatEntry>> {
    tx.query_row(
        &format!(
            "SELECT {ENTRY_COLUMNS} FROM messages WHERE room = ?1 AND sender = ?2 AND client_id = ?3"
        ),
        params![room, sender, client_id],
        row_to_entry,
    )
    .optional()
}

fn row_to_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<ChatEntry> {
    Ok(ChatEntry {
        room: r.get(0)?,
        seq: r.get::<_, Option<i64>>(1)?.map(|s| s.max(0) as u64),
        id: r.get(2)?,
        sender: r.get(3)?,
        client_id: r.get(4)?,
        body: r.get(5)?,
        ts_ms: r.get(6)?,
        status: MessageStatus::parse(&r.get::<_, String>(7)?),
        edited: r.get::<_, i64>(8)? != 0,
        deleted: r.get::<_, i64>(9)? != 0,
        attachments: attachments_from(r.get(10)?)
            .into_iter()
            .map(Into::into)
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(room: &str, seq: u64, from: &str, cid: &str) -> ChatMessage {
        ChatMessage {
            room: room.into(),
            seq,
            id: format!("{room}-{seq}"),
            from: from.into(),
            client_id: cid.into(),
            body: format!("body {seq}"),
            ts: 1000 + seq as i64,
            ..Default::default()
        }
    }

    #[test]
    fn outbox_ack_and_timeline() {
        let s = Store::open(None).unwrap();
        let e = s.enqueue("r", "me", "c1", "hello", 5).unwrap();
        assert_eq!(e.status, MessageStatus::Pending);
        s.enqueue("r", "me", "c2", "again", 6).unwrap();
        let ob = s.outbox(10).unwrap();
        assert_eq!(
            ob.iter().map(|o| o.client_id.as_str()).collect::<Vec<_>>(),
            ["c1", "c2"]
        );
        assert_eq!(s.count_attempt("r", "me", "c1").unwrap(), 1);
        assert_eq!(s.count_attempt("r", "me", "c1").unwrap(), 2);

        // Someone else's message, then our ack, then the echo of ours.
        let (e, own) = s.apply(&wire("r", 1, "vendor", "v1"), "me").unwrap();
        assert_eq!((e.unwrap().status, own), (MessageStatus::Received, false));
        let acked = s.ack("r", "me", "c1", 2, "r-2").unwrap().unwrap();
        assert_eq!(acked.status, MessageStatus::Sent);
        assert!(
            s.ack("r", "me", "c1", 2, "r-2").unwrap().is_none(),
            "second ack is a no-op"
        );
        let (e, own) = s.apply(&wire("r", 2, "me", "c1"), "me").unwrap();
        let e = e.unwrap();
        assert_eq!(e.body, "hello");
        assert_eq!(e.status, MessageStatus::Sent);
        assert!(!own, "already sent by the ack");
        assert_eq!(s.last_seq("r").unwrap(), 2);
        assert_eq!(s.outbox(10).unwrap().len(), 1);

        let all = s.messages("r", 100).unwrap();
        let seqs: Vec<_> = all.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [Some(1), Some(2), None]);
        assert_eq!(all[2].client_id, "c2");
    }

    #[test]
    fn edits_deletes_receipts_and_unread() {
        let s = Store::open(None).unwrap();
        for seq in 1..=3 {
            s.apply(&wire("r", seq, "vendor", &format!("v{seq}")), "me")
                .unwrap();
        }
        let mut edit = wire("r", 4, "vendor", "edit-1-x");
        edit.kind = Some(MessageKind::Edit);
        edit.ref_seq = Some(1);
        edit.body = "fixed".into();
        let (shown, _) = s.apply(&edit, "me").unwrap();
        let shown = shown.unwrap();
        assert_eq!(
            (shown.seq, shown.body.as_str(), shown.edited),
            (Some(1), "fixed", true)
        );
        let mut del = wire("r", 5, "vendor", "delete-2");
        del.kind = Some(MessageKind::Delete);
        del.ref_seq = Some(2);
        let (shown, _) = s.apply(&del, "me").unwrap();
        let shown = shown.unwrap();
        assert_eq!(
            (shown.seq, shown.body.as_str(), shown.deleted),
            (Some(2), "", true)
        );
        // An edit of a deleted message changes nothing; one of a trimmed
        // message shows nothing.
        let mut late = wire("r", 6, "vendor", "edit-2-y");
        late.kind = Some(MessageKind::Edit);
        late.ref_seq = Some(2);
        let (shown, _) = s.apply(&late, "me").unwrap();
        assert_eq!(shown.unwrap().body, "");
        let mut gone = wire("r", 7, "vendor", "edit-0-z");
        gone.kind = Some(MessageKind::Edit);
        gone.ref_seq = Some(99);
        assert_eq!(s.apply(&gone, "me").unwrap().0, None);
        assert_eq!(s.last_seq("r").unwrap(), 7);
        // The timeline lists the messages, not the amendments.
        let seqs: Vec<_> = s
            .messages("r", 100)
            .unwrap()
            .iter()
            .map(|e| e.seq)
            .collect();
        assert_eq!(seqs, [Some(1), Some(2), Some(3)]);

        assert_eq!(
            s.unread_count("r", "me").unwrap(),
            2,
            "1 and 3; 2 is deleted"
        );
        let r = s
            .mark_receipt("r", "me", ReceiptKind::Read, 1)
            .unwrap()
            .unwrap();
        assert_eq!((r.delivered, r.read), (1, 1));
        assert_eq!(s.unread_count("r", "me").unwrap(), 1);
        assert!(s
            .mark_receipt("r", "me", ReceiptKind::Delivered, 1)
            .unwrap()
            .is_none());
        assert!(
            s.mark_receipt("r", "me", ReceiptKind::Read, 0)
                .unwrap()
                .is_none(),
            "never back"
        );
        s.mark_receipt("r", "vendor", ReceiptKind::Delivered, 7)
            .unwrap();
        let all = s.receipts("r").unwrap();
        assert_eq!(
            all.iter()
                .map(|r| (r.user.as_str(), r.delivered, r.read))
                .collect::<Vec<_>>(),
            [("me", 1, 1), ("vendor", 7, 0)]
        );
    }

    #[test]
    fn attachments_survive_the_outbox_and_the_timeline() {
        let s = Store::open(None).unwrap();
        let a = waypost_protocol::Attachment {
            url: "https://cdn.example/p.jpg".into(),
            mime: "image/jpeg".into(),
            size: 10,
            width: Some(4),
            height: None,
            name: None,
        };
        let e = s
            .enqueue_with("r", "me", "c1", "", std::slice::from_ref(&a), 1)
            .unwrap();
        assert_eq!(e.attachments, vec![a.clone().into()]);
        assert_eq!(s.outbox(1).unwrap()[0].attachments, vec![a.clone()]);
        let mut m = wire("r", 1, "vendor", "v1");
        m.attachments = vec![a.clone()];
        s.apply(&m, "me").unwrap();
        let stored = s.messages("r", 10).unwrap();
        assert_eq!(stored[0].attachments, vec![a.clone().into()]);
        let many = vec![a; MAX_ATTACHMENTS + 1];
        assert!(s.enqueue_with("r", "me", "c2", "", &many, 1).is_err());
    }

    #[test]
    fn echo_before_ack_marks_sent_once() {
        let s = Store::open(None).unwrap();
        s.enqueue("r", "me", "c1", "hi", 5).unwrap();
        let (e, own) = s.apply(&wire("r", 1, "me", "c1"), "me").unwrap();
        assert!(own);
        assert_eq!(e.unwrap().status, MessageStatus::Sent);
        assert!(s.ack("r", "me", "c1", 1, "r-1").unwrap().is_none());
        assert!(s.outbox(10).unwrap().is_empty());
        assert_eq!(s.messages("r", 10).unwrap().len(), 1);
    }

    #[test]
    fn fail_and_retry() {
        let s = Store::open(None).unwrap();
        s.enqueue("r", "me", "c1", "hi", 5).unwrap();
        s.count_attempt("r", "me", "c1").unwrap();
        let f = s.fail("r", "me", "c1").unwrap().unwrap();
        assert_eq!(f.status, MessageStatus::Failed);
        assert!(s.outbox(10).unwrap().is_empty());
        assert!(s.fail("r", "me", "c1").unwrap().is_none());
        let p = s.retry("r", "me", "c1").unwrap().unwrap();
        assert_eq!(p.status, MessageStatus::Pending);
        assert_eq!(s.outbox(10).unwrap()[0].attempts, 0);
    }

    #[test]
    fn limits_and_trim() {
        let s = Store::open(None).unwrap();
        assert!(matches!(
            s.enqueue("r", "me", "big", &"x".repeat(MAX_BODY_BYTES + 1), 1),
            Err(WaypostError::InvalidArgument { .. })
        ));
        for i in 0..MAX_OUTBOX {
            s.enqueue("r", "me", &format!("c{i}"), "x", 1).unwrap();
        }
        assert_eq!(
            s.enqueue("r", "me", "one-more", "x", 1),
            Err(WaypostError::Busy {
                details: "too many queued requests".into()
            })
        );

        for seq in 1..=MAX_MESSAGES_PER_ROOM + 5 {
            s.apply(&wire("t", seq, "v", &format!("v{seq}")), "me")
                .unwrap();
        }
        let all = s.messages("t", u32::MAX).unwrap();
        assert_eq!(all.len() as u64, MAX_MESSAGES_PER_ROOM);
        assert_eq!(all[0].seq, Some(6));
    }

    #[test]
    fn survives_reopen() {
        let dir = std::env::temp_dir().join(format!("waypost-buyer-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("chat.db");
        let path = path.to_str().unwrap();
        {
            let s = Store::open(Some(path)).unwrap();
            s.enqueue("r", "me", "c1", "offline", 1).unwrap();
            s.apply(&wire("r", 1, "v", "v1"), "me").unwrap();
        }
        let s = Store::open(Some(path)).unwrap();
        assert_eq!(s.last_seq("r").unwrap(), 1);
        assert_eq!(s.outbox(10).unwrap()[0].body, "offline");
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
