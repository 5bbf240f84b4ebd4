//! `push`: the server's push pipeline in process (collapse table, claim in
//! the device store, bounded queue, workers) with the real FCM client
//! (OAuth assertion, HTTP v1 `messages:send`) against a local FCM stand-in
//! on loopback. Measures event → provider request latency (the
//! `waypost_push_latency_seconds` histogram, which includes the collapse
//! flush tick) and sustained pushes per second per process. Bounded in
//! count and time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use async_trait::async_trait;
use axum::routing::post;
use axum::Router;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use waypost_protocol::{Channel, PushKind};
use waypost_server::engine::EngineError;
use waypost_server::push::devices::{Device, DeviceStore, MemoryDeviceStore, Platform};
use waypost_server::push::providers::{Fcm, FcmConfig, Provider};
use waypost_server::push::{Liveness, Push, PushConfig, PushEvent, PushMetrics};
use waypost_server::webhooks::SystemClock;

#[derive(clap::Args)]
pub struct Args {
    /// Events (each on its own channel, one device each).
    #[arg(long, default_value_t = 5000)]
    events: usize,
    /// Concurrent provider requests.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Collapse window, ms.
    #[arg(long, default_value_t = 0)]
    collapse_ms: u64,
    /// Events per second (0: all at once, for throughput).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    max_s: u64,
}

struct NobodyLive;

#[async_trait]
impl Liveness for NobodyLive {
    async fn is_live(&self, _: &str, _: &Channel) -> Result<bool, EngineError> {
        Ok(false)
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let events = args.events.clamp(1, 100_000);
    // The FCM stand-in: a token endpoint and messages:send, counting.
    let sent = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&sent);
    let app = Router::new()
        .route(
            "/token",
            post(|| async {
                axum::Json(serde_json::json!({"access_token": "bench", "expires_in": 3600}))
            }),
        )
        .route(
            "/v1/projects/bench/messages:send",
            post(move || {
                let c = Arc::clone(&counter);
                async move {
                    c.fetch_add(1, Ordering::Relaxed);
                    axum::Json(serde_json::json!({"name": "projects/bench/messages/1"}))
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let c = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { c.cancelled().await })
            .await;
    });

    let dir = std::env::temp_dir().join(format!("waypost-bench-push-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let key = dir.join("fcm.key");
    let ok = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .context("running openssl")?
        .status
        .success();
    if !ok {
        bail!("openssl genpkey failed");
    }
    let account = serde_json::json!({
        "project_id": "bench",
        "client_email": "bench@example.invalid",
        "private_key": std::fs::read_to_string(&key)?,
        "token_uri": format!("http://{addr}/token"),
    });
    let _ = std::fs::remove_dir_all(&dir);
    let fcm = Fcm::new(
        FcmConfig {
            endpoint: format!("http://{addr}"),
            ca: None,
            timeout: Duration::from_secs(10),
        },
        account.to_string().as_bytes(),
        Arc::new(SystemClock),
    )?;
    let store = Arc::new(MemoryDeviceStore::default());
    for i in 0..events {
        let ch = format!("chat:bench-{i}");
        store
            .register(
                &Device {
                    device_id: format!("d{i}"),
                    user: format!("u{i}"),
                    platform: Platform::Fcm,
                    token: format!("tok{i}"),
                    app_id: None,
                    locale: None,
                    muted: Vec::new(),
                    channels: vec![ch],
                    registered_ms: 0,
                },
                10,
            )
            .await?;
    }
    let metrics = PushMetrics::new();
    let cfg = PushConfig {
        collapse_window: Duration::from_millis(args.collapse_ms),
        workers: args.workers.clamp(1, 256),
        queue_cap: events.max(10_000),
        ..PushConfig::default()
    };
    let fcm: Arc<dyn Provider> = Arc::new(fcm);
    let push = Arc::new(Push::new(cfg, store, None, Some(fcm), metrics.clone()));
    let tracker = TaskTracker::new();
    push.spawn(Arc::new(NobodyLive), &tracker, &cancel);

    let start = Instant::now();
    for i in 0..events {
        if args.rate > 0 {
            let due = start + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        push.event(PushEvent {
            kind: PushKind::Message,
            channel: Channel::chat(format!("bench-{i}")),
            seq: 1,
            from: Some("sender".into()),
            preview: None,
            origin_us: waypost_server::frame::now_us(),
        });
    }
    let deadline = start + Duration::from_secs(args.max_s.clamp(1, 600));
    while (sent.load(Ordering::Relaxed) as usize) < events && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = start.elapsed();
    let done = sent.load(Ordering::Relaxed);
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    let h = metrics.latency.clone();
    let p = |q: f64| quantile(&h, q);
    println!(
        "{{\"bench\":\"push\",\"events\":{events},\"rate\":{},\"sent\":{done},\"workers\":{},\"collapse_ms\":{},\"elapsed_s\":{:.3},\"pushes_per_s\":{:.0},\"latency_ms\":{{\"mean\":{:.1},\"p50_le\":{},\"p99_le\":{}}}}}",
        args.rate,
        args.workers,
        args.collapse_ms,
        elapsed.as_secs_f64(),
        done as f64 / elapsed.as_secs_f64(),
        h.get_sample_sum() / h.get_sample_count().max(1) as f64 * 1000.0,
        p(0.5),
        p(0.99),
    );
    if (done as usize) < events {
        bail!(
            "only {done} of {events} pushes sent within {:?}",
            deadline - start
        );
    }
    Ok(())
}

/// The upper bound (ms) of the histogram bucket holding quantile `q`.
fn quantile(h: &prometheus::Histogram, q: f64) -> String {
    use prometheus::core::Collector;
    let Some(m) = h.collect().into_iter().next() else {
        return "null".into();
    };
    let Some(metric) = m.get_metric().first() else {
        return "null".into();
    };
    let hist = metric.get_histogram();
    let total = hist.get_sample_count() as f64;
    for b in hist.get_bucket() {
        if b.cumulative_count() as f64 >= q * total {
            return format!("{}", b.upper_bound() * 1000.0);
        }
    }
    "\"inf\"".into()
}
