//! [`Driver`]: records the phone's fixes into a crash-safe buffer and
//! uploads them in batches. Wraps `waypost_sdk::Driver`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use waypost_sdk as sdk;

use crate::error::WaypostError;
use crate::platform::{self, PlatformInfo};
use crate::runtime;
use crate::tokens::{self, TokenProvider};

/// Ready-made upload/sampling policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum PolicyPreset {
    /// Best tracking: 1 s sampling, uploads every 2 s while watched.
    Realtime,
    /// The default: 5 s uploads while watched, every 2 minutes otherwise.
    Balanced,
    /// Battery first: coarser sampling, uploads every 5 minutes unwatched.
    Saver,
}

/// Settings of a [`Driver`]. Only the four ids/paths are required; every
/// other field defaults to the SDK's default when left out.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct DriverConfig {
    /// Server base URL, e.g. `https://track.example.com`.
    pub base_url: String,
    /// The driver (must match the token's `sub`).
    pub driver_id: String,
    /// This phone/install (seqs are per device).
    pub device_id: String,
    /// Path of the SQLite buffer file (app-private storage).
    pub buffer_path: String,
    /// Sampling and upload cadence (default `Balanced`).
    #[uniffi(default = None)]
    pub policy: Option<PolicyPreset>,
    /// Most fixes per upload (default 500, at most 1,000).
    #[uniffi(default = None)]
    pub max_batch_fixes: Option<u32>,
    /// Most fixes kept in the buffer; the oldest are evicted beyond it
    /// (default 100,000).
    #[uniffi(default = None)]
    pub buffer_max_fixes: Option<u64>,
    /// Fixes less accurate than this are dropped, metres (default 100).
    #[uniffi(default = None)]
    pub max_accuracy_m: Option<f64>,
    /// Timeout of one upload request, ms (default 30,000).
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
}

impl From<DriverConfig> for sdk::DriverConfig {
    fn from(c: DriverConfig) -> Self {
        let mut out = sdk::DriverConfig::new(c.base_url, c.driver_id, c.device_id, c.buffer_path);
        if let Some(p) = c.policy {
            out.policy = sdk::PolicyConfig::preset(p.into());
        }
        if let Some(n) = c.max_batch_fixes {
            out.max_batch_fixes = n;
        }
        if let Some(n) = c.buffer_max_fixes {
            out.buffer.max_fixes = n;
        }
        if let Some(m) = c.max_accuracy_m {
            out.filter.max_accuracy_m = m;
        }
        if let Some(ms) = c.request_timeout_ms {
            out.request_timeout = Duration::from_millis(ms);
        }
        out
    }
}

impl From<PolicyPreset> for sdk::PolicyPreset {
    fn from(p: PolicyPreset) -> Self {
        match p {
            PolicyPreset::Realtime => Self::Realtime,
            PolicyPreset::Balanced => Self::Balanced,
            PolicyPreset::Saver => Self::Saver,
        }
    }
}

/// A location as the OS delivers it (Android `Location`, iOS `CLLocation`).
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct Location {
    /// When the fix was taken, Unix epoch ms.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    #[uniffi(default = None)]
    pub accuracy_m: Option<f64>,
    /// Speed over ground, m/s.
    #[uniffi(default = None)]
    pub speed_mps: Option<f64>,
    /// Course, degrees clockwise from north.
    #[uniffi(default = None)]
    pub heading_deg: Option<f64>,
    /// Altitude, metres.
    #[uniffi(default = None)]
    pub altitude_m: Option<f64>,
}

impl From<Location> for sdk::Location {
    fn from(l: Location) -> Self {
        Self {
            ts_ms: l.ts_ms,
            lat: l.lat,
            lon: l.lon,
            accuracy_m: l.accuracy_m,
            speed_mps: l.speed_mps,
            heading_deg: l.heading_deg,
            altitude_m: l.altitude_m,
        }
    }
}

