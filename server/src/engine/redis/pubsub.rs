//! The pub/sub side of the Redis engine: one dedicated Redis connection per
//! process and one Redis `SUBSCRIBE` per channel with local subscribers.
//!
//! A manager task owns the connection. `sync_subscription` requests only
//! name a channel; the manager compares `hub.local_count(channel) > 0` with
//! what it is actually subscribed to and issues `SUBSCRIBE`/`UNSUBSCRIBE`,
//! so a first-join racing a last-leave always ends at the current truth. A
//! reader task per connection hands every message to the hub (validated as
//! UTF-8 once, then shared by all local subscribers).
//!
//! Failure handling: when the connection drops, or a probe published every
//! few seconds on a private channel does not come back, the manager
//! reconnects with capped full-jitter backoff and resubscribes every channel
//! of `hub.channels()`.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rand::Rng;
use redis::aio::{PubSubSink, PubSubStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use waypost_protocol::backoff::BackoffPolicy;
use waypost_protocol::Channel;

use super::call::{redis_err, with_timeout};
use super::commands::Commands;
use super::options::RedisOptions;
use crate::engine::tasks::drain_batch;
use crate::engine::EngineError;
use crate::frame::Frame;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Most channels (un)subscribed concurrently in one go.
const SUBSCRIBE_CHUNK: usize = 512;
/// Most queued requests the manager takes per round.
const REQUEST_BATCH: usize = 1024;
/// The token of the probe sent right after (re)connecting.
const FIRST_PROBE: u64 = 1;
/// Every this many probes the subscriptions are reconciled with the hub.
const RECONCILE_EVERY_PROBES: u64 = 6;

/// Asks the manager to bring one channel in line with the hub.
pub(super) struct SyncRequest {
    pub channel: Channel,
    pub done: oneshot::Sender<Result<(), EngineError>>,
}

/// The reconnect wait before attempt `n` (from 1): full jitter over
/// `[0, min(cap, base * 2^(n-1))]`, from the shared backoff.
fn reconnect_delay(policy: &BackoffPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    policy.jittered(attempt.saturating_sub(1), rng.random())
}

/// What the manager needs; moved into its task.
pub(super) struct Manager {
    /// Where the primary is (asked again at every reconnect).
    pub target: Arc<super::target::Target>,
    pub cmd: Arc<Commands>,
    pub hub: Arc<Hub>,
    pub metrics: Metrics,
    pub opts: RedisOptions,
    /// Prefix of the Redis channel names (`waypost:ch2:`).
    pub channel_prefix: String,
    /// This process's private probe channel.
    pub probe_channel: String,
    /// `true` while a pub/sub connection is up (for `ready`).
    pub up: watch::Sender<bool>,
    /// Counts resubscriptions after a lost connection ([`crate::engine::Bus::resubscribed`]).
    pub resubscribed: watch::Sender<u64>,
    pub cancel: CancellationToken,
}

/// One live pub/sub connection.
struct Session {
    sink: PubSubSink,
    reader: JoinHandle<()>,
    /// Logical channel names (without prefix) subscribed on this connection.
    subscribed: HashSet<Channel>,
    /// The highest probe token the reader saw come back.
    probe_seen: Arc<AtomicU64>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Why a session ended.
enum End {
    Cancelled,
    Lost(String),
}

impl Manager {
    pub async fn run(self, mut requests: mpsc::Receiver<SyncRequest>) {
        let backoff = BackoffPolicy {
            base: self.opts.backoff_base,
            cap: self.opts.backoff_cap,
            max_elapsed: None,
        };
        let mut attempt = 0u32;
        let mut connected_before = false;
        loop {
            let delay = if attempt == 0 {
                Duration::ZERO
            } else {
                reconnect_delay(&backoff, attempt, &mut rand::rng())
            };
            // Channels asked about while connecting: the snapshot `open`
            // subscribes may predate them, so they are checked again.
            let mut recheck = Vec::new();
            let opened = {
                let open = async {
                    tokio::time::sleep(delay).await;
                    self.open().await
                };
                tokio::pin!(open);
                loop {
                    tokio::select! {
                        () = self.cancel.cancelled() => return,
                        r = &mut open => break r,
                        Some(req) = requests.recv() => {
                            recheck.push(req.channel.clone());
                            self.answer_disconnected(req);
                        }
                    }
                }
            };
            let opened = match opened {
                Ok(mut s) => self.apply(&mut s, recheck, false).await.map(|()| s),
                Err(e) => Err(e),
            };
            let session = match opened {
                Ok(s) => s,
                Err(e) => {
                    attempt = attempt.saturating_add(1);
                    // Every attempt at debug level; warnings thin out during
                    // a long outage.
                    if attempt.is_power_of_two() {
                        tracing::warn!(error = %e, attempt, "redis pub/sub connect failed");
                    } else {
                        tracing::debug!(error = %e, attempt, "redis pub/sub connect failed");
                    }
                    continue;
                }
            };
            self.up.send_replace(true);
            if connected_before {
                self.metrics.redis_reconnects.inc();
                self.resubscribed.send_modify(|n| *n += 1);
                tracing::info!(
                    channels = session.subscribed.len(),
                    "redis pub/sub reconnected and resubscribed"
                );
            }
            connected_before = true;
            let end = self.serve(session, &mut requests).await;
            self.up.send_replace(false);
            match end {
                End::Cancelled => return,
                End::Lost(why) => {
                    tracing::warn!(reason = %why, "redis pub/sub connection lost; reconnecting");
                    attempt = 1;
                }
            }
        }
    }

    /// While disconnected nothing can be subscribed; leaving needs nothing
    /// (the next connection subscribes only what the hub still has).
    fn answer_disconnected(&self, req: SyncRequest) {
        let result = if self.hub.local_count(&req.channel) > 0 {
            Err(EngineError::Redis("pub/sub connection is down".into()))
        } else {
            Ok(())
        };
        let _ = req.done.send(result);
    }

    /// Connects, starts the reader, subscribes the probe channel and every
    /// channel the hub has.
    async fn open(&self) -> Result<Session, EngineError> {
        let client = self.target.client().await?;
        let pubsub = with_timeout(self.opts.op_timeout, client.get_async_pubsub()).await?;
        let (mut sink, stream) = pubsub.split();
        let probe_seen = Arc::new(AtomicU64::new(0));
        let reader = tokio::spawn(read(
            stream,
            Arc::clone(&self.hub),
            self.channel_prefix.clone(),
            self.probe_channel.clone(),
            Arc::clone(&probe_seen),
        ));
        let mut session = Session {
            sink: sink.clone(),
            reader,
            subscribed: HashSet::new(),
            probe_seen,
        };
        with_timeout(self.opts.op_timeout, sink.subscribe(&self.probe_channel)).await?;
        let wanted = self.hub.channels();
        self.apply(&mut session, wanted, true).await?;
        self.first_probe(&session).await?;
        Ok(session)
    }

    /// Checks at once that this connection hears what the command
    /// connection publishes: behind Sentinel the two can land on different
    /// nodes during a failover (a sentinel with a stale view, the old
    /// primary back and still a master), and Redis pub/sub is per node. A
    /// probe nobody received there, or that does not come back within
    /// `op_timeout`, makes the caller reconnect (asking the sentinels
    /// again). When the command connection itself fails the probe proves
    /// nothing either way and the periodic probe decides later.
    async fn first_probe(&self, session: &Session) -> Result<(), EngineError> {
        let token = FIRST_PROBE;
        match self.send_probe(token).await {
            Ok(0) => Err(EngineError::Redis(
                "the probe reached no subscriber: pub/sub is on another node".into(),
            )),
            Ok(_) => {
                let deadline = Instant::now() + self.opts.op_timeout;
                while session.probe_seen.load(Ordering::Acquire) < token {
                    if Instant::now() >= deadline {
                        return Err(timed_out(self.opts.op_timeout));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Ok(())
            }
            Err(e) => {
                tracing::debug!(error = %e, "first pub/sub probe not sent");
                Ok(())
            }
        }
    }

    /// Serves requests and probes until the connection is lost or the
    /// engine shuts down.
    async fn serve(&self, mut session: Session, requests: &mut mpsc::Receiver<SyncRequest>) -> End {
        let mut probe = tokio::time::interval_at(
            Instant::now() + self.opts.probe_interval,
            self.opts.probe_interval,
        );
        probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Tokens go on from the first probe's (probe_seen only grows).
        let mut token = FIRST_PROBE;
        let mut until_reconcile = RECONCILE_EVERY_PROBES;
        let mut outstanding: Option<u64> = None;
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return End::Cancelled,
                _ = &mut session.reader => return End::Lost("connection closed".into()),
                Some(first) = requests.recv() => {
                    let batch = drain_batch(first, requests, REQUEST_BATCH);
                    if let Err(e) = self.handle(&mut session, batch).await {
                        return End::Lost(e.to_string());
                    }
                }
                _ = probe.tick() => {
                    until_reconcile -= 1;
                    if until_reconcile == 0 {
                        until_reconcile = RECONCILE_EVERY_PROBES;
                        if let Err(e) = self.reconcile(&mut session).await {
                            return End::Lost(e.to_string());
                        }
                    }
                    if let Some(t) = outstanding {
                        if session.probe_seen.load(Ordering::Acquire) < t {
                            return End::Lost(format!(
                                "probe did not come back within {:?}",
                                self.opts.probe_interval
                            ));
                        }
                    }
                    token += 1;
                    match self.send_probe(token).await {
                        Ok(0) => return End::Lost("probe had no receiver".into()),
                        Ok(_) => outstanding = Some(token),
                        // The command connection has its own trouble; the
                        // probe proves nothing either way this round.
                        Err(e) => {
                            tracing::debug!(error = %e, "pub/sub probe publish failed");
                            outstanding = None;
                        }
                    }
                }
            }
        }
    }

    /// Safety net: compares every subscribed channel and every hub channel
    /// with the hub, fixing any drift.
    async fn reconcile(&self, session: &mut Session) -> Result<(), EngineError> {
        let mut channels: HashSet<Channel> = self.hub.channels().into_iter().collect();
        channels.extend(session.subscribed.iter().cloned());
        self.apply(session, channels.into_iter().collect(), false)
            .await
    }

    async fn send_probe(&self, token: u64) -> Result<u64, EngineError> {
        let mut conn = self.cmd.conn();
        let publish = redis::cmd("PUBLISH")
            .arg(&self.probe_channel)
            .arg(token)
            .to_owned();
        self.cmd.run(publish.query_async::<u64>(&mut conn)).await
    }

    /// Applies a batch of requests and answers each. An error means the
    /// connection can no longer be trusted.
    async fn handle(
        &self,
        session: &mut Session,
        batch: Vec<SyncRequest>,
    ) -> Result<(), EngineError> {
        let channels: Vec<Channel> = batch
            .iter()
            .map(|r| r.channel.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let result = self.apply(session, channels, false).await;
        for req in batch {
            let answer = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(EngineError::Redis(e.to_string())),
            };
            let _ = req.done.send(answer);
        }
        result
    }

    /// Brings `channels` in line with the hub. With `fresh`, the session has
    /// nothing subscribed yet.
    async fn apply(
        &self,
        session: &mut Session,
        channels: Vec<Channel>,
        fresh: bool,
    ) -> Result<(), EngineError> {
        let mut subscribe = Vec::new();
        let mut unsubscribe = Vec::new();
        for ch in channels {
            let want = self.hub.local_count(&ch) > 0;
            let have = !fresh && session.subscribed.contains(&ch);
            if want && !have {
                subscribe.push(ch);
            } else if !want && have {
                unsubscribe.push(ch);
            }
        }
        for chunk in subscribe.chunks(SUBSCRIBE_CHUNK) {
            self.each(&session.sink, chunk, true).await?;
            session.subscribed.extend(chunk.iter().cloned());
        }
        for chunk in unsubscribe.chunks(SUBSCRIBE_CHUNK) {
            self.each(&session.sink, chunk, false).await?;
            for ch in chunk {
                session.subscribed.remove(ch);
            }
        }
        Ok(())
    }

    /// Sends one `SUBSCRIBE` (or `UNSUBSCRIBE`) per channel, pipelined, and
    /// waits for every confirmation. One channel per command keeps replies
    /// and requests paired one to one in the client's queue.
    async fn each(
        &self,
        sink: &PubSubSink,
        chunk: &[Channel],
        subscribe: bool,
    ) -> Result<(), EngineError> {
        let calls = chunk.iter().map(|ch| {
            let mut sink = sink.clone();
            let name = format!("{}{ch}", self.channel_prefix);
            async move {
                if subscribe {
                    sink.subscribe(name).await
                } else {
                    sink.unsubscribe(name).await
                }
            }
        });
        let all = futures_util::future::join_all(calls);
        let results = timeout(self.opts.op_timeout, all)
            .await
            .map_err(|_| timed_out(self.opts.op_timeout))?;
        results
            .into_iter()
            .collect::<Result<Vec<()>, _>>()
            .map_err(redis_err)?;
        Ok(())
    }
}

fn timed_out(d: Duration) -> EngineError {
    EngineError::Redis(format!("timed out after {d:?}"))
}

/// Hands every message of one connection to the hub until it closes.
async fn read(
    mut stream: PubSubStream,
    hub: Arc<Hub>,
    prefix: String,
    probe_channel: String,
    probe_seen: Arc<AtomicU64>,
) {
    let mut dropped = 0u64;
    while let Some(msg) = stream.next().await {
        let name = msg.get_channel_name();
        if name == probe_channel {
            if let Some(t) = std::str::from_utf8(msg.get_payload_bytes())
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
            {
                probe_seen.fetch_max(t, Ordering::AcqRel);
            }
            continue;
        }
        // `waypost:ch2:` is our key namespace, not part of the channel name.
        let Some(channel) = name
            .strip_prefix(prefix.as_str())
            .and_then(Channel::from_name)
        else {
            continue;
        };
        match Frame::from_envelope(msg.get_payload_bytes()) {
            Ok(frame) => {
                hub.dispatch(&channel, frame);
            }
            Err(e) => {
                dropped += 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        %channel,
                        error = %e,
                        count = dropped,
                        "dropped a pub/sub message that is not a frame envelope"
                    );
                }
            }
        }
    }
}

