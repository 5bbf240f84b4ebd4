//! The driver side: record fixes into a crash-safe buffer and upload them
//! in batches at the cadence the [`LocationPolicy`] picks.
//!
//! ```text
//! platform ──record()──► FixFilter ─► policy (throttle) ─► Buffer (SQLite, commit)
//!                                                             │
//!            background task: poll_uploads() ◄── wake ────────┘
//!              decide (policy, hint, backoff, network) ─► batch ─► HttpTransport
//!              2xx: ack (delete seq ≤ high_seq) · 400 bad_fix: quarantine
//!              413: split · 401: refresh token, retry once · else: full-jitter backoff
//! ```
//!
//! [`Driver`] is the handle apps hold (an `Arc` object for the bindings).
//! Everything it touches outside the process — time, randomness, network and
//! battery, HTTP, tokens — comes in through [`DriverDeps`], so tests and the
//! replay benchmark run it in simulated time.

#![warn(missing_docs)]

pub mod buffer;
mod config;
pub mod filter;
pub mod health;
pub mod policy;
mod silence;
mod uploader;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use waypost_protocol::Fix;

use self::buffer::{Buffer, QuarantinedFix};
pub use self::config::{
    DriverConfig, DriverDeps, DriverEvent, DriverListener, DriverStats, RecordOutcome,
};
use self::filter::{DropReason, FixFilter, Location};
use self::health::{DriverHealth, HealthInputs, HealthListener, UploadFailure};
use self::policy::{haversine_m, LocationPolicy, MotionTracker, SamplingRequest, Situation};
use self::uploader::Sched;
pub use self::uploader::UploadPoll;
use crate::backoff::SeededRandom;
use crate::clock::SystemClock;
use crate::env::{AccuracyAuthorization, Environment, PlatformSnapshot};
use crate::error::WaypostError;
use crate::subscription::{Listeners, Subscription};
use crate::tokens::{TokenProvider, Tokens};
use crate::transport::ReqwestTransport;

/// Recording state: cloned, changed, and written back only when the buffer
/// committed, so a failed commit leaves it untouched.
#[derive(Debug, Clone)]
struct Recorder {
    filter: FixFilter,
    motion: MotionTracker,
    /// (ts, lat, lon) of the last recorded fix, for the throttle.
    last_recorded: Option<(i64, f64, f64)>,
    sampling: Option<SamplingRequest>,
}

/// State shared by the handle and the background task.
pub(crate) struct Inner {
    config: DriverConfig,
    policy: LocationPolicy,
    deps: DriverDeps,
    /// Bearer tokens (refreshed ahead of `exp` and after a 401).
    tokens: Tokens,
    ingest_url: String,
    buffer: Mutex<Buffer>,
    recorder: Mutex<Recorder>,
    sched: Mutex<Sched>,
    watched: AtomicBool,
    /// Server hint, ms (0: none yet).
    hint_ms: AtomicU64,
    /// Serializes upload cycles: never more than one upload in flight.
    upload_lock: tokio::sync::Mutex<()>,
    wake: Notify,
    requests: AtomicU64,
    uploads_ok: AtomicU64,
    bytes_sent: AtomicU64,
    /// Listeners of [`Driver::watch_events`], and the events raised
    /// before the first of them (replayed to it).
    watchers: Mutex<Watchers>,
    /// Serializes event delivery, and a first watcher's replay with it, so
    /// every watcher sees events in the order they were raised (reentrant:
    /// a listener may call back into the driver).
    events_emit: parking_lot::ReentrantMutex<()>,
    health: Mutex<HealthState>,
    /// Serializes assess → compare → notify, so listeners see reports in
    /// the order they were made (reentrant: a listener may call back).
    health_emit: parking_lot::ReentrantMutex<()>,
    /// Why uploads are not getting through, for the next one that does.
    silence: Mutex<silence::SilenceTracker>,
}

