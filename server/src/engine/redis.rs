//! The Redis engine: several server processes share one Redis.
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
//! latest and the watcher count in one atomic round trip.
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

mod call;
mod commands;
mod options;
mod pubsub;
mod setup;
mod target;
mod watchers;

pub(crate) use commands::Commands;
pub use options::{RedisOptions, RedisTls, SentinelConfig};
pub(crate) use setup::{commands, connection_manager};
pub use target::client;

use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::Script;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{Channel, Fix};

use super::{Engine, EngineError, IngestOutcome, IngestTime, StoredFix};
use crate::config::Limits;
use crate::frame::Frame;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Devices remembered per driver for de-duplication (oldest forgotten), as
/// in the memory engine.
const MAX_DEVICES_PER_DRIVER: usize = 8;
const REQUEST_QUEUE: usize = 4096;

const WATCH_PRELUDE: &str = include_str!("redis/watch_sum.lua");

/// Key and channel names.
#[derive(Debug, Clone)]
struct Keys {
    prefix: String,
}

impl Keys {
    fn driver(&self, driver_id: &str, part: &str) -> String {
        format!("{}:{{{driver_id}}}:{part}", self.prefix)
    }
    fn channel_prefix(&self) -> String {
        // `ch2`: payloads are frame envelopes (issue 16); versions that
        // published bare frames (on `ch`) never see them, and mixed
        // processes during a rolling update stay apart instead of
        // forwarding payloads they cannot read.
        format!("{}:ch2:", self.prefix)
    }
    fn watchers_prefix(&self) -> String {
        format!("{}:watchers:", self.prefix)
    }
    fn watchers(&self, channel: &Channel) -> String {
        format!("{}{channel}", self.watchers_prefix())
    }
    fn channel(&self, channel: &Channel) -> String {
        format!("{}{channel}", self.channel_prefix())
    }
    fn probe(&self, instance: &str) -> String {
        format!("{}:probe:{instance}", self.prefix)
    }
}

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

/// Storage and fan-out on Redis.
pub struct RedisEngine {
    cmd: Arc<commands::Commands>,
    limits: Limits,
    opts: RedisOptions,
    keys: Keys,
    ingest_script: Script,
    watchers_script: Script,
    subs: mpsc::Sender<pubsub::SyncRequest>,
    watch: mpsc::Sender<watchers::WatchRequest>,
    pubsub_up: watch::Receiver<bool>,
    instance: String,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl RedisEngine {
    /// Connects (commands and pub/sub) and starts the background tasks.
    /// Fails when Redis does not answer within a few seconds.
    pub async fn connect(
        url: &str,
        hub: Arc<Hub>,
        limits: Limits,
        metrics: Metrics,
        opts: RedisOptions,
    ) -> Result<Self, EngineError> {
        let (target, cmd) = setup::commands(url, &opts).await?;
        let cmd = Arc::new(cmd);

        let keys = Keys {
            prefix: opts.key_prefix.clone(),
        };
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let cancel = CancellationToken::new();
        let (subs, subs_rx) = mpsc::channel(REQUEST_QUEUE);
        let (watch_tx, watch_rx) = mpsc::channel(REQUEST_QUEUE);
        let (up_tx, mut up_rx) = watch::channel(false);

        let manager = pubsub::Manager {
            target,
            cmd: Arc::clone(&cmd),
            hub: Arc::clone(&hub),
            metrics,
            opts: opts.clone(),
            channel_prefix: keys.channel_prefix(),
            probe_channel: keys.probe(&instance),
            up: up_tx,
            cancel: cancel.clone(),
        };
        let writer = watchers::Writer {
            cmd: Arc::clone(&cmd),
            hub: Arc::clone(&hub),
            script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("redis/watch_set.lua")
            )),
            instance: instance.clone(),
            key_prefix: keys.watchers_prefix(),
            opts: opts.clone(),
            cancel: cancel.clone(),
        };
        let tasks = vec![
            tokio::spawn(manager.run(subs_rx)),
            tokio::spawn(writer.run(watch_rx)),
        ];
        let engine = Self {
            cmd,
            limits,
            keys,
            ingest_script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("redis/ingest.lua")
            )),
            watchers_script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("redis/watchers.lua")
            )),
            subs,
            watch: watch_tx,
            pubsub_up: up_rx.clone(),
            instance,
            cancel,
            tasks: Mutex::new(tasks),
            opts,
        };
        let first =
            tokio::time::timeout(engine.opts.op_timeout * 2, up_rx.wait_for(|up| *up)).await;
        if !matches!(first, Ok(Ok(_))) {
            engine.shutdown().await;
            return Err(EngineError::Redis(
                "pub/sub connection did not come up".into(),
            ));
        }
        tracing::info!(instance = %engine.instance, "redis engine connected");
        Ok(engine)
    }

    /// The command connection (its timeouts and reconnects), shared with
    /// the chat stores ([`super::chat_redis::stores`]).
    pub(crate) fn command_conn(&self) -> Arc<Commands> {
        Arc::clone(&self.cmd)
    }

    /// The prefix of every key.
    pub(crate) fn key_prefix(&self) -> &str {
        &self.opts.key_prefix
    }

    /// This process's id in watcher hashes.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    fn ttl_ms(&self) -> i64 {
        self.limits.online_ttl.as_millis() as i64
    }
}

