//! Chat rooms: turning whatever arrives (live `message` frames, the replay
//! after a resubscribe, `synced` pages, HTTP history, acks of our own
//! sends) into one gap-free, duplicate-free timeline per room.
//!
//! Each room remembers `delivered`, the highest seq handed to the app (and
//! stored) in order. A message at or below it is a duplicate and dropped;
//! one above `delivered + 1` waits in a bounded buffer while the gap is
//! filled with a WebSocket `sync`; the buffer drains in seq order as soon as
//! the next seq is there. A resubscribe asks for `after = delivered`; when
//! the server answers `recovered: false` the room is filled from
//! `GET /v1/chats/{room}/messages` before anything newer is shown.

use std::collections::BTreeMap;

use waypost_protocol::{Channel, ChatMessage, ClientFrame, MessagesResponse};

use crate::transport::{HttpError, HttpHeader, HttpRequest, HttpTransport};

/// Messages waiting above a gap, per room.
pub const MAX_BUFFERED: usize = 1_000;
/// Page size of `sync` and of HTTP history reads.
pub const SYNC_PAGE: u32 = 200;
/// HTTP history pages read per recovery at most.
pub const MAX_HTTP_PAGES: usize = 50;

/// How a gap is being filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filling {
    No,
    /// A `sync` frame is out; `synced` will answer.
    Ws,
    /// An HTTP history read is running.
    Http,
}

#[derive(Debug)]
pub struct Room {
    pub name: String,
    pub delivered: u64,
    buffer: BTreeMap<u64, ChatMessage>,
    pub filling: Filling,
}

/// What an offered message turned into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Duplicate,
    Buffered,
    /// Buffer full: dropped (a later sync brings it back).
    Dropped,
}

impl Room {
    pub fn new(name: &str, delivered: u64) -> Self {
        Self {
            name: name.to_owned(),
            delivered,
            buffer: BTreeMap::new(),
            filling: Filling::No,
        }
    }

    pub fn channel(room: &str) -> String {
        Channel::chat(room).to_string()
    }

    pub fn subscribe_frame(&self) -> ClientFrame {
        ClientFrame::Subscribe {
            channel: Self::channel(&self.name),
            after: Some(self.delivered),
        }
    }

    pub fn sync_frame(&self) -> ClientFrame {
        ClientFrame::Sync {
            room: self.name.clone(),
            after_seq: self.delivered,
            limit: Some(SYNC_PAGE),
        }
    }

    /// Takes a message of this room from any source.
    pub fn offer(&mut self, msg: ChatMessage) -> Offer {
        if msg.seq <= self.delivered || self.buffer.contains_key(&msg.seq) {
            return Offer::Duplicate;
        }
        if self.buffer.len() >= MAX_BUFFERED {
            // Keep the lowest seqs: they are the ones that unblock delivery.
            match self.buffer.last_key_value() {
                Some((&high, _)) if high > msg.seq => {
                    self.buffer.remove(&high);
                }
                _ => return Offer::Dropped,
            }
        }
        self.buffer.insert(msg.seq, msg);
        Offer::Buffered
    }

    /// The next message to deliver, if it is there. The caller stores it and
    /// then calls [`Room::delivered`].
    pub fn next_ready(&mut self) -> Option<ChatMessage> {
        let (&seq, _) = self.buffer.first_key_value()?;
        if seq == self.delivered + 1 {
            self.buffer.remove(&seq)
        } else {
            None
        }
    }

    pub fn mark_delivered(&mut self, seq: u64) {
        self.delivered = self.delivered.max(seq);
    }

    /// Whether messages wait above a gap.
    pub fn has_gap(&self) -> bool {
        !self.buffer.is_empty()
    }

