//! Durable order intake (`--order-stream KEY`, Redis engine): a Redis
//! Stream consumed with the consumer group `waypost`. Each entry has a
//! field `event` holding an order event with its `order_id`. The backend
//! writes with a plain `XADD` and never needs Waypost to be up.
//!
//! - **Order.** Entries are applied in stream order. With several
//!   processes, only one consumes at a time: the holder of a lease
//!   (`wp:order-stream:{KEY}:leader`, renewed on every read, expiring after
//!   the idle timeout). Letting every process read its share would apply
//!   the events of one order out of order, and a late status would be
//!   refused as backwards: lost.
//! - An entry is acknowledged (`XACK`) only after it was stored and
//!   published (or refused for good: malformed, or a backwards status,
//!   both logged and counted). A storage failure leaves it pending, and the
//!   leader reads its own pending entries before new ones.
//! - When the leader dies (crash, `kill -9`), its lease expires after the
//!   idle timeout and another process (or the restarted one) takes it
//!   over: it first claims every pending entry of the group (`XAUTOCLAIM`,
//!   they are older than anything unread) and applies them in order, then
//!   reads new entries.
//! - Replays are de-duplicated by `event_id` in the order store, so an
//!   entry processed but not acknowledged before a crash stores nothing the
//!   second time.
//! - The group is created at the start of the stream (`0`), so entries
//!   written before any Waypost ran are consumed. Trimming the stream is
//!   the writer's business (`XADD … MAXLEN ~ N`).
//!
//! A leader that stalls longer than the lease (a paused VM) can overlap
//! with its successor for one batch: the lease is checked before every
//! read, not fenced inside each store write.

use std::time::Duration;

use crate::engine::redis::RedisHandle;
use prometheus::{IntCounterVec, Opts, Registry};
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Value};
use tokio_util::sync::CancellationToken;

use super::live::OrderService;
use super::OrderError;
use crate::engine::EngineError;
use waypost_protocol::OrderEvent;

pub const GROUP: &str = "waypost";

/// Settings of the intake.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub key: String,
    /// This consumer's name in the group (unique per process).
    pub consumer: String,
    /// The leader lease: a dead leader's pending entries are taken over
    /// this long after its last renewal.
    pub claim_idle: Duration,
    /// Entries per read.
    pub batch: usize,
    /// How long one read blocks (below the connection's response timeout;
    /// capped at a third of the lease).
    pub block: Duration,
}

impl StreamConfig {
    pub fn new(key: String, consumer: String) -> Self {
        Self {
            key,
            consumer,
            claim_idle: Duration::from_secs(30),
            batch: 100,
            block: Duration::from_millis(1000),
        }
    }
}

/// Entries by outcome: `applied`, `duplicate`, `refused` (backwards),
/// `malformed`, `retry` (left pending after a storage failure).
#[derive(Clone)]
pub struct StreamMetrics {
    pub entries: IntCounterVec,
}

impl StreamMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            entries: IntCounterVec::new(
                Opts::new(
                    "order_stream_entries_total",
                    "Order stream entries by outcome",
                ),
                &["outcome"],
            )?,
        })
    }

    pub fn register(&self, r: &Registry) -> Result<(), prometheus::Error> {
        r.register(Box::new(self.entries.clone()))
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

/// Creates the consumer group at the start of the stream (and the stream)
/// unless it exists.
pub async fn ensure_group(conn: &mut RedisHandle, key: &str) -> Result<(), EngineError> {
    let r: Result<(), redis::RedisError> = conn.xgroup_create_mkstream(key, GROUP, "0").await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_err(e)),
    }
}

/// Takes or renews the lease; whether this consumer holds it, and whether
/// it was just taken (so the group's pending entries must be claimed).
const LEASE: &str = r#"
local cur = redis.call('GET', KEYS[1])
if cur == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 2
end
return 0
"#;

/// Gives the lease up if held (on shutdown), so a successor need not wait.
const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"#;

fn lease_key(stream: &str) -> String {
    format!("wp:order-stream:{{{stream}}}:leader")
}

