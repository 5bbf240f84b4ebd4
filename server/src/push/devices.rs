//! Registered push devices, behind the narrow [`DeviceStore`] so the memory
//! and Redis implementations can be swapped (the Redis one is shared by
//! every process and uses the engine's key prefix).
//!
//! A device belongs to one user; a user has at most `max_per_user` devices
//! (registering one more refuses with [`Registered::Full`]). A device also
//! records the channels its owner's token granted (chat rooms, orders,
//! vendor streams) when it was registered: pushes for a channel go to the
//! devices of the users registered for it. The store also keeps the
//! per-(event, device) claims that make a push happen once across
//! processes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;
use serde::{Deserialize, Serialize};

use crate::engine::chat_redis::StoreConn;
use crate::engine::EngineError;

/// Which provider delivers to a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    Apns,
    Fcm,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
        }
    }
}

/// A registered device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Device {
    pub device_id: String,
    pub user: String,
    pub platform: Platform,
    pub token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Channels this device wants no push for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub muted: Vec<String>,
    /// Channels the owner's token granted at registration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Registration time, Unix ms.
    pub registered_ms: i64,
}

/// What a registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// New device, or an existing one replaced.
    Stored,
    /// The user already has the most devices allowed.
    Full,
}

/// Device storage.
#[async_trait]
pub trait DeviceStore: Send + Sync + 'static {
    /// Stores (or replaces, by `device_id`) a device of `device.user`, and
    /// indexes the user under each of `device.channels`.
    async fn register(
        &self,
        device: &Device,
        max_per_user: usize,
    ) -> Result<Registered, EngineError>;

    /// Removes a device of `user`; whether it existed.
    async fn unregister(&self, user: &str, device_id: &str) -> Result<bool, EngineError>;

    /// Removes a device only while it still has `token` (a provider said
    /// the token is dead; a newer registration must survive).
    async fn remove_token(
        &self,
        user: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool, EngineError>;

    /// A user's devices.
    async fn devices(&self, user: &str) -> Result<Vec<Device>, EngineError>;

    /// Users registered for `channel`, at most `limit`.
    async fn users_for(&self, channel: &str, limit: usize) -> Result<Vec<String>, EngineError>;

    /// Claims `key` for `ttl_ms`: true the first time (across processes).
    async fn claim(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError>;

    /// Whether live marks are shared with other processes (the Redis
    /// store); the memory store serves one process, whose own table
    /// ([`super::live::LiveChannels`]) is the whole truth.
    fn shares_live(&self) -> bool {
        false
    }

    /// Marks each `(channel, user)` live on process `node` until
    /// `until_ms`.
    async fn mark_live(
        &self,
        _pairs: &[(String, String)],
        _node: &str,
        _until_ms: i64,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Removes process `node`'s mark of `(channel, user)`.
    async fn unmark_live(
        &self,
        _channel: &str,
        _user: &str,
        _node: &str,
    ) -> Result<(), EngineError> {
        Ok(())
    }

    /// Whether any process marked `(channel, user)` live beyond `now_ms`.
    async fn live_elsewhere(
        &self,
        _channel: &str,
        _user: &str,
        _now_ms: i64,
    ) -> Result<bool, EngineError> {
        Ok(false)
    }
}

/// Most claims the memory store keeps (oldest dropped first).
const MAX_MEMORY_CLAIMS: usize = 200_000;
/// Most users indexed per channel in memory.
const MAX_USERS_PER_CHANNEL: usize = 10_000;

/// In-process devices (the memory engine).
#[derive(Default)]
pub struct MemoryDeviceStore {
    inner: Mutex<MemoryDevices>,
}

#[derive(Default)]
struct MemoryDevices {
    by_user: HashMap<String, Vec<Device>>,
    by_channel: HashMap<String, HashSet<String>>,
    claims: HashMap<String, i64>,
    claim_order: std::collections::VecDeque<String>,
}

#[async_trait]
impl DeviceStore for MemoryDeviceStore {
    async fn register(
        &self,
        device: &Device,
        max_per_user: usize,
    ) -> Result<Registered, EngineError> {
        let mut g = self.inner.lock();
        let list = g.by_user.entry(device.user.clone()).or_default();
        if let Some(old) = list.iter_mut().find(|d| d.device_id == device.device_id) {
            *old = device.clone();
        } else if list.len() >= max_per_user {
            return Ok(Registered::Full);
        } else {
            list.push(device.clone());
        }
        for ch in &device.channels {
            let users = g.by_channel.entry(ch.clone()).or_default();
            if users.len() < MAX_USERS_PER_CHANNEL {
                users.insert(device.user.clone());
            }
        }
        Ok(Registered::Stored)
    }

    async fn unregister(&self, user: &str, device_id: &str) -> Result<bool, EngineError> {
        let mut g = self.inner.lock();
        Ok(remove_where(&mut g.by_user, user, |d| {
            d.device_id == device_id
        }))
    }

    async fn remove_token(
        &self,
        user: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool, EngineError> {
        let mut g = self.inner.lock();
        Ok(remove_where(&mut g.by_user, user, |d| {
            d.device_id == device_id && d.token == token
        }))
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, EngineError> {
        Ok(self
            .inner
            .lock()
            .by_user
            .get(user)
            .cloned()
            .unwrap_or_default())
    }

    async fn users_for(&self, channel: &str, limit: usize) -> Result<Vec<String>, EngineError> {
        let g = self.inner.lock();
        let mut users: Vec<String> = g
            .by_channel
            .get(channel)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        users.sort();
        users.truncate(limit);
        Ok(users)
    }

    async fn claim(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError> {
        let now = crate::now_ms();
        let mut g = self.inner.lock();
        if g.claims.get(key).is_some_and(|&until| until > now) {
            return Ok(false);
        }
        while g.claims.len() >= MAX_MEMORY_CLAIMS {
            match g.claim_order.pop_front() {
                Some(old) => {
                    g.claims.remove(&old);
                }
                None => break,
            }
        }
        g.claims
            .insert(key.to_owned(), now.saturating_add(ttl_ms as i64));
        g.claim_order.push_back(key.to_owned());
        Ok(true)
    }
}

fn remove_where(
    by_user: &mut HashMap<String, Vec<Device>>,
    user: &str,
    pred: impl Fn(&Device) -> bool,
) -> bool {
    let Some(list) = by_user.get_mut(user) else {
        return false;
    };
    let before = list.len();
    list.retain(|d| !pred(d));
    let removed = list.len() != before;
    if list.is_empty() {
        by_user.remove(user);
    }
    removed
}

/// Devices in Redis, shared by every process.
///
/// Keys (`<p>` = the engine's key prefix): `<p>:pushdev:{<user>}` a hash
/// device id → device JSON; `<p>:pushch:{<channel>}` a set of users;
/// `<p>:pushsent:{<key>}` a claim (SET NX PX); `<p>:pushlive:{<channel>|<user>}`
/// a hash process → expiry (Unix ms) of live subscriptions
/// ([`super::live`]).
pub struct RedisDeviceStore {
    conn: StoreConn,
    register: Script,
    index_channel: Script,
    remove_token: Script,
    mark_live: Script,
    /// How long a channel's user index lives after its last registration.
    index_ttl_ms: u64,
}

const REGISTER: &str = r#"
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
for i = 2, #KEYS do
  if redis.call('SCARD', KEYS[i]) < tonumber(ARGV[5]) then
    redis.call('SADD', KEYS[i], ARGV[4])
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[6])
end
return 1
"#;

/// `KEYS[1]` = the pair's hash; `ARGV` = node, expiry (Unix ms), TTL (ms).
const MARK_LIVE: &str = r#"
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

/// REGISTER's channel part for one channel index (on a Redis Cluster each
/// index lives in its channel's slot, apart from the user's hash).
const INDEX_CHANNEL: &str = r#"
if redis.call('SCARD', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('SADD', KEYS[1], ARGV[1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"#;

const REMOVE_TOKEN: &str = r#"
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if not cur then return 0 end
local d = cjson.decode(cur)
if d['token'] ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"#;

impl RedisDeviceStore {
    pub fn new(conn: StoreConn) -> Self {
        Self {
            conn,
            register: Script::new(REGISTER),
            index_channel: Script::new(INDEX_CHANNEL),
            remove_token: Script::new(REMOVE_TOKEN),
            mark_live: Script::new(MARK_LIVE),
            index_ttl_ms: 30 * 24 * 3600 * 1000,
        }
    }

    fn user_key(&self, user: &str) -> String {
        self.conn.key("pushdev", user, "")
    }

    fn channel_key(&self, channel: &str) -> String {
        self.conn.key("pushch", channel, "")
    }

    fn live_key(&self, channel: &str, user: &str) -> String {
        self.conn.key("pushlive", &format!("{channel}|{user}"), "")
    }
}

fn corrupt(e: impl std::fmt::Display) -> EngineError {
    EngineError::Corrupt(e.to_string())
}

#[async_trait]
impl DeviceStore for RedisDeviceStore {
    async fn register(
        &self,
        device: &Device,
        max_per_user: usize,
    ) -> Result<Registered, EngineError> {
        let json = serde_json::to_string(device).map_err(corrupt)?;
        let mut inv = self.register.key(self.user_key(&device.user));
        // One Redis: the user's hash and every channel index in one step.
        // A cluster: the hash first (its slot), then each index in its own.
        let cluster = self.conn.is_cluster();
        if !cluster {
            for ch in &device.channels {
                inv.key(self.channel_key(ch));
            }
        }
        inv.arg(&device.device_id)
            .arg(json)
            .arg(max_per_user)
            .arg(&device.user)
            .arg(MAX_USERS_PER_CHANNEL)
            .arg(self.index_ttl_ms);
        let stored: i64 = self.conn.invoke(&inv).await?;
        if cluster && stored == 1 {
            for ch in &device.channels {
                let mut idx = self.index_channel.key(self.channel_key(ch));
                idx.arg(&device.user)
                    .arg(MAX_USERS_PER_CHANNEL)
                    .arg(self.index_ttl_ms);
                let _: i64 = self.conn.invoke(&idx).await?;
            }
        }
        Ok(if stored == 1 {
            Registered::Stored
        } else {
            Registered::Full
        })
    }

    async fn unregister(&self, user: &str, device_id: &str) -> Result<bool, EngineError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.user_key(user)).arg(device_id);
        let n: i64 = self.conn.query(&cmd).await?;
        Ok(n > 0)
    }

    async fn remove_token(
        &self,
        user: &str,
        device_id: &str,
        token: &str,
    ) -> Result<bool, EngineError> {
        let mut inv = self.remove_token.key(self.user_key(user));
        inv.arg(device_id).arg(token);
        let n: i64 = self.conn.invoke(&inv).await?;
        Ok(n == 1)
    }

    async fn devices(&self, user: &str) -> Result<Vec<Device>, EngineError> {
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(self.user_key(user));
        let items: Vec<String> = self.conn.query(&cmd).await?;
        items
            .iter()
            .map(|s| serde_json::from_str(s).map_err(corrupt))
            .collect()
    }

    async fn users_for(&self, channel: &str, limit: usize) -> Result<Vec<String>, EngineError> {
        let mut cmd = redis::cmd("SMEMBERS");
        cmd.arg(self.channel_key(channel));
        let mut users: Vec<String> = self.conn.query(&cmd).await?;
        users.sort();
        users.truncate(limit);
        Ok(users)
    }

    async fn claim(&self, key: &str, ttl_ms: u64) -> Result<bool, EngineError> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.conn.key("pushsent", key, ""))
            .arg(1)
            .arg("NX")
            .arg("PX")
            .arg(ttl_ms.max(1));
        let set: Option<String> = self.conn.query(&cmd).await?;
        Ok(set.is_some())
    }

    fn shares_live(&self) -> bool {
        true
    }

    async fn mark_live(
        &self,
        pairs: &[(String, String)],
        node: &str,
        until_ms: i64,
    ) -> Result<(), EngineError> {
        // One key per call: the pairs may live on different cluster slots.
        let ttl_ms = (until_ms - crate::now_ms()).max(1) * 2;
        for (channel, user) in pairs {
            let mut inv = self.mark_live.key(self.live_key(channel, user));
            inv.arg(node).arg(until_ms).arg(ttl_ms);
            let _: i64 = self.conn.invoke(&inv).await?;
        }
        Ok(())
    }

    async fn unmark_live(&self, channel: &str, user: &str, node: &str) -> Result<(), EngineError> {
        let mut cmd = redis::cmd("HDEL");
        cmd.arg(self.live_key(channel, user)).arg(node);
        let _: i64 = self.conn.query(&cmd).await?;
        Ok(())
    }

    async fn live_elsewhere(
        &self,
        channel: &str,
        user: &str,
        now_ms: i64,
    ) -> Result<bool, EngineError> {
        let mut cmd = redis::cmd("HVALS");
        cmd.arg(self.live_key(channel, user));
        let until: Vec<String> = self.conn.query(&cmd).await?;
        Ok(until
            .iter()
            .any(|u| u.parse::<i64>().is_ok_and(|u| u > now_ms)))
    }
}

/// The store for an engine: Redis when `conn` is given.
pub fn store(conn: Option<StoreConn>) -> Arc<dyn DeviceStore> {
    match conn {
        Some(c) => Arc::new(RedisDeviceStore::new(c)),
        None => Arc::new(MemoryDeviceStore::default()),
    }
}
