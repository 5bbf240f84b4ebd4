//! Conformance suite: the same behaviour checks against every engine. The
//! Redis run needs a server at `WAYPOST_TEST_REDIS_URL` (scripts/test starts
//! one); without it the Redis cases are skipped with a message.

use std::sync::Arc;

use waypost_protocol::Fix;

use super::memory::MemoryEngine;
use super::Engine;
use crate::config::Limits;
use crate::hub::{connection, Hub};
use crate::metrics::Metrics;

const NOW: i64 = 1_700_000_000_000;

fn fix(seq: u64, ts: i64) -> Fix {
    Fix::new(seq, ts, 52.0 + seq as f64 * 1e-4, 13.0)
}

pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

pub(crate) async fn ingest_is_idempotent(engine: &dyn Engine) {
    let d = unique("d");
    let batch = [fix(1, NOW), fix(2, NOW + 1000), fix(3, NOW + 2000)];
    let out = engine.ingest(&d, "dev", &batch, NOW).await.unwrap();
    assert_eq!((out.accepted, out.duplicates), (3, 0));
    assert_eq!(out.new_latest.as_ref().map(|f| f.seq), Some(3));
    let again = engine.ingest(&d, "dev", &batch, NOW).await.unwrap();
    assert_eq!((again.accepted, again.duplicates), (0, 3));
    assert_eq!(again.new_latest, None);
    // The same seqs from another device are different fixes.
    let other = engine.ingest(&d, "dev-2", &batch[..1], NOW).await.unwrap();
    assert_eq!(other.accepted, 1);
    let trail = engine.trail(&d, 0, 100).await.unwrap();
    assert_eq!(trail.len(), 4);
    assert_eq!(
        engine.trail(&d, 2, 100).await.unwrap(),
        vec![batch[2].clone()]
    );
}

pub(crate) async fn latest_keeps_newest_and_expires(engine: &dyn Engine) {
    let d = unique("d");
    assert!(engine.latest(&d, NOW).await.unwrap().is_none());
    engine
        .ingest(&d, "dev", &[fix(5, NOW + 5000)], NOW)
        .await
        .unwrap();
    // An older fix (by ts) arriving late goes to the trail, not to latest.
    let late = engine
        .ingest(&d, "dev", &[fix(4, NOW + 4000)], NOW)
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

pub(crate) async fn publish_reaches_local_subscriber(engine: &dyn Engine, hub: &Hub) {
    let ch = format!("tracking:{}", unique("d"));
    let (h, mut rx) = connection(hub.next_conn_id(), 8);
    hub.add(&ch, h);
    engine.sync_subscription(&ch).await.unwrap();
    assert_eq!(engine.watchers(&ch).await.unwrap(), 1);
    engine.publish(&ch, "hello".into()).await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
        .await
        .expect("publish delivered within 5 s")
        .unwrap();
    assert_eq!(got.text.as_str(), "hello");
}

#[tokio::test]
async fn memory_conformance() {
    let hub = Arc::new(Hub::new(Metrics::new()));
    let engine = MemoryEngine::new(Arc::clone(&hub), Limits::default());
    ingest_is_idempotent(&engine).await;
    latest_keeps_newest_and_expires(&engine).await;
    publish_reaches_local_subscriber(&engine, &hub).await;
    let d = unique("d");
    engine.ingest(&d, "dev", &[fix(1, NOW)], NOW).await.unwrap();
    let ttl = Limits::default().online_ttl.as_millis() as i64;
    assert!(engine.latest(&d, NOW + ttl + 1).await.unwrap().is_none());
}
