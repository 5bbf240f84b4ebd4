//! Sending the outbox: messages written here go out one at a time, in the
//! order they were written, and the next leaves only after the previous was
//! acknowledged (`sent`), so the room's seqs follow the writing order even
//! across reconnects. A message is resent, with the same `client_id`, on
//! every new connection and when its ack is overdue; the server answers a
//! repeat with the original ack and stores nothing new. A message the
//! server refuses for good, or that stays unanswered `max_attempts` times,
//! becomes failed (the app may retry it).
//!
//! Edits and deletes written while offline queue here too, in order with
//! the messages: they go out with a `client_id` of their own, so a resend
//! is acked with the original entry and the change happens exactly once.

use waypost_protocol::{ClientFrame, MessageKind};

use super::store::{Outgoing, Store};
use crate::error::WaypostError;

/// Error codes after which a resend may succeed.
const TRANSIENT_CODES: &[&str] = &[
    "rate_limited",
    "engine_unavailable",
    "unavailable",
    "internal",
    "overloaded",
];

#[derive(Debug, Clone, PartialEq, Eq)]
struct InFlight {
    room: String,
    client_id: String,
    sent_at_ms: u64,
}

/// What to do with an unsent message after a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Stays pending; sent again after `hold_ms`.
    Retry,
    /// Given up on.
    Fail { room: String, client_id: String },
}

#[derive(Debug)]
pub struct Outbox {
    in_flight: Option<InFlight>,
    /// No send before this (monotonic ms), after a transient refusal.
    hold_until_ms: u64,
    pub ack_timeout_ms: u64,
    pub retry_hold_ms: u64,
    pub max_attempts: u32,
}

impl Outbox {
    pub fn new(ack_timeout_ms: u64, max_attempts: u32) -> Self {
        Self {
            in_flight: None,
            hold_until_ms: 0,
            ack_timeout_ms,
            retry_hold_ms: 1_000,
            max_attempts: max_attempts.max(1),
        }
    }

    /// Sends the oldest pending message when nothing is in flight.
    pub fn pump(
        &mut self,
        store: &Store,
        now_ms: u64,
        out: &mut Vec<ClientFrame>,
    ) -> Result<(), WaypostError> {
        if self.in_flight.is_some() || now_ms < self.hold_until_ms {
            return Ok(());
        }
        let Some(Outgoing {
            room,
            client_id,
            body,
            attachments,
            kind,
            ref_seq,
            ..
        }) = store.outbox(1)?.into_iter().next()
        else {
            return Ok(());
        };
        out.push(match (kind, ref_seq) {
            (Some(MessageKind::Edit), Some(seq)) => ClientFrame::Edit {
                room: room.clone(),
                seq,
                body,
                client_id: Some(client_id.clone()),
            },
            (Some(MessageKind::Delete), Some(seq)) => ClientFrame::Delete {
                room: room.clone(),
                seq,
                client_id: Some(client_id.clone()),
            },
            _ => ClientFrame::Send {
                room: room.clone(),
                client_id: client_id.clone(),
                body,
                attachments,
            },
        });
        self.in_flight = Some(InFlight {
            room,
            client_id,
            sent_at_ms: now_ms,
        });
        Ok(())
    }

