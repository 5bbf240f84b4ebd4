//! `LocationPolicy`: how often to sample and how often to upload, from the
//! situation (moving or stopped, speed, battery, power mode, who watches).
//!
//! The policy is plain data ([`PolicyConfig`]) with three presets
//! ([`PolicyPreset`]); the decisions are pure functions of it, so they are
//! unit-tested without any I/O. The SDK tells the app what it wants from the
//! OS location service as a [`SamplingRequest`] and also enforces it on the
//! fixes it is given (a fix that arrives sooner or closer than asked is
//! skipped as `Throttled`).
//!
//! The server's hint (`watched`/`unwatched`, `upload_interval_s`) bounds the
//! upload cadence: when somebody watches the driver the SDK uploads *at
//! least* as often as the hint asks; when nobody does, *at most* that often.

use std::time::Duration;

use waypost_protocol::PolicyHint;

use crate::env::{
    AccuracyAuthorization, AppState, BatteryState, LocationPermission, MotionActivity,
};

/// The accuracy the SDK asks the OS location service for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Accuracy {
    /// GPS, best available (Android `PRIORITY_HIGH_ACCURACY`,
    /// iOS `kCLLocationAccuracyBest`).
    High,
    /// About 10–100 m (`PRIORITY_BALANCED_POWER_ACCURACY`,
    /// `kCLLocationAccuracyNearestTenMeters`).
    Balanced,
    /// About 1 km, cell/Wi-Fi only (`PRIORITY_LOW_POWER`,
    /// `kCLLocationAccuracyKilometer`).
    Low,
}

impl Accuracy {
    fn lower(self) -> Self {
        match self {
            Accuracy::High => Accuracy::Balanced,
            Accuracy::Balanced | Accuracy::Low => Accuracy::Low,
        }
    }
}

/// What the SDK wants the app to configure on the OS location service.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct SamplingRequest {
    /// Desired accuracy.
    pub accuracy: Accuracy,
    /// Desired minimum time between fixes, ms.
    pub interval_ms: u64,
    /// Desired minimum distance between fixes, metres (the SDK still takes a
    /// fix after `heartbeat_ms` even when the phone did not move that far).
    pub distance_filter_m: f64,
    /// A fix is taken at least this often, ms, moved or not.
    pub heartbeat_ms: u64,
    /// Whether the SDK wants fixes at all: `false` while the location
    /// permission is denied or not determined (stop the OS location
    /// service; asking would fail or prompt).
    pub active: bool,
    /// The accuracy authorization is reduced: fixes are kilometres off, are
    /// kept marked coarse, and are sampled slowly (iOS: do not ask for
    /// `kCLLocationAccuracyBest`, the OS gives reduced fixes anyway).
    pub coarse: bool,
}

/// Motion state, from the recorded fixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MotionState {
    /// Moved beyond the stationary radius within the stop timeout.
    Moving,
    /// Stayed within the stationary radius for the stop timeout.
    Stationary,
}

/// Settings for one watch mode (watched or unwatched).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModeSettings {
    /// Accuracy while moving.
    pub accuracy: Accuracy,
    /// Minimum time between recorded fixes while moving, ms.
    pub sample_interval_ms: u64,
    /// Distance filter at walking pace, metres.
    pub distance_base_m: f64,
    /// The distance filter grows by this many metres per m/s of speed
    /// (seconds of travel), so fast vehicles do not record every few metres.
    pub distance_per_mps: f64,
    /// Upper bound of the distance filter, metres.
    pub distance_max_m: f64,
    /// A fix is recorded at least this often while moving, ms.
    pub heartbeat_ms: u64,
    /// Time between uploads, ms (bounded by the server's hint, see module
    /// docs).
    pub upload_interval_ms: u64,
}

