//! Driver behaviour in simulated time: a [`ManualClock`], a seeded jitter
//! source and a scripted in-memory server behind [`HttpTransport`]. Every
//! test is deterministic for its seed.

use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;
use waypost_protocol::{ErrorBody, Fix, IngestRequest, IngestResponse, PolicyHint, PolicyMode};

use super::*;
use crate::backoff::{BackoffPolicy, RandomSource, SeededRandom};
use crate::clock::{Clock, ManualClock};
use crate::env::{BatteryState, ManualEnvironment, NetworkType};
use crate::test_util::TempDir;
use crate::tokens::StaticToken;
use crate::transport::{HttpHeader, HttpRequest, HttpResponse, HttpTransport, TransportError};

const T0: i64 = 1_700_000_000_000;

/// What the fake server does with one request.
#[derive(Debug, Clone, PartialEq)]
enum Fault {
    /// Answer normally.
    None,
    /// Never reaches the server.
    Drop,
    /// Stored, but the reply is lost (cut mid-response).
    Cut,
    /// This status (with Retry-After seconds).
    Status(u16, Option<u64>),
}

#[derive(Default)]
struct ServerState {
    /// seq → fix, as stored (dedup by seq like the real server).
    stored: BTreeMap<u64, Fix>,
    /// Every fix the server ever stored, in arrival order (duplicates would
    /// show here).
    arrivals: Vec<u64>,
    /// Monotonic ms of each request.
    request_times: Vec<u64>,
    faults: VecDeque<Fault>,
    watched: bool,
    hint_s: u32,
    valid_token: Option<String>,
    max_fixes: Option<usize>,
    refuse_lat: Option<f64>,
    in_flight: usize,
    max_in_flight: usize,
    gzipped: usize,
}

#[derive(Clone)]
struct FakeServer {
    state: Arc<Mutex<ServerState>>,
    clock: ManualClock,
}

impl FakeServer {
    fn new(clock: ManualClock) -> Self {
        let s = ServerState {
            hint_s: 120,
            ..ServerState::default()
        };
        Self {
            state: Arc::new(Mutex::new(s)),
            clock,
        }
    }

    fn seqs(&self) -> Vec<u64> {
        self.state.lock().stored.keys().copied().collect()
    }

    fn requests(&self) -> usize {
        self.state.lock().request_times.len()
    }

    fn reply(status: u16, body: String, retry_after: Option<u64>) -> HttpResponse {
        let mut headers = vec![HttpHeader::new("content-type", "application/json")];
        if let Some(s) = retry_after {
            headers.push(HttpHeader::new("Retry-After", s.to_string()));
        }
        HttpResponse {
            status,
            headers,
            body: body.into_bytes(),
        }
    }

    fn error(status: u16, code: &str, seq: Option<u64>, retry_after: Option<u64>) -> HttpResponse {
        let mut b = ErrorBody::new(code, format!("{code} (test)"));
        b.error.seq = seq;
        Self::reply(status, serde_json::to_string(&b).unwrap(), retry_after)
    }
}

#[async_trait]
impl HttpTransport for FakeServer {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        {
            let mut s = self.state.lock();
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
            s.request_times.push(self.clock.monotonic_ms());
        }
        // Let other tasks run while "on the wire".
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let result = self.handle(request);
        self.state.lock().in_flight -= 1;
        result
    }
}

