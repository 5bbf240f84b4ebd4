//! The phone's situation as the SDK sees it: network type and battery.
//!
//! The platform layer (Android `ConnectivityManager` / `BatteryManager`, iOS
//! `NWPathMonitor` / `UIDevice`) implements [`Environment`], or pushes
//! updates into a [`ManualEnvironment`]. The driver reads it before every
//! decision and reacts to transitions (network back, charging started) when
//! told through `Driver::environment_changed`.

#![warn(missing_docs)]

use std::sync::Arc;

use parking_lot::Mutex;

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

/// Reads the phone's current situation. Must be cheap and must not block.
pub trait Environment: Send + Sync + 'static {
    /// Current network type.
    fn network(&self) -> NetworkType;
    /// Current battery state.
    fn battery(&self) -> BatteryState;
}

#[derive(Debug, Clone, Copy)]
struct Snapshot {
    network: NetworkType,
    battery: BatteryState,
}

/// An [`Environment`] the app (or a test) sets explicitly. Cheap to clone;
/// clones share state.
#[derive(Debug, Clone)]
pub struct ManualEnvironment {
    inner: Arc<Mutex<Snapshot>>,
}

impl ManualEnvironment {
    /// Starts with `network` and `battery`.
    pub fn new(network: NetworkType, battery: BatteryState) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Snapshot { network, battery })),
        }
    }

    /// Sets the network type.
    pub fn set_network(&self, network: NetworkType) {
        self.inner.lock().network = network;
    }

    /// Sets the battery state.
    pub fn set_battery(&self, battery: BatteryState) {
        self.inner.lock().battery = battery;
    }
}

impl Default for ManualEnvironment {
    /// Wi-Fi, full battery.
    fn default() -> Self {
        Self::new(NetworkType::Wifi, BatteryState::default())
    }
}

impl Environment for ManualEnvironment {
    fn network(&self) -> NetworkType {
        self.inner.lock().network
    }

    fn battery(&self) -> BatteryState {
        self.inner.lock().battery
    }
}
