//! [`Driver`]: records the phone's fixes into a crash-safe buffer and
//! uploads them in batches. Wraps `waypost_sdk::Driver`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use waypost_sdk as sdk;
use waypost_sdk::{
    DriverEvent, DriverHealth, DriverStats, Location, PolicyPreset, RecordOutcome, SamplingRequest,
};

use crate::error::WaypostError;
use crate::lifecycle::Lifecycle;
use crate::platform::PlatformState;
use crate::runtime;
use crate::task_handle::Subscription;
use crate::tokens::{self, TokenProvider};

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
    /// Fixes less accurate than this are dropped (and counted in
    /// `health()`), metres (default 100).
    #[uniffi(default = None)]
    pub max_accuracy_m: Option<f64>,
    /// With reduced accuracy authorization, fixes up to this inaccurate
    /// are kept marked coarse, metres (default 5,000).
    #[uniffi(default = None)]
    pub max_coarse_accuracy_m: Option<f64>,
    /// Timeout of one upload request, ms (default 30,000).
    #[uniffi(default = None)]
    pub request_timeout_ms: Option<u64>,
    /// A corrupt buffer file is moved aside and replaced by an empty one
    /// (reported as `DriverEvent.BufferRecreated`) instead of failing the
    /// open with `Storage(code = "storage_corrupt")` (default false).
    #[uniffi(default = None)]
    pub recreate_if_corrupt: Option<bool>,
}

