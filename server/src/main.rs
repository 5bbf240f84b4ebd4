//! `waypost`: run the server (`serve`) or mint a development token (`token`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use waypost_protocol::{Claims, Role};
use waypost_server::app::{serve, shutdown_on_signal};
use waypost_server::auth::{AuthKeys, DEV_SECRET};
use waypost_server::cluster::RedisNodeStats;
use waypost_server::config::Limits;
use waypost_server::driver_index::RedisDriverIndex;
use waypost_server::engine;
use waypost_server::engine::chat_redis::{self, StoreConn};
use waypost_server::engine::nats::NatsOptions;
use waypost_server::engine::open::{BusConfig, EngineConfig, StoreConfig};
use waypost_server::engine::redis::{RedisOptions, RedisTls, SentinelConfig};
use waypost_server::hub::Hub;
use waypost_server::keys::{self, KeySource, KeyStore};
use waypost_server::metrics::Metrics;
use waypost_server::orders::live::OrderService;
use waypost_server::orders::memory::MemoryOrderStore;
use waypost_server::orders::presence::{DriverPresence, MemoryDriverPresence, RedisDriverPresence};
use waypost_server::orders::redis::RedisOrderStore;
use waypost_server::orders::store::OrderStore;
use waypost_server::orders::stream::{self as order_stream, StreamConfig, StreamMetrics};
use waypost_server::orders::{OrderLimits, Orders};
use waypost_server::push::cli::PushArgs;
use waypost_server::push::devices::DeviceStore;
use waypost_server::push::PushMetrics;
use waypost_server::revocation::RedisRevocationStore;
use waypost_server::state::AppState;
use waypost_server::webhooks::queue::{MemoryWebhookQueue, WebhookQueue};
use waypost_server::webhooks::queue_redis::RedisWebhookQueue;
use waypost_server::webhooks::{HttpSender, WebhookConfig, WebhookMetrics, Webhooks};

#[derive(Parser)]
#[command(name = "waypost", version, about = "Waypost real-time server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum EngineKind {
    Memory,
    Redis,
    /// Redis Cluster: `--redis-url` lists seed nodes
    /// (`redis://h1:p1,redis://h2:p2,...`); sharded pub/sub.
    RedisCluster,
}

impl EngineKind {
    fn is_redis(self) -> bool {
        matches!(self, Self::Redis | Self::RedisCluster)
    }
}

