//! Local stand-ins for the push providers, implementing the parts of their
//! documented wire protocols that Waypost uses, strictly:
//!
//! - [`FakeApns`]: TLS with a test CA ([`TestCerts`]), HTTP/2 only (ALPN
//!   `h2`, no HTTP/1.1), `POST /3/device/{token}`; checks the ES256
//!   provider token (`kid`, `iss` = team, signature with the public key),
//!   `apns-topic`, `apns-push-type`, `apns-priority`, `apns-collapse-id`
//!   (≤ 64 bytes), `apns-expiration` and the payload shape (`aps.alert` with
//!   `loc-key`, `waypost.channel`/`seq`); answers 410 `Unregistered` for
//!   dead tokens and 503/429 (with `Retry-After`) while told to.
//! - [`FakeFcm`]: the OAuth 2.0 token endpoint (`grant_type` jwt-bearer,
//!   the RS256 assertion verified with the service account's public key,
//!   `aud` = the token URI, the messaging scope) and
//!   `POST /v1/projects/{p}/messages:send` (bearer token from the endpoint,
//!   `message.token`, string-valued `data`, `android.notification` with
//!   `body_loc_key`); answers 404 `UNREGISTERED` for dead tokens and 503.
//!
//! Both record what they accepted and every request they refused as a
//! protocol violation (`violations`), which a test asserts empty.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::tls::TestCerts;

/// One push a fake accepted.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub token: String,
    /// The `waypost` data (APNs) or the `data` map (FCM) as received.
    pub data: Value,
    pub body: Value,
    pub headers: Vec<(String, String)>,
}

impl Accepted {
    pub fn seq(&self) -> u64 {
        match &self.data["seq"] {
            Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_u64().unwrap_or(0),
        }
    }
    pub fn count(&self) -> u64 {
        match &self.data["count"] {
            Value::String(s) => s.parse().unwrap_or(0),
            v => v.as_u64().unwrap_or(0),
        }
    }
    pub fn channel(&self) -> String {
        self.data["channel"].as_str().unwrap_or_default().to_owned()
    }
}

/// What a fake has seen, shared with its server task.
#[derive(Default)]
pub struct Record {
    pub accepted: Vec<Accepted>,
    pub violations: Vec<String>,
    /// Requests answered with an outage status.
    pub outage_answers: usize,
    /// Requests answered "dead token".
    pub dead_answers: usize,
    pub token_requests: usize,
}

#[derive(Default)]
struct Behaviour {
    dead: HashSet<String>,
    /// Answer this many push requests with the outage status.
    outage_left: usize,
    outage_status: u16,
    retry_after_s: Option<u64>,
}

struct Shared {
    record: Mutex<Record>,
    behaviour: Mutex<Behaviour>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Handles common to both fakes.
#[derive(Clone)]
pub struct FakeHandle {
    shared: Arc<Shared>,
}

impl FakeHandle {
    fn new() -> Self {
        Self {
            shared: Arc::new(Shared {
                record: Mutex::new(Record::default()),
                behaviour: Mutex::new(Behaviour {
                    outage_status: 503,
                    ..Default::default()
                }),
            }),
        }
    }

    /// The provider says this token is dead from now on.
    pub fn kill_token(&self, token: &str) {
        lock(&self.shared.behaviour).dead.insert(token.to_owned());
    }

    /// The next `n` push requests get `status` (503 or 429), with
    /// `Retry-After` when given.
    pub fn outage(&self, n: usize, status: u16, retry_after_s: Option<u64>) {
        let mut b = lock(&self.shared.behaviour);
        b.outage_left = n;
        b.outage_status = status;
        b.retry_after_s = retry_after_s;
    }

    pub fn accepted(&self) -> Vec<Accepted> {
        lock(&self.shared.record).accepted.clone()
    }

    pub fn violations(&self) -> Vec<String> {
        lock(&self.shared.record).violations.clone()
    }

    pub fn with_record<T>(&self, f: impl FnOnce(&Record) -> T) -> T {
        f(&lock(&self.shared.record))
    }

