//! Webhook tests: signature, queue conformance (memory and Redis), and
//! delivery over real HTTP to a local receiver that fails the first
//! attempts of every event.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::queue::{Enqueued, MemoryWebhookQueue, WebhookQueue};
use super::queue_redis::RedisWebhookQueue;
use super::*;
use crate::engine::chat_redis;

const SECRET: &[u8] = b"s3cret";

#[test]
fn signature_round_trip_and_replay() {
    let body = br#"{"id":"e1"}"#;
    let h = sign(SECRET, 1_700_000_000, body);
    assert!(h.starts_with("t=1700000000,v1="));
    assert_eq!(h.len(), "t=1700000000,v1=".len() + 64);
    assert!(verify(SECRET, &h, body, 1_700_000_010, 300));
    assert!(
        !verify(SECRET, &h, br#"{"id":"e2"}"#, 1_700_000_010, 300),
        "tampered body"
    );
    assert!(
        !verify(b"other", &h, body, 1_700_000_010, 300),
        "wrong secret"
    );
    assert!(
        !verify(SECRET, &h, body, 1_700_000_400, 300),
        "too old: replay"
    );
    let forged = h.replace("t=1700000000", "t=1700000390");
    assert!(
        !verify(SECRET, &forged, body, 1_700_000_400, 300),
        "timestamp is signed"
    );
    assert!(!verify(SECRET, "garbage", body, 1_700_000_000, 300));
}

struct FixedJitter;
impl Jitter for FixedJitter {
    fn upto(&self, max: u64) -> u64 {
        max
    }
}

fn hooks_with(
    cfg: WebhookConfig,
    queue: Arc<dyn WebhookQueue>,
    sender: Arc<dyn WebhookSender>,
) -> Arc<Webhooks> {
    Webhooks::system(cfg, queue, sender, WebhookMetrics::new().unwrap())
}

#[test]
fn backoff_is_exponential_capped_full_jitter() {
    let mut cfg = WebhookConfig::new(vec![], "s".into());
    cfg.base_backoff = Duration::from_millis(100);
    cfg.max_backoff = Duration::from_millis(1000);
    let w = Webhooks::new(
        cfg,
        Arc::new(MemoryWebhookQueue::new()),
        Arc::new(HttpSender::new(Duration::from_secs(1)).unwrap()),
        Arc::new(SystemClock),
        Arc::new(FixedJitter),
        WebhookMetrics::new().unwrap(),
    );
    let upper: Vec<i64> = (1..=6).map(|a| w.backoff_ms(a)).collect();
    assert_eq!(upper, vec![100, 200, 400, 800, 1000, 1000]);
    assert_eq!(w.backoff_ms(200), 1000, "no overflow");
}

async fn queue_conformance(q: &dyn WebhookQueue) {
    let ep = format!("ep-{}", uuid::Uuid::new_v4().simple());
    let t = 1_000_000;
    assert_eq!(q.push(&ep, "a", "A", t, 3).await.unwrap(), Enqueued::Queued);
    assert_eq!(
        q.push(&ep, "a", "A", t, 3).await.unwrap(),
        Enqueued::Duplicate
    );
    assert_eq!(
        q.push(&ep, "b", "B", t + 5, 3).await.unwrap(),
        Enqueued::Queued
    );
    assert_eq!(
        q.push(&ep, "c", "C", t + 10, 3).await.unwrap(),
        Enqueued::Queued
    );
    assert_eq!(q.push(&ep, "d", "D", t, 3).await.unwrap(), Enqueued::Full);
    assert_eq!(q.len(&ep).await.unwrap(), 3);
    // Earliest due first; a claimed item is leased.
    let a = q.claim(&ep, t, 1000).await.unwrap().unwrap();
    assert_eq!(
        (a.event_id.as_str(), a.body.as_str(), a.attempts),
        ("a", "A", 0)
    );
    assert!(
        q.claim(&ep, t + 1, 1000).await.unwrap().is_none(),
        "b is not due yet"
    );
    let b = q.claim(&ep, t + 10, 1000).await.unwrap().unwrap();
    assert_eq!(b.event_id, "b");
    q.retry(&ep, "b", 1, t + 2000).await.unwrap();
    q.done(&ep, "c").await.unwrap();
    // The lease of "a" ran out (a crashed deliverer): it is due again.
    let again = q.claim(&ep, t + 1000, 1000).await.unwrap().unwrap();
    assert_eq!(again.event_id, "a");
    q.done(&ep, "a").await.unwrap();
    let b = q.claim(&ep, t + 3000, 1000).await.unwrap().unwrap();
    assert_eq!((b.event_id.as_str(), b.attempts), ("b", 1));
    q.done(&ep, "b").await.unwrap();
    assert_eq!(q.len(&ep).await.unwrap(), 0);
    assert!(q.claim(&ep, t + 10_000, 1000).await.unwrap().is_none());
    q.retry(&ep, "gone", 3, t).await.unwrap();
    assert!(
        q.claim(&ep, t + 10_000, 1000).await.unwrap().is_none(),
        "retry of a done item does not revive it"
    );
}

#[tokio::test]
async fn memory_queue_conformance() {
    queue_conformance(&MemoryWebhookQueue::new()).await;
}

async fn redis_queue() -> Option<RedisWebhookQueue> {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
        return None;
    };
    let conn = chat_redis::connect(&url, &Default::default())
        .await
        .expect("redis reachable");
    Some(RedisWebhookQueue::new(conn))
}

