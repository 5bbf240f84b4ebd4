//! Push end to end (issue 19): the real binary against the local fake APNs
//! (TLS, HTTP/2, ES256 provider token) and fake FCM (OAuth token endpoint,
//! `messages:send`), on both engines and with two processes on one Redis.

use std::time::Duration;

use anyhow::{ensure, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::push::{Accepted, FakeApns, FakeFcm, PushKeys};
use waypost_e2e::tls::TestCerts;
use waypost_e2e::{token, unique, EngineChoice, Server, ServerOptions, WsClient};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(10);
/// Collapse window the servers run with.
const COLLAPSE: &str = "300ms";
/// Longer than the collapse window plus a flush tick and a provider round
/// trip: a push that was going to be sent has been by then.
const SETTLE: Duration = Duration::from_millis(1500);

mod buyer_support;

use buyer_support::{fast_config, Buyer};
use waypost_sdk::buyer::PushPlatform;

waypost_e2e::on_both_engines!(
    offline_buyer_gets_one_push_per_burst_and_syncs_the_gap,
    order_milestones_are_pushed_and_synced,
    dead_tokens_are_removed,
    an_outage_still_delivers_every_push_once,
    only_the_order_party_without_a_live_subscription_is_pushed,
    vendor_notifications_are_pushed_and_synced,
);

struct Fakes {
    keys: PushKeys,
    certs: TestCerts,
    apns: FakeApns,
    fcm: FakeFcm,
}

impl Fakes {
    async fn start() -> Result<Self> {
        let keys = PushKeys::generate()?;
        let certs = TestCerts::generate()?;
        let apns = FakeApns::start(&keys, &certs, "com.example.buyer").await?;
        let fcm = FakeFcm::start(&keys).await?;
        Ok(Self {
            keys,
            certs,
            apns,
            fcm,
        })
    }

    fn options(&self, engine: EngineChoice) -> Result<ServerOptions> {
        let mut o = ServerOptions::new(engine);
        o.args.extend(self.apns.serve_args(&self.keys, &self.certs));
        o.args.extend(self.fcm.serve_args(&self.keys)?);
        o.args
            .extend(["--push-collapse", COLLAPSE, "--push-user-rate", "50"].map(String::from));
        Ok(o)
    }

    fn violations(&self) -> Vec<String> {
        let mut v = self.apns.handle.violations();
        v.extend(self.fcm.handle.violations());
        v
    }
}

/// An APNs token (hex) and an FCM token unique to this run.
fn tokens() -> (String, String) {
    let r: u64 = rand::random();
    (
        format!("{r:016x}{:048x}", 7),
        format!("fcm-{r:x}:APA91b_test"),
    )
}

async fn register(
    server: &Server,
    tok: &str,
    device_id: &str,
    platform: &str,
    push_token: &str,
) -> Result<Value> {
    let r = reqwest::Client::new()
        .post(server.http("/v1/devices"))
        .bearer_auth(tok)
        .json(&json!({"device_id": device_id, "platform": platform, "token": push_token, "locale": "de-DE"}))
        .send()
        .await?;
    ensure!(
        r.status() == StatusCode::OK,
        "register: {} {}",
        r.status(),
        r.text().await?
    );
    Ok(r.json().await?)
}

async fn post_chat(server: &Server, tok: &str, room: &str, n: usize) -> Result<Vec<u64>> {
    let mut seqs = Vec::new();
    for i in 0..n {
        let r: Value = reqwest::Client::new()
            .post(server.http(&format!("/v1/chats/{room}/messages")))
            .bearer_auth(tok)
            .json(&json!({"client_id": unique("c"), "body": format!("hello {i}")}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        seqs.push(r["seq"].as_u64().unwrap_or(0));
    }
    Ok(seqs)
}

async fn offline_buyer_gets_one_push_per_burst_and_syncs_the_gap(
    engine: EngineChoice,
) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let room = unique("room");
    let ch = format!("chat:{room}");
    let buyer = unique("buyer");
    let btok = token(&buyer, Role::Buyer, &[&ch]);
    let vtok = token(&unique("vendor"), Role::Vendor, &[&ch]);
    let (apns_token, fcm_token) = tokens();
    // The SDK registers the APNs token (as an iOS app would from
    // didRegisterForRemoteNotificationsWithDeviceToken); a second device
    // of the same user registers FCM over plain HTTP.
    let sdk = Buyer::start(fast_config(server.http(""), &buyer), btok.clone())?;
    let channels = sdk
        .client
        .register_push_token(PushPlatform::Apns, apns_token.clone())
        .await?;
    assert_eq!(channels, std::slice::from_ref(&ch));
    register(&server, &btok, "pixel", "fcm", &fcm_token).await?;

    // Connected: the socket delivers, no push.
    sdk.client.join_chat(room.clone())?;
    sdk.rec
        .until(T, "connected", |r| {
            r.count_states(|s| matches!(s, waypost_sdk::buyer::ConnectionState::Connected)) > 0
        })
        .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_chat(&server, &vtok, &room, 1).await?;
    sdk.rec
        .until(T, "message 1", |r| r.message_seqs(&room) == [1])
        .await?;
    tokio::time::sleep(SETTLE).await;
    assert!(
        fakes.apns.handle.accepted().is_empty(),
        "connected buyer was pushed"
    );
    assert!(
        fakes.fcm.handle.accepted().is_empty(),
        "connected buyer was pushed"
    );

    // Backgrounded: the socket closes; a burst of three becomes one push
    // per device saying how many and up to which seq.
    sdk.client.shutdown().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seqs = post_chat(&server, &vtok, &room, 3).await?;
    let apns = fakes.apns.handle.wait_accepted(1, T).await;
    let fcm = fakes.fcm.handle.wait_accepted(1, T).await;
    tokio::time::sleep(SETTLE).await;
    let apns_all = fakes.apns.handle.accepted();
    let fcm_all = fakes.fcm.handle.accepted();
    assert_eq!(apns_all.len(), 1, "one APNs push per burst: {apns_all:?}");
    assert_eq!(fcm_all.len(), 1, "one FCM push per burst: {fcm_all:?}");
    for p in [&apns[0], &fcm[0]] {
        assert_eq!(p.channel(), ch);
        assert_eq!(p.seq(), *seqs.last().unwrap_or(&0));
        assert_eq!(p.count(), 3);
    }
    assert_eq!(apns[0].token, apns_token);
    assert_eq!(fcm[0].token, fcm_token);
    assert_eq!(
        apns[0].body["aps"]["alert"]["loc-key"],
        "WAYPOST_CHAT_MESSAGE"
    );
    assert_eq!(apns[0].body["aps"]["alert"]["loc-args"], json!(["3"]));
    assert_eq!(
        fcm[0].body["message"]["android"]["notification"]["body_loc_key"],
        "WAYPOST_CHAT_MESSAGE"
    );
    let header = |p: &Accepted, k: &str| {
        p.headers
            .iter()
            .find(|(n, _)| n == k)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header(&apns[0], "apns-collapse-id"), Some(ch.clone()));

    // The woken app syncs exactly the gap: after what it had, up to the
    // pushed seq, from the APNs userInfo as the app receives it.
    let synced = sdk.client.handle_push(apns[0].body.to_string()).await?;
    let got: Vec<u64> = synced.messages.iter().filter_map(|m| m.seq).collect();
    assert_eq!(got, seqs, "exactly the missed messages");
    assert!(synced.complete);
    assert_eq!((synced.seq, synced.count), (apns[0].seq(), 3));
    // The same push again (or the FCM data map) finds nothing missing.
    let again = sdk.client.handle_push(apns[0].body.to_string()).await?;
    assert!(again.messages.is_empty());
    let fcm_data = fcm[0].body["message"]["data"].to_string();
    assert!(sdk.client.handle_push(fcm_data).await?.messages.is_empty());
    let timeline: Vec<u64> = sdk
        .client
        .messages(room.clone(), 10)?
        .iter()
        .filter_map(|m| m.seq)
        .collect();
    assert_eq!(timeline, [1, 2, 3, 4], "stored like live messages");

    // The sender gets no push for its own messages, and an unregistered
    // device none at all.
    let r = reqwest::Client::new()
        .delete(server.http("/v1/devices/pixel"))
        .bearer_auth(&btok)
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    post_chat(&server, &vtok, &room, 1).await?;
    fakes.apns.handle.wait_accepted(2, T).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(fakes.apns.handle.accepted().len(), 2);
    // Logout: the SDK unregisters, nothing more is pushed.
    sdk.client.unregister_push_token().await?;
    post_chat(&server, &vtok, &room, 1).await?;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        fakes.apns.handle.accepted().len(),
        2,
        "pushed after unregister"
    );
    assert_eq!(
        fakes.fcm.handle.accepted().len(),
        1,
        "unregistered device pushed"
    );
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}

async fn order_milestones_are_pushed_and_synced(engine: EngineChoice) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let order = unique("order");
    let och = format!("order:{order}");
    let buyer = unique("buyer");
    let btok = token(&buyer, Role::Buyer, &[&och]);
    let service = token("ops", Role::Service, &[]);
    let sdk = Buyer::start(fast_config(server.http(""), &buyer), btok.clone())?;
    let (_, fcm_token) = tokens();
    let channels = sdk
        .client
        .register_push_token(PushPlatform::Fcm, fcm_token.clone())
        .await?;
    assert_eq!(channels, std::slice::from_ref(&och));
    let events = [
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": [buyer]}),
        json!({"event_id": "e2", "status": "accepted"}),
        json!({"event_id": "e3", "status": "preparing"}),
    ];
    for ev in &events {
        reqwest::Client::new()
            .post(server.http(&format!("/v1/orders/{order}/events")))
            .bearer_auth(&service)
            .json(ev)
            .send()
            .await?
            .error_for_status()?;
    }
    let got = fakes.fcm.handle.wait_accepted(1, T).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(
        fakes.fcm.handle.accepted().len(),
        1,
        "one push for the burst"
    );
    assert_eq!(got[0].channel(), och);
    assert_eq!((got[0].seq(), got[0].count()), (3, 3));
    assert_eq!(got[0].data["kind"], "order");
    let synced = sdk
        .client
        .handle_push(got[0].body["message"]["data"].to_string())
        .await?;
    let statuses: Vec<Option<String>> = synced
        .order_entries
        .iter()
        .map(|e| e.status.clone())
        .collect();
    assert_eq!(
        statuses,
        [
            Some("placed".into()),
            Some("accepted".into()),
            Some("preparing".into())
        ]
    );
    // The next milestone: only it is fetched.
    reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(&service)
        .json(&json!({"event_id": "e4", "status": "ready"}))
        .send()
        .await?
        .error_for_status()?;
    let got = fakes.fcm.handle.wait_accepted(2, T).await;
    assert_eq!(got.len(), 2);
    let synced = sdk
        .client
        .handle_push(got[1].body["message"]["data"].to_string())
        .await?;
    let seqs: Vec<u64> = synced.order_entries.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [4]);
    assert_eq!(fakes.violations(), Vec::<String>::new());
    sdk.client.shutdown().await;
    Ok(())
}

