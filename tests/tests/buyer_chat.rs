//! End to end: buyer–vendor chat through the buyer SDK against the real
//! `waypost` binary (memory engine and Redis). Messages written offline wait
//! in the SQLite outbox and go out in order when the network is back; a
//! participant that missed more than the server replays at subscribe
//! (`recovered: false`) fills its timeline from HTTP history; everyone ends
//! with every message exactly once, in seq order, in the listener and in
//! the local store.

mod buyer_support;

use std::time::Duration;

use anyhow::{ensure, Result};
use buyer_support::Participant;
use serde_json::json;
use waypost_e2e::{free_port, token, unique, EngineChoice, Server, ServerOptions};
use waypost_protocol::Role;
use waypost_sdk::buyer::{ConnectionState, MessageStatus};

const T: Duration = Duration::from_secs(30);

use waypost_e2e::on_both_engines;

on_both_engines!(offline_outbox_and_history_recovery);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_restart_starts_rooms_over_and_clients_follow() -> Result<()> {
    room_started_over(EngineChoice::Memory).await
}

async fn offline_outbox_and_history_recovery(engine: EngineChoice) -> Result<()> {
    let server = Server::start_with(
        ServerOptions::new(engine)
            .arg("--ws-messages-per-s")
            .arg("5000"),
    )
    .await?;
    let base = server.http("");
    let room = unique("order");
    let dir = std::env::temp_dir().join(unique("buyer-chat"));
    std::fs::create_dir_all(&dir)?;
    let b1_db = dir.join("b1.db").to_string_lossy().into_owned();
    let b1 = Participant::start(&base, "buyer-1", Role::Buyer, &room, &[], Some(b1_db))?;
    let b2 = Participant::start(&base, "buyer-2", Role::Buyer, &room, &[], None)?;
    let v = Participant::start(&base, "vendor-1", Role::Vendor, &room, &[], None)?;
    for p in [&b1, &b2, &v] {
        p.rec
            .until(T, "connected", |r| {
                r.states
                    .lock()
                    .unwrap()
                    .contains(&ConnectionState::Connected)
            })
            .await?;
    }

    // buyer-1 writes while offline: kept as pending, rendered from the store.
    b1.set_online(false).await?;
    for i in 1..=3 {
        b1.client.send_message(room.clone(), format!("b1-{i}"))?;
    }
    let pending = b1.client.messages(room.clone(), 100)?;
    ensure!(
        pending
            .iter()
            .map(|m| (m.body.as_str(), m.status))
            .collect::<Vec<_>>()
            == [
                ("b1-1", MessageStatus::Pending),
                ("b1-2", MessageStatus::Pending),
                ("b1-3", MessageStatus::Pending)
            ],
        "offline messages rendered as pending: {pending:?}"
    );
    v.client.send_message(room.clone(), "v-1".into())?;
    v.client.send_message(room.clone(), "v-2".into())?;
    b2.client.send_message(room.clone(), "b2-1".into())?;
    v.has(&room, 3).await?;
    b2.has(&room, 3).await?;

    b1.set_online(true).await?;
    for p in [&b1, &b2, &v] {
        p.has(&room, 6).await?;
    }
    for p in [&b1, &b2, &v] {
        p.check_timeline(&room, 6)?;
    }
    let mine: Vec<(String, u64)> = b1
        .client
        .messages(room.clone(), 100)?
        .into_iter()
        .filter(|m| m.sender == "buyer-1")
        .map(|m| (m.body, m.seq.unwrap_or(0)))
        .collect();
    ensure!(
        mine.iter().map(|m| m.0.as_str()).collect::<Vec<_>>() == ["b1-1", "b1-2", "b1-3"]
            && mine.windows(2).all(|w| w[0].1 < w[1].1),
        "sent in the order written: {mine:?}"
    );
    let sent = b1
        .rec
        .outgoing
        .lock()
        .unwrap()
        .iter()
        .filter(|m| m.status == MessageStatus::Sent)
        .count();
    ensure!(sent == 3, "each own message reported sent once ({sent})");

    // buyer-2 misses more than the server replays at subscribe (500): it
    // is told `recovered: false` and reads the rest over HTTP.
    b2.set_online(false).await?;
    let http = reqwest::Client::new();
    let vtok = token("vendor-1", Role::Vendor, &[&format!("chat:{room}")]);
    for i in 0..600 {
        let resp = http
            .post(format!("{base}/v1/chats/{room}/messages"))
            .bearer_auth(&vtok)
            .json(&json!({"client_id": format!("bulk-{i}"), "body": format!("bulk {i}")}))
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "bulk post {i}: {}",
            resp.status()
        );
    }
    b2.set_online(true).await?;
    for p in [&b1, &b2, &v] {
        p.has(&room, 606).await?;
    }
    for p in [&b1, &b2, &v] {
        p.check_timeline(&room, 606)?;
    }

    // The store survives a restart of the app: history renders offline.
    b1.client.shutdown().await;
    drop(b1);
    let again = Participant::start(
        "http://127.0.0.1:9",
        "buyer-1",
        Role::Buyer,
        &room,
        &[],
        Some(dir.join("b1.db").to_string_lossy().into_owned()),
    )?;
    let history = again.client.messages(room.clone(), 10_000)?;
    ensure!(history.len() == 606, "offline history: {}", history.len());
    again.client.shutdown().await;
    for p in [&b2, &v] {
        p.client.shutdown().await;
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The memory engine keeps chat history in the process: after a restart
/// every room starts over at seq 1. Clients notice (`high_seq` below what
/// they hold), reset their position and show the new messages instead of
/// dropping them as duplicates.
async fn room_started_over(engine: EngineChoice) -> Result<()> {
    let mut options = ServerOptions::new(engine);
    options.listen = Some(format!("127.0.0.1:{}", free_port()?).parse()?);
    let mut server = Server::start_with(options.clone()).await?;
    let base = server.http("");
    let room = unique("order");
    let b = Participant::start(&base, "buyer-1", Role::Buyer, &room, &[], None)?;
    let v = Participant::start(&base, "vendor-1", Role::Vendor, &room, &[], None)?;
    for i in 1..=3 {
        v.client.send_message(room.clone(), format!("before-{i}"))?;
    }
    b.has(&room, 3).await?;
    v.has(&room, 3).await?;

    server.kill().await?;
    let _server = Server::start_with(options).await?;
    for p in [&b, &v] {
        p.rec
            .until(Duration::from_secs(30), "reconnected", |r| {
                r.count_states(|s| *s == ConnectionState::Connected) >= 2
            })
            .await?;
    }
    v.client.send_message(room.clone(), "after-1".into())?;
    v.client.send_message(room.clone(), "after-2".into())?;
    for p in [&b, &v] {
        p.has(&room, 5).await?;
        let heard: Vec<(u64, String)> = p
            .rec
            .messages
            .lock()
            .unwrap()
            .iter()
            .map(|m| (m.seq.unwrap_or(0), m.body.clone()))
            .collect();
        ensure!(
            heard[3..] == [(1, "after-1".to_owned()), (2, "after-2".to_owned())],
            "{} heard {heard:?}",
            p.user
        );
    }
    for p in [&b, &v] {
        p.client.shutdown().await;
    }
    Ok(())
}
