//! Chat, presence and notification stores on Redis, shared by every server
//! process. Each write is one Lua script, so seq assignment, storage,
//! idempotency and trimming are atomic.
//!
//! The stores share the engine's command connection ([`StoreConn`]: its
//! timeouts, reconnects and key prefix, `RedisOptions.key_prefix`, by default
//! `waypost`; before issue 21 these keys had a fixed `wp:` prefix, see
//! RELIABILITY.md "Upgrading").
//!
//! Keys (`<p>` = the key prefix; the `{…}` hash tag keeps one room's keys in
//! one cluster slot):
//! - `<p>:chat:{room}:seq` (counter), `:log` (sorted set, score = seq, member
//!   = message JSON), `:cid` (hash `from\x1fclient_id` → seq, only for
//!   retained messages), `:rcpt` (hash `user` → `"delivered:read"`, the
//!   receipt markers). Trimmed to the history length; all four expire
//!   together after the room TTL of inactivity.
//! - `<p>:presence:{room}` (sorted set conn → expiry ms), `:u` (hash conn →
//!   user), `:n` (hash user → live conns). Expired entries are swept by the
//!   next join or leave in the room, which reports their users offline.
//! - `<p>:notify:{vendor}:seq` and `:log`, like chat without `:cid`.

use std::sync::Arc;

use async_trait::async_trait;
use redis::{FromRedisValue, Script, ScriptInvocation};
use waypost_protocol::{ChatMessage, ParticipantReceipts, ReceiptKind};

use super::chat::{
    Appended, ChatStore, ChatStores, History, NewMessage, Notification, NotificationHistory,
    NotificationStore, PresenceChanges, PresenceStore,
};
use super::redis::{Commands, RedisConn, RedisOptions};
use super::EngineError;
use crate::config::Limits;

/// The stores' handle on Redis: the engine's command connection (every
/// call bounded by its `op_timeout`, a stalled connection replaced) and its
/// key prefix.
#[derive(Clone)]
pub struct StoreConn {
    cmd: Arc<Commands>,
    prefix: Arc<str>,
}

impl StoreConn {
    pub(crate) fn new(cmd: Arc<Commands>, prefix: &str) -> Self {
        Self {
            cmd,
            prefix: prefix.into(),
        }
    }

    /// A connection of its own, set up as the engine's (for the stores
    /// without an engine, as in tests).
    pub async fn connect(url: &str, opts: &RedisOptions) -> Result<Self, EngineError> {
        let (_, cmd) = super::redis::commands(url, opts).await?;
        Ok(Self::new(Arc::new(cmd), &opts.key_prefix))
    }

    /// Whether this is a Redis Cluster connection (scripts then touch one
    /// slot each).
    pub(crate) fn is_cluster(&self) -> bool {
        self.cmd.conn().is_cluster()
    }

    /// `<prefix>:<kind>:{<id>}<suffix>`.
    pub(crate) fn key(&self, kind: &str, id: &str, suffix: &str) -> String {
        format!("{}:{kind}:{{{id}}}{suffix}", self.prefix)
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &self,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        let mut conn = self.cmd.conn();
        self.cmd.run(inv.invoke_async(&mut conn)).await
    }

    /// One plain command, bounded like every other call.
    pub(crate) async fn query<T: FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
    ) -> Result<T, EngineError> {
        let mut conn = self.cmd.conn();
        self.cmd.run(cmd.query_async(&mut conn)).await
    }

    /// [`StoreConn::invoke`] for a write the caller acknowledges (waits for
    /// replicas when configured).
    /// `id` is the hash tag of the keys the script writes (on a cluster
    /// `WAIT` goes to their slot's primary).
    async fn invoke_acked<T: FromRedisValue>(
        &self,
        id: &str,
        inv: &ScriptInvocation<'_>,
    ) -> Result<T, EngineError> {
        let mut conn = self.cmd.conn();
        let same = conn.clone();
        let slot_key = format!("{{{id}}}");
        self.cmd
            .run_acked(same, &slot_key, inv.invoke_async(&mut conn))
            .await
    }
}

