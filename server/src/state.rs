//! [`AppState`]: what every handler and connection task shares (engine, hub,
//! keys, limits, metrics, counters, shutdown token, task tracker, chat
//! stores), and the admission helpers built on it. The router and serving
//! live in `app.rs`; nothing below the routes needs this module.

use std::sync::Arc;

use axum::extract::FromRef;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waypost_protocol::{Channel, ChannelKind};

use crate::activity::Activity;
use crate::admission::{ConnectionCounter, ConnectionPermit, Full, KeyedLimiter};
use crate::auth::AuthKeys;
use crate::chat::Chat;
use crate::cluster::{Lookups, NodeStats};
use crate::config::Limits;
use crate::driver_index::DriverIndex;
use crate::engine::chat::{ChatStores, PresenceStore};
use crate::engine::chat_memory::{MemoryChatStore, MemoryNotificationStore, MemoryPresenceStore};
use crate::engine::counted;
use crate::engine::{Engine, EngineError};
use crate::error::AppError;
use crate::expiry::ExpiryWheel;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::orders::live::OrderService;
use crate::orders::memory::MemoryOrderStore;
use crate::orders::{OrderLimits, Orders};
use crate::push::devices::MemoryDeviceStore;
use crate::push::{Liveness, Push, PushConfig, PushMetrics};
use crate::revocation::{MemoryRevocationStore, RevocationStore, UserConnections};

/// Most distinct drivers whose ingest rate is tracked at once.
const MAX_RATE_KEYS: usize = 100_000;

/// Everything handlers share: one pointer, cloned per request and per
/// connection (a connection task holds it for its whole life, so its size
/// is per-connection memory).
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// What [`AppState`] points to.
#[derive(Clone)]
pub struct Shared {
    pub engine: Arc<Engine>,
    pub hub: Arc<Hub>,
    /// Behind an `Arc`: the state is cloned per request and per connection,
    /// and the keys are the bulk of it (300 bytes plus two heap sets).
    pub keys: Arc<AuthKeys>,
    pub limits: Arc<Limits>,
    pub metrics: Metrics,
    pub connections: Arc<ConnectionCounter>,
    pub ingest_limiter: Arc<KeyedLimiter>,
    /// Cancelled when the server starts shutting down.
    pub shutdown: CancellationToken,
    /// Tracks connection tasks (WebSocket, SSE) so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// Chat history, presence and vendor notifications (memory by default;
    /// `with_stores` plugs in Redis).
    pub stores: ChatStores,
    /// Identifies this process in presence entries (`{node_id}:{conn}`).
    pub node_id: Arc<str>,
    /// Open notification streams per vendor on this process.
    pub sse_per_vendor: Arc<ConnectionCounter>,
    /// Chat posts over HTTP per user.
    pub chat_post_limiter: Arc<KeyedLimiter>,
    /// Recently seen drivers and notifications, for the dashboard.
    pub activity: Arc<Activity>,
    /// Starts the process-wide WebSocket ticker once (on the first
    /// connection; see `routes::ws::conn::ticker`).
    pub ws_ticker: Arc<std::sync::Once>,
    /// Orders with their fan-out (memory store by default; `with_orders`
    /// plugs in Redis and webhooks).
    pub orders: OrderService,
    /// Where revocations are stored for every process (memory by default;
    /// `with_revocation_store` plugs in Redis).
    pub revocation_store: Arc<dyn RevocationStore>,
    /// Live connections by user, for revocations and disconnects.
    pub user_conns: Arc<UserConnections>,
    /// Drivers seen by every process (Redis); `None`: this process is the
    /// cluster and `activity` is the index.
    pub driver_index: Option<Arc<dyn DriverIndex>>,
    /// Token expiry of live connections (one task for the process).
    pub expiry: Arc<ExpiryWheel>,
    /// Every process's figures (Redis); `None`: this process is the cluster.
    pub node_stats: Option<Arc<dyn NodeStats>>,
    /// This process's pending user lookups across processes.
    pub lookups: Arc<Lookups>,
    /// Map tile URL template of the dashboard (`--dashboard-tiles`).
    pub dashboard_tiles: Option<Arc<str>>,
    /// The clock of location ingest ([`crate::SystemClock`] but in the
    /// SDK replay benchmark).
    pub ingest_clock: Arc<dyn crate::IngestClock>,
    /// Push devices and delivery (memory store, no provider by default;
    /// `with_push` plugs in Redis and APNs/FCM).
    pub push: Arc<Push>,
}