/// The whole policy: plain data, so apps can start from a preset and change
/// any field.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PolicyConfig {
    /// While somebody watches the driver.
    pub watched: ModeSettings,
    /// While nobody does.
    pub unwatched: ModeSettings,
    /// Staying within this radius for `stop_timeout_ms` means stationary.
    pub stationary_radius_m: f64,
    /// How long within the radius before the driver counts as stationary.
    pub stop_timeout_ms: u64,
    /// Heartbeat while stationary and unwatched, ms (watched drivers keep the
    /// watched heartbeat so the buyer sees they are alive).
    pub stationary_heartbeat_ms: u64,
    /// Below this battery level (and not charging) the unwatched cadence is
    /// stretched by `low_battery_factor`.
    pub low_battery_level: f64,
    /// Stretch factor for sampling and unwatched uploads on low battery or in
    /// the OS low-power mode (accuracy also drops one step).
    pub low_battery_factor: f64,
    /// Whether the server's `policy` hint bounds the upload cadence.
    pub follow_server_hint: bool,
    /// With reduced accuracy: at least this long between fixes, ms (also
    /// the heartbeat): a fix that is kilometres off carries little news.
    pub coarse_interval_ms: u64,
    /// With reduced accuracy: distance filter, metres.
    pub coarse_distance_m: f64,
}

/// Ready-made policies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum PolicyPreset {
    /// Best tracking: 1 s sampling, uploads every 2 s while watched.
    Realtime,
    /// The default: 1 s sampling and 5 s uploads while watched; a fix every
    /// ~5 s or few tens of metres and uploads every 2 minutes otherwise.
    Balanced,
    /// Battery first: coarser sampling, uploads every 5 minutes unwatched.
    Saver,
}

impl PolicyConfig {
    /// The configuration of `preset`.
    pub fn preset(preset: PolicyPreset) -> Self {
        match preset {
            PolicyPreset::Realtime => Self {
                watched: ModeSettings {
                    accuracy: Accuracy::High,
                    sample_interval_ms: 1_000,
                    distance_base_m: 0.0,
                    distance_per_mps: 0.0,
                    distance_max_m: 0.0,
                    heartbeat_ms: 1_000,
                    upload_interval_ms: 2_000,
                },
                unwatched: ModeSettings {
                    accuracy: Accuracy::High,
                    sample_interval_ms: 2_000,
                    distance_base_m: 10.0,
                    distance_per_mps: 1.0,
                    distance_max_m: 50.0,
                    heartbeat_ms: 30_000,
                    upload_interval_ms: 60_000,
                },
                stationary_radius_m: 20.0,
                stop_timeout_ms: 120_000,
                stationary_heartbeat_ms: 120_000,
                low_battery_level: 0.10,
                low_battery_factor: 1.5,
                follow_server_hint: true,
                coarse_interval_ms: 30_000,
                coarse_distance_m: 500.0,
            },
            PolicyPreset::Balanced => Self {
                watched: ModeSettings {
                    accuracy: Accuracy::High,
                    sample_interval_ms: 1_000,
                    distance_base_m: 2.0,
                    distance_per_mps: 0.0,
                    distance_max_m: 2.0,
                    heartbeat_ms: 5_000,
                    upload_interval_ms: 5_000,
                },
                unwatched: ModeSettings {
                    accuracy: Accuracy::Balanced,
                    sample_interval_ms: 5_000,
                    distance_base_m: 20.0,
                    distance_per_mps: 2.0,
                    distance_max_m: 150.0,
                    heartbeat_ms: 60_000,
                    upload_interval_ms: 120_000,
                },
                stationary_radius_m: 25.0,
                stop_timeout_ms: 90_000,
                stationary_heartbeat_ms: 300_000,
                low_battery_level: 0.15,
                low_battery_factor: 2.0,
                follow_server_hint: true,
                coarse_interval_ms: 60_000,
                coarse_distance_m: 1_000.0,
            },
            PolicyPreset::Saver => Self {
                watched: ModeSettings {
                    accuracy: Accuracy::Balanced,
                    sample_interval_ms: 2_000,
                    distance_base_m: 5.0,
                    distance_per_mps: 0.5,
                    distance_max_m: 30.0,
                    heartbeat_ms: 10_000,
                    upload_interval_ms: 10_000,
                },
                unwatched: ModeSettings {
                    accuracy: Accuracy::Balanced,
                    sample_interval_ms: 10_000,
                    distance_base_m: 50.0,
                    distance_per_mps: 4.0,
                    distance_max_m: 300.0,
                    heartbeat_ms: 120_000,
                    upload_interval_ms: 300_000,
                },
                stationary_radius_m: 40.0,
                stop_timeout_ms: 60_000,
                stationary_heartbeat_ms: 600_000,
                low_battery_level: 0.20,
                low_battery_factor: 2.0,
                follow_server_hint: true,
                coarse_interval_ms: 120_000,
                coarse_distance_m: 2_000.0,
            },
        }
    }
}

