//! The two providers: APNs (HTTP/2, token-based authentication with an
//! ES256 provider JWT) and FCM (HTTP v1 with an OAuth 2.0 access token from
//! a service account). Both classify answers into [`SendOutcome`] the same
//! way: dead token (remove the device), retry later (429/5xx, honouring
//! `Retry-After`), or a failure of this push alone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use waypost_protocol::PushData;

use super::devices::{Device, Platform};
use crate::webhooks::WebhookClock;

/// What a provider said about one push.
#[derive(Debug, Clone, PartialEq)]
pub enum SendOutcome {
    Sent,
    /// The token is dead: remove the device.
    Unregistered(String),
    /// Try again later (at least `after` when the provider said so).
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    /// This push failed for good (bad payload, auth misconfigured...).
    Failed(String),
}

/// One push to one device.
#[derive(Debug, Clone, PartialEq)]
pub struct PushMessage {
    pub data: PushData,
    /// Localisation key of the visible text (`loc-key`, `body_loc_key`).
    pub loc_key: String,
    /// Its arguments: the count, then the preview when there is one.
    pub loc_args: Vec<String>,
    /// Pushes with the same id replace each other on the device.
    pub collapse_id: String,
    /// Unix seconds after which the provider may drop it.
    pub expiration_s: i64,
}

impl PushMessage {
    pub fn new(data: PushData, expiration_s: i64) -> Self {
        let loc_key = match data.kind {
            waypost_protocol::PushKind::Message => "WAYPOST_CHAT_MESSAGE",
            waypost_protocol::PushKind::Order => "WAYPOST_ORDER_UPDATE",
            waypost_protocol::PushKind::Notification => "WAYPOST_NOTIFICATION",
            waypost_protocol::PushKind::Test => "WAYPOST_TEST",
        }
        .to_owned();
        let mut loc_args = vec![data.count.to_string()];
        loc_args.extend(data.preview.clone());
        // APNs allows 64 bytes; channel names are at most ~135.
        let collapse_id = short_id(&data.channel);
        Self {
            data,
            loc_key,
            loc_args,
            collapse_id,
            expiration_s,
        }
    }

    /// The APNs body: a localisable visible alert, the thread, and the
    /// resume data under `waypost`; `content-available` wakes the app in the
    /// background (`didReceiveRemoteNotification:fetchCompletionHandler:`)
    /// to read the gap before the user opens it.
    pub fn apns_body(&self) -> serde_json::Value {
        serde_json::json!({
            "aps": {
                "alert": {"loc-key": self.loc_key, "loc-args": self.loc_args},
                "thread-id": self.data.channel,
                "sound": "default",
                "mutable-content": 1,
                "content-available": 1,
            },
            "waypost": self.data,
        })
    }

    /// The FCM v1 `message` for `token`: notification + data, localisable
    /// on Android.
    pub fn fcm_body(&self, token: &str) -> serde_json::Value {
        let mut notification = serde_json::json!({
            "title_loc_key": format!("{}_TITLE", self.loc_key),
            "body_loc_key": self.loc_key,
            "body_loc_args": self.loc_args,
            "tag": self.collapse_id,
        });
        if let Some(p) = &self.data.preview {
            notification["body"] = p.clone().into();
        }
        serde_json::json!({
            "message": {
                "token": token,
                "data": self.data.to_fcm_data(),
                "android": {
                    "priority": "high",
                    "collapse_key": self.collapse_id,
                    "notification": notification,
                },
                "apns": {"headers": {"apns-collapse-id": self.collapse_id}},
            }
        })
    }
}

/// At most 64 bytes: the channel itself when short, else a digest of it.
fn short_id(channel: &str) -> String {
    if channel.len() <= 64 {
        channel.to_owned()
    } else {
        let d = ring::digest::digest(&ring::digest::SHA256, channel.as_bytes());
        d.as_ref()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn platform(&self) -> Platform;
    async fn send(&self, device: &Device, msg: &PushMessage) -> SendOutcome;
}

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("bad key: {0}")]
    Key(String),
    #[error("bad service account: {0}")]
    ServiceAccount(String),
    #[error("HTTP client: {0}")]
    Client(String),
}

