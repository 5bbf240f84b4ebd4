//! The chat rooms of one WebSocket connection: for each subscribed room the
//! highest seq delivered ([`SeqCursor`]), so live copies that arrive twice
//! (room and user channel, replay meeting live) or out of order (several
//! processes publishing) go out in order and once; the last `typing` per
//! room, for its rate limit; and this device's presence key.

use std::time::Instant;

use axum::extract::ws::Utf8Bytes;
use waypost_protocol::ServerFrame;

use super::lazy_map::LazyMap;
use crate::engine::chat::{SeqCursor, SeqStep};
use crate::engine::EngineError;
use crate::frame::{About, Frame};
use crate::hub::ConnId;
use crate::state::AppState;

/// One connection's rooms.
pub(super) struct Rooms {
    cursors: LazyMap<String, SeqCursor>,
    typing_at: LazyMap<String, Instant>,
    /// This connection, in presence entries as `{node}:{conn}` (the key
    /// is built when needed: most connections never join a room).
    conn: ConnId,
}

impl Rooms {
    pub fn new(conn: ConnId) -> Self {
        Self {
            cursors: LazyMap::default(),
            typing_at: LazyMap::default(),
            conn,
        }
    }

    /// This connection in presence entries: `{node}:{conn}`.
    fn presence_key(&self, state: &AppState) -> String {
        format!("{}:{}", state.node_id, self.conn)
    }

    pub fn is_empty(&self) -> bool {
        self.cursors.is_empty()
    }

    /// The chat half of `subscribe`, once the hub subscription is in place
    /// (so live messages are queued while history is read): the frames to
    /// reply with (`subscribed` with `recovered` and `high_seq`, the replay
    /// when complete, who is online), after joining this device's
    /// presence. An error means history could not be read.
    pub async fn subscribe(
        &mut self,
        state: &AppState,
        user: &str,
        channel: String,
        room: String,
        after: Option<u64>,
    ) -> Result<Vec<ServerFrame>, EngineError> {
        let limit = if after.is_some() {
            state.limits.chat_replay_limit
        } else {
            0
        };
        let history = state
            .stores
            .chat
            .after(&room, after.unwrap_or(0), limit)
            .await?;
        let recovered = after.is_none_or(|a| history.complete_after(a));
        // Live messages up to high_seq were either replayed now or are the
        // client's to fetch with `sync` (not recovered); later ones follow.
        self.cursors
            .insert(room.clone(), SeqCursor::new(history.high_seq));
        let mut frames = vec![ServerFrame::Subscribed {
            channel,
            recovered,
            high_seq: Some(history.high_seq),
        }];
        if after.is_some() && recovered {
            frames.extend(history.messages.into_iter().map(ServerFrame::Message));
        }
        let chat = state.chat();
        // Everyone's ticks as they stand, so a (re)connecting client draws
        // them right; later changes come as live `receipt` frames.
        match chat.receipt_frames(&room).await {
            Ok(receipts) => frames.extend(receipts),
            Err(e) => tracing::debug!(error = %e, room, "reading receipts failed"),
        }
        chat.join_presence(&room, user, &self.presence_key(state))
            .await;
        frames.extend(
            chat.online(&room)
                .await
                .into_iter()
                .map(|user| ServerFrame::Presence {
                    room: room.clone(),
                    user,
                    online: true,
                }),
        );
        Ok(frames)
    }

    /// Forgets `room`; leaving also ends this device's presence there.
    pub async fn leave(&mut self, state: &AppState, user: &str, room: &str) {
        if self.cursors.remove(room).is_some() {
            state
                .chat()
                .leave_presence(room, user, &self.presence_key(state))
                .await;
        }
    }

    /// Refreshes this device's presence in every room; users whose devices
    /// expired meanwhile are reported offline.
    pub async fn heartbeat(&self, state: &AppState, user: &str) {
        let chat = state.chat();
        let key = self.presence_key(state);
        for room in self.cursors.keys() {
            chat.join_presence(room, user, &key).await;
        }
    }

    /// Whether a `typing` in `room` may go out now (at most one per typing
    /// interval per room; the map is bounded by the channel limit).
    pub fn typing_allowed(&mut self, state: &AppState, room: &str, now: Instant) -> bool {
        let interval = state.limits.typing_interval;
        let max = state.limits.max_channels_per_connection;
        if self
            .typing_at
            .get(room)
            .is_some_and(|t| now.duration_since(*t) < interval)
        {
            return false;
        }
        if self.typing_at.len() >= max {
            self.typing_at
                .retain(|_, t| now.duration_since(*t) < interval);
        }
        if self.typing_at.len() < max {
            self.typing_at.insert(room.to_owned(), now);
        }
        true
    }