/// A fix as stored in the buffer (with its seq and the battery reading).
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct RecordedFix {
    /// Seq assigned when recorded (per device, increasing).
    pub seq: u64,
    /// When the fix was taken, Unix epoch ms.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    pub accuracy_m: Option<f64>,
    /// Speed over ground, m/s.
    pub speed_mps: Option<f64>,
    /// Course, degrees clockwise from north.
    pub heading_deg: Option<f64>,
    /// Altitude, metres.
    pub altitude_m: Option<f64>,
    /// Battery level 0.0–1.0 when recorded.
    pub battery: Option<f64>,
    /// Whether the phone was charging when recorded.
    pub charging: Option<bool>,
}

impl From<sdk::protocol::Fix> for RecordedFix {
    fn from(f: sdk::protocol::Fix) -> Self {
        Self {
            seq: f.seq,
            ts_ms: f.ts,
            lat: f.lat,
            lon: f.lon,
            accuracy_m: f.accuracy_m,
            speed_mps: f.speed_mps,
            heading_deg: f.heading_deg,
            altitude_m: f.altitude_m,
            battery: f.battery,
            charging: f.charging,
        }
    }
}

/// A fix the server refused for good, with its reason.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct QuarantinedFix {
    /// The fix.
    pub fix: RecordedFix,
    /// The server's reason.
    pub reason: String,
    /// When it was quarantined, Unix epoch ms.
    pub quarantined_at_ms: i64,
}

impl From<sdk::driver::buffer::QuarantinedFix> for QuarantinedFix {
    fn from(q: sdk::driver::buffer::QuarantinedFix) -> Self {
        Self {
            fix: q.fix.into(),
            reason: q.reason,
            quarantined_at_ms: q.quarantined_at_ms,
        }
    }
}

/// Why `record` did not keep a location.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum DropReason {
    /// A field is out of range or not a number.
    Invalid { message: String },
    /// The timestamp is ahead of the phone's clock.
    FromTheFuture { ahead_ms: i64 },
    /// Accuracy worse than the threshold.
    Inaccurate { accuracy_m: f64 },
    /// Reaching it from the previous fix needs an impossible speed.
    Jump { implied_speed_mps: f64 },
    /// Not newer than the last accepted fix.
    Stale,
    /// The policy does not want a fix this soon / this close.
    Throttled,
}

impl From<sdk::DropReason> for DropReason {
    fn from(r: sdk::DropReason) -> Self {
        use sdk::DropReason as R;
        match r {
            R::Invalid { message } => Self::Invalid { message },
            R::FromTheFuture { ahead_ms } => Self::FromTheFuture { ahead_ms },
            R::Inaccurate { accuracy_m } => Self::Inaccurate { accuracy_m },
            R::Jump { implied_speed_mps } => Self::Jump { implied_speed_mps },
            R::Stale => Self::Stale,
            R::Throttled => Self::Throttled,
        }
    }
}

/// What `record` did with a location.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum RecordOutcome {
    /// Committed to the buffer with this seq: it will reach the server.
    Recorded { seq: u64 },
    /// Not recorded.
    Dropped { reason: DropReason },
}

impl From<sdk::RecordOutcome> for RecordOutcome {
    fn from(o: sdk::RecordOutcome) -> Self {
        match o {
            sdk::RecordOutcome::Recorded { seq } => Self::Recorded { seq },
            sdk::RecordOutcome::Dropped { reason } => Self::Dropped {
                reason: reason.into(),
            },
        }
    }
}

/// The accuracy the SDK asks the OS location service for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum Accuracy {
    /// GPS (`PRIORITY_HIGH_ACCURACY`, `kCLLocationAccuracyBest`).
    High,
    /// About 10–100 m (`PRIORITY_BALANCED_POWER_ACCURACY`,
    /// `kCLLocationAccuracyNearestTenMeters`).
    Balanced,
    /// About 1 km (`PRIORITY_LOW_POWER`, `kCLLocationAccuracyKilometer`).
    Low,
}

impl From<sdk::Accuracy> for Accuracy {
    fn from(a: sdk::Accuracy) -> Self {
        match a {
            sdk::Accuracy::High => Self::High,
            sdk::Accuracy::Balanced => Self::Balanced,
            sdk::Accuracy::Low => Self::Low,
        }
    }
}

/// How the app should configure the OS location service right now.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct SamplingRequest {
    pub accuracy: Accuracy,
    /// Minimum time between fixes, ms.
    pub interval_ms: u64,
    /// Minimum distance between fixes, metres.
    pub distance_filter_m: f64,
    /// A fix at least this often, ms, moved or not.
    pub heartbeat_ms: u64,
}

