//! Time behind a trait, so every timing decision of the SDK (upload cadence,
//! backoff, fix validation) can run in simulated time in tests and in the
//! trace replay benchmark.
//!
//! Two readings: [`Clock::now_ms`] is the wall clock (Unix epoch ms; stamps
//! and validates fixes) and [`Clock::monotonic_ms`] never goes backwards
//! (schedules uploads and backoff, immune to the user changing the phone's
//! clock). [`SystemClock`] reads the real clocks and sleeps with tokio;
//! [`ManualClock`] only moves when a test calls [`ManualClock::advance`].

#![warn(missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use tokio::sync::oneshot;

/// A boxed future returned by [`Clock::sleep`].
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A source of time. Implementations are shared (`Arc<dyn Clock>`).
pub trait Clock: Send + Sync + 'static {
    /// Wall clock, Unix epoch milliseconds.
    fn now_ms(&self) -> i64;
    /// Milliseconds on a clock that never goes backwards (arbitrary origin).
    fn monotonic_ms(&self) -> u64;
    /// Resolves after `duration` has passed on this clock.
    fn sleep(&self, duration: Duration) -> Sleep;
}

/// The real clocks; sleeps with `tokio::time::sleep`.
#[derive(Debug, Clone)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }

    fn monotonic_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        Box::pin(tokio::time::sleep(duration))
    }
}

#[derive(Debug)]
struct ManualState {
    wall_ms: i64,
    mono_ms: u64,
    next_id: u64,
    /// Sleepers by (deadline, id).
    sleepers: BTreeMap<(u64, u64), oneshot::Sender<()>>,
}

/// Simulated time: starts at a given wall time and moves only through
/// [`advance`](Self::advance) / [`set_wall_ms`](Self::set_wall_ms).
/// Sleepers wake when time passes their deadline. Cheap to clone (shared).
#[derive(Debug, Clone)]
pub struct ManualClock {
    state: Arc<Mutex<ManualState>>,
}

impl ManualClock {
    /// A clock reading `wall_ms` (Unix epoch ms), monotonic reading 0.
    pub fn new(wall_ms: i64) -> Self {
        Self {
            state: Arc::new(Mutex::new(ManualState {
                wall_ms,
                mono_ms: 0,
                next_id: 0,
                sleepers: BTreeMap::new(),
            })),
        }
    }

    /// Moves both clocks forward and wakes every sleeper that is due.
    pub fn advance(&self, by: Duration) {
        let due = {
            let mut s = self.state.lock();
            let ms = by.as_millis() as u64;
            s.wall_ms = s.wall_ms.saturating_add(ms as i64);
            s.mono_ms = s.mono_ms.saturating_add(ms);
            let now = s.mono_ms;
            let keep = s.sleepers.split_off(&(now + 1, 0));
            std::mem::replace(&mut s.sleepers, keep)
        };
        for (_, tx) in due {
            let _ = tx.send(());
        }
    }

    /// Advances to wall time `wall_ms` (no-op when that is not ahead).
    pub fn set_wall_ms(&self, wall_ms: i64) {
        let now = self.state.lock().wall_ms;
        if wall_ms > now {
            self.advance(Duration::from_millis((wall_ms - now) as u64));
        }
    }

    /// How many sleepers are waiting (tests use it to know a task is parked).
    pub fn sleepers(&self) -> usize {
        self.state.lock().sleepers.len()
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.state.lock().wall_ms
    }

    fn monotonic_ms(&self) -> u64 {
        self.state.lock().mono_ms
    }

    fn sleep(&self, duration: Duration) -> Sleep {
        let (tx, rx) = oneshot::channel();
        {
            let mut s = self.state.lock();
            if duration.is_zero() {
                return Box::pin(async {});
            }
            let deadline = s.mono_ms.saturating_add(duration.as_millis().max(1) as u64);
            let id = s.next_id;
            s.next_id += 1;
            s.sleepers.insert((deadline, id), tx);
        }
        Box::pin(async move {
            // A dropped clock never wakes: the sleeper waits forever, like
            // time that no longer moves.
            if rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_wakes_sleepers_in_order() {
        let clock = ManualClock::new(1_000);
        let a = clock.sleep(Duration::from_secs(2));
        let b = clock.sleep(Duration::from_secs(5));
        assert_eq!(clock.sleepers(), 2);
        clock.advance(Duration::from_secs(2));
        a.await;
        assert_eq!(clock.sleepers(), 1);
        assert_eq!(clock.now_ms(), 3_000);
        assert_eq!(clock.monotonic_ms(), 2_000);
        let mut b = b;
        assert!(futures_poll_once(&mut b).is_none());
        clock.set_wall_ms(6_000);
        b.await;
        assert_eq!(clock.sleepers(), 0);
    }

    fn futures_poll_once(f: &mut Sleep) -> Option<()> {
        use std::task::{Context, Poll, Waker};
        let mut cx = Context::from_waker(Waker::noop());
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(()) => Some(()),
            Poll::Pending => None,
        }
    }

    #[test]
    fn system_clock_is_sane() {
        let c = SystemClock::new();
        assert!(c.now_ms() > 1_600_000_000_000);
        let a = c.monotonic_ms();
        assert!(c.monotonic_ms() >= a);
    }
}
