//! Settings of a [`Driver`](super::Driver) and the app hooks it calls.

use std::sync::Arc;
use std::time::Duration;

use waypost_protocol::{validate_id, MAX_BATCH_BYTES, MAX_BATCH_FIXES};

use super::buffer::BufferOptions;
use super::filter::{DropReason, FilterConfig};
use super::policy::{PolicyConfig, PolicyPreset, SamplingRequest};
use crate::backoff::{BackoffPolicy, RandomSource};
use crate::clock::Clock;
use crate::env::Environment;
use crate::error::WaypostError;
use crate::tokens::TokenProvider;
use crate::transport::HttpTransport;

/// Everything a driver needs to know. Start from [`DriverConfig::new`] and
/// change fields as needed.
#[derive(Debug, Clone, PartialEq)]
pub struct DriverConfig {
    /// Server base URL, e.g. `https://track.example.com`.
    pub base_url: String,
    /// The driver (must match the token's `sub`).
    pub driver_id: String,
    /// This phone/install; seqs are per device.
    pub device_id: String,
    /// Path of the SQLite buffer file.
    pub buffer_path: String,
    /// Buffer limits and durability.
    pub buffer: BufferOptions,
    /// Sampling and upload cadence.
    pub policy: PolicyConfig,
    /// Fix validation thresholds.
    pub filter: FilterConfig,
    /// Retry waits after failed uploads.
    pub backoff: BackoffPolicy,
    /// Most fixes per upload (the server allows 1,000).
    pub max_batch_fixes: u32,
    /// Most JSON bytes per upload before compression (the server allows
    /// 512 KiB).
    pub max_batch_bytes: u32,
    /// Bodies at least this large are gzipped (when that saves ≥ 10 %).
    pub gzip_min_bytes: u32,
    /// Timeout of one upload request.
    pub request_timeout: Duration,
}

impl DriverConfig {
    /// Defaults: balanced policy, 100k-fix / 7-day buffer, batches of up to
    /// 500 fixes / 256 KiB, gzip from 200 bytes, backoff 1 s … 5 min.
    pub fn new(
        base_url: impl Into<String>,
        driver_id: impl Into<String>,
        device_id: impl Into<String>,
        buffer_path: impl Into<String>,
    ) -> Self {
        Self {
            base_url: base_url.into(),
            driver_id: driver_id.into(),
            device_id: device_id.into(),
            buffer_path: buffer_path.into(),
            buffer: BufferOptions::default(),
            policy: PolicyConfig::preset(PolicyPreset::Balanced),
            filter: FilterConfig::default(),
            backoff: BackoffPolicy::default(),
            max_batch_fixes: 500,
            max_batch_bytes: 256 * 1024,
            gzip_min_bytes: 200,
            request_timeout: Duration::from_secs(30),
        }
    }

    /// Checks ids, URL and limits.
    pub fn validate(&self) -> Result<(), WaypostError> {
        let bad = WaypostError::invalid;
        validate_id("driver_id", &self.driver_id).map_err(|e| bad(e.to_string()))?;
        validate_id("device_id", &self.device_id).map_err(|e| bad(e.to_string()))?;
        if !(self.base_url.starts_with("http://") || self.base_url.starts_with("https://")) {
            return Err(bad(format!(
                "base_url {:?} must start with http:// or https://",
                self.base_url
            )));
        }
        if self.buffer_path.is_empty() {
            return Err(bad("buffer_path is empty".into()));
        }
        if self.max_batch_fixes == 0 || self.max_batch_fixes as usize > MAX_BATCH_FIXES {
            return Err(bad(format!(
                "max_batch_fixes must be 1..={MAX_BATCH_FIXES}"
            )));
        }
        // Leave room for the envelope around the fixes.
        if self.max_batch_bytes < 1024 || self.max_batch_bytes as usize > MAX_BATCH_BYTES - 1024 {
            return Err(bad(format!(
                "max_batch_bytes must be 1024..={}",
                MAX_BATCH_BYTES - 1024
            )));
        }
        if self.buffer.max_fixes == 0 {
            return Err(bad("buffer.max_fixes must be positive".into()));
        }
        if self.backoff.base.is_zero() || self.backoff.cap < self.backoff.base {
            return Err(bad("backoff needs 0 < base <= cap".into()));
        }
        Ok(())
    }

    /// `POST` target of the uploads.
    pub fn ingest_url(&self) -> String {
        format!(
            "{}/v1/drivers/{}/locations",
            self.base_url.trim_end_matches('/'),
            self.driver_id
        )
    }
}

/// Something the app may want to know. Delivered synchronously from the
/// SDK's threads: return quickly.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum DriverEvent {
    /// Configure the OS location service like this.
    SamplingChanged {
        /// The new request.
        sampling: SamplingRequest,
    },
    /// Somebody started (or stopped) watching this driver.
    WatchedChanged {
        /// Whether anybody watches now.
        watched: bool,
    },
    /// A batch was stored by the server.
    Uploaded {
        /// Fixes acknowledged and removed from the buffer.
        fixes: u64,
        /// Highest seq the server acknowledged.
        high_seq: u64,
        /// Watchers reported by the server.
        watchers: u64,
    },
    /// An upload failed; the SDK retries after `retry_in_ms`.
    UploadFailed {
        /// What went wrong.
        message: String,
        /// When the next attempt is due, ms from now (0: when something
        /// changes, e.g. the network comes back).
        retry_in_ms: u64,
    },
    /// The server refused the token, also after a refresh.
    AuthFailed {
        /// The server's message.
        message: String,
    },
    /// The server refused a fix for good; it is kept aside, never resent.
    Quarantined {
        /// The fix's seq.
        seq: u64,
        /// The server's reason.
        reason: String,
    },
    /// The buffer was full or fixes were too old: these many were dropped.
    Evicted {
        /// How many.
        count: u64,
    },
    /// The buffer file was corrupt and was replaced by an empty one.
    BufferRecreated {
        /// Details.
        message: String,
    },
}

/// Receives [`DriverEvent`]s.
pub trait DriverListener: Send + Sync + 'static {
    /// Called for every event.
    fn on_event(&self, event: DriverEvent);
}

/// What `record` did with a location.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum RecordOutcome {
    /// Committed to the buffer with this seq.
    Recorded {
        /// The assigned seq.
        seq: u64,
    },
    /// Not recorded.
    Dropped {
        /// Why.
        reason: DropReason,
    },
}

/// The I/O edges of a driver, for tests and simulations. Apps use
/// [`Driver::open`](super::Driver::open), which fills in the real ones.
#[derive(Clone)]
pub struct DriverDeps {
    /// Time.
    pub clock: Arc<dyn Clock>,
    /// Randomness for backoff jitter.
    pub random: Arc<dyn RandomSource>,
    /// Network and battery.
    pub environment: Arc<dyn Environment>,
    /// HTTP.
    pub transport: Arc<dyn HttpTransport>,
    /// Bearer tokens.
    pub tokens: Arc<dyn TokenProvider>,
    /// Event sink.
    pub listener: Option<Arc<dyn DriverListener>>,
}

impl std::fmt::Debug for DriverDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DriverDeps(..)")
    }
}

/// Counters of a driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
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
    /// Requests sent since open (retries and splits included).
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