impl From<DriverConfig> for sdk::DriverConfig {
    fn from(c: DriverConfig) -> Self {
        let mut out = sdk::DriverConfig::new(c.base_url, c.driver_id, c.device_id, c.buffer_path);
        if let Some(p) = c.policy {
            out.policy = sdk::PolicyConfig::preset(p);
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
        if let Some(m) = c.max_coarse_accuracy_m {
            out.filter.max_coarse_accuracy_m = m;
        }
        if let Some(ms) = c.request_timeout_ms {
            out.request_timeout = Duration::from_millis(ms);
        }
        if let Some(r) = c.recreate_if_corrupt {
            out.buffer.recreate_if_corrupt = r;
        }
        out
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
    /// Recorded under reduced accuracy (uploaded with `"coarse": true`).
    pub coarse: bool,
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
            coarse: f.is_coarse(),
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

/// Receives [`DriverEvent`]s. Upload events arrive on an SDK thread
/// (`waypost-rt`), those raised by `record()` (sampling changes,
/// evictions) included. Return quickly; post to
/// your UI thread for UI work. Must not throw.
#[uniffi::export(with_foreign)]
pub trait DriverListener: Send + Sync {
    /// Called for every event.
    fn on_event(&self, event: DriverEvent);
}

/// Receives [`DriverHealth`] reports: once when added, then whenever the
/// set of issues changes (not per fix). Arrives on an SDK thread; return
/// quickly. Must not throw.
#[uniffi::export(with_foreign)]
pub trait HealthListener: Send + Sync {
    /// Called with the new report.
    fn on_health(&self, health: DriverHealth);
}

struct HealthAdapter(Arc<dyn HealthListener>);

impl sdk::HealthListener for HealthAdapter {
    fn on_health(&self, health: DriverHealth) {
        if catch_unwind(AssertUnwindSafe(|| self.0.on_health(health))).is_err() {
            tracing::error!("HealthListener.on_health failed");
        }
    }
}

struct ListenerAdapter(Arc<dyn DriverListener>);

impl sdk::DriverListener for ListenerAdapter {
    fn on_event(&self, event: sdk::DriverEvent) {
        if catch_unwind(AssertUnwindSafe(|| self.0.on_event(event))).is_err() {
            tracing::error!("DriverListener.on_event failed");
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
    /// Warns when released without `shutdown()`.
    lifecycle: Lifecycle,
}

#[uniffi::export]
impl Driver {
    /// Opens (or creates) the buffer off the caller's thread. Does not
    /// upload until `start()`. `platform` is the app's one
    /// `PlatformState`: once started, the driver follows its changes by
    /// itself (sampling, uploads when the network is back, health).
    #[uniffi::constructor]
    pub async fn open(
        config: DriverConfig,
        tokens: Arc<dyn TokenProvider>,
        listener: Option<Arc<dyn DriverListener>>,
        platform: Arc<PlatformState>,
    ) -> Result<Arc<Self>, WaypostError> {
        let listener =
            listener.map(|l| Arc::new(ListenerAdapter(l)) as Arc<dyn sdk::DriverListener>);
        let driver_id = config.driver_id.clone();
        let inner = runtime::run_blocking(move || {
            sdk::Driver::open(
                config.into(),
                Arc::new(tokens::Adapter(tokens)),
                listener,
                platform.environment(),
            )
        })
        .await??;
        Ok(Arc::new(Self {
            inner,
            lifecycle: Lifecycle::new("Driver", driver_id),
        }))
    }

    /// Starts the background uploader (idempotent).
    pub fn start(&self) -> Result<(), WaypostError> {
        let _guard = runtime::get()?.enter();
        self.inner.start()
    }

    /// Validates a location, assigns its seq and commits it to the buffer,
    /// off the caller's thread; when it returns `Recorded` the fix is on
    /// disk.
    /// `Recorded` means it is on disk and will be uploaded.
    pub async fn record(&self, location: Location) -> Result<RecordOutcome, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.record(location)).await?
    }

    /// Records several locations (a batch the OS delivered) in one
    /// transaction; one outcome per location, in order.
    pub async fn record_many(
        &self,
        locations: Vec<Location>,
    ) -> Result<Vec<RecordOutcome>, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.record_many(locations)).await?
    }

    /// Adds a listener of every event from now on, until the returned
    /// subscription is cancelled or dropped. The first listener added also
    /// gets, first, the events raised since `open` while there was none
    /// (`BufferRecreated`, an upload that finished before the app
    /// subscribed, ...; the newest 256): nothing raised before the first
    /// watcher is lost.
    pub fn watch_events(
        &self,
        listener: Arc<dyn DriverListener>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        let sub = self
            .inner
            .watch_events(Arc::new(ListenerAdapter(listener)))?;
        Ok(Arc::new(sub.into()))
    }

    /// Listeners added with `watch_events` and not cancelled.
    pub fn watcher_count(&self) -> u32 {
        u32::try_from(self.inner.watcher_count()).unwrap_or(u32::MAX)
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

    /// Deprecated: the driver follows its `PlatformState` by itself once
    /// started. Kept so older callers compile; it wakes the uploader.
    pub fn environment_changed(&self) {
        self.inner.environment_changed();
    }

    /// Why fixes are (not) reaching the server, now: permission, accuracy,
    /// inaccurate fixes, network, buffer fill, token, quarantine, upload
    /// failures. Cheap, in memory.
    pub fn health(&self) -> DriverHealth {
        self.inner.health()
    }

    /// Calls `listener` with the current report at once and on every change
    /// until the returned subscription is cancelled or dropped (it does not
    /// keep the driver alive).
    pub fn add_health_listener(
        &self,
        listener: Arc<dyn HealthListener>,
    ) -> Result<Arc<Subscription>, WaypostError> {
        let id = self
            .inner
            .add_health_listener(Arc::new(HealthAdapter(listener)))?;
        let driver = Arc::downgrade(&self.inner);
        Ok(Arc::new(
            waypost_sdk::subscription::Subscription::new(move || {
                if let Some(d) = driver.upgrade() {
                    d.remove_health_listener(id);
                }
            })
            .into(),
        ))
    }

    /// What the SDK wants from the OS location service right now.
    pub fn desired_sampling(&self) -> SamplingRequest {
        self.inner.desired_sampling()
    }

    /// Counters.
    pub async fn stats(&self) -> Result<DriverStats, WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run_blocking(move || inner.stats()).await?
    }

    /// The last fix ever recorded in this buffer (survives restarts).
    pub fn last_recorded(&self) -> Option<RecordedFix> {
        self.inner.last_recorded().map(Into::into)
    }

    /// Fixes the server refused for good, newest first.
    pub async fn quarantined(&self, limit: u32) -> Result<Vec<QuarantinedFix>, WaypostError> {
        let inner = Arc::clone(&self.inner);
        let fixes = runtime::run_blocking(move || inner.quarantined(limit)).await??;
        Ok(fixes.into_iter().map(Into::into).collect())
    }

    /// Stops the uploader and waits for it (idempotent). Unsent fixes stay
    /// in the buffer for the next open.
    pub async fn shutdown(&self) -> Result<(), WaypostError> {
        let inner = Arc::clone(&self.inner);
        runtime::run(async move { inner.shutdown().await }).await?;
        self.lifecycle.shut_down();
        Ok(())
    }
}
