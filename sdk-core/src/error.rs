//! The one public error type of the SDK, [`WaypostError`], for the driver
//! and the buyer alike. Each variant carries what an app decides on: a
//! stable machine-readable [`code`](WaypostError::code), the HTTP status
//! when there was one, whether trying again can help
//! ([`retryable`](WaypostError::retryable)) and how long the server asked
//! to wait ([`retry_after_ms`](WaypostError::retry_after_ms)). Rich internal
//! errors ([`StoreError`], [`TransportError`], [`HttpError`],
//! `rusqlite::Error`) are converted into it here, in one place.
//!
//! With the `uniffi` feature it is exported as a non-flat error (a Kotlin
//! sealed exception class, a Swift enum with associated values, a Python
//! exception hierarchy) with the four accessors in one `info()` method
//! ([`ErrorInfo`]). Text fields are
//! called `details`, not `message`, which would clash with Kotlin's
//! `Throwable.message`.

#![warn(missing_docs)]

use crate::driver::buffer::StoreError;
use crate::transport::{HttpError, StatusError, TransportError};

/// Codes of [`WaypostError::Storage`].
pub mod storage_code {
    /// The file is damaged (and recreating it was not allowed).
    pub const CORRUPT: &str = "storage_corrupt";
    /// The file belongs to another application or a newer SDK; untouched.
    pub const FOREIGN: &str = "storage_foreign";
    /// Any other failure (disk full, I/O error, locked, ...).
    pub const IO: &str = "storage_io";
}

/// Codes of [`WaypostError::Network`].
pub mod network_code {
    /// Could not connect (refused, unreachable, DNS, TLS).
    pub const CONNECT: &str = "connect";
    /// No complete answer in time.
    pub const TIMEOUT: &str = "timeout";
    /// The connection broke mid-exchange.
    pub const BROKEN: &str = "broken";
    /// The request could not be built (bad URL, ...).
    pub const INVALID_REQUEST: &str = "invalid_request";
}

/// An error the SDK reports to the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Error))]
pub enum WaypostError {
    /// A setting or argument is unusable (bad URL, bad id, empty path, body
    /// too long, ...). Not retryable: fix the call.
    #[error("invalid argument: {details}")]
    InvalidArgument {
        /// What is wrong.
        details: String,
    },
    /// The local database (driver buffer, chat store) failed or is corrupt.
    #[error("storage ({code}): {details}")]
    Storage {
        /// One of [`storage_code`]: `storage_corrupt`, `storage_foreign`,
        /// `storage_io`.
        code: String,
        /// Details, with the path where there is one.
        details: String,
    },
    /// No HTTP answer (or WebSocket connection) from the server. Retryable.
    #[error("network ({code}): {details}")]
    Network {
        /// One of [`network_code`]: `connect`, `timeout`, `broken`,
        /// `invalid_request`.
        code: String,
        /// Details.
        details: String,
    },
    /// The server answered with an error status (or an unreadable reply).
    #[error("HTTP {http_status} ({code}): {details}")]
    Server {
        /// The HTTP status.
        http_status: u16,
        /// The contract's error code (`rate_limited`, `bad_fix`, ...), or
        /// `http_<status>` when the body had none, or `bad_reply`.
        code: String,
        /// The server's message.
        details: String,
        /// Whether trying again later can help (408, 425, 429, 5xx, an
        /// unreadable 2xx).
        retryable: bool,
        /// The server's `Retry-After`, ms.
        retry_after_ms: Option<u64>,
    },
    /// The server refused the token, also after a refresh, or the token
    /// provider had none.
    #[error("unauthorized: {details}")]
    Unauthorized {
        /// 401 when the server said so; `None` when the provider gave no
        /// token.
        http_status: Option<u16>,
        /// Details.
        details: String,
    },
    /// Too many requests are queued (outbox or command queue full); try
    /// again shortly.
    #[error("busy: {details}")]
    Busy {
        /// What is full.
        details: String,
    },
    /// The object was shut down (or closed).
    #[error("shut down")]
    ShutDown,
    /// Something that should not happen (no async runtime, a task failed).
    /// Worth a bug report.
    #[error("internal: {details}")]
    Internal {
        /// Details.
        details: String,
    },
}

