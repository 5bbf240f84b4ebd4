//! The public error type, [`WaypostError`]: few variants, each with a
//! message, so it maps one-to-one onto a Kotlin/Swift exception. Rich
//! internal errors ([`StoreError`], [`TransportError`], [`HttpError`]) are
//! converted into it here, in one place.

#![warn(missing_docs)]

use crate::driver::buffer::StoreError;
use crate::transport::{HttpError, StatusError, TransportError};

/// An error the SDK reports to the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WaypostError {
    /// A setting is unusable (bad URL, bad id, empty path, ...).
    #[error("invalid configuration: {message}")]
    InvalidConfig {
        /// What is wrong.
        message: String,
    },
    /// The buffer file is corrupt (and recreating it was not allowed).
    #[error("buffer corrupt: {message}")]
    BufferCorrupt {
        /// Details, with the path.
        message: String,
    },
    /// The buffer path holds a file that is not a Waypost buffer (or one
    /// written by a newer SDK); it was left untouched.
    #[error("not a Waypost buffer: {message}")]
    BufferForeign {
        /// Details, with the path.
        message: String,
    },
    /// Reading or writing the buffer failed (disk full, I/O error, ...).
    #[error("buffer: {message}")]
    Buffer {
        /// Details.
        message: String,
    },
    /// The server could not be reached or answered with an error.
    #[error("upload: {message}")]
    Upload {
        /// Details.
        message: String,
    },
    /// The server refused the token, also after a refresh.
    #[error("unauthorized: {message}")]
    Unauthorized {
        /// Details.
        message: String,
    },
    /// There is no tokio runtime to run the background task on.
    #[error("no async runtime: {message}")]
    NoRuntime {
        /// Details.
        message: String,
    },
    /// The driver was shut down.
    #[error("the driver is shut down")]
    ShutDown,
}

impl From<StoreError> for WaypostError {
    fn from(e: StoreError) -> Self {
        let message = e.to_string();
        match e {
            StoreError::Corrupt { .. } => WaypostError::BufferCorrupt { message },
            StoreError::Foreign { .. } | StoreError::TooNew { .. } => {
                WaypostError::BufferForeign { message }
            }
            StoreError::Sqlite(_) | StoreError::Io(_) | StoreError::BadRow { .. } => {
                WaypostError::Buffer { message }
            }
        }
    }
}

impl From<HttpError> for WaypostError {
    fn from(e: HttpError) -> Self {
        let message = e.to_string();
        match e {
            HttpError::Status(StatusError { status: 401, .. }) | HttpError::NoToken => {
                WaypostError::Unauthorized { message }
            }
            _ => WaypostError::Upload { message },
        }
    }
}

impl From<TransportError> for WaypostError {
    fn from(e: TransportError) -> Self {
        HttpError::from(e).into()
    }
}