/// What the health report is computed from, besides the platform and the
/// buffer; and who hears about it.
#[derive(Default)]
struct HealthState {
    rejected_streak: u64,
    rejected_total: u64,
    last_rejected_accuracy_m: f64,
    coarse_total: u64,
    quarantined: u64,
    auth_failure: Option<String>,
    upload_failure: Option<UploadFailure>,
    /// Key of the last report sent to the listeners.
    last_key: Option<Vec<&'static str>>,
    listeners: Vec<(u64, Arc<dyn HealthListener>)>,
    next_listener: u64,
}

/// Events kept for the first [`Driver::watch_events`] listener while there
/// has been none (the oldest are dropped beyond this, and counted).
pub const EARLY_EVENTS: usize = 256;

/// The event listeners, and what happened before the first one came.
#[derive(Default)]
struct Watchers {
    listeners: Listeners<dyn DriverListener>,
    /// Events raised before the first watcher, oldest first (at most
    /// [`EARLY_EVENTS`]); `None` once a watcher took them.
    early: Option<VecDeque<DriverEvent>>,
    /// Early events dropped because more than [`EARLY_EVENTS`] were
    /// waiting.
    early_dropped: u64,
}

impl Watchers {
    fn new() -> Self {
        Self {
            early: Some(VecDeque::new()),
            ..Self::default()
        }
    }
}

/// Most health listeners per driver (each Flow/AsyncStream collector is
/// one).
pub const MAX_HEALTH_LISTENERS: usize = 64;

/// A recording, uploading driver. Create with [`Driver::open`] (real I/O)
/// or [`Driver::open_with`] (injected I/O), feed it with
/// [`record`](Self::record), run the uploader with [`start`](Self::start),
/// stop it with [`shutdown`](Self::shutdown).
pub struct Driver {
    inner: Arc<Inner>,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("driver_id", &self.inner.config.driver_id)
            .field("device_id", &self.inner.config.device_id)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// Opens the buffer and prepares the uploader with the real clock,
    /// reqwest (rustls) and an entropy-seeded jitter source. `environment`
    /// reports network and battery (a
    /// [`ManualEnvironment`](crate::env::ManualEnvironment) the app updates
    /// works). Call [`start`](Self::start) to begin uploading.
    pub fn open(
        config: DriverConfig,
        tokens: Arc<dyn TokenProvider>,
        listener: Option<Arc<dyn DriverListener>>,
        environment: Arc<dyn Environment>,
    ) -> Result<Arc<Self>, WaypostError> {
        let transport = ReqwestTransport::new(config.request_timeout)?;
        Self::open_with(
            config,
            DriverDeps {
                clock: Arc::new(SystemClock::new()),
                random: Arc::new(SeededRandom::from_entropy()),
                environment,
                transport: Arc::new(transport),
                tokens,
                listener,
            },
        )
    }

    /// Like [`open`](Self::open) with every I/O edge injected.
    pub fn open_with(config: DriverConfig, deps: DriverDeps) -> Result<Arc<Self>, WaypostError> {
        config.validate()?;
        let now = deps.clock.now_ms();
        let buffer = Buffer::open(Path::new(&config.buffer_path), config.buffer.clone(), now)?;
        let recreated = buffer.recreated().map(str::to_owned);
        let last = buffer.last_fix().cloned();
        let recorder = Recorder {
            filter: FixFilter::new(config.filter, last.as_ref()),
            motion: MotionTracker::default(),
            last_recorded: last.as_ref().map(|f| (f.ts, f.lat, f.lon)),
            sampling: None,
        };
        let policy = LocationPolicy::new(config.policy);
        let sched = Sched::new(config.backoff, config.max_batch_fixes as usize);
        let tokens = Tokens::new(Arc::clone(&deps.tokens), Arc::clone(&deps.clock));
        let inner = Arc::new(Inner {
            ingest_url: config.ingest_url(),
            tokens,
            policy,
            buffer: Mutex::new(buffer),
            recorder: Mutex::new(recorder),
            sched: Mutex::new(sched),
            watched: AtomicBool::new(false),
            hint_ms: AtomicU64::new(0),
            upload_lock: tokio::sync::Mutex::new(()),
            wake: Notify::new(),
            requests: AtomicU64::new(0),
            uploads_ok: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            watchers: Mutex::new(Watchers::new()),
            events_emit: parking_lot::ReentrantMutex::new(()),
            health: Mutex::new(HealthState::default()),
            health_emit: parking_lot::ReentrantMutex::new(()),
            silence: Mutex::new(silence::SilenceTracker::default()),
            config,
            deps,
        });
        if let Some(message) = recreated {
            inner.emit(DriverEvent::BufferRecreated { message });
        }
        Ok(Arc::new(Self {
            inner,
            cancel: CancellationToken::new(),
            task: Mutex::new(None),
        }))
    }

