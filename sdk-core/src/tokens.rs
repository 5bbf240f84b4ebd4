//! Bearer tokens: the one [`TokenProvider`] the driver's uploader and the
//! buyer's connection (and its HTTP history reads) both ask.

#![warn(missing_docs)]

/// Gives the SDK its bearer token (a JWT from the app's backend). Called
/// from a blocking thread, so it may do I/O.
pub trait TokenProvider: Send + Sync + 'static {
    /// The token to use (called before the first request or connection).
    fn token(&self) -> Option<String>;
    /// The server refused the last token (HTTP 401, close code 4001):
    /// return a fresh one.
    fn refresh_token(&self) -> Option<String>;
}

/// A fixed token (tests, tools).
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

impl TokenProvider for StaticToken {
    fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
    fn refresh_token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}