impl FakeServer {
    fn handle(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let mut s = self.state.lock();
        let fault = s.faults.pop_front();
        if fault == Some(Fault::Drop) {
            return Err(TransportError::Connect {
                message: "dropped (test)".into(),
            });
        }
        if let Some(Fault::Status(code, ra)) = fault {
            return Ok(Self::error(code, "test_fault", None, ra));
        }
        let header = |n: &str| {
            request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(n))
                .map(|h| h.value.clone())
        };
        if let Some(valid) = &s.valid_token {
            if header("authorization") != Some(format!("Bearer {valid}")) {
                return Ok(Self::error(401, "unauthorized", None, None));
            }
        }
        let body = if header("content-encoding").as_deref() == Some("gzip") {
            s.gzipped += 1;
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(&request.body[..])
                .read_to_end(&mut out)
                .unwrap();
            out
        } else {
            request.body
        };
        let req: IngestRequest = serde_json::from_slice(&body).unwrap();
        assert!(req.fixes.windows(2).all(|w| w[0].seq < w[1].seq));
        if s.max_fixes.is_some_and(|m| req.fixes.len() > m) {
            return Ok(Self::error(413, "too_large", None, None));
        }
        if let Some(bad) = s.refuse_lat {
            if let Some(f) = req.fixes.iter().find(|f| f.lat == bad) {
                return Ok(Self::error(400, "bad_fix", Some(f.seq), None));
            }
        }
        let mut accepted = 0;
        for f in &req.fixes {
            if let std::collections::btree_map::Entry::Vacant(e) = s.stored.entry(f.seq) {
                e.insert(f.clone());
                s.arrivals.push(f.seq);
                accepted += 1;
            }
        }
        if fault == Some(Fault::Cut) {
            return Err(TransportError::Broken {
                message: "cut mid-response (test)".into(),
            });
        }
        let reply = IngestResponse {
            accepted,
            duplicates: req.fixes.len() as u32 - accepted,
            high_seq: req.fixes.last().map_or(0, |f| f.seq),
            watchers: u64::from(s.watched),
            policy: PolicyHint {
                mode: if s.watched {
                    PolicyMode::Watched
                } else {
                    PolicyMode::Unwatched
                },
                upload_interval_s: s.hint_s,
            },
        };
        Ok(Self::reply(
            200,
            serde_json::to_string(&reply).unwrap(),
            None,
        ))
    }
}

struct Tokens {
    stale: String,
    fresh: String,
    refreshes: AtomicUsize,
}

#[async_trait]
impl TokenProvider for Tokens {
    async fn token(&self) -> Option<String> {
        Some(self.stale.clone())
    }
    async fn refresh_token(&self) -> Option<String> {
        self.refreshes.fetch_add(1, Ordering::Relaxed);
        Some(self.fresh.clone())
    }
}

#[derive(Default)]
struct Events(Mutex<Vec<DriverEvent>>);

impl DriverListener for Events {
    fn on_event(&self, event: DriverEvent) {
        self.0.lock().push(event);
    }
}

impl Events {
    fn count(&self, f: impl Fn(&DriverEvent) -> bool) -> usize {
        self.0.lock().iter().filter(|e| f(e)).count()
    }
}

struct Sim {
    _dir: TempDir,
    path: String,
    clock: ManualClock,
    env: ManualEnvironment,
    server: FakeServer,
    events: Arc<Events>,
    tokens: Arc<dyn TokenProvider>,
    seed: u64,
    config: DriverConfig,
}

impl Sim {
    fn new(seed: u64) -> Self {
        let dir = TempDir::new("driver-sim");
        let path = dir.path().join("buffer.db").to_string_lossy().into_owned();
        let clock = ManualClock::new(T0);
        let server = FakeServer::new(clock.clone());
        let mut config = DriverConfig::new("http://test.invalid", "d-1", "dev-1", path.clone());
        config.backoff = BackoffPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
            max_elapsed: None,
        };
        Self {
            _dir: dir,
            path,
            clock,
            env: ManualEnvironment::default(),
            server,
            events: Arc::new(Events::default()),
            tokens: Arc::new(StaticToken("t".into())),
            seed,
            config,
        }
    }

    fn open(&self) -> Arc<Driver> {
        let mut config = self.config.clone();
        config.buffer_path = self.path.clone();
        Driver::open_with(
            config,
            DriverDeps {
                clock: Arc::new(self.clock.clone()),
                random: Arc::new(SeededRandom::new(self.seed)),
                environment: Arc::new(self.env.clone()),
                transport: Arc::new(self.server.clone()),
                tokens: Arc::clone(&self.tokens),
                listener: Some(self.events.clone()),
            },
        )
        .unwrap()
    }

    /// A location `i` seconds after T0, moving north ~10 m/s.
    fn loc(i: i64) -> Location {
        let mut l = Location::new(T0 + i * 1000, 52.0 + i as f64 * 0.0001, 13.0);
        l.speed_mps = Some(11.0);
        l.accuracy_m = Some(5.0);
        l
    }

    /// Runs `secs` simulated seconds: a location per second recorded, the
    /// uploader polled whenever it is due. Returns the seqs recorded.
    async fn drive(&self, driver: &Driver, from: i64, secs: i64) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut due: Option<u64> = Some(0);
        for i in from..from + secs {
            self.clock.set_wall_ms(T0 + i * 1000);
            if let RecordOutcome::Recorded { seq } = driver.record(Self::loc(i)).unwrap() {
                seqs.push(seq);
                due = Some(0);
            }
            // Poll at every due time within this second.
            while due.is_some_and(|d| d <= self.clock.monotonic_ms()) {
                due = driver.poll_uploads().await.unwrap().next_due_ms;
            }
        }
        seqs
    }

    /// Polls (advancing simulated time) until the buffer is empty; the
    /// scripted faults run out on the way.
    async fn settle(&self, driver: &Driver) {
        for _ in 0..10_000 {
            if driver.stats().unwrap().pending == 0 {
                return;
            }
            let p = driver.poll_uploads().await.unwrap();
            let now = self.clock.monotonic_ms();
            let next = p.next_due_ms.unwrap_or(now + 1000).max(now + 1);
            self.clock.advance(Duration::from_millis(next - now));
        }
        panic!("buffer never drained: {:?}", driver.stats());
    }
}

