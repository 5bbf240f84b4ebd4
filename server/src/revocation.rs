//! Token revocation and operator disconnects.
//!
//! A revocation names a user (every token of that `sub` issued before the
//! revocation or in its second, by `iat`; a token without `iat` counts as
//! issued before) or
//! one token (`jti`), and lasts `ttl_s`. It is kept in three places:
//!
//! - the [`RevocationStore`] of the engine (Redis keys with the TTL, so a
//!   process that starts later loads them; the memory engine is one process
//!   and keeps nothing beyond the list below);
//! - every process's [`Revocations`] list, which verification consults on
//!   each request and connection (no round trip per request);
//! - a [`Control`] message published on [`control_channel`] through the
//!   engine, on which every process updates its list and closes the user's
//!   live connections (and, for a disconnect, only closes them).
//!
//! A process also reloads the store every [`RELOAD_EVERY`], so a message lost
//! while its Redis subscription was down is applied late, not never.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::engine::EngineError;
use crate::hub::{ConnHandle, ConnId};
use crate::keys::Verified;

/// Engine channel of [`Control`] messages between processes.
pub fn control_channel() -> waypost_protocol::Channel {
    waypost_protocol::Channel::control("admin")
}

/// How often a process re-reads the store.
pub const RELOAD_EVERY: Duration = Duration::from_secs(10);

/// Most revocations (users plus tokens) one list holds; past it the ones
/// expiring soonest are dropped first.
pub const MAX_REVOCATIONS: usize = 100_000;

/// Longest revocation, and the default.
pub const MAX_TTL_S: u64 = 30 * 24 * 3600;
pub const DEFAULT_TTL_S: u64 = 24 * 3600;

/// One revocation, as stored and broadcast.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Every token of this user issued before `before_s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// This one token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// Unix seconds: tokens with `iat` up to this are revoked (user
    /// revocations).
    pub before_s: u64,
    /// Unix seconds when the revocation lapses.
    pub until_s: u64,
}

/// A message between processes on [`control_channel`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Control {
    Revoke(Revocation),
    Disconnect {
        user: String,
        reconnect: bool,
    },
    /// Asks every process for `user`'s connections (`GET /v1/admin/users`);
    /// each answers with a [`Control::Report`] carrying the same `id`.
    Lookup {
        id: String,
        user: String,
    },
    /// One process's answer to a [`Control::Lookup`].
    Report {
        id: String,
        node: String,
        connections: Vec<ConnInfo>,
    },
}

/// One live connection of a user on one process, as a lookup reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnInfo {
    /// `ws`, `sse` or `poll`.
    pub transport: String,
    /// When it was opened, Unix ms.
    pub since_ms: i64,
    /// Channels it is subscribed to (at most [`MAX_LISTED_SUBSCRIPTIONS`]).
    pub subscriptions: Vec<String>,
}

/// Most connections one process reports for one user.
pub const MAX_REPORTED_CONNECTIONS: usize = 100;
/// Most channels listed per reported connection.
pub const MAX_LISTED_SUBSCRIPTIONS: usize = 50;

/// This process's view of the revocations in force.
#[derive(Debug, Default)]
pub struct Revocations {
    inner: RwLock<Lists>,
}

#[derive(Debug, Default)]
struct Lists {
    /// user → (revoked before, until)
    users: HashMap<String, (u64, u64)>,
    /// jti → until
    jtis: HashMap<String, u64>,
}

impl Lists {
    fn len(&self) -> usize {
        self.users.len() + self.jtis.len()
    }

    fn prune(&mut self, now_s: u64) {
        self.users.retain(|_, (_, until)| *until > now_s);
        self.jtis.retain(|_, until| *until > now_s);
        // Still over: drop the soonest-expiring until there is room.
        while self.len() >= MAX_REVOCATIONS {
            let user = self
                .users
                .iter()
                .min_by_key(|(_, (_, u))| *u)
                .map(|(k, (_, u))| (k.clone(), *u));
            let jti = self
                .jtis
                .iter()
                .min_by_key(|(_, u)| **u)
                .map(|(k, u)| (k.clone(), *u));
            match (user, jti) {
                (Some((k, u)), Some((_, j))) if u <= j => self.users.remove(&k),
                (_, Some((k, _))) => self.jtis.remove(&k).map(|u| (0, u)),
                (Some((k, _)), None) => self.users.remove(&k),
                (None, None) => break,
            };
        }
    }
}

