//! The error of the order operations.

use crate::engine::EngineError;

/// Why an order operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// The status would move backwards, or change after the order ended (409).
    #[error("order is {from}; it cannot become {to}")]
    Backwards {
        from: &'static str,
        to: &'static str,
    },
    /// Too many concurrent writers on one order (503, retry).
    #[error("order is being changed concurrently; retry")]
    Contended,
    #[error(transparent)]
    Store(#[from] EngineError),
}
