//! Push for sleeping apps (issue 19): APNs and FCM delivery of what a user
//! with no live subscription missed.
//!
//! - **What.** Chat messages (`chat:{room}`), order timeline entries the
//!   buyer should see (`order:{id}`: status changes, arrival) and vendor
//!   notifications (`vendor:{id}`) are handed to [`Push::event`] after they
//!   were stored and published. That call only records the event in the
//!   collapse table (a short lock, no I/O), so the live path never waits
//!   for a provider.
//! - **Who.** The users registered for the channel (a device records the
//!   channels its owner's token granted, [`devices`]), except the sender,
//!   and only while they have no live subscription to the channel on any
//!   process ([`Liveness`]: chat presence for rooms, per-user channel
//!   presence for orders and vendor streams, [`live`]). A device can mute
//!   channels.
//! - **Collapse.** Events of one channel within `collapse_window` become
//!   one push per device carrying the highest seq and the count.
//! - **Once.** Before a push is queued its `(channel, seq, device)` is
//!   claimed in the engine (SET NX with a TTL on Redis), so no two
//!   processes push the same thing to a device.
//! - **Queue.** A bounded queue (drop the oldest, counted) drained by a few
//!   worker tasks; 429/5xx and transport errors retry with full-jitter
//!   exponential backoff, `Retry-After` as a floor; dead tokens remove the
//!   device. Metrics `waypost_push_*`.

pub mod cli;
pub mod devices;
pub mod live;
pub mod providers;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waypost_protocol::backoff::BackoffPolicy;
use waypost_protocol::{Channel, PushData, PushKind};

use crate::admission::KeyedLimiter;
use crate::engine::EngineError;
use crate::webhooks::{full_jitter, Jitter, RandJitter, SystemClock, WebhookClock};
use devices::{Device, DeviceStore, Platform};
use live::LiveChannels;
use providers::{Provider, PushMessage, SendOutcome};

/// Push configuration (every bound in one place).
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// Events of one channel within this window become one push.
    pub collapse_window: Duration,
    /// Pushes waiting for a worker (including retries), at most.
    pub queue_cap: usize,
    /// Channels with events waiting in the collapse table, at most.
    pub max_pending: usize,
    pub max_devices_per_user: usize,
    /// Users pushed for one event, at most.
    pub max_recipients: usize,
    /// Pushes per user: sustained rate per second and burst.
    pub user_rate_per_s: u32,
    pub user_burst: u32,
    pub max_attempts: u32,
    pub backoff: BackoffPolicy,
    /// How long a `(channel, seq, device)` claim is kept.
    pub dedup_ttl: Duration,
    /// Include a short preview (chat body, status, event name).
    pub previews: bool,
    /// Providers may drop a push older than this.
    pub expiration: Duration,
    pub workers: usize,
}

impl Default for PushConfig {
    fn default() -> Self {
        Self {
            collapse_window: Duration::from_millis(1500),
            queue_cap: 10_000,
            max_pending: 100_000,
            max_devices_per_user: 10,
            max_recipients: 1000,
            user_rate_per_s: 1,
            user_burst: 10,
            max_attempts: 10,
            backoff: BackoffPolicy {
                base: Duration::from_millis(500),
                cap: Duration::from_secs(60),
                max_elapsed: None,
            },
            dedup_ttl: Duration::from_secs(24 * 3600),
            previews: false,
            expiration: Duration::from_secs(3600),
            workers: 4,
        }
    }
}

/// Longest preview, in characters.
pub const PREVIEW_CHARS: usize = 80;
/// Senders tracked per pending burst (beyond it, a sender may get a push
/// counting its own messages).
const MAX_SENDERS_PER_BURST: usize = 64;

/// Something that happened on a channel, after it was stored.
#[derive(Debug, Clone)]
pub struct PushEvent {
    pub kind: PushKind,
    pub channel: Channel,
    pub seq: u64,
    /// The user who caused it (gets no push for it).
    pub from: Option<String>,
    pub preview: Option<String>,
    /// When the originating request was received (Unix µs).
    pub origin_us: i64,
}

/// Whether a user has a live subscription to a channel on any process.
#[async_trait]
pub trait Liveness: Send + Sync + 'static {
    async fn is_live(&self, user: &str, channel: &Channel) -> Result<bool, EngineError>;
}

