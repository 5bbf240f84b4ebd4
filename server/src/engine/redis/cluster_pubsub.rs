//! Fan-out on a Redis Cluster over sharded pub/sub (Redis 7):
//! [`ClusterBus`]. Publishing is `SPUBLISH` on the command connection
//! (routed to the primary of the channel's slot; the ingest script
//! `SPUBLISH`es from the driver's slot itself). Receiving: one RESP3
//! connection per primary that owns a locally subscribed channel, and one
//! `SSUBSCRIBE` per channel with local subscribers, on the primary that owns
//! the channel's slot now.
//!
//! A manager task owns those connections and a copy of the slot map
//! (`CLUSTER SLOTS`, asked again every second and whenever something moved).
//! Every [`TICK`] it compares, per channel, where it is subscribed with
//! where it should be, and moves what differs. Moves happen when:
//! - a node connection drops (`kill -9` of a primary): its channels are
//!   subscribed again on the replica promoted in its place, once the slot
//!   map names it;
//! - a slot moves (`redis-cli --cluster reshard`, a failover): Redis ends the
//!   sharded subscriptions of the slot with an unsolicited `sunsubscribe`; the
//!   connection that got it is replaced (a reply may have been paired with
//!   that push) and its channels go to their owners per the new slot map.
//!
//! Publishes made while a channel was moving never reach this process, so
//! once every moved channel is subscribed again the bus counts a resubscribe
//! ([`crate::engine::Bus::resubscribed`]): `crate::tail` then re-dispatches
//! the newest stored item of every local channel (a connection that missed
//! something fills the gap from the store).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;
use waypost_protocol::Channel;

use super::bus_core::{BusCore, ManagerLinks};
use super::call::{redis_err, with_timeout};
use super::handle::key_slot;
use super::keys::Keys;
use super::pubsub::SyncRequest;
use super::RedisConn;
use crate::engine::tasks::drain_batch;
use crate::engine::{Bus, EngineError};
use crate::frame::Frame;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// How often subscriptions are compared with the slot map and the hub.
pub const TICK: Duration = Duration::from_millis(200);
/// The slot map is asked again at least this often.
const SLOTS_EVERY: Duration = Duration::from_secs(1);
/// Most channels subscribed concurrently on one node in one go.
const SUBSCRIBE_CHUNK: usize = 512;
/// Most queued requests the manager takes per round.
const REQUEST_BATCH: usize = 1024;

type Addr = (String, u16);

/// Which primary owns which slots.
#[derive(Debug, Default, Clone)]
struct SlotMap {
    /// `(first slot, last slot, primary)`, sorted by first slot.
    ranges: Vec<(u16, u16, Addr)>,
}

impl SlotMap {
    fn owner(&self, slot: u16) -> Option<&Addr> {
        let i = self.ranges.partition_point(|(start, _, _)| *start <= slot);
        let (start, end, addr) = self.ranges.get(i.checked_sub(1)?)?;
        (*start <= slot && slot <= *end).then_some(addr)
    }

    /// From a `CLUSTER SLOTS` reply: `[[start, end, [host, port, id, ...],
    /// replicas...], ...]`.
    fn parse(reply: &Value) -> Result<Self, EngineError> {
        let bad = || EngineError::Redis("unexpected CLUSTER SLOTS reply".into());
        let Value::Array(rows) = reply else {
            return Err(bad());
        };
        let mut ranges = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Array(fields) = row else {
                return Err(bad());
            };
            let (Some(start), Some(end), Some(Value::Array(primary))) =
                (fields.first(), fields.get(1), fields.get(2))
            else {
                return Err(bad());
            };
            let start: u16 = redis::from_redis_value(start).map_err(|_| bad())?;
            let end: u16 = redis::from_redis_value(end).map_err(|_| bad())?;
            let (Some(host), Some(port)) = (primary.first(), primary.get(1)) else {
                return Err(bad());
            };
            let host: String = redis::from_redis_value(host).map_err(|_| bad())?;
            let port: u16 = redis::from_redis_value(port).map_err(|_| bad())?;
            ranges.push((start, end, (host, port)));
        }
        ranges.sort_by_key(|r| r.0);
        Ok(Self { ranges })
    }
}

/// What the reader of one node connection shares with the manager.
#[derive(Default)]
struct NodeState {
    /// Redis channel names this connection is subscribed to.
    subscribed: Mutex<HashSet<String>>,
    /// The connection dropped, or Redis ended a subscription by itself (a
    /// slot moved): the manager replaces it.
    broken: AtomicBool,
}

