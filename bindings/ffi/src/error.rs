//! The one error type of the bindings: a handful of variants (a Kotlin
//! sealed `WaypostException`, a Swift `Error`, a Python `WaypostError`),
//! with the SDK's driver and buyer errors converted into them here.
//!
//! Exported flat: each variant carries its display text as the exception
//! message (a structured `message` field would clash with Kotlin's
//! `Throwable.message`).

use waypost_sdk::buyer::BuyerError;

/// An error the SDK reports to the app.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, uniffi::Error)]
#[uniffi(flat_error)]
pub enum WaypostError {
    /// A setting or argument is unusable (bad URL, bad id, empty path, ...).
    #[error("invalid argument: {message}")]
    InvalidArgument { message: String },
    /// The local database (driver buffer, chat store) failed or is corrupt.
    #[error("storage: {message}")]
    Storage { message: String },
    /// The server could not be reached or answered with an error.
    #[error("network: {message}")]
    Network { message: String },
    /// The server refused the token, also after a refresh.
    #[error("unauthorized: {message}")]
    Unauthorized { message: String },
    /// Too many requests are queued; try again shortly.
    #[error("busy: {message}")]
    Busy { message: String },
    /// The object was shut down.
    #[error("shut down: {message}")]
    ShutDown { message: String },
    /// Something that should not happen (the SDK runtime could not start, a
    /// task failed). Worth a bug report.
    #[error("internal: {message}")]
    Internal { message: String },
}

impl From<waypost_sdk::WaypostError> for WaypostError {
    fn from(e: waypost_sdk::WaypostError) -> Self {
        use waypost_sdk::WaypostError as E;
        let message = e.to_string();
        match e {
            E::InvalidConfig { .. } => Self::InvalidArgument { message },
            E::BufferCorrupt { .. } | E::BufferForeign { .. } | E::Buffer { .. } => {
                Self::Storage { message }
            }
            E::Upload { .. } => Self::Network { message },
            E::Unauthorized { .. } => Self::Unauthorized { message },
            E::NoRuntime { .. } => Self::Internal { message },
            E::ShutDown => Self::ShutDown { message },
        }
    }
}

impl From<BuyerError> for WaypostError {
    fn from(e: BuyerError) -> Self {
        let message = e.to_string();
        match e {
            BuyerError::InvalidArgument { .. } => Self::InvalidArgument { message },
            BuyerError::Store { .. } => Self::Storage { message },
            BuyerError::ShutDown => Self::ShutDown { message },
            BuyerError::Busy => Self::Busy { message },
            BuyerError::Runtime { .. } => Self::Internal { message },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdk_errors_map_onto_few_variants_and_keep_their_text() {
        use waypost_sdk::WaypostError as E;
        let cases = [
            (
                E::InvalidConfig {
                    message: "bad url".into(),
                },
                "InvalidArgument",
            ),
            (
                E::BufferCorrupt {
                    message: "x".into(),
                },
                "Storage",
            ),
            (
                E::BufferForeign {
                    message: "x".into(),
                },
                "Storage",
            ),
            (
                E::Buffer {
                    message: "disk full".into(),
                },
                "Storage",
            ),
            (
                E::Upload {
                    message: "refused".into(),
                },
                "Network",
            ),
            (
                E::Unauthorized {
                    message: "401".into(),
                },
                "Unauthorized",
            ),
            (
                E::NoRuntime {
                    message: "x".into(),
                },
                "Internal",
            ),
            (E::ShutDown, "ShutDown"),
        ];
        for (sdk, variant) in cases {
            let text = sdk.to_string();
            let ffi = WaypostError::from(sdk);
            assert!(
                format!("{ffi:?}").starts_with(variant),
                "{ffi:?} is not {variant}"
            );
            assert!(ffi.to_string().contains(&text), "{ffi} lost {text:?}");
        }
        let busy = WaypostError::from(BuyerError::Busy);
        assert!(matches!(busy, WaypostError::Busy { .. }));
        let store = WaypostError::from(BuyerError::Store {
            message: "locked".into(),
        });
        assert!(matches!(store, WaypostError::Storage { .. }));
        assert!(store.to_string().contains("locked"));
    }
}