/// What fans out between processes.
#[derive(Clone, Copy, ValueEnum, PartialEq, Eq)]
enum BusKind {
    /// The engine's own: none for memory, pub/sub for Redis.
    Engine,
    /// NATS at --nats-url (needs --engine redis for the stores).
    Nats,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum RoleArg {
    Driver,
    Buyer,
    Vendor,
    Service,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Self {
        match r {
            RoleArg::Driver => Role::Driver,
            RoleArg::Buyer => Role::Buyer,
            RoleArg::Vendor => Role::Vendor,
            RoleArg::Service => Role::Service,
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve(Box<ServeArgs>),
    /// Mint a token for development and tests (HS256 with a secret or a
    /// --jwt-keys key; RS256/ES256 with --private-key).
    Token(TokenArgs),
    /// Probe a running server's /healthz (for container HEALTHCHECKs).
    Healthcheck(HealthcheckArgs),
    /// Send a test push to every registered device of a user, with the
    /// server's engine and push flags (on the memory engine a separate
    /// process sees no devices: use it with --engine redis).
    PushTest(Box<PushTestArgs>),
}

#[derive(clap::Args)]
struct PushTestArgs {
    /// The user (token `sub`) whose devices get the push.
    #[arg(long)]
    user: String,
    /// How long to wait for the providers' answers.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    wait: Duration,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct HealthcheckArgs {
    /// URL to GET; healthy on 200.
    #[arg(
        long,
        env = "WAYPOST_HEALTHCHECK_URL",
        default_value = "http://127.0.0.1:8080/healthz"
    )]
    url: String,
    /// Connect and read timeout.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Storage and fan-out engine.
    #[arg(long, value_enum, default_value = "memory", env = "WAYPOST_ENGINE")]
    engine: EngineKind,
    /// The bus between processes: the engine's own, or NATS (state stays
    /// in Redis).
    #[arg(long, value_enum, default_value = "engine", env = "WAYPOST_BUS")]
    bus: BusKind,
    /// NATS URL for `--bus nats` (`nats://host:4222`; several servers of
    /// one cluster comma-separated).
    #[arg(
        long,
        env = "WAYPOST_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    nats_url: String,
    /// Redis URL for `--engine redis`; for `--engine redis-cluster`
    /// comma-separated seed node URLs.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    /// CA certificate (PEM) that signs the Redis server's certificate, for a
    /// `rediss://` URL (default: the system's trust store).
    #[arg(long, env = "WAYPOST_REDIS_CA")]
    redis_ca: Option<PathBuf>,
    /// Client certificate (PEM) for Redis with mutual TLS; needs
    /// --redis-client-key.
    #[arg(long, env = "WAYPOST_REDIS_CLIENT_CERT", requires = "redis_client_key")]
    redis_client_cert: Option<PathBuf>,
    /// Private key (PEM) of --redis-client-cert.
    #[arg(long, env = "WAYPOST_REDIS_CLIENT_KEY", requires = "redis_client_cert")]
    redis_client_key: Option<PathBuf>,
    /// Sentinels (`host:port,...`) that find the Redis primary (with
    /// --redis-master); --redis-url then gives only scheme, credentials and
    /// database.
    #[arg(
        long,
        env = "WAYPOST_REDIS_SENTINEL",
        value_delimiter = ',',
        requires = "redis_master"
    )]
    redis_sentinel: Vec<String>,
    /// Name of the master the sentinels monitor.
    #[arg(long, env = "WAYPOST_REDIS_MASTER", requires = "redis_sentinel")]
    redis_master: Option<String>,
    /// Acknowledged writes (ingest, chat, notifications) wait until this
    /// many replicas have them (`WAIT`); 0 = no waiting.
    #[arg(long, env = "WAYPOST_REDIS_WAIT_REPLICAS", default_value_t = 0)]
    redis_wait_replicas: u32,
    /// Longest such a wait; fewer replicas by then answers 503 (retried).
    #[arg(long, env = "WAYPOST_REDIS_WAIT_TIMEOUT", default_value = "500ms", value_parser = humantime::parse_duration)]
    redis_wait_timeout: Duration,
    /// Address to listen on.
    #[arg(long, env = "WAYPOST_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Use the well-known development secret when WAYPOST_JWT_SECRET is unset.
    #[arg(long, env = "WAYPOST_DEV")]
    dev: bool,
    #[command(flatten)]
    secret: SecretArg,
    /// Log format.
    #[arg(long, value_enum, default_value = "text", env = "WAYPOST_LOG_FORMAT")]
    log_format: LogFormat,
    /// Server WebSocket ping interval.
    #[arg(long, env = "WAYPOST_PING_INTERVAL", default_value = "25s", value_parser = humantime::parse_duration)]
    ping_interval: Duration,
    /// Connections one user may hold at once.
    #[arg(long, env = "WAYPOST_MAX_CONNECTIONS_PER_USER", default_value_t = 16)]
    max_connections_per_user: u32,
    /// WebSockets, SSE streams and long polls this process holds at once
    /// (default: the open-file limit minus a tenth, at least 512, kept for
    /// HTTP requests, Redis and the listener).
    #[arg(long, env = "WAYPOST_MAX_CONNECTIONS")]
    max_connections: Option<usize>,
    /// Messages per second one WebSocket may send.
    #[arg(long, env = "WAYPOST_WS_MESSAGES_PER_S", default_value_t = 50)]
    ws_messages_per_s: u32,
    /// Ingest requests per second per driver.
    #[arg(long, env = "WAYPOST_INGEST_REQUESTS_PER_S", default_value_t = 20)]
    ingest_requests_per_s: u32,
    /// Frames queued per connection before it is closed as too slow (4101).
    #[arg(long, env = "WAYPOST_WS_QUEUE", default_value_t = 256)]
    ws_queue: usize,
    /// How long shutdown waits for in-flight work.
    #[arg(long, env = "WAYPOST_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
    /// A driver with no upload for this long is offline: its latest
    /// position expires and watchers get `driver_status` `offline`.
    #[arg(long, env = "WAYPOST_ONLINE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    online_ttl: Duration,
    /// Interval of the `: keepalive` comment on SSE streams.
    #[arg(long, env = "WAYPOST_SSE_KEEPALIVE", default_value = "25s", value_parser = humantime::parse_duration)]
    sse_keepalive: Duration,
    /// Chat messages kept per room.
    #[arg(long, env = "WAYPOST_CHAT_HISTORY", default_value_t = 1000)]
    chat_history: usize,
    /// Vendor notifications kept per vendor for Last-Event-ID replay.
    #[arg(long, env = "WAYPOST_NOTIFICATION_HISTORY", default_value_t = 1000)]
    notification_history: usize,
    /// A device counts as present in a chat room this long after its last heartbeat.
    #[arg(long, env = "WAYPOST_PRESENCE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    presence_ttl: Duration,
    /// Least time between two `typing` frames of one connection in a room.
    #[arg(long, env = "WAYPOST_TYPING_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    typing_interval: Duration,
    /// Notification streams one vendor may hold open on this process.
    #[arg(long, env = "WAYPOST_MAX_SSE_PER_VENDOR", default_value_t = 8)]
    max_sse_per_vendor: u32,
    /// Endpoint receiving signed webhooks (order status, arrival,
    /// departure); repeatable, or comma separated in the variable.
    #[arg(
        long = "webhook-url",
        env = "WAYPOST_WEBHOOK_URLS",
        value_delimiter = ','
    )]
    webhook_urls: Vec<String>,
    /// HMAC-SHA256 secret of the webhook signatures (required with --webhook-url).
    #[arg(long, env = "WAYPOST_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Consume order events from this Redis Stream (consumer group
    /// `waypost`; Redis engine only).
    #[arg(long, env = "WAYPOST_ORDER_STREAM")]
    order_stream: Option<String>,
    /// Order stream entries pending this long (a crashed consumer's) are
    /// taken over.
    #[arg(long, env = "WAYPOST_ORDER_STREAM_CLAIM_IDLE", default_value = "30s", value_parser = humantime::parse_duration)]
    order_stream_claim_idle: Duration,
    /// Map tiles under the dashboard's driver map: a URL template with
    /// `{z}`, `{x}` and `{y}` (e.g. `https://tile.example.org/{z}/{x}/{y}.png`);
    /// its origin is allowed in the page's CSP. None by default: positions
    /// are drawn on a plain projected canvas, which works offline.
    #[arg(long, env = "WAYPOST_DASHBOARD_TILES", value_parser = waypost_server::routes::dashboard::tile_template)]
    dashboard_tiles: Option<String>,
    #[command(flatten)]
    push: PushArgs,
}

