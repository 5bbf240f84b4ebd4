//! The command connection of the Redis engine: a `ConnectionManager` (it
//! reconnects by itself when the connection breaks) plus a deadline on every
//! call. The manager does not treat timeouts as a broken connection, so a
//! connection that silently stopped answering (a stalled middlebox) would
//! time out forever; after [`TIMEOUTS_BEFORE_REPLACING`] timeouts in a row
//! without any reply in between, a fresh connection replaces it.
//!
//! Behind Sentinel the address itself can go stale: a connection error or a
//! `READONLY` reply (the node was demoted) also replaces the connection,
//! asking the sentinels for the primary again. With `wait_replicas` set,
//! [`Commands::run_acked`] follows a write with `WAIT` on the same
//! connection, so an acknowledged write is on that many replicas.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::handle::RedisHandle;
use redis::{ErrorKind, RedisResult};

use super::call::redis_err;
use super::target::Target;
use crate::engine::EngineError;

/// Consecutive timeouts that make the connection suspect.
pub(super) const TIMEOUTS_BEFORE_REPLACING: u32 = 3;

pub(crate) struct Commands {
    current: RwLock<RedisHandle>,
    target: Arc<Target>,
    config: ConnectionManagerConfig,
    /// `WAIT` after acknowledged writes: replicas and timeout.
    wait: Option<(u32, Duration)>,
    op_timeout: Duration,
    timeouts: AtomicU32,
    replacing: AtomicBool,
}

/// Clears the `replacing` flag however the replacement ends (it may be
/// cancelled with the request that runs it).
struct Replacing<'a>(&'a AtomicBool);

impl Drop for Replacing<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

impl Commands {
    pub async fn connect(
        target: Arc<Target>,
        config: ConnectionManagerConfig,
        op_timeout: Duration,
        wait: Option<(u32, Duration)>,
    ) -> Result<Self, EngineError> {
        let conn = open_handle(&target, &config, op_timeout * 4).await?;
        Ok(Self {
            current: RwLock::new(conn),
            target,
            config,
            wait,
            op_timeout,
            timeouts: AtomicU32::new(0),
            replacing: AtomicBool::new(false),
        })
    }

    /// A handle on the current connection (cheap; multiplexed).
    pub fn conn(&self) -> RedisHandle {
        self.current.read().clone()
    }