async fn post_order_event(server: &Server, order: &str, ev: Value) -> Result<()> {
    reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(token("ops", Role::Service, &[]))
        .json(&ev)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

/// "Live" is per user: buyer A watching the order does not stop the push
/// to buyer B, a party of the same order whose app is in the background;
/// A gets none for what its socket delivered.
async fn only_the_order_party_without_a_live_subscription_is_pushed(
    engine: EngineChoice,
) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let order = unique("order");
    let och = format!("order:{order}");
    let (a, b) = (unique("buyer-a"), unique("buyer-b"));
    let atok = token(&a, Role::Buyer, &[&och]);
    let btok = token(&b, Role::Buyer, &[&och]);
    let (_, a_fcm) = tokens();
    let (_, b_fcm) = tokens();
    register(&server, &atok, "a-phone", "fcm", &a_fcm).await?;
    register(&server, &btok, "b-phone", "fcm", &b_fcm).await?;
    post_order_event(
        &server,
        &order,
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": [a, b]}),
    )
    .await?;
    // Nobody live yet: both are pushed.
    fakes.fcm.handle.wait_accepted(2, T).await;
    tokio::time::sleep(SETTLE).await;
    let first = fakes.fcm.handle.accepted();
    assert_eq!(first.len(), 2, "{first:?}");

    // A opens the app and watches the order; B stays in the background.
    let mut ws = WsClient::connect(&server.ws_url(&atok)).await?;
    ws.subscribe(&och, Some(1)).await?;
    for (id, status) in [("e2", "accepted"), ("e3", "preparing")] {
        post_order_event(&server, &order, json!({"event_id": id, "status": status})).await?;
    }
    for want in [2, 3] {
        let f = ws.next_of_type("order", T).await?;
        assert_eq!(f["seq"], want, "A's socket delivers: {f}");
    }
    fakes.fcm.handle.wait_accepted(3, T).await;
    tokio::time::sleep(SETTLE).await;
    let all = fakes.fcm.handle.accepted();
    let later: Vec<&Accepted> = all[2..].iter().collect();
    assert_eq!(later.len(), 1, "one push, for B only: {all:?}");
    assert_eq!(later[0].token, b_fcm, "B (not live) is pushed");
    assert_eq!((later[0].seq(), later[0].count()), (3, 2));
    assert_eq!(
        all.iter().filter(|p| p.token == a_fcm).count(),
        1,
        "A (live) was pushed for what its socket delivered"
    );

    // A closes the app: the next milestone reaches both.
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;
    post_order_event(
        &server,
        &order,
        json!({"event_id": "e4", "status": "ready"}),
    )
    .await?;
    fakes.fcm.handle.wait_accepted(5, T).await;
    tokio::time::sleep(SETTLE).await;
    let all = fakes.fcm.handle.accepted();
    assert_eq!(all.len(), 5, "{all:?}");
    let mut last: Vec<&str> = all[3..].iter().map(|p| p.token.as_str()).collect();
    last.sort();
    let mut want = [a_fcm.as_str(), b_fcm.as_str()];
    want.sort();
    assert_eq!(last, want);
    assert!(all[3..].iter().all(|p| p.seq() == 4 && p.count() == 1));
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}

