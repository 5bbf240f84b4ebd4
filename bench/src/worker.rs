//! Subscriber processes. The coordinating subcommand forks this binary as
//! `waypost-bench worker` (one process holds at most ~18k sockets: the hard
//! open-files limit is 20,000 per process) and talks to it in JSON lines:
//!
//! * coordinator -> worker (stdin): the [`Config`] as the first line, then
//!   `s K NS` (update K was sent at monotonic NS), `f K` (update K was not
//!   accepted), `report` (send the statistics) and `quit`.
//! * worker -> coordinator (stdout): `{"ev":"connected",..}` once every
//!   connection attempt finished, `{"ev":"report",..}` on request.
//!
//! Subscriber `i` follows driver `i mod D`, connects to server
//! `floor(i / D) mod T` (so each driver's watchers are spread over every
//! server) from source address `i mod S`. Update `k` of the publisher goes to
//! driver `k mod D` with seq `floor(k / D) + 1`, so a subscriber recovers `k`
//! from (driver, seq) and looks up the send time the coordinator streamed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use rand::Rng;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    classify, mono_ns, on_open, subscribe_path, ws_connect_as, Frame, Histogram, HistogramSnapshot,
    Server, SubIdentity, Target, Ws,
};

#[derive(clap::Args, Debug)]
pub struct Args {}

/// How subscribers are spread over processes and source addresses.
#[derive(clap::Args, Debug, Clone)]
pub struct SpreadArgs {
    /// Subscriber processes (default: one per 10,000 connections).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Source addresses 127.0.0.2.. to connect from (ephemeral ports are per address).
    #[arg(long, default_value_t = 4)]
    pub source_ips: usize,
    /// Connection attempts in flight, all workers together.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// Seconds for one connection (handshake + subscription ack).
    #[arg(long, default_value_t = 15)]
    pub connect_timeout: u64,
}

/// What the subscribers of a run look like (apart from spreading).
pub struct Plan<'a> {
    pub common: &'a crate::common::CommonArgs,
    pub servers: Vec<Server>,
    pub subscribers: usize,
    pub drivers: usize,
    pub run_id: &'a str,
    pub max_updates: usize,
    pub measured_from: usize,
    pub reconnect: Option<Reconnect>,
}

impl SpreadArgs {
    /// One config per worker process.
    pub fn configs(&self, plan: &Plan<'_>) -> Vec<Config> {
        let workers = self
            .workers
            .unwrap_or_else(|| plan.subscribers.div_ceil(10_000))
            .max(1);
        let parts = split(plan.subscribers, workers);
        let n = parts.len().max(1);
        parts
            .into_iter()
            .map(|(first, count)| Config {
                target: plan.common.target,
                servers: plan.servers.clone(),
                first,
                count,
                drivers: plan.drivers.max(1),
                driver_prefix: driver_prefix(plan.run_id),
                user_prefix: format!("b{}-u", plan.run_id),
                jwt_secret: plan.common.jwt_secret.clone(),
                source_ips: crate::common::source_ips(self.source_ips),
                connect_concurrency: self.connect_concurrency.div_ceil(n).max(1),
                connect_timeout_ms: self.connect_timeout * 1000,
                max_updates: plan.max_updates,
                measured_from: plan.measured_from,
                reconnect: plan.reconnect,
                encoding: plan.common.encoding,
            })
            .collect()
    }
}

/// Driver ids are `{prefix}{index}`.
pub fn driver_prefix(run_id: &str) -> String {
    format!("b{run_id}-d")
}

/// How a disconnected client comes back (storm mode).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub enum Reconnect {
    /// Waypost's policy (`waypost_protocol::backoff::BackoffPolicy`, full
    /// jitter, shared by the SDK and the server): attempt n waits
    /// uniform(0, min(cap, base * 2^n)).
    FullJitter { base_ms: u64, cap_ms: u64 },
    /// socket.io-client defaults: 1000 ms * 2^n, +-50 % jitter, at most 5000 ms.
    SocketIoClient,
    /// reconnecting-websocket defaults: first delay uniform(1, 5) s per
    /// client, then x1.3 per failed attempt, at most 10 s.
    ReconnectingWebsocket,
}

