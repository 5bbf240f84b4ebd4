//! The Redis backend: several server processes share one Redis. One
//! connection setup ([`RedisConn`]: where the primary is, the command
//! connection, the key prefix) serves the tracking store
//! ([`RedisTrackingStore`]), the chat, presence and notification stores
//! (`chat_redis.rs`), the watcher counts (`redis/watchers.rs`) and the
//! pub/sub bus ([`RedisBus`]); [`super::open::redis`] builds them all.
//!
//! Storage (one driver's keys share the hash tag `{driver}`):
//! - `waypost:{d}:trail`: ZSET, every score 0, member
//!   `<seq zero-padded to 20 digits>|<StoredFix JSON>`, so the lexicographic
//!   order is the seq order, exact for every u64; trimmed to `trail_len`.
//! - `waypost:{d}:latest`: the StoredFix JSON, `SET ... PX online_ttl`.
//! - `waypost:{d}:seen:{device}` / `waypost:{d}:span:{device}`: the dedup
//!   window of one device (the last `dedup_window` seqs, kept as runs of
//!   consecutive seqs; at or below the floor everything counts as seen);
//!   `waypost:{d}:devices` bounds the devices remembered per driver. These
//!   keys live 24 h after the last ingest.
//!
//! An ingest batch is one Lua script (`redis/ingest.lua`): dedup, trail,
//! latest and the watcher count in one atomic round trip; paired with the
//! Redis bus (`live_publish`), the script also publishes the new latest
//! position in that same step.
//!
//! Fan-out: `publish` is a `PUBLISH waypost:ch2:{channel}` of the frame's
//! envelope (`frame.rs`: meta line, newline, frame); one pub/sub
//! connection per process holds one `SUBSCRIBE` per channel with local
//! subscribers (see `redis/pubsub.rs`). Watcher counts across processes live in
//! per-channel hashes (see `redis/watchers.rs`).
//!
//! Every Redis call has a timeout; failures map to [`EngineError::Redis`].
//! Needs Redis 5 or newer (tested on 7.0); Redis Cluster is not supported
//! (one standalone primary).
//!
//! Memory per driver, measured on Redis 7.0: a full trail of 1,000 fixes is
//! about 250 KB; the dedup window of a device sending seqs in order is about
//! 300 B (one run), and at worst (every other seq missing) about 500 KB at the
//! default window of 4,096 seqs.

mod bus_core;
mod call;
pub mod cluster_pubsub;
mod commands;
mod handle;
mod keys;
mod options;
mod pubsub;
mod setup;
mod target;
mod watchers;

pub(crate) use commands::Commands;
pub use handle::{key_slot, RedisHandle};
pub(crate) use keys::Keys;
pub use options::{RedisOptions, RedisTls, SentinelConfig};
pub(crate) use setup::{commands, connection_manager};
pub use target::client;
pub(crate) use watchers::WatcherCounts;

use std::sync::Arc;

use async_trait::async_trait;
use redis::Script;
use serde::Serialize;
use tokio::sync::watch;
use waypost_protocol::{Channel, Fix};

use super::{Bus, EngineError, IngestOutcome, IngestTime, StoredFix, TrackingStore};
use crate::config::Limits;
use crate::frame::Frame;
use crate::hub::Hub;
use crate::metrics::Metrics;
use bus_core::{BusConn, BusCore, ManagerLinks};

/// Devices remembered per driver for de-duplication (oldest forgotten), as
/// in the memory engine.
const MAX_DEVICES_PER_DRIVER: usize = 8;

const WATCH_PRELUDE: &str = include_str!("redis/watch_sum.lua");

/// The same JSON as [`StoredFix`], without copying the fix. `received_ms`
/// comes first so that trail members with the same seq (possible only after
/// a device's dedup window was forgotten) sort by arrival, as in the memory
/// engine (13-digit Unix ms compare lexicographically = numerically).
#[derive(Serialize)]
struct StoredFixRef<'a> {
    received_ms: i64,
    device_id: &'a str,
    fix: &'a Fix,
}

/// The one connection setup on Redis: where the primary is, the command
/// connection (timeouts, reconnects, `WAIT`) and the key names. Cheap to
/// clone; every Redis store and the watcher counts share it.
#[derive(Clone)]
pub struct RedisConn {
    pub(crate) target: Arc<target::Target>,
    pub(crate) cmd: Arc<Commands>,
    pub(crate) keys: Keys,
    pub(crate) opts: RedisOptions,
    /// This process's id in watcher hashes.
    pub(crate) instance: Arc<str>,
}

impl RedisConn {
    /// Connects the command connection. Fails when Redis does not answer
    /// within a few seconds.
    pub async fn connect(url: &str, opts: RedisOptions) -> Result<Self, EngineError> {
        let (target, cmd) = setup::commands(url, &opts).await?;
        Ok(Self {
            target,
            cmd: Arc::new(cmd),
            keys: Keys {
                prefix: opts.key_prefix.clone(),
                cluster: opts.cluster,
            },
            instance: uuid::Uuid::new_v4().simple().to_string().into(),
            opts,
        })
    }

