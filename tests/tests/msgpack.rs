//! End to end, memory engine and real Redis: the `waypost.v1.msgpack`
//! WebSocket encoding. A MessagePack client and a JSON client in the same
//! room and on the same driver receive the same content (both decoded and
//! compared); every client frame type works in MessagePack; edits and
//! deletes with a client id are acked once; a bad binary frame is refused
//! like bad JSON; an unknown subprotocol gets JSON without a protocol
//! header.

use std::time::Duration;

use anyhow::{bail, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::protocol::Role as WsRole;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use waypost_e2e::{now_ms, token, unique, Closed, EngineChoice, Server, WsClient};
use waypost_protocol::{close_code, Role, MSGPACK_PROTOCOL};

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    msgpack_and_json_clients_receive_the_same_content,
    every_client_frame_type_works_in_msgpack,
    unknown_subprotocol_falls_back_to_json,
);

/// Frames of the given types, in order, until `n` arrived.
async fn collect(ws: &mut WsClient, types: &[&str], n: usize) -> Result<Vec<Value>> {
    let deadline = tokio::time::Instant::now() + T;
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws.next_json(left).await?;
        if types.iter().any(|t| v["type"] == *t) {
            out.push(v);
        }
    }
    Ok(out)
}

/// Reads until a frame of type `ty`; fails on an `error` frame.
async fn expect(ws: &mut WsClient, ty: &str) -> Result<Value> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let v = ws.next_json(left).await?;
        if v["type"] == ty {
            return Ok(v);
        }
        if v["type"] == "error" {
            bail!("expected {ty}, got {v}");
        }
    }
}

