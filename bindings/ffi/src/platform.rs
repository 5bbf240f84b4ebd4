//! The phone's situation (network, battery), reported by the app: Android
//! `ConnectivityManager`/`BatteryManager` receivers, iOS `NWPathMonitor`/
//! `UIDevice`. The SDK reads it before each decision; the app also calls
//! `environment_changed()` on the driver or buyer client when it changes so
//! the SDK reacts at once (upload when the network is back, ...).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use waypost_sdk::env as sdk;
use waypost_sdk::env::{BatteryState, NetworkType};

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

/// The app's [`PlatformInfo`] as the SDK's `Environment`. A foreign
/// exception reads as "Wi-Fi, full battery" (and is logged) rather than
/// unwinding through the SDK.
pub(crate) struct Adapter(pub Arc<dyn PlatformInfo>);

impl sdk::Environment for Adapter {
    fn network(&self) -> sdk::NetworkType {
        catch_unwind(AssertUnwindSafe(|| self.0.network())).unwrap_or_else(|_| {
            tracing::error!("PlatformInfo.network failed");
            sdk::NetworkType::Wifi
        })
    }

    fn battery(&self) -> sdk::BatteryState {
        catch_unwind(AssertUnwindSafe(|| self.0.battery())).unwrap_or_else(|_| {
            tracing::error!("PlatformInfo.battery failed");
            sdk::BatteryState::default()
        })
    }
}
