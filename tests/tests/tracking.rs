//! End to end: the real `waypost` binary, on the memory engine and on real
//! Redis. A driver posts, a watcher receives; resent batches are stored and
//! broadcast once; bad input gets the documented status and a JSON error;
//! WebSocket limits and shutdown use the documented close codes.

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, now_s, shared_redis, token, token_with_exp, unique, Closed, EngineChoice, Server,
    ServerOptions, WsClient,
};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

fn fixes(seqs: std::ops::RangeInclusive<u64>) -> Vec<Value> {
    let now = now_ms();
    seqs.map(|s| json!({"seq": s, "ts": now - 10_000 + s as i64, "lat": 52.52 + s as f64 * 1e-5, "lon": 13.405}))
        .collect()
}

async fn post(
    server: &Server,
    driver: &str,
    tok: &str,
    body: &Value,
) -> Result<(StatusCode, Value)> {
    let resp = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(tok)
        .json(body)
        .send()
        .await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    Ok((status, v))
}

use waypost_e2e::on_both_engines;

on_both_engines!(
    driver_posts_watcher_receives,
    resent_batch_is_stored_and_broadcast_once,
    bad_input_gets_status_and_json_error,
    location_and_trail_reads,
    websocket_errors_and_close_codes,
    connection_cap_per_user,
    connection_cap_per_process,
);

async fn driver_posts_watcher_receives(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let channel = format!("tracking:{driver}");
    let mut watcher =
        WsClient::connect(&server.ws_url(&token("b-1", Role::Buyer, &[&channel]))).await?;
    let sub = watcher.subscribe(&channel, None).await?;
    assert_eq!(sub["recovered"], true);

    let dtok = token(&driver, Role::Driver, &[]);
    let (status, reply) = post(
        &server,
        &driver,
        &dtok,
        &json!({"device_id": "dev-1", "fixes": fixes(1..=3)}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(reply["accepted"], 3);
    assert_eq!(reply["duplicates"], 0);
    assert_eq!(reply["high_seq"], 3);
    assert_eq!(reply["watchers"], 1);
    assert_eq!(reply["policy"]["mode"], "watched");

    let loc = watcher.next_of_type("location", T).await?;
    assert_eq!(loc["channel"], channel.as_str());
    assert_eq!(loc["driver_id"], driver.as_str());
    assert_eq!(
        loc["fix"]["seq"], 3,
        "only the newest fix is broadcast: {loc}"
    );

    // With nobody watching, the hint relaxes.
    drop(watcher);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, reply) = post(
        &server,
        &driver,
        &dtok,
        &json!({"device_id": "dev-1", "fixes": fixes(4..=4)}),
    )
    .await?;
    assert_eq!(reply["watchers"], 0);
    assert_eq!(reply["policy"]["mode"], "unwatched");
    Ok(())
}

async fn resent_batch_is_stored_and_broadcast_once(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let channel = format!("tracking:{driver}");
    let mut watcher =
        WsClient::connect(&server.ws_url(&token("b-2", Role::Buyer, &[&channel]))).await?;
    watcher.subscribe(&channel, None).await?;
    let dtok = token(&driver, Role::Driver, &[]);
    let batch = json!({"device_id": "dev-1", "fixes": fixes(1..=5)});
    let (_, first) = post(&server, &driver, &dtok, &batch).await?;
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(5), Some(0))
    );
    let (status, again) = post(&server, &driver, &dtok, &batch).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(5))
    );
    assert_eq!(again["high_seq"], 5);

    let loc = watcher.next_of_type("location", T).await?;
    assert_eq!(loc["fix"]["seq"], 5);
    // The resend broadcasts nothing.
    let extra = watcher
        .next_of_type("location", Duration::from_millis(700))
        .await;
    assert!(extra.is_err(), "duplicate broadcast: {extra:?}");

    // A partly new batch stores only the new fixes.
    let (_, mixed) = post(
        &server,
        &driver,
        &dtok,
        &json!({"device_id": "dev-1", "fixes": fixes(4..=7)}),
    )
    .await?;
    assert_eq!(
        (mixed["accepted"].as_u64(), mixed["duplicates"].as_u64()),
        (Some(2), Some(2))
    );
    let trail: Value = reqwest::Client::new()
        .get(server.http(&format!("/v1/drivers/{driver}/trail")))
        .bearer_auth(&dtok)
        .send()
        .await?
        .json()
        .await?;
    let seqs: Vec<u64> = trail["fixes"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(seqs, (1..=7).collect::<Vec<_>>());
    Ok(())
}

