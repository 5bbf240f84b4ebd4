//! Token expiry on live connections, driven by one process-wide task (no
//! timer per connection, like the WebSocket ticker).
//!
//! A connection registers its token's `exp` with the [`ExpiryWheel`]. At
//! `exp - WARN_BEFORE_S` (at once when less remains) a WebSocket gets a
//! `token_expiring` frame in its mailbox; at `exp` every kind of connection
//! is killed with 4001 (a WebSocket says `error token_expired` and closes
//! with 4001, an SSE stream or long poll ends). An in-band refresh moves the
//! connection's `exp`: entries scheduled for the old one are skipped when
//! they come due.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{close_code, ChannelKind};

use crate::frame::{now_us, About, Frame};
use crate::hub::{ConnHandle, Outbound};

/// The warning comes at least this long before `exp`.
pub const WARN_BEFORE_S: u64 = 30;

/// How often the wheel looks for due entries: a token is served at most
/// about this long past its `exp`.
pub const RESOLUTION: Duration = Duration::from_millis(200);

/// Frames of the token session on a WebSocket (`refresh` is the client's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SessionFrame {
    TokenExpiring { exp: u64 },
    Refreshed { exp: u64 },
}

impl SessionFrame {
    pub fn to_json(&self) -> String {
        match self {
            SessionFrame::TokenExpiring { exp } => {
                format!(r#"{{"type":"token_expiring","exp":{exp}}}"#)
            }
            SessionFrame::Refreshed { exp } => format!(r#"{{"type":"refreshed","exp":{exp}}}"#),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Warn,
    Expire,
}

struct Entry {
    handle: ConnHandle,
    /// The connection's current `exp`; the entry is stale when it moved.
    current: Arc<AtomicU64>,
    exp: u64,
    kind: Kind,
}

/// A connection's registration: its current `exp`. Dropping it (the
/// connection ended) makes its entries stale; [`ExpiryWheel::sweep`] drops
/// them.
#[derive(Debug)]
pub struct Expiry {
    current: Arc<AtomicU64>,
    warn: bool,
}

/// `exp` of an ended connection: no entry matches it.
const ENDED: u64 = 0;

impl Expiry {
    pub fn exp(&self) -> u64 {
        self.current.load(Ordering::Relaxed)
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.current.store(ENDED, Ordering::Relaxed);
    }
}

/// How often stale entries (ended or refreshed connections) are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// Due entries by Unix second.
#[derive(Default)]
pub struct ExpiryWheel {
    due: Mutex<BTreeMap<u64, Vec<Entry>>>,
}

impl ExpiryWheel {
    /// Registers a connection whose token expires at `exp` (Unix seconds).
    /// `warn`: it can take a `token_expiring` frame (WebSockets).
    pub fn watch(&self, handle: &ConnHandle, exp: u64, warn: bool, now_s: u64) -> Expiry {
        let expiry = Expiry {
            current: Arc::new(AtomicU64::new(exp)),
            warn,
        };
        self.schedule(handle, &expiry, exp, now_s);
        expiry
    }

    /// The connection now runs on a token expiring at `exp`.
    pub fn refresh(&self, handle: &ConnHandle, expiry: &Expiry, exp: u64, now_s: u64) {
        expiry.current.store(exp, Ordering::Relaxed);
        self.schedule(handle, expiry, exp, now_s);
    }

    fn schedule(&self, handle: &ConnHandle, expiry: &Expiry, exp: u64, now_s: u64) {
        let mut due = self.due.lock();
        let mut add = |at: u64, kind| {
            due.entry(at).or_default().push(Entry {
                handle: handle.clone(),
                current: Arc::clone(&expiry.current),
                exp,
                kind,
            });
        };
        if expiry.warn {
            add(exp.saturating_sub(WARN_BEFORE_S).max(now_s), Kind::Warn);
        }
        add(exp, Kind::Expire);
    }

    /// Acts on every entry due at or before `now_s`; returns how many acted.
    pub fn fire(&self, now_s: u64) -> usize {
        let due: Vec<Entry> = {
            let mut map = self.due.lock();
            let later = map.split_off(&(now_s + 1));
            std::mem::replace(&mut *map, later)
                .into_values()
                .flatten()
                .collect()
        };
        let mut acted = 0;
        for e in due {
            if e.current.load(Ordering::Relaxed) != e.exp {
                continue; // refreshed since
            }
            acted += 1;
            match e.kind {
                Kind::Warn => {
                    let text = SessionFrame::TokenExpiring { exp: e.exp }.to_json();
                    e.handle.send(&Outbound::new(
                        Frame::new(text, About::Other, now_us()),
                        ChannelKind::Control,
                    ));
                }
                Kind::Expire => e.handle.kill(close_code::UNAUTHORIZED),
            }
        }
        acted
    }

    /// Drops the entries of ended or refreshed connections.
    pub fn sweep(&self) {
        let mut map = self.due.lock();
        map.retain(|_, entries| {
            entries.retain(|e| e.current.load(Ordering::Relaxed) == e.exp);
            !entries.is_empty()
        });
    }

    /// Entries waiting (stale ones included until swept or due).
    pub fn len(&self) -> usize {
        self.due.lock().values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Fires due entries every [`RESOLUTION`] until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(RESOLUTION);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut swept = Instant::now();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                _ = every.tick() => {
                    self.fire(crate::now_s());
                    if swept.elapsed() >= SWEEP_EVERY {
                        swept = Instant::now();
                        self.sweep();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::{connection, Event};

    async fn next_now(rx: &crate::hub::Receiver) -> Option<Event> {
        tokio::time::timeout(Duration::from_millis(50), rx.next())
            .await
            .ok()
    }

    #[tokio::test]
    async fn warns_ahead_then_kills_at_exp() {
        let wheel = ExpiryWheel::default();
        let (h, rx) = connection(1, 8);
        let _e = wheel.watch(&h, 1000, true, 900);
        assert_eq!(wheel.fire(969), 0);
        assert_eq!(wheel.fire(970), 1);
        match next_now(&rx).await {
            Some(Event::Frame(f)) => {
                assert_eq!(&*f.text, r#"{"type":"token_expiring","exp":1000}"#)
            }
            _ => panic!("no warning"),
        }
        assert_eq!(wheel.fire(999), 0);
        assert_eq!(wheel.fire(1000), 1);
        assert!(matches!(next_now(&rx).await, Some(Event::Killed(4001))));
        assert!(wheel.is_empty());
    }

    #[tokio::test]
    async fn warns_at_once_when_less_remains_and_refresh_moves_exp() {
        let wheel = ExpiryWheel::default();
        let (h, rx) = connection(1, 8);
        let e = wheel.watch(&h, 1010, true, 1000);
        assert_eq!(wheel.fire(1000), 1, "warning due at once");
        assert!(matches!(next_now(&rx).await, Some(Event::Frame(_))));
        wheel.refresh(&h, &e, 2000, 1005);
        assert_eq!(e.exp(), 2000);
        assert_eq!(wheel.fire(1010), 0, "the old exp is stale");
        assert!(next_now(&rx).await.is_none());
        assert_eq!(wheel.fire(1970), 1);
        assert!(matches!(next_now(&rx).await, Some(Event::Frame(_))));
        assert_eq!(wheel.fire(2000), 1);
        assert!(matches!(next_now(&rx).await, Some(Event::Killed(4001))));
    }

    #[tokio::test]
    async fn ended_connections_are_swept() {
        let wheel = ExpiryWheel::default();
        let (h, _rx) = connection(1, 8);
        let e = wheel.watch(&h, 1000, true, 900);
        let (h2, _rx2) = connection(2, 8);
        let _e2 = wheel.watch(&h2, 1000, false, 900);
        assert_eq!(wheel.len(), 3);
        drop(e);
        wheel.sweep();
        assert_eq!(wheel.len(), 1);
        assert_eq!(wheel.fire(1000), 1);
    }

    #[tokio::test]
    async fn streams_only_end() {
        let wheel = ExpiryWheel::default();
        let (h, rx) = connection(1, 8);
        let _e = wheel.watch(&h, 1000, false, 900);
        assert_eq!(wheel.fire(999), 0);
        assert_eq!(wheel.fire(1000), 1);
        assert!(matches!(next_now(&rx).await, Some(Event::Killed(4001))));
    }
}