#[derive(clap::Args)]
struct SecretArg {
    /// HS256 secret for tokens; with --jwt-keys, the key of tokens without
    /// a `kid` (one of the two is required unless --dev).
    #[arg(
        long = "jwt-secret",
        env = "WAYPOST_JWT_SECRET",
        hide_env_values = true
    )]
    jwt_secret: Option<String>,
    /// JWKS-style key file (`{"keys":[{"kid",..}]}`: HS256 secrets as
    /// `"kty":"oct"`, RS256/ES256 public keys); tokens pick their key by
    /// `kid`. `serve` re-reads it on SIGHUP.
    #[arg(long = "jwt-keys", env = "WAYPOST_JWT_KEYS")]
    jwt_keys: Option<PathBuf>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SignAlg {
    Rs256,
    Es256,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// Subject: driver id, buyer id, vendor id or service name.
    #[arg(long)]
    sub: String,
    #[arg(long, value_enum)]
    role: RoleArg,
    /// Channels the holder may subscribe to (comma separated or repeated).
    #[arg(long, value_delimiter = ',')]
    channels: Vec<String>,
    /// Lifetime, e.g. 1h, 30m.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Use the development secret.
    #[arg(long)]
    dev: bool,
    #[command(flatten)]
    secret: SecretArg,
    /// Key id to sign with: an HS256 key of --jwt-keys, or the `kid` put in
    /// the header with --private-key.
    #[arg(long)]
    kid: Option<String>,
    /// Sign with this PEM private key (PKCS#8; RSA also PKCS#1) instead of a
    /// shared secret, as an auth service would.
    #[arg(long, requires = "alg")]
    private_key: Option<PathBuf>,
    /// Algorithm of --private-key.
    #[arg(long, value_enum, requires = "private_key")]
    alg: Option<SignAlg>,
}

