//! Why uploads stopped getting through, sent with the next upload that does
//! (`silence` in the ingest body) so the server can tell watchers why the
//! courier was dark: the phone was offline, uploads failed, or the battery
//! saver held them back.

use waypost_protocol::{Silence, SilenceReason};

/// Uploads not getting through for at least this long are a silence worth
/// explaining, ms (the server's trail threshold).
pub const MIN_SILENCE_MS: u64 = 15_000;

/// What happened since the last acknowledged upload. Times are the
/// driver clock's monotonic ms.
#[derive(Debug, Default, Clone)]
pub(crate) struct SilenceTracker {
    /// The last acknowledged upload (none yet in this process).
    last_ok: Option<u64>,
    /// The first upload that was due but did not get through since then.
    first_miss: Option<u64>,
    saw_offline: bool,
    failures: u32,
}

impl SilenceTracker {
    /// An upload was due while the phone had no network.
    pub fn offline(&mut self, now: u64) {
        self.saw_offline = true;
        self.first_miss.get_or_insert(now);
    }

    /// An upload failed (network error, timeout, 5xx).
    pub fn failed(&mut self, now: u64) {
        self.failures = self.failures.saturating_add(1);
        self.first_miss.get_or_insert(now);
    }

    /// An upload was acknowledged: the silence, if any, is over.
    pub fn acked(&mut self, now: u64) {
        *self = Self {
            last_ok: Some(now),
            ..Self::default()
        };
    }

    /// What to send with an upload starting at `now` while `buffered` fixes
    /// wait; `None` when uploads were getting through or the silence was
    /// short or has no known cause (the regular unwatched cadence is not a
    /// silence).
    pub fn report(&self, now: u64, buffered: u64, low_power: bool) -> Option<Silence> {
        let since = self.last_ok.or(self.first_miss)?;
        let dark_ms = now.saturating_sub(since);
        if dark_ms < MIN_SILENCE_MS {
            return None;
        }
        let reason = if self.saw_offline {
            SilenceReason::Offline
        } else if self.failures > 0 {
            SilenceReason::NetworkError
        } else if low_power {
            SilenceReason::BatterySaver
        } else {
            return None;
        };
        Some(Silence {
            reason,
            dark_ms: Some(dark_ms),
            buffered: Some(buffered),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_the_cause_of_a_long_silence_once() {
        let mut t = SilenceTracker::default();
        assert_eq!(t.report(100_000, 5, false), None, "nothing known yet");
        t.acked(1_000);
        assert_eq!(t.report(30_000, 5, false), None, "no cause: cadence");
        t.failed(6_000);
        assert_eq!(t.report(10_000, 5, false), None, "short");
        let r = t.report(41_000, 40, false).unwrap();
        assert_eq!(r.reason, SilenceReason::NetworkError);
        assert_eq!((r.dark_ms, r.buffered), (Some(40_000), Some(40)));
        t.offline(20_000);
        assert_eq!(
            t.report(41_000, 40, true).unwrap().reason,
            SilenceReason::Offline,
            "offline explains more than the failures it causes"
        );
        t.acked(41_500);
        assert_eq!(t.report(42_000, 0, false), None, "over once acked");
        assert_eq!(
            t.report(60_000, 3, true).unwrap().reason,
            SilenceReason::BatterySaver
        );
        let mut fresh = SilenceTracker::default();
        fresh.offline(5_000);
        assert_eq!(
            fresh.report(25_000, 9, false).map(|r| r.dark_ms),
            Some(Some(20_000)),
            "without an ack in this process: from the first miss"
        );
    }
}
