//! Webhooks out (issue 18): signed POSTs of order status changes,
//! arrival/departure and driver online/offline to the `--webhook-url`
//! endpoints.
//!
//! - **Signature.** Header `Waypost-Signature: t=<unix s>,v1=<hex>` where
//!   `<hex>` is HMAC-SHA256 with the secret over `"<t>.<body>"`; a
//!   receiver recomputes it and refuses a `t` older than its tolerance
//!   (replay). [`verify`] does exactly that.
//! - **Idempotency.** Every event has an id, sent as `Idempotency-Key` and
//!   inside the body; retries resend the same id. Delivery is at least
//!   once: a receiver de-duplicates by the key.
//! - **Retries.** Any non-2xx answer or transport error is retried after a
//!   full-jitter exponential backoff (`random(0, min(cap, base·2^n))`) up
//!   to `max_attempts`; then the event is dropped and counted as failed.
//! - **Queue.** One bounded queue per endpoint ([`queue::WebhookQueue`]);
//!   in memory, or on Redis where it survives a restart and is shared by
//!   every process (a claimed item is leased, so a crashed process's item
//!   is retried by another after the lease). A full queue refuses new
//!   events (counted as dropped).
//!
//! Time, randomness and HTTP are behind small traits ([`WebhookClock`],
//! [`Jitter`], [`WebhookSender`]) for deterministic tests.

mod event;
pub mod queue;
pub mod queue_redis;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use ring::hmac;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::EngineError;
pub use event::WebhookEvent;
use queue::{Enqueued, WebhookQueue};

/// Configuration of the webhook sender.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub endpoints: Vec<String>,
    pub secret: String,
    /// Events queued per endpoint at most.
    pub queue_cap: usize,
    pub max_attempts: u32,
    pub base_backoff: Duration,
    pub max_backoff: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    /// How long a claimed delivery is leased before another process may
    /// retry it (longer than `timeout`).
    pub lease: Duration,
    /// Idle poll of the queue (new local events wake the worker at once).
    pub poll: Duration,
}

impl WebhookConfig {
    pub fn new(endpoints: Vec<String>, secret: String) -> Self {
        Self {
            endpoints,
            secret,
            queue_cap: 10_000,
            max_attempts: 12,
            base_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(500),
        }
    }
}

/// `t=<ts_s>,v1=<hex hmac-sha256(secret, "<ts_s>.<body>")>`.
pub fn sign(secret: &[u8], ts_s: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(ts_s.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={ts_s},v1={}", hex(ctx.sign().as_ref()))
}

/// Checks a `Waypost-Signature` header against `body`: the MAC must match
/// (compared in constant time) and `t` be within `tolerance_s` of `now_s`.
pub fn verify(secret: &[u8], header: &str, body: &[u8], now_s: i64, tolerance_s: i64) -> bool {
    let mut ts = None;
    let mut mac = None;
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => ts = v.parse::<i64>().ok(),
            Some(("v1", v)) => mac = unhex(v),
            _ => {}
        }
    }
    let (Some(ts), Some(mac)) = (ts, mac) else {
        return false;
    };
    if (now_s - ts).abs() > tolerance_s {
        return false;
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let mut msg = Vec::with_capacity(body.len() + 24);
    msg.extend_from_slice(ts.to_string().as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    hmac::verify(&key, &msg, &mac).is_ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A short stable name of an endpoint URL (Redis keys, metric labels do
/// not carry the URL, which may hold credentials).
pub fn endpoint_key(url: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, url.as_bytes());
    hex(&d.as_ref()[..8])
}

/// Wall clock, Unix ms.
pub trait WebhookClock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

pub struct SystemClock;

impl WebhookClock for SystemClock {
    fn now_ms(&self) -> i64 {
        crate::now_ms()
    }
}

/// Uniform random in `0..=max`.
pub trait Jitter: Send + Sync + 'static {
    fn upto(&self, max: u64) -> u64;
}

pub struct RandJitter;

impl Jitter for RandJitter {
    fn upto(&self, max: u64) -> u64 {
        if max == 0 {
            0
        } else {
            rand::random::<u64>() % (max + 1)
        }
    }
}

/// One HTTP POST; `Ok(status)` or a transport error.
#[async_trait]
pub trait WebhookSender: Send + Sync + 'static {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<u16, String>;
}

/// The real sender (reqwest, rustls).
pub struct HttpSender {
    client: reqwest::Client,
}

impl HttpSender {
    pub fn new(timeout: Duration) -> Result<Self, WebhookError> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| WebhookError::Client(e.to_string()))?;
        Ok(Self { client })
    }
}

