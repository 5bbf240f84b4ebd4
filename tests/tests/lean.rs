//! End to end, memory engine and real Redis: the `waypost.v1.lean`
//! WebSocket encoding. A lean subscriber, a MessagePack subscriber and a
//! JSON subscriber on the same driver get the same fixes (the lean frames
//! decoded here by a small reference decoder, independent of the
//! protocol crate's), for a sequence whose fields change, stay, appear and
//! disappear; the lean frames are smaller, carry only what changed, and the
//! first after a (re)subscribe is full; the same on an order's channel;
//! the server prefers lean to
//! MessagePack; and the buyer SDK with its default encoding (lean) reports
//! the same positions as one forced to JSON.

mod buyer_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use buyer_support::{fast_config, Recorder};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;
use waypost_e2e::{now_ms, token, unique, EngineChoice, Server, WsClient};
use waypost_protocol::{Fix, Role, LEAN_PROTOCOL, MSGPACK_PROTOCOL};
use waypost_sdk::buyer::{BuyerClient, BuyerDeps, TungsteniteConnector, WireEncoding};
use waypost_sdk::StaticToken;

const T: Duration = Duration::from_secs(10);

use waypost_e2e::on_both_engines;

on_both_engines!(
    lean_msgpack_and_json_subscribers_get_the_same_fixes,
    the_first_lean_frame_after_a_subscribe_is_full,
    the_sdk_default_encoding_reports_the_same_fixes_as_json,
    order_channel_locations_are_lean_too,
);

/// The driver's fixes: fields that change, stay the same, become whole,
/// disappear and appear; coordinates with more than 7 decimals (rounded).
fn fixes() -> Vec<Value> {
    let ts = now_ms() - 10_000;
    vec![
        json!({"seq":1,"ts":ts,"lat":52.520008,"lon":13.404954,"accuracy_m":4.5,"speed_mps":8.25,"heading_deg":271.0,"battery":0.5,"charging":false}),
        json!({"seq":2,"ts":ts+1000,"lat":52.520108,"lon":13.405054,"accuracy_m":4.5,"speed_mps":8.0,"heading_deg":271.0,"battery":0.5,"charging":false}),
        json!({"seq":3,"ts":ts+2000,"lat":52.520108,"lon":13.405054,"accuracy_m":5.0,"speed_mps":0.0,"battery":0.49,"charging":true,"altitude_m":35.25}),
        json!({"seq":4,"ts":ts+3000,"lat":52.52012345,"lon":13.40509876,"accuracy_m":5.0,"speed_mps":1.5,"battery":0.49,"charging":true,"coarse":true}),
        json!({"seq":5,"ts":ts+4000,"lat":52.52012345,"lon":13.40509876,"accuracy_m":5.0,"speed_mps":1.5,"battery":0.49,"charging":true,"coarse":true}),
    ]
}

async fn post_fix(server: &Server, driver: &str, fix: &Value) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id":"dev-1","fixes":[fix]}))
        .send()
        .await?;
    let status = resp.status();
    ensure!(status.is_success(), "{status}: {}", resp.text().await?);
    Ok(())
}

/// The next `location` frame as it came on the wire (raw value and its
/// size in bytes), skipping others.
async fn next_location(ws: &mut WsClient) -> Result<(Value, usize)> {
    let deadline = tokio::time::Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let (v, len) = match ws.next_message(left).await? {
            Message::Binary(b) => (waypost_protocol::msgpack::msgpack_to_value(&b)?, b.len()),
            Message::Text(t) => (serde_json::from_str(&t)?, t.len()),
            other => bail!("unexpected {other:?}"),
        };
        if v["type"] == "location" {
            return Ok((v, len));
        }
        if v["type"] == "error" {
            bail!("error frame: {v}");
        }
    }
}

/// Reference decoder: the full `fix` of lean frame `frame`, given the last
/// full fix held on its channel (which it replaces). Checks the base rule.
fn decode(held: &mut Option<Map<String, Value>>, frame: &Value) -> Result<Fix> {
    let lean = frame["fix"].as_object().context("no fix")?;
    let mut fix = match frame.get("base") {
        None => Map::new(),
        Some(base) => {
            let h = held.clone().context("a base but nothing held")?;
            ensure!(h["seq"] == *base, "base {base} but held {}", h["seq"]);
            h
        }
    };
    for (k, v) in lean {
        match k.as_str() {
            "lat_e7" => drop(fix.insert(
                "lat".into(),
                json!(v.as_i64().context("lat_e7")? as f64 / 1e7),
            )),
            "lon_e7" => drop(fix.insert(
                "lon".into(),
                json!(v.as_i64().context("lon_e7")? as f64 / 1e7),
            )),
            "lat" | "lon" => bail!("degrees in a lean frame: {frame}"),
            _ if v.is_null() => drop(fix.remove(k)),
            _ => drop(fix.insert(k.clone(), v.clone())),
        }
    }
    *held = Some(fix.clone());
    Ok(serde_json::from_value(Value::Object(fix))?)
}

