//! Bearer tokens come from the app: it knows how to log in and refresh.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

/// Gives the SDK its bearer token (a JWT from your backend). Called from an
/// SDK thread that may block, so the implementation may do network I/O.
/// Must not throw: return `null`/`nil`/`None` when there is no token (the
/// SDK then reports `Unauthorized` and retries later).
#[uniffi::export(with_foreign)]
pub trait TokenProvider: Send + Sync {
    /// The token to use now.
    fn token(&self) -> Option<String>;
    /// The server refused the last token: return a fresh one.
    fn refresh_token(&self) -> Option<String>;
}

/// A provider that always gives `token` (tests, tools, demos; real apps
/// implement [`TokenProvider`] to refresh).
#[uniffi::export]
pub fn static_token(token: String) -> Arc<dyn TokenProvider> {
    Arc::new(StaticToken(token))
}

struct StaticToken(String);

impl TokenProvider for StaticToken {
    fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
    fn refresh_token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// The app's provider as the SDK's trait. A foreign exception becomes "no
/// token" instead of unwinding through the SDK's tasks.
pub(crate) struct Adapter(pub Arc<dyn TokenProvider>);

impl waypost_sdk::TokenProvider for Adapter {
    fn token(&self) -> Option<String> {
        catch_unwind(AssertUnwindSafe(|| self.0.token())).unwrap_or_else(|_| {
            tracing::error!("TokenProvider.token failed");
            None
        })
    }
    fn refresh_token(&self) -> Option<String> {
        catch_unwind(AssertUnwindSafe(|| self.0.refresh_token())).unwrap_or_else(|_| {
            tracing::error!("TokenProvider.refresh_token failed");
            None
        })
    }
}