    /// Validates `location`, assigns its seq and commits it to the buffer.
    /// `Ok(Recorded)` means it is on disk; it will reach the server unless
    /// the server refuses it or the buffer bounds evict it.
    pub fn record(&self, location: Location) -> Result<RecordOutcome, WaypostError> {
        let mut out = self.record_many(vec![location])?;
        Ok(out.pop().unwrap_or(RecordOutcome::Dropped {
            reason: DropReason::Stale,
        }))
    }

    /// Records several locations (e.g. a batch the OS delivered) in one
    /// transaction; one outcome per location, in order.
    pub fn record_many(
        &self,
        locations: Vec<Location>,
    ) -> Result<Vec<RecordOutcome>, WaypostError> {
        self.inner.record_many(locations)
    }

    /// Starts the background uploader on the current tokio runtime. Calling
    /// it again while it runs does nothing.
    pub fn start(&self) -> Result<(), WaypostError> {
        if self.cancel.is_cancelled() {
            return Err(WaypostError::ShutDown);
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|e| WaypostError::Internal {
            details: e.to_string(),
        })?;
        let mut task = self.task.lock();
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return Ok(());
        }
        let inner = Arc::clone(&self.inner);
        let cancel = self.cancel.clone();
        *task = Some(handle.spawn(uploader::run(inner, cancel)));
        Ok(())
    }

    /// Asks for an upload now (still only one in flight, and a server's
    /// `Retry-After` is still honoured).
    pub fn flush(&self) {
        self.inner.sched.lock().flush = true;
        self.inner.wake.notify_one();
    }

    /// Tells the driver the network or battery changed; it re-reads the
    /// [`Environment`] and uploads at once when the network came back or
    /// charging started. Not needed with a
    /// [`PlatformState`](crate::env::PlatformState), which the driver
    /// follows by itself once started: only for environments that cannot
    /// notify.
    pub fn environment_changed(&self) {
        self.inner.wake.notify_one();
    }

    /// The current health report (fresh figures; cheap, no I/O).
    pub fn health(&self) -> DriverHealth {
        self.inner.assess_health()
    }

    /// Adds a listener of health changes and calls it at once with the
    /// current report; returns its id for
    /// [`remove_health_listener`](Self::remove_health_listener). At most
    /// [`MAX_HEALTH_LISTENERS`].
    pub fn add_health_listener(
        &self,
        listener: Arc<dyn HealthListener>,
    ) -> Result<u64, WaypostError> {
        // Bring the existing listeners up to date first, so the report the
        // new one gets is the one the others last got.
        self.inner.update_health();
        let id = {
            let mut h = self.inner.health.lock();
            if h.listeners.len() >= MAX_HEALTH_LISTENERS {
                return Err(WaypostError::Busy {
                    details: format!("at most {MAX_HEALTH_LISTENERS} health listeners"),
                });
            }
            h.next_listener += 1;
            let id = h.next_listener;
            h.listeners.push((id, Arc::clone(&listener)));
            id
        };
        listener.on_health(self.inner.assess_health());
        Ok(id)
    }

    /// Removes a health listener (unknown ids are ignored).
    pub fn remove_health_listener(&self, id: u64) {
        self.inner.health.lock().listeners.retain(|(i, _)| *i != id);
    }

    /// Runs the upload logic once in the caller's task: uploads whatever is
    /// due (draining the backlog) and says when it next needs to run. The
    /// background task is a loop around this; simulations call it directly
    /// to stay deterministic.
    pub async fn poll_uploads(&self) -> Result<UploadPoll, WaypostError> {
        self.inner.poll_uploads().await
    }

    /// Adds a listener of every [`DriverEvent`] from now on, until the
    /// returned [`Subscription`] is cancelled or dropped.
    ///
    /// Nothing raised before the first watcher is lost: the events raised
    /// since `open` while no watcher had been added yet (`BufferRecreated`
    /// during the open, an upload that finished before the app's Flow
    /// subscribed, ...) are kept, the newest [`EARLY_EVENTS`], and the
    /// first watcher gets them, oldest first, before any later event.
    /// Later watchers start with the events raised after they were added.
    pub fn watch_events(
        &self,
        listener: Arc<dyn DriverListener>,
    ) -> Result<Subscription, WaypostError> {
        // Held through the replay: an event raised meanwhile on another
        // thread reaches this listener after the replayed ones.
        let _in_order = self.inner.events_emit.lock();
        let (id, early, dropped) = {
            let mut w = self.inner.watchers.lock();
            let id = w.listeners.add("", Arc::clone(&listener))?;
            (id, w.early.take(), w.early_dropped)
        };
        if let Some(early) = early {
            if dropped > 0 {
                tracing::warn!(
                    dropped,
                    kept = early.len(),
                    "driver: events raised before the first watcher overflowed; the oldest were dropped"
                );
            }
            for event in early {
                listener.on_event(event);
            }
        }
        let inner = Arc::downgrade(&self.inner);
        Ok(Subscription::new(move || {
            if let Some(inner) = inner.upgrade() {
                inner.watchers.lock().listeners.remove(id);
            }
        }))
    }

    /// Event listeners added with [`watch_events`](Self::watch_events)
    /// and not cancelled.
    pub fn watcher_count(&self) -> usize {
        self.inner.watchers.lock().listeners.len()
    }

    /// Stops the background task and waits for it (an upload in flight is
    /// abandoned; its fixes stay in the buffer and are resent next time).
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().take();
        if let Some(task) = task {
            if let Err(e) = task.await {
                if e.is_panic() {
                    tracing::error!("driver uploader task panicked");
                }
            }
        }
    }

    /// What the SDK wants from the OS location service right now.
    pub fn desired_sampling(&self) -> SamplingRequest {
        let platform = self.inner.deps.environment.snapshot();
        let rec = self.inner.recorder.lock();
        self.inner
            .policy
            .sampling(&self.inner.situation(&rec.motion, &platform))
    }

    /// Events raised before the first [`watch_events`](Self::watch_events)
    /// listener that were dropped because more than [`EARLY_EVENTS`] were
    /// waiting (the first watcher got the newest).
    pub fn early_events_dropped(&self) -> u64 {
        self.inner.watchers.lock().early_dropped
    }

    /// Counters.
    pub fn stats(&self) -> Result<DriverStats, WaypostError> {
        let b = self.inner.buffer.lock().stats()?;
        let failures = self.inner.sched.lock().backoff.failures();
        Ok(DriverStats {
            pending: b.pending,
            next_seq: b.next_seq,
            acked_total: b.acked_total,
            evicted_total: b.evicted_total,
            quarantined_total: b.quarantined_total,
            requests: self.inner.requests.load(Ordering::Relaxed),
            uploads_ok: self.inner.uploads_ok.load(Ordering::Relaxed),
            bytes_sent: self.inner.bytes_sent.load(Ordering::Relaxed),
            consecutive_failures: failures,
            watched: self.inner.watched.load(Ordering::Relaxed),
        })
    }

    /// The last fix ever recorded on this buffer (survives restarts), so an
    /// app can tell where it left off.
    pub fn last_recorded(&self) -> Option<Fix> {
        self.inner.buffer.lock().last_fix().cloned()
    }

    /// Quarantined fixes with the server's reasons, newest first.
    pub fn quarantined(&self, limit: u32) -> Result<Vec<QuarantinedFix>, WaypostError> {
        Ok(self.inner.buffer.lock().quarantined(limit as usize)?)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The task holds only `Inner`; cancelling lets it end on its own.
        self.cancel.cancel();
        // The app's listeners (foreign objects) go now, not with the task.
        let mut w = self.inner.watchers.lock();
        w.listeners.clear();
        w.early = None;
    }
}

