//! Dead zones on the tracking side: the segment of a driver's path that
//! watchers missed, sent as one `trail` frame before the `location` of the
//! upload that filled it.
//!
//! A batch may fill a gap when it carries at least two fixes and either
//! spans [`MIN_GAP_MS`] or more of fix time or holds a fix that old (a
//! phone uploading at the watched rate sends the last few seconds per
//! batch; one that was dark sends the silence at once, or drains it in
//! several batches of old fixes). The segment is every fix of the batch
//! newer than what watchers saw last (the replaced latest position, when
//! it had not expired) and older than the new latest, by `ts`, thinned:
//! fixes closer
//! than [`MIN_STEP_M`] to the last kept one are dropped (GPS jitter while
//! standing), then at most [`MAX_TRAIL_FIXES`] evenly spaced by index are
//! kept, the first and the last always among them.

use waypost_protocol::{Channel, Fix, ServerFrame, MAX_TRAIL_FIXES};

use crate::frame::{About, Frame};
use crate::orders::eta::distance_m;

/// Fix time a batch must span to count as filling a gap, ms (three watched
/// upload intervals).
pub const MIN_GAP_MS: i64 = 15_000;
/// Fixes closer than this to the previous kept one are dropped, metres.
pub const MIN_STEP_M: f64 = 10.0;

/// Whether `fixes`, received at `now_ms`, may fill a gap in what watchers
/// saw (cheap; decides whether the caller publishes the live frame
/// itself).
pub fn may_fill_gap(fixes: &[Fix], now_ms: i64) -> bool {
    let (Some(lo), Some(hi)) = (
        fixes.iter().map(|f| f.ts).min(),
        fixes.iter().map(|f| f.ts).max(),
    ) else {
        return false;
    };
    fixes.len() >= 2 && (hi - lo >= MIN_GAP_MS || now_ms - lo >= MIN_GAP_MS)
}

/// The thinned segment between `previous_ts` (what watchers saw last;
/// `None`: nothing live) and `newest` (exclusive both), oldest first.
pub fn segment(fixes: &[Fix], previous_ts: Option<i64>, newest: &Fix) -> Vec<Fix> {
    let mut seg: Vec<&Fix> = fixes
        .iter()
        .filter(|f| f.ts < newest.ts && previous_ts.is_none_or(|p| f.ts > p))
        .collect();
    seg.sort_by_key(|f| (f.ts, f.seq));
    thin(&seg, MIN_STEP_M, MAX_TRAIL_FIXES)
}

/// Drops fixes within `min_step_m` of the last kept one, then keeps at most
/// `max` evenly spaced by index (first and last included).
pub fn thin(fixes: &[&Fix], min_step_m: f64, max: usize) -> Vec<Fix> {
    let mut kept: Vec<&Fix> = Vec::with_capacity(fixes.len());
    for (i, f) in fixes.iter().enumerate() {
        let last = i + 1 == fixes.len();
        match kept.last() {
            Some(k) if !last && distance_m(k.lat, k.lon, f.lat, f.lon) < min_step_m => {}
            _ => kept.push(f),
        }
    }
    if kept.len() <= max || max < 2 {
        return kept.into_iter().take(max).cloned().collect();
    }
    let n = kept.len();
    (0..max)
        .map(|i| kept[i * (n - 1) / (max - 1)].clone())
        .collect()
}

/// The `trail` frame on `channel` (`tracking:{driver}` or `order:{id}`).
pub fn trail_frame(channel: &Channel, driver_id: &str, fixes: &[Fix], origin_us: i64) -> Frame {
    let text = ServerFrame::Trail {
        channel: channel.to_string(),
        driver_id: driver_id.to_owned(),
        fixes: fixes.to_vec(),
    }
    .to_json();
    Frame::new(text, about(channel, "trail"), origin_us)
}