impl From<sdk::SamplingRequest> for SamplingRequest {
    fn from(s: sdk::SamplingRequest) -> Self {
        Self {
            accuracy: s.accuracy.into(),
            interval_ms: s.interval_ms,
            distance_filter_m: s.distance_filter_m,
            heartbeat_ms: s.heartbeat_ms,
        }
    }
}

/// Something the app may want to know about the driver.
#[derive(Debug, Clone, PartialEq, uniffi::Enum)]
pub enum DriverEvent {
    /// Reconfigure the OS location service like this.
    SamplingChanged { sampling: SamplingRequest },
    /// Somebody started (or stopped) watching this driver.
    WatchedChanged { watched: bool },
    /// A batch was stored by the server.
    Uploaded {
        fixes: u64,
        high_seq: u64,
        watchers: u64,
    },
    /// An upload failed; the SDK retries after `retry_in_ms` (0: when
    /// something changes, e.g. the network comes back).
    UploadFailed { message: String, retry_in_ms: u64 },
    /// The server refused the token, also after a refresh.
    AuthFailed { message: String },
    /// The server refused a fix for good; it is kept aside, never resent.
    Quarantined { seq: u64, reason: String },
    /// The buffer was full or fixes were too old: these many were dropped.
    Evicted { count: u64 },
    /// The buffer file was corrupt and was replaced by an empty one.
    BufferRecreated { message: String },
}

impl From<sdk::DriverEvent> for DriverEvent {
    fn from(e: sdk::DriverEvent) -> Self {
        use sdk::DriverEvent as E;
        match e {
            E::SamplingChanged { sampling } => Self::SamplingChanged {
                sampling: sampling.into(),
            },
            E::WatchedChanged { watched } => Self::WatchedChanged { watched },
            E::Uploaded {
                fixes,
                high_seq,
                watchers,
            } => Self::Uploaded {
                fixes,
                high_seq,
                watchers,
            },
            E::UploadFailed {
                message,
                retry_in_ms,
            } => Self::UploadFailed {
                message,
                retry_in_ms,
            },
            E::AuthFailed { message } => Self::AuthFailed { message },
            E::Quarantined { seq, reason } => Self::Quarantined { seq, reason },
            E::Evicted { count } => Self::Evicted { count },
            E::BufferRecreated { message } => Self::BufferRecreated { message },
        }
    }
}

/// Receives [`DriverEvent`]s. Upload events arrive on an SDK thread
/// (`waypost-rt`); events raised by `record()` (sampling changes,
/// evictions) arrive on the thread that called it. Return quickly; post to
/// your UI thread for UI work. Must not throw.
#[uniffi::export(with_foreign)]
pub trait DriverListener: Send + Sync {
    /// Called for every event.
    fn on_event(&self, event: DriverEvent);
}

struct ListenerAdapter(Arc<dyn DriverListener>);

impl sdk::DriverListener for ListenerAdapter {
    fn on_event(&self, event: sdk::DriverEvent) {
        if catch_unwind(AssertUnwindSafe(|| self.0.on_event(event.into()))).is_err() {
            tracing::error!("DriverListener.on_event failed");
        }
    }
}

/// Counters of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct DriverStats {
    /// Fixes in the buffer waiting for an acknowledgement.
    pub pending: u64,
    /// Seq the next recorded fix gets.
    pub next_seq: u64,
    /// Fixes acknowledged by the server (buffer lifetime).
    pub acked_total: u64,
    /// Fixes evicted from the buffer (buffer lifetime).
    pub evicted_total: u64,
    /// Fixes quarantined (buffer lifetime).
    pub quarantined_total: u64,
    /// Requests sent since open.
    pub requests: u64,
    /// Requests answered 2xx since open.
    pub uploads_ok: u64,
    /// Body bytes sent since open (after compression).
    pub bytes_sent: u64,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Whether the server last said somebody watches.
    pub watched: bool,
}

