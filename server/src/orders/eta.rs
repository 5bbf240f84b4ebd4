//! Arrival, departure and ETA from a driver's fixes. Pure and
//! deterministic: everything is computed from the fixes' own `ts` (never
//! the time they reached the server), so a replayed trace gives the same
//! entries.
//!
//! Model:
//! - **Arrival** when a fix lies within the destination radius while the
//!   previous state was outside; **departure** when a later fix lies
//!   outside `radius + hysteresis` (so GPS jitter at the edge of the circle
//!   does not flap).
//! - **ETA** = straight-line distance to the edge of the radius × a
//!   road-circuity factor ÷ the
//!   driver's recent speed, where the speed is a time-weighted exponential
//!   average (half-life [`EtaConfig::speed_half_life_s`]) of the speed
//!   between consecutive fixes — stops and slow stretches are part of it,
//!   which is what a trip of a few minutes also contains. Segments with an
//!   impossible speed (GPS jumps) are ignored. An `eta` entry is emitted
//!   when the estimate moved by more than `max(min_change_s, ratio ×
//!   previous)` since the last emitted one, and never while inside.
//!
//! Accuracy on the shared traces is measured by `waypost-bench order-eta`
//! (BENCHMARKS.md).

use serde::{Deserialize, Serialize};
use waypost_protocol::{Destination, EntryBody};

/// Tuning of the estimator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EtaConfig {
    /// Road distance ÷ straight-line distance.
    pub circuity: f64,
    /// Half-life of the speed average, seconds of fix time.
    pub speed_half_life_s: f64,
    /// Speeds below this count as this when estimating (a parked driver
    /// does not get an infinite ETA).
    pub min_speed_mps: f64,
    /// Segments faster than this are GPS jumps and are ignored.
    pub max_speed_mps: f64,
    /// An ETA entry needs a change of at least this many seconds ...
    pub min_change_s: u64,
    /// ... and of at least this fraction of the previous estimate.
    pub min_change_ratio: f64,
    /// Extra metres outside the radius before a departure counts.
    pub departure_hysteresis_m: f64,
}

impl Default for EtaConfig {
    fn default() -> Self {
        Self {
            circuity: 1.15,
            speed_half_life_s: 120.0,
            min_speed_mps: 1.0,
            max_speed_mps: 70.0,
            min_change_s: 30,
            min_change_ratio: 0.1,
            departure_hysteresis_m: 30.0,
        }
    }
}

/// What the estimator remembers about one order, stored with the order so
/// that every process continues from the same state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrackerState {
    /// Inside the destination radius (arrived and not departed).
    #[serde(default)]
    pub inside: bool,
    /// Last fix used: (ts ms, lat, lon).
    #[serde(default)]
    pub last: Option<(i64, f64, f64)>,
    /// Averaged speed, m/s.
    #[serde(default)]
    pub speed_mps: Option<f64>,
    /// Last emitted ETA: (seconds, fix ts ms).
    #[serde(default)]
    pub eta_sent: Option<(u64, i64)>,
}

/// A fix as the estimator needs it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
}

/// Great-circle distance in metres (haversine, mean Earth radius).
pub fn distance_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().asin()
}

/// Within this many metres of a destination (or five radii, if more) the
/// driver is approaching: the ingest reply asks for watched-rate uploads.
pub const APPROACH_M: f64 = 1500.0;

/// Whether a position is close enough to `dest` to upload at the watched
/// rate.
pub fn approaching(lat: f64, lon: f64, dest: &Destination) -> bool {
    distance_m(lat, lon, dest.lat, dest.lon) <= APPROACH_M.max(5.0 * dest.radius_m)
}

impl TrackerState {
    /// The current estimate in seconds (not necessarily emitted), `None`
    /// before a speed is known or while inside.
    pub fn estimate_s(&self, dest: &Destination, cfg: &EtaConfig) -> Option<u64> {
        if self.inside {
            return None;
        }
        let (_, lat, lon) = self.last?;
        let speed = self.speed_mps?.max(cfg.min_speed_mps);
        // Arrival is entering the radius, so the way left ends at its edge.
        let d = (distance_m(lat, lon, dest.lat, dest.lon) - dest.radius_m).max(0.0);
        Some((d * cfg.circuity / speed).round() as u64)
    }

