//! `storm`: start the server(s) from `--server-cmd`, connect N subscribers,
//! restart every server process at once (SIGTERM, then start it again) and
//! measure how the clients come back: time until every one is connected and
//! resubscribed again, the histogram of reconnect times, and the servers'
//! peak CPU during the storm.
//!
//! Clients reconnect the way their library would:
//! * Waypost: the buyer SDK's policy, `waypost_protocol::backoff::BackoffPolicy`
//!   with its defaults (base 500 ms, cap 30 s, connect timeout 10 s): attempt
//!   n waits uniform(0, min(cap, base * 2^n)).
//! * Socket.IO: socket.io-client defaults (1 s * 2^n, +-50 % jitter, max 5 s).
//! * ws: reconnecting-websocket defaults (first delay uniform 1-5 s per
//!   client, x1.3 per failed attempt, max 10 s); plain `ws` has no reconnect.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::common::{
    clock_ticks, machine, mono_ns, proc_sample, run_id, signal, wait_healthy, CommonArgs, Target,
};
use crate::fanout::{http_client, round1};
use crate::worker::{self, Plan, Pool, Reconnect, SpreadArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub spread: SpreadArgs,
    /// Subscribers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub clients: u32,
    /// Drivers the subscribers follow.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub drivers: u32,
    /// Shell command starting one server process, one per `--url` in the
    /// same order (run with `sh -c 'exec ...'`; output goes to --log-dir).
    #[arg(long = "server-cmd", required = true)]
    pub server_cmd: Vec<String>,
    /// Directory for the servers' output.
    #[arg(long, default_value = "/tmp")]
    pub log_dir: String,
    /// Seconds to wait for everyone to come back.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub deadline: u32,
    /// Waypost full-jitter base delay, ms (the buyer SDK's default).
    #[arg(long, default_value_t = 500)]
    pub backoff_base_ms: u64,
    /// Waypost full-jitter cap, ms.
    #[arg(long, default_value_t = 30_000)]
    pub backoff_cap_ms: u64,
    /// Seconds for the whole connect phase.
    #[arg(long, default_value_t = 300)]
    pub connect_phase_timeout: u64,
}

struct Servers {
    cmds: Vec<String>,
    log_dir: String,
    children: Vec<tokio::process::Child>,
}