#[async_trait]
impl WebhookSender for HttpSender {
    async fn post(
        &self,
        url: &str,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Result<u16, String> {
        let mut req = self.client.post(url).body(body);
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        req.send()
            .await
            .map(|r| r.status().as_u16())
            .map_err(|e| e.without_url().to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("webhook HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Store(#[from] EngineError),
}

/// Delivered / failed / dropped counters and the queue gauge, by endpoint
/// key.
#[derive(Clone)]
pub struct WebhookMetrics {
    /// `delivered`, `failed` (gave up after max attempts), `dropped` (queue
    /// full), `retried`.
    pub outcomes: IntCounterVec,
    pub queued: IntGaugeVec,
}

impl WebhookMetrics {
    pub fn new() -> Result<Self, prometheus::Error> {
        Ok(Self {
            outcomes: IntCounterVec::new(
                Opts::new(
                    "webhook_events_total",
                    "Webhook events by outcome and endpoint",
                ),
                &["outcome", "endpoint"],
            )?,
            queued: IntGaugeVec::new(
                Opts::new("webhook_queued", "Webhook events queued per endpoint"),
                &["endpoint"],
            )?,
        })
    }

    pub fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.outcomes.clone()))?;
        registry.register(Box::new(self.queued.clone()))
    }

    fn count(&self, outcome: &str, endpoint: &str) {
        self.outcomes.with_label_values(&[outcome, endpoint]).inc();
    }
}

/// The webhook sender: queues events per endpoint and runs one delivery
/// worker per endpoint.
pub struct Webhooks {
    cfg: WebhookConfig,
    queue: Arc<dyn WebhookQueue>,
    sender: Arc<dyn WebhookSender>,
    clock: Arc<dyn WebhookClock>,
    jitter: Arc<dyn Jitter>,
    metrics: WebhookMetrics,
    wake: Arc<Notify>,
}

impl Webhooks {
    pub fn new(
        cfg: WebhookConfig,
        queue: Arc<dyn WebhookQueue>,
        sender: Arc<dyn WebhookSender>,
        clock: Arc<dyn WebhookClock>,
        jitter: Arc<dyn Jitter>,
        metrics: WebhookMetrics,
    ) -> Arc<Self> {
        Arc::new(Self {
            cfg,
            queue,
            sender,
            clock,
            jitter,
            metrics,
            wake: Arc::new(Notify::new()),
        })
    }

    /// With the wall clock and real randomness.
    pub fn system(
        cfg: WebhookConfig,
        queue: Arc<dyn WebhookQueue>,
        sender: Arc<dyn WebhookSender>,
        metrics: WebhookMetrics,
    ) -> Arc<Self> {
        Self::new(
            cfg,
            queue,
            sender,
            Arc::new(SystemClock),
            Arc::new(RandJitter),
            metrics,
        )
    }

    /// Queues `event` for every endpoint. A queue that is full or already
    /// holds the id drops it (counted); store errors are returned.
    pub async fn emit(&self, event: &WebhookEvent) -> Result<(), WebhookError> {
        let body = serde_json::to_string(event)
            .map_err(|e| WebhookError::Store(EngineError::Corrupt(e.to_string())))?;
        let now = self.clock.now_ms();
        for url in &self.cfg.endpoints {
            let ep = endpoint_key(url);
            match self
                .queue
                .push(&ep, &event.id, &body, now, self.cfg.queue_cap)
                .await?
            {
                Enqueued::Queued | Enqueued::Duplicate => {}
                Enqueued::Full => {
                    tracing::warn!(endpoint = %ep, id = %event.id, "webhook queue full; event dropped");
                    self.metrics.count("dropped", &ep);
                }
            }
        }
        self.wake.notify_waiters();
        Ok(())
    }

    /// Spawns one worker per endpoint on `tracker`, stopped by `cancel`.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, cancel: &CancellationToken) {
        for url in self.cfg.endpoints.clone() {
            let me = Arc::clone(self);
            let cancel = cancel.clone();
            tracker.spawn(async move { me.worker(url, cancel).await });
        }
    }

    async fn worker(&self, url: String, cancel: CancellationToken) {
        let ep = endpoint_key(&url);
        while !cancel.is_cancelled() {
            let worked = match self.deliver_one(&url, &ep).await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::warn!(endpoint = %ep, error = %e, "webhook queue unavailable");
                    false
                }
            };
            // The queue may be shared by processes: read its length.
            if let Ok(n) = self.queue.len(&ep).await {
                self.metrics.queued.with_label_values(&[&ep]).set(n as i64);
            }
            if !worked {
                let notified = self.wake.notified();
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = notified => {}
                    _ = tokio::time::sleep(self.cfg.poll) => {}
                }
            }
        }
    }

    /// Claims and delivers the earliest due event of one endpoint; `false`
    /// when nothing was due.
    pub async fn deliver_one(&self, url: &str, ep: &str) -> Result<bool, WebhookError> {
        let now = self.clock.now_ms();
        let lease = self.cfg.lease.as_millis() as i64;
        let Some(item) = self.queue.claim(ep, now, lease).await? else {
            return Ok(false);
        };
        let ts_s = now / 1000;
        let headers = [
            ("content-type", "application/json".to_owned()),
            ("idempotency-key", item.event_id.clone()),
            (
                "waypost-signature",
                sign(self.cfg.secret.as_bytes(), ts_s, item.body.as_bytes()),
            ),
        ];
        let result = self.sender.post(url, &headers, item.body.clone()).await;
        let attempts = item.attempts + 1;
        match result {
            Ok(status) if (200..300).contains(&status) => {
                self.queue.done(ep, &item.event_id).await?;
                self.metrics.count("delivered", ep);
            }
            other if attempts >= self.cfg.max_attempts => {
                tracing::warn!(endpoint = %ep, id = %item.event_id, attempts, result = ?other, "webhook given up");
                self.queue.done(ep, &item.event_id).await?;
                self.metrics.count("failed", ep);
            }
            other => {
                let delay = self.backoff_ms(attempts);
                tracing::debug!(endpoint = %ep, id = %item.event_id, attempts, delay, result = ?other, "webhook retry");
                self.queue
                    .retry(ep, &item.event_id, attempts, self.clock.now_ms() + delay)
                    .await?;
                self.metrics.count("retried", ep);
            }
        }
        Ok(true)
    }

    /// Full jitter: uniform in `0..=min(max, base·2^(attempts-1))` ms.
    fn backoff_ms(&self, attempts: u32) -> i64 {
        let base = self.cfg.base_backoff.as_millis() as u64;
        let cap = self.cfg.max_backoff.as_millis() as u64;
        let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(32));
        self.jitter.upto(exp.min(cap)) as i64
    }
}
