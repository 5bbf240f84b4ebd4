//! The local fan-out hub: which connections of this process listen on which
//! channel, and delivery of one serialized frame to all of them.
//!
//! A frame is serialized once and shared: every subscriber's queue gets a
//! clone of the same reference-counted bytes. Queues are bounded; a
//! connection whose queue is full is told to close with 4101 instead of
//! letting memory grow. No lock is held across an await: `dispatch` only
//! does `try_send` under a read lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use parking_lot::RwLock;
use tokio::sync::{mpsc, Notify};
use waypost_protocol::close_code;

use crate::metrics::Metrics;

/// Identifies one client connection within this process.
pub type ConnId = u64;

tokio::task_local! {
    /// When the request that produced the frames being published arrived
    /// (set by ingest), so the delivery latency histogram measures ingest →
    /// socket write. Frames dispatched from another task (e.g. the Redis
    /// subscriber) fall back to the time of dispatch.
    static ORIGIN: Instant;
}

/// Runs `f` with `origin` as the start time of frames it dispatches.
pub async fn with_origin<F: std::future::Future>(origin: Instant, f: F) -> F::Output {
    ORIGIN.scope(origin, f).await
}

/// A frame queued for connections: one allocation per dispatch, shared by
/// every subscriber's queue. A queue slot is then one pointer, which keeps
/// each connection's channel small (tokio allocates its first block of 32
/// slots up front: 256 bytes instead of 2 KiB per idle connection).
#[derive(Debug, Clone)]
pub struct Outbound(Arc<OutboundFrame>);

/// What an [`Outbound`] carries.
#[derive(Debug)]
pub struct OutboundFrame {
    pub text: Utf8Bytes,
    /// When the hub queued it, for the delivery latency histogram.
    pub queued_at: Instant,
    /// Metric label: the channel kind (`tracking`, `chat`, ...).
    pub kind: &'static str,
}

impl Outbound {
    pub fn new(text: Utf8Bytes, queued_at: Instant, kind: &'static str) -> Self {
        Self(Arc::new(OutboundFrame {
            text,
            queued_at,
            kind,
        }))
    }
}

impl std::ops::Deref for Outbound {
    type Target = OutboundFrame;

    fn deref(&self) -> &OutboundFrame {
        &self.0
    }
}

/// Asks a connection task to close with a code (e.g. 4101 too slow). The
/// first code wins.
#[derive(Debug, Default)]
pub struct KillSwitch {
    code: AtomicU16,
    notify: Notify,
}

impl KillSwitch {
    pub fn trigger(&self, code: u16) {
        if self
            .code
            .compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            self.notify.notify_one();
        }
    }

    /// Resolves with the code once triggered.
    pub async fn triggered(&self) -> u16 {
        loop {
            let code = self.code.load(Ordering::Acquire);
            if code != 0 {
                return code;
            }
            self.notify.notified().await;
        }
    }
}

/// The hub's handle on one connection.
#[derive(Debug, Clone)]
pub struct ConnHandle {
    pub id: ConnId,
    pub tx: mpsc::Sender<Outbound>,
    pub kill: Arc<KillSwitch>,
}

/// Creates a connection's bounded queue and its handle.
pub fn connection(id: ConnId, queue: usize) -> (ConnHandle, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(queue.max(1));
    (
        ConnHandle {
            id,
            tx,
            kill: Arc::new(KillSwitch::default()),
        },
        rx,
    )
}

/// Local subscribers by channel name.
pub struct Hub {
    channels: RwLock<HashMap<String, HashMap<ConnId, ConnHandle>>>,
    next_id: AtomicU64,
    metrics: Metrics,
}

impl Hub {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            channels: RwLock::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            metrics,
        }
    }

    pub fn next_conn_id(&self) -> ConnId {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Adds a subscriber; returns true when it is the channel's first local
    /// one. Adding the same connection twice is a no-op.
    pub fn add(&self, channel: &str, handle: ConnHandle) -> bool {
        let mut map = self.channels.write();
        let subs = map.entry(channel.to_owned()).or_default();
        let first = subs.is_empty();
        if subs.insert(handle.id, handle).is_none() {
            self.metrics.subscriptions.inc();
        }
        first
    }

    /// Removes a subscriber; returns true when the channel has no local
    /// subscriber left.
    pub fn remove(&self, channel: &str, id: ConnId) -> bool {
        let mut map = self.channels.write();
        let Some(subs) = map.get_mut(channel) else {
            return false;
        };
        if subs.remove(&id).is_some() {
            self.metrics.subscriptions.dec();
        }
        if subs.is_empty() {
            map.remove(channel);
            true
        } else {
            false
        }
    }

    /// Local subscribers of `channel`.
    pub fn local_count(&self, channel: &str) -> usize {
        self.channels.read().get(channel).map_or(0, HashMap::len)
    }

    /// Every channel with at least one local subscriber.
    pub fn channels(&self) -> Vec<String> {
        self.channels.read().keys().cloned().collect()
    }

    /// Queues `text` for every local subscriber of `channel`; returns how
    /// many queues took it. Full queues get their connection closed (4101).
    pub fn dispatch(&self, channel: &str, text: &Utf8Bytes) -> usize {
        let queued_at = ORIGIN.try_with(|o| *o).unwrap_or_else(|_| Instant::now());
        let kind = channel_kind(channel);
        let map = self.channels.read();
        let Some(subs) = map.get(channel) else {
            return 0;
        };
        let mut delivered = 0;
        let frame = Outbound::new(text.clone(), queued_at, kind);
        for handle in subs.values() {
            match handle.tx.try_send(frame.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.metrics.slow_consumers.inc();
                    handle.kill.trigger(close_code::TOO_SLOW);
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }
}

/// The metric label for a channel name.
pub fn channel_kind(channel: &str) -> &'static str {
    match channel.split_once(':').map(|(k, _)| k) {
        Some("tracking") => "tracking",
        Some("chat") => "chat",
        Some("user") => "user",
        Some("vendor") => "vendor",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn dispatch_shares_one_frame_and_counts() {
        let hub = Hub::new(Metrics::new());
        let (a, mut ra) = connection(1, 4);
        let (b, mut rb) = connection(2, 4);
        assert!(hub.add("tracking:d", a));
        assert!(!hub.add("tracking:d", b));
        assert_eq!(hub.local_count("tracking:d"), 2);
        let frame = Utf8Bytes::from("{}");
        assert_eq!(hub.dispatch("tracking:d", &frame), 2);
        assert_eq!(ra.recv().await.unwrap().text, frame);
        assert_eq!(rb.recv().await.unwrap().text, frame);
        assert_eq!(hub.dispatch("tracking:other", &frame), 0);
        assert!(!hub.remove("tracking:d", 1));
        assert!(hub.remove("tracking:d", 2));
        assert!(hub.channels().is_empty());
    }

    #[tokio::test]
    async fn full_queue_kills_with_4101() {
        let hub = Hub::new(Metrics::new());
        let (a, _ra) = connection(1, 1);
        let kill = Arc::clone(&a.kill);
        hub.add("c", a);
        let f = Utf8Bytes::from("x");
        assert_eq!(hub.dispatch("c", &f), 1);
        assert_eq!(hub.dispatch("c", &f), 0);
        assert_eq!(kill.triggered().await, close_code::TOO_SLOW);
    }
}
