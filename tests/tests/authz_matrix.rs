//! Authorization matrix, end to end on the real binary: every caller
//! (driver, another driver, granted and ungranted buyer, vendor, another
//! vendor, service, no token, expired, wrong signature, `alg: none`, a
//! correctly keyed but non-HS256 token) against every endpoint and channel
//! kind, orders included. The expected verdict of each cell is written out in [`MATRIX`];
//! the test runs every cell and fails listing each cell that disagrees.
//!
//! Verdicts: `A` allowed (2xx, or `subscribed` on WebSocket), `F`
//! forbidden (403 `{"error":{"code":"forbidden"}}`, or an `error` frame with
//! code `forbidden` and `ref` = the channel while the connection stays
//! usable), `U` unauthenticated (401 `unauthorized`, or an `error` frame
//! `unauthorized` and close 4001), `P` public (200 whatever the token).

use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, now_s, token, token_with_exp, unique, Closed, EngineChoice, Server, WsClient,
};
use waypost_protocol::{Claims, Role};

const T: Duration = Duration::from_secs(10);

/// The callers, in the column order of [`MATRIX`].
const CALLERS: [&str; 13] = [
    "driver",       // the driver D itself
    "driver-other", // another driver
    "buyer",        // buyer granted tracking:D, chat:R and order:O
    "buyer-other",  // buyer granted someone else's channels
    "vendor",       // vendor V, also granted chat:R and order:O
    "vendor-other", // another vendor
    "service",      // role service
    "none",         // no token at all
    "expired",      // valid signature, exp an hour ago (driver D)
    "wrong-sig",    // driver D signed with another secret
    "alg-none",     // driver D, header alg none, empty signature
    "alg-hs512",    // driver D, right secret but HS512
    "garbage",      // not a JWT
];

/// Endpoint × caller. Columns follow [`CALLERS`].
const MATRIX: [(&str, &str); 29] = [
    //                             d  d' b  b' v  v' s  -  e  w  n  5  g
    ("POST ingest", "A F F F F F A U U U U U U"),
    ("GET location", "A F A F F F A U U U U U U"),
    ("GET trail", "A F A F F F A U U U U U U"),
    ("SSE location stream", "A F A F F F A U U U U U U"),
    ("GET location poll", "A F A F F F A U U U U U U"),
    ("GET chat messages", "F F A F A F A U U U U U U"),
    ("POST chat message", "F F A F A F A U U U U U U"),
    ("SSE vendor stream", "F F F F A F A U U U U U U"),
    ("POST vendor notification", "F F F F F F A U U U U U U"),
    ("WS subscribe tracking", "A F A F F F A U U U U U U"),
    ("WS subscribe chat", "F F A F A F A U U U U U U"),
    ("GET dashboard page", "F F F F F F A U U U U U U"),
    ("GET dashboard snapshot", "F F F F F F A U U U U U U"),
    ("SSE dashboard stream", "F F F F F F A U U U U U U"),
    // The operator API the dashboard reads (the user looked up is B).
    ("GET admin drivers", "F F F F F F A U U U U U U"),
    ("GET admin channel", "F F F F F F A U U U U U U"),
    ("GET admin user", "F F F F F F A U U U U U U"),
    ("GET admin stats", "F F F F F F A U U U U U U"),
    ("GET admin orders", "F F F F F F A U U U U U U"),
    ("GET healthz", "P P P P P P P P P P P P P"),
    ("GET readyz", "P P P P P P P P P P P P P"),
    ("GET metrics", "P P P P P P P P P P P P P"),
    ("GET openapi", "P P P P P P P P P P P P P"),
    ("WS connect + ping", "A A A A A A A U U U U U U"),
    // Order O has driver D assigned; the order claim grants O only.
    ("POST order event", "F F F F F F A U U U U U U"),
    ("GET order", "A F A F A F A U U U U U U"),
    ("GET order timeline", "A F A F A F A U U U U U U"),
    ("SSE order stream", "A F A F A F A U U U U U U"),
    ("WS subscribe order", "A F A F A F A U U U U U U"),
];

use waypost_e2e::on_both_engines;

on_both_engines!(every_caller_against_every_endpoint);

/// Subjects of one run (unique so runs on a shared Redis do not collide).
struct Ids {
    driver: String,
    room: String,
    vendor: String,
    order: String,
}

