//! The push pipeline with a recording provider, the memory device store
//! and a fixed clock: collapse, sender exclusion, liveness, mute,
//! cross-process de-duplication, dead tokens, retries and the queue bound.

use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, Ordering};

use super::devices::MemoryDeviceStore;
use super::*;

struct Recorder {
    sent: Mutex<Vec<(String, PushData)>>,
    script: Mutex<VecDeque<SendOutcome>>,
}

impl Recorder {
    fn new(script: Vec<SendOutcome>) -> Arc<Self> {
        Arc::new(Self {
            sent: Mutex::default(),
            script: Mutex::new(script.into()),
        })
    }
}

#[async_trait]
impl Provider for Recorder {
    fn platform(&self) -> Platform {
        Platform::Fcm
    }

    async fn send(&self, device: &Device, msg: &PushMessage) -> SendOutcome {
        let outcome = self.script.lock().pop_front().unwrap_or(SendOutcome::Sent);
        if outcome == SendOutcome::Sent {
            self.sent
                .lock()
                .push((device.device_id.clone(), msg.data.clone()));
        }
        outcome
    }
}

struct Live(HashSet<String>);

#[async_trait]
impl Liveness for Live {
    async fn is_live(&self, user: &str, _: &Channel) -> Result<bool, EngineError> {
        Ok(self.0.contains(user))
    }
}

fn nobody() -> Live {
    Live(HashSet::new())
}

struct Clock(AtomicI64);

impl WebhookClock for Clock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Always the top of the window.
struct MaxJitter;

impl Jitter for MaxJitter {
    fn upto(&self, max: u64) -> u64 {
        max
    }
}

fn device(user: &str, id: &str, channels: &[&str]) -> Device {
    Device {
        device_id: id.into(),
        user: user.into(),
        platform: Platform::Fcm,
        token: format!("tok-{id}"),
        app_id: None,
        locale: None,
        muted: Vec::new(),
        channels: channels.iter().map(|c| c.to_string()).collect(),
        registered_ms: 0,
    }
}

fn push_with(
    store: Arc<dyn DeviceStore>,
    provider: Arc<Recorder>,
    cfg: PushConfig,
) -> (Push, Arc<Clock>) {
    let clock = Arc::new(Clock(AtomicI64::new(1_000_000)));
    let p = Push::new(cfg, store, None, Some(provider), PushMetrics::new())
        .with_time(clock.clone(), Arc::new(MaxJitter));
    (p, clock)
}

fn msg(room: &str, seq: u64, from: &str) -> PushEvent {
    PushEvent {
        kind: PushKind::Message,
        channel: Channel::chat(room),
        seq,
        from: Some(from.into()),
        preview: Some(format!("message {seq}")),
        origin_us: 0,
    }
}

#[tokio::test]
async fn a_burst_becomes_one_push_with_the_count_and_the_sender_gets_none() {
    let store = Arc::new(MemoryDeviceStore::default());
    store
        .register(&device("b", "b-phone", &["chat:r"]), 10)
        .await
        .unwrap();
    store
        .register(&device("s", "s-phone", &["chat:r"]), 10)
        .await
        .unwrap();
    let rec = Recorder::new(vec![]);
    let (p, _) = push_with(store, rec.clone(), PushConfig::default());
    for seq in 1..=3 {
        p.event(msg("r", seq, "s"));
    }
    p.flush_due(&nobody(), true).await;
    assert_eq!(p.drain_ready().await, 1);
    let sent = rec.sent.lock().clone();
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0].0, "b-phone");
    assert_eq!(sent[0].1.seq, 3);
    assert_eq!(sent[0].1.count, 3);
    assert_eq!(sent[0].1.preview, None, "previews are off by default");
    assert_eq!(p.metrics.sent.with_label_values(&["fcm"]).get(), 1);
}