async fn bad_input_gets_status_and_json_error(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let dtok = token(&driver, Role::Driver, &[]);
    let client = reqwest::Client::new();
    let url = server.http(&format!("/v1/drivers/{driver}/locations"));

    let check = |status: StatusCode, body: &Value, want: StatusCode, code: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    };

    let now = now_ms();
    let bad_lat =
        json!({"device_id": "dev", "fixes": [{"seq": 9, "ts": now, "lat": 91.0, "lon": 1.0}]});
    let (s, b) = post(&server, &driver, &dtok, &bad_lat).await?;
    check(s, &b, StatusCode::BAD_REQUEST, "bad_fix");
    assert_eq!(b["error"]["seq"], 9, "the refused fix is named: {b}");

    let missing = json!({"device_id": "dev", "fixes": [{"seq": 1, "ts": now, "lat": 1.0}]});
    let (s, b) = post(&server, &driver, &dtok, &missing).await?;
    check(s, &b, StatusCode::BAD_REQUEST, "bad_json");

    let resp = client
        .post(&url)
        .bearer_auth(&dtok)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await?;
    let s = resp.status();
    check(s, &resp.json().await?, StatusCode::BAD_REQUEST, "bad_json");

    let big = json!({"device_id": "dev", "fixes": fixes(1..=1001)});
    let (s, b) = post(&server, &driver, &dtok, &big).await?;
    check(s, &b, StatusCode::PAYLOAD_TOO_LARGE, "too_large");

    let huge_body = format!(
        "{{\"device_id\":\"dev\",\"fixes\":[],\"pad\":\"{}\"}}",
        "x".repeat(600 * 1024)
    );
    let resp = client
        .post(&url)
        .bearer_auth(&dtok)
        .header("content-type", "application/json")
        .body(huge_body)
        .send()
        .await?;
    let s = resp.status();
    check(
        s,
        &resp.json().await?,
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
    );

    let unordered =
        json!({"device_id": "dev", "fixes": [fixes(2..=2)[0].clone(), fixes(1..=1)[0].clone()]});
    let (s, b) = post(&server, &driver, &dtok, &unordered).await?;
    check(s, &b, StatusCode::BAD_REQUEST, "bad_fix");

    let good = json!({"device_id": "dev", "fixes": fixes(1..=1)});
    let other = token("someone-else", Role::Driver, &[]);
    let (s, b) = post(&server, &driver, &other, &good).await?;
    check(s, &b, StatusCode::FORBIDDEN, "forbidden");

    let buyer = token("b", Role::Buyer, &[]);
    let (s, b) = post(&server, &driver, &buyer, &good).await?;
    check(s, &b, StatusCode::FORBIDDEN, "forbidden");

    let expired = token_with_exp(&driver, Role::Driver, &[], now_s() - 3600);
    let (s, b) = post(&server, &driver, &expired, &good).await?;
    check(s, &b, StatusCode::UNAUTHORIZED, "unauthorized");

    let resp = client.post(&url).json(&good).send().await?;
    let s = resp.status();
    check(
        s,
        &resp.json().await?,
        StatusCode::UNAUTHORIZED,
        "unauthorized",
    );

    let (s, b) = post(&server, "bad id!", &dtok, &good).await?;
    assert!(
        s == StatusCode::BAD_REQUEST || s == StatusCode::NOT_FOUND,
        "{s} {b}"
    );

    // Nothing above was stored.
    let trail: Value = client
        .get(server.http(&format!("/v1/drivers/{driver}/trail")))
        .bearer_auth(&dtok)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(trail["fixes"], json!([]));
    // And the server still works.
    let (s, b) = post(&server, &driver, &dtok, &good).await?;
    assert_eq!(s, StatusCode::OK, "{b}");
    Ok(())
}