/// One RESP3 connection to one primary, for sharded subscriptions.
struct Node {
    conn: MultiplexedConnection,
    state: Arc<NodeState>,
    reader: JoinHandle<()>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// The manager's view.
#[derive(Default)]
struct State {
    nodes: HashMap<Addr, Node>,
    /// Where each channel is subscribed.
    placed: HashMap<Channel, Addr>,
    /// Channels that lost their subscription (moved, node gone) and are not
    /// subscribed again yet.
    moved: HashSet<Channel>,
    slots: Option<SlotMap>,
    /// When the slot map was last asked for; `None`: ask at the next chance.
    slots_at: Option<Instant>,
}

struct Manager {
    conn: RedisConn,
    hub: Arc<Hub>,
    metrics: Metrics,
    up: watch::Sender<bool>,
    resubscribed: watch::Sender<u64>,
    cancel: CancellationToken,
}

impl Manager {
    async fn run(self, mut requests: mpsc::Receiver<SyncRequest>) {
        let mut st = State::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = self.cancel.cancelled() => return,
                Some(first) = requests.recv() => {
                    let batch = drain_batch(first, &mut requests, REQUEST_BATCH);
                    let channels: Vec<Channel> = batch
                        .iter()
                        .map(|r| r.channel.clone())
                        .collect::<HashSet<_>>()
                        .into_iter()
                        .collect();
                    self.reconcile(&mut st, channels).await;
                    for req in batch {
                        let wanted = self.hub.local_count(&req.channel) > 0;
                        let answer = if !wanted || st.placed.contains_key(&req.channel) {
                            Ok(())
                        } else {
                            Err(EngineError::Redis(format!(
                                "{} is not subscribed on its cluster node yet",
                                req.channel
                            )))
                        };
                        let _ = req.done.send(answer);
                    }
                }
                _ = tick.tick() => {
                    let mut all: HashSet<Channel> = self.hub.channels().into_iter().collect();
                    all.extend(st.placed.keys().cloned());
                    all.extend(st.moved.iter().cloned());
                    self.reconcile(&mut st, all.into_iter().collect()).await;
                }
            }
        }
    }

    /// Brings `channels` in line with the hub and the slot map.
    async fn reconcile(&self, st: &mut State, channels: Vec<Channel>) {
        // Connections that dropped or saw a slot move: their channels move.
        let broken: Vec<Addr> = st
            .nodes
            .iter()
            .filter(|(_, n)| n.state.broken.load(Ordering::Acquire))
            .map(|(a, _)| a.clone())
            .collect();
        for addr in broken {
            st.nodes.remove(&addr);
            let lost: Vec<Channel> = st
                .placed
                .iter()
                .filter(|(_, a)| **a == addr)
                .map(|(ch, _)| ch.clone())
                .collect();
            tracing::info!(
                node = %format!("{}:{}", addr.0, addr.1),
                channels = lost.len(),
                "sharded pub/sub connection lost or a slot moved; moving its channels"
            );
            for ch in lost {
                st.placed.remove(&ch);
                st.moved.insert(ch);
            }
            st.slots_at = None;
        }
        let due = st
            .slots_at
            .is_none_or(|at| at.elapsed() >= SLOTS_EVERY || !st.moved.is_empty());
        if due {
            match self.slot_map().await {
                Ok(map) => {
                    st.slots = Some(map);
                    st.slots_at = Some(Instant::now());
                    self.up.send_replace(true);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "CLUSTER SLOTS failed");
                    st.slots_at = None;
                    if st.slots.is_none() {
                        self.up.send_replace(false);
                    }
                }
            }
        }
        let Some(slots) = st.slots.clone() else {
            return;
        };
        let mut subscribe: HashMap<Addr, Vec<Channel>> = HashMap::new();
        let mut unsubscribe: HashMap<Addr, Vec<Channel>> = HashMap::new();
        for ch in channels {
            let want = self.hub.local_count(&ch) > 0;
            let name = self.conn.keys.channel(&ch);
            let owner = slots.owner(key_slot(name.as_bytes()));
            let here = st.placed.get(&ch);
            if !want {
                st.moved.remove(&ch);
                if let Some(addr) = st.placed.remove(&ch) {
                    unsubscribe.entry(addr).or_default().push(ch);
                }
                continue;
            }
            match (here, owner) {
                (Some(h), Some(o)) if h == o => {}
                (Some(h), _) => {
                    // The slot moved without the connection noticing (yet).
                    let h = h.clone();
                    st.placed.remove(&ch);
                    st.moved.insert(ch.clone());
                    unsubscribe.entry(h).or_default().push(ch.clone());
                    if let Some(o) = owner {
                        subscribe.entry(o.clone()).or_default().push(ch);
                    }
                }
                (None, Some(o)) => subscribe.entry(o.clone()).or_default().push(ch),
                (None, None) => {}
            }
        }
        for (addr, chans) in unsubscribe {
            if let Some(node) = st.nodes.get(&addr) {
                self.unsubscribe(node, &chans).await;
            }
        }
        for (addr, chans) in subscribe {
            if let Err(e) = self.subscribe(st, &addr, &chans).await {
                tracing::debug!(
                    error = %e,
                    node = %format!("{}:{}", addr.0, addr.1),
                    "sharded subscribe failed; trying again"
                );
                st.slots_at = None;
            }
        }
        // Every moved channel is subscribed again (or no longer wanted):
        // the cue for the tail re-dispatch.
        if !st.moved.is_empty() {
            st.moved
                .retain(|ch| !st.placed.contains_key(ch) && self.hub.local_count(ch) > 0);
            if st.moved.is_empty() {
                self.metrics.redis_reconnects.inc();
                self.resubscribed.send_modify(|n| *n += 1);
                tracing::info!("sharded pub/sub: moved channels subscribed again");
            }
        }
    }

    async fn slot_map(&self) -> Result<SlotMap, EngineError> {
        let mut conn = self.conn.cmd.conn();
        let reply: Value = self
            .conn
            .cmd
            .run(redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut conn))
            .await?;
        SlotMap::parse(&reply)
    }

    /// `SSUBSCRIBE`s `chans` on the node at `addr` (connecting first).
    async fn subscribe(
        &self,
        st: &mut State,
        addr: &Addr,
        chans: &[Channel],
    ) -> Result<(), EngineError> {
        if !st.nodes.contains_key(addr) {
            let node = self.connect(addr).await?;
            st.nodes.insert(addr.clone(), node);
        }
        let Some(node) = st.nodes.get(addr) else {
            return Ok(());
        };
        let mut first_error = None;
        for chunk in chans.chunks(SUBSCRIBE_CHUNK) {
            let calls = chunk.iter().map(|ch| {
                let mut conn = node.conn.clone();
                let name = self.conn.keys.channel(ch);
                async move {
                    let r = redis::cmd("SSUBSCRIBE")
                        .arg(&name)
                        .exec_async(&mut conn)
                        .await;
                    (ch, name, r)
                }
            });
            let results = timeout(
                self.conn.opts.op_timeout,
                futures_util::future::join_all(calls),
            )
            .await
            .map_err(|_| EngineError::Redis("SSUBSCRIBE timed out".into()))?;
            for (ch, name, r) in results {
                match r {
                    Ok(()) => {
                        node.state.subscribed.lock().insert(name);
                        st.placed.insert(ch.clone(), addr.clone());
                    }
                    Err(e) => {
                        if e.is_io_error() || e.is_connection_dropped() {
                            node.state.broken.store(true, Ordering::Release);
                        }
                        first_error.get_or_insert(redis_err(e));
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// `SUNSUBSCRIBE`s `chans` (best effort: a failure breaks the
    /// connection, and a new one subscribes only what is wanted).
    async fn unsubscribe(&self, node: &Node, chans: &[Channel]) {
        for chunk in chans.chunks(SUBSCRIBE_CHUNK) {
            let names: Vec<String> = chunk.iter().map(|ch| self.conn.keys.channel(ch)).collect();
            {
                // Gone from the set first: the reader then takes the
                // `sunsubscribe` push for the answer it is.
                let mut subscribed = node.state.subscribed.lock();
                for n in &names {
                    subscribed.remove(n);
                }
            }
            let calls = names.into_iter().map(|name| {
                let mut conn = node.conn.clone();
                async move {
                    redis::cmd("SUNSUBSCRIBE")
                        .arg(name)
                        .exec_async(&mut conn)
                        .await
                }
            });
            let ok = timeout(
                self.conn.opts.op_timeout,
                futures_util::future::join_all(calls),
            )
            .await
            .is_ok_and(|rs| rs.iter().all(|r| r.is_ok()));
            if !ok {
                node.state.broken.store(true, Ordering::Release);
            }
        }
    }

    async fn connect(&self, addr: &Addr) -> Result<Node, EngineError> {
        let client = self.conn.target.node_client(&addr.0, addr.1)?;
        let (tx, rx) = mpsc::unbounded_channel::<PushInfo>();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(self.conn.opts.op_timeout)
            .set_response_timeout(self.conn.opts.op_timeout)
            .set_push_sender(tx);
        let conn = with_timeout(
            self.conn.opts.op_timeout,
            client.get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let state = Arc::new(NodeState::default());
        let reader = tokio::spawn(read(
            rx,
            Arc::clone(&state),
            Arc::clone(&self.hub),
            self.conn.keys.clone(),
        ));
        Ok(Node {
            conn,
            state,
            reader,
        })
    }
}

/// Hands every sharded message of one node connection to the hub; marks the
/// connection broken when it drops or Redis ends a subscription by itself.
async fn read(
    mut rx: mpsc::UnboundedReceiver<PushInfo>,
    state: Arc<NodeState>,
    hub: Arc<Hub>,
    keys: Keys,
) {
    let mut dropped = 0u64;
    while let Some(push) = rx.recv().await {
        match push.kind {
            PushKind::SMessage | PushKind::Message => {
                let (Some(Value::BulkString(name)), Some(Value::BulkString(payload))) =
                    (push.data.first(), push.data.get(1))
                else {
                    continue;
                };
                let Some(channel) = std::str::from_utf8(name)
                    .ok()
                    .and_then(|n| keys.parse_channel(n))
                else {
                    continue;
                };
                match Frame::from_envelope(payload) {
                    Ok(frame) => {
                        hub.dispatch(&channel, frame);
                    }
                    Err(e) => {
                        dropped += 1;
                        if dropped.is_power_of_two() {
                            tracing::warn!(%channel, error = %e, count = dropped,
                                "dropped a sharded pub/sub message that is not a frame envelope");
                        }
                    }
                }
            }
            PushKind::SUnsubscribe => {
                let name = match push.data.first() {
                    Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                    _ => String::new(),
                };
                // Still in the set: nobody asked for it, Redis moved the slot.
                if state.subscribed.lock().remove(&name) {
                    state.broken.store(true, Ordering::Release);
                }
            }
            PushKind::Disconnection => break,
            _ => {}
        }
    }
    state.broken.store(true, Ordering::Release);
}

/// Fan-out on a Redis Cluster: `SPUBLISH`, sharded subscriptions that follow
/// the slots, watcher counts as on one Redis (hash per channel, in the
/// channel's slot).
pub struct ClusterBus {
    core: BusCore,
}

impl ClusterBus {
    /// Starts the subscription manager and the watcher counts on `conn` (a
    /// cluster connection setup); resolves once the slot map is known.
    pub async fn start(
        conn: RedisConn,
        hub: Arc<Hub>,
        metrics: Metrics,
    ) -> Result<Self, EngineError> {
        if !conn.opts.cluster {
            return Err(EngineError::Redis(
                "the cluster bus needs a cluster connection".into(),
            ));
        }
        let spawn = |links: ManagerLinks, requests| {
            let manager = Manager {
                conn: conn.clone(),
                hub: Arc::clone(&hub),
                metrics,
                up: links.up,
                resubscribed: links.resubscribed,
                cancel: links.cancel,
            };
            tokio::spawn(manager.run(requests))
        };
        let core = BusCore::start(
            conn.bus_conn(),
            conn.watcher_counts(Arc::clone(&hub)),
            "redis cluster bus",
            "the cluster's slot map could not be read",
            spawn,
        )
        .await?;
        Ok(Self { core })
    }
}

#[async_trait]
impl Bus for ClusterBus {
    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        self.core.publish("SPUBLISH", channel, frame).await
    }

    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        self.core.sync_subscription(channel).await
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.core.watchers(channel).await
    }

    /// Ready when the slot map is known and the cluster covers every slot.
    async fn ready(&self) -> Result<(), EngineError> {
        if !self.core.is_up() {
            return Err(EngineError::Redis(
                "the cluster's slot map is unknown".into(),
            ));
        }
        self.core.conn.cmd.check_primary().await
    }

    fn resubscribed(&self) -> watch::Receiver<u64> {
        self.core.resubscribed()
    }

    async fn shutdown(&self) {
        self.core.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_map_finds_owners() {
        let node = |h: &str, p: i64| {
            Value::Array(vec![
                Value::BulkString(h.as_bytes().to_vec()),
                Value::Int(p),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![Value::Int(5461), Value::Int(10922), node("b", 2)]),
            Value::Array(vec![
                Value::Int(0),
                Value::Int(5460),
                node("a", 1),
                node("r", 9),
            ]),
            Value::Array(vec![Value::Int(10923), Value::Int(16383), node("c", 3)]),
        ]);
        let map = SlotMap::parse(&reply).unwrap();
        assert_eq!(map.owner(0), Some(&("a".to_owned(), 1)));
        assert_eq!(map.owner(5460), Some(&("a".to_owned(), 1)));
        assert_eq!(map.owner(5461), Some(&("b".to_owned(), 2)));
        assert_eq!(map.owner(16383), Some(&("c".to_owned(), 3)));
        let gap = SlotMap {
            ranges: vec![(0, 10, ("a".into(), 1)), (20, 30, ("b".into(), 2))],
        };
        assert_eq!(gap.owner(15), None);
        assert_eq!(gap.owner(31), None);
        assert!(SlotMap::parse(&Value::Nil).is_err());
    }
}