/// The chat, presence and notification stores on `redis`'s command
/// connection (its timeouts and reconnects) and key prefix.
pub fn stores(redis: &RedisConn, limits: &Limits) -> ChatStores {
    let conn = StoreConn::new(Arc::clone(&redis.cmd), redis.key_prefix());
    ChatStores {
        chat: Arc::new(RedisChatStore::new(conn.clone(), limits)),
        presence: Arc::new(RedisPresenceStore::new(conn.clone(), limits)),
        notifications: Arc::new(RedisNotificationStore::new(conn, limits)),
    }
}

/// The stores' handle on `engine`'s command connection and key prefix
/// (for stores outside the chat trio, such as push devices).
pub fn store_conn(redis: &RedisConn) -> StoreConn {
    StoreConn::new(Arc::clone(&redis.cmd), redis.key_prefix())
}

/// A plain connection manager set up like the engine's (TLS; behind
/// Sentinel, the primary at connect time), for the Redis users not on
/// [`StoreConn`] yet (orders, webhooks, the order stream). Unlike
/// [`StoreConn`] it does not follow a failover by itself.
pub async fn connect(
    url: &str,
    opts: &RedisOptions,
) -> Result<super::redis::RedisHandle, EngineError> {
    super::redis::connection_manager(url, opts).await
}

/// Runs the `READ_AFTER` script on a seq counter and its log (chat rooms
/// and vendor notifications share the layout) and decodes the JSON entries.
async fn read_after<T: serde::de::DeserializeOwned>(
    script: &Script,
    conn: &StoreConn,
    k_seq: &str,
    k_log: &str,
    after: u64,
    limit: usize,
) -> Result<(u64, Vec<T>), EngineError> {
    let (high_seq, items): (u64, Vec<String>) = conn
        .invoke(script.key(k_seq).key(k_log).arg(after).arg(limit))
        .await?;
    let items = items
        .iter()
        .map(|s| serde_json::from_str(s).map_err(corrupt))
        .collect::<Result<Vec<T>, _>>()?;
    Ok((high_seq, items))
}

fn corrupt(e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(e.to_string())
}

const APPEND_CHAT: &str = r#"
local known = redis.call('HGET', KEYS[3], ARGV[1])
if known then
  local orig = redis.call('ZRANGEBYSCORE', KEYS[2], known, known)
  if orig[1] then return {0, orig[1]} end
end
local seq = redis.call('INCR', KEYS[1])
local msg = ARGV[2] .. seq .. ARGV[3]
redis.call('ZADD', KEYS[2], seq, msg)
redis.call('HSET', KEYS[3], ARGV[1], seq)
local excess = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
if excess > 0 then
  local old = redis.call('ZRANGE', KEYS[2], 0, excess - 1)
  for _, m in ipairs(old) do
    local d = cjson.decode(m)
    redis.call('HDEL', KEYS[3], d['from'] .. '\31' .. d['client_id'])
  end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, excess - 1)
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[5]) end
if redis.call('EXISTS', KEYS[4]) == 1 then redis.call('PEXPIRE', KEYS[4], ARGV[5]) end
return {1, msg}
"#;

/// KEYS: seq, rcpt. ARGV: user, seq, kind (`read` also moves delivered),
/// max users, ttl ms. Returns `{moved, delivered, read}`.
const MARK_RECEIPT: &str = r#"
local high = tonumber(redis.call('GET', KEYS[1]) or '0')
local seq = math.min(tonumber(ARGV[2]), high)
if seq <= 0 then return {0, 0, 0} end
local cur = redis.call('HGET', KEYS[2], ARGV[1])
local d, r = 0, 0
if cur then
  local sep = string.find(cur, ':', 1, true)
  d = tonumber(string.sub(cur, 1, sep - 1))
  r = tonumber(string.sub(cur, sep + 1))
elseif redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then
  return {0, 0, 0}
end
local nd, nr = math.max(d, seq), r
if ARGV[3] == 'read' then nr = math.max(r, seq) end
if nd == d and nr == r then return {0, d, r} end
redis.call('HSET', KEYS[2], ARGV[1], nd .. ':' .. nr)
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return {1, nd, nr}
"#;

