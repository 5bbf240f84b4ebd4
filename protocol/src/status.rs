//! Dead zones: what a driver's SDK says about a silence (`silence` in the
//! ingest body), and what watchers are told (`trail` and `driver_status`
//! frames on `tracking:{driver}` and on the channels of its active orders).

use serde::{Deserialize, Serialize};

/// Most fixes a `trail` frame carries (the server thins longer segments).
pub const MAX_TRAIL_FIXES: usize = 100;

/// Why a driver's uploads stopped, as its SDK saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SilenceReason {
    /// The phone had no network.
    Offline,
    /// The network was there but uploads failed (timeouts, resets, 5xx).
    NetworkError,
    /// The OS battery saver / low-power mode held uploads back.
    BatterySaver,
    /// Location permission was missing: nothing was recorded.
    Permission,
    /// Anything else, including reasons a newer SDK knows.
    #[serde(other)]
    Unknown,
}

/// Optional in the ingest body: sent with the first upload after uploads
/// were held back or failing for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Silence {
    pub reason: SilenceReason,
    /// How long uploads were not getting through, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_ms: Option<u64>,
    /// Fixes waiting in the buffer when the upload started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<u64>,
}

/// A driver's status as watchers are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverState {
    /// Uploading again after being offline.
    Online,
    /// No upload for longer than the online TTL.
    Offline,
}

/// `{"type":"driver_status",...}` (a [`ServerFrame::DriverStatus`]
/// (crate::ServerFrame::DriverStatus) carries the same fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriverStatusBody {
    pub status: DriverState,
    /// Server time of the driver's last upload before the change, Unix ms.
    pub last_seen_ms: i64,
    /// `online`: how long no upload reached the server, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dark_ms: Option<u64>,
    /// `online`: why, as the driver's SDK reported it (absent when it did
    /// not say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<SilenceReason>,
    /// `online`: fixes the SDK had buffered meanwhile, when it said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub buffered: Option<u64>,
}
