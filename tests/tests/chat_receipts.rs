//! End to end, on both engines: receipts synced across a user's devices
//! (and across two processes on one Redis) and returned with history and on
//! subscribe; edits and deletes stored in the log, refused when they should
//! be, and seen once, in order, after a resume; attachment metadata
//! validation; system messages from `service`.

use std::time::Duration;

use anyhow::{bail, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::chat::{chat_token, connect_chat as connect, seqs};
use waypost_e2e::{token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    receipts_reach_other_devices_and_participants,
    edit_and_delete_are_checked_and_resumed_once,
    attachments_are_validated,
    system_messages_come_from_service,
);

/// The next `receipt` frame (other frames skipped).
async fn receipt(c: &mut WsClient) -> Result<Value> {
    c.next_of_type("receipt", T).await
}

/// The next `error` frame.
async fn error(c: &mut WsClient) -> Result<Value> {
    c.next_of_type("error", T).await
}

/// Sends a frame expecting a `sent` ack (an `error` fails).
async fn acked(c: &mut WsClient, frame: Value) -> Result<Value> {
    c.send_json(&frame).await?;
    loop {
        let v = c.next_json(T).await?;
        match v["type"].as_str() {
            Some("sent") => return Ok(v),
            Some("error") => bail!("refused: {v}"),
            _ => continue,
        }
    }
}

async fn history(server: &Server, room: &str, tok: &str) -> Result<Value> {
    let r = reqwest::Client::new()
        .get(server.http(&format!("/v1/chats/{room}/messages")))
        .bearer_auth(tok)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(r.json().await?)
}

/// Device A of `b-1` marks messages delivered and read; device B of `b-1`
/// and the vendor get `receipt` frames; going back moves nothing; HTTP
/// history and a later subscribe return the markers and the unread count.
async fn receipts_reach_other_devices_and_participants(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    receipts_between(&server, &server).await
}

async fn receipts_between(a: &Server, b: &Server) -> Result<()> {
    let room = unique("order");
    let b1 = unique("b");
    let v1 = unique("v");
    let ch = format!("chat:{room}");
    let mut vendor = connect(b, &v1, Role::Vendor, &room).await?;
    let mut dev_a = connect(a, &b1, Role::Buyer, &room).await?;
    let mut dev_b = connect(b, &b1, Role::Buyer, &room).await?;
    vendor.subscribe(&ch, None).await?;
    dev_a.subscribe(&ch, None).await?;
    // Device B is not subscribed: it hears its user's receipts through
    // the user channel.
    for i in 1..=3 {
        vendor.send_chat(&room, &format!("v-{i}"), "hello").await?;
    }
    dev_a.messages(&room, 3, T).await?;

    dev_a
        .send_json(&json!({"type":"receipt","room":room,"seq":3,"kind":"delivered"}))
        .await?;
    let want = json!({"type":"receipt","room":room,"user":&b1,"kind":"delivered","seq":3});
    assert_eq!(receipt(&mut vendor).await?, want);
    assert_eq!(receipt(&mut dev_b).await?, want);
    dev_a
        .send_json(&json!({"type":"receipt","room":room,"seq":2,"kind":"read"}))
        .await?;
    let want = json!({"type":"receipt","room":room,"user":&b1,"kind":"read","seq":2});
    assert_eq!(receipt(&mut vendor).await?, want);
    assert_eq!(receipt(&mut dev_b).await?, want);
    // Backwards (from the other device) and beyond the room: nothing moves
    // back; a seq above the room's highest is clamped to it.
    dev_b
        .send_json(&json!({"type":"receipt","room":room,"seq":1,"kind":"read"}))
        .await?;
    let late: Vec<Value> = vendor
        .drain(Duration::from_millis(400))
        .await
        .into_iter()
        .filter(|v| v["type"] == "receipt")
        .collect();
    assert!(late.is_empty(), "a marker went back: {late:?}");

    let page = history(a, &room, &chat_token(&b1, Role::Buyer, &room)).await?;
    assert_eq!(
        page["receipts"],
        json!([{"user":&b1,"delivered":3,"read":2}])
    );
    assert_eq!(page["unread"], 1, "message 3 is not read yet");
    let page = history(b, &room, &chat_token(&v1, Role::Vendor, &room)).await?;
    assert_eq!(
        page["unread"], 0,
        "the vendor's own messages are not unread"
    );

    // A reconnecting vendor draws the ticks from the frames after
    // `subscribed`.
    let mut again = connect(a, &v1, Role::Vendor, &room).await?;
    again.subscribe(&ch, Some(3)).await?;
    let mut got = [receipt(&mut again).await?, receipt(&mut again).await?];
    got.sort_by_key(|v| v["kind"].as_str().map(str::to_owned));
    assert_eq!(got[0]["kind"], "delivered");
    assert_eq!(got[0]["seq"], 3);
    assert_eq!(got[1]["kind"], "read");
    assert_eq!(got[1]["seq"], 2);

    // A bad kind is a bad frame; a room the token lacks is forbidden.
    dev_a
        .send_json(&json!({"type":"receipt","room":room,"seq":3,"kind":"seen"}))
        .await?;
    assert_eq!(error(&mut dev_a).await?["code"], "bad_frame");
    dev_a
        .send_json(&json!({"type":"receipt","room":"elsewhere","seq":3,"kind":"read"}))
        .await?;
    assert_eq!(error(&mut dev_a).await?["code"], "forbidden");
    Ok(())
}

/// Two processes on one Redis: devices of one user on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_across_two_processes() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let a = Server::start_with(ServerOptions::new(EngineChoice::Redis(url.clone()))).await?;
    let b = Server::start_with(ServerOptions::new(EngineChoice::Redis(url))).await?;
    receipts_between(&a, &b).await
}

