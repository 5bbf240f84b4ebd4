//! The uploader: when to upload (a pure decision over the schedule state),
//! how to build a batch (capped in fixes and bytes, gzip when it pays), and
//! what each server answer means for the buffer and the next attempt.

use std::io::Write;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use flate2::write::GzEncoder;
use flate2::Compression;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{ErrorBody, IngestResponse, PolicyMode};

use super::buffer::Batch;
use super::health::UploadFailure;
use super::policy::hint_interval;
use super::{DriverEvent, Inner};
use crate::backoff::{Backoff, BackoffPolicy, RetryDecision};
use crate::env::NetworkType;
use crate::error::WaypostError;
use crate::transport::{HttpError, HttpHeader, HttpRequest, HttpResponse, StatusError};

/// Most requests one [`poll_uploads`](super::Driver::poll_uploads) sends
/// before yielding (bounds a drain of a huge backlog).
const MAX_REQUESTS_PER_POLL: u32 = 64;
/// With fixes pending but no network, look again this often even if nobody
/// calls `environment_changed`.
const OFFLINE_RECHECK_MS: u64 = 30_000;

/// What a poll did and when to poll again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadPoll {
    /// Requests sent during this poll.
    pub requests: u32,
    /// Monotonic time (see [`Clock::monotonic_ms`](crate::clock::Clock::monotonic_ms))
    /// of the next due upload; `None` when nothing is pending (recording or
    /// a flush wakes the uploader).
    pub next_due_ms: Option<u64>,
}

/// Schedule state (in memory; after a restart the first upload is due at
/// once, which is what we want after a crash).
#[derive(Debug)]
pub(crate) struct Sched {
    pub(crate) backoff: Backoff,
    /// Next retry after a failure.
    retry_at: Option<u64>,
    /// A server's `Retry-After`: nothing is sent before it, flush or not.
    not_before: Option<u64>,
    last_attempt: Option<u64>,
    pub(crate) flush: bool,
    /// A successful upload left a backlog: keep going.
    draining: bool,
    /// Current cap on fixes per batch (halved by 413 and bisection, doubled
    /// back on success).
    batch_cap: usize,
    max_batch: usize,
    last_network: Option<NetworkType>,
    last_charging: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Upload,
    WaitUntil(u64),
    Idle,
}

impl Sched {
    pub(crate) fn new(backoff: BackoffPolicy, max_batch: usize) -> Self {
        Self {
            backoff: Backoff::new(backoff),
            retry_at: None,
            not_before: None,
            last_attempt: None,
            flush: false,
            draining: false,
            batch_cap: max_batch,
            max_batch,
            last_network: None,
            last_charging: None,
        }
    }

    /// Reacts to environment transitions: network back or charging started
    /// means "upload now" (and forget the backoff, which was most likely
    /// waiting for exactly this).
    fn observe(&mut self, network: NetworkType, charging: bool) {
        let back =
            self.last_network == Some(NetworkType::Offline) && network != NetworkType::Offline;
        let plugged = self.last_charging == Some(false) && charging;
        if back || plugged {
            tracing::debug!(back, plugged, "driver: flushing after environment change");
            self.backoff.reset();
            self.retry_at = None;
            self.flush = true;
        }
        self.last_network = Some(network);
        self.last_charging = Some(charging);
    }

    fn decide(&self, now: u64, pending: u64, network: NetworkType, interval: Duration) -> Decision {
        if pending == 0 {
            return Decision::Idle;
        }
        if network == NetworkType::Offline {
            return Decision::WaitUntil(now + OFFLINE_RECHECK_MS);
        }
        if let Some(t) = self.not_before.filter(|&t| now < t) {
            return Decision::WaitUntil(t);
        }
        if let Some(t) = self.retry_at {
            return if now < t {
                Decision::WaitUntil(t)
            } else {
                Decision::Upload
            };
        }
        if self.flush || self.draining || pending >= self.batch_cap as u64 {
            return Decision::Upload;
        }
        match self.last_attempt {
            None => Decision::Upload,
            Some(last) => {
                let due = last + interval.as_millis() as u64;
                if now >= due {
                    Decision::Upload
                } else {
                    Decision::WaitUntil(due)
                }
            }
        }
    }
}