const READ_AFTER: &str = r#"
local high = tonumber(redis.call('GET', KEYS[1]) or '0')
local items = redis.call('ZRANGEBYSCORE', KEYS[2], '(' .. ARGV[1], '+inf', 'LIMIT', 0, ARGV[2])
return {high, items}
"#;

/// Splits `json` (an object whose first field is `"seq":0` after
/// `prefix_fields`) around the 0, so Lua can splice in the seq it assigns.
fn split_at_seq(json: &str, prefix: &str) -> Result<(String, String), EngineError> {
    json.strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('0'))
        .map(|rest| (prefix.to_owned(), rest.to_owned()))
        .ok_or_else(|| corrupt(format!("unexpected record layout: {json:.80}")))
}

/// Chat history on Redis.
pub struct RedisChatStore {
    conn: StoreConn,
    append: Script,
    read: Script,
    mark: Script,
    history: usize,
    ttl_ms: u64,
    max_receipt_users: usize,
}

impl RedisChatStore {
    pub fn new(conn: StoreConn, limits: &Limits) -> Self {
        Self {
            conn,
            append: Script::new(APPEND_CHAT),
            read: Script::new(READ_AFTER),
            mark: Script::new(MARK_RECEIPT),
            history: limits.chat_history_len.max(1),
            ttl_ms: limits.chat_room_ttl.as_millis().max(1) as u64,
            max_receipt_users: limits.max_presence_per_room.max(1),
        }
    }

    fn keys(&self, room: &str) -> [String; 4] {
        [
            self.conn.key("chat", room, ":seq"),
            self.conn.key("chat", room, ":log"),
            self.conn.key("chat", room, ":cid"),
            self.conn.key("chat", room, ":rcpt"),
        ]
    }
}

#[async_trait]
impl ChatStore for RedisChatStore {
    async fn append(&self, m: NewMessage) -> Result<Appended, EngineError> {
        let cid_key = format!("{}\u{1f}{}", m.from, m.client_id);
        let room = m.room.clone();
        let template = m.into_message(0, uuid::Uuid::new_v4().simple().to_string());
        let json = serde_json::to_string(&template).map_err(corrupt)?;
        let prefix = format!(
            "{{\"room\":{},\"seq\":",
            serde_json::to_string(&room).map_err(corrupt)?
        );
        let (head, tail) = split_at_seq(&json, &prefix)?;
        let [k_seq, k_log, k_cid, k_rcpt] = self.keys(&room);
        let (fresh, stored): (u8, String) = self
            .conn
            .invoke_acked(
                &room,
                self.append
                    .key(k_seq)
                    .key(k_log)
                    .key(k_cid)
                    .key(k_rcpt)
                    .arg(cid_key)
                    .arg(head)
                    .arg(tail)
                    .arg(self.history)
                    .arg(self.ttl_ms),
            )
            .await?;
        let msg: ChatMessage = serde_json::from_str(&stored).map_err(corrupt)?;
        Ok(if fresh == 1 {
            Appended::New(msg)
        } else {
            Appended::Duplicate(msg)
        })
    }

    async fn after(&self, room: &str, after: u64, limit: usize) -> Result<History, EngineError> {
        let [k_seq, k_log, _, _] = self.keys(room);
        let (high_seq, messages) =
            read_after(&self.read, &self.conn, &k_seq, &k_log, after, limit).await?;
        Ok(History { messages, high_seq })
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        kind: ReceiptKind,
        seq: u64,
    ) -> Result<Option<ParticipantReceipts>, EngineError> {
        let [k_seq, _, _, k_rcpt] = self.keys(room);
        let (moved, delivered, read): (u8, u64, u64) = self
            .conn
            .invoke(
                self.mark
                    .key(k_seq)
                    .key(k_rcpt)
                    .arg(user)
                    .arg(seq)
                    .arg(kind.as_str())
                    .arg(self.max_receipt_users)
                    .arg(self.ttl_ms),
            )
            .await?;
        Ok((moved == 1).then(|| ParticipantReceipts {
            user: user.to_owned(),
            delivered,
            read,
        }))
    }