async fn msgpack_and_json_clients_receive_the_same_content(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let chat = format!("chat:{room}");
    let driver = unique("d");
    let tracking = format!("tracking:{driver}");
    let grants = [chat.as_str(), tracking.as_str()];
    // Users unique per test: user channels cross servers on a shared Redis.
    let (b1, b2, v1) = (unique("b"), unique("b"), unique("v"));
    let (mut bin, selected) = WsClient::connect_offering(
        &server.ws_url(&token(&b1, Role::Buyer, &grants)),
        &format!("x-unknown, {MSGPACK_PROTOCOL}"),
    )
    .await?;
    assert_eq!(selected.as_deref(), Some(MSGPACK_PROTOCOL));
    assert!(bin.is_msgpack());
    let mut text = WsClient::connect(&server.ws_url(&token(&b2, Role::Buyer, &grants))).await?;
    let mut vendor =
        WsClient::connect(&server.ws_url(&token(&v1, Role::Vendor, &[chat.as_str()]))).await?;
    for ws in [&mut bin, &mut text] {
        ws.subscribe(&chat, None).await?;
        ws.subscribe(&tracking, None).await?;
    }
    vendor.subscribe(&chat, None).await?;

    // Chat: a message with attachments, an edit, a delete, typing and a
    // receipt, all by the vendor (over JSON).
    let first = vendor
        .send_json(&json!({"type":"send","room":room,"client_id":"c-1","body":"hi ✓ \"there\"",
            "attachments":[{"url":"https://cdn.example/p.jpg","mime":"image/jpeg","size":12345,"width":640,"height":480,"name":"p.jpg"}]}))
        .await;
    first?;
    expect(&mut vendor, "sent").await?;
    vendor
        .send_json(&json!({"type":"edit","room":room,"seq":1,"body":"hello"}))
        .await?;
    expect(&mut vendor, "sent").await?;
    vendor
        .send_chat(&room, "c-2", "second, to be deleted")
        .await?;
    vendor
        .send_json(&json!({"type":"delete","room":room,"seq":3}))
        .await?;
    expect(&mut vendor, "sent").await?;
    vendor
        .send_json(&json!({"type":"receipt","room":room,"seq":4,"kind":"read"}))
        .await?;
    vendor
        .send_json(&json!({"type":"typing","room":room}))
        .await?;

    // Tracking: a batch with every fix field.
    let now = now_ms();
    let body = json!({"device_id":"dev-1","fixes":[
        {"seq":1,"ts":now - 2000,"lat":52.520008,"lon":13.404954,"accuracy_m":4.5,"speed_mps":8.25,"heading_deg":271.0,"battery":0.5,"charging":false},
        {"seq":2,"ts":now - 1000,"lat":52.520108,"lon":13.405054,"accuracy_m":5.0,"speed_mps":8.5,"heading_deg":270.5,"altitude_m":35.25}
    ]});
    let resp = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(&driver, Role::Driver, &[]))
        .json(&body)
        .send()
        .await?;
    let status = resp.status();
    assert!(status.is_success(), "{status}: {}", resp.text().await?);

    let types = ["message", "receipt", "typing", "location"];
    // 4 messages, 1 receipt, 1 typing, at least 1 location.
    let got_bin = collect(&mut bin, &types, 7).await?;
    let got_text = collect(&mut text, &types, 7).await?;
    let chat_only = |v: &[Value]| -> Vec<Value> {
        v.iter()
            .filter(|f| f["type"] != "location")
            .cloned()
            .collect()
    };
    assert_eq!(chat_only(&got_bin), chat_only(&got_text));
    let chat_frames = chat_only(&got_bin);
    assert_eq!(chat_frames.len(), 6, "{chat_frames:?}");
    assert_eq!(chat_frames[0]["attachments"][0]["width"], 640);
    assert_eq!(chat_frames[0]["body"], "hi ✓ \"there\"");
    assert_eq!(chat_frames[1]["kind"], "edit");
    assert_eq!(chat_frames[3]["kind"], "delete");
    // The newest location (the batch may be delivered as one frame of its
    // newest fix or as both): identical on both, fractional values intact.
    let last_location = |v: &[Value]| v.iter().rev().find(|f| f["type"] == "location").cloned();
    let (lb, lt) = (last_location(&got_bin), last_location(&got_text));
    let (mut lb, mut lt) = (lb.unwrap_or_default(), lt.unwrap_or_default());
    while lb["fix"]["seq"] != 2 {
        lb = expect(&mut bin, "location").await?;
    }
    while lt["fix"]["seq"] != 2 {
        lt = expect(&mut text, "location").await?;
    }
    assert_eq!(lb, lt);
    assert_eq!(lb["fix"]["lat"], 52.520108);
    assert_eq!(lb["fix"]["speed_mps"], 8.5);
    assert_eq!(lb["fix"]["altitude_m"], 35.25);

    // On the wire: binary frames for the MessagePack client, with the very
    // field names, smaller than the JSON text.
    vendor.send_chat(&room, "c-3", "wire check").await?;
    let raw_bin = loop {
        if let Message::Binary(b) = bin.next_message(T).await? {
            let v = waypost_protocol::msgpack::msgpack_to_value(&b)?;
            if v["type"] == "message" {
                break b;
            }
        } else {
            bail!("a text frame on a MessagePack connection");
        }
    };
    let raw_text = loop {
        match text.next_message(T).await? {
            Message::Text(t) if t.contains("\"wire check\"") => break t,
            Message::Text(_) => continue,
            other => bail!("unexpected {other:?} on a JSON connection"),
        }
    };
    let decoded = waypost_protocol::msgpack::msgpack_to_value(&raw_bin)?;
    assert_eq!(decoded, serde_json::from_str::<Value>(&raw_text)?);
    assert!(raw_bin.len() < raw_text.len());
    Ok(())
}