impl Inner {
    fn emit(&self, event: DriverEvent) {
        tracing::debug!(?event, "driver event");
        let _in_order = self.events_emit.lock();
        let watchers = {
            let mut w = self.watchers.lock();
            let Watchers {
                listeners,
                early,
                early_dropped,
            } = &mut *w;
            if let Some(early) = early {
                // No watcher yet: keep it for the first one.
                if early.len() >= EARLY_EVENTS {
                    early.pop_front();
                    *early_dropped += 1;
                }
                early.push_back(event.clone());
            }
            listeners.get("")
        };
        for w in watchers {
            w.on_event(event.clone());
        }
        if let Some(l) = &self.deps.listener {
            l.on_event(event);
        }
    }

    fn situation(&self, motion: &MotionTracker, platform: &PlatformSnapshot) -> Situation {
        let hint = self.hint_ms.load(Ordering::Relaxed);
        Situation {
            watched: self.watched.load(Ordering::Relaxed),
            hint_interval: (hint > 0).then(|| Duration::from_millis(hint)),
            motion: motion.state(),
            speed_mps: motion.speed_mps(),
            battery: platform.battery(),
            app_state: platform.app_state,
            permission: platform.permission,
            accuracy: platform.accuracy,
            activity: platform.activity,
        }
    }