    /// What to write for one live frame of a `chat:` or `user:` channel:
    /// nothing for a message already delivered (replayed, or the
    /// user-channel copy of a room message) or for the user's own typing;
    /// the missing messages from history first when it skips ahead
    /// (publishes from several processes can arrive out of order, but a seq
    /// exists only once everything below it is stored). An error means the
    /// gap could not be filled: delivering past it would skip messages.
    pub async fn live(
        &mut self,
        state: &AppState,
        user: &str,
        frame: &Frame,
    ) -> Result<Vec<Utf8Bytes>, EngineError> {
        let (room, seq) = match &frame.meta.about {
            About::Typing { user: from } if from == user => return Ok(Vec::new()),
            About::Message { room, seq } => (room, *seq),
            _ => return Ok(vec![frame.text.clone()]),
        };
        let Some(cursor) = self.cursors.get(room).copied() else {
            // Not subscribed: the user-channel copy of this user's own
            // message, delivered as is.
            return Ok(vec![frame.text.clone()]);
        };
        let mut frames = Vec::new();
        let mut delivered = cursor;
        match cursor.step(seq) {
            SeqStep::Duplicate => return Ok(frames),
            SeqStep::Next => {}
            SeqStep::Gap { from, to } => {
                let limit = (to - from + 1) as usize;
                tracing::debug!(
                    room,
                    from,
                    to,
                    "live message ahead: filling the gap from history"
                );
                let h = state.stores.chat.after(room, from - 1, limit).await?;
                for m in h.messages.into_iter().filter(|m| m.seq <= to) {
                    delivered.advance(m.seq);
                    frames.push(ServerFrame::Message(m).to_json().into());
                }
            }
        }
        delivered.advance(seq);
        self.cursors.insert(room.clone(), delivered);
        frames.push(frame.text.clone());
        Ok(frames)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::AuthKeys;
    use crate::config::Limits;
    use crate::engine::chat::NewMessage;
    use crate::engine::Engine;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    fn state() -> AppState {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let engine = Engine::memory(Arc::clone(&hub), Limits::default());
        AppState::new(engine, hub, AuthKeys::new(b"k"), Limits::default(), metrics)
    }

    async fn post(state: &AppState, room: &str, cid: &str) -> Frame {
        let m = state
            .stores
            .chat
            .append(NewMessage {
                room: room.into(),
                from: "u".into(),
                client_id: cid.into(),
                body: "b".into(),
                ts: 0,
                ..Default::default()
            })
            .await
            .unwrap();
        Frame::message(m.message(), 0)
    }

    fn seqs(frames: &[Utf8Bytes]) -> Vec<u64> {
        frames
            .iter()
            .map(|f| {
                serde_json::from_str::<serde_json::Value>(f).unwrap()["seq"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    /// Live copies arriving out of order (two processes) or twice (room
    /// and user channel) come out gap-free, in order, once.
    #[tokio::test]
    async fn writer_orders_fills_gaps_and_dedupes() {
        let state = state();
        let mut c = Rooms::new(1);
        let f1 = post(&state, "r", "a").await;
        let f2 = post(&state, "r", "b").await;
        let f3 = post(&state, "r", "c").await;
        let f4 = post(&state, "r", "d").await;
        c.cursors.insert("r".into(), SeqCursor::new(1));
        assert!(
            c.live(&state, "me", &f1).await.unwrap().is_empty(),
            "at or below the cursor"
        );
        assert_eq!(
            seqs(&c.live(&state, "me", &f3).await.unwrap()),
            vec![2, 3],
            "gap filled"
        );
        assert!(
            c.live(&state, "me", &f2).await.unwrap().is_empty(),
            "late copy dropped"
        );
        assert!(c.live(&state, "me", &f2).await.unwrap().is_empty());
        assert_eq!(seqs(&c.live(&state, "me", &f4).await.unwrap()), vec![4]);
        // Not subscribed (the user-channel copy): passed through as is.
        let other = post(&state, "elsewhere", "e").await;
        assert_eq!(
            c.live(&state, "me", &other).await.unwrap(),
            vec![other.text.clone()]
        );
    }

    #[tokio::test]
    async fn own_typing_is_not_echoed() {
        let state = state();
        let mut c = Rooms::new(1);
        let mine = Frame::typing("r", "me", 0);
        let theirs = Frame::typing("r", "you", 0);
        assert!(c.live(&state, "me", &mine).await.unwrap().is_empty());
        assert_eq!(c.live(&state, "me", &theirs).await.unwrap().len(), 1);
    }
}
