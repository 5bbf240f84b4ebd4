//! Bearer tokens: the one [`TokenProvider`] the app implements, and the
//! one [`Tokens`] cache the driver's uploader and the buyer's connection
//! (and its HTTP history reads) ask.
//!
//! The cache refreshes a token *before* it expires — it reads `exp` from
//! the JWT payload (without verifying the signature; that is the server's
//! job) — as well as after the server refused it (HTTP 401, close code
//! 4001). When a refresh ahead of `exp` fails, the still-valid token keeps
//! being used.

#![warn(missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::clock::Clock;

/// Gives the SDK its bearer token (a JWT from the app's backend). Async:
/// an implementation may do network I/O (Firebase, AppAuth, its own
/// backend) without blocking anything.
#[async_trait]
pub trait TokenProvider: Send + Sync + 'static {
    /// The token to use (called before the first request or connection).
    async fn token(&self) -> Option<String>;
    /// A fresh token: the server refused the last one (HTTP 401, close
    /// code 4001), or it expires soon.
    async fn refresh_token(&self) -> Option<String>;
}

/// A fixed token (tests, tools).
#[derive(Debug, Clone)]
pub struct StaticToken(pub String);

#[async_trait]
impl TokenProvider for StaticToken {
    async fn token(&self) -> Option<String> {
        Some(self.0.clone())
    }
    async fn refresh_token(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

/// How long before `exp` a token is refreshed (at most half its
/// lifetime, when its `iat` tells it).
pub const REFRESH_AHEAD: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
struct Cached {
    token: String,
    /// `exp` of the JWT, Unix epoch ms (`None`: not a JWT or no `exp`).
    exp_ms: Option<i64>,
    /// `iat` of the JWT, Unix epoch ms.
    iat_ms: Option<i64>,
}

/// The token cache in front of a [`TokenProvider`]: one fetch at a time,
/// refresh ahead of `exp` and after a refusal.
pub struct Tokens {
    provider: Arc<dyn TokenProvider>,
    clock: Arc<dyn Clock>,
    current: Mutex<Option<Cached>>,
    /// Serializes calls into the provider.
    fetch: tokio::sync::Mutex<()>,
    /// Fetches that gave no token since the last one that did.
    failures: Mutex<u32>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("has_token", &self.current.lock().is_some())
            .finish_non_exhaustive()
    }
}

impl Tokens {
    /// A cache over `provider`, with `clock` deciding when `exp` is near.
    pub fn new(provider: Arc<dyn TokenProvider>, clock: Arc<dyn Clock>) -> Self {
        Self {
            provider,
            clock,
            current: Mutex::new(None),
            fetch: tokio::sync::Mutex::new(()),
            failures: Mutex::new(0),
        }
    }

    /// The token to use now: the cached one while it is not within
    /// [`REFRESH_AHEAD`] of its `exp`, else a fresh one.
    pub async fn get(&self) -> Option<String> {
        if let Some(t) = self.usable(REFRESH_AHEAD) {
            return Some(t);
        }
        let _one = self.fetch.lock().await;
        // Another caller may have fetched while we waited.
        if let Some(t) = self.usable(REFRESH_AHEAD) {
            return Some(t);
        }
        let had_one = self.current.lock().is_some();
        let fresh = if had_one {
            self.provider.refresh_token().await
        } else {
            self.provider.token().await
        };
        match self.store(fresh) {
            Some(t) => Some(t),
            // Refreshing ahead of `exp` failed: the old token is still good.
            None => self.usable(Duration::ZERO),
        }
    }

    /// The server refused `refused`: a fresh token (or the one another
    /// caller already fetched since).
    pub async fn refresh(&self, refused: &str) -> Option<String> {
        let _one = self.fetch.lock().await;
        if let Some(c) = self.current.lock().as_ref() {
            if c.token != refused {
                return Some(c.token.clone());
            }
        }
        let fresh = self.provider.refresh_token().await;
        if fresh.is_none() {
            // The refused token is of no use any more.
            *self.current.lock() = None;
        }
        self.store(fresh)
    }

