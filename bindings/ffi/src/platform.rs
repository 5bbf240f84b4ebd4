//! The phone's situation (network, battery), reported by the app: Android
//! `ConnectivityManager`/`BatteryManager` receivers, iOS `NWPathMonitor`/
//! `UIDevice`. The SDK reads it before each decision; the app also calls
//! `environment_changed()` on the driver or buyer client when it changes so
//! the SDK reacts at once (upload when the network is back, ...).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use waypost_sdk::env as sdk;

/// How the phone reaches the internet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Enum)]
pub enum NetworkType {
    /// Wi-Fi or Ethernet.
    Wifi,
    /// A cellular radio.
    Cellular,
    /// No connectivity. (Not `None`, which would read as `Optional.none`
    /// in Swift.)
    Offline,
}

/// Battery and power state.
#[derive(Debug, Clone, Copy, PartialEq, uniffi::Record)]
pub struct BatteryState {
    /// Charge 0.0–1.0.
    pub level: f64,
    /// Plugged in.
    pub charging: bool,
    /// The OS low-power / battery-saver mode is on.
    pub low_power_mode: bool,
}

/// Reports the phone's situation. Called often from SDK threads: read
/// cached values (kept up to date by your broadcast receivers/observers),
/// never block, never throw.
#[uniffi::export(with_foreign)]
pub trait PlatformInfo: Send + Sync {
    /// Current network type.
    fn network(&self) -> NetworkType;
    /// Current battery state.
    fn battery(&self) -> BatteryState;
}

impl From<NetworkType> for sdk::NetworkType {
    fn from(n: NetworkType) -> Self {
        match n {
            NetworkType::Wifi => Self::Wifi,
            NetworkType::Cellular => Self::Cellular,
            NetworkType::Offline => Self::None,
        }
    }
}

impl From<BatteryState> for sdk::BatteryState {
    fn from(b: BatteryState) -> Self {
        Self {
            level: b.level,
            charging: b.charging,
            low_power_mode: b.low_power_mode,
        }
    }
}

/// The app's [`PlatformInfo`] as the SDK's `Environment`. A foreign
/// exception reads as "Wi-Fi, full battery" (and is logged) rather than
/// unwinding through the SDK.
pub(crate) struct Adapter(pub Arc<dyn PlatformInfo>);

impl sdk::Environment for Adapter {
    fn network(&self) -> sdk::NetworkType {
        catch_unwind(AssertUnwindSafe(|| self.0.network()))
            .map(Into::into)
            .unwrap_or_else(|_| {
                tracing::error!("PlatformInfo.network failed");
                sdk::NetworkType::Wifi
            })
    }

    fn battery(&self) -> sdk::BatteryState {
        catch_unwind(AssertUnwindSafe(|| self.0.battery()))
            .map(Into::into)
            .unwrap_or_else(|_| {
                tracing::error!("PlatformInfo.battery failed");
                sdk::BatteryState::default()
            })
    }
}