impl Default for PolicyConfig {
    /// [`PolicyPreset::Balanced`].
    fn default() -> Self {
        Self::preset(PolicyPreset::Balanced)
    }
}

/// Everything a policy decision depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Situation {
    /// Whether the server last said somebody watches.
    pub watched: bool,
    /// The server's last hint, if any.
    pub hint_interval: Option<Duration>,
    /// Moving or stationary.
    pub motion: MotionState,
    /// Last known speed, m/s.
    pub speed_mps: f64,
    /// Battery state.
    pub battery: BatteryState,
    /// Foreground or background.
    pub app_state: AppState,
    /// Location permission.
    pub permission: LocationPermission,
    /// Precise or reduced accuracy.
    pub accuracy: AccuracyAuthorization,
    /// The OS activity recognition's verdict.
    pub activity: MotionActivity,
}

impl Situation {
    /// A situation with the platform inputs at their defaults (foreground,
    /// `Always`, precise, unknown activity).
    pub fn new(watched: bool, motion: MotionState, speed_mps: f64, battery: BatteryState) -> Self {
        Self {
            watched,
            hint_interval: None,
            motion,
            speed_mps,
            battery,
            app_state: AppState::Foreground,
            permission: LocationPermission::Always,
            accuracy: AccuracyAuthorization::Precise,
            activity: MotionActivity::Unknown,
        }
    }

    /// Stationary when the fixes say so or the OS activity recognition says
    /// `Still`.
    pub fn effective_motion(&self) -> MotionState {
        if self.activity == MotionActivity::Still {
            MotionState::Stationary
        } else {
            self.motion
        }
    }

    /// In the background with only "when in use" permission: fixes keep
    /// arriving only while the session started in the foreground runs.
    pub fn background_limited(&self) -> bool {
        self.app_state == AppState::Background && self.permission == LocationPermission::WhenInUse
    }
}

/// Decisions from a [`PolicyConfig`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LocationPolicy {
    config: PolicyConfig,
}

impl LocationPolicy {
    /// A policy with `config`.
    pub fn new(config: PolicyConfig) -> Self {
        Self { config }
    }

    /// The configuration.
    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    fn mode(&self, s: &Situation) -> &ModeSettings {
        if s.watched {
            &self.config.watched
        } else {
            &self.config.unwatched
        }
    }

    /// Whether the battery asks for stretching.
    fn strained(&self, s: &Situation) -> bool {
        s.battery.low_power_mode
            || (!s.battery.charging && s.battery.level < self.config.low_battery_level)
    }

    fn stretch(&self, s: &Situation, ms: u64) -> u64 {
        // Watched drivers keep their cadence: the buyer is looking.
        if !s.watched && self.strained(s) {
            (ms as f64 * self.config.low_battery_factor.max(1.0)) as u64
        } else {
            ms
        }
    }