impl Drop for RedisEngine {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Engine for RedisEngine {
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
        inv.key(self.keys.driver(driver_id, "trail"))
            .key(self.keys.driver(driver_id, "latest"))
            .key(self.keys.driver(driver_id, "devices"))
            .key(self.keys.driver(driver_id, &format!("seen:{device_id}")))
            .key(self.keys.driver(driver_id, &format!("span:{device_id}")))
            .key(self.keys.watchers(&tracking));
        inv.arg(device_id)
            .arg(now_ms)
            .arg(self.ttl_ms())
            .arg(self.limits.trail_len)
            .arg(self.limits.dedup_window)
            .arg(self.opts.data_ttl.as_millis() as u64)
            .arg(MAX_DEVICES_PER_DRIVER)
            .arg(self.keys.driver(driver_id, ""));
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
            })
            .filter(|_| at.publish_live);
        inv.arg(self.keys.channel(&tracking))
            .arg(candidate.map_or(0, |(i, _)| i + 1))
            .arg(candidate.map_or_else(String::new, |(_, f)| {
                Frame::location(driver_id, f, at.origin_us).to_envelope()
            }));
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
        let mut conn = self.cmd.conn();
        let same = conn.clone();
        let (accepted, latest_index, watchers, published, had_previous, previous_ts): (
            u32,
            usize,
            u64,
            u8,
            u8,
            i64,
        ) = self
            .cmd
            .run_acked(same, inv.invoke_async(&mut conn))
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
        let mut conn = self.cmd.conn();
        let cmd = redis::cmd("GET")
            .arg(self.keys.driver(driver_id, "latest"))
            .to_owned();
        let raw: Option<String> = self.cmd.run(cmd.query_async(&mut conn)).await?;
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
        let mut conn = self.cmd.conn();
        let cmd = redis::cmd("ZRANGEBYLEX")
            .arg(self.keys.driver(driver_id, "trail"))
            .arg(format!("[{from:020}"))
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit.min(i64::MAX as usize))
            .to_owned();
        let members: Vec<String> = self.cmd.run(cmd.query_async(&mut conn)).await?;
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

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        let mut conn = self.cmd.conn();
        let cmd = redis::cmd("PUBLISH")
            .arg(self.keys.channel(channel))
            .arg(frame.to_envelope())
            .to_owned();
        self.cmd.run(cmd.query_async::<u64>(&mut conn)).await?;
        Ok(())
    }

    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        pubsub::request(&self.subs, channel, self.opts.op_timeout * 2).await?;
        // Watcher counts are advisory: the subscription stands even if
        // recording the count fails (the periodic refresh retries).
        let (done, ack) = tokio::sync::oneshot::channel();
        let req = watchers::WatchRequest {
            channel: channel.clone(),
            done,
        };
        let recorded = tokio::time::timeout(self.opts.op_timeout * 2, async {
            self.watch.send(req).await.ok()?;
            ack.await.ok()
        })
        .await;
        if !matches!(recorded, Ok(Some(()))) {
            tracing::debug!(%channel, "watcher count not recorded in time");
        }
        Ok(())
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        let mut conn = self.cmd.conn();
        let mut inv = self.watchers_script.prepare_invoke();
        inv.key(self.keys.watchers(channel));
        self.cmd.run(inv.invoke_async(&mut conn)).await
    }

    /// Ready when the bus (the pub/sub connection) is up and the stores
    /// (the command connection) reach a writable primary.
    async fn ready(&self) -> Result<(), EngineError> {
        if !*self.pubsub_up.borrow() {
            return Err(EngineError::Redis("pub/sub connection is down".into()));
        }
        // The chat, presence and notification stores share this command
        // connection, so this covers them too.
        self.cmd.check_primary().await
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(self.opts.op_timeout * 3, task)
                .await
                .is_err()
            {
                tracing::warn!("redis engine task did not stop in time; aborted");
                abort.abort();
            }
        }
    }
}
