//! The Redis engine over TLS, end to end: Debian's `redis-server` on a TLS
//! port with a CA, server and client certificate generated here (openssl).
//!
//! - `tracking_and_chat_over_tls`: two server processes on one `rediss://`
//!   Redis (server certificate checked against `--redis-ca`): a fix posted
//!   to one reaches a buyer's WebSocket on the other, and a chat message
//!   sent on one reaches a buyer on the other, so both the command and the
//!   pub/sub connections speak TLS.
//! - `mutual_tls_needs_the_client_certificate`: Redis with
//!   `--tls-auth-clients yes`: a server without `--redis-client-cert` fails
//!   to start; with it, ingest and tracking work.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde_json::json;
use waypost_e2e::tls::{TestCerts, TlsRedis};
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

/// Certificates and a TLS Redis, or `None` (printed why) when openssl or
/// redis-server is missing.
async fn setup(require_client_cert: bool) -> Option<(TestCerts, TlsRedis)> {
    let certs = match TestCerts::generate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP redis TLS: {e:#}");
            return None;
        }
    };
    match TlsRedis::start(&certs, require_client_cert).await {
        Ok(r) => Some((certs, r)),
        Err(e) => {
            eprintln!("SKIP redis TLS: {e:#}");
            None
        }
    }
}

async fn start(redis: &TlsRedis, args: Vec<String>) -> Result<Server> {
    let mut opts = ServerOptions::new(EngineChoice::Redis(redis.url()));
    opts.args = args;
    Server::start_with(opts).await
}

async fn post_fix(server: &Server, driver: &str, seq: u64) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "dev", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .timeout(Duration::from_secs(5))
        .send()
        .await?;
    if r.status() != StatusCode::OK {
        bail!("ingest answered {}: {}", r.status(), r.text().await?);
    }
    Ok(())
}

async fn location(ws: &mut WsClient, seq: u64) -> Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws
            .next_json(left)
            .await
            .with_context(|| format!("no location with seq {seq}"))?;
        if v["type"] == "location" && v["fix"]["seq"] == seq {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_and_chat_over_tls() -> Result<()> {
    let Some((certs, redis)) = setup(false).await else {
        return Ok(());
    };
    let a = start(&redis, certs.serve_args(false)).await?;
    let b = start(&redis, certs.serve_args(false)).await?;
    let driver = unique("d");
    let room = unique("room");
    let track = format!("tracking:{driver}");
    let chat = format!("chat:{room}");
    let mut watcher =
        WsClient::connect(&b.ws_url(&token(&unique("b"), Role::Buyer, &[&track, &chat]))).await?;
    watcher.subscribe(&track, None).await?;
    watcher.subscribe(&chat, None).await?;
    post_fix(&a, &driver, 1).await?;
    location(&mut watcher, 1).await?;

    let mut sender =
        WsClient::connect(&a.ws_url(&token(&unique("v"), Role::Buyer, &[&chat]))).await?;
    let cid = unique("c");
    let sent = sender.send_chat(&room, &cid, "over TLS").await?;
    let got = watcher.messages(&room, 1, Duration::from_secs(10)).await?;
    assert_eq!(got[0]["client_id"], cid.as_str());
    assert_eq!(got[0]["seq"], sent["seq"]);
    assert_eq!(got[0]["body"], "over TLS");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_needs_the_client_certificate() -> Result<()> {
    let Some((certs, redis)) = setup(true).await else {
        return Ok(());
    };
    match start(&redis, certs.serve_args(false)).await {
        Ok(_) => bail!("the server started on a mutual-TLS Redis without a client certificate"),
        Err(e) => {
            let e = format!("{e:#}");
            assert!(
                e.contains("CertificateRequired"),
                "refused for another reason: {e}"
            );
        }
    }
    let server = start(&redis, certs.serve_args(true)).await?;
    let driver = unique("d");
    let track = format!("tracking:{driver}");
    let mut ws =
        WsClient::connect(&server.ws_url(&token(&unique("b"), Role::Buyer, &[&track]))).await?;
    ws.subscribe(&track, None).await?;
    post_fix(&server, &driver, 1).await?;
    location(&mut ws, 1).await?;
    Ok(())
}
