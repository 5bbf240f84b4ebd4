//! JWT verification and minting (keys in [`crate::keys`]), the `Authed` extractor, and the
//! authorization rules of the contract.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use waypost_protocol::{validate_id, Channel, ChannelKind, Claims, Role};

use crate::error::AppError;
use crate::keys::{KeySet, KeyStore, Verified, VerifyError};
use crate::revocation::Revocations;

/// The secret `--dev` uses. Never use it in production.
pub const DEV_SECRET: &str = "dev-secret";

/// The token keys in force (see [`crate::keys`]): verification picks the
/// key by `kid`; the set reloads on SIGHUP. Verification also refuses
/// revoked tokens ([`crate::revocation`]).
#[derive(Clone)]
pub struct AuthKeys {
    store: Arc<KeyStore>,
    revoked: Arc<Revocations>,
}

impl std::fmt::Debug for AuthKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuthKeys(..)")
    }
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token: {0}")]
    Invalid(String),
    #[error("token revoked")]
    Revoked,
}

impl From<VerifyError> for AuthError {
    fn from(e: VerifyError) -> Self {
        match e {
            VerifyError::Expired => AuthError::Expired,
            VerifyError::Invalid(m) => AuthError::Invalid(m),
            other => AuthError::Invalid(other.to_string()),
        }
    }
}

impl AuthKeys {
    /// One HS256 secret.
    pub fn new(secret: &[u8]) -> Self {
        Self::from_store(KeyStore::fixed(KeySet::from_secret(secret)))
    }

    pub fn from_store(store: KeyStore) -> Self {
        Self {
            store: Arc::new(store),
            revoked: Arc::default(),
        }
    }

    /// The revocations verification consults.
    pub fn revocations(&self) -> &Arc<Revocations> {
        &self.revoked
    }

    /// The store, for reloading.
    pub fn store(&self) -> &Arc<KeyStore> {
        &self.store
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        self.verify_token(token).map(|t| t.claims)
    }

    /// Verifies `token` (signature, algorithm, `exp`, not revoked) and
    /// returns it with `iat` and `jti`.
    pub fn verify_token(&self, token: &str) -> Result<Verified, AuthError> {
        let t = self.store.verify(token)?;
        if self.is_revoked(&t) {
            return Err(AuthError::Revoked);
        }
        Ok(t)
    }

    /// Whether an already verified token has been revoked since.
    pub fn is_revoked(&self, token: &Verified) -> bool {
        !self.revoked.is_empty() && self.revoked.is_revoked(token, crate::now_s())
    }

    /// Signs with the default key (no `kid` for a single secret).
    pub fn mint(&self, claims: &Claims) -> Result<String, AuthError> {
        self.store
            .mint(None, claims)
            .map_err(|e| AuthError::Invalid(e.to_string()))
    }
}

/// Takes the token from `Authorization: Bearer …` or, for WebSocket and SSE
/// clients that cannot set headers, from `?token=…`.
pub fn token_from_parts(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        if let Ok(s) = value.to_str() {
            if let Some(t) = s.strip_prefix("Bearer ") {
                return Some(t.trim().to_owned());
            }
        }
    }
    parts.uri.query().and_then(|q| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_owned())
    })
}

/// A verified caller. Handlers that take `Authed` answer 401 without a valid
/// token. Works with any router state the keys can be taken from.
#[derive(Debug, Clone)]
pub struct Authed(pub Claims);

/// [`Authed`] with the token's `iat` and `jti`, for connections that live
/// on (streams, polls): expiry and revocation follow them.
#[derive(Debug, Clone)]
pub struct AuthedToken(pub Verified);

fn verify_parts<S>(parts: &Parts, state: &S) -> Result<Verified, AppError>
where
    Arc<AuthKeys>: FromRef<S>,
{
    let token =
        token_from_parts(parts).ok_or(AppError::Unauthorized(AuthError::Missing.to_string()))?;
    Arc::<AuthKeys>::from_ref(state)
        .verify_token(&token)
        .map_err(|e| AppError::Unauthorized(e.to_string()))
}

