//! `sdk-replay`: replays a GPS trace through the real driver SDK in
//! simulated time against an in-process server, and compares it with the
//! seed architecture (one single-fix POST every 5 s). `sdk-buffer`: the
//! SQLite buffer's insert rate.
//!
//! Simulation: a [`ManualClock`] runs on the trace's own timestamps. Each
//! trace row is handed to `Driver::record` at its timestamp; the uploader is
//! polled exactly when it says it is due. Requests go through the real
//! server router (`waypost_server::app::build_router`, memory engine) with
//! `tower::ServiceExt::oneshot` — real JSON, gzip, auth, validation and
//! de-duplication; only the network is instantaneous (so staleness below
//! excludes network latency; add one RTT). `--watched` keeps a subscriber on
//! `tracking:{driver}` for the whole trace, so the server hints "watched".
//!
//! Staleness, sampled every second of the trace once the server has a
//! position: `staleness` is how far the server's latest position lags the
//! newest fix the phone had (`newest input ts − server latest ts`; what the
//! SDK controls); `position_age` is `now − server latest ts` (also counts
//! gaps in the trace itself, which no SDK can fix).
//!
//! Radio energy model (LTE, after Huang et al., "A Close Examination of
//! Performance and Power Characteristics of 4G LTE Networks", MobiSys 2012):
//! waking the radio costs a promotion of 0.3 J; after each transfer the radio
//! stays in the high-power tail for 11 s at 0.95 W (10.45 J) unless the next
//! transfer starts earlier, which cuts the tail short and skips the next
//! promotion; sending costs 1.2 W over `bytes·8 / 2 Mbit/s`. An isolated
//! upload therefore costs ≈ 10.8 J; uploads every 5 s keep the radio in the
//! tail all the time (≈ 4.8 J each).

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use axum::body::Body;
use parking_lot::Mutex;
use serde::Serialize;
use tower::ServiceExt;
use waypost_protocol::backoff::SeededRandom;
use waypost_protocol::{Claims, Fix, IngestRequest, Role};
use waypost_sdk::clock::{Clock, ManualClock};
use waypost_sdk::driver::buffer::{Buffer, BufferOptions};
use waypost_sdk::env::{BatteryState, ManualEnvironment, NetworkType};
use waypost_sdk::transport::{
    HttpHeader, HttpRequest, HttpResponse, HttpTransport, TransportError,
};
use waypost_sdk::{
    Driver, DriverConfig, DriverDeps, DropReason, Location, PolicyConfig, PolicyPreset,
    RecordOutcome, StaticToken,
};
use waypost_server::app::build_router;
use waypost_server::auth::AuthKeys;
use waypost_server::config::Limits;
use waypost_server::engine::Engine;
use waypost_server::hub::{self, Hub};
use waypost_server::metrics::Metrics;
use waypost_server::state::AppState;

const SECRET: &[u8] = b"bench-replay-secret";
const DRIVER: &str = "d-replay";
const BASELINE_DRIVER: &str = "d-baseline";
const BASELINE_PERIOD_MS: i64 = 5_000;

// Radio model constants (see module docs).
const PROMOTION_J: f64 = 0.3;
const TAIL_S: f64 = 11.0;
const TAIL_W: f64 = 0.95;
const TX_W: f64 = 1.2;
const UPLINK_BPS: f64 = 2_000_000.0;

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum PresetArg {
    Realtime,
    Balanced,
    Saver,
}

impl From<PresetArg> for PolicyPreset {
    fn from(p: PresetArg) -> Self {
        match p {
            PresetArg::Realtime => PolicyPreset::Realtime,
            PresetArg::Balanced => PolicyPreset::Balanced,
            PresetArg::Saver => PolicyPreset::Saver,
        }
    }
}

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Trace CSV: ts_ms,lat,lon,alt_m,speed_mps,accuracy_m.
    #[arg(long)]
    trace: PathBuf,
    /// Somebody watches the driver for the whole trace.
    #[arg(long, conflicts_with = "unwatched")]
    watched: bool,
    /// Nobody watches (the default).
    #[arg(long)]
    unwatched: bool,
    /// Policy preset.
    #[arg(long, value_enum, default_value = "balanced")]
    preset: PresetArg,
    /// Seed of the backoff jitter.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Battery level the simulated phone reports (0–1).
    #[arg(long, default_value_t = 0.8)]
    battery: f64,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// One trace row.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row {
    pub(crate) ts: i64,
    pub(crate) lat: f64,
    pub(crate) lon: f64,
    pub(crate) alt: Option<f64>,
    pub(crate) speed: Option<f64>,
    pub(crate) acc: Option<f64>,
}