/// The `driver_status` frame on `channel`.
pub fn status_frame(
    channel: &Channel,
    driver_id: &str,
    body: &waypost_protocol::DriverStatusBody,
    origin_us: i64,
) -> Frame {
    let text = ServerFrame::DriverStatus {
        channel: channel.to_string(),
        driver_id: driver_id.to_owned(),
        body: body.clone(),
    }
    .to_json();
    Frame::new(text, about(channel, "driver_status"), origin_us)
}

fn about(channel: &Channel, event: &str) -> About {
    About::DriverNote {
        order: (channel.kind == waypost_protocol::ChannelKind::Order).then(|| channel.id.clone()),
        event: event.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M_PER_DEG: f64 = 111_195.0;

    /// Fix `seq` at second `seq`, `m` metres north of 52/13.
    fn at(seq: u64, m: f64) -> Fix {
        Fix::new(seq, seq as i64 * 1000, 52.0 + m / M_PER_DEG, 13.0)
    }

    #[test]
    fn only_batches_spanning_or_after_a_silence_may_fill_a_gap() {
        let now = 6_000;
        assert!(!may_fill_gap(&[], now));
        assert!(!may_fill_gap(&[at(1, 0.0)], now));
        assert!(!may_fill_gap(&[at(1, 0.0), at(5, 40.0)], now));
        assert!(may_fill_gap(&[at(1, 0.0), at(16, 150.0)], 17_000));
        // A later batch draining a backlog: short but old.
        assert!(may_fill_gap(&[at(1, 0.0), at(5, 40.0)], 30_000));
    }

    #[test]
    fn segment_is_what_watchers_missed_in_order() {
        // 60 s dark, 10 m/s: fixes 1..=60; watchers last saw fix 0.
        let mut batch: Vec<Fix> = (1..=60).map(|s| at(s, 10.0 * s as f64)).collect();
        batch.swap(3, 7); // order in the body does not matter
        let newest = at(60, 600.0);
        let seg = segment(&batch, Some(0), &newest);
        let seqs: Vec<u64> = seg.iter().map(|f| f.seq).collect();
        assert_eq!(seqs, (1..=59).collect::<Vec<_>>());
        // Watchers already saw up to fix 30: only 31..=59.
        let seg = segment(&batch, Some(30_000), &newest);
        assert_eq!(seg.first().map(|f| f.seq), Some(31));
        assert_eq!(seg.last().map(|f| f.seq), Some(59));
        // Seen up to fix 58: one fix between.
        assert_eq!(segment(&batch, Some(58_000), &newest).len(), 1);
        assert!(segment(&batch, Some(59_000), &newest).is_empty());
        // Nothing live: the batch's own span counts.
        assert_eq!(segment(&batch, None, &newest).len(), 59);
    }

    #[test]
    fn thinning_drops_jitter_and_bounds_the_count() {
        // Standing still (1 m jitter) for 30 fixes, then 500 fixes 20 m apart.
        let mut fixes: Vec<Fix> = (0..30).map(|s| at(s, (s % 2) as f64)).collect();
        fixes.extend((30..530).map(|s| at(s, 20.0 * (s - 29) as f64)));
        let refs: Vec<&Fix> = fixes.iter().collect();
        let out = thin(&refs, MIN_STEP_M, MAX_TRAIL_FIXES);
        assert_eq!(out.len(), MAX_TRAIL_FIXES);
        assert_eq!(out.first().map(|f| f.seq), Some(0));
        assert_eq!(out.last().map(|f| f.seq), Some(529), "the last is kept");
        assert!(
            out.iter().all(|f| f.seq == 0 || f.seq >= 30),
            "jitter while standing is dropped"
        );
        assert!(out.windows(2).all(|w| w[0].ts < w[1].ts), "in order");
        // Short segments pass unchanged.
        let few: Vec<Fix> = (0..5).map(|s| at(s, 50.0 * s as f64)).collect();
        let refs: Vec<&Fix> = few.iter().collect();
        assert_eq!(thin(&refs, MIN_STEP_M, MAX_TRAIL_FIXES), few);
    }
}
