//! What the two Redis buses share ([`super::RedisBus`] on one Redis,
//! [`super::cluster_pubsub::ClusterBus`] on a cluster): a subscription
//! manager task fed through a bounded request queue, the watcher counts, the
//! manager's "up" and "resubscribed" signals, publishing on the command
//! connection and an orderly shutdown. Only the manager and the publish
//! command (`PUBLISH` / `SPUBLISH`) differ.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waypost_protocol::Channel;

use super::commands::Commands;
use super::keys::Keys;
use super::pubsub::{self, SyncRequest};
use super::watchers::WatcherCounts;
use crate::engine::EngineError;
use crate::frame::Frame;

/// Pending subscription requests per process before callers wait.
const REQUEST_QUEUE: usize = 4096;

/// What a bus's manager task reports to the bus.
pub(super) struct ManagerLinks {
    /// `true` while the manager can receive (connection up, slot map known).
    pub up: watch::Sender<bool>,
    /// Bumped after channels were subscribed again (publishes may be missed).
    pub resubscribed: watch::Sender<u64>,
    pub cancel: CancellationToken,
}

/// The parts of the Redis connection setup a bus uses (taken apart so
/// this module does not depend on its parent).
pub(super) struct BusConn {
    pub cmd: Arc<Commands>,
    pub keys: Keys,
    pub op_timeout: Duration,
    /// This process's id (logs).
    pub instance: Arc<str>,
}

/// The shared half of a Redis bus.
pub(super) struct BusCore {
    pub conn: BusConn,
    subs: mpsc::Sender<SyncRequest>,
    watchers: WatcherCounts,
    up: watch::Receiver<bool>,
    resubscribed: watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// For logs: "redis bus", "redis cluster bus".
    name: &'static str,
}

impl BusCore {
    /// Starts the manager task `spawn` makes from the links and the
    /// request queue, beside `watchers` (this process's watcher counts);
    /// resolves once the manager says it is up, else fails with `not_up`
    /// after twice the operation timeout.
    pub async fn start(
        conn: BusConn,
        watchers: WatcherCounts,
        name: &'static str,
        not_up: &str,
        spawn: impl FnOnce(ManagerLinks, mpsc::Receiver<SyncRequest>) -> JoinHandle<()>,
    ) -> Result<Self, EngineError> {
        let cancel = CancellationToken::new();
        let (subs, subs_rx) = mpsc::channel(REQUEST_QUEUE);
        let (up_tx, mut up_rx) = watch::channel(false);
        let (resub_tx, resub_rx) = watch::channel(0u64);
        let links = ManagerLinks {
            up: up_tx,
            resubscribed: resub_tx,
            cancel: cancel.clone(),
        };
        let core = Self {
            subs,
            watchers,
            up: up_rx.clone(),
            resubscribed: resub_rx,
            tasks: Mutex::new(vec![spawn(links, subs_rx)]),
            cancel,
            conn,
            name,
        };
        let first = tokio::time::timeout(core.conn.op_timeout * 2, up_rx.wait_for(|up| *up)).await;
        if !matches!(first, Ok(Ok(_))) {
            core.shutdown().await;
            return Err(EngineError::Redis(not_up.into()));
        }
        tracing::info!(instance = %core.conn.instance, "{name} connected");
        Ok(core)
    }

    /// Publishes `frame` on `channel` with `command` (`PUBLISH` or
    /// `SPUBLISH`) on the command connection.
    pub async fn publish(
        &self,
        command: &str,
        channel: &Channel,
        frame: Frame,
    ) -> Result<(), EngineError> {
        let mut conn = self.conn.cmd.conn();
        let cmd = redis::cmd(command)
            .arg(self.conn.keys.channel(channel))
            .arg(frame.to_envelope())
            .to_owned();
        self.conn.cmd.run(cmd.query_async::<u64>(&mut conn)).await?;
        Ok(())
    }

    /// Has the manager (un)subscribe `channel` as the hub's subscribers
    /// say, then records this process's watcher count.
    pub async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        pubsub::request(&self.subs, channel, self.conn.op_timeout * 2).await?;
        self.watchers.record(channel).await;
        Ok(())
    }

    pub async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.watchers.count(channel).await
    }

    /// Whether the manager is up now.
    pub fn is_up(&self) -> bool {
        *self.up.borrow()
    }

    pub fn resubscribed(&self) -> watch::Receiver<u64> {
        self.resubscribed.clone()
    }

    /// Stops the manager and the watcher counts (bounded).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        crate::engine::tasks::stop_tasks(tasks, self.conn.op_timeout * 3, self.name).await;
        self.watchers.shutdown().await;
    }
}

impl Drop for BusCore {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
