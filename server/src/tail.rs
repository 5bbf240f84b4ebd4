//! No silent tail gap. A live frame published while this process was not
//! subscribed (the bus reconnecting, Redis restarting between a store and
//! its publish) never arrives here; a connection would see the missing item
//! only with the next one, when its gap filler reads history. So after
//! every resubscribe of the bus ([`crate::engine::Bus::resubscribed`]) the
//! newest stored item of every locally subscribed channel is dispatched
//! into the local hub again: a connection that has it drops it as a
//! duplicate (chat, orders, notifications go by seq), one that missed items
//! fills the gap from the store, and tracking gets the latest position.
//!
//! Re-dispatched: `tracking:` (latest fix), `chat:` (newest message),
//! `vendor:` (newest notification), `order:` (newest timeline entry).
//! Not: `user:` channels (copies of a user's own messages, with no
//! per-user index to read; the room's own channel carries the same seq)
//! and `control:` channels (revocations are reloaded periodically).

use futures_util::StreamExt;
use waypost_protocol::{Channel, ChannelKind};

use crate::engine::EngineError;
use crate::frame::Frame;
use crate::now_ms;
use crate::orders::live::order_frame;
use crate::state::AppState;

/// Channels read at once while re-dispatching.
const CONCURRENCY: usize = 32;

/// Runs until shutdown: re-dispatches after every resubscribe of the bus.
pub async fn redispatch_after_resubscribe(state: AppState) {
    let mut resubscribed = state.engine.bus.resubscribed();
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            changed = resubscribed.changed() => {
                if changed.is_err() {
                    return;
                }
            }
        }
        let (sent, failed) = redispatch(&state).await;
        tracing::info!(
            sent,
            failed,
            "bus resubscribed: re-dispatched the newest item of every local channel"
        );
    }
}

/// Dispatches the newest stored item of every local channel into the hub;
/// returns how many went out and how many channels could not be read.
pub async fn redispatch(state: &AppState) -> (usize, usize) {
    let channels = state.hub.channels();
    let results: Vec<Result<bool, EngineError>> = futures_util::stream::iter(channels)
        .map(|ch| async move {
            let frame = newest(state, &ch).await?;
            Ok(frame.is_some_and(|f| state.hub.dispatch(&ch, f) > 0))
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let sent = results.iter().filter(|r| matches!(r, Ok(true))).count();
    state.metrics.tail_redispatched.inc_by(sent as u64);
    let failed = results.iter().filter(|r| r.is_err()).count();
    if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
        tracing::warn!(error = %e, failed, "re-dispatch could not read some channels");
    }
    (sent, failed)
}

/// The frame of the newest stored item of `channel`, if it has one.
async fn newest(state: &AppState, channel: &Channel) -> Result<Option<Frame>, EngineError> {
    let id = channel.id.as_str();
    match channel.kind {
        ChannelKind::Tracking => Ok(state
            .engine
            .latest(id, now_ms())
            .await?
            .map(|l| Frame::location(id, &l.fix, l.received_ms.saturating_mul(1000)))),
        ChannelKind::Chat => {
            let chat = &state.stores.chat;
            let high = chat.after(id, 0, 1).await?.high_seq;
            if high == 0 {
                return Ok(None);
            }
            let h = chat.after(id, high - 1, 1).await?;
            Ok(h.messages
                .first()
                .map(|m| Frame::message(m, m.ts.saturating_mul(1000))))
        }
        ChannelKind::Vendor => {
            let notes = &state.stores.notifications;
            let high = notes.after(id, 0, 1).await?.high_seq;
            if high == 0 {
                return Ok(None);
            }
            let h = notes.after(id, high - 1, 1).await?;
            Ok(h.items
                .first()
                .map(|n| Frame::notification(n.seq, n.to_sse(), n.ts.saturating_mul(1000))))
        }
        ChannelKind::Order => {
            let orders = state.orders.orders.store();
            let high = orders.timeline(id, 0, 1).await?.high_seq;
            if high == 0 {
                return Ok(None);
            }
            let t = orders.timeline(id, high - 1, 1).await?;
            Ok(t.entries
                .first()
                .map(|e| order_frame(id, e, e.ts.saturating_mul(1000))))
        }
        ChannelKind::User | ChannelKind::Control => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use waypost_protocol::Fix;

    use super::*;
    use crate::auth::AuthKeys;
    use crate::config::Limits;
    use crate::engine::chat::NewMessage;
    use crate::engine::Engine;
    use crate::hub::{connection, Hub};
    use crate::metrics::Metrics;

    fn state() -> AppState {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let engine = Engine::memory(Arc::clone(&hub), Limits::default());
        AppState::new(engine, hub, AuthKeys::new(b"k"), Limits::default(), metrics)
    }

    /// Every local channel with stored items gets its newest one again;
    /// channels without items, or of kinds with nothing to read, get
    /// nothing.
    #[tokio::test]
    async fn redispatch_sends_the_newest_item_of_every_local_channel() {
        let state = state();
        let now = now_ms();
        for seq in 1..=3 {
            state
                .engine
                .ingest(
                    "d1",
                    "dev",
                    &[Fix::new(seq, now + seq as i64, 1.0, 2.0)],
                    now.into(),
                )
                .await
                .unwrap();
        }
        for cid in ["a", "b"] {
            state
                .stores
                .chat
                .append(NewMessage {
                    room: "r1".into(),
                    from: "u".into(),
                    client_id: cid.into(),
                    body: "hi".into(),
                    ts: now,
                    ..Default::default()
                })
                .await
                .unwrap();
        }
        state
            .stores
            .notifications
            .append("v1", "order.ready", serde_json::json!({}), now)
            .await
            .unwrap();
        let (h, rx) = connection(state.hub.next_conn_id(), 16);
        for ch in [
            Channel::tracking("d1"),
            Channel::chat("r1"),
            Channel::vendor("v1"),
            Channel::chat("empty"),
            Channel::order("none"),
            Channel::user("u"),
        ] {
            state.hub.add(&ch, h.clone());
        }
        let (sent, failed) = redispatch(&state).await;
        assert_eq!((sent, failed), (3, 0));
        let mut seqs = Vec::new();
        while let Some(f) = rx.try_frame() {
            seqs.push((f.kind(), f.seq()));
        }
        seqs.sort_by_key(|(k, _)| k.name());
        assert_eq!(
            seqs,
            vec![
                (ChannelKind::Chat, Some(2)),
                (ChannelKind::Tracking, Some(3)),
                (ChannelKind::Vendor, Some(1)),
            ]
        );
    }

    /// The task re-dispatches when the bus reports a resubscribe (the
    /// memory bus never does: nothing is sent on its own).
    #[tokio::test]
    async fn nothing_is_redispatched_without_a_resubscribe() {
        let state = state();
        state
            .engine
            .ingest(
                "d1",
                "dev",
                &[Fix::new(1, now_ms(), 1.0, 2.0)],
                now_ms().into(),
            )
            .await
            .unwrap();
        let (h, rx) = connection(state.hub.next_conn_id(), 16);
        state.hub.add(&Channel::tracking("d1"), h);
        let task = tokio::spawn(redispatch_after_resubscribe(state.clone()));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(rx.try_frame().is_none());
        state.shutdown.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(1), task)
            .await
            .expect("stops on shutdown")
            .unwrap();
    }
}