/// What an app decides on, the same for every variant of
/// [`WaypostError`] (`error.info()` in Kotlin, Swift and Python; the
/// variants' own fields would shadow methods of the same names in Python).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ErrorInfo {
    /// [`WaypostError::code`].
    pub code: String,
    /// [`WaypostError::http_status`].
    pub http_status: Option<u16>,
    /// [`WaypostError::retryable`].
    pub retryable: bool,
    /// [`WaypostError::retry_after_ms`].
    pub retry_after_ms: Option<u64>,
}

#[cfg_attr(feature = "uniffi", uniffi::export)]
impl WaypostError {
    /// Code, HTTP status, retryability and `Retry-After` in one record.
    pub fn info(&self) -> ErrorInfo {
        ErrorInfo {
            code: self.code(),
            http_status: self.http_status(),
            retryable: self.retryable(),
            retry_after_ms: self.retry_after_ms(),
        }
    }
}

impl WaypostError {
    /// A stable, machine-readable code: `invalid_argument`, one of
    /// [`storage_code`] or [`network_code`], the server's code,
    /// `unauthorized`, `busy`, `shut_down`, `internal`.
    pub fn code(&self) -> String {
        match self {
            Self::InvalidArgument { .. } => "invalid_argument".into(),
            Self::Storage { code, .. } | Self::Network { code, .. } | Self::Server { code, .. } => {
                code.clone()
            }
            Self::Unauthorized { .. } => "unauthorized".into(),
            Self::Busy { .. } => "busy".into(),
            Self::ShutDown => "shut_down".into(),
            Self::Internal { .. } => "internal".into(),
        }
    }

    /// The HTTP status, when the error came from an HTTP answer.
    pub fn http_status(&self) -> Option<u16> {
        match self {
            Self::Server { http_status, .. } => Some(*http_status),
            Self::Unauthorized { http_status, .. } => *http_status,
            _ => None,
        }
    }

    /// Whether the same call can succeed later without changes.
    pub fn retryable(&self) -> bool {
        match self {
            Self::Network { code, .. } => code != network_code::INVALID_REQUEST,
            Self::Server { retryable, .. } => *retryable,
            Self::Busy { .. } => true,
            Self::InvalidArgument { .. }
            | Self::Storage { .. }
            | Self::Unauthorized { .. }
            | Self::ShutDown
            | Self::Internal { .. } => false,
        }
    }

    /// How long the server asked to wait before trying again, ms.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Server { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }
}

impl WaypostError {
    /// An [`InvalidArgument`](Self::InvalidArgument) error.
    pub fn invalid(details: impl Into<String>) -> Self {
        Self::InvalidArgument {
            details: details.into(),
        }
    }

    /// A [`Storage`](Self::Storage) error with code `storage_io`.
    pub fn storage(details: impl Into<String>) -> Self {
        Self::Storage {
            code: storage_code::IO.into(),
            details: details.into(),
        }
    }

    /// An [`Internal`](Self::Internal) error.
    pub fn internal(details: impl Into<String>) -> Self {
        Self::Internal {
            details: details.into(),
        }
    }
}

/// Whether an HTTP status is worth retrying as is.
fn retryable_status(status: u16) -> bool {
    matches!(status, 408 | 425 | 429) || status >= 500
}

impl From<StoreError> for WaypostError {
    fn from(e: StoreError) -> Self {
        let details = e.to_string();
        let code = match e {
            StoreError::Corrupt { .. } => storage_code::CORRUPT,
            StoreError::Foreign { .. } | StoreError::TooNew { .. } => storage_code::FOREIGN,
            StoreError::Sqlite(_) | StoreError::Io(_) | StoreError::BadRow { .. } => {
                storage_code::IO
            }
        };
        WaypostError::Storage {
            code: code.into(),
            details,
        }
    }
}

impl From<rusqlite::Error> for WaypostError {
    fn from(e: rusqlite::Error) -> Self {
        Self::storage(e.to_string())
    }
}

impl From<TransportError> for WaypostError {
    fn from(e: TransportError) -> Self {
        let details = e.to_string();
        let code = match e {
            TransportError::Connect { .. } => network_code::CONNECT,
            TransportError::Timeout { .. } => network_code::TIMEOUT,
            TransportError::Broken { .. } => network_code::BROKEN,
            TransportError::Invalid { .. } => network_code::INVALID_REQUEST,
        };
        WaypostError::Network {
            code: code.into(),
            details,
        }
    }
}

