//! `waypost-ffi`: the Waypost SDK ([`waypost_sdk`]) exported through uniffi
//! to Kotlin, Swift and Python.
//!
//! Wrappers only, one file per exposed concept: [`driver`] (record and
//! upload fixes), [`buyer`] (live tracking and chat), [`platform`] (the
//! one per-process `PlatformState` the app updates), [`tokens`] (bearer tokens,
//! implemented by the app), [`task_handle`] (subscriptions that end when
//! dropped), [`error`] (the one exception type), [`runtime`] (the tokio
//! runtime the SDK owns), [`logging`] (SDK logs into the app's logger) and
//! [`diagnostics`]. Records and enums here mirror
//! the SDK's so `waypost-sdk` stays free of uniffi; the `From` impls are the
//! whole of the glue.
//!
//! Threads: every method may be called from any thread, the main thread
//! included: whatever touches disk or the network is `async` (Kotlin
//! `suspend`, Swift `async`, Python `async`) and runs on the SDK's own
//! runtime (threads named `waypost-rt`, SQLite on its blocking pool); the
//! synchronous methods only read or queue in-memory state. App callbacks
//! arrive on `waypost-rt` threads.

uniffi::setup_scaffolding!("waypost");

pub mod buyer;
pub mod diagnostics;
pub mod driver;
pub mod error;
mod lifecycle;
pub mod logging;
pub mod platform;
pub mod runtime;
pub mod task_handle;
pub mod tokens;

pub use error::WaypostError;
