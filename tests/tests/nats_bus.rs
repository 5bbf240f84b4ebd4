//! NATS as the bus, end to end: two server processes started with
//! `--bus nats` on one `nats-server` (started here on a free port, like
//! Redis) with their stores on one Redis.
//!
//! 1. Across processes: a fix posted to A reaches a buyer's WebSocket on B;
//!    a chat message sent on B reaches a participant on A; the ingest
//!    answer counts watchers of both processes.
//! 2. nats-server killed under traffic (a fix every 50 ms to A, chat sent
//!    on A), then started again on the same port, after which *nothing more
//!    is sent*. Checked: `/readyz` is 503 while NATS is down and 200 after;
//!    the buyer's same WebSocket on B receives the last acknowledged fix and
//!    the last acknowledged message (the re-dispatch after the resubscribe,
//!    no "one more update"); a fix posted afterwards arrives live on the same
//!    socket; the trail holds every acknowledged fix.
//!
//! Skipped (with a message) when redis-server or nats-server cannot run.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, token, unique, EngineChoice, NatsServer, RedisServer, Server, ServerOptions, WsClient,
};
use waypost_protocol::{Role, TrailResponse};

/// From nats-server being back to the tail on the same socket.
const TAIL_WITHIN: Duration = Duration::from_secs(10);

async fn servers(redis: &RedisServer, nats: &NatsServer) -> Result<(Server, Server)> {
    let opts = || {
        ServerOptions::new(EngineChoice::Redis(redis.url()))
            .arg("--bus")
            .arg("nats")
            .arg("--nats-url")
            .arg(nats.url())
    };
    Ok((
        Server::start_with(opts()).await?,
        Server::start_with(opts()).await?,
    ))
}

async fn setup() -> Option<(RedisServer, NatsServer)> {
    let redis = match RedisServer::start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIP nats bus: {e:#}");
            return None;
        }
    };
    match NatsServer::start().await {
        Ok(n) => Some((redis, n)),
        Err(e) => {
            eprintln!("SKIP nats bus: {e:#} (scripts/test installs nats-server)");
            None
        }
    }
}