    /// Waits until `n` pushes were accepted (or `within` passed).
    pub async fn wait_accepted(&self, n: usize, within: Duration) -> Vec<Accepted> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let got = self.accepted();
            if got.len() >= n || tokio::time::Instant::now() >= end {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn violation(&self, what: String) {
        lock(&self.shared.record).violations.push(what);
    }

    /// The scripted answer for a push to `token`, if any.
    fn scripted(&self, token: &str) -> Option<(u16, Option<u64>, bool)> {
        let mut b = lock(&self.shared.behaviour);
        if b.outage_left > 0 {
            b.outage_left -= 1;
            let r = (b.outage_status, b.retry_after_s, false);
            drop(b);
            lock(&self.shared.record).outage_answers += 1;
            return Some(r);
        }
        if b.dead.contains(token) {
            drop(b);
            lock(&self.shared.record).dead_answers += 1;
            return Some((0, None, true));
        }
        None
    }
}

fn reply(status: u16, body: Value, retry_after: Option<u64>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("static"));
    if let Some(s) = retry_after {
        if let Ok(v) = s.to_string().parse() {
            r.headers_mut().insert("retry-after", v);
        }
    }
    r
}

fn header(req: &Request<Incoming>, name: &str) -> Option<String> {
    req.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn all_headers(req: &Request<Incoming>) -> Vec<(String, String)> {
    req.headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("?").to_owned()))
        .collect()
}

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("running openssl (install the openssl package)")?;
    if !out.status.success() {
        bail!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Key files in a temporary directory, removed on drop.
pub struct PushKeys {
    dir: PathBuf,
    pub team_id: String,
    pub key_id: String,
}

impl PushKeys {
    /// An APNs `.p8` key (P-256, PKCS#8) and an FCM service-account key
    /// (RSA 2048), with their public keys.
    pub fn generate() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "waypost-push-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)?;
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "apns.p8",
            ],
        )?;
        openssl(
            &dir,
            &["pkey", "-in", "apns.p8", "-pubout", "-out", "apns.pub"],
        )?;
        openssl(
            &dir,
            &[
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
                "-out",
                "fcm.key",
            ],
        )?;
        openssl(
            &dir,
            &["pkey", "-in", "fcm.key", "-pubout", "-out", "fcm.pub"],
        )?;
        Ok(Self {
            dir,
            team_id: "TEAM123456".into(),
            key_id: "KEY1234567".into(),
        })
    }

    pub fn apns_key(&self) -> PathBuf {
        self.dir.join("apns.p8")
    }
    fn apns_public(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("apns.pub"))?)
    }
    fn fcm_public(&self) -> Result<Vec<u8>> {
        Ok(std::fs::read(self.dir.join("fcm.pub"))?)
    }

    /// Writes the service-account JSON pointing at `token_uri`.
    pub fn service_account(&self, token_uri: &str) -> Result<PathBuf> {
        let key = std::fs::read_to_string(self.dir.join("fcm.key"))?;
        let json = serde_json::json!({
            "type": "service_account",
            "project_id": "waypost-test",
            "private_key_id": "k1",
            "private_key": key,
            "client_email": "push@waypost-test.iam.gserviceaccount.com",
            "client_id": "1",
            "token_uri": token_uri,
        });
        let path = self.dir.join("service-account.json");
        std::fs::write(&path, json.to_string())?;
        Ok(path)
    }
}

