//! In-process chat, presence and notification stores (the memory engine).
//! Each keeps a map of rooms (or vendors) bounded in count and in bytes:
//! when either bound is reached, entries idle longer than the TTL go first,
//! then the least recently used, so memory stays bounded. An evicted room
//! starts over like an expired Redis key (resuming clients are told
//! `recovered: false`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;
use parking_lot::Mutex;
use waypost_protocol::{ChatMessage, ParticipantReceipts, ReceiptKind};

use super::chat::{
    Appended, ChatStore, History, NewMessage, Notification, NotificationHistory, NotificationStore,
    PresenceChanges, PresenceStore,
};
use super::EngineError;
use crate::config::Limits;

const SHARDS: usize = 16;

/// Approximate heap bytes of a stored value (kept O(1) by a counter).
trait Weigh {
    fn weight(&self) -> usize;
}

/// Per-entry overhead counted on top of the payload (map slot, key, times).
const ENTRY_OVERHEAD: usize = 128;

#[derive(Default)]
struct Shard<V> {
    map: HashMap<String, (i64, V)>,
    /// Sum of `weight() + key + ENTRY_OVERHEAD` over `map`.
    bytes: usize,
}

fn entry_bytes<V: Weigh>(key: &str, v: &V) -> usize {
    key.len() + ENTRY_OVERHEAD + v.weight()
}

/// A bounded, sharded map whose values know when they were last used.
struct Shards<V> {
    shards: Vec<Mutex<Shard<V>>>,
    hasher: RandomState,
    /// Most keys per shard.
    cap: usize,
    /// Most bytes per shard.
    budget: usize,
}

impl<V: Default + Weigh> Shards<V> {
    fn new(total: usize, bytes: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: RandomState::new(),
            cap: total.div_ceil(SHARDS).max(1),
            budget: bytes.div_ceil(SHARDS).max(1),
        }
    }

    /// Runs `f` on the value of `key` (created when missing), marking it used
    /// at `now`; `idle_ms` decides which entries may be evicted to make room.
    fn with<R>(&self, key: &str, now: i64, idle_ms: i64, f: impl FnOnce(&mut V) -> R) -> R {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut guard = self.shards[i].lock();
        let shard = &mut *guard;
        let existed = shard.map.contains_key(key);
        if !existed && shard.map.len() >= self.cap {
            Self::evict(shard, key, now, idle_ms, |s| s.map.len() >= self.cap);
        }
        let (used, v) = shard
            .map
            .entry(key.to_owned())
            .or_insert_with(|| (now, V::default()));
        let before = if existed { entry_bytes(key, v) } else { 0 };
        if now - *used > idle_ms {
            // Expired while idle: start over, like a Redis key TTL.
            *v = V::default();
        }
        *used = now;
        let out = f(v);
        let after = entry_bytes(key, v);
        shard.bytes = (shard.bytes + after).saturating_sub(before);
        if shard.bytes > self.budget {
            Self::evict(shard, key, now, idle_ms, |s| s.bytes > self.budget);
        }
        out
    }

    /// Drops idle entries, then least recently used ones, never `keep`,
    /// while `over` holds.
    fn evict(
        shard: &mut Shard<V>,
        keep: &str,
        now: i64,
        idle_ms: i64,
        over: impl Fn(&Shard<V>) -> bool,
    ) {
        let mut freed = 0;
        shard.map.retain(|k, (used, v)| {
            let drop = k != keep && now - *used > idle_ms;
            if drop {
                freed += entry_bytes(k, v);
            }
            !drop
        });
        shard.bytes = shard.bytes.saturating_sub(freed);
        while over(shard) {
            let Some(oldest) = shard
                .map
                .iter()
                .filter(|(k, _)| k.as_str() != keep)
                .min_by_key(|(_, (used, _))| *used)
                .map(|(k, _)| k.clone())
            else {
                return;
            };
            if let Some((_, v)) = shard.map.remove(&oldest) {
                shard.bytes = shard.bytes.saturating_sub(entry_bytes(&oldest, &v));
            }
        }
    }

    /// Runs `f` on an existing, unexpired value without marking it used.
    fn read<R>(&self, key: &str, now: i64, idle_ms: i64, f: impl FnOnce(Option<&V>) -> R) -> R {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let shard = self.shards[i].lock();
        f(shard
            .map
            .get(key)
            .filter(|(used, _)| now - *used <= idle_ms)
            .map(|(_, v)| v))
    }

    #[cfg(test)]
    fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes).sum()
    }
}

#[derive(Default)]
struct Room {
    high_seq: u64,
    /// Consecutive seqs, oldest first, bounded.
    log: VecDeque<ChatMessage>,
    /// `from \u{1f} client_id` → seq, for retained messages only.
    by_client: HashMap<String, u64>,
    /// user → (delivered, read), at most `max_receipt_users`.
    receipts: BTreeMap<String, (u64, u64)>,
    /// Weight of `log`, `by_client` and `receipts`.
    bytes: usize,
}

