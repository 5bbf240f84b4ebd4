//! Network transitions between the real driver SDK and the real server
//! binary, through the fault-injecting proxy: seeded schedules of refused
//! connections, blackholes, resets, latency, flapping and responses cut
//! after the server stored the batch. After each schedule the network heals
//! and every recorded fix must be on the server exactly once, in order.
//!
//! `WAYPOST_DRIVER_E2E_SEEDS=N` runs N seeds instead of the default 3.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use waypost_e2e::driver::{eager_driver_config, Eager};
use waypost_e2e::proxy::{flap, random_schedule, Fault, FaultProxy};
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server};
use waypost_protocol::{Role, TrailResponse};
use waypost_sdk::env::{ManualEnvironment, NetworkType};
use waypost_sdk::{Driver, DriverConfig, Location, RecordOutcome, StaticToken};

fn config(url: &str, driver: &str, db: &str) -> DriverConfig {
    let eager = Eager {
        upload_interval_ms: 250,
        max_batch_fixes: 20,
        request_timeout: Duration::from_millis(800),
        backoff_cap: Duration::from_millis(400),
    };
    eager_driver_config(url, driver, "phone-1", db, eager)
}

async fn trail(server: &Server, driver: &str) -> Vec<(u64, i64)> {
    let svc = token("svc", Role::Service, &[]);
    let resp = reqwest::Client::new()
        .get(server.http(&format!("/v1/drivers/{driver}/trail?limit=1000")))
        .bearer_auth(svc)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let t: TrailResponse = resp.json().await.unwrap();
    t.fixes.iter().map(|f| (f.seq, f.ts)).collect()
}

