//! The phone's situation as the SDK sees it: network, battery, app
//! lifecycle, location permission and accuracy, motion activity.
//!
//! Apps create **one** [`PlatformState`] per process, hand it to every
//! [`Driver`](crate::Driver) and [`BuyerClient`](crate::buyer::BuyerClient)
//! they open, and update it from their receivers/observers (Android
//! `ConnectivityManager`, `BatteryManager`, `PowerManager`,
//! `ProcessLifecycleOwner`, permission results; iOS `NWPathMonitor`,
//! `UIDevice`, `ProcessInfo.isLowPowerModeEnabled`, `CLLocationManager`
//! authorization and `CLAccuracyAuthorization`, `CMMotionActivityManager`).
//! Every object opened with it follows a change at once (a
//! [`tokio::sync::watch`] channel): the driver re-plans sampling, uploads
//! when the network is back and updates its health; the buyer reconnects.
//!
//! [`Environment`] is the read side the SDK uses. Implementations that
//! cannot notify (a pull-only adapter) return `None` from
//! [`Environment::watch`]; objects then only re-read it on their own
//! schedule (and on the deprecated `environment_changed`).

#![warn(missing_docs)]

use std::sync::Arc;

use tokio::sync::watch;

/// How the phone reaches the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum NetworkType {
    /// Wi-Fi (or Ethernet): cheap, usually unmetered.
    Wifi,
    /// A cellular radio: every wake-up costs energy (LTE tail).
    Cellular,
    /// No connectivity: do not even try. (Not `None`, which would read as
    /// `Optional.none` in Swift.)
    Offline,
}

/// Battery and power state.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct BatteryState {
    /// Charge 0.0–1.0.
    pub level: f64,
    /// Plugged in.
    pub charging: bool,
    /// The OS low-power / battery-saver mode is on.
    pub low_power_mode: bool,
}

impl Default for BatteryState {
    /// Full, not charging, no low-power mode.
    fn default() -> Self {
        Self {
            level: 1.0,
            charging: false,
            low_power_mode: false,
        }
    }
}

/// Whether the app is on screen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum AppState {
    /// Visible (Android `ProcessLifecycleOwner` STARTED, iOS `active`).
    Foreground,
    /// Not visible (stopped / `background`); a foreground service or an iOS
    /// background location session may still run.
    Background,
}

/// The location permission the user granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum LocationPermission {
    /// Also in the background (Android `ACCESS_BACKGROUND_LOCATION`, iOS
    /// `authorizedAlways`).
    Always,
    /// Only while the app is in use (Android foreground location only, iOS
    /// `authorizedWhenInUse`): in the background, fixes arrive only while a
    /// session started in the foreground keeps running (Android foreground
    /// service of type `location`, iOS `allowsBackgroundLocationUpdates`).
    WhenInUse,
    /// Refused (or restricted by policy): no fixes at all.
    Denied,
    /// Not asked yet: no fixes until the user answers.
    NotDetermined,
}

/// Precise or approximate location (Android 12 approximate location, iOS 14
/// `CLAccuracyAuthorization.reducedAccuracy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum AccuracyAuthorization {
    /// Full GPS accuracy.
    Precise,
    /// Approximate: fixes are 1–5 km off on purpose. The SDK keeps them,
    /// marked coarse, and samples slowly.
    Reduced,
}

/// What the OS activity recognition says the phone is doing (Android
/// `ActivityRecognition` transitions, iOS `CMMotionActivity`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum MotionActivity {
    /// Not moving: the SDK samples as when stopped.
    Still,
    /// On foot.
    Walking,
    /// On a bicycle.
    Cycling,
    /// In a vehicle.
    Automotive,
    /// No activity recognition (the SDK decides from the fixes).
    Unknown,
}

/// Everything the SDK knows about the phone at one moment. The defaults
/// are what the SDK assumes for inputs the app does not report: online on
/// Wi-Fi, full battery, foreground, `Always` permission, precise accuracy,
/// unknown activity (so an app that feeds only the network behaves as
/// before these inputs existed).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct PlatformSnapshot {
    /// Network.
    pub network: NetworkType,
    /// Battery level, charging, power save.
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub battery: Option<BatteryState>,
    /// Foreground or background.
    pub app_state: AppState,
    /// Location permission.
    pub permission: LocationPermission,
    /// Precise or reduced accuracy.
    pub accuracy: AccuracyAuthorization,
    /// Motion activity.
    pub activity: MotionActivity,
}

impl Default for PlatformSnapshot {
    fn default() -> Self {
        Self {
            network: NetworkType::Wifi,
            battery: None,
            app_state: AppState::Foreground,
            permission: LocationPermission::Always,
            accuracy: AccuracyAuthorization::Precise,
            activity: MotionActivity::Unknown,
        }
    }
}

impl PlatformSnapshot {
    /// The battery (full when never reported).
    pub fn battery(&self) -> BatteryState {
        self.battery.unwrap_or_default()
    }

    /// Whether location fixes can be expected at all.
    pub fn location_allowed(&self) -> bool {
        matches!(
            self.permission,
            LocationPermission::Always | LocationPermission::WhenInUse
        )
    }
}