pub(crate) fn parse_trace(path: &PathBuf) -> anyhow::Result<Vec<Row>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path:?}"))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if i == 0 || line.trim().is_empty() {
            if i == 0 && !line.starts_with("ts_ms,") {
                bail!("{path:?}: header must start with ts_ms,");
            }
            continue;
        }
        let f: Vec<&str> = line.split(',').collect();
        if f.len() < 6 {
            bail!("{path:?}:{}: expected 6 columns", i + 1);
        }
        let opt = |s: &str| -> anyhow::Result<Option<f64>> {
            if s.trim().is_empty() {
                Ok(None)
            } else {
                Ok(Some(s.trim().parse()?))
            }
        };
        rows.push(Row {
            ts: f[0]
                .trim()
                .parse()
                .with_context(|| format!("line {}", i + 1))?,
            lat: f[1]
                .trim()
                .parse()
                .with_context(|| format!("line {}", i + 1))?,
            lon: f[2]
                .trim()
                .parse()
                .with_context(|| format!("line {}", i + 1))?,
            alt: opt(f[3])?,
            speed: opt(f[4])?,
            acc: opt(f[5])?,
        });
    }
    if rows.is_empty() {
        bail!("{path:?} has no rows");
    }
    Ok(rows)
}

/// One request as the transport saw it.
#[derive(Debug, Clone, Copy)]
struct Sent {
    wall_ms: i64,
    bytes: usize,
    /// The same batch as a MessagePack body, plain and gzipped (what a
    /// binary ingest would send; not sent), and its JSON gzipped whatever
    /// its size (the SDK gzips from 1 KiB only).
    msgpack_bytes: usize,
    msgpack_gzip_bytes: usize,
    json_gzip_bytes: usize,
}

/// The request body's JSON (gunzipped when gzipped) as MessagePack: its
/// size plain and gzipped (best of both), and the JSON gzipped (best of
/// both).
fn msgpack_sizes(body: &[u8], gzipped: bool) -> (usize, usize, usize) {
    use std::io::{Read, Write};
    let mut json = Vec::new();
    if gzipped {
        if flate2::read::GzDecoder::new(body)
            .read_to_end(&mut json)
            .is_err()
        {
            return (0, 0, 0);
        }
    } else {
        json.extend_from_slice(body);
    }
    let Ok(bin) = std::str::from_utf8(&json)
        .map_err(|_| ())
        .and_then(|j| waypost_protocol::msgpack::json_to_msgpack(j).map_err(|_| ()))
    else {
        return (0, 0, 0);
    };
    let gzip = |data: &[u8]| {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data)
            .and_then(|()| gz.finish())
            .map_or(data.len(), |z| z.len().min(data.len()))
    };
    (bin.len(), gzip(&bin), gzip(&json))
}

/// Bytes on the wire of one WebSocket frame from the server (unmasked):
/// payload plus the 2, 4 or 10 byte header.
fn ws_frame_bytes(payload: usize) -> usize {
    payload
        + match payload {
            0..=125 => 2,
            126..=65_535 => 4,
            _ => 10,
        }
}

/// [`HttpTransport`] straight into the axum router.
struct RouterTransport {
    router: axum::Router,
    clock: ManualClock,
    log: Mutex<Vec<Sent>>,
}

