//! End to end chat on the real binary, memory engine and real Redis: acks
//! and idempotent resends, resume with `after` (recovered or not), gap-free
//! in-order delivery under concurrent senders (also across two processes on
//! one Redis), a user's other devices, presence and typing, HTTP chat and
//! authorization.

use std::time::Duration;

use anyhow::Result;
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::chat::{chat_token, connect_chat as connect, seqs};
use waypost_e2e::{token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    send_ack_and_idempotent_resend,
    resume_after_replays_what_was_missed,
    resume_beyond_history_is_not_recovered,
    concurrent_senders_arrive_in_order_once,
    users_other_devices_see_what_it_sent,
    presence_and_typing,
    http_chat_and_authorization,
);

async fn send_ack_and_idempotent_resend(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, "b-1", Role::Buyer, &room).await?;
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    let sub = vendor.subscribe(&ch, None).await?;
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["high_seq"], 0);

    let ack = buyer.send_chat(&room, "c-1", "hello \"vendor\" ✓").await?;
    assert_eq!(ack["seq"], 1);
    assert_eq!(ack["room"], room);
    let got = vendor.messages(&room, 1, T).await?;
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["id"], ack["id"]);
    assert_eq!(got[0]["from"], "b-1");
    assert_eq!(got[0]["client_id"], "c-1");
    assert_eq!(got[0]["body"], "hello \"vendor\" ✓");
    assert!(got[0]["ts"].as_i64().unwrap_or(0) > 0);

    // A retry (lost ack) gets the very same ack and stores nothing.
    let again = buyer.send_chat(&room, "c-1", "hello \"vendor\" ✓").await?;
    assert_eq!(again, ack);
    let next = buyer.send_chat(&room, "c-2", "second").await?;
    assert_eq!(next["seq"], 2, "the resend took no seq");
    let got = vendor.messages(&room, 1, T).await?;
    assert_eq!(got[0]["seq"], 2, "the vendor saw the resend no second time");

    // Bad sends are refused with an error frame naming the client_id.
    buyer
        .send_json(&json!({"type":"send","room":room,"client_id":"c-3","body":""}))
        .await?;
    let err = buyer.next_of_type("error", T).await?;
    assert_eq!(err["code"], "empty_body");
    assert_eq!(err["ref"], "c-3");
    let big = "x".repeat(5000);
    buyer
        .send_json(&json!({"type":"send","room":room,"client_id":"c-4","body":big}))
        .await?;
    let err = buyer.next_of_type("error", T).await?;
    assert_eq!(err["code"], "too_large");
    Ok(())
}

async fn resume_after_replays_what_was_missed(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, "b-1", Role::Buyer, &room).await?;
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor.subscribe(&ch, None).await?;
    buyer.send_chat(&room, "c-1", "one").await?;
    let seen = vendor.messages(&room, 1, T).await?;
    let last = seen[0]["seq"].as_u64().unwrap_or(0);
    drop(vendor);

    for i in 2..=6 {
        buyer
            .send_chat(&room, &format!("c-{i}"), "while away")
            .await?;
    }
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor
        .send_json(&json!({"type":"subscribe","channel":ch,"after":last}))
        .await?;
    let sub = vendor.next_of_type("subscribed", T).await?;
    assert_eq!(sub["recovered"], true);
    assert_eq!(sub["high_seq"], 6);
    // The replay follows `subscribed` directly, in order.
    let replay = vendor.messages(&room, 5, T).await?;
    assert_eq!(seqs(&replay), vec![2, 3, 4, 5, 6]);
    buyer.send_chat(&room, "c-7", "live").await?;
    let live = vendor.messages(&room, 1, T).await?;
    assert_eq!(seqs(&live), vec![7]);

    // Nothing missed: recovered, nothing replayed.
    let mut other = connect(&server, "v-1", Role::Vendor, &room).await?;
    let sub = other.subscribe(&ch, Some(7)).await?;
    assert_eq!(sub["recovered"], true);
    let extra: Vec<Value> = other
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(extra.is_empty(), "nothing to replay, got {extra:?}");
    Ok(())
}

