//! [`PlatformState`]: the phone's situation (network, battery, power save,
//! foreground/background, location permission, accuracy authorization,
//! motion activity), created **once per process** by the app, updated from
//! its receivers/observers, and handed to every `Driver` and `BuyerClient`.
//! They follow every change at once: the app calls nothing else.
//!
//! Android: `ConnectivityManager.NetworkCallback`, `ACTION_BATTERY_CHANGED`,
//! `PowerManager.ACTION_POWER_SAVE_MODE_CHANGED`, `ProcessLifecycleOwner`,
//! the permission results (`ACCESS_BACKGROUND_LOCATION`,
//! `ACCESS_FINE_LOCATION` vs only `ACCESS_COARSE_LOCATION`), activity
//! recognition. iOS: `NWPathMonitor`, `UIDevice.batteryState`,
//! `ProcessInfo.isLowPowerModeEnabled`, scene phases,
//! `locationManagerDidChangeAuthorization` (`authorizationStatus`,
//! `accuracyAuthorization`), `CMMotionActivityManager`.
//!
//! The setters are cheap, never block, and may be called from any thread;
//! setting the current value again notifies nobody.

use std::sync::Arc;

use waypost_sdk::env as sdk;
use waypost_sdk::env::{
    AccuracyAuthorization, AppState, BatteryState, LocationPermission, MotionActivity, NetworkType,
    PlatformSnapshot,
};

/// The one per-process platform state. Inputs the app never sets keep
/// their defaults: Wi-Fi, full battery, foreground, `ALWAYS`, `PRECISE`,
/// `UNKNOWN` activity.
#[derive(uniffi::Object)]
pub struct PlatformState {
    inner: sdk::PlatformState,
}

impl PlatformState {
    /// The SDK's state, for the objects that follow it.
    pub(crate) fn environment(&self) -> Arc<dyn sdk::Environment> {
        Arc::new(self.inner.clone())
    }
}

#[uniffi::export]
impl PlatformState {
    /// A state with every input at its default.
    #[uniffi::constructor]
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            inner: sdk::PlatformState::default(),
        })
    }

    /// A state starting from `snapshot` (e.g. what the app read at launch).
    #[uniffi::constructor]
    pub fn with_snapshot(snapshot: PlatformSnapshot) -> Arc<Self> {
        Arc::new(Self {
            inner: sdk::PlatformState::from_snapshot(snapshot),
        })
    }

    /// Everything, as last set.
    pub fn snapshot(&self) -> PlatformSnapshot {
        self.inner.get()
    }

    /// Replaces everything; returns whether anything changed.
    pub fn set(&self, snapshot: PlatformSnapshot) -> bool {
        self.inner.set(snapshot)
    }

    /// The network; returns whether it changed.
    pub fn set_network(&self, network: NetworkType) -> bool {
        self.inner.set_network(network)
    }

    /// Battery level, charging and power save (level moves under 1 % are
    /// ignored); returns whether it changed.
    pub fn set_battery(&self, battery: BatteryState) -> bool {
        self.inner.set_battery(battery)
    }

    /// Foreground or background; returns whether it changed.
    pub fn set_app_state(&self, app_state: AppState) -> bool {
        self.inner.set_app_state(app_state)
    }

    /// The location permission; returns whether it changed.
    pub fn set_permission(&self, permission: LocationPermission) -> bool {
        self.inner.set_permission(permission)
    }

    /// Precise or reduced accuracy; returns whether it changed.
    pub fn set_accuracy(&self, accuracy: AccuracyAuthorization) -> bool {
        self.inner.set_accuracy(accuracy)
    }

    /// The motion activity; returns whether it changed.
    pub fn set_activity(&self, activity: MotionActivity) -> bool {
        self.inner.set_activity(activity)
    }
}