/// A vendor's notifications reach its devices while no stream of its own
/// is open, and `handle_push` reads exactly the missed ones over
/// `GET /v1/vendors/{id}/notifications`.
async fn vendor_notifications_are_pushed_and_synced(engine: EngineChoice) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let vendor = unique("vendor");
    let vch = format!("vendor:{vendor}");
    let vtok = token(&vendor, Role::Vendor, &[]);
    let notify = |n: u32| {
        let server = &server;
        let vendor = &vendor;
        async move {
            for i in 0..n {
                reqwest::Client::new()
                    .post(server.http(&format!("/v1/vendors/{vendor}/notifications")))
                    .bearer_auth(token("ops", Role::Service, &[]))
                    .json(&json!({"event": "new-order", "data": {"i": i}}))
                    .send()
                    .await?
                    .error_for_status()?;
            }
            anyhow::Ok(())
        }
    };
    let sdk = Buyer::start(fast_config(server.http(""), &vendor), vtok.clone())?;
    let (_, fcm_token) = tokens();
    let channels = sdk
        .client
        .register_push_token(PushPlatform::Fcm, fcm_token.clone())
        .await?;
    assert_eq!(channels, std::slice::from_ref(&vch));

    // The vendor's dashboard stream is open: no push.
    let stream = reqwest::Client::new()
        .get(server.http(&format!("/v1/vendors/{vendor}/notifications/stream")))
        .bearer_auth(&vtok)
        .send()
        .await?
        .error_for_status()?;
    notify(2).await?;
    tokio::time::sleep(SETTLE).await;
    assert!(
        fakes.fcm.handle.accepted().is_empty(),
        "a vendor with an open stream was pushed"
    );
    drop(stream);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Closed: a burst of three is one push up to seq 5.
    notify(3).await?;
    let got = fakes.fcm.handle.wait_accepted(1, T).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(fakes.fcm.handle.accepted().len(), 1);
    assert_eq!(got[0].channel(), vch);
    assert_eq!((got[0].seq(), got[0].count()), (5, 3));
    assert_eq!(got[0].data["kind"], "notification");
    let data = got[0].body["message"]["data"].to_string();
    let synced = sdk.client.handle_push(data.clone()).await?;
    // The device had none yet: everything retained up to the pushed seq.
    let seqs: Vec<u64> = synced.notifications.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, [1, 2, 3, 4, 5]);
    assert!(synced.complete);
    assert!(synced.notifications.iter().all(|n| n.event == "new-order"));
    assert_eq!(synced.notifications[4].data_json, r#"{"i":2}"#);
    // The same push again finds nothing missing.
    assert!(sdk.client.handle_push(data).await?.notifications.is_empty());
    // The next one: exactly the gap.
    notify(2).await?;
    let got = fakes.fcm.handle.wait_accepted(2, T).await;
    let synced = sdk
        .client
        .handle_push(got[1].body["message"]["data"].to_string())
        .await?;
    let seqs: Vec<u64> = synced.notifications.iter().map(|n| n.seq).collect();
    assert_eq!(seqs, [6, 7]);

    // The history read: the stream's readers only, limits checked.
    let get = |tok: String, query: &str| {
        let url = server.http(&format!("/v1/vendors/{vendor}/notifications{query}"));
        async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(tok)
                .send()
                .await?;
            anyhow::Ok((r.status(), r.json::<Value>().await?))
        }
    };
    let (status, page) = get(vtok.clone(), "?after_seq=5&limit=1").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["more"], true);
    assert_eq!(page["notifications"][0]["seq"], 6);
    assert_eq!(page["notifications"][0]["id"], "6");
    let (status, page) = get(token("ops", Role::Service, &[]), "").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["notifications"].as_array().map(Vec::len), Some(7));
    assert_eq!(page["more"], false);
    let other = token(&unique("vendor"), Role::Vendor, &[]);
    assert_eq!(get(other, "").await?.0, StatusCode::FORBIDDEN);
    let buyer = token(&unique("buyer"), Role::Buyer, &[&vch]);
    assert_eq!(get(buyer, "").await?.0, StatusCode::FORBIDDEN);
    assert_eq!(
        get(vtok.clone(), "?limit=0").await?.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(fakes.violations(), Vec::<String>::new());
    sdk.client.shutdown().await;
    Ok(())
}

