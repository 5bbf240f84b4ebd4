//! Helpers shared by the subcommands: targets and their wire protocols,
//! tokens, the shared monotonic clock, a mergeable latency histogram and
//! CPU/RSS sampling from `/proc`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// The server under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// The Waypost server (`/v1/ws`, `/v1/drivers/{id}/locations`).
    Waypost,
    /// The Socket.IO peer (raw Engine.IO v4 frames over WebSocket).
    Socketio,
    /// The lean `ws` peer (JSON frames on `/ws`).
    Ws,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Waypost => "waypost",
            Target::Socketio => "socketio",
            Target::Ws => "ws",
        }
    }
}

/// The WebSocket encoding the subscribers ask for (Waypost only).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// JSON text frames (the default, what browsers speak).
    #[default]
    Json,
    /// `Sec-WebSocket-Protocol: waypost.v1.msgpack`: MessagePack binary
    /// frames both ways.
    Msgpack,
    /// `Sec-WebSocket-Protocol: waypost.v1.lean`: MessagePack with lean
    /// location frames (e7 coordinates, deltas; no `driver_id` in deltas).
    Lean,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Encoding::Json => "json",
            Encoding::Msgpack => "msgpack",
            Encoding::Lean => "lean",
        }
    }

    /// A client frame (JSON text) in this encoding.
    pub fn message(self, text: String) -> tokio_tungstenite::tungstenite::Message {
        use tokio_tungstenite::tungstenite::Message;
        match self {
            Encoding::Json => Message::text(text),
            Encoding::Msgpack | Encoding::Lean => {
                match waypost_protocol::msgpack::json_to_msgpack(&text) {
                    Ok(b) => Message::binary(b),
                    Err(_) => Message::text(text),
                }
            }
        }
    }
}

/// Options every subcommand shares.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Which server speaks at `--url`.
    #[arg(long, value_enum, default_value = "waypost")]
    pub target: Target,
    /// Base URL(s) of the server process(es), comma separated; loopback only.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:8080")]
    pub url: Vec<String>,
    /// Server process id(s) whose CPU and RSS are read from /proc (comma
    /// separated or repeated).
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pid: Vec<u32>,
    /// HS256 secret for tokens (Waypost; the peers run without auth).
    #[arg(long, env = "WAYPOST_JWT_SECRET", default_value = "dev-secret")]
    pub jwt_secret: String,
    /// Print one JSON object on stdout instead of the human summary.
    #[arg(long)]
    pub json: bool,
    /// Free-form label copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// WebSocket encoding of the subscribers (`fanout`, `connections`).
    #[arg(long, value_enum, default_value = "json")]
    pub encoding: Encoding,
}

impl CommonArgs {
    /// Validates the URLs: http, loopback host, explicit port.
    pub fn servers(&self) -> anyhow::Result<Vec<Server>> {
        if self.url.is_empty() {
            bail!("--url is empty");
        }
        self.url.iter().map(|u| Server::parse(u)).collect()
    }
}

/// One server process: its HTTP base and socket address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Server {
    pub base: String,
    pub addr: SocketAddr,
}

impl Server {
    pub fn parse(url: &str) -> anyhow::Result<Self> {
        let rest = url
            .strip_prefix("http://")
            .with_context(|| format!("{url}: only http:// URLs are supported"))?;
        let hostport = rest.split('/').next().unwrap_or(rest);
        let addr: SocketAddr = hostport
            .parse()
            .with_context(|| format!("{url}: expected http://127.0.0.x:PORT"))?;
        if !addr.ip().is_loopback() {
            bail!("{url}: load is only ever sent to loopback addresses");
        }
        Ok(Self {
            base: format!("http://{hostport}"),
            addr,
        })
    }

    fn ws_base(&self) -> String {
        format!("ws://{}", self.addr)
    }
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process on the
/// host, so a publisher and a subscriber process can subtract their stamps.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Unix epoch milliseconds.
pub fn epoch_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Raises the soft open-files limit to the hard limit (every WebSocket is a
/// descriptor). Best effort: on failure the soft limit stays as it was.
pub fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Sends a signal to a process we started.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) with a pid we own; no memory is touched.
    unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    role: &'a str,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    channels: Option<Vec<String>>,
}