    /// What to ask the OS for.
    ///
    /// Platform inputs: permission denied / not determined → `active =
    /// false`; OS activity `Still` → stationary sampling; reduced accuracy
    /// → `coarse`, low accuracy, at most one fix per `coarse_interval_ms` /
    /// `coarse_distance_m`; power save or low battery → unwatched cadence
    /// stretched and accuracy one step lower; background with "when in
    /// use" → the stationary heartbeat is not stretched (an idle session
    /// is what iOS pauses and Android's background limits end, and it
    /// cannot be restarted from the background).
    pub fn sampling(&self, s: &Situation) -> SamplingRequest {
        let base = self.base_sampling(s);
        let active = matches!(
            s.permission,
            LocationPermission::Always | LocationPermission::WhenInUse
        );
        if s.accuracy == AccuracyAuthorization::Reduced {
            let c = &self.config;
            return SamplingRequest {
                accuracy: Accuracy::Low,
                interval_ms: base.interval_ms.max(c.coarse_interval_ms),
                distance_filter_m: base.distance_filter_m.max(c.coarse_distance_m),
                heartbeat_ms: base.heartbeat_ms.max(c.coarse_interval_ms),
                active,
                coarse: true,
            };
        }
        SamplingRequest { active, ..base }
    }

    fn base_sampling(&self, s: &Situation) -> SamplingRequest {
        let m = self.mode(s);
        let accuracy = if self.strained(s) && !s.watched {
            m.accuracy.lower()
        } else {
            m.accuracy
        };
        match s.effective_motion() {
            MotionState::Moving => {
                let speed = if s.speed_mps.is_finite() {
                    s.speed_mps.max(0.0)
                } else {
                    0.0
                };
                let distance =
                    (m.distance_base_m + m.distance_per_mps * speed).min(m.distance_max_m.max(0.0));
                SamplingRequest {
                    accuracy,
                    interval_ms: self.stretch(s, m.sample_interval_ms),
                    distance_filter_m: distance,
                    heartbeat_ms: self.stretch(s, m.heartbeat_ms),
                    active: true,
                    coarse: false,
                }
            }
            MotionState::Stationary => SamplingRequest {
                accuracy,
                interval_ms: self.stretch(s, m.sample_interval_ms),
                // Wake up when leaving the stop.
                distance_filter_m: self.config.stationary_radius_m,
                heartbeat_ms: if s.watched || s.background_limited() {
                    m.heartbeat_ms
                } else {
                    self.stretch(s, self.config.stationary_heartbeat_ms)
                },
                active: true,
                coarse: false,
            },
        }
    }

    /// Time between uploads.
    pub fn upload_interval(&self, s: &Situation) -> Duration {
        let own = Duration::from_millis(self.mode(s).upload_interval_ms);
        let bounded = match (self.config.follow_server_hint, s.hint_interval) {
            (true, Some(hint)) if s.watched => own.min(hint),
            (true, Some(hint)) => own.max(hint),
            _ => own,
        };
        let ms = self.stretch(s, bounded.as_millis() as u64);
        Duration::from_millis(ms.max(250))
    }

    /// Whether a fix `elapsed_ms` after and `distance_m` away from the last
    /// recorded one should be recorded.
    pub fn wants(&self, sampling: &SamplingRequest, elapsed_ms: i64, distance_m: f64) -> bool {
        // Allow 10 % early: OS deliveries jitter around the interval.
        let elapsed = elapsed_ms.max(0) as u64;
        elapsed * 10 >= sampling.interval_ms * 9
            && (distance_m >= sampling.distance_filter_m
                || elapsed * 10 >= sampling.heartbeat_ms * 9)
    }
}

/// Detects moving/stationary from fixes.
#[derive(Debug, Clone, PartialEq)]
pub struct MotionTracker {
    anchor: Option<(f64, f64, i64)>,
    state: MotionState,
    speed_mps: f64,
}

impl Default for MotionTracker {
    fn default() -> Self {
        Self {
            anchor: None,
            state: MotionState::Moving,
            speed_mps: 0.0,
        }
    }
}

impl MotionTracker {
    /// Current state.
    pub fn state(&self) -> MotionState {
        self.state
    }