#[tokio::test]
async fn unwatched_driver_batches_and_loses_nothing() {
    let sim = Sim::new(1);
    let d = sim.open();
    let seqs = sim.drive(&d, 0, 600).await;
    sim.settle(&d).await;
    assert!(
        seqs.len() > 100,
        "1 Hz at ~11 m/s records every ~5 s: {}",
        seqs.len()
    );
    assert_eq!(sim.server.seqs(), seqs);
    // First upload at once, then every 120 s: 1 + 600/120.
    let requests = sim.server.requests();
    assert!((5..=7).contains(&requests), "{requests} requests");
    let stats = d.stats().unwrap();
    assert_eq!(stats.pending, 0);
    assert_eq!(stats.acked_total, seqs.len() as u64);
    assert!(
        sim.server.state.lock().gzipped > 0,
        "big batches are gzipped"
    );
}

#[tokio::test]
async fn watched_hint_tightens_cadence_and_sampling() {
    let sim = Sim::new(2);
    {
        let mut s = sim.server.state.lock();
        s.watched = true;
        s.hint_s = 5;
    }
    let d = sim.open();
    let seqs = sim.drive(&d, 0, 300).await;
    sim.settle(&d).await;
    assert_eq!(sim.server.seqs(), seqs);
    // Watched: every second is sampled (after the first unwatched upload).
    assert!(seqs.len() > 280, "{}", seqs.len());
    let times = sim.server.state.lock().request_times.clone();
    let gaps: Vec<u64> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.iter().skip(1).all(|&g| g == 5_000), "{gaps:?}");
    assert!(d.stats().unwrap().watched);
    assert_eq!(
        sim.events
            .count(|e| matches!(e, DriverEvent::WatchedChanged { watched: true })),
        1
    );
    assert_eq!(d.desired_sampling().interval_ms, 1_000);
}

/// Runs a seeded schedule of faults; returns the request times (to check
/// determinism).
async fn fault_schedule(seed: u64) -> Vec<u64> {
    let sim = Sim::new(seed);
    {
        let rng = SeededRandom::new(seed ^ 0xFA17);
        let mut s = sim.server.state.lock();
        s.hint_s = 10;
        s.watched = true;
        for _ in 0..400 {
            s.faults.push_back(match rng.next_u64() % 10 {
                0..=2 => Fault::Drop,
                3 | 4 => Fault::Cut,
                5 => Fault::Status(503, Some(1 + rng.next_u64() % 5)),
                6 => Fault::Status(500, None),
                _ => Fault::None,
            });
        }
    }
    // Status(1) stands for "no fault": strip it in the server.
    let mut d = sim.open();
    let mut recorded = Vec::new();
    for round in 0..4 {
        recorded.extend(sim.drive(&d, round * 150, 150).await);
        // Restart in the middle of everything: the reopened buffer resends
        // whatever was not acknowledged.
        if round == 1 {
            drop(d);
            d = sim.open();
        }
    }
    sim.settle(&d).await;
    let s = sim.server.state.lock();
    let failures = sim
        .events
        .count(|e| matches!(e, DriverEvent::UploadFailed { .. }));
    assert!(failures >= 20, "seed {seed}: only {failures} failures");
    let stored: Vec<u64> = s.stored.keys().copied().collect();
    assert_eq!(
        stored, recorded,
        "seed {seed}: every recorded fix exactly once, in order"
    );
    let mut arrivals = s.arrivals.clone();
    arrivals.dedup();
    assert_eq!(
        arrivals.len(),
        recorded.len(),
        "seed {seed}: nothing stored twice"
    );
    s.request_times.clone()
}

