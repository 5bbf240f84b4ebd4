//! Driver online/offline for webhooks: a driver is online from its first
//! stored fix until no fix arrived for the online TTL (the same rule as
//! `online` in the location read). The set of online drivers with their
//! last-seen time lives in memory or in one Redis sorted set; adding a
//! driver that was absent reports it online, and the sweeper's removal of
//! an expired one reports it offline — on Redis `ZADD`/`ZREM` answer which
//! call did it, so with several processes each change is reported once.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::ConnectionManager;

use super::event::WebhookEvent;
use crate::engine::EngineError;

/// Most drivers tracked at once in memory (beyond: not reported).
const MAX_DRIVERS: usize = 1_000_000;

#[async_trait]
pub trait DriverPresence: Send + Sync + 'static {
    /// Records a fix at `now_ms`; `true` when the driver was not online.
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<bool, EngineError>;
    /// Removes (and returns) drivers last seen at or before `cutoff_ms`.
    async fn expire(&self, cutoff_ms: i64, limit: usize) -> Result<Vec<String>, EngineError>;
}

/// Last seen per driver, and the same ordered by time (for the sweep).
type SeenSet = (HashMap<String, i64>, BTreeSet<(i64, String)>);

#[derive(Default)]
pub struct MemoryDriverPresence {
    inner: Mutex<SeenSet>,
}

#[async_trait]
impl DriverPresence for MemoryDriverPresence {
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<bool, EngineError> {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        let full = map.len() >= MAX_DRIVERS;
        match map.get_mut(driver) {
            Some(t) => {
                if now_ms > *t {
                    order.remove(&(*t, driver.to_owned()));
                    *t = now_ms;
                    order.insert((now_ms, driver.to_owned()));
                }
                Ok(false)
            }
            None if full => Ok(false),
            None => {
                map.insert(driver.to_owned(), now_ms);
                order.insert((now_ms, driver.to_owned()));
                Ok(true)
            }
        }
    }

    async fn expire(&self, cutoff_ms: i64, limit: usize) -> Result<Vec<String>, EngineError> {
        let mut g = self.inner.lock();
        let (map, order) = &mut *g;
        let mut out = Vec::new();
        while out.len() < limit {
            match order.first() {
                Some((t, _)) if *t <= cutoff_ms => {
                    if let Some((_, d)) = order.pop_first() {
                        map.remove(&d);
                        out.push(d);
                    }
                }
                _ => break,
            }
        }
        Ok(out)
    }
}

const KEY: &str = "wp:drivers-online";

pub struct RedisDriverPresence {
    conn: ConnectionManager,
    remove_if_expired: redis::Script,
}

impl RedisDriverPresence {
    pub fn new(conn: ConnectionManager) -> Self {
        Self {
            conn,
            // Removed only if still expired (a fix may have landed since),
            // and by one process only.
            remove_if_expired: redis::Script::new(
                "if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]) or '0') <= tonumber(ARGV[2]) \
                 then return redis.call('ZREM', KEYS[1], ARGV[1]) end return 0",
            ),
        }
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

#[async_trait]
impl DriverPresence for RedisDriverPresence {
    async fn seen(&self, driver: &str, now_ms: i64) -> Result<bool, EngineError> {
        // GT: never moves a newer last-seen back; CH: counts updates too,
        // so read the addition from a plain ZADD NX first.
        let added: i64 = redis::cmd("ZADD")
            .arg(KEY)
            .arg("NX")
            .arg(now_ms)
            .arg(driver)
            .query_async(&mut self.conn.clone())
            .await
            .map_err(redis_err)?;
        if added == 0 {
            let _: i64 = redis::cmd("ZADD")
                .arg(KEY)
                .arg("GT")
                .arg(now_ms)
                .arg(driver)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(redis_err)?;
        }
        Ok(added == 1)
    }

    async fn expire(&self, cutoff_ms: i64, limit: usize) -> Result<Vec<String>, EngineError> {
        let candidates: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(KEY)
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
            let removed: i64 = self
                .remove_if_expired
                .key(KEY)
                .arg(&d)
                .arg(cutoff_ms)
                .invoke_async(&mut self.conn.clone())
                .await
                .map_err(redis_err)?;
            if removed == 1 {
                out.push(d);
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
        assert!(p.seen(&d, 1000).await.unwrap(), "first fix: online");
        assert!(!p.seen(&d, 2000).await.unwrap());
        assert!(
            !p.seen(&d, 1500).await.unwrap(),
            "an older fix changes nothing"
        );
        assert!(
            !p.expire(1999, 10).await.unwrap().contains(&d),
            "seen at 2000"
        );
        assert_eq!(
            p.expire(2000, 10_000)
                .await
                .unwrap()
                .iter()
                .filter(|x| **x == d)
                .count(),
            1
        );
        assert!(
            !p.expire(5000, 10_000).await.unwrap().contains(&d),
            "reported once"
        );
        assert!(p.seen(&d, 6000).await.unwrap(), "online again");
        p.expire(6000, 10_000).await.unwrap();
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
}