/// Result of one request.
enum Attempt {
    /// The server stored the batch.
    Acked,
    /// The batch changed (a fix quarantined, the batch split): go again now.
    Progress,
    /// Wait before retrying.
    Failed {
        error: HttpError,
        retry_after: Option<Duration>,
    },
}

/// The background task: poll, sleep until due, woken or the platform
/// changed, repeat.
pub(crate) async fn run(inner: Arc<Inner>, cancel: CancellationToken) {
    tracing::debug!(driver = %inner.config.driver_id, "driver uploader started");
    // A PlatformState notifies: follow it (re-plan sampling, health, and
    // the poll below sees the network come back). Pull-only environments
    // rely on `environment_changed` and the periodic re-checks.
    let mut platform = inner.deps.environment.watch();
    inner.refresh_sampling();
    inner.update_health();
    loop {
        let polled = tokio::select! {
            () = cancel.cancelled() => break,
            r = inner.poll_uploads() => r,
        };
        let now = inner.deps.clock.monotonic_ms();
        let next = match polled {
            Ok(p) => p.next_due_ms,
            Err(e) => {
                tracing::error!(error = %e, "driver uploader: buffer error");
                inner.emit(DriverEvent::UploadFailed {
                    message: e.to_string(),
                    retry_in_ms: 5_000,
                });
                Some(now + 5_000)
            }
        };
        inner.update_health();
        let sleep = match next {
            Some(t) => inner
                .deps
                .clock
                .sleep(Duration::from_millis(t.saturating_sub(now))),
            None => Box::pin(std::future::pending()),
        };
        let changed = async {
            match platform.as_mut() {
                Some(rx) => rx.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = cancel.cancelled() => break,
            () = inner.wake.notified() => {}
            () = sleep => {}
            alive = changed => {
                if alive {
                    tracing::debug!("driver: platform changed");
                    inner.refresh_sampling();
                    inner.update_health();
                } else {
                    platform = None;
                }
            }
        }
    }
    tracing::debug!(driver = %inner.config.driver_id, "driver uploader stopped");
}

impl Inner {
    fn upload_interval(&self) -> Duration {
        let platform = self.deps.environment.snapshot();
        let rec = self.recorder.lock();
        self.policy
            .upload_interval(&self.situation(&rec.motion, &platform))
    }

    pub(crate) async fn poll_uploads(&self) -> Result<super::UploadPoll, WaypostError> {
        let _one_at_a_time = self.upload_lock.lock().await;
        let mut requests = 0u32;
        loop {
            let now = self.deps.clock.monotonic_ms();
            let network = self.deps.environment.network();
            let battery = self.deps.environment.battery();
            let pending = self.buffer.lock().pending();
            let interval = self.upload_interval();
            if network == NetworkType::Offline && pending > 0 {
                self.silence.lock().offline(now);
            }
            let decision = {
                let mut s = self.sched.lock();
                s.observe(network, battery.charging);
                let d = s.decide(now, pending, network, interval);
                if pending == 0 {
                    s.flush = false;
                    s.draining = false;
                }
                if d == Decision::Upload {
                    s.last_attempt = Some(now);
                }
                d
            };
            let next_due_ms = match decision {
                Decision::Idle => None,
                Decision::WaitUntil(t) => Some(t),
                Decision::Upload if requests >= MAX_REQUESTS_PER_POLL => Some(now),
                Decision::Upload => {
                    requests += 1;
                    self.upload_one().await?;
                    continue;
                }
            };
            return Ok(super::UploadPoll {
                requests,
                next_due_ms,
            });
        }
    }

    /// Takes a batch, sends it (with one token refresh on 401) and applies
    /// the outcome to the buffer and the schedule.
    async fn upload_one(&self) -> Result<(), WaypostError> {
        let batch = {
            let cap = self.sched.lock().batch_cap;
            self.buffer
                .lock()
                .next_batch(cap, self.config.max_batch_bytes as usize)?
        };
        if batch.fixes.is_empty() {
            return Ok(());
        }
        let attempt = self.send_batch(&batch).await;
        let now = self.deps.clock.monotonic_ms();
        match attempt {
            Ok(Attempt::Acked) => {}
            Ok(Attempt::Progress) => {
                self.buffer.lock().release(&batch)?;
            }
            Ok(Attempt::Failed { error, retry_after }) => {
                self.buffer.lock().release(&batch)?;
                self.silence.lock().failed(now);
                let decision = {
                    let mut s = self.sched.lock();
                    s.draining = false;
                    let d = s.backoff.fail(now, retry_after, self.deps.random.as_ref());
                    match d {
                        RetryDecision::RetryAfter(wait) => {
                            s.retry_at = Some(now + wait.as_millis() as u64);
                        }
                        RetryDecision::GiveUp => {
                            // Stop hammering; the regular cadence (or a
                            // flush / network change) tries again.
                            s.backoff.reset();
                            s.retry_at = None;
                            s.flush = false;
                        }
                    }
                    if let Some(ra) = retry_after {
                        s.not_before = Some(now + ra.as_millis() as u64);
                    }
                    d
                };
                let retry_in_ms = match decision {
                    RetryDecision::RetryAfter(w) => w.as_millis() as u64,
                    RetryDecision::GiveUp => 0,
                };
                tracing::info!(error = %error, retry_in_ms, "driver upload failed");
                let auth = matches!(
                    error,
                    HttpError::Status(StatusError { status: 401, .. }) | HttpError::NoToken
                );
                let failures = self.sched.lock().backoff.failures();
                self.with_health(|h| {
                    h.upload_failure = Some(UploadFailure {
                        message: error.to_string(),
                        consecutive_failures: failures.max(1),
                        retry_at_ms: (retry_in_ms > 0).then_some(now + retry_in_ms),
                    });
                    h.auth_failure = auth.then(|| error.to_string());
                });
                if auth {
                    self.emit(DriverEvent::AuthFailed {
                        message: error.to_string(),
                    });
                }
                self.emit(DriverEvent::UploadFailed {
                    message: error.to_string(),
                    retry_in_ms,
                });
            }
            Err(e) => {
                // Release before reporting a buffer error so nothing stays
                // marked in flight in this process.
                let _ = self.buffer.lock().release(&batch);
                return Err(e);
            }
        }
        Ok(())
    }

    fn build_request(&self, batch: &Batch, token: &str) -> HttpRequest {
        let mut json =
            Vec::with_capacity(batch.json.iter().map(|j| j.len() + 1).sum::<usize>() + 64);
        json.extend_from_slice(b"{\"device_id\":");
        json.extend_from_slice(
            serde_json::to_string(&self.config.device_id)
                .unwrap_or_else(|_| "\"\"".into())
                .as_bytes(),
        );
        json.extend_from_slice(b",\"fixes\":[");
        for (i, j) in batch.json.iter().enumerate() {
            if i > 0 {
                json.push(b',');
            }
            json.extend_from_slice(j.as_bytes());
        }
        json.push(b']');
        let silence = {
            let pending = self.buffer.lock().pending();
            let low_power = self.deps.environment.battery().low_power_mode;
            self.silence
                .lock()
                .report(self.deps.clock.monotonic_ms(), pending, low_power)
        };
        if let Some(s) = silence.and_then(|s| serde_json::to_vec(&s).ok()) {
            json.extend_from_slice(b",\"silence\":");
            json.extend_from_slice(&s);
        }
        json.push(b'}');
        let mut headers = vec![
            HttpHeader::new("content-type", "application/json"),
            HttpHeader::new("authorization", format!("Bearer {token}")),
        ];
        let body = match gzip_if_it_pays(&json, self.config.gzip_min_bytes as usize) {
            Some(gz) => {
                headers.push(HttpHeader::new("content-encoding", "gzip"));
                gz
            }
            None => json,
        };
        HttpRequest {
            method: "POST".to_owned(),
            url: self.ingest_url.clone(),
            headers,
            body,
        }
    }

    async fn send_batch(&self, batch: &Batch) -> Result<Attempt, WaypostError> {
        // The token the server refused (401), refreshed once per batch.
        let mut refused: Option<String> = None;
        loop {
            let token = match &refused {
                Some(r) => self.tokens.refresh(r).await,
                None => self.tokens.get().await,
            };
            let Some(token) = token else {
                return Ok(Attempt::Failed {
                    error: HttpError::NoToken,
                    retry_after: None,
                });
            };
            let request = self.build_request(batch, &token);
            self.requests.fetch_add(1, Ordering::Relaxed);
            self.bytes_sent
                .fetch_add(request.body.len() as u64, Ordering::Relaxed);
            let response = match self.deps.transport.send(request).await {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Attempt::Failed {
                        error: e.into(),
                        retry_after: None,
                    })
                }
            };
            if response.status == 401 && refused.is_none() {
                tracing::info!("driver upload: 401, asking the app for a fresh token");
                refused = Some(token);
                continue;
            }
            return self.apply(batch, response);
        }
    }

    /// What a response means.
    fn apply(&self, batch: &Batch, response: HttpResponse) -> Result<Attempt, WaypostError> {
        let status = response.status;
        if (200..300).contains(&status) {
            let reply: IngestResponse = match serde_json::from_slice(&response.body) {
                Ok(r) => r,
                Err(e) => {
                    return Ok(Attempt::Failed {
                        error: HttpError::BadReply {
                            status,
                            message: e.to_string(),
                        },
                        retry_after: None,
                    })
                }
            };
            let acked = self.buffer.lock().ack(batch, reply.high_seq)?;
            self.uploads_ok.fetch_add(1, Ordering::Relaxed);
            self.silence.lock().acked(self.deps.clock.monotonic_ms());
            let pending = self.buffer.lock().pending();
            {
                let mut s = self.sched.lock();
                s.backoff.reset();
                s.retry_at = None;
                s.not_before = None;
                s.batch_cap = (s.batch_cap * 2).min(s.max_batch);
                s.draining = pending > 0;
                if pending == 0 {
                    s.flush = false;
                }
            }
            self.apply_hint(&reply);
            self.with_health(|h| {
                h.upload_failure = None;
                h.auth_failure = None;
            });
            self.emit(DriverEvent::Uploaded {
                fixes: acked,
                high_seq: reply.high_seq,
                watchers: reply.watchers,
            });
            return Ok(Attempt::Acked);
        }
        let error: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
        let status_error = StatusError::new(&response, error.as_ref());
        let (code, message, retry_after_s) = (
            status_error.code.clone(),
            status_error.message.clone(),
            status_error.retry_after_s,
        );
        let failed = |retry_after: Option<Duration>| Attempt::Failed {
            error: status_error.clone().into(),
            retry_after,
        };
        match status {
            400 => {
                let bad_fix_seq = error.as_ref().and_then(|e| e.error.seq);
                let in_batch = bad_fix_seq.filter(|s| batch.fixes.iter().any(|f| f.seq == *s));
                let about_fixes = matches!(code.as_deref(), Some("bad_fix") | Some("bad_json"));
                if let Some(seq) = in_batch {
                    self.quarantine(seq, &message)?;
                    Ok(Attempt::Progress)
                } else if about_fixes && batch.fixes.len() > 1 {
                    // Which fix? Bisect: halve the batch until it is found.
                    self.shrink(batch.fixes.len());
                    Ok(Attempt::Progress)
                } else if about_fixes {
                    self.quarantine(batch.fixes[0].seq, &message)?;
                    Ok(Attempt::Progress)
                } else {
                    Ok(failed(None))
                }
            }
            413 => {
                if batch.fixes.len() > 1 {
                    self.shrink(batch.fixes.len());
                } else {
                    self.quarantine(batch.fixes[0].seq, &message)?;
                }
                Ok(Attempt::Progress)
            }
            429 | 503 => Ok(failed(Some(Duration::from_secs(
                retry_after_s.unwrap_or(1).min(3600),
            )))),
            _ => Ok(failed(None)),
        }
    }

    fn shrink(&self, batch_len: usize) {
        let mut s = self.sched.lock();
        s.batch_cap = (batch_len / 2).max(1);
        tracing::info!(cap = s.batch_cap, "driver upload: splitting batches");
    }

    fn quarantine(&self, seq: u64, reason: &str) -> Result<(), WaypostError> {
        let now = self.deps.clock.now_ms();
        if self.buffer.lock().quarantine(seq, reason, now)? {
            tracing::warn!(seq, reason, "driver: server refused a fix; quarantined");
            self.with_health(|h| h.quarantined += 1);
            self.emit(DriverEvent::Quarantined {
                seq,
                reason: reason.to_owned(),
            });
        }
        Ok(())
    }

    fn apply_hint(&self, reply: &IngestResponse) {
        let watched = reply.policy.mode == PolicyMode::Watched;
        self.hint_ms.store(
            hint_interval(&reply.policy).as_millis() as u64,
            Ordering::Relaxed,
        );
        let was = self.watched.swap(watched, Ordering::Relaxed);
        if was != watched {
            self.emit(DriverEvent::WatchedChanged { watched });
        }
        self.refresh_sampling();
    }
}