    /// A token other than `current` (in-band renewal of a live
    /// connection's token): the cached one when another caller already
    /// fetched a different, unexpired one, else the provider's
    /// `refresh_token`. `None` when the provider has none (or only
    /// `current` again); the cache then keeps `current`, which is still
    /// valid until its `exp`.
    pub async fn renew(&self, current: &str) -> Option<String> {
        let _one = self.fetch.lock().await;
        if let Some(t) = self.usable(Duration::ZERO) {
            if t != current {
                return Some(t);
            }
        }
        let fresh = self.provider.refresh_token().await;
        match fresh {
            Some(t) if !t.is_empty() && t != current => self.store(Some(t)),
            Some(_) => {
                tracing::warn!("the token provider renewed with the same token");
                None
            }
            None => {
                *self.failures.lock() += 1;
                tracing::warn!("the token provider gave no token");
                None
            }
        }
    }

    /// The server refused `token` (e.g. an in-band refresh answered
    /// `forbidden`): the next [`Tokens::get`] asks the provider again.
    pub fn forget(&self, token: &str) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.token == token) {
            *current = None;
        }
    }

    /// The cached token, if any (no provider call).
    pub fn current(&self) -> Option<String> {
        self.current.lock().as_ref().map(|c| c.token.clone())
    }

    /// Fetches that gave no token since the last one that did (for the
    /// health report).
    pub fn failures(&self) -> u32 {
        *self.failures.lock()
    }

    /// The cached token if it is valid for at least `margin` more (at most
    /// half its lifetime when it has `iat`: a token of 20 s is used for
    /// 10 s, not refreshed on every call).
    fn usable(&self, margin: Duration) -> Option<String> {
        let now = self.clock.now_ms();
        let current = self.current.lock();
        let c = current.as_ref()?;
        match c.exp_ms {
            Some(exp) => {
                let margin = (margin.as_millis() as i64).min(renew_ahead_ms(exp, c.iat_ms));
                (exp.saturating_sub(margin) > now).then(|| c.token.clone())
            }
            None => Some(c.token.clone()),
        }
    }

    fn store(&self, fresh: Option<String>) -> Option<String> {
        let Some(token) = fresh.filter(|t| !t.is_empty()) else {
            *self.failures.lock() += 1;
            tracing::warn!("the token provider gave no token");
            return None;
        };
        *self.failures.lock() = 0;
        let exp_ms = jwt_exp_ms(&token);
        *self.current.lock() = Some(Cached {
            token: token.clone(),
            exp_ms,
            iat_ms: jwt_iat_ms(&token),
        });
        Some(token)
    }
}

/// `exp` of a JWT (`header.payload.signature`), Unix epoch ms, read from
/// the payload without verifying anything. `None` for anything else.
pub fn jwt_exp_ms(token: &str) -> Option<i64> {
    jwt_time_ms(token, "exp")
}

/// `iat` of a JWT, Unix epoch ms, read like [`jwt_exp_ms`].
pub fn jwt_iat_ms(token: &str) -> Option<i64> {
    jwt_time_ms(token, "iat")
}

/// How long before `exp` a token counts as due for renewal:
/// [`REFRESH_AHEAD`], or half the token's lifetime when that is shorter
/// and known (`exp - iat`); without `iat`, the full margin.
pub(crate) fn renew_ahead_ms(exp_ms: i64, iat_ms: Option<i64>) -> i64 {
    let ahead = REFRESH_AHEAD.as_millis() as i64;
    match iat_ms {
        Some(iat) => ahead.min(exp_ms.saturating_sub(iat).max(0) / 2),
        None => ahead,
    }
}

fn jwt_time_ms(token: &str, claim: &str) -> Option<i64> {
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let json = base64url_decode(payload)?;
    let v: serde_json::Value = serde_json::from_slice(&json).ok()?;
    let exp = v.get(claim)?;
    let secs = exp.as_i64().or_else(|| exp.as_f64().map(|f| f as i64))?;
    secs.checked_mul(1000)
}

