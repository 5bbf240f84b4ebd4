//! End to end: the buyer SDK (`waypost_sdk::buyer`) against the real
//! `waypost` binary, on the memory engine and on real Redis. A buyer tracks
//! a driver that keeps moving while the server is killed and started again
//! on the same port; an expired token is replaced through the token
//! provider after a 4001; a forbidden channel is reported to the app.

mod buyer_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use buyer_support::{fast_config, Buyer, MovingDriver, Recorder};
use waypost_e2e::{
    free_port, now_s, token, token_with_exp, unique, EngineChoice, Server, ServerOptions,
};
use waypost_protocol::Role;
use waypost_sdk::buyer::{BuyerClient, ConnectionState, TokenProvider};

const T: Duration = Duration::from_secs(20);

macro_rules! on_both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                super::$name(waypost_e2e::EngineChoice::Memory).await
            })*
        }
        mod redis {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                let Some((url, _guard)) = waypost_e2e::shared_redis().await else { return Ok(()) };
                super::$name(waypost_e2e::EngineChoice::Redis(url)).await
            })*
        }
    };
}

on_both_engines!(
    tracks_a_moving_driver_across_server_restart,
    expired_token_is_refreshed_after_4001,
    forbidden_channel_is_reported,
);

async fn tracks_a_moving_driver_across_server_restart(engine: EngineChoice) -> Result<()> {
    let addr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut options = ServerOptions::new(engine);
    options.listen = Some(addr);
    let mut server = Server::start_with(options.clone()).await?;
    let base = server.http("");
    let driver_id = unique("d");
    let channel = format!("tracking:{driver_id}");
    let buyer = Buyer::start(
        fast_config(base.clone(), "buyer-1"),
        token("buyer-1", Role::Buyer, &[&channel]),
    )?;
    buyer.client.track_driver(driver_id.clone())?;
    let mut driver = MovingDriver::new(&driver_id, token(&driver_id, Role::Driver, &[]));

    buyer
        .rec
        .until(T, "connected", |r| {
            r.states
                .lock()
                .unwrap()
                .contains(&ConnectionState::Connected)
        })
        .await?;
    for _ in 0..10 {
        assert!(driver.step(&base).await, "server up: fix accepted");
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    buyer
        .rec
        .until(T, "fix 10", |r| r.last_location_seq() == Some(10))
        .await?;

    // The server dies; the driver keeps trying while it is gone.
    server.kill().await?;
    buyer
        .rec
        .until(T, "backing off", |r| {
            matches!(
                r.states.lock().unwrap().last(),
                Some(ConnectionState::BackingOff { .. } | ConnectionState::Connecting { .. })
            )
        })
        .await?;
    for _ in 0..3 {
        assert!(!driver.step(&base).await, "server down: nothing stored");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = Server::start_with(options).await?;
    assert_eq!(server.addr, addr);
    for _ in 0..10 {
        while !driver.step(&base).await {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let last = driver.seq;
    assert_eq!(last, 20);
    buyer
        .rec
        .until(T, "the driver's latest fix", |r| {
            r.last_location_seq() == Some(last)
        })
        .await?;
    let seqs: Vec<u64> = buyer
        .rec
        .locations
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "fixes reported in order, each once: {seqs:?}"
    );
    assert_eq!(
        buyer
            .client
            .latest_location(driver_id.clone())
            .map(|l| l.seq),
        Some(last)
    );
    let connected = buyer.rec.count_states(|s| *s == ConnectionState::Connected);
    assert!(
        connected >= 2,
        "reconnected after the restart ({connected})"
    );
    buyer.client.shutdown().await;
    Ok(())
}

/// Hands out an expired token first and a valid one on refresh.
struct ExpiringTokens {
    expired: String,
    fresh: String,
    refreshed: std::sync::atomic::AtomicU32,
}

impl TokenProvider for ExpiringTokens {
    fn token(&self) -> Option<String> {
        Some(self.expired.clone())
    }
    fn refresh_token(&self) -> Option<String> {
        self.refreshed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Some(self.fresh.clone())
    }
}

async fn expired_token_is_refreshed_after_4001(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let base = server.http("");
    let driver_id = unique("d");
    let channel = format!("tracking:{driver_id}");
    let tokens = Arc::new(ExpiringTokens {
        expired: token_with_exp("buyer-1", Role::Buyer, &[&channel], now_s() - 120),
        fresh: token("buyer-1", Role::Buyer, &[&channel]),
        refreshed: 0.into(),
    });
    let rec = Arc::new(Recorder::default());
    let client = BuyerClient::start(
        fast_config(base.clone(), "buyer-1"),
        rec.clone(),
        tokens.clone(),
    )?;
    client.track_driver(driver_id.clone())?;
    let mut driver = MovingDriver::new(&driver_id, token(&driver_id, Role::Driver, &[]));
    assert!(driver.step(&base).await);
    rec.until(T, "fix 1", |r| r.last_location_seq() == Some(1))
        .await?;
    assert_eq!(
        tokens.refreshed.load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    assert_eq!(
        rec.count_states(|s| matches!(s, ConnectionState::Closed { .. })),
        0,
        "a refreshable 4001 is not shown as closed"
    );
    assert_eq!(
        rec.count_states(|s| *s == ConnectionState::Connected),
        1,
        "the refused connection never counted as connected: {:?}",
        rec.states.lock().unwrap()
    );
    client.shutdown().await;
    Ok(())
}

async fn forbidden_channel_is_reported(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let buyer = Buyer::start(
        fast_config(server.http(""), "buyer-1"),
        token("buyer-1", Role::Buyer, &["tracking:mine"]),
    )?;
    buyer.client.track_driver("someone-else".into())?;
    buyer
        .rec
        .until(T, "forbidden error", |r| {
            r.errors.lock().unwrap().iter().any(|(reference, code, _)| {
                reference == "tracking:someone-else" && code == "forbidden"
            })
        })
        .await?;
    assert_eq!(buyer.client.connection_state(), ConnectionState::Connected);
    buyer.client.shutdown().await;
    Ok(())
}