/// `waypost_push_*`.
#[derive(Clone)]
pub struct PushMetrics {
    pub sent: IntCounterVec,
    pub failed: IntCounterVec,
    pub removed: IntCounterVec,
    pub skipped: IntCounterVec,
    pub dropped: IntCounter,
    pub queue_depth: IntGauge,
    pub provider_latency: HistogramVec,
    /// From the event's origin to the provider request.
    pub latency: Histogram,
}

impl Default for PushMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl PushMetrics {
    pub fn new() -> Self {
        Self::build().unwrap_or_else(|_| crate::metrics::unreachable_metric())
    }

    fn build() -> Result<Self, prometheus::Error> {
        let buckets = vec![
            0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
        ];
        Ok(Self {
            sent: IntCounterVec::new(
                Opts::new("push_sent_total", "Pushes a provider accepted"),
                &["provider"],
            )?,
            failed: IntCounterVec::new(
                Opts::new("push_failed_total", "Pushes that failed, by reason"),
                &["provider", "reason"],
            )?,
            removed: IntCounterVec::new(
                Opts::new(
                    "push_removed_tokens_total",
                    "Devices removed because the provider said the token is dead",
                ),
                &["provider"],
            )?,
            skipped: IntCounterVec::new(
                Opts::new(
                    "push_skipped_total",
                    "Pushes not sent: live, muted, rate_limited, duplicate",
                ),
                &["reason"],
            )?,
            dropped: IntCounter::new(
                "push_dropped_total",
                "Pushes dropped from the full queue (oldest first)",
            )?,
            queue_depth: IntGauge::new("push_queue_depth", "Pushes waiting to be sent")?,
            provider_latency: HistogramVec::new(
                HistogramOpts::new("push_provider_seconds", "Provider request time")
                    .buckets(buckets.clone()),
                &["provider"],
            )?,
            latency: Histogram::with_opts(
                HistogramOpts::new(
                    "push_latency_seconds",
                    "From the event to its first provider request",
                )
                .buckets(buckets),
            )?,
        })
    }

    /// Registers every metric (an error is logged: the registry already
    /// has them).
    pub fn register(&self, r: &Registry) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.sent.clone()),
            Box::new(self.failed.clone()),
            Box::new(self.removed.clone()),
            Box::new(self.skipped.clone()),
            Box::new(self.dropped.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.provider_latency.clone()),
            Box::new(self.latency.clone()),
        ];
        for c in collectors {
            if let Err(e) = r.register(c) {
                tracing::error!(error = %e, "push metric registration failed");
            }
        }
    }
}

/// Events of one channel waiting for the collapse window to close.
struct Burst {
    kind: PushKind,
    seq: u64,
    count: u32,
    by_sender: HashMap<String, u32>,
    preview: Option<String>,
    first: Instant,
    origin_us: i64,
}

/// One push to one device.
#[derive(Debug, Clone)]
struct Job {
    device: Device,
    msg: PushMessage,
    attempts: u32,
    origin_us: i64,
}

#[derive(Default)]
struct Queue {
    ready: VecDeque<Job>,
    /// Retries by due time (Unix ms, then a tie-breaker).
    delayed: BTreeMap<(i64, u64), Job>,
    next_id: u64,
}

impl Queue {
    fn len(&self) -> usize {
        self.ready.len() + self.delayed.len()
    }
}

/// The push service: registration storage, collapse table, queue and
/// providers.
pub struct Push {
    cfg: PushConfig,
    pub devices: Arc<dyn DeviceStore>,
    /// Who is live on which order and vendor channel (per user, across
    /// processes).
    pub live: LiveChannels,
    apns: Option<Arc<dyn Provider>>,
    fcm: Option<Arc<dyn Provider>>,
    pending: Mutex<HashMap<Channel, Burst>>,
    queue: Mutex<Queue>,
    wake: Notify,
    limiter: KeyedLimiter,
    clock: Arc<dyn WebhookClock>,
    jitter: Arc<dyn Jitter>,
    pub metrics: PushMetrics,
}

/// Most users whose push rate is tracked at once.
const MAX_RATE_KEYS: usize = 100_000;