#[tokio::test]
async fn redis_queue_conformance() {
    if let Some(q) = redis_queue().await {
        queue_conformance(&q).await;
    }
}

#[tokio::test]
async fn redis_cluster_queue_conformance() {
    if let Some(conn) = crate::engine::redis::test_cluster().await {
        queue_conformance(&RedisWebhookQueue::new(conn)).await;
    }
}

/// A local receiver failing the first `fail_first` attempts of every
/// idempotency key with 500.
#[derive(Default)]
struct Receiver {
    fail_first: u32,
    attempts: HashMap<String, u32>,
    /// Key → 2xx answers given.
    accepted: HashMap<String, u32>,
    bad: u32,
}

async fn receive(
    State(r): State<Arc<Mutex<Receiver>>>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let sig = headers
        .get("waypost-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut r = r.lock();
    let event: Option<WebhookEvent> = serde_json::from_slice(&body).ok();
    if !verify(SECRET, sig, &body, crate::now_ms() / 1000, 300) || event.is_none_or(|e| e.id != key)
    {
        r.bad += 1;
        return StatusCode::BAD_REQUEST;
    }
    let n = r.attempts.entry(key.clone()).or_default();
    *n += 1;
    if *n <= r.fail_first {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    *r.accepted.entry(key).or_default() += 1;
    StatusCode::NO_CONTENT
}

async fn start_receiver(fail_first: u32) -> (String, Arc<Mutex<Receiver>>, CancellationToken) {
    let state = Arc::new(Mutex::new(Receiver {
        fail_first,
        ..Receiver::default()
    }));
    // A fallback, not a registered path: the OpenAPI check counts every
    // path registered anywhere in src/ as the server's surface.
    let app = axum::Router::new()
        .fallback(receive)
        .with_state(Arc::clone(&state));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async move { s.cancelled().await })
            .await;
    });
    (format!("http://{addr}/hook"), state, stop)
}

fn fast_cfg(url: &str) -> WebhookConfig {
    let mut cfg = WebhookConfig::new(vec![url.to_owned()], String::from_utf8_lossy(SECRET).into());
    cfg.base_backoff = Duration::from_millis(20);
    cfg.max_backoff = Duration::from_millis(200);
    cfg.poll = Duration::from_millis(20);
    cfg.timeout = Duration::from_secs(2);
    cfg
}

fn event(i: usize, tag: &str) -> WebhookEvent {
    WebhookEvent {
        id: format!("{tag}-o1:{i}"),
        kind: "order.status".into(),
        ts: 1_700_000_000_000 + i as i64,
        data: serde_json::json!({"order_id": "o1", "seq": i, "status": "accepted"}),
    }
}