impl Revocations {
    /// Adds `r` (a later user revocation moves `before_s` forward, never
    /// back). Returns whether it revokes more than before (so the caller
    /// closes connections only for news, not on every reload).
    pub fn apply(&self, r: &Revocation, now_s: u64) -> bool {
        if r.until_s <= now_s {
            return false;
        }
        let mut lists = self.inner.write();
        if lists.len() >= MAX_REVOCATIONS {
            lists.prune(now_s);
        }
        let mut news = false;
        if let Some(user) = &r.user {
            let e = lists.users.entry(user.clone()).or_insert((0, 0));
            news |= r.before_s > e.0;
            e.0 = e.0.max(r.before_s);
            e.1 = e.1.max(r.until_s);
        }
        if let Some(jti) = &r.jti {
            let e = lists.jtis.entry(jti.clone()).or_insert(0);
            news |= *e == 0;
            *e = (*e).max(r.until_s);
        }
        news
    }

    /// Whether `token` is revoked at `now_s`.
    pub fn is_revoked(&self, token: &Verified, now_s: u64) -> bool {
        let lists = self.inner.read();
        if lists.len() == 0 {
            return false;
        }
        if let Some((before, until)) = lists.users.get(&token.claims.sub) {
            if *until > now_s && token.iat.unwrap_or(0) <= *before {
                return true;
            }
        }
        token
            .jti
            .as_ref()
            .and_then(|j| lists.jtis.get(j))
            .is_some_and(|until| *until > now_s)
    }

    /// The user revocation of `user` in force at `now_s`, as `(before_s,
    /// until_s)`.
    pub fn of_user(&self, user: &str, now_s: u64) -> Option<(u64, u64)> {
        self.inner
            .read()
            .users
            .get(user)
            .copied()
            .filter(|(_, until)| *until > now_s)
    }

    /// Drops lapsed entries.
    pub fn prune(&self, now_s: u64) {
        self.inner.write().prune(now_s);
    }