#[tokio::test]
async fn seeded_fault_schedules_lose_and_duplicate_nothing() {
    for seed in 1..=12 {
        let a = fault_schedule(seed).await;
        let b = fault_schedule(seed).await;
        assert_eq!(a, b, "seed {seed} is deterministic");
    }
}

#[tokio::test]
async fn retry_after_and_full_jitter_bound_the_retries() {
    let sim = Sim::new(3);
    sim.server.state.lock().faults.extend([
        Fault::Status(429, Some(30)),
        Fault::Drop,
        Fault::Drop,
        Fault::Drop,
    ]);
    let d = sim.open();
    d.record(Sim::loc(0)).unwrap();
    sim.settle(&d).await;
    let t = sim.server.state.lock().request_times.clone();
    assert_eq!(t.len(), 5);
    assert!(t[1] - t[0] >= 30_000, "Retry-After honoured: {t:?}");
    // Full jitter: retry n waits at most base * 2^n.
    assert!(t[2] - t[1] <= 2_000, "{t:?}");
    assert!(t[3] - t[2] <= 4_000, "{t:?}");
    assert!(t[4] - t[3] <= 8_000, "{t:?}");
    assert_eq!(sim.server.seqs().len(), 1);
    assert_eq!(
        sim.events
            .count(|e| matches!(e, DriverEvent::UploadFailed { .. })),
        4
    );
}

#[tokio::test]
async fn unauthorized_refreshes_the_token_once_per_attempt() {
    let mut sim = Sim::new(4);
    let tokens = Arc::new(Tokens {
        stale: "old".into(),
        fresh: "new".into(),
        refreshes: AtomicUsize::new(0),
    });
    sim.tokens = tokens.clone();
    sim.server.state.lock().valid_token = Some("new".into());
    let d = sim.open();
    d.record(Sim::loc(0)).unwrap();
    d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), 2, "401, refresh, retry");
    assert_eq!(tokens.refreshes.load(Ordering::Relaxed), 1);
    assert_eq!(sim.server.seqs().len(), 1);
    // A token nobody accepts: two requests per attempt, then backoff.
    sim.server.state.lock().valid_token = Some("never".into());
    d.record(Sim::loc(10)).unwrap();
    d.flush();
    let p = d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), 4);
    assert!(p.next_due_ms.is_some());
    assert_eq!(
        sim.events
            .count(|e| matches!(e, DriverEvent::AuthFailed { .. })),
        1
    );
    assert_eq!(d.stats().unwrap().pending, 1, "kept for later");
}

#[tokio::test]
async fn a_token_near_its_exp_is_refreshed_before_the_server_refuses_it() {
    let mut sim = Sim::new(4);
    let exp_s = |in_s: i64| T0 / 1000 + in_s;
    let tokens = Arc::new(Tokens {
        // Valid for 30 s more: inside the refresh-ahead window.
        stale: crate::tokens::unsigned_jwt(&format!(r#"{{"exp":{}}}"#, exp_s(30))),
        fresh: crate::tokens::unsigned_jwt(&format!(r#"{{"exp":{}}}"#, exp_s(3600))),
        refreshes: AtomicUsize::new(0),
    });
    sim.tokens = tokens.clone();
    let d = sim.open();
    d.record(Sim::loc(0)).unwrap();
    d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), 1);
    // From now on the server takes only the fresh token: had the SDK sent
    // the old one, it would see a 401 and need a second request.
    sim.server.state.lock().valid_token = Some(tokens.fresh.clone());
    d.record(Sim::loc(10)).unwrap();
    d.flush();
    d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), 2, "no 401 round trip");
    assert_eq!(tokens.refreshes.load(Ordering::Relaxed), 1);
    assert_eq!(sim.server.seqs().len(), 2);
}

