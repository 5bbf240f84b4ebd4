//! Waypost client SDK core.
//!
//! The driver side ([`driver`]) records GPS fixes into a crash-safe SQLite
//! buffer and uploads them in batches at a cadence that follows motion,
//! battery, network and whether anybody is watching. The shared primitives
//! ([`clock`], [`backoff`], [`env`](mod@env), [`transport`], [`error`]) keep every
//! I/O edge behind a small trait so the whole SDK runs deterministically in
//! simulated time in tests; the buyer side reuses them.
//!
//! The public surface is bindings-friendly (plain records, `Arc` objects,
//! callback traits, no generics) so the uniffi layer in `bindings/` stays a
//! thin wrapper. See `README.md` for usage.

#[cfg(feature = "uniffi")]
uniffi::setup_scaffolding!("waypost_sdk");

pub mod buyer;
pub mod clock;
pub mod driver;
pub mod env;
pub mod error;
pub mod subscription;
pub mod tokens;
pub mod transport;

#[cfg(test)]
mod test_util;

pub use waypost_protocol as protocol;
/// Full-jitter backoff, shared with the server and the bench.
pub use waypost_protocol::backoff;

pub use driver::buffer::{BufferOptions, Durability, QuarantinedFix};
pub use driver::filter::{DropReason, FilterConfig, Location};
pub use driver::health::{DriverHealth, HealthIssue, HealthListener, HealthReason, HealthSeverity};
pub use driver::policy::{
    Accuracy, LocationPolicy, ModeSettings, MotionState, PolicyConfig, PolicyPreset,
    SamplingRequest,
};
pub use driver::{
    Driver, DriverConfig, DriverDeps, DriverEvent, DriverListener, DriverStats, RecordOutcome,
    UploadPoll,
};
pub use env::{
    AccuracyAuthorization, AppState, LocationPermission, MotionActivity, PlatformSnapshot,
    PlatformState,
};
pub use error::{ErrorInfo, WaypostError};
pub use subscription::Subscription;
pub use tokens::{StaticToken, TokenProvider};
pub use transport::{
    HttpError, HttpHeader, HttpRequest, HttpResponse, HttpTransport, ReqwestTransport, StatusError,
    TransportError,
};