impl From<StatusError> for WaypostError {
    fn from(e: StatusError) -> Self {
        if e.status == 401 {
            return WaypostError::Unauthorized {
                http_status: Some(401),
                details: e.to_string(),
            };
        }
        WaypostError::Server {
            http_status: e.status,
            code: e.code.unwrap_or_else(|| format!("http_{}", e.status)),
            details: e.message,
            retryable: retryable_status(e.status),
            retry_after_ms: e.retry_after_s.map(|s| s.saturating_mul(1000)),
        }
    }
}

impl From<HttpError> for WaypostError {
    fn from(e: HttpError) -> Self {
        match e {
            HttpError::Transport(t) => t.into(),
            HttpError::Status(s) => s.into(),
            HttpError::BadReply { status, message } => WaypostError::Server {
                http_status: status,
                code: "bad_reply".into(),
                details: message,
                retryable: true,
                retry_after_ms: None,
            },
            HttpError::NoToken => WaypostError::Unauthorized {
                http_status: None,
                details: e.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    #[test]
    fn every_source_maps_onto_code_status_and_retryability() {
        let status = |status, code: Option<&str>, retry_after_s| {
            WaypostError::from(HttpError::Status(StatusError {
                status,
                code: code.map(str::to_owned),
                message: "m".into(),
                retry_after_s,
            }))
        };
        // (error, code, http_status, retryable, retry_after_ms)
        type Case = (WaypostError, &'static str, Option<u16>, bool, Option<u64>);
        let cases: Vec<Case> = vec![
            (
                status(429, Some("rate_limited"), Some(3)),
                "rate_limited",
                Some(429),
                true,
                Some(3_000),
            ),
            (status(503, None, None), "http_503", Some(503), true, None),
            (
                status(400, Some("bad_fix"), None),
                "bad_fix",
                Some(400),
                false,
                None,
            ),
            (
                status(401, Some("unauthorized"), None),
                "unauthorized",
                Some(401),
                false,
                None,
            ),
            (HttpError::NoToken.into(), "unauthorized", None, false, None),
            (
                HttpError::BadReply {
                    status: 200,
                    message: "eof".into(),
                }
                .into(),
                "bad_reply",
                Some(200),
                true,
                None,
            ),
            (
                TransportError::Timeout {
                    message: "t".into(),
                }
                .into(),
                "timeout",
                None,
                true,
                None,
            ),
            (
                TransportError::Invalid {
                    message: "url".into(),
                }
                .into(),
                "invalid_request",
                None,
                false,
                None,
            ),
            (
                StoreError::Corrupt {
                    path: PathBuf::from("/b.db"),
                    detail: "not a database".into(),
                }
                .into(),
                "storage_corrupt",
                None,
                false,
                None,
            ),
            (
                StoreError::TooNew {
                    path: PathBuf::from("/b.db"),
                    found: 9,
                }
                .into(),
                "storage_foreign",
                None,
                false,
                None,
            ),
            (
                WaypostError::Busy {
                    details: "outbox full".into(),
                },
                "busy",
                None,
                true,
                None,
            ),
            (WaypostError::ShutDown, "shut_down", None, false, None),
            (
                WaypostError::invalid("x"),
                "invalid_argument",
                None,
                false,
                None,
            ),
        ];
        for (e, code, http, retryable, retry_after) in cases {
            assert_eq!(e.code(), code, "{e:?}");
            assert_eq!(e.http_status(), http, "{e:?}");
            assert_eq!(e.retryable(), retryable, "{e:?}");
            assert_eq!(e.retry_after_ms(), retry_after, "{e:?}");
            assert_eq!(
                e.info(),
                ErrorInfo {
                    code: code.into(),
                    http_status: http,
                    retryable,
                    retry_after_ms: retry_after
                }
            );
        }
    }

    #[test]
    fn display_keeps_the_details() {
        let e = WaypostError::from(StoreError::Corrupt {
            path: PathBuf::from("/data/buffer.db"),
            detail: "file is not a database".into(),
        });
        assert!(e.to_string().contains("/data/buffer.db"), "{e}");
        assert!(e.to_string().contains("storage_corrupt"), "{e}");
    }
}