impl AppState {
    pub fn new(
        engine: Engine,
        hub: Arc<Hub>,
        keys: AuthKeys,
        limits: Limits,
        metrics: Metrics,
    ) -> Self {
        let ingest_limiter = Arc::new(KeyedLimiter::new(
            limits.ingest_requests_per_s,
            limits.ingest_requests_per_s.saturating_mul(2),
            MAX_RATE_KEYS,
        ));
        let stores = ChatStores {
            chat: Arc::new(MemoryChatStore::new(&limits)),
            presence: Arc::new(MemoryPresenceStore::new(&limits)),
            notifications: Arc::new(MemoryNotificationStore::new(&limits)),
        };
        // Every engine and store error is counted here, once.
        let engine = Arc::new(counted::engine(engine, &metrics));
        let stores = counted::stores(stores, &metrics);
        let push_metrics = PushMetrics::new();
        push_metrics.register(metrics.registry());
        let push = Arc::new(Push::new(
            PushConfig::default(),
            Arc::new(MemoryDeviceStore::default()),
            None,
            None,
            push_metrics,
        ));
        let orders = OrderService::new(
            Orders::new(Arc::new(MemoryOrderStore::new(OrderLimits::default()))),
            Arc::clone(&engine),
            None,
            Arc::new(crate::orders::presence::MemoryDriverPresence::default()),
        );
        Self(Arc::new(Shared {
            orders,
            engine,
            hub,
            keys: Arc::new(keys),
            limits: Arc::new(limits.clone()),
            metrics,
            connections: Arc::new(ConnectionCounter::with_total_cap(limits.max_connections)),
            ingest_limiter,
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            stores,
            node_id: uuid::Uuid::new_v4().simple().to_string().into(),
            sse_per_vendor: Arc::new(ConnectionCounter::default()),
            chat_post_limiter: Arc::new(KeyedLimiter::new(
                limits.ws_messages_per_s,
                limits.ws_messages_per_s.saturating_mul(2),
                MAX_RATE_KEYS,
            )),
            activity: Arc::new(Activity::new()),
            ws_ticker: Arc::new(std::sync::Once::new()),
            revocation_store: Arc::new(MemoryRevocationStore),
            user_conns: Arc::default(),
            driver_index: None,
            expiry: Arc::default(),
            node_stats: None,
            lookups: Arc::default(),
            dashboard_tiles: None,
            push,
            ingest_clock: Arc::new(crate::SystemClock),
        }))
    }
}

