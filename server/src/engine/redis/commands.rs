//! The command connection of the Redis engine: a `ConnectionManager` (it
//! reconnects by itself when the connection breaks) plus a deadline on every
//! call. The manager does not treat timeouts as a broken connection, so a
//! connection that silently stopped answering (a stalled middlebox) would
//! time out forever; after [`TIMEOUTS_BEFORE_REPLACING`] timeouts in a row
//! without any reply in between, a fresh connection replaces it.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

use crate::engine::EngineError;

/// Consecutive timeouts that make the connection suspect.
pub(super) const TIMEOUTS_BEFORE_REPLACING: u32 = 3;

pub(super) struct Commands {
    current: RwLock<ConnectionManager>,
    client: redis::Client,
    config: ConnectionManagerConfig,
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
        client: redis::Client,
        config: ConnectionManagerConfig,
        op_timeout: Duration,
    ) -> Result<Self, EngineError> {
        let conn = open(&client, &config, op_timeout * 4).await?;
        Ok(Self {
            current: RwLock::new(conn),
            client,
            config,
            op_timeout,
            timeouts: AtomicU32::new(0),
            replacing: AtomicBool::new(false),
        })
    }

    /// A handle on the current connection (cheap; multiplexed).
    pub fn conn(&self) -> ConnectionManager {
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
                // errors make the manager reconnect on its own.
                if !e.is_io_error() {
                    self.timeouts.store(0, Ordering::Release);
                }
                Err(redis_err(e))
            }
        }
    }

    async fn timed_out(&self) -> EngineError {
        let n = self.timeouts.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= TIMEOUTS_BEFORE_REPLACING {
            self.replace().await;
        }
        EngineError::Redis(format!("timed out after {:?}", self.op_timeout))
    }

    /// Opens a fresh connection and swaps it in; one replacement at a time.
    async fn replace(&self) {
        if self
            .replacing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            return;
        }
        let _reset = Replacing(&self.replacing);
        match open(&self.client, &self.config, self.op_timeout * 2).await {
            Ok(fresh) => {
                *self.current.write() = fresh;
                self.timeouts.store(0, Ordering::Release);
                tracing::warn!(
                    "replaced the redis command connection after {TIMEOUTS_BEFORE_REPLACING} timeouts in a row"
                );
            }
            Err(e) => tracing::warn!(error = %e, "replacing the redis command connection failed"),
        }
    }
}

async fn open(
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

pub(super) fn redis_err(e: redis::RedisError) -> EngineError {
    EngineError::Redis(e.to_string())
}

/// Runs one Redis call with a deadline.
pub(super) async fn with_timeout<T>(
    limit: Duration,
    call: impl Future<Output = RedisResult<T>>,
) -> Result<T, EngineError> {
    match tokio::time::timeout(limit, call).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(redis_err(e)),
        Err(_) => Err(EngineError::Redis(format!("timed out after {limit:?}"))),
    }
}