/// Reads the phone's current situation. Must be cheap and must not block.
pub trait Environment: Send + Sync + 'static {
    /// Current network type.
    fn network(&self) -> NetworkType;
    /// Current battery state.
    fn battery(&self) -> BatteryState;
    /// Everything at once. The default fills the inputs a network/battery
    /// only implementation does not know with [`PlatformSnapshot`]'s
    /// defaults.
    fn snapshot(&self) -> PlatformSnapshot {
        PlatformSnapshot {
            network: self.network(),
            battery: Some(self.battery()),
            ..PlatformSnapshot::default()
        }
    }
    /// A receiver that is notified on every change, when the implementation
    /// can notify (a [`PlatformState`] can).
    fn watch(&self) -> Option<watch::Receiver<PlatformSnapshot>> {
        None
    }
}

/// The one per-process platform state: the app sets it, every SDK object
/// opened with it follows. Cheap to clone; clones share state. Setting a
/// value equal to the current one notifies nobody.
#[derive(Debug, Clone)]
pub struct PlatformState {
    tx: Arc<watch::Sender<PlatformSnapshot>>,
}

/// Former name of [`PlatformState`] (network and battery only).
pub type ManualEnvironment = PlatformState;

impl PlatformState {
    /// Starts with `network` and `battery`, the other inputs at their
    /// defaults.
    pub fn new(network: NetworkType, battery: BatteryState) -> Self {
        Self::from_snapshot(PlatformSnapshot {
            network,
            battery: Some(battery),
            ..PlatformSnapshot::default()
        })
    }

    /// Starts with `snapshot`.
    pub fn from_snapshot(snapshot: PlatformSnapshot) -> Self {
        let (tx, _) = watch::channel(snapshot);
        Self { tx: Arc::new(tx) }
    }

    /// The current state.
    pub fn get(&self) -> PlatformSnapshot {
        *self.tx.borrow()
    }

    /// Applies `change`; notifies the followers when the state changed.
    /// Returns whether it did.
    pub fn update(&self, change: impl FnOnce(&mut PlatformSnapshot)) -> bool {
        self.tx.send_if_modified(|s| {
            let before = *s;
            change(s);
            *s != before
        })
    }

    /// Replaces the whole state.
    pub fn set(&self, snapshot: PlatformSnapshot) -> bool {
        self.update(|s| *s = snapshot)
    }

    /// Sets the network type.
    pub fn set_network(&self, network: NetworkType) -> bool {
        self.update(|s| s.network = network)
    }

    /// Sets the battery state. Level moves under 1 % (and within the same
    /// charging / power-save state) are ignored: Android reports the
    /// battery very often.
    pub fn set_battery(&self, battery: BatteryState) -> bool {
        self.update(|s| {
            let old = s.battery();
            let same = s.battery.is_some()
                && old.charging == battery.charging
                && old.low_power_mode == battery.low_power_mode
                && (old.level - battery.level).abs() < 0.01;
            if !same {
                s.battery = Some(battery);
            }
        })
    }

    /// Sets foreground/background.
    pub fn set_app_state(&self, app_state: AppState) -> bool {
        self.update(|s| s.app_state = app_state)
    }

    /// Sets the location permission.
    pub fn set_permission(&self, permission: LocationPermission) -> bool {
        self.update(|s| s.permission = permission)
    }

    /// Sets precise/reduced accuracy.
    pub fn set_accuracy(&self, accuracy: AccuracyAuthorization) -> bool {
        self.update(|s| s.accuracy = accuracy)
    }

    /// Sets the motion activity.
    pub fn set_activity(&self, activity: MotionActivity) -> bool {
        self.update(|s| s.activity = activity)
    }

    /// A receiver of every change.
    pub fn subscribe(&self) -> watch::Receiver<PlatformSnapshot> {
        self.tx.subscribe()
    }
}

impl Default for PlatformState {
    /// [`PlatformSnapshot::default`].
    fn default() -> Self {
        Self::from_snapshot(PlatformSnapshot::default())
    }
}

impl Environment for PlatformState {
    fn network(&self) -> NetworkType {
        self.tx.borrow().network
    }

    fn battery(&self) -> BatteryState {
        self.tx.borrow().battery()
    }

    fn snapshot(&self) -> PlatformSnapshot {
        self.get()
    }

    fn watch(&self) -> Option<watch::Receiver<PlatformSnapshot>> {
        Some(self.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_real_changes_notify() {
        let p = PlatformState::default();
        let mut rx = p.subscribe();
        assert!(!p.set_network(NetworkType::Wifi));
        assert!(!rx.has_changed().unwrap_or(true));
        assert!(p.set_network(NetworkType::Offline));
        assert!(rx.has_changed().unwrap_or(false));
        rx.mark_unchanged();
        assert!(p.set_battery(BatteryState {
            level: 0.5,
            ..BatteryState::default()
        }));
        // Under 1 %: ignored.
        assert!(!p.set_battery(BatteryState {
            level: 0.505,
            ..BatteryState::default()
        }));
        assert!(p.set_permission(LocationPermission::Denied));
        assert!(!p.snapshot().location_allowed());
        assert_eq!(p.network(), NetworkType::Offline);
        assert_eq!(p.battery().level, 0.5);
        // Clones share state.
        let q = p.clone();
        assert!(q.set_accuracy(AccuracyAuthorization::Reduced));
        assert_eq!(p.get().accuracy, AccuracyAuthorization::Reduced);
    }
}