async fn every_client_frame_type_works_in_msgpack(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let chat = format!("chat:{room}");
    let driver = unique("d");
    let tracking = format!("tracking:{driver}");
    let (me, v1) = (unique("b"), unique("v"));
    let tok = token(&me, Role::Buyer, &[chat.as_str(), tracking.as_str()]);
    let mut ws = WsClient::connect_msgpack(&server.ws_url(&tok)).await?;
    let mut peer =
        WsClient::connect(&server.ws_url(&token(&v1, Role::Vendor, &[chat.as_str()]))).await?;
    peer.subscribe(&chat, None).await?;

    // subscribe / subscribed (chat and tracking)
    let sub = ws.subscribe(&chat, None).await?;
    assert_eq!(sub["recovered"], true);
    ws.subscribe(&tracking, None).await?;
    // ping / pong with its id
    ws.send_json(&json!({"type":"ping","id":"p-1"})).await?;
    assert_eq!(expect(&mut ws, "pong").await?["id"], "p-1");
    // send / sent, seen by the JSON peer
    let ack = ws.send_chat(&room, "c-1", "from msgpack").await?;
    assert_eq!(ack["seq"], 1);
    let got = peer.messages(&room, 1, T).await?;
    assert_eq!(got[0]["body"], "from msgpack");
    // edit with a client id: acked, a resend gets the same ack and
    // stores nothing new
    let edit = json!({"type":"edit","room":room,"seq":1,"body":"edited","client_id":"e-1"});
    ws.send_json(&edit).await?;
    let first = expect(&mut ws, "sent").await?;
    assert_eq!(first["client_id"], "e-1");
    ws.send_json(&edit).await?;
    let again = expect(&mut ws, "sent").await?;
    assert_eq!(again, first);
    // delete with a client id, resent after it was applied: same ack
    let delete = json!({"type":"delete","room":room,"seq":1,"client_id":"d-1"});
    ws.send_json(&delete).await?;
    let deleted = expect(&mut ws, "sent").await?;
    assert_eq!(deleted["seq"], 3);
    ws.send_json(&delete).await?;
    assert_eq!(expect(&mut ws, "sent").await?, deleted);
    let got = peer.messages(&room, 2, T).await?;
    assert_eq!(
        got.iter()
            .map(|m| (m["seq"].clone(), m["kind"].clone()))
            .collect::<Vec<_>>(),
        [(json!(2), json!("edit")), (json!(3), json!("delete"))]
    );
    let later = peer.drain(Duration::from_millis(300)).await;
    assert!(
        later.iter().all(|f| f["type"] != "message"),
        "the resends were stored once: {later:?}"
    );
    // receipt, seen by the peer
    ws.send_json(&json!({"type":"receipt","room":room,"seq":3,"kind":"read"}))
        .await?;
    let r = expect(&mut peer, "receipt").await?;
    assert_eq!(
        (r["user"].as_str(), r["seq"].as_u64()),
        (Some(me.as_str()), Some(3))
    );
    // typing, seen by the peer
    ws.send_json(&json!({"type":"typing","room":room})).await?;
    assert_eq!(expect(&mut peer, "typing").await?["user"], me.as_str());
    // sync / synced
    ws.send_json(&json!({"type":"sync","room":room,"after_seq":0}))
        .await?;
    let synced = expect(&mut ws, "synced").await?;
    assert_eq!(synced["messages"].as_array().map(Vec::len), Some(3));
    // refresh / refreshed
    let fresh = token(&me, Role::Buyer, &[chat.as_str(), tracking.as_str()]);
    ws.send_json(&json!({"type":"refresh","token":fresh}))
        .await?;
    expect(&mut ws, "refreshed").await?;
    // unsubscribe / unsubscribed
    ws.send_json(&json!({"type":"unsubscribe","channel":tracking}))
        .await?;
    assert_eq!(expect(&mut ws, "unsubscribed").await?["channel"], tracking);
    // Errors come as MessagePack too, with the JSON codes.
    ws.send_json(&json!({"type":"send","room":room,"client_id":"c-2","body":""}))
        .await?;
    let err = match ws.next_message(T).await? {
        Message::Binary(b) => waypost_protocol::msgpack::msgpack_to_value(&b)?,
        other => bail!("expected a binary error frame, got {other:?}"),
    };
    assert_eq!(
        (err["type"].as_str(), err["code"].as_str()),
        (Some("error"), Some("empty_body"))
    );
    // JSON text is still read on a MessagePack connection.
    ws.send_raw(Message::Text(r#"{"type":"ping","id":9}"#.into()))
        .await?;
    assert_eq!(expect(&mut ws, "pong").await?["id"], 9);
    // A binary frame that is not a MessagePack map: `bad_frame`, then 4008
    // like invalid JSON.
    ws.send_raw(Message::Binary(vec![0x93, 1, 2, 3].into()))
        .await?;
    let err = expect(&mut ws, "error").await?;
    assert_eq!(err["code"], "bad_frame");
    let closed = ws.closed(T).await?;
    assert!(
        matches!(closed, Closed::Code(close_code::BAD_FRAME, _)),
        "closed with {closed:?}"
    );
    // A JSON connection still refuses binary frames.
    let mut plain = WsClient::connect(&server.ws_url(&tok)).await?;
    plain
        .send_raw(Message::Binary(
            waypost_protocol::msgpack::json_to_msgpack(r#"{"type":"ping"}"#)?.into(),
        ))
        .await?;
    assert_eq!(expect(&mut plain, "error").await?["code"], "bad_frame");
    assert!(matches!(
        plain.closed(T).await?,
        Closed::Code(close_code::BAD_FRAME, _)
    ));
    Ok(())
}

/// An upgrade by hand (tungstenite's client refuses a response without the
/// protocol it asked for): returns the response head and the socket.
async fn handshake(
    server: &Server,
    tok: &str,
    protocols: Option<&str>,
) -> Result<(String, tokio::net::TcpStream)> {
    let url = server.ws_url(tok);
    let rest = url.trim_start_matches("ws://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let mut tcp = tokio::net::TcpStream::connect(host).await?;
    let mut req = format!(
        "GET /{path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocols {
        req.push_str(&format!("Sec-WebSocket-Protocol: {p}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes()).await?;
    // Read the head byte by byte so no frame bytes are consumed.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 8192 {
            bail!("response head too long");
        }
        tokio::time::timeout(T, tcp.read_exact(&mut byte)).await??;
        head.push(byte[0]);
    }
    Ok((String::from_utf8(head)?.to_ascii_lowercase(), tcp))
}

async fn unknown_subprotocol_falls_back_to_json(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let room = unique("order");
    let chat = format!("chat:{room}");
    let tok = token("b-1", Role::Buyer, &[chat.as_str()]);
    for offered in [Some("x-waypost.v2, mqtt"), None] {
        let (head, tcp) = handshake(&server, &tok, offered).await?;
        assert!(head.starts_with("http/1.1 101"), "{head}");
        assert!(
            !head.contains("sec-websocket-protocol"),
            "no protocol chosen: {head}"
        );
        let stream =
            WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(tcp), WsRole::Client, None)
                .await;
        let mut ws = WsClient::from_stream(stream);
        ws.send_json(&json!({"type":"subscribe","channel":chat}))
            .await?;
        match ws.next_message(T).await? {
            Message::Text(t) => {
                let v: Value = serde_json::from_str(&t)?;
                assert_eq!(v["type"], "subscribed");
            }
            other => bail!("expected JSON text, got {other:?}"),
        }
    }
    // Offered first among others, MessagePack is chosen.
    let (head, tcp) =
        handshake(&server, &tok, Some(&format!("{MSGPACK_PROTOCOL}, x-other"))).await?;
    assert!(
        head.contains(&format!("sec-websocket-protocol: {MSGPACK_PROTOCOL}")),
        "{head}"
    );
    let mut stream =
        WebSocketStream::from_raw_socket(MaybeTlsStream::Plain(tcp), WsRole::Client, None).await;
    stream
        .send(Message::Binary(
            waypost_protocol::msgpack::json_to_msgpack(&json!({"type":"ping","id":1}).to_string())?
                .into(),
        ))
        .await?;
    let pong = loop {
        match tokio::time::timeout(T, stream.next()).await? {
            Some(Ok(Message::Binary(b))) => break waypost_protocol::msgpack::msgpack_to_value(&b)?,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            other => bail!("expected a binary pong, got {other:?}"),
        }
    };
    assert_eq!(pong, json!({"type":"pong","id":1}));
    Ok(())
}