async fn edit_and_delete_are_checked_and_resumed_once(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let b1 = unique("b");
    let v1 = unique("v");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, &b1, Role::Buyer, &room).await?;
    let mut vendor = connect(&server, &v1, Role::Vendor, &room).await?;
    vendor.subscribe(&ch, None).await?;
    buyer.send_chat(&room, "c-1", "one").await?;
    buyer.send_chat(&room, "c-2", "two").await?;
    assert_eq!(seqs(&vendor.messages(&room, 2, T).await?), vec![1, 2]);
    drop(vendor);

    let edit = acked(
        &mut buyer,
        json!({"type":"edit","room":room,"seq":1,"body":"one, fixed"}),
    )
    .await?;
    assert_eq!(edit["seq"], 3);
    let del = acked(&mut buyer, json!({"type":"delete","room":room,"seq":2})).await?;
    assert_eq!(del["seq"], 4);

    // Refusals, each with a clear code and the room as `ref`.
    let mut vendor = connect(&server, &v1, Role::Vendor, &room).await?;
    for (frame, code) in [
        (
            json!({"type":"edit","room":room,"seq":1,"body":"not yours"}),
            "forbidden",
        ),
        (json!({"type":"delete","room":room,"seq":99}), "not_found"),
    ] {
        vendor.send_json(&frame).await?;
        let e = error(&mut vendor).await?;
        assert_eq!(
            (e["code"].as_str(), e["ref"].as_str()),
            (Some(code), Some(room.as_str())),
            "{frame}"
        );
    }
    for (frame, code) in [
        (json!({"type":"delete","room":room,"seq":2}), "conflict"),
        (
            json!({"type":"edit","room":room,"seq":2,"body":"too late"}),
            "conflict",
        ),
        (
            json!({"type":"edit","room":room,"seq":3,"body":"edit of an edit"}),
            "conflict",
        ),
        (
            json!({"type":"edit","room":room,"seq":1,"body":"x".repeat(5000)}),
            "too_large",
        ),
        (
            json!({"type":"edit","room":room,"seq":1,"body":""}),
            "empty_body",
        ),
    ] {
        buyer.send_json(&frame).await?;
        assert_eq!(error(&mut buyer).await?["code"], code, "{frame}");
    }

    // The vendor resumes after 2: the edit and the delete, once, in order.
    vendor.subscribe(&ch, Some(2)).await?;
    let got = vendor.messages(&room, 2, T).await?;
    assert_eq!(seqs(&got), vec![3, 4]);
    assert_eq!(
        (
            &got[0]["kind"],
            &got[0]["ref_seq"],
            &got[0]["body"],
            &got[0]["from"]
        ),
        (&json!("edit"), &json!(1), &json!("one, fixed"), &json!(&b1))
    );
    assert_eq!(
        (&got[1]["kind"], &got[1]["ref_seq"]),
        (&json!("delete"), &json!(2))
    );
    let extra: Vec<Value> = vendor
        .drain(Duration::from_millis(300))
        .await
        .into_iter()
        .filter(|v| v["type"] == "message")
        .collect();
    assert!(extra.is_empty(), "delivered twice: {extra:?}");

    // Moderation: service deletes the buyer's message over HTTP; the
    // vendor sees it live and history has all of it once.
    let http = reqwest::Client::new();
    let url = server.http(&format!("/v1/chats/{room}/messages"));
    let r = http
        .post(&url)
        .bearer_auth(token("ops", Role::Service, &[]))
        .json(&json!({"client_id":"mod-1","body":"","kind":"delete","ref_seq":1}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let live = vendor.messages(&room, 1, T).await?;
    assert_eq!(
        (&live[0]["seq"], &live[0]["ref_seq"]),
        (&json!(5), &json!(1))
    );
    // A user cannot moderate over HTTP either; ref_seq without a kind is
    // refused.
    let r = http
        .post(&url)
        .bearer_auth(chat_token(&v1, Role::Vendor, &room))
        .json(&json!({"client_id":"x","body":"","kind":"delete","ref_seq":1}))
        .send()
        .await?;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "not the vendor's message"
    );
    let r = http
        .post(&url)
        .bearer_auth(chat_token(&v1, Role::Vendor, &room))
        .json(&json!({"client_id":"x","body":"hi","ref_seq":1}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let page = history(&server, &room, &chat_token(&v1, Role::Vendor, &room)).await?;
    assert_eq!(
        seqs(page["messages"].as_array().map_or(&[][..], |v| v)),
        vec![1, 2, 3, 4, 5]
    );
    Ok(())
}

async fn attachments_are_validated(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let b1 = unique("b");
    let v1 = unique("v");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, &b1, Role::Buyer, &room).await?;
    let mut vendor = connect(&server, &v1, Role::Vendor, &room).await?;
    vendor.subscribe(&ch, None).await?;
    let photo = json!({"url":"https://cdn.example/p/1.jpg","mime":"image/jpeg","size":48213,"width":1024,"height":768,"name":"door.jpg"});
    let ack = acked(
        &mut buyer,
        json!({"type":"send","room":room,"client_id":"a-1","body":"","attachments":[photo]}),
    )
    .await?;
    assert_eq!(ack["seq"], 1);
    let got = vendor.messages(&room, 1, T).await?;
    assert_eq!(got[0]["attachments"], json!([photo]));

    for (att, want) in [
        (
            json!({"url":"http://cdn.example/1.jpg","mime":"image/jpeg","size":1}),
            "https",
        ),
        (
            json!({"url":"https://cdn.example/1.jpg","mime":"image/jpeg","size":200_000_000u64}),
            "size",
        ),
        (
            json!({"url":"https://cdn.example/1.jpg","mime":"jpeg","size":1}),
            "mime",
        ),
        (
            json!({"url":"https://cdn.example/1.jpg","mime":"image/jpeg","size":1,"width":0}),
            "width",
        ),
    ] {
        buyer
            .send_json(&json!({"type":"send","room":room,"client_id":"a-2","body":"x","attachments":[att]}))
            .await?;
        let e = error(&mut buyer).await?;
        assert_eq!(e["code"], "bad_attachment", "{att}");
        assert_eq!(e["ref"], "a-2");
        assert!(
            e["message"].as_str().unwrap_or("").contains(want),
            "{att}: {e}"
        );
    }
    // Wrong types are refused before validation.
    buyer
        .send_json(&json!({"type":"send","room":room,"client_id":"a-3","body":"x","attachments":[{"url":"https://h","mime":"image/png","size":"big"}]}))
        .await?;
    assert_eq!(error(&mut buyer).await?["code"], "bad_frame");

    let http = reqwest::Client::new();
    let url = server.http(&format!("/v1/chats/{room}/messages"));
    let post = |att: Value| {
        http.post(&url)
            .bearer_auth(chat_token(&b1, Role::Buyer, &room))
            .json(&json!({"client_id":"h-1","body":"x","attachments":[att]}))
            .send()
    };
    let r = post(json!({"url":"ftp://h/x","mime":"image/png","size":1})).await?;
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let body: Value = r.json().await?;
    assert_eq!(body["error"]["code"], "bad_attachment");
    let r = post(json!({"url":"https://h/x","mime":"image/png","size":-1})).await?;
    assert!(r.status().is_client_error(), "{}", r.status());
    let r = post(json!({"url":"https://h/x","mime":"image/png","size":5})).await?;
    assert_eq!(r.status(), StatusCode::OK);
    Ok(())
}

async fn system_messages_come_from_service(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let b1 = unique("b");
    let v1 = unique("v");
    let ch = format!("chat:{room}");
    let mut buyer = connect(&server, &b1, Role::Buyer, &room).await?;
    buyer.subscribe(&ch, None).await?;
    let http = reqwest::Client::new();
    let url = server.http(&format!("/v1/chats/{room}/messages"));
    let post = |tok: String| {
        http.post(&url)
            .bearer_auth(tok)
            .json(&json!({"client_id":"s-1","body":"courier assigned","kind":"system"}))
            .send()
    };
    let r = post(chat_token(&v1, Role::Vendor, &room)).await?;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post(token("ops", Role::Service, &[])).await?;
    assert_eq!(r.status(), StatusCode::OK);
    let got = buyer.messages(&room, 1, T).await?;
    assert_eq!(
        (
            &got[0]["seq"],
            &got[0]["kind"],
            &got[0]["from"],
            &got[0]["body"]
        ),
        (
            &json!(1),
            &json!("system"),
            &json!("ops"),
            &json!("courier assigned")
        )
    );
    let page = history(&server, &room, &chat_token(&b1, Role::Buyer, &room)).await?;
    assert_eq!(page["unread"], 1, "system messages count as unread");
    Ok(())
}
