//! The operator API end to end: revocations (user and jti) enforced on
//! every process within a second, also by a process started later;
//! disconnects; channel inspection across processes; and who may call it.

use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, shared_redis, token, token_issued, unique, EngineChoice, Server, WsClient,
};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

fn service() -> String {
    token("ops", Role::Service, &[])
}

async fn admin(server: &Server, path: &str, body: Value) -> Result<(StatusCode, Value)> {
    let resp = reqwest::Client::new()
        .post(server.http(path))
        .bearer_auth(service())
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// Status of a driver's `GET …/location` with `tok`.
async fn read_status(server: &Server, driver: &str, tok: &str) -> Result<StatusCode> {
    Ok(reqwest::Client::new()
        .get(server.http(&format!("/v1/drivers/{driver}/location")))
        .bearer_auth(tok)
        .send()
        .await?
        .status())
}

async fn seed(server: &Server, driver: &str) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "seed", "fixes": [{"seq": 1, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await?;
    if r.status() != StatusCode::OK {
        bail!("seed: {}", r.status());
    }
    Ok(())
}

/// Polls until `read_status` gives `want` (at most `within`); returns how long it took.
async fn until_status(
    server: &Server,
    driver: &str,
    tok: &str,
    want: StatusCode,
    within: Duration,
) -> Result<Duration> {
    let t0 = tokio::time::Instant::now();
    loop {
        let got = read_status(server, driver, tok).await?;
        if got == want {
            return Ok(t0.elapsed());
        }
        if t0.elapsed() > within {
            bail!("still {got} after {within:?}, expected {want}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

waypost_e2e::on_both_engines!(
    revocations_and_who_may_call,
    stats_and_user_lookup,
    active_orders
);

async fn revocations_and_who_may_call(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-adm");
    seed(&server, &d).await?;
    let ch = format!("tracking:{d}");
    let user = unique("b-adm");
    let old = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let jti = unique("jti");
    let other_user = unique("b-adm2");
    let by_jti = token_issued(&other_user, Role::Buyer, &[&ch], 600, &jti);
    let sibling = token_issued(&other_user, Role::Buyer, &[&ch], 600, &unique("j"));
    for t in [&old, &by_jti, &sibling] {
        assert_eq!(read_status(&server, &d, t).await?, StatusCode::OK);
    }

    // Only role service; bodies are checked.
    let buyer_call = reqwest::Client::new()
        .post(server.http("/v1/admin/revocations"))
        .bearer_auth(&old)
        .json(&json!({"user": user}))
        .send()
        .await?;
    assert_eq!(buyer_call.status(), StatusCode::FORBIDDEN);
    for bad in [
        json!({}),
        json!({"user": user, "jti": jti}),
        json!({"user": "not an id"}),
        json!({"user": user, "ttl_s": 0}),
        json!({"user": user, "ttl_s": 99_999_999}),
        json!({"user": user, "extra": 1}),
        json!({"jti": "x", "user": null}),
    ] {
        let (status, body) = admin(&server, "/v1/admin/revocations", bad.clone()).await?;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} -> {body}");
    }
    assert_eq!(read_status(&server, &d, &old).await?, StatusCode::OK);

    // A user: its earlier tokens are refused; one issued later works.
    let (status, body) = admin(
        &server,
        "/v1/admin/revocations",
        json!({"user": user, "ttl_s": 120}),
    )
    .await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"], user.as_str());
    assert_eq!(
        body["until_s"]
            .as_u64()
            .zip(body["before_s"].as_u64())
            .map(|(u, b)| u - b),
        Some(120)
    );
    let resp = reqwest::Client::new()
        .get(server.http(&format!("/v1/drivers/{d}/location")))
        .bearer_auth(&old)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "unauthorized");
    // iat is in seconds: a token issued in the revocation's second counts
    // as before it; one from the next second works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let fresh = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    assert_eq!(read_status(&server, &d, &fresh).await?, StatusCode::OK);
    // The WebSocket upgrade refuses the revoked token too.
    let mut ws = WsClient::connect(&server.ws_url(&old)).await?;
    let first = ws.next_json(T).await?;
    assert_eq!(first["code"], "unauthorized", "{first}");

    // A jti: that token only.
    let (status, _) = admin(&server, "/v1/admin/revocations", json!({"jti": jti})).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        read_status(&server, &d, &by_jti).await?,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(read_status(&server, &d, &sibling).await?, StatusCode::OK);

    // Inspection and disconnect answer with their documented shapes.
    let mut watcher = WsClient::connect(&server.ws_url(&sibling)).await?;
    watcher.subscribe(&ch, None).await?;
    let info: Value = reqwest::Client::new()
        .get(server.http(&format!("/v1/admin/channels/{ch}")))
        .bearer_auth(service())
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        info,
        json!({"channel": ch, "subscribers": 1, "presence": []})
    );
    let (status, body) = admin(
        &server,
        "/v1/admin/disconnect",
        json!({"user": other_user, "reconnect": true}),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(body, json!({"user": other_user, "reconnect": true}));
    Ok(())
}

/// Two processes on one Redis: a revocation posted to one is enforced by
/// the other within a second, and by a process started afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_process() -> Result<()> {
    let Some((url, _guard)) = shared_redis().await else {
        return Ok(());
    };
    let a = Server::start(EngineChoice::Redis(url.clone())).await?;
    let b = Server::start(EngineChoice::Redis(url.clone())).await?;
    let d = unique("d-adm");
    seed(&a, &d).await?;
    let ch = format!("tracking:{d}");
    let user = unique("b-adm");
    let tok = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let jti = unique("jti");
    let by_jti = token_issued(&unique("b-adm"), Role::Buyer, &[&ch], 600, &jti);
    assert_eq!(read_status(&b, &d, &tok).await?, StatusCode::OK);
    assert_eq!(read_status(&b, &d, &by_jti).await?, StatusCode::OK);

    let (status, _) = admin(&a, "/v1/admin/revocations", json!({"user": user})).await?;
    assert_eq!(status, StatusCode::OK);
    let took = until_status(&b, &d, &tok, StatusCode::UNAUTHORIZED, T).await?;
    assert!(took < Duration::from_secs(1), "process b took {took:?}");
    let (status, _) = admin(&b, "/v1/admin/revocations", json!({"jti": jti})).await?;
    assert_eq!(status, StatusCode::OK);
    let took = until_status(&a, &d, &by_jti, StatusCode::UNAUTHORIZED, T).await?;
    assert!(took < Duration::from_secs(1), "process a took {took:?}");

    // Started after both: loads them from Redis.
    let c = Server::start(EngineChoice::Redis(url)).await?;
    until_status(&c, &d, &tok, StatusCode::UNAUTHORIZED, T).await?;
    assert_eq!(
        read_status(&c, &d, &by_jti).await?,
        StatusCode::UNAUTHORIZED
    );

    // Subscribers are counted across processes.
    let viewer = token_issued(&unique("b-view"), Role::Buyer, &[&ch], 600, &unique("j"));
    let mut on_a = WsClient::connect(&a.ws_url(&viewer)).await?;
    on_a.subscribe(&ch, None).await?;
    let mut on_b = WsClient::connect(&b.ws_url(&viewer)).await?;
    on_b.subscribe(&ch, None).await?;
    let info: Value = reqwest::Client::new()
        .get(c.http(&format!("/v1/admin/channels/{ch}")))
        .bearer_auth(service())
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(info["subscribers"], 2, "{info}");

    // A driver that posted to a is listed by b, with its watchers.
    let row_of = |list: &Value| {
        list["drivers"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["driver_id"] == d.as_str()).cloned())
    };
    let list = until_json(&b, "/v1/admin/drivers?online=true", |l| row_of(l).is_some()).await?;
    let row = row_of(&list).unwrap_or_default();
    assert_eq!(row["online"], true, "{row}");
    assert_eq!(row["watchers"], 2, "{row}");
    assert_eq!(row["seq"], 1, "{row}");
    assert!(row["age_ms"].as_i64().is_some_and(|a| a < 30_000), "{row}");
    Ok(())
}

/// GETs `path` with a service token every 50 ms until `done` holds for
/// the 200 answer (at most [`T`]); returns that answer.
async fn until_json(server: &Server, path: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let (status, body) = get_json(server, path, &service()).await?;
        if status == StatusCode::OK && done(&body) {
            return Ok(body);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("GET {path}: still {status} {body} after {T:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_json(server: &Server, path: &str, tok: &str) -> Result<(StatusCode, Value)> {
    let resp = reqwest::Client::new()
        .get(server.http(path))
        .bearer_auth(tok)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// `GET /v1/admin/stats` and `GET /v1/admin/users/{user}` on one process:
/// the shapes, the figures of what happened, who may call them.
async fn stats_and_user_lookup(engine: EngineChoice) -> Result<()> {
    let redis = matches!(engine, EngineChoice::Redis(_));
    let server = Server::start(engine).await?;
    let d = unique("d-st");
    let ch = format!("tracking:{d}");
    let user = unique("b-st");
    let tok = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    ws.subscribe(&ch, None).await?;
    seed(&server, &d).await?;
    ws.location_at_least(1, T).await?;

    let (status, st) = get_json(&server, "/v1/admin/stats", &service()).await?;
    assert_eq!(status, StatusCode::OK, "{st}");
    assert_eq!(st["engine"], if redis { "redis" } else { "memory" });
    let procs = st["processes"].as_array().cloned().unwrap_or_default();
    assert!(!procs.is_empty(), "{st}");
    let totals = &st["totals"];
    if redis {
        // Other processes on the shared Redis may add to the sums.
        assert!(totals["fixes_ingested"].as_u64() >= Some(1), "{st}");
        assert!(totals["connections"]["ws"].as_i64() >= Some(1), "{st}");
    } else {
        assert_eq!(procs.len(), 1, "{st}");
        assert_eq!(procs[0]["age_ms"], 0, "{st}");
        assert_eq!(totals["fixes_ingested"], 1, "{st}");
        assert_eq!(totals["connections"]["ws"], 1, "{st}");
        assert_eq!(totals["subscriptions"], 1, "{st}");
        assert!(totals["deliveries"].as_u64() >= Some(1), "{st}");
        assert!(totals["delivery_latency_count"].as_u64() >= Some(1), "{st}");
    }
    let buckets = st["delivery_latency_buckets"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(buckets.len() >= 10, "{st}");
    let les: Vec<f64> = buckets.iter().filter_map(|b| b["le"].as_f64()).collect();
    assert!(
        les.windows(2).all(|w| w[0] < w[1]),
        "sorted bounds: {les:?}"
    );
    let counts: Vec<u64> = buckets.iter().filter_map(|b| b["count"].as_u64()).collect();
    assert!(
        counts.windows(2).all(|w| w[0] <= w[1]),
        "cumulative: {counts:?}"
    );
    assert!(counts.last() <= totals["delivery_latency_count"].as_u64().as_ref());

    // The user's one WebSocket, with its subscription.
    let path = format!("/v1/admin/users/{user}");
    let (status, info) = get_json(&server, &path, &service()).await?;
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["user"], user.as_str());
    assert!(info["answered"].as_u64() >= Some(1), "{info}");
    let conns = info["connections"].as_array().cloned().unwrap_or_default();
    assert_eq!(conns.len(), 1, "{info}");
    assert_eq!(conns[0]["transport"], "ws");
    assert_eq!(conns[0]["subscriptions"], json!([ch]));
    assert!(
        conns[0]["since_ms"].as_i64().is_some_and(|t| t <= now_ms()),
        "{info}"
    );
    assert!(info.get("revoked_until_s").is_none(), "{info}");
    if !redis {
        assert_eq!(info["processes"], 1, "{info}");
        assert_eq!(info["answered"], 1, "{info}");
        assert!(procs[0]["process"] == conns[0]["process"], "{st} {info}");
    }

    // Nobody else's connections; bad ids; role service only.
    let (status, none) = get_json(
        &server,
        &format!("/v1/admin/users/{}", unique("b-no")),
        &service(),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(none["connections"], json!([]));
    let (status, _) = get_json(&server, "/v1/admin/users/not%20an%20id", &service()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    for p in [path.as_str(), "/v1/admin/stats"] {
        let (status, _) = get_json(&server, p, &tok).await?;
        assert_eq!(status, StatusCode::FORBIDDEN, "{p}");
        let status = reqwest::Client::new()
            .get(server.http(p))
            .send()
            .await?
            .status();
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{p}");
    }

    // After a revocation: the connection is gone and the lookup says so.
    let (status, _) = admin(&server, "/v1/admin/revocations", json!({"user": user})).await?;
    assert_eq!(status, StatusCode::OK);
    ws.closed(T).await?;
    let info = until_json(&server, &path, |i| i["connections"] == json!([])).await?;
    assert!(info["revoked_until_s"].as_u64() > Some(0), "{info}");
    Ok(())
}

/// Two processes on one Redis: a user lookup on either finds the user's
/// connections on both, and the stats of one count the other's figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_and_stats_span_processes() -> Result<()> {
    let Some((url, _guard)) = shared_redis().await else {
        return Ok(());
    };
    let a = Server::start(EngineChoice::Redis(url.clone())).await?;
    let b = Server::start(EngineChoice::Redis(url)).await?;
    let d = unique("d-span");
    let ch = format!("tracking:{d}");
    let user = unique("b-span");
    let tok = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let mut on_a = WsClient::connect(&a.ws_url(&tok)).await?;
    on_a.subscribe(&ch, None).await?;
    let mut on_b = WsClient::connect(&b.ws_url(&tok)).await?;
    on_b.subscribe(&ch, None).await?;

    // Asked on b: both connections, from two processes.
    let path = format!("/v1/admin/users/{user}");
    let info = until_json(&b, &path, |i| {
        i["connections"].as_array().map(Vec::len) == Some(2)
    })
    .await?;
    let conns = info["connections"].as_array().cloned().unwrap_or_default();
    let procs: std::collections::BTreeSet<String> = conns
        .iter()
        .filter_map(|c| c["process"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(procs.len(), 2, "{info}");
    assert!(info["answered"].as_u64() >= Some(2), "{info}");
    for c in &conns {
        assert_eq!(c["transport"], "ws", "{info}");
        assert_eq!(c["subscriptions"], json!([ch]), "{info}");
    }

    // Fixes posted to a only show in b's stats, which list both processes.
    let before = get_json(&b, "/v1/admin/stats", &service()).await?.1["totals"]["fixes_ingested"]
        .as_u64()
        .unwrap_or(0);
    let n = 5u64;
    for seq in 1..=n {
        let r = reqwest::Client::new()
            .post(a.http(&format!("/v1/drivers/{d}/locations")))
            .bearer_auth(token(&d, Role::Driver, &[]))
            .json(&json!({"device_id": "x", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::OK);
    }
    let st = until_json(&b, "/v1/admin/stats", |st| {
        let listed: Vec<&str> = st["processes"]
            .as_array()
            .map(|p| p.iter().filter_map(|p| p["process"].as_str()).collect())
            .unwrap_or_default();
        let fixes = st["totals"]["fixes_ingested"].as_u64().unwrap_or(0);
        procs.iter().all(|p| listed.contains(&p.as_str())) && fixes >= before + n
    })
    .await?;
    assert!(
        st["totals"]["connections"]["ws"].as_i64() >= Some(2),
        "{st}"
    );

    // A disconnect from a closes the one on b too (4103), and b's lookup
    // then finds nothing.
    let (status, _) = admin(
        &a,
        "/v1/admin/disconnect",
        json!({"user": user, "reconnect": true}),
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    for ws in [&mut on_a, &mut on_b] {
        match ws.closed(T).await? {
            waypost_e2e::Closed::Code(code, _) => assert_eq!(code, 4103),
            other => bail!("closed without a code: {other:?}"),
        }
    }
    until_json(&b, &path, |i| i["connections"] == json!([])).await?;
    Ok(())
}

async fn order_event(server: &Server, order: &str, body: Value) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(service())
        .json(&body)
        .send()
        .await?;
    if r.status() != StatusCode::ACCEPTED {
        bail!("order event: {} {}", r.status(), r.text().await?);
    }
    Ok(())
}

/// `GET /v1/admin/orders?active=true`: an online driver's active order
/// with its destination; not once it ended, nor a driver's who is offline.
async fn active_orders(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-ord");
    let idle = unique("d-idle");
    let order = unique("o-adm");
    let other = unique("o-idle");
    seed(&server, &d).await?;
    order_event(
        &server,
        &order,
        json!({"event_id": "e1", "status": "picked_up", "driver_id": d,
               "destination": {"lat": 52.51, "lon": 13.45}}),
    )
    .await?;
    // Assigned to a driver that never posted: not online, not listed.
    order_event(
        &server,
        &other,
        json!({"event_id": "e1", "status": "accepted", "driver_id": idle}),
    )
    .await?;
    let find = |list: &Value, id: &str| {
        list["orders"]
            .as_array()
            .and_then(|a| a.iter().find(|o| o["order_id"] == id).cloned())
    };
    let list = until_json(&server, "/v1/admin/orders?active=true", |l| {
        find(l, &order).is_some()
    })
    .await?;
    let row = find(&list, &order).unwrap_or_default();
    assert_eq!(row["status"], "picked_up", "{row}");
    assert_eq!(row["driver_id"], d.as_str(), "{row}");
    assert_eq!(row["destination"]["lat"], 52.51, "{row}");
    assert_eq!(list["truncated"], false, "{list}");
    assert!(find(&list, &other).is_none(), "{list}");

    let (status, _) = get_json(&server, "/v1/admin/orders?active=false", &service()).await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let buyer = token(&unique("b-ord"), Role::Buyer, &[]);
    let (status, _) = get_json(&server, "/v1/admin/orders", &buyer).await?;
    assert_eq!(status, StatusCode::FORBIDDEN);

    order_event(
        &server,
        &order,
        json!({"event_id": "e2", "status": "delivered"}),
    )
    .await?;
    until_json(&server, "/v1/admin/orders", |l| find(l, &order).is_none()).await?;
    Ok(())
}