impl<S> FromRequestParts<S> for Authed
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        verify_parts(parts, state).map(|t| Authed(t.claims))
    }
}

impl<S> FromRequestParts<S> for AuthedToken
where
    S: Send + Sync,
    Arc<AuthKeys>: FromRef<S>,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        verify_parts(parts, state).map(AuthedToken)
    }
}

/// Whether the token lists `channel` (or its holder is `service`). A driver
/// may always watch its own tracking channel.
pub fn may_subscribe(claims: &Claims, channel: &Channel) -> bool {
    if claims.role == Role::Service {
        return true;
    }
    if claims.role == Role::Driver
        && channel.kind == ChannelKind::Tracking
        && channel.id == claims.sub
    {
        return true;
    }
    let name = channel.to_string();
    claims
        .channels
        .as_ref()
        .is_some_and(|list| list.contains(&name))
}

/// Readers of a driver's position need `tracking:{driver}` in their token
/// (or to be the driver, or `service`).
pub fn authorize_tracking(claims: &Claims, driver_id: &str) -> Result<(), AppError> {
    validate_id("driver_id", driver_id).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if may_subscribe(claims, &Channel::tracking(driver_id)) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!(
            "token does not grant tracking:{driver_id}"
        )))
    }
}

/// Whether the caller may post fixes for `driver_id`.
pub fn may_post_locations(claims: &Claims, driver_id: &str) -> bool {
    match claims.role {
        Role::Driver => claims.sub == driver_id,
        Role::Service => true,
        Role::Buyer | Role::Vendor => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(role: Role, sub: &str, channels: Option<Vec<&str>>) -> Claims {
        Claims {
            sub: sub.into(),
            role,
            exp: 4_000_000_000,
            channels: channels.map(|v| v.into_iter().map(String::from).collect()),
        }
    }

    #[test]
    fn round_trip_and_wrong_secret() {
        let keys = AuthKeys::new(b"s1");
        let c = claims(Role::Buyer, "b-1", Some(vec!["tracking:d-1"]));
        let t = keys.mint(&c).unwrap();
        assert_eq!(keys.verify(&t).unwrap(), c);
        assert!(matches!(
            AuthKeys::new(b"s2").verify(&t),
            Err(AuthError::Invalid(_))
        ));
    }

    #[test]
    fn expired_and_alg_none_refused() {
        let keys = AuthKeys::new(b"s1");
        let mut c = claims(Role::Driver, "d-1", None);
        c.exp = 1000;
        let t = keys.mint(&c).unwrap();
        assert!(matches!(keys.verify(&t), Err(AuthError::Expired)));
        // header {"alg":"none","typ":"JWT"}, same claims, empty signature
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJkLTEiLCJyb2xlIjoiZHJpdmVyIiwiZXhwIjo0MDAwMDAwMDAwfQ.";
        assert!(matches!(keys.verify(none), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn subscribe_rules() {
        let t = Channel::tracking("d-1");
        assert!(may_subscribe(&claims(Role::Service, "svc", None), &t));
        assert!(may_subscribe(&claims(Role::Driver, "d-1", None), &t));
        assert!(!may_subscribe(&claims(Role::Driver, "d-2", None), &t));
        assert!(may_subscribe(
            &claims(Role::Buyer, "b", Some(vec!["tracking:d-1"])),
            &t
        ));
        assert!(!may_subscribe(
            &claims(Role::Buyer, "b", Some(vec!["chat:d-1"])),
            &t
        ));
        assert!(!may_subscribe(&claims(Role::Vendor, "v", None), &t));
    }

    #[test]
    fn post_rules() {
        assert!(may_post_locations(
            &claims(Role::Driver, "d-1", None),
            "d-1"
        ));
        assert!(!may_post_locations(
            &claims(Role::Driver, "d-1", None),
            "d-2"
        ));
        assert!(!may_post_locations(
            &claims(Role::Buyer, "d-1", None),
            "d-1"
        ));
        assert!(may_post_locations(&claims(Role::Service, "s", None), "d-1"));
    }
}