#[tokio::test]
async fn refused_fix_is_quarantined_not_retried() {
    let sim = Sim::new(5);
    let d = sim.open();
    let mut seqs = sim.drive(&d, 0, 30).await;
    let bad = Sim::loc(40);
    sim.server.state.lock().refuse_lat = Some(bad.lat);
    sim.clock.set_wall_ms(bad.ts_ms);
    let RecordOutcome::Recorded { seq: bad_seq } = d.record(bad).unwrap() else {
        panic!("not recorded");
    };
    seqs.extend(sim.drive(&d, 50, 30).await);
    sim.settle(&d).await;
    assert_eq!(sim.server.seqs(), seqs);
    let q = d.quarantined(10).unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].fix.seq, bad_seq);
    assert_eq!(q[0].reason, "bad_fix (test)");
    assert_eq!(d.stats().unwrap().quarantined_total, 1);
}

#[tokio::test]
async fn too_large_batches_are_split() {
    let mut sim = Sim::new(6);
    sim.config.policy.unwatched.sample_interval_ms = 1_000;
    sim.config.policy.unwatched.distance_base_m = 0.0;
    sim.config.policy.unwatched.distance_max_m = 0.0;
    sim.env.set_network(NetworkType::Offline);
    let d = sim.open();
    let seqs = sim.drive(&d, 0, 100).await;
    assert_eq!(sim.server.requests(), 0, "no network, no attempts");
    sim.server.state.lock().max_fixes = Some(16);
    sim.env.set_network(NetworkType::Wifi);
    d.environment_changed();
    d.poll_uploads().await.unwrap();
    assert_eq!(
        sim.server.seqs(),
        seqs,
        "network back: everything flushed at once"
    );
    let n = sim.server.requests();
    assert!((8..=20).contains(&n), "{n} requests after splitting");
}

