//! Limits, end to end on the real binary: each limit gives its documented
//! answer to the user who crosses it and changes nothing for another user
//! active at the same time.
//!
//! - per-connection message rate: `error` `rate_limited` per dropped frame,
//!   close 4029 after sustained abuse;
//! - slow consumer: a client that stops reading while messages pour in is
//!   closed with 4101 (bounded queue, `--ws-queue`), its slot comes back,
//!   and a reading client on the same room gets everything in order;
//! - channels per connection: `error` `too_many_channels`, connection usable;
//! - SSE streams per vendor: 429 + `Retry-After` for that vendor only;
//! - ingest rate per driver: 429 + `Retry-After`, nothing stored, other
//!   drivers unaffected;
//! - frame and body caps: 4008 and 413 for the offender only.
//!
//! The per-user connection cap is covered by `tracking.rs`
//! (`connection_cap_per_user`, another user included).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use waypost_e2e::chat::SseClient;
use waypost_e2e::{now_ms, token, unique, Closed, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    message_rate_per_connection,
    sustained_abuse_closes_with_4029,
    slow_consumer_is_closed_with_4101,
    channels_per_connection,
    sse_streams_per_vendor,
    ingest_rate_per_driver,
    frame_and_body_caps,
);

/// A second user whose connection must keep working: answers a ping.
async fn bystander_ok(ws: &mut WsClient, id: u64) -> Result<()> {
    ws.send_json(&json!({"type": "ping", "id": id})).await?;
    let pong = ws.next_of_type("pong", T).await?;
    if pong["id"] != id {
        bail!("bystander got {pong}");
    }
    Ok(())
}

async fn bystander(server: &Server) -> Result<WsClient> {
    let tok = token(&unique("bystander"), Role::Buyer, &[]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    bystander_ok(&mut ws, 0).await?;
    Ok(ws)
}

async fn message_rate_per_connection(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--ws-messages-per-s")
            .arg("5"),
    )
    .await?;
    let mut other = bystander(&server).await?;
    let tok = token(&unique("chatty"), Role::Buyer, &[]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    // 40 frames at once: the burst (10) is answered, the rest refused.
    for i in 0..40 {
        ws.send_json(&json!({"type": "ping", "id": i})).await?;
    }
    let (mut pongs, mut limited) = (0, 0);
    while pongs + limited < 40 {
        let v = ws.next_json(T).await?;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("pong"), _) => pongs += 1,
            (Some("error"), Some("rate_limited")) => {
                assert!(
                    v["message"].as_str().is_some_and(|m| m.contains('5')),
                    "{v}"
                );
                limited += 1;
            }
            _ => bail!("unexpected {v}"),
        }
    }
    assert!(
        (10..=12).contains(&pongs),
        "{pongs} pongs for a burst of 10"
    );
    assert_eq!(limited, 40 - pongs);
    // Meanwhile another user is served at once.
    bystander_ok(&mut other, 1).await?;
    // The bucket refills: the same connection works after a pause.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    bystander_ok(&mut ws, 99).await?;
    bystander_ok(&mut other, 2).await?;
    Ok(())
}

async fn sustained_abuse_closes_with_4029(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--ws-messages-per-s")
            .arg("1"),
    )
    .await?;
    let mut other = bystander(&server).await?;
    let tok = token(&unique("abuser"), Role::Buyer, &[]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    // One frame at a time, each answered before the next (so nothing is
    // left unread when the server closes): 100 refusals in a row close it.
    let mut refused = 0;
    let closed = loop {
        assert!(refused < 1000, "never closed");
        ws.send_json(&json!({"type": "ping", "id": refused}))
            .await?;
        match ws.next_json(T).await {
            Ok(v) if v["type"] == "pong" => {}
            Ok(v) if v["code"] == "rate_limited" => refused += 1,
            Ok(v) => bail!("unexpected {v}"),
            // `next_json` reports the close frame as an error.
            Err(e) => break e.to_string(),
        }
    };
    println!("abuser {closed} after {refused} refusals");
    assert!(closed.contains("4029"), "{closed}");
    assert!(refused >= 99, "closed after only {refused} refusals");
    bystander_ok(&mut other, 1).await?;
    Ok(())
}

/// A WebSocket with a tiny receive buffer whose owner never reads.
async fn stalled_client(
    server: &Server,
    tok: &str,
    room: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.set_recv_buffer_size(4096)?;
    let stream = sock.connect(server.addr).await?;
    let (mut ws, _) = tokio_tungstenite::client_async(
        server.ws_url(tok),
        tokio_tungstenite::MaybeTlsStream::Plain(stream),
    )
    .await?;
    use futures_util::SinkExt;
    ws.send(Message::Text(
        json!({"type": "subscribe", "channel": format!("chat:{room}")})
            .to_string()
            .into(),
    ))
    .await?;
    loop {
        let msg = tokio::time::timeout(T, ws.next()).await?;
        if let Some(Ok(Message::Text(t))) = msg {
            let v: Value = serde_json::from_str(&t)?;
            if v["type"] == "subscribed" {
                return Ok(ws);
            }
            if v["type"] == "error" {
                bail!("subscribe refused: {v}");
            }
        } else {
            bail!("stalled client: {msg:?}");
        }
    }
}

