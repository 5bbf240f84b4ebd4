//! Conformance suites, one per trait: the same behaviour checks against
//! every [`TrackingStore`] ([`tracking_store_conformance`]) and every
//! [`Bus`] ([`bus_conformance`]), and the composed [`Engine`] broadcasting
//! each new latest position exactly once whichever side publishes it. The
//! Redis runs need a server at `WAYPOST_TEST_REDIS_URL` (scripts/test starts
//! one); without it the Redis cases are skipped with a message.

use std::sync::Arc;

use waypost_protocol::{Channel, Fix};

use super::memory::MemoryEngine;
use super::{Bus, Engine, TrackingStore};
use crate::config::Limits;
use crate::hub::{connection, Hub, Receiver};
use crate::metrics::Metrics;

const NOW: i64 = 1_700_000_000_000;

fn fix(seq: u64, ts: i64) -> Fix {
    Fix::new(seq, ts, 52.0 + seq as f64 * 1e-4, 13.0)
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) async fn ingest_is_idempotent(engine: &dyn TrackingStore) {
    let d = unique("d");
    let batch = [fix(1, NOW), fix(2, NOW + 1000), fix(3, NOW + 2000)];
    let out = engine.ingest(&d, "dev", &batch, NOW.into()).await.unwrap();
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    assert_eq!(out.new_latest.as_ref().map(|f| f.seq), Some(3));
    assert_eq!(out.previous_ts, None, "nothing live before");
    let next = engine
        .ingest(&d, "dev", &[fix(9, NOW + 9000)], NOW.into())
        .await
        .unwrap();
    assert_eq!(next.previous_ts, Some(NOW + 2000), "what watchers saw last");
    // After the online TTL the old position no longer counts as seen.
    let ttl = Limits::default().online_ttl.as_millis() as i64;
    let later = engine
        .ingest(&d, "dev", &[fix(10, NOW + 10_000)], (NOW + ttl + 1).into())
        .await
        .unwrap();
    assert_eq!(later.new_latest.as_ref().map(|f| f.seq), Some(10));
    assert_eq!(later.previous_ts, None, "expired");
    let again = engine.ingest(&d, "dev", &batch, NOW.into()).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    assert_eq!(again.new_latest, None);
    // The same seqs from another device are different fixes.
    let other = engine
        .ingest(&d, "dev-2", &batch[..1], NOW.into())
        .await
        .unwrap();
    assert_eq!(other.accepted, 1);
    let trail = engine.trail(&d, 0, 100).await.unwrap();
    assert_eq!(trail.len(), 6);
    assert_eq!(
        engine.trail(&d, 2, 100).await.unwrap(),
        vec![batch[2].clone(), fix(9, NOW + 9000), fix(10, NOW + 10_000)]
    );
}

pub(crate) async fn latest_keeps_newest_and_expires(engine: &dyn TrackingStore) {
    let d = unique("d");
    assert!(engine.latest(&d, NOW).await.unwrap().is_none());
    engine
        .ingest(&d, "dev", &[fix(5, NOW + 5000)], NOW.into())
        .await
        .unwrap();
    // An older fix (by ts) arriving late goes to the trail, not to latest.
    let late = engine
        .ingest(&d, "dev", &[fix(4, NOW + 4000)], NOW.into())
        .await
        .unwrap();
    assert_eq!(late.accepted, 1);
    assert_eq!(late.new_latest, None);
    let l = engine.latest(&d, NOW + 1000).await.unwrap().unwrap();
    assert_eq!(l.fix.seq, 5);
    assert_eq!(l.device_id, "dev");
    let t: Vec<u64> = engine
        .trail(&d, 0, 10)
        .await
        .unwrap()
        .iter()
        .map(|f| f.seq)
        .collect();
    assert_eq!(t, vec![4, 5], "trail is ordered by seq");
}

/// Latest positions expire after the online TTL.
async fn latest_expires(store: &dyn TrackingStore) {
    let d = unique("d");
    store
        .ingest(&d, "dev", &[fix(1, NOW)], NOW.into())
        .await
        .unwrap();
    let ttl = Limits::default().online_ttl.as_millis() as i64;
    assert!(store.latest(&d, NOW + ttl).await.unwrap().is_some());
    assert!(store.latest(&d, NOW + ttl + 1).await.unwrap().is_none());
}

/// Every [`TrackingStore`] (with default limits).
pub(crate) async fn tracking_store_conformance(store: &dyn TrackingStore) {
    ingest_is_idempotent(store).await;
    latest_keeps_newest_and_expires(store).await;
    latest_expires(store).await;
    store.ready().await.unwrap();
}

async fn recv_within(rx: &mut Receiver, what: &str) -> String {
    tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .unwrap_or_else(|_| panic!("{what} delivered within 5 s"))
        .unwrap()
        .text
        .to_string()
}

/// Every [`Bus`]: a publish reaches local subscribers of its channel only,
/// in order, watchers follow the hub, and a channel everybody left gets
/// nothing.
pub(crate) async fn bus_conformance(bus: &dyn Bus, hub: &Hub) {
    bus.ready().await.unwrap();
    let ch = Channel::tracking(unique("d"));
    let other = Channel::chat(unique("r"));
    let (h, mut rx) = connection(hub.next_conn_id(), 8);
    let (h2, mut rx2) = connection(hub.next_conn_id(), 8);
    hub.add(&ch, h.clone());
    bus.sync_subscription(&ch).await.unwrap();
    hub.add(&other, h2.clone());
    bus.sync_subscription(&other).await.unwrap();
    assert_eq!(bus.watchers(&ch).await.unwrap(), 1);
    bus.publish(&ch, "hello".into()).await.unwrap();
    bus.publish(&ch, "again".into()).await.unwrap();
    bus.publish(&other, "elsewhere".into()).await.unwrap();
    assert_eq!(recv_within(&mut rx, "publish").await, "hello");
    assert_eq!(recv_within(&mut rx, "second publish").await, "again");
    assert_eq!(recv_within(&mut rx2, "other channel").await, "elsewhere");
    // Names with separators and wildcards of other buses stay apart.
    let odd = Channel::chat("a.b*>c");
    let near = Channel::chat("a.b");
    let (h3, mut rx3) = connection(hub.next_conn_id(), 8);
    hub.add(&odd, h3.clone());
    bus.sync_subscription(&odd).await.unwrap();
    bus.publish(&near, "near".into()).await.unwrap();
    bus.publish(&odd, "odd".into()).await.unwrap();
    assert_eq!(recv_within(&mut rx3, "odd channel").await, "odd");

    // Leaving: no watchers, nothing delivered.
    assert!(hub.remove(&ch, h.id));
    bus.sync_subscription(&ch).await.unwrap();
    assert_eq!(bus.watchers(&ch).await.unwrap(), 0);
    bus.publish(&ch, "nobody".into()).await.unwrap();
    bus.publish(&other, "marker".into()).await.unwrap();
    assert_eq!(recv_within(&mut rx2, "marker").await, "marker");
    assert!(rx.try_frame().is_none(), "delivered after leaving");
    assert!(hub.remove(&other, h2.id));
    bus.sync_subscription(&other).await.unwrap();
    assert!(hub.remove(&odd, h3.id));
    bus.sync_subscription(&odd).await.unwrap();
    assert_eq!(*bus.resubscribed().borrow(), 0, "no reconnect happened");
}

