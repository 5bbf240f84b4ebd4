//! Test support for the end-to-end suites: spawn the real `waypost` binary
//! on an ephemeral port (memory or Redis engine), start throwaway Redis
//! servers, mint tokens, and talk WebSocket.
//!
//! Every spawned process is killed when its handle drops; a failing test
//! prints the tail of the server's log.

pub mod chat;
pub mod cluster;
pub mod driver;
pub mod proxy;
pub mod push;
pub mod sentinel;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use waypost_protocol::{Claims, Role};

/// The secret `waypost serve --dev` uses.
pub const DEV_SECRET: &str = "dev-secret";

/// Which engine a spawned server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineChoice {
    Memory,
    Redis(String),
    /// `--engine redis-cluster` with these seed URLs (comma-separated).
    RedisCluster(String),
}

impl EngineChoice {
    pub fn name(&self) -> &'static str {
        match self {
            EngineChoice::Memory => "memory",
            EngineChoice::Redis(_) => "redis",
            EngineChoice::RedisCluster(_) => "redis-cluster",
        }
    }
}

/// Path of the `waypost` binary next to the running test executable
/// (`target/<profile>/waypost`); built with cargo when missing.
pub fn server_binary() -> Result<PathBuf> {
    if let Ok(p) = std::env::var("WAYPOST_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> -> target/<profile>/waypost
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| anyhow!("unexpected test executable path {exe:?}"))?;
    let bin = profile_dir.join("waypost");
    if bin.exists() && is_stale(&bin) {
        eprintln!(
            "WARNING: {bin:?} is older than the server sources; run `cargo build -p waypost-server` \
             (scripts/test does) or these tests exercise an old server"
        );
    }
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "-p", "waypost-server", "--bin", "waypost"])
            .status()
            .context("running cargo build for the server binary")?;
        if !status.success() || !bin.exists() {
            bail!("could not build the waypost binary at {bin:?}");
        }
    }
    Ok(bin)
}

/// Whether any file under server/src or protocol/src is newer than `bin`.
fn is_stale(bin: &Path) -> bool {
    fn newest(dir: &Path) -> Option<SystemTime> {
        let mut best: Option<SystemTime> = None;
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            let t = if path.is_dir() {
                newest(&path)
            } else {
                entry.metadata().ok().and_then(|m| m.modified().ok())
            };
            best = best.max(t);
        }
        best
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let built = std::fs::metadata(bin).and_then(|m| m.modified()).ok();
    let src = newest(&root.join("server/src")).max(newest(&root.join("protocol/src")));
    matches!((built, src), (Some(b), Some(s)) if s > b)
}

/// Knobs for a spawned server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub engine: EngineChoice,
    /// Fixed listen address (e.g. to restart on the same port); port 0 when `None`.
    pub listen: Option<SocketAddr>,
    /// Extra command-line arguments after `serve`.
    pub args: Vec<String>,
}

impl ServerOptions {
    pub fn new(engine: EngineChoice) -> Self {
        Self {
            engine,
            listen: None,
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> Self {
        self.args.push(a.into());
        self
    }
}

/// A running `waypost serve` process.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub options: ServerOptions,
    log: PathBuf,
}

impl Server {
    /// Starts the server with the development secret on an ephemeral port.
    pub async fn start(engine: EngineChoice) -> Result<Self> {
        Self::start_with(ServerOptions::new(engine)).await
    }