    /// The health report now.
    fn assess_health(&self) -> DriverHealth {
        let pending = self.buffer.lock().pending();
        let h = self.health.lock();
        health::assess(&HealthInputs {
            platform: self.deps.environment.snapshot(),
            rejected_inaccurate_streak: h.rejected_streak,
            rejected_inaccurate_total: h.rejected_total,
            last_rejected_accuracy_m: h.last_rejected_accuracy_m,
            max_accuracy_m: self.config.filter.max_accuracy_m,
            coarse_recorded_total: h.coarse_total,
            pending,
            max_fixes: self.config.buffer.max_fixes,
            quarantined: h.quarantined,
            auth_failure: h.auth_failure.clone(),
            upload_failure: h.upload_failure.clone(),
            now_ms: self.deps.clock.monotonic_ms(),
        })
    }

    /// Re-assesses health and tells the listeners when the set of issues
    /// changed.
    fn update_health(&self) {
        let _in_order = self.health_emit.lock();
        let report = self.assess_health();
        let key = report.key();
        let listeners = {
            let mut h = self.health.lock();
            if h.last_key.as_ref() == Some(&key) {
                return;
            }
            h.last_key = Some(key);
            h.listeners.clone()
        };
        tracing::info!(summary = %report.summary, "driver health changed");
        for (_, l) in listeners {
            l.on_health(report.clone());
        }
    }

    /// Applies `change` to the health counters, then re-assesses.
    fn with_health(&self, change: impl FnOnce(&mut HealthState)) {
        change(&mut self.health.lock());
        self.update_health();
    }