fn read(path: &Path) -> Result<Vec<u8>, ProviderError> {
    std::fs::read(path).map_err(|source| ProviderError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// An HTTP client trusting the system roots plus `ca` (a PEM, for tests
/// and private gateways).
fn client(
    ca: Option<&Path>,
    http2_only: bool,
    timeout: Duration,
) -> Result<reqwest::Client, ProviderError> {
    let mut b = reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if http2_only {
        b = b.http2_prior_knowledge();
    }
    if let Some(ca) = ca {
        let pem = read(ca)?;
        let cert = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| ProviderError::Client(e.to_string()))?;
        b = b.add_root_certificate(cert);
    }
    b.build().map_err(|e| ProviderError::Client(e.to_string()))
}

/// `Retry-After` in seconds (the HTTP-date form is not used by either
/// provider).
fn retry_after(h: &reqwest::header::HeaderMap) -> Option<Duration> {
    h.get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// How long a provider JWT is reused: APNs refuses one older than an hour
/// and asks for a new one at most every 20 minutes.
const APNS_JWT_REUSE: Duration = Duration::from_secs(50 * 60);

/// APNs configuration.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// `https://api.push.apple.com` (or the sandbox, or a test server).
    pub endpoint: String,
    pub key_id: String,
    pub team_id: String,
    /// The app's bundle id, the default `apns-topic` (a device's `app_id`
    /// overrides it).
    pub topic: String,
    pub ca: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

/// APNs over HTTP/2 with a cached ES256 provider token.
pub struct Apns {
    cfg: ApnsConfig,
    key: EncodingKey,
    http: reqwest::Client,
    clock: Arc<dyn WebhookClock>,
    /// The current provider JWT and when it was made (Unix ms).
    jwt: Mutex<Option<(String, i64)>>,
}

#[derive(Serialize)]
struct ApnsClaims<'a> {
    iss: &'a str,
    iat: i64,
}

#[derive(Deserialize)]
struct ApnsError {
    #[serde(default)]
    reason: String,
}

impl Apns {
    /// `key_pem` is the `.p8` key (PKCS#8 PEM, P-256).
    pub fn new(
        cfg: ApnsConfig,
        key_pem: &[u8],
        clock: Arc<dyn WebhookClock>,
    ) -> Result<Self, ProviderError> {
        let key =
            EncodingKey::from_ec_pem(key_pem).map_err(|e| ProviderError::Key(e.to_string()))?;
        let http = client(cfg.ca.as_deref(), true, cfg.timeout)?;
        let me = Self {
            cfg,
            key,
            http,
            clock,
            jwt: Mutex::new(None),
        };
        // Fails now, not at the first push, when the key cannot sign.
        me.provider_token(true)?;
        Ok(me)
    }

    pub fn from_file(
        cfg: ApnsConfig,
        key_file: &Path,
        clock: Arc<dyn WebhookClock>,
    ) -> Result<Self, ProviderError> {
        Self::new(cfg, &read(key_file)?, clock)
    }

    /// The provider JWT, made anew when older than [`APNS_JWT_REUSE`] or
    /// when `fresh`.
    fn provider_token(&self, fresh: bool) -> Result<String, ProviderError> {
        let now = self.clock.now_ms();
        let mut g = self.jwt.lock();
        if let Some((jwt, made)) = g.as_ref() {
            if !fresh && now - made < APNS_JWT_REUSE.as_millis() as i64 {
                return Ok(jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.cfg.key_id.clone());
        let claims = ApnsClaims {
            iss: &self.cfg.team_id,
            iat: now / 1000,
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| ProviderError::Key(e.to_string()))?;
        *g = Some((jwt.clone(), now));
        Ok(jwt)
    }

    async fn post(&self, device: &Device, msg: &PushMessage, jwt: &str) -> SendOutcome {
        let url = format!(
            "{}/3/device/{}",
            self.cfg.endpoint.trim_end_matches('/'),
            device.token
        );
        let topic = device.app_id.as_deref().unwrap_or(&self.cfg.topic);
        let req = self
            .http
            .post(url)
            .header("authorization", format!("bearer {jwt}"))
            .header("apns-topic", topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", &msg.collapse_id)
            .header("apns-expiration", msg.expiration_s.to_string())
            .json(&msg.apns_body());
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::Retry {
                    reason: format!("transport: {}", e.without_url()),
                    after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        if status == 200 {
            return SendOutcome::Sent;
        }
        let after = retry_after(resp.headers());
        let reason = resp
            .json::<ApnsError>()
            .await
            .map(|e| e.reason)
            .unwrap_or_default();
        classify_apns(status, reason, after)
    }
}

/// APNs status and `reason` to an outcome.
pub fn classify_apns(status: u16, reason: String, after: Option<Duration>) -> SendOutcome {
    match (status, reason.as_str()) {
        (410, _) | (_, "BadDeviceToken" | "Unregistered" | "DeviceTokenNotForTopic") => {
            SendOutcome::Unregistered(if reason.is_empty() {
                "Unregistered".into()
            } else {
                reason
            })
        }
        _ => retry_or_fail(status, reason, after),
    }
}

/// What is left once dead tokens are handled: 429 and 5xx retry, anything
/// else fails; `reason` (or `http_<status>`) names it.
fn retry_or_fail(status: u16, reason: String, after: Option<Duration>) -> SendOutcome {
    let reason = if reason.is_empty() {
        format!("http_{status}")
    } else {
        reason
    };
    if status == 429 || (500..=599).contains(&status) {
        SendOutcome::Retry { reason, after }
    } else {
        SendOutcome::Failed(reason)
    }
}

#[async_trait]
impl Provider for Apns {
    fn platform(&self) -> Platform {
        Platform::Apns
    }

    async fn send(&self, device: &Device, msg: &PushMessage) -> SendOutcome {
        let jwt = match self.provider_token(false) {
            Ok(j) => j,
            Err(e) => return SendOutcome::Failed(e.to_string()),
        };
        match self.post(device, msg, &jwt).await {
            // The key was rotated or the clock moved: once with a new token.
            SendOutcome::Failed(r) if r == "ExpiredProviderToken" => {
                match self.provider_token(true) {
                    Ok(jwt) => self.post(device, msg, &jwt).await,
                    Err(e) => SendOutcome::Failed(e.to_string()),
                }
            }
            other => other,
        }
    }
}

/// The fields of a Google service-account JSON that FCM needs.
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub project_id: String,
    pub client_email: String,
    pub private_key: String,
    pub token_uri: String,
}

/// FCM configuration.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// `https://fcm.googleapis.com` (or a test server).
    pub endpoint: String,
    pub ca: Option<std::path::PathBuf>,
    pub timeout: Duration,
}

const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// FCM HTTP v1 with an OAuth 2.0 access token cached until shortly before
/// it expires.
pub struct Fcm {
    cfg: FcmConfig,
    account: ServiceAccount,
    key: EncodingKey,
    http: reqwest::Client,
    clock: Arc<dyn WebhookClock>,
    /// Access token and its expiry (Unix ms).
    access: tokio::sync::Mutex<Option<(String, i64)>>,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: i64,
    exp: i64,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    #[serde(default = "hour")]
    expires_in: i64,
}

fn hour() -> i64 {
    3600
}

#[derive(Deserialize, Default)]
struct FcmErrorBody {
    #[serde(default)]
    error: FcmError,
}

#[derive(Deserialize, Default)]
struct FcmError {
    #[serde(default)]
    status: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

impl Fcm {
    pub fn new(
        cfg: FcmConfig,
        account_json: &[u8],
        clock: Arc<dyn WebhookClock>,
    ) -> Result<Self, ProviderError> {
        let account: ServiceAccount = serde_json::from_slice(account_json)
            .map_err(|e| ProviderError::ServiceAccount(e.to_string()))?;
        let key = EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|e| ProviderError::Key(e.to_string()))?;
        let http = client(cfg.ca.as_deref(), false, cfg.timeout)?;
        Ok(Self {
            cfg,
            account,
            key,
            http,
            clock,
            access: tokio::sync::Mutex::new(None),
        })
    }

    pub fn from_file(
        cfg: FcmConfig,
        path: &Path,
        clock: Arc<dyn WebhookClock>,
    ) -> Result<Self, ProviderError> {
        Self::new(cfg, &read(path)?, clock)
    }

    /// A cached access token, or a new one from the token URI.
    async fn access_token(&self) -> Result<String, SendOutcome> {
        let now = self.clock.now_ms();
        let mut g = self.access.lock().await;
        if let Some((tok, until)) = g.as_ref() {
            if now < *until {
                return Ok(tok.clone());
            }
        }
        let iat = now / 1000;
        let claims = AssertionClaims {
            iss: &self.account.client_email,
            scope: FCM_SCOPE,
            aud: &self.account.token_uri,
            iat,
            exp: iat + 3600,
        };
        let assertion = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.key)
            .map_err(|e| SendOutcome::Failed(format!("signing the assertion: {e}")))?;
        let resp = self
            .http
            .post(&self.account.token_uri)
            .form(&[
                ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                ("assertion", assertion.as_str()),
            ])
            .send()
            .await
            .map_err(|e| SendOutcome::Retry {
                reason: format!("token transport: {}", e.without_url()),
                after: None,
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let after = retry_after(resp.headers());
            return Err(if status == 429 || status >= 500 {
                SendOutcome::Retry {
                    reason: format!("token_http_{status}"),
                    after,
                }
            } else {
                SendOutcome::Failed(format!("token_http_{status}"))
            });
        }
        let reply: TokenReply = resp
            .json()
            .await
            .map_err(|e| SendOutcome::Failed(format!("token reply: {e}")))?;
        // A minute early, so a token never expires in flight.
        let until = now + (reply.expires_in - 60).max(0) * 1000;
        *g = Some((reply.access_token.clone(), until));
        Ok(reply.access_token)
    }

    async fn forget_token(&self) {
        *self.access.lock().await = None;
    }
}

/// FCM status and error body to an outcome.
fn classify_fcm(status: u16, body: FcmErrorBody, after: Option<Duration>) -> SendOutcome {
    let e = body.error;
    let code = e
        .details
        .iter()
        .find_map(|d| d.get("errorCode").and_then(|c| c.as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| e.status.clone());
    let about_token = e.details.iter().any(|d| {
        d.get("fieldViolations")
            .and_then(|v| v.as_array())
            .is_some_and(|v| {
                v.iter()
                    .any(|f| f.get("field").and_then(|f| f.as_str()) == Some("message.token"))
            })
    }) || e.message.contains("registration token");
    match (status, code.as_str()) {
        (_, "UNREGISTERED") | (404, _) => SendOutcome::Unregistered("UNREGISTERED".into()),
        (_, "INVALID_ARGUMENT") if about_token => {
            SendOutcome::Unregistered("INVALID_ARGUMENT".into())
        }
        _ => retry_or_fail(status, code, after),
    }
}

#[async_trait]
impl Provider for Fcm {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    async fn send(&self, device: &Device, msg: &PushMessage) -> SendOutcome {
        let token = match self.access_token().await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let url = format!(
            "{}/v1/projects/{}/messages:send",
            self.cfg.endpoint.trim_end_matches('/'),
            self.account.project_id
        );
        let resp = self
            .http
            .post(url)
            .bearer_auth(token)
            .json(&msg.fcm_body(&device.token))
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                return SendOutcome::Retry {
                    reason: format!("transport: {}", e.without_url()),
                    after: None,
                }
            }
        };
        let status = resp.status().as_u16();
        if status == 200 {
            return SendOutcome::Sent;
        }
        if status == 401 {
            // Revoked or expired early: the next try fetches a new one.
            self.forget_token().await;
            return SendOutcome::Retry {
                reason: "UNAUTHENTICATED".into(),
                after: None,
            };
        }
        let after = retry_after(resp.headers());
        let body = resp.json::<FcmErrorBody>().await.unwrap_or_default();
        classify_fcm(status, body, after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apns_answers() {
        assert!(matches!(
            classify_apns(410, "Unregistered".into(), None),
            SendOutcome::Unregistered(_)
        ));
        assert!(matches!(
            classify_apns(400, "BadDeviceToken".into(), None),
            SendOutcome::Unregistered(_)
        ));
        assert_eq!(
            classify_apns(429, "TooManyRequests".into(), Some(Duration::from_secs(3))),
            SendOutcome::Retry {
                reason: "TooManyRequests".into(),
                after: Some(Duration::from_secs(3))
            }
        );
        assert!(matches!(
            classify_apns(503, String::new(), None),
            SendOutcome::Retry { .. }
        ));
        assert_eq!(
            classify_apns(400, "PayloadTooLarge".into(), None),
            SendOutcome::Failed("PayloadTooLarge".into())
        );
    }

    fn fcm_err(status: &str, code: &str, field: Option<&str>) -> FcmErrorBody {
        let mut details = vec![serde_json::json!({
            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
            "errorCode": code,
        })];
        if let Some(f) = field {
            details.push(serde_json::json!({
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": f, "description": "x"}],
            }));
        }
        serde_json::from_value(serde_json::json!({
            "error": {"code": 400, "status": status, "message": "m", "details": details}
        }))
        .unwrap()
    }

    #[test]
    fn fcm_answers() {
        assert!(matches!(
            classify_fcm(404, fcm_err("NOT_FOUND", "UNREGISTERED", None), None),
            SendOutcome::Unregistered(_)
        ));
        assert!(matches!(
            classify_fcm(
                400,
                fcm_err(
                    "INVALID_ARGUMENT",
                    "INVALID_ARGUMENT",
                    Some("message.token")
                ),
                None
            ),
            SendOutcome::Unregistered(_)
        ));
        // INVALID_ARGUMENT about the payload keeps the device.
        assert!(matches!(
            classify_fcm(
                400,
                fcm_err("INVALID_ARGUMENT", "INVALID_ARGUMENT", Some("message.data")),
                None
            ),
            SendOutcome::Failed(_)
        ));
        assert!(matches!(
            classify_fcm(503, fcm_err("UNAVAILABLE", "UNAVAILABLE", None), None),
            SendOutcome::Retry { .. }
        ));
        assert!(matches!(
            classify_fcm(
                429,
                fcm_err("RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", None),
                None
            ),
            SendOutcome::Retry { .. }
        ));
    }

    #[test]
    fn collapse_ids_fit_apns() {
        assert_eq!(short_id("chat:r1"), "chat:r1");
        assert!(short_id(&"x".repeat(130)).len() <= 64);
    }
}
