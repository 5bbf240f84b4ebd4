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

waypost_e2e::on_both_engines!(revocations_and_who_may_call);

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
    let deadline = tokio::time::Instant::now() + T;
    let row = loop {
        let list: Value = reqwest::Client::new()
            .get(b.http("/v1/admin/drivers?online=true"))
            .bearer_auth(service())
            .send()
            .await?
            .json()
            .await?;
        let row = list["drivers"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["driver_id"] == d.as_str()).cloned());
        if let Some(row) = row {
            break row;
        }
        if tokio::time::Instant::now() > deadline {
            bail!("driver {d} not listed on b: {list}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(row["online"], true, "{row}");
    assert_eq!(row["watchers"], 2, "{row}");
    assert_eq!(row["seq"], 1, "{row}");
    assert!(row["age_ms"].as_i64().is_some_and(|a| a < 30_000), "{row}");
    Ok(())
}