#[tokio::test]
async fn charging_and_flush_upload_at_once() {
    let sim = Sim::new(7);
    sim.env.set_battery(BatteryState {
        level: 0.5,
        charging: false,
        low_power_mode: false,
    });
    let d = sim.open();
    sim.drive(&d, 0, 20).await;
    let before = sim.server.requests();
    sim.drive(&d, 20, 20).await;
    assert_eq!(
        sim.server.requests(),
        before,
        "unwatched: waits for the interval"
    );
    sim.env.set_battery(BatteryState {
        level: 0.5,
        charging: true,
        low_power_mode: false,
    });
    d.environment_changed();
    d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), before + 1, "charging started: flush");
    sim.drive(&d, 40, 20).await;
    let before = sim.server.requests();
    d.flush();
    d.poll_uploads().await.unwrap();
    assert_eq!(sim.server.requests(), before + 1, "flush()");
    assert_eq!(d.stats().unwrap().pending, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn background_task_keeps_one_upload_in_flight_and_shuts_down() {
    let sim = Sim::new(8);
    sim.server.state.lock().watched = true;
    sim.server.state.lock().hint_s = 1;
    let d = sim.open();
    d.start().unwrap();
    let mut recorded = 0;
    for i in 0..200 {
        sim.clock.set_wall_ms(T0 + i * 1000);
        if matches!(
            d.record(Sim::loc(i)).unwrap(),
            RecordOutcome::Recorded { .. }
        ) {
            recorded += 1;
        }
        // Manual flushes and polls race with the background task.
        d.flush();
        let (a, b) = tokio::join!(d.poll_uploads(), d.poll_uploads());
        a.unwrap();
        b.unwrap();
        tokio::task::yield_now().await;
    }
    for _ in 0..1000 {
        if sim.server.seqs().len() == recorded {
            break;
        }
        d.flush();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(sim.server.seqs().len(), recorded);
    assert_eq!(sim.server.state.lock().max_in_flight, 1);
    tokio::time::timeout(Duration::from_secs(5), d.shutdown())
        .await
        .expect("shutdown finishes");
    assert!(d.start().is_err(), "no restart after shutdown");
}

#[tokio::test]
async fn restart_resumes_seqs_and_filter_state() {
    let sim = Sim::new(9);
    let d = sim.open();
    let first = sim.drive(&d, 0, 60).await;
    drop(d);
    let d = sim.open();
    let last = d.last_recorded().unwrap();
    assert_eq!(last.seq, *first.last().unwrap());
    // The same location again is stale after a restart too.
    assert_eq!(
        d.record(Location::new(last.ts, last.lat, last.lon))
            .unwrap(),
        RecordOutcome::Dropped {
            reason: DropReason::Stale
        }
    );
    let second = sim.drive(&d, 60, 60).await;
    assert!(second[0] > last.seq);
    sim.settle(&d).await;
    let all: Vec<u64> = first.into_iter().chain(second).collect();
    assert_eq!(sim.server.seqs(), all);
}

#[tokio::test]
async fn full_buffer_evicts_oldest_and_reports_it() {
    let mut sim = Sim::new(10);
    sim.config.buffer.max_fixes = 10;
    sim.config.policy.unwatched.sample_interval_ms = 1_000;
    sim.config.policy.unwatched.distance_base_m = 0.0;
    sim.config.policy.unwatched.distance_max_m = 0.0;
    sim.env.set_network(NetworkType::Offline);
    let d = sim.open();
    let seqs = sim.drive(&d, 0, 30).await;
    assert_eq!(seqs.len(), 30);
    let evicted: u64 = sim
        .events
        .0
        .lock()
        .iter()
        .map(|e| match e {
            DriverEvent::Evicted { count } => *count,
            _ => 0,
        })
        .sum();
    assert_eq!(evicted, 20);
    assert_eq!(d.stats().unwrap().evicted_total, 20);
    sim.env.set_network(NetworkType::Wifi);
    d.environment_changed();
    sim.settle(&d).await;
    assert_eq!(
        sim.server.seqs(),
        seqs[20..].to_vec(),
        "the newest 10 survive"
    );
}

#[tokio::test]
async fn unreadable_buffer_files_are_clear_errors() {
    let mut sim = Sim::new(11);
    std::fs::write(&sim.path, vec![7u8; 4096]).unwrap();
    let open = |sim: &Sim| {
        let mut config = sim.config.clone();
        config.buffer_path = sim.path.clone();
        Driver::open_with(
            config,
            DriverDeps {
                clock: Arc::new(sim.clock.clone()),
                random: Arc::new(SeededRandom::new(1)),
                environment: Arc::new(sim.env.clone()),
                transport: Arc::new(sim.server.clone()),
                tokens: Arc::clone(&sim.tokens),
                listener: Some(sim.events.clone()),
            },
        )
    };
    assert!(matches!(
        open(&sim).unwrap_err(),
        WaypostError::Storage { ref code, .. } if code == crate::error::storage_code::CORRUPT
    ));
    sim.config.buffer.recreate_if_corrupt = true;
    let d = open(&sim).unwrap();
    assert_eq!(
        sim.events
            .count(|e| matches!(e, DriverEvent::BufferRecreated { .. })),
        1
    );
    // The new buffer's seqs start at the clock, above anything used before.
    let RecordOutcome::Recorded { seq } = d.record(Sim::loc(0)).unwrap() else {
        panic!("not recorded");
    };
    assert!(seq >= T0 as u64);
    drop(d);
    let other = sim.path.replace("buffer.db", "app.db");
    rusqlite::Connection::open(&other)
        .unwrap()
        .execute_batch("CREATE TABLE t (x)")
        .unwrap();
    sim.path = other;
    assert!(matches!(
        open(&sim).unwrap_err(),
        WaypostError::Storage { ref code, .. } if code == crate::error::storage_code::FOREIGN
    ));
}

#[tokio::test]
async fn watchers_hear_events_until_cancelled() {
    let sim = Sim::new(11);
    let d = sim.open();
    let watcher = Arc::new(Events::default());
    let sub = d.watch_events(watcher.clone()).unwrap();
    assert_eq!(d.watcher_count(), 1);
    sim.drive(&d, 0, 30).await;
    sim.settle(&d).await;
    let uploaded = |e: &DriverEvent| matches!(e, DriverEvent::Uploaded { .. });
    let heard = watcher.count(uploaded);
    assert!(heard > 0, "the watcher heard the uploads");
    assert_eq!(
        heard,
        sim.events.count(uploaded),
        "the watcher hears what the open listener hears"
    );
    sub.cancel();
    assert_eq!(d.watcher_count(), 0);
    sim.drive(&d, 30, 300).await;
    sim.settle(&d).await;
    assert!(sim.events.count(uploaded) > heard, "more uploads happened");
    assert_eq!(watcher.count(uploaded), heard, "nothing after cancel");
    // Dropping the driver releases the watchers (foreign objects).
    let again = Arc::new(Events::default());
    let _sub = d.watch_events(again.clone()).unwrap();
    drop(d);
    assert_eq!(Arc::strong_count(&again), 1, "released with the driver");
}

#[tokio::test]
async fn the_first_watcher_gets_the_events_raised_before_it_subscribed() {
    let sim = Sim::new(13);
    let d = sim.open();
    // An upload finishes before anybody watches (what an app's Flow that
    // subscribes after `open` used to miss).
    sim.drive(&d, 0, 30).await;
    sim.settle(&d).await;
    let before = sim.events.0.lock().clone();
    assert!(
        before
            .iter()
            .any(|e| matches!(e, DriverEvent::Uploaded { .. })),
        "{before:?}"
    );
    let first = Arc::new(Events::default());
    let _sub = d.watch_events(first.clone()).unwrap();
    assert_eq!(
        *first.0.lock(),
        before,
        "replayed to the first watcher at once, oldest first"
    );
    // Later events follow the replayed ones; a second watcher gets only
    // what happens after it subscribed.
    let second = Arc::new(Events::default());
    let _sub2 = d.watch_events(second.clone()).unwrap();
    assert!(second.0.lock().is_empty(), "no replay for later watchers");
    sim.drive(&d, 30, 60).await;
    sim.settle(&d).await;
    let all = sim.events.0.lock().clone();
    assert!(all.len() > before.len(), "more events happened");
    assert_eq!(*first.0.lock(), all, "the first watcher heard everything");
    assert_eq!(*second.0.lock(), all[before.len()..]);
    assert_eq!(d.early_events_dropped(), 0);
}

#[tokio::test]
async fn early_events_are_bounded_oldest_dropped_and_counted() {
    let sim = Sim::new(14);
    let d = sim.open();
    let n = EARLY_EVENTS as u64 + 44;
    for count in 0..n {
        d.inner.emit(DriverEvent::Evicted { count });
    }
    let first = Arc::new(Events::default());
    let _sub = d.watch_events(first.clone()).unwrap();
    let heard = first.0.lock().clone();
    let expected: Vec<_> = (44..n)
        .map(|count| DriverEvent::Evicted { count })
        .collect();
    assert_eq!(heard, expected, "the newest are kept, oldest first");
    assert_eq!(d.early_events_dropped(), 44);
    // Once taken, nothing is kept any more for anybody.
    drop(_sub);
    d.inner.emit(DriverEvent::Evicted { count: n });
    let late = Arc::new(Events::default());
    let _sub = d.watch_events(late.clone()).unwrap();
    assert!(late.0.lock().is_empty());
}

#[test]
fn events_raised_while_the_first_watcher_subscribes_keep_their_order() {
    // Another thread raises events while the first watcher is added: the
    // watcher gets every one of them exactly once, in the order raised.
    let sim = Sim::new(15);
    let d = sim.open();
    let n = 200u64;
    let driver = Arc::clone(&d);
    let raiser = std::thread::spawn(move || {
        for count in 0..n {
            driver.inner.emit(DriverEvent::Evicted { count });
            if count % 16 == 0 {
                std::thread::yield_now();
            }
        }
    });
    // Subscribe somewhere in the middle (or before/after: all must hold).
    while sim.events.0.lock().len() < 50 && !raiser.is_finished() {
        std::thread::yield_now();
    }
    let first = Arc::new(Events::default());
    let _sub = d.watch_events(first.clone()).unwrap();
    raiser.join().unwrap();
    let expected: Vec<_> = (0..n).map(|count| DriverEvent::Evicted { count }).collect();
    assert_eq!(*first.0.lock(), expected, "every event once, in order");
    assert_eq!(d.early_events_dropped(), 0);
}

/// Collects health reports.
#[derive(Default)]
struct HealthLog(Mutex<Vec<DriverHealth>>);

impl HealthListener for HealthLog {
    fn on_health(&self, health: DriverHealth) {
        self.0.lock().push(health);
    }
}

impl HealthLog {
    fn keys(&self) -> Vec<Vec<&'static str>> {
        self.0.lock().iter().map(DriverHealth::key).collect()
    }
}

/// Waits (real time, bounded) until `cond` holds.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_driver_follows_the_platform_state_without_being_told() {
    let sim = Sim::new(12);
    sim.env.set_network(NetworkType::Offline);
    let d = sim.open();
    let log = Arc::new(HealthLog::default());
    let id = d.add_health_listener(log.clone()).unwrap();
    d.start().unwrap();
    let mut recorded = Vec::new();
    for i in 0..30 {
        sim.clock.set_wall_ms(T0 + i * 1000);
        if let RecordOutcome::Recorded { seq } = d.record(Sim::loc(i)).unwrap() {
            recorded.push(seq);
        }
    }
    assert!(!recorded.is_empty());
    eventually("health says offline", || d.health().has("offline")).await;
    assert_eq!(sim.server.requests(), 0);
    // The network comes back: no environment_changed(), no flush().
    sim.env.set_network(NetworkType::Wifi);
    eventually("everything uploaded", || sim.server.seqs() == recorded).await;
    eventually("health clears", || {
        log.keys().last().is_some_and(|k| k.is_empty())
    })
    .await;
    // Reported once per change of the set of issues: nothing waiting (on
    // add: offline with an empty buffer holds nothing back), offline (with
    // the first fix recorded), healthy again; not once per fix.
    assert_eq!(log.keys(), vec![vec![], vec!["offline"], vec![]]);
    // Denied permission: nothing requested, reported at once.
    sim.env
        .set_permission(crate::env::LocationPermission::Denied);
    eventually("denied reported", || {
        log.keys().last() == Some(&vec!["permission_denied"])
    })
    .await;
    assert!(!d.desired_sampling().active);
    d.remove_health_listener(id);
    sim.env
        .set_permission(crate::env::LocationPermission::Always);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(log.keys().len(), 4, "no reports after removal");
    tokio::time::timeout(Duration::from_secs(5), d.shutdown())
        .await
        .expect("shutdown finishes");
}