/// Mints an HS256 token the Waypost server accepts (valid for two hours).
pub fn token(secret: &str, sub: &str, role: &str, channels: Option<Vec<String>>) -> String {
    let exp = (epoch_ms() / 1000) as u64 + 7200;
    let claims = Claims {
        sub,
        role,
        exp,
        channels,
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Source addresses 127.0.0.2 .. 127.0.0.(n+1): each has its own ephemeral
/// port range, so many connections to one server port stay possible.
pub fn source_ips(n: usize) -> Vec<Ipv4Addr> {
    (0..n.clamp(1, 250))
        .map(|i| Ipv4Addr::new(127, 0, 0, 2 + i as u8))
        .collect()
}

pub type Ws = WebSocketStream<TcpStream>;

/// Client buffers: frames are small; keep 10k+ client sockets cheap.
fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_write_buffer_size(1 << 20)
}

/// Lets `connect` pick the source port instead of `bind`
/// (`IP_BIND_ADDRESS_NO_PORT`). A plain `bind(addr, 0)` must find a port
/// free for every destination: it skips ports held by TIME_WAIT sockets and
/// scans the ephemeral range under a lock, in the calling (async) thread.
/// After a storm of closes (20,000 client-side TIME_WAITs on four source
/// addresses) those scans stalled the worker threads, so in one run of three
/// clients sent their handshake up to 30 s late while the server idled:
/// the storm measured the load generator, not the server.
/// `connect` only needs the 4-tuple to be unique and may reuse TIME_WAIT
/// ports (`tcp_tw_reuse`).
fn defer_port_choice(socket: &TcpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let one: libc::c_int = 1;
    // SAFETY: a valid socket fd, a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            std::ptr::from_ref(&one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens a WebSocket from `source` to `server` at `path_and_query`.
pub async fn ws_connect(
    server: &Server,
    source: Ipv4Addr,
    path_and_query: &str,
) -> anyhow::Result<Ws> {
    ws_connect_as(server, source, path_and_query, Encoding::Json).await
}

/// [`ws_connect`] asking for `encoding` (MessagePack: the server must agree).
pub async fn ws_connect_as(
    server: &Server,
    source: Ipv4Addr,
    path_and_query: &str,
    encoding: Encoding,
) -> anyhow::Result<Ws> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let socket = TcpSocket::new_v4()?;
    defer_port_choice(&socket)?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(server.addr).await?;
    stream.set_nodelay(true)?;
    let url = format!("{}{}", server.ws_base(), path_and_query);
    let mut request = url.into_client_request()?;
    let offer = match encoding {
        Encoding::Json => None,
        Encoding::Msgpack => Some(waypost_protocol::MSGPACK_PROTOCOL),
        Encoding::Lean => Some(waypost_protocol::LEAN_PROTOCOL),
    };
    if let Some(offer) = offer {
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static(offer),
        );
    }
    let (ws, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(client_config()))
            .await
            .map_err(|e| anyhow::anyhow!("handshake: {e}"))?;
    Ok(ws)
}

/// Subscriber identity: a user id and the driver it follows.
pub struct SubIdentity<'a> {
    pub user: &'a str,
    pub driver: &'a str,
    pub jwt_secret: &'a str,
}

/// The WebSocket path (with query) for one subscriber.
pub fn subscribe_path(target: Target, who: &SubIdentity<'_>) -> String {
    match target {
        Target::Waypost => {
            let t = token(
                who.jwt_secret,
                who.user,
                "buyer",
                Some(vec![format!("tracking:{}", who.driver)]),
            );
            format!("/v1/ws?token={t}")
        }
        Target::Socketio => "/socket.io/?EIO=4&transport=websocket".to_owned(),
        Target::Ws => format!("/ws?userId={}", who.user),
    }
}