/// Waits (bounded) until the receiver accepted every key of `ids`.
async fn wait_accepted(r: &Mutex<Receiver>, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while ids.iter().any(|id| !r.lock().accepted.contains_key(id)) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not every event arrived in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn delivers_every_event_once_despite_failures(queue: Arc<dyn WebhookQueue>) {
    let (url, recv, stop) = start_receiver(2).await;
    let cfg = fast_cfg(&url);
    let sender = Arc::new(HttpSender::new(cfg.timeout).unwrap());
    let hooks = hooks_with(cfg, queue, sender);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    hooks.spawn(&tracker, &cancel);
    let events: Vec<WebhookEvent> = (0..20).map(|i| event(i, &tag)).collect();
    for e in &events {
        hooks.emit(e).await.unwrap();
    }
    // Emitting an event again while queued does not send it twice.
    hooks.emit(&events[19]).await.unwrap();
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    wait_accepted(&recv, &ids).await;
    cancel.cancel();
    tracker.close();
    tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .expect("workers stop on cancel");
    stop.cancel();
    let r = recv.lock();
    assert_eq!(r.bad, 0, "every request was signed and carried its key");
    for id in &ids {
        assert_eq!(r.accepted.get(id), Some(&1), "{id} accepted once");
        assert_eq!(
            r.attempts.get(id),
            Some(&3),
            "{id}: two failures, then success"
        );
    }
    let ep = endpoint_key(&url);
    let m = &hooks.metrics;
    assert_eq!(m.outcomes.with_label_values(&["delivered", &ep]).get(), 20);
    assert_eq!(m.outcomes.with_label_values(&["retried", &ep]).get(), 40);
    assert_eq!(m.outcomes.with_label_values(&["failed", &ep]).get(), 0);
}

#[tokio::test]
async fn memory_delivery_with_retries() {
    delivers_every_event_once_despite_failures(Arc::new(MemoryWebhookQueue::new())).await;
}

#[tokio::test]
async fn redis_delivery_with_retries() {
    if let Some(q) = redis_queue().await {
        delivers_every_event_once_despite_failures(Arc::new(q)).await;
    }
}

/// Always refuses.
struct Down;
#[async_trait]
impl WebhookSender for Down {
    async fn post(
        &self,
        _url: &str,
        _headers: &[(&'static str, String)],
        _body: String,
    ) -> Result<u16, String> {
        Err("connection refused".into())
    }
}

#[tokio::test]
async fn gives_up_after_max_attempts() {
    let mut cfg = fast_cfg("http://127.0.0.1:9/unused");
    cfg.max_attempts = 3;
    cfg.base_backoff = Duration::ZERO;
    let ep = endpoint_key(&cfg.endpoints[0]);
    let hooks = hooks_with(
        cfg.clone(),
        Arc::new(MemoryWebhookQueue::new()),
        Arc::new(Down),
    );
    hooks.emit(&event(1, "g")).await.unwrap();
    for _ in 0..3 {
        assert!(hooks.deliver_one(&cfg.endpoints[0], &ep).await.unwrap());
    }
    assert!(
        !hooks.deliver_one(&cfg.endpoints[0], &ep).await.unwrap(),
        "dropped"
    );
    let m = &hooks.metrics;
    assert_eq!(m.outcomes.with_label_values(&["failed", &ep]).get(), 1);
    assert_eq!(m.outcomes.with_label_values(&["retried", &ep]).get(), 2);
}

#[tokio::test]
async fn full_queue_drops_and_counts() {
    let mut cfg = fast_cfg("http://127.0.0.1:9/unused");
    cfg.queue_cap = 2;
    let ep = endpoint_key(&cfg.endpoints[0]);
    let hooks = hooks_with(cfg, Arc::new(MemoryWebhookQueue::new()), Arc::new(Down));
    for i in 0..5 {
        hooks.emit(&event(i, "f")).await.unwrap();
    }
    assert_eq!(
        hooks
            .metrics
            .outcomes
            .with_label_values(&["dropped", &ep])
            .get(),
        3
    );
}

#[tokio::test]
async fn redis_queue_survives_a_restart() {
    let Some(q1) = redis_queue().await else {
        return;
    };
    let (url, recv, stop) = start_receiver(0).await;
    let cfg = fast_cfg(&url);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    // Process 1: the receiver is unreachable for it; it queues and fails
    // once, then "crashes" (is dropped).
    let first = hooks_with(cfg.clone(), Arc::new(q1), Arc::new(Down));
    let events: Vec<WebhookEvent> = (0..5).map(|i| event(i, &tag)).collect();
    for e in &events {
        first.emit(e).await.unwrap();
    }
    assert!(first.deliver_one(&url, &endpoint_key(&url)).await.unwrap());
    drop(first);
    // Process 2, a fresh connection: delivers everything.
    let q2 = redis_queue().await.unwrap();
    let second = hooks_with(
        cfg.clone(),
        Arc::new(q2),
        Arc::new(HttpSender::new(cfg.timeout).unwrap()),
    );
    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    second.spawn(&tracker, &cancel);
    let ids: Vec<String> = events.iter().map(|e| e.id.clone()).collect();
    wait_accepted(&recv, &ids).await;
    cancel.cancel();
    tracker.close();
    tracker.wait().await;
    stop.cancel();
    for id in &ids {
        assert_eq!(recv.lock().accepted.get(id), Some(&1), "{id}");
    }
}

/// Driver presence through the order service (which owns it): the
/// webhooks `driver.online` / `driver.offline` once each per change, and
/// watchers of the tracking channel told `offline` by the sweeper, then
/// `online` with how long it was dark and the SDK's reason when it is back
/// (before the trail and the location of that upload).
#[tokio::test]
async fn driver_online_offline_and_back() {
    use crate::engine::Engine;
    use crate::hub::{connection, Hub};
    use crate::orders::live::{DriverUpdate, OrderService};
    use crate::orders::memory::MemoryOrderStore;
    use crate::orders::presence::MemoryDriverPresence;
    use crate::orders::{OrderLimits, Orders};
    use waypost_protocol::{Channel, Fix, Silence, SilenceReason};

    let cfg = fast_cfg("http://127.0.0.1:9/unused");
    let ep = endpoint_key(&cfg.endpoints[0]);
    let queue = Arc::new(MemoryWebhookQueue::new());
    let hooks = hooks_with(cfg, queue.clone(), Arc::new(Down));
    let hub = Arc::new(Hub::new(crate::metrics::Metrics::new()));
    let engine = Arc::new(Engine::memory(Arc::clone(&hub), Default::default()));
    let svc = OrderService::new(
        Orders::new(Arc::new(MemoryOrderStore::new(OrderLimits::default()))),
        engine.clone(),
        Some(hooks),
        Arc::new(MemoryDriverPresence::default()),
    );
    let ch = Channel::tracking("d-1");
    let (h, mut rx) = connection(hub.next_conn_id(), 64);
    hub.add(&ch, h);
    engine.sync_subscription(&ch).await.unwrap();
    let next = |rx: &mut crate::hub::Receiver| {
        rx.try_frame()
            .map(|f| serde_json::from_str::<serde_json::Value>(&f.text).unwrap())
    };
    let fix = Fix::new(1, 1, 1.0, 2.0);
    let upload = |silence: Option<Silence>, trail: Vec<Fix>, at: i64| {
        let svc = svc.clone();
        let fix = fix.clone();
        async move {
            svc.on_fixes(
                "d-1",
                std::slice::from_ref(&fix),
                DriverUpdate {
                    latest: Some(&fix),
                    trail: &trail,
                    silence: silence.as_ref(),
                    published: false,
                    watchers: 1,
                },
                at,
                0,
            )
            .await
            .unwrap();
        }
    };
    let now = crate::now_ms();
    upload(None, Vec::new(), now).await;
    upload(None, Vec::new(), now + 10).await;
    let f = next(&mut rx).unwrap();
    assert_eq!(
        f["type"], "location",
        "a first appearance is no comeback: {f}"
    );
    let f = next(&mut rx).unwrap();
    assert_eq!(f["type"], "location", "{f}");
    assert!(next(&mut rx).is_none());

    let tracker = TaskTracker::new();
    let cancel = CancellationToken::new();
    svc.spawn_presence_sweeper(Duration::from_millis(200), &tracker, &cancel);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let off = next(&mut rx).expect("offline status");
    assert_eq!(
        (off["type"].as_str(), off["status"].as_str()),
        (Some("driver_status"), Some("offline")),
        "{off}"
    );
    assert_eq!(off["last_seen_ms"], now + 10);
    let back_at = crate::now_ms();
    upload(
        Some(Silence {
            reason: SilenceReason::Offline,
            dark_ms: Some(700),
            buffered: Some(7),
        }),
        vec![Fix::new(0, 0, 1.0, 2.0)],
        back_at,
    )
    .await;
    let on = next(&mut rx).expect("online status");
    assert_eq!(on["status"], "online", "{on}");
    assert_eq!(on["dark_ms"], back_at - (now + 10));
    assert_eq!(
        (on["reason"].as_str(), on["buffered"].as_u64()),
        (Some("offline"), Some(7))
    );
    assert_eq!(next(&mut rx).unwrap()["type"], "trail");
    assert_eq!(next(&mut rx).unwrap()["type"], "location");
    cancel.cancel();
    tracker.close();
    tracker.wait().await;

    let mut kinds = Vec::new();
    while let Some(p) = queue.claim(&ep, i64::MAX / 2, 1).await.unwrap() {
        let ev: WebhookEvent = serde_json::from_str(&p.body).unwrap();
        assert_eq!(ev.data["driver_id"], "d-1");
        kinds.push(ev.kind);
        queue.done(&ep, &p.event_id).await.unwrap();
    }
    kinds.sort();
    assert_eq!(
        kinds,
        vec!["driver.offline", "driver.online", "driver.online"],
        "once per change"
    );
}
