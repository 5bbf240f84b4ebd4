//! Timings and naming of the Redis engine.

use std::path::PathBuf;
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
    /// Prefix of every key and channel name, the chat, presence and
    /// notification stores' included.
    pub key_prefix: String,
    /// TLS material for `rediss://` URLs.
    pub tls: RedisTls,
    /// Find the primary through Sentinel instead of the URL's host.
    pub sentinel: Option<SentinelConfig>,
    /// The URL lists seed nodes of a Redis Cluster (`redis://h1:p1,redis://h2:p2`):
    /// commands go to the primary of their key's slot, live frames over
    /// sharded pub/sub (`--engine redis-cluster`).
    pub cluster: bool,
    /// Acknowledged writes wait until this many replicas have them
    /// (`WAIT n timeout`); 0 = no waiting.
    pub wait_replicas: u32,
    /// Longest such a wait; fewer replicas by then fails the write (503,
    /// retried by the client; ingest and chat sends are idempotent).
    pub wait_timeout: Duration,
}

/// `--redis-sentinel host:port,... --redis-master NAME`.
#[derive(Debug, Clone)]
pub struct SentinelConfig {
    /// `host:port` of each sentinel.
    pub addrs: Vec<String>,
    /// The monitored master's name.
    pub master: String,
}

/// TLS material for a `rediss://` URL, as PEM files. Without `ca` the
/// server certificate is checked against the system's trust store;
/// `client_cert` and `client_key` (both or neither) authenticate this
/// process to a Redis that requires client certificates (mutual TLS).
#[derive(Debug, Clone, Default)]
pub struct RedisTls {
    pub ca: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl RedisTls {
    /// Whether any TLS file is configured.
    pub fn is_configured(&self) -> bool {
        self.ca.is_some() || self.client_cert.is_some() || self.client_key.is_some()
    }
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
            tls: RedisTls::default(),
            sentinel: None,
            cluster: false,
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(500),
        }
    }
}