impl From<sdk::DriverStats> for DriverStats {
    fn from(s: sdk::DriverStats) -> Self {
        Self {
            pending: s.pending,
            next_seq: s.next_seq,
            acked_total: s.acked_total,
            evicted_total: s.evicted_total,
            quarantined_total: s.quarantined_total,
            requests: s.requests,
            uploads_ok: s.uploads_ok,
            bytes_sent: s.bytes_sent,
            consecutive_failures: s.consecutive_failures,
            watched: s.watched,
        }
    }
}

/// What an explicit upload did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct UploadResult {
    /// Requests sent by this call (0 when another upload already sent
    /// everything, or nothing was pending).
    pub requests: u32,
    /// Fixes still waiting in the buffer afterwards.
    pub pending: u64,
}

/// A recording, uploading driver. Open it, `start()` the uploader, feed it
/// every location the OS delivers with `record()`, and `shutdown()` when
/// the shift ends. Safe to use from any thread.
#[derive(uniffi::Object)]
pub struct Driver {
    inner: Arc<sdk::Driver>,
}

#[uniffi::export]
impl Driver {
    /// Opens (or creates) the buffer. Does not upload until `start()`.
    #[uniffi::constructor]
    pub fn new(
        config: DriverConfig,
        tokens: Arc<dyn TokenProvider>,
        listener: Option<Arc<dyn DriverListener>>,
        platform: Arc<dyn PlatformInfo>,
    ) -> Result<Arc<Self>, WaypostError> {
        runtime::get()?;
        let listener =
            listener.map(|l| Arc::new(ListenerAdapter(l)) as Arc<dyn sdk::DriverListener>);
        let inner = sdk::Driver::open(
            config.into(),
            Arc::new(tokens::Adapter(tokens)),
            listener,
            Arc::new(platform::Adapter(platform)),
        )?;
        Ok(Arc::new(Self { inner }))
    }

    /// Starts the background uploader (idempotent).
    pub fn start(&self) -> Result<(), WaypostError> {
        let _guard = runtime::get()?.enter();
        Ok(self.inner.start()?)
    }

    /// Validates a location, assigns its seq and commits it to the buffer.
    /// `Recorded` means it is on disk and will be uploaded.
    pub fn record(&self, location: Location) -> Result<RecordOutcome, WaypostError> {
        Ok(self.inner.record(location.into())?.into())
    }

    /// Records several locations (a batch the OS delivered) in one
    /// transaction; one outcome per location, in order.
    pub fn record_many(
        &self,
        locations: Vec<Location>,
    ) -> Result<Vec<RecordOutcome>, WaypostError> {
        let locations = locations.into_iter().map(Into::into).collect();
        Ok(self
            .inner
            .record_many(locations)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Asks the background uploader to upload now.
    pub fn flush(&self) {
        self.inner.flush();
    }

    /// Uploads everything that is pending now and returns when that was
    /// attempted (a server's `Retry-After` and the backoff after failures
    /// are still honoured, so fixes may remain pending).
    pub async fn upload_now(&self) -> Result<UploadResult, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move {
            inner.flush();
            let poll = inner.poll_uploads().await?;
            let pending = inner.stats()?.pending;
            Ok(UploadResult {
                requests: poll.requests,
                pending,
            })
        })
        .await?
    }

    /// The network or battery changed: the SDK re-reads [`PlatformInfo`]
    /// and uploads at once if the network came back or charging started.
    pub fn environment_changed(&self) {
        self.inner.environment_changed();
    }

    /// What the SDK wants from the OS location service right now.
    pub fn desired_sampling(&self) -> SamplingRequest {
        self.inner.desired_sampling().into()
    }

    /// Counters.
    pub fn stats(&self) -> Result<DriverStats, WaypostError> {
        Ok(self.inner.stats()?.into())
    }

    /// The last fix ever recorded in this buffer (survives restarts).
    pub fn last_recorded(&self) -> Option<RecordedFix> {
        self.inner.last_recorded().map(Into::into)
    }

    /// Fixes the server refused for good, newest first.
    pub fn quarantined(&self, limit: u32) -> Result<Vec<QuarantinedFix>, WaypostError> {
        Ok(self
            .inner
            .quarantined(limit)?
            .into_iter()
            .map(Into::into)
            .collect())
    }

    /// Stops the uploader and waits for it (idempotent). Unsent fixes stay
    /// in the buffer for the next open.
    pub async fn shutdown(&self) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.shutdown().await }).await
    }
}