#[tokio::test]
async fn live_users_muted_channels_and_unregistered_channels_get_nothing() {
    let store = Arc::new(MemoryDeviceStore::default());
    store
        .register(&device("live", "l", &["chat:r"]), 10)
        .await
        .unwrap();
    let mut muted = device("m", "m", &["chat:r"]);
    muted.muted = vec!["chat:r".into()];
    store.register(&muted, 10).await.unwrap();
    store
        .register(&device("other", "o", &["chat:x"]), 10)
        .await
        .unwrap();
    let rec = Recorder::new(vec![]);
    let cfg = PushConfig {
        previews: true,
        ..PushConfig::default()
    };
    let (p, _) = push_with(store, rec.clone(), cfg);
    p.event(msg("r", 1, "s"));
    p.flush_due(&Live(["live".to_string()].into()), true).await;
    assert_eq!(p.drain_ready().await, 0);
    assert!(rec.sent.lock().is_empty());
    assert_eq!(p.metrics.skipped.with_label_values(&["live"]).get(), 1);
    assert_eq!(p.metrics.skipped.with_label_values(&["muted"]).get(), 1);
}

#[tokio::test]
async fn two_processes_sharing_the_store_push_once_per_device() {
    let store: Arc<dyn DeviceStore> = Arc::new(MemoryDeviceStore::default());
    store
        .register(&device("b", "b1", &["vendor:v"]), 10)
        .await
        .unwrap();
    store
        .register(&device("b", "b2", &["vendor:v"]), 10)
        .await
        .unwrap();
    let rec = Recorder::new(vec![]);
    let (a, _) = push_with(Arc::clone(&store), rec.clone(), PushConfig::default());
    let (b, _) = push_with(store, rec.clone(), PushConfig::default());
    for p in [&a, &b] {
        p.event(PushEvent {
            kind: PushKind::Notification,
            channel: Channel::vendor("v"),
            seq: 9,
            from: None,
            preview: None,
            origin_us: 0,
        });
        p.flush_due(&nobody(), true).await;
        p.drain_ready().await;
    }
    let mut got: Vec<String> = rec.sent.lock().iter().map(|(d, _)| d.clone()).collect();
    got.sort();
    assert_eq!(got, ["b1", "b2"]);
    assert_eq!(b.metrics.skipped.with_label_values(&["duplicate"]).get(), 2);
}

#[tokio::test]
async fn a_dead_token_removes_the_device() {
    let store = Arc::new(MemoryDeviceStore::default());
    store
        .register(&device("b", "b1", &["chat:r"]), 10)
        .await
        .unwrap();
    let rec = Recorder::new(vec![SendOutcome::Unregistered("UNREGISTERED".into())]);
    let (p, _) = push_with(store.clone(), rec, PushConfig::default());
    p.event(msg("r", 1, "s"));
    p.flush_due(&nobody(), true).await;
    p.drain_ready().await;
    assert!(store.devices("b").await.unwrap().is_empty());
    assert_eq!(p.metrics.removed.with_label_values(&["fcm"]).get(), 1);
}

#[tokio::test]
async fn retries_wait_for_backoff_and_retry_after_then_send_once() {
    let store = Arc::new(MemoryDeviceStore::default());
    store
        .register(&device("b", "b1", &["chat:r"]), 10)
        .await
        .unwrap();
    let rec = Recorder::new(vec![
        SendOutcome::Retry {
            reason: "UNAVAILABLE".into(),
            after: Some(Duration::from_secs(5)),
        },
        SendOutcome::Retry {
            reason: "UNAVAILABLE".into(),
            after: None,
        },
    ]);
    let (p, clock) = push_with(store, rec.clone(), PushConfig::default());
    p.event(msg("r", 4, "s"));
    p.flush_due(&nobody(), true).await;
    assert_eq!(p.drain_ready().await, 1, "first try");
    // Retry-After 5 s is above the first window (500 ms).
    clock.0.fetch_add(4_999, Ordering::SeqCst);
    assert_eq!(p.drain_ready().await, 0, "before Retry-After");
    clock.0.fetch_add(1, Ordering::SeqCst);
    assert_eq!(p.drain_ready().await, 1, "second try");
    // Second window: 1 s (max jitter).
    clock.0.fetch_add(999, Ordering::SeqCst);
    assert_eq!(p.drain_ready().await, 0);
    clock.0.fetch_add(1, Ordering::SeqCst);
    assert_eq!(p.drain_ready().await, 1, "third try");
    assert_eq!(rec.sent.lock().len(), 1);
    assert_eq!(p.queued(), 0);
}

