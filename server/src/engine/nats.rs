//! NATS as the bus (`--bus nats --nats-url URL`), with every store on Redis
//! (as Centrifugo pairs a NATS broker with a Redis presence store).
//!
//! - Subjects: `<key prefix>.ch2.<channel>` with the channel name escaped
//!   ([`subject`]): bytes other than ASCII letters, digits, `_`, `-` and `:`
//!   (so `.`, `*`, `>`, whitespace and `%`) become `%XX`, so no channel
//!   name can span tokens or act as a wildcard. Payloads are frame
//!   envelopes, as on Redis.
//! - One NATS subscription per channel with local subscribers per process,
//!   kept in line with the hub by one manager task, as on Redis; each
//!   subscription has a reader task handing messages to the hub.
//!   `sync_subscription` resolves after a flush (the server answered a PING
//!   sent after the SUB, so it processed it).
//! - Watcher counts live in Redis ([`WatcherCounts`]), so ingest reports
//!   them as with the Redis bus.
//! - Reconnects: the client reconnects by itself and re-sends every SUB;
//!   once a flush after its `connected` event succeeds, the bus counts a
//!   resubscribe ([`Bus::resubscribed`]) and the server re-dispatches the
//!   newest stored item of every local channel (`crate::tail`). A stalled
//!   connection is noticed by the client's PINGs (`ping_interval`).
//! - Ordering: the tracking store cannot publish from inside its Redis
//!   script here, so the engine publishes after the store; two concurrent
//!   batches of one driver may publish in the other order (a subscriber can
//!   see an older fix after a newer one). Chat, notifications and orders
//!   are ordered by seq at the connection as on every bus.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;
use waypost_protocol::Channel;

use super::redis::{RedisConn, WatcherCounts};
use super::tasks::{drain_batch, stop_tasks};
use super::{Bus, EngineError};
use crate::frame::Frame;
use crate::hub::Hub;

/// Most queued requests the manager takes per round.
const REQUEST_BATCH: usize = 1024;
const REQUEST_QUEUE: usize = 4096;
/// How often subscriptions are compared with the hub (safety net).
const RECONCILE_EVERY: Duration = Duration::from_secs(30);

/// Timings of the NATS bus.
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Bound on connecting, flushing and publishing.
    pub op_timeout: Duration,
    /// How often the client PINGs the server; two unanswered PINGs make it
    /// reconnect.
    pub ping_interval: Duration,
    /// First part of every subject (the Redis key prefix by default).
    pub subject_prefix: String,
}

impl Default for NatsOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
            subject_prefix: "waypost".into(),
        }
    }
}

fn nats_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::Nats(e.to_string())
}

fn timed_out(what: &str, d: Duration) -> EngineError {
    EngineError::Nats(format!("{what} timed out after {d:?}"))
}