/// What a received text frame means to a subscriber.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A location update for `driver` with `seq`.
    Location { driver: &'a str, seq: u64 },
    /// The server confirmed the subscription.
    Subscribed,
    /// The server refused (error before `subscribed`, failed ack, ...).
    Refused,
    /// Send this text back (Engine.IO pong, Socket.IO CONNECT/track).
    Reply(String),
    /// Anything else (pings, other events).
    Other,
}

/// Extracts driver id and seq with substring searches (no full JSON parse,
/// like the Node load generator) from a location frame.
fn fast_location<'a>(s: &'a str, id_key: &str) -> Option<Frame<'a>> {
    let a = s.find(id_key)? + id_key.len();
    let b = a + s[a..].find('"')?;
    let k = s.find("\"seq\":")? + 6;
    let digits = s[k..].bytes().take_while(u8::is_ascii_digit).count();
    let seq = s[k..k + digits].parse().ok()?;
    Some(Frame::Location {
        driver: &s[a..b],
        seq,
    })
}

/// The first frames a subscriber sends after the WebSocket opened.
pub fn on_open(target: Target, driver: &str) -> Option<String> {
    match target {
        Target::Waypost => Some(format!(
            r#"{{"type":"subscribe","channel":"tracking:{driver}"}}"#
        )),
        Target::Ws => Some(format!(
            r#"{{"type":"track-driver","driverId":"{driver}","ackId":1}}"#
        )),
        // Engine.IO speaks first (`0{...}` open).
        Target::Socketio => None,
    }
}