async fn resume_beyond_history_is_not_recovered(engine: EngineChoice) -> Result<()> {
    let server =
        Server::start_with(ServerOptions::new(engine).arg("--chat-history").arg("5")).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, "b-1", Role::Buyer, &room).await?;
    for i in 1..=12 {
        buyer.send_chat(&room, &format!("c-{i}"), "m").await?;
    }
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor
        .send_json(&json!({"type":"subscribe","channel":ch,"after":2}))
        .await?;
    let sub = vendor.next_of_type("subscribed", T).await?;
    assert_eq!(sub["recovered"], false, "3..=7 were trimmed");
    assert_eq!(sub["high_seq"], 12);
    // The client falls back to sync: it gets what history still has.
    vendor
        .send_json(&json!({"type":"sync","room":room,"after_seq":2}))
        .await?;
    let synced = vendor.next_of_type("synced", T).await?;
    let msgs = synced["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(seqs(&msgs), vec![8, 9, 10, 11, 12]);
    assert_eq!(synced["more"], false);
    vendor
        .send_json(&json!({"type":"sync","room":room,"after_seq":8,"limit":2}))
        .await?;
    let page = vendor.next_of_type("synced", T).await?;
    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(seqs(&msgs), vec![9, 10]);
    assert_eq!(page["more"], true);
    // Live messages continue after high_seq without a replay in between.
    buyer.send_chat(&room, "c-13", "live").await?;
    let live = vendor.messages(&room, 1, T).await?;
    assert_eq!(seqs(&live), vec![13]);
    Ok(())
}

async fn concurrent_senders_arrive_in_order_once(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut early = connect(&server, "v-1", Role::Vendor, &room).await?;
    early.subscribe(&ch, None).await?;
    let senders = [
        tokio::spawn(send_many_owned(server.addr, "b-1", room.clone(), 40)),
        tokio::spawn(send_many_owned(server.addr, "b-2", room.clone(), 40)),
    ];
    // A late subscriber joins mid-burst with after=0: replay and live must
    // meet without a gap or a duplicate.
    tokio::time::sleep(Duration::from_millis(30)).await;
    let mut late = connect(&server, "v-2", Role::Vendor, &room).await?;
    late.send_json(&json!({"type":"subscribe","channel":ch,"after":0}))
        .await?;
    for s in senders {
        s.await??;
    }
    let want: Vec<u64> = (1..=80).collect();
    assert_eq!(seqs(&early.messages(&room, 80, T).await?), want);
    let sub = late.next_of_type("subscribed", T).await?;
    assert_eq!(sub["recovered"], true);
    assert_eq!(seqs(&late.messages(&room, 80, T).await?), want);
    let dup: Vec<Value> = late
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(dup.is_empty(), "duplicates: {dup:?}");
    Ok(())
}

async fn send_many_owned(
    addr: std::net::SocketAddr,
    sub: &'static str,
    room: String,
    n: usize,
) -> Result<()> {
    let url = format!(
        "ws://{addr}/v1/ws?token={}",
        chat_token(sub, Role::Buyer, &room)
    );
    let mut c = WsClient::connect(&url).await?;
    for i in 0..n {
        c.send_chat(&room, &format!("{sub}-{i}"), "burst").await?;
    }
    Ok(())
}

async fn users_other_devices_see_what_it_sent(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    // A unique user: its `user:` channel is shared by every test on Redis.
    let me = unique("b");
    let mut phone = connect(&server, &me, Role::Buyer, &room).await?;
    // The tablet is connected but not subscribed to the room.
    let mut tablet = connect(&server, &me, Role::Buyer, &room).await?;
    // The laptop is subscribed: it must get the message once, not twice.
    let mut laptop = connect(&server, &me, Role::Buyer, &room).await?;
    laptop.subscribe(&ch, None).await?;
    tablet.send_json(&json!({"type":"ping","id":1})).await?;
    tablet.next_of_type("pong", T).await?;
    let ack = phone.send_chat(&room, "c-1", "from my phone").await?;
    let on_tablet = tablet.messages(&room, 1, T).await?;
    assert_eq!(on_tablet[0]["id"], ack["id"]);
    assert_eq!(on_tablet[0]["body"], "from my phone");
    let on_laptop = laptop.messages(&room, 1, T).await?;
    assert_eq!(on_laptop[0]["seq"], 1);
    let dup: Vec<Value> = laptop
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(dup.is_empty(), "laptop got a second copy: {dup:?}");
    // Another user's messages do not reach the tablet (not subscribed).
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor.send_chat(&room, "v-c-1", "hi buyer").await?;
    let stray: Vec<Value> = tablet
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(stray.is_empty(), "tablet got {stray:?}");
    Ok(())
}