fn b64url(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn driver_claims(sub: &str) -> Claims {
    Claims {
        sub: sub.into(),
        role: Role::Driver,
        exp: now_s() + 3600,
        channels: None,
    }
}

/// The token each caller presents (`None`: no credentials at all).
fn caller_token(caller: &str, ids: &Ids) -> Option<String> {
    let d = ids.driver.as_str();
    let granted = [
        format!("tracking:{d}"),
        format!("chat:{}", ids.room),
        format!("order:{}", ids.order),
    ];
    let granted: Vec<&str> = granted.iter().map(String::as_str).collect();
    Some(match caller {
        "driver" => token(d, Role::Driver, &[]),
        "driver-other" => token(&unique("d-other"), Role::Driver, &[]),
        "buyer" => token(&unique("b"), Role::Buyer, &granted),
        "buyer-other" => token(
            &unique("b-other"),
            Role::Buyer,
            &[
                "tracking:someone-else",
                "chat:another-room",
                "order:another",
            ],
        ),
        "vendor" => token(
            &ids.vendor,
            Role::Vendor,
            &[
                &format!("chat:{}", ids.room),
                &format!("order:{}", ids.order),
            ],
        ),
        "vendor-other" => token(&unique("v-other"), Role::Vendor, &[]),
        "service" => token("ops", Role::Service, &[]),
        "none" => return None,
        "expired" => token_with_exp(d, Role::Driver, &[], now_s() - 3600),
        "wrong-sig" => jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &driver_claims(d),
            &jsonwebtoken::EncodingKey::from_secret(b"not-the-secret"),
        )
        .ok()?,
        "alg-none" => {
            let header = b64url(br#"{"alg":"none","typ":"JWT"}"#);
            let claims = serde_json::to_vec(&driver_claims(d)).ok()?;
            format!("{header}.{}.", b64url(&claims))
        }
        "alg-hs512" => jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
            &driver_claims(d),
            &jsonwebtoken::EncodingKey::from_secret(waypost_e2e::DEV_SECRET.as_bytes()),
        )
        .ok()?,
        "garbage" => "not.a.jwt".into(),
        other => panic!("unknown caller {other}"),
    })
}