/// Classifies a text frame for a subscriber of `driver` as `user`.
pub fn classify<'a>(target: Target, s: &'a str, user: &str, driver: &str) -> Frame<'a> {
    match target {
        Target::Waypost => {
            if s.starts_with(r#"{"type":"location""#) {
                // By channel: a lean delta has no `driver_id`.
                return fast_location(s, "\"channel\":\"tracking:").unwrap_or(Frame::Other);
            }
            if s.starts_with(r#"{"type":"subscribed""#) {
                return Frame::Subscribed;
            }
            if s.starts_with(r#"{"type":"error""#) {
                return Frame::Refused;
            }
            Frame::Other
        }
        Target::Ws => {
            if s.starts_with(r#"{"type":"location-update""#) {
                return fast_location(s, "\"driverId\":\"").unwrap_or(Frame::Other);
            }
            if s.starts_with(r#"{"type":"ack""#) && s.contains(r#""ackId":1,"#) {
                return if s.contains(r#""ok":true"#) {
                    Frame::Subscribed
                } else {
                    Frame::Refused
                };
            }
            Frame::Other
        }
        Target::Socketio => {
            if s.starts_with(r#"42["location-update","#) {
                return fast_location(s, "\"driverId\":\"").unwrap_or(Frame::Other);
            }
            match s.as_bytes() {
                [b'2', ..] => Frame::Reply("3".to_owned()),
                [b'0', ..] => Frame::Reply(format!(r#"40{{"userId":"{user}"}}"#)),
                [b'4', b'0', ..] => {
                    Frame::Reply(format!(r#"421["track-driver",{{"driverId":"{driver}"}}]"#))
                }
                [b'4', b'3', b'1', ..] => {
                    if s.contains(r#""ok":true"#) {
                        Frame::Subscribed
                    } else {
                        Frame::Refused
                    }
                }
                [b'4', b'4', ..] | [b'4', b'1', ..] | [b'1', ..] => Frame::Refused,
                _ => Frame::Other,
            }
        }
    }
}

/// Latency histogram in microseconds: exact below 2,048 µs, then 1,024
/// sub-buckets per power of two (< 0.1 % error). Lock-free recording, so
/// many connection tasks can share one; mergeable across processes.
pub struct Histogram {
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

const LINEAR: u64 = 2048;
const SUB: u64 = 1024;
const BUCKETS: usize = (LINEAR + 40 * SUB) as usize;

fn bucket_of(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let msb = 63 - u64::from(v.leading_zeros()); // >= 11
    let shift = msb - 10;
    let idx = LINEAR + (msb - 11) * SUB + ((v >> shift) - SUB);
    (idx as usize).min(BUCKETS - 1)
}

fn bucket_value(i: usize) -> u64 {
    let i = i as u64;
    if i < LINEAR {
        return i;
    }
    let msb = (i - LINEAR) / SUB + 11;
    let shift = msb - 10;
    let mant = (i - LINEAR) % SUB + SUB;
    // Middle of the bucket.
    (mant << shift) + (1u64 << shift) / 2
}

/// A histogram as shipped between processes: non-empty buckets only.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(u32, u64)>,
    pub count: u64,
    pub sum_us: u64,
    pub max_us: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl Histogram {
    pub fn new() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    pub fn record_us(&self, v: u64) {
        self.buckets[bucket_of(v)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(v, Ordering::Relaxed);
        self.max_us.fetch_max(v, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .filter_map(|(i, b)| {
                    let n = b.load(Ordering::Relaxed);
                    (n > 0).then_some((i as u32, n))
                })
                .collect(),
            count: self.count.load(Ordering::Relaxed),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

impl HistogramSnapshot {
    pub fn merge(&mut self, other: &HistogramSnapshot) {
        let mut all: std::collections::BTreeMap<u32, u64> = self.buckets.iter().copied().collect();
        for &(i, n) in &other.buckets {
            *all.entry(i).or_default() += n;
        }
        self.buckets = all.into_iter().collect();
        self.count += other.count;
        self.sum_us += other.sum_us;
        self.max_us = self.max_us.max(other.max_us);
    }

    /// The value at quantile `q` (0..=1), in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for &(i, n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_value(i as usize).min(self.max_us);
            }
        }
        self.max_us
    }

    /// `{count, mean, p50, p90, p99, p999, max}` in milliseconds.
    pub fn summary_ms(&self) -> Value {
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        let mean = if self.count == 0 {
            0.0
        } else {
            self.sum_us as f64 / self.count as f64 / 1000.0
        };
        json!({
            "count": self.count,
            "mean": (mean * 1000.0).round() / 1000.0,
            "p50": ms(self.quantile_us(0.50)),
            "p90": ms(self.quantile_us(0.90)),
            "p99": ms(self.quantile_us(0.99)),
            "p999": ms(self.quantile_us(0.999)),
            "max": ms(self.max_us),
        })
    }
}

/// CPU time (ticks) and RSS (KiB) of one process.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    pub ticks: u64,
    pub rss_kib: u64,
}

pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// Reads `/proc/<pid>/stat` (utime + stime, children excluded) and VmRSS.
pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state); utime is field 14, stime field 15.
    let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some(ProcSample { ticks, rss_kib })
}

/// Sum of RSS over pids, KiB.
pub fn rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|&p| proc_sample(p))
        .map(|s| s.rss_kib)
        .sum()
}

/// CPU use of a set of processes between two points in time.
pub struct CpuWindow {
    start: std::time::Instant,
    before: Vec<(u32, Option<ProcSample>)>,
    host_before: Option<(u64, u64)>,
}

/// (busy, total) jiffies of the whole host from /proc/stat.
fn host_jiffies() -> Option<(u64, u64)> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().next()?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

impl CpuWindow {
    pub fn start(pids: &[u32]) -> Self {
        Self {
            start: std::time::Instant::now(),
            before: pids.iter().map(|&p| (p, proc_sample(p))).collect(),
            host_before: host_jiffies(),
        }
    }

    /// % of one core per pid over the window (100 = one core busy).
    pub fn finish(&self) -> Vec<(u32, f64)> {
        let secs = self.start.elapsed().as_secs_f64().max(1e-3);
        let hz = clock_ticks() as f64;
        self.before
            .iter()
            .map(|&(pid, b)| {
                let pct = match (b, proc_sample(pid)) {
                    (Some(b), Some(a)) => {
                        (a.ticks.saturating_sub(b.ticks)) as f64 / hz / secs * 100.0
                    }
                    _ => 0.0,
                };
                (pid, (pct * 10.0).round() / 10.0)
            })
            .collect()
    }