    fn record_many(&self, locations: Vec<Location>) -> Result<Vec<RecordOutcome>, WaypostError> {
        let now = self.deps.clock.now_ms();
        let platform = self.deps.environment.snapshot();
        let battery = platform.battery();
        let coarse = platform.accuracy == AccuracyAuthorization::Reduced;
        let mut events = Vec::new();
        let (mut rejected, mut last_rejected_m, mut streak_broken) = (0u64, None, false);
        let mut outcomes = Vec::with_capacity(locations.len());
        let mut fixes = Vec::new();
        let mut slots = Vec::new();
        {
            let mut guard = self.recorder.lock();
            let mut rec = guard.clone();
            for loc in &locations {
                if let Err(reason) = rec.filter.check(loc, now, coarse) {
                    if let DropReason::Inaccurate { accuracy_m } = reason {
                        rejected += 1;
                        last_rejected_m = Some(accuracy_m);
                    }
                    outcomes.push(RecordOutcome::Dropped { reason });
                    continue;
                }
                rec.motion.update(
                    self.policy.config(),
                    loc.lat,
                    loc.lon,
                    loc.ts_ms,
                    loc.speed_mps,
                );
                let sampling = self
                    .policy
                    .sampling(&self.situation(&rec.motion, &platform));
                if rec.sampling != Some(sampling) {
                    rec.sampling = Some(sampling);
                    events.push(DriverEvent::SamplingChanged { sampling });
                }
                // A valid fix (throttled or not) ends a run of inaccurate
                // ones.
                streak_broken = true;
                rejected = 0;
                if let Some((ts, lat, lon)) = rec.last_recorded {
                    let distance = haversine_m(lat, lon, loc.lat, loc.lon);
                    if !self.policy.wants(&sampling, loc.ts_ms - ts, distance) {
                        outcomes.push(RecordOutcome::Dropped {
                            reason: DropReason::Throttled,
                        });
                        continue;
                    }
                }
                let mut fix = loc.to_fix();
                fix.battery = Some(battery.level.clamp(0.0, 1.0));
                fix.charging = Some(battery.charging);
                fix.coarse = coarse.then_some(true);
                rec.last_recorded = Some((loc.ts_ms, loc.lat, loc.lon));
                slots.push(outcomes.len());
                outcomes.push(RecordOutcome::Recorded { seq: 0 });
                fixes.push(fix);
            }
            if !fixes.is_empty() {
                let (seqs, evicted) = self.buffer.lock().append(&fixes, now)?;
                for (slot, seq) in slots.iter().zip(seqs) {
                    outcomes[*slot] = RecordOutcome::Recorded { seq };
                }
                if evicted > 0 {
                    events.push(DriverEvent::Evicted { count: evicted });
                }
            }
            *guard = rec;
        }
        for e in events {
            self.emit(e);
        }
        let coarse_recorded = if coarse { fixes.len() as u64 } else { 0 };
        self.with_health(|h| {
            let rejected_total: u64 = outcomes
                .iter()
                .filter(|o| {
                    matches!(
                        o,
                        RecordOutcome::Dropped {
                            reason: DropReason::Inaccurate { .. }
                        }
                    )
                })
                .count() as u64;
            h.rejected_total += rejected_total;
            h.coarse_total += coarse_recorded;
            if streak_broken {
                h.rejected_streak = 0;
            }
            h.rejected_streak += rejected;
            if let Some(m) = last_rejected_m {
                h.last_rejected_accuracy_m = m;
            }
        });
        if !fixes.is_empty() {
            self.wake.notify_one();
        }
        Ok(outcomes)
    }

    /// Recomputes the sampling request after the watch mode or the
    /// platform changed.
    fn refresh_sampling(&self) {
        let platform = self.deps.environment.snapshot();
        let event = {
            let mut rec = self.recorder.lock();
            let sampling = self
                .policy
                .sampling(&self.situation(&rec.motion, &platform));
            if rec.sampling != Some(sampling) {
                rec.sampling = Some(sampling);
                Some(DriverEvent::SamplingChanged { sampling })
            } else {
                None
            }
        };
        if let Some(e) = event {
            self.emit(e);
        }
    }
}