    async fn receipts(&self, room: &str) -> Result<Vec<ParticipantReceipts>, EngineError> {
        let [_, _, _, k_rcpt] = self.keys(room);
        let mut conn = self.conn.cmd.conn();
        let all: Vec<(String, String)> = self
            .conn
            .cmd
            .run(redis::cmd("HGETALL").arg(&k_rcpt).query_async(&mut conn))
            .await?;
        let mut out = all
            .into_iter()
            .map(|(user, v)| {
                let (d, r) = v
                    .split_once(':')
                    .and_then(|(d, r)| Some((d.parse().ok()?, r.parse().ok()?)))
                    .ok_or_else(|| corrupt(format!("receipt value {v:?}")))?;
                Ok(ParticipantReceipts {
                    user,
                    delivered: d,
                    read: r,
                })
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        out.sort_by(|a, b| a.user.cmp(&b.user));
        Ok(out)
    }
}

/// Shared by the presence scripts: drops expired entries, appending users
/// left with no entry to `offline`.
const PRESENCE_EXPIRE: &str = r#"
local offline = {}
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
for _, c in ipairs(expired) do
  local u = redis.call('HGET', KEYS[2], c)
  redis.call('ZREM', KEYS[1], c)
  redis.call('HDEL', KEYS[2], c)
  if u then
    if redis.call('HINCRBY', KEYS[3], u, -1) <= 0 then
      redis.call('HDEL', KEYS[3], u)
      table.insert(offline, u)
    end
  end
end
"#;

const PRESENCE_JOIN: &str = r#"
local online = {}
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
elseif redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[5]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('HSET', KEYS[2], ARGV[3], ARGV[4])
  if redis.call('HINCRBY', KEYS[3], ARGV[4], 1) == 1 then
    table.insert(online, ARGV[4])
  end
end
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], ARGV[6]) end
return {online, offline}
"#;

const PRESENCE_LEAVE: &str = r#"
local u = redis.call('HGET', KEYS[2], ARGV[3])
if u then
  redis.call('ZREM', KEYS[1], ARGV[3])
  redis.call('HDEL', KEYS[2], ARGV[3])
  if redis.call('HINCRBY', KEYS[3], u, -1) <= 0 then
    redis.call('HDEL', KEYS[3], u)
    table.insert(offline, u)
  end
end
return {{}, offline}
"#;

const PRESENCE_ONLINE: &str = r#"
local conns = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
if #conns == 0 then return {} end
return redis.call('HMGET', KEYS[2], unpack(conns))
"#;

/// Presence on Redis.
pub struct RedisPresenceStore {
    conn: StoreConn,
    join: Script,
    leave: Script,
    online: Script,
    ttl_ms: i64,
    max_entries: usize,
}

impl RedisPresenceStore {
    pub fn new(conn: StoreConn, limits: &Limits) -> Self {
        Self {
            conn,
            join: Script::new(&format!("{PRESENCE_EXPIRE}{PRESENCE_JOIN}")),
            leave: Script::new(&format!("{PRESENCE_EXPIRE}{PRESENCE_LEAVE}")),
            online: Script::new(PRESENCE_ONLINE),
            ttl_ms: limits.presence_ttl.as_millis().max(1) as i64,
            max_entries: limits.max_presence_per_room,
        }
    }

    fn keys(&self, room: &str) -> [String; 3] {
        [
            self.conn.key("presence", room, ""),
            self.conn.key("presence", room, ":u"),
            self.conn.key("presence", room, ":n"),
        ]
    }

    async fn run(
        &self,
        script: &Script,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        let [a, b, c] = self.keys(room);
        let (online, offline): (Vec<String>, Vec<String>) = self
            .conn
            .invoke(
                script
                    .key(a)
                    .key(b)
                    .key(c)
                    .arg(now_ms)
                    .arg(now_ms + self.ttl_ms)
                    .arg(conn)
                    .arg(user)
                    .arg(self.max_entries)
                    // Keys outlive the longest entry a little.
                    .arg(self.ttl_ms * 2),
            )
            .await?;
        Ok(PresenceChanges { online, offline })
    }
}

