//! Validation of incoming fixes: what the server would refuse (ranges, NaN,
//! timestamps from the future) plus what it would accept but nobody wants
//! (inaccurate fixes, GPS jumps implying impossible speeds, replays of older
//! fixes).

use waypost_protocol::{Fix, FixError};

use super::policy::haversine_m;

/// A location as the platform delivers it (no seq yet).
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Location {
    /// When the fix was taken, Unix epoch ms.
    pub ts_ms: i64,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// Horizontal accuracy radius, metres.
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub accuracy_m: Option<f64>,
    /// Speed over ground, m/s.
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub speed_mps: Option<f64>,
    /// Course, degrees clockwise from north.
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub heading_deg: Option<f64>,
    /// Altitude, metres.
    #[cfg_attr(feature = "uniffi", uniffi(default = None))]
    pub altitude_m: Option<f64>,
}

impl Location {
    /// A location with only the required fields.
    pub fn new(ts_ms: i64, lat: f64, lon: f64) -> Self {
        Self {
            ts_ms,
            lat,
            lon,
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
            altitude_m: None,
        }
    }

    /// The wire fix (seq 0 until the buffer assigns one).
    pub fn to_fix(&self) -> Fix {
        Fix {
            seq: 0,
            ts: self.ts_ms,
            lat: self.lat,
            lon: self.lon,
            accuracy_m: self.accuracy_m,
            speed_mps: self.speed_mps,
            heading_deg: self.heading_deg,
            altitude_m: self.altitude_m,
            battery: None,
            charging: None,
            coarse: None,
        }
    }
}

/// Why `record` did not record a fix.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum DropReason {
    /// A field is out of range or not a number.
    Invalid {
        /// Which check failed.
        message: String,
    },
    /// The timestamp is ahead of the phone's clock.
    FromTheFuture {
        /// By how much, ms.
        ahead_ms: i64,
    },
    /// Accuracy worse than the threshold.
    Inaccurate {
        /// The fix's accuracy, metres.
        accuracy_m: f64,
    },
    /// Reaching it from the previous fix needs an impossible speed.
    Jump {
        /// Implied speed, m/s.
        implied_speed_mps: f64,
    },
    /// Not newer than the last accepted fix.
    Stale,
    /// The policy does not want a fix this soon / this close.
    Throttled,
}

/// Thresholds of the filter.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilterConfig {
    /// Fixes less accurate than this are dropped (and counted), metres.
    pub max_accuracy_m: f64,
    /// With reduced accuracy authorization: fixes up to this inaccurate are
    /// kept, marked coarse, metres (the OS makes them 1–5 km off).
    pub max_coarse_accuracy_m: f64,
    /// Implied speeds above this are jumps, m/s.
    pub max_speed_mps: f64,
    /// Fixes further ahead of the phone's clock are dropped, ms.
    pub max_future_ms: i64,
    /// After this many jumps in a row the filter trusts the new position
    /// (the previous fix was the wrong one, or the phone really moved).
    pub max_consecutive_jumps: u32,
    /// Gaps longer than this skip the jump check, ms (a tunnel, a flight).
    pub jump_check_max_gap_ms: i64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_accuracy_m: 100.0,
            max_coarse_accuracy_m: 5_000.0,
            max_speed_mps: 60.0,
            max_future_ms: 60_000,
            max_consecutive_jumps: 5,
            jump_check_max_gap_ms: 10 * 60_000,
        }
    }
}

/// Stateful filter: remembers the last accepted fix.
#[derive(Debug, Clone, Default)]
pub struct FixFilter {
    config: FilterConfig,
    last: Option<(i64, f64, f64)>,
    jumps_in_a_row: u32,
}

impl FixFilter {
    /// A filter; `last` is the last recorded fix (from the buffer) so checks
    /// continue across restarts.
    pub fn new(config: FilterConfig, last: Option<&Fix>) -> Self {
        Self {
            config,
            last: last.map(|f| (f.ts, f.lat, f.lon)),
            jumps_in_a_row: 0,
        }
    }