#[tokio::test]
async fn reduced_accuracy_keeps_coarse_fixes_and_marks_them() {
    let sim = Sim::new(13);
    let d = sim.open();
    let coarse_loc = |i: i64, acc: f64| {
        let mut l = Sim::loc(i);
        l.accuracy_m = Some(acc);
        l
    };
    // Precise: a 3 km fix is rejected, and counted.
    for i in 0..3 {
        sim.clock.set_wall_ms(T0 + i * 1000);
        assert!(matches!(
            d.record(coarse_loc(i, 3_000.0)).unwrap(),
            RecordOutcome::Dropped {
                reason: DropReason::Inaccurate { .. }
            }
        ));
    }
    let h = d.health();
    assert_eq!(
        h.issues[0].reason,
        health::HealthReason::FixesRejectedInaccurate {
            count: 3,
            last_accuracy_m: 3_000.0,
            max_accuracy_m: 100.0
        }
    );
    assert_eq!(h.rejected_inaccurate_total, 3);
    // Reduced accuracy: the same fixes are kept, marked coarse, sampled
    // slowly.
    sim.env
        .set_accuracy(crate::env::AccuracyAuthorization::Reduced);
    let s = d.desired_sampling();
    assert!(s.coarse && s.active && s.interval_ms >= 60_000, "{s:?}");
    sim.clock.set_wall_ms(T0 + 10_000);
    let RecordOutcome::Recorded { seq } = d.record(coarse_loc(10, 3_000.0)).unwrap() else {
        panic!("coarse fix not recorded");
    };
    // 20 s later: too soon for coarse sampling.
    sim.clock.set_wall_ms(T0 + 30_000);
    assert_eq!(
        d.record(coarse_loc(30, 3_000.0)).unwrap(),
        RecordOutcome::Dropped {
            reason: DropReason::Throttled
        }
    );
    let h = d.health();
    assert_eq!(h.key(), ["accuracy_reduced"], "{}", h.summary);
    assert_eq!(
        (h.coarse_recorded_total, h.rejected_inaccurate_total),
        (1, 3)
    );
    assert!(d.last_recorded().unwrap().is_coarse());
    sim.settle(&d).await;
    let stored = sim.server.state.lock().stored.get(&seq).cloned().unwrap();
    assert_eq!(stored.coarse, Some(true));
    assert_eq!(stored.accuracy_m, Some(3_000.0));
    // Precise again: fixes are not marked.
    sim.env
        .set_accuracy(crate::env::AccuracyAuthorization::Precise);
    sim.clock.set_wall_ms(T0 + 100_000);
    assert!(matches!(
        d.record(Sim::loc(100)).unwrap(),
        RecordOutcome::Recorded { .. }
    ));
    assert_eq!(d.last_recorded().unwrap().coarse, None);
    assert!(d.health().ok);
}
