//! Counting every failed engine or store call in `engine_errors_total`, in
//! one place: the app state wraps the engine and the chat stores in these
//! decorators, so handlers and connections only map or log an
//! [`EngineError`], they never count it by hand.

use std::sync::Arc;

use async_trait::async_trait;
use waypost_protocol::{Channel, Fix};

use super::chat::{
    Appended, ChatStore, ChatStores, History, NewMessage, Notification, NotificationHistory,
    NotificationStore, PresenceChanges, PresenceStore,
};
use super::{Bus, Engine, EngineError, IngestOutcome, IngestTime, StoredFix, TrackingStore};
use crate::frame::Frame;
use crate::metrics::Metrics;

/// Wraps `inner` (an engine or a store) and counts its errors.
pub struct Counted<T: ?Sized> {
    inner: Arc<T>,
    metrics: Metrics,
}

impl<T: ?Sized> Counted<T> {
    pub fn new(inner: Arc<T>, metrics: Metrics) -> Self {
        Self { inner, metrics }
    }

    fn count<V>(&self, result: Result<V, EngineError>) -> Result<V, EngineError> {
        if result.is_err() {
            self.metrics.engine_errors.inc();
        }
        result
    }
}

/// The engine (its bus and tracking store) with its errors counted.
pub fn engine(engine: Engine, metrics: &Metrics) -> Engine {
    let name = engine.name();
    let republish = engine.republishes_resends();
    Engine::new(
        name,
        Arc::new(Counted::new(engine.bus, metrics.clone())),
        Arc::new(Counted::new(engine.tracking, metrics.clone())),
    )
    .republishing_resends(republish)
}

/// The stores with their errors counted.
pub fn stores(stores: ChatStores, metrics: &Metrics) -> ChatStores {
    ChatStores {
        chat: Arc::new(Counted::new(stores.chat, metrics.clone())),
        presence: Arc::new(Counted::new(stores.presence, metrics.clone())),
        notifications: Arc::new(Counted::new(stores.notifications, metrics.clone())),
    }
}

#[async_trait]
impl TrackingStore for Counted<dyn TrackingStore> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn ingest(
        &self,
        driver_id: &str,
        device_id: &str,
        fixes: &[Fix],
        at: IngestTime,
    ) -> Result<IngestOutcome, EngineError> {
        self.count(self.inner.ingest(driver_id, device_id, fixes, at).await)
    }

    async fn latest(&self, driver_id: &str, now_ms: i64) -> Result<Option<StoredFix>, EngineError> {
        self.count(self.inner.latest(driver_id, now_ms).await)
    }

    async fn trail(
        &self,
        driver_id: &str,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Fix>, EngineError> {
        self.count(self.inner.trail(driver_id, after_seq, limit).await)
    }

    async fn ready(&self) -> Result<(), EngineError> {
        self.count(self.inner.ready().await)
    }
}

#[async_trait]
impl Bus for Counted<dyn Bus> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn publish(&self, channel: &Channel, frame: Frame) -> Result<(), EngineError> {
        self.count(self.inner.publish(channel, frame).await)
    }

    async fn sync_subscription(&self, channel: &Channel) -> Result<(), EngineError> {
        self.count(self.inner.sync_subscription(channel).await)
    }

    async fn watchers(&self, channel: &Channel) -> Result<u64, EngineError> {
        self.count(self.inner.watchers(channel).await)
    }

    async fn ready(&self) -> Result<(), EngineError> {
        self.count(self.inner.ready().await)
    }

    fn resubscribed(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.resubscribed()
    }

    async fn shutdown(&self) {
        self.inner.shutdown().await;
    }
}

#[async_trait]
impl ChatStore for Counted<dyn ChatStore> {
    async fn append(&self, msg: NewMessage) -> Result<Appended, EngineError> {
        self.count(self.inner.append(msg).await)
    }

    async fn after(&self, room: &str, after: u64, limit: usize) -> Result<History, EngineError> {
        self.count(self.inner.after(room, after, limit).await)
    }

    async fn mark(
        &self,
        room: &str,
        user: &str,
        kind: waypost_protocol::ReceiptKind,
        seq: u64,
    ) -> Result<Option<waypost_protocol::ParticipantReceipts>, EngineError> {
        self.count(self.inner.mark(room, user, kind, seq).await)
    }

    async fn receipts(
        &self,
        room: &str,
    ) -> Result<Vec<waypost_protocol::ParticipantReceipts>, EngineError> {
        self.count(self.inner.receipts(room).await)
    }
}

#[async_trait]
impl PresenceStore for Counted<dyn PresenceStore> {
    async fn join(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        self.count(self.inner.join(room, user, conn, now_ms).await)
    }

    async fn leave(
        &self,
        room: &str,
        user: &str,
        conn: &str,
        now_ms: i64,
    ) -> Result<PresenceChanges, EngineError> {
        self.count(self.inner.leave(room, user, conn, now_ms).await)
    }

    async fn online(
        &self,
        room: &str,
        now_ms: i64,
        limit: usize,
    ) -> Result<Vec<String>, EngineError> {
        self.count(self.inner.online(room, now_ms, limit).await)
    }
}

#[async_trait]
impl NotificationStore for Counted<dyn NotificationStore> {
    async fn append(
        &self,
        vendor: &str,
        event: &str,
        data: serde_json::Value,
        now_ms: i64,
    ) -> Result<Notification, EngineError> {
        self.count(self.inner.append(vendor, event, data, now_ms).await)
    }

    async fn after(
        &self,
        vendor: &str,
        after: u64,
        limit: usize,
    ) -> Result<NotificationHistory, EngineError> {
        self.count(self.inner.after(vendor, after, limit).await)
    }
}
