//! Watcher counts across processes. Each process writes its local subscriber
//! count of every channel into the channel's hash
//! (`waypost:watchers:{channel}`, field = instance id, value =
//! `count|expiry_ms` on the Redis clock); readers sum the fields that have
//! not expired, so a crashed process stops counting after the TTL.
//!
//! One task is the only writer, which keeps writes in order: it writes at
//! once when `sync_subscription` asks, checks the hub for changed counts
//! every `watcher_scan`, rewrites everything every `watcher_refresh` (to
//! extend the expiry), and removes this instance's fields on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use parking_lot::Mutex;
use redis::Script;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use waypost_protocol::Channel;

use super::commands::Commands;
use super::handle::key_slot;
use super::keys::Keys;
use super::options::RedisOptions;
use crate::engine::tasks::drain_batch;
use crate::engine::EngineError;
use crate::hub::Hub;

/// Requests queued for the writer.
const REQUEST_QUEUE: usize = 4096;
const WATCH_PRELUDE: &str = include_str!("watch_sum.lua");

/// Channels written per script call.
const WRITE_CHUNK: usize = 256;
/// Most queued requests taken per round.
const REQUEST_BATCH: usize = 1024;

/// The watcher counts of every channel on Redis, whatever the bus: this
/// process's counts written by one task, the sums read by a script.
pub(crate) struct WatcherCounts {
    cmd: Arc<Commands>,
    keys: Keys,
    opts: RedisOptions,
    sum_script: Script,
    requests: mpsc::Sender<WatchRequest>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl WatcherCounts {
    /// Starts the writer task for the counts of `hub`: `instance` names this
    /// process's field in every watcher hash (named by `keys`).
    pub fn start(
        cmd: Arc<Commands>,
        instance: String,
        keys: Keys,
        opts: RedisOptions,
        hub: Arc<Hub>,
    ) -> Self {
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let writer = Writer {
            cmd: Arc::clone(&cmd),
            hub,
            script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("watch_set.lua")
            )),
            instance,
            keys: keys.clone(),
            opts: opts.clone(),
            cancel: cancel.clone(),
        };
        Self {
            cmd,
            keys,
            sum_script: Script::new(&format!(
                "{WATCH_PRELUDE}\n{}",
                include_str!("watchers.lua")
            )),
            requests: tx,
            task: Mutex::new(Some(tokio::spawn(writer.run(rx)))),
            cancel,
            opts,
        }
    }

    /// Records this process's count of `channel` now. Watcher counts are
    /// advisory: a failure is only logged (the periodic refresh retries).
    pub async fn record(&self, channel: &Channel) {
        let (done, ack) = oneshot::channel();
        let req = WatchRequest {
            channel: channel.clone(),
            done,
        };
        let recorded = timeout(self.opts.op_timeout * 2, async {
            self.requests.send(req).await.ok()?;
            ack.await.ok()
        })
        .await;
        if !matches!(recorded, Ok(Some(()))) {
            tracing::debug!(%channel, "watcher count not recorded in time");
        }
    }

    /// Subscribers of `channel` across every process.
    pub async fn count(&self, channel: &Channel) -> Result<u64, EngineError> {
        let mut conn = self.cmd.conn();
        let mut inv = self.sum_script.prepare_invoke();
        inv.key(self.keys.watchers(channel));
        self.cmd.run(inv.invoke_async(&mut conn)).await
    }

    /// Stops the writer (it removes this process's counts first).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            crate::engine::tasks::stop_tasks(
                vec![task],
                self.opts.op_timeout * 3,
                "watcher counts",
            )
            .await;
        }
    }
}

