//! Conformance suite for the order stores, run through [`Orders`] on memory
//! and on Redis (`WAYPOST_TEST_REDIS_URL`; without it the Redis case says
//! why it is skipped).

use std::sync::Arc;

use waypost_protocol::{Destination, EntryBody, OrderEvent, OrderStatus};

use super::eta::Point;
use super::memory::MemoryOrderStore;
use super::redis::RedisOrderStore;
use super::store::OrderStore;
use super::{Applied, OrderError, OrderLimits, Orders};
use crate::engine::chat_redis;

const NOW: i64 = 1_700_000_000_000;

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn limits() -> OrderLimits {
    OrderLimits {
        timeline_len: 6,
        max_orders: 1000,
        max_orders_per_driver: 3,
        ..OrderLimits::default()
    }
}

fn ev(id: &str, status: OrderStatus) -> OrderEvent {
    OrderEvent {
        event_id: id.into(),
        status,
        order_id: None,
        driver_id: None,
        buyers: None,
        vendor_id: None,
        destination: None,
        data: None,
    }
}

fn dest() -> Destination {
    Destination {
        lat: 52.0,
        lon: 13.0,
        radius_m: 100.0,
    }
}

fn seq_of(a: &Applied) -> (u64, bool) {
    match a {
        Applied::New { entry, .. } => (entry.seq, false),
        Applied::Duplicate { seq } => (*seq, true),
    }
}

async fn lifecycle_idempotent_and_forward_only(orders: &Orders) {
    let o = unique("o");
    let a = orders
        .apply_event(&o, &ev("e1", OrderStatus::Placed), NOW)
        .await
        .unwrap();
    assert_eq!(seq_of(&a), (1, false));
    let Applied::New { before: None, .. } = a else {
        panic!("the first event creates the order")
    };
    let assign = OrderEvent {
        driver_id: Some("d1".into()),
        vendor_id: Some("v1".into()),
        buyers: Some(vec!["b1".into()]),
        destination: Some(dest()),
        data: Some(serde_json::json!({"items": 3, "note": "ring \"twice\" \u{1f600}"})),
        ..ev("e2", OrderStatus::Accepted)
    };
    assert_eq!(
        seq_of(&orders.apply_event(&o, &assign, NOW + 1).await.unwrap()),
        (2, false)
    );
    // A resend answers the original result and stores nothing.
    assert_eq!(
        seq_of(&orders.apply_event(&o, &assign, NOW + 2).await.unwrap()),
        (2, true)
    );
    assert_eq!(
        seq_of(
            &orders
                .apply_event(&o, &ev("e1", OrderStatus::Placed), NOW + 2)
                .await
                .unwrap()
        ),
        (1, true),
        "an old resend is a duplicate, not a backwards move"
    );
    let order = orders.get(&o).await.unwrap().unwrap();
    assert_eq!(order.seq, 2);
    assert_eq!(order.updated_ts, NOW + 1);
    assert_eq!(order.buyers, vec!["b1".to_owned()]);
    assert_eq!(order.data, assign.data);
    assert!(order.is_active());
    assert_eq!(orders.active_orders_of("d1").await.unwrap().len(), 1);

    orders
        .apply_event(&o, &ev("e3", OrderStatus::PickedUp), NOW + 3)
        .await
        .unwrap();
    let back = orders
        .apply_event(&o, &ev("e4", OrderStatus::Preparing), NOW + 4)
        .await;
    assert!(
        matches!(back, Err(OrderError::Backwards { .. })),
        "{back:?}"
    );
    orders
        .apply_event(&o, &ev("e5", OrderStatus::Delivered), NOW + 5)
        .await
        .unwrap();
    let after = orders
        .apply_event(&o, &ev("e6", OrderStatus::Cancelled), NOW + 6)
        .await;
    assert!(matches!(after, Err(OrderError::Backwards { .. })));
    assert!(
        orders.active_orders_of("d1").await.unwrap().is_empty(),
        "ended"
    );

    let t = orders.timeline(&o, 0, 100).await.unwrap();
    assert_eq!(t.high_seq, 4, "refused events stored nothing");
    assert_eq!(
        t.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );
    let last = &t.entries[3];
    assert!(
        matches!(
            last.body,
            EntryBody::Status {
                status: OrderStatus::Delivered,
                active: false,
                ..
            }
        ),
        "the last entry says the order ended: {last:?}"
    );
    let page = orders.timeline(&o, 1, 2).await.unwrap();
    assert_eq!(
        page.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![2, 3]
    );
    assert!(page.more());
    assert!(!orders.timeline(&o, 2, 10).await.unwrap().more());
    let none = orders.timeline(&unique("o"), 0, 10).await.unwrap();
    assert_eq!((none.high_seq, none.entries.len()), (0, 0));
    assert!(orders.get(&unique("o")).await.unwrap().is_none());
}

