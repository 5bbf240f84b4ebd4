//! [`open`]: the bus and every store from the configuration, with one
//! connection setup and one key prefix per backend.

use std::sync::Arc;

use super::chat::ChatStores;
use super::nats::{NatsBus, NatsOptions};
use super::redis::cluster_pubsub::ClusterBus;
use super::redis::{RedisBus, RedisTrackingStore};
use super::redis::{RedisConn, RedisOptions};
use super::{Bus, Engine, EngineError};
use crate::config::Limits;
use crate::hub::Hub;
use crate::metrics::Metrics;

/// Where state lives.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    /// In this process (one process only).
    Memory,
    /// On Redis at `url`.
    Redis {
        url: String,
        opts: Box<RedisOptions>,
    },
}

/// What fans out between processes.
#[derive(Debug, Clone, Default)]
pub enum BusConfig {
    /// The store's own: the memory hub, or Redis pub/sub.
    #[default]
    Store,
    /// NATS at `url` (needs the Redis store: watcher counts live there).
    Nats { url: String, opts: NatsOptions },
}

/// `--engine` (the stores) and `--bus`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub store: StoreConfig,
    pub bus: BusConfig,
}

/// What [`open`] built.
pub struct Opened {
    /// The bus and the tracking store.
    pub engine: Engine,
    /// Chat, presence and notification stores on the same backend (`None`:
    /// the memory ones [`crate::state::AppState`] makes by default).
    pub stores: Option<ChatStores>,
    /// The Redis connection setup the stores share, for the Redis users
    /// outside the engine.
    pub redis: Option<RedisConn>,
}

/// Builds the bus and every store of `config`. Fails when a backend does
/// not answer within a few seconds.
pub async fn open(
    config: &EngineConfig,
    hub: Arc<Hub>,
    limits: &Limits,
    metrics: &Metrics,
) -> Result<Opened, EngineError> {
    match (&config.store, &config.bus) {
        (StoreConfig::Memory, BusConfig::Store) => Ok(Opened {
            engine: Engine::memory(hub, limits.clone()),
            stores: None,
            redis: None,
        }),
        (StoreConfig::Redis { url, opts }, BusConfig::Store) => {
            let conn = RedisConn::connect(url, RedisOptions::clone(opts)).await?;
            let (engine, stores) =
                redis_on(conn.clone(), hub, limits.clone(), metrics.clone()).await?;
            Ok(Opened {
                engine,
                stores: Some(stores),
                redis: Some(conn),
            })
        }
        (
            StoreConfig::Redis { url, opts },
            BusConfig::Nats {
                url: nats_url,
                opts: nats,
            },
        ) => {
            let conn = RedisConn::connect(url, RedisOptions::clone(opts)).await?;
            let bus = NatsBus::connect(nats_url, nats.clone(), &conn, hub).await?;
            // The script cannot publish on NATS: the engine publishes after it.
            let tracking = RedisTrackingStore::new(conn.clone(), limits.clone(), false);
            let name = if opts.cluster {
                "nats+redis-cluster"
            } else {
                "nats+redis"
            };
            Ok(Opened {
                engine: Engine::new(name, Arc::new(bus), Arc::new(tracking))
                    .republishing_resends(opts.wait_replicas > 0),
                stores: Some(super::chat_redis::stores(&conn, limits)),
                redis: Some(conn),
            })
        }
        (StoreConfig::Memory, BusConfig::Nats { .. }) => Err(EngineError::Nats(
            "--bus nats needs --engine redis (the stores and watcher counts live in Redis)".into(),
        )),
    }
}

/// Redis stores and the Redis pub/sub bus on one connection setup (the
/// tracking store publishes from its ingest script); on a cluster
/// (`opts.cluster`) the sharded pub/sub bus.
pub async fn redis(
    url: &str,
    hub: Arc<Hub>,
    limits: Limits,
    metrics: Metrics,
    opts: RedisOptions,
) -> Result<(Engine, ChatStores), EngineError> {
    redis_on(RedisConn::connect(url, opts).await?, hub, limits, metrics).await
}

/// [`redis`] on a connection setup made before.
pub async fn redis_on(
    conn: RedisConn,
    hub: Arc<Hub>,
    limits: Limits,
    metrics: Metrics,
) -> Result<(Engine, ChatStores), EngineError> {
    let (bus, name): (Arc<dyn Bus>, _) = if conn.opts.cluster {
        (
            Arc::new(ClusterBus::start(conn.clone(), hub, metrics).await?),
            "redis-cluster",
        )
    } else {
        (
            Arc::new(RedisBus::start(conn.clone(), hub, metrics).await?),
            "redis",
        )
    };
    let tracking = RedisTrackingStore::new(conn.clone(), limits.clone(), true);
    let stores = super::chat_redis::stores(&conn, &limits);
    let engine = Engine::new(name, bus, Arc::new(tracking))
        .republishing_resends(conn.opts.wait_replicas > 0);
    Ok((engine, stores))
}
