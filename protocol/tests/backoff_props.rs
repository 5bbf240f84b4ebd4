//! Property tests of the full-jitter backoff policy: every wait lies in
//! `[retry_after, max(window, retry_after)]`, windows grow monotonically up
//! to the cap, jitter spreads over the whole window, `max_elapsed` gives up
//! exactly when spent, `reset` starts over, and a seed reproduces a run.

use std::time::Duration;

use proptest::prelude::*;
use waypost_protocol::backoff::{Backoff, BackoffPolicy, RetryDecision, SeededRandom};

fn policy() -> impl Strategy<Value = BackoffPolicy> {
    (1u64..10_000, 0u64..600_000).prop_map(|(base, extra)| BackoffPolicy {
        base: Duration::from_millis(base),
        cap: Duration::from_millis(base + extra),
        max_elapsed: None,
    })
}

fn wait(d: RetryDecision) -> Duration {
    match d {
        RetryDecision::RetryAfter(d) => d,
        RetryDecision::GiveUp => panic!("gave up without max_elapsed"),
    }
}

proptest! {
    #[test]
    fn waits_stay_within_window_and_retry_after(
        p in policy(),
        seed in any::<u64>(),
        retry_after in proptest::collection::vec(proptest::option::of(0u64..20_000), 1..60),
    ) {
        let rng = SeededRandom::new(seed);
        let mut b = Backoff::new(p);
        let mut prev_window = Duration::ZERO;
        for (attempt, ra) in retry_after.iter().enumerate() {
            let window = p.window(attempt as u32);
            prop_assert!(window <= p.cap);
            prop_assert!(window >= prev_window, "windows shrink at {attempt}");
            prev_window = window;
            let ra = ra.map(Duration::from_millis);
            let w = wait(b.fail(attempt as u64 * 10, ra, &rng));
            let floor = ra.unwrap_or_default();
            prop_assert!(w >= floor, "wait {w:?} below Retry-After {floor:?}");
            prop_assert!(w <= window.max(floor), "wait {w:?} above window {window:?}");
            prop_assert_eq!(b.failures(), attempt as u32 + 1);
        }
        prop_assert_eq!(p.window(0), p.base.min(p.cap));
        prop_assert_eq!(p.window(1_000), p.cap);
    }

    #[test]
    fn jitter_spreads_over_the_whole_window(seed in any::<u64>(), window_ms in 1_000u64..600_000) {
        let p = BackoffPolicy {
            base: Duration::from_millis(window_ms),
            cap: Duration::from_millis(window_ms),
            max_elapsed: None,
        };
        let rng = SeededRandom::new(seed);
        let waits: Vec<u64> = (0..400)
            .map(|_| wait(Backoff::new(p).fail(0, None, &rng)).as_millis() as u64)
            .collect();
        let w = window_ms as f64;
        let min = *waits.iter().min().unwrap_or(&0) as f64;
        let max = *waits.iter().max().unwrap_or(&0) as f64;
        let mean = waits.iter().sum::<u64>() as f64 / waits.len() as f64;
        prop_assert!(max <= w);
        // Uniform on [0, w]: both quarters reached, mean near the middle
        // (10 standard deviations of margin).
        prop_assert!(min < w / 4.0, "min {min} of window {w}");
        prop_assert!(max > 3.0 * w / 4.0, "max {max} of window {w}");
        prop_assert!((0.35 * w..0.65 * w).contains(&mean), "mean {mean} of window {w}");
    }

    #[test]
    fn max_elapsed_gives_up_exactly_when_spent_and_reset_starts_over(
        p in policy(),
        max_ms in 1u64..100_000,
        gaps in proptest::collection::vec(0u64..20_000, 1..40),
        seed in any::<u64>(),
    ) {
        let p = BackoffPolicy { max_elapsed: Some(Duration::from_millis(max_ms)), ..p };
        let rng = SeededRandom::new(seed);
        let mut b = Backoff::new(p);
        // Elapsed time counts from the first failure.
        let mut now = 1_000_000u64;
        let mut first = None;
        for gap in gaps {
            now += gap;
            let start = *first.get_or_insert(now);
            let spent = now - start >= max_ms;
            match b.fail(now, None, &rng) {
                RetryDecision::GiveUp => prop_assert!(spent, "gave up after {} ms", now - start),
                RetryDecision::RetryAfter(_) => {
                    prop_assert!(!spent, "kept going after {} ms", now - start)
                }
            }
            if spent {
                break;
            }
        }
        b.reset();
        prop_assert_eq!(b.failures(), 0);
        let w = b.fail(now + 1, None, &rng);
        prop_assert!(matches!(w, RetryDecision::RetryAfter(d) if d <= p.window(0)));
    }

    #[test]
    fn a_seed_reproduces_the_waits(p in policy(), seed in any::<u64>(), n in 1usize..50) {
        let run = || {
            let rng = SeededRandom::new(seed);
            let mut b = Backoff::new(p);
            (0..n).map(|i| wait(b.fail(i as u64, None, &rng))).collect::<Vec<_>>()
        };
        prop_assert_eq!(run(), run());
    }
}