async fn concurrent_events_get_consecutive_seqs(orders: &Orders) {
    let o = unique("o");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let orders = orders.clone();
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            orders
                .apply_event(&o, &ev(&format!("e{i}"), OrderStatus::Placed), NOW)
                .await
                .unwrap()
        }));
    }
    // The same event id twice at once: applied once.
    let mut dup = Vec::new();
    for _ in 0..2 {
        let orders = orders.clone();
        let o = o.clone();
        dup.push(tokio::spawn(async move {
            orders
                .apply_event(&o, &ev("same", OrderStatus::Placed), NOW)
                .await
                .unwrap()
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(seq_of(&t.await.unwrap()).0);
    }
    let mut d = Vec::new();
    for t in dup {
        d.push(seq_of(&t.await.unwrap()));
    }
    assert_eq!(d[0].0, d[1].0, "both answers name one entry");
    assert_eq!(d.iter().filter(|(_, dup)| *dup).count(), 1);
    seqs.push(d[0].0);
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=21).collect::<Vec<u64>>());
}

async fn timeline_bounded_and_dedup_window(orders: &Orders) {
    // limits(): 6 entries kept.
    let o = unique("o");
    for i in 1..=9 {
        orders
            .apply_event(&o, &ev(&format!("e{i}"), OrderStatus::Placed), NOW)
            .await
            .unwrap();
    }
    let t = orders.timeline(&o, 0, 100).await.unwrap();
    assert_eq!(t.high_seq, 9);
    assert_eq!(
        t.entries.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![4, 5, 6, 7, 8, 9]
    );
    assert!(!t.complete_after(0));
    assert!(t.complete_after(3));
    let kept = orders
        .apply_event(&o, &ev("e9", OrderStatus::Placed), NOW)
        .await
        .unwrap();
    assert_eq!(seq_of(&kept), (9, true));
}

async fn arrival_and_eta_from_fixes(orders: &Orders) {
    let o = unique("o");
    let d = unique("d");
    let assign = OrderEvent {
        driver_id: Some(d.clone()),
        destination: Some(dest()),
        ..ev("e1", OrderStatus::PickedUp)
    };
    orders.apply_event(&o, &assign, NOW).await.unwrap();
    // 10 m/s north from 1005 m south; one batch of fixes per 10 s.
    let p = |s: i64| Point {
        ts: NOW + s * 1000,
        lat: 52.0 - (1005.0 - 10.0 * s as f64).max(0.0) / 111_195.0,
        lon: 13.0,
    };
    let mut kinds = Vec::new();
    for batch in 0..12 {
        let fixes: Vec<Point> = (0..10).map(|i| p(batch * 10 + i)).collect();
        for (_, entries) in orders.observe_fixes(&d, &fixes, NOW).await.unwrap() {
            kinds.extend(entries.into_iter().map(|e| (e.seq, e.body, e.ts)));
        }
    }
    let arrivals: Vec<i64> = kinds
        .iter()
        .filter(|(_, b, _)| matches!(b, EntryBody::Arrival { .. }))
        .map(|(_, _, ts)| *ts)
        .collect();
    assert_eq!(
        arrivals,
        vec![p(91).ts],
        "95 m from the destination at 91 s"
    );
    assert!(
        matches!(kinds.first(), Some((2, EntryBody::Eta { .. }, _))),
        "{kinds:?}"
    );
    let t = orders.timeline(&o, 0, 100).await.unwrap();
    assert_eq!(t.entries.len() as u64, t.high_seq, "gap-free");
    assert_eq!(orders.get(&o).await.unwrap().unwrap().eta_s, Some(0));
    // After delivery the driver's fixes touch the order no more.
    orders
        .apply_event(&o, &ev("e2", OrderStatus::Delivered), NOW)
        .await
        .unwrap();
    let far = Point {
        ts: NOW + 500_000,
        lat: 51.0,
        lon: 13.0,
    };
    let far2 = Point {
        ts: NOW + 600_000,
        ..far
    };
    assert!(orders
        .observe_fixes(&d, &[far, far2], NOW)
        .await
        .unwrap()
        .is_empty());
}

