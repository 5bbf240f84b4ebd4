//! Which drivers posted recently, across every process, for
//! `GET /v1/admin/drivers`.
//!
//! Each process's dashboard registry ([`crate::activity`]) sees the uploads
//! that reached it. With the Redis engine a task copies what it saw into one
//! sorted set (`waypost:drivers:seen`, driver → last upload ms) every
//! [`FLUSH_EVERY`], so any process can list every driver; positions, ages
//! and watcher counts then come from the engine. With the memory engine the
//! process is the cluster and the registry is read directly.

use std::time::Duration;

use async_trait::async_trait;

use crate::engine::EngineError;

/// How often a process copies its recent drivers into the index.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Drivers kept in the index (the least recently seen are trimmed).
pub const MAX_INDEXED: isize = 100_000;
/// Drivers not seen for this long leave the index.
pub const RETAIN_MS: i64 = 24 * 3600 * 1000;

const KEY: &str = "waypost:drivers:seen";

#[async_trait]
pub trait DriverIndex: Send + Sync + 'static {
    /// Records drivers seen: `(driver, last upload ms)`.
    async fn record(&self, seen: &[(String, i64)], now_ms: i64) -> Result<(), EngineError>;
    /// Drivers seen at or after `since_ms`, most recent first, at most `limit`.
    async fn seen_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, EngineError>;
}

/// The index in Redis.
pub struct RedisDriverIndex {
    conn: crate::engine::redis::RedisHandle,
}

impl RedisDriverIndex {
    pub fn new(conn: crate::engine::redis::RedisHandle) -> Self {
        Self { conn }
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

#[async_trait]
impl DriverIndex for RedisDriverIndex {
    async fn record(&self, seen: &[(String, i64)], now_ms: i64) -> Result<(), EngineError> {
        if seen.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        // GT: a slower process never moves a driver's time back.
        let mut zadd = redis::cmd("ZADD");
        zadd.arg(KEY).arg("GT");
        for (driver, ms) in seen {
            zadd.arg(*ms).arg(driver);
        }
        pipe.add_command(zadd).ignore();
        pipe.cmd("ZREMRANGEBYSCORE")
            .arg(KEY)
            .arg("-inf")
            .arg(now_ms - RETAIN_MS)
            .ignore();
        pipe.cmd("ZREMRANGEBYRANK")
            .arg(KEY)
            .arg(0)
            .arg(-MAX_INDEXED - 1)
            .ignore();
        let mut conn = self.conn.clone();
        pipe.query_async::<()>(&mut conn).await.map_err(redis_err)
    }

    async fn seen_since(
        &self,
        since_ms: i64,
        limit: usize,
    ) -> Result<Vec<(String, i64)>, EngineError> {
        let mut conn = self.conn.clone();
        let rows: Vec<(String, f64)> = redis::cmd("ZRANGE")
            .arg(KEY)
            .arg("+inf")
            .arg(since_ms)
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .arg("WITHSCORES")
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        Ok(rows.into_iter().map(|(d, ms)| (d, ms as i64)).collect())
    }
}