    pub async fn start_with(options: ServerOptions) -> Result<Self> {
        let bin = server_binary()?;
        let listen = options
            .listen
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let log = std::env::temp_dir().join(format!(
            "waypost-e2e-{}-{}.log",
            std::process::id(),
            rand::random::<u32>()
        ));
        let log_file = std::fs::File::create(&log)?;
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--dev")
            .arg("--listen")
            .arg(&listen)
            .arg("--engine")
            .arg(options.engine.name())
            .env_remove("WAYPOST_JWT_SECRET")
            .env(
                "RUST_LOG",
                std::env::var("WAYPOST_TEST_LOG").unwrap_or("info".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true);
        if let EngineChoice::Redis(url) | EngineChoice::RedisCluster(url) = &options.engine {
            cmd.arg("--redis-url").arg(url);
        }
        cmd.args(&options.args);
        let mut child = cmd.spawn().context("spawning waypost")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await? {
                if let Some(a) = line.strip_prefix("listening on ") {
                    return Ok::<_, anyhow::Error>(a.trim().parse::<SocketAddr>()?);
                }
            }
            bail!("server exited before listening")
        })
        .await
        .map_err(|_| anyhow!("server did not start within 30 s"))
        .and_then(|r| r)
        .with_context(|| format!("server log:\n{}", tail(&log)))?;
        // Keep draining stdout so the child never blocks on a full pipe;
        // the logs (tracing writes to stdout) go to the log file too.
        let mut log_out = std::fs::OpenOptions::new().append(true).open(&log).ok();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(f) = log_out.as_mut() {
                    use std::io::Write;
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        Ok(Self {
            child: Some(child),
            addr,
            options,
            log,
        })
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn ws_url(&self, token: &str) -> String {
        format!("ws://{}/v1/ws?token={}", self.addr, token)
    }

    /// Sends SIGTERM and waits for the exit (at most `within`); returns
    /// whether it exited in time with success.
    pub async fn terminate(&mut self, within: Duration) -> Result<bool> {
        let Some(mut child) = self.child.take() else {
            return Ok(true);
        };
        if let Some(pid) = child.id() {
            send_signal(pid, "TERM")?;
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.start_kill()?;
                Ok(false)
            }
        }
    }

    /// Kills the process at once (SIGKILL).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.start_kill()?;
            child.wait().await?;
        }
        Ok(())
    }

    /// Sends `signal` (e.g. `"HUP"`) to the process.
    pub fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid().ok_or_else(|| anyhow!("server not running"))?;
        send_signal(pid, signal)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- waypost server log ({}) ----\n{}",
                self.addr,
                tail(&self.log)
            );
        }
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
    }
}

fn send_signal(pid: u32, signal: &str) -> Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed: {status}");
    }
    Ok(())
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// A free TCP port on loopback (racy by nature; fine for tests).
pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A throwaway `redis-server` owned by the test (killed on drop).
pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Extra `redis-server` arguments, kept for `restart`.
    extra: Vec<String>,
}

impl RedisServer {
    /// Starts redis-server (`$REDIS_SERVER_BIN` or from PATH) on a free port.
    pub async fn start() -> Result<Self> {
        Self::start_on(free_port()?).await
    }

    pub async fn start_on(port: u16) -> Result<Self> {
        Self::start_with_args(port, Vec::new()).await
    }

    /// Starts redis-server on `port` (plain TCP, used for the readiness
    /// check) with `extra` arguments (e.g. a `--tls-port`).
    pub async fn start_with_args(port: u16, extra: Vec<String>) -> Result<Self> {
        // Unique per start: `restart` drops the old handle (removing its
        // directory) after the new process runs, and a replica needs its
        // directory for the sync file.
        let dir =
            std::env::temp_dir().join(format!("waypost-redis-{port}-{}", rand::random::<u32>()));
        std::fs::create_dir_all(&dir)?;
        Self::start_in(port, dir, extra).await
    }