impl Weigh for Room {
    fn weight(&self) -> usize {
        self.bytes
    }
}

/// Approximate bytes one message costs in a room (message, index entry).
fn message_bytes(m: &ChatMessage) -> usize {
    let attachments: usize = m
        .attachments
        .iter()
        .map(|a| a.url.len() + a.mime.len() + a.name.as_ref().map_or(0, String::len) + 64)
        .sum();
    m.room.len()
        + m.id.len()
        + m.body.len()
        + 2 * (m.from.len() + m.client_id.len())
        + attachments
        + 96
}

fn client_key(from: &str, client_id: &str) -> String {
    format!("{from}\u{1f}{client_id}")
}

/// Chat history in memory.
pub struct MemoryChatStore {
    rooms: Shards<Room>,
    history: usize,
    ttl_ms: i64,
    max_receipt_users: usize,
}

impl MemoryChatStore {
    pub fn new(limits: &Limits) -> Self {
        Self {
            rooms: Shards::new(limits.max_chat_rooms, limits.chat_memory_bytes),
            history: limits.chat_history_len.max(1),
            ttl_ms: limits.chat_room_ttl.as_millis() as i64,
            max_receipt_users: limits.max_presence_per_room.max(1),
        }
    }
}

#[cfg(test)]
impl MemoryChatStore {
    /// Bytes currently accounted for.
    pub(super) fn stored_bytes(&self) -> usize {
        self.rooms.bytes()
    }
}

#[async_trait]
impl ChatStore for MemoryChatStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, EngineError> {
        let now = crate::now_ms();
        let room_id = m.room.clone();
        Ok(self.rooms.with(&room_id, now, self.ttl_ms, |room| {
            let key = client_key(&m.from, &m.client_id);
            if let Some(&seq) = room.by_client.get(&key) {
                let first = room.log.front().map_or(0, |f| f.seq);
                let orig = seq
                    .checked_sub(first)
                    .and_then(|i| room.log.get(i as usize));
                if let Some(orig) = orig {
                    return Appended::Duplicate(orig.clone());
                }
            }
            room.high_seq += 1;
            let msg = m.into_message(room.high_seq, uuid::Uuid::new_v4().simple().to_string());
            room.by_client.insert(key, msg.seq);
            room.bytes += message_bytes(&msg);
            room.log.push_back(msg.clone());
            while room.log.len() > self.history {
                if let Some(old) = room.log.pop_front() {
                    room.by_client
                        .remove(&client_key(&old.from, &old.client_id));
                    room.bytes = room.bytes.saturating_sub(message_bytes(&old));
                }
            }
            Appended::New(msg)
        }))
    }

    async fn after(&self, room: &str, after: u64, limit: usize) -> Result<History, EngineError> {
        let now = crate::now_ms();
        Ok(self.rooms.read(room, now, self.ttl_ms, |r| {
            r.map_or_else(History::default, |r| {
                let start = r.log.partition_point(|m| m.seq <= after);
                History {
                    messages: r.log.iter().skip(start).take(limit).cloned().collect(),
                    high_seq: r.high_seq,
                }
            })
        }))
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<Option<ParticipantReceipts>, EngineError> {
        let now = crate::now_ms();
        Ok(self.rooms.with(room, now, self.ttl_ms, |r| {
            let seq = seq.min(r.high_seq);
            if seq == 0 {
                return None;
            }
            if !r.receipts.contains_key(user) {
                if r.receipts.len() >= self.max_receipt_users {
                    return None;
                }
                r.bytes += user.len() + 64;
                r.receipts.insert(user.to_owned(), (0, 0));
            }
            let entry = r.receipts.get_mut(user)?;
            let before = *entry;
            entry.0 = entry.0.max(seq);
            if kind == ReceiptKind::Read {
                entry.1 = entry.1.max(seq);
            }
            (*entry != before).then(|| ParticipantReceipts {
                user: user.to_owned(),
                delivered: entry.0,
                read: entry.1,
            })
        }))
    }

    async fn receipts(&self, room: &str) -> Result<Vec<ParticipantReceipts>, EngineError> {
        let now = crate::now_ms();
        Ok(self.rooms.read(room, now, self.ttl_ms, |r| {
            r.map(|r| {
                r.receipts
                    .iter()
                    .map(|(user, &(delivered, read))| ParticipantReceipts {
                        user: user.clone(),
                        delivered,
                        read,
                    })
                    .collect()
            })
            .unwrap_or_default()
        }))
    }
}

#[derive(Default)]
struct PresenceRoom {
    /// conn → (user, expires_ms)
    entries: HashMap<String, (String, i64)>,
}

impl Weigh for PresenceRoom {
    fn weight(&self) -> usize {
        // conn key, user and the map slot, approximately.
        self.entries.len() * 160
    }
}