async fn dead_tokens_are_removed(engine: EngineChoice) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let room = unique("room");
    let ch = format!("chat:{room}");
    let buyer = unique("buyer");
    let btok = token(&buyer, Role::Buyer, &[&ch]);
    let vtok = token(&unique("vendor"), Role::Vendor, &[&ch]);
    let (apns_token, fcm_token) = tokens();
    register(&server, &btok, "iphone", "apns", &apns_token).await?;
    register(&server, &btok, "pixel", "fcm", &fcm_token).await?;
    fakes.apns.handle.kill_token(&apns_token);
    fakes.fcm.handle.kill_token(&fcm_token);
    post_chat(&server, &vtok, &room, 1).await?;
    let end = tokio::time::Instant::now() + T;
    while fakes.apns.handle.with_record(|r| r.dead_answers) < 1
        || fakes.fcm.handle.with_record(|r| r.dead_answers) < 1
    {
        ensure!(
            tokio::time::Instant::now() < end,
            "providers were not asked"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for device in ["iphone", "pixel"] {
        let r = reqwest::Client::new()
            .delete(server.http(&format!("/v1/devices/{device}")))
            .bearer_auth(&btok)
            .send()
            .await?;
        assert_eq!(
            r.status(),
            StatusCode::NOT_FOUND,
            "{device} was not removed"
        );
    }
    let metrics = reqwest::get(server.http("/metrics")).await?.text().await?;
    assert!(
        metrics.contains("waypost_push_removed_tokens_total{provider=\"apns\"} 1"),
        "{metrics}"
    );
    assert!(metrics.contains("waypost_push_removed_tokens_total{provider=\"fcm\"} 1"));
    // Nothing more goes to the removed devices.
    post_chat(&server, &vtok, &room, 1).await?;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(fakes.apns.handle.with_record(|r| r.dead_answers), 1);
    assert_eq!(fakes.fcm.handle.with_record(|r| r.dead_answers), 1);
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}

async fn an_outage_still_delivers_every_push_once(engine: EngineChoice) -> Result<()> {
    let fakes = Fakes::start().await?;
    let server = Server::start_with(fakes.options(engine)?).await?;
    let buyer = unique("buyer");
    let rooms: Vec<String> = (0..3).map(|_| unique("room")).collect();
    let chans: Vec<String> = rooms.iter().map(|r| format!("chat:{r}")).collect();
    let refs: Vec<&str> = chans.iter().map(String::as_str).collect();
    let btok = token(&buyer, Role::Buyer, &refs);
    let vtok = token(&unique("vendor"), Role::Vendor, &refs);
    let (apns_token, fcm_token) = tokens();
    register(&server, &btok, "iphone", "apns", &apns_token).await?;
    register(&server, &btok, "pixel", "fcm", &fcm_token).await?;
    // Four 503s with Retry-After: 1 on APNs, three without on FCM.
    fakes.apns.handle.outage(4, 503, Some(1));
    fakes.fcm.handle.outage(3, 503, None);
    for room in &rooms {
        post_chat(&server, &vtok, room, 2).await?;
    }
    let apns = fakes
        .apns
        .handle
        .wait_accepted(3, Duration::from_secs(30))
        .await;
    let fcm = fakes
        .fcm
        .handle
        .wait_accepted(3, Duration::from_secs(30))
        .await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(fakes.apns.handle.with_record(|r| r.outage_answers), 4);
    assert_eq!(fakes.fcm.handle.with_record(|r| r.outage_answers), 3);
    for (name, got) in [("apns", apns), ("fcm", fcm)] {
        let mut chs: Vec<String> = got.iter().map(Accepted::channel).collect();
        chs.sort();
        let mut want = chans.clone();
        want.sort();
        assert_eq!(chs, want, "{name}: every room's push exactly once");
        assert!(
            got.iter().all(|p| p.seq() == 2 && p.count() == 2),
            "{name}: {got:?}"
        );
    }
    assert_eq!(fakes.apns.handle.accepted().len(), 3);
    assert_eq!(fakes.fcm.handle.accepted().len(), 3);
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}

/// Two processes on one Redis: a device registered on one gets pushes for
/// events on the other, a buyer connected to either gets none, and nothing
/// is pushed twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_push_once_and_see_each_others_subscribers() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let fakes = Fakes::start().await?;
    let a = Server::start_with(fakes.options(EngineChoice::Redis(url.clone()))?).await?;
    let b = Server::start_with(fakes.options(EngineChoice::Redis(url))?).await?;
    let room = unique("room");
    let ch = format!("chat:{room}");
    let vendor = unique("vendor");
    let vch = format!("vendor:{vendor}");
    let buyer = unique("buyer");
    let btok = token(&buyer, Role::Buyer, &[&ch]);
    // A vendor's own notification stream is pushed to its devices.
    let vtok = token(&vendor, Role::Vendor, &[]);
    let stok = token(&unique("seller"), Role::Vendor, &[&ch]);
    let service = token("ops", Role::Service, &[]);
    let (apns_token, _) = tokens();
    register(&a, &btok, "iphone", "apns", &apns_token).await?;
    let (tablet_token, _) = tokens();
    let reg = register(&b, &vtok, "tablet", "apns", &tablet_token).await?;
    assert_eq!(reg["channels"], json!([vch]));

    // Connected to B, events posted on A: no push.
    let mut ws = WsClient::connect(&b.ws_url(&btok)).await?;
    ws.subscribe(&ch, None).await?;
    post_chat(&a, &stok, &room, 2).await?;
    ws.messages(&room, 2, T).await?;
    tokio::time::sleep(SETTLE).await;
    assert!(
        fakes.apns.handle.accepted().is_empty(),
        "buyer live on B was pushed"
    );
    drop(ws);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Offline: messages on both processes and vendor notifications.
    for round in 0..3 {
        post_chat(&a, &stok, &room, 1).await?;
        post_chat(&b, &stok, &room, 1).await?;
        for server in [&a, &b] {
            reqwest::Client::new()
                .post(server.http(&format!("/v1/vendors/{vendor}/notifications")))
                .bearer_auth(&service)
                .json(&json!({"event": "new-order", "data": {"round": round}}))
                .send()
                .await?
                .error_for_status()?;
        }
        tokio::time::sleep(SETTLE).await;
    }
    // Under load the last round's pushes may still be on their way: wait
    // (bounded) until both channels are covered, then a little longer for
    // anything pushed twice.
    let covered_now = |c: &str| {
        fakes
            .apns
            .handle
            .accepted()
            .iter()
            .filter(|p| p.channel() == c)
            .map(Accepted::count)
            .sum::<u64>()
    };
    let end = tokio::time::Instant::now() + T;
    while (covered_now(&ch) < 6 || covered_now(&vch) < 6) && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let got = fakes.apns.handle.accepted();
    let mut keys: Vec<(String, u64)> = got.iter().map(|p| (p.channel(), p.seq())).collect();
    let n = keys.len();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), n, "a push went out twice: {got:?}");
    // Every message and notification is covered by a push, each counted once.
    let covered = |c: &str| {
        got.iter()
            .filter(|p| p.channel() == c)
            .map(Accepted::count)
            .sum::<u64>()
    };
    assert_eq!(covered(&ch), 6, "{got:?}");
    let ma = reqwest::get(a.http("/metrics")).await?.text().await?;
    let mb = reqwest::get(b.http("/metrics")).await?.text().await?;
    let push_lines = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("waypost_push"))
            .map(str::to_owned)
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(
        covered(&vch),
        6,
        "A:\n{}\nB:\n{}",
        push_lines(&ma),
        push_lines(&mb)
    );
    let top = |c: &str| {
        got.iter()
            .filter(|p| p.channel() == c)
            .map(Accepted::seq)
            .max()
    };
    assert_eq!(top(&ch), Some(8));
    assert_eq!(top(&vch), Some(6));
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}

