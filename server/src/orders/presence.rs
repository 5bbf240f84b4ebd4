//! Driver online/offline: a driver is online from its first stored fix
//! until no fix arrived for the online TTL (the same rule as `online` in
//! the location read). Feeds the `driver_status` frames and the
//! `driver.online`/`driver.offline` webhooks. The set of online drivers
//! with their last-seen time lives in memory or in one Redis sorted set,
//! and beside it the drivers that went dark with the time they were last
//! seen (so a comeback can say how long it was dark). Adding a driver that
//! was absent reports it, and the sweeper's removal of an expired one
//! reports it offline — on Redis the scripts answer which call did it, so
//! with several processes each change is reported once.

use std::collections::{BTreeSet, HashMap};

use crate::engine::redis::RedisHandle;
use async_trait::async_trait;
use parking_lot::Mutex;

use crate::engine::EngineError;
use crate::webhooks::WebhookEvent;

/// Most drivers tracked at once in memory, online and dark each (beyond:
/// not reported).
const MAX_DRIVERS: usize = 1_000_000;
/// How long a dark driver is remembered (its comeback says how long it was
/// dark), ms.
pub const DARK_RETAIN_MS: i64 = 24 * 3600 * 1000;

/// What a fix at `now` meant for a driver's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It was online already.
    Online,
    /// Not known (first fix, or dark for longer than [`DARK_RETAIN_MS`]).
    New,
    /// It was offline; last seen at `last_seen_ms`.
    Back { last_seen_ms: i64 },
}

#[async_trait]
pub trait DriverPresence: Send + Sync + 'static {
    /// Records a fix at `now_ms`.
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<Seen, EngineError>;
    /// Moves drivers last seen at or before `cutoff_ms` to the dark set and
    /// returns them with their last-seen time.
    async fn expire(&self, cutoff_ms: i64, limit: usize)
        -> Result<Vec<(String, i64)>, EngineError>;
}

/// Last seen per online driver, the same ordered by time (for the sweep),
/// and the dark drivers' last-seen times.
#[derive(Default)]
struct Sets {
    online: HashMap<String, i64>,
    order: BTreeSet<(i64, String)>,
    dark: HashMap<String, i64>,
}

#[derive(Default)]
pub struct MemoryDriverPresence {
    inner: Mutex<Sets>,
}

#[async_trait]
impl DriverPresence for MemoryDriverPresence {
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<Seen, EngineError> {
        let mut g = self.inner.lock();
        let s = &mut *g;
        if let Some(t) = s.online.get_mut(driver) {
            if now_ms > *t {
                s.order.remove(&(*t, driver.to_owned()));
                *t = now_ms;
                s.order.insert((now_ms, driver.to_owned()));
            }
            return Ok(Seen::Online);
        }
        let dark = s.dark.remove(driver);
        if s.online.len() >= MAX_DRIVERS {
            return Ok(Seen::Online);
        }
        s.online.insert(driver.to_owned(), now_ms);
        s.order.insert((now_ms, driver.to_owned()));
        Ok(match dark {
            Some(t) if now_ms - t <= DARK_RETAIN_MS => Seen::Back { last_seen_ms: t },
            _ => Seen::New,
        })
    }