impl Drop for PushKeys {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The fake APNs server.
pub struct FakeApns {
    pub handle: FakeHandle,
    pub addr: SocketAddr,
    pub topic: String,
    cancel: CancellationToken,
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct ApnsCheck {
    key: DecodingKey,
    kid: String,
    team: String,
    topic: String,
}

impl FakeApns {
    pub async fn start(keys: &PushKeys, certs: &TestCerts, topic: &str) -> Result<Self> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(certs.server_cert())?.collect::<Result<_, _>>()?;
        let key = PrivateKeyDer::from_pem_file(certs.server_key())?;
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
        // HTTP/2 only, as APNs.
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handle = FakeHandle::new();
        let check = Arc::new(ApnsCheck {
            key: DecodingKey::from_ec_pem(&keys.apns_public()?)?,
            kid: keys.key_id.clone(),
            team: keys.team_id.clone(),
            topic: topic.to_owned(),
        });
        let cancel = CancellationToken::new();
        let (h, c) = (handle.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (acceptor, h, check) = (acceptor.clone(), h.clone(), Arc::clone(&check));
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
                        h.violation("client did not negotiate h2".into());
                        return;
                    }
                    let svc = hyper::service::service_fn(move |req| {
                        let (h, check) = (h.clone(), Arc::clone(&check));
                        async move {
                            Ok::<_, std::convert::Infallible>(apns_handle(&h, &check, req).await)
                        }
                    });
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            handle,
            addr,
            topic: topic.to_owned(),
            cancel,
        })
    }

    pub fn endpoint(&self) -> String {
        format!("https://localhost:{}", self.addr.port())
    }

    /// `waypost serve` arguments for this server.
    pub fn serve_args(&self, keys: &PushKeys, certs: &TestCerts) -> Vec<String> {
        vec![
            "--apns-key-file".into(),
            keys.apns_key().to_string_lossy().into_owned(),
            "--apns-key-id".into(),
            keys.key_id.clone(),
            "--apns-team-id".into(),
            keys.team_id.clone(),
            "--apns-topic".into(),
            self.topic.clone(),
            "--apns-endpoint".into(),
            self.endpoint(),
            "--apns-ca".into(),
            certs.ca().to_string_lossy().into_owned(),
        ]
    }
}

#[derive(serde::Deserialize)]
struct ApnsClaims {
    iss: String,
    iat: i64,
}

async fn apns_handle(
    h: &FakeHandle,
    check: &ApnsCheck,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let bad = |status: u16, reason: &str, what: String| {
        h.violation(what);
        reply(status, serde_json::json!({ "reason": reason }), None)
    };
    if req.version() != hyper::Version::HTTP_2 {
        return bad(400, "BadRequest", format!("version {:?}", req.version()));
    }
    let path = req.uri().path().to_owned();
    let Some(token) = path.strip_prefix("/3/device/").map(str::to_owned) else {
        return bad(404, "BadPath", format!("path {path}"));
    };
    if req.method() != hyper::Method::POST {
        return bad(405, "MethodNotAllowed", format!("method {}", req.method()));
    }
    // The provider token.
    let Some(jwt) =
        header(&req, "authorization").and_then(|a| a.strip_prefix("bearer ").map(str::to_owned))
    else {
        return bad(
            403,
            "MissingProviderToken",
            "no bearer provider token".into(),
        );
    };
    let mut v = Validation::new(Algorithm::ES256);
    v.required_spec_claims.clear();
    v.validate_exp = false;
    match (
        jsonwebtoken::decode_header(&jwt),
        jsonwebtoken::decode::<ApnsClaims>(&jwt, &check.key, &v),
    ) {
        (Ok(hd), Ok(data)) => {
            if hd.kid.as_deref() != Some(check.kid.as_str()) || data.claims.iss != check.team {
                return bad(
                    403,
                    "InvalidProviderToken",
                    format!("kid {:?} iss {}", hd.kid, data.claims.iss),
                );
            }
            let age = crate::now_s() as i64 - data.claims.iat;
            if !(-60..3600).contains(&age) {
                return bad(403, "ExpiredProviderToken", format!("iat {age} s old"));
            }
        }
        (hd, data) => {
            return bad(
                403,
                "InvalidProviderToken",
                format!("{:?} {:?}", hd.err(), data.err()),
            );
        }
    }
    if header(&req, "apns-topic").as_deref() != Some(check.topic.as_str()) {
        return bad(
            400,
            "TopicDisallowed",
            format!("apns-topic {:?}", header(&req, "apns-topic")),
        );
    }
    if header(&req, "apns-push-type").as_deref() != Some("alert") {
        return bad(400, "InvalidPushType", "apns-push-type".into());
    }
    if !matches!(
        header(&req, "apns-priority").as_deref(),
        Some("10" | "5" | "1")
    ) {
        return bad(400, "BadPriority", "apns-priority".into());
    }
    match header(&req, "apns-collapse-id") {
        Some(c) if !c.is_empty() && c.len() <= 64 => {}
        other => return bad(400, "BadCollapseId", format!("apns-collapse-id {other:?}")),
    }
    if header(&req, "apns-expiration")
        .and_then(|e| e.parse::<i64>().ok())
        .is_none()
    {
        return bad(400, "BadExpirationDate", "apns-expiration".into());
    }
    let headers = all_headers(&req);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(400, "BadPayload", format!("body: {e}")),
    };
    if body.len() > 4096 {
        return bad(413, "PayloadTooLarge", format!("{} bytes", body.len()));
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return bad(400, "PayloadEmpty", "body is not JSON".into());
    };
    let alert_ok =
        json["aps"]["alert"]["loc-key"].is_string() && json["aps"]["alert"]["loc-args"].is_array();
    let data = json["waypost"].clone();
    if !alert_ok || !data["channel"].is_string() || !data["seq"].is_u64() || !data["count"].is_u64()
    {
        return bad(400, "BadPayload", format!("payload {json}"));
    }
    if let Some((status, after, dead)) = h.scripted(&token) {
        return if dead {
            reply(
                410,
                serde_json::json!({"reason": "Unregistered", "timestamp": crate::now_ms()}),
                None,
            )
        } else {
            let reason = if status == 429 {
                "TooManyRequests"
            } else {
                "ServiceUnavailable"
            };
            reply(status, serde_json::json!({ "reason": reason }), after)
        };
    }
    if !token.bytes().all(|b| b.is_ascii_hexdigit()) {
        return reply(400, serde_json::json!({"reason": "BadDeviceToken"}), None);
    }
    lock(&h.shared.record).accepted.push(Accepted {
        token,
        data,
        body: json,
        headers,
    });
    let mut r = reply(200, Value::Null, None);
    *r.body_mut() = Full::new(Bytes::new());
    r
}