    /// Runs one call made on a handle from [`Commands::conn`] with the
    /// deadline, keeping count of timeouts.
    pub async fn run<T>(
        &self,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, EngineError> {
        match tokio::time::timeout(self.op_timeout, call).await {
            Ok(Ok(v)) => {
                self.timeouts.store(0, Ordering::Release);
                Ok(v)
            }
            // The manager's own response timeout, or ours.
            Ok(Err(e)) if e.is_timeout() => Err(self.timed_out().await),
            Err(_) => Err(self.timed_out().await),
            Ok(Err(e)) => {
                // An error reply proves the connection answers; other I/O
                // errors make the manager reconnect on its own (to the same
                // address: behind Sentinel the primary may have moved).
                if !e.is_io_error() {
                    self.timeouts.store(0, Ordering::Release);
                }
                if self.target.is_sentinel() && (e.is_io_error() || e.kind() == ErrorKind::ReadOnly)
                {
                    self.replace("the primary may have moved").await;
                }
                Err(redis_err(e))
            }
        }
    }

    /// [`Commands::run`] for a write the caller acknowledges: with
    /// `wait_replicas` set, then `WAIT`s on the same connection until that
    /// many replicas have it, failing when fewer do within the timeout.
    /// `conn` is a clone of the handle `call` was made on (clones share one
    /// connection, and `WAIT` counts that connection's writes); on a
    /// cluster `WAIT` goes to the primary of `slot_key`'s slot, the one the
    /// write went to.
    pub async fn run_acked<T>(
        &self,
        mut conn: RedisHandle,
        slot_key: &str,
        call: impl Future<Output = RedisResult<T>>,
    ) -> Result<T, EngineError> {
        let v = self.run(call).await?;
        if let Some((replicas, timeout)) = self.wait {
            let wait = redis::cmd("WAIT")
                .arg(replicas)
                .arg(timeout.as_millis() as u64)
                .to_owned();
            let got: u32 = self.run(conn.query_on_slot_of(slot_key, &wait)).await?;
            if got < replicas {
                return Err(EngineError::Redis(format!(
                    "write reached {got} of {replicas} replicas within {timeout:?}"
                )));
            }
        }
        Ok(v)
    }

    /// Whether the command connection reaches a writable primary: `PING`,
    /// and behind Sentinel `ROLE` (a demoted node still answers PING); a
    /// node that is not the primary makes the connection re-resolve.
    pub async fn check_primary(&self) -> Result<(), EngineError> {
        let mut conn = self.conn();
        if conn.is_cluster() {
            return self.check_cluster(&mut conn).await;
        }
        if !self.target.is_sentinel() {
            let pong: String = self.run(redis::cmd("PING").query_async(&mut conn)).await?;
            return if pong == "PONG" {
                Ok(())
            } else {
                Err(EngineError::Redis(format!(
                    "unexpected PING reply {pong:?}"
                )))
            };
        }
        let role: Vec<redis::Value> = self.run(redis::cmd("ROLE").query_async(&mut conn)).await?;
        let first: Option<String> = role.first().and_then(|v| redis::from_redis_value(v).ok());
        if first.as_deref() == Some("master") {
            return Ok(());
        }
        self.replace("the node is no longer the primary").await;
        Err(EngineError::Redis(format!(
            "the command connection reaches a {} instead of the primary",
            first.as_deref().unwrap_or("node of unknown role")
        )))
    }

    /// A cluster is ready when the node asked says `cluster_state:ok`
    /// (every slot is served).
    async fn check_cluster(&self, conn: &mut RedisHandle) -> Result<(), EngineError> {
        let info: String = self
            .run(redis::cmd("CLUSTER").arg("INFO").query_async(conn))
            .await?;
        if info.lines().any(|l| l.trim() == "cluster_state:ok") {
            Ok(())
        } else {
            Err(EngineError::Redis(
                "the cluster does not cover every slot (cluster_state is not ok)".into(),
            ))
        }
    }

    async fn timed_out(&self) -> EngineError {
        let n = self.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= TIMEOUTS_BEFORE_REPLACING {
            self.replace("timeouts in a row").await;
        }
        EngineError::Redis(format!("timed out after {:?}", self.op_timeout))
    }

    /// Opens a fresh connection (to the primary the target names now) and
    /// swaps it in; one replacement at a time.
    async fn replace(&self, why: &str) {
        if self
            .replacing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let _reset = Replacing(&self.replacing);
        let fresh = open_handle(&self.target, &self.config, self.op_timeout * 2).await;
        match fresh {
            Ok(fresh) => {
                *self.current.write() = fresh;
                self.timeouts.store(0, Ordering::Release);
                tracing::warn!(why, "replaced the redis command connection");
            }
            Err(e) => tracing::warn!(error = %e, "replacing the redis command connection failed"),
        }
    }
}

/// A command connection to what `target` names: the primary, or the
/// cluster.
async fn open_handle(
    target: &Target,
    config: &ConnectionManagerConfig,
    limit: Duration,
) -> Result<RedisHandle, EngineError> {
    if let Target::Cluster(cluster) = target {
        return match tokio::time::timeout(limit, cluster.client.get_async_connection()).await {
            Ok(r) => r.map(RedisHandle::Cluster).map_err(redis_err),
            Err(_) => Err(EngineError::Redis(format!(
                "connecting to the cluster timed out after {limit:?}"
            ))),
        };
    }
    let client = target.client().await?;
    open(&client, config, limit).await.map(RedisHandle::Single)
}

pub(super) async fn open(
    client: &redis::Client,
    config: &ConnectionManagerConfig,
    limit: Duration,
) -> Result<ConnectionManager, EngineError> {
    match tokio::time::timeout(
        limit,
        ConnectionManager::new_with_config(client.clone(), config.clone()),
    )
    .await
    {
        Ok(r) => r.map_err(redis_err),
        Err(_) => Err(EngineError::Redis(format!(
            "connecting timed out after {limit:?}"
        ))),
    }
}