    /// Feeds one fix; returns the entries it causes with their `ts` (the
    /// fix's). Fixes older than the last one used are ignored (a late
    /// upload cannot move the state backwards).
    pub fn observe(
        &mut self,
        p: Point,
        dest: &Destination,
        driver_id: &str,
        cfg: &EtaConfig,
    ) -> Vec<(EntryBody, i64)> {
        let mut out = Vec::new();
        if !(p.lat.is_finite() && p.lon.is_finite()) {
            return out;
        }
        if let Some((ts, lat, lon)) = self.last {
            if p.ts <= ts {
                return out;
            }
            let dt = (p.ts - ts) as f64 / 1000.0;
            let v = distance_m(lat, lon, p.lat, p.lon) / dt;
            if v > cfg.max_speed_mps {
                // A jump: keep the previous position as the reference.
                return out;
            }
            let w = 0.5f64.powf(dt / cfg.speed_half_life_s.max(1e-3));
            self.speed_mps = Some(match self.speed_mps {
                Some(s) => s * w + v * (1.0 - w),
                None => v,
            });
        }
        self.last = Some((p.ts, p.lat, p.lon));
        let d = distance_m(p.lat, p.lon, dest.lat, dest.lon);
        if !self.inside && d <= dest.radius_m {
            self.inside = true;
            self.eta_sent = None;
            out.push((
                EntryBody::Arrival {
                    driver_id: driver_id.to_owned(),
                },
                p.ts,
            ));
            return out;
        }
        if self.inside && d > dest.radius_m + cfg.departure_hysteresis_m {
            self.inside = false;
            out.push((
                EntryBody::Departure {
                    driver_id: driver_id.to_owned(),
                },
                p.ts,
            ));
        }
        if self.inside {
            return out;
        }
        if let Some(eta) = self.estimate_s(dest, cfg) {
            let moved = match self.eta_sent {
                None => true,
                Some((prev, prev_ts)) => {
                    // What the previous estimate says now.
                    let elapsed = ((p.ts - prev_ts).max(0) / 1000) as u64;
                    let expected = prev.saturating_sub(elapsed);
                    let change = eta.abs_diff(expected);
                    change
                        > cfg
                            .min_change_s
                            .max((cfg.min_change_ratio * prev as f64) as u64)
                }
            };
            if moved {
                self.eta_sent = Some((eta, p.ts));
                out.push((
                    EntryBody::Eta {
                        eta_s: eta,
                        distance_m: d.round(),
                    },
                    p.ts,
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Metres per degree of latitude.
    const M_PER_DEG: f64 = 111_195.0;

    fn dest() -> Destination {
        Destination {
            lat: 52.0,
            lon: 13.0,
            radius_m: 100.0,
        }
    }

    /// A point `m` metres south of the destination at second `s`.
    fn south(s: i64, m: f64) -> Point {
        Point {
            ts: 1_000_000 + s * 1000,
            lat: 52.0 - m / M_PER_DEG,
            lon: 13.0,
        }
    }

    #[test]
    fn approaching_zone() {
        assert!(approaching(52.0 - 1400.0 / M_PER_DEG, 13.0, &dest()));
        assert!(!approaching(52.0 - 1600.0 / M_PER_DEG, 13.0, &dest()));
        let wide = Destination {
            radius_m: 400.0,
            ..dest()
        };
        assert!(approaching(52.0 - 1900.0 / M_PER_DEG, 13.0, &wide));
    }

    #[test]
    fn distance_is_right() {
        let d = distance_m(52.0, 13.0, 52.0 - 1000.0 / M_PER_DEG, 13.0);
        assert!((d - 1000.0).abs() < 1.0, "{d}");
    }

    #[test]
    fn steady_approach_gives_eta_arrival_departure() {
        let cfg = EtaConfig::default();
        let mut st = TrackerState::default();
        let mut all = Vec::new();
        // 10 m/s straight north from 3025 m out, one fix per 5 s.
        for i in 0..=60 {
            let m = 3025.0 - 50.0 * i as f64;
            all.extend(st.observe(south(5 * i, m.max(0.0)), &dest(), "d", &cfg));
        }
        let Some((EntryBody::Eta { eta_s, .. }, ts)) = all.first().cloned() else {
            panic!("first entry is an ETA: {all:?}")
        };
        // 2975 m left, 2875 m to the radius, at 10 m/s with circuity 1.15.
        assert_eq!(ts, south(5, 0.0).ts);
        assert!(eta_s.abs_diff(331) <= 1, "{eta_s}");
        let arrivals: Vec<i64> = all
            .iter()
            .filter(|(e, _)| matches!(e, EntryBody::Arrival { .. }))
            .map(|(_, ts)| *ts)
            .collect();
        // 125 m from the destination at i = 58, 75 m at i = 59.
        assert_eq!(arrivals, vec![south(5 * 59, 0.0).ts]);
        // Steady speed: the estimate falls as expected, except the
        // circuity overestimate shrinking; few entries.
        let etas = all
            .iter()
            .filter(|(e, _)| matches!(e, EntryBody::Eta { .. }))
            .count();
        assert!((1..=10).contains(&etas), "{etas} eta entries");
        assert!(st.inside);
        // Jitter at the edge does not flap; leaving does.
        assert!(st.observe(south(400, 120.0), &dest(), "d", &cfg).is_empty());
        let left = st.observe(south(420, 300.0), &dest(), "d", &cfg);
        assert!(matches!(
            left.first(),
            Some((EntryBody::Departure { .. }, _))
        ));
    }

    #[test]
    fn replay_is_deterministic_and_old_fixes_ignored() {
        let cfg = EtaConfig::default();
        let fixes: Vec<Point> = (0..50)
            .map(|i| south(i * 3, 2000.0 - 30.0 * i as f64))
            .collect();
        let run = || {
            let mut st = TrackerState::default();
            let v: Vec<_> = fixes
                .iter()
                .flat_map(|p| st.observe(*p, &dest(), "d", &cfg))
                .collect();
            (v, st)
        };
        assert_eq!(run(), run());
        let (_, mut st) = run();
        let before = st.clone();
        assert!(st.observe(fixes[3], &dest(), "d", &cfg).is_empty());
        assert_eq!(st, before, "an old fix changes nothing");
        // A GPS jump of 50 km in 3 s is ignored.
        let jump = Point {
            ts: fixes[49].ts + 3000,
            lat: 52.5,
            lon: 13.0,
        };
        assert!(st.observe(jump, &dest(), "d", &cfg).is_empty());
        assert_eq!(st.last, before.last);
    }
}
