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
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use waypost_protocol::{close_code, ChannelKind, ServerFrame};

use crate::frame::{now_us, About, Frame};
use crate::hub::{ConnHandle, Outbound};

/// The warning comes at least this long before `exp`.
pub const WARN_BEFORE_S: u64 = 30;

/// How often the wheel looks for due entries: a token is served at most
/// about this long past its `exp`.
pub const RESOLUTION: Duration = Duration::from_millis(200);

/// The `token_expiring` frame for a token expiring at `exp`, tagged so
/// the connection knows it wrote it (see [`Expiry`]).
pub fn warning(exp: u64) -> Outbound {
    let text = ServerFrame::TokenExpiring { exp }.to_json();
    Outbound::new(
        Frame::new(text, About::TokenExpiring { exp }, now_us()),
        ChannelKind::Control,
    )
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Warn, then re-file as [`Kind::Expire`] at `exp`.
    Warn,
    Expire,
}

/// One entry per watched connection (sized for idle memory: the handle,
/// the `exp` it was filed for, what to do). The connection's current `exp`
/// lives in its mailbox ([`ConnHandle::token_exp`]); the entry is stale
/// when that moved.
struct Entry {
    handle: ConnHandle,
    exp: u64,
    kind: Kind,
}

impl Entry {
    fn stale(&self) -> bool {
        self.handle.token_exp() != self.exp
    }
}

/// A connection's registration; its current `exp` is kept in the
/// connection's mailbox. Dropping it (the connection ended) makes its
/// entry stale; [`ExpiryWheel::sweep`] drops it.
///
/// The warning and the kill travel separately (the warning through the
/// mailbox, the kill as its kill code, which drops queued frames), so when
/// both fall due in one wheel round the warning can be dropped unwritten.
/// The connection therefore records the warning it wrote
/// ([`Expiry::wrote_warning`]) and, closing with 4001, first writes the one
/// it did not ([`Expiry::unwritten_warning`]): `token_expiring` always comes
/// before the 4001.
#[derive(Debug)]
pub struct Expiry {
    handle: ConnHandle,
    warn: bool,
    /// The `exp` of the last `token_expiring` written to the socket.
    warned: u64,
}

/// `exp` of an ended connection: no entry matches it.
const ENDED: u64 = 0;

impl Expiry {
    pub fn exp(&self) -> u64 {
        self.handle.token_exp()
    }

    /// The connection wrote `token_expiring` for `exp`.
    pub fn wrote_warning(&mut self, exp: u64) {
        self.warned = exp;
    }

    /// The warning still owed before a 4001 close: the current token's
    /// `exp` when no `token_expiring` for it was written.
    pub fn unwritten_warning(&self) -> Option<u64> {
        let exp = self.exp();
        (self.warn && exp != ENDED && self.warned != exp).then_some(exp)
    }
}

impl Drop for Expiry {
    fn drop(&mut self) {
        self.handle.set_token_exp(ENDED);
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
            handle: handle.clone(),
            warn,
            warned: ENDED,
        };
        self.refresh(handle, &expiry, exp, now_s);
        expiry
    }

    /// The connection now runs on a token expiring at `exp`.
    pub fn refresh(&self, handle: &ConnHandle, expiry: &Expiry, exp: u64, now_s: u64) {
        handle.set_token_exp(exp);
        // One entry: the warning (which re-files itself as the expiry when
        // it fires), or the expiry alone for streams.
        let (at, kind) = if expiry.warn {
            (exp.saturating_sub(WARN_BEFORE_S).max(now_s), Kind::Warn)
        } else {
            (exp, Kind::Expire)
        };
        self.file(
            at,
            Entry {
                handle: handle.clone(),
                exp,
                kind,
            },
        );
    }

    fn file(&self, at: u64, entry: Entry) {
        self.due.lock().entry(at).or_default().push(entry);
    }

    /// Acts on every entry due at or before `now_s`; returns how many
    /// warnings and expiries it acted on.
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
        let mut refile = Vec::new();
        for e in due {
            if e.stale() {
                continue; // refreshed or ended since
            }
            acted += 1;
            match e.kind {
                Kind::Warn => {
                    e.handle.send(&warning(e.exp));
                    if e.exp <= now_s {
                        // The expiry is due in this round too.
                        acted += 1;
                        e.handle.kill(close_code::UNAUTHORIZED);
                    } else {
                        refile.push(Entry {
                            kind: Kind::Expire,
                            ..e
                        });
                    }
                }
                Kind::Expire => e.handle.kill(close_code::UNAUTHORIZED),
            }
        }
        if !refile.is_empty() {
            let mut map = self.due.lock();
            for e in refile {
                map.entry(e.exp).or_default().push(e);
            }
        }
        acted
    }

    /// Drops the entries of ended or refreshed connections.
    pub fn sweep(&self) {
        let mut map = self.due.lock();
        map.retain(|_, entries| {
            entries.retain(|e| !e.stale());
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

    /// The race: a token already at `exp` when it connects (within the
    /// leeway) has its warning and its expiry due in one round. The kill
    /// drops the queued warning, so the connection must owe it.
    #[tokio::test]
    async fn warning_and_expiry_in_one_round_leave_the_warning_owed() {
        let wheel = ExpiryWheel::default();
        let (h, rx) = connection(1, 8);
        let mut e = wheel.watch(&h, 1000, true, 1000);
        assert_eq!(e.unwritten_warning(), Some(1000));
        assert_eq!(wheel.fire(1000), 2, "warning and expiry in one round");
        assert!(matches!(next_now(&rx).await, Some(Event::Killed(4001))));
        assert!(rx.try_frame().is_none(), "the kill dropped the warning");
        assert_eq!(e.unwritten_warning(), Some(1000), "still owed");
        // Written (the usual case): nothing owed; a refresh owes a new one.
        e.wrote_warning(1000);
        assert_eq!(e.unwritten_warning(), None);
        wheel.refresh(&h, &e, 2000, 1000);
        assert_eq!(e.unwritten_warning(), Some(2000));
        // Streams take no warning.
        let (h2, _rx2) = connection(2, 8);
        let s = wheel.watch(&h2, 1000, false, 1000);
        assert_eq!(s.unwritten_warning(), None);
    }

    /// The warning frame is the contract's and tagged for the connection.
    #[test]
    fn warning_frame() {
        let w = warning(1000);
        assert_eq!(&*w.text, r#"{"type":"token_expiring","exp":1000}"#);
        assert_eq!(w.meta.about, About::TokenExpiring { exp: 1000 });
    }

    #[tokio::test]
    async fn ended_connections_are_swept() {
        let wheel = ExpiryWheel::default();
        let (h, _rx) = connection(1, 8);
        let e = wheel.watch(&h, 1000, true, 900);
        let (h2, _rx2) = connection(2, 8);
        let _e2 = wheel.watch(&h2, 1000, false, 900);
        assert_eq!(wheel.len(), 2, "one entry per connection");
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
