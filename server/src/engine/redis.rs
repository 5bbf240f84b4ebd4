//! The Redis engine (several processes on one Redis). Being written; until
//! then `connect` refuses clearly.

use std::sync::Arc;

use super::{Engine, EngineError};
use crate::config::Limits;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Connects to Redis at `url`.
pub async fn connect(
    _url: &str,
    _hub: Arc<Hub>,
    _limits: Limits,
    _metrics: Metrics,
) -> Result<Arc<dyn Engine>, EngineError> {
    Err(EngineError::Redis(
        "the redis engine is not built yet".into(),
    ))
}
