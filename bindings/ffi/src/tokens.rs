//! Bearer tokens come from the app: it knows how to log in and refresh.
//! The provider is async (Kotlin `suspend`, Swift `async`, Python
//! `async def`), so apps whose auth is async (Firebase, AppAuth) never
//! block a thread. The SDK caches the token, refreshes it ahead of the
//! JWT's `exp` and after the server refused it (`waypost_sdk::tokens`);
//! a buyer's WebSocket is moved onto the new token in band.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::FutureExt;

/// Gives the SDK its bearer token (a JWT from your backend). Must not
/// throw: return `null`/`nil`/`None` when there is no token (the SDK then
/// reports `Unauthorized` and retries later); a thrown exception is logged
/// and read as "no token".
#[uniffi::export(with_foreign)]
#[async_trait::async_trait]
pub trait TokenProvider: Send + Sync {
    /// The token to use now.
    async fn token(&self) -> Option<String>;
    /// A fresh token: the server refused the last one, or it expires
    /// soon (within a minute, or half the lifetime of a shorter token). A
    /// buyer client's live connection takes it in band, without
    /// reconnecting.
    async fn refresh_token(&self) -> Option<String>;
}

/// A provider that always gives `token` (tests, tools, demos; real apps
/// implement [`TokenProvider`] to refresh).
#[uniffi::export]
pub fn static_token(token: String) -> Arc<dyn TokenProvider> {
    Arc::new(StaticToken(token))
}

struct StaticToken(String);

#[async_trait::async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
    async fn refresh_token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// The app's provider as the SDK's trait. A foreign exception becomes "no
/// token" instead of unwinding through the SDK's tasks.
pub(crate) struct Adapter(pub Arc<dyn TokenProvider>);

#[async_trait::async_trait]
impl waypost_sdk::TokenProvider for Adapter {
    async fn token(&self) -> Option<String> {
        AssertUnwindSafe(self.0.token())
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("TokenProvider.token failed");
                None
            })
    }
    async fn refresh_token(&self) -> Option<String> {
        AssertUnwindSafe(self.0.refresh_token())
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!("TokenProvider.refresh_token failed");
                None
            })
    }
}
