//! Dead zones end to end, on both engines (on Redis the watcher sits on a
//! second server process): the real driver SDK records every 200 ms while
//! the fault proxy in front of the server refuses everything for ~25 s and
//! the phone reports no network. Watchers of the driver's tracking channel
//! and of its active order's channel are told it went offline (after the
//! online TTL), and when it is back: `driver_status` online with how long it
//! was dark and why (`offline`, from the SDK), then the missed segment as
//! `trail` frames (in order, thinned) before the newest `location`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::{json, Value};
use waypost_e2e::on_both_engines;
use waypost_e2e::proxy::{Fault, FaultProxy};
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;
use waypost_sdk::env::{ManualEnvironment, NetworkType};
use waypost_sdk::{Driver, DriverConfig, Location, PolicyConfig, StaticToken};

on_both_engines!(watchers_see_the_dead_zone_and_why);

const ONLINE_TTL_S: u64 = 8;
const DARK: Duration = Duration::from_secs(25);
const EVERY: Duration = Duration::from_millis(200);

fn config(url: &str, driver: &str, db: &str) -> DriverConfig {
    let mut c = DriverConfig::new(url, driver, "phone-1", db);
    let mut p = PolicyConfig::default();
    for m in [&mut p.watched, &mut p.unwatched] {
        m.sample_interval_ms = 0;
        m.distance_base_m = 0.0;
        m.distance_per_mps = 0.0;
        m.distance_max_m = 0.0;
        m.upload_interval_ms = 1_000;
    }
    p.follow_server_hint = false;
    c.policy = p;
    c.request_timeout = Duration::from_millis(1_000);
    c.backoff.base = Duration::from_millis(200);
    c.backoff.cap = Duration::from_millis(1_000);
    c
}

/// Reads frames into `out` until `done(out)` or `within` passes.
async fn read_until(
    ws: &mut WsClient,
    out: &mut Vec<Value>,
    within: Duration,
    what: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    while !done(out) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let f = ws
            .next_json(left)
            .await
            .with_context(|| format!("waiting for {what}"))?;
        out.push(f);
    }
    Ok(())
}

fn on<'a>(frames: &'a [Value], channel: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    frames
        .iter()
        .filter(move |f| f["channel"] == channel && f["type"] != "order")
}

fn status(f: &Value, online: bool) -> bool {
    f["type"] == "driver_status" && f["status"] == if online { "online" } else { "offline" }
}