/// Where the token keys come from: --jwt-keys and/or --jwt-secret, or the
/// development secret with --dev when neither is given.
fn key_source(arg: &SecretArg, dev: bool) -> anyhow::Result<KeySource> {
    let secret = arg
        .jwt_secret
        .as_ref()
        .filter(|s| !s.is_empty())
        .map(|s| s.as_bytes().to_vec());
    match (secret, &arg.jwt_keys, dev) {
        (None, None, true) => Ok(KeySource {
            file: None,
            secret: Some(DEV_SECRET.as_bytes().to_vec()),
        }),
        (None, None, false) => anyhow::bail!(
            "no token keys: set WAYPOST_JWT_SECRET (--jwt-secret) or WAYPOST_JWT_KEYS (--jwt-keys) in production, or pass --dev to use the well-known development secret"
        ),
        (secret, file, _) => Ok(KeySource {
            file: file.clone(),
            secret,
        }),
    }
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Token(args) => {
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .context("system clock before 1970")?
                + args.ttl;
            let claims = Claims {
                sub: args.sub,
                role: args.role.into(),
                exp: exp.as_secs(),
                channels: (!args.channels.is_empty()).then_some(args.channels),
            };
            // `iat` (revocation of a user covers tokens issued before it)
            // and a `jti` (to revoke this one token).
            #[derive(serde::Serialize)]
            struct Minted {
                #[serde(flatten)]
                claims: Claims,
                iat: u64,
                jti: String,
            }
            let claims = Minted {
                claims,
                iat: waypost_server::now_s(),
                jti: uuid::Uuid::new_v4().simple().to_string(),
            };
            let token = match (&args.private_key, args.alg) {
                (Some(path), Some(alg)) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading {}", path.display()))?;
                    let alg = match alg {
                        SignAlg::Rs256 => jsonwebtoken::Algorithm::RS256,
                        SignAlg::Es256 => jsonwebtoken::Algorithm::ES256,
                    };
                    keys::sign_with_pem(alg, &pem, args.kid.as_deref(), &claims)?
                }
                _ => key_source(&args.secret, args.dev)?
                    .load()?
                    .mint(args.kid.as_deref(), &claims)?,
            };
            println!("{token}");
            Ok(())
        }
        Command::Serve(args) => run_server(*args).await,
        Command::PushTest(args) => push_test(*args).await,
        Command::Healthcheck(args) => {
            waypost_server::healthcheck::probe(&args.url, args.timeout)?;
            Ok(())
        }
    }
}