impl AppState {
    /// Replaces the chat, presence and notification stores (e.g. with the
    /// Redis ones when the engine is Redis).
    pub fn with_stores(self, stores: ChatStores) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.stores = counted::stores(stores, &shared.metrics);
        Self(Arc::new(shared))
    }

    /// Replaces the clock location ingest judges fixes by (the SDK replay
    /// benchmark runs ingest in a trace's simulated time).
    pub fn with_ingest_clock(self, clock: Arc<dyn crate::IngestClock>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.ingest_clock = clock;
        Self(Arc::new(shared))
    }

    /// Replaces the order service (Redis store, webhooks).
    pub fn with_orders(self, orders: OrderService) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.orders = orders;
        Self(Arc::new(shared))
    }

    /// Replaces the push service (Redis devices, providers); the order
    /// service pushes through it too.
    pub fn with_push(self, push: Arc<Push>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.orders = shared.orders.with_push(Arc::clone(&push));
        shared.push = push;
        Self(Arc::new(shared))
    }

    /// What push asks before pushing: whether the user is live on the
    /// channel on any process.
    pub fn liveness(&self) -> Arc<dyn Liveness> {
        Arc::new(EngineLiveness {
            push: Arc::clone(&self.push),
            presence: Arc::clone(&self.stores.presence),
            max_presence: self.limits.max_presence_per_room,
        })
    }

    /// Replaces the revocation store (the Redis one with the Redis engine).
    pub fn with_revocation_store(self, store: Arc<dyn RevocationStore>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.revocation_store = store;
        Self(Arc::new(shared))
    }

    /// Sets the cluster-wide driver index (the Redis one).
    pub fn with_driver_index(self, index: Arc<dyn DriverIndex>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.driver_index = Some(index);
        Self(Arc::new(shared))
    }

    /// Sets the cluster-wide store of process figures (the Redis one).
    pub fn with_node_stats(self, stats: Arc<dyn NodeStats>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.node_stats = Some(stats);
        Self(Arc::new(shared))
    }

    /// Sets the dashboard's map tile URL template (checked by the caller).
    pub fn with_dashboard_tiles(self, template: Option<String>) -> Self {
        let mut shared = Arc::unwrap_or_clone(self.0);
        shared.dashboard_tiles = template.map(Into::into);
        Self(Arc::new(shared))
    }

    /// One of `user`'s connection slots: WebSockets, SSE streams and long
    /// polls share them, within the per-user limit and the process cap. A
    /// refusal is counted in `limit_hits` (`connections` for the user's
    /// limit, `server_connections` for the process cap).
    pub fn connection_slot(&self, user: &str) -> Result<ConnectionPermit, Full> {
        let slot = self
            .connections
            .acquire(user, self.limits.max_connections_per_user);
        if let Err(full) = slot {
            let kind = match full {
                Full::User(_) => "connections",
                Full::Process(_) => "server_connections",
            };
            self.metrics.limit_hits.with_label_values(&[kind]).inc();
            tracing::debug!(user, ?full, "connection refused");
        }
        slot
    }

    /// One of the user's connection slots (shared with WebSockets), as an
    /// HTTP error when refused: 429 at the user's limit, 503 at the process
    /// cap.
    pub fn user_permit(&self, user: &str) -> Result<ConnectionPermit, AppError> {
        self.connection_slot(user).map_err(|full| match full {
            Full::User(_) => AppError::RateLimited { retry_after_s: 5 },
            Full::Process(_) => AppError::Overloaded { retry_after_s: 5 },
        })
    }
}

impl AppState {
    /// The chat, presence and notification operations.
    pub fn chat(&self) -> Chat<'_> {
        Chat {
            engine: &self.engine,
            stores: &self.stores,
            limits: &self.limits,
            push: &self.push,
        }
    }
}

/// Liveness across processes, per user: chat presence (expiring) for
/// rooms; for order and vendor channels, whether this user has a live
/// subscription to it on any process (`push::live`; someone else watching
/// the same order does not count).
struct EngineLiveness {
    push: Arc<Push>,
    presence: Arc<dyn PresenceStore>,
    max_presence: usize,
}

#[async_trait::async_trait]
impl Liveness for EngineLiveness {
    async fn is_live(&self, user: &str, channel: &Channel) -> Result<bool, EngineError> {
        if channel.kind == ChannelKind::Chat {
            let online = self
                .presence
                .online(&channel.id, crate::now_ms(), self.max_presence)
                .await?;
            Ok(online.iter().any(|u| u == user))
        } else {
            self.push.live.is_live(&channel.to_string(), user).await
        }
    }
}

/// The auth extractor needs only the keys.
impl FromRef<AppState> for Arc<AuthKeys> {
    fn from_ref(state: &AppState) -> Self {
        Arc::clone(&state.keys)
    }
}
