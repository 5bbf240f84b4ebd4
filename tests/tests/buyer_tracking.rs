//! End to end: the buyer SDK (`waypost_sdk::buyer`) against the real
//! `waypost` binary, on the memory engine and on real Redis. A buyer tracks
//! a driver that keeps moving while the server is killed and started again
//! on the same port; an expired token is replaced through the token
//! provider after a 4001; a forbidden channel is reported to the app.

mod buyer_support;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_trait::async_trait;
use buyer_support::{fast_config, Buyer, MovingDriver, Recorder};
use waypost_e2e::proxy::{Fault, FaultProxy};
use waypost_e2e::{
    free_port, now_s, token, token_with_exp, unique, EngineChoice, Server, ServerOptions,
};
use waypost_protocol::Role;
use waypost_sdk::buyer::{BuyerClient, BuyerDeps, ConnectionState};
use waypost_sdk::env::{ManualEnvironment, NetworkType};
use waypost_sdk::{StaticToken, TokenProvider};

const T: Duration = Duration::from_secs(20);

use waypost_e2e::on_both_engines;

on_both_engines!(
    tracks_a_moving_driver_across_server_restart,
    expired_token_is_refreshed_after_4001,
    forbidden_channel_is_reported,
    half_open_through_a_blackhole_is_detected_and_tracking_resumes,
    network_back_skips_the_backoff_wait,
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

#[async_trait]
impl TokenProvider for ExpiringTokens {
    async fn token(&self) -> Option<String> {
        Some(self.expired.clone())
    }
    async fn refresh_token(&self) -> Option<String> {
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

/// A blackhole between buyer and server (no FIN, no RST, no bytes): the
/// SDK notices within two ping intervals, reconnects once the path heals,
/// and tracking continues from the last fix it had.
async fn half_open_through_a_blackhole_is_detected_and_tracking_resumes(
    engine: EngineChoice,
) -> Result<()> {
    let server =
        Server::start_with(ServerOptions::new(engine).arg("--ping-interval").arg("1s")).await?;
    let base = server.http("");
    let proxy = FaultProxy::start(server.addr).await?;
    let driver_id = unique("d");
    let channel = format!("tracking:{driver_id}");
    let mut config = fast_config(proxy.url(), "buyer-1");
    config.ping_interval_ms = 1_000;
    let buyer = Buyer::start(config, token("buyer-1", Role::Buyer, &[&channel]))?;
    buyer.client.track_driver(driver_id.clone())?;
    let mut driver = MovingDriver::new(&driver_id, token(&driver_id, Role::Driver, &[]));
    assert!(driver.step(&base).await);
    buyer
        .rec
        .until(T, "fix 1", |r| r.last_location_seq() == Some(1))
        .await?;

    proxy.set(Fault::Blackhole);
    let cut = std::time::Instant::now();
    buyer
        .rec
        .until(T, "the half-open connection dropped", |r| {
            !matches!(
                r.states.lock().unwrap().last(),
                Some(ConnectionState::Connected)
            )
        })
        .await?;
    let detected = cut.elapsed();
    eprintln!("half-open detected after {detected:?} (ping interval 1 s)");
    assert!(
        detected <= Duration::from_millis(2_600),
        "detected after {detected:?}, more than ~2 ping intervals"
    );
    for _ in 0..5 {
        assert!(driver.step(&base).await);
    }
    proxy.set(Fault::Pass);
    buyer
        .rec
        .until(T, "the latest fix after healing", |r| {
            r.last_location_seq() == Some(6)
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
    assert_eq!(
        seqs,
        [1, 6],
        "only the newest fix is replayed at resubscribe"
    );
    buyer.client.shutdown().await;
    Ok(())
}

/// After failures have grown the backoff window, the platform reporting the
/// network back reconnects at once instead of waiting out the jitter.
async fn network_back_skips_the_backoff_wait(engine: EngineChoice) -> Result<()> {
    let server = Server::start(engine).await?;
    let proxy = FaultProxy::start(server.addr).await?;
    proxy.set(Fault::Refuse);
    let env = ManualEnvironment::default();
    let rec = Arc::new(Recorder::default());
    let mut config = fast_config(proxy.url(), "buyer-1");
    config.backoff_base_ms = 2_000;
    config.backoff_cap_ms = 60_000;
    let deps = BuyerDeps {
        environment: Arc::new(env.clone()),
        ..BuyerDeps::real(&config)?
    };
    let client = BuyerClient::start_with(
        config,
        rec.clone(),
        Arc::new(StaticToken(token("buyer-1", Role::Buyer, &[]))),
        deps,
    )?;
    rec.until(T, "third backoff", |r| {
        r.count_states(|s| matches!(s, ConnectionState::BackingOff { .. })) >= 3
    })
    .await?;
    env.set_network(NetworkType::Offline);
    client.environment_changed()?;
    rec.until(T, "offline", |r| {
        r.states.lock().unwrap().last() == Some(&ConnectionState::Offline)
    })
    .await?;
    proxy.set(Fault::Pass);
    env.set_network(NetworkType::Cellular);
    let back = std::time::Instant::now();
    client.environment_changed()?;
    rec.until(T, "connected", |r| {
        r.states.lock().unwrap().last() == Some(&ConnectionState::Connected)
    })
    .await?;
    let took = back.elapsed();
    eprintln!("connected {took:?} after the network came back");
    assert!(took < Duration::from_secs(1), "took {took:?}");
    client.shutdown().await;
    Ok(())
}