    pub fn len(&self) -> usize {
        self.inner.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Live connections (WebSockets, SSE streams, long polls) by user on this
/// process, with the `iat`/`jti` of the token each runs on, so a revocation
/// or disconnect can close them.
///
/// Sized for idle memory: one entry per connection in one flat map (the
/// user's name shared with the per-user index), and a user with a single
/// connection (the usual case) indexed without a map of their own.
#[derive(Default)]
pub struct UserConnections {
    inner: parking_lot::Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Entry>,
    by_user: HashMap<Arc<str>, Ids>,
}

/// A user's connections on this process: the usual single one inline, a
/// set (boxed, so the single case stays two words) for several.
#[allow(clippy::box_collection)] // boxed on purpose: the usual `One` stays two words
enum Ids {
    One(ConnId),
    Many(Box<HashSet<ConnId>>),
}

impl Ids {
    fn len(&self) -> usize {
        match self {
            Ids::One(_) => 1,
            Ids::Many(set) => set.len(),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &ConnId> {
        let (one, many) = match self {
            Ids::One(id) => (Some(id), None),
            Ids::Many(set) => (None, Some(set.iter())),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn insert(&mut self, id: ConnId) {
        match self {
            Ids::One(first) if *first != id => {
                *self = Ids::Many(Box::new(HashSet::from([*first, id])));
            }
            Ids::One(_) => {}
            Ids::Many(set) => {
                set.insert(id);
            }
        }
    }

    /// Removes `id`; true when none is left.
    fn remove(&mut self, id: ConnId) -> bool {
        match self {
            Ids::One(only) => *only == id,
            Ids::Many(set) => {
                set.remove(&id);
                match set.len() {
                    0 => true,
                    1 => {
                        if let Some(&last) = set.iter().next() {
                            *self = Ids::One(last);
                        }
                        false
                    }
                    _ => false,
                }
            }
        }
    }
}

/// What kind of connection a listed one is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Ws,
    Sse,
    Poll,
}

impl Transport {
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Sse => "sse",
            Transport::Poll => "poll",
        }
    }
}

/// One listed connection (packed: one per connection on the process).
struct Entry {
    handle: ConnHandle,
    user: Arc<str>,
    /// The token's `iat`; 0 without one (revoked by every user
    /// revocation, as a token without `iat` is).
    iat: u64,
    jti: Option<Box<str>>,
    since_ms: i64,
    transport: Transport,
}

impl Registry {
    fn of<'a>(&'a self, user: &str) -> impl Iterator<Item = (&'a ConnId, &'a Entry)> {
        self.by_user
            .get(user)
            .into_iter()
            .flat_map(Ids::iter)
            .filter_map(|id| self.conns.get_key_value(id))
    }
}

/// Keeps a connection listed until dropped.
pub struct Listed {
    registry: Arc<UserConnections>,
    id: ConnId,
}

impl Listed {
    /// The connection now runs on another token of the same user (an
    /// in-band refresh).
    pub fn update(&self, token: &Verified) {
        if let Some(e) = self.registry.inner.lock().conns.get_mut(&self.id) {
            e.iat = token.iat.unwrap_or(0);
            e.jti = token.jti.as_deref().map(Box::from);
        }
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut reg = self.registry.inner.lock();
        let Some(entry) = reg.conns.remove(&self.id) else {
            return;
        };
        if let Some(ids) = reg.by_user.get_mut(&entry.user) {
            if ids.remove(self.id) {
                reg.by_user.remove(&entry.user);
            }
        }
    }
}

impl UserConnections {
    /// Lists `handle` (a `transport` connection) under
    /// the token's user until the guard drops.
    pub fn list(
        self: &Arc<Self>,
        token: &Verified,
        handle: &ConnHandle,
        transport: Transport,
    ) -> Listed {
        let mut reg = self.inner.lock();
        let user = match reg.by_user.get_mut(token.claims.sub.as_str()) {
            Some(ids) => {
                ids.insert(handle.id);
                None
            }
            None => Some(Arc::<str>::from(token.claims.sub.as_str())),
        };
        let user = match user {
            Some(user) => {
                reg.by_user.insert(Arc::clone(&user), Ids::One(handle.id));
                user
            }
            None => reg
                .by_user
                .get_key_value(token.claims.sub.as_str())
                .map(|(k, _)| Arc::clone(k))
                .unwrap_or_else(|| Arc::from(token.claims.sub.as_str())),
        };
        reg.conns.insert(
            handle.id,
            Entry {
                handle: handle.clone(),
                user,
                iat: token.iat.unwrap_or(0),
                jti: token.jti.as_deref().map(Box::from),
                transport,
                since_ms: crate::now_ms(),
            },
        );
        drop(reg);
        Listed {
            registry: Arc::clone(self),
            id: handle.id,
        }
    }

    /// The user a listed connection runs for.
    pub fn user_of(&self, id: ConnId) -> Option<String> {
        self.inner.lock().conns.get(&id).map(|e| e.user.to_string())
    }

    /// Closes every connection of `user` with `code`; returns how many.
    pub fn kill_user(&self, user: &str, code: u16) -> usize {
        let reg = self.inner.lock();
        let mut n = 0;
        for (_, e) in reg.of(user) {
            e.handle.kill(code);
            n += 1;
        }
        n
    }

    /// Closes the connections whose token `r` revokes; returns how many.
    pub fn kill_revoked(&self, r: &Revocation, code: u16) -> usize {
        let reg = self.inner.lock();
        let mut n = 0;
        let mut kill = |e: &Entry| {
            e.handle.kill(code);
            n += 1;
        };
        if let Some(user) = &r.user {
            for (_, e) in reg.of(user) {
                if e.iat <= r.before_s {
                    kill(e);
                }
            }
        }
        if let Some(jti) = &r.jti {
            // Rare (an operator action): a scan of this process's list.
            for e in reg.conns.values() {
                if e.jti.as_deref() == Some(jti.as_str()) {
                    kill(e);
                }
            }
        }
        n
    }

    /// `user`'s connections on this process as `(id, transport, opened
    /// ms)`, oldest first, at most `limit`.
    pub fn of_user(&self, user: &str, limit: usize) -> Vec<(ConnId, &'static str, i64)> {
        let reg = self.inner.lock();
        let mut out: Vec<_> = reg
            .of(user)
            .map(|(id, e)| (*id, e.transport.name(), e.since_ms))
            .collect();
        drop(reg);
        out.sort_by_key(|(id, _, since)| (*since, *id));
        out.truncate(limit);
        out
    }

    /// Connections of `user` on this process.
    pub fn count(&self, user: &str) -> usize {
        self.inner.lock().by_user.get(user).map_or(0, Ids::len)
    }
}

/// Where revocations outlive a process.
#[async_trait]
pub trait RevocationStore: Send + Sync + 'static {
    async fn save(&self, r: &Revocation) -> Result<(), EngineError>;
    /// Every revocation in force (at most [`MAX_REVOCATIONS`]).
    async fn load(&self) -> Result<Vec<Revocation>, EngineError>;
}

/// The memory engine's store: one process, so the list is the store.
#[derive(Debug, Default)]
pub struct MemoryRevocationStore;

#[async_trait]
impl RevocationStore for MemoryRevocationStore {
    async fn save(&self, _r: &Revocation) -> Result<(), EngineError> {
        Ok(())
    }