async fn slow_consumer_is_closed_with_4101(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--ws-queue")
            .arg("8")
            .arg("--max-connections-per-user")
            .arg("1")
            // The poster is one user: let it post as fast as it can.
            .arg("--ws-messages-per-s")
            .arg("100000"),
    )
    .await?;
    let room = unique("room");
    let chan = format!("chat:{room}");
    let slow_user = unique("slow");
    let slow_tok = token(&slow_user, Role::Buyer, &[&chan]);
    let mut slow = stalled_client(&server, &slow_tok, &room).await?;
    let mut reader =
        WsClient::connect(&server.ws_url(&token(&unique("reader"), Role::Buyer, &[&chan]))).await?;
    reader.subscribe(&chan, None).await?;
    let mut other = bystander(&server).await?;

    // Messages of 3 KiB pour in over HTTP while `slow` reads nothing and
    // `reader` reads everything, until the server has counted a slow
    // consumer (its socket buffers, up to a few MB, fill first).
    let max = 4000;
    let poster = {
        let url = server.http(&format!("/v1/chats/{room}/messages"));
        let metrics_url = server.http("/metrics");
        let svc = token("orders", Role::Service, &[]);
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..max {
                let body = format!("{i:04}:{}", "x".repeat(3 * 1024));
                let r = client
                    .post(&url)
                    .bearer_auth(&svc)
                    .json(&json!({"client_id": format!("c-{i}"), "body": body}))
                    .send()
                    .await?;
                if !r.status().is_success() {
                    bail!("post {i}: {}", r.status());
                }
                if i % 50 == 49 {
                    let text = client.get(&metrics_url).send().await?.text().await?;
                    if text.lines().any(|l| {
                        l.starts_with("waypost_slow_consumers_total ") && !l.ends_with(" 0")
                    }) {
                        return Ok::<_, anyhow::Error>(i + 1);
                    }
                }
            }
            bail!("no slow consumer after {max} messages")
        })
    };
    let mut seqs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(90);
    let posted = loop {
        if poster.is_finished() && !seqs.is_empty() {
            let posted = poster.await??;
            if seqs.len() >= posted {
                break posted;
            }
            let rest = reader.messages(&room, posted - seqs.len(), T).await?;
            seqs.extend(rest.iter().filter_map(|m| m["seq"].as_u64()));
            break posted;
        }
        assert!(Instant::now() < deadline, "poster never finished");
        if let Ok(v) = reader.next_json(Duration::from_millis(200)).await {
            if v["type"] == "message" {
                seqs.extend(v["seq"].as_u64());
            }
        }
    };
    println!("slow consumer detected after {posted} messages of 3 KiB");
    assert_eq!(seqs.len(), posted, "the reading client missed messages");
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "out of order or duplicated: {seqs:?}"
    );
    bystander_ok(&mut other, 1).await?;

    // The server gives up on the stalled client although it never reads
    // again: its connection slot (cap 1) comes back, the user reconnects.
    let deadline = Instant::now() + T;
    loop {
        let mut again = WsClient::connect(&server.ws_url(&slow_tok)).await?;
        again.send_json(&json!({"type": "ping", "id": 7})).await?;
        let v = again.next_json(T).await?;
        if v["type"] == "pong" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the stalled connection still holds its slot: {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Reading now shows what was buffered, then the end: close 4101 when
    // the server could still write it, else the connection just ends.
    let deadline = Instant::now() + T;
    let close = loop {
        let msg = tokio::time::timeout_at(deadline.into(), slow.next()).await?;
        match msg {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    println!("stalled client ended with close {close:?}");
    assert!(matches!(close, Some(4101) | None), "{close:?}");
    Ok(())
}

async fn channels_per_connection(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let mut other = bystander(&server).await?;
    let tok = token(&unique("svc"), Role::Service, &[]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    let prefix = unique("d");
    for i in 0..64 {
        ws.subscribe(&format!("tracking:{prefix}-{i}"), None)
            .await?;
    }
    // Subscribing again to one it holds is fine.
    ws.subscribe(&format!("tracking:{prefix}-0"), None).await?;
    let extra = format!("tracking:{prefix}-64");
    ws.send_json(&json!({"type": "subscribe", "channel": extra}))
        .await?;
    let err = ws.next_of_type("error", T).await?;
    assert_eq!(err["code"], "too_many_channels", "{err}");
    assert_eq!(err["ref"], extra.as_str());
    assert!(
        err["message"].as_str().is_some_and(|m| m.contains("64")),
        "{err}"
    );
    bystander_ok(&mut ws, 1).await?;
    bystander_ok(&mut other, 1).await?;
    // Leaving one makes room.
    ws.send_json(&json!({"type": "unsubscribe", "channel": format!("tracking:{prefix}-0")}))
        .await?;
    ws.subscribe(&extra, None).await?;
    Ok(())
}

async fn sse_streams_per_vendor(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--max-sse-per-vendor")
            .arg("2"),
    )
    .await?;
    let (va, vb) = (unique("va"), unique("vb"));
    let url = |v: &str| server.http(&format!("/v1/vendors/{v}/notifications/stream"));
    let (ta, tb) = (token(&va, Role::Vendor, &[]), token(&vb, Role::Vendor, &[]));
    let mut a1 = SseClient::connect(&url(&va), &ta, None).await?;
    let _a2 = SseClient::connect(&url(&va), &ta, None).await?;
    let third = SseClient::request(&url(&va), &ta, None).await?;
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(third.headers().contains_key("retry-after"));
    let body: Value = third.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited");
    // Another vendor is not affected, and the open streams still deliver.
    let mut b1 = SseClient::connect(&url(&vb), &tb, None).await?;
    let svc = token("orders", Role::Service, &[]);
    for v in [&va, &vb] {
        let r = reqwest::Client::new()
            .post(server.http(&format!("/v1/vendors/{v}/notifications")))
            .bearer_auth(&svc)
            .json(&json!({"event": "new-order", "data": {"v": v}}))
            .send()
            .await?;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
    }
    assert_eq!(a1.next_event(T).await?.event, "new-order");
    assert_eq!(b1.next_event(T).await?.event, "new-order");
    Ok(())
}

async fn post_fix(
    client: &reqwest::Client,
    server: &Server,
    driver: &str,
    seq: u64,
) -> Result<reqwest::Response> {
    Ok(client
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "dev", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await?)
}

async fn ingest_rate_per_driver(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--ingest-requests-per-s")
            .arg("2"),
    )
    .await?;
    let client = reqwest::Client::new();
    let (fast, calm) = (unique("d-fast"), unique("d-calm"));
    let mut accepted = Vec::new();
    let mut limited = Vec::new();
    for seq in 1..=12 {
        let r = post_fix(&client, &server, &fast, seq).await?;
        match r.status() {
            StatusCode::OK => accepted.push(seq),
            StatusCode::TOO_MANY_REQUESTS => {
                let retry: u64 = r
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse().ok())
                    .unwrap_or(0);
                assert!((1..=60).contains(&retry), "Retry-After {retry}");
                let body: Value = r.json().await?;
                assert_eq!(body["error"]["code"], "rate_limited", "{body}");
                limited.push(seq);
            }
            s => bail!("seq {seq}: {s}"),
        }
        if seq % 3 == 0 {
            // Meanwhile another driver posts within its own rate.
            let r = post_fix(&client, &server, &calm, seq / 3).await?;
            assert_eq!(r.status(), StatusCode::OK, "another driver was limited");
        }
    }
    assert!((4..=6).contains(&accepted.len()), "accepted {accepted:?}");
    assert!(!limited.is_empty());
    // Refused batches were not stored: the trail holds only accepted seqs.
    let trail: Value = client
        .get(server.http(&format!("/v1/drivers/{fast}/trail")))
        .bearer_auth(token(&fast, Role::Driver, &[]))
        .send()
        .await?
        .json()
        .await?;
    let stored: Vec<u64> = trail["fixes"]
        .as_array()
        .map(|a| a.iter().filter_map(|f| f["seq"].as_u64()).collect())
        .unwrap_or_default();
    assert_eq!(stored, accepted);
    // After the wait it asked for, the driver is served again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        post_fix(&client, &server, &fast, 100).await?.status(),
        StatusCode::OK
    );
    Ok(())
}

