//! End to end SSE and long poll on the real binary, memory engine and real
//! Redis: vendor notification streams (headers, keepalive, ids, replay after
//! Last-Event-ID, authorization, per-vendor cap, metrics), a driver's
//! location stream and long poll, and shutdown with streams open. Plus a
//! stream that survives its server process on Redis.

use std::time::{Duration, Instant};

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::chat::SseClient;
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server, ServerOptions};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    notification_stream_replays_after_last_event_id,
    notification_authorization_and_limits,
    location_stream_and_long_poll,
    shutdown_ends_streams_and_polls,
);

async fn notify(server: &Server, vendor: &str, i: u64) -> Result<(StatusCode, Value)> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/vendors/{vendor}/notifications")))
        .bearer_auth(token("orders", Role::Service, &[]))
        .json(&json!({"event": "new-order", "data": {"order": format!("o-{i}"), "i": i}}))
        .send()
        .await?;
    let status = r.status();
    Ok((status, r.json().await.unwrap_or(Value::Null)))
}

fn stream_url(server: &Server, vendor: &str) -> String {
    server.http(&format!("/v1/vendors/{vendor}/notifications/stream"))
}

async fn metric(server: &Server, line_start: &str) -> Result<Option<f64>> {
    let text = reqwest::get(server.http("/metrics")).await?.text().await?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok()))
}

async fn notification_stream_replays_after_last_event_id(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--sse-keepalive")
            .arg("300ms"),
    )
    .await?;
    let vendor = unique("v");
    let vtok = token(&vendor, Role::Vendor, &[]);
    let mut sse = SseClient::connect(&stream_url(&server, &vendor), &vtok, None).await?;
    let h = &sse.headers;
    assert_eq!(h["content-type"], "text/event-stream");
    assert_eq!(h["cache-control"], "no-cache");
    assert_eq!(h["x-accel-buffering"], "no");
    assert_eq!(
        metric(&server, "waypost_connections{kind=\"sse\"}").await?,
        Some(1.0)
    );

    for i in 1..=3 {
        let (status, body) = notify(&server, &vendor, i).await?;
        assert_eq!(status, StatusCode::ACCEPTED);
        assert_eq!(body["id"], i.to_string());
    }
    for i in 1..=3u64 {
        let ev = sse.next_event(T).await?;
        assert_eq!(ev.event, "new-order");
        assert_eq!(ev.id.as_deref(), Some(i.to_string().as_str()));
        assert_eq!(ev.json()?["i"], i);
    }
    sse.wait_comments(2, Duration::from_secs(3)).await?;
    assert!(
        sse.comments.iter().all(|c| c == "keepalive"),
        "{:?}",
        sse.comments
    );
    assert_eq!(sse.retries.first(), Some(&2000));
    drop(sse);

    // Cut off: what is posted meanwhile comes back after Last-Event-ID.
    for i in 4..=6 {
        notify(&server, &vendor, i).await?;
    }
    let mut sse = SseClient::connect(&stream_url(&server, &vendor), &vtok, Some("3")).await?;
    for i in 4..=6u64 {
        let ev = sse.next_event(T).await?;
        assert_eq!(ev.json()?["i"], i, "replayed in order");
    }
    notify(&server, &vendor, 7).await?;
    assert_eq!(sse.next_event(T).await?.json()?["i"], 7, "then live");

    // Without Last-Event-ID a stream starts with what comes next; the query
    // form works like the header.
    let mut fresh = SseClient::connect(&stream_url(&server, &vendor), &vtok, None).await?;
    let url = format!("{}?last_event_id=6", stream_url(&server, &vendor));
    let mut by_query = SseClient::connect(&url, &vtok, None).await?;
    assert_eq!(by_query.next_event(T).await?.id.as_deref(), Some("7"));
    notify(&server, &vendor, 8).await?;
    assert_eq!(fresh.next_event(T).await?.id.as_deref(), Some("8"));
    assert_eq!(by_query.next_event(T).await?.id.as_deref(), Some("8"));
    Ok(())
}

async fn notification_authorization_and_limits(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--max-sse-per-vendor")
            .arg("2"),
    )
    .await?;
    let vendor = unique("v");
    let url = stream_url(&server, &vendor);
    let status = |tok: String| {
        let url = url.clone();
        async move { Ok::<_, anyhow::Error>(SseClient::request(&url, &tok, None).await?.status()) }
    };
    assert_eq!(
        status(token("b-1", Role::Buyer, &[&format!("chat:{vendor}")])).await?,
        StatusCode::FORBIDDEN,
        "buyers never stream vendor notifications"
    );
    assert_eq!(
        status(token("v-other", Role::Vendor, &[])).await?,
        StatusCode::FORBIDDEN,
        "a vendor streams only its own"
    );
    let r = reqwest::get(&url).await?;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let bad = SseClient::request(&url, &token(&vendor, Role::Vendor, &[]), Some("abc")).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Posting is for the service role only, with a sane event name.
    let post = |tok: String, body: Value| {
        reqwest::Client::new()
            .post(server.http(&format!("/v1/vendors/{vendor}/notifications")))
            .bearer_auth(tok)
            .json(&body)
            .send()
    };
    let ev = json!({"event":"new-order","data":{}});
    let vtok = token(&vendor, Role::Vendor, &[]);
    assert_eq!(
        post(vtok.clone(), ev.clone()).await?.status(),
        StatusCode::FORBIDDEN
    );
    let svc = token("orders", Role::Service, &[]);
    let bad_event = post(svc.clone(), json!({"event":"new order\n","data":{}})).await?;
    assert_eq!(bad_event.status(), StatusCode::BAD_REQUEST);
    let huge = post(svc.clone(), json!({"event":"x","data":"y".repeat(20_000)})).await?;
    assert_eq!(huge.status(), StatusCode::PAYLOAD_TOO_LARGE);

    // At most two streams for this vendor; the service may also stream it.
    let _a = SseClient::connect(&url, &vtok, None).await?;
    let _b = SseClient::connect(&url, &vtok, None).await?;
    let third = SseClient::request(&url, &vtok, None).await?;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    drop(_a);
    // The slot comes back once the stream task notices the client left.
    let deadline = Instant::now() + T;
    loop {
        let r = SseClient::request(&url, &vtok, None).await?;
        if r.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "slot never freed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn post_fix(server: &Server, driver: &str, seq: u64) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id":"dev-1","fixes":[{"seq":seq,"ts":now_ms() - 1000 + seq as i64,"lat":52.5,"lon":13.4}]}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await?);
    Ok(())
}