/// The webhook sender of `--webhook-url`, its queue on Redis when the
/// engine is Redis (so it survives a restart), in memory otherwise.
fn start_webhooks(
    args: &ServeArgs,
    redis: Option<&waypost_server::engine::redis::RedisHandle>,
    metrics: &Metrics,
) -> anyhow::Result<Option<Arc<Webhooks>>> {
    if args.webhook_urls.is_empty() {
        return Ok(None);
    }
    let secret = args
        .webhook_secret
        .clone()
        .filter(|s| !s.is_empty())
        .context("--webhook-url needs --webhook-secret (WAYPOST_WEBHOOK_SECRET)")?;
    for url in &args.webhook_urls {
        let ok = url.starts_with("http://") || url.starts_with("https://");
        anyhow::ensure!(ok, "--webhook-url {url:?} is not an http(s) URL");
    }
    let cfg = WebhookConfig::new(args.webhook_urls.clone(), secret);
    let queue: Arc<dyn WebhookQueue> = match redis {
        Some(conn) => Arc::new(RedisWebhookQueue::new(conn.clone())),
        None => Arc::new(MemoryWebhookQueue::new()),
    };
    let wm = WebhookMetrics::new()?;
    wm.register(metrics.registry())?;
    let sender = Arc::new(HttpSender::new(cfg.timeout)?);
    tracing::info!(endpoints = cfg.endpoints.len(), "webhooks on");
    Ok(Some(Webhooks::system(cfg, queue, sender, wm)))
}

/// Pending connections the kernel queues before `accept`: a reconnect storm
/// (thousands of clients within a second after a restart) overflows the
/// usual 1,024 and the dropped SYNs come back only after 1 s, 3 s, 7 s.
/// Linux caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: u32 = 8192;

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Raises the soft open-file limit to the hard one (each connection is a
/// file) and returns the limit now in force, if it can be read.
fn raise_open_file_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: a valid rlimit that only raises the soft limit to the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        } else {
            tracing::warn!(error = %std::io::Error::last_os_error(), soft = lim.rlim_cur, "cannot raise the open-file limit");
        }
    }
    Some(lim.rlim_cur)
}

/// The default connection cap for an open-file limit: a tenth (at least 512)
/// stays free for short HTTP requests, Redis and the listener, so `accept`
/// keeps working at the cap (axum pauses accepting for a second on EMFILE).
fn connection_cap(open_files: Option<u64>) -> usize {
    match open_files {
        Some(n) if n != libc::RLIM_INFINITY => {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            n.saturating_sub((n / 10).max(512)).max(64)
        }
        _ => usize::MAX,
    }
}

