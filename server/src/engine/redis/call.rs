//! Single Redis calls: their errors as [`EngineError`], and a deadline.

use std::future::Future;
use std::time::Duration;

use redis::RedisResult;

use crate::engine::EngineError;

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