    /// This process's id in watcher hashes.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The prefix of every key.
    pub(crate) fn key_prefix(&self) -> &str {
        &self.opts.key_prefix
    }

    /// The watcher counts of `hub`'s channels on this connection, with
    /// their writer task (for any bus).
    /// What [`BusCore`] needs of this setup.
    fn bus_conn(&self) -> BusConn {
        BusConn {
            cmd: Arc::clone(&self.cmd),
            keys: self.keys.clone(),
            op_timeout: self.opts.op_timeout,
            instance: Arc::clone(&self.instance),
        }
    }

    pub(crate) fn watcher_counts(&self, hub: Arc<Hub>) -> WatcherCounts {
        WatcherCounts::start(
            Arc::clone(&self.cmd),
            self.instance.to_string(),
            self.keys.clone(),
            self.opts.clone(),
            hub,
        )
    }
}

/// Drivers' positions on Redis.
pub struct RedisTrackingStore {
    conn: RedisConn,
    limits: Limits,
    ingest_script: Script,
    /// Publish the new latest position on the Redis channel from the ingest
    /// script (the Redis bus is the bus).
    live_publish: bool,
}

impl RedisTrackingStore {
    pub fn new(conn: RedisConn, limits: Limits, live_publish: bool) -> Self {
        Self {
            conn,
            limits,
            ingest_script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("redis/ingest.lua")
            )),
            live_publish,
        }
    }

    fn ttl_ms(&self) -> i64 {
        self.limits.online_ttl.as_millis() as i64
    }
}

#[async_trait]
impl TrackingStore for RedisTrackingStore {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ingest(
        &self,
        driver_id: &str,
        device_id: &str,
        fixes: &[Fix],
        at: IngestTime,
    ) -> Result<IngestOutcome, EngineError> {
        let now_ms = at.now_ms;
        let tracking = Channel::tracking(driver_id);
        let mut inv = self.ingest_script.prepare_invoke();
        inv.key(self.conn.keys.driver(driver_id, "trail"))
            .key(self.conn.keys.driver(driver_id, "latest"))
            .key(self.conn.keys.driver(driver_id, "devices"))
            .key(
                self.conn
                    .keys
                    .driver(driver_id, &format!("seen:{device_id}")),
            )
            .key(
                self.conn
                    .keys
                    .driver(driver_id, &format!("span:{device_id}")),
            )
            .key(self.conn.keys.watchers(&tracking));
        inv.arg(device_id)
            .arg(now_ms)
            .arg(self.ttl_ms())
            .arg(self.limits.trail_len)
            .arg(self.limits.dedup_window)
            .arg(self.conn.opts.data_ttl.as_millis() as u64)
            .arg(MAX_DEVICES_PER_DRIVER)
            .arg(self.conn.keys.driver(driver_id, ""));
        // The live frame of the fix that will most likely become latest (the
        // newest by ts, the last of equals, as the script picks it): the
        // script publishes it in the same step that stores it, so frames
        // leave in the order the latest position changed and the ingest
        // costs one round trip.
        let candidate = fixes
            .iter()
            .enumerate()
            .fold(None::<(usize, &Fix)>, |best, (i, f)| match best {
                Some((_, b)) if f.ts < b.ts => best,
                _ => Some((i, f)),
            });
        let candidate = candidate.filter(|_| self.live_publish && at.publish_live);
        inv.arg(self.conn.keys.channel(&tracking))
            .arg(candidate.map_or(0, |(i, _)| i + 1))
            .arg(candidate.map_or_else(String::new, |(_, f)| {
                Frame::location(driver_id, f, at.origin_us).to_envelope()
            }))
            // Sharded pub/sub on a cluster (the channel shares the driver's slot).
            .arg(if self.conn.keys.cluster {
                "SPUBLISH"
            } else {
                "PUBLISH"
            });
        for fix in fixes {
            let stored = StoredFixRef {
                received_ms: now_ms,
                device_id,
                fix,
            };
            let json = serde_json::to_string(&stored)
                .map_err(|e| EngineError::Corrupt(format!("unserializable fix: {e}")))?;
            inv.arg(fix.ts).arg(format!("{:020}|{json}", fix.seq));
        }
        let mut conn = self.conn.cmd.conn();
        let same = conn.clone();
        let slot_key = self.conn.keys.driver(driver_id, "latest");
        let (accepted, latest_index, watchers, published, had_previous, previous_ts): (
            u32,
            usize,
            u64,
            u8,
            u8,
            i64,
        ) = self
            .conn
            .cmd
            .run_acked(same, &slot_key, inv.invoke_async(&mut conn))
            .await?;
        let new_latest = latest_index
            .checked_sub(1)
            .and_then(|i| fixes.get(i))
            .cloned();
        Ok(IngestOutcome {
            accepted,
            duplicates: (fixes.len() as u32).saturating_sub(accepted),
            watchers,
            new_latest,
            published: published == 1,
            previous_ts: (had_previous == 1).then_some(previous_ts),
        })
    }