    /// History below `first_available` is gone on the server (trimmed):
    /// deliver from there on instead of waiting forever.
    pub fn skip_to(&mut self, first_available: u64) {
        if first_available > self.delivered + 1 {
            tracing::warn!(
                room = %self.name,
                from = self.delivered + 1,
                to = first_available - 1,
                "chat history no longer on the server; skipping"
            );
            self.delivered = first_available - 1;
            self.buffer.retain(|&s, _| s > self.delivered);
        }
    }

    /// Delivers from the lowest buffered seq on (the server has nothing
    /// below it any more).
    pub fn skip_to_buffered(&mut self) {
        if let Some((&first, _)) = self.buffer.first_key_value() {
            self.skip_to(first);
        }
    }

    /// The room started over on the server (its seqs restarted below what
    /// we hold): forget our position.
    pub fn restart(&mut self) {
        tracing::warn!(room = %self.name, delivered = self.delivered, "chat room started over on the server");
        self.delivered = 0;
        self.buffer.clear();
    }
}

/// Reads one page of a room's history over HTTP
/// (`GET /v1/chats/{room}/messages`); the transport times out on its own.
pub async fn fetch_page(
    transport: &dyn HttpTransport,
    base_url: &str,
    token: &str,
    room: &str,
    after_seq: u64,
) -> Result<MessagesResponse, HttpError> {
    let url = format!(
        "{}/v1/chats/{}/messages?after_seq={}&limit={}",
        base_url.trim_end_matches('/'),
        room,
        after_seq,
        SYNC_PAGE
    );
    let response = transport
        .send(HttpRequest {
            method: "GET".to_owned(),
            url,
            headers: vec![HttpHeader::new("authorization", format!("Bearer {token}"))],
            body: Vec::new(),
        })
        .await?;
    HttpError::json(&response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(seq: u64) -> ChatMessage {
        ChatMessage {
            room: "r".into(),
            seq,
            id: format!("r-{seq}"),
            from: "v".into(),
            client_id: format!("c{seq}"),
            body: String::new(),
            ts: 0,
            ..Default::default()
        }
    }

    fn drain(r: &mut Room) -> Vec<u64> {
        let mut got = Vec::new();
        while let Some(x) = r.next_ready() {
            r.mark_delivered(x.seq);
            got.push(x.seq);
        }
        got
    }

    #[test]
    fn orders_and_dedupes() {
        let mut r = Room::new("r", 2);
        assert_eq!(r.offer(m(2)), Offer::Duplicate);
        assert_eq!(r.offer(m(4)), Offer::Buffered);
        assert_eq!(r.offer(m(4)), Offer::Duplicate);
        assert!(drain(&mut r).is_empty());
        assert!(r.has_gap());
        assert_eq!(
            r.sync_frame(),
            ClientFrame::Sync {
                room: "r".into(),
                after_seq: 2,
                limit: Some(SYNC_PAGE)
            }
        );
        r.offer(m(3));
        assert_eq!(drain(&mut r), [3, 4]);
        assert!(!r.has_gap());
        assert_eq!(
            r.subscribe_frame(),
            ClientFrame::Subscribe {
                channel: "chat:r".into(),
                after: Some(4)
            }
        );
    }

    #[test]
    fn buffer_is_bounded_and_keeps_low_seqs() {
        let mut r = Room::new("r", 0);
        for s in (2..(MAX_BUFFERED as u64 + 10)).rev() {
            r.offer(m(s));
        }
        assert_eq!(r.buffer.len(), MAX_BUFFERED);
        assert_eq!(r.offer(m(50_000)), Offer::Dropped);
        r.offer(m(1));
        assert_eq!(drain(&mut r).len(), MAX_BUFFERED);
    }

    #[test]
    fn skip_and_restart() {
        let mut r = Room::new("r", 3);
        r.offer(m(10));
        r.skip_to(8);
        assert_eq!(r.delivered, 7);
        r.offer(m(8));
        r.offer(m(9));
        assert_eq!(drain(&mut r), [8, 9, 10]);
        r.restart();
        assert_eq!(r.offer(m(1)), Offer::Buffered);
    }
}
