//! The bindings' one error type is the SDK's own
//! [`WaypostError`](waypost_sdk::WaypostError), derived for uniffi in
//! `waypost-sdk` (feature `uniffi`): a Kotlin sealed `WaypostException`,
//! a Swift enum with associated values, a Python `WaypostError` hierarchy,
//! each variant with its fields, and `info()` ([`ErrorInfo`]: code, HTTP
//! status, retryable, `Retry-After`) on every one.

pub use waypost_sdk::{ErrorInfo, WaypostError};
