//! Driver SDK configurations the network, chaos and crash suites share.

use std::time::Duration;

use waypost_sdk::{DriverConfig, PolicyConfig};

/// How eagerly [`eager_driver_config`]'s driver uploads and retries.
#[derive(Debug, Clone, Copy)]
pub struct Eager {
    pub upload_interval_ms: u64,
    pub max_batch_fixes: u32,
    pub request_timeout: Duration,
    pub backoff_cap: Duration,
}

/// A driver that records every fix handed to it (no sampling interval, no
/// distance filter), uploads every `upload_interval_ms` whether watched or
/// not and ignores the server's policy hints, so a suite can count fixes
/// exactly; backoff starts at 50 ms.
pub fn eager_driver_config(
    url: &str,
    driver: &str,
    device: &str,
    db: &str,
    eager: Eager,
) -> DriverConfig {
    let mut config = DriverConfig::new(url, driver, device, db);
    let mut policy = PolicyConfig::default();
    for mode in [&mut policy.watched, &mut policy.unwatched] {
        mode.sample_interval_ms = 0;
        mode.distance_base_m = 0.0;
        mode.distance_max_m = 0.0;
        mode.upload_interval_ms = eager.upload_interval_ms;
    }
    policy.follow_server_hint = false;
    config.policy = policy;
    config.max_batch_fixes = eager.max_batch_fixes;
    config.request_timeout = eager.request_timeout;
    config.backoff.base = Duration::from_millis(50);
    config.backoff.cap = eager.backoff_cap;
    config
}