    /// Starts redis-server on `port` with its data in `dir` (kept: a
    /// cluster node restarted in the same directory rejoins as what its
    /// `nodes.conf` says).
    pub async fn start_in(port: u16, dir: PathBuf, extra: Vec<String>) -> Result<Self> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let mut cmd = Command::new(&bin);
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .args(&extra);
        let child = spawn_until_ready(cmd, &format!("{bin} on port {port}"), || redis_ping(port))
            .await
            .context("install redis-server")?;
        Ok(Self {
            child: Some(child),
            port,
            dir,
            extra,
        })
    }

    /// Kills and starts again on the same port with the same data
    /// directory.
    pub async fn restart_in_place(&mut self) -> Result<()> {
        self.kill().await?;
        let dir = std::mem::take(&mut self.dir);
        *self = Self::start_in(self.port, dir, self.extra.clone()).await?;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Whether the process was started and not killed since.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }

    /// Kills and starts again on the same port (empty data).
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        let fresh = Self::start_with_args(self.port, self.extra.clone()).await?;
        *self = fresh;
        Ok(())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Spawns `cmd` (output discarded, killed on drop) and polls `ready` every
/// 50 ms for up to 5 s: the one way every test server is started.
pub async fn spawn_until_ready<F, Fut>(mut cmd: Command, what: &str, ready: F) -> Result<Child>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("spawning {what}"))?;
    for _ in 0..100 {
        if ready().await {
            return Ok(child);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not answer within 5 s")
}

pub(crate) async fn redis_ping(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 16];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
    )
}

/// A throwaway `nats-server` owned by the test (killed on drop), on a free
/// port like [`RedisServer`]: `$NATS_SERVER_BIN`, else /usr/sbin/nats-server
/// (Debian's package), else from PATH.
pub struct NatsServer {
    child: Option<Child>,
    pub port: u16,
}

impl NatsServer {
    fn bin() -> String {
        std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
            if Path::new("/usr/sbin/nats-server").exists() {
                "/usr/sbin/nats-server".into()
            } else {
                "nats-server".into()
            }
        })
    }

    pub async fn start() -> Result<Self> {
        Self::start_on(free_port()?).await
    }

    pub async fn start_on(port: u16) -> Result<Self> {
        let bin = Self::bin();
        let mut cmd = Command::new(&bin);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
        let child = spawn_until_ready(cmd, &format!("{bin} on port {port}"), || nats_info(port))
            .await
            .context("install nats-server")?;
        Ok(Self {
            child: Some(child),
            port,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut c) = self.child.take() {
            c.start_kill()?;
            c.wait().await?;
        }
        Ok(())
    }

    /// Kills and starts again on the same port.
    pub async fn restart(&mut self) -> Result<()> {
        self.kill().await?;
        *self = Self::start_on(self.port).await?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
    }
}

/// Whether a NATS server on `port` greets with `INFO`.
async fn nats_info(port: u16) -> bool {
    use tokio::io::AsyncReadExt;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let mut buf = [0u8; 8];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(n)) if buf[..n].starts_with(b"INFO")
    )
}

/// The Redis URL the suite should use: `WAYPOST_TEST_REDIS_URL` (set by
/// scripts/test), else a fresh redis-server started here, else `None` (the
/// caller prints why it skips).
pub async fn shared_redis() -> Option<(String, Option<RedisServer>)> {
    if let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") {
        return Some((url, None));
    }
    match RedisServer::start().await {
        Ok(r) => Some((r.url(), Some(r))),
        Err(e) => {
            eprintln!("SKIP redis cases: {e:#} (scripts/test installs and starts Redis)");
            None
        }
    }
}

/// A token signed with the development secret.
pub fn token(sub: &str, role: Role, channels: &[&str]) -> String {
    token_with_exp(sub, role, channels, now_s() + 3600)
}

