//! Server settings with production defaults. Every limit on something that
//! grows lives here so operators can see and tune them in one place.

use std::time::Duration;

/// Limits and timings. `Default` gives the documented defaults.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest HTTP body accepted (after gzip decompression).
    pub max_body_bytes: usize,
    /// Most fixes in one ingest batch.
    pub max_batch_fixes: usize,
    /// Largest WebSocket message a client may send.
    pub max_frame_bytes: usize,
    /// Connections one user (`sub`) may hold at once on this process.
    pub max_connections_per_user: u32,
    /// WebSockets, SSE streams and long polls this process holds at once, all
    /// users together; beyond it WebSockets close with 4102, streams and
    /// polls get 503.
    /// Kept below the open-file limit so `accept` never fails.
    pub max_connections: usize,
    /// Messages per second a connection may send (burst: twice this).
    pub ws_messages_per_s: u32,
    /// Channels one connection may subscribe to.
    pub max_channels_per_connection: usize,
    /// Frames queued for one connection before it counts as too slow (4101).
    pub ws_queue_frames: usize,
    /// Ingest requests per second per driver (burst: twice this).
    pub ingest_requests_per_s: u32,
    /// How often the server pings each WebSocket; two missed intervals drop it.
    pub ws_ping_interval: Duration,
    /// A driver's latest position counts as online for this long.
    pub online_ttl: Duration,
    /// Fixes kept per driver trail.
    pub trail_len: usize,
    /// Seqs remembered per (driver, device) for de-duplication.
    pub dedup_window: usize,
    /// Upload interval hinted to watched drivers.
    pub watched_upload_interval_s: u32,
    /// Upload interval hinted to unwatched drivers.
    pub unwatched_upload_interval_s: u32,
    /// How long shutdown waits for connections to finish.
    pub drain_timeout: Duration,
    /// Longest chat message body in characters (Unicode scalar values, as
    /// JSON Schema's `maxLength` counts them).
    pub max_chat_body_chars: usize,
    /// Messages kept per chat room (oldest trimmed).
    pub chat_history_len: usize,
    /// Most messages replayed on `subscribe` with `after`; more missing
    /// means `recovered: false` and the client pages with `sync`.
    pub chat_replay_limit: usize,
    /// Most messages per `sync` or `GET .../messages` page.
    pub chat_sync_limit: usize,
    /// An idle room's history expires after this (its seqs then restart).
    pub chat_room_ttl: Duration,
    /// Rooms (and presence rooms) the memory engine keeps at once.
    pub max_chat_rooms: usize,
    /// Bytes of chat history the memory engine keeps (least recently used
    /// rooms are dropped beyond it).
    pub chat_memory_bytes: usize,
    /// Bytes of presence entries the memory engine keeps.
    pub presence_memory_bytes: usize,
    /// Bytes of notification history the memory engine keeps.
    pub notification_memory_bytes: usize,
    /// A device counts as present this long after its last heartbeat.
    pub presence_ttl: Duration,
    /// Presence entries (devices) kept per room.
    pub max_presence_per_room: usize,
    /// Least time between two `typing` frames of one connection in a room;
    /// faster ones are dropped.
    pub typing_interval: Duration,
    /// Notifications kept per vendor for `Last-Event-ID` replay.
    pub notification_history_len: usize,
    /// An idle vendor's notification history expires after this.
    pub notification_ttl: Duration,
    /// Largest notification body (`{"event","data"}`) in bytes.
    pub max_notification_bytes: usize,
    /// Vendors the memory engine keeps notification history for at once.
    pub max_vendors: usize,
    /// Notification streams one vendor may hold open on this process.
    pub max_sse_per_vendor: u32,
    /// Interval of the `: keepalive` comment on SSE streams.
    pub sse_keepalive: Duration,
    /// Longest `timeout_s` a long poll may ask for.
    pub max_poll_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: waypost_protocol::MAX_BATCH_BYTES,
            max_batch_fixes: waypost_protocol::MAX_BATCH_FIXES,
            max_frame_bytes: 64 * 1024,
            max_connections_per_user: 16,
            max_connections: usize::MAX,
            ws_messages_per_s: 50,
            max_channels_per_connection: 64,
            ws_queue_frames: 256,
            ingest_requests_per_s: 20,
            ws_ping_interval: Duration::from_secs(25),
            online_ttl: Duration::from_secs(30),
            trail_len: 1000,
            dedup_window: 4096,
            watched_upload_interval_s: 5,
            unwatched_upload_interval_s: 120,
            drain_timeout: Duration::from_secs(10),
            max_chat_body_chars: 4 * 1024,
            chat_history_len: 1000,
            chat_replay_limit: 500,
            chat_sync_limit: 200,
            chat_room_ttl: Duration::from_secs(7 * 24 * 3600),
            max_chat_rooms: 100_000,
            chat_memory_bytes: 256 * 1024 * 1024,
            presence_memory_bytes: 32 * 1024 * 1024,
            notification_memory_bytes: 64 * 1024 * 1024,
            presence_ttl: Duration::from_secs(60),
            max_presence_per_room: 1000,
            typing_interval: Duration::from_secs(1),
            notification_history_len: 1000,
            notification_ttl: Duration::from_secs(24 * 3600),
            max_notification_bytes: 16 * 1024,
            max_vendors: 100_000,
            max_sse_per_vendor: 8,
            sse_keepalive: Duration::from_secs(25),
            max_poll_timeout: Duration::from_secs(60),
        }
    }
}