async fn location_and_trail_reads(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let dtok = token(&driver, Role::Driver, &[]);
    let client = reqwest::Client::new();
    let loc_url = server.http(&format!("/v1/drivers/{driver}/location"));
    let resp = client.get(&loc_url).bearer_auth(&dtok).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "not_found");

    post(
        &server,
        &driver,
        &dtok,
        &json!({"device_id": "dev", "fixes": fixes(1..=10)}),
    )
    .await?;
    let buyer = token("b", Role::Buyer, &[&format!("tracking:{driver}")]);
    let v: Value = client
        .get(&loc_url)
        .bearer_auth(&buyer)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["driver_id"], driver.as_str());
    assert_eq!(v["fix"]["seq"], 10);
    assert_eq!(v["online"], true);
    assert!(
        v["age_ms"]
            .as_i64()
            .is_some_and(|a| (0..30_000).contains(&a)),
        "{v}"
    );

    let trail: Value = client
        .get(server.http(&format!("/v1/drivers/{driver}/trail?after_seq=7&limit=2")))
        .bearer_auth(&buyer)
        .send()
        .await?
        .json()
        .await?;
    let seqs: Vec<u64> = trail["fixes"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(seqs, vec![8, 9]);

    // A buyer without the channel in its token is refused.
    let stranger = token("b2", Role::Buyer, &["tracking:someone-else"]);
    let resp = client.get(&loc_url).bearer_auth(&stranger).send().await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Malformed or out of the documented range (1..=1000): refused, not clamped.
    for query in ["after_seq=x", "limit=0", "limit=1001"] {
        let resp = client
            .get(server.http(&format!("/v1/drivers/{driver}/trail?{query}")))
            .bearer_auth(&dtok)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{query}");
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "bad_query", "{query}");
    }
    Ok(())
}

async fn websocket_errors_and_close_codes(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    // Bad token: told why, closed with 4001.
    let mut ws = WsClient::connect(&server.ws_url("not-a-jwt")).await?;
    let err = ws.next_json(T).await?;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "unauthorized");
    assert!(matches!(ws.closed(T).await?, Closed::Code(4001, _)));

    let tok = token("b-9", Role::Buyer, &["tracking:allowed"]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    ws.send_json(&json!({"type": "ping", "id": 42})).await?;
    let pong = ws.next_json(T).await?;
    assert_eq!(pong, json!({"type": "pong", "id": 42}));

    ws.send_json(&json!({"type": "subscribe", "channel": "tracking:not-mine"}))
        .await?;
    let err = ws.next_json(T).await?;
    assert_eq!(err["type"], "error");
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["ref"], "tracking:not-mine");

    ws.send_json(&json!({"type": "subscribe", "channel": "weird:x"}))
        .await?;
    assert_eq!(ws.next_json(T).await?["code"], "bad_channel");

    ws.send_json(&json!({"type": "no-such-type"})).await?;
    assert_eq!(ws.next_json(T).await?["code"], "bad_frame");
    // Still usable after a refused frame.
    ws.subscribe("tracking:allowed", None).await?;

    ws.send_raw(tokio_tungstenite::tungstenite::Message::Text(
        "{garbage".into(),
    ))
    .await?;
    assert_eq!(ws.next_json(T).await?["code"], "bad_frame");
    assert!(matches!(ws.closed(T).await?, Closed::Code(4008, _)));

    // Oversized frame (limit 64 KiB): closed with 4008, not a hang.
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    let big = json!({"type": "ping", "id": "x".repeat(100 * 1024)});
    let _ = ws.send_json(&big).await;
    let closed = ws.closed(T).await?;
    assert!(
        matches!(closed, Closed::Code(4008, _) | Closed::NoFrame),
        "{closed:?}"
    );
    Ok(())
}

async fn connection_cap_per_user(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--max-connections-per-user")
            .arg("2"),
    )
    .await?;
    let tok = token("same-user", Role::Buyer, &[]);
    let mut a = WsClient::connect(&server.ws_url(&tok)).await?;
    let _b = WsClient::connect(&server.ws_url(&tok)).await?;
    a.send_json(&json!({"type":"ping"})).await?;
    a.next_of_type("pong", T).await?;
    let mut c = WsClient::connect(&server.ws_url(&tok)).await?;
    assert_eq!(c.next_json(T).await?["code"], "too_many_connections");
    assert!(matches!(c.closed(T).await?, Closed::Code(4029, _)));
    // Another user is not affected.
    let mut other =
        WsClient::connect(&server.ws_url(&token("other-user", Role::Buyer, &[]))).await?;
    other.send_json(&json!({"type":"ping","id":1})).await?;
    assert_eq!(other.next_json(T).await?["type"], "pong");
    // A slot frees up when a connection closes.
    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = WsClient::connect(&server.ws_url(&tok)).await?;
    d.send_json(&json!({"type":"ping","id":2})).await?;
    assert_eq!(d.next_json(T).await?["type"], "pong");
    Ok(())
}

