//! In-process chat, presence and notification stores (the memory engine).
//! Each keeps a bounded map of rooms (or vendors); when it is full, entries
//! idle longer than the TTL are dropped, and if none is, the least recently
//! used one goes, so memory stays bounded.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};

use async_trait::async_trait;
use parking_lot::Mutex;
use waypost_protocol::ChatMessage;

use super::chat::{
    Appended, ChatStore, History, NewMessage, Notification, NotificationHistory, NotificationStore,
    PresenceChanges, PresenceStore,
};
use super::EngineError;
use crate::config::Limits;

const SHARDS: usize = 16;

/// A bounded, sharded map whose values know when they were last used.
struct Shards<V> {
    shards: Vec<Mutex<HashMap<String, (i64, V)>>>,
    hasher: RandomState,
    /// Most keys per shard.
    cap: usize,
}

impl<V: Default> Shards<V> {
    fn new(total: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            cap: total.div_ceil(SHARDS).max(1),
        }
    }

    /// Runs `f` on the value of `key` (created when missing), marking it used
    /// at `now`; `idle_ms` decides which entries may be evicted to make room.
    fn with<R>(&self, key: &str, now: i64, idle_ms: i64, f: impl FnOnce(&mut V) -> R) -> R {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let mut shard = self.shards[i].lock();
        if let Some((used, v)) = shard.get_mut(key) {
            if now - *used > idle_ms {
                // Expired while idle: start over, like a Redis key TTL.
                *v = V::default();
            }
            *used = now;
            return f(v);
        }
        if shard.len() >= self.cap {
            shard.retain(|_, (used, _)| now - *used <= idle_ms);
            if shard.len() >= self.cap {
                if let Some(oldest) = shard
                    .iter()
                    .min_by_key(|(_, (used, _))| *used)
                    .map(|(k, _)| k.clone())
                {
                    shard.remove(&oldest);
                }
            }
        }
        let (_, v) = shard.entry(key.to_owned()).or_insert((now, V::default()));
        f(v)
    }

    /// Runs `f` on an existing, unexpired value without marking it used.
    fn read<R>(&self, key: &str, now: i64, idle_ms: i64, f: impl FnOnce(Option<&V>) -> R) -> R {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let shard = self.shards[i].lock();
        f(shard
            .get(key)
            .filter(|(used, _)| now - *used <= idle_ms)
            .map(|(_, v)| v))
    }
}

#[derive(Default)]
struct Room {
    high_seq: u64,
    /// Consecutive seqs, oldest first, bounded.
    log: VecDeque<ChatMessage>,
    /// `from \u{1f} client_id` → seq, for retained messages only.
    by_client: HashMap<String, u64>,
}

fn client_key(from: &str, client_id: &str) -> String {
    format!("{from}\u{1f}{client_id}")
}

/// Chat history in memory.
pub struct MemoryChatStore {
    rooms: Shards<Room>,
    history: usize,
    ttl_ms: i64,
}

impl MemoryChatStore {
    pub fn new(limits: &Limits) -> Self {
        Self {
            rooms: Shards::new(limits.max_chat_rooms),
            history: limits.chat_history_len.max(1),
            ttl_ms: limits.chat_room_ttl.as_millis() as i64,
        }
    }
}

#[async_trait]
impl ChatStore for MemoryChatStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, EngineError> {
        let now = crate::now_ms();
        Ok(self.rooms.with(&m.room, now, self.ttl_ms, |room| {
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
            let msg = ChatMessage {
                room: m.room.clone(),
                seq: room.high_seq,
                id: uuid::Uuid::new_v4().simple().to_string(),
                from: m.from,
                client_id: m.client_id,
                body: m.body,
                ts: m.ts,
            };
            room.by_client.insert(key, msg.seq);
            room.log.push_back(msg.clone());
            while room.log.len() > self.history {
                if let Some(old) = room.log.pop_front() {
                    room.by_client
                        .remove(&client_key(&old.from, &old.client_id));
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
}

#[derive(Default)]
struct PresenceRoom {
    /// conn → (user, expires_ms)
    entries: HashMap<String, (String, i64)>,
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
            rooms: Shards::new(limits.max_chat_rooms),
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
            vendors: Shards::new(limits.max_vendors),
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
                f.log.push_back(n.clone());
                while f.log.len() > self.history {
                    f.log.pop_front();
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
