//! [`DriverHealth`]: why fixes are (not) reaching the server, in words a
//! support engineer understands, with a machine-readable reason per issue.
//!
//! [`assess`] is a pure function of [`HealthInputs`] (the platform state,
//! counters kept by the driver, the buffer fill and the last upload
//! outcome), so every rule is unit-tested without I/O. The driver
//! re-assesses after recording, after each upload and on every platform
//! change, and notifies its [`HealthListener`]s only when the *set* of
//! issues changes ([`DriverHealth::key`]): a count going from 3 to 4 does
//! not emit, a new reason appearing or one clearing does. The figures in
//! an emitted report are current at the time;
//! [`Driver::health`](crate::Driver::health) always returns fresh ones.

#![warn(missing_docs)]

use crate::env::{
    AccuracyAuthorization, AppState, LocationPermission, NetworkType, PlatformSnapshot,
};

/// Inaccurate rejections in a row from which the report shows them (one
/// bad fix among good ones is normal).
pub const INACCURATE_STREAK: u64 = 3;
/// Buffer fill (percent of `max_fixes`) from which the report warns.
pub const BUFFER_WARN_PERCENT: u8 = 80;
/// Buffer fill from which it is critical (evictions are close).
pub const BUFFER_CRITICAL_PERCENT: u8 = 95;

/// How bad an issue is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum HealthSeverity {
    /// Worth knowing; fixes still reach the server.
    Info,
    /// Fixes are late, approximate or some are lost.
    Warning,
    /// No fixes reach the server.
    Critical,
}

/// Machine-readable cause of a [`HealthIssue`].
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum HealthReason {
    /// The location permission is denied.
    PermissionDenied,
    /// The location permission was not asked for / answered yet.
    PermissionNotDetermined,
    /// Approximate location only: fixes are recorded marked coarse.
    AccuracyReduced,
    /// "When in use" permission while the app is in the background.
    BackgroundWithoutAlways,
    /// Fixes in a row rejected as inaccurate.
    FixesRejectedInaccurate {
        /// Rejected in a row (since the last recorded fix).
        count: u64,
        /// The last rejected fix's accuracy, metres.
        last_accuracy_m: f64,
        /// The limit, metres.
        max_accuracy_m: f64,
    },
    /// The platform reports no network and fixes are waiting in the
    /// buffer (offline with an empty buffer is not an issue: nothing is
    /// held back).
    Offline {
        /// Fixes waiting in the buffer.
        pending: u64,
    },
    /// The buffer is close to its cap.
    BufferNearCap {
        /// Fill, percent of `max_fixes`.
        fill_percent: u8,
        /// Fixes waiting.
        pending: u64,
        /// The cap.
        max_fixes: u64,
    },
    /// The server refuses the token and the app provided no better one.
    TokenRefreshFailing {
        /// The last error.
        message: String,
    },
    /// The server refused fixes for good since the driver was opened.
    Quarantined {
        /// How many.
        count: u64,
    },
    /// Uploads fail (network errors, 5xx, 429).
    UploadsFailing {
        /// The last error.
        message: String,
        /// Failures since the last success.
        consecutive_failures: u32,
        /// When the next attempt is due, ms from now (`None`: when
        /// something changes, e.g. the network comes back).
        retry_in_ms: Option<u64>,
    },
}

impl HealthReason {
    /// A stable snake_case code for logs and dashboards.
    pub fn code(&self) -> &'static str {
        match self {
            HealthReason::PermissionDenied => "permission_denied",
            HealthReason::PermissionNotDetermined => "permission_not_determined",
            HealthReason::AccuracyReduced => "accuracy_reduced",
            HealthReason::BackgroundWithoutAlways => "background_without_always",
            HealthReason::FixesRejectedInaccurate { .. } => "fixes_rejected_inaccurate",
            HealthReason::Offline { .. } => "offline",
            HealthReason::BufferNearCap { .. } => "buffer_near_cap",
            HealthReason::TokenRefreshFailing { .. } => "token_refresh_failing",
            HealthReason::Quarantined { .. } => "quarantined",
            HealthReason::UploadsFailing { .. } => "uploads_failing",
        }
    }
}

/// One reason fixes are not (all) reaching the server.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct HealthIssue {
    /// What, with its figures.
    pub reason: HealthReason,
    /// [`HealthReason::code`].
    pub code: String,
    /// How bad.
    pub severity: HealthSeverity,
    /// One or two sentences for a support engineer: what happens and what
    /// helps.
    pub message: String,
}

