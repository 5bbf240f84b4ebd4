//! Chaos, end to end: two buyers and a vendor chat through the buyer SDK
//! while one buyer tracks a moving driver, each behind its own fault proxy,
//! under a seeded schedule of connection drops, flaps (refused connects),
//! latency, blackholes (half-open connections), cut responses and, on
//! Redis, server kills and restarts on the same port. Afterwards every
//! participant has every message exactly once, in seq order (listener and
//! local store), and tracking ends at the driver's latest fix.
//!
//! The memory engine gets no server restarts: its history lives in the
//! process, so a restart legitimately starts every room over.
//!
//! `WAYPOST_CHAOS_SEED=N` replays one schedule; `WAYPOST_CHAOS_LONG=1` runs
//! a longer matrix (several seeds, more steps).

mod buyer_support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use buyer_support::{MovingDriver, Participant};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use waypost_e2e::proxy::{Fault, FaultProxy};
use waypost_e2e::{free_port, token, unique, EngineChoice, Server, ServerOptions};
use waypost_protocol::Role;

const T: Duration = Duration::from_secs(60);
/// Lifetime of the participants' tokens: a schedule lasts ~10 s, so each
/// token is refreshed (at half its lifetime) a few times under faults.
const TOKEN_TTL_S: u64 = 6;

use waypost_e2e::on_both_engines;

on_both_engines!(seeded_fault_schedules);

async fn seeded_fault_schedules(engine: EngineChoice) -> Result<()> {
    let long = std::env::var("WAYPOST_CHAOS_LONG").is_ok_and(|v| v != "0");
    let seeds: Vec<u64> = match std::env::var("WAYPOST_CHAOS_SEED") {
        Ok(s) => vec![s.parse().context("WAYPOST_CHAOS_SEED")?],
        Err(_) if long => (1..=6).collect(),
        Err(_) => vec![0x5EED],
    };
    let steps = if long { 150 } else { 45 };
    for seed in seeds {
        run(engine.clone(), seed, steps)
            .await
            .with_context(|| format!("engine {} seed {seed}", engine.name()))?;
    }
    Ok(())
}

/// One step's fault, applied to one participant's proxy (or the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    /// Reset every live connection.
    Drop,
    /// Refuse (reset) connections for a while.
    Flap,
    /// Freeze live connections, swallow new ones, for a while.
    Blackhole,
    Latency,
    /// Cut responses (the upgrade answer) for a while.
    Cut,
    /// Kill the server and start it again on the same port (Redis only).
    Restart,
    Calm,
}

/// A seeded schedule of `steps` (action, proxy) pairs that contains every
/// fault kind at least twice, the rest drawn at random, shuffled.
fn plan(rng: &mut StdRng, steps: usize, restarts: bool) -> Vec<(Action, usize)> {
    let mut kinds = vec![
        Action::Drop,
        Action::Flap,
        Action::Blackhole,
        Action::Latency,
        Action::Cut,
    ];
    if restarts {
        kinds.push(Action::Restart);
    }
    let mut actions: Vec<Action> = kinds.iter().flat_map(|&k| [k, k]).collect();
    while actions.len() < steps {
        let a = if rng.random_bool(0.5) {
            Action::Calm
        } else {
            kinds[rng.random_range(0..kinds.len())]
        };
        actions.push(a);
    }
    actions.shuffle(rng);
    actions
        .into_iter()
        .map(|a| (a, rng.random_range(0..3)))
        .collect()
}

#[derive(Debug, Default)]
struct Tally {
    messages: u64,
    drops: u32,
    flaps: u32,
    blackholes: u32,
    latency: u32,
    restarts: u32,
    cuts: u32,
}