    /// Checks `loc` against the clock reading `now_ms`; on success it becomes
    /// the reference for the next check. `coarse`: the accuracy
    /// authorization is reduced, so the accuracy bound is
    /// `max_coarse_accuracy_m` and there is no jump check (a fix that may be
    /// kilometres off implies no speed).
    pub fn check(&mut self, loc: &Location, now_ms: i64, coarse: bool) -> Result<(), DropReason> {
        let fix = loc.to_fix();
        if let Err(e) = fix.validate(now_ms) {
            return Err(match e {
                FixError::Future { ahead_ms } => DropReason::FromTheFuture { ahead_ms },
                other => DropReason::Invalid {
                    message: other.to_string(),
                },
            });
        }
        if loc.ts_ms > now_ms + self.config.max_future_ms {
            return Err(DropReason::FromTheFuture {
                ahead_ms: loc.ts_ms - now_ms,
            });
        }
        let max_accuracy = if coarse {
            self.config.max_coarse_accuracy_m
        } else {
            self.config.max_accuracy_m
        };
        if let Some(acc) = loc.accuracy_m {
            if acc > max_accuracy {
                return Err(DropReason::Inaccurate { accuracy_m: acc });
            }
        }
        if let Some((ts, lat, lon)) = self.last {
            if loc.ts_ms <= ts {
                return Err(DropReason::Stale);
            }
            let dt = loc.ts_ms - ts;
            if !coarse && dt <= self.config.jump_check_max_gap_ms {
                let speed = haversine_m(lat, lon, loc.lat, loc.lon) / (dt as f64 / 1000.0);
                if speed > self.config.max_speed_mps
                    && self.jumps_in_a_row < self.config.max_consecutive_jumps
                {
                    self.jumps_in_a_row += 1;
                    return Err(DropReason::Jump {
                        implied_speed_mps: speed,
                    });
                }
            }
        }
        self.jumps_in_a_row = 0;
        self.last = Some((loc.ts_ms, loc.lat, loc.lon));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn drops_each_kind_of_bad_fix() {
        let mut f = FixFilter::new(FilterConfig::default(), None);
        assert!(matches!(
            f.check(&Location::new(NOW, f64::NAN, 13.0), NOW, false),
            Err(DropReason::Invalid { .. })
        ));
        assert!(matches!(
            f.check(&Location::new(NOW, 91.0, 13.0), NOW, false),
            Err(DropReason::Invalid { .. })
        ));
        assert_eq!(
            f.check(&Location::new(NOW + 120_000, 52.0, 13.0), NOW, false),
            Err(DropReason::FromTheFuture { ahead_ms: 120_000 })
        );
        let mut bad_acc = Location::new(NOW, 52.0, 13.0);
        bad_acc.accuracy_m = Some(250.0);
        assert_eq!(
            f.check(&bad_acc, NOW, false),
            Err(DropReason::Inaccurate { accuracy_m: 250.0 })
        );
        assert_eq!(f.check(&Location::new(NOW, 52.0, 13.0), NOW, false), Ok(()));
        assert_eq!(
            f.check(&Location::new(NOW, 52.0, 13.0), NOW, false),
            Err(DropReason::Stale)
        );
        // 1.1 km in 1 s.
        assert!(matches!(
            f.check(&Location::new(NOW + 1_000, 52.01, 13.0), NOW + 1_000, false),
            Err(DropReason::Jump { implied_speed_mps }) if implied_speed_mps > 1000.0
        ));
        // 11 m in 1 s is fine.
        assert_eq!(
            f.check(
                &Location::new(NOW + 2_000, 52.0001, 13.0),
                NOW + 2_000,
                false
            ),
            Ok(())
        );
    }

    #[test]
    fn coarse_mode_keeps_kilometre_fixes_without_jump_checks() {
        let mut f = FixFilter::new(FilterConfig::default(), None);
        let mut a = Location::new(NOW, 52.0, 13.0);
        a.accuracy_m = Some(3_000.0);
        assert_eq!(
            f.check(&a, NOW, false),
            Err(DropReason::Inaccurate {
                accuracy_m: 3_000.0
            })
        );
        assert_eq!(f.check(&a, NOW, true), Ok(()));
        // 2 km away one second later: a jump for precise fixes, not for
        // coarse ones.
        let mut b = Location::new(NOW + 1_000, 52.018, 13.0);
        b.accuracy_m = Some(3_000.0);
        assert_eq!(f.check(&b, NOW + 1_000, true), Ok(()));
        let mut c = Location::new(NOW + 2_000, 52.0, 13.0);
        c.accuracy_m = Some(9_000.0);
        assert_eq!(
            f.check(&c, NOW + 2_000, true),
            Err(DropReason::Inaccurate {
                accuracy_m: 9_000.0
            })
        );
    }

    #[test]
    fn persistent_jumps_are_eventually_trusted() {
        let cfg = FilterConfig {
            max_consecutive_jumps: 2,
            ..FilterConfig::default()
        };
        let mut f = FixFilter::new(cfg, Some(&Fix::new(1, NOW, 52.0, 13.0)));
        let far = |i: i64| Location::new(NOW + i * 1000, 53.0, 13.0);
        assert!(matches!(
            f.check(&far(1), NOW + 5_000, false),
            Err(DropReason::Jump { .. })
        ));
        assert!(matches!(
            f.check(&far(2), NOW + 5_000, false),
            Err(DropReason::Jump { .. })
        ));
        assert_eq!(f.check(&far(3), NOW + 5_000, false), Ok(()));
        assert_eq!(f.check(&far(4), NOW + 5_000, false), Ok(()));
    }
}
