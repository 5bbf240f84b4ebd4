//! The Waypost server as a library: [`app::build_router`] gives the axum
//! router, [`app::serve`] runs it until shutdown. `main.rs` only parses the
//! command line. Tests bind port 0 and drive the router directly or spawn the
//! `waypost` binary.

pub mod activity;
pub mod admission;
pub mod app;
pub mod auth;
pub mod chat;
pub mod cluster;
pub mod config;
pub mod driver_index;
pub mod engine;
pub mod error;
pub mod expiry;
pub mod frame;
pub mod healthcheck;
pub mod hub;
pub mod keys;
pub mod metrics;
pub mod orders;
pub mod push;
pub mod revocation;
pub mod routes;
pub mod state;
pub mod tail;
pub mod trail;
pub mod webhooks;

/// Wall clock in Unix epoch seconds.
pub fn now_s() -> u64 {
    now_ms().max(0) as u64 / 1000
}

/// The wall clock location ingest judges fixes by: validation, the
/// dead-zone (`trail`) decision and the time a fix was received. Production
/// uses [`SystemClock`]; the driver SDK replay benchmark drives it in the
/// trace's simulated time (`AppState::with_ingest_clock`).
pub trait IngestClock: Send + Sync + std::fmt::Debug {
    /// Unix epoch milliseconds.
    fn now_ms(&self) -> i64;
}

/// [`now_ms`] as an [`IngestClock`].
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl IngestClock for SystemClock {
    fn now_ms(&self) -> i64 {
        now_ms()
    }
}

/// Wall clock in Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
