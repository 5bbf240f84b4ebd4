//! `fanout`: N WebSocket watchers over D drivers, R location posts/s in
//! total (open loop over drivers). Latency runs from just before a POST is
//! issued (so queueing for a pooled HTTP connection counts) to the moment
//! the frame is read at each watcher, matched by (driver, seq) on the shared
//! monotonic clock. Same scheme as the peers' Node load generator, with one
//! difference: a driver's next POST waits for its previous one to be
//! answered, as a driver app uploads (the SDK sends one batch at a time).
//! Two POSTs of one driver in flight at once can be processed in either
//! order, and Waypost broadcasts only a driver's newest fix, so the overtaken
//! one would count as lost although no real driver sends that way. The wait
//! is reported (`max_driver_queue_ms`) and the achieved rate shows when the
//! server cannot keep up.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{oneshot, Semaphore};

use crate::common::{
    epoch_ms, machine, mono_ns, rss_kib, run_id, token, CommonArgs, CpuWindow, Histogram, Server,
    Target,
};
use crate::worker::{self, driver_prefix, Plan, Pool, SpreadArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub spread: SpreadArgs,
    /// WebSocket watchers.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub subscribers: u32,
    /// Drivers (watchers per driver = subscribers / drivers).
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub drivers: u32,
    /// Location posts per second, all drivers together.
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub rate: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub duration: u32,
    /// Seconds of unmeasured publishing first (rounded to whole driver rounds).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(0..=120))]
    pub warmup: u32,
    /// Seconds to wait for late deliveries after the last POST was answered.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(0..=60))]
    pub drain: u32,
    /// POSTs in flight at once (keep-alive connections per run).
    #[arg(long, default_value_t = 64)]
    pub pub_connections: usize,
    /// Seconds per POST.
    #[arg(long, default_value_t = 10)]
    pub request_timeout: u64,
    /// Seconds for the whole connect phase.
    #[arg(long, default_value_t = 180)]
    pub connect_phase_timeout: u64,
}

/// Builds the POST for update `k` (driver `k mod D`, seq `k / D + 1`).
pub struct Publisher {
    pub target: Target,
    pub servers: Vec<Server>,
    pub drivers: usize,
    pub prefix: String,
    pub tokens: Vec<String>,
}

impl Publisher {
    pub fn new(common: &CommonArgs, servers: Vec<Server>, drivers: usize, run: &str) -> Self {
        let prefix = driver_prefix(run);
        let tokens = if common.target == Target::Waypost {
            (0..drivers)
                .map(|d| token(&common.jwt_secret, &format!("{prefix}{d}"), "driver", None))
                .collect()
        } else {
            Vec::new()
        };
        Self {
            target: common.target,
            servers,
            drivers,
            prefix,
            tokens,
        }
    }

    pub fn request(&self, client: &reqwest::Client, k: usize) -> reqwest::RequestBuilder {
        let d = k % self.drivers;
        let seq = k / self.drivers + 1;
        let server = &self.servers[k % self.servers.len()];
        let lat = 52.5 + (k % 1000) as f64 * 1e-5;
        let lon = 13.4 + (d % 1000) as f64 * 1e-5;
        let ts = epoch_ms();
        match self.target {
            Target::Waypost => client
                .post(format!("{}/v1/drivers/{}{d}/locations", server.base, self.prefix))
                .bearer_auth(&self.tokens[d])
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"device_id":"bench","fixes":[{{"seq":{seq},"ts":{ts},"lat":{lat:.6},"lon":{lon:.6}}}]}}"#
                )),
            Target::Socketio | Target::Ws => client
                .post(format!("{}/api/driver/location", server.base))
                .header("content-type", "application/json")
                .body(format!(
                    r#"{{"driverId":"{}{d}","lat":{lat:.6},"lng":{lon:.6},"seq":{seq},"ts":{ts}}}"#,
                    self.prefix
                )),
        }
    }
}

