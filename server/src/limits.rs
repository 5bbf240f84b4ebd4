//! Rate limiting (token buckets) and per-user connection counting.

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

/// Counts open connections per user; a [`ConnectionPermit`] gives its slot
/// back when dropped.
#[derive(Debug, Default)]
pub struct ConnectionCounter {
    counts: Mutex<HashMap<String, u32>>,
}

impl ConnectionCounter {
    /// Takes a slot for `user` unless it already holds `max`.
    pub fn acquire(self: &Arc<Self>, user: &str, max: u32) -> Option<ConnectionPermit> {
        let mut counts = self.counts.lock();
        let n = counts.entry(user.to_owned()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ConnectionPermit {
            counter: Arc::clone(self),
            user: user.to_owned(),
        })
    }

    pub fn count(&self, user: &str) -> u32 {
        self.counts.lock().get(user).copied().unwrap_or(0)
    }
}

/// One held connection slot.
#[derive(Debug)]
pub struct ConnectionPermit {
    counter: Arc<ConnectionCounter>,
    user: String,
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut counts = self.counter.counts.lock();
        if let Some(n) = counts.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.user);
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
        assert!(c.acquire("u", 2).is_none());
        assert!(c.acquire("other", 2).is_some());
        drop(a);
        assert_eq!(c.count("u"), 1);
        assert!(c.acquire("u", 2).is_some());
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
