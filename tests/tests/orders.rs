//! Orders end to end on the real binary, memory engine and real Redis:
//! the lifecycle over HTTP (idempotency, 409 backwards, timeline paging),
//! who may read an order, arrival/ETA from the driver's uploads and the
//! active orders in the ingest reply, arrival within one upload interval
//! with the real driver SDK, signed webhooks to a receiver that fails the
//! first attempts, a buyer (WebSocket) and a vendor (SSE) following one
//! order on two processes across resets; on Redis the stream intake
//! surviving a `kill -9` in the middle of its work.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

use waypost_e2e::chat::{SseClient, SseEvent};
use waypost_e2e::on_both_engines;
use waypost_e2e::proxy::FaultProxy;

const T: Duration = Duration::from_secs(10);

on_both_engines!(
    order_life_over_http,
    order_read_authorization,
    arrival_and_eta_from_uploads,
    coarse_fixes_never_arrive,
    webhooks_reach_a_flaky_receiver_once_per_key,
    order_live_over_websocket,
    order_stream_over_sse,
    order_followed_by_buyer_and_vendor_on_two_processes,
    arrival_within_one_upload_interval,
);

fn service() -> String {
    token("backend", Role::Service, &[])
}

async fn post_event(
    server: &Server,
    tok: &str,
    order: &str,
    ev: Value,
) -> Result<(StatusCode, Value)> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(tok)
        .json(&ev)
        .send()
        .await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn get(server: &Server, tok: Option<&str>, path: &str) -> Result<(StatusCode, Value)> {
    let mut req = reqwest::Client::new().get(server.http(path));
    if let Some(t) = tok {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

async fn order_life_over_http(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    let placed =
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": ["b-1"]});
    let (s, v) = post_event(&server, &svc, &o, placed.clone()).await?;
    ensure!(
        s == StatusCode::ACCEPTED && v == json!({"seq": 1, "duplicate": false}),
        "{s} {v}"
    );
    let (s, v) = post_event(&server, &svc, &o, placed).await?;
    ensure!(
        s == StatusCode::ACCEPTED && v == json!({"seq": 1, "duplicate": true}),
        "resend: {s} {v}"
    );
    let assign = json!({"event_id": "e2", "status": "accepted", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0}, "data": {"items": 2}});
    let (_, v) = post_event(&server, &svc, &o, assign).await?;
    ensure!(v["seq"] == 2, "{v}");
    for (i, st) in ["preparing", "picked_up", "delivered"].iter().enumerate() {
        let (s, v) = post_event(
            &server,
            &svc,
            &o,
            json!({"event_id": format!("s{i}"), "status": st}),
        )
        .await?;
        ensure!(
            s == StatusCode::ACCEPTED && v["seq"] == 3 + i as u64,
            "{st}: {s} {v}"
        );
    }
    let (s, v) = post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "late", "status": "preparing"}),
    )
    .await?;
    ensure!(
        s == StatusCode::CONFLICT && v["error"]["code"] == "conflict",
        "backwards: {s} {v}"
    );

    let (s, v) = get(&server, Some(&svc), &format!("/v1/orders/{o}")).await?;
    ensure!(s == StatusCode::OK, "{s} {v}");
    ensure!(
        v["status"] == "delivered" && v["driver_id"] == d.as_str() && v["vendor_id"] == "v-1",
        "{v}"
    );
    ensure!(
        v["seq"] == 5 && v["destination"]["radius_m"] == 100.0 && v["eta_s"].is_null(),
        "{v}"
    );

    let (_, t) = get(&server, Some(&svc), &format!("/v1/orders/{o}/timeline")).await?;
    let entries = t["entries"].as_array().context("entries")?;
    let seqs: Vec<u64> = entries.iter().filter_map(|e| e["seq"].as_u64()).collect();
    ensure!(seqs == vec![1, 2, 3, 4, 5] && t["more"] == false, "{t}");
    ensure!(
        entries[1]["kind"] == "status" && entries[1]["active"] == true,
        "{t}"
    );
    ensure!(
        entries[4]["status"] == "delivered" && entries[4]["active"] == false,
        "the last entry ends it: {t}"
    );
    let (_, page) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?after_seq=1&limit=2"),
    )
    .await?;
    let seqs: Vec<u64> = page["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(seqs == vec![2, 3] && page["more"] == true, "{page}");
    let (s, _) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?limit=0"),
    )
    .await?;
    ensure!(s == StatusCode::BAD_REQUEST, "limit 0: {s}");

    // Bad input and the wrong role.
    let (s, _) = post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "x", "status": "lost"}),
    )
    .await?;
    ensure!(s == StatusCode::BAD_REQUEST, "unknown status: {s}");
    let (s, _) = post_event(&server, &svc, &o, json!({"status": "placed"})).await?;
    ensure!(s == StatusCode::BAD_REQUEST, "no event_id: {s}");
    let (s, _) = post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "x", "status": "placed", "order_id": "other"}),
    )
    .await?;
    ensure!(s == StatusCode::BAD_REQUEST, "order_id mismatch: {s}");
    let buyer = token("b-1", Role::Buyer, &[&format!("order:{o}")]);
    let (s, _) = post_event(
        &server,
        &buyer,
        &o,
        json!({"event_id": "x", "status": "placed"}),
    )
    .await?;
    ensure!(s == StatusCode::FORBIDDEN, "buyer posting: {s}");
    let (s, _) = get(&server, Some(&svc), &format!("/v1/orders/{}", unique("o"))).await?;
    ensure!(s == StatusCode::NOT_FOUND, "unknown order: {s}");

    // Long poll: at once when entries exist, else the next one, else 204.
    let (s, v) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o}/poll?after_seq=3"),
    )
    .await?;
    let seqs: Vec<u64> = v["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(s == StatusCode::OK && seqs == vec![4, 5], "{s} {v}");
    let o2 = unique("o");
    post_event(
        &server,
        &svc,
        &o2,
        json!({"event_id": "e1", "status": "placed"}),
    )
    .await?;
    let started = Instant::now();
    let (s, _) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o2}/poll?after_seq=1&timeout_s=1"),
    )
    .await?;
    ensure!(
        s == StatusCode::NO_CONTENT && started.elapsed() >= Duration::from_millis(900),
        "{s}"
    );
    let poll_url = format!("/v1/orders/{o2}/poll?after_seq=1&timeout_s=10");
    let poller = {
        let url = server.http(&poll_url);
        let tok = svc.clone();
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(tok)
                .send()
                .await?;
            let status = r.status();
            anyhow::Ok((status, r.json::<Value>().await.unwrap_or(Value::Null)))
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_event(
        &server,
        &svc,
        &o2,
        json!({"event_id": "e2", "status": "accepted"}),
    )
    .await?;
    let (s, v) = tokio::time::timeout(Duration::from_secs(5), poller).await???;
    ensure!(
        s == StatusCode::OK
            && v["entries"][0]["seq"] == 2
            && v["entries"][0]["status"] == "accepted",
        "{s} {v}"
    );
    let other = token("b-9", Role::Buyer, &[&format!("order:{o}")]);
    let (s, _) = get(&server, Some(&other), &format!("/v1/orders/{o2}/poll")).await?;
    ensure!(s == StatusCode::FORBIDDEN, "poll of another order: {s}");
    Ok(())
}