async fn readyz(server: &Server) -> Option<StatusCode> {
    let r = reqwest::Client::new()
        .get(server.http("/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some(r.status())
}

async fn wait_ready(server: &Server, want: StatusCode, within: Duration) -> Result<()> {
    let t0 = Instant::now();
    while readyz(server).await != Some(want) {
        ensure!(
            t0.elapsed() < within,
            "/readyz not {want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Posts one fix; its ingest answer when acknowledged.
async fn post_fix(
    client: &reqwest::Client,
    server: &Server,
    driver: &str,
    seq: u64,
) -> Result<Option<Value>> {
    let r = client
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "dev", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await;
    match r {
        Ok(r) if r.status() == StatusCode::OK => Ok(Some(r.json().await?)),
        Ok(r) if r.status() == StatusCode::SERVICE_UNAVAILABLE => Ok(None),
        Ok(r) => bail!("unexpected ingest answer {}", r.status()),
        Err(_) => Ok(None),
    }
}

/// Reads `ws` until it saw a location with seq >= `fix` (if any) and a
/// message in `room` with seq >= `msg` (if any); returns the highest seen.
async fn until_seen(
    ws: &mut WsClient,
    room: &str,
    fix: Option<u64>,
    msg: Option<u64>,
    within: Duration,
) -> Result<(u64, u64)> {
    let deadline = Instant::now() + within;
    let (mut f, mut m) = (0u64, 0u64);
    while fix.is_some_and(|want| f < want) || msg.is_some_and(|want| m < want) {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = ws
            .next_json(left)
            .await
            .with_context(|| format!("waiting for fix {fix:?} / message {msg:?}; saw {f} / {m}"))?;
        match v["type"].as_str() {
            Some("location") => f = f.max(v["fix"]["seq"].as_u64().unwrap_or(0)),
            Some("message") if v["room"] == room => m = m.max(v["seq"].as_u64().unwrap_or(0)),
            _ => {}
        }
    }
    Ok((f, m))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_and_chat_cross_processes_over_nats() -> Result<()> {
    let Some((redis, nats)) = setup().await else {
        return Ok(());
    };
    let (a, b) = servers(&redis, &nats).await?;
    let driver = unique("d");
    let room = unique("room");
    let (track, chat) = (format!("tracking:{driver}"), format!("chat:{room}"));
    let buyer = token(&unique("b"), Role::Buyer, &[&track, &chat]);
    let vendor = token(&unique("v"), Role::Buyer, &[&track, &chat]);
    let mut on_b = WsClient::connect(&b.ws_url(&buyer)).await?;
    on_b.subscribe(&track, None).await?;
    on_b.subscribe(&chat, None).await?;
    let mut on_a = WsClient::connect(&a.ws_url(&vendor)).await?;
    on_a.subscribe(&track, None).await?;
    on_a.subscribe(&chat, None).await?;

    let client = reqwest::Client::new();
    let answer = post_fix(&client, &a, &driver, 1)
        .await?
        .context("ingest refused")?;
    assert_eq!(
        answer["watchers"], 2,
        "watchers of both processes: {answer}"
    );
    until_seen(&mut on_b, &room, Some(1), None, Duration::from_secs(5)).await?;
    until_seen(&mut on_a, &room, Some(1), None, Duration::from_secs(5)).await?;

    let sent = on_b.send_chat(&room, &unique("c"), "over nats").await?;
    let seq = sent["seq"].as_u64().context("no seq")?;
    until_seen(&mut on_a, &room, None, Some(seq), Duration::from_secs(5)).await?;
    until_seen(&mut on_b, &room, None, Some(seq), Duration::from_secs(5)).await?;
    for s in [&a, &b] {
        let r: Value = reqwest::get(s.http("/readyz")).await?.json().await?;
        assert_eq!(r["engine"], "nats+redis", "{r}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_under_traffic_leaves_no_tail_gap() -> Result<()> {
    let Some((redis, mut nats)) = setup().await else {
        return Ok(());
    };
    let (a, b) = servers(&redis, &nats).await?;
    let driver = unique("d");
    let room = unique("room");
    let (track, chat) = (format!("tracking:{driver}"), format!("chat:{room}"));
    let mut buyer =
        WsClient::connect(&b.ws_url(&token(&unique("b"), Role::Buyer, &[&track, &chat]))).await?;
    buyer.subscribe(&track, None).await?;
    buyer.subscribe(&chat, None).await?;
    let mut sender =
        WsClient::connect(&a.ws_url(&token(&unique("s"), Role::Buyer, &[&chat]))).await?;
    sender.subscribe(&chat, None).await?;

    // A fix every 50 ms to A until told to stop.
    let acked = Arc::new(std::sync::Mutex::new(Vec::<u64>::new()));
    let refused = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let poster = {
        let (acked, refused, stop) = (Arc::clone(&acked), Arc::clone(&refused), stop.clone());
        let a_url = a.http("");
        let driver = driver.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(3))
                .build()?;
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                seq += 1;
                let url = format!("{a_url}/v1/drivers/{driver}/locations");
                let r = client
                    .post(&url)
                    .bearer_auth(token(&driver, Role::Driver, &[]))
                    .json(&json!({"device_id": "dev", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status() == StatusCode::OK => {
                        acked.lock().unwrap_or_else(|e| e.into_inner()).push(seq)
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let last_acked = || {
        acked
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .copied()
    };

    // Warm: live over NATS.
    let t0 = Instant::now();
    while last_acked().is_none() {
        ensure!(t0.elapsed() < Duration::from_secs(5), "no fix acknowledged");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    until_seen(
        &mut buyer,
        &room,
        last_acked(),
        None,
        Duration::from_secs(5),
    )
    .await?;

    // NATS goes away; traffic goes on for a while; a message is sent.
    nats.kill().await?;
    wait_ready(&a, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await?;
    wait_ready(&b, StatusCode::SERVICE_UNAVAILABLE, Duration::from_secs(5)).await?;
    let mut last_msg = 0u64;
    for i in 0..3 {
        if let Ok(v) = sender
            .send_chat(&room, &unique("c"), &format!("while down {i}"))
            .await
        {
            last_msg = last_msg.max(v["seq"].as_u64().unwrap_or(0));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Traffic stops while NATS is down: whatever was acknowledged last
    // must arrive without a following update.
    stop.cancel();
    poster.await??;
    let last_fix = last_acked().context("no fix acknowledged")?;
    ensure!(
        last_msg > 0,
        "no chat message acknowledged while NATS was down"
    );

    nats.restart().await?;
    let back = Instant::now();
    wait_ready(&a, StatusCode::OK, TAIL_WITHIN).await?;
    wait_ready(&b, StatusCode::OK, TAIL_WITHIN).await?;
    let (f, m) = until_seen(
        &mut buyer,
        &room,
        Some(last_fix),
        Some(last_msg),
        TAIL_WITHIN,
    )
    .await
    .with_context(|| format!("server B log:\n{}", b.log_tail()))?;
    let tail_after = back.elapsed();
    ensure!(
        f == last_fix,
        "buyer got fix {f}, newer than any acknowledged ({last_fix})"
    );
    ensure!(
        m == last_msg,
        "buyer got message {m}, last acknowledged {last_msg}"
    );
    let metrics = reqwest::get(b.http("/metrics")).await?.text().await?;
    let redispatched = metrics
        .lines()
        .find_map(|l| l.strip_prefix("waypost_tail_redispatched_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    ensure!(
        redispatched >= 1.0,
        "server B did not re-dispatch after the resubscribe"
    );

    // Live traffic flows again over the resubscribed NATS subscriptions:
    // a fix posted to A now reaches the same socket on B.
    let client = reqwest::Client::new();
    let next = last_fix + 1;
    let t0 = Instant::now();
    while post_fix(&client, &a, &driver, next).await?.is_none() {
        ensure!(
            t0.elapsed() < TAIL_WITHIN,
            "ingest refused after NATS came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (live, _) = until_seen(&mut buyer, &room, Some(next), None, TAIL_WITHIN).await?;
    ensure!(live == next, "live fix {live}, posted {next}");
    let mut acked_all = acked.lock().unwrap_or_else(|e| e.into_inner()).clone();
    acked_all.push(next);

    // Nothing acknowledged lost.
    let r = reqwest::Client::new()
        .get(a.http(&format!("/v1/drivers/{driver}/trail?limit=1000")))
        .bearer_auth(token("svc", Role::Service, &[]))
        .send()
        .await?;
    ensure!(r.status() == StatusCode::OK, "trail: {}", r.status());
    let trail: TrailResponse = r.json().await?;
    let on_server: std::collections::BTreeSet<u64> = trail.fixes.iter().map(|f| f.seq).collect();
    let acked = acked_all;
    let lost: Vec<u64> = acked
        .iter()
        .copied()
        .filter(|s| !on_server.contains(s))
        .collect();
    ensure!(lost.is_empty(), "acknowledged fixes lost: {lost:?}");
    println!(
        "nats restart: {} fixes acknowledged, {} refused; last fix {last_fix} and message {last_msg} reached the same socket {tail_after:?} after nats-server was back",
        acked.len(),
        refused.load(Ordering::Relaxed)
    );
    Ok(())
}