    async fn expire(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, EngineError> {
        let mut g = self.inner.lock();
        let s = &mut *g;
        let mut out = Vec::new();
        while out.len() < limit {
            match s.order.first() {
                Some((t, _)) if *t <= cutoff_ms => {
                    if let Some((t, d)) = s.order.pop_first() {
                        s.online.remove(&d);
                        if s.dark.len() >= MAX_DRIVERS {
                            s.dark.retain(|_, seen| cutoff_ms - *seen <= DARK_RETAIN_MS);
                        }
                        if s.dark.len() < MAX_DRIVERS {
                            s.dark.insert(d.clone(), t);
                        }
                        out.push((d, t));
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

const KEY: &str = "wp:drivers-online";
const DARK_KEY: &str = "wp:drivers-dark";
/// On a Redis Cluster the two sets share a hash tag: the scripts touch both.
const CLUSTER_KEY: &str = "wp:{drivers}:online";
const CLUSTER_DARK_KEY: &str = "wp:{drivers}:dark";

pub struct RedisDriverPresence {
    conn: RedisHandle,
    key: &'static str,
    dark_key: &'static str,
    seen: redis::Script,
    expire_one: redis::Script,
}

impl RedisDriverPresence {
    pub fn new(conn: RedisHandle) -> Self {
        let (key, dark_key) = if conn.is_cluster() {
            (CLUSTER_KEY, CLUSTER_DARK_KEY)
        } else {
            (KEY, DARK_KEY)
        };
        Self {
            conn,
            key,
            dark_key,
            // {0}: online already (GT: never moves a newer last-seen
            // back); {1}: new; {2, t}: back from dark, last seen at t.
            seen: redis::Script::new(
                "if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then \
                   redis.call('ZADD', KEYS[1], 'GT', ARGV[2], ARGV[1]) return {0} end \
                 local t = redis.call('ZSCORE', KEYS[2], ARGV[1]) \
                 if t then redis.call('ZREM', KEYS[2], ARGV[1]) \
                   if tonumber(ARGV[2]) - tonumber(t) <= tonumber(ARGV[3]) then \
                     return {2, tonumber(t)} end end \
                 return {1}",
            ),
            // Moved to the dark set only if still expired (a fix may have
            // landed since), and by one process only: {1, last seen} or {0}.
            expire_one: redis::Script::new(
                "local t = redis.call('ZSCORE', KEYS[1], ARGV[1]) \
                 if t and tonumber(t) <= tonumber(ARGV[2]) then \
                   redis.call('ZREM', KEYS[1], ARGV[1]) \
                   redis.call('ZADD', KEYS[2], t, ARGV[1]) \
                   redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[2]) - tonumber(ARGV[3])) \
                   return {1, tonumber(t)} end \
                 return {0}",
            ),
        }
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

#[async_trait]
impl DriverPresence for RedisDriverPresence {
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<Seen, EngineError> {
        let r: Vec<i64> = self
            .seen
            .key(self.key)
            .key(self.dark_key)
            .arg(driver)
            .arg(now_ms)
            .arg(DARK_RETAIN_MS)
            .invoke_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        Ok(match r.as_slice() {
            [2, t] => Seen::Back { last_seen_ms: *t },
            [1] => Seen::New,
            _ => Seen::Online,
        })
    }

    async fn expire(
        &self,
        cutoff_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, EngineError> {
        let candidates: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.key)
            .arg("-inf")
            .arg(cutoff_ms)
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        let mut out = Vec::new();
        for d in candidates {
            let r: Vec<i64> = self
                .expire_one
                .key(self.key)
                .key(self.dark_key)
                .arg(&d)
                .arg(cutoff_ms)
                .arg(DARK_RETAIN_MS)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(redis_err)?;
            if let [1, t] = r.as_slice() {
                out.push((d, *t));
            }
        }
        Ok(out)
    }
}

/// The webhook of a presence change.
pub fn presence_event(driver: &str, online: bool, ts: i64) -> WebhookEvent {
    let kind = if online {
        "driver.online"
    } else {
        "driver.offline"
    };
    WebhookEvent {
        id: format!("{kind}:{driver}:{ts}"),
        kind: kind.into(),
        ts,
        data: serde_json::json!({ "driver_id": driver }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn conformance(p: &dyn DriverPresence) {
        let d = format!("d-{}", uuid::Uuid::new_v4().simple());
        let mine = |v: Vec<(String, i64)>| -> Vec<i64> {
            v.into_iter()
                .filter(|(x, _)| *x == d)
                .map(|(_, t)| t)
                .collect()
        };
        assert_eq!(p.seen(&d, 1000).await.unwrap(), Seen::New, "first fix");
        assert_eq!(p.seen(&d, 2000).await.unwrap(), Seen::Online);
        assert_eq!(
            p.seen(&d, 1500).await.unwrap(),
            Seen::Online,
            "an older fix changes nothing"
        );
        assert!(
            mine(p.expire(1999, 10).await.unwrap()).is_empty(),
            "seen at 2000"
        );
        assert_eq!(mine(p.expire(2000, 10_000).await.unwrap()), [2000]);
        assert!(
            mine(p.expire(5000, 10_000).await.unwrap()).is_empty(),
            "reported once"
        );
        assert_eq!(
            p.seen(&d, 6000).await.unwrap(),
            Seen::Back { last_seen_ms: 2000 },
            "online again, dark since 2000"
        );
        assert_eq!(p.seen(&d, 7000).await.unwrap(), Seen::Online);
        assert_eq!(mine(p.expire(7000, 10_000).await.unwrap()), [7000]);
        assert_eq!(
            p.seen(&d, 7000 + DARK_RETAIN_MS + 1).await.unwrap(),
            Seen::New,
            "dark for too long is forgotten"
        );
        p.expire(i64::MAX / 2, 10_000).await.unwrap();
    }

    #[tokio::test]
    async fn memory_presence() {
        conformance(&MemoryDriverPresence::default()).await;
    }

    #[tokio::test]
    async fn redis_presence() {
        let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
            eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
            return;
        };
        let conn = crate::engine::chat_redis::connect(&url, &Default::default())
            .await
            .expect("redis");
        conformance(&RedisDriverPresence::new(conn)).await;
    }

    #[tokio::test]
    async fn redis_cluster_presence() {
        if let Some(conn) = crate::engine::redis::test_cluster().await {
            conformance(&RedisDriverPresence::new(conn)).await;
        }
    }
}
