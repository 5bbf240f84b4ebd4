//! Conformance suite for the chat, presence and notification stores: the
//! same checks against memory and Redis. The Redis run needs
//! `WAYPOST_TEST_REDIS_URL` (scripts/test starts one); without it the Redis
//! cases print why they are skipped.

use std::sync::Arc;

use super::chat::{Appended, ChatStore, NewMessage, NotificationStore, PresenceStore};
use super::chat_memory::{MemoryChatStore, MemoryNotificationStore, MemoryPresenceStore};
use super::chat_redis::{self, RedisChatStore, RedisNotificationStore, RedisPresenceStore};
use super::tests::unique;
use crate::config::Limits;

const NOW: i64 = 1_700_000_000_000;

fn small_limits() -> Limits {
    Limits {
        chat_history_len: 5,
        notification_history_len: 3,
        presence_ttl: std::time::Duration::from_secs(10),
        max_presence_per_room: 3,
        ..Limits::default()
    }
}

fn new_msg(room: &str, from: &str, cid: &str) -> NewMessage {
    NewMessage {
        room: room.into(),
        from: from.into(),
        client_id: cid.into(),
        body: format!("body of {cid} with \"quotes\", \u{1f600} and \\"),
        ts: NOW,
        ..Default::default()
    }
}

async fn seqs_are_gap_free_and_idempotent(store: &dyn ChatStore) {
    let room = unique("room");
    let a = store.append(new_msg(&room, "u1", "c1")).await.unwrap();
    let b = store.append(new_msg(&room, "u2", "c1")).await.unwrap();
    let Appended::New(a) = a else {
        panic!("first append is new")
    };
    let Appended::New(b) = b else {
        panic!("same client_id from another user is a different message")
    };
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_ne!(a.id, b.id);
    assert_eq!(a.body, new_msg(&room, "u1", "c1").body, "body round-trips");
    let again = store.append(new_msg(&room, "u1", "c1")).await.unwrap();
    assert_eq!(
        again,
        Appended::Duplicate(a.clone()),
        "resend gives the original"
    );
    let h = store.after(&room, 0, 100).await.unwrap();
    assert_eq!(h.high_seq, 2, "the resend stored nothing");
    assert_eq!(h.messages, vec![a, b]);
    assert!(h.complete_after(0));
}

async fn concurrent_appends_get_distinct_consecutive_seqs(store: Arc<dyn ChatStore>) {
    let room = unique("room");
    let mut tasks = Vec::new();
    for i in 0..20 {
        let store = Arc::clone(&store);
        let room = room.clone();
        tasks.push(tokio::spawn(async move {
            store
                .append(new_msg(&room, "u", &format!("c{i}")))
                .await
                .unwrap()
                .message()
                .seq
        }));
    }
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.push(t.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
}

async fn history_is_bounded_and_reports_gaps(store: &dyn ChatStore) {
    // small_limits: 5 messages kept.
    let room = unique("room");
    for i in 1..=8 {
        store
            .append(new_msg(&room, "u", &format!("c{i}")))
            .await
            .unwrap();
    }
    let h = store.after(&room, 0, 100).await.unwrap();
    assert_eq!(h.high_seq, 8);
    let seqs: Vec<u64> = h.messages.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, vec![4, 5, 6, 7, 8], "oldest trimmed");
    assert!(!h.complete_after(0), "1..=3 are gone");
    assert!(!h.complete_after(2));
    assert!(store.after(&room, 3, 100).await.unwrap().complete_after(3));
    let page = store.after(&room, 5, 2).await.unwrap();
    assert_eq!(
        page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![6, 7]
    );
    assert!(page.more());
    assert!(!page.complete_after(5), "cut by the limit");
    // A trimmed message's client_id is forgotten with it; a retained one is
    // still recognised.
    let kept = store.append(new_msg(&room, "u", "c8")).await.unwrap();
    assert!(matches!(kept, Appended::Duplicate(ref m) if m.seq == 8));
    let empty = store.after(&unique("room"), 0, 10).await.unwrap();
    assert_eq!((empty.high_seq, empty.messages.len()), (0, 0));
}