impl Reconnect {
    /// Delay before reconnect attempt `n` (0-based) of a client whose
    /// per-client random minimum is `min_ms` (reconnecting-websocket only).
    pub fn delay_ms(self, n: u32, min_ms: f64, rng: &mut impl Rng) -> u64 {
        match self {
            Reconnect::FullJitter { base_ms, cap_ms } => {
                let policy = waypost_protocol::backoff::BackoffPolicy {
                    base: Duration::from_millis(base_ms),
                    cap: Duration::from_millis(cap_ms),
                    max_elapsed: None,
                };
                policy.jittered(n, rng.random()).as_millis() as u64
            }
            Reconnect::SocketIoClient => {
                let ms = 1000.0 * 2f64.powi(n.min(30) as i32);
                let r: f64 = rng.random();
                let dev = (r * 0.5 * ms).floor();
                let ms = if (r * 10.0).floor() as u64 & 1 == 0 {
                    ms - dev
                } else {
                    ms + dev
                };
                ms.min(5000.0) as u64
            }
            Reconnect::ReconnectingWebsocket => {
                (min_ms * 1.3f64.powi(n.min(30) as i32)).min(10_000.0) as u64
            }
        }
    }
}

/// Everything a worker needs; sent as its first stdin line.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Config {
    pub target: Target,
    pub servers: Vec<Server>,
    /// Global index of this worker's first subscriber, and how many.
    pub first: usize,
    pub count: usize,
    pub drivers: usize,
    pub driver_prefix: String,
    pub user_prefix: String,
    pub jwt_secret: String,
    pub source_ips: Vec<Ipv4Addr>,
    /// Connection attempts in flight in this worker.
    pub connect_concurrency: usize,
    pub connect_timeout_ms: u64,
    /// Updates the publisher may send (size of the send-time table).
    pub max_updates: usize,
    /// First update counted in the statistics (warm-up before it).
    pub measured_from: usize,
    /// Storm mode: reconnect after a disconnect with this policy.
    pub reconnect: Option<Reconnect>,
    /// WebSocket encoding.
    #[serde(default)]
    pub encoding: crate::common::Encoding,
}

struct Shared {
    cfg: Config,
    send_ns: Vec<AtomicU64>,
    recv_count: Vec<AtomicU32>,
    /// Subscribed connections per driver (index = driver).
    subs_per_driver: Vec<AtomicU32>,
    hist: Histogram,
    pending: Mutex<Vec<(u32, u64)>>,
    connected: AtomicU64,
    subscribed: AtomicU64,
    failed: AtomicU64,
    disconnects: AtomicU64,
    duplicates: AtomicU64,
    reordered: AtomicU64,
    unexpected: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Storm: (monotonic ns when resubscribed, attempts) per client.
    resubscribed: Mutex<Vec<(u64, u32)>>,
    /// Server pings received, by [`PING_BUCKET_NS`] of the monotonic clock
    /// (at most [`MAX_PING_BUCKETS`] buckets): shows whether pings come in
    /// bursts.
    pings: Mutex<BTreeMap<u64, u32>>,
    /// Location frames received and their WebSocket payload bytes (what
    /// the encoding costs on the wire per delivery).
    location_frames: AtomicU64,
    location_payload_bytes: AtomicU64,
}

/// Width of a ping-arrival bucket.
pub const PING_BUCKET_NS: u64 = 10_000_000;
const MAX_PING_BUCKETS: usize = 100_000;

impl Shared {
    fn on_ping(&self, now_ns: u64) {
        let mut pings = self.pings.lock();
        let bucket = now_ns / PING_BUCKET_NS;
        if pings.len() < MAX_PING_BUCKETS || pings.contains_key(&bucket) {
            *pings.entry(bucket).or_default() += 1;
        }
    }

    fn error(&self, kind: &str) {
        let key: String = kind.chars().take(80).collect();
        *self.errors.lock().entry(key).or_default() += 1;
    }