/// The driver's health report.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct DriverHealth {
    /// No issue of severity `Warning` or worse.
    pub ok: bool,
    /// The worst severity among the issues (`None` when there is none).
    pub severity: Option<HealthSeverity>,
    /// The issues, worst first.
    pub issues: Vec<HealthIssue>,
    /// The messages in one paragraph ("Fixes are reaching the server."
    /// when there is no issue).
    pub summary: String,
    /// Fixes rejected as inaccurate since the driver was opened.
    pub rejected_inaccurate_total: u64,
    /// Coarse fixes recorded since the driver was opened.
    pub coarse_recorded_total: u64,
}

impl DriverHealth {
    /// The codes of the issues: reports with equal keys are the same for
    /// the listeners (figures aside).
    pub fn key(&self) -> Vec<&'static str> {
        self.issues.iter().map(|i| i.reason.code()).collect()
    }

    /// Whether an issue with this reason code is present.
    pub fn has(&self, code: &str) -> bool {
        self.issues.iter().any(|i| i.code == code)
    }
}

/// The last failed upload, as the uploader saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct UploadFailure {
    /// The error.
    pub message: String,
    /// Failures since the last success.
    pub consecutive_failures: u32,
    /// Monotonic ms of the next attempt (`None`: when something changes).
    pub retry_at_ms: Option<u64>,
}

/// Everything a report is made of.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthInputs {
    /// The platform.
    pub platform: PlatformSnapshot,
    /// Inaccurate rejections since the last recorded fix.
    pub rejected_inaccurate_streak: u64,
    /// Inaccurate rejections since open.
    pub rejected_inaccurate_total: u64,
    /// Accuracy of the last rejected fix, metres.
    pub last_rejected_accuracy_m: f64,
    /// The precise-mode accuracy limit, metres.
    pub max_accuracy_m: f64,
    /// Coarse fixes recorded since open.
    pub coarse_recorded_total: u64,
    /// Fixes in the buffer.
    pub pending: u64,
    /// The buffer cap.
    pub max_fixes: u64,
    /// Fixes quarantined since open.
    pub quarantined: u64,
    /// The token was refused and no better one came (cleared by a success).
    pub auth_failure: Option<String>,
    /// The last upload failed (cleared by a success).
    pub upload_failure: Option<UploadFailure>,
    /// Monotonic ms now.
    pub now_ms: u64,
}

fn issue(reason: HealthReason, severity: HealthSeverity, message: String) -> HealthIssue {
    HealthIssue {
        code: reason.code().to_owned(),
        reason,
        severity,
        message,
    }
}