    async fn load(&self) -> Result<Vec<Revocation>, EngineError> {
        Ok(Vec::new())
    }
}

/// Revocations in Redis: one key per user or token, `waypost:revoked:…`
/// (`waypost:{revoked}:…` on a Redis Cluster: one slot), holding the JSON
/// revocation and expiring with it.
pub struct RedisRevocationStore {
    conn: crate::engine::redis::RedisHandle,
    prefix: &'static str,
}

const REDIS_PREFIX: &str = "waypost:revoked:";
/// On a Redis Cluster every revocation shares one hash tag, so `SCAN` on
/// that slot's primary finds them all.
const CLUSTER_PREFIX: &str = "waypost:{revoked}:";

impl RedisRevocationStore {
    pub fn new(conn: crate::engine::redis::RedisHandle) -> Self {
        let prefix = if conn.is_cluster() {
            CLUSTER_PREFIX
        } else {
            REDIS_PREFIX
        };
        Self { conn, prefix }
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

#[async_trait]
impl RevocationStore for RedisRevocationStore {
    async fn save(&self, r: &Revocation) -> Result<(), EngineError> {
        let now = crate::now_s();
        let ttl = r.until_s.saturating_sub(now).max(1);
        let json = serde_json::to_string(r).map_err(|e| EngineError::Redis(e.to_string()))?;
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        if let Some(user) = &r.user {
            let key = format!("{}user:{user}", self.prefix);
            // Keep the later cut-off when two revocations race.
            let old: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            let keep = old
                .and_then(|o| serde_json::from_str::<Revocation>(&o).ok())
                .filter(|o| o.before_s > r.before_s && o.until_s >= r.until_s);
            if keep.is_none() {
                pipe.cmd("SET")
                    .arg(&key)
                    .arg(&json)
                    .arg("EX")
                    .arg(ttl)
                    .ignore();
            }
        }
        if let Some(jti) = &r.jti {
            let key = format!("{}jti:{jti}", self.prefix);
            pipe.cmd("SET")
                .arg(&key)
                .arg(&json)
                .arg("EX")
                .arg(ttl)
                .ignore();
        }
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)
    }

    async fn load(&self) -> Result<Vec<Revocation>, EngineError> {
        let mut conn = self.conn.clone();
        let mut cursor: u64 = 0;
        let mut keys: Vec<String> = Vec::new();
        loop {
            let scan = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{}*", self.prefix))
                .arg("COUNT")
                .arg(1000)
                .to_owned();
            // On a cluster: on the primary of the revocations' slot.
            let (next, batch): (u64, Vec<String>) = conn
                .query_on_slot_of(self.prefix, &scan)
                .await
                .map_err(redis_err)?;
            keys.extend(batch);
            cursor = next;
            if cursor == 0 || keys.len() >= MAX_REVOCATIONS {
                break;
            }
        }
        keys.truncate(MAX_REVOCATIONS);
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(500) {
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(chunk)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            out.extend(
                values
                    .into_iter()
                    .flatten()
                    .filter_map(|v| serde_json::from_str(&v).ok()),
            );
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use waypost_protocol::{Claims, Role};

    fn token(sub: &str, iat: Option<u64>, jti: Option<&str>) -> Verified {
        Verified {
            claims: Claims {
                sub: sub.into(),
                role: Role::Buyer,
                exp: 4_000_000_000,
                channels: None,
            },
            iat,
            jti: jti.map(str::to_owned),
        }
    }

    #[test]
    fn a_user_revocation_covers_tokens_issued_before_it() {
        let r = Revocations::default();
        r.apply(
            &Revocation {
                user: Some("b-1".into()),
                jti: None,
                before_s: 1000,
                until_s: 2000,
            },
            900,
        );
        assert!(r.is_revoked(&token("b-1", Some(999), None), 1500));
        assert!(
            r.is_revoked(&token("b-1", None, None), 1500),
            "no iat: before"
        );
        // The revocation's own second counts as before (iat has seconds).
        assert!(r.is_revoked(&token("b-1", Some(1000), None), 1500));
        assert!(!r.is_revoked(&token("b-1", Some(1001), None), 1500));
        assert!(!r.is_revoked(&token("b-2", Some(999), None), 1500));
        assert!(
            !r.is_revoked(&token("b-1", Some(999), None), 2000),
            "lapsed"
        );
        r.prune(2000);
        assert!(r.is_empty());
    }

    #[test]
    fn a_jti_revocation_covers_that_token_only() {
        let r = Revocations::default();
        r.apply(
            &Revocation {
                user: None,
                jti: Some("t-1".into()),
                before_s: 1000,
                until_s: 2000,
            },
            1000,
        );
        assert!(r.is_revoked(&token("b-1", Some(5000), Some("t-1")), 1500));
        assert!(!r.is_revoked(&token("b-1", Some(5000), Some("t-2")), 1500));
        assert!(!r.is_revoked(&token("b-1", Some(5000), None), 1500));
    }

    #[test]
    fn control_messages_round_trip() {
        let c = Control::Disconnect {
            user: "b-1".into(),
            reconnect: true,
        };
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, r#"{"op":"disconnect","user":"b-1","reconnect":true}"#);
        assert_eq!(serde_json::from_str::<Control>(&json).unwrap(), c);
    }

    #[test]
    fn the_list_is_bounded() {
        let r = Revocations::default();
        for i in 0..(MAX_REVOCATIONS + 10) {
            r.apply(
                &Revocation {
                    user: None,
                    jti: Some(format!("t-{i}")),
                    before_s: 0,
                    until_s: 10_000 + i as u64,
                },
                1,
            );
        }
        assert!(r.len() <= MAX_REVOCATIONS);
        // The latest one is kept; the soonest-expiring went first.
        assert!(r.is_revoked(
            &token("x", None, Some(&format!("t-{}", MAX_REVOCATIONS + 9))),
            2
        ));
        assert!(!r.is_revoked(&token("x", None, Some("t-0")), 2));
    }

    /// A user revocation and a token revocation saved together come back
    /// from `load`, on one Redis and on a Redis Cluster (one slot for all).
    async fn redis_store_round_trip(store: RedisRevocationStore) {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let r = Revocation {
            user: Some(format!("u-{tag}")),
            jti: Some(format!("t-{tag}")),
            before_s: crate::now_s(),
            until_s: crate::now_s() + 60,
        };
        store.save(&r).await.unwrap();
        let loaded = store.load().await.unwrap();
        let mine = loaded
            .iter()
            .filter(|l| l.user == r.user || l.jti == r.jti)
            .count();
        assert_eq!(mine, 2, "user key and jti key: {loaded:?}");
    }

    #[tokio::test]
    async fn redis_revocations_round_trip() {
        let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
            eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
            return;
        };
        let conn = crate::engine::chat_redis::connect(&url, &Default::default())
            .await
            .expect("redis reachable");
        redis_store_round_trip(RedisRevocationStore::new(conn)).await;
    }

    #[tokio::test]
    async fn redis_cluster_revocations_round_trip() {
        if let Some(conn) = crate::engine::redis::test_cluster().await {
            redis_store_round_trip(RedisRevocationStore::new(conn)).await;
        }
    }
}