async fn receipts_are_monotonic_clamped_and_bounded(store: &dyn ChatStore) {
    use waypost_protocol::{ParticipantReceipts, ReceiptKind::*};
    let room = unique("room");
    assert_eq!(
        store.mark(&room, "u1", Read, 3).await.unwrap(),
        None,
        "empty room"
    );
    for i in 0..4 {
        store
            .append(new_msg(&room, "u0", &format!("c{i}")))
            .await
            .unwrap();
    }
    let r = |user: &str, delivered, read| ParticipantReceipts {
        user: user.into(),
        delivered,
        read,
    };
    assert_eq!(
        store.mark(&room, "u1", Delivered, 2).await.unwrap(),
        Some(r("u1", 2, 0))
    );
    assert_eq!(
        store.mark(&room, "u1", Delivered, 1).await.unwrap(),
        None,
        "never back"
    );
    assert_eq!(
        store.mark(&room, "u1", Delivered, 2).await.unwrap(),
        None,
        "no move"
    );
    assert_eq!(
        store.mark(&room, "u1", Read, 99).await.unwrap(),
        Some(r("u1", 4, 4)),
        "clamped to the high seq; read moves delivered"
    );
    assert_eq!(
        store.mark(&room, "u2", Read, 3).await.unwrap(),
        Some(r("u2", 3, 3))
    );
    assert_eq!(
        store.mark(&room, "u3", Delivered, 1).await.unwrap(),
        Some(r("u3", 1, 0))
    );
    assert_eq!(
        store.mark(&room, "u4", Delivered, 1).await.unwrap(),
        None,
        "at most max_presence_per_room users"
    );
    assert_eq!(
        store.receipts(&room).await.unwrap(),
        vec![r("u1", 4, 4), r("u2", 3, 3), r("u3", 1, 0)]
    );
    assert!(store.receipts(&unique("room")).await.unwrap().is_empty());
}

async fn amendments_and_attachments_are_stored(store: &dyn ChatStore) {
    use waypost_protocol::{Attachment, MessageKind};
    let room = unique("room");
    let att = Attachment {
        url: "https://cdn.example/a.jpg".into(),
        mime: "image/jpeg".into(),
        size: 1234,
        width: Some(640),
        height: Some(480),
        name: Some("a.jpg".into()),
    };
    let mut first = new_msg(&room, "u1", "c1");
    first.attachments = vec![att.clone()];
    store.append(first).await.unwrap();
    let mut del = new_msg(&room, "u1", "delete-1");
    del.kind = Some(MessageKind::Delete);
    del.ref_seq = Some(1);
    del.body = String::new();
    store.append(del).await.unwrap();
    let h = store.after(&room, 0, 10).await.unwrap();
    assert_eq!(h.messages[0].attachments, vec![att]);
    assert_eq!(h.messages[1].kind, Some(MessageKind::Delete));
    assert_eq!(h.messages[1].ref_seq, Some(1));
    assert_eq!(h.messages[1].seq, 2);
}