/// The composed engine broadcasts a new latest position once, whether the
/// store published it (`published`) or the engine had to.
pub(crate) async fn engine_publishes_new_latest_once(engine: &Engine, hub: &Hub) {
    let d = unique("d");
    let ch = Channel::tracking(d.clone());
    let (h, mut rx) = connection(hub.next_conn_id(), 8);
    hub.add(&ch, h.clone());
    engine.sync_subscription(&ch).await.unwrap();
    let out = engine
        .ingest(&d, "dev", &[fix(1, NOW), fix(2, NOW + 1)], NOW.into())
        .await
        .unwrap();
    assert!(out.published);
    let got = recv_within(&mut rx, "location").await;
    assert!(
        got.contains(r#""type":"location""#) && got.contains(r#""seq":2"#),
        "{got}"
    );
    // A duplicate batch publishes nothing (without `WAIT`: nothing can
    // be stored without its frame); the next fix is the next frame.
    let again = engine
        .ingest(&d, "dev", &[fix(1, NOW), fix(2, NOW + 1)], NOW.into())
        .await
        .unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 2));
    // Behind `WAIT` the resend publishes the latest position again (its
    // first attempt may have been stored without its frame).
    let waiting = engine.clone().republishing_resends(true);
    waiting
        .ingest(&d, "dev", &[fix(1, NOW), fix(2, NOW + 1)], NOW.into())
        .await
        .unwrap();
    let repeat = recv_within(&mut rx, "repeated location").await;
    assert!(repeat.contains(r#""seq":2"#), "{repeat}");
    engine
        .ingest(&d, "dev", &[fix(3, NOW + 2)], NOW.into())
        .await
        .unwrap();
    let next = recv_within(&mut rx, "next location").await;
    assert!(next.contains(r#""seq":3"#), "{next}");
    assert!(rx.try_frame().is_none(), "published twice");
    assert!(hub.remove(&ch, h.id));
    engine.sync_subscription(&ch).await.unwrap();
}

#[tokio::test]
async fn memory_conformance() {
    let hub = Arc::new(Hub::new(Metrics::new()));
    let engine = MemoryEngine::new(Arc::clone(&hub), Limits::default());
    tracking_store_conformance(&engine).await;
    bus_conformance(&engine, &hub).await;
    engine_publishes_new_latest_once(&Engine::memory(Arc::clone(&hub), Limits::default()), &hub)
        .await;
}

/// Every bound holds: the dedup window forgets its oldest seqs but refuses
/// anything at or below the floor, and the trail keeps the highest seqs.
pub(crate) async fn windows_and_trail_are_bounded(engine: &dyn TrackingStore) {
    // Needs `dedup_window: 3, trail_len: 4`.
    let d = unique("d");
    let batch: Vec<Fix> = (1..=5).map(|s| fix(s, NOW + s as i64)).collect();
    let out = engine.ingest(&d, "dev", &batch, NOW.into()).await.unwrap();
    assert_eq!(out.accepted, 5);
    let again = engine.ingest(&d, "dev", &batch, NOW.into()).await.unwrap();
    assert_eq!(
        (again.accepted, again.duplicates),
        (0, 5),
        "below the floor counts as seen"
    );
    let late = engine
        .ingest(&d, "dev", &[fix(7, NOW + 7), fix(6, NOW + 6)], NOW.into())
        .await
        .unwrap();
    assert_eq!(late.accepted, 2, "a late seq above the floor is new");
    let seqs: Vec<u64> = engine
        .trail(&d, 0, 100)
        .await
        .unwrap()
        .iter()
        .map(|f| f.seq)
        .collect();
    assert_eq!(seqs, vec![4, 5, 6, 7], "trail keeps the highest seqs");
    assert_eq!(engine.trail(&d, 5, 1).await.unwrap()[0].seq, 6);
    assert!(engine.trail(&d, u64::MAX, 10).await.unwrap().is_empty());
    // A run of seqs crossing 10^15 (a digit carry in the Redis script's
    // arithmetic) and one more above a gap; trimming takes exactly the three
    // lowest, so the gap stays open.
    let c = unique("d");
    let t = 1_000_000_000_000_000u64;
    let mut run: Vec<Fix> = (t - 2..=t + 2).map(|s| fix(s, NOW)).collect();
    run.push(fix(t + 10, NOW));
    assert_eq!(
        engine
            .ingest(&c, "dev", &run, NOW.into())
            .await
            .unwrap()
            .accepted,
        6
    );
    for (s, new) in [(t, false), (t + 1, false), (t + 5, true), (t + 10, false)] {
        let out = engine
            .ingest(&c, "dev", &[fix(s, NOW)], NOW.into())
            .await
            .unwrap();
        assert_eq!(out.accepted == 1, new, "seq {s}");
    }
    // Seqs beyond 2^53 stay exact.
    let big = [fix(u64::MAX - 1, NOW + 8), fix(u64::MAX, NOW + 9)];
    let e = unique("d");
    assert_eq!(
        engine
            .ingest(&e, "dev", &big, NOW.into())
            .await
            .unwrap()
            .accepted,
        2
    );
    assert_eq!(
        engine
            .ingest(&e, "dev", &big, NOW.into())
            .await
            .unwrap()
            .accepted,
        0
    );
    let tail = engine.trail(&e, u64::MAX - 1, 10).await.unwrap();
    assert_eq!(
        tail.iter().map(|f| f.seq).collect::<Vec<_>>(),
        vec![u64::MAX]
    );
}

fn bounded_limits() -> Limits {
    Limits {
        dedup_window: 3,
        trail_len: 4,
        ..Limits::default()
    }
}

#[tokio::test]
async fn memory_bounds() {
    let hub = Arc::new(Hub::new(Metrics::new()));
    windows_and_trail_are_bounded(&MemoryEngine::new(hub, bounded_limits())).await;
}

mod redis_engine {
    //! The Redis engine against a real Redis: the shared conformance checks,
    //! two engines as two processes, and survival of a Redis restart.

    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::open::redis as open_redis;
    use crate::engine::redis::{RedisBus, RedisConn, RedisOptions, RedisTrackingStore};
    use crate::hub::ConnHandle;

    fn url() -> Option<String> {
        let url = std::env::var("WAYPOST_TEST_REDIS_URL").ok()?;
        (!url.is_empty()).then_some(url)
    }

    fn opts() -> RedisOptions {
        RedisOptions {
            probe_interval: Duration::from_millis(500),
            backoff_cap: Duration::from_millis(500),
            watcher_scan: Duration::from_millis(100),
            ..RedisOptions::default()
        }
    }

    async fn engine(url: &str, hub: &Arc<Hub>, limits: Limits, metrics: Metrics) -> Engine {
        open_redis(url, Arc::clone(hub), limits, metrics, opts())
            .await
            .unwrap()
            .0
    }

    async fn command(url: &str) -> redis::aio::MultiplexedConnection {
        redis::Client::open(url)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    async fn numsub(conn: &mut redis::aio::MultiplexedConnection, channel: &Channel) -> u64 {
        let name = format!("waypost:ch2:{channel}");
        let reply: Vec<(String, u64)> = redis::cmd("PUBSUB")
            .arg("NUMSUB")
            .arg(&name)
            .query_async(conn)
            .await
            .unwrap();
        reply[0].1
    }

    async fn recv(rx: &mut Receiver) -> String {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("delivered within 5 s")
            .unwrap()
            .text
            .to_string()
    }

    /// Polls `check` until it holds or 3 s pass.
    async fn eventually<F, Fut>(what: &str, check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        eventually_within(Duration::from_secs(3), what, check).await;
    }

    async fn eventually_within<F, Fut>(limit: Duration, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + limit;
        while !check().await {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn redis_conformance() {
        let Some(url) = url() else {
            eprintln!("skipping redis_conformance: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let conn = RedisConn::connect(&url, opts()).await.unwrap();
        let store = RedisTrackingStore::new(conn.clone(), Limits::default(), false);
        tracking_store_conformance(&store).await;
        let bounded = RedisTrackingStore::new(conn.clone(), bounded_limits(), false);
        windows_and_trail_are_bounded(&bounded).await;

        let bus = Arc::new(
            RedisBus::start(conn.clone(), Arc::clone(&hub), Metrics::new())
                .await
                .unwrap(),
        );
        bus_conformance(bus.as_ref(), &hub).await;
        // The store publishing from its script, and the engine publishing
        // after a store that does not.
        for live_publish in [true, false] {
            let store = RedisTrackingStore::new(conn.clone(), Limits::default(), live_publish);
            let e = Engine::new("redis", bus.clone(), Arc::new(store));
            engine_publishes_new_latest_once(&e, &hub).await;
        }
        bus.shutdown().await;
        bus.shutdown().await;
    }

    #[tokio::test]
    async fn redis_two_processes_share_fanout_and_watchers() {
        let Some(url) = url() else {
            eprintln!("skipping redis_two_processes: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let (hub_a, hub_b) = (
            Arc::new(Hub::new(Metrics::new())),
            Arc::new(Hub::new(Metrics::new())),
        );
        let a = engine(&url, &hub_a, Limits::default(), Metrics::new()).await;
        let b = engine(&url, &hub_b, Limits::default(), Metrics::new()).await;
        let mut redis = command(&url).await;
        let driver = unique("d");
        let ch = Channel::tracking(driver.clone());

        // Three local watchers on A: still one SUBSCRIBE.
        let mut on_a: Vec<(ConnHandle, Receiver)> = (0..3)
            .map(|_| connection(hub_a.next_conn_id(), 8))
            .collect();
        for (h, _) in &on_a {
            hub_a.add(&ch, h.clone());
            a.sync_subscription(&ch).await.unwrap();
        }
        assert_eq!(numsub(&mut redis, &ch).await, 1);
        let (hb, mut rb) = connection(hub_b.next_conn_id(), 8);
        hub_b.add(&ch, hb.clone());
        b.sync_subscription(&ch).await.unwrap();
        assert_eq!(numsub(&mut redis, &ch).await, 2);
        assert_eq!(a.watchers(&ch).await.unwrap(), 4);
        assert_eq!(b.watchers(&ch).await.unwrap(), 4);
        let out = b
            .ingest(&driver, "dev", &[fix(1, NOW)], NOW.into())
            .await
            .unwrap();
        assert_eq!(out.watchers, 4, "ingest counts watchers of every process");
        // The ingest script published the location frame itself.
        assert!(out.published);
        for (_, rx) in &mut on_a {
            assert!(recv(rx).await.contains(r#""type":"location""#));
        }
        assert!(recv(&mut rb).await.contains(r#""type":"location""#));

        // Published through B, received by every watcher on A (and B).
        b.publish(&ch, "from-b".into()).await.unwrap();
        for (_, rx) in &mut on_a {
            assert_eq!(recv(rx).await, "from-b");
        }
        assert_eq!(recv(&mut rb).await, "from-b");

        // A watcher leaving (not the last) is noticed by the periodic scan.
        let (h0, _) = on_a.remove(0);
        assert!(!hub_a.remove(&ch, h0.id));
        eventually("watchers drop to 3", || async {
            a.watchers(&ch).await.unwrap() == 3
        })
        .await;
        // The last local watcher leaving unsubscribes A.
        for (h, _) in &on_a {
            if hub_a.remove(&ch, h.id) {
                a.sync_subscription(&ch).await.unwrap();
            }
        }
        assert_eq!(numsub(&mut redis, &ch).await, 1);
        assert_eq!(b.watchers(&ch).await.unwrap(), 1);
        // A join and a leave racing: the sync resolves to the hub's truth.
        let (h, _rh) = connection(hub_a.next_conn_id(), 8);
        hub_a.add(&ch, h.clone());
        hub_a.remove(&ch, h.id);
        a.sync_subscription(&ch).await.unwrap();
        assert_eq!(numsub(&mut redis, &ch).await, 1);
        assert!(hub_b.remove(&ch, hb.id));
        b.sync_subscription(&ch).await.unwrap();
        assert_eq!(numsub(&mut redis, &ch).await, 0);
        assert_eq!(a.watchers(&ch).await.unwrap(), 0);

        // Shutdown removes the instance's watcher fields.
        let other = Channel::tracking(unique("d"));
        let (h, _r) = connection(hub_a.next_conn_id(), 8);
        hub_a.add(&other, h);
        a.sync_subscription(&other).await.unwrap();
        assert_eq!(b.watchers(&other).await.unwrap(), 1);
        a.shutdown().await;
        let fields: Vec<String> = redis::cmd("HKEYS")
            .arg(format!("waypost:watchers:{other}"))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(fields.is_empty(), "left behind: {fields:?}");
        assert_eq!(numsub(&mut redis, &other).await, 0);
        b.shutdown().await;
    }

    /// Joins and leaves racing on a few channels from many tasks (syncing as
    /// the WebSocket handler does: after every join, after a last leave)
    /// end with one SUBSCRIBE for the channel that still has local
    /// subscribers and none for the channels everybody left.
    #[tokio::test]
    async fn redis_racing_joins_and_leaves_end_at_the_truth() {
        use rand::{Rng, SeedableRng};
        let Some(url) = url() else {
            eprintln!("skipping redis_racing_joins_and_leaves: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let e = Arc::new(engine(&url, &hub, Limits::default(), Metrics::new()).await);
        let channels: Vec<Channel> = (0..4).map(|_| Channel::tracking(unique("d"))).collect();
        let mut tasks = Vec::new();
        for t in 0..24u64 {
            let (hub, e, channels) = (Arc::clone(&hub), Arc::clone(&e), channels.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                let (h, _rx) = connection(hub.next_conn_id(), 8);
                for _ in 0..40 {
                    let ch = &channels[rng.random_range(0..channels.len())];
                    hub.add(ch, h.clone());
                    e.sync_subscription(ch).await.unwrap();
                    if rng.random_ratio(3, 4) && hub.remove(ch, h.id) {
                        e.sync_subscription(ch).await.unwrap();
                    }
                }
                // Finally everybody leaves the first three channels; even
                // tasks stay on (or join) the last one.
                for (i, ch) in channels.iter().enumerate() {
                    if i == 3 && t % 2 == 0 {
                        hub.add(ch, h.clone());
                        e.sync_subscription(ch).await.unwrap();
                    } else if hub.remove(ch, h.id) {
                        e.sync_subscription(ch).await.unwrap();
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let mut redis = command(&url).await;
        for (i, ch) in channels.iter().enumerate() {
            let want = u64::from(i == 3);
            assert_eq!(hub.local_count(ch) > 0, i == 3);
            assert_eq!(numsub(&mut redis, ch).await, want, "{ch}");
        }
        e.shutdown().await;
    }

    /// A subscription the hub no longer backs (a leave whose sync got lost)
    /// is dropped by the periodic reconcile; a hub channel the engine missed
    /// gets subscribed.
    #[tokio::test]
    async fn redis_reconcile_fixes_drift() {
        let Some(url) = url() else {
            eprintln!("skipping redis_reconcile_fixes_drift: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let e = engine(&url, &hub, Limits::default(), Metrics::new()).await;
        let mut redis = command(&url).await;
        let (gone, missed) = (
            Channel::tracking(unique("d")),
            Channel::tracking(unique("d")),
        );
        let (h, _r) = connection(hub.next_conn_id(), 8);
        hub.add(&gone, h.clone());
        e.sync_subscription(&gone).await.unwrap();
        assert_eq!(numsub(&mut redis, &gone).await, 1);
        hub.remove(&gone, h.id); // no sync: drift
        let (m, _rm) = connection(hub.next_conn_id(), 8);
        hub.add(&missed, m); // no sync: drift
                             // Reconcile runs every 6 probes (500 ms in these tests).
        eventually_within(Duration::from_secs(6), "drift is fixed", || async {
            let mut c = redis.clone();
            numsub(&mut c, &gone).await == 0 && numsub(&mut c, &missed).await == 1
        })
        .await;
        e.shutdown().await;
    }

    /// Differential check: the same random ingest history (resends,
    /// overlapping batches, late fixes, more devices than remembered, an
    /// expired latest) gives the same outcomes, trail and latest position on
    /// Redis as on the memory engine.
    #[tokio::test]
    async fn redis_matches_memory_on_random_ingests() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let Some(url) = url() else {
            eprintln!("skipping redis_matches_memory: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let limits = Limits {
            dedup_window: 6,
            trail_len: 9,
            ..Limits::default()
        };
        let ttl = limits.online_ttl.as_millis() as i64;
        let hub = Arc::new(Hub::new(Metrics::new()));
        let memory = MemoryEngine::new(Arc::clone(&hub), limits.clone());
        let redis = engine(&url, &hub, limits, Metrics::new()).await;
        for seed in 0..8u64 {
            let mut rng = StdRng::seed_from_u64(seed);
            let d = unique("d");
            let mut now = NOW;
            // Next fresh seq per device; devices use disjoint seq ranges so
            // the trail order is fully determined.
            let mut next = [0u64; 11];
            for step in 0..60 {
                now += if rng.random_ratio(1, 20) {
                    ttl + 1
                } else {
                    100
                };
                let dev = rng.random_range(0..11usize);
                let base = dev as u64 * 1_000_000;
                let len = rng.random_range(1..6u64);
                // Mostly fresh seqs, sometimes a resend or an older range.
                let start = match rng.random_range(0..6) {
                    0 | 1 => next[dev].saturating_sub(rng.random_range(0..12)),
                    2 => next[dev] + rng.random_range(1..4),
                    _ => next[dev],
                };
                // Coordinates as a GPS prints them (few digits): those
                // round-trip exactly through JSON.
                let batch: Vec<Fix> = (start..start + len)
                    .map(|s| {
                        let lat: f64 = format!("52.{:06}", s % 1_000_000).parse().unwrap();
                        // Sometimes much older than the latest position.
                        let age = if rng.random_ratio(1, 5) {
                            rng.random_range(40_000..50_000)
                        } else {
                            rng.random_range(0..5_000)
                        };
                        Fix::new(base + s, now - age, lat, 13.4)
                    })
                    .collect();
                next[dev] = next[dev].max(start + len);
                let device = format!("dev-{dev}");
                let m = memory
                    .ingest(&d, &device, &batch, now.into())
                    .await
                    .unwrap();
                let r = redis.ingest(&d, &device, &batch, now.into()).await.unwrap();
                let ctx = format!("seed {seed} step {step} device {device} batch {start}..+{len}");
                assert_eq!(m.accepted, r.accepted, "{ctx}");
                assert_eq!(m.duplicates, r.duplicates, "{ctx}");
                assert_eq!(m.new_latest, r.new_latest, "{ctx}");
                assert_eq!(m.previous_ts, r.previous_ts, "{ctx}");
                assert_eq!(
                    memory.trail(&d, 0, 100).await.unwrap(),
                    redis.trail(&d, 0, 100).await.unwrap(),
                    "{ctx}"
                );
                assert_eq!(
                    memory.latest(&d, now).await.unwrap(),
                    redis.latest(&d, now).await.unwrap(),
                    "{ctx}"
                );
            }
        }
        // Single fixes with random seqs in a small range: runs split, merge
        // and are trimmed partly, checked against the memory engine's
        // per-insert window.
        for seed in 0..4u64 {
            let mut rng = StdRng::seed_from_u64(100 + seed);
            let d = unique("d");
            for step in 0..300 {
                let s = rng.random_range(0..40u64);
                let f = [Fix::new(s, NOW + step, 52.5, 13.4)];
                let m = memory.ingest(&d, "dev", &f, NOW.into()).await.unwrap();
                let r = redis.ingest(&d, "dev", &f, NOW.into()).await.unwrap();
                assert_eq!(m.accepted, r.accepted, "seed {seed} step {step} seq {s}");
            }
            assert_eq!(
                memory.trail(&d, 0, 100).await.unwrap(),
                redis.trail(&d, 0, 100).await.unwrap()
            );
        }
        redis.shutdown().await;
    }

    /// A TCP proxy in front of Redis that can silently stall every pub/sub
    /// connection open so far: bytes stop flowing both ways but the sockets
    /// stay open, like a NAT that forgot the flow.
    struct StallProxy {
        port: u16,
        /// Connections with an id below this, once seen sending SUBSCRIBE,
        /// are stalled.
        stall_below: Arc<std::sync::atomic::AtomicU64>,
        /// Stall those connections whatever they carry, not only pub/sub.
        stall_all: Arc<std::sync::atomic::AtomicBool>,
        /// Id of the next accepted connection.
        next_id: Arc<std::sync::atomic::AtomicU64>,
        task: tokio::task::JoinHandle<()>,
    }

    impl StallProxy {
        async fn start(upstream: std::net::SocketAddr) -> Self {
            use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let stall_below = Arc::new(AtomicU64::new(0));
            let stall = Arc::clone(&stall_below);
            let stall_all = Arc::new(AtomicBool::new(false));
            let all = Arc::clone(&stall_all);
            let next_id = Arc::new(AtomicU64::new(0));
            let ids = Arc::clone(&next_id);
            let task = tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                        continue;
                    };
                    let id = ids.fetch_add(1, Ordering::AcqRel);
                    let is_pubsub = Arc::new(AtomicBool::new(false));
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let stalled = {
                        let (stall, all, is_pubsub) =
                            (Arc::clone(&stall), Arc::clone(&all), Arc::clone(&is_pubsub));
                        move || {
                            id < stall.load(Ordering::Acquire)
                                && (all.load(Ordering::Acquire)
                                    || is_pubsub.load(Ordering::Acquire))
                        }
                    };
                    let up_stalled = stalled.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = cr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if buf[..n]
                                .windows(9)
                                .any(|w| w.eq_ignore_ascii_case(b"SUBSCRIBE"))
                            {
                                is_pubsub.store(true, Ordering::Release);
                            }
                            if !up_stalled() && sw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        while let Ok(n) = sr.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            if !stalled() && cw.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            Self {
                port,
                stall_below,
                stall_all,
                next_id,
                task,
            }
        }

        /// Stalls every pub/sub connection opened so far (with `all`, every
        /// connection).
        fn stall(&self, all: bool) {
            self.stall_all
                .store(all, std::sync::atomic::Ordering::Release);
            let next = self.next_id.load(std::sync::atomic::Ordering::Acquire);
            self.stall_below
                .store(next, std::sync::atomic::Ordering::Release);
        }
    }

    impl Drop for StallProxy {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    #[tokio::test]
    async fn redis_probe_recovers_a_silently_stalled_subscription() {
        let Some(url) = url() else {
            eprintln!("skipping redis_probe_recovers: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let proxy = StallProxy::start(upstream(&url).await).await;
        let hub = Arc::new(Hub::new(Metrics::new()));
        let metrics = Metrics::new();
        let proxied = format!("redis://127.0.0.1:{}", proxy.port);
        let e = engine(&proxied, &hub, Limits::default(), metrics.clone()).await;
        let ch = Channel::tracking(unique("d"));
        let (h, mut rx) = connection(hub.next_conn_id(), 64);
        hub.add(&ch, h);
        e.sync_subscription(&ch).await.unwrap();
        e.publish(&ch, "before".into()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "before");

        // Connections opened from here on pass; the current pub/sub one is
        // stalled (not closed), so only the probe can notice.
        let stalled_at = Instant::now();
        proxy.stall(false);
        e.publish(&ch, "vanishes".into()).await.unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(300), rx.recv())
                .await
                .is_err(),
            "the stall should swallow the message"
        );
        let mut got = None;
        while stalled_at.elapsed() < Duration::from_secs(5) {
            e.publish(&ch, "after".into()).await.unwrap();
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                got = Some(m.text.to_string());
                break;
            }
        }
        assert_eq!(
            got.as_deref(),
            Some("after"),
            "probe did not recover within 5 s"
        );
        eprintln!(
            "stalled subscription recovered after {:?}",
            stalled_at.elapsed()
        );
        // Counted once the new connection passed its first probe, which
        // may be just after the first delivery.
        eventually("the reconnect is counted", || async {
            metrics.redis_reconnects.get() >= 1
        })
        .await;
        e.shutdown().await;
    }

    async fn upstream(url: &str) -> std::net::SocketAddr {
        let info = redis::Client::open(url).unwrap();
        let redis::ConnectionAddr::Tcp(host, port) = info.get_connection_info().addr.clone() else {
            panic!("WAYPOST_TEST_REDIS_URL must be a redis:// TCP URL");
        };
        let addr = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .next()
            .unwrap();
        addr
    }

    /// Every connection stalls, the command connection included: commands
    /// time out until the engine replaces that connection, then the probe
    /// notices the stalled subscription and delivery resumes.
    #[tokio::test]
    async fn redis_recovers_when_every_connection_stalls() {
        let Some(url) = url() else {
            eprintln!("skipping redis_recovers_when_every_connection_stalls: WAYPOST_TEST_REDIS_URL is not set");
            return;
        };
        let proxy = StallProxy::start(upstream(&url).await).await;
        let hub = Arc::new(Hub::new(Metrics::new()));
        let metrics = Metrics::new();
        let fast = RedisOptions {
            op_timeout: Duration::from_millis(300),
            ..opts()
        };
        let proxied = format!("redis://127.0.0.1:{}", proxy.port);
        let e = open_redis(
            &proxied,
            Arc::clone(&hub),
            Limits::default(),
            metrics.clone(),
            fast,
        )
        .await
        .unwrap()
        .0;
        let ch = Channel::tracking(unique("d"));
        let (h, mut rx) = connection(hub.next_conn_id(), 64);
        hub.add(&ch, h);
        e.sync_subscription(&ch).await.unwrap();
        e.publish(&ch, "before".into()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "before");

        let stalled_at = Instant::now();
        proxy.stall(true);
        let mut timeouts = 0;
        let mut got = None;
        while stalled_at.elapsed() < Duration::from_secs(8) {
            match e.publish(&ch, "after".into()).await {
                Err(_) => timeouts += 1,
                Ok(()) => {
                    if let Ok(Some(m)) =
                        tokio::time::timeout(Duration::from_millis(100), rx.recv()).await
                    {
                        got = Some(m.text.to_string());
                        break;
                    }
                }
            }
        }
        assert!(timeouts >= 1, "the stall should make commands time out");
        assert_eq!(got.as_deref(), Some("after"), "no recovery within 8 s");
        eprintln!(
            "recovered from a full stall after {:?} ({timeouts} failed publishes)",
            stalled_at.elapsed()
        );
        // Counted once the new connection passed its first probe, which
        // may be just after the first delivery.
        eventually("the reconnect is counted", || async {
            metrics.redis_reconnects.get() >= 1
        })
        .await;
        e.shutdown().await;
    }

    /// A redis-server this test owns, killed on drop.
    struct OwnRedis {
        child: Child,
        port: u16,
    }

    impl OwnRedis {
        fn bin() -> String {
            std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into())
        }

        async fn start(port: u16) -> Option<Self> {
            let child = Command::new(Self::bin())
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let me = Self { child, port };
            let client = redis::Client::open(me.url()).ok()?;
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(mut c) = client.get_multiplexed_async_connection().await {
                    if redis::cmd("PING")
                        .query_async::<String>(&mut c)
                        .await
                        .is_ok()
                    {
                        return Some(me);
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }

        fn url(&self) -> String {
            format!("redis://127.0.0.1:{}", self.port)
        }

        fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for OwnRedis {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[tokio::test]
    async fn redis_subscription_survives_restart() {
        let port = free_port();
        let Some(mut server) = OwnRedis::start(port).await else {
            eprintln!(
                "skipping redis_subscription_survives_restart: cannot run {}",
                OwnRedis::bin()
            );
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let metrics = Metrics::new();
        let e = engine(&server.url(), &hub, Limits::default(), metrics.clone()).await;
        let resubscribed = e.bus.resubscribed();
        let ch = Channel::tracking(unique("d"));
        let (h, mut rx) = connection(hub.next_conn_id(), 64);
        hub.add(&ch, h);
        e.sync_subscription(&ch).await.unwrap();
        e.publish(&ch, "before".into()).await.unwrap();
        assert_eq!(recv(&mut rx).await, "before");

        server.kill();
        assert!(e.publish(&ch, "lost".into()).await.is_err());
        eventually("ready() reports the outage", || async {
            e.ready().await.is_err()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _server = OwnRedis::start(port)
            .await
            .expect("redis restarts on the same port");

        // Nobody re-subscribes by hand: the engine must do it.
        let back = Instant::now();
        let mut got = None;
        while back.elapsed() < Duration::from_secs(5) {
            let _ = e.publish(&ch, "after".into()).await;
            if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                got = Some(m.text.to_string());
                break;
            }
        }
        assert_eq!(
            got.as_deref(),
            Some("after"),
            "no delivery within 5 s of restart"
        );
        eprintln!(
            "delivery resumed {:?} after redis came back",
            back.elapsed()
        );
        // Counted once the new connection passed its first probe, which
        // may be just after the first delivery.
        eventually("the reconnect is counted", || async {
            metrics.redis_reconnects.get() >= 1
        })
        .await;
        eventually(
            "the bus signals the resubscribe (for the tail re-dispatch)",
            || {
                let changed = resubscribed.has_changed().unwrap_or(false);
                async move { changed }
            },
        )
        .await;
        eventually("ready() again", || async { e.ready().await.is_ok() }).await;
        e.shutdown().await;
    }
}

pub(crate) mod nats_bus {
    //! The NATS bus against a real `nats-server` (started here on a free
    //! port; `$NATS_SERVER_BIN`, else from PATH or /usr/sbin) with watcher
    //! counts in the Redis at `WAYPOST_TEST_REDIS_URL`: the bus conformance
    //! suite, two processes, and a NATS restart (resubscribe, resubscribed
    //! signal, delivery resumes).

    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;
    use crate::engine::nats::{NatsBus, NatsOptions};
    use crate::engine::redis::{RedisConn, RedisOptions, RedisTrackingStore};

    fn redis_url() -> Option<String> {
        let url = std::env::var("WAYPOST_TEST_REDIS_URL").ok()?;
        (!url.is_empty()).then_some(url)
    }

    /// A nats-server this test owns, killed on drop.
    pub(crate) struct OwnNats {
        child: Child,
        pub port: u16,
    }

    impl OwnNats {
        pub fn bin() -> String {
            std::env::var("NATS_SERVER_BIN").unwrap_or_else(|_| {
                if std::path::Path::new("/usr/sbin/nats-server").exists() {
                    "/usr/sbin/nats-server".into()
                } else {
                    "nats-server".into()
                }
            })
        }

        pub async fn start(port: u16) -> Option<Self> {
            let child = Command::new(Self::bin())
                .args(["-a", "127.0.0.1", "-p", &port.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?;
            let me = Self { child, port };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .is_ok()
                {
                    return Some(me);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            None
        }

        pub fn url(&self) -> String {
            format!("nats://127.0.0.1:{}", self.port)
        }

        pub fn kill(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    impl Drop for OwnNats {
        fn drop(&mut self) {
            self.kill();
        }
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn opts() -> NatsOptions {
        NatsOptions {
            op_timeout: Duration::from_secs(1),
            ping_interval: Duration::from_millis(500),
            ..NatsOptions::default()
        }
    }

    async fn setup(what: &str) -> Option<(OwnNats, RedisConn)> {
        let Some(url) = redis_url() else {
            eprintln!("skipping {what}: WAYPOST_TEST_REDIS_URL is not set");
            return None;
        };
        let Some(nats) = OwnNats::start(free_port()).await else {
            eprintln!("skipping {what}: cannot run {}", OwnNats::bin());
            return None;
        };
        let redis = RedisConn::connect(&url, RedisOptions::default())
            .await
            .unwrap();
        Some((nats, redis))
    }

    #[tokio::test]
    async fn nats_conformance() {
        let Some((nats, redis)) = setup("nats_conformance").await else {
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let bus = Arc::new(
            NatsBus::connect(&nats.url(), opts(), &redis, Arc::clone(&hub))
                .await
                .unwrap(),
        );
        bus_conformance(bus.as_ref(), &hub).await;
        let store = RedisTrackingStore::new(redis.clone(), Limits::default(), false);
        let e = Engine::new("nats+redis", bus.clone(), Arc::new(store));
        engine_publishes_new_latest_once(&e, &hub).await;
        bus.shutdown().await;
        bus.shutdown().await;
    }

    #[tokio::test]
    async fn nats_two_processes_share_fanout_and_watchers() {
        let Some((nats, redis)) = setup("nats_two_processes").await else {
            return;
        };
        let (hub_a, hub_b) = (
            Arc::new(Hub::new(Metrics::new())),
            Arc::new(Hub::new(Metrics::new())),
        );
        // Two processes: two connection setups (each its own instance id).
        let redis_b = RedisConn::connect(&redis_url().unwrap(), RedisOptions::default())
            .await
            .unwrap();
        let a = NatsBus::connect(&nats.url(), opts(), &redis, Arc::clone(&hub_a))
            .await
            .unwrap();
        let b = NatsBus::connect(&nats.url(), opts(), &redis_b, Arc::clone(&hub_b))
            .await
            .unwrap();
        let ch = Channel::chat(unique("r"));
        let (ha, mut ra) = connection(hub_a.next_conn_id(), 8);
        let (ha2, mut ra2) = connection(hub_a.next_conn_id(), 8);
        let (hb, mut rb) = connection(hub_b.next_conn_id(), 8);
        hub_a.add(&ch, ha.clone());
        a.sync_subscription(&ch).await.unwrap();
        hub_a.add(&ch, ha2.clone());
        a.sync_subscription(&ch).await.unwrap();
        hub_b.add(&ch, hb.clone());
        b.sync_subscription(&ch).await.unwrap();
        assert_eq!(a.watchers(&ch).await.unwrap(), 3);
        b.publish(&ch, "from-b".into()).await.unwrap();
        for rx in [&mut ra, &mut ra2, &mut rb] {
            assert_eq!(recv_within(rx, "from-b").await, "from-b");
        }
        // Exactly once per local subscriber (one NATS subscription on A).
        a.publish(&ch, "from-a".into()).await.unwrap();
        assert_eq!(recv_within(&mut ra, "from-a").await, "from-a");
        assert_eq!(recv_within(&mut rb, "from-a").await, "from-a");
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(ra.try_frame().is_none(), "delivered twice");
        a.shutdown().await;
        assert_eq!(
            b.watchers(&ch).await.unwrap(),
            1,
            "shutdown removes A's count"
        );
        b.shutdown().await;
    }

    /// nats-server killed and started again on the same port: the bus
    /// reconnects by itself, resubscribes, signals it, and delivery resumes
    /// on the same hub subscription.
    #[tokio::test]
    async fn nats_subscription_survives_restart() {
        let Some((mut nats, redis)) = setup("nats_subscription_survives_restart").await else {
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let bus = NatsBus::connect(&nats.url(), opts(), &redis, Arc::clone(&hub))
            .await
            .unwrap();
        let mut resubscribed = bus.resubscribed();
        let ch = Channel::tracking(unique("d"));
        let (h, mut rx) = connection(hub.next_conn_id(), 64);
        hub.add(&ch, h);
        bus.sync_subscription(&ch).await.unwrap();
        bus.publish(&ch, "before".into()).await.unwrap();
        assert_eq!(recv_within(&mut rx, "before").await, "before");

        let port = nats.port;
        nats.kill();
        let down = Instant::now();
        while bus.ready().await.is_ok() {
            assert!(
                down.elapsed() < Duration::from_secs(5),
                "ready() missed the outage"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let _nats = OwnNats::start(port)
            .await
            .expect("nats restarts on the same port");
        let back = Instant::now();
        tokio::time::timeout(Duration::from_secs(10), resubscribed.changed())
            .await
            .expect("resubscribed within 10 s of the restart")
            .unwrap();
        eprintln!(
            "nats bus resubscribed {:?} after the restart",
            back.elapsed()
        );
        assert!(bus.ready().await.is_ok());
        // Nobody re-subscribes by hand.
        bus.publish(&ch, "after".into()).await.unwrap();
        let mut got = recv_within(&mut rx, "after").await;
        // A publish buffered while down may come first.
        while got != "after" {
            got = recv_within(&mut rx, "after").await;
        }
        bus.shutdown().await;
    }
}

mod redis_cluster_engine {
    //! The Redis Cluster engine against a real cluster (3 primaries, 3
    //! replicas; `scripts/lib.sh start_redis_cluster` or the tests crate
    //! start one) whose seed URLs are in `WAYPOST_TEST_REDIS_CLUSTER_URL`
    //! (`redis://h:p1,redis://h:p2,...`): the tracking store, bus and engine
    //! conformance suites, two processes sharing fan-out and watcher counts
    //! over sharded pub/sub, and the NATS bus with the stores on the cluster.

    use std::time::Duration;

    use super::*;
    use crate::engine::nats::NatsOptions;
    use crate::engine::redis::cluster_pubsub::ClusterBus;
    use crate::engine::redis::{RedisConn, RedisOptions, RedisTrackingStore};

    fn url() -> Option<String> {
        let url = std::env::var("WAYPOST_TEST_REDIS_CLUSTER_URL").ok()?;
        (!url.is_empty()).then_some(url)
    }

    pub(crate) fn opts() -> RedisOptions {
        RedisOptions {
            cluster: true,
            watcher_scan: Duration::from_millis(100),
            ..RedisOptions::default()
        }
    }

    #[tokio::test]
    async fn cluster_conformance() {
        let Some(url) = url() else {
            eprintln!("skipping cluster_conformance: WAYPOST_TEST_REDIS_CLUSTER_URL is not set");
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let conn = RedisConn::connect(&url, opts()).await.unwrap();
        let store = RedisTrackingStore::new(conn.clone(), Limits::default(), false);
        store.ready().await.expect("every slot is covered");
        tracking_store_conformance(&store).await;
        let bounded = RedisTrackingStore::new(conn.clone(), bounded_limits(), false);
        windows_and_trail_are_bounded(&bounded).await;

        let bus = Arc::new(
            ClusterBus::start(conn.clone(), Arc::clone(&hub), Metrics::new())
                .await
                .unwrap(),
        );
        bus.ready().await.unwrap();
        bus_conformance(bus.as_ref(), &hub).await;
        // The store SPUBLISHing from its script, and the engine publishing
        // after a store that does not.
        for live_publish in [true, false] {
            let store = RedisTrackingStore::new(conn.clone(), Limits::default(), live_publish);
            let e = Engine::new("redis-cluster", bus.clone(), Arc::new(store));
            engine_publishes_new_latest_once(&e, &hub).await;
        }
        // Many channels spread over every primary: each one delivers.
        let mut rxs = Vec::new();
        for i in 0..60 {
            let ch = Channel::tracking(unique(&format!("spread{i}")));
            let (h, rx) = connection(hub.next_conn_id(), 8);
            hub.add(&ch, h);
            bus.sync_subscription(&ch).await.unwrap();
            rxs.push((ch, rx));
        }
        for (ch, _) in &rxs {
            bus.publish(ch, format!("to {ch}").as_str().into())
                .await
                .unwrap();
        }
        for (ch, rx) in &mut rxs {
            assert_eq!(recv_within(rx, "spread").await, format!("to {ch}"));
        }
        assert_eq!(*bus.resubscribed().borrow(), 0, "nothing moved");
        bus.shutdown().await;
        bus.shutdown().await;
    }

    #[tokio::test]
    async fn cluster_two_processes_share_fanout_and_watchers() {
        let Some(url) = url() else {
            eprintln!("skipping cluster_two_processes: WAYPOST_TEST_REDIS_CLUSTER_URL is not set");
            return;
        };
        let (hub_a, hub_b) = (
            Arc::new(Hub::new(Metrics::new())),
            Arc::new(Hub::new(Metrics::new())),
        );
        let conn_a = RedisConn::connect(&url, opts()).await.unwrap();
        let conn_b = RedisConn::connect(&url, opts()).await.unwrap();
        let a = ClusterBus::start(conn_a.clone(), Arc::clone(&hub_a), Metrics::new())
            .await
            .unwrap();
        let b = ClusterBus::start(conn_b, Arc::clone(&hub_b), Metrics::new())
            .await
            .unwrap();
        for ch in [Channel::chat(unique("r")), Channel::tracking(unique("d"))] {
            let (ha, mut ra) = connection(hub_a.next_conn_id(), 8);
            let (ha2, mut ra2) = connection(hub_a.next_conn_id(), 8);
            let (hb, mut rb) = connection(hub_b.next_conn_id(), 8);
            hub_a.add(&ch, ha.clone());
            a.sync_subscription(&ch).await.unwrap();
            hub_a.add(&ch, ha2.clone());
            a.sync_subscription(&ch).await.unwrap();
            hub_b.add(&ch, hb.clone());
            b.sync_subscription(&ch).await.unwrap();
            assert_eq!(a.watchers(&ch).await.unwrap(), 3);
            b.publish(&ch, "from-b".into()).await.unwrap();
            for rx in [&mut ra, &mut ra2, &mut rb] {
                assert_eq!(recv_within(rx, "from-b").await, "from-b");
            }
            // Exactly once per local subscriber (one sharded subscription
            // per channel per process).
            a.publish(&ch, "from-a".into()).await.unwrap();
            assert_eq!(recv_within(&mut ra, "from-a").await, "from-a");
            assert_eq!(recv_within(&mut rb, "from-a").await, "from-a");
            tokio::time::sleep(Duration::from_millis(200)).await;
            assert!(ra.try_frame().is_none(), "delivered twice");
            // The ingest script publishes from the driver's slot.
            if ch.kind == waypost_protocol::ChannelKind::Tracking {
                let store = RedisTrackingStore::new(conn_a.clone(), Limits::default(), true);
                let out = store
                    .ingest(&ch.id, "dev", &[fix(1, NOW)], NOW.into())
                    .await
                    .unwrap();
                assert!(out.published);
                assert_eq!(out.watchers, 3);
                let got = recv_within(&mut rb, "live fix").await;
                assert!(got.contains("\"location\""), "{got}");
            }
        }
        a.shutdown().await;
        b.shutdown().await;
    }

    /// `--bus nats` with the stores (and watcher counts) on the cluster.
    #[tokio::test]
    async fn nats_bus_with_cluster_stores() {
        let Some(url) = url() else {
            eprintln!(
                "skipping nats_bus_with_cluster_stores: WAYPOST_TEST_REDIS_CLUSTER_URL is not set"
            );
            return;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let Some(nats) = super::nats_bus::OwnNats::start(port).await else {
            eprintln!("skipping nats_bus_with_cluster_stores: no nats-server");
            return;
        };
        let hub = Arc::new(Hub::new(Metrics::new()));
        let config = crate::engine::open::EngineConfig {
            store: crate::engine::open::StoreConfig::Redis {
                url,
                opts: Box::new(opts()),
            },
            bus: crate::engine::open::BusConfig::Nats {
                url: nats.url(),
                opts: NatsOptions::default(),
            },
        };
        let opened = crate::engine::open::open(
            &config,
            Arc::clone(&hub),
            &Limits::default(),
            &Metrics::new(),
        )
        .await
        .unwrap();
        let e = opened.engine;
        assert_eq!(e.name(), "nats+redis-cluster");
        e.ready().await.unwrap();
        tracking_store_conformance(e.tracking.as_ref()).await;
        bus_conformance(e.bus.as_ref(), &hub).await;
        engine_publishes_new_latest_once(&e, &hub).await;
        let stores = opened.stores.expect("stores on the cluster");
        let sent = stores
            .chat
            .append(crate::engine::chat::NewMessage {
                room: unique("room"),
                from: "u1".into(),
                client_id: "c1".into(),
                body: "hi".into(),
                ts: NOW,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            matches!(sent, crate::engine::chat::Appended::New(ref m) if m.seq == 1),
            "{sent:?}"
        );
        e.shutdown().await;
    }
}