async fn frame_and_body_caps(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let mut other = bystander(&server).await?;
    let tok = token(&unique("big"), Role::Buyer, &[]);
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    // 64 KiB is fine, more is not.
    let pad = 64 * 1024 - 40;
    ws.send_json(&json!({"type": "ping", "id": "x".repeat(pad)}))
        .await?;
    assert_eq!(ws.next_json(T).await?["type"], "pong");
    let _ = ws
        .send_json(&json!({"type": "ping", "id": "x".repeat(65 * 1024)}))
        .await;
    let closed = ws.closed(T).await?;
    assert!(
        matches!(closed, Closed::Code(4008, _) | Closed::NoFrame),
        "{closed:?}"
    );
    bystander_ok(&mut other, 1).await?;

    // Body cap: 512 KiB; a driver over it gets 413, another is served.
    let client = reqwest::Client::new();
    let big = unique("d-big");
    let r = client
        .post(server.http(&format!("/v1/drivers/{big}/locations")))
        .bearer_auth(token(&big, Role::Driver, &[]))
        .header("content-type", "application/json")
        .body(format!(
            "{{\"device_id\":\"d\",\"fixes\":[],\"pad\":\"{}\"}}",
            "y".repeat(513 * 1024)
        ))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let calm = unique("d-calm");
    assert_eq!(
        post_fix(&client, &server, &calm, 1).await?.status(),
        StatusCode::OK
    );
    bystander_ok(&mut other, 2).await?;
    Ok(())
}