/// `--max-connections` counts WebSockets, SSE streams and long polls of all
/// users: the next WebSocket is told `overloaded` and closed with 4102 (come
/// back with backoff), the next stream gets 503 with `Retry-After`; a slot
/// frees when a connection ends.
async fn connection_cap_per_process(engine: EngineChoice) -> Result<()> {
    let server =
        Server::start_with(ServerOptions::new(engine).arg("--max-connections").arg("2")).await?;
    let driver = unique("d");
    let channel = format!("tracking:{driver}");
    let ws_of = |user: &str| server.ws_url(&token(user, Role::Buyer, &[&channel]));
    let mut a = WsClient::connect(&ws_of("cap-a")).await?;
    let mut b = WsClient::connect(&ws_of("cap-b")).await?;
    for (ws, id) in [(&mut a, 1), (&mut b, 2)] {
        ws.send_json(&json!({"type":"ping","id":id})).await?;
        ws.next_of_type("pong", T).await?;
    }
    let mut c = WsClient::connect(&ws_of("cap-c")).await?;
    assert_eq!(c.next_json(T).await?["code"], "overloaded");
    assert!(matches!(c.closed(T).await?, Closed::Code(4102, _)));

    let stream = server.http(&format!("/v1/drivers/{driver}/location/stream"));
    let refused = reqwest::Client::new()
        .get(&stream)
        .bearer_auth(token("cap-d", Role::Buyer, &[&channel]))
        .send()
        .await?;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "5");
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "overloaded");

    drop(a);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut d = WsClient::connect(&ws_of("cap-d")).await?;
    d.send_json(&json!({"type":"ping","id":3})).await?;
    assert_eq!(d.next_json(T).await?["type"], "pong");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_with_4100_and_exits() -> Result<()> {
    let mut server = Server::start(EngineChoice::Memory).await?;
    let mut ws = WsClient::connect(&server.ws_url(&token("b", Role::Buyer, &[]))).await?;
    ws.send_json(&json!({"type":"ping"})).await?;
    ws.next_of_type("pong", T).await?;
    let closed = tokio::spawn(async move { ws.closed(Duration::from_secs(15)).await });
    let exited = server.terminate(Duration::from_secs(15)).await?;
    assert!(exited, "server did not exit cleanly after SIGTERM");
    assert!(matches!(closed.await??, Closed::Code(4100, _)));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_redis_fan_out() -> Result<()> {
    let Some((url, _guard)) = shared_redis().await else {
        return Ok(());
    };
    let a = Server::start(EngineChoice::Redis(url.clone())).await?;
    let b = Server::start(EngineChoice::Redis(url)).await?;
    let driver = unique("d");
    let channel = format!("tracking:{driver}");
    let tok = token("b-1", Role::Buyer, &[&channel]);
    let mut on_a = WsClient::connect(&a.ws_url(&tok)).await?;
    on_a.subscribe(&channel, None).await?;
    let mut on_b = WsClient::connect(&b.ws_url(&tok)).await?;
    on_b.subscribe(&channel, None).await?;

    let dtok = token(&driver, Role::Driver, &[]);
    let (status, reply) = post(
        &b,
        &driver,
        &dtok,
        &json!({"device_id": "dev", "fixes": fixes(1..=1)}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{reply}");
    assert_eq!(
        reply["watchers"], 2,
        "watchers are counted across processes: {reply}"
    );
    assert_eq!(on_a.next_of_type("location", T).await?["fix"]["seq"], 1);
    assert_eq!(on_b.next_of_type("location", T).await?["fix"]["seq"], 1);

    // And the other way round; reads see the same state on both.
    post(
        &a,
        &driver,
        &dtok,
        &json!({"device_id": "dev", "fixes": fixes(2..=2)}),
    )
    .await?;
    assert_eq!(on_a.next_of_type("location", T).await?["fix"]["seq"], 2);
    assert_eq!(on_b.next_of_type("location", T).await?["fix"]["seq"], 2);
    let v: Value = reqwest::Client::new()
        .get(b.http(&format!("/v1/drivers/{driver}/location")))
        .bearer_auth(&dtok)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(v["fix"]["seq"], 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_ready_metrics() -> Result<()> {
    let server = Server::start(EngineChoice::Memory).await?;
    let c = reqwest::Client::new();
    assert_eq!(
        c.get(server.http("/healthz")).send().await?.status(),
        StatusCode::OK
    );
    let ready: Value = c.get(server.http("/readyz")).send().await?.json().await?;
    assert_eq!(ready["ok"], true);
    let driver = unique("d");
    post(
        &server,
        &driver,
        &token(&driver, Role::Driver, &[]),
        &json!({"device_id": "dev", "fixes": fixes(1..=3)}),
    )
    .await?;
    let text = c.get(server.http("/metrics")).send().await?.text().await?;
    assert!(text.contains("waypost_fixes_ingested_total 3"), "{text}");
    let resp = c.get(server.http("/nope")).send().await?;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "not_found");
    Ok(())
}