/// Sum of `waypost_fixes_superseded_total` over the servers: accepted fixes
/// Waypost did not broadcast because a newer fix of the driver was already
/// live. None when no server exposes it (the floor, the peers).
pub async fn superseded_total(client: &reqwest::Client, servers: &[Server]) -> Option<u64> {
    let mut total = None;
    for s in servers {
        let Ok(r) = client.get(format!("{}/metrics", s.base)).send().await else {
            continue;
        };
        if !r.status().is_success() {
            continue;
        }
        let Ok(text) = r.text().await else { continue };
        let n: u64 = text
            .lines()
            .filter(|l| l.starts_with("waypost_fixes_superseded_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .map(|v| v as u64)
            .sum();
        total = Some(total.unwrap_or(0) + n);
    }
    total
}

pub fn http_client(pool: usize, timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .timeout(timeout)
        .http1_only()
        .build()?)
}

/// Samples the servers' RSS every 250 ms and keeps the peak (KiB).
pub fn rss_peak_sampler(pids: Vec<u32>) -> (Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let peak = Arc::new(AtomicU64::new(rss_kib(&pids)));
    let p = Arc::clone(&peak);
    let handle = tokio::spawn(async move {
        loop {
            p.fetch_max(rss_kib(&pids), Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
    (peak, handle)
}

fn mb(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let report = measure(&args).await?;
    print_report(&args.common, &report);
    Ok(())
}

async fn measure(args: &Args) -> anyhow::Result<Value> {
    let common = &args.common;
    let servers = common.servers()?;
    let run = run_id();
    let drivers = args.drivers as usize;
    let subscribers = args.subscribers as usize;
    let rate = f64::from(args.rate);
    let warmup_k = ((rate * f64::from(args.warmup)) / drivers as f64).ceil() as usize * drivers;
    let measured_n = (rate * f64::from(args.duration)).round() as usize;
    let total = warmup_k + measured_n;
    let server_pids = common.server_pid.clone();
    let rss_before = rss_kib(&server_pids);

    let plan = Plan {
        common,
        servers: servers.clone(),
        subscribers,
        drivers,
        run_id: &run,
        max_updates: total,
        measured_from: warmup_k,
        reconnect: None,
    };
    let mut pool = Pool::spawn(args.spread.configs(&plan))?;
    let connected = pool
        .collect("connected", Duration::from_secs(args.connect_phase_timeout))
        .await;
    let connected = match connected {
        Ok(c) => worker::merge_connected(&c),
        Err(e) => {
            pool.quit().await;
            return Err(e);
        }
    };
    if connected["subscribed"].as_u64().unwrap_or(0) == 0 {
        pool.quit().await;
        bail!("no subscription succeeded: {}", connected["errors"]);
    }
    let rss_connected = rss_kib(&server_pids);
    let (rss_peak, sampler) = rss_peak_sampler(server_pids.clone());

    // Publish, open loop.
    let client = http_client(
        args.pub_connections,
        Duration::from_secs(args.request_timeout),
    )?;
    let publisher = Arc::new(Publisher::new(common, servers.clone(), drivers, &run));
    let gate = Arc::new(Semaphore::new(args.pub_connections.max(1)));
    let post_hist = Arc::new(Histogram::new());
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let accepted = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let to_workers = pool.sender();
    let mut watched: Vec<u32> = server_pids.clone();
    watched.extend(pool.pids());
    watched.push(std::process::id());
    let mut window: Option<CpuWindow> = None;
    let mut measured_started = Instant::now();
    let mut max_lag = Duration::ZERO;
    let max_queue_ns = Arc::new(AtomicU64::new(0));
    let last_sent_ns = Arc::new(AtomicU64::new(0));
    // Per driver: answered when the driver's latest POST so far is answered.
    let mut lanes: Vec<Option<oneshot::Receiver<()>>> = (0..drivers).map(|_| None).collect();
    let mut measured_from_ns: Option<u64> = None;
    // Read in the background: the publish loop must not wait for it.
    let mut superseded_from: Option<tokio::task::JoinHandle<Option<u64>>> = None;
    let mut tasks = tokio::task::JoinSet::new();
    let start = tokio::time::Instant::now();
    for k in 0..total {
        let due = start + Duration::from_secs_f64(k as f64 / rate);
        tokio::time::sleep_until(due).await;
        max_lag = max_lag.max(tokio::time::Instant::now().saturating_duration_since(due));
        if k == warmup_k {
            window = Some(CpuWindow::start(&watched));
            measured_started = Instant::now();
            measured_from_ns = Some(mono_ns());
            if common.target == Target::Waypost {
                let (client, servers) = (client.clone(), servers.clone());
                superseded_from = Some(tokio::spawn(async move {
                    superseded_total(&client, &servers).await
                }));
            }
        }
        let measured = k >= warmup_k;
        let (done, lane_done) = oneshot::channel();
        let previous = lanes[k % drivers].replace(lane_done);
        let (gate, hist, statuses, accepted, failed, to_workers) = (
            Arc::clone(&gate),
            Arc::clone(&post_hist),
            Arc::clone(&statuses),
            Arc::clone(&accepted),
            Arc::clone(&failed),
            to_workers.clone(),
        );
        let (publisher, client) = (Arc::clone(&publisher), client.clone());
        let (max_queue_ns, last_sent_ns) = (Arc::clone(&max_queue_ns), Arc::clone(&last_sent_ns));
        let due_ns = mono_ns();
        tasks.spawn(async move {
            if let Some(previous) = previous {
                // Err: the previous POST's task ended without answering
                // (cannot happen short of a panic); go on regardless.
                let _ = previous.await;
            }
            let sent = mono_ns();
            max_queue_ns.fetch_max(sent - due_ns, Ordering::Relaxed);
            last_sent_ns.fetch_max(sent, Ordering::Relaxed);
            to_workers.send(&format!("s {k} {sent}"));
            let req = publisher.request(&client, k);
            let _permit = gate.acquire_owned().await;
            let res = req.send().await;
            let key = match &res {
                Ok(r) => r.status().as_u16().to_string(),
                Err(e) if e.is_timeout() => "timeout".to_owned(),
                Err(_) => "net_error".to_owned(),
            };
            let ok = res.as_ref().is_ok_and(|r| r.status().is_success());
            if let Ok(r) = res {
                let _ = r.bytes().await;
            }
            if measured {
                hist.record_us((mono_ns() - sent) / 1000);
                if ok {
                    accepted.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !ok {
                to_workers.send(&format!("f {k}"));
            }
            *statuses.lock().entry(key).or_default() += 1;
            let _ = done.send(());
        });
        // Reap finished requests so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    let scheduled_secs = measured_started.elapsed().as_secs_f64();
    while tasks.join_next().await.is_some() {}
    // Until the last POST was sent: later than scheduled when drivers queue.
    let publish_secs = measured_from_ns.map_or(scheduled_secs, |from| {
        (last_sent_ns.load(Ordering::Relaxed).saturating_sub(from) as f64 / 1e9).max(scheduled_secs)
    });
    let cpu = window.as_ref().map(CpuWindow::finish).unwrap_or_default();
    let host_busy = window.as_ref().map_or(0.0, CpuWindow::host_busy_pct);
    tokio::time::sleep(Duration::from_secs(u64::from(args.drain))).await;
    let superseded_posts = match superseded_from {
        Some(task) => match (
            task.await.ok().flatten(),
            superseded_total(&client, &servers).await,
        ) {
            (Some(from), Some(to)) => to.saturating_sub(from),
            _ => 0,
        },
        None => 0,
    };
    pool.broadcast("report");
    let reports = pool.collect("report", Duration::from_secs(60)).await;
    sampler.abort();
    let rss_peak_kib = rss_peak.load(Ordering::Relaxed).max(rss_kib(&server_pids));
    pool.quit().await;
    let reports = reports?;

    let sum = |k: &str| {
        reports
            .iter()
            .map(|r| r[k].as_u64().unwrap_or(0))
            .sum::<u64>()
    };
    let expected = sum("expected");
    let received = sum("received");
    let lost = expected.saturating_sub(received);
    // Deliveries the superseded posts would have made (watchers are spread
    // evenly over drivers), at most what is missing.
    let superseded =
        ((superseded_posts as f64 * subscribers as f64 / drivers as f64).round() as u64).min(lost);
    // Updates that reached no watcher in any worker: the server never
    // broadcast them (Waypost broadcasts only a driver's newest fix, so a
    // POST overtaken by a newer one of the same driver is not sent live).
    let mut silent: Option<std::collections::BTreeSet<u64>> = None;
    for r in &reports {
        let mine: std::collections::BTreeSet<u64> = r["silent_updates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_u64)
            .collect();
        silent = Some(match silent {
            None => mine,
            Some(prev) => prev.intersection(&mine).copied().collect(),
        });
    }
    let not_broadcast = silent.map_or(0, |s| s.len());
    let latency = worker::merge_latency(&reports);
    let cpu_of = |pids: &[u32]| -> f64 {
        cpu.iter()
            .filter(|(p, _)| pids.contains(p))
            .map(|(_, c)| c)
            .sum::<f64>()
    };
    let worker_pids = pool_pids_of(&watched, &server_pids);
    let server_cpu: Vec<f64> = server_pids.iter().map(|p| cpu_of(&[*p])).collect();
    let accepted_n = accepted.load(Ordering::Relaxed);
    Ok(json!({
        "kind": "fanout",
        "target": common.target.name(),
        "label": common.label,
        "servers": servers.iter().map(|s| s.base.clone()).collect::<Vec<_>>(),
        "params": {
            "subscribers": subscribers, "drivers": drivers, "rate": args.rate,
            "duration_s": args.duration, "warmup_s": args.warmup,
            "pub_connections": args.pub_connections,
            "encoding": common.encoding.name(),
        },
        "connections": connected,
        "updates": {
            "scheduled": measured_n,
            "accepted": accepted_n,
            "failed": failed.load(Ordering::Relaxed),
            "statuses": *statuses.lock(),
            "achieved_rate_per_s": round1(measured_n as f64 / publish_secs.max(1e-3)),
            "max_schedule_lag_ms": round1(max_lag.as_secs_f64() * 1000.0),
            "max_driver_queue_ms": round1(max_queue_ns.load(Ordering::Relaxed) as f64 / 1e6),
            "post_latency_ms": post_hist.snapshot().summary_ms(),
        },
        "deliveries": {
            "expected": expected,
            "received": received,
            "lost": lost,
            "superseded_posts": superseded_posts,
            "superseded": superseded,
            "lost_net": lost - superseded,
            "loss_pct": if expected == 0 { 0.0 } else { ((lost - superseded) as f64 / expected as f64 * 1e4).round() / 100.0 },
            "duplicates": sum("duplicates") + sum("extra"),
            "reordered": sum("reordered"),
            "updates_never_delivered": not_broadcast,
            "unexpected": sum("unexpected"),
            "disconnects": sum("disconnects"),
            "per_s": round1(received as f64 / publish_secs.max(1e-3)),
            "errors": worker::merge_errors(&reports),
        },
        "latency_ms": latency.summary_ms(),
        "pings_received": worker::merge_pings(&reports),
        "location_bytes": worker::merge_location_bytes(&reports),
        "cpu_pct_of_one_core": {
            "server": server_cpu,
            "server_total": round1(server_cpu.iter().sum()),
            "client": round1(cpu_of(&worker_pids) + cpu_of(&[std::process::id()])),
            "host_busy_pct_of_all_cores": host_busy,
        },
        "rss_mb": {
            "server_before": mb(rss_before),
            "server_connected": mb(rss_connected),
            "server_peak": mb(rss_peak_kib),
        },
        "machine": machine(),
    }))
}

fn pool_pids_of(watched: &[u32], servers: &[u32]) -> Vec<u32> {
    let me = std::process::id();
    watched
        .iter()
        .copied()
        .filter(|p| !servers.contains(p) && *p != me)
        .collect()
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

fn print_report(common: &CommonArgs, r: &Value) {
    if common.json {
        println!("{r}");
        return;
    }
    let c = &r["connections"];
    let u = &r["updates"];
    let d = &r["deliveries"];
    let l = &r["latency_ms"];
    let cpu = &r["cpu_pct_of_one_core"];
    println!(
        "fanout {} {} ({}): {} watchers / {} drivers / {} posts/s for {} s",
        r["target"],
        r["label"],
        r["params"]["encoding"],
        r["params"]["subscribers"],
        r["params"]["drivers"],
        r["params"]["rate"],
        r["params"]["duration_s"]
    );
    println!(
        "  connected {} subscribed {} failed {} in {} s  errors {}",
        c["connected"], c["subscribed"], c["failed"], c["connect_s"], c["errors"]
    );
    println!(
        "  posts: scheduled {} accepted {} failed {} (achieved {}/s, max lag {} ms, max wait behind the driver's previous POST {} ms, POST p99 {} ms)",
        u["scheduled"], u["accepted"], u["failed"], u["achieved_rate_per_s"],
        u["max_schedule_lag_ms"], u["max_driver_queue_ms"], u["post_latency_ms"]["p99"]
    );
    println!(
        "  deliveries: expected {} received {} lost {} + superseded {} ({} %; {} posts reached nobody) dup {} reordered {} unexpected {} -> {}/s",
        d["expected"],
        d["received"],
        d["lost_net"],
        d["superseded"],
        d["loss_pct"],
        d["updates_never_delivered"],
        d["duplicates"],
        d["reordered"],
        d["unexpected"],
        d["per_s"]
    );
    println!(
        "  latency ms: p50 {} p90 {} p99 {} p999 {} max {}",
        l["p50"], l["p90"], l["p99"], l["p999"], l["max"]
    );
    println!("  server pings received: {}", r["pings_received"]);
    println!("  location frames received: {}", r["location_bytes"]);
    println!(
        "  CPU % of a core: server {} (total {}), client {}, host busy {} % of all cores",
        cpu["server"], cpu["server_total"], cpu["client"], cpu["host_busy_pct_of_all_cores"]
    );
    println!(
        "  server RSS MB: before {} connected {} peak {}",
        r["rss_mb"]["server_before"], r["rss_mb"]["server_connected"], r["rss_mb"]["server_peak"]
    );
}
