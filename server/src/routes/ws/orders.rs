//! The order channels of one WebSocket connection: per order the highest
//! timeline seq delivered ([`SeqCursor`]), so `order` frames go out in
//! order and once (gaps filled from the timeline, duplicates dropped), and
//! whether the order ended, after which no `location` frame of its driver
//! goes out (a location published by an ingest racing the final event).

use super::lazy_map::LazyMap;

use axum::extract::ws::Utf8Bytes;
use waypost_protocol::{OrderFrame, ServerFrame, TimelineEntry};

use crate::engine::chat::{SeqCursor, SeqStep};
use crate::frame::{About, Frame};
use crate::orders::domain::entry_ends;
use crate::orders::OrderError;
use crate::state::AppState;

#[derive(Debug, Clone, Copy)]
struct Cursor {
    seq: SeqCursor,
    ended: bool,
}

/// One connection's orders.
#[derive(Default)]
pub(super) struct OrderChannels {
    cursors: LazyMap<String, Cursor>,
}

fn entry_text(order_id: &str, e: &TimelineEntry) -> Utf8Bytes {
    serde_json::to_string(&OrderFrame::new(order_id, e))
        .unwrap_or_default()
        .into()
}

impl OrderChannels {
    /// The order half of `subscribe`, once the hub subscription is in place
    /// (live entries queue while the timeline is read): `subscribed` with
    /// `recovered` and `high_seq`, then with `after` the entries above it
    /// when complete. Like chat: without `after` no replay (the order's
    /// state is `GET /v1/orders/{id}`); `recovered: false` means page with
    /// the timeline endpoint.
    pub async fn subscribe(
        &mut self,
        state: &AppState,
        channel: String,
        order_id: &str,
        after: Option<u64>,
    ) -> Result<Vec<Utf8Bytes>, OrderError> {
        let limit = if after.is_some() {
            state.limits.chat_replay_limit
        } else {
            0
        };
        let t = state
            .orders
            .orders
            .timeline(order_id, after.unwrap_or(0), limit)
            .await?;
        let recovered = after.is_none_or(|a| t.complete_after(a));
        let ended = state
            .orders
            .orders
            .get(order_id)
            .await?
            .is_some_and(|o| o.status.is_final());
        self.cursors.insert(
            order_id.to_owned(),
            Cursor {
                seq: SeqCursor::new(t.high_seq),
                ended,
            },
        );
        let mut frames: Vec<Utf8Bytes> = vec![ServerFrame::Subscribed {
            channel,
            recovered,
            high_seq: Some(t.high_seq),
        }
        .to_json()
        .into()];
        if after.is_some() && recovered {
            frames.extend(t.entries.iter().map(|e| entry_text(order_id, e)));
        }
        Ok(frames)
    }

    pub fn leave(&mut self, order_id: &str) {
        self.cursors.remove(order_id);
    }

    /// What to write for one live frame of an `order:` channel.
    pub async fn live(
        &mut self,
        state: &AppState,
        frame: &Frame,
    ) -> Result<Vec<Utf8Bytes>, OrderError> {
        let (order_id, seq, last) = match &frame.meta.about {
            About::OrderLocation { order }
            | About::DriverNote {
                order: Some(order), ..
            } => {
                let open = self.cursors.get(order).is_some_and(|c| !c.ended);
                return Ok(if open {
                    vec![frame.text.clone()]
                } else {
                    Vec::new()
                });
            }
            About::Order { order, seq, ends } => (order, *seq, *ends),
            _ => return Ok(vec![frame.text.clone()]),
        };
        let Some(mut cursor) = self.cursors.get(order_id).copied() else {
            return Ok(Vec::new());
        };
        let mut frames = Vec::new();
        match cursor.seq.step(seq) {
            SeqStep::Duplicate => return Ok(frames),
            SeqStep::Next => {}
            SeqStep::Gap { from, to } => {
                let limit = (to - from + 1) as usize;
                let t = state
                    .orders
                    .orders
                    .timeline(order_id, from - 1, limit)
                    .await?;
                for e in t.entries.iter().filter(|e| e.seq <= to) {
                    cursor.seq.advance(e.seq);
                    cursor.ended |= entry_ends(e);
                    frames.push(entry_text(order_id, e));
                }
            }
        }
        cursor.seq.advance(seq);
        cursor.ended |= last;
        self.cursors.insert(order_id.clone(), cursor);
        frames.push(frame.text.clone());
        Ok(frames)
    }
}