/// Equal up to the 1e-7 degree rounding of lean coordinates.
fn assert_same_fix(lean: &Fix, json: &Fix) {
    assert!(
        (lean.lat - json.lat).abs() <= 0.51e-7,
        "{lean:?} vs {json:?}"
    );
    assert!(
        (lean.lon - json.lon).abs() <= 0.51e-7,
        "{lean:?} vs {json:?}"
    );
    let mut lean = lean.clone();
    lean.lat = json.lat;
    lean.lon = json.lon;
    assert_eq!(&lean, json);
}

fn fix_keys(frame: &Value) -> Vec<String> {
    let mut keys: Vec<String> = frame["fix"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    keys.sort();
    keys
}

async fn lean_msgpack_and_json_subscribers_get_the_same_fixes(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let tracking = format!("tracking:{driver}");
    let url = |user: &str| server.ws_url(&token(user, Role::Buyer, &[tracking.as_str()]));
    let (mut lean, selected) =
        WsClient::connect_offering(&url("b-lean"), "waypost.v1.lean, waypost.v1.msgpack").await?;
    assert_eq!(selected.as_deref(), Some(LEAN_PROTOCOL), "lean preferred");
    let (mut mp, selected) = WsClient::connect_offering(&url("b-mp"), MSGPACK_PROTOCOL).await?;
    assert_eq!(selected.as_deref(), Some(MSGPACK_PROTOCOL), "msgpack only");
    let mut text = WsClient::connect(&url("b-json")).await?;
    for ws in [&mut lean, &mut mp, &mut text] {
        ws.subscribe(&tracking, None).await?;
    }

    let mut held = None;
    let mut lean_frames = Vec::new();
    for fix in fixes() {
        post_fix(&server, &driver, &fix).await?;
        let (l, lean_len) = next_location(&mut lean).await?;
        let (m, mp_len) = next_location(&mut mp).await?;
        let (j, json_len) = next_location(&mut text).await?;
        let want: Fix = serde_json::from_value(j["fix"].clone())?;
        assert_eq!(want.seq, fix["seq"].as_u64().unwrap_or(0));
        // MessagePack: the JSON frame as is.
        assert_eq!(m, j);
        // Lean: the same fix once decoded, in fewer bytes.
        assert_same_fix(&decode(&mut held, &l)?, &want);
        assert!(
            lean_len < mp_len && mp_len < json_len,
            "seq {}: lean {lean_len}, msgpack {mp_len}, JSON {json_len} bytes",
            want.seq
        );
        lean_frames.push(l);
    }

    // The first frame is full; each next one a delta against the previous.
    let [f1, f2, f3, f4, f5] = &lean_frames[..] else {
        bail!("five frames expected")
    };
    assert!(f1.get("base").is_none(), "{f1}");
    assert_eq!(f1["driver_id"], driver);
    assert_eq!(f1["channel"], tracking);
    assert_eq!(f1["fix"]["lat_e7"], 525_200_080);
    assert_eq!(f1["fix"]["speed_mps"], 8.25);
    assert_eq!(fix_keys(f1).len(), 9);
    for (i, f) in [f2, f3, f4, f5].into_iter().enumerate() {
        assert_eq!(f["base"], i as u64 + 1, "{f}");
        assert!(f.get("driver_id").is_none(), "{f}");
        assert_eq!(f["channel"], tracking);
    }
    // Only what changed; the whole 8.0 as an integer.
    assert_eq!(fix_keys(f2), ["lat_e7", "lon_e7", "seq", "speed_mps", "ts"]);
    assert!(f2["fix"]["speed_mps"].is_u64(), "{f2}");
    // heading disappeared (nil), altitude appeared.
    assert_eq!(
        fix_keys(f3),
        [
            "accuracy_m",
            "altitude_m",
            "battery",
            "charging",
            "heading_deg",
            "lat_e7",
            "lon_e7",
            "seq",
            "speed_mps",
            "ts"
        ]
    );
    assert!(f3["fix"]["heading_deg"].is_null());
    assert_eq!(f3["fix"]["speed_mps"], 0);
    // Eight decimals: rounded to the nearest 1e-7 degree.
    assert_eq!(f4["fix"]["lat_e7"], 525_201_235);
    assert_eq!(f4["fix"]["lon_e7"], 134_050_988);
    assert!(f4["fix"]["altitude_m"].is_null());
    assert_eq!(f4["fix"]["coarse"], true);
    // Nothing changed but the position's seq and time.
    assert_eq!(fix_keys(f5), ["lat_e7", "lon_e7", "seq", "ts"]);
    Ok(())
}

async fn the_first_lean_frame_after_a_subscribe_is_full(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let tracking = format!("tracking:{driver}");
    let url = || server.ws_url(&token(&unique("b"), Role::Buyer, &[tracking.as_str()]));
    // Negotiation: lean wherever offered (the server's preference), else
    // MessagePack.
    for (offer, want) in [
        ("waypost.v1.msgpack, waypost.v1.lean", LEAN_PROTOCOL),
        ("x-unknown, waypost.v1.lean", LEAN_PROTOCOL),
        ("x-unknown, waypost.v1.msgpack", MSGPACK_PROTOCOL),
    ] {
        let (_, selected) = WsClient::connect_offering(&url(), offer).await?;
        assert_eq!(selected.as_deref(), Some(want), "{offer}");
    }
    let fixes = fixes();
    let (mut early, _) = WsClient::connect_offering(&url(), LEAN_PROTOCOL).await?;
    early.subscribe(&tracking, None).await?;
    for fix in &fixes[..3] {
        post_fix(&server, &driver, fix).await?;
    }
    while next_location(&mut early).await?.0["fix"]["seq"] != 3 {}

    // A late subscriber: the replayed position is full, the next live frame
    // a delta against it, the same delta as for the early subscriber.
    let (mut late, _) = WsClient::connect_offering(&url(), LEAN_PROTOCOL).await?;
    late.subscribe(&tracking, None).await?;
    let (replay, _) = next_location(&mut late).await?;
    assert_eq!(replay["fix"]["seq"], 3);
    assert!(
        replay.get("base").is_none() && replay["driver_id"] == driver,
        "{replay}"
    );
    let mut held = None;
    let replayed = decode(&mut held, &replay)?;
    assert_same_fix(&replayed, &serde_json::from_value(fixes[2].clone())?);
    post_fix(&server, &driver, &fixes[3]).await?;
    let (live, _) = next_location(&mut late).await?;
    assert_eq!(live["base"], 3, "{live}");
    assert_same_fix(
        &decode(&mut held, &live)?,
        &serde_json::from_value(fixes[3].clone())?,
    );
    let (early_live, _) = next_location(&mut early).await?;
    assert_eq!(early_live, live);

    // Subscribing again (still subscribed): full again; likewise after an
    // unsubscribe.
    late.subscribe(&tracking, None).await?;
    let (again, _) = next_location(&mut late).await?;
    assert_eq!(again["fix"]["seq"], 4);
    assert!(again.get("base").is_none(), "{again}");
    decode(&mut held, &again)?;
    late.send_json(&json!({"type":"unsubscribe","channel":tracking}))
        .await?;
    late.next_of_type("unsubscribed", T).await?;
    late.subscribe(&tracking, None).await?;
    let (back, _) = next_location(&mut late).await?;
    assert!(back.get("base").is_none(), "{back}");
    decode(&mut held, &back)?;
    post_fix(&server, &driver, &fixes[4]).await?;
    let (live, _) = next_location(&mut late).await?;
    assert_eq!(live["base"], 4, "{live}");
    assert_eq!(fix_keys(&live), ["lat_e7", "lon_e7", "seq", "ts"]);
    assert_same_fix(
        &decode(&mut held, &live)?,
        &serde_json::from_value(fixes[4].clone())?,
    );
    // With `after` at the latest seq there is no replay: the next live
    // frame on a fresh connection is full.
    let (mut resumed, _) = WsClient::connect_offering(&url(), LEAN_PROTOCOL).await?;
    resumed.subscribe(&tracking, Some(5)).await?;
    let mut sixth = fixes[4].clone();
    sixth["seq"] = json!(6);
    sixth["ts"] = json!(now_ms());
    post_fix(&server, &driver, &sixth).await?;
    let (first, _) = next_location(&mut resumed).await?;
    assert_eq!(first["fix"]["seq"], 6);
    assert!(first.get("base").is_none(), "{first}");
    Ok(())
}

async fn the_sdk_default_encoding_reports_the_same_fixes_as_json(
    engine: EngineChoice,
) -> Result<()> {
    let server = Server::start(engine).await?;
    let driver = unique("d");
    let tracking = format!("tracking:{driver}");
    assert_eq!(TungsteniteConnector::default().encoding, WireEncoding::Lean);
    let mut buyers = Vec::new();
    for encoding in [None, Some(WireEncoding::Json)] {
        let user = unique("b");
        let config = fast_config(server.http(""), &user);
        let mut deps = BuyerDeps::real(&config)?;
        if let Some(encoding) = encoding {
            deps.connector = Arc::new(TungsteniteConnector::new(encoding));
        }
        let rec = Arc::new(Recorder::default());
        let tokens = Arc::new(StaticToken(token(&user, Role::Buyer, &[tracking.as_str()])));
        let client = BuyerClient::start_with(config, rec.clone(), tokens, deps)?;
        client.track_driver(driver.clone())?;
        buyers.push((client, rec));
    }
    for (_, rec) in &buyers {
        rec.until(T, "connected", |r| {
            r.states
                .lock()
                .unwrap()
                .contains(&waypost_sdk::buyer::ConnectionState::Connected)
        })
        .await?;
    }
    // Subscribed before the first fix is posted: wait until the server
    // counts both subscriptions' deliveries by retrying the first fix
    // until both have seen it.
    let fixes = fixes();
    let deadline = tokio::time::Instant::now() + T;
    loop {
        post_fix(&server, &driver, &fixes[0]).await.ok();
        if buyers.iter().all(|(_, r)| r.last_location_seq() == Some(1)) {
            break;
        }
        ensure!(
            tokio::time::Instant::now() < deadline,
            "fix 1 never arrived"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for fix in &fixes[1..] {
        post_fix(&server, &driver, fix).await?;
        let seq = fix["seq"].as_u64().unwrap_or(0);
        for (_, rec) in &buyers {
            rec.until(T, "the fix", |r| r.last_location_seq() == Some(seq))
                .await?;
        }
    }
    let updates = |rec: &Recorder| {
        let mut v = rec.locations.lock().unwrap().clone();
        v.dedup_by_key(|u| u.seq);
        v
    };
    let (lean, json) = (updates(&buyers[0].1), updates(&buyers[1].1));
    assert_eq!(lean.len(), 5, "{lean:?}");
    assert_eq!(json.len(), 5, "{json:?}");
    for (l, j) in lean.iter().zip(&json) {
        assert!((l.lat - j.lat).abs() <= 0.51e-7 && (l.lon - j.lon).abs() <= 0.51e-7);
        let mut l = l.clone();
        (l.lat, l.lon) = (j.lat, j.lon);
        assert_eq!(&l, j);
    }
    // The fields the updates carry, as the driver sent them.
    assert_eq!(json[1].speed_mps, Some(8.0));
    assert_eq!(json[2].heading_deg, None);
    assert!(json[3].coarse && lean[3].coarse);
    for (client, _) in buyers {
        client.shutdown().await;
    }
    Ok(())
}

async fn post_event(server: &Server, order: &str, ev: Value) -> Result<()> {
    let resp = reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(token("backend", Role::Service, &[]))
        .json(&ev)
        .send()
        .await?;
    let status = resp.status();
    ensure!(status.is_success(), "{status}: {}", resp.text().await?);
    Ok(())
}

/// The driver's location frames on an order's channel: lean (full first,
/// then deltas against the previous one on that channel), the same fixes
/// as JSON; `order` frames plain MessagePack.
async fn order_channel_locations_are_lean_too(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let (o, d) = (unique("o"), unique("d"));
    let ch = format!("order:{o}");
    post_event(&server, &o, json!({"event_id":"e1","status":"placed"})).await?;
    post_event(
        &server,
        &o,
        json!({"event_id":"e2","status":"picked_up","driver_id":d,"destination":{"lat":52.0,"lon":13.0}}),
    )
    .await?;
    let url = |user: &str| server.ws_url(&token(user, Role::Buyer, &[ch.as_str()]));
    let (mut lean, selected) = WsClient::connect_offering(&url("b-lean"), LEAN_PROTOCOL).await?;
    assert_eq!(selected.as_deref(), Some(LEAN_PROTOCOL));
    let mut text = WsClient::connect(&url("b-json")).await?;
    lean.subscribe(&ch, None).await?;
    text.subscribe(&ch, None).await?;
    let mut held = None;
    for (i, fix) in fixes().iter().enumerate() {
        post_fix(&server, &d, fix).await?;
        let (l, _) = next_location(&mut lean).await?;
        let (j, _) = next_location(&mut text).await?;
        assert_eq!(l["channel"], ch);
        if i == 0 {
            assert!(l.get("base").is_none() && l["driver_id"] == d, "{l}");
        } else {
            assert_eq!(l["base"], i as u64, "{l}");
            assert!(l.get("driver_id").is_none(), "{l}");
        }
        assert_same_fix(
            &decode(&mut held, &l)?,
            &serde_json::from_value(j["fix"].clone())?,
        );
    }
    // Order frames are not lean: the JSON frame as MessagePack.
    post_event(&server, &o, json!({"event_id":"e3","status":"delivered"})).await?;
    let order = lean.next_of_type("order", T).await?;
    assert_eq!(order["entry"]["status"], "delivered");
    assert_eq!(order, text.next_of_type("order", T).await?);
    Ok(())
}