async fn presence_per_device_with_expiry(store: &dyn PresenceStore) {
    // small_limits: ttl 10 s, 3 entries per room.
    let room = unique("room");
    let j = store.join(&room, "alice", "c1", NOW).await.unwrap();
    assert_eq!(j.online, vec!["alice".to_owned()]);
    let j = store.join(&room, "alice", "c2", NOW).await.unwrap();
    assert!(j.online.is_empty(), "second device: already online");
    store.join(&room, "bob", "c3", NOW).await.unwrap();
    assert_eq!(
        store.online(&room, NOW, 10).await.unwrap(),
        vec!["alice".to_owned(), "bob".to_owned()]
    );
    let full = store.join(&room, "carol", "c4", NOW).await.unwrap();
    assert!(full.online.is_empty(), "room full: entry refused");
    let l = store.leave(&room, "alice", "c1", NOW).await.unwrap();
    assert!(l.offline.is_empty(), "alice still has c2");
    // Heartbeat c2 later; bob (c3) expires without a leave.
    let hb = store.join(&room, "alice", "c2", NOW + 8_000).await.unwrap();
    assert!(hb.online.is_empty() && hb.offline.is_empty());
    let later = store.join(&room, "dave", "c5", NOW + 12_000).await.unwrap();
    assert_eq!(later.online, vec!["dave".to_owned()]);
    assert_eq!(later.offline, vec!["bob".to_owned()], "expired device");
    assert_eq!(
        store.online(&room, NOW + 12_000, 10).await.unwrap(),
        vec!["alice".to_owned(), "dave".to_owned()]
    );
    let l = store
        .leave(&room, "alice", "c2", NOW + 12_000)
        .await
        .unwrap();
    assert_eq!(l.offline, vec!["alice".to_owned()]);
    let l = store
        .leave(&room, "alice", "c2", NOW + 12_000)
        .await
        .unwrap();
    assert!(l.offline.is_empty(), "leave is idempotent");
}

async fn notifications_sequenced_and_bounded(store: &dyn NotificationStore) {
    // small_limits: 3 kept.
    let v = unique("v");
    for i in 1..=5u64 {
        let n = store
            .append(&v, "new-order", serde_json::json!({"order": i}), NOW)
            .await
            .unwrap();
        assert_eq!(n.seq, i);
        assert_eq!(n.data["order"], i);
    }
    let h = store.after(&v, 0, 10).await.unwrap();
    assert_eq!(h.high_seq, 5);
    assert_eq!(
        h.items.iter().map(|n| n.seq).collect::<Vec<_>>(),
        vec![3, 4, 5]
    );
    let h = store.after(&v, 4, 10).await.unwrap();
    assert_eq!(h.items.len(), 1);
    assert_eq!(h.items[0].event, "new-order");
    assert_eq!(h.items[0].ts, NOW);
}

#[tokio::test]
async fn memory_chat_conformance() {
    let l = small_limits();
    let chat: Arc<dyn ChatStore> = Arc::new(MemoryChatStore::new(&l));
    seqs_are_gap_free_and_idempotent(chat.as_ref()).await;
    concurrent_appends_get_distinct_consecutive_seqs(Arc::clone(&chat)).await;
    history_is_bounded_and_reports_gaps(chat.as_ref()).await;
    receipts_are_monotonic_clamped_and_bounded(chat.as_ref()).await;
    amendments_and_attachments_are_stored(chat.as_ref()).await;
    presence_per_device_with_expiry(&MemoryPresenceStore::new(&l)).await;
    notifications_sequenced_and_bounded(&MemoryNotificationStore::new(&l)).await;
}

#[tokio::test]
async fn memory_rooms_are_bounded() {
    let l = Limits {
        max_chat_rooms: 16,
        ..small_limits()
    };
    let store = MemoryChatStore::new(&l);
    for i in 0..200 {
        store
            .append(new_msg(&format!("r{i}"), "u", "c"))
            .await
            .unwrap();
    }
    let kept = futures_util::future::join_all((0..200).map(|i| store.after_owned(format!("r{i}"))))
        .await
        .into_iter()
        .filter(|h| h.high_seq > 0)
        .count();
    assert!(kept <= 16, "at most max_chat_rooms kept, got {kept}");
    assert!(kept > 0);
}

