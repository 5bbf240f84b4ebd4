//! The per-endpoint retry queue of webhook events, and its in-memory
//! implementation (lost on restart; the Redis one in `queue_redis.rs`
//! survives it).

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::engine::EngineError;

/// What `push` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued,
    /// An event with this id is queued already.
    Duplicate,
    /// The endpoint's queue is full; not queued.
    Full,
}

/// A claimed event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub event_id: String,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// Per endpoint: events with a due time. Guarantees: an id is queued at
/// most once; at most `cap` events per endpoint; `claim` hands an event to
/// one caller at a time (it is leased until `now + lease`, after which it
/// is due again if neither `done` nor `retry` was called — the at-least-once
/// path of a crashed process).
#[async_trait]
pub trait WebhookQueue: Send + Sync + 'static {
    async fn push(
        &self,
        endpoint: &str,
        event_id: &str,
        body: &str,
        due_ms: i64,
        cap: usize,
    ) -> Result<Enqueued, EngineError>;

    /// The earliest event due at `now_ms`, leased until `now_ms + lease_ms`.
    async fn claim(
        &self,
        endpoint: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Pending>, EngineError>;

    /// Removes a delivered (or abandoned) event.
    async fn done(&self, endpoint: &str, event_id: &str) -> Result<(), EngineError>;

    /// Records a failed attempt and makes the event due at `due_ms`.
    async fn retry(
        &self,
        endpoint: &str,
        event_id: &str,
        attempts: u32,
        due_ms: i64,
    ) -> Result<(), EngineError>;

    async fn len(&self, endpoint: &str) -> Result<usize, EngineError>;
}

#[derive(Default)]
struct Endpoint {
    /// (due ms, id), earliest first.
    due: BTreeSet<(i64, String)>,
    /// id → (body, attempts, due ms).
    items: HashMap<String, (String, u32, i64)>,
}

impl Endpoint {
    fn reschedule(&mut self, id: &str, due_ms: i64) {
        if let Some(item) = self.items.get_mut(id) {
            self.due.remove(&(item.2, id.to_owned()));
            item.2 = due_ms;
            self.due.insert((due_ms, id.to_owned()));
        }
    }
}

/// In-process queue; the number of endpoints is fixed by the configuration.
#[derive(Default)]
pub struct MemoryWebhookQueue {
    endpoints: Mutex<HashMap<String, Endpoint>>,
}

impl MemoryWebhookQueue {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl WebhookQueue for MemoryWebhookQueue {
    async fn push(
        &self,
        endpoint: &str,
        event_id: &str,
        body: &str,
        due_ms: i64,
        cap: usize,
    ) -> Result<Enqueued, EngineError> {
        let mut eps = self.endpoints.lock();
        let ep = eps.entry(endpoint.to_owned()).or_default();
        if ep.items.contains_key(event_id) {
            return Ok(Enqueued::Duplicate);
        }
        if ep.items.len() >= cap {
            return Ok(Enqueued::Full);
        }
        ep.items
            .insert(event_id.to_owned(), (body.to_owned(), 0, due_ms));
        ep.due.insert((due_ms, event_id.to_owned()));
        Ok(Enqueued::Queued)
    }

    async fn claim(
        &self,
        endpoint: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<Pending>, EngineError> {
        let mut eps = self.endpoints.lock();
        let Some(ep) = eps.get_mut(endpoint) else {
            return Ok(None);
        };
        let Some((due, id)) = ep.due.first().cloned() else {
            return Ok(None);
        };
        if due > now_ms {
            return Ok(None);
        }
        ep.reschedule(&id, now_ms + lease_ms);
        Ok(ep.items.get(&id).map(|(body, attempts, _)| Pending {
            event_id: id.clone(),
            body: body.clone(),
            attempts: *attempts,
        }))
    }

    async fn done(&self, endpoint: &str, event_id: &str) -> Result<(), EngineError> {
        let mut eps = self.endpoints.lock();
        if let Some(ep) = eps.get_mut(endpoint) {
            if let Some((_, _, due)) = ep.items.remove(event_id) {
                ep.due.remove(&(due, event_id.to_owned()));
            }
        }
        Ok(())
    }

    async fn retry(
        &self,
        endpoint: &str,
        event_id: &str,
        attempts: u32,
        due_ms: i64,
    ) -> Result<(), EngineError> {
        let mut eps = self.endpoints.lock();
        if let Some(ep) = eps.get_mut(endpoint) {
            if let Some(item) = ep.items.get_mut(event_id) {
                item.1 = attempts;
            }
            ep.reschedule(event_id, due_ms);
        }
        Ok(())
    }

    async fn len(&self, endpoint: &str) -> Result<usize, EngineError> {
        Ok(self
            .endpoints
            .lock()
            .get(endpoint)
            .map_or(0, |e| e.items.len()))
    }
}