/// Gzips `json` when it is at least `min` bytes and shrinks by 10 % or more.
fn gzip_if_it_pays(json: &[u8], min: usize) -> Option<Vec<u8>> {
    if json.len() < min {
        return None;
    }
    let mut enc = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    enc.write_all(json).ok()?;
    let gz = enc.finish().ok()?;
    (gz.len() * 10 <= json.len() * 9).then_some(gz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gzip_only_when_it_pays() {
        assert!(gzip_if_it_pays(b"{}", 1024).is_none());
        let big = br#"{"seq":1,"ts":1700000000000,"lat":52.52,"lon":13.405}"#.repeat(50);
        let gz = gzip_if_it_pays(&big, 1024).unwrap();
        assert!(gz.len() * 3 < big.len());
    }

    #[test]
    fn decisions() {
        let mut s = Sched::new(BackoffPolicy::default(), 100);
        let i = Duration::from_secs(10);
        assert_eq!(s.decide(0, 0, NetworkType::Wifi, i), Decision::Idle);
        assert_eq!(s.decide(0, 1, NetworkType::Wifi, i), Decision::Upload);
        s.last_attempt = Some(0);
        assert_eq!(
            s.decide(5_000, 1, NetworkType::Wifi, i),
            Decision::WaitUntil(10_000)
        );
        assert_eq!(
            s.decide(5_000, 100, NetworkType::Wifi, i),
            Decision::Upload,
            "full batch"
        );
        assert_eq!(
            s.decide(5_000, 1, NetworkType::Offline, i),
            Decision::WaitUntil(5_000 + OFFLINE_RECHECK_MS)
        );
        s.retry_at = Some(7_000);
        assert_eq!(
            s.decide(5_000, 1, NetworkType::Wifi, i),
            Decision::WaitUntil(7_000)
        );
        assert_eq!(s.decide(7_000, 1, NetworkType::Wifi, i), Decision::Upload);
        // Network back: flush at once, backoff forgotten.
        s.observe(NetworkType::Offline, false);
        s.observe(NetworkType::Cellular, false);
        assert!(s.flush && s.retry_at.is_none());
        // Retry-After holds even a flush back.
        s.not_before = Some(9_000);
        assert_eq!(
            s.decide(8_000, 1, NetworkType::Wifi, i),
            Decision::WaitUntil(9_000)
        );
        s.flush = false;
        s.observe(NetworkType::Cellular, true);
        assert!(s.flush, "charging started");
    }
}