impl Push {
    pub fn new(
        cfg: PushConfig,
        devices: Arc<dyn DeviceStore>,
        apns: Option<Arc<dyn Provider>>,
        fcm: Option<Arc<dyn Provider>>,
        metrics: PushMetrics,
    ) -> Self {
        let limiter = KeyedLimiter::new(cfg.user_rate_per_s, cfg.user_burst, MAX_RATE_KEYS);
        Self {
            cfg,
            live: LiveChannels::new(Arc::clone(&devices)),
            devices,
            apns,
            fcm,
            pending: Mutex::default(),
            queue: Mutex::default(),
            wake: Notify::new(),
            limiter,
            clock: Arc::new(SystemClock),
            jitter: Arc::new(RandJitter),
            metrics,
        }
    }

    /// With another clock and jitter (tests).
    pub fn with_time(mut self, clock: Arc<dyn WebhookClock>, jitter: Arc<dyn Jitter>) -> Self {
        self.clock = clock;
        self.jitter = jitter;
        self
    }

    pub fn config(&self) -> &PushConfig {
        &self.cfg
    }

    /// Whether any provider is configured (else events are not recorded).
    pub fn enabled(&self) -> bool {
        self.apns.is_some() || self.fcm.is_some()
    }

    /// Records an event for the next collapse flush. Never waits on I/O.
    pub fn event(&self, ev: PushEvent) {
        if !self.enabled() {
            return;
        }
        let preview = if self.cfg.previews {
            ev.preview.map(|p| p.chars().take(PREVIEW_CHARS).collect())
        } else {
            None
        };
        let mut pending = self.pending.lock();
        if !pending.contains_key(&ev.channel) && pending.len() >= self.cfg.max_pending {
            self.metrics
                .skipped
                .with_label_values(&["collapse_full"])
                .inc();
            return;
        }
        let burst = pending.entry(ev.channel).or_insert_with(|| Burst {
            kind: ev.kind,
            seq: 0,
            count: 0,
            by_sender: HashMap::new(),
            preview: None,
            first: Instant::now(),
            origin_us: ev.origin_us,
        });
        burst.seq = burst.seq.max(ev.seq);
        burst.count = burst.count.saturating_add(1);
        if preview.is_some() {
            burst.preview = preview;
        }
        if let Some(from) = ev.from {
            if burst.by_sender.len() < MAX_SENDERS_PER_BURST || burst.by_sender.contains_key(&from)
            {
                *burst.by_sender.entry(from).or_default() += 1;
            }
        }
    }

    /// Spawns the collapse flusher and the workers on `tracker`.
    pub fn spawn(
        self: &Arc<Self>,
        live: Arc<dyn Liveness>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
    ) {
        if !self.enabled() {
            return;
        }
        let me = Arc::clone(self);
        let c = cancel.clone();
        tracker.spawn(async move { me.flusher(live, c).await });
        for _ in 0..self.cfg.workers.max(1) {
            let me = Arc::clone(self);
            let c = cancel.clone();
            tracker.spawn(async move { me.worker(c).await });
        }
        if self.devices.shares_live() {
            let me = Arc::clone(self);
            let c = cancel.clone();
            tracker.spawn(async move { me.live_refresher(c).await });
        }
    }