async fn watchers_see_the_dead_zone_and_why(engine: EngineChoice) -> Result<()> {
    let opts = |e: &EngineChoice| {
        ServerOptions::new(e.clone())
            .arg("--online-ttl")
            .arg(format!("{ONLINE_TTL_S}s"))
    };
    let a = Server::start_with(opts(&engine)).await?;
    let b_proc;
    let b = if matches!(engine, EngineChoice::Redis(_)) {
        b_proc = Server::start_with(opts(&engine)).await?;
        &b_proc
    } else {
        &a
    };
    let proxy = FaultProxy::start(a.addr).await?;
    let d = unique("d");
    let o = unique("o");
    let (tracking, order) = (format!("tracking:{d}"), format!("order:{o}"));
    let r = reqwest::Client::new()
        .post(a.http(&format!("/v1/orders/{o}/events")))
        .bearer_auth(token("backend", Role::Service, &[]))
        .json(
            &json!({"event_id": "e1", "status": "picked_up", "driver_id": d,
            "destination": {"lat": 49.0, "lon": 2.0}}),
        )
        .send()
        .await?;
    ensure!(r.status() == 202, "order event: {}", r.status());
    let buyer = token("b-1", Role::Buyer, &[&tracking, &order]);
    let mut ws = WsClient::connect(&b.ws_url(&buyer)).await?;
    ws.subscribe(&tracking, None).await?;
    ws.subscribe(&order, Some(0)).await?;

    let dir = std::env::temp_dir().join(unique("dead-zone"));
    std::fs::create_dir_all(&dir)?;
    let db = dir.join("buffer.db").to_string_lossy().into_owned();
    let env = ManualEnvironment::default();
    let driver = Driver::open(
        config(&proxy.url(), &d, &db),
        Arc::new(StaticToken(token(&d, Role::Driver, &[]))),
        None,
        Arc::new(env.clone()),
    )?;
    driver.start()?;
    let mut i = 0u32;
    let mut last_ts = 0;
    let mut record = |driver: &Driver| -> Result<i64> {
        i += 1;
        let ts = now_ms().max(last_ts + 1);
        last_ts = ts;
        // 10 m/s north.
        let loc = Location::new(ts, 48.0 + f64::from(i) * 2.0 / 111_195.0, 2.0);
        driver.record(loc)?;
        Ok(ts)
    };
    let mut frames = Vec::new();

    // Online: locations flow.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        record(&driver)?;
        tokio::time::sleep(EVERY).await;
    }
    read_until(
        &mut ws,
        &mut frames,
        Duration::from_secs(10),
        "locations",
        |f| {
            on(f, &tracking).any(|f| f["type"] == "location")
                && on(f, &order).any(|f| f["type"] == "location")
        },
    )
    .await?;
    // The last uploads of the recorded fixes.
    while let Ok(f) = ws.next_json(Duration::from_millis(1_500)).await {
        frames.push(f);
    }
    ensure!(
        frames.iter().all(|f| f["type"] != "trail"),
        "no trail while uploads get through: {frames:?}"
    );

    // Dark: the phone loses the network; nothing gets through.
    proxy.set(Fault::Refuse);
    env.set_network(NetworkType::Offline);
    driver.environment_changed();
    let dark_from = now_ms();
    let until = Instant::now() + DARK;
    let mut dark_ts = Vec::new();
    while Instant::now() < until {
        dark_ts.push(record(&driver)?);
        tokio::time::sleep(EVERY).await;
    }
    // The server noticed: offline on both channels, nothing else.
    let seen_dark = frames.len();
    read_until(
        &mut ws,
        &mut frames,
        Duration::from_secs(5),
        "offline",
        |f| on(f, &tracking).any(|f| status(f, false)) && on(f, &order).any(|f| status(f, false)),
    )
    .await?;
    let offline = frames[seen_dark..]
        .iter()
        .find(|f| status(f, false))
        .context("offline")?
        .clone();
    let gone_at = offline["last_seen_ms"].as_i64().context("last_seen_ms")?;
    ensure!(
        (dark_from - 2_000..=dark_from + 1_000).contains(&gone_at),
        "last seen when it went dark ({dark_from}): {offline}"
    );
    ensure!(
        frames[seen_dark..]
            .iter()
            .all(|f| f["type"] == "driver_status"),
        "only the status while dark: {:?}",
        &frames[seen_dark..]
    );

    // Back: the network returns, the buffer drains.
    let pending = driver.stats()?.pending;
    ensure!(pending >= dark_ts.len() as u64, "buffered {pending}");
    proxy.set(Fault::Pass);
    env.set_network(NetworkType::Wifi);
    driver.environment_changed();
    let back_at = frames.len();
    let newest_dark = *dark_ts.last().context("dark fixes")?;
    let reached_newest = |f: &[Value], ch: &str| {
        on(f, ch).any(|f| f["type"] == "location" && f["fix"]["ts"].as_i64() >= Some(newest_dark))
    };
    read_until(&mut ws, &mut frames, Duration::from_secs(20), "back", |f| {
        let f = &f[back_at..];
        reached_newest(f, &tracking) && reached_newest(f, &order)
    })
    .await?;
    let back = &frames[back_at..];
    for ch in [&tracking, &order] {
        let seq: Vec<&Value> = on(back, ch).collect();
        let first = seq.first().context("frames after the dark")?;
        ensure!(status(first, true), "{ch}: status first: {seq:?}");
        let dark_ms = first["dark_ms"].as_u64().context("dark_ms")?;
        ensure!(
            (DARK.as_millis() as u64..DARK.as_millis() as u64 + 10_000).contains(&dark_ms),
            "{ch}: dark for about {DARK:?}: {first}"
        );
        ensure!(
            first["reason"] == "offline" && first["buffered"].as_u64() >= Some(50),
            "{ch}: why, from the SDK: {first}"
        );
        ensure!(first["last_seen_ms"] == gone_at, "{first}");
        // Then trails and locations alternate, each trail before its
        // location; together they are the dark path in order.
        ensure!(seq[1]["type"] == "trail", "{ch}: trail next: {seq:?}");
        let mut path: Vec<i64> = Vec::new();
        for f in &seq[1..] {
            match f["type"].as_str() {
                Some("trail") => {
                    let fixes = f["fixes"].as_array().context("fixes")?;
                    ensure!(fixes.len() <= 100 && f["driver_id"] == d.as_str(), "{f}");
                    path.extend(fixes.iter().filter_map(|x| x["ts"].as_i64()));
                }
                Some("location") => path.extend(f["fix"]["ts"].as_i64()),
                _ => {}
            }
        }
        ensure!(
            path.windows(2).all(|w| w[0] < w[1]),
            "{ch}: the path in order: {path:?}"
        );
        let covered: Vec<&i64> = path
            .iter()
            .filter(|t| (dark_ts[0]..=newest_dark).contains(t))
            .collect();
        eprintln!(
            "{ch}: dark {dark_ms} ms, {} trail frame(s), {} of {} dark fixes on the path",
            seq.iter().filter(|f| f["type"] == "trail").count(),
            covered.len(),
            dark_ts.len()
        );
        // Thinned to >= 10 m steps: about every 5th fix at 2 m per fix.
        ensure!(
            covered.len() >= dark_ts.len() / 6
                && covered.first().is_some_and(|t| **t <= dark_ts[0] + 1_000),
            "{ch}: the segment from the first dark fix, thinned: {} of {} ({path:?})",
            covered.len(),
            dark_ts.len()
        );
    }
    drop(driver);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