impl Drop for WatcherCounts {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Asks the writer to record one channel's local count now.
struct WatchRequest {
    pub channel: Channel,
    pub done: oneshot::Sender<()>,
}

struct Writer {
    pub cmd: Arc<Commands>,
    pub hub: Arc<Hub>,
    pub script: Script,
    pub instance: String,
    /// Names the watcher hashes.
    pub keys: Keys,
    pub opts: RedisOptions,
    pub cancel: CancellationToken,
}

impl Writer {
    pub async fn run(self, mut requests: mpsc::Receiver<WatchRequest>) {
        // What this process last wrote, by channel (absent = 0).
        let mut written: HashMap<Channel, u32> = HashMap::new();
        let mut scan = tokio::time::interval(self.opts.watcher_scan);
        scan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_full = Instant::now();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                Some(first) = requests.recv() => {
                    let batch = drain_batch(first, &mut requests, REQUEST_BATCH);
                    let channels: HashSet<&Channel> = batch.iter().map(|r| &r.channel).collect();
                    let changes: Vec<(Channel, u32)> = channels
                        .into_iter()
                        .map(|ch| (ch.clone(), self.local(ch)))
                        .filter(|(ch, n)| written.get(ch).copied().unwrap_or(0) != *n)
                        .collect();
                    if let Err(e) = self.write(&mut written, changes).await {
                        tracing::warn!(error = %e, "recording watcher counts failed");
                    }
                    for r in batch {
                        let _ = r.done.send(());
                    }
                }
                _ = scan.tick() => {
                    let full = last_full.elapsed() >= self.opts.watcher_refresh;
                    let current: HashMap<Channel, u32> = self
                        .hub
                        .channels()
                        .into_iter()
                        .map(|ch| {
                            let n = self.local(&ch);
                            (ch, n)
                        })
                        .collect();
                    let mut changes: Vec<(Channel, u32)> = current
                        .iter()
                        .filter(|(ch, n)| full || written.get(*ch) != Some(*n))
                        .map(|(ch, n)| (ch.clone(), *n))
                        .collect();
                    changes.extend(
                        written
                            .keys()
                            .filter(|ch| !current.contains_key(*ch))
                            .map(|ch| (ch.clone(), 0)),
                    );
                    match self.write(&mut written, changes).await {
                        Ok(()) if full => last_full = Instant::now(),
                        Ok(()) => {}
                        Err(e) => tracing::warn!(error = %e, "refreshing watcher counts failed"),
                    }
                }
            }
        }
        // Shutdown: this instance stops counting everywhere.
        let gone: Vec<(Channel, u32)> = written.keys().map(|ch| (ch.clone(), 0)).collect();
        let cleanup = self.write(&mut written, gone);
        match timeout(self.opts.op_timeout * 2, cleanup).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "removing watcher counts at shutdown failed"),
            Err(_) => tracing::warn!("removing watcher counts at shutdown timed out"),
        }
    }

    fn local(&self, channel: &Channel) -> u32 {
        u32::try_from(self.hub.local_count(channel)).unwrap_or(u32::MAX)
    }

    /// Writes `changes` (count 0 removes the field); `written` follows what
    /// made it to Redis.
    async fn write(
        &self,
        written: &mut HashMap<Channel, u32>,
        changes: Vec<(Channel, u32)>,
    ) -> Result<(), EngineError> {
        let ttl_ms = self.opts.watcher_ttl.as_millis() as u64;
        // On a cluster one script call touches one slot: the changes go in
        // groups of one slot each.
        let groups: Vec<Vec<(Channel, u32)>> = if self.keys.cluster {
            let mut by_slot: HashMap<u16, Vec<(Channel, u32)>> = HashMap::new();
            for (ch, n) in changes {
                by_slot
                    .entry(key_slot(self.keys.watchers(&ch).as_bytes()))
                    .or_default()
                    .push((ch, n));
            }
            by_slot.into_values().collect()
        } else {
            vec![changes]
        };
        for chunk in groups.iter().flat_map(|g| g.chunks(WRITE_CHUNK)) {
            let mut inv = self.script.prepare_invoke();
            for (ch, _) in chunk {
                inv.key(self.keys.watchers(ch));
            }
            inv.arg(&self.instance).arg(ttl_ms);
            for (_, n) in chunk {
                inv.arg(*n);
            }
            let mut conn = self.cmd.conn();
            self.cmd.run(inv.invoke_async::<i64>(&mut conn)).await?;
            for (ch, n) in chunk {
                if *n == 0 {
                    written.remove(ch);
                } else {
                    written.insert(ch.clone(), *n);
                }
            }
        }
        Ok(())
    }
}