/// Base64url without padding (RFC 7515 §2); `None` on any other byte.
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.trim_end_matches('=').as_bytes();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= val(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        out.extend_from_slice(&acc.to_be_bytes()[1..1 + n]);
    }
    Some(out)
}

/// `header.payload.sig` with `payload` encoded as base64url (tests).
#[cfg(test)]
pub(crate) fn unsigned_jwt(payload: &str) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut enc = String::new();
    for chunk in payload.as_bytes().chunks(3) {
        let mut b = [0u8; 3];
        b[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, b[0], b[1], b[2]]);
        for i in 0..=chunk.len() {
            enc.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    format!("eyJhbGciOiJIUzI1NiJ9.{enc}.c2ln")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicI64, Ordering};

    use super::*;
    use crate::clock::Sleep;

    fn jwt(payload: &str) -> String {
        unsigned_jwt(payload)
    }

    #[test]
    fn reads_exp_from_the_payload_only() {
        assert_eq!(
            jwt_exp_ms(&jwt(r#"{"sub":"d-1","exp":1700000000}"#)),
            Some(1_700_000_000_000)
        );
        // Payload lengths that need 0, 1 and 2 padding characters.
        for pad in ["", "x", "xy"] {
            let p = format!(r#"{{"exp":12,"p":"{pad}"}}"#);
            assert_eq!(jwt_exp_ms(&jwt(&p)), Some(12_000), "{p}");
        }
        assert_eq!(jwt_exp_ms(&jwt(r#"{"sub":"d-1"}"#)), None);
        assert_eq!(jwt_exp_ms("opaque-token"), None);
        assert_eq!(jwt_exp_ms("a.b!.c"), None);
        assert_eq!(jwt_exp_ms("a.b.c.d"), None);
    }

    struct ManualClock(AtomicI64);

    impl Clock for ManualClock {
        fn now_ms(&self) -> i64 {
            self.0.load(Ordering::SeqCst)
        }
        fn monotonic_ms(&self) -> u64 {
            self.0.load(Ordering::SeqCst) as u64
        }
        fn sleep(&self, d: Duration) -> Sleep {
            Box::pin(tokio::time::sleep(d))
        }
    }

    /// Hands out `jwt(exp = issued + 600 s)` and counts calls; can fail.
    struct Issuer {
        clock: Arc<ManualClock>,
        calls: Mutex<Vec<&'static str>>,
        fail: Mutex<bool>,
    }

    impl Issuer {
        fn issue(&self, kind: &'static str) -> Option<String> {
            self.calls.lock().push(kind);
            if *self.fail.lock() {
                return None;
            }
            let n = self.calls.lock().len();
            let exp = self.clock.now_ms() / 1000 + 600;
            Some(jwt(&format!(r#"{{"exp":{exp},"n":{n}}}"#)))
        }
    }

    #[async_trait]
    impl TokenProvider for Issuer {
        async fn token(&self) -> Option<String> {
            self.issue("token")
        }
        async fn refresh_token(&self) -> Option<String> {
            self.issue("refresh")
        }
    }

    fn setup() -> (Arc<ManualClock>, Arc<Issuer>, Tokens) {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_700_000_000_000)));
        let issuer = Arc::new(Issuer {
            clock: Arc::clone(&clock),
            calls: Mutex::new(Vec::new()),
            fail: Mutex::new(false),
        });
        let tokens = Tokens::new(issuer.clone(), clock.clone());
        (clock, issuer, tokens)
    }

    #[tokio::test]
    async fn refreshes_ahead_of_exp_and_keeps_a_valid_token_when_that_fails() {
        let (clock, issuer, tokens) = setup();
        let first = tokens.get().await.unwrap();
        assert_eq!(tokens.get().await.as_deref(), Some(first.as_str()));
        assert_eq!(*issuer.calls.lock(), ["token"]);
        // 30 s before exp: inside the refresh window.
        clock.0.fetch_add(570_000, Ordering::SeqCst);
        let second = tokens.get().await.unwrap();
        assert_ne!(second, first);
        assert_eq!(*issuer.calls.lock(), ["token", "refresh"]);
        // The next refresh fails: the old token is still valid, use it.
        clock.0.fetch_add(570_000, Ordering::SeqCst);
        *issuer.fail.lock() = true;
        assert_eq!(tokens.get().await.as_deref(), Some(second.as_str()));
        assert_eq!(tokens.failures(), 1);
        // Past exp with no refresh: nothing to send.
        clock.0.fetch_add(60_000, Ordering::SeqCst);
        assert_eq!(tokens.get().await, None);
        assert_eq!(tokens.failures(), 2);
        *issuer.fail.lock() = false;
        assert!(tokens.get().await.is_some());
        assert_eq!(tokens.failures(), 0);
    }

    /// A 20 s token (by `iat`) is used for its first half, then refreshed
    /// (not on every call, as a 60 s margin would).
    #[tokio::test]
    async fn short_tokens_are_used_for_half_their_lifetime() {
        let clock = Arc::new(ManualClock(AtomicI64::new(1_700_000_000_000)));
        let (iat, exp) = (1_700_000_000, 1_700_000_020);
        let provider = Arc::new(StaticToken(jwt(&format!(r#"{{"iat":{iat},"exp":{exp}}}"#))));
        let tokens = Tokens::new(provider, clock.clone());
        assert!(tokens.get().await.is_some());
        clock.0.fetch_add(9_000, Ordering::SeqCst);
        assert!(tokens.usable(REFRESH_AHEAD).is_some(), "9 s in: still used");
        clock.0.fetch_add(1_000, Ordering::SeqCst);
        assert!(tokens.usable(REFRESH_AHEAD).is_none(), "10 s in: refresh");
    }

    #[tokio::test]
    async fn renew_gives_another_token_or_none_and_keeps_the_valid_one() {
        let (_clock, issuer, tokens) = setup();
        let first = tokens.get().await.unwrap();
        // Far from exp, `get` would answer `first`; `renew` asks.
        let second = tokens.renew(&first).await.unwrap();
        assert_ne!(second, first);
        assert_eq!(*issuer.calls.lock(), ["token", "refresh"]);
        // A second renewal of `first` (another connection) takes the cached
        // `second` without a provider call.
        assert_eq!(tokens.renew(&first).await, Some(second.clone()));
        assert_eq!(issuer.calls.lock().len(), 2);
        // Failing: none, and `second` stays cached.
        *issuer.fail.lock() = true;
        assert_eq!(tokens.renew(&second).await, None);
        assert_eq!(tokens.current(), Some(second.clone()));
        assert_eq!(tokens.failures(), 1);
        // A refused token is forgotten: `get` asks the provider again.
        *issuer.fail.lock() = false;
        tokens.forget(&second);
        let third = tokens.get().await.unwrap();
        assert_ne!(third, second);
        assert_eq!(tokens.failures(), 0);
    }

    #[tokio::test]
    async fn a_refused_token_is_refreshed_once_for_all_callers() {
        let (_clock, issuer, tokens) = setup();
        let first = tokens.get().await.unwrap();
        let fresh = tokens.refresh(&first).await.unwrap();
        assert_ne!(fresh, first);
        // A second caller that saw the same refusal gets the fresh token
        // without another provider call.
        assert_eq!(tokens.refresh(&first).await, Some(fresh.clone()));
        assert_eq!(*issuer.calls.lock(), ["token", "refresh"]);
        // A refusal the provider cannot answer forgets the refused token.
        *issuer.fail.lock() = true;
        assert_eq!(tokens.refresh(&fresh).await, None);
        assert_eq!(tokens.current(), None);
    }
}