async fn run_server(args: ServeArgs) -> anyhow::Result<()> {
    init_logs(args.log_format);
    let source = key_source(&args.secret, args.dev)?;
    if source.secret.as_deref() == Some(DEV_SECRET.as_bytes()) {
        tracing::warn!("DEV MODE: tokens use the public development secret {DEV_SECRET:?}; never expose this server");
    }
    // Raised whether or not the cap is given: every connection is a file.
    let open_files = raise_open_file_limit();
    let limits = Limits {
        ws_ping_interval: args.ping_interval,
        max_connections_per_user: args.max_connections_per_user,
        max_connections: args
            .max_connections
            .unwrap_or_else(|| connection_cap(open_files)),
        ws_messages_per_s: args.ws_messages_per_s,
        ingest_requests_per_s: args.ingest_requests_per_s,
        ws_queue_frames: args.ws_queue,
        drain_timeout: args.drain_timeout,
        sse_keepalive: args.sse_keepalive,
        online_ttl: args.online_ttl,
        chat_history_len: args.chat_history,
        notification_history_len: args.notification_history,
        presence_ttl: args.presence_ttl,
        typing_interval: args.typing_interval,
        max_sse_per_vendor: args.max_sse_per_vendor,
        ..Limits::default()
    };
    let store = KeyStore::open(source).context("loading token keys")?;
    tracing::info!(kids = ?store.current().kids(), "token keys loaded");
    let keys = AuthKeys::from_store(store);
    let metrics = Metrics::new();
    let hub = Arc::new(Hub::new(metrics.clone()));
    let redis_opts = RedisOptions {
        tls: RedisTls {
            ca: args.redis_ca.clone(),
            client_cert: args.redis_client_cert.clone(),
            client_key: args.redis_client_key.clone(),
        },
        sentinel: args.redis_master.clone().map(|master| SentinelConfig {
            addrs: args.redis_sentinel.clone(),
            master,
        }),
        cluster: args.engine == EngineKind::RedisCluster,
        wait_replicas: args.redis_wait_replicas,
        wait_timeout: args.redis_wait_timeout,
        ..RedisOptions::default()
    };
    let redis_context = || {
        format!(
            "connecting to Redis at {}",
            engine::redacted(&args.redis_url)
        )
    };
    let config = EngineConfig {
        store: match args.engine {
            EngineKind::Memory => StoreConfig::Memory,
            EngineKind::Redis | EngineKind::RedisCluster => StoreConfig::Redis {
                url: args.redis_url.clone(),
                opts: Box::new(redis_opts.clone()),
            },
        },
        bus: match args.bus {
            BusKind::Engine => BusConfig::Store,
            BusKind::Nats => BusConfig::Nats {
                url: args.nats_url.clone(),
                opts: NatsOptions {
                    subject_prefix: redis_opts.key_prefix.clone(),
                    ..NatsOptions::default()
                },
            },
        },
    };
    // The bus and every store, on one connection setup and key prefix.
    let opened = engine::open::open(&config, Arc::clone(&hub), &limits, &metrics)
        .await
        .with_context(|| match args.bus {
            BusKind::Engine => redis_context(),
            BusKind::Nats => format!(
                "connecting to NATS at {} and Redis at {}",
                engine::redacted(&args.nats_url),
                engine::redacted(&args.redis_url)
            ),
        })?;
    let (engine, stores) = (opened.engine, opened.stores);
    let store_conn = opened.redis.as_ref().map(chat_redis::store_conn);
    if args.order_stream.is_some() && !args.engine.is_redis() {
        anyhow::bail!("--order-stream needs --engine redis");
    }
    // Orders, webhooks and the order stream still take a plain connection
    // (set up like the engine's: TLS, the primary from Sentinel at connect).
    let redis_conn = match args.engine {
        EngineKind::Memory => None,
        EngineKind::Redis | EngineKind::RedisCluster => Some(
            chat_redis::connect(&args.redis_url, &redis_opts)
                .await
                .with_context(redis_context)?,
        ),
    };
    let mut state = AppState::new(engine, hub, keys, limits.clone(), metrics.clone());
    if let Some(stores) = stores {
        state = state.with_stores(stores);
    }
    if let Some(conn) = &redis_conn {
        state = state
            .with_revocation_store(Arc::new(RedisRevocationStore::new(conn.clone())))
            .with_driver_index(Arc::new(RedisDriverIndex::new(conn.clone())))
            .with_node_stats(Arc::new(RedisNodeStats::new(conn.clone())));
    }
    state = state.with_dashboard_tiles(args.dashboard_tiles.clone());
    let webhooks = start_webhooks(&args, redis_conn.as_ref(), &metrics)?;
    let order_store: Arc<dyn OrderStore> = match &redis_conn {
        Some(conn) => Arc::new(RedisOrderStore::new(conn.clone(), OrderLimits::default())),
        None => Arc::new(MemoryOrderStore::new(OrderLimits::default())),
    };
    let presence: Arc<dyn DriverPresence> = match &redis_conn {
        Some(conn) => Arc::new(RedisDriverPresence::new(conn.clone())),
        None => Arc::new(MemoryDriverPresence::default()),
    };
    let engine = Arc::clone(&state.engine);
    state = state.with_orders(OrderService::new(
        Orders::new(order_store),
        engine,
        webhooks.clone(),
        presence,
    ));
    let push = args
        .push
        .build(push_devices(store_conn), state.push.metrics.clone())?;
    state = state.with_push(Arc::new(push));
    if let Some(hooks) = &webhooks {
        hooks.spawn(&state.tasks, &state.shutdown);
    }
    state
        .orders
        .spawn_presence_sweeper(state.limits.online_ttl, &state.tasks, &state.shutdown);
    if let Some(key) = &args.order_stream {
        let conn = chat_redis::connect(&args.redis_url, &redis_opts)
            .await
            .with_context(redis_context)?;
        let stream_metrics = StreamMetrics::new()?;
        stream_metrics.register(metrics.registry())?;
        let mut cfg = StreamConfig::new(key.clone(), format!("waypost-{}", state.node_id));
        cfg.claim_idle = args.order_stream_claim_idle;
        tracing::info!(stream = %key, consumer = %cfg.consumer, "consuming order events");
        state.tasks.spawn(order_stream::run(
            conn,
            cfg,
            state.orders.clone(),
            stream_metrics,
            state.shutdown.clone(),
        ));
    }
    let listener = listen(args.listen).with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        engine = state.engine.name(),
        max_connections = state.limits.max_connections,
        "waypost listening"
    );
    // Machine-readable line for test harnesses that bind port 0.
    println!("listening on {addr}");
    tokio::spawn(shutdown_on_signal(state.shutdown.clone()));
    state.tasks.spawn(keys::reload_on_sighup(
        Arc::clone(state.keys.store()),
        state.shutdown.clone(),
    ));
    serve(listener, state).await?;
    Ok(())
}