async fn run(engine: EngineChoice, seed: u64, steps: usize) -> Result<()> {
    let started = Instant::now();
    let restarts = matches!(engine, EngineChoice::Redis(_));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()?).parse()?;
    let mut options = ServerOptions::new(engine)
        // Zombie connections behind a blackhole die within seconds, so the
        // per-user connection cap is never reached.
        .arg("--ping-interval")
        .arg("1s")
        .arg("--ws-messages-per-s")
        .arg("1000");
    options.listen = Some(addr);
    let mut server = Some(Server::start_with(options.clone()).await?);
    let base = format!("http://{addr}");

    let room = unique("order");
    let driver_id = unique("d");
    let tracking = format!("tracking:{driver_id}");
    let proxies = [
        FaultProxy::start(addr).await?,
        FaultProxy::start(addr).await?,
        FaultProxy::start(addr).await?,
    ];
    // Short-lived tokens, minted afresh by each participant's provider:
    // the SDK refreshes in band (and after 4001s) while the faults run.
    let ttl = Some(TOKEN_TTL_S);
    let people = [
        Participant::start_with_ttl(
            &proxies[0].url(),
            "buyer-1",
            Role::Buyer,
            &room,
            &[&tracking],
            None,
            ttl,
        )?,
        Participant::start_with_ttl(
            &proxies[1].url(),
            "buyer-2",
            Role::Buyer,
            &room,
            &[],
            None,
            ttl,
        )?,
        Participant::start_with_ttl(
            &proxies[2].url(),
            "vendor-1",
            Role::Vendor,
            &room,
            &[],
            None,
            ttl,
        )?,
    ];
    people[0].client.track_driver(driver_id.clone())?;
    let mut driver = MovingDriver::new(&driver_id, token(&driver_id, Role::Driver, &[]));

    let mut rng = StdRng::seed_from_u64(seed);
    let plan = plan(&mut rng, steps, restarts);
    let mut heal_at: [Option<Instant>; 3] = [None; 3];
    let mut tally = Tally::default();
    let mut schedule = Vec::new();
    for (step, &(action, target)) in plan.iter().enumerate() {
        let now = Instant::now();
        for (i, p) in proxies.iter().enumerate() {
            if heal_at[i].is_some_and(|t| now >= t) {
                p.set(Fault::Pass);
                heal_at[i] = None;
            }
        }
        // Traffic: the driver moves; someone may write.
        if server.is_some() {
            driver.step(&base).await;
        }
        if rng.random_bool(0.6) {
            let who = rng.random_range(0..people.len());
            for _ in 0..rng.random_range(1..=2) {
                let n = tally.messages + 1;
                people[who]
                    .client
                    .send_message(room.clone(), format!("m{n} from {}", people[who].user))?;
                tally.messages = n;
            }
        }
        // The fault of this step.
        let p = &proxies[target];
        let mut heal_after = |lo: u64, hi: u64, rng: &mut StdRng| {
            heal_at[target] = Some(now + Duration::from_millis(rng.random_range(lo..hi)));
        };
        match action {
            Action::Drop => {
                p.reset_all();
                tally.drops += 1;
            }
            Action::Flap => {
                p.set(Fault::Refuse);
                heal_after(200, 1_000, &mut rng);
                tally.flaps += 1;
            }
            Action::Blackhole => {
                p.set(Fault::Blackhole);
                heal_after(1_000, 4_000, &mut rng);
                tally.blackholes += 1;
            }
            Action::Latency => {
                p.set(Fault::Latency(Duration::from_millis(
                    rng.random_range(20..250),
                )));
                heal_after(500, 3_000, &mut rng);
                tally.latency += 1;
            }
            Action::Cut => {
                p.set(Fault::CutResponse);
                heal_after(300, 1_500, &mut rng);
                tally.cuts += 1;
            }
            Action::Restart => {
                if let Some(mut s) = server.take() {
                    s.kill().await?;
                }
                tokio::time::sleep(Duration::from_millis(rng.random_range(100..800))).await;
                server = Some(Server::start_with(options.clone()).await?);
                tally.restarts += 1;
            }
            Action::Calm => {}
        }
        schedule.push(format!("{step}:{action:?}@{target}"));
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..300))).await;
    }
    let chaos_took = started.elapsed();

    // Heal, let the driver make a last move, and wait for convergence.
    for p in &proxies {
        p.set(Fault::Pass);
    }
    while !driver.step(&base).await {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = tally.messages;
    let converge = Instant::now();
    for p in &people {
        p.has(&room, total)
            .await
            .with_context(|| format!("schedule {schedule:?}"))?;
    }
    let last_fix = driver.seq;
    people[0]
        .rec
        .until(T, "the driver's latest fix", |r| {
            r.last_location_seq() == Some(last_fix)
        })
        .await
        .with_context(|| format!("schedule {schedule:?}"))?;
    let converged_in = converge.elapsed();
    for p in &people {
        p.check_timeline(&room, total)
            .with_context(|| format!("schedule {schedule:?}"))?;
    }
    let fixes: Vec<u64> = people[0]
        .rec
        .locations
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.seq)
        .collect();
    anyhow::ensure!(
        fixes.windows(2).all(|w| w[0] < w[1]),
        "fixes in order, each once: {fixes:?}"
    );
    let reconnects: Vec<u64> = proxies
        .iter()
        .map(|p| {
            p.stats()
                .accepted
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .collect();
    eprintln!(
        "chaos seed {seed}: {steps} steps in {chaos_took:?}, {tally:?}, {} fixes, proxy connections {reconnects:?}, converged {converged_in:?} after healing",
        last_fix
    );
    let minted: Vec<u64> = people
        .iter()
        .map(|p| p.minting.as_ref().map_or(0, |m| m.minted()))
        .collect();
    eprintln!("chaos seed {seed}: tokens minted per participant {minted:?} ({TOKEN_TTL_S} s each)");
    if started.elapsed() >= Duration::from_secs(2 * TOKEN_TTL_S) {
        anyhow::ensure!(
            minted.iter().all(|&n| n >= 2),
            "every participant renewed its token at least once: {minted:?}"
        );
    }
    for p in &people {
        p.client.shutdown().await;
    }
    Ok(())
}