#[async_trait]
impl PresenceStore for RedisPresenceStore {
    async fn join(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        self.run(&self.join, room, user, conn, now_ms).await
    }

    async fn leave(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        self.run(&self.leave, room, user, conn, now_ms).await
    }

    async fn online(
        &self,
        room: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        let [a, b, _] = self.keys(room);
        let users: Vec<Option<String>> = self
            .conn
            .invoke(self.online.key(a).key(b).arg(now_ms))
            .await?;
        let mut users: Vec<String> = users.into_iter().flatten().collect();
        users.sort();
        users.dedup();
        users.truncate(limit);
        Ok(users)
    }
}

const APPEND_NOTIFICATION: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local item = ARGV[1] .. seq .. ARGV[2]
redis.call('ZADD', KEYS[2], seq, item)
redis.call('ZREMRANGEBYRANK', KEYS[2], 0, -1 - tonumber(ARGV[3]))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return item
"#;

/// Vendor notifications on Redis.
pub struct RedisNotificationStore {
    conn: StoreConn,
    append: Script,
    read: Script,
    history: usize,
    ttl_ms: u64,
}

impl RedisNotificationStore {
    pub fn new(conn: StoreConn, limits: &Limits) -> Self {
        Self {
            conn,
            append: Script::new(APPEND_NOTIFICATION),
            read: Script::new(READ_AFTER),
            history: limits.notification_history_len.max(1),
            ttl_ms: limits.notification_ttl.as_millis().max(1) as u64,
        }
    }

    fn keys(&self, vendor: &str) -> [String; 2] {
        [
            self.conn.key("notify", vendor, ":seq"),
            self.conn.key("notify", vendor, ":log"),
        ]
    }
}

#[async_trait]
impl NotificationStore for RedisNotificationStore {
    async fn append(
        &self,
        vendor: &str,
        event: &str,
        data: serde_json::Value,
        now_ms: i64,
    ) -> Result<Notification, EngineError> {
        let template = Notification {
            seq: 0,
            event: event.to_owned(),
            data,
            ts: now_ms,
        };
        let json = serde_json::to_string(&template).map_err(corrupt)?;
        let (head, tail) = split_at_seq(&json, "{\"seq\":")?;
        let [k_seq, k_log] = self.keys(vendor);
        let stored: String = self
            .conn
            .invoke_acked(
                vendor,
                self.append
                    .key(k_seq)
                    .key(k_log)
                    .arg(head)
                    .arg(tail)
                    .arg(self.history)
                    .arg(self.ttl_ms),
            )
            .await?;
        serde_json::from_str(&stored).map_err(corrupt)
    }

    async fn after(
        &self,
        vendor: &str,
        after: u64,
        limit: usize,
    ) -> Result<NotificationHistory, EngineError> {
        let [k_seq, k_log] = self.keys(vendor);
        let (high_seq, items) =
            read_after(&self.read, &self.conn, &k_seq, &k_log, after, limit).await?;
        Ok(NotificationHistory { items, high_seq })
    }
}

/// [`test_cluster`] as the stores' handle, with a fresh key prefix.
#[cfg(test)]
pub(crate) async fn test_cluster_store() -> Option<StoreConn> {
    let url = std::env::var("WAYPOST_TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())?;
    let opts = super::redis::RedisOptions {
        cluster: true,
        key_prefix: format!("wpt{}", uuid::Uuid::new_v4().simple()),
        ..super::redis::RedisOptions::default()
    };
    Some(
        StoreConn::connect(&url, &opts)
            .await
            .expect("cluster reachable"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_splice_layout() {
        let (h, t) = split_at_seq(r#"{"seq":0,"event":"x"}"#, "{\"seq\":").unwrap();
        assert_eq!(format!("{h}12{t}"), r#"{"seq":12,"event":"x"}"#);
        assert!(split_at_seq(r#"{"event":"x","seq":0}"#, "{\"seq\":").is_err());
    }
}
