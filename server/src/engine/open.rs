//! [`open`]: the bus and every store from the configuration, with one
//! connection setup and one key prefix per backend.

use std::sync::Arc;

use super::chat::ChatStores;
use super::redis::{RedisConn, RedisOptions};
use super::{Engine, EngineError};
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
                super::redis::open_on(conn.clone(), hub, limits.clone(), metrics.clone()).await?;
            Ok(Opened {
                engine,
                stores: Some(stores),
                redis: Some(conn),
            })
        }
    }
}
