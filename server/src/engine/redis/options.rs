//! Timings and naming of the Redis engine.

use std::time::Duration;

/// Timings and naming of the Redis engine. `Default` is what production
/// uses; tests shorten some of them.
#[derive(Debug, Clone)]
pub struct RedisOptions {
    /// Bound on every Redis call.
    pub op_timeout: Duration,
    /// How often the pub/sub probe is published; one that has not come back
    /// by the next probe forces a reconnect.
    pub probe_interval: Duration,
    /// Reconnect backoff: full jitter, doubling from `backoff_base`, capped.
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// A process's watcher count expires this long after its last refresh.
    pub watcher_ttl: Duration,
    /// How often every watcher count is rewritten.
    pub watcher_refresh: Duration,
    /// How often the hub is checked for changed local counts.
    pub watcher_scan: Duration,
    /// Lifetime of trail and dedup keys after a driver's last ingest.
    pub data_ttl: Duration,
    /// Prefix of every key and channel name.
    pub key_prefix: String,
}

impl Default for RedisOptions {
    fn default() -> Self {
        Self {
            op_timeout: Duration::from_secs(2),
            probe_interval: Duration::from_secs(5),
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(2),
            watcher_ttl: Duration::from_secs(30),
            watcher_refresh: Duration::from_secs(10),
            watcher_scan: Duration::from_secs(1),
            data_ttl: Duration::from_secs(24 * 3600),
            key_prefix: "waypost".into(),
        }
    }
}