/// The subject of `channel`: `<prefix>.ch2.<escaped channel name>`.
pub fn subject(prefix: &str, channel: &Channel) -> String {
    let name = channel.to_string();
    let mut out = String::with_capacity(prefix.len() + 5 + name.len());
    out.push_str(prefix);
    out.push_str(".ch2.");
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Asks the manager to bring one channel in line with the hub.
struct SyncRequest {
    channel: Channel,
    done: oneshot::Sender<Result<(), EngineError>>,
}

/// Fan-out over NATS; watcher counts in Redis.
pub struct NatsBus {
    client: async_nats::Client,
    prefix: String,
    opts: NatsOptions,
    requests: mpsc::Sender<SyncRequest>,
    watchers: WatcherCounts,
    resubscribed: watch::Receiver<u64>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl NatsBus {
    /// Connects to NATS at `url` (fails when it does not answer within
    /// `op_timeout`) and starts the manager, the reconnect monitor and the
    /// watcher counts on `redis`.
    pub async fn connect(
        url: &str,
        opts: NatsOptions,
        redis: &RedisConn,
        hub: Arc<Hub>,
    ) -> Result<Self, EngineError> {
        let (connected_tx, connected_rx) = watch::channel(0u64);
        let connected_tx = Arc::new(connected_tx);
        let events = Arc::clone(&connected_tx);
        let options = async_nats::ConnectOptions::new()
            .name("waypost")
            .connection_timeout(opts.op_timeout)
            .ping_interval(opts.ping_interval)
            .max_reconnects(None)
            .event_callback(move |event| {
                let events = Arc::clone(&events);
                async move {
                    match event {
                        async_nats::Event::Connected => events.send_modify(|n| *n += 1),
                        async_nats::Event::Disconnected => {
                            tracing::warn!("nats bus disconnected; reconnecting")
                        }
                        other => tracing::debug!(event = %other, "nats event"),
                    }
                }
            });
        let client = timeout(opts.op_timeout * 2, options.connect(url))
            .await
            .map_err(|_| timed_out("connecting to nats", opts.op_timeout * 2))?
            .map_err(nats_err)?;
        let cancel = CancellationToken::new();
        let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
        let (resub_tx, resub_rx) = watch::channel(0u64);
        let prefix = opts.subject_prefix.clone();
        let manager = Manager {
            client: client.clone(),
            hub: Arc::clone(&hub),
            prefix: prefix.clone(),
            op_timeout: opts.op_timeout,
            subs: HashMap::new(),
            cancel: cancel.clone(),
        };
        let monitor = Monitor {
            client: client.clone(),
            connected: connected_rx,
            resubscribed: resub_tx,
            op_timeout: opts.op_timeout,
            cancel: cancel.clone(),
        };
        let tasks = vec![tokio::spawn(manager.run(rx)), tokio::spawn(monitor.run())];
        tracing::info!(url = %super::redacted(url), "nats bus connected");
        Ok(Self {
            client,
            prefix,
            requests: tx,
            watchers: redis.watcher_counts(hub),
            resubscribed: resub_rx,
            cancel,
            tasks: Mutex::new(tasks),
            opts,
        })
    }
}

impl Drop for NatsBus {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Bus for NatsBus {
    fn name(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        let payload = Bytes::from(frame.to_envelope());
        let publish = self.client.publish(subject(&self.prefix, channel), payload);
        timeout(self.opts.op_timeout, publish)
            .await
            .map_err(|_| timed_out("nats publish", self.opts.op_timeout))?
            .map_err(nats_err)
    }

    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        let (done, answer) = oneshot::channel();
        let req = SyncRequest {
            channel: channel.clone(),
            done,
        };
        let limit = self.opts.op_timeout * 2;
        let round_trip = async {
            self.requests
                .send(req)
                .await
                .map_err(|_| EngineError::Closed)?;
            answer.await.map_err(|_| EngineError::Closed)?
        };
        timeout(limit, round_trip)
            .await
            .map_err(|_| timed_out("nats subscribe", limit))??;
        self.watchers.record(channel).await;
        Ok(())
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.watchers.count(channel).await
    }

    async fn ready(&self) -> Result<(), EngineError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            other => Err(EngineError::Nats(format!("nats connection is {other}"))),
        }
    }

    fn resubscribed(&self) -> watch::Receiver<u64> {
        self.resubscribed.clone()
    }

    async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        stop_tasks(tasks, self.opts.op_timeout * 3, "nats bus").await;
        self.watchers.shutdown().await;
    }
}

/// Owns the subscriptions: one per channel with local subscribers.
struct Manager {
    client: async_nats::Client,
    hub: Arc<Hub>,
    prefix: String,
    op_timeout: Duration,
    /// Reader task per subscribed channel (aborting it drops the
    /// subscription, which unsubscribes).
    subs: HashMap<Channel, JoinHandle<()>>,
    cancel: CancellationToken,
}