/// Records `n` fixes every `every` while `schedule` plays on the proxy,
/// then heals and waits for the buffer to drain. Returns the recorded seqs.
async fn run_case(
    server: &Server,
    schedule: Vec<(Fault, Duration)>,
    n: usize,
    every: Duration,
    offline_env: bool,
) -> (Vec<u64>, String, Arc<Driver>, FaultProxy) {
    let proxy = FaultProxy::start(server.addr).await.unwrap();
    let driver_id = unique("drv-net");
    let dir = std::env::temp_dir().join(unique("driver-net"));
    std::fs::create_dir_all(&dir).unwrap();
    let db = dir.join("buffer.db").to_string_lossy().into_owned();
    let env = ManualEnvironment::default();
    let driver = Driver::open(
        config(&proxy.url(), &driver_id, &db),
        Arc::new(StaticToken(token(&driver_id, Role::Driver, &[]))),
        None,
        Arc::new(env.clone()),
    )
    .unwrap();
    driver.start().unwrap();
    let play = async {
        proxy.run_schedule(&schedule).await;
    };
    let record = async {
        let mut seqs = Vec::new();
        let mut last_ts = 0;
        for i in 0..n {
            if offline_env && i % 40 == 20 {
                // The phone notices the network going away and coming back.
                env.set_network(NetworkType::Offline);
                driver.environment_changed();
            }
            if offline_env && i % 40 == 30 {
                env.set_network(NetworkType::Cellular);
                driver.environment_changed();
            }
            let ts = now_ms().max(last_ts + 1);
            last_ts = ts;
            let loc = Location::new(ts, 48.0 + i as f64 * 1e-6, 2.0);
            match driver.record(loc).unwrap() {
                RecordOutcome::Recorded { seq } => seqs.push(seq),
                other => panic!("fix {i} not recorded: {other:?}"),
            }
            tokio::time::sleep(every).await;
        }
        seqs
    };
    let ((), seqs) = tokio::join!(play, record);
    proxy.set(Fault::Pass);
    env.set_network(NetworkType::Wifi);
    driver.environment_changed();
    driver.flush();
    let deadline = Instant::now() + Duration::from_secs(30);
    while driver.stats().unwrap().pending > 0 {
        assert!(
            Instant::now() < deadline,
            "buffer did not drain: {:?}",
            driver.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    (seqs, driver_id, driver, proxy)
}

fn assert_exactly_once_in_order(recorded: &[u64], on_server: &[(u64, i64)], what: &str) {
    let seqs: Vec<u64> = on_server.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, recorded, "{what}: server trail != recorded fixes");
    assert!(
        on_server.windows(2).all(|w| w[0].1 < w[1].1),
        "{what}: timestamps out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn seeded_fault_schedules_deliver_every_fix_exactly_once() {
    let server = Server::start(EngineChoice::Memory).await.unwrap();
    let seeds: u64 = std::env::var("WAYPOST_DRIVER_E2E_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let cases = (1..=seeds).map(|seed| {
        let server = &server;
        async move {
            let schedule = random_schedule(seed, 14, Duration::from_millis(900));
            let (recorded, driver_id, driver, proxy) =
                run_case(server, schedule, 250, Duration::from_millis(25), seed % 2 == 0).await;
            let on_server = trail(server, &driver_id).await;
            assert_exactly_once_in_order(&recorded, &on_server, &format!("seed {seed}"));
            let s = proxy.stats();
            let faults = s.refused.load(Ordering::Relaxed)
                + s.cut.load(Ordering::Relaxed)
                + s.blackholed.load(Ordering::Relaxed)
                + s.reset.load(Ordering::Relaxed);
            assert!(faults > 0, "seed {seed}: schedule hit no request");
            let stats = driver.stats().unwrap();
            assert!(stats.requests > stats.uploads_ok, "seed {seed}: no failed request");
            eprintln!(
                "seed {seed}: {} fixes, {} requests, {} ok, proxy refused {} cut {} blackholed {} reset {}",
                recorded.len(),
                stats.requests,
                stats.uploads_ok,
                s.refused.load(Ordering::Relaxed),
                s.cut.load(Ordering::Relaxed),
                s.blackholed.load(Ordering::Relaxed),
                s.reset.load(Ordering::Relaxed)
            );
            driver.shutdown().await;
            proxy.stop().await;
        }
    });
    futures_util::future::join_all(cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flapping_and_cut_responses_deliver_every_fix_exactly_once() {
    let server = Server::start(EngineChoice::Memory).await.unwrap();
    let flapping = async {
        let (recorded, id, driver, proxy) = run_case(
            &server,
            flap(Duration::from_millis(400), 6),
            200,
            Duration::from_millis(20),
            false,
        )
        .await;
        assert_exactly_once_in_order(&recorded, &trail(&server, &id).await, "flap");
        assert!(proxy.stats().refused.load(Ordering::Relaxed) > 0);
        driver.shutdown().await;
    };
    let cut = async {
        // Every response cut for 3 s: the server stores each batch, the
        // phone never hears back and resends; de-dup by seq keeps it once.
        let (recorded, id, driver, proxy) = run_case(
            &server,
            vec![(Fault::CutResponse, Duration::from_secs(3))],
            120,
            Duration::from_millis(20),
            false,
        )
        .await;
        assert_exactly_once_in_order(&recorded, &trail(&server, &id).await, "cut");
        assert!(proxy.stats().cut.load(Ordering::Relaxed) >= 3);
        driver.shutdown().await;
    };
    tokio::join!(flapping, cut);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fault_schedule_on_the_redis_engine_delivers_every_fix_exactly_once() {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return;
    };
    let server = Server::start(EngineChoice::Redis(url)).await.unwrap();
    let schedule = random_schedule(11, 12, Duration::from_millis(800));
    let (recorded, id, driver, proxy) =
        run_case(&server, schedule, 200, Duration::from_millis(25), true).await;
    assert_exactly_once_in_order(&recorded, &trail(&server, &id).await, "redis");
    let s = proxy.stats();
    assert!(
        s.refused.load(Ordering::Relaxed) + s.cut.load(Ordering::Relaxed) > 0,
        "schedule hit no request"
    );
    driver.shutdown().await;
    proxy.stop().await;
}