async fn location_stream_and_long_poll(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let watcher = token("b-1", Role::Buyer, &[&format!("tracking:{driver}")]);
    let stranger = token("b-2", Role::Buyer, &["tracking:someone-else"]);
    let stream = server.http(&format!("/v1/drivers/{driver}/location/stream"));
    let poll = |after: u64, timeout: u64, tok: &str| {
        reqwest::Client::new()
            .get(server.http(&format!(
                "/v1/drivers/{driver}/location/poll?after_seq={after}&timeout_s={timeout}"
            )))
            .bearer_auth(tok.to_owned())
            .send()
    };
    assert_eq!(
        SseClient::request(&stream, &stranger, None).await?.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(poll(0, 1, &stranger).await?.status(), StatusCode::FORBIDDEN);

    post_fix(&server, &driver, 1).await?;
    let mut sse = SseClient::connect(&stream, &watcher, None).await?;
    let first = sse.next_event(T).await?;
    assert_eq!(first.event, "location");
    assert_eq!(first.id.as_deref(), Some("1"), "current position first");
    post_fix(&server, &driver, 2).await?;
    let ev = sse.next_event(T).await?;
    assert_eq!(ev.id.as_deref(), Some("2"));
    assert_eq!(ev.json()?["fix"]["seq"], 2);
    assert_eq!(ev.json()?["driver_id"], driver.as_str());

    // Long poll: at once when something newer exists...
    let r = poll(1, 5, &watcher).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await?["fix"]["seq"], 2);
    // ...204 after the timeout when nothing comes...
    let t0 = Instant::now();
    let r = poll(2, 1, &watcher).await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let waited = t0.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    // ...and the new fix as soon as it is posted while waiting.
    let pending = tokio::spawn(poll(2, 20, &watcher));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        metric(&server, "waypost_connections{kind=\"poll\"}").await?,
        Some(1.0)
    );
    let t0 = Instant::now();
    post_fix(&server, &driver, 3).await?;
    let r = pending.await??;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.json::<Value>().await?["fix"]["seq"], 3);
    assert!(t0.elapsed() < Duration::from_secs(3));
    assert_eq!(sse.next_event(T).await?.id.as_deref(), Some("3"));
    Ok(())
}

async fn shutdown_ends_streams_and_polls(engine: EngineChoice) -> Result<()> {
    let mut server = Server::start(engine).await?;
    let vendor = unique("v");
    let driver = unique("d");
    let mut sse = SseClient::connect(
        &stream_url(&server, &vendor),
        &token(&vendor, Role::Vendor, &[]),
        None,
    )
    .await?;
    let poll = reqwest::Client::new()
        .get(server.http(&format!(
            "/v1/drivers/{driver}/location/poll?after_seq=0&timeout_s=60"
        )))
        .bearer_auth(token(&driver, Role::Driver, &[]))
        .send();
    let pending = tokio::spawn(poll);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    let clean = server.terminate(Duration::from_secs(8)).await?;
    assert!(clean, "server exited cleanly");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    assert!(
        sse.ends_within(Duration::from_secs(2)).await,
        "stream ended"
    );
    let r = pending.await?;
    if let Ok(r) = r {
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }
    Ok(())
}

/// A vendor's stream on process A dies with A; notifications posted through
/// process B meanwhile are replayed when the client reconnects to B with
/// Last-Event-ID (history lives in Redis).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_survives_its_process_on_redis() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let mut a = Server::start(EngineChoice::Redis(url.clone())).await?;
    let b = Server::start(EngineChoice::Redis(url)).await?;
    let vendor = unique("v");
    let vtok = token(&vendor, Role::Vendor, &[]);
    let mut on_a = SseClient::connect(&stream_url(&a, &vendor), &vtok, None).await?;
    let mut on_b = SseClient::connect(&stream_url(&b, &vendor), &vtok, None).await?;
    for i in 1..=3 {
        notify(&b, &vendor, i).await?;
    }
    let mut last = String::new();
    for i in 1..=3u64 {
        let ev = on_a.next_event(T).await?;
        assert_eq!(ev.json()?["i"], i, "published on B, streamed by A");
        last = ev.id.unwrap_or_default();
        assert_eq!(on_b.next_event(T).await?.json()?["i"], i);
    }
    a.kill().await?;
    for i in 4..=6 {
        notify(&b, &vendor, i).await?;
    }
    let mut again = SseClient::connect(&stream_url(&b, &vendor), &vtok, Some(&last)).await?;
    for i in 4..=6u64 {
        assert_eq!(again.next_event(T).await?.json()?["i"], i);
    }
    Ok(())
}