impl Manager {
    async fn run(mut self, mut requests: mpsc::Receiver<SyncRequest>) {
        let mut reconcile = tokio::time::interval(RECONCILE_EVERY);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => break,
                Some(first) = requests.recv() => {
                    let batch = drain_batch(first, &mut requests, REQUEST_BATCH);
                    let channels: HashSet<Channel> =
                        batch.iter().map(|r| r.channel.clone()).collect();
                    let result = self.apply(channels).await;
                    for req in batch {
                        let answer = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(EngineError::Nats(e.to_string())),
                        };
                        let _ = req.done.send(answer);
                    }
                }
                _ = reconcile.tick() => {
                    let mut channels: HashSet<Channel> = self.hub.channels().into_iter().collect();
                    channels.extend(self.subs.keys().cloned());
                    if let Err(e) = self.apply(channels).await {
                        tracing::debug!(error = %e, "nats reconcile incomplete");
                    }
                }
            }
        }
        for (_, reader) in self.subs.drain() {
            reader.abort();
        }
    }

    /// Brings `channels` in line with the hub, then flushes so the server
    /// has processed every SUB/UNSUB. A subscription made while NATS is
    /// down stays registered (the client sends it on reconnect) but the
    /// flush fails, so the caller hears about it.
    async fn apply(&mut self, channels: HashSet<Channel>) -> Result<(), EngineError> {
        let mut changed = false;
        for ch in channels {
            let want = self.hub.local_count(&ch) > 0;
            let have = self.subs.contains_key(&ch);
            if want && !have {
                // Bounded: while the client reconnects its command queue
                // may be full.
                let sub = timeout(
                    self.op_timeout,
                    self.client.subscribe(subject(&self.prefix, &ch)),
                )
                .await
                .map_err(|_| timed_out("nats subscribe", self.op_timeout))?
                .map_err(nats_err)?;
                let reader = tokio::spawn(read(sub, ch.clone(), Arc::clone(&self.hub)));
                self.subs.insert(ch, reader);
                changed = true;
            } else if !want && have {
                if let Some(reader) = self.subs.remove(&ch) {
                    reader.abort();
                }
                changed = true;
            }
        }
        if changed {
            timeout(self.op_timeout, self.client.flush())
                .await
                .map_err(|_| timed_out("nats flush", self.op_timeout))?
                .map_err(nats_err)?;
        }
        Ok(())
    }
}

/// Hands every message of one subscription to the hub.
async fn read(mut sub: async_nats::Subscriber, channel: Channel, hub: Arc<Hub>) {
    let mut dropped = 0u64;
    while let Some(msg) = sub.next().await {
        match Frame::from_envelope(&msg.payload) {
            Ok(frame) => {
                hub.dispatch(&channel, frame);
            }
            Err(e) => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(%channel, error = %e, count = dropped, "dropped a nats message that is not a frame envelope");
                }
            }
        }
    }
}

/// Turns the client's `connected` events after the first into resubscribes
/// once the server has the SUBs the client re-sent.
struct Monitor {
    client: async_nats::Client,
    connected: watch::Receiver<u64>,
    resubscribed: watch::Sender<u64>,
    op_timeout: Duration,
    cancel: CancellationToken,
}

impl Monitor {
    async fn run(mut self) {
        // The first connection happened before this task started.
        self.connected.borrow_and_update();
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                changed = self.connected.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            // The re-sent SUBs are queued before anything flushed now.
            loop {
                match timeout(self.op_timeout, self.client.flush()).await {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => tracing::debug!(error = %e, "flush after nats reconnect failed"),
                    Err(_) => tracing::debug!("flush after nats reconnect timed out"),
                }
                tokio::select! {
                    () = self.cancel.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            self.resubscribed.send_modify(|n| *n += 1);
            tracing::info!("nats bus reconnected and resubscribed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_escape_separators_and_wildcards() {
        let s = |c: Channel| subject("waypost", &c);
        assert_eq!(s(Channel::tracking("d-1")), "waypost.ch2.tracking:d-1");
        assert_eq!(s(Channel::chat("a.b")), "waypost.ch2.chat:a%2Eb");
        assert_eq!(s(Channel::chat("*")), "waypost.ch2.chat:%2A");
        assert_eq!(s(Channel::chat(">")), "waypost.ch2.chat:%3E");
        assert_eq!(s(Channel::user("a b%")), "waypost.ch2.user:a%20b%25");
        // Escaping is injective: distinct names, distinct subjects.
        assert_ne!(s(Channel::chat("a.b")), s(Channel::chat("a%2Eb")));
    }
}
