//! Authorization on live connections (issue 20): tokens that expire while
//! connected (WebSocket, SSE, long poll), in-band refresh (same socket, no
//! frame lost, narrower token, another user refused), revocation and
//! disconnect reaching a connection on a second process.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::StatusCode;
use serde_json::{json, Value};
use waypost_e2e::{
    now_ms, now_s, shared_redis, token, token_issued, unique, Closed, EngineChoice, Server,
    WsClient,
};
use waypost_protocol::Role;

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
    }
}

waypost_e2e::on_both_engines!(
    expired_while_connected,
    refreshed_in_band_keeps_every_frame,
    refresh_narrower_and_for_another_user
);

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
    ws.subscribe(&ch, None).await?;
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

    let warn = ws.next_of_type("token_expiring", T).await?;
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
    // that a slow start on a loaded host still sees it before `exp` (with 3 s
    // the 4001 close could come first: both were due in one wheel round).
    let first_exp = now_s() + 8;
    let first = token_issued(&user, Role::Buyer, &[&ch], 8, &unique("j"));
    let mut ws = WsClient::connect(&server.ws_url(&first)).await?;
    ws.subscribe(&ch, None).await?;
    let mut seqs = Vec::new();
    let warn = until_type(&mut ws, "token_expiring", &mut seqs).await?;
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
    let t0 = now_ms();
    let r = admin(&a, "/v1/admin/revocations", json!({"user": user})).await?;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(ws.closed(T).await?, Closed::Code(4003, "revoked".into()));
    let took = now_ms() - t0;
    assert!(took < 1000, "WebSocket on b closed after {took} ms");
    let ended = tokio::time::timeout(T, sse).await?? - t0;
    assert!(ended < 1000, "SSE on b ended after {ended} ms");

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