#[async_trait]
impl HttpTransport for RouterTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let invalid = |e: String| TransportError::Invalid { message: e };
        let path = request
            .url
            .find("/v1/")
            .map(|i| request.url[i..].to_owned())
            .ok_or_else(|| invalid(format!("no /v1/ path in {}", request.url)))?;
        let gzipped = request.headers.iter().any(|h| {
            h.name.eq_ignore_ascii_case("content-encoding") && h.value.eq_ignore_ascii_case("gzip")
        });
        let (msgpack_bytes, msgpack_gzip_bytes, json_gzip_bytes) =
            msgpack_sizes(&request.body, gzipped);
        self.log.lock().push(Sent {
            wall_ms: self.clock.now_ms(),
            bytes: request.body.len(),
            msgpack_bytes,
            msgpack_gzip_bytes,
            json_gzip_bytes,
        });
        let mut builder = axum::http::Request::builder()
            .method(request.method.as_str())
            .uri(path);
        for h in &request.headers {
            builder = builder.header(&h.name, &h.value);
        }
        let req = builder
            .body(Body::from(request.body))
            .map_err(|e| invalid(e.to_string()))?;
        let resp = self
            .router
            .clone()
            .oneshot(req)
            .await
            .map_err(|e| TransportError::Broken {
                message: e.to_string(),
            })?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .filter_map(|(k, v)| Some(HttpHeader::new(k.as_str(), v.to_str().ok()?)))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 16 << 20)
            .await
            .map_err(|e| TransportError::Broken {
                message: e.to_string(),
            })?
            .to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

struct Server {
    router: axum::Router,
    engine: Engine,
    hub: Arc<Hub>,
    keys: AuthKeys,
    /// The server's ingest clock: the simulated clock of the phone being
    /// replayed (the SDK's, then the baseline's), so ingest judges fixes
    /// (dead zones, validation) in the trace's time as a live server would.
    clock: Arc<ReplayClock>,
}

/// [`IngestClock`](waypost_server::IngestClock) that reads whichever
/// simulated clock is current.
#[derive(Debug)]
struct ReplayClock(Mutex<ManualClock>);

impl ReplayClock {
    fn follow(&self, clock: &ManualClock) {
        *self.0.lock() = clock.clone();
    }
}

impl waypost_server::IngestClock for ReplayClock {
    fn now_ms(&self) -> i64 {
        self.0.lock().now_ms()
    }
}

fn server() -> Server {
    let limits = Limits {
        trail_len: 1_000_000,
        dedup_window: 1_000_000,
        // Simulated hours pass in real milliseconds: no real-time rate limit.
        ingest_requests_per_s: 1_000_000,
        online_ttl: Duration::from_secs(24 * 3600),
        ..Limits::default()
    };
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new(metrics.clone()));
    let engine = Engine::memory(Arc::clone(&hub), limits.clone());
    let keys = AuthKeys::new(SECRET);
    let clock = Arc::new(ReplayClock(Mutex::new(ManualClock::new(
        waypost_server::now_ms(),
    ))));
    let state = AppState::new(
        engine.clone(),
        Arc::clone(&hub),
        keys.clone(),
        limits,
        metrics,
    )
    .with_ingest_clock(Arc::clone(&clock) as Arc<dyn waypost_server::IngestClock>);
    Server {
        router: build_router(state),
        engine,
        hub,
        keys,
        clock,
    }
}

fn token(keys: &AuthKeys, sub: &str, role: Role) -> anyhow::Result<String> {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 24 * 3600;
    Ok(keys.mint(&Claims {
        sub: sub.into(),
        role,
        exp,
        channels: None,
    })?)
}

/// Figures of one run (SDK or baseline).
#[derive(Debug, Clone, Serialize, Default)]
pub struct Figures {
    fixes_in: usize,
    fixes_recorded: usize,
    fixes_uploaded: usize,
    uploads: usize,
    uploads_per_hour: f64,
    staleness_p50_s: Option<f64>,
    staleness_p95_s: Option<f64>,
    position_age_p50_s: Option<f64>,
    position_age_p95_s: Option<f64>,
    bytes_up: usize,
    /// The same uploads as MessagePack bodies (plain; gzipped when smaller).
    bytes_up_msgpack: usize,
    bytes_up_msgpack_gzip: usize,
    /// The same uploads as JSON gzipped whatever their size.
    bytes_up_json_gzip_all: usize,
    /// What the watcher's WebSocket carried for this driver (frames,
    /// bytes with frame headers) in JSON, in MessagePack and lean
    /// (`waypost.v1.lean`: location frames as deltas against the previous).
    ws_frames_down: usize,
    ws_bytes_down_json: usize,
    ws_bytes_down_msgpack: usize,
    ws_bytes_down_lean: usize,
    /// Of those, the `location` frames (the only ones lean changes).
    ws_location_frames_down: usize,
    ws_location_bytes_down_json: usize,
    ws_location_bytes_down_msgpack: usize,
    ws_location_bytes_down_lean: usize,
    radio_energy_j: f64,
    lost: usize,
    duplicated: usize,
}

