//! Authorization on live connections (issue 20): tokens that expire while
//! connected (WebSocket, SSE, long poll), in-band refresh (same socket, no
//! frame lost, narrower token, another user refused), revocation and
//! disconnect reaching a connection on a second process.

mod buyer_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use buyer_support::{fast_config, Buyer};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, now_s, shared_redis, token, token_issued, token_with_exp, unique, Closed, EngineChoice,
    MintingTokens, Server, WsClient,
};
use waypost_protocol::Role;
use waypost_sdk::buyer::ConnectionState;

const T: Duration = Duration::from_secs(10);

async fn post_fix(server: &Server, driver: &str, seq: u64) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/drivers/{driver}/locations")))
        .bearer_auth(token(driver, Role::Driver, &[]))
        .json(&json!({"device_id": "live", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
        .send()
        .await?;
    if r.status() != StatusCode::OK {
        bail!("post seq {seq}: {}", r.status());
    }
    Ok(())
}

/// Opens a stream (SSE) with `tok`, checks it is accepted and reads it in
/// the background; the task answers when the stream ended (Unix ms).
async fn read_to_end(url: String, tok: &str) -> Result<tokio::task::JoinHandle<i64>> {
    let mut stream = reqwest::Client::new()
        .get(url)
        .bearer_auth(tok)
        .send()
        .await?;
    assert_eq!(stream.status(), StatusCode::OK);
    Ok(tokio::spawn(async move {
        while let Ok(Some(_)) = stream.chunk().await {}
        now_ms()
    }))
}

/// Reads frames until `ty`, collecting the `fix.seq` of location frames.
/// Subscribes to `channel` and returns the `token_expiring` frame when it
/// came before `subscribed`: a token with less than 30 s left is warned at
/// once (on the expiry wheel's next 200 ms step), which can be before the
/// subscription is acknowledged, and [`WsClient::subscribe`] skips it.
async fn subscribe_seeing_warning(ws: &mut WsClient, channel: &str) -> Result<Option<Value>> {
    ws.send_json(&json!({"type": "subscribe", "channel": channel}))
        .await?;
    let mut warning = None;
    loop {
        let v = ws.next_json(T).await.context("waiting for subscribed")?;
        match v["type"].as_str() {
            Some("subscribed") if v["channel"] == channel => return Ok(warning),
            Some("token_expiring") => warning = Some(v),
            Some("error") => bail!("subscribe {channel} refused: {v}"),
            _ => {}
        }
    }
}

async fn until_type(ws: &mut WsClient, ty: &str, seqs: &mut Vec<u64>) -> Result<Value> {
    loop {
        let v = ws
            .next_json(T)
            .await
            .with_context(|| format!("waiting for {ty}"))?;
        if v["type"] == "location" {
            if let Some(s) = v["fix"]["seq"].as_u64() {
                seqs.push(s);
            }
        }
        if v["type"] == ty {
            return Ok(v);
        }
        if v["type"] == "error" {
            bail!("error frame while waiting for {ty}: {v}");
        }
    }
}

waypost_e2e::on_both_engines!(
    expired_while_connected,
    warned_before_4001_when_both_fall_due_at_once,
    refreshed_in_band_keeps_every_frame,
    refresh_narrower_and_for_another_user,
    refresh_with_a_bad_token_keeps_the_old_one,
    sdk_refreshes_in_band_on_one_connection,
    sdk_refresh_refused_reconnects_at_exp
);

/// The wheel race: a token already at its `exp` when it connects (within
/// the 5 s leeway) has its warning and its expiry due in one wheel round,
/// and the kill drops the queued warning. The close still comes after
/// `token_expiring`, then `error token_expired`, then 4001.
async fn warned_before_4001_when_both_fall_due_at_once(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    for _ in 0..3 {
        let exp = now_s().saturating_sub(1);
        let tok = token_with_exp(&unique("b-race"), Role::Buyer, &[], exp);
        let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
        let first = ws.next_json(T).await?;
        assert_eq!(first, json!({"type": "token_expiring", "exp": exp}));
        let err = ws.next_json(T).await?;
        assert_eq!(err["type"], "error", "{err}");
        assert_eq!(err["code"], "token_expired", "{err}");
        assert_eq!(
            ws.closed(T).await?,
            Closed::Code(4001, "token expired".into())
        );
    }
    Ok(())
}

/// Refreshes the server must refuse, each with an `error` frame while the
/// connection keeps its token and its subscription: an expired token
/// (beyond the leeway), one that is not a JWT, another role of the same
/// user, and a revoked one (by `jti`).
async fn refresh_with_a_bad_token_keeps_the_old_one(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-bad");
    let ch = format!("tracking:{d}");
    let user = unique("b-bad");
    let tok = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    ws.subscribe(&ch, None).await?;
    let jti = unique("jti");
    let revoked = token_issued(&user, Role::Buyer, &[&ch], 600, &jti);
    let r = reqwest::Client::new()
        .post(server.http("/v1/admin/revocations"))
        .bearer_auth(token("ops", Role::Service, &[]))
        .json(&json!({"jti": jti}))
        .send()
        .await?;
    assert_eq!(r.status(), StatusCode::OK);
    let rows = [
        (
            "expired",
            token_with_exp(&user, Role::Buyer, &[&ch], now_s() - 60),
            "unauthorized",
        ),
        ("not a JWT", "not-a-jwt".to_owned(), "unauthorized"),
        (
            "another role",
            token_issued(&user, Role::Vendor, &[&ch], 600, &unique("j")),
            "forbidden",
        ),
        ("revoked jti", revoked, "unauthorized"),
    ];
    for (i, (name, bad, code)) in rows.into_iter().enumerate() {
        ws.send_json(&json!({"type": "refresh", "token": bad}))
            .await?;
        let err = ws.next_of_type("error", T).await?;
        assert_eq!(err["code"], code, "{name}: {err}");
        // Still subscribed, on the old token.
        post_fix(&server, &d, i as u64 + 1).await?;
        let v = ws.next_of_type("location", T).await?;
        assert_eq!(v["fix"]["seq"], i as u64 + 1, "{name}: {v}");
    }
    Ok(())
}

/// The buyer SDK with a provider minting 6 s tokens: it refreshes in band
/// (at half the lifetime) at least twice, on the one connection it opened
/// (one `Connected`, one proxy-less socket: no reconnect), and every fix
/// posted meanwhile arrives (the listener gets each newer fix; no gap).
async fn sdk_refreshes_in_band_on_one_connection(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-sdk");
    let ch = format!("tracking:{d}");
    let user = unique("b-sdk");
    let minting = Arc::new(MintingTokens::new(&user, Role::Buyer, &[&ch], 6));
    let buyer = Buyer::start_with_tokens(fast_config(server.http(""), &user), minting.clone())?;
    buyer.client.track_driver(d.clone())?;
    buyer
        .rec
        .until(T, "connected", |r| {
            r.count_states(|s| *s == ConnectionState::Connected) == 1
        })
        .await?;
    // 14 s of fixes: past two refreshes (at ~3 s and ~6 s) and two
    // expiries of the tokens they replaced.
    let mut seq = 0;
    let started = now_ms();
    while now_ms() - started < 14_000 {
        seq += 1;
        post_fix(&server, &d, seq).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    buyer
        .rec
        .until(T, "the last fix", |r| r.last_location_seq() == Some(seq))
        .await?;
    let seqs: Vec<u64> = buyer
        .rec
        .locations
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .iter()
        .map(|l| l.seq)
        .collect();
    assert_eq!(seqs, (1..=seq).collect::<Vec<_>>(), "a fix was lost");
    let minted = minting.minted();
    assert!(
        minted >= 3,
        "only {minted} tokens: fewer than two refreshes"
    );
    let states = buyer
        .rec
        .states
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(
        states,
        [
            ConnectionState::Connecting { attempt: 1 },
            ConnectionState::Connected
        ],
        "reconnected instead of refreshing in band"
    );
    assert!(buyer
        .rec
        .errors
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .is_empty());
    buyer.client.shutdown().await;
    Ok(())
}

/// A provider whose refresh is a token of another user: the server refuses
/// it in band, the app hears `on_error("token", "forbidden", ..)`, the
/// connection keeps running until the first token's `exp`, then closes
/// with 4001 and the SDK reconnects with a fresh token from the provider.
async fn sdk_refresh_refused_reconnects_at_exp(engine: EngineChoice) -> Result<()> {
    struct WrongUser {
        user: String,
        channels: Vec<String>,
        calls: std::sync::atomic::AtomicU64,
    }
    #[async_trait::async_trait]
    impl waypost_sdk::TokenProvider for WrongUser {
        async fn token(&self) -> Option<String> {
            let n = self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ch: Vec<&str> = self.channels.iter().map(String::as_str).collect();
            Some(token_issued(
                &self.user,
                Role::Buyer,
                &ch,
                6,
                &format!("j{n}"),
            ))
        }
        async fn refresh_token(&self) -> Option<String> {
            let n = self
                .calls
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let ch: Vec<&str> = self.channels.iter().map(String::as_str).collect();
            let user = if n == 1 { "someone-else" } else { &self.user };
            Some(token_issued(user, Role::Buyer, &ch, 6, &format!("j{n}")))
        }
    }
    let server = Server::start(engine).await?;
    let d = unique("d-ref");
    let ch = format!("tracking:{d}");
    let user = unique("b-wrong");
    let provider = Arc::new(WrongUser {
        user: user.clone(),
        channels: vec![ch.clone()],
        calls: Default::default(),
    });
    let buyer = Buyer::start_with_tokens(fast_config(server.http(""), &user), provider)?;
    buyer.client.track_driver(d.clone())?;
    buyer
        .rec
        .until(T, "the refused refresh", |r| {
            r.errors
                .lock()
                .is_ok_and(|e| e.iter().any(|(r, c, _)| r == "token" && c == "forbidden"))
        })
        .await?;
    buyer
        .rec
        .until(T, "a second connection", |r| {
            r.count_states(|s| *s == ConnectionState::Connected) == 2
        })
        .await?;
    let states = buyer
        .rec
        .states
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert!(
        !states
            .iter()
            .any(|s| matches!(s, ConnectionState::Closed { .. })),
        "{states:?}"
    );
    post_fix(&server, &d, 1).await?;
    buyer
        .rec
        .until(T, "a fix on the new connection", |r| {
            r.last_location_seq() == Some(1)
        })
        .await?;
    buyer.client.shutdown().await;
    Ok(())
}

/// WebSocket: `token_expiring` at once (less than 30 s left), then at `exp`
/// `error token_expired` and close 4001. SSE, the dashboard stream and the
/// long poll end at `exp`.
async fn expired_while_connected(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-exp");
    let ch = format!("tracking:{d}");
    post_fix(&server, &d, 1).await?;
    let ttl = 3;
    let tok = token_issued(&unique("b-exp"), Role::Buyer, &[&ch], ttl, &unique("j"));
    let exp = now_s() + ttl;

    let mut ws = WsClient::connect(&server.ws_url(&tok)).await?;
    let early_warning = subscribe_seeing_warning(&mut ws, &ch).await?;
    let sse = read_to_end(
        server.http(&format!("/v1/drivers/{d}/location/stream")),
        &tok,
    )
    .await?;
    let ops = token_issued("ops", Role::Service, &[], ttl, &unique("j"));
    let dashboard = read_to_end(server.http("/v1/dashboard/stream"), &ops).await?;
    let poll_tok = tok.clone();
    let poll_url = server.http(&format!(
        "/v1/drivers/{d}/location/poll?after_seq=1&timeout_s=30"
    ));
    let poll = tokio::spawn(async move {
        let r = reqwest::Client::new()
            .get(poll_url)
            .bearer_auth(poll_tok)
            .send()
            .await;
        (r.map(|r| r.status()), now_ms())
    });

    let warn = match early_warning {
        Some(w) => w,
        None => ws.next_of_type("token_expiring", T).await?,
    };
    assert_eq!(warn, json!({"type": "token_expiring", "exp": exp}));
    let err = ws.next_of_type("error", T).await?;
    assert_eq!(err["code"], "token_expired", "{err}");
    let closed_at = now_ms();
    assert_eq!(
        ws.closed(T).await?,
        Closed::Code(4001, "token expired".into())
    );
    let exp_ms = (exp * 1000) as i64;
    assert!(
        closed_at >= exp_ms - 100 && closed_at <= exp_ms + 1200,
        "closed {} ms from exp",
        closed_at - exp_ms
    );
    let sse_end = tokio::time::timeout(T, sse).await??;
    assert!(
        sse_end <= exp_ms + 1200,
        "SSE ended {} ms after exp",
        sse_end - exp_ms
    );
    let dashboard_end = tokio::time::timeout(T, dashboard).await??;
    assert!(
        dashboard_end <= exp_ms + 1200,
        "dashboard stream ended {} ms after exp",
        dashboard_end - exp_ms
    );
    let (status, poll_end) = tokio::time::timeout(T, poll).await??;
    assert_eq!(status?, StatusCode::NO_CONTENT);
    assert!(
        poll_end <= exp_ms + 1200,
        "poll ended {} ms after exp",
        poll_end - exp_ms
    );
    Ok(())
}

/// A refresh on the same socket: `refreshed` with the new exp, the socket
/// outlives the old exp, and every fix posted across the refresh arrives.
async fn refreshed_in_band_keeps_every_frame(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let d = unique("d-ref");
    let ch = format!("tracking:{d}");
    let user = unique("b-ref");
    // Short enough that the warning comes at once (< 30 s left), long enough
    // that the refresh lands before `exp` even on a heavily loaded host (8 s
    // flaked twice under parallel builds and binding tests).
    let first_exp = now_s() + 20;
    let first = token_issued(&user, Role::Buyer, &[&ch], 20, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&first)).await?;
    let early_warning = subscribe_seeing_warning(&mut ws, &ch).await?;
    let mut seqs = Vec::new();
    let warn = match early_warning {
        Some(w) => w,
        None => until_type(&mut ws, "token_expiring", &mut seqs).await?,
    };
    assert!(warn["exp"].as_u64().is_some());

    // Fixes flow while the client refreshes.
    let poster = {
        let base = server.http("");
        let d = d.clone();
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for seq in 1..=40u64 {
                let r = client
                    .post(format!("{base}/v1/drivers/{d}/locations"))
                    .bearer_auth(token(&d, Role::Driver, &[]))
                    .json(&json!({"device_id": "live", "fixes": [{"seq": seq, "ts": now_ms(), "lat": 52.5, "lon": 13.4}]}))
                    .send()
                    .await?;
                if r.status() != StatusCode::OK {
                    bail!("post {seq}: {}", r.status());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    ws.send_json(&json!({"type": "refresh", "token": second}))
        .await?;
    let refreshed = until_type(&mut ws, "refreshed", &mut seqs).await?;
    let new_exp = refreshed["exp"].as_u64().context("exp")?;
    assert!(new_exp >= now_s() + 500, "{refreshed}");
    poster.await??;
    // Past the first token's exp, still open and receiving everything.
    while seqs.last() != Some(&40) {
        let v = ws.next_json(T).await.context("frames after the refresh")?;
        assert_ne!(v["type"], "error", "{v}");
        if v["type"] == "location" {
            seqs.push(v["fix"]["seq"].as_u64().context("seq")?);
        }
    }
    assert_eq!(
        seqs,
        (1..=40).collect::<Vec<_>>(),
        "a frame was lost or repeated"
    );
    // Outlive the first token's exp (plus a wheel round) on the same socket.
    while now_s() <= first_exp + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ws.send_json(&json!({"type": "ping", "id": 7})).await?;
    ws.next_of_type("pong", T).await?;
    Ok(())
}

/// A narrower token ends the subscriptions it no longer allows; a refresh
/// for another user is refused and the connection still ends at the first
/// token's exp.
async fn refresh_narrower_and_for_another_user(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let (d1, d2) = (unique("d-n1"), unique("d-n2"));
    let (c1, c2) = (format!("tracking:{d1}"), format!("tracking:{d2}"));
    let user = unique("b-narrow");
    let wide = token_issued(&user, Role::Buyer, &[&c1, &c2], 600, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&wide)).await?;
    ws.subscribe(&c1, None).await?;
    ws.subscribe(&c2, None).await?;
    let narrow = token_issued(&user, Role::Buyer, &[&c1], 600, &unique("j"));
    ws.send_json(&json!({"type": "refresh", "token": narrow}))
        .await?;
    let mut seqs = Vec::new();
    until_type(&mut ws, "refreshed", &mut seqs).await?;
    let gone = until_type(&mut ws, "unsubscribed", &mut seqs).await?;
    assert_eq!(
        gone,
        json!({"type": "unsubscribed", "channel": c2, "reason": "forbidden"})
    );
    post_fix(&server, &d2, 1).await?;
    post_fix(&server, &d1, 1).await?;
    let v = ws.next_of_type("location", T).await?;
    assert_eq!(v["driver_id"], d1.as_str(), "only the allowed channel: {v}");

    // Another user's token is refused; the socket keeps the old token.
    // 6 s: the refusal must come back before `exp` even on a loaded host.
    let short = token_issued(&user, Role::Buyer, &[&c1], 6, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&short)).await?;
    ws.subscribe(&c1, None).await?;
    let other = token_issued(&unique("b-other"), Role::Buyer, &[&c1], 600, &unique("j"));
    ws.send_json(&json!({"type": "refresh", "token": other}))
        .await?;
    let err = ws.next_of_type("error", T).await?;
    assert_eq!(err["code"], "forbidden", "{err}");
    let err = ws.next_of_type("error", T).await?;
    assert_eq!(err["code"], "token_expired", "{err}");
    assert_eq!(
        ws.closed(T).await?,
        Closed::Code(4001, "token expired".into())
    );
    Ok(())
}

/// Two processes on Redis: a user revoked on a closes its WebSocket on b
/// with 4003 and ends its SSE stream there within a second; a jti revoked on
/// b closes that token's socket on a; disconnects with and without
/// reconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_and_disconnected_on_a_second_process() -> Result<()> {
    let Some((url, _guard)) = shared_redis().await else {
        return Ok(());
    };
    let a = Server::start(EngineChoice::Redis(url.clone())).await?;
    let b = Server::start(EngineChoice::Redis(url)).await?;
    let d = unique("d-rev");
    let ch = format!("tracking:{d}");
    post_fix(&a, &d, 1).await?;
    let service = token("ops", Role::Service, &[]);
    let admin = |server: &Server, path: &str, body: Value| {
        reqwest::Client::new()
            .post(server.http(path))
            .bearer_auth(&service)
            .json(&body)
            .send()
    };

    // User revocation.
    let user = unique("b-rev");
    let tok = token_issued(&user, Role::Buyer, &[&ch], 600, &unique("j"));
    let mut ws = WsClient::connect(&b.ws_url(&tok)).await?;
    ws.subscribe(&ch, None).await?;
    let sse = read_to_end(b.http(&format!("/v1/drivers/{d}/location/stream")), &tok).await?;
    let poll = {
        let (url, tok) = (
            b.http(&format!(
                "/v1/drivers/{d}/location/poll?after_seq=1&timeout_s=30"
            )),
            tok.clone(),
        );
        tokio::spawn(async move {
            let r = reqwest::Client::new()
                .get(url)
                .bearer_auth(tok)
                .send()
                .await;
            (r.map(|r| r.status()), now_ms())
        })
    };
    // The poll is waiting on b before the revocation.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t0 = now_ms();
    let r = admin(&a, "/v1/admin/revocations", json!({"user": user})).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ws.closed(T).await?, Closed::Code(4003, "revoked".into()));
    let took = now_ms() - t0;
    assert!(took < 1000, "WebSocket on b closed after {took} ms");
    let ended = tokio::time::timeout(T, sse).await?? - t0;
    assert!(ended < 1000, "SSE on b ended after {ended} ms");
    let (status, poll_end) = tokio::time::timeout(T, poll).await??;
    assert_eq!(status?, StatusCode::NO_CONTENT);
    let ended = poll_end - t0;
    assert!(ended < 1000, "long poll on b ended after {ended} ms");

    // jti revocation: only that token's socket.
    let other = unique("b-rev2");
    let jti = unique("jti");
    let revoked = token_issued(&other, Role::Buyer, &[&ch], 600, &jti);
    let kept = token_issued(&other, Role::Buyer, &[&ch], 600, &unique("j"));
    let mut ws_revoked = WsClient::connect(&a.ws_url(&revoked)).await?;
    ws_revoked.subscribe(&ch, None).await?;
    let mut ws_kept = WsClient::connect(&a.ws_url(&kept)).await?;
    ws_kept.subscribe(&ch, None).await?;
    let r = admin(&b, "/v1/admin/revocations", json!({"jti": jti})).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        ws_revoked.closed(T).await?,
        Closed::Code(4003, "revoked".into())
    );
    ws_kept.send_json(&json!({"type": "ping", "id": 1})).await?;
    ws_kept.next_of_type("pong", T).await?;

    // Disconnect: 4103 with reconnect, 4003 without; the token stays valid.
    let r = admin(
        &b,
        "/v1/admin/disconnect",
        json!({"user": other, "reconnect": true}),
    )
    .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(matches!(ws_kept.closed(T).await?, Closed::Code(4103, _)));
    let mut again = WsClient::connect(&a.ws_url(&kept)).await?;
    again.subscribe(&ch, None).await?;
    let r = admin(
        &b,
        "/v1/admin/disconnect",
        json!({"user": other, "reconnect": false}),
    )
    .await?;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(matches!(again.closed(T).await?, Closed::Code(4003, _)));
    Ok(())
}
