//! Durable order intake (`--order-stream KEY`, Redis engine): a Redis
//! Stream consumed with the consumer group `waypost`. Each entry has a
//! field `event` holding an order event with its `order_id`. The backend
//! writes with a plain `XADD` and never needs Waypost to be up.
//!
//! - An entry is acknowledged (`XACK`) only after it was stored and
//!   published (or refused for good: malformed, or a backwards status,
//!   both logged and counted). A storage failure leaves it pending.
//! - Entries pending longer than the idle timeout — left by a crashed or
//!   killed process, or by a storage failure — are taken over with
//!   `XAUTOCLAIM` by any consumer (including the restarted one).
//! - Replays are de-duplicated by `event_id` in the order store, so an
//!   entry processed but not acknowledged before a crash stores nothing the
//!   second time.
//! - The group is created at the start of the stream (`0`), so entries
//!   written before any Waypost ran are consumed. Trimming the stream is
//!   the writer's business (`XADD … MAXLEN ~ N`).

use std::time::Duration;

use prometheus::{IntCounterVec, Opts, Registry};
use redis::aio::ConnectionManager;
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
    /// Entries pending this long are claimed from their consumer.
    pub claim_idle: Duration,
    /// Entries per read.
    pub batch: usize,
    /// How long one read blocks (below the connection's response timeout).
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
pub async fn ensure_group(conn: &mut ConnectionManager, key: &str) -> Result<(), EngineError> {
    let r: Result<(), redis::RedisError> = conn.xgroup_create_mkstream(key, GROUP, "0").await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(e) => Err(redis_err(e)),
    }
}

/// Runs the intake until `cancel`. Its own connection: a blocking read
/// must not hold up other commands.
pub async fn run(
    mut conn: ConnectionManager,
    cfg: StreamConfig,
    service: OrderService,
    metrics: StreamMetrics,
    cancel: CancellationToken,
) {
    let mut last_claim = tokio::time::Instant::now() - cfg.claim_idle;
    let mut backoff = Duration::from_millis(100);
    while !cancel.is_cancelled() {
        let step = async {
            ensure_group(&mut conn, &cfg.key).await?;
            if last_claim.elapsed() >= cfg.claim_idle / 2 {
                last_claim = tokio::time::Instant::now();
                claim_stale(&mut conn, &cfg, &service, &metrics).await?;
            }
            read_new(&mut conn, &cfg, &service, &metrics).await
        };
        let result = tokio::select! {
            _ = cancel.cancelled() => break,
            r = step => r,
        };
        match result {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(stream = %cfg.key, error = %e, "order stream read failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    tracing::info!(stream = %cfg.key, "order stream intake stopped");
}

async fn read_new(
    conn: &mut ConnectionManager,
    cfg: &StreamConfig,
    service: &OrderService,
    metrics: &StreamMetrics,
) -> Result<(), EngineError> {
    let opts = StreamReadOptions::default()
        .group(GROUP, &cfg.consumer)
        .count(cfg.batch)
        .block(cfg.block.as_millis() as usize);
    let reply: Option<StreamReadReply> = conn
        .xread_options(&[&cfg.key], &[">"], &opts)
        .await
        .map_err(redis_err)?;
    for key in reply.map(|r| r.keys).unwrap_or_default() {
        for entry in key.ids {
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
    Ok(())
}

/// Takes over entries idle past the timeout (`XAUTOCLAIM`, in pages).
async fn claim_stale(
    conn: &mut ConnectionManager,
    cfg: &StreamConfig,
    service: &OrderService,
    metrics: &StreamMetrics,
) -> Result<(), EngineError> {
    let mut cursor = "0-0".to_owned();
    // Bounded: at most 100 pages per pass.
    for _ in 0..100 {
        let reply: redis::streams::StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(&cfg.key)
            .arg(GROUP)
            .arg(&cfg.consumer)
            .arg(cfg.claim_idle.as_millis() as u64)
            .arg(&cursor)
            .arg("COUNT")
            .arg(cfg.batch)
            .query_async(conn)
            .await
            .map_err(redis_err)?;
        for entry in &reply.claimed {
            tracing::info!(stream = %cfg.key, id = %entry.id, "claimed an idle order stream entry");
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
        if reply.next_stream_id == "0-0" {
            break;
        }
        cursor = reply.next_stream_id;
    }
    Ok(())
}

/// Applies one entry and acknowledges it unless storage failed.
async fn handle(
    conn: &mut ConnectionManager,
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