    /// % of all cores busy on the host over the window.
    pub fn host_busy_pct(&self) -> f64 {
        match (self.host_before, host_jiffies()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                ((b1 - b0) as f64 / (t1 - t0) as f64 * 1000.0).round() / 10.0
            }
            _ => 0.0,
        }
    }
}

/// Machine description for reports.
pub fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    json!({
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "cpu_model": cpu,
    })
}

/// Polls `GET {base}/healthz` until it answers 200 or `timeout` passes.
pub async fn wait_healthy(
    client: &reqwest::Client,
    base: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Ok(r) = client.get(format!("{base}/healthz")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{base} did not become healthy within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A random lowercase hex run id (fresh driver ids: no stale positions).
pub fn run_id() -> String {
    format!("{:08x}", rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_round_trip_within_a_tenth_of_a_percent() {
        for v in [0u64, 1, 2047, 2048, 2049, 5000, 123_456, 9_999_999, 1 << 40] {
            let b = bucket_value(bucket_of(v));
            let err = (b as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.001, "{v} -> {b}");
        }
    }

    #[test]
    fn quantiles_merge_across_snapshots() {
        let a = Histogram::new();
        let b = Histogram::new();
        for v in 1..=500 {
            a.record_us(v);
        }
        for v in 501..=1000 {
            b.record_us(v);
        }
        let mut s = a.snapshot();
        s.merge(&b.snapshot());
        assert_eq!(s.count, 1000);
        assert_eq!(s.quantile_us(0.5), 500);
        assert_eq!(s.quantile_us(0.99), 990);
        assert_eq!(s.max_us, 1000);
    }

    #[test]
    fn location_frames_of_every_target_parse() {
        let w = r#"{"type":"location","channel":"tracking:d7","driver_id":"d7","fix":{"seq":42,"ts":1,"lat":1.0,"lon":2.0}}"#;
        assert_eq!(
            classify(Target::Waypost, w, "u", "d7"),
            Frame::Location {
                driver: "d7",
                seq: 42
            }
        );
        // Lean (read as JSON text): a delta has no driver_id.
        let lean = r#"{"type":"location","channel":"tracking:d7","base":41,"fix":{"seq":42,"ts":1,"lat_e7":1,"lon_e7":2}}"#;
        assert_eq!(
            classify(Target::Waypost, lean, "u", "d7"),
            Frame::Location {
                driver: "d7",
                seq: 42
            }
        );
        let j = r#"{"type":"location-update","driverId":"d7","lat":1,"lng":2,"seq":9,"ts":1,"updatedAt":2}"#;
        assert_eq!(
            classify(Target::Ws, j, "u", "d7"),
            Frame::Location {
                driver: "d7",
                seq: 9
            }
        );
        let s = r#"42["location-update",{"driverId":"d7","lat":1,"lng":2,"seq":3,"ts":1}]"#;
        assert_eq!(
            classify(Target::Socketio, s, "u", "d7"),
            Frame::Location {
                driver: "d7",
                seq: 3
            }
        );
        assert_eq!(
            classify(Target::Socketio, "2", "u", "d"),
            Frame::Reply("3".into())
        );
        assert_eq!(
            classify(
                Target::Socketio,
                r#"431[{"ok":true,"driverId":"d"}]"#,
                "u",
                "d"
            ),
            Frame::Subscribed
        );
        assert_eq!(
            classify(
                Target::Waypost,
                r#"{"type":"subscribed","channel":"tracking:d","recovered":true}"#,
                "u",
                "d"
            ),
            Frame::Subscribed
        );
        assert_eq!(
            classify(
                Target::Ws,
                r#"{"type":"ack","ackId":1,"ok":false,"error":"x"}"#,
                "u",
                "d"
            ),
            Frame::Refused
        );
    }

    #[test]
    fn only_loopback_urls_are_accepted() {
        assert!(Server::parse("http://127.0.0.1:8080").is_ok());
        assert!(Server::parse("http://10.0.0.1:8080").is_err());
        assert!(Server::parse("https://127.0.0.1:8080").is_err());
    }
}