/// Two processes on one Redis: buyer A watching the order on process B
/// counts as live for events handled by process A (and only A does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_liveness_is_per_user() -> Result<()> {
    let Some((url, _guard)) = waypost_e2e::shared_redis().await else {
        return Ok(());
    };
    let fakes = Fakes::start().await?;
    let pa = Server::start_with(fakes.options(EngineChoice::Redis(url.clone()))?).await?;
    let pb = Server::start_with(fakes.options(EngineChoice::Redis(url))?).await?;
    let order = unique("order");
    let och = format!("order:{order}");
    let (a, b) = (unique("buyer-a"), unique("buyer-b"));
    let atok = token(&a, Role::Buyer, &[&och]);
    let btok = token(&b, Role::Buyer, &[&och]);
    let (_, a_fcm) = tokens();
    let (_, b_fcm) = tokens();
    register(&pa, &atok, "a-phone", "fcm", &a_fcm).await?;
    register(&pb, &btok, "b-phone", "fcm", &b_fcm).await?;
    post_order_event(
        &pa,
        &order,
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": [a, b]}),
    )
    .await?;
    fakes.fcm.handle.wait_accepted(2, T).await;
    tokio::time::sleep(SETTLE).await;
    assert_eq!(fakes.fcm.handle.accepted().len(), 2);

    let mut ws = WsClient::connect(&pb.ws_url(&atok)).await?;
    ws.subscribe(&och, Some(1)).await?;
    post_order_event(&pa, &order, json!({"event_id": "e2", "status": "accepted"})).await?;
    post_order_event(
        &pb,
        &order,
        json!({"event_id": "e3", "status": "preparing"}),
    )
    .await?;
    for want in [2, 3] {
        let f = ws.next_of_type("order", T).await?;
        assert_eq!(f["seq"], want);
    }
    // B's pushes (one per process that handled an event): wait for them,
    // then a little longer for anything A should not get.
    let covered = || {
        fakes.fcm.handle.accepted()[2..]
            .iter()
            .filter(|p| p.token == b_fcm)
            .map(Accepted::count)
            .sum::<u64>()
    };
    let end = tokio::time::Instant::now() + T;
    while covered() < 2 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(SETTLE).await;
    let all = fakes.fcm.handle.accepted();
    let later = &all[2..];
    assert!(
        later.iter().all(|p| p.token == b_fcm),
        "A (live on process B) was pushed: {all:?}"
    );
    // B learns of both milestones, each counted once across processes.
    assert_eq!(later.iter().map(Accepted::count).sum::<u64>(), 2, "{all:?}");
    assert_eq!(later.iter().map(Accepted::seq).max(), Some(3));
    drop(ws);
    assert_eq!(fakes.violations(), Vec::<String>::new());
    Ok(())
}