pub fn token_with_exp(sub: &str, role: Role, channels: &[&str], exp: u64) -> String {
    let claims = Claims {
        sub: sub.into(),
        role,
        exp,
        channels: (!channels.is_empty()).then(|| channels.iter().map(|c| c.to_string()).collect()),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// A token with `iat` (now) and a `jti`, as `waypost token` mints them, so
/// user and token revocations can tell it apart; `exp` is `ttl_s` away.
pub fn token_issued(sub: &str, role: Role, channels: &[&str], ttl_s: u64, jti: &str) -> String {
    #[derive(serde::Serialize)]
    struct Issued {
        #[serde(flatten)]
        claims: Claims,
        iat: u64,
        jti: String,
    }
    let claims = Issued {
        claims: Claims {
            sub: sub.into(),
            role,
            exp: now_s() + ttl_s,
            channels: (!channels.is_empty())
                .then(|| channels.iter().map(|c| c.to_string()).collect()),
        },
        iat: now_s(),
        jti: jti.into(),
    };
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(DEV_SECRET.as_bytes()),
    )
    .unwrap_or_default()
}

/// A [`waypost_sdk::TokenProvider`] minting a fresh short-lived token on
/// every call (`iat` now, a new `jti`, `exp` `ttl_s` away), as an app's
/// backend would: with a short `ttl_s` the SDK refreshes in band while it
/// is used. Counts the tokens it minted.
pub struct MintingTokens {
    sub: String,
    role: Role,
    channels: Vec<String>,
    ttl_s: u64,
    minted: std::sync::atomic::AtomicU64,
}

impl MintingTokens {
    pub fn new(sub: &str, role: Role, channels: &[&str], ttl_s: u64) -> Self {
        Self {
            sub: sub.to_owned(),
            role,
            channels: channels.iter().map(|c| c.to_string()).collect(),
            ttl_s,
            minted: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Tokens handed out so far.
    pub fn minted(&self) -> u64 {
        self.minted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mint(&self) -> String {
        let n = self
            .minted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let channels: Vec<&str> = self.channels.iter().map(String::as_str).collect();
        token_issued(
            &self.sub,
            self.role,
            &channels,
            self.ttl_s,
            &format!("{}-{n}", unique("mint")),
        )
    }
}

#[async_trait::async_trait]
impl waypost_sdk::TokenProvider for MintingTokens {
    async fn token(&self) -> Option<String> {
        Some(self.mint())
    }
    async fn refresh_token(&self) -> Option<String> {
        Some(self.mint())
    }
}

pub fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// A unique id for this test run (ids must match `[A-Za-z0-9_.:-]{1,64}`).
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{:08x}", rand::random::<u32>())
}

/// A minimal WebSocket client for tests: JSON text frames, or MessagePack
/// binary frames when connected with [`WsClient::connect_msgpack`] (its
/// `send_json`/`next_json` then transcode, so every helper works on both).
pub struct WsClient {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    msgpack: bool,
}

/// How a WebSocket ended, as seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    Code(u16, String),
    NoFrame,
}

impl WsClient {
    pub async fn connect(url: &str) -> Result<Self> {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .with_context(|| format!("connecting {url}"))?;
        Ok(Self {
            stream,
            msgpack: false,
        })
    }

    /// Connects offering `protocols` in `Sec-WebSocket-Protocol`; speaks
    /// MessagePack when the server selected `waypost.v1.msgpack` or
    /// `waypost.v1.lean`. Returns
    /// the selected protocol too.
    pub async fn connect_offering(url: &str, protocols: &str) -> Result<(Self, Option<String>)> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = url.into_client_request()?;
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse()?);
        let (stream, response) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("connecting {url}"))?;
        let selected = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        // Lean is MessagePack too (its location frames are read raw:
        // `lat_e7`, `base`; tests/tests/lean.rs decodes them).
        let msgpack = matches!(
            selected.as_deref(),
            Some(waypost_protocol::MSGPACK_PROTOCOL | waypost_protocol::LEAN_PROTOCOL)
        );
        Ok((Self { stream, msgpack }, selected))
    }

    /// A `waypost.v1.msgpack` connection (fails when not agreed).
    pub async fn connect_msgpack(url: &str) -> Result<Self> {
        let (ws, selected) =
            Self::connect_offering(url, waypost_protocol::MSGPACK_PROTOCOL).await?;
        if !ws.msgpack {
            bail!("the server selected {selected:?}, not MessagePack");
        }
        Ok(ws)
    }

    /// Wraps a socket whose handshake the caller did by hand.
    pub fn from_stream(stream: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            stream,
            msgpack: false,
        }
    }

    /// Whether this connection speaks MessagePack.
    pub fn is_msgpack(&self) -> bool {
        self.msgpack
    }

    pub async fn send_json(&mut self, v: &Value) -> Result<()> {
        let message = if self.msgpack {
            Message::Binary(waypost_protocol::msgpack::json_to_msgpack(&v.to_string())?.into())
        } else {
            Message::Text(v.to_string().into())
        };
        self.stream.send(message).await?;
        Ok(())
    }

    /// Next data frame as it came: `Ok(Text)` or `Ok(Binary)` (pings and
    /// pongs skipped).
    pub async fn next_message(&mut self, within: Duration) -> Result<Message> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| anyhow!("no frame within {within:?}"))?;
            match msg {
                Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => return Ok(m),
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("stream ended"),
            }
        }
    }

    pub async fn send_raw(&mut self, m: Message) -> Result<()> {
        self.stream.send(m).await?;
        Ok(())
    }

    /// Next JSON text frame within `within`; errors on close or timeout.
    pub async fn next_json(&mut self, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| anyhow!("no frame within {within:?}"))?;
            match msg {
                Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t)?),
                Some(Ok(Message::Binary(b))) if self.msgpack => {
                    return Ok(waypost_protocol::msgpack::msgpack_to_value(&b)?)
                }
                Some(Ok(Message::Close(f))) => bail!("closed: {f:?}"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("websocket error: {e}"),
                None => bail!("stream ended"),
            }
        }
    }

    /// Next frame whose `type` is `ty`, skipping others.
    pub async fn next_of_type(&mut self, ty: &str, within: Duration) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.next_json(left).await?;
            if v["type"] == ty {
                return Ok(v);
            }
        }
    }

    /// Subscribes and waits for `subscribed` (or fails on `error`).
    /// Reads until a `location` frame with seq >= `min_seq` (other frames
    /// skipped); returns its seq.
    pub async fn location_at_least(&mut self, min_seq: u64, within: Duration) -> Result<u64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self
                .next_json(left)
                .await
                .with_context(|| format!("no location with seq >= {min_seq}"))?;
            if v["type"] == "location" {
                let seq = v["fix"]["seq"].as_u64().unwrap_or(0);
                if seq >= min_seq {
                    return Ok(seq);
                }
            }
        }
    }

    pub async fn subscribe(&mut self, channel: &str, after: Option<u64>) -> Result<Value> {
        let mut frame = serde_json::json!({"type": "subscribe", "channel": channel});
        if let Some(a) = after {
            frame["after"] = a.into();
        }
        self.send_json(&frame).await?;
        loop {
            let v = self.next_json(Duration::from_secs(10)).await?;
            match v["type"].as_str() {
                Some("subscribed") if v["channel"] == channel => return Ok(v),
                Some("error") => bail!("subscribe {channel} refused: {v}"),
                _ => continue,
            }
        }
    }

    /// Reads until the server closes; returns the close code, skipping frames.
    pub async fn closed(&mut self, within: Duration) -> Result<Closed> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.stream.next())
                .await
                .map_err(|_| anyhow!("not closed within {within:?}"))?;
            match msg {
                Some(Ok(Message::Close(Some(f)))) => {
                    return Ok(Closed::Code(f.code.into(), f.reason.to_string()))
                }
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return Ok(Closed::NoFrame),
                Some(Ok(_)) => continue,
            }
        }
    }
}

/// Defines `memory::<case>` and `redis::<case>` tests for each named
/// `async fn <case>(EngineChoice) -> anyhow::Result<()>` of the calling
/// file. The Redis variant uses [`shared_redis`] and skips (with a printed
/// reason) when no Redis can be started.
#[macro_export]
macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                super::$name(waypost_e2e::EngineChoice::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                let Some((url, _guard)) = waypost_e2e::shared_redis().await else { return Ok(()) };
                super::$name(waypost_e2e::EngineChoice::Redis(url)).await
            })*
        }
    };
}