#[tokio::test]
async fn memory_history_is_bounded_in_bytes() {
    // 16 shards of 256 KiB; a room holds at most 50 messages of ~1.2 KiB.
    let budget = 4 * 1024 * 1024;
    let room_max = 50 * 1300;
    let l = Limits {
        chat_history_len: 50,
        chat_memory_bytes: budget,
        ..small_limits()
    };
    let store = MemoryChatStore::new(&l);
    let body = "x".repeat(1024);
    for i in 0..10_000 {
        let room = format!("r{}", i % 200);
        let mut m = new_msg(&room, "u", &format!("c{i}"));
        m.body = body.clone();
        store.append(m).await.unwrap();
        // Each shard may overshoot by the room being written (never evicted).
        assert!(
            store.stored_bytes() <= budget + 16 * room_max,
            "{} bytes held after {i} appends",
            store.stored_bytes()
        );
    }
    assert!(store.stored_bytes() > budget / 2, "the budget is used");
    // 200 rooms x 50 messages of ~1.2 KiB is three times the budget, so
    // rooms were evicted and started over (fewer than 50 messages since);
    // which ones depends on hashing and on ties in the LRU clock, so the
    // check covers every room: each holds a complete history since its
    // (re)start, and some restarted.
    let mut restarted = 0;
    for r in 0..200 {
        let h = store.after(&format!("r{r}"), 0, 1000).await.unwrap();
        assert_eq!(h.messages.len() as u64, h.high_seq, "room r{r}");
        assert!(h.complete_after(0), "room r{r}");
        if h.high_seq < 50 {
            restarted += 1;
        }
    }
    assert!(
        restarted > 0,
        "no room was evicted although 3x the budget was written"
    );
}

impl MemoryChatStore {
    async fn after_owned(&self, room: String) -> super::chat::History {
        self.after(&room, 0, 1).await.unwrap()
    }
}

#[tokio::test]
async fn redis_chat_conformance() {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_URL is not set (scripts/test sets it)");
        return;
    };
    let l = small_limits();
    let opts = super::redis::RedisOptions {
        key_prefix: format!("wpt{}", uuid::Uuid::new_v4().simple()),
        ..Default::default()
    };
    let conn = chat_redis::StoreConn::connect(&url, &opts)
        .await
        .expect("redis reachable");
    let chat: Arc<dyn ChatStore> = Arc::new(RedisChatStore::new(conn.clone(), &l));
    seqs_are_gap_free_and_idempotent(chat.as_ref()).await;
    concurrent_appends_get_distinct_consecutive_seqs(Arc::clone(&chat)).await;
    history_is_bounded_and_reports_gaps(chat.as_ref()).await;
    receipts_are_monotonic_clamped_and_bounded(chat.as_ref()).await;
    amendments_and_attachments_are_stored(chat.as_ref()).await;
    presence_per_device_with_expiry(&RedisPresenceStore::new(conn.clone(), &l)).await;
    notifications_sequenced_and_bounded(&RedisNotificationStore::new(conn, &l)).await;
}

/// The chat, presence and notification stores on a Redis Cluster (seed URLs
/// in `WAYPOST_TEST_REDIS_CLUSTER_URL`): every script touches one room's or
/// vendor's slot.
#[tokio::test]
async fn redis_cluster_chat_conformance() {
    let Ok(url) = std::env::var("WAYPOST_TEST_REDIS_CLUSTER_URL") else {
        eprintln!("skipped: WAYPOST_TEST_REDIS_CLUSTER_URL is not set");
        return;
    };
    let l = small_limits();
    let opts = super::redis::RedisOptions {
        key_prefix: format!("wpt{}", uuid::Uuid::new_v4().simple()),
        cluster: true,
        ..Default::default()
    };
    let conn = chat_redis::StoreConn::connect(&url, &opts)
        .await
        .expect("cluster reachable");
    let chat: Arc<dyn ChatStore> = Arc::new(RedisChatStore::new(conn.clone(), &l));
    seqs_are_gap_free_and_idempotent(chat.as_ref()).await;
    concurrent_appends_get_distinct_consecutive_seqs(Arc::clone(&chat)).await;
    history_is_bounded_and_reports_gaps(chat.as_ref()).await;
    receipts_are_monotonic_clamped_and_bounded(chat.as_ref()).await;
    amendments_and_attachments_are_stored(chat.as_ref()).await;
    presence_per_device_with_expiry(&RedisPresenceStore::new(conn.clone(), &l)).await;
    notifications_sequenced_and_bounded(&RedisNotificationStore::new(conn, &l)).await;
}