impl Servers {
    fn start(&mut self, generation: u32) -> anyhow::Result<()> {
        self.children.clear();
        for (j, cmd) in self.cmds.iter().enumerate() {
            let log = std::fs::File::create(format!(
                "{}/storm-server-{j}-{generation}.log",
                self.log_dir
            ))
            .context("creating server log")?;
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(format!("exec {cmd}"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("starting {cmd}"))?;
            self.children.push(child);
        }
        Ok(())
    }

    fn pids(&self) -> Vec<u32> {
        self.children
            .iter()
            .filter_map(tokio::process::Child::id)
            .collect()
    }

    /// SIGTERM, then SIGKILL after 15 s; waits for every exit.
    async fn stop(&mut self) {
        for pid in self.pids() {
            signal(pid, libc::SIGTERM);
        }
        for c in &mut self.children {
            if tokio::time::timeout(Duration::from_secs(15), c.wait())
                .await
                .is_err()
            {
                let _ = c.kill().await;
            }
        }
    }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    let servers = common.servers()?;
    if args.server_cmd.len() != servers.len() {
        bail!(
            "give one --server-cmd per --url ({} vs {})",
            args.server_cmd.len(),
            servers.len()
        );
    }
    let http = http_client(4, Duration::from_secs(2))?;
    let mut procs = Servers {
        cmds: args.server_cmd.clone(),
        log_dir: args.log_dir.clone(),
        children: Vec::new(),
    };
    procs.start(0)?;
    let result = storm(&args, &mut procs, &http).await;
    procs.stop().await;
    let report = result?;
    print_report(common, &report);
    Ok(())
}

async fn wait_all_healthy(http: &reqwest::Client, args: &Args) -> anyhow::Result<()> {
    for s in args.common.servers()? {
        wait_healthy(http, &s.base, Duration::from_secs(30)).await?;
    }
    Ok(())
}

async fn storm(args: &Args, procs: &mut Servers, http: &reqwest::Client) -> anyhow::Result<Value> {
    let common = &args.common;
    wait_all_healthy(http, args).await?;
    let run = run_id();
    let policy = match common.target {
        Target::Waypost => Reconnect::FullJitter {
            base_ms: args.backoff_base_ms,
            cap_ms: args.backoff_cap_ms,
        },
        Target::Socketio => Reconnect::SocketIoClient,
        Target::Ws => Reconnect::ReconnectingWebsocket,
    };
    let plan = Plan {
        common,
        servers: common.servers()?,
        subscribers: args.clients as usize,
        drivers: args.drivers as usize,
        run_id: &run,
        max_updates: 0,
        measured_from: 0,
        reconnect: Some(policy),
    };
    let mut pool = Pool::spawn(args.spread.configs(&plan))?;
    let connected = match pool
        .collect("connected", Duration::from_secs(args.connect_phase_timeout))
        .await
    {
        Ok(c) => worker::merge_connected(&c),
        Err(e) => {
            pool.quit().await;
            return Err(e);
        }
    };
    let subscribed = connected["subscribed"].as_u64().unwrap_or(0);
    if subscribed == 0 {
        pool.quit().await;
        bail!("no subscription succeeded: {}", connected["errors"]);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The restart.
    let kill_ns = mono_ns();
    procs.stop().await;
    let down_ms = (mono_ns() - kill_ns) as f64 / 1e6;
    procs.start(1)?;
    let healthy = wait_all_healthy(http, args).await;
    let up_ms = (mono_ns() - kill_ns) as f64 / 1e6;
    if let Err(e) = healthy {
        pool.quit().await;
        return Err(e);
    }
    // Watch the new processes' CPU until everyone is back.
    let pids = procs.pids();
    let hz = clock_ticks() as f64;
    let mut last: Vec<u64> = pids
        .iter()
        .map(|&p| proc_sample(p).map_or(0, |s| s.ticks))
        .collect();
    let first_ticks = last.clone();
    let mut last_t = Instant::now();
    let recovery_started = Instant::now();
    let mut peak_cpu = 0.0f64;
    let deadline = Instant::now() + Duration::from_secs(u64::from(args.deadline));
    let mut next_poll = Instant::now();
    let reports = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now: Vec<u64> = pids
            .iter()
            .map(|&p| proc_sample(p).map_or(0, |s| s.ticks))
            .collect();
        let dt = last_t.elapsed().as_secs_f64();
        let busy: u64 = now
            .iter()
            .zip(&last)
            .map(|(a, b)| a.saturating_sub(*b))
            .sum();
        peak_cpu = peak_cpu.max(busy as f64 / hz / dt * 100.0);
        last = now;
        last_t = Instant::now();
        if Instant::now() >= next_poll {
            pool.broadcast("report");
            let reports = pool.collect("report", Duration::from_secs(30)).await?;
            let back: usize = reports
                .iter()
                .map(|r| r["resubscribed"].as_array().map_or(0, Vec::len))
                .sum();
            if back as u64 >= subscribed || Instant::now() >= deadline {
                break reports;
            }
            next_poll = Instant::now() + Duration::from_secs(1);
        }
    };
    let recovery_s = recovery_started.elapsed().as_secs_f64();
    let total_ticks: u64 = last
        .iter()
        .zip(&first_ticks)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let mean_cpu = total_ticks as f64 / hz / recovery_s * 100.0;
    pool.quit().await;

    // Reconnect times relative to the moment the servers were told to stop.
    let mut times_ms: Vec<f64> = Vec::new();
    let mut attempts: Vec<u64> = Vec::new();
    for r in &reports {
        for e in r["resubscribed"].as_array().into_iter().flatten() {
            let ns = e[0].as_u64().unwrap_or(0);
            times_ms.push(ns.saturating_sub(kill_ns) as f64 / 1e6);
            attempts.push(e[1].as_u64().unwrap_or(0));
        }
    }
    times_ms.sort_by(f64::total_cmp);
    let q = |p: f64| -> f64 {
        if times_ms.is_empty() {
            return 0.0;
        }
        let i = ((p * times_ms.len() as f64).ceil() as usize).clamp(1, times_ms.len()) - 1;
        round1(times_ms[i])
    };
    // 500 ms bins from the kill.
    let mut bins: Vec<u64> = Vec::new();
    for &t in &times_ms {
        let b = (t / 500.0) as usize;
        if bins.len() <= b {
            bins.resize(b + 1, 0);
        }
        bins[b] += 1;
    }
    let busiest_100ms = {
        let mut m: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
        for &t in &times_ms {
            *m.entry((t / 100.0) as u64).or_default() += 1;
        }
        m.values().copied().max().unwrap_or(0)
    };
    let back = times_ms.len() as u64;
    Ok(json!({
        "kind": "storm",
        "target": common.target.name(),
        "label": common.label,
        "servers": plan.servers.iter().map(|s| s.base.clone()).collect::<Vec<_>>(),
        "params": { "clients": args.clients, "drivers": args.drivers, "policy": format!("{policy:?}") },
        "connections": connected,
        "restart": { "old_exited_ms": round1(down_ms), "new_healthy_ms": round1(up_ms) },
        "back": back,
        "not_back": subscribed.saturating_sub(back),
        "all_back_s": if back >= subscribed { json!(round1(q(1.0) / 1000.0)) } else { Value::Null },
        "reconnect_ms": { "p50": q(0.5), "p90": q(0.9), "p99": q(0.99), "max": q(1.0) },
        "attempts": {
            "mean": if attempts.is_empty() { 0.0 } else { round1(attempts.iter().sum::<u64>() as f64 / attempts.len() as f64) },
            "max": attempts.iter().copied().max().unwrap_or(0),
        },
        "histogram_500ms": bins,
        "busiest_100ms_share_pct": if back == 0 { 0.0 } else { round1(busiest_100ms as f64 / back as f64 * 100.0) },
        "server_cpu_pct_of_one_core": { "peak_250ms": round1(peak_cpu), "mean_recovery": round1(mean_cpu) },
        "errors": worker::merge_errors(&reports),
        "machine": machine(),
    }))
}

fn print_report(common: &CommonArgs, r: &Value) {
    if common.json {
        println!("{r}");
        return;
    }
    println!(
        "storm {} {}: {} clients, policy {}",
        r["target"], r["label"], r["params"]["clients"], r["params"]["policy"]
    );
    println!(
        "  restart: old exited after {} ms, new healthy after {} ms",
        r["restart"]["old_exited_ms"], r["restart"]["new_healthy_ms"]
    );
    println!(
        "  back {} / not back {}; all back after {} s; reconnect ms p50 {} p90 {} p99 {} max {}",
        r["back"],
        r["not_back"],
        r["all_back_s"],
        r["reconnect_ms"]["p50"],
        r["reconnect_ms"]["p90"],
        r["reconnect_ms"]["p99"],
        r["reconnect_ms"]["max"]
    );
    println!(
        "  attempts mean {} max {}; busiest 100 ms held {} % of reconnects",
        r["attempts"]["mean"], r["attempts"]["max"], r["busiest_100ms_share_pct"]
    );
    println!("  per 500 ms since the kill: {}", r["histogram_500ms"]);
    println!(
        "  server CPU % of a core: peak {} mean {}",
        r["server_cpu_pct_of_one_core"]["peak_250ms"],
        r["server_cpu_pct_of_one_core"]["mean_recovery"]
    );
}