    /// Records one location frame received at `recv_ns`.
    fn on_location(
        &self,
        driver: &str,
        seq: u64,
        my_driver: usize,
        seen: &mut SeqWindow,
        recv_ns: u64,
    ) {
        let idx = driver
            .strip_prefix(self.cfg.driver_prefix.as_str())
            .and_then(|s| s.parse::<usize>().ok());
        let Some(idx) = idx.filter(|&i| i == my_driver) else {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        };
        match seen.insert(seq) {
            Seen::New => {}
            Seen::Late => {
                self.reordered.fetch_add(1, Ordering::Relaxed);
            }
            Seen::Duplicate => {
                self.duplicates.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let k = (seq as usize - 1) * self.cfg.drivers + idx;
        if k >= self.send_ns.len() {
            self.unexpected.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.recv_count[k].fetch_add(1, Ordering::Relaxed);
        if k < self.cfg.measured_from {
            return;
        }
        let sent = self.send_ns[k].load(Ordering::Acquire);
        if sent == 0 {
            // The send-time line is still in the pipe: resolve later.
            let mut p = self.pending.lock();
            if p.len() < 1_000_000 {
                p.push((k as u32, recv_ns));
            }
        } else {
            self.hist.record_us(recv_ns.saturating_sub(sent) / 1000);
        }
    }
}

/// The seqs one connection saw recently: tells duplicates from frames that
/// arrived out of order (both happen when a server dispatches concurrently).
#[derive(Default)]
pub struct SeqWindow {
    last: u64,
    /// Bit i set: seq `last - i` was seen.
    mask: u64,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Older than the newest seen but not seen before (or beyond the window).
    Late,
    Duplicate,
}

impl SeqWindow {
    pub fn insert(&mut self, seq: u64) -> Seen {
        if seq > self.last {
            let shift = seq - self.last;
            self.mask = if shift >= 64 { 0 } else { self.mask << shift };
            self.mask |= 1;
            self.last = seq;
            return Seen::New;
        }
        let d = self.last - seq;
        if d >= 64 {
            return Seen::Late;
        }
        if self.mask & (1 << d) != 0 {
            return Seen::Duplicate;
        }
        self.mask |= 1 << d;
        Seen::Late
    }
}

/// A MessagePack frame read as the JSON text it stands for (the classifier
/// reads text); other messages and errors as they are.
fn as_text<E>(read: Result<Message, E>) -> Result<Message, E> {
    match read {
        Ok(Message::Binary(b)) => Ok(match waypost_protocol::msgpack::msgpack_to_json(&b) {
            Ok(json) => Message::text(json),
            Err(_) => Message::Binary(b),
        }),
        other => other,
    }
}

/// Opens one subscriber connection and waits for the subscription ack.
async fn connect_and_subscribe(sh: &Shared, i: usize) -> Result<Ws, String> {
    let cfg = &sh.cfg;
    let d = i % cfg.drivers;
    let driver = format!("{}{d}", cfg.driver_prefix);
    let user = format!("{}{i}", cfg.user_prefix);
    let server = &cfg.servers[(i / cfg.drivers) % cfg.servers.len()];
    let source = cfg.source_ips[i % cfg.source_ips.len()];
    let who = SubIdentity {
        user: &user,
        driver: &driver,
        jwt_secret: &cfg.jwt_secret,
    };
    let path = subscribe_path(cfg.target, &who);
    let attempt = async {
        let mut ws = ws_connect_as(server, source, &path, cfg.encoding)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        sh.connected.fetch_add(1, Ordering::Relaxed);
        if let Some(first) = on_open(cfg.target, &driver) {
            ws.send(cfg.encoding.message(first))
                .await
                .map_err(|e| format!("send: {e}"))?;
        }
        loop {
            match ws.next().await.map(as_text) {
                Some(Ok(Message::Text(t))) => match classify(cfg.target, &t, &user, &driver) {
                    Frame::Subscribed => return Ok(ws),
                    Frame::Refused => return Err(format!("refused: {}", &t[..t.len().min(60)])),
                    Frame::Reply(r) => ws
                        .send(cfg.encoding.message(r))
                        .await
                        .map_err(|e| format!("send: {e}"))?,
                    Frame::Location { .. } | Frame::Other => {}
                },
                Some(Ok(Message::Close(c))) => {
                    return Err(format!("closed before subscribed: {c:?}"));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("closed before subscribed".into()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_millis(cfg.connect_timeout_ms), attempt).await {
        Ok(r) => r,
        Err(_) => Err("connect timeout".into()),
    }
}

/// Reads frames until the connection ends or `stop` flips. Returns true when
/// the server ended the connection (false: we were told to stop).
async fn read_loop(sh: &Shared, i: usize, ws: &mut Ws, stop: &mut watch::Receiver<bool>) -> bool {
    let cfg = &sh.cfg;
    let my_driver = i % cfg.drivers;
    let user = format!("{}{i}", cfg.user_prefix);
    let driver = format!("{}{my_driver}", cfg.driver_prefix);
    let mut seen = SeqWindow::default();
    loop {
        tokio::select! {
            msg = ws.next() => {
                let now = mono_ns();
                let payload = match &msg {
                    Some(Ok(Message::Text(t))) => t.len(),
                    Some(Ok(Message::Binary(b))) => b.len(),
                    _ => 0,
                };
                match msg.map(as_text) {
                    Some(Ok(Message::Text(t))) => match classify(cfg.target, &t, &user, &driver) {
                        Frame::Location { driver: d, seq } => {
                            sh.location_frames.fetch_add(1, Ordering::Relaxed);
                            sh.location_payload_bytes.fetch_add(payload as u64, Ordering::Relaxed);
                            sh.on_location(d, seq, my_driver, &mut seen, now);
                        }
                        Frame::Reply(r) => {
                            if ws.send(cfg.encoding.message(r)).await.is_err() {
                                return true;
                            }
                        }
                        Frame::Refused => sh.error("error frame while subscribed"),
                        Frame::Subscribed | Frame::Other => {}
                    },
                    // tungstenite queues the pong itself.
                    Some(Ok(Message::Ping(_))) => sh.on_ping(now),
                    Some(Ok(Message::Close(_))) | None => return true,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return true,
                }
            }
            _ = stop.changed() => return false,
        }
    }
}

/// One subscriber for the whole run.
async fn subscriber(
    sh: Arc<Shared>,
    i: usize,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let permit = gate.acquire_owned().await;
    let first = connect_and_subscribe(&sh, i).await;
    drop(permit);
    let mut ws = match first {
        Ok(ws) => ws,
        Err(e) => {
            sh.failed.fetch_add(1, Ordering::Relaxed);
            sh.error(&e);
            return;
        }
    };
    sh.subscribed.fetch_add(1, Ordering::Relaxed);
    sh.subs_per_driver[i % sh.cfg.drivers].fetch_add(1, Ordering::Relaxed);
    let Some(policy) = sh.cfg.reconnect else {
        if read_loop(&sh, i, &mut ws, &mut stop).await {
            sh.disconnects.fetch_add(1, Ordering::Relaxed);
        }
        let _ = ws.close(None).await;
        return;
    };
    // Storm mode: come back after every disconnect, as the client library would.
    let min_ms = 1000.0 + rand::rng().random::<f64>() * 4000.0;
    let mut resubscribed_once = false;
    loop {
        if !read_loop(&sh, i, &mut ws, &mut stop).await {
            let _ = ws.close(None).await;
            return;
        }
        sh.disconnects.fetch_add(1, Ordering::Relaxed);
        let mut attempt = 0u32;
        ws = loop {
            let delay = policy.delay_ms(attempt, min_ms, &mut rand::rng());
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(delay)) => {}
                _ = stop.changed() => return,
            }
            attempt += 1;
            match connect_and_subscribe(&sh, i).await {
                Ok(ws) => break ws,
                Err(e) => {
                    if *stop.borrow() {
                        return;
                    }
                    if attempt > 1000 {
                        sh.error("gave up after 1000 attempts");
                        return;
                    }
                    sh.error(&format!("reconnect: {e}"));
                }
            }
        };
        if !resubscribed_once {
            resubscribed_once = true;
            sh.resubscribed.lock().push((mono_ns(), attempt));
        }
    }
}

/// `waypost-bench worker`: runs until `quit` or stdin closes.
pub async fn run(_args: Args) -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = lines
        .next_line()
        .await?
        .context("worker: no config on stdin")?;
    let cfg: Config = serde_json::from_str(&first).context("worker: bad config")?;
    if cfg.drivers == 0 || cfg.servers.is_empty() || cfg.source_ips.is_empty() {
        bail!("worker: drivers, servers and source addresses must be non-empty");
    }
    let sh = Arc::new(Shared {
        send_ns: (0..cfg.max_updates).map(|_| AtomicU64::new(0)).collect(),
        recv_count: (0..cfg.max_updates).map(|_| AtomicU32::new(0)).collect(),
        subs_per_driver: (0..cfg.drivers).map(|_| AtomicU32::new(0)).collect(),
        hist: Histogram::new(),
        pending: Mutex::new(Vec::new()),
        connected: AtomicU64::new(0),
        subscribed: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        reordered: AtomicU64::new(0),
        unexpected: AtomicU64::new(0),
        errors: Mutex::new(BTreeMap::new()),
        resubscribed: Mutex::new(Vec::new()),
        pings: Mutex::new(BTreeMap::new()),
        location_frames: AtomicU64::new(0),
        location_payload_bytes: AtomicU64::new(0),
        cfg,
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let gate = Arc::new(Semaphore::new(sh.cfg.connect_concurrency.max(1)));
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in sh.cfg.first..sh.cfg.first + sh.cfg.count {
        tasks.spawn(subscriber(
            Arc::clone(&sh),
            i,
            Arc::clone(&gate),
            stop_rx.clone(),
        ));
    }
    // Report once every attempt finished (all permits back, counts add up).
    {
        let sh = Arc::clone(&sh);
        tokio::spawn(async move {
            loop {
                let done =
                    sh.subscribed.load(Ordering::Relaxed) + sh.failed.load(Ordering::Relaxed);
                if done >= sh.cfg.count as u64 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            emit(&json!({
                "ev": "connected",
                "connected": sh.connected.load(Ordering::Relaxed),
                "subscribed": sh.subscribed.load(Ordering::Relaxed),
                "failed": sh.failed.load(Ordering::Relaxed),
                "connect_ms": started.elapsed().as_millis() as u64,
                "errors": *sh.errors.lock(),
            }));
        });
    }
    let mut failed_updates = std::collections::HashSet::new();
    while let Some(line) = lines.next_line().await? {
        let mut parts = line.split_whitespace();
        match parts.next() {
            Some("s") => {
                let k: usize = parts
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(usize::MAX);
                let ns: u64 = parts.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                if let Some(slot) = sh.send_ns.get(k) {
                    slot.store(ns, Ordering::Release);
                }
            }
            Some("f") => {
                if let Some(k) = parts.next().and_then(|v| v.parse::<usize>().ok()) {
                    failed_updates.insert(k);
                }
            }
            Some("report") => emit(&report(&sh, &failed_updates)),
            Some("quit") => break,
            _ => {}
        }
    }
    let _ = stop_tx.send(true);
    // Close politely but never wait long.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

fn report(sh: &Shared, failed: &std::collections::HashSet<usize>) -> Value {
    // Late send times: resolve receipts that arrived before their line.
    let pending = std::mem::take(&mut *sh.pending.lock());
    let mut unresolved = 0u64;
    for (k, recv) in pending {
        let sent = sh.send_ns[k as usize].load(Ordering::Acquire);
        if sent == 0 {
            unresolved += 1;
        } else {
            sh.hist.record_us(recv.saturating_sub(sent) / 1000);
        }
    }
    let d = sh.cfg.drivers;
    let (mut expected, mut received, mut extra, mut late_failed) = (0u64, 0u64, 0u64, 0u64);
    // Updates nobody here received although someone here follows the driver:
    // the coordinator intersects these over workers (never broadcast).
    let mut silent: Vec<usize> = Vec::new();
    for k in sh.cfg.measured_from..sh.send_ns.len() {
        if sh.send_ns[k].load(Ordering::Acquire) == 0 {
            continue;
        }
        let got = u64::from(sh.recv_count[k].load(Ordering::Relaxed));
        if failed.contains(&k) {
            late_failed += got;
            continue;
        }
        let want = u64::from(sh.subs_per_driver[k % d].load(Ordering::Relaxed));
        if want > 0 && got == 0 && silent.len() < 1_000_000 {
            silent.push(k);
        }
        expected += want;
        received += got.min(want);
        extra += got.saturating_sub(want);
    }
    let resub = sh.resubscribed.lock().clone();
    json!({
        "ev": "report",
        "subscribed": sh.subscribed.load(Ordering::Relaxed),
        "expected": expected,
        "received": received,
        "extra": extra,
        "received_for_failed_posts": late_failed,
        "duplicates": sh.duplicates.load(Ordering::Relaxed),
        "reordered": sh.reordered.load(Ordering::Relaxed),
        "silent_updates": silent,
        "unexpected": sh.unexpected.load(Ordering::Relaxed) + unresolved,
        "disconnects": sh.disconnects.load(Ordering::Relaxed),
        "latency": sh.hist.snapshot(),
        "errors": *sh.errors.lock(),
        "resubscribed": resub,
        "pings": sh.pings.lock().iter().map(|(b, n)| [*b, u64::from(*n)]).collect::<Vec<_>>(),
        "location_frames": sh.location_frames.load(Ordering::Relaxed),
        "location_payload_bytes": sh.location_payload_bytes.load(Ordering::Relaxed),
    })
}

fn emit(v: &Value) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

/// The coordinator's handle on its worker processes.
pub struct Pool {
    workers: Vec<Handle>,
}

struct Handle {
    child: tokio::process::Child,
    tx: mpsc::UnboundedSender<String>,
    rx: mpsc::UnboundedReceiver<Value>,
}

/// Sends lines to every worker; cheap to clone into request tasks.
#[derive(Clone)]
pub struct Broadcast(Vec<mpsc::UnboundedSender<String>>);

impl Broadcast {
    pub fn send(&self, line: &str) {
        for tx in &self.0 {
            let _ = tx.send(line.to_owned());
        }
    }
}

/// Splits `n` subscribers into `workers` contiguous ranges.
pub fn split(n: usize, workers: usize) -> Vec<(usize, usize)> {
    let w = workers.clamp(1, n.max(1));
    (0..w)
        .map(|j| {
            let a = n * j / w;
            let b = n * (j + 1) / w;
            (a, b - a)
        })
        .filter(|&(_, c)| c > 0)
        .collect()
}

impl Pool {
    /// Forks one worker per config.
    pub fn spawn(configs: Vec<Config>) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating own executable")?;
        let mut workers = Vec::new();
        for cfg in configs {
            let mut child = tokio::process::Command::new(&exe)
                .arg("worker")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .context("forking a worker")?;
            let mut stdin = child.stdin.take().context("worker stdin")?;
            let stdout = child.stdout.take().context("worker stdout")?;
            let (tx, mut lines_rx) = mpsc::unbounded_channel::<String>();
            tx.send(serde_json::to_string(&cfg)?)?;
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(l) = lines_rx.recv().await {
                    buf.clear();
                    buf.extend_from_slice(l.as_bytes());
                    buf.push(b'\n');
                    while let Ok(more) = lines_rx.try_recv() {
                        buf.extend_from_slice(more.as_bytes());
                        buf.push(b'\n');
                    }
                    if stdin.write_all(&buf).await.is_err() || stdin.flush().await.is_err() {
                        break;
                    }
                }
            });
            let (vtx, rx) = mpsc::unbounded_channel();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(l)) = lines.next_line().await {
                    if let Ok(v) = serde_json::from_str::<Value>(&l) {
                        if vtx.send(v).is_err() {
                            break;
                        }
                    }
                }
            });
            workers.push(Handle { child, tx, rx });
        }
        Ok(Self { workers })
    }

    /// A cloneable handle that sends lines to every worker.
    pub fn sender(&self) -> Broadcast {
        Broadcast(self.workers.iter().map(|w| w.tx.clone()).collect())
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().filter_map(|w| w.child.id()).collect()
    }

    /// Sends a line to every worker.
    pub fn broadcast(&self, line: &str) {
        for w in &self.workers {
            let _ = w.tx.send(line.to_owned());
        }
    }

    /// Waits for one event `ev` from every worker (bounded by `timeout`).
    pub async fn collect(&mut self, ev: &str, timeout: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut out = Vec::new();
        for (j, w) in self.workers.iter_mut().enumerate() {
            loop {
                match tokio::time::timeout_at(deadline, w.rx.recv()).await {
                    Ok(Some(v)) if v["ev"] == ev => {
                        out.push(v);
                        break;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => bail!("worker {j} exited before sending {ev:?}"),
                    Err(_) => bail!("worker {j} sent no {ev:?} within {timeout:?}"),
                }
            }
        }
        Ok(out)
    }

    /// Tells every worker to close its connections and waits (bounded).
    pub async fn quit(mut self) {
        self.broadcast("quit");
        for w in &mut self.workers {
            if tokio::time::timeout(Duration::from_secs(10), w.child.wait())
                .await
                .is_err()
            {
                let _ = w.child.kill().await;
            }
        }
    }
}

/// Sums the `connected` events of all workers.
pub fn merge_connected(events: &[Value]) -> Value {
    let sum = |k: &str| {
        events
            .iter()
            .map(|e| e[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let max_ms = events
        .iter()
        .map(|e| e["connect_ms"].as_u64().unwrap_or(0))
        .max()
        .unwrap_or(0);
    json!({
        "connected": sum("connected"),
        "subscribed": sum("subscribed"),
        "failed": sum("failed"),
        "connect_s": max_ms as f64 / 1000.0,
        "errors": merge_errors(events),
    })
}

pub fn merge_errors(events: &[Value]) -> Value {
    let mut all: BTreeMap<String, u64> = BTreeMap::new();
    for e in events {
        if let Some(m) = e["errors"].as_object() {
            for (k, v) in m {
                *all.entry(k.clone()).or_default() += v.as_u64().unwrap_or(0);
            }
        }
    }
    json!(all)
}

/// Bytes of one server-to-client WebSocket frame with a payload of `len`
/// bytes (RFC 6455: 2-byte header, plus 2 or 8 bytes of extended length;
/// server frames are not masked).
pub fn ws_frame_len(len: u64) -> u64 {
    len + match len {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    }
}

/// Location frames received by all workers and their mean WebSocket
/// payload and wire bytes (payload + frame header, assuming the frames
/// of one run are all under or all over 125 bytes, as location frames are).
pub fn merge_location_bytes(reports: &[Value]) -> Value {
    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let frames = sum("location_frames");
    let payload = sum("location_payload_bytes");
    if frames == 0 {
        return json!({ "frames": 0, "payload_bytes_per_frame": 0.0, "wire_bytes_per_frame": 0.0 });
    }
    let mean = payload as f64 / frames as f64;
    let header = ws_frame_len(mean.round() as u64) - mean.round() as u64;
    json!({
        "frames": frames,
        "payload_bytes_per_frame": (mean * 10.0).round() / 10.0,
        "wire_bytes_per_frame": ((mean + header as f64) * 10.0).round() / 10.0,
    })
}

/// Server pings received by all workers, by 10 ms of arrival: how many,
/// over how many seconds, and the most in one 10 ms and in one 100 ms
/// (a ticker that pings all its connections in a few slots shows as
/// bursts of 1/slots of the connections).
pub fn merge_pings(reports: &[Value]) -> Value {
    let mut all: BTreeMap<u64, u64> = BTreeMap::new();
    for r in reports {
        for pair in r["pings"].as_array().into_iter().flatten() {
            if let (Some(b), Some(n)) = (pair[0].as_u64(), pair[1].as_u64()) {
                *all.entry(b).or_default() += n;
            }
        }
    }
    let total: u64 = all.values().sum();
    let max_10ms = all.values().copied().max().unwrap_or(0);
    let mut per_100ms: BTreeMap<u64, u64> = BTreeMap::new();
    for (b, n) in &all {
        *per_100ms.entry(b / 10).or_default() += n;
    }
    let span_s = match (all.keys().next(), all.keys().next_back()) {
        (Some(a), Some(b)) => (b - a + 1) as f64 * PING_BUCKET_NS as f64 / 1e9,
        _ => 0.0,
    };
    json!({
        "total": total,
        "span_s": (span_s * 10.0).round() / 10.0,
        "mean_per_100ms": if span_s > 0.0 { (total as f64 / span_s / 10.0 * 10.0).round() / 10.0 } else { 0.0 },
        "max_per_10ms": max_10ms,
        "max_per_100ms": per_100ms.values().copied().max().unwrap_or(0),
    })
}

/// Merges the latency histograms of worker reports.
pub fn merge_latency(reports: &[Value]) -> HistogramSnapshot {
    let mut h = HistogramSnapshot::default();
    for r in reports {
        if let Ok(s) = serde_json::from_value::<HistogramSnapshot>(r["latency"].clone()) {
            h.merge(&s);
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--encoding msgpack`: the server's binary frames are read as the JSON
    /// they stand for, so the `subscribed` ack (and locations) classify as
    /// with JSON text.
    #[test]
    fn msgpack_frames_classify_like_json() {
        let json =
            r#"{"type":"subscribed","channel":"tracking:d1","recovered":true,"high_seq":null}"#;
        let bin = waypost_protocol::msgpack::json_to_msgpack(json).unwrap();
        let read: Result<Message, ()> = Ok(Message::binary(bin));
        let Ok(Message::Text(t)) = as_text(read) else {
            panic!("binary frame not read as text");
        };
        let target = crate::common::Target::Waypost;
        assert_eq!(
            crate::common::classify(target, &t, "u1", "d1"),
            crate::common::Frame::Subscribed
        );
        let msg = crate::common::Encoding::Msgpack.message(json.to_owned());
        assert!(msg.is_binary(), "client frames go out as MessagePack");
    }

    #[test]
    fn location_bytes_add_the_frame_header() {
        assert_eq!(ws_frame_len(0), 2);
        assert_eq!(ws_frame_len(125), 127);
        assert_eq!(ws_frame_len(126), 130);
        assert_eq!(ws_frame_len(65_535), 65_539);
        assert_eq!(ws_frame_len(65_536), 65_546);
        let reports = [
            json!({ "location_frames": 2, "location_payload_bytes": 300 }),
            json!({ "location_frames": 2, "location_payload_bytes": 320 }),
        ];
        let m = merge_location_bytes(&reports);
        assert_eq!(m["frames"], 4);
        assert_eq!(m["payload_bytes_per_frame"], 155.0);
        assert_eq!(m["wire_bytes_per_frame"], 159.0);
        assert_eq!(merge_location_bytes(&[])["frames"], 0);
    }

    #[test]
    fn seq_window_tells_late_frames_from_duplicates() {
        let mut w = SeqWindow::default();
        assert_eq!(w.insert(1), Seen::New);
        assert_eq!(w.insert(3), Seen::New);
        assert_eq!(w.insert(2), Seen::Late);
        assert_eq!(w.insert(2), Seen::Duplicate);
        assert_eq!(w.insert(3), Seen::Duplicate);
        assert_eq!(w.insert(200), Seen::New);
        assert_eq!(w.insert(100), Seen::Late);
    }

    #[test]
    fn pings_merge_into_bursts_per_10_and_100_ms() {
        let a = json!({"pings": [[100, 3], [101, 1], [150, 2]]});
        let b = json!({"pings": [[100, 2]]});
        let m = merge_pings(&[a, b]);
        assert_eq!(m["total"], 8);
        assert_eq!(m["max_per_10ms"], 5);
        assert_eq!(m["max_per_100ms"], 6, "buckets 100 and 101 share a 100 ms");
        assert_eq!(m["span_s"], 0.5);
    }

    #[test]
    fn split_covers_every_subscriber_once() {
        let parts = split(10, 3);
        assert_eq!(parts, vec![(0, 3), (3, 3), (6, 4)]);
        assert_eq!(split(2, 8).len(), 2);
    }

    #[test]
    fn full_jitter_stays_under_the_exponential_ceiling() {
        let p = Reconnect::FullJitter {
            base_ms: 1000,
            cap_ms: 30_000,
        };
        let mut rng = rand::rng();
        for n in 0..10 {
            let ceil = (1000u64 << n).min(30_000);
            for _ in 0..100 {
                assert!(p.delay_ms(n, 0.0, &mut rng) <= ceil);
            }
        }
    }

    #[test]
    fn socketio_client_delay_is_within_half_of_the_base_and_capped() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            let d = Reconnect::SocketIoClient.delay_ms(0, 0.0, &mut rng);
            assert!((500..=1500).contains(&d), "{d}");
            assert!(Reconnect::SocketIoClient.delay_ms(5, 0.0, &mut rng) <= 5000);
        }
    }
}