#[tokio::test]
async fn a_full_queue_drops_the_oldest() {
    let store = Arc::new(MemoryDeviceStore::default());
    for i in 0..5 {
        let ch = format!("chat:r{i}");
        store
            .register(&device(&format!("u{i}"), &format!("d{i}"), &[&ch]), 10)
            .await
            .unwrap();
    }
    let rec = Recorder::new(vec![]);
    let cfg = PushConfig {
        queue_cap: 3,
        ..PushConfig::default()
    };
    let (p, _) = push_with(store, rec.clone(), cfg);
    for i in 0..5 {
        p.event(msg(&format!("r{i}"), 1, "s"));
    }
    p.flush_due(&nobody(), true).await;
    assert_eq!(p.queued(), 3);
    assert_eq!(p.metrics.dropped.get(), 2);
    assert_eq!(p.drain_ready().await, 3);
}

#[tokio::test]
async fn the_user_rate_limit_holds_pushes_back() {
    let store = Arc::new(MemoryDeviceStore::default());
    let rooms: Vec<String> = (0..5).map(|i| format!("chat:r{i}")).collect();
    let refs: Vec<&str> = rooms.iter().map(String::as_str).collect();
    store.register(&device("b", "b1", &refs), 10).await.unwrap();
    let rec = Recorder::new(vec![]);
    let cfg = PushConfig {
        user_burst: 2,
        ..PushConfig::default()
    };
    let (p, _) = push_with(store, rec.clone(), cfg);
    for i in 0..5 {
        p.event(msg(&format!("r{i}"), 1, "s"));
    }
    p.flush_due(&nobody(), true).await;
    assert_eq!(p.drain_ready().await, 2);
    assert_eq!(
        p.metrics.skipped.with_label_values(&["rate_limited"]).get(),
        3
    );
}

/// What both device stores must do.
async fn device_store_conformance(store: &dyn DeviceStore) {
    use devices::Registered::{Full, Stored};
    assert_eq!(
        store
            .register(&device("u", "a", &["chat:r"]), 2)
            .await
            .unwrap(),
        Stored
    );
    assert_eq!(
        store
            .register(&device("u", "b", &["order:o"]), 2)
            .await
            .unwrap(),
        Stored
    );
    assert_eq!(
        store.register(&device("u", "c", &[]), 2).await.unwrap(),
        Full
    );
    assert_eq!(
        store
            .register(&device("w", "a", &["chat:r"]), 2)
            .await
            .unwrap(),
        Stored
    );
    assert_eq!(store.users_for("chat:r", 10).await.unwrap(), ["u", "w"]);
    assert_eq!(store.users_for("chat:r", 1).await.unwrap(), ["u"]);
    assert!(store.users_for("chat:none", 10).await.unwrap().is_empty());
    let mut again = device("u", "a", &["chat:r"]);
    again.token = "new".into();
    assert_eq!(
        store.register(&again, 2).await.unwrap(),
        Stored,
        "same id replaces"
    );
    let mut ids: Vec<String> = store
        .devices("u")
        .await
        .unwrap()
        .into_iter()
        .map(|d| format!("{}={}", d.device_id, d.token))
        .collect();
    ids.sort();
    assert_eq!(ids, ["a=new", "b=tok-b"]);
    // A dead old token does not remove the re-registered device.
    assert!(!store.remove_token("u", "a", "tok-a").await.unwrap());
    assert!(store.remove_token("u", "a", "new").await.unwrap());
    assert!(store.unregister("u", "b").await.unwrap());
    assert!(!store.unregister("u", "b").await.unwrap());
    assert!(store.devices("u").await.unwrap().is_empty());
    assert!(store.claim("k1", 60_000).await.unwrap());
    assert!(!store.claim("k1", 60_000).await.unwrap(), "claimed once");
    assert!(store.claim("k2", 60_000).await.unwrap());
}

#[tokio::test]
async fn memory_device_store_conformance() {
    device_store_conformance(&MemoryDeviceStore::default()).await;
}