async fn presence_and_typing(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--typing-interval")
            .arg("5s"),
    )
    .await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor.subscribe(&ch, None).await?;
    let own = vendor.next_of_type("presence", T).await?;
    assert_eq!(own["user"], "v-1", "the snapshot lists the vendor itself");
    assert_eq!(own["online"], true);

    let mut buyer = connect(&server, "b-1", Role::Buyer, &room).await?;
    buyer.subscribe(&ch, None).await?;
    // (The vendor may see its own join again, live, after the snapshot.)
    wait_presence(&mut vendor, "b-1", true).await?;
    // The buyer learns who is already there.
    let mut present = Vec::new();
    for v in buyer.drain(Duration::from_millis(300)).await {
        if v["type"] == "presence" && v["online"] == true {
            present.push(v["user"].as_str().unwrap_or_default().to_owned());
        }
    }
    present.sort();
    present.dedup();
    assert_eq!(present, vec!["b-1".to_owned(), "v-1".to_owned()]);

    // Typing: the vendor sees it once per interval; the buyer never sees its own.
    for _ in 0..3 {
        buyer
            .send_json(&json!({"type":"typing","room":room}))
            .await?;
    }
    let t = vendor.next_of_type("typing", T).await?;
    assert_eq!(
        (t["room"].as_str(), t["user"].as_str()),
        (Some(room.as_str()), Some("b-1"))
    );
    let more: Vec<Value> = vendor
        .drain(Duration::from_millis(400))
        .await
        .into_iter()
        .filter(|v| v["type"] == "typing")
        .collect();
    assert!(more.is_empty(), "rate limit let through {more:?}");
    let echo: Vec<Value> = buyer
        .drain(Duration::from_millis(200))
        .await
        .into_iter()
        .filter(|v| v["type"] == "typing")
        .collect();
    assert!(echo.is_empty(), "own typing echoed: {echo:?}");

    // A second device keeps the buyer online; the last one leaving ends it.
    let mut buyer2 = connect(&server, "b-1", Role::Buyer, &room).await?;
    buyer2.subscribe(&ch, None).await?;
    buyer
        .send_json(&json!({"type":"unsubscribe","channel":ch}))
        .await?;
    buyer.next_of_type("unsubscribed", T).await?;
    let quiet: Vec<Value> = vendor
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "presence" && v["online"] == false)
        .collect();
    assert!(quiet.is_empty(), "b-1 still has a device: {quiet:?}");
    drop(buyer2);
    let gone = wait_presence(&mut vendor, "b-1", false).await?;
    assert_eq!(gone["room"], room);
    Ok(())
}

async fn http_chat_and_authorization(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let http = reqwest::Client::new();
    let url = server.http(&format!("/v1/chats/{room}/messages"));
    let buyer = chat_token("b-1", Role::Buyer, &room);
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor.subscribe(&ch, None).await?;

    let post = |tok: String, cid: &'static str| {
        http.post(&url)
            .bearer_auth(tok)
            .json(&json!({"client_id": cid, "body": "over http"}))
            .send()
    };
    let r = post(buyer.clone(), "h-1").await?;
    assert_eq!(r.status(), StatusCode::OK);
    let first: Value = r.json().await?;
    assert_eq!(
        (first["seq"].as_u64(), first["duplicate"].as_bool()),
        (Some(1), Some(false))
    );
    let r: Value = post(buyer.clone(), "h-1").await?.json().await?;
    assert_eq!(r["id"], first["id"]);
    assert_eq!(r["duplicate"], true);
    let live = vendor.messages(&room, 1, T).await?;
    assert_eq!(live[0]["body"], "over http");
    post(buyer.clone(), "h-2").await?;

    let page: Value = http
        .get(format!("{url}?after_seq=0&limit=1"))
        .bearer_auth(&buyer)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page["messages"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["more"], true);
    // Outside the documented 1..=200: refused, not clamped.
    for limit in [0, 201] {
        let resp = http
            .get(format!("{url}?after_seq=0&limit={limit}"))
            .bearer_auth(&buyer)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "limit={limit}");
    }
    let rest: Value = http
        .get(format!("{url}?after_seq=1"))
        .bearer_auth(&buyer)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        seqs(rest["messages"].as_array().map_or(&[][..], |v| v)),
        vec![2]
    );
    assert_eq!(rest["more"], false);
    // The body limit counts characters, as the schema's maxLength does:
    // 4,096 two-byte characters pass, one more is 413 too_large.
    for (n, want) in [
        (4096, StatusCode::OK),
        (4097, StatusCode::PAYLOAD_TOO_LARGE),
    ] {
        let resp = http
            .post(&url)
            .bearer_auth(&buyer)
            .json(&json!({"client_id": format!("long-{n}"), "body": "é".repeat(n)}))
            .send()
            .await?;
        assert_eq!(resp.status(), want, "{n} characters");
    }

    // Authorization: a token without the room gets 403 / error frames.
    let stranger = chat_token("b-9", Role::Buyer, "some-other-room");
    assert_eq!(
        post(stranger.clone(), "h-3").await?.status(),
        StatusCode::FORBIDDEN
    );
    let r = http.get(&url).bearer_auth(&stranger).send().await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "forbidden");
    assert_eq!(
        http.get(&url).send().await?.status(),
        StatusCode::UNAUTHORIZED
    );
    let mut ws = WsClient::connect(&server.ws_url(&stranger)).await?;
    for frame in [
        json!({"type":"subscribe","channel":ch}),
        json!({"type":"send","room":room,"client_id":"x","body":"hi"}),
        json!({"type":"sync","room":room,"after_seq":0}),
        json!({"type":"typing","room":room}),
    ] {
        ws.send_json(&frame).await?;
        let e = ws.next_of_type("error", T).await?;
        assert_eq!(e["code"], "forbidden", "{frame}");
    }
    // The service role reads anything.
    let svc = token("svc", Role::Service, &[]);
    let r = http.get(&url).bearer_auth(&svc).send().await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(())
}