/// The order rows of the authorization matrix.
async fn order_read_authorization(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let svc = service();
    let (a, b) = (unique("oa"), unique("ob"));
    let (d1, d2) = (unique("d"), unique("d"));
    post_event(
        &server,
        &svc,
        &a,
        json!({"event_id": "e1", "status": "placed"}),
    )
    .await?;
    post_event(
        &server,
        &svc,
        &b,
        json!({"event_id": "e1", "status": "placed", "driver_id": d2}),
    )
    .await?;
    let buyer_a = token("buyer", Role::Buyer, &[&format!("order:{a}")]);
    let vendor_a = token("vendor", Role::Vendor, &[&format!("order:{a}")]);
    let plain_buyer = token("buyer", Role::Buyer, &[]);
    let tracking_buyer = token("buyer", Role::Buyer, &[&format!("tracking:{d1}")]);
    let drv1 = token(&d1, Role::Driver, &[]);
    let drv2 = token(&d2, Role::Driver, &[]);
    let order = |id: &str| format!("/v1/orders/{id}");
    let timeline = |id: &str| format!("/v1/orders/{id}/timeline");
    let mut rows: Vec<(&str, Option<&str>, String, StatusCode)> = vec![
        ("no token", None, order(&a), StatusCode::UNAUTHORIZED),
        (
            "buyer with claim, before assignment",
            Some(&buyer_a),
            order(&a),
            StatusCode::OK,
        ),
        (
            "vendor with claim",
            Some(&vendor_a),
            timeline(&a),
            StatusCode::OK,
        ),
        (
            "buyer of A reading B",
            Some(&buyer_a),
            order(&b),
            StatusCode::FORBIDDEN,
        ),
        (
            "buyer of A, B's timeline",
            Some(&buyer_a),
            timeline(&b),
            StatusCode::FORBIDDEN,
        ),
        (
            "buyer without claim",
            Some(&plain_buyer),
            order(&a),
            StatusCode::FORBIDDEN,
        ),
        (
            "tracking: claim only",
            Some(&tracking_buyer),
            order(&a),
            StatusCode::FORBIDDEN,
        ),
        (
            "driver not assigned yet",
            Some(&drv1),
            order(&a),
            StatusCode::FORBIDDEN,
        ),
        ("driver of B", Some(&drv2), order(&b), StatusCode::OK),
        (
            "driver of B reading A",
            Some(&drv2),
            order(&a),
            StatusCode::FORBIDDEN,
        ),
    ];
    check_rows(&server, &rows).await?;
    // During: d1 assigned to A.
    post_event(
        &server,
        &svc,
        &a,
        json!({"event_id": "e2", "status": "accepted", "driver_id": d1}),
    )
    .await?;
    rows = vec![
        ("assigned driver", Some(&drv1), order(&a), StatusCode::OK),
        (
            "assigned driver, timeline",
            Some(&drv1),
            timeline(&a),
            StatusCode::OK,
        ),
        // The order claim does not grant the courier's tracking channel.
        (
            "order claim, tracking read",
            Some(&buyer_a),
            format!("/v1/drivers/{d1}/location"),
            StatusCode::FORBIDDEN,
        ),
        (
            "order claim, tracking stream",
            Some(&buyer_a),
            format!("/v1/drivers/{d1}/trail"),
            StatusCode::FORBIDDEN,
        ),
    ];
    check_rows(&server, &rows).await?;
    // Reassigned to d2: d1 loses it.
    post_event(
        &server,
        &svc,
        &a,
        json!({"event_id": "e3", "status": "accepted", "driver_id": d2}),
    )
    .await?;
    rows = vec![
        (
            "reassigned away",
            Some(&drv1),
            order(&a),
            StatusCode::FORBIDDEN,
        ),
        (
            "buyer after delivery",
            Some(&buyer_a),
            order(&a),
            StatusCode::OK,
        ),
    ];
    post_event(
        &server,
        &svc,
        &a,
        json!({"event_id": "e4", "status": "delivered"}),
    )
    .await?;
    check_rows(&server, &rows).await?;
    Ok(())
}

async fn check_rows(
    server: &Server,
    rows: &[(&str, Option<&str>, String, StatusCode)],
) -> Result<()> {
    for (name, tok, path, want) in rows {
        let (s, v) = get(server, *tok, path).await?;
        ensure!(s == *want, "{name}: GET {path} gave {s} (want {want}): {v}");
    }
    Ok(())
}

/// 10 m/s due north towards 52.0/13.0 from `start_m` south, fix `i` at
/// second `i` after `t0`.
fn approach_fix(seq: u64, t0: i64, start_m: f64) -> Value {
    let m = (start_m - 10.0 * seq as f64).max(0.0);
    json!({"seq": seq, "ts": t0 + seq as i64 * 1000, "lat": 52.0 - m / 111_195.0, "lon": 13.0})
}

async fn upload(server: &Server, driver: &str, fixes: Vec<Value>) -> Result<Value> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "phone", "fixes": fixes}))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "ingest {}", r.status());
    Ok(r.json().await?)
}