#[derive(Debug, Serialize)]
struct Report {
    trace: String,
    mode: &'static str,
    preset: String,
    seed: u64,
    duration_h: f64,
    #[serde(flatten)]
    sdk: Figures,
    dropped: std::collections::BTreeMap<String, usize>,
    baseline: Figures,
    wall_time_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    Some(sorted[idx.min(sorted.len() - 1)])
}

/// Radio energy of a sequence of transfers (module docs).
fn radio_energy_j(sent: &[Sent]) -> f64 {
    let mut e = 0.0;
    let mut prev_end: Option<f64> = None;
    for s in sent {
        let t = s.wall_ms as f64 / 1000.0;
        let tx_s = s.bytes as f64 * 8.0 / UPLINK_BPS;
        match prev_end {
            Some(end) if t - end < TAIL_S => {
                // Still in the tail: pay the tail up to now, no promotion.
                e += TAIL_W * (t - end).max(0.0);
            }
            Some(_) => e += TAIL_W * TAIL_S + PROMOTION_J,
            None => e += PROMOTION_J,
        }
        e += TX_W * tx_s;
        prev_end = Some(t + tx_s);
    }
    if prev_end.is_some() {
        e += TAIL_W * TAIL_S;
    }
    e
}

/// Samples of (staleness, position age) in seconds, once per trace second.
struct Sampler {
    staleness: Vec<f64>,
    age: Vec<f64>,
}

impl Sampler {
    fn new() -> Self {
        Self {
            staleness: Vec::new(),
            age: Vec::new(),
        }
    }

    fn sample(&mut self, now: i64, newest_input: i64, server_latest: Option<i64>) {
        if let Some(latest) = server_latest {
            self.staleness
                .push((newest_input - latest).max(0) as f64 / 1000.0);
            self.age.push((now - latest).max(0) as f64 / 1000.0);
        }
    }

    fn finish(mut self, f: &mut Figures) {
        self.staleness.sort_by(f64::total_cmp);
        self.age.sort_by(f64::total_cmp);
        f.staleness_p50_s = percentile(&self.staleness, 50.0);
        f.staleness_p95_s = percentile(&self.staleness, 95.0);
        f.position_age_p50_s = percentile(&self.age, 50.0);
        f.position_age_p95_s = percentile(&self.age, 95.0);
    }
}

async fn server_latest_ts(engine: &Engine, driver: &str) -> anyhow::Result<Option<i64>> {
    Ok(engine
        .latest(driver, waypost_server::now_ms())
        .await?
        .map(|s| s.fix.ts))
}

fn location(r: &Row) -> Location {
    Location {
        ts_ms: r.ts,
        lat: r.lat,
        lon: r.lon,
        accuracy_m: r.acc,
        speed_mps: r.speed,
        heading_deg: None,
        altitude_m: r.alt,
    }
}