    /// Last known speed, m/s.
    pub fn speed_mps(&self) -> f64 {
        self.speed_mps
    }

    /// Feeds a valid fix; returns the (possibly new) state.
    pub fn update(
        &mut self,
        config: &PolicyConfig,
        lat: f64,
        lon: f64,
        ts: i64,
        speed: Option<f64>,
    ) -> MotionState {
        match self.anchor {
            None => self.anchor = Some((lat, lon, ts)),
            Some((alat, alon, ats)) => {
                let d = haversine_m(alat, alon, lat, lon);
                let fast = speed.is_some_and(|v| v > 2.0);
                if d > config.stationary_radius_m || fast {
                    let dt = (ts - ats).max(1) as f64 / 1000.0;
                    self.speed_mps = speed.unwrap_or(d / dt);
                    self.anchor = Some((lat, lon, ts));
                    self.state = MotionState::Moving;
                } else if ts - ats >= config.stop_timeout_ms as i64 {
                    self.speed_mps = speed.unwrap_or(0.0);
                    self.state = MotionState::Stationary;
                }
            }
        }
        if let Some(v) = speed.filter(|v| v.is_finite()) {
            self.speed_mps = v;
        }
        self.state
    }
}

/// Great-circle distance in metres.
pub fn haversine_m(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    const R: f64 = 6_371_008.8;
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * R * a.sqrt().min(1.0).asin()
}