async fn driver_index_follows_assignment(orders: &Orders) {
    let d1 = unique("d");
    let d2 = unique("d");
    let o = unique("o");
    let mk = |id: &str, d: &str| OrderEvent {
        driver_id: Some(d.to_owned()),
        ..ev(id, OrderStatus::Accepted)
    };
    orders.apply_event(&o, &mk("e1", &d1), NOW).await.unwrap();
    orders.apply_event(&o, &mk("e2", &d2), NOW).await.unwrap();
    assert!(
        orders.active_orders_of(&d1).await.unwrap().is_empty(),
        "reassigned"
    );
    assert_eq!(orders.active_orders_of(&d2).await.unwrap()[0].order_id, o);
    // Bounded per driver (limits(): 3).
    for i in 0..5 {
        orders
            .apply_event(&unique("o"), &mk(&format!("x{i}"), &d2), NOW)
            .await
            .unwrap();
    }
    assert_eq!(orders.store().driver_orders(&d2).await.unwrap().len(), 3);
}

async fn conformance(store: Arc<dyn OrderStore>) {
    let orders = Orders::new(store);
    lifecycle_idempotent_and_forward_only(&orders).await;
    concurrent_events_get_consecutive_seqs(&orders).await;
    timeline_bounded_and_dedup_window(&orders).await;
    arrival_and_eta_from_fixes(&orders).await;
    driver_index_follows_assignment(&orders).await;
}

#[tokio::test]
async fn memory_order_conformance() {
    conformance(Arc::new(MemoryOrderStore::new(limits()))).await;
}

#[tokio::test]
async fn memory_orders_are_bounded() {
    let store = Arc::new(MemoryOrderStore::new(OrderLimits {
        max_orders: 10,
        ..limits()
    }));
    let orders = Orders::new(store.clone());
    for i in 0..50 {
        orders
            .apply_event(&format!("o{i}"), &ev("e", OrderStatus::Placed), NOW)
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 10);
    assert!(orders.get("o49").await.unwrap().is_some(), "newest kept");
    assert!(orders.get("o0").await.unwrap().is_none(), "oldest evicted");
}

#[tokio::test]
async fn redis_order_conformance() {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
        return;
    };
    let conn = chat_redis::connect(&url, &Default::default())
        .await
        .expect("redis reachable");
    conformance(Arc::new(RedisOrderStore::new(conn, limits()))).await;
}

#[tokio::test]
async fn redis_cluster_order_conformance() {
    if let Some(conn) = crate::engine::redis::test_cluster().await {
        conformance(Arc::new(RedisOrderStore::new(conn, limits()))).await;
    }
}

#[test]
fn event_data_must_be_an_object() {
    let mut e = ev("e-data", OrderStatus::Placed);
    e.data = Some(serde_json::json!({"note": "x"}));
    assert!(super::check_event("o-data", &e).is_ok());
    e.data = Some(serde_json::json!("a string"));
    assert!(super::check_event("o-data", &e).is_err());
    e.data = None;
    assert!(super::check_event("o-data", &e).is_ok());
}