/// Order `o` picked up by driver `d`, bound for 52.0/13.0 (radius 100 m).
async fn picked_up_towards_52_13(server: &Server, svc: &str, o: &str, d: &str) -> Result<()> {
    let (status, body) = post_event(
        server,
        svc,
        o,
        json!({"event_id": "e1", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0, "radius_m": 100.0}}),
    )
    .await?;
    ensure!(status.is_success(), "picked_up: {status} {body}");
    Ok(())
}

/// The order's timeline entries (up to 500).
async fn timeline(server: &Server, svc: &str, o: &str) -> Result<Vec<Value>> {
    let (_, t) = get(
        server,
        Some(svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    Ok(t["entries"].as_array().context("entries")?.clone())
}

async fn arrival_and_eta_from_uploads(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    // Before assignment the reply lists no order.
    let t0 = now_ms() - 200_000;
    let r = upload(&server, &d, vec![approach_fix(1, t0, 1505.0)]).await?;
    ensure!(r.get("orders").is_none(), "{r}");
    ensure!(
        r["policy"]["mode"] == "unwatched",
        "no order, nobody watching: {r}"
    );
    picked_up_towards_52_13(&server, &svc, &o, &d).await?;
    // 150 s at 10 m/s from 1505 m: inside 100 m at second 141 (95 m).
    let mut arrival_ts = None;
    for batch in 0..15u64 {
        let fixes: Vec<Value> = (2 + batch * 10..2 + (batch + 1) * 10)
            .map(|s| approach_fix(s, t0, 1505.0))
            .collect();
        let r = upload(&server, &d, fixes).await?;
        let orders = r["orders"]
            .as_array()
            .context("active orders in the reply")?;
        ensure!(
            orders.len() == 1 && orders[0]["order_id"] == o.as_str(),
            "{r}"
        );
        ensure!(orders[0]["destination"]["lat"] == 52.0, "{r}");
        // Within 1.5 km of the destination: uploads at the watched rate.
        ensure!(r["policy"]["mode"] == "watched", "{r}");
    }
    let (_, t) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    let entries = t["entries"].as_array().context("entries")?;
    for (i, e) in entries.iter().enumerate() {
        ensure!(e["seq"] == i as u64 + 1, "gap-free: {t}");
        if e["kind"] == "arrival" {
            arrival_ts = e["ts"].as_i64();
        }
    }
    ensure!(
        arrival_ts == Some(t0 + 141_000),
        "arrival at the fix's ts: {t}"
    );
    let etas: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "eta").collect();
    ensure!(!etas.is_empty(), "eta entries: {t}");
    // The first estimate (fix 2 vs fix 1: 10 m/s, 1485 m, 1385 m to the
    // radius, x1.15) is about 159 s.
    let first = etas[0]["eta_s"].as_u64().context("eta_s")?;
    ensure!((150..=170).contains(&first), "first eta {first}: {t}");
    let (_, v) = get(&server, Some(&svc), &format!("/v1/orders/{o}")).await?;
    ensure!(v["eta_s"] == 0, "arrived: {v}");
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e2", "status": "delivered"}),
    )
    .await?;
    let r = upload(&server, &d, vec![approach_fix(200, t0, 1505.0)]).await?;
    ensure!(
        r.get("orders").is_none(),
        "ended orders are not listed: {r}"
    );
    ensure!(
        r["policy"]["mode"] == "unwatched",
        "relaxed after delivery: {r}"
    );
    Ok(())
}

/// Fixes marked `coarse` (reduced accuracy) are stored and served, but a
/// coarse fix at the destination neither arrives nor makes the reply
/// `watched`; the next precise fix there does.
async fn coarse_fixes_never_arrive(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    let t0 = now_ms() - 400_000;
    picked_up_towards_52_13(&server, &svc, &o, &d).await?;
    let far = json!({"seq": 1, "ts": t0, "lat": 51.982, "lon": 13.0});
    let r = upload(&server, &d, vec![far]).await?;
    ensure!(r["policy"]["mode"] == "unwatched", "2 km away: {r}");
    let coarse = json!({"seq": 2, "ts": t0 + 60_000, "lat": 52.0, "lon": 13.0,
        "accuracy_m": 3000.0, "coarse": true});
    let r = upload(&server, &d, vec![coarse]).await?;
    ensure!(
        r["policy"]["mode"] == "unwatched",
        "a coarse fix is not near: {r}"
    );
    let entries = timeline(&server, &svc, &o).await?;
    ensure!(
        !entries.iter().any(|e| e["kind"] == "arrival"),
        "coarse fix arrived: {entries:?}"
    );
    // Stored and served with its mark.
    let (status, trail) = get(
        &server,
        Some(&svc),
        &format!("/v1/drivers/{d}/trail?after_seq=1"),
    )
    .await?;
    ensure!(status == StatusCode::OK, "trail {status}: {trail}");
    ensure!(trail["fixes"][0]["coarse"] == true, "{trail}");
    // 2 km in 300 s: a plausible drive.
    let precise = json!({"seq": 3, "ts": t0 + 300_000, "lat": 52.0, "lon": 13.0,
        "accuracy_m": 8.0});
    let r = upload(&server, &d, vec![precise]).await?;
    ensure!(r["policy"]["mode"] == "watched", "{r}");
    let entries = timeline(&server, &svc, &o).await?;
    let arrival = entries
        .iter()
        .find(|e| e["kind"] == "arrival")
        .context("arrival after the precise fix")?;
    ensure!(arrival["ts"] == t0 + 300_000, "{entries:?}");
    Ok(())
}

/// A webhook receiver failing the first two attempts of every key.
#[derive(Default)]
struct Receiver {
    attempts: HashMap<String, u32>,
    accepted: HashMap<String, Value>,
    bad: u32,
}

const HOOK_SECRET: &str = "hook-secret";

fn signature_ok(header: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut mac = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = v.parse::<i64>().ok(),
            Some(("v1", v)) => mac = Some(v.to_owned()),
            _ => {}
        }
    }
    let (Some(t), Some(mac)) = (t, mac) else {
        return false;
    };
    if (now_ms() / 1000 - t).abs() > 300 {
        return false;
    }
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, HOOK_SECRET.as_bytes());
    let mut msg = format!("{t}.").into_bytes();
    msg.extend_from_slice(body);
    let want: String = ring::hmac::sign(&key, &msg)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    want == mac
}