/// The server hint as an interval.
pub fn hint_interval(hint: &PolicyHint) -> Duration {
    Duration::from_secs(u64::from(hint.upload_interval_s.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(watched: bool) -> Situation {
        Situation::new(watched, MotionState::Moving, 10.0, BatteryState::default())
    }

    #[test]
    fn hint_bounds_cadence_both_ways() {
        let p = LocationPolicy::new(PolicyConfig::preset(PolicyPreset::Balanced));
        let mut s = situation(true);
        assert_eq!(p.upload_interval(&s), Duration::from_secs(5));
        s.hint_interval = Some(Duration::from_secs(3));
        assert_eq!(p.upload_interval(&s), Duration::from_secs(3));
        let mut u = situation(false);
        u.hint_interval = Some(Duration::from_secs(60));
        assert_eq!(p.upload_interval(&u), Duration::from_secs(120));
        u.hint_interval = Some(Duration::from_secs(600));
        assert_eq!(p.upload_interval(&u), Duration::from_secs(600));
        let own = LocationPolicy::new(PolicyConfig {
            follow_server_hint: false,
            ..PolicyConfig::default()
        });
        assert_eq!(own.upload_interval(&u), Duration::from_secs(120));
    }

    #[test]
    fn low_battery_stretches_unwatched_only() {
        let p = LocationPolicy::new(PolicyConfig::default());
        let mut u = situation(false);
        u.battery.level = 0.05;
        assert_eq!(p.upload_interval(&u), Duration::from_secs(240));
        assert_eq!(p.sampling(&u).accuracy, Accuracy::Low);
        u.battery.charging = true;
        assert_eq!(p.upload_interval(&u), Duration::from_secs(120));
        u.battery.low_power_mode = true;
        assert_eq!(p.upload_interval(&u), Duration::from_secs(240));
        let mut w = situation(true);
        w.battery.level = 0.05;
        assert_eq!(p.upload_interval(&w), Duration::from_secs(5));
    }

    #[test]
    fn distance_filter_stretches_with_speed_and_stops_widen() {
        let p = LocationPolicy::new(PolicyConfig::default());
        let mut u = situation(false);
        u.speed_mps = 0.0;
        assert_eq!(p.sampling(&u).distance_filter_m, 20.0);
        u.speed_mps = 10.0;
        assert_eq!(p.sampling(&u).distance_filter_m, 40.0);
        u.speed_mps = 1000.0;
        assert_eq!(p.sampling(&u).distance_filter_m, 150.0);
        u.motion = MotionState::Stationary;
        let st = p.sampling(&u);
        assert_eq!(st.distance_filter_m, 25.0);
        assert_eq!(st.heartbeat_ms, 300_000);
        assert!(p.wants(&st, 300_000, 0.0));
        assert!(!p.wants(&st, 60_000, 10.0));
        assert!(p.wants(&st, 60_000, 30.0));
    }

    #[test]
    fn platform_inputs_shape_the_request() {
        let p = LocationPolicy::new(PolicyConfig::default());
        let moving = p.sampling(&situation(false));
        assert!(moving.active && !moving.coarse);
        assert_eq!(moving.interval_ms, 5_000);

        // No permission: nothing requested.
        for perm in [
            LocationPermission::Denied,
            LocationPermission::NotDetermined,
        ] {
            let mut s = situation(false);
            s.permission = perm;
            assert!(!p.sampling(&s).active, "{perm:?}");
        }

        // Activity recognition says still: stationary sampling without
        // waiting for the stop timeout.
        let mut still = situation(false);
        still.activity = MotionActivity::Still;
        let st = p.sampling(&still);
        assert_eq!((st.distance_filter_m, st.heartbeat_ms), (25.0, 300_000));
        still.activity = MotionActivity::Automotive;
        assert_eq!(p.sampling(&still), moving);

        // Background with "when in use": the stop does not stretch the
        // heartbeat (the session must stay alive).
        let mut bg = situation(false);
        bg.motion = MotionState::Stationary;
        bg.app_state = AppState::Background;
        assert_eq!(p.sampling(&bg).heartbeat_ms, 300_000, "Always");
        bg.permission = LocationPermission::WhenInUse;
        assert_eq!(p.sampling(&bg).heartbeat_ms, 60_000);
        bg.app_state = AppState::Foreground;
        assert_eq!(p.sampling(&bg).heartbeat_ms, 300_000);

        // Reduced accuracy: coarse, low accuracy, slow.
        let mut reduced = situation(true);
        reduced.accuracy = AccuracyAuthorization::Reduced;
        let r = p.sampling(&reduced);
        assert!(r.coarse && r.active);
        assert_eq!(r.accuracy, Accuracy::Low);
        assert_eq!(
            (r.interval_ms, r.heartbeat_ms, r.distance_filter_m),
            (60_000, 60_000, 1_000.0)
        );

        // Power save relaxes the unwatched cadence like a low battery.
        let mut saver = situation(false);
        saver.battery.low_power_mode = true;
        let sv = p.sampling(&saver);
        assert_eq!((sv.interval_ms, sv.accuracy), (10_000, Accuracy::Low));
    }

    #[test]
    fn motion_tracker_detects_stops() {
        let c = PolicyConfig::default();
        let mut m = MotionTracker::default();
        let t0 = 1_700_000_000_000;
        assert_eq!(m.update(&c, 52.0, 13.0, t0, None), MotionState::Moving);
        // 111 m north after 10 s: moving at ~11 m/s.
        assert_eq!(
            m.update(&c, 52.001, 13.0, t0 + 10_000, None),
            MotionState::Moving
        );
        assert!((m.speed_mps() - 11.1).abs() < 0.2, "{}", m.speed_mps());
        // Stays put for the stop timeout.
        assert_eq!(
            m.update(&c, 52.001, 13.0, t0 + 60_000, Some(0.0)),
            MotionState::Moving
        );
        assert_eq!(
            m.update(&c, 52.00101, 13.0, t0 + 100_000, Some(0.0)),
            MotionState::Stationary
        );
        assert_eq!(
            m.update(&c, 52.002, 13.0, t0 + 110_000, None),
            MotionState::Moving
        );
    }

    #[test]
    fn haversine_is_right() {
        // One degree of latitude is about 111.2 km.
        let d = haversine_m(0.0, 0.0, 1.0, 0.0);
        assert!((d - 111_195.0).abs() < 10.0, "{d}");
    }
}