/// What one cell produced, reduced to a verdict letter plus detail.
async fn run_cell(
    server: &Server,
    endpoint: &str,
    tok: Option<&str>,
    ids: &Ids,
) -> Result<(char, String)> {
    let (d, r, v, o) = (&ids.driver, &ids.room, &ids.vendor, &ids.order);
    let http = |method: Method, path: String, body: Option<Value>, sse: bool| {
        let mut req = reqwest::Client::new().request(method, server.http(&path));
        if let Some(t) = tok {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        if sse {
            req = req.header("accept", "text/event-stream");
        }
        async move { http_verdict(req.send().await?, sse).await }
    };
    match endpoint {
        "POST ingest" => {
            let fix = json!({"seq": rand::random::<u32>() as u64 + 10, "ts": now_ms(), "lat": 52.5, "lon": 13.4});
            http(
                Method::POST,
                format!("/v1/drivers/{d}/locations"),
                Some(json!({"device_id": "authz", "fixes": [fix]})),
                false,
            )
            .await
        }
        "GET location" => {
            http(
                Method::GET,
                format!("/v1/drivers/{d}/location"),
                None,
                false,
            )
            .await
        }
        "GET trail" => http(Method::GET, format!("/v1/drivers/{d}/trail"), None, false).await,
        "SSE location stream" => {
            http(
                Method::GET,
                format!("/v1/drivers/{d}/location/stream"),
                None,
                true,
            )
            .await
        }
        "GET location poll" => {
            http(
                Method::GET,
                format!("/v1/drivers/{d}/location/poll?after_seq=0&timeout_s=1"),
                None,
                false,
            )
            .await
        }
        "GET chat messages" => {
            http(Method::GET, format!("/v1/chats/{r}/messages"), None, false).await
        }
        "POST chat message" => {
            http(
                Method::POST,
                format!("/v1/chats/{r}/messages"),
                Some(json!({"client_id": unique("c"), "body": "hi"})),
                false,
            )
            .await
        }
        "SSE vendor stream" => {
            http(
                Method::GET,
                format!("/v1/vendors/{v}/notifications/stream"),
                None,
                true,
            )
            .await
        }
        "POST vendor notification" => {
            http(
                Method::POST,
                format!("/v1/vendors/{v}/notifications"),
                Some(json!({"event": "new-order", "data": {"order": "o-1"}})),
                false,
            )
            .await
        }
        "GET dashboard page" => {
            // The page takes its token from the query (a browser opens it).
            let path = match tok {
                Some(t) => format!("/?token={t}"),
                None => "/".into(),
            };
            let resp = reqwest::get(server.http(&path)).await?;
            Ok(match resp.status() {
                s if s.is_success() => ('A', s.to_string()),
                StatusCode::UNAUTHORIZED => ('U', "401".into()),
                StatusCode::FORBIDDEN => ('F', "403".into()),
                s => ('?', s.to_string()),
            })
        }
        "GET dashboard snapshot" => {
            http(Method::GET, "/v1/dashboard/snapshot".into(), None, false).await
        }
        "SSE dashboard stream" => {
            http(Method::GET, "/v1/dashboard/stream".into(), None, true).await
        }
        "GET admin drivers" => {
            http(
                Method::GET,
                "/v1/admin/drivers?online=true".into(),
                None,
                false,
            )
            .await
        }
        "GET admin channel" => {
            http(
                Method::GET,
                format!("/v1/admin/channels/tracking:{d}"),
                None,
                false,
            )
            .await
        }
        "GET admin user" => http(Method::GET, "/v1/admin/users/b-1".into(), None, false).await,
        "GET admin stats" => http(Method::GET, "/v1/admin/stats".into(), None, false).await,
        "GET admin orders" => {
            http(
                Method::GET,
                "/v1/admin/orders?active=true".into(),
                None,
                false,
            )
            .await
        }
        "GET healthz" | "GET readyz" | "GET metrics" | "GET openapi" => {
            let path = match endpoint {
                "GET healthz" => "/healthz",
                "GET readyz" => "/readyz",
                "GET metrics" => "/metrics",
                _ => "/openapi.json",
            };
            let (verdict, detail) = http(Method::GET, path.into(), None, false).await?;
            Ok((if verdict == 'A' { 'P' } else { verdict }, detail))
        }
        "POST order event" => {
            http(
                Method::POST,
                format!("/v1/orders/{o}/events"),
                Some(json!({"event_id": unique("e"), "status": "accepted"})),
                false,
            )
            .await
        }
        "GET order" => http(Method::GET, format!("/v1/orders/{o}"), None, false).await,
        "GET order timeline" => {
            http(Method::GET, format!("/v1/orders/{o}/timeline"), None, false).await
        }
        "SSE order stream" => http(Method::GET, format!("/v1/orders/{o}/stream"), None, true).await,
        "WS subscribe order" => ws_cell(server, tok, Some(format!("order:{o}"))).await,
        "WS subscribe tracking" => ws_cell(server, tok, Some(format!("tracking:{d}"))).await,
        "WS subscribe chat" => ws_cell(server, tok, Some(format!("chat:{r}"))).await,
        "WS connect + ping" => ws_cell(server, tok, None).await,
        other => bail!("no such endpoint {other}"),
    }
}

/// Maps an HTTP answer to a verdict, checking the documented error body.
async fn http_verdict(resp: reqwest::Response, sse: bool) -> Result<(char, String)> {
    let status = resp.status();
    if status.is_success() {
        if sse {
            let ct = resp
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            if !ct.starts_with("text/event-stream") {
                return Ok(('?', format!("{status} with content-type {ct:?}")));
            }
            // Dropping the response closes the stream.
        }
        return Ok(('A', status.to_string()));
    }
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let code = body["error"]["code"].as_str().unwrap_or_default();
    let has_message = body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty());
    Ok(match (status, code, has_message) {
        (StatusCode::UNAUTHORIZED, "unauthorized", true) => ('U', "401".into()),
        (StatusCode::FORBIDDEN, "forbidden", true) => ('F', "403".into()),
        _ => ('?', format!("{status} {body}")),
    })
}