impl PresenceRoom {
    fn users(&self) -> impl Iterator<Item = &str> {
        self.entries.values().map(|(u, _)| u.as_str())
    }

    fn has_user(&self, user: &str) -> bool {
        self.users().any(|u| u == user)
    }

    /// Drops expired entries; returns users that no longer have any.
    fn expire(&mut self, now: i64) -> Vec<String> {
        let mut gone: Vec<String> = Vec::new();
        self.entries.retain(|_, (user, exp)| {
            let keep = *exp > now;
            if !keep {
                gone.push(user.clone());
            }
            keep
        });
        gone.sort();
        gone.dedup();
        gone.retain(|u| !self.has_user(u));
        gone
    }
}

/// Presence in memory.
pub struct MemoryPresenceStore {
    rooms: Shards<PresenceRoom>,
    ttl_ms: i64,
    max_entries: usize,
}

impl MemoryPresenceStore {
    pub fn new(limits: &Limits) -> Self {
        Self {
            rooms: Shards::new(limits.max_chat_rooms, limits.presence_memory_bytes),
            ttl_ms: limits.presence_ttl.as_millis() as i64,
            max_entries: limits.max_presence_per_room,
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryPresenceStore {
    async fn join(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        Ok(self.rooms.with(room, now_ms, self.ttl_ms, |r| {
            let offline = r.expire(now_ms);
            let was = r.has_user(user);
            if r.entries.len() < self.max_entries || r.entries.contains_key(conn) {
                r.entries
                    .insert(conn.to_owned(), (user.to_owned(), now_ms + self.ttl_ms));
            }
            let online = if !was && r.has_user(user) {
                vec![user.to_owned()]
            } else {
                Vec::new()
            };
            PresenceChanges { online, offline }
        }))
    }

    async fn leave(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        Ok(self.rooms.with(room, now_ms, self.ttl_ms, |r| {
            let mut offline = r.expire(now_ms);
            if r.entries.remove(conn).is_some() && !r.has_user(user) {
                offline.push(user.to_owned());
            }
            PresenceChanges {
                online: Vec::new(),
                offline,
            }
        }))
    }

    async fn online(
        &self,
        room: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        Ok(self.rooms.read(room, now_ms, self.ttl_ms, |r| {
            let mut users: Vec<String> = r
                .map(|r| {
                    r.entries
                        .values()
                        .filter(|(_, exp)| *exp > now_ms)
                        .map(|(u, _)| u.clone())
                        .collect()
                })
                .unwrap_or_default();
            users.sort();
            users.dedup();
            users.truncate(limit);
            users
        }))
    }
}

#[derive(Default)]
struct Feed {
    high_seq: u64,
    log: VecDeque<Notification>,
    bytes: usize,
}

impl Weigh for Feed {
    fn weight(&self) -> usize {
        self.bytes
    }
}

fn notification_bytes(n: &Notification) -> usize {
    n.event.len() + serde_json::to_string(&n.data).map_or(0, |s| s.len()) + 96
}

/// Vendor notifications in memory.
pub struct MemoryNotificationStore {
    vendors: Shards<Feed>,
    history: usize,
    ttl_ms: i64,
}

impl MemoryNotificationStore {
    pub fn new(limits: &Limits) -> Self {
        Self {
            vendors: Shards::new(limits.max_vendors, limits.notification_memory_bytes),
            history: limits.notification_history_len.max(1),
            ttl_ms: limits.notification_ttl.as_millis() as i64,
        }
    }
}

#[async_trait]
impl NotificationStore for MemoryNotificationStore {
    async fn append(
        &self,
        vendor: &str,
        event: &str,
        data: serde_json::Value,
        now_ms: i64,
    ) -> Result<Notification, EngineError> {
        // Expiry runs on the wall clock, like a Redis key TTL; `now_ms` is the
        // notification's timestamp.
        Ok(self
            .vendors
            .with(vendor, crate::now_ms(), self.ttl_ms, |f| {
                f.high_seq += 1;
                let n = Notification {
                    seq: f.high_seq,
                    event: event.to_owned(),
                    data,
                    ts: now_ms,
                };
                f.bytes += notification_bytes(&n);
                f.log.push_back(n.clone());
                while f.log.len() > self.history {
                    if let Some(old) = f.log.pop_front() {
                        f.bytes = f.bytes.saturating_sub(notification_bytes(&old));
                    }
                }
                n
            }))
    }

    async fn after(
        &self,
        vendor: &str,
        after: u64,
        limit: usize,
    ) -> Result<NotificationHistory, EngineError> {
        let now = crate::now_ms();
        Ok(self.vendors.read(vendor, now, self.ttl_ms, |f| {
            f.map_or_else(NotificationHistory::default, |f| {
                let start = f.log.partition_point(|n| n.seq <= after);
                NotificationHistory {
                    items: f.log.iter().skip(start).take(limit).cloned().collect(),
                    high_seq: f.high_seq,
                }
            })
        }))
    }
}
