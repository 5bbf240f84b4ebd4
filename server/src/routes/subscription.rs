//! What every live transport (WebSocket, SSE stream, long poll) holds while
//! it is open: its [`Open`] connection (slot and gauge) and one
//! [`Subscription`] per channel (hub membership plus the engine's
//! subscription). Both undo themselves on drop, however the connection
//! ends. Engine errors are counted where they happen (`engine::counted`).

use prometheus::IntGauge;
use waypost_protocol::Channel;

use crate::admission::ConnectionPermit;
use crate::engine::EngineError;
use crate::hub::{ConnHandle, ConnId, Outbound};
use crate::state::AppState;

/// One open connection: its slots (per user, and e.g. per vendor) and its
/// `connections{transport}` gauge, given back on drop.
pub struct Open<const N: usize> {
    gauge: IntGauge,
    _permits: [ConnectionPermit; N],
}

impl<const N: usize> Open<N> {
    /// Counts a connection of `transport` (`ws`, `sse`, `poll`).
    pub fn new(state: &AppState, transport: &str, permits: [ConnectionPermit; N]) -> Self {
        let gauge = state.metrics.connections.with_label_values(&[transport]);
        gauge.inc();
        Self {
            gauge,
            _permits: permits,
        }
    }
}

impl<const N: usize> Drop for Open<N> {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// One connection's membership of one channel: in the hub, and in the
/// engine while the hub has any local subscriber of the channel.
pub struct Subscription {
    state: AppState,
    channel: Channel,
    conn: ConnId,
    joined: bool,
    /// The connection's user while it counts as live on the channel for
    /// push (`crate::push::live`).
    live_user: Option<String>,
    /// The last location frame written on the channel, for a
    /// `waypost.v1.lean` WebSocket only (the base of the next one's delta;
    /// `None` on every other connection, and after a (re)subscribe).
    pub last_location: Option<Outbound>,
}

impl Subscription {
    /// Joins the hub first, then brings the engine's subscription in line,
    /// so nothing published once this returns is missed. On an engine error
    /// the hub membership is undone (by the drop) and the error returned.
    pub async fn join(
        state: &AppState,
        channel: Channel,
        handle: &ConnHandle,
    ) -> Result<Self, EngineError> {
        let (sub, synced) = Self::join_keeping(state, channel, handle).await;
        synced.map(|()| sub)
    }

    /// Like [`Subscription::join`], but an engine error leaves the hub
    /// membership in place: local publishes still arrive, and the engine's
    /// periodic reconciliation subscribes the channel once it can.
    pub async fn join_keeping(
        state: &AppState,
        channel: Channel,
        handle: &ConnHandle,
    ) -> (Self, Result<(), EngineError>) {
        state.hub.add(&channel, handle.clone());
        // Push: this user is live on the channel from now on (listed users
        // only; a connection is listed before it subscribes).
        let live_user = (state.push.enabled() && crate::push::live::tracked(&channel))
            .then(|| state.user_conns.user_of(handle.id))
            .flatten();
        let mut sub = Self {
            state: state.clone(),
            channel,
            conn: handle.id,
            joined: true,
            live_user: None,
            last_location: None,
        };
        if let Some(user) = live_user {
            let name = sub.channel.to_string();
            // Counted before the await: a drop while marking undoes it.
            sub.live_user = Some(user.clone());
            state.push.live.join(&name, &user).await;
        }
        let synced = state.engine.sync_subscription(&sub.channel).await;
        (sub, synced)
    }