/// Connects (token in the query, as browsers must) and, with a channel,
/// subscribes. A refused subscription must leave the connection usable.
async fn ws_cell(
    server: &Server,
    tok: Option<&str>,
    channel: Option<String>,
) -> Result<(char, String)> {
    let url = match tok {
        Some(t) => server.ws_url(t),
        None => format!("ws://{}/v1/ws", server.addr),
    };
    let mut ws = WsClient::connect(&url).await?;
    ws.send_json(&json!({"type": "ping", "id": 1})).await?;
    let first = match ws.next_json(T).await {
        Ok(v) => v,
        Err(e) => return Ok(('?', format!("no first frame: {e:#}"))),
    };
    if first["type"] == "error" {
        let closed = ws.closed(T).await?;
        return Ok(match (first["code"].as_str(), closed) {
            (Some("unauthorized"), Closed::Code(4001, _)) => {
                ('U', "error unauthorized + 4001".into())
            }
            (_, closed) => ('?', format!("{first} then {closed:?}")),
        });
    }
    if first != json!({"type": "pong", "id": 1}) {
        return Ok(('?', format!("expected pong, got {first}")));
    }
    let Some(channel) = channel else {
        return Ok(('A', "pong".into()));
    };
    ws.send_json(&json!({"type": "subscribe", "channel": channel}))
        .await?;
    loop {
        let v = ws.next_json(T).await?;
        match v["type"].as_str() {
            Some("subscribed") if v["channel"] == channel.as_str() => {
                return Ok(('A', "subscribed".into()))
            }
            Some("error") => {
                if v["code"] != "forbidden" || v["ref"] != channel.as_str() {
                    return Ok(('?', v.to_string()));
                }
                // Still usable after the refusal.
                ws.send_json(&json!({"type": "ping", "id": 2})).await?;
                let pong = ws.next_of_type("pong", T).await;
                return Ok(match pong {
                    Ok(_) => ('F', "error forbidden, connection usable".into()),
                    Err(e) => ('?', format!("refusal killed the connection: {e:#}")),
                });
            }
            _ => continue,
        }
    }
}

async fn every_caller_against_every_endpoint(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let ids = Ids {
        driver: unique("d"),
        room: unique("room"),
        vendor: unique("v"),
        order: unique("o"),
    };
    // Order O, driver D assigned (active).
    let created = reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{}/events", ids.order)))
        .bearer_auth(token("ops", Role::Service, &[]))
        .json(&json!({"event_id": "created", "status": "accepted", "driver_id": ids.driver}))
        .send()
        .await?;
    assert_eq!(created.status(), StatusCode::ACCEPTED);
    // Give the driver a position so reads and polls answer 200 at once.
    let seed = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{}/locations", ids.driver)))
        .bearer_auth(token(&ids.driver, Role::Driver, &[]))
        .json(&json!({"device_id": "seed", "fixes": [{"seq": 1, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await?;
    assert_eq!(seed.status(), StatusCode::OK);

    let tokens: Vec<Option<String>> = CALLERS.iter().map(|c| caller_token(c, &ids)).collect();
    let mut mismatches = String::new();
    let mut cells = 0;
    let mut counts = [0usize; 4];
    for (endpoint, row) in MATRIX {
        let expected: Vec<char> = row
            .split_whitespace()
            .filter_map(|s| s.chars().next())
            .collect();
        assert_eq!(
            expected.len(),
            CALLERS.len(),
            "row {endpoint} has the wrong width"
        );
        for ((caller, tok), want) in CALLERS.iter().zip(&tokens).zip(&expected) {
            let (got, detail) = run_cell(&server, endpoint, tok.as_deref(), &ids)
                .await
                .unwrap_or_else(|e| ('?', format!("{e:#}")));
            cells += 1;
            if let Some(i) = "AFUP".find(got) {
                counts[i] += 1;
            }
            if got != *want {
                let _ = writeln!(
                    mismatches,
                    "  {endpoint:<26} as {caller:<13} expected {want}, got {got} ({detail})"
                );
            }
        }
    }
    println!(
        "authz matrix ({}): {cells} cells, allowed {}, forbidden {}, unauthenticated {}, public {}",
        server.options.engine.name(),
        counts[0],
        counts[1],
        counts[2],
        counts[3]
    );
    assert!(
        mismatches.is_empty(),
        "cells that disagree with MATRIX:\n{mismatches}"
    );
    assert_eq!(cells, MATRIX.len() * CALLERS.len());
    Ok(())
}