/// `waypost push-test`: a test push to every device of `--user`, sent
/// from this process with the server's flags.
async fn push_test(args: PushTestArgs) -> anyhow::Result<()> {
    init_logs(args.serve.log_format);
    let conn = match args.serve.engine {
        EngineKind::Memory => None,
        EngineKind::Redis | EngineKind::RedisCluster => {
            let opts = RedisOptions {
                tls: RedisTls {
                    ca: args.serve.redis_ca.clone(),
                    client_cert: args.serve.redis_client_cert.clone(),
                    client_key: args.serve.redis_client_key.clone(),
                },
                cluster: args.serve.engine == EngineKind::RedisCluster,
                ..RedisOptions::default()
            };
            Some(
                StoreConn::connect(&args.serve.redis_url, &opts)
                    .await
                    .with_context(|| {
                        format!(
                            "connecting to Redis at {}",
                            engine::redacted(&args.serve.redis_url)
                        )
                    })?,
            )
        }
    };
    let metrics = PushMetrics::new();
    let push = args.serve.push.build(push_devices(conn), metrics.clone())?;
    anyhow::ensure!(
        push.enabled(),
        "no push provider configured (--apns-* or --fcm-*)"
    );
    let queued = push.test_push(&args.user).await?;
    let deadline = tokio::time::Instant::now() + args.wait;
    while push.queued() > 0 && tokio::time::Instant::now() < deadline {
        if push.drain_ready().await == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let sent: u64 = ["apns", "fcm"]
        .iter()
        .map(|p| metrics.sent.with_label_values(&[p]).get())
        .sum();
    let removed: u64 = ["apns", "fcm"]
        .iter()
        .map(|p| metrics.removed.with_label_values(&[p]).get())
        .sum();
    println!(
        "devices: {queued}, sent: {sent}, removed (dead token): {removed}, still queued: {}",
        push.queued()
    );
    anyhow::ensure!(queued > 0, "user {:?} has no registered device", args.user);
    anyhow::ensure!(sent as usize == queued, "not every push was accepted");
    Ok(())
}

/// The push device store: on the engine's Redis connection and key prefix
/// with the Redis engine.
fn push_devices(conn: Option<StoreConn>) -> Arc<dyn DeviceStore> {
    waypost_server::push::devices::store(conn)
}

#[cfg(test)]
mod tests {
    use super::connection_cap;

    #[test]
    fn redis_urls_lose_their_credentials_in_messages() {
        assert_eq!(
            super::engine::redacted("rediss://default:s3cret@redis.example:6380/0"),
            "rediss://***@redis.example:6380/0"
        );
        assert_eq!(
            super::engine::redacted("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn the_connection_cap_leaves_a_tenth_of_the_files_free() {
        assert_eq!(connection_cap(Some(20_000)), 18_000);
        assert_eq!(connection_cap(Some(1_048_576)), 943_719);
        // Small limits keep 512 free, but never cap below 64.
        assert_eq!(connection_cap(Some(1_024)), 512);
        assert_eq!(connection_cap(Some(256)), 64);
        assert_eq!(connection_cap(None), usize::MAX);
        assert_eq!(connection_cap(Some(libc::RLIM_INFINITY)), usize::MAX);
    }
}