    /// Push: the connection's user no longer counts as live here (the
    /// shared mark goes in a task tracked by `state.tasks`).
    fn leave_live(&mut self) {
        let Some(user) = self.live_user.take() else {
            return;
        };
        let name = self.channel.to_string();
        if self.state.push.live.leave(&name, &user) {
            let push = std::sync::Arc::clone(&self.state.push);
            self.state
                .tasks
                .spawn(async move { push.live.unmark(&name, &user).await });
        }
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Leaves now and waits until the engine followed (the drop does the
    /// same in a background task).
    pub async fn leave(mut self) {
        self.leave_live();
        self.joined = false;
        if self.state.hub.remove(&self.channel, self.conn) {
            if let Err(e) = self.state.engine.sync_subscription(&self.channel).await {
                tracing::debug!(error = %e, channel = %self.channel, "unsubscribe failed");
            }
        }
    }
}

/// A connection's subscriptions, one per channel, looked up by channel.
///
/// Sized for idle memory: a vector with no spare room (one element for the
/// usual single subscription, not a hash table of at least four buckets
/// plus a second copy of each channel as the key), searched linearly: a
/// connection holds at most `max_channels_per_connection` (64 by default).
#[derive(Default)]
pub struct Subscriptions(Vec<Subscription>);

impl Subscriptions {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, channel: &Channel) -> bool {
        self.0.iter().any(|s| s.channel() == channel)
    }

    pub fn get(&self, channel: &Channel) -> Option<&Subscription> {
        self.0.iter().find(|s| s.channel() == channel)
    }

    pub fn get_mut(&mut self, channel: &Channel) -> Option<&mut Subscription> {
        self.0.iter_mut().find(|s| s.channel() == channel)
    }

    /// Adds `sub`, replacing (and returning) one on the same channel.
    pub fn insert(&mut self, sub: Subscription) -> Option<Subscription> {
        if let Some(old) = self.0.iter_mut().find(|s| s.channel() == sub.channel()) {
            return Some(std::mem::replace(old, sub));
        }
        if self.0.is_empty() {
            // Room for exactly one (a plain push reserves four).
            self.0.reserve_exact(1);
        }
        self.0.push(sub);
        None
    }

    pub fn remove(&mut self, channel: &Channel) -> Option<Subscription> {
        let i = self.0.iter().position(|s| s.channel() == channel)?;
        let sub = self.0.swap_remove(i);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        Some(sub)
    }

    /// The subscribed channels, in no particular order.
    pub fn channels(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter().map(Subscription::channel)
    }

    /// Removes and returns every subscription.
    pub fn take_all(&mut self) -> Vec<Subscription> {
        std::mem::take(&mut self.0)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.leave_live();
        if !self.joined || !self.state.hub.remove(&self.channel, self.conn) {
            return;
        }
        // The last local subscriber left: the engine drops its subscription
        // (a task, since drop cannot wait; tracked so shutdown waits for it).
        let engine = std::sync::Arc::clone(&self.state.engine);
        let channel = self.channel.clone();
        self.state.tasks.spawn(async move {
            if let Err(e) = engine.sync_subscription(&channel).await {
                tracing::debug!(error = %e, %channel, "unsubscribe failed");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::AuthKeys;
    use crate::config::Limits;
    use crate::engine::Engine;
    use crate::hub::{connection, Hub};
    use crate::metrics::Metrics;

    fn state() -> AppState {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let engine = Engine::memory(Arc::clone(&hub), Limits::default());
        AppState::new(engine, hub, AuthKeys::new(b"k"), Limits::default(), metrics)
    }

    fn ch(name: &str) -> Channel {
        Channel::parse(name).unwrap()
    }

    /// One subscription per channel, found by channel; one element of room
    /// for the usual single subscription, none once empty; leaving through
    /// `remove`/`take_all` keeps the hub in step.
    #[tokio::test]
    async fn subscriptions_by_channel() {
        let state = state();
        let (h, _rx) = connection(1, 8);
        let mut subs = Subscriptions::default();
        assert!(subs.is_empty());
        let a = ch("tracking:d1");
        let b = ch("tracking:d2");
        subs.insert(Subscription::join(&state, a.clone(), &h).await.unwrap());
        assert_eq!(subs.0.capacity(), 1, "no spare room for one");
        assert!(subs.contains(&a) && !subs.contains(&b));
        assert_eq!(subs.get(&a).map(Subscription::channel), Some(&a));
        assert_eq!(
            subs.get_mut(&a).map(|s| s.channel().clone()),
            Some(a.clone())
        );
        assert!(subs.get(&b).is_none() && subs.get_mut(&b).is_none());
        let again = Subscription::join(&state, a.clone(), &h).await.unwrap();
        assert!(subs.insert(again).is_some(), "same channel: replaced");
        assert_eq!(subs.len(), 1);
        subs.insert(Subscription::join(&state, b.clone(), &h).await.unwrap());
        let mut names: Vec<String> = subs.channels().map(ToString::to_string).collect();
        names.sort();
        assert_eq!(names, ["tracking:d1", "tracking:d2"]);
        assert_eq!(state.hub.local_count(&b), 1);
        let sub_b = subs.remove(&b).unwrap();
        sub_b.leave().await;
        assert_eq!(state.hub.local_count(&b), 0);
        assert!(subs.remove(&b).is_none());
        assert_eq!(subs.len(), 1);
        for sub in subs.take_all() {
            sub.leave().await;
        }
        assert!(subs.is_empty());
        assert_eq!(subs.0.capacity(), 0);
        assert_eq!(state.hub.local_count(&a), 0);
    }
}
