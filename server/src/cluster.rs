//! What the processes of one cluster know about each other, for the admin
//! API and the dashboard:
//!
//! - [`NodeStats`]: every process reports its metric totals and delivery
//!   latency histogram every [`REPORT_EVERY`] (Redis: one hash,
//!   `waypost:nodes`, process id → JSON report), so `GET /v1/admin/stats`
//!   on any process sums the cluster, and knows how many processes are up;
//! - [`Lookups`]: the pending `GET /v1/admin/users/{user}` lookups of this
//!   process, which the control listener feeds with the other processes'
//!   [`crate::revocation::Control::Report`] answers.
//!
//! With the memory engine the process is the cluster: no store, its own
//! metrics are the totals.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::engine::EngineError;
use crate::metrics::{Bucket, Totals};
use crate::revocation::ConnInfo;

/// How often a process reports its figures.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// A process whose last report is older than this is not counted.
pub const STALE_MS: i64 = 5_000;
/// Reports older than this are deleted when read.
const FORGET_MS: i64 = 60_000;
/// Most process reports read.
pub const MAX_NODES: usize = 1024;

const KEY: &str = "waypost:nodes";

/// One process's figures at `at_ms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeReport {
    pub node: String,
    pub at_ms: i64,
    pub engine: String,
    pub totals: Totals,
    pub latency_buckets: Vec<Bucket>,
}

#[async_trait]
pub trait NodeStats: Send + Sync + 'static {
    /// Stores this process's latest report.
    async fn report(&self, r: &NodeReport) -> Result<(), EngineError>;
    /// The reports of the processes up at `now_ms` (reported within
    /// [`STALE_MS`]), at most [`MAX_NODES`].
    async fn live(&self, now_ms: i64) -> Result<Vec<NodeReport>, EngineError>;
}

/// The reports in one Redis hash.
pub struct RedisNodeStats {
    conn: crate::engine::redis::RedisHandle,
}

impl RedisNodeStats {
    pub fn new(conn: crate::engine::redis::RedisHandle) -> Self {
        Self { conn }
    }
}

fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

#[async_trait]
impl NodeStats for RedisNodeStats {
    async fn report(&self, r: &NodeReport) -> Result<(), EngineError> {
        let json = serde_json::to_string(r).map_err(|e| EngineError::Redis(e.to_string()))?;
        let mut conn = self.conn.clone();
        redis::cmd("HSET")
            .arg(KEY)
            .arg(&r.node)
            .arg(json)
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_err)
    }

    async fn live(&self, now_ms: i64) -> Result<Vec<NodeReport>, EngineError> {
        let mut conn = self.conn.clone();
        // HSCAN with a COUNT bounds one round trip; a cluster has few
        // processes, so one or two rounds read them all.
        let mut cursor = 0u64;
        let mut live = Vec::new();
        let mut forget = Vec::new();
        let mut read = 0usize;
        loop {
            let (next, fields): (u64, Vec<(String, String)>) = redis::cmd("HSCAN")
                .arg(KEY)
                .arg(cursor)
                .arg("COUNT")
                .arg(256)
                .query_async(&mut conn)
                .await
                .map_err(redis_err)?;
            for (node, json) in fields {
                read += 1;
                match serde_json::from_str::<NodeReport>(&json) {
                    Ok(r) if now_ms - r.at_ms <= STALE_MS => live.push(r),
                    Ok(r) if now_ms - r.at_ms <= FORGET_MS => {}
                    // Long gone, or written by an incompatible version.
                    _ => forget.push(node),
                }
            }
            cursor = next;
            if cursor == 0 || read >= MAX_NODES {
                break;
            }
        }
        if !forget.is_empty() {
            let r: Result<(), _> = redis::cmd("HDEL")
                .arg(KEY)
                .arg(&forget)
                .query_async(&mut conn)
                .await;
            if let Err(e) = r {
                tracing::debug!(error = %e, "cannot forget old process reports");
            }
        }
        live.truncate(MAX_NODES);
        live.sort_by(|a, b| a.node.cmp(&b.node));
        Ok(live)
    }
}

/// Most lookups one process runs at once.
pub const MAX_PENDING_LOOKUPS: usize = 16;

/// One process's answer to a lookup: its id and the user's connections.
pub type Answer = (String, Vec<ConnInfo>);

/// Pending user lookups of this process: id → where the answers go.
#[derive(Default)]
pub struct Lookups {
    pending: Mutex<HashMap<String, mpsc::Sender<Answer>>>,
}