/// The fake FCM server (token endpoint and `messages:send`, plain HTTP).
pub struct FakeFcm {
    pub handle: FakeHandle,
    pub addr: SocketAddr,
    cancel: CancellationToken,
}

impl Drop for FakeFcm {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct FcmCheck {
    key: DecodingKey,
    token_uri: String,
    email: String,
    issued: Mutex<HashSet<String>>,
}

impl FakeFcm {
    pub async fn start(keys: &PushKeys) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let handle = FakeHandle::new();
        let check = Arc::new(FcmCheck {
            key: DecodingKey::from_rsa_pem(&keys.fcm_public()?)?,
            token_uri: format!("http://{addr}/token"),
            email: "push@waypost-test.iam.gserviceaccount.com".into(),
            issued: Mutex::default(),
        });
        let cancel = CancellationToken::new();
        let (h, c) = (handle.clone(), cancel.clone());
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = c.cancelled() => break,
                    r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                };
                let (h, check) = (h.clone(), Arc::clone(&check));
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (h, check) = (h.clone(), Arc::clone(&check));
                        async move {
                            Ok::<_, std::convert::Infallible>(fcm_handle(&h, &check, req).await)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        Ok(Self {
            handle,
            addr,
            cancel,
        })
    }

    pub fn token_uri(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    pub fn serve_args(&self, keys: &PushKeys) -> Result<Vec<String>> {
        let sa = keys.service_account(&self.token_uri())?;
        Ok(vec![
            "--fcm-service-account".into(),
            sa.to_string_lossy().into_owned(),
            "--fcm-endpoint".into(),
            format!("http://{}", self.addr),
        ])
    }
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    iss: String,
    scope: String,
}

fn fcm_error(
    status: u16,
    code: &str,
    grpc: &str,
    msg: &str,
    after: Option<u64>,
) -> Response<Full<Bytes>> {
    reply(
        status,
        serde_json::json!({"error": {
            "code": status, "message": msg, "status": grpc,
            "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": code}]
        }}),
        after,
    )
}