/// Two server processes on one Redis: senders on both, receivers on both,
/// everyone sees every message once in seq order; presence crosses
/// processes and a killed process's devices expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_one_redis() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let opts = |url: &str| {
        ServerOptions::new(EngineChoice::Redis(url.to_owned()))
            .arg("--presence-ttl")
            .arg("2s")
    };
    let a = Server::start_with(opts(&url)).await?;
    let mut b = Server::start_with(opts(&url)).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut on_a = connect(&a, "v-1", Role::Vendor, &room).await?;
    let mut on_b = connect(&b, "v-2", Role::Vendor, &room).await?;
    on_a.subscribe(&ch, None).await?;
    on_b.subscribe(&ch, None).await?;
    let senders = [
        tokio::spawn(send_many_owned(a.addr, "b-1", room.clone(), 40)),
        tokio::spawn(send_many_owned(b.addr, "b-2", room.clone(), 40)),
    ];
    for s in senders {
        s.await??;
    }
    let want: Vec<u64> = (1..=80).collect();
    assert_eq!(seqs(&on_a.messages(&room, 80, T).await?), want);
    assert_eq!(seqs(&on_b.messages(&room, 80, T).await?), want);

    // Presence across processes, and expiry of a process that dies.
    let mut buyer_on_b = connect(&b, "b-7", Role::Buyer, &room).await?;
    buyer_on_b.subscribe(&ch, None).await?;
    let p = wait_presence(&mut on_a, "b-7", true).await?;
    assert_eq!(p["room"], room);
    b.kill().await?;
    // No leave was sent: the entry expires (2 s TTL) and a heartbeat on A
    // reports it.
    wait_presence(&mut on_a, "b-7", false).await?;
    Ok(())
}

async fn wait_presence(c: &mut WsClient, user: &str, online: bool) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = c.next_of_type("presence", left).await?;
        if v["user"] == user && v["online"] == online {
            return Ok(v);
        }
    }
}

/// Redis loses its data (restart without persistence): the stores
/// reconnect, a room's seqs start over, a client resuming from an old seq
/// is told `recovered: false`, and a vendor stream resuming from an old
/// Last-Event-ID gets the notifications posted since.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_data_loss_is_reported_not_hidden() -> Result<()> {
    let mut redis = match waypost_e2e::RedisServer::start().await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("SKIP: no redis-server to restart: {e:#}");
            return Ok(());
        }
    };
    let server = Server::start(EngineChoice::Redis(redis.url())).await?;
    let room = unique("order");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, "b-1", Role::Buyer, &room).await?;
    for i in 1..=5 {
        buyer.send_chat(&room, &format!("c-{i}"), "before").await?;
    }
    redis.restart().await?;
    // The first calls may fail while the connections come back.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let ack = loop {
        match buyer.send_chat(&room, "c-after", "after").await {
            Ok(ack) => break ack,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("retrying send after the Redis restart: {e:#}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    };
    assert_eq!(ack["seq"], 1, "the room's history is gone: seqs start over");
    let mut vendor = connect(&server, "v-1", Role::Vendor, &room).await?;
    vendor
        .send_json(&json!({"type":"subscribe","channel":ch,"after":5}))
        .await?;
    let sub = vendor.next_of_type("subscribed", T).await?;
    assert_eq!(sub["recovered"], false);
    assert_eq!(sub["high_seq"], 1);

    let vendor_id = unique("v");
    let post = reqwest::Client::new()
        .post(server.http(&format!("/v1/vendors/{vendor_id}/notifications")))
        .bearer_auth(token("orders", Role::Service, &[]))
        .json(&json!({"event":"new-order","data":{"n":1}}))
        .send()
        .await?;
    assert_eq!(post.status(), StatusCode::ACCEPTED);
    let mut sse = waypost_e2e::chat::SseClient::connect(
        &server.http(&format!("/v1/vendors/{vendor_id}/notifications/stream")),
        &token(&vendor_id, Role::Vendor, &[]),
        Some("40"),
    )
    .await?;
    let ev = sse.next_event(T).await?;
    assert_eq!(
        ev.id.as_deref(),
        Some("1"),
        "an id from before the loss replays all"
    );
    Ok(())
}