async fn start_receiver() -> Result<(
    String,
    Arc<Mutex<Receiver>>,
    tokio_util::sync::CancellationToken,
)> {
    use axum::http::HeaderMap;
    let state = Arc::new(Mutex::new(Receiver::default()));
    let st = Arc::clone(&state);
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
        let st = Arc::clone(&st);
        async move {
            let key = headers
                .get("idempotency-key")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            let sig = headers
                .get("waypost-signature")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            let mut r = st.lock().unwrap_or_else(|p| p.into_inner());
            let parsed: Option<Value> = serde_json::from_slice(&body).ok();
            if !signature_ok(sig, &body)
                || parsed.as_ref().and_then(|v| v["id"].as_str()) != Some(key.as_str())
            {
                r.bad += 1;
                return axum::http::StatusCode::BAD_REQUEST;
            }
            let n = r.attempts.entry(key.clone()).or_default();
            *n += 1;
            if *n <= 2 {
                return axum::http::StatusCode::SERVICE_UNAVAILABLE;
            }
            if r.accepted
                .insert(key, parsed.unwrap_or(Value::Null))
                .is_some()
            {
                r.bad += 1000; // a second success for one key
            }
            axum::http::StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let stop = tokio_util::sync::CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    Ok((format!("http://{addr}/hooks"), state, stop))
}

async fn webhooks_reach_a_flaky_receiver_once_per_key(engine: EngineChoice) -> Result<()> {
    let (url, recv, stop) = start_receiver().await?;
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--webhook-url")
            .arg(&url)
            .arg("--webhook-secret")
            .arg(HOOK_SECRET),
    )
    .await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-9"}),
    )
    .await?;
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e2", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0}}),
    )
    .await?;
    let t0 = now_ms() - 100_000;
    upload(
        &server,
        &d,
        (1..=30).map(|s| approach_fix(s, t0, 350.0)).collect(),
    )
    .await?;
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e3", "status": "delivered"}),
    )
    .await?;
    // A resent event is not a new webhook.
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e3", "status": "delivered"}),
    )
    .await?;
    let (_, t) = get(&server, Some(&svc), &format!("/v1/orders/{o}/timeline")).await?;
    let want: Vec<(String, String)> = t["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter(|e| e["kind"] != "eta")
        .map(|e| {
            (
                e["seq"].to_string(),
                e["kind"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    ensure!(want.len() == 4, "3 status entries and 1 arrival: {t}");
    // Plus the driver coming online with its first fix.
    let want = want.len() + 1;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = recv
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .accepted
            .len();
        if n >= want {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "only {n} of {} webhooks arrived: {}",
            want,
            server.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let any duplicate land before checking.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    check_received(&recv.lock().unwrap_or_else(|p| p.into_inner()), &o, want)?;
    let metrics = reqwest::get(server.http("/metrics")).await?.text().await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l.starts_with("waypost_webhook_events_total{")
                && l.contains("outcome=\"delivered\"")
                && l.ends_with(" 5")),
        "delivered metric: {}",
        metrics
            .lines()
            .filter(|l| l.contains("webhook"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    stop.cancel();
    Ok(())
}

/// Every key accepted once, each after two failures, all signed and with
/// the order's data.
fn check_received(r: &Receiver, o: &str, want: usize) -> Result<()> {
    ensure!(r.bad == 0, "bad or twice-accepted deliveries: {}", r.bad);
    ensure!(r.accepted.len() == want, "{:?}", r.accepted.keys());
    let mut kinds: Vec<String> = r
        .accepted
        .values()
        .filter_map(|v| v["type"].as_str().map(String::from))
        .collect();
    kinds.sort();
    ensure!(
        kinds
            == [
                "driver.online",
                "order.arrival",
                "order.status",
                "order.status",
                "order.status"
            ],
        "{kinds:?}"
    );
    for v in r.accepted.values().filter(|v| v["type"] != "driver.online") {
        ensure!(
            v["data"]["order_id"] == o && v["data"]["vendor_id"] == "v-9",
            "{v}"
        );
    }
    for n in r.attempts.values() {
        ensure!(
            *n == 3,
            "two failures then one success per key: {:?}",
            r.attempts
        );
    }
    Ok(())
}

/// Reads frames until none arrives for `quiet`; returns them.
async fn drain(ws: &mut WsClient, quiet: Duration) -> Vec<Value> {
    let mut out = Vec::new();
    while let Ok(v) = ws.next_json(quiet).await {
        out.push(v);
    }
    out
}

/// A buyer follows an order over WebSocket (on Redis through a second
/// server process than the one writing): entries once and in order across
/// a reconnect with `after`, the driver's locations on the order channel
/// while the order is active and none after delivery, and the claim
/// grants neither other orders nor the driver's tracking channel.
async fn order_live_over_websocket(engine: EngineChoice) -> Result<()> {
    let reader = Server::start(engine.clone()).await?;
    let writer_proc;
    let writer = if matches!(engine, EngineChoice::Redis(_)) {
        writer_proc = Server::start(engine.clone()).await?;
        &writer_proc
    } else {
        &reader
    };
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    let ch = format!("order:{o}");
    post_event(
        writer,
        &svc,
        &o,
        json!({"event_id": "e1", "status": "placed"}),
    )
    .await?;
    let buyer = token("buyer", Role::Buyer, &[&ch]);
    let mut ws = WsClient::connect(&reader.ws_url(&buyer)).await?;
    let sub = ws.subscribe(&ch, Some(0)).await?;
    ensure!(sub["recovered"] == true && sub["high_seq"] == 1, "{sub}");
    let mut seen: Vec<u64> = Vec::new();
    let first = ws.next_of_type("order", T).await?;
    ensure!(
        first["channel"] == ch.as_str() && first["entry"]["kind"] == "status",
        "{first}"
    );
    seen.push(first["seq"].as_u64().context("seq")?);
    // Not granted: another order, the courier's tracking channel.
    ws.send_json(&json!({"type": "subscribe", "channel": format!("order:{}", unique("o"))}))
        .await?;
    let e = ws.next_of_type("error", T).await?;
    ensure!(e["code"] == "forbidden", "{e}");
    ws.send_json(&json!({"type": "subscribe", "channel": format!("tracking:{d}")}))
        .await?;
    let e = ws.next_of_type("error", T).await?;
    ensure!(e["code"] == "forbidden", "{e}");

    post_event(
        writer,
        &svc,
        &o,
        json!({"event_id": "e2", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0}}),
    )
    .await?;
    let t0 = now_ms() - 100_000;
    upload(
        writer,
        &d,
        (1..=10).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let frames = drain(&mut ws, Duration::from_millis(800)).await;
    let locations = frames
        .iter()
        .filter(|f| f["type"] == "location" && f["channel"] == ch.as_str())
        .count();
    ensure!(
        locations >= 1,
        "location frames on the order channel while active: {frames:?}"
    );
    seen.extend(
        frames
            .iter()
            .filter(|f| f["type"] == "order")
            .filter_map(|f| f["seq"].as_u64()),
    );
    // Gone for a while: the order moves on; back with `after`.
    drop(ws);
    upload(
        writer,
        &d,
        (11..=40).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let mut ws = WsClient::connect(&reader.ws_url(&buyer)).await?;
    let last = *seen.last().context("seen")?;
    let sub = ws.subscribe(&ch, Some(last)).await?;
    ensure!(sub["recovered"] == true, "{sub}");
    post_event(
        writer,
        &svc,
        &o,
        json!({"event_id": "e3", "status": "delivered"}),
    )
    .await?;
    let mut frames = drain(&mut ws, Duration::from_millis(800)).await;
    // After delivery the driver's fixes reach nobody on this channel.
    upload(
        writer,
        &d,
        (41..=45).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let after_end = drain(&mut ws, Duration::from_millis(800)).await;
    ensure!(
        after_end.iter().all(|f| f["type"] != "location"),
        "location after delivery: {after_end:?}"
    );
    frames.extend(after_end);
    seen.extend(
        frames
            .iter()
            .filter(|f| f["type"] == "order")
            .filter_map(|f| f["seq"].as_u64()),
    );
    let (_, t) = get(
        writer,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    let all: Vec<u64> = t["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        seen == all,
        "every entry once and in order: seen {seen:?}, timeline {all:?}"
    );
    let kinds: Vec<&str> = t["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["kind"].as_str())
        .collect();
    ensure!(
        kinds.contains(&"arrival") && kinds.contains(&"eta"),
        "{kinds:?}"
    );
    let last_order = frames
        .iter()
        .rev()
        .find(|f| f["type"] == "order")
        .context("an order frame")?;
    ensure!(
        last_order["entry"]["status"] == "delivered" && last_order["entry"]["active"] == false,
        "{last_order}"
    );
    Ok(())
}

/// Reads SSE events until none arrives for `quiet`.
async fn sse_drain(sse: &mut SseClient, quiet: Duration) -> Vec<SseEvent> {
    let mut out = Vec::new();
    while let Ok(e) = sse.next_event(quiet).await {
        out.push(e);
    }
    out
}

/// A vendor follows an order over SSE: `order` events with `id:` = seq,
/// resumed with Last-Event-ID after a reconnect (each entry once, in
/// order), `location` events without an id while active, none after the
/// end; the stream is refused without the claim.
async fn order_stream_over_sse(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e1", "status": "placed"}),
    )
    .await?;
    let url = server.http(&format!("/v1/orders/{o}/stream"));
    let vendor = token("v-1", Role::Vendor, &[&format!("order:{o}")]);
    let other = token("v-2", Role::Vendor, &[&format!("order:{}", unique("o"))]);
    ensure!(
        SseClient::connect(&url, &other, None).await.is_err(),
        "another order's claim must not open the stream"
    );
    let mut sse = SseClient::connect(&url, &vendor, Some("0")).await?;
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e2", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0}}),
    )
    .await?;
    let t0 = now_ms() - 100_000;
    upload(
        &server,
        &d,
        (1..=10).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let events = sse_drain(&mut sse, Duration::from_millis(800)).await;
    ensure!(
        events
            .iter()
            .any(|e| e.event == "location" && e.id.is_none()),
        "{events:?}"
    );
    let mut seen: Vec<u64> = events
        .iter()
        .filter(|e| e.event == "order")
        .filter_map(|e| e.id.as_deref()?.parse().ok())
        .collect();
    for e in events.iter().filter(|e| e.event == "order") {
        let v = e.json()?;
        ensure!(
            v["type"] == "order" && v["seq"].as_u64().map(|s| s.to_string()) == e.id,
            "{v}"
        );
    }
    drop(sse);
    upload(
        &server,
        &d,
        (11..=40).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let last = seen.last().context("seen")?.to_string();
    let mut sse = SseClient::connect(&url, &vendor, Some(&last)).await?;
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e3", "status": "delivered"}),
    )
    .await?;
    let mut events = sse_drain(&mut sse, Duration::from_millis(800)).await;
    upload(
        &server,
        &d,
        (41..=45).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let after_end = sse_drain(&mut sse, Duration::from_millis(800)).await;
    ensure!(
        after_end.iter().all(|e| e.event != "location"),
        "location after delivery: {after_end:?}"
    );
    events.extend(after_end);
    seen.extend(
        events
            .iter()
            .filter(|e| e.event == "order")
            .filter_map(|e| e.id.as_deref()?.parse::<u64>().ok()),
    );
    let (_, t) = get(
        &server,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    let all: Vec<u64> = t["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        seen == all,
        "every entry once and in order: seen {seen:?}, timeline {all:?}"
    );
    Ok(())
}

/// A follower's live connection: the buyer's WebSocket or the vendor's SSE
/// stream, read as the same JSON frames.
enum Follower {
    Ws(Box<WsClient>),
    /// With the SSE events that broke the framing rules (checked at the end,
    /// so a bad event is not mistaken for the end of the stream).
    Sse(Box<SseClient>, Vec<String>),
}

impl Follower {
    async fn next(&mut self, within: Duration) -> Result<Value> {
        match self {
            Follower::Ws(ws) => ws.next_json(within).await,
            Follower::Sse(sse, bad) => {
                let e = sse.next_event(within).await?;
                if let Err(why) = check_sse_framing(&e) {
                    bad.push(format!("{why:#}"));
                }
                e.json()
            }
        }
    }

    fn sse(sse: SseClient) -> Self {
        Follower::Sse(Box::new(sse), Vec::new())
    }

    fn framing_ok(&self) -> Result<()> {
        if let Follower::Sse(_, bad) = self {
            ensure!(bad.is_empty(), "SSE framing: {bad:?}");
        }
        Ok(())
    }

    /// Reads frames into `frames` until `done(frames)` holds; fails after `T`.
    async fn until(
        &mut self,
        frames: &mut Vec<Value>,
        what: &str,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<()> {
        let deadline = tokio::time::Instant::now() + T;
        while !done(frames) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let f = self
                .next(left)
                .await
                .with_context(|| format!("waiting for {what}: {frames:?}"))?;
            frames.push(f);
        }
        Ok(())
    }

    /// Reads frames into `frames` until the connection breaks (well before
    /// `T`: it was reset, it did not just go quiet).
    async fn until_broken(&mut self, frames: &mut Vec<Value>) -> Result<()> {
        let start = Instant::now();
        while let Ok(f) = self.next(T).await {
            frames.push(f);
        }
        ensure!(start.elapsed() < T, "the connection was not reset");
        Ok(())
    }

    /// Reads frames into `frames` until none arrives for `quiet`.
    async fn drain(&mut self, frames: &mut Vec<Value>, quiet: Duration) {
        while let Ok(f) = self.next(quiet).await {
            frames.push(f);
        }
    }
}

/// `event:` is the frame's type, `id:` the seq of `order` events, absent
/// on others.
fn check_sse_framing(e: &SseEvent) -> Result<()> {
    let v = e.json()?;
    ensure!(v["type"] == e.event.as_str(), "event name = type: {e:?}");
    if e.event == "order" {
        ensure!(
            v["seq"].as_u64().map(|s| s.to_string()) == e.id,
            "order event id = seq: {e:?}"
        );
    } else {
        ensure!(e.id.is_none(), "only order events carry an id: {e:?}");
    }
    Ok(())
}

/// Order seqs in the frames, in arrival order.
fn order_seqs(frames: &[Value]) -> Vec<u64> {
    frames
        .iter()
        .filter(|f| f["type"] == "order")
        .filter_map(|f| f["seq"].as_u64())
        .collect()
}

fn reached(seq: u64) -> impl Fn(&[Value]) -> bool {
    move |f| order_seqs(f).last().is_some_and(|&s| s >= seq)
}

fn has_location(f: &[Value]) -> bool {
    f.iter().any(|f| f["type"] == "location")
}

/// The whole life of one order as a buyer and a vendor see it at the same
/// time: the buyer over WebSocket on process A, the vendor over SSE on
/// process B (on Redis; one process on the memory engine), events and
/// uploads going alternately to A and B (on Redis one event by `XADD` to
/// the order stream B consumes), each follower's connection reset
/// once (by the fault proxy in front of its server) while the order moves
/// on, then resumed (`after` / `Last-Event-ID`). Each sees every timeline
/// entry once and in order, the driver's locations while the order is
/// active and none after the entry that ends it.
async fn order_followed_by_buyer_and_vendor_on_two_processes(engine: EngineChoice) -> Result<()> {
    // On Redis, B also consumes the order stream: part of the order is
    // driven purely by `XADD`.
    let stream = unique("orders-stream");
    let a = Server::start(engine.clone()).await?;
    let b_proc;
    let mut xadd = None;
    let b = if let EngineChoice::Redis(url) = &engine {
        b_proc = Server::start_with(
            ServerOptions::new(engine.clone())
                .arg("--order-stream")
                .arg(&stream),
        )
        .await?;
        let client = ::redis::Client::open(url.as_str())?;
        xadd = Some(client.get_multiplexed_async_connection().await?);
        &b_proc
    } else {
        &a
    };
    let proxy_a = FaultProxy::start(a.addr).await?;
    let proxy_b = FaultProxy::start(b.addr).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    let ch = format!("order:{o}");
    let event = |id: &str, status: &str| json!({"event_id": id, "status": status});
    let ok = |r: (StatusCode, Value)| {
        ensure!(r.0 == StatusCode::ACCEPTED, "{r:?}");
        Ok(())
    };
    ok(post_event(
        &a,
        &svc,
        &o,
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": ["b-1"]}),
    )
    .await?)?;

    let buyer = token("b-1", Role::Buyer, &[&ch]);
    let buyer_url = format!("ws://{}/v1/ws?token={buyer}", proxy_a.addr());
    let mut ws = WsClient::connect(&buyer_url).await?;
    ws.subscribe(&ch, Some(0)).await?;
    let mut ws = Follower::Ws(Box::new(ws));
    let vendor = token("v-1", Role::Vendor, &[&ch]);
    let sse_url = format!("{}/v1/orders/{o}/stream", proxy_b.url());
    let mut sse = Follower::sse(SseClient::connect(&sse_url, &vendor, Some("0")).await?);
    let mut bf: Vec<Value> = Vec::new();
    let mut vf: Vec<Value> = Vec::new();

    ok(post_event(b, &svc, &o, event("e2", "accepted")).await?)?;
    ok(post_event(&a, &svc, &o, event("e3", "preparing")).await?)?;
    ws.until(&mut bf, "seq 3", reached(3)).await?;
    sse.until(&mut vf, "seq 3", reached(3)).await?;

    // The buyer's network drops; the order moves on without it.
    proxy_a.reset_all();
    ws.until_broken(&mut bf).await?;
    match &mut xadd {
        Some(conn) => {
            let ev = json!({"order_id": o, "event_id": "e4", "status": "ready"});
            let _: String = ::redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("event")
                .arg(ev.to_string())
                .query_async(conn)
                .await?;
            let deadline = Instant::now() + T;
            while get(b, Some(&svc), &format!("/v1/orders/{o}")).await?.1["status"] != "ready" {
                ensure!(Instant::now() < deadline, "XADDed event not applied");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        None => ok(post_event(b, &svc, &o, event("e4", "ready")).await?)?,
    }
    ok(post_event(
        &a,
        &svc,
        &o,
        json!({"event_id": "e5", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0, "radius_m": 100.0}}),
    )
    .await?)?;
    let t0 = now_ms() - 100_000;
    upload(
        b,
        &d,
        (1..=10).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    sse.until(&mut vf, "picked_up and a location", |f| {
        reached(5)(f) && has_location(f)
    })
    .await?;
    let mut ws = WsClient::connect(&buyer_url).await?;
    let after = *order_seqs(&bf).last().context("buyer saw entries")?;
    let sub = ws.subscribe(&ch, Some(after)).await?;
    ensure!(sub["recovered"] == true, "{sub}");
    let mut ws = Follower::Ws(Box::new(ws));
    upload(
        &a,
        &d,
        (11..=20).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    ws.until(&mut bf, "picked_up and a location", |f| {
        reached(5)(f) && has_location(f)
    })
    .await?;

    // Now the vendor's connection is reset; the driver arrives meanwhile.
    proxy_b.reset_all();
    sse.until_broken(&mut vf).await?;
    upload(
        b,
        &d,
        (21..=40).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    let last = order_seqs(&vf)
        .last()
        .context("vendor saw entries")?
        .to_string();
    sse.framing_ok()?;
    let mut sse = Follower::sse(SseClient::connect(&sse_url, &vendor, Some(&last)).await?);
    ok(post_event(&a, &svc, &o, event("e6", "delivered")).await?)?;
    let (_, v) = get(b, Some(&svc), &format!("/v1/orders/{o}")).await?;
    let end = v["seq"].as_u64().context("order seq")?;
    ws.until(&mut bf, "the end", reached(end)).await?;
    sse.until(&mut vf, "the end", reached(end)).await?;
    // After delivery the driver's fixes reach neither follower.
    upload(
        &a,
        &d,
        (41..=45).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    upload(
        b,
        &d,
        (46..=50).map(|s| approach_fix(s, t0, 400.0)).collect(),
    )
    .await?;
    ws.drain(&mut bf, Duration::from_millis(800)).await;
    sse.drain(&mut vf, Duration::from_millis(800)).await;
    sse.framing_ok()?;

    let (_, t) = get(
        &a,
        Some(&svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    let entries = t["entries"].as_array().context("entries")?;
    let all: Vec<u64> = entries.iter().filter_map(|e| e["seq"].as_u64()).collect();
    let statuses: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "status")
        .filter_map(|e| e["status"].as_str())
        .collect();
    ensure!(
        statuses
            == [
                "placed",
                "accepted",
                "preparing",
                "ready",
                "picked_up",
                "delivered"
            ],
        "{t}"
    );
    ensure!(entries.iter().any(|e| e["kind"] == "arrival"), "{t}");
    for (who, frames) in [("buyer", &bf), ("vendor", &vf)] {
        ensure!(
            order_seqs(frames) == all,
            "{who}: every entry once and in order: saw {:?}, timeline {all:?}",
            order_seqs(frames)
        );
        let end_at = frames
            .iter()
            .position(|f| f["type"] == "order" && f["seq"] == end)
            .context("end frame")?;
        ensure!(
            frames[end_at]["entry"]["status"] == "delivered"
                && frames[end_at]["entry"]["active"] == false,
            "{who}: {}",
            frames[end_at]
        );
        ensure!(
            frames[end_at..].iter().all(|f| f["type"] != "location"),
            "{who}: location after delivery: {:?}",
            &frames[end_at..]
        );
        for f in frames.iter().filter(|f| f["type"] == "location") {
            ensure!(
                f["channel"] == ch.as_str() && f["driver_id"] == d.as_str(),
                "{who}: {f}"
            );
        }
    }
    ensure!(
        proxy_a.stats().reset.load(Ordering::Relaxed) >= 1
            && proxy_b.stats().reset.load(Ordering::Relaxed) >= 1,
        "both connections were reset"
    );
    if let Some(conn) = &mut xadd {
        let _: i64 = ::redis::cmd("DEL").arg(&stream).query_async(conn).await?;
    }
    Ok(())
}

/// The driver SDK's cadence near the destination, on the wire: its own
/// watched upload interval (the server hints 5 s watched, 120 s unwatched).
const NEAR_UPLOAD_MS: u64 = 2_000;
/// What a loaded test host may add on top (request, store, the poll).
const SLACK_MS: i64 = 1_000;

/// The `ts` of the order's `arrival` entry, if there is one yet.
async fn arrival_ts(server: &Server, svc: &str, o: &str) -> Result<Option<i64>> {
    let (_, t) = get(
        server,
        Some(svc),
        &format!("/v1/orders/{o}/timeline?limit=500"),
    )
    .await?;
    Ok(t["entries"]
        .as_array()
        .context("entries")?
        .iter()
        .find(|e| e["kind"] == "arrival")
        .and_then(|e| e["ts"].as_i64()))
}

/// The real driver SDK drives towards an order's destination at 25 m/s,
/// one fix every 200 ms with the real time; nobody watches the driver, so
/// only the approach tightens the policy (the server's `watched` hint near
/// the destination). The `arrival` entry must be on the server within one
/// upload interval (+ slack) of recording the first fix inside the radius,
/// with that fix's `ts`. After `delivered` the policy relaxes again: a new
/// fix waits for the unwatched interval.
async fn arrival_within_one_upload_interval(engine: EngineChoice) -> Result<()> {
    use waypost_sdk::env::ManualEnvironment;
    use waypost_sdk::{Driver, DriverConfig, Location, PolicyConfig, RecordOutcome, StaticToken};

    let server = Server::start(engine).await?;
    let svc = service();
    let o = unique("o");
    let d = unique("d");
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e1", "status": "picked_up", "driver_id": d,
        "destination": {"lat": 52.0, "lon": 13.0, "radius_m": 100.0}}),
    )
    .await?;
    let dir = std::env::temp_dir().join(unique("arrival"));
    std::fs::create_dir_all(&dir)?;
    let mut cfg = DriverConfig::new(
        server.http(""),
        &d,
        "phone",
        dir.join("buffer.db").to_string_lossy(),
    );
    let mut p = PolicyConfig::default();
    for m in [&mut p.watched, &mut p.unwatched] {
        m.sample_interval_ms = 0;
        m.distance_base_m = 0.0;
        m.distance_per_mps = 0.0;
        m.distance_max_m = 0.0;
    }
    p.watched.upload_interval_ms = NEAR_UPLOAD_MS;
    p.unwatched.upload_interval_ms = 60_000;
    p.follow_server_hint = true;
    cfg.policy = p;
    let driver = Driver::open(
        cfg,
        Arc::new(StaticToken(token(&d, Role::Driver, &[]))),
        None,
        Arc::new(ManualEnvironment::default()),
    )?;
    driver.start()?;
    // 400 m out: the first upload goes at once and learns of the approach.
    let mut crossing: Option<(i64, Instant)> = None;
    let mut last_ts = 0;
    let mut arrival = None;
    for i in 0..120u32 {
        let m = 402.5 - 5.0 * f64::from(i);
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        let out = driver.record(Location::new(ts, 52.0 - m / 111_195.0, 13.0))?;
        ensure!(
            matches!(out, RecordOutcome::Recorded { .. }),
            "fix {i}: {out:?}"
        );
        if m <= 100.0 && crossing.is_none() {
            crossing = Some((ts, Instant::now()));
        }
        if let Some((_, at)) = crossing {
            if let Some(a) = arrival_ts(&server, &svc, &o).await? {
                arrival = Some((a, at.elapsed()));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (cross_ts, _) = crossing.context("crossed")?;
    let (arrival_ts, delay) = arrival.context("no arrival within 120 fixes of driving")?;
    eprintln!("arrival seen {delay:?} after the crossing fix was recorded");
    ensure!(
        arrival_ts == cross_ts,
        "arrival at the crossing fix's ts ({cross_ts}): {arrival_ts}"
    );
    ensure!(
        delay.as_millis() as i64 <= NEAR_UPLOAD_MS as i64 + SLACK_MS,
        "arrival seen {delay:?} after the crossing: more than one upload interval"
    );

    // Delivered: the next upload's reply relaxes the policy; a fix recorded
    // after that waits for the unwatched interval (120 s).
    post_event(
        &server,
        &svc,
        &o,
        json!({"event_id": "e2", "status": "delivered"}),
    )
    .await?;
    driver.record(Location::new(now_ms().max(last_ts + 1), 52.0, 13.0))?;
    let deadline = Instant::now() + T;
    while driver.stats()?.pending > 0 {
        ensure!(
            Instant::now() < deadline,
            "not uploaded: {:?}",
            driver.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let uploads = driver.stats()?.uploads_ok;
    tokio::time::sleep(Duration::from_millis(200)).await;
    driver.record(Location::new(now_ms(), 52.0, 13.0001))?;
    tokio::time::sleep(Duration::from_millis(NEAR_UPLOAD_MS + 1_000)).await;
    let st = driver.stats()?;
    ensure!(
        st.pending == 1 && st.uploads_ok == uploads,
        "relaxed after delivery: no upload within {} ms: {st:?}",
        NEAR_UPLOAD_MS + 1_000
    );
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// Redis only: the stream intake killed with SIGKILL while it works through
/// the stream loses and duplicates nothing once a second process (short
/// claim timeout) takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_intake_survives_kill_9() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let client = ::redis::Client::open(url.as_str())?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let stream = unique("orders-stream");
    let statuses = [
        "placed",
        "accepted",
        "preparing",
        "ready",
        "picked_up",
        "delivered",
    ];
    let orders: Vec<String> = (0..40).map(|i| format!("{}-{i}", unique("so"))).collect();
    // Written before any Waypost runs: the backend never needs it up.
    let mut written = 0;
    for st in statuses {
        for o in &orders {
            let ev = json!({"order_id": o, "event_id": format!("{o}-{st}"), "status": st});
            let _: String = ::redis::cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("event")
                .arg(ev.to_string())
                .query_async(&mut conn)
                .await?;
            written += 1;
            // Every tenth event is written twice (a backend retry).
            if written % 10 == 0 {
                let _: String = ::redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("event")
                    .arg(ev.to_string())
                    .query_async(&mut conn)
                    .await?;
            }
        }
    }
    let engine = EngineChoice::Redis(url.clone());
    let opts = |e: &EngineChoice| {
        ServerOptions::new(e.clone())
            .arg("--order-stream")
            .arg(&stream)
            .arg("--order-stream-claim-idle")
            .arg("1s")
    };
    let mut first = Server::start_with(opts(&engine)).await?;
    // Kill it as soon as it has made progress but is not done.
    let svc = service();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut pending_at_kill = 0u64;
    loop {
        let (s, _) = get(&first, Some(&svc), &format!("/v1/orders/{}", orders[0])).await?;
        if s == StatusCode::OK {
            let info: ::redis::Value = ::redis::cmd("XPENDING")
                .arg(&stream)
                .arg("waypost")
                .query_async(&mut conn)
                .await?;
            if let ::redis::Value::Array(items) = info {
                if let Some(::redis::Value::Int(n)) = items.first() {
                    pending_at_kill = *n as u64;
                }
            }
            first.kill().await?;
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "first process made no progress: {}",
            first.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Killed in the middle of its work: entries read but not acknowledged.
    ensure!(
        pending_at_kill > 0,
        "the first process had nothing pending when killed"
    );
    let second = Server::start_with(opts(&engine)).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    'wait: loop {
        ensure!(
            Instant::now() < deadline,
            "not every order reached delivered: {}",
            second.log_tail()
        );
        for o in &orders {
            let (_, v) = get(&second, Some(&svc), &format!("/v1/orders/{o}")).await?;
            if v["status"] != "delivered" {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue 'wait;
            }
        }
        break;
    }
    for o in &orders {
        let (_, t) = get(&second, Some(&svc), &format!("/v1/orders/{o}/timeline")).await?;
        let got: Vec<(u64, String)> = t["entries"]
            .as_array()
            .context("entries")?
            .iter()
            .map(|e| {
                (
                    e["seq"].as_u64().unwrap_or(0),
                    e["status"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect();
        let want: Vec<(u64, String)> = statuses
            .iter()
            .enumerate()
            .map(|(i, s)| (i as u64 + 1, s.to_string()))
            .collect();
        ensure!(got == want, "{o}: each event once and in order: {got:?}");
    }
    // Everything acknowledged eventually.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let info: ::redis::Value = ::redis::cmd("XPENDING")
            .arg(&stream)
            .arg("waypost")
            .query_async(&mut conn)
            .await?;
        let pending = match info {
            ::redis::Value::Array(items) => match items.first() {
                Some(::redis::Value::Int(n)) => *n,
                _ => -1,
            },
            _ => -1,
        };
        if pending == 0 {
            break;
        }
        ensure!(Instant::now() < deadline, "{pending} entries still pending");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _: i64 = ::redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await?;
    Ok(())
}
