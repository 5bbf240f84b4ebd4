//! Token keys end to end (`--jwt-keys`): tokens pick their key by `kid`
//! (HS256 secrets, RS256 and ES256 public keys), unknown kids and wrong
//! algorithms are refused, `waypost token` signs with a kid or a private key,
//! and a SIGHUP rotates the keys without dropping a live WebSocket.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use reqwest::StatusCode;
use serde_json::json;
use waypost_e2e::{
    now_ms, now_s, server_binary, unique, EngineChoice, Server, ServerOptions, WsClient,
};
use waypost_protocol::{Claims, Role};

const T: Duration = Duration::from_secs(10);
const JWKS: &str = include_str!("../../server/testdata/jwt/jwks.json");
const RSA_PEM: &[u8] = include_bytes!("../../server/testdata/jwt/rsa-private.pem");
const RSA_PUBLIC_PEM: &[u8] = include_bytes!("../../server/testdata/jwt/rsa-public.pem");
const EC_PEM: &[u8] = include_bytes!("../../server/testdata/jwt/ec-private.pem");
const HS_SECRET: &[u8] = b"test-hs-secret-for-waypost-tests";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../server/testdata/jwt")
        .join(name)
}

fn driver(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        role: Role::Driver,
        exp: now_s() + 600,
        channels: None,
    }
}

fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Claims) -> Result<String> {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    Ok(encode(&header, claims, key)?)
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A key file holding one HS256 secret under `kid`.
fn one_secret_file(kid: &str, secret: &[u8]) -> String {
    json!({"keys": [{"kid": kid, "kty": "oct", "k": b64url(secret)}]}).to_string()
}

/// Status of `POST /v1/drivers/{sub}/locations` with `token`.
async fn post_status(server: &Server, sub: &str, token: &str, seq: u64) -> Result<StatusCode> {
    let resp = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{sub}/locations")))
        .bearer_auth(token)
        .json(&json!({"device_id": "keys", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await?;
    Ok(resp.status())
}

/// Runs `waypost token ARGS` and returns the token it prints.
fn cli_token(args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(server_binary()?)
        .arg("token")
        .args(args)
        .env_remove("WAYPOST_JWT_SECRET")
        .env_remove("WAYPOST_JWT_KEYS")
        .output()?;
    if !out.status.success() {
        bail!(
            "waypost token {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_pick_their_key_by_kid_and_algorithm() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("waypost-keys"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("jwks.json");
    std::fs::write(&file, JWKS)?;
    let server = Server::start_with(
        ServerOptions::new(EngineChoice::Memory).arg(format!("--jwt-keys={}", file.display())),
    )
    .await?;
    let d = unique("d-keys");
    let c = driver(&d);
    let hs = EncodingKey::from_secret(HS_SECRET);
    let rsa = EncodingKey::from_rsa_pem(RSA_PEM)?;
    let ec = EncodingKey::from_ec_pem(EC_PEM)?;
    let keys_arg = format!("--jwt-keys={}", file.display());
    let rows: Vec<(&str, String, StatusCode)> = vec![
        (
            "HS256 kid test-hs",
            sign(Algorithm::HS256, Some("test-hs"), &hs, &c)?,
            StatusCode::OK,
        ),
        (
            "RS256 kid test-rsa",
            sign(Algorithm::RS256, Some("test-rsa"), &rsa, &c)?,
            StatusCode::OK,
        ),
        (
            "ES256 kid test-ec",
            sign(Algorithm::ES256, Some("test-ec"), &ec, &c)?,
            StatusCode::OK,
        ),
        (
            "waypost token --jwt-keys --kid test-hs",
            cli_token(&[
                "--sub", &d, "--role", "driver", &keys_arg, "--kid", "test-hs",
            ])?,
            StatusCode::OK,
        ),
        (
            "waypost token --private-key (ES256) --kid test-ec",
            cli_token(&[
                "--sub",
                &d,
                "--role",
                "driver",
                "--private-key",
                &testdata("ec-private.pem").display().to_string(),
                "--alg",
                "es256",
                "--kid",
                "test-ec",
            ])?,
            StatusCode::OK,
        ),
        (
            "unknown kid",
            sign(Algorithm::HS256, Some("nope"), &hs, &c)?,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "no kid, three keys and no default",
            sign(Algorithm::HS256, None, &hs, &c)?,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "right secret, HS384",
            sign(Algorithm::HS384, Some("test-hs"), &hs, &c)?,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "HS256 keyed with the RSA public key, kid test-rsa",
            sign(
                Algorithm::HS256,
                Some("test-rsa"),
                &EncodingKey::from_secret(RSA_PUBLIC_PEM),
                &c,
            )?,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "EC key under the RSA kid",
            sign(Algorithm::ES256, Some("test-rsa"), &ec, &c)?,
            StatusCode::UNAUTHORIZED,
        ),
        (
            "the dev secret (not in the file)",
            waypost_e2e::token(&d, Role::Driver, &[]),
            StatusCode::UNAUTHORIZED,
        ),
    ];
    let mut wrong = Vec::new();
    for (i, (name, tok, want)) in rows.iter().enumerate() {
        let got = post_status(&server, &d, tok, i as u64 + 1).await?;
        if got != *want {
            wrong.push(format!("{name}: expected {want}, got {got}"));
        }
        // The WebSocket upgrade follows the same verdict.
        let mut ws = WsClient::connect(&server.ws_url(tok)).await?;
        ws.send_json(&json!({"type": "ping", "id": 1})).await?;
        let first = ws.next_json(T).await?;
        let ws_ok = first["type"] == "pong";
        if ws_ok != (*want == StatusCode::OK) {
            wrong.push(format!("{name} on WebSocket: {first}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "rows that disagree:\n{}",
        wrong.join("\n")
    );
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_keys_without_dropping_a_connection() -> Result<()> {
    let dir = std::env::temp_dir().join(unique("waypost-rotate"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("jwks.json");
    std::fs::write(&file, one_secret_file("k-old", b"old-secret"))?;
    let server = Server::start_with(
        ServerOptions::new(EngineChoice::Memory).arg(format!("--jwt-keys={}", file.display())),
    )
    .await?;
    let d = unique("d-rot");
    let ch = format!("tracking:{d}");
    let old = EncodingKey::from_secret(b"old-secret");
    let new = EncodingKey::from_secret(b"new-secret");
    let buyer = Claims {
        sub: unique("b-rot"),
        role: Role::Buyer,
        exp: now_s() + 600,
        channels: Some(vec![ch.clone()]),
    };
    let old_driver = sign(Algorithm::HS256, Some("k-old"), &old, &driver(&d))?;
    let new_driver = sign(Algorithm::HS256, Some("k-new"), &new, &driver(&d))?;
    assert_eq!(
        post_status(&server, &d, &old_driver, 1).await?,
        StatusCode::OK
    );
    assert_eq!(
        post_status(&server, &d, &new_driver, 2).await?,
        StatusCode::UNAUTHORIZED
    );

    // A buyer connected with the old key.
    let mut ws =
        WsClient::connect(&server.ws_url(&sign(Algorithm::HS256, Some("k-old"), &old, &buyer)?))
            .await?;
    ws.subscribe(&ch, None).await?;

    // Step 1: add the new key beside the old one.
    let both = json!({"keys": [
        {"kid": "k-old", "kty": "oct", "k": b64url(b"old-secret")},
        {"kid": "k-new", "kty": "oct", "k": b64url(b"new-secret")},
    ]});
    std::fs::write(&file, both.to_string())?;
    server.signal("HUP")?;
    let mut seq = 10;
    let deadline = tokio::time::Instant::now() + T;
    loop {
        seq += 1;
        if post_status(&server, &d, &new_driver, seq).await? == StatusCode::OK {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the new key was not accepted after SIGHUP");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        post_status(&server, &d, &old_driver, seq + 1).await?,
        StatusCode::OK,
        "both keys are valid during the rotation"
    );
    // Step 2: remove the old key.
    std::fs::write(&file, one_secret_file("k-new", b"new-secret"))?;
    server.signal("HUP")?;
    let deadline = tokio::time::Instant::now() + T;
    let mut seq = seq + 10;
    loop {
        seq += 1;
        if post_status(&server, &d, &old_driver, seq).await? == StatusCode::UNAUTHORIZED {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("the old key still verified after it was removed");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A broken file keeps the keys in force.
    std::fs::write(&file, "{not json")?;
    server.signal("HUP")?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    seq += 1;
    assert_eq!(
        post_status(&server, &d, &new_driver, seq).await?,
        StatusCode::OK
    );

    // The buyer's connection survived both reloads and still receives.
    let fix = loop {
        let v = ws
            .next_of_type("location", T)
            .await
            .context("live socket")?;
        if v["fix"]["seq"] == seq {
            break v;
        }
    };
    assert_eq!(fix["driver_id"], d.as_str());
    ws.send_json(&json!({"type": "ping", "id": 9})).await?;
    ws.next_of_type("pong", T).await?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