    /// Re-marks this process's live subscriptions before their shared
    /// marks expire.
    async fn live_refresher(&self, cancel: CancellationToken) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(live::LIVE_REFRESH) => {}
            }
            if let Err(e) = self.live.refresh().await {
                tracing::warn!(error = %e, "refreshing live marks failed");
            }
        }
    }

    async fn flusher(&self, live: Arc<dyn Liveness>, cancel: CancellationToken) {
        let tick = (self.cfg.collapse_window / 4).max(Duration::from_millis(10));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(tick) => {}
            }
            self.flush_due(&*live, false).await;
        }
    }

    /// Turns bursts whose window closed (all with `all`) into queued pushes.
    pub async fn flush_due(&self, live: &dyn Liveness, all: bool) {
        let due: Vec<(Channel, Burst)> = {
            let mut pending = self.pending.lock();
            let now = Instant::now();
            let keys: Vec<Channel> = pending
                .iter()
                .filter(|(_, b)| all || now.duration_since(b.first) >= self.cfg.collapse_window)
                .map(|(c, _)| c.clone())
                .collect();
            keys.into_iter()
                .filter_map(|c| pending.remove(&c).map(|b| (c, b)))
                .collect()
        };
        for (channel, burst) in due {
            if let Err(e) = self.fan_out(live, &channel, &burst).await {
                tracing::warn!(%channel, error = %e, "push fan-out failed");
            }
        }
    }

    async fn fan_out(
        &self,
        live: &dyn Liveness,
        channel: &Channel,
        burst: &Burst,
    ) -> Result<(), EngineError> {
        let name = channel.to_string();
        let users = self
            .devices
            .users_for(&name, self.cfg.max_recipients)
            .await?;
        for user in users {
            let own = burst.by_sender.get(&user).copied().unwrap_or(0);
            let count = burst.count.saturating_sub(own);
            if count == 0 {
                continue;
            }
            match live.is_live(&user, channel).await {
                Ok(true) => {
                    self.metrics.skipped.with_label_values(&["live"]).inc();
                    continue;
                }
                Ok(false) => {}
                // Unknown: pushing twice is better than missing one.
                Err(e) => tracing::debug!(%channel, error = %e, "liveness unknown; pushing"),
            }
            let data = PushData {
                kind: burst.kind,
                channel: name.clone(),
                seq: burst.seq,
                count,
                preview: burst.preview.clone(),
            };
            self.to_user(&user, data, burst.origin_us, Some(&name))
                .await?;
        }
        Ok(())
    }

    /// Queues `data` for each of `user`'s devices registered for `channel`
    /// (any device when `None`), claimed once per device.
    async fn to_user(
        &self,
        user: &str,
        data: PushData,
        origin_us: i64,
        channel: Option<&str>,
    ) -> Result<usize, EngineError> {
        let devices = self.devices.devices(user).await?;
        let mut queued = 0;
        let mut limited = false;
        for device in devices {
            if let Some(ch) = channel {
                if !device.channels.iter().any(|c| c == ch) {
                    continue;
                }
                if device.muted.iter().any(|c| c == ch) {
                    self.metrics.skipped.with_label_values(&["muted"]).inc();
                    continue;
                }
            }
            if !limited && self.limiter.check(user).is_err() {
                limited = true;
            }
            if limited {
                self.metrics
                    .skipped
                    .with_label_values(&["rate_limited"])
                    .inc();
                continue;
            }
            let key = format!(
                "{}|{}|{}|{}",
                data.channel, data.seq, user, device.device_id
            );
            if !self
                .devices
                .claim(&key, self.cfg.dedup_ttl.as_millis() as u64)
                .await?
            {
                self.metrics.skipped.with_label_values(&["duplicate"]).inc();
                continue;
            }
            let exp = self.clock.now_ms() / 1000 + self.cfg.expiration.as_secs() as i64;
            self.enqueue(Job {
                device,
                msg: PushMessage::new(data.clone(), exp),
                attempts: 0,
                origin_us,
            });
            queued += 1;
        }
        Ok(queued)
    }

    /// A test push to every device of `user` (`waypost push-test`); how
    /// many were queued.
    pub async fn test_push(&self, user: &str) -> Result<usize, EngineError> {
        let now = self.clock.now_ms();
        let data = PushData {
            kind: PushKind::Test,
            channel: format!("user:{user}"),
            seq: now as u64,
            count: 1,
            preview: Some("Waypost test push".into()),
        };
        self.to_user(user, data, now * 1000, None).await
    }

    fn enqueue(&self, job: Job) {
        let mut q = self.queue.lock();
        if q.len() >= self.cfg.queue_cap {
            // Drop the oldest: a newer push for the same channel carries a
            // higher seq and the app syncs everything before it anyway.
            let dropped = if q.ready.pop_front().is_some() {
                true
            } else {
                q.delayed.pop_first().is_some()
            };
            if dropped {
                self.metrics.dropped.inc();
            }
        }
        q.ready.push_back(job);
        self.metrics.queue_depth.set(q.len() as i64);
        drop(q);
        self.wake.notify_one();
    }

    /// The next job that is due, or how long until one is.
    fn next_job(&self) -> Result<Job, Option<Duration>> {
        let now = self.clock.now_ms();
        let mut q = self.queue.lock();
        let due_retry = q.delayed.first_key_value().map(|(k, _)| k.0);
        let job = match due_retry {
            Some(due) if due <= now => q.delayed.pop_first().map(|(_, j)| j),
            _ => q.ready.pop_front(),
        };
        self.metrics.queue_depth.set(q.len() as i64);
        match job {
            Some(j) => Ok(j),
            None => Err(due_retry.map(|d| Duration::from_millis((d - now).max(1) as u64))),
        }
    }

    async fn worker(&self, cancel: CancellationToken) {
        while !cancel.is_cancelled() {
            match self.next_job() {
                Ok(job) => self.deliver(job).await,
                Err(wait) => {
                    let wait = wait
                        .unwrap_or(Duration::from_millis(250))
                        .min(Duration::from_millis(250));
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    }

    /// Drains every job that is due now (tests).
    pub async fn drain_ready(&self) -> usize {
        let mut n = 0;
        while let Ok(job) = self.next_job() {
            self.deliver(job).await;
            n += 1;
        }
        n
    }

    async fn deliver(&self, mut job: Job) {
        let platform = job.device.platform;
        let label = platform.as_str();
        let provider = match platform {
            Platform::Apns => self.apns.as_ref(),
            Platform::Fcm => self.fcm.as_ref(),
        };
        let Some(provider) = provider else {
            self.metrics
                .failed
                .with_label_values(&[label, "no_provider"])
                .inc();
            return;
        };
        if job.attempts == 0 {
            let waited_us = crate::frame::now_us().saturating_sub(job.origin_us);
            self.metrics.latency.observe(waited_us.max(0) as f64 / 1e6);
        }
        let started = Instant::now();
        let outcome = provider.send(&job.device, &job.msg).await;
        self.metrics
            .provider_latency
            .with_label_values(&[label])
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            SendOutcome::Sent => self.metrics.sent.with_label_values(&[label]).inc(),
            SendOutcome::Unregistered(reason) => {
                let d = &job.device;
                match self
                    .devices
                    .remove_token(&d.user, &d.device_id, &d.token)
                    .await
                {
                    Ok(_) => {
                        tracing::info!(user = %d.user, device = %d.device_id, %reason, "push token dead; device removed");
                        self.metrics.removed.with_label_values(&[label]).inc();
                    }
                    Err(e) => tracing::warn!(error = %e, "removing a dead push token failed"),
                }
                self.metrics
                    .failed
                    .with_label_values(&[label, &reason_label(&reason)])
                    .inc();
            }
            SendOutcome::Retry { reason, after } => {
                job.attempts += 1;
                if job.attempts >= self.cfg.max_attempts {
                    tracing::warn!(device = %job.device.device_id, %reason, "push given up");
                    self.metrics
                        .failed
                        .with_label_values(&[label, "gave_up"])
                        .inc();
                    return;
                }
                let wait = full_jitter(&self.cfg.backoff, job.attempts - 1, &*self.jitter)
                    .max(after.unwrap_or_default());
                tracing::debug!(device = %job.device.device_id, %reason, ?wait, "push retry");
                let due = self.clock.now_ms() + wait.as_millis() as i64;
                let mut q = self.queue.lock();
                if q.len() >= self.cfg.queue_cap {
                    self.metrics.dropped.inc();
                    return;
                }
                let id = q.next_id;
                q.next_id += 1;
                q.delayed.insert((due, id), job);
                self.metrics.queue_depth.set(q.len() as i64);
            }
            SendOutcome::Failed(reason) => {
                tracing::warn!(device = %job.device.device_id, %reason, "push failed");
                self.metrics
                    .failed
                    .with_label_values(&[label, &reason_label(&reason)])
                    .inc();
            }
        }
    }

    /// Pushes waiting (ready and delayed).
    pub fn queued(&self) -> usize {
        self.queue.lock().len()
    }
}

/// A bounded metric label of a provider reason: its first word, letters,
/// digits and `_` only, at most 40 characters.
fn reason_label(reason: &str) -> String {
    let word: String = reason
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()
        .unwrap_or_default()
        .chars()
        .take(40)
        .collect();
    if word.is_empty() {
        "other".into()
    } else {
        word
    }
}
