//! A driver app in thirty lines: record a short drive and upload it.
//!
//! ```sh
//! cargo run -p waypost-server -- serve --dev &
//! TOKEN=$(cargo run -q -p waypost-server -- token --dev --sub d-17 --role driver)
//! WAYPOST_TOKEN=$TOKEN cargo run -p waypost-sdk --example driver
//! ```

use std::sync::Arc;
use std::time::Duration;

use waypost_sdk::env::{BatteryState, ManualEnvironment, NetworkType};
use waypost_sdk::{
    Driver, DriverConfig, DriverEvent, DriverListener, Location, PolicyConfig, PolicyPreset,
    RecordOutcome, StaticToken,
};

/// Prints what the SDK tells the app (a real app reconfigures the OS
/// location service on `SamplingChanged`).
struct Log;

impl DriverListener for Log {
    fn on_event(&self, event: DriverEvent) {
        println!("event: {event:?}");
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::var("WAYPOST_URL").unwrap_or_else(|_| "http://127.0.0.1:8080".into());
    let token = std::env::var("WAYPOST_TOKEN").map_err(|_| "set WAYPOST_TOKEN (see the docs)")?;
    let buffer = std::env::temp_dir().join("waypost-example-driver.db");

    let mut config = DriverConfig::new(url, "d-17", "phone-1", buffer.to_string_lossy());
    config.policy = PolicyConfig::preset(PolicyPreset::Realtime);
    // The platform layer keeps this up to date (ConnectivityManager, ...).
    let environment = ManualEnvironment::new(NetworkType::Wifi, BatteryState::default());
    let driver = Driver::open(
        config,
        Arc::new(StaticToken(token)),
        Some(Arc::new(Log)),
        Arc::new(environment),
    )?;
    driver.start()?;
    println!("wanted sampling: {:?}", driver.desired_sampling());

    // A minute of driving north at ~11 m/s, one fix a second, fed fast.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        - 60_000;
    for i in 0..60 {
        let mut fix = Location::new(t0 + i * 1000, 52.52 + i as f64 * 1e-4, 13.405);
        fix.speed_mps = Some(11.0);
        fix.accuracy_m = Some(6.0);
        if let RecordOutcome::Dropped { reason } = driver.record(fix)? {
            println!("fix {i} skipped: {reason:?}");
        }
    }
    driver.flush();
    for _ in 0..50 {
        if driver.stats()?.pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("stats: {:?}", driver.stats()?);
    driver.shutdown().await;
    Ok(())
}