#[tokio::test]
async fn redis_device_store_conformance() {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
        return;
    };
    let opts = crate::engine::redis::RedisOptions {
        key_prefix: format!("wpt{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let conn = crate::engine::chat_redis::StoreConn::connect(&url, &opts)
        .await
        .expect("redis reachable");
    device_store_conformance(&devices::RedisDeviceStore::new(conn)).await;
}

#[tokio::test]
async fn redis_cluster_device_store_conformance() {
    if let Some(conn) = crate::engine::chat_redis::test_cluster_store().await {
        device_store_conformance(&devices::RedisDeviceStore::new(conn)).await;
    }
}

#[test]
fn reason_labels_are_bounded() {
    assert_eq!(reason_label("transport: connection refused"), "transport");
    assert_eq!(reason_label(""), "other");
    assert_eq!(reason_label(&"x".repeat(100)).len(), 40);
}

/// Two processes' live tables over one store: `b` sees `a`'s user live
/// only while `a` holds a subscription (per user, not per channel).
async fn live_channels_conformance(store: Arc<dyn DeviceStore>) {
    let a = live::LiveChannels::new(Arc::clone(&store));
    let b = live::LiveChannels::new(Arc::clone(&store));
    let ch = "order:o-1";
    assert!(!a.is_live(ch, "u1").await.unwrap());
    a.join(ch, "u1").await;
    a.join(ch, "u1").await;
    assert!(a.is_live(ch, "u1").await.unwrap());
    assert_eq!(b.is_live(ch, "u1").await.unwrap(), store.shares_live());
    assert!(!b.is_live(ch, "u2").await.unwrap(), "another user");
    assert!(
        !b.is_live("order:o-2", "u1").await.unwrap(),
        "another channel"
    );
    // The first leave keeps it (a second subscription is open).
    assert!(!a.leave(ch, "u1"));
    assert_eq!(b.is_live(ch, "u1").await.unwrap(), store.shares_live());
    // The last one: unmarked for every process.
    assert_eq!(a.leave(ch, "u1"), store.shares_live());
    a.unmark(ch, "u1").await;
    assert!(!a.is_live(ch, "u1").await.unwrap());
    assert!(!b.is_live(ch, "u1").await.unwrap());
    // Both processes live: one leaving leaves the other's mark.
    a.join(ch, "u1").await;
    b.join(ch, "u1").await;
    a.leave(ch, "u1");
    a.unmark(ch, "u1").await;
    assert_eq!(
        a.is_live(ch, "u1").await.unwrap(),
        store.shares_live(),
        "live on b"
    );
    assert!(b.is_live(ch, "u1").await.unwrap());
    assert_eq!(a.local_len(), 0);
    assert_eq!(b.local_len(), 1);
    b.refresh().await.unwrap();
    // A mark that expired (a process that died without unmarking) does
    // not count.
    if store.shares_live() {
        let pairs = [(ch.to_owned(), "u3".to_owned())];
        store
            .mark_live(&pairs, "dead", crate::now_ms() - 1)
            .await
            .unwrap();
        assert!(!a.is_live(ch, "u3").await.unwrap());
        store
            .mark_live(&pairs, "dead", crate::now_ms() + 60_000)
            .await
            .unwrap();
        assert!(a.is_live(ch, "u3").await.unwrap());
    }
}

#[tokio::test]
async fn memory_live_channels_are_per_user() {
    live_channels_conformance(Arc::new(MemoryDeviceStore::default())).await;
}

#[tokio::test]
async fn redis_live_channels_are_per_user_across_processes() {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
        return;
    };
    let opts = crate::engine::redis::RedisOptions {
        key_prefix: format!("wpt{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let conn = crate::engine::chat_redis::StoreConn::connect(&url, &opts)
        .await
        .expect("redis reachable");
    live_channels_conformance(Arc::new(devices::RedisDeviceStore::new(conn))).await;
}

#[tokio::test]
async fn redis_cluster_live_channels_are_per_user() {
    if let Some(conn) = crate::engine::chat_redis::test_cluster_store().await {
        live_channels_conformance(Arc::new(devices::RedisDeviceStore::new(conn))).await;
    }
}