    /// The ack of `client_id` arrived.
    pub fn on_ack(&mut self, client_id: &str) {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.client_id == client_id)
        {
            self.in_flight = None;
        }
    }

    /// The in-flight message is no longer pending (failed by the app,
    /// acked through an echo).
    pub fn forget(&mut self, client_id: &str) {
        self.on_ack(client_id);
    }

    /// An `error` frame arrived; returns a verdict when it concerns the
    /// message in flight (its `ref` is the client id or the room).
    pub fn on_error(
        &mut self,
        store: &Store,
        me: &str,
        code: &str,
        reference: Option<&str>,
        now_ms: u64,
    ) -> Result<Option<Verdict>, WaypostError> {
        let Some(r) = reference else { return Ok(None) };
        let Some(f) = self.in_flight.take_if(|f| f.client_id == r || f.room == r) else {
            return Ok(None);
        };
        if TRANSIENT_CODES.contains(&code) {
            self.hold_until_ms = now_ms + self.retry_hold_ms;
            return self.unanswered(store, me, f);
        }
        Ok(Some(Verdict::Fail {
            room: f.room,
            client_id: f.client_id,
        }))
    }

    /// Periodic: an overdue ack counts as an unanswered attempt and the
    /// message goes out again.
    pub fn on_tick(
        &mut self,
        store: &Store,
        me: &str,
        now_ms: u64,
    ) -> Result<Option<Verdict>, WaypostError> {
        let timeout = self.ack_timeout_ms;
        let Some(f) = self
            .in_flight
            .take_if(|f| now_ms.saturating_sub(f.sent_at_ms) >= timeout)
        else {
            return Ok(None);
        };
        tracing::debug!(client_id = %f.client_id, "ack overdue; resending");
        self.unanswered(store, me, f)
    }

    fn unanswered(
        &mut self,
        store: &Store,
        me: &str,
        f: InFlight,
    ) -> Result<Option<Verdict>, WaypostError> {
        let attempts = store.count_attempt(&f.room, me, &f.client_id)?;
        if attempts >= self.max_attempts {
            return Ok(Some(Verdict::Fail {
                room: f.room,
                client_id: f.client_id,
            }));
        }
        Ok(Some(Verdict::Retry))
    }

    /// The connection dropped: whatever was in flight goes again on the
    /// next one (a lost connection is not the message's fault, so it does
    /// not count as an attempt).
    pub fn on_closed(&mut self) {
        self.in_flight = None;
    }

    #[cfg(test)]
    fn in_flight(&self) -> Option<&str> {
        self.in_flight.as_ref().map(|f| f.client_id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sends(out: &[ClientFrame]) -> Vec<String> {
        out.iter()
            .filter_map(|f| match f {
                ClientFrame::Send { client_id, .. } => Some(client_id.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn one_at_a_time_in_order() {
        let s = Store::open(None).unwrap();
        for c in ["a", "b", "c"] {
            s.enqueue("r", "me", c, c, 1).unwrap();
        }
        let mut ob = Outbox::new(10_000, 3);
        let mut out = Vec::new();
        ob.pump(&s, 0, &mut out).unwrap();
        ob.pump(&s, 0, &mut out).unwrap();
        assert_eq!(sends(&out), ["a"], "stop and wait");
        ob.on_ack("zzz");
        assert_eq!(ob.in_flight(), Some("a"));
        s.ack("r", "me", "a", 1, "r-1").unwrap();
        ob.on_ack("a");
        ob.pump(&s, 0, &mut out).unwrap();
        assert_eq!(sends(&out), ["a", "b"]);
        // Connection lost: b goes again, without counting an attempt.
        ob.on_closed();
        ob.pump(&s, 0, &mut out).unwrap();
        assert_eq!(sends(&out), ["a", "b", "b"]);
        assert_eq!(s.outbox(10).unwrap()[0].attempts, 0);
    }

    #[test]
    fn overdue_acks_retry_then_fail() {
        let s = Store::open(None).unwrap();
        s.enqueue("r", "me", "a", "a", 1).unwrap();
        let mut ob = Outbox::new(1_000, 2);
        let mut out = Vec::new();
        ob.pump(&s, 0, &mut out).unwrap();
        assert_eq!(ob.on_tick(&s, "me", 999).unwrap(), None);
        assert_eq!(ob.on_tick(&s, "me", 1_000).unwrap(), Some(Verdict::Retry));
        ob.pump(&s, 1_000, &mut out).unwrap();
        assert_eq!(
            ob.on_tick(&s, "me", 2_000).unwrap(),
            Some(Verdict::Fail {
                room: "r".into(),
                client_id: "a".into()
            })
        );
        assert_eq!(sends(&out), ["a", "a"]);
    }

    #[test]
    fn errors_transient_hold_permanent_fail() {
        let s = Store::open(None).unwrap();
        s.enqueue("r", "me", "a", "a", 1).unwrap();
        let mut ob = Outbox::new(10_000, 5);
        let mut out = Vec::new();
        ob.pump(&s, 0, &mut out).unwrap();
        assert_eq!(
            ob.on_error(&s, "me", "forbidden", Some("other"), 0)
                .unwrap(),
            None
        );
        assert_eq!(
            ob.on_error(&s, "me", "rate_limited", Some("a"), 0).unwrap(),
            Some(Verdict::Retry)
        );
        ob.pump(&s, 500, &mut out).unwrap();
        assert_eq!(sends(&out).len(), 1, "held after a transient refusal");
        ob.pump(&s, 1_000, &mut out).unwrap();
        assert_eq!(sends(&out).len(), 2);
        assert_eq!(
            ob.on_error(&s, "me", "bad_message", Some("r"), 1_000)
                .unwrap(),
            Some(Verdict::Fail {
                room: "r".into(),
                client_id: "a".into()
            })
        );
    }
}