async fn fcm_handle(
    h: &FakeHandle,
    check: &FcmCheck,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let bad = |status: u16, what: String| {
        h.violation(what.clone());
        fcm_error(status, "INVALID_ARGUMENT", "INVALID_ARGUMENT", &what, None)
    };
    let path = req.uri().path().to_owned();
    let auth = header(&req, "authorization");
    let ctype = header(&req, "content-type").unwrap_or_default();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return bad(400, format!("body: {e}")),
    };
    if path == "/token" {
        lock(&h.shared.record).token_requests += 1;
        if !ctype.starts_with("application/x-www-form-urlencoded") {
            return bad(400, format!("token content-type {ctype}"));
        }
        let form: Vec<(String, String)> = url_decode(&body);
        let get = |k: &str| form.iter().find(|(a, _)| a == k).map(|(_, v)| v.clone());
        if get("grant_type").as_deref() != Some("urn:ietf:params:oauth:grant-type:jwt-bearer") {
            return bad(400, "grant_type".into());
        }
        let Some(assertion) = get("assertion") else {
            return bad(400, "no assertion".into());
        };
        let mut v = Validation::new(Algorithm::RS256);
        v.set_audience(&[&check.token_uri]);
        v.set_required_spec_claims(&["exp", "iat", "aud", "iss"]);
        match jsonwebtoken::decode::<AssertionClaims>(&assertion, &check.key, &v) {
            Ok(d)
                if d.claims.iss == check.email
                    && d.claims
                        .scope
                        .contains("https://www.googleapis.com/auth/firebase.messaging") => {}
            Ok(_) => return bad(400, "assertion iss/scope".into()),
            Err(e) => return bad(400, format!("assertion: {e}")),
        }
        let tok = format!("ya29.fake-{}", rand::random::<u64>());
        lock(&check.issued).insert(tok.clone());
        return reply(
            200,
            serde_json::json!({"access_token": tok, "expires_in": 3599, "token_type": "Bearer"}),
            None,
        );
    }
    if path != "/v1/projects/waypost-test/messages:send" {
        return bad(404, format!("path {path}"));
    }
    let Some(bearer) = auth.and_then(|a| a.strip_prefix("Bearer ").map(str::to_owned)) else {
        return bad(401, "no bearer".into());
    };
    if !lock(&check.issued).contains(&bearer) {
        return bad(401, "unknown access token".into());
    }
    let Ok(json) = serde_json::from_slice::<Value>(&body) else {
        return bad(400, "body is not JSON".into());
    };
    let m = &json["message"];
    let Some(token) = m["token"].as_str().map(str::to_owned) else {
        return bad(400, "message.token".into());
    };
    let data = m["data"].clone();
    let data_ok = data
        .as_object()
        .is_some_and(|o| o.values().all(Value::is_string))
        && data["channel"].is_string()
        && data["seq"].is_string();
    let note_ok = m["android"]["notification"]["body_loc_key"].is_string();
    if !data_ok || !note_ok {
        return bad(400, format!("message shape {json}"));
    }
    if let Some((status, after, dead)) = h.scripted(&token) {
        return if dead {
            fcm_error(
                404,
                "UNREGISTERED",
                "NOT_FOUND",
                "Requested entity was not found.",
                None,
            )
        } else {
            fcm_error(
                status,
                "UNAVAILABLE",
                "UNAVAILABLE",
                "The service is currently unavailable.",
                after,
            )
        };
    }
    lock(&h.shared.record).accepted.push(Accepted {
        token,
        data,
        body: json,
        headers: Vec::new(),
    });
    reply(
        200,
        serde_json::json!({"name": "projects/waypost-test/messages/1"}),
        None,
    )
}

/// `application/x-www-form-urlencoded` pairs.
fn url_decode(body: &[u8]) -> Vec<(String, String)> {
    let s = String::from_utf8_lossy(body);
    s.split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (pct(k), pct(v)))
        .collect()
}

fn pct(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
                if let Ok(v) = u8::from_str_radix(hex, 16) {
                    out.push(v);
                    i += 2;
                } else {
                    out.push(b'%');
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
