//! End to end: the buyer SDK's `track_order` against the real `waypost`
//! binary, on the memory engine and on real Redis. A service moves an order
//! placed → accepted → picked_up → delivered while its driver posts fixes;
//! the buyer, behind a fault proxy that resets its connection in the
//! middle, gets every timeline entry once and in seq order, the driver's
//! position while the order is active and none after delivery.

mod buyer_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use buyer_support::{fast_config, Buyer, MovingDriver};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::sync::Notify;
use waypost_e2e::on_both_engines;
use waypost_e2e::proxy::{Fault, FaultProxy};
use waypost_e2e::{token, unique, EngineChoice, Server};
use waypost_protocol::Role;
use waypost_sdk::buyer::{
    ConnectionState, LocationUpdate, OrderEntry, OrderEntryKind, OrderListener,
};

const T: Duration = Duration::from_secs(20);

on_both_engines!(order_followed_across_a_reset_connection);

#[derive(Debug, Clone)]
enum Heard {
    Entry(OrderEntry),
    Location(u64),
}

/// Everything one order's listener heard, in order.
#[derive(Default)]
struct OrderRec {
    heard: Mutex<Vec<Heard>>,
    changed: Notify,
}

impl OrderRec {
    async fn until(&self, what: &str, cond: impl Fn(&[Heard]) -> bool) -> Result<()> {
        let deadline = tokio::time::Instant::now() + T;
        loop {
            let notified = self.changed.notified();
            if cond(&self.heard.lock().unwrap()) {
                return Ok(());
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                bail!(
                    "timed out waiting for {what}: {:?}",
                    self.heard.lock().unwrap()
                );
            }
        }
    }

    fn entries(&self) -> Vec<OrderEntry> {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter_map(|h| match h {
                Heard::Entry(e) => Some(e.clone()),
                Heard::Location(_) => None,
            })
            .collect()
    }

    fn locations(&self) -> usize {
        self.heard
            .lock()
            .unwrap()
            .iter()
            .filter(|h| matches!(h, Heard::Location(_)))
            .count()
    }
}

impl OrderListener for OrderRec {
    fn on_entry(&self, entry: OrderEntry) {
        self.heard.lock().unwrap().push(Heard::Entry(entry));
        self.changed.notify_waiters();
    }
    fn on_location(&self, update: LocationUpdate) {
        self.heard.lock().unwrap().push(Heard::Location(update.seq));
        self.changed.notify_waiters();
    }
}

fn has_status(status: &'static str) -> impl Fn(&[Heard]) -> bool {
    move |h| {
        h.iter()
            .any(|h| matches!(h, Heard::Entry(e) if e.status.as_deref() == Some(status)))
    }
}

async fn post_event(server: &Server, order: &str, ev: Value) -> Result<()> {
    let r = reqwest::Client::new()
        .post(server.http(&format!("/v1/orders/{order}/events")))
        .bearer_auth(token("backend", Role::Service, &[]))
        .json(&ev)
        .send()
        .await?;
    ensure!(r.status() == StatusCode::ACCEPTED, "event: {}", r.status());
    Ok(())
}

async fn order_followed_across_a_reset_connection(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let base = server.http("");
    let proxy = FaultProxy::start(server.addr).await?;
    let o = unique("o");
    let d = unique("d");
    let channel = format!("order:{o}");
    let buyer = Buyer::start(
        fast_config(proxy.url(), "buyer-1"),
        token("buyer-1", Role::Buyer, &[&channel]),
    )?;
    let rec = Arc::new(OrderRec::default());

    post_event(
        &server,
        &o,
        json!({"event_id": "e1", "status": "placed", "vendor_id": "v-1", "buyers": ["buyer-1"]}),
    )
    .await?;
    buyer.client.track_order(o.clone(), rec.clone())?;
    rec.until("placed (replayed from seq 1)", has_status("placed"))
        .await?;

    // Far from the destination: no arrival, maybe ETA entries.
    post_event(
        &server,
        &o,
        json!({"event_id": "e2", "status": "accepted", "driver_id": d,
            "destination": {"lat": 52.0, "lon": 13.0}}),
    )
    .await?;
    rec.until("accepted", has_status("accepted")).await?;
    let mut driver = MovingDriver::new(&d, token(&d, Role::Driver, &[]));
    for _ in 0..3 {
        ensure!(driver.step(&base).await, "fix accepted");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    rec.until("a location while active", |h| {
        h.iter().any(|h| matches!(h, Heard::Location(_)))
    })
    .await?;

    // The connection is reset; the order moves on while the buyer is away.
    proxy.set(Fault::Refuse);
    buyer
        .rec
        .until(T, "the connection dropped", |r| {
            !matches!(
                r.states.lock().unwrap().last(),
                Some(ConnectionState::Connected)
            )
        })
        .await?;
    post_event(
        &server,
        &o,
        json!({"event_id": "e3", "status": "picked_up"}),
    )
    .await?;
    for _ in 0..3 {
        ensure!(driver.step(&base).await, "fix accepted");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.set(Fault::Pass);
    rec.until("picked_up after the reconnect", has_status("picked_up"))
        .await?;
    let connected = buyer.rec.count_states(|s| *s == ConnectionState::Connected);
    ensure!(connected >= 2, "reconnected ({connected})");
    let before = rec.locations();
    for _ in 0..3 {
        ensure!(driver.step(&base).await, "fix accepted");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    rec.until("a location after the reconnect", |h| {
        h.iter().filter(|h| matches!(h, Heard::Location(_))).count() > before
    })
    .await?;

    post_event(
        &server,
        &o,
        json!({"event_id": "e4", "status": "delivered"}),
    )
    .await?;
    rec.until("delivered", has_status("delivered")).await?;
    for _ in 0..3 {
        ensure!(driver.step(&base).await, "fix accepted");
    }
    tokio::time::sleep(Duration::from_millis(800)).await;

    let heard = rec.heard.lock().unwrap().clone();
    let end = heard
        .iter()
        .position(|h| matches!(h, Heard::Entry(e) if e.status.as_deref() == Some("delivered")))
        .context("delivered heard")?;
    ensure!(
        heard[end + 1..]
            .iter()
            .all(|h| !matches!(h, Heard::Location(_))),
        "no location after delivery: {heard:?}"
    );
    let locs: Vec<u64> = heard
        .iter()
        .filter_map(|h| match h {
            Heard::Location(s) => Some(*s),
            Heard::Entry(_) => None,
        })
        .collect();
    ensure!(
        locs.windows(2).all(|w| w[0] < w[1]),
        "locations once each, in order: {locs:?}"
    );
    let entries = rec.entries();
    let seqs: Vec<u64> = entries.iter().map(|e| e.seq).collect();
    let expected: Vec<u64> = (1..=entries.len() as u64).collect();
    ensure!(seqs == expected, "every entry once, in order: {seqs:?}");
    let statuses: Vec<&str> = entries
        .iter()
        .filter(|e| e.kind == OrderEntryKind::Status)
        .filter_map(|e| e.status.as_deref())
        .collect();
    ensure!(
        statuses == ["placed", "accepted", "picked_up", "delivered"],
        "{statuses:?}"
    );
    let last = entries.last().context("entries")?;
    ensure!(
        last.active == Some(false) && last.status.as_deref() == Some("delivered"),
        "the last entry ends the order: {last:?}"
    );
    ensure!(
        entries
            .iter()
            .all(|e| e.order_id == o && e.driver_id.as_deref().is_none_or(|x| x == d)),
        "{entries:?}"
    );
    buyer.client.shutdown().await;
    proxy.stop().await;
    Ok(())
}
