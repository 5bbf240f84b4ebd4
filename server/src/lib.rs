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

/// Wall clock in Unix epoch milliseconds.
pub fn now_ms() -> i64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
