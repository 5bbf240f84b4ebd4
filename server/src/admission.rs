//! Rate limiting (token buckets) and connection counting (per user, and for
//! the whole process).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// A token bucket: `rate` tokens per second, holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub fn new(rate_per_s: u32, burst: u32, now: Instant) -> Self {
        Self {
            rate: f64::from(rate_per_s.max(1)),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    /// Takes one token; on refusal returns how long until one is available.
    pub fn take(&mut self, now: Instant) -> Result<(), Duration> {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate))
        }
    }
}

/// Token buckets keyed by a string (e.g. a driver id), bounded in size: when
/// full, buckets idle for longer than a refill are forgotten.
#[derive(Debug)]
pub struct KeyedLimiter {
    rate: u32,
    burst: u32,
    max_keys: usize,
    buckets: Mutex<HashMap<String, TokenBucket>>,
}

impl KeyedLimiter {
    pub fn new(rate: u32, burst: u32, max_keys: usize) -> Self {
        Self {
            rate,
            burst,
            max_keys,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    pub fn check(&self, key: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if !buckets.contains_key(key) && buckets.len() >= self.max_keys {
            let refill =
                Duration::from_secs_f64(f64::from(self.burst) / f64::from(self.rate.max(1)));
            buckets.retain(|_, b| now.saturating_duration_since(b.last) < refill);
            if buckets.len() >= self.max_keys {
                // Still full of active keys: refuse rather than grow.
                return Err(Duration::from_secs(1));
            }
        }
        buckets
            .entry(key.to_owned())
            .or_insert_with(|| TokenBucket::new(self.rate, self.burst, now))
            .take(now)
    }
}

/// Counts open connections per user, and in total against a cap for the
/// whole process; a [`ConnectionPermit`] gives its slot back when dropped.
#[derive(Debug)]
pub struct ConnectionCounter {
    counts: Mutex<Counts>,
    max_total: usize,
}

#[derive(Debug, Default)]
struct Counts {
    /// The key is shared with the users' permits (one name per user).
    by_user: HashMap<Arc<str>, u32>,
    total: usize,
}

/// Why [`ConnectionCounter::acquire`] said no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    /// The user already holds this many.
    User(u32),
    /// The process already holds this many (its cap).
    Process(usize),
}

impl Default for ConnectionCounter {
    /// No cap on the total.
    fn default() -> Self {
        Self::with_total_cap(usize::MAX)
    }
}

impl ConnectionCounter {
    /// A counter that refuses beyond `max_total` connections in all.
    pub fn with_total_cap(max_total: usize) -> Self {
        Self {
            counts: Mutex::new(Counts::default()),
            max_total,
        }
    }

    /// Takes a slot for `user` unless it already holds `max` or the process
    /// is at its cap.
    pub fn acquire(self: &Arc<Self>, user: &str, max: u32) -> Result<ConnectionPermit, Full> {
        let mut counts = self.counts.lock();
        if counts.total >= self.max_total {
            return Err(Full::Process(self.max_total));
        }
        if counts.by_user.get(user).copied().unwrap_or(0) >= max {
            return Err(Full::User(max));
        }
        let user = match counts.by_user.get_key_value(user) {
            Some((name, _)) => Arc::clone(name),
            None => Arc::from(user),
        };
        *counts.by_user.entry(Arc::clone(&user)).or_insert(0) += 1;
        counts.total += 1;
        Ok(ConnectionPermit {
            counter: Arc::clone(self),
            user,
        })
    }

    pub fn count(&self, user: &str) -> u32 {
        self.counts.lock().by_user.get(user).copied().unwrap_or(0)
    }

    /// Connections held in all.
    pub fn total(&self) -> usize {
        self.counts.lock().total
    }
}

/// One held connection slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    counter: Arc<ConnectionCounter>,
    user: Arc<str>,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock();
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.by_user.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.by_user.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10, 2, t0);
        assert!(b.take(t0).is_ok());
        assert!(b.take(t0).is_ok());
        let wait = b.take(t0).unwrap_err();
        assert!(wait <= Duration::from_millis(100) && wait > Duration::ZERO);
        assert!(b.take(t0 + Duration::from_millis(100)).is_ok());
    }

    proptest::proptest! {
        /// Over any schedule of requests, a bucket never grants more than
        /// `burst + rate * elapsed` tokens.
        #[test]
        fn bucket_never_exceeds_rate(
            rate in 1u32..100,
            burst in 1u32..200,
            gaps_ms in proptest::collection::vec(0u64..200, 1..300),
        ) {
            let t0 = Instant::now();
            let mut b = TokenBucket::new(rate, burst, t0);
            let mut now = t0;
            let mut granted = 0u64;
            for g in gaps_ms {
                now += Duration::from_millis(g);
                if b.take(now).is_ok() {
                    granted += 1;
                }
                let elapsed = now.duration_since(t0).as_secs_f64();
                let bound = f64::from(burst) + f64::from(rate) * elapsed;
                proptest::prop_assert!(granted as f64 <= bound + 1e-9);
            }
        }
    }

    #[test]
    fn permits_are_counted_and_returned() {
        let c = Arc::new(ConnectionCounter::default());
        let a = c.acquire("u", 2).unwrap();
        let _b = c.acquire("u", 2).unwrap();
        assert_eq!(c.acquire("u", 2).err(), Some(Full::User(2)));
        assert!(c.acquire("other", 2).is_ok());
        drop(a);
        assert_eq!(c.count("u"), 1);
        assert!(c.acquire("u", 2).is_ok());
    }

    #[test]
    fn the_process_cap_counts_every_user_and_frees_on_drop() {
        let c = Arc::new(ConnectionCounter::with_total_cap(3));
        let a = c.acquire("u", 16).unwrap();
        let _b = c.acquire("v", 16).unwrap();
        let _c = c.acquire("w", 16).unwrap();
        assert_eq!(c.total(), 3);
        assert_eq!(c.acquire("x", 16).err(), Some(Full::Process(3)));
        // A refused user leaves no entry behind.
        assert_eq!(c.count("x"), 0);
        drop(a);
        assert_eq!(c.total(), 2);
        assert!(c.acquire("x", 16).is_ok());
    }

    #[test]
    fn a_user_at_max_zero_is_refused_without_an_entry() {
        let c = Arc::new(ConnectionCounter::default());
        assert_eq!(c.acquire("u", 0).err(), Some(Full::User(0)));
        assert_eq!(c.count("u"), 0);
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn keyed_limiter_is_bounded() {
        let l = KeyedLimiter::new(1, 1, 2);
        assert!(l.check("a").is_ok());
        assert!(l.check("b").is_ok());
        assert!(l.check("a").is_err());
        // Two active keys fill it: a third is refused instead of growing.
        assert!(l.check("c").is_err());
    }
}
