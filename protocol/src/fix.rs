//! A GPS fix as it travels from the driver SDK to the server and on to
//! watchers.

use serde::{Deserialize, Serialize};

/// One location fix. Only `seq`, `ts`, `lat` and `lon` are required; the
/// optional fields are omitted from JSON when absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Per-device, strictly increasing sequence number assigned by the SDK.
    pub seq: u64,
    /// When the fix was taken, Unix epoch milliseconds.
    pub ts: i64,
    pub lat: f64,
    pub lon: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_mps: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heading_deg: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub altitude_m: Option<f64>,
    /// Battery level 0.0–1.0 when the fix was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub battery: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub charging: Option<bool>,
    /// `true`: taken under reduced (approximate) location accuracy, so it
    /// may be kilometres off. Stored and forwarded like any fix, but never
    /// used for arrival, departure or ETA. Absent means precise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coarse: Option<bool>,
}

/// Why a fix is not acceptable. The `Display` text is what the server sends
/// back as the error message.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FixError {
    #[error("lat out of range: {0}")]
    Lat(f64),
    #[error("lon out of range: {0}")]
    Lon(f64),
    #[error("ts must be positive epoch milliseconds: {0}")]
    Ts(i64),
    #[error("ts is {ahead_ms} ms in the future")]
    Future { ahead_ms: i64 },
    #[error("{field} out of range: {value}")]
    Field { field: &'static str, value: f64 },
}

/// Fixes may be this far ahead of the receiver's clock (phone clocks drift).
pub const MAX_FUTURE_SKEW_MS: i64 = 5 * 60 * 1000;

impl Fix {
    /// A fix with only the required fields set.
    pub fn new(seq: u64, ts: i64, lat: f64, lon: f64) -> Self {
        Self {
            seq,
            ts,
            lat,
            lon,
            accuracy_m: None,
            speed_mps: None,
            heading_deg: None,
            altitude_m: None,
            battery: None,
            charging: None,
            coarse: None,
        }
    }

    /// Whether it was taken under reduced accuracy (`coarse: true`).
    pub fn is_coarse(&self) -> bool {
        self.coarse == Some(true)
    }

    /// Checks ranges (NaN and infinities included). `now_ms` is the
    /// receiver's clock; fixes more than [`MAX_FUTURE_SKEW_MS`] ahead of it
    /// are refused.
    pub fn validate(&self, now_ms: i64) -> Result<(), FixError> {
        if !(self.lat.is_finite() && (-90.0..=90.0).contains(&self.lat)) {
            return Err(FixError::Lat(self.lat));
        }
        if !(self.lon.is_finite() && (-180.0..=180.0).contains(&self.lon)) {
            return Err(FixError::Lon(self.lon));
        }
        if self.ts <= 0 {
            return Err(FixError::Ts(self.ts));
        }
        if self.ts > now_ms.saturating_add(MAX_FUTURE_SKEW_MS) {
            return Err(FixError::Future {
                ahead_ms: self.ts - now_ms,
            });
        }
        let checks: [(&'static str, Option<f64>, f64, f64); 5] = [
            ("accuracy_m", self.accuracy_m, 0.0, 1.0e6),
            ("speed_mps", self.speed_mps, 0.0, 1000.0),
            ("heading_deg", self.heading_deg, 0.0, 360.0),
            ("altitude_m", self.altitude_m, -1.0e4, 1.0e5),
            ("battery", self.battery, 0.0, 1.0),
        ];
        for (field, value, lo, hi) in checks {
            if let Some(v) = value {
                if !(v.is_finite() && (lo..=hi).contains(&v)) {
                    return Err(FixError::Field { field, value: v });
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    #[test]
    fn minimal_json_round_trips() {
        let json = r#"{"seq":41,"ts":1700000000000,"lat":52.52,"lon":13.405}"#;
        let fix: Fix = serde_json::from_str(json).unwrap();
        assert_eq!(fix, Fix::new(41, NOW, 52.52, 13.405));
        assert_eq!(serde_json::to_string(&fix).unwrap(), json);
    }

    #[test]
    fn coarse_is_optional_and_round_trips() {
        let json = r#"{"seq":1,"ts":1700000000000,"lat":52.52,"lon":13.405,"accuracy_m":3000.0,"coarse":true}"#;
        let fix: Fix = serde_json::from_str(json).unwrap();
        assert!(fix.is_coarse());
        assert_eq!(serde_json::to_string(&fix).unwrap(), json);
        assert!(!Fix::new(1, NOW, 0.0, 0.0).is_coarse());
    }

    #[test]
    fn validation_catches_each_range() {
        let ok = Fix::new(1, NOW, 52.0, 13.0);
        assert_eq!(ok.validate(NOW), Ok(()));
        let cases = [
            Fix {
                lat: 91.0,
                ..ok.clone()
            },
            Fix {
                lat: f64::NAN,
                ..ok.clone()
            },
            Fix {
                lon: -180.5,
                ..ok.clone()
            },
            Fix {
                ts: 0,
                ..ok.clone()
            },
            Fix {
                ts: NOW + MAX_FUTURE_SKEW_MS + 1,
                ..ok.clone()
            },
            Fix {
                accuracy_m: Some(-1.0),
                ..ok.clone()
            },
            Fix {
                speed_mps: Some(f64::INFINITY),
                ..ok.clone()
            },
            Fix {
                heading_deg: Some(361.0),
                ..ok.clone()
            },
            Fix {
                battery: Some(1.5),
                ..ok.clone()
            },
        ];
        for bad in cases {
            assert!(bad.validate(NOW).is_err(), "{bad:?} passed");
        }
    }

    #[test]
    fn missing_required_field_is_a_parse_error() {
        assert!(serde_json::from_str::<Fix>(r#"{"seq":1,"ts":1,"lat":1.0}"#).is_err());
    }
}