/// Asks the manager to sync `channel`; resolves with its answer (after
/// Redis confirmed any `SUBSCRIBE`), bounded by `limit`.
pub(super) async fn request(
    tx: &mpsc::Sender<SyncRequest>,
    channel: &Channel,
    limit: Duration,
) -> Result<(), EngineError> {
    let (done, answer) = oneshot::channel();
    let req = SyncRequest {
        channel: channel.clone(),
        done,
    };
    let round_trip = async {
        tx.send(req).await.map_err(|_| EngineError::Closed)?;
        answer.await.map_err(|_| EngineError::Closed)?
    };
    timeout(limit, round_trip)
        .await
        .map_err(|_| timed_out(limit))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use std::collections::HashMap;

    #[test]
    fn backoff_is_full_jitter_and_capped() {
        let b = BackoffPolicy {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(2),
            max_elapsed: None,
        };
        let mut rng = StdRng::seed_from_u64(7);
        let mut seen: HashMap<u32, Vec<Duration>> = HashMap::new();
        for attempt in 1..=40 {
            for _ in 0..50 {
                seen.entry(attempt)
                    .or_default()
                    .push(reconnect_delay(&b, attempt, &mut rng));
            }
        }
        for (attempt, ds) in &seen {
            let ceiling = Duration::from_millis(100 * (1u64 << (attempt - 1).min(20)))
                .min(Duration::from_secs(2));
            assert!(ds.iter().all(|d| *d <= ceiling), "attempt {attempt}");
        }
        // Full jitter: late attempts spread over the whole capped range.
        let late = &seen[&30];
        assert!(late.iter().any(|d| *d < Duration::from_millis(500)));
        assert!(late.iter().any(|d| *d > Duration::from_millis(1500)));
    }
}