    async fn latest(&self, driver_id: &str, now_ms: i64) -> Result<Option<StoredFix>, EngineError> {
        let mut conn = self.conn.cmd.conn();
        let cmd = redis::cmd("GET")
            .arg(self.conn.keys.driver(driver_id, "latest"))
            .to_owned();
        let raw: Option<String> = self.conn.cmd.run(cmd.query_async(&mut conn)).await?;
        let Some(raw) = raw else {
            return Ok(None);
        };
        let stored: StoredFix = serde_json::from_str(&raw)
            .map_err(|e| EngineError::Corrupt(format!("latest of {driver_id}: {e}")))?;
        Ok(Some(stored).filter(|l| now_ms - l.received_ms <= self.ttl_ms()))
    }

    async fn trail(
        &self,
        driver_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Fix>, EngineError> {
        let Some(from) = after_seq.checked_add(1) else {
            return Ok(Vec::new());
        };
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.cmd.conn();
        let cmd = redis::cmd("ZRANGEBYLEX")
            .arg(self.conn.keys.driver(driver_id, "trail"))
            .arg(format!("[{from:020}"))
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.min(i64::MAX as usize))
            .to_owned();
        let members: Vec<String> = self.conn.cmd.run(cmd.query_async(&mut conn)).await?;
        members
            .iter()
            .map(|m| {
                let json = m.get(21..).unwrap_or_default();
                serde_json::from_str::<StoredFix>(json)
                    .map(|s| s.fix)
                    .map_err(|e| EngineError::Corrupt(format!("trail of {driver_id}: {e}")))
            })
            .collect()
    }

    /// Ready when the command connection reaches a writable primary (the
    /// chat, presence and notification stores share it).
    async fn ready(&self) -> Result<(), EngineError> {
        self.conn.cmd.check_primary().await
    }
}

/// Fan-out over Redis pub/sub: one pub/sub connection per process
/// (`redis/pubsub.rs`) and the watcher counts (`redis/watchers.rs`).
pub struct RedisBus {
    core: BusCore,
}

impl RedisBus {
    /// Starts the pub/sub manager and the watcher counts on `conn`;
    /// resolves once the pub/sub connection is up.
    pub async fn start(
        conn: RedisConn,
        hub: Arc<Hub>,
        metrics: Metrics,
    ) -> Result<Self, EngineError> {
        let spawn = |links: ManagerLinks, requests| {
            let manager = pubsub::Manager {
                target: Arc::clone(&conn.target),
                cmd: Arc::clone(&conn.cmd),
                hub: Arc::clone(&hub),
                metrics,
                opts: conn.opts.clone(),
                channel_prefix: conn.keys.channel_prefix(),
                probe_channel: conn.keys.probe(&conn.instance),
                up: links.up,
                resubscribed: links.resubscribed,
                cancel: links.cancel,
            };
            tokio::spawn(manager.run(requests))
        };
        let core = BusCore::start(
            conn.bus_conn(),
            conn.watcher_counts(Arc::clone(&hub)),
            "redis bus",
            "pub/sub connection did not come up",
            spawn,
        )
        .await?;
        Ok(Self { core })
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        self.core.publish("PUBLISH", channel, frame).await
    }

    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        self.core.sync_subscription(channel).await
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.core.watchers(channel).await
    }

    /// Ready when the pub/sub connection is up.
    async fn ready(&self) -> Result<(), EngineError> {
        if self.core.is_up() {
            Ok(())
        } else {
            Err(EngineError::Redis("pub/sub connection is down".into()))
        }
    }

    fn resubscribed(&self) -> watch::Receiver<u64> {
        self.core.resubscribed()
    }

    async fn shutdown(&self) {
        self.core.shutdown().await;
    }
}

/// The Redis Cluster of the tests (`WAYPOST_TEST_REDIS_CLUSTER_URL`, seed
/// URLs), `None` (the caller says it skips) when unset.
#[cfg(test)]
pub(crate) async fn test_cluster() -> Option<RedisHandle> {
    let Some(url) = std::env::var("WAYPOST_TEST_REDIS_CLUSTER_URL")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_CLUSTER_URL is not set (scripts/test sets it)");
        return None;
    };
    let opts = RedisOptions {
        cluster: true,
        ..RedisOptions::default()
    };
    Some(
        connection_manager(&url, &opts)
            .await
            .expect("cluster reachable"),
    )
}