/// The report for `i`.
pub fn assess(i: &HealthInputs) -> DriverHealth {
    use HealthSeverity::{Critical, Info, Warning};
    let mut issues = Vec::new();
    let p = &i.platform;
    match p.permission {
        LocationPermission::Denied => issues.push(issue(
            HealthReason::PermissionDenied,
            Critical,
            "Location permission is denied: the phone gives the app no fixes. The driver has to \
             allow location for the app in the system settings."
                .into(),
        )),
        LocationPermission::NotDetermined => issues.push(issue(
            HealthReason::PermissionNotDetermined,
            Critical,
            "Location permission has not been granted yet: there are no fixes until the driver \
             answers the permission prompt."
                .into(),
        )),
        LocationPermission::WhenInUse if p.app_state == AppState::Background => issues.push(issue(
            HealthReason::BackgroundWithoutAlways,
            Info,
            "Location permission is \"while using the app\" and the app is in the \
                 background: fixes keep coming only while the location session started in the \
                 foreground runs; if the system ends it, tracking stops until the app is opened \
                 again. \"Allow all the time\" avoids this."
                .into(),
        )),
        LocationPermission::Always | LocationPermission::WhenInUse => {}
    }
    if p.location_allowed() && p.accuracy == AccuracyAuthorization::Reduced {
        issues.push(issue(
            HealthReason::AccuracyReduced,
            Warning,
            "Precise location is off (approximate location only): fixes are 1–5 km off. They are \
             uploaded marked coarse, sampled about once a minute, and do not count for arrival. \
             The driver can turn on precise location for the app in the system settings."
                .into(),
        ));
    }
    if i.rejected_inaccurate_streak >= INACCURATE_STREAK {
        issues.push(issue(
            HealthReason::FixesRejectedInaccurate {
                count: i.rejected_inaccurate_streak,
                last_accuracy_m: i.last_rejected_accuracy_m,
                max_accuracy_m: i.max_accuracy_m,
            },
            Warning,
            format!(
                "{} fixes in a row were rejected as inaccurate (last one ±{:.0} m, the limit is \
                 {:.0} m): the phone has no good GPS signal (indoors, underground, or location \
                 set to a battery-saving mode).",
                i.rejected_inaccurate_streak, i.last_rejected_accuracy_m, i.max_accuracy_m
            ),
        ));
    }
    let offline = p.network == NetworkType::Offline;
    // Offline is a reason fixes are not reaching the server only when some
    // are waiting: with an empty buffer nothing is held back (fixes
    // recorded offline raise it with the first one).
    if offline && i.pending > 0 {
        issues.push(issue(
            HealthReason::Offline { pending: i.pending },
            Warning,
            format!(
                "The phone is offline: {} fixes are waiting on the phone and will be uploaded as \
                 soon as the network is back.",
                i.pending
            ),
        ));
    }
    if let Some(message) = &i.auth_failure {
        issues.push(issue(
            HealthReason::TokenRefreshFailing {
                message: message.clone(),
            },
            Critical,
            format!(
                "The server refuses the driver's token and the app could not provide a new one \
                 ({message}): nothing is uploaded until it does. Fixes are kept on the phone."
            ),
        ));
    } else if let Some(f) = i.upload_failure.as_ref().filter(|_| !offline) {
        let retry_in_ms = f.retry_at_ms.map(|t| t.saturating_sub(i.now_ms));
        let when = match retry_in_ms {
            Some(ms) => format!("next attempt in {} s", ms.div_ceil(1000)),
            None => "next attempt when the network changes or at the next upload".into(),
        };
        issues.push(issue(
            HealthReason::UploadsFailing {
                message: f.message.clone(),
                consecutive_failures: f.consecutive_failures,
                retry_in_ms,
            },
            Warning,
            format!(
                "Uploads are failing ({} in a row, last error: {}); {when}. Fixes are kept on \
                 the phone.",
                f.consecutive_failures, f.message
            ),
        ));
    }
    if let Some(fill) = i.pending.saturating_mul(100).checked_div(i.max_fixes) {
        let fill = fill.min(100) as u8;
        if fill >= BUFFER_WARN_PERCENT {
            issues.push(issue(
                HealthReason::BufferNearCap {
                    fill_percent: fill,
                    pending: i.pending,
                    max_fixes: i.max_fixes,
                },
                if fill >= BUFFER_CRITICAL_PERCENT {
                    Critical
                } else {
                    Warning
                },
                format!(
                    "The buffer on the phone is {fill}% full ({} of {} fixes): unless uploads \
                     resume, the oldest fixes will be dropped.",
                    i.pending, i.max_fixes
                ),
            ));
        }
    }
    if i.quarantined > 0 {
        issues.push(issue(
            HealthReason::Quarantined {
                count: i.quarantined,
            },
            Warning,
            format!(
                "The server refused {} fixes as invalid since the driver started; they are kept \
                 aside on the phone (see quarantined()) and never resent.",
                i.quarantined
            ),
        ));
    }
    // Worst first; stable among equals.
    issues.sort_by_key(|i| std::cmp::Reverse(i.severity));
    let severity = issues.iter().map(|i| i.severity).max();
    let summary = if issues.is_empty() {
        "Fixes are reaching the server.".to_owned()
    } else {
        issues
            .iter()
            .map(|i| i.message.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    DriverHealth {
        ok: severity.is_none_or(|s| s < Warning),
        severity,
        issues,
        summary,
        rejected_inaccurate_total: i.rejected_inaccurate_total,
        coarse_recorded_total: i.coarse_recorded_total,
    }
}

/// Receives health reports when they change.
pub trait HealthListener: Send + Sync + 'static {
    /// Called with the new report (on the thread that changed it: a
    /// `record` call or the uploader). Return quickly.
    fn on_health(&self, health: DriverHealth);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn healthy() -> HealthInputs {
        HealthInputs {
            platform: PlatformSnapshot::default(),
            rejected_inaccurate_streak: 0,
            rejected_inaccurate_total: 0,
            last_rejected_accuracy_m: 0.0,
            max_accuracy_m: 100.0,
            coarse_recorded_total: 0,
            pending: 10,
            max_fixes: 1_000,
            quarantined: 0,
            auth_failure: None,
            upload_failure: None,
            now_ms: 1_000,
        }
    }

    #[test]
    fn healthy_says_so() {
        let h = assess(&healthy());
        assert!(h.ok && h.issues.is_empty() && h.severity.is_none());
        assert_eq!(h.summary, "Fixes are reaching the server.");
    }

    #[test]
    fn each_reason_appears_with_its_figures() {
        let mut i = healthy();
        i.platform.permission = LocationPermission::Denied;
        let h = assess(&i);
        assert_eq!(h.key(), ["permission_denied"]);
        assert_eq!(h.severity, Some(HealthSeverity::Critical));
        assert!(!h.ok);

        let mut i = healthy();
        i.platform.accuracy = AccuracyAuthorization::Reduced;
        i.platform.permission = LocationPermission::WhenInUse;
        i.platform.app_state = AppState::Background;
        let h = assess(&i);
        // Worst first.
        assert_eq!(h.key(), ["accuracy_reduced", "background_without_always"]);
        assert!(h.summary.contains("1–5 km"), "{}", h.summary);

        let mut i = healthy();
        i.rejected_inaccurate_streak = 2;
        i.rejected_inaccurate_total = 7;
        assert!(assess(&i).issues.is_empty(), "two in a row is noise");
        i.rejected_inaccurate_streak = 3;
        i.last_rejected_accuracy_m = 250.0;
        let h = assess(&i);
        assert_eq!(
            h.issues[0].reason,
            HealthReason::FixesRejectedInaccurate {
                count: 3,
                last_accuracy_m: 250.0,
                max_accuracy_m: 100.0
            }
        );
        assert!(h.issues[0].message.contains("±250 m"), "{}", h.summary);
        assert_eq!(h.rejected_inaccurate_total, 7);

        let mut i = healthy();
        i.pending = 960;
        let h = assess(&i);
        assert_eq!(
            h.issues[0].reason,
            HealthReason::BufferNearCap {
                fill_percent: 96,
                pending: 960,
                max_fixes: 1_000
            }
        );
        assert_eq!(h.severity, Some(HealthSeverity::Critical));
        i.pending = 800;
        assert_eq!(assess(&i).severity, Some(HealthSeverity::Warning));

        let mut i = healthy();
        i.quarantined = 2;
        assert_eq!(
            assess(&i).issues[0].reason,
            HealthReason::Quarantined { count: 2 }
        );
    }

    #[test]
    fn upload_failures_offline_and_auth() {
        let mut i = healthy();
        i.upload_failure = Some(UploadFailure {
            message: "HTTP 503".into(),
            consecutive_failures: 2,
            retry_at_ms: Some(5_500),
        });
        let h = assess(&i);
        assert_eq!(
            h.issues[0].reason,
            HealthReason::UploadsFailing {
                message: "HTTP 503".into(),
                consecutive_failures: 2,
                retry_in_ms: Some(4_500)
            }
        );
        assert!(h.summary.contains("next attempt in 5 s"), "{}", h.summary);
        // Offline explains the failures; they are not reported twice.
        i.platform.network = NetworkType::Offline;
        let h = assess(&i);
        assert_eq!(h.key(), ["offline"]);
        assert!(h.summary.contains("10 fixes are waiting"), "{}", h.summary);
        // Offline with nothing waiting holds nothing back: no issue (and a
        // stale upload failure is not reported either while offline).
        i.pending = 0;
        let h = assess(&i);
        assert!(h.ok && h.issues.is_empty(), "{h:?}");
        assert_eq!(h.summary, "Fixes are reaching the server.");
        i.pending = 1;
        assert_eq!(
            assess(&i).issues[0].reason,
            HealthReason::Offline { pending: 1 }
        );
        i.pending = 10;
        // A refused token is the real cause.
        i.platform.network = NetworkType::Wifi;
        i.auth_failure = Some("no token".into());
        let h = assess(&i);
        assert_eq!(h.key(), ["token_refresh_failing"]);
        assert_eq!(h.severity, Some(HealthSeverity::Critical));
    }
}