fn drop_name(reason: &DropReason) -> &'static str {
    match reason {
        DropReason::Invalid { .. } => "invalid",
        DropReason::FromTheFuture { .. } => "future",
        DropReason::Inaccurate { .. } => "inaccurate",
        DropReason::Jump { .. } => "jump",
        DropReason::Stale => "stale",
        DropReason::Throttled => "throttled",
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = simulate(&args).await?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// Runs one replay (SDK and baseline) and returns the figures.
async fn simulate(args: &Args) -> anyhow::Result<Report> {
    let started = Instant::now();
    let mut rows = parse_trace(&args.trace)?;
    // The trace moved to end a minute ago: its fixes are as recent as a
    // live ride's to everything in the server that reads the real clock
    // (online TTL), while ingest reads the simulated one.
    let shift = waypost_server::now_ms() - 60_000 - rows[rows.len() - 1].ts;
    for r in &mut rows {
        r.ts += shift;
    }
    let first = rows[0].ts;
    let last = rows[rows.len() - 1].ts;
    let duration_h = ((last - first) as f64 / 3_600_000.0).max(1.0 / 3600.0);
    let srv = server();
    let _watcher = if args.watched {
        // A subscriber on the driver's channel, as a WebSocket would add.
        let (handle, rx) = hub::connection(srv.hub.next_conn_id(), 1 << 20);
        srv.hub
            .add(&waypost_protocol::Channel::tracking(DRIVER), handle.clone());
        srv.hub.add(
            &waypost_protocol::Channel::tracking(BASELINE_DRIVER),
            handle,
        );
        Some(rx)
    } else {
        None
    };
    let mut watcher = _watcher;
    // Frames, JSON bytes, MessagePack bytes delivered to the watcher.
    let mut down = (0usize, 0usize, 0usize, 0usize);
    // The watcher's previous location frame: the base of its lean delta.
    let mut lean_base: Option<hub::Outbound> = None;
    // The `location` frames among them (the others: `trail`, status).
    let mut locations = (0usize, 0usize, 0usize, 0usize);

    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = std::env::temp_dir().join(format!(
        "waypost-replay-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir)?;
    let buffer_path = dir.join("buffer.db");
    let _ = std::fs::remove_file(&buffer_path);

    // ---- the SDK ----
    let clock = ManualClock::new(first - 1_000);
    srv.clock.follow(&clock);
    let wall0 = clock.now_ms();
    let env = ManualEnvironment::new(
        NetworkType::Cellular,
        BatteryState {
            level: args.battery,
            charging: false,
            low_power_mode: false,
        },
    );
    let transport = Arc::new(RouterTransport {
        router: srv.router.clone(),
        clock: clock.clone(),
        log: Mutex::new(Vec::new()),
    });
    let mut config = DriverConfig::new(
        "http://replay.invalid",
        DRIVER,
        "phone-1",
        buffer_path.to_string_lossy(),
    );
    config.policy = PolicyConfig::preset(args.preset.into());
    let driver = Driver::open_with(
        config,
        DriverDeps {
            clock: Arc::new(clock.clone()),
            random: Arc::new(SeededRandom::new(args.seed)),
            environment: Arc::new(env),
            transport: transport.clone(),
            tokens: Arc::new(StaticToken(token(&srv.keys, DRIVER, Role::Driver)?)),
            listener: None,
        },
    )?;

    let mut recorded: Vec<(u64, i64)> = Vec::new();
    let mut dropped = std::collections::BTreeMap::<String, usize>::new();
    let mut sampler = Sampler::new();
    let mut next_row = 0usize;
    let mut due_mono: Option<u64> = None;
    let mut next_sample = first;
    let end = last;
    loop {
        let due_wall = due_mono.map(|m| wall0 + m as i64);
        let row_ts = rows.get(next_row).map(|r| r.ts);
        let candidates = [
            row_ts,
            due_wall,
            (next_sample <= end).then_some(next_sample),
        ];
        let Some(t) = candidates.into_iter().flatten().min() else {
            break;
        };
        clock.set_wall_ms(t);
        let mut poll = due_wall.is_some_and(|d| d <= t);
        while rows.get(next_row).is_some_and(|r| r.ts <= t) {
            match driver.record(location(&rows[next_row]))? {
                RecordOutcome::Recorded { seq } => {
                    recorded.push((seq, rows[next_row].ts));
                    poll = true;
                }
                RecordOutcome::Dropped { reason } => {
                    *dropped.entry(drop_name(&reason).into()).or_default() += 1;
                }
            }
            next_row += 1;
        }
        if poll {
            due_mono = driver.poll_uploads().await?.next_due_ms;
        }
        if t == next_sample {
            let newest_input = rows[next_row.saturating_sub(1)].ts;
            sampler.sample(
                t,
                newest_input,
                server_latest_ts(&srv.engine, DRIVER).await?,
            );
            next_sample += 1_000;
        }
        if let Some(rx) = watcher.as_mut() {
            while let Some(f) = rx.try_frame() {
                if f.text.contains(&format!("\"driver_id\":\"{DRIVER}\"")) {
                    down.0 += 1;
                    down.1 += ws_frame_bytes(f.text.len());
                    let binary = f.binary().map_or(f.text.len(), |b| b.len());
                    down.2 += ws_frame_bytes(binary);
                    // Lean: what `Conn::outgoing` writes (the server's own
                    // shared lean bytes); other frames as MessagePack.
                    down.3 += ws_frame_bytes(match f.lean_for(lean_base.as_ref()) {
                        Some(lean) => {
                            lean_base = Some(f.clone());
                            locations.0 += 1;
                            locations.1 += ws_frame_bytes(f.text.len());
                            locations.2 += ws_frame_bytes(binary);
                            locations.3 += ws_frame_bytes(lean.len());
                            lean.len()
                        }
                        None => binary,
                    });
                }
            }
        }
        if next_row >= rows.len() && next_sample > end {
            break;
        }
    }
    // End of shift: the app flushes; drain what is left.
    driver.flush();
    for _ in 0..1_000 {
        if driver.stats()?.pending == 0 {
            break;
        }
        let p = driver.poll_uploads().await?;
        let now = clock.monotonic_ms();
        let next = p.next_due_ms.unwrap_or(now + 1_000).max(now + 1);
        clock.advance(Duration::from_millis(next - now));
    }
    let trail = srv.engine.trail(DRIVER, 0, usize::MAX).await?;
    let mut sdk = Figures {
        fixes_in: rows.len(),
        fixes_recorded: recorded.len(),
        ..Figures::default()
    };
    let on_server: HashSet<u64> = trail.iter().map(|f| f.seq).collect();
    sdk.fixes_uploaded = on_server.len();
    sdk.lost = recorded
        .iter()
        .filter(|(seq, _)| !on_server.contains(seq))
        .count();
    sdk.duplicated = duplicates(&trail);
    let sent = transport.log.lock().clone();
    sdk.uploads = sent.len();
    sdk.uploads_per_hour = sent.len() as f64 / duration_h;
    sdk.bytes_up = sent.iter().map(|s| s.bytes).sum();
    sdk.bytes_up_msgpack = sent.iter().map(|s| s.msgpack_bytes).sum();
    sdk.bytes_up_msgpack_gzip = sent.iter().map(|s| s.msgpack_gzip_bytes).sum();
    sdk.bytes_up_json_gzip_all = sent.iter().map(|s| s.json_gzip_bytes).sum();
    (
        sdk.ws_frames_down,
        sdk.ws_bytes_down_json,
        sdk.ws_bytes_down_msgpack,
        sdk.ws_bytes_down_lean,
    ) = down;
    (
        sdk.ws_location_frames_down,
        sdk.ws_location_bytes_down_json,
        sdk.ws_location_bytes_down_msgpack,
        sdk.ws_location_bytes_down_lean,
    ) = locations;
    sdk.radio_energy_j = radio_energy_j(&sent);
    sampler.finish(&mut sdk);
    driver.shutdown().await;
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);

    let baseline = baseline(&srv, &rows).await?;
    Ok(Report {
        trace: args
            .trace
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        mode: if args.watched { "watched" } else { "unwatched" },
        preset: format!("{:?}", args.preset).to_lowercase(),
        seed: args.seed,
        duration_h,
        sdk,
        dropped,
        baseline,
        wall_time_s: started.elapsed().as_secs_f64(),
    })
}

/// Trail entries that repeat a seq or repeat a fix (same ts and position
/// under another seq: a fix recorded twice).
fn duplicates(trail: &[Fix]) -> usize {
    let mut seqs = HashSet::new();
    let mut fixes = HashSet::new();
    trail
        .iter()
        .filter(|f| {
            let fresh_seq = seqs.insert(f.seq);
            let fresh_fix = fixes.insert((f.ts, f.lat.to_bits(), f.lon.to_bits()));
            !(fresh_seq && fresh_fix)
        })
        .count()
}

/// The seed architecture: every 5 s, POST the newest position as a
/// single-fix batch (no buffer, no batching, no retry).
async fn baseline(srv: &Server, rows: &[Row]) -> anyhow::Result<Figures> {
    let clock = ManualClock::new(rows[0].ts);
    srv.clock.follow(&clock);
    let transport = RouterTransport {
        router: srv.router.clone(),
        clock: clock.clone(),
        log: Mutex::new(Vec::new()),
    };
    let token = token(&srv.keys, BASELINE_DRIVER, Role::Driver)?;
    let first = rows[0].ts;
    let last = rows[rows.len() - 1].ts;
    let mut sampler = Sampler::new();
    let mut next_row = 0usize;
    let mut seq = 0u64;
    let mut sent_rows = HashSet::new();
    let mut t = first;
    while t <= last {
        clock.set_wall_ms(t);
        while rows.get(next_row + 1).is_some_and(|r| r.ts <= t) {
            next_row += 1;
        }
        if (t - first) % BASELINE_PERIOD_MS == 0 {
            let r = rows[next_row];
            seq += 1;
            let mut fix = Fix::new(seq, r.ts, r.lat, r.lon);
            fix.speed_mps = r.speed;
            fix.altitude_m = r.alt;
            fix.accuracy_m = r.acc;
            let body = serde_json::to_vec(&IngestRequest {
                silence: None,
                device_id: "phone-1".into(),
                fixes: vec![fix],
            })?;
            let resp = transport
                .send(HttpRequest {
                    method: "POST".into(),
                    url: format!("http://replay.invalid/v1/drivers/{BASELINE_DRIVER}/locations"),
                    headers: vec![
                        HttpHeader::new("content-type", "application/json"),
                        HttpHeader::new("authorization", format!("Bearer {token}")),
                    ],
                    body,
                })
                .await?;
            if resp.status != 200 {
                bail!(
                    "baseline POST refused: {} {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.body)
                );
            }
            sent_rows.insert(next_row);
        }
        sampler.sample(
            t,
            rows[next_row].ts,
            server_latest_ts(&srv.engine, BASELINE_DRIVER).await?,
        );
        t += 1_000;
    }
    let sent = transport.log.lock().clone();
    let duration_h = ((last - first) as f64 / 3_600_000.0).max(1.0 / 3600.0);
    let mut f = Figures {
        fixes_in: rows.len(),
        fixes_recorded: seq as usize,
        // Distinct trace rows that ever reached the server.
        fixes_uploaded: sent_rows.len(),
        uploads: sent.len(),
        uploads_per_hour: sent.len() as f64 / duration_h,
        bytes_up: sent.iter().map(|s| s.bytes).sum(),
        radio_energy_j: radio_energy_j(&sent),
        lost: 0,
        duplicated: 0,
        ..Figures::default()
    };
    sampler.finish(&mut f);
    Ok(f)
}

#[derive(clap::Args, Debug)]
pub struct BufferArgs {
    /// Fixes to insert.
    #[arg(long, default_value_t = 200_000)]
    fixes: usize,
    /// Fixes per transaction.
    #[arg(long, default_value_t = 1_000)]
    batch: usize,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct BufferReport {
    fixes: usize,
    batch: usize,
    seconds: f64,
    fixes_per_s: f64,
    single_commit_fixes_per_s: f64,
    path: String,
}

/// Inserts fixes into a fresh buffer in batched transactions (the same
/// `Buffer::append` the driver uses; WAL, synchronous=NORMAL), then measures
/// one-commit-per-fix for context.
pub async fn run_buffer(args: BufferArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("waypost-bufbench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("buffer.db");
    let _ = std::fs::remove_file(&path);
    let now = waypost_server::now_ms();
    let opts = BufferOptions {
        max_fixes: (args.fixes as u64).max(1) * 2,
        ..BufferOptions::default()
    };
    let mut buffer = Buffer::open(&path, opts.clone(), now)?;
    let make = |i: usize| {
        let mut f = Fix::new(0, now + i as i64, 52.0 + i as f64 * 1e-6, 13.0);
        f.accuracy_m = Some(5.0);
        f.speed_mps = Some(10.0);
        f.battery = Some(0.8);
        f.charging = Some(false);
        f
    };
    let batch = args.batch.max(1);
    let t0 = Instant::now();
    let mut i = 0;
    while i < args.fixes {
        let n = batch.min(args.fixes - i);
        let fixes: Vec<Fix> = (i..i + n).map(make).collect();
        buffer.append(&fixes, now)?;
        i += n;
    }
    let seconds = t0.elapsed().as_secs_f64();
    let single = 2_000usize;
    let t1 = Instant::now();
    for j in 0..single {
        buffer.append(&[make(args.fixes + j)], now)?;
    }
    let single_s = t1.elapsed().as_secs_f64();
    drop(buffer);
    let report = BufferReport {
        fixes: args.fixes,
        batch,
        seconds,
        fixes_per_s: args.fixes as f64 / seconds,
        single_commit_fixes_per_s: single as f64 / single_s,
        path: dir.display().to_string(),
    };
    let _ = std::fs::remove_dir_all(&dir);
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic 20-minute ride at ~8 m/s, 1 Hz, with a 3-minute stop.
    fn synthetic_trace() -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("waypost-replay-test-{}.csv", std::process::id()));
        let mut csv = String::from("ts_ms,lat,lon,alt_m,speed_mps,accuracy_m\n");
        let mut lat = 52.0;
        for i in 0..1200i64 {
            let moving = !(600..780).contains(&i);
            if moving {
                lat += 8.0 / 111_195.0;
            }
            let speed = if moving { "8.0" } else { "0.0" };
            csv.push_str(&format!(
                "{},{lat:.8},13.0,,{speed},\n",
                1_600_000_000_000 + i * 1000
            ));
        }
        std::fs::write(&path, csv).unwrap();
        path
    }

    fn args(trace: &std::path::Path, watched: bool) -> Args {
        Args {
            trace: trace.to_owned(),
            watched,
            unwatched: !watched,
            preset: PresetArg::Balanced,
            seed: 1,
            battery: 0.8,
            json: true,
        }
    }

    #[tokio::test]
    async fn replay_meets_the_targets_on_a_synthetic_ride() {
        let trace = synthetic_trace();
        let u = simulate(&args(&trace, false)).await.unwrap();
        let w = simulate(&args(&trace, true)).await.unwrap();
        let _ = std::fs::remove_file(&trace);
        for r in [&u, &w] {
            assert_eq!((r.sdk.lost, r.sdk.duplicated), (0, 0));
            assert_eq!(r.sdk.fixes_uploaded, r.sdk.fixes_recorded);
            assert_eq!(r.baseline.uploads, 240, "one POST every 5 s for 20 min");
        }
        // Unwatched: first upload, one every 120 s, the final flush.
        assert!(u.sdk.uploads <= 12, "{} uploads", u.sdk.uploads);
        assert!(u.sdk.radio_energy_j * 5.0 < u.baseline.radio_energy_j);
        assert!(u.dropped.get("throttled").copied().unwrap_or(0) > 600);
        // Watched: every 5 s, staleness within the target.
        assert!(w.sdk.staleness_p95_s.unwrap() <= 6.0, "{:?}", w.sdk);
        assert!(w.sdk.fixes_recorded > 1000);
    }

    #[test]
    fn isolated_upload_costs_about_eleven_joules() {
        let one = radio_energy_j(&[Sent {
            wall_ms: 0,
            bytes: 200,
            msgpack_bytes: 0,
            msgpack_gzip_bytes: 0,
            json_gzip_bytes: 0,
        }]);
        assert!((10.5..11.0).contains(&one), "{one}");
        let close: Vec<Sent> = (0..10)
            .map(|i| Sent {
                wall_ms: i * 5_000,
                bytes: 200,
                msgpack_bytes: 0,
                msgpack_gzip_bytes: 0,
                json_gzip_bytes: 0,
            })
            .collect();
        let e = radio_energy_j(&close);
        // 0.3 J + 9 × 5 s + 11 s of tail at 0.95 W.
        assert!((e - (0.3 + 0.95 * 56.0)).abs() < 0.1, "{e}");
    }

    #[test]
    fn duplicates_count_repeated_seqs_and_repeated_fixes() {
        let a = Fix::new(1, 10, 1.0, 2.0);
        let b = Fix::new(2, 20, 1.0, 2.0);
        let a_again = Fix::new(3, 10, 1.0, 2.0);
        assert_eq!(duplicates(&[a.clone(), b.clone()]), 0);
        assert_eq!(duplicates(&[a.clone(), b, a_again]), 1);
        assert_eq!(duplicates(&[a.clone(), a]), 1);
    }
}