/// Removes its lookup when dropped (answered, timed out or abandoned).
pub struct PendingLookup<'a> {
    lookups: &'a Lookups,
    id: String,
    pub answers: mpsc::Receiver<Answer>,
}

impl Drop for PendingLookup<'_> {
    fn drop(&mut self) {
        self.lookups.pending.lock().remove(&self.id);
    }
}

impl Lookups {
    /// Registers lookup `id`; `None` when [`MAX_PENDING_LOOKUPS`] are open.
    pub fn start(&self, id: String) -> Option<PendingLookup<'_>> {
        let mut pending = self.pending.lock();
        if pending.len() >= MAX_PENDING_LOOKUPS {
            return None;
        }
        let (tx, rx) = mpsc::channel(MAX_NODES);
        pending.insert(id.clone(), tx);
        Some(PendingLookup {
            lookups: self,
            id,
            answers: rx,
        })
    }

    /// Hands a process's answer to the lookup waiting for it (ignored when
    /// it is another process's lookup, or over).
    pub fn answer(&self, id: &str, node: String, connections: Vec<ConnInfo>) {
        if let Some(tx) = self.pending.lock().get(id) {
            // Full: more answers than processes; drop the extra.
            let _ = tx.try_send((node, connections));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(node: &str, at_ms: i64) -> NodeReport {
        NodeReport {
            node: node.into(),
            at_ms,
            engine: "redis".into(),
            totals: Totals {
                fixes_ingested: 7,
                ..Totals::default()
            },
            latency_buckets: vec![Bucket { le: 0.5, count: 3 }],
        }
    }

    #[tokio::test]
    async fn redis_reports_live_stale_and_forgotten() {
        let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
            eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
            return;
        };
        let conn = crate::engine::chat_redis::connect(&url, &Default::default())
            .await
            .expect("redis reachable");
        reports_live_stale_and_forgotten(conn).await;
    }

    #[tokio::test]
    async fn redis_cluster_reports_live_stale_and_forgotten() {
        if let Some(conn) = crate::engine::redis::test_cluster().await {
            reports_live_stale_and_forgotten(conn).await;
        }
    }

    async fn reports_live_stale_and_forgotten(conn: crate::engine::redis::RedisHandle) {
        let stats = RedisNodeStats::new(conn.clone());
        // Other processes may report to a shared Redis: only ours count.
        let now = crate::now_ms();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let fresh = report(&format!("{tag}-fresh"), now - 1_000);
        let stale = report(&format!("{tag}-stale"), now - STALE_MS - 1);
        let gone = report(&format!("{tag}-gone"), now - FORGET_MS - 1);
        for r in [&fresh, &stale, &gone] {
            stats.report(r).await.expect("report");
        }
        let live: Vec<NodeReport> = stats
            .live(now)
            .await
            .expect("live")
            .into_iter()
            .filter(|r| r.node.starts_with(&tag))
            .collect();
        assert_eq!(live, vec![fresh.clone()]);
        let mut c = conn.clone();
        let left: Vec<bool> = redis::pipe()
            .hexists(KEY, &stale.node)
            .hexists(KEY, &gone.node)
            .query_async(&mut c)
            .await
            .expect("hexists");
        assert_eq!(left, vec![true, false], "stale kept a while, gone deleted");
        let _: () = redis::cmd("HDEL")
            .arg(KEY)
            .arg(&fresh.node)
            .arg(&stale.node)
            .query_async(&mut c)
            .await
            .expect("cleanup");
    }

    #[tokio::test]
    async fn lookups_are_bounded_and_routed_by_id() {
        let l = Lookups::default();
        let mut a = l.start("a".into()).expect("room");
        l.answer("a", "n1".into(), Vec::new());
        l.answer("other", "n2".into(), Vec::new());
        assert_eq!(
            a.answers.recv().await.map(|(n, _)| n).as_deref(),
            Some("n1")
        );
        assert!(a.answers.try_recv().is_err());
        let more: Vec<_> = (1..MAX_PENDING_LOOKUPS)
            .map(|i| l.start(format!("x{i}")).expect("room"))
            .collect();
        assert!(l.start("y".into()).is_none(), "bounded");
        drop(a);
        assert!(
            l.start("y".into()).is_some(),
            "a dropped lookup frees its slot"
        );
        drop(more);
        assert!(l.pending.lock().is_empty());
    }
}