/// Runs the intake until `cancel`. Its own connection: a blocking read
/// must not hold up other commands.
pub async fn run(
    mut conn: RedisHandle,
    cfg: StreamConfig,
    service: OrderService,
    metrics: StreamMetrics,
    cancel: CancellationToken,
) {
    let lease = redis::Script::new(LEASE);
    let mut backoff = Duration::from_millis(100);
    let mut leader = false;
    while !cancel.is_cancelled() {
        let step = async {
            ensure_group(&mut conn, &cfg.key).await?;
            let got: u8 = lease
                .key(lease_key(&cfg.key))
                .arg(&cfg.consumer)
                .arg(cfg.claim_idle.as_millis().max(1) as u64)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_err)?;
            if got == 0 {
                if leader {
                    tracing::warn!(stream = %cfg.key, "order stream lease lost");
                }
                leader = false;
                // Not the leader: look again within a third of the lease.
                tokio::time::sleep(cfg.claim_idle / 3).await;
                return Ok(());
            }
            if got == 2 || !leader {
                tracing::info!(stream = %cfg.key, consumer = %cfg.consumer, "order stream lease taken");
                leader = true;
                claim_all(&mut conn, &cfg).await?;
            }
            // Own pending entries (claimed, or left by a failure) first,
            // in stream order; then new ones.
            if read(&mut conn, &cfg, &service, &metrics, "0").await? == 0 {
                read(&mut conn, &cfg, &service, &metrics, ">").await?;
            }
            Ok::<(), EngineError>(())
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = step => r,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(stream = %cfg.key, error = %e, "order stream intake failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    if leader {
        let _: Result<i64, _> = redis::Script::new(RELEASE)
            .key(lease_key(&cfg.key))
            .arg(&cfg.consumer)
            .invoke_async(&mut conn)
            .await;
    }
    tracing::info!(stream = %cfg.key, "order stream intake stopped");
}

/// Reads (and applies, in order) entries from `id`: `0` for this
/// consumer's pending entries, `>` for new ones (blocking). Returns how
/// many it read.
async fn read(
    conn: &mut RedisHandle,
    cfg: &StreamConfig,
    service: &OrderService,
    metrics: &StreamMetrics,
    id: &str,
) -> Result<usize, EngineError> {
    let mut opts = StreamReadOptions::default()
        .group(GROUP, &cfg.consumer)
        .count(cfg.batch);
    if id == ">" {
        let block = cfg.block.min(cfg.claim_idle / 3);
        opts = opts.block(block.as_millis().max(1) as usize);
    }
    let reply: Option<StreamReadReply> = conn
        .xread_options(&[&cfg.key], &[id], &opts)
        .await
        .map_err(redis_err)?;
    let mut n = 0;
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for entry in key.ids {
            n += 1;
            handle(
                conn,
                cfg,
                service,
                metrics,
                &entry.id,
                entry.map.get("event"),
            )
            .await?;
        }
    }
    Ok(n)
}

/// On taking the lease: moves every pending entry of the group (the
/// previous leader's) to this consumer, without applying them yet (`read`
/// with `0` then applies them in stream order). Bounded in pages.
async fn claim_all(conn: &mut RedisHandle, cfg: &StreamConfig) -> Result<(), EngineError> {
    let mut cursor = "0-0".to_owned();
    for _ in 0..10_000 {
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&cfg.key)
            .arg(GROUP)
            .arg(&cfg.consumer)
            .arg(0)
            .arg(&cursor)
            .arg("COUNT")
            .arg(cfg.batch)
            .arg("JUSTID")
            .query_async(conn)
            .await
            .map_err(redis_err)?;
        if !reply.claimed.is_empty() {
            tracing::info!(stream = %cfg.key, n = reply.claimed.len(), "claimed pending order stream entries");
        }
        if reply.next_stream_id == "0-0" {
            break;
        }
        cursor = reply.next_stream_id;
    }
    Ok(())
}

/// Applies one entry and acknowledges it unless storage failed.
async fn handle(
    conn: &mut RedisHandle,
    cfg: &StreamConfig,
    service: &OrderService,
    metrics: &StreamMetrics,
    id: &str,
    field: Option<&Value>,
) -> Result<(), EngineError> {
    let outcome = match parse(field) {
        Err(why) => {
            tracing::warn!(stream = %cfg.key, id, why, "malformed order stream entry acknowledged");
            "malformed"
        }
        Ok((order_id, ev)) => match service.apply_event(&order_id, &ev, crate::now_ms()).await {
            Ok(super::Applied::New { .. }) => "applied",
            Ok(super::Applied::Duplicate { .. }) => "duplicate",
            Err(e @ OrderError::Backwards { .. }) => {
                tracing::warn!(stream = %cfg.key, id, order = %order_id, error = %e, "order event refused");
                "refused"
            }
            Err(e) => {
                // Left pending: claimed again after the idle timeout.
                metrics.entries.with_label_values(&["retry"]).inc();
                return Err(match e {
                    OrderError::Store(s) => s,
                    other => EngineError::Redis(other.to_string()),
                });
            }
        },
    };
    metrics.entries.with_label_values(&[outcome]).inc();
    let _: i64 = conn.xack(&cfg.key, GROUP, &[id]).await.map_err(redis_err)?;
    Ok(())
}

/// The order id and event of an entry's `event` field.
fn parse(field: Option<&Value>) -> Result<(String, OrderEvent), String> {
    let raw: String = match field {
        Some(v) => redis::from_redis_value(v).map_err(|e| e.to_string())?,
        None => return Err("no field `event`".into()),
    };
    let ev: OrderEvent = serde_json::from_str(&raw).map_err(|e| e.to_string())?;
    let order_id = ev
        .order_id
        .clone()
        .ok_or_else(|| "event has no order_id".to_owned())?;
    super::check_event(&order_id, &ev)?;
    Ok((order_id, ev))
}
