//! `ingest`: drivers upload batches of fixes as fast as the server answers
//! (closed loop, `--concurrency` requests in flight). Reports fixes accepted
//! per second (from the server's `accepted` counts) and request latency.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use parking_lot::Mutex;
use serde_json::{json, Value};

use crate::common::{
    epoch_ms, machine, rss_kib, run_id, token, CommonArgs, CpuWindow, Histogram, Target,
};
use crate::fanout::{http_client, round1};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Drivers posting.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub drivers: u32,
    /// Fixes per request.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch: u32,
    /// Measured seconds.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub duration: u32,
    /// Unmeasured seconds first.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(0..=60))]
    pub warmup: u32,
    /// Requests in flight (task t posts for driver t mod D as device t).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Seconds per request.
    #[arg(long, default_value_t = 10)]
    pub request_timeout: u64,
}

#[derive(Default)]
struct Totals {
    requests: AtomicU64,
    fixes: AtomicU64,
    duplicates: AtomicU64,
    failed: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    if common.target != Target::Waypost {
        bail!("ingest: only --target waypost has a batch ingest API");
    }
    let servers = common.servers()?;
    let run = run_id();
    let drivers = args.drivers as usize;
    let concurrency = args.concurrency.unwrap_or(drivers).max(1);
    let client = http_client(concurrency, Duration::from_secs(args.request_timeout))?;
    let tokens: Vec<String> = (0..drivers)
        .map(|d| token(&common.jwt_secret, &format!("i{run}-d{d}"), "driver", None))
        .collect();
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let totals = Arc::new(Totals::default());
    let hist = Arc::new(Histogram::new());
    let statuses: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..concurrency {
        let d = t % drivers;
        let url = format!(
            "{}/v1/drivers/i{run}-d{d}/locations",
            servers[t % servers.len()].base
        );
        let auth = format!("Bearer {}", tokens[d]);
        let (client, measuring, stop, totals, hist, statuses) = (
            client.clone(),
            Arc::clone(&measuring),
            Arc::clone(&stop),
            Arc::clone(&totals),
            Arc::clone(&hist),
            Arc::clone(&statuses),
        );
        let batch = args.batch as u64;
        tasks.spawn(async move {
            let mut seq = 1u64;
            let mut body = String::with_capacity(80 * batch as usize + 64);
            while !stop.load(Ordering::Relaxed) {
                body.clear();
                let ts = epoch_ms();
                let _ = write!(body, r#"{{"device_id":"dev{t}","fixes":["#);
                for j in 0..batch {
                    if j > 0 {
                        body.push(',');
                    }
                    let lat = 52.5 + ((seq + j) % 10_000) as f64 * 1e-6;
                    let _ = write!(
                        body,
                        r#"{{"seq":{},"ts":{ts},"lat":{lat:.6},"lon":13.4,"accuracy_m":5.0}}"#,
                        seq + j
                    );
                }
                body.push_str("]}");
                seq += batch;
                let started = Instant::now();
                let res = client
                    .post(&url)
                    .header("authorization", &auth)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let (key, accepted, dups) = match res {
                    Ok(r) => {
                        let status = r.status();
                        let v: Value = r.json().await.unwrap_or(Value::Null);
                        (
                            status.as_u16().to_string(),
                            v["accepted"].as_u64().filter(|_| status.is_success()),
                            v["duplicates"].as_u64().unwrap_or(0),
                        )
                    }
                    Err(e) if e.is_timeout() => ("timeout".to_owned(), None, 0),
                    Err(_) => ("net_error".to_owned(), None, 0),
                };
                if measuring.load(Ordering::Relaxed) {
                    hist.record_us(started.elapsed().as_micros() as u64);
                    totals.requests.fetch_add(1, Ordering::Relaxed);
                    match accepted {
                        Some(n) => {
                            totals.fixes.fetch_add(n, Ordering::Relaxed);
                            totals.duplicates.fetch_add(dups, Ordering::Relaxed);
                        }
                        None => {
                            totals.failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    *statuses.lock().entry(key).or_default() += 1;
                } else if accepted.is_none() {
                    // Do not hammer a refusing server during warm-up.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_secs(u64::from(args.warmup))).await;
    let mut watched = common.server_pid.clone();
    watched.push(std::process::id());
    let window = CpuWindow::start(&watched);
    let started = Instant::now();
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(u64::from(args.duration))).await;
    measuring.store(false, Ordering::Relaxed);
    let secs = started.elapsed().as_secs_f64();
    let cpu = window.finish();
    let host_busy = window.host_busy_pct();
    stop.store(true, Ordering::Relaxed);
    let _ = tokio::time::timeout(Duration::from_secs(args.request_timeout + 1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();

    let fixes = totals.fixes.load(Ordering::Relaxed);
    let server_cpu: Vec<f64> = cpu
        .iter()
        .filter(|(p, _)| common.server_pid.contains(p))
        .map(|(_, c)| *c)
        .collect();
    let client_cpu = cpu
        .iter()
        .find(|(p, _)| *p == std::process::id())
        .map_or(0.0, |(_, c)| *c);
    let report = json!({
        "kind": "ingest",
        "target": common.target.name(),
        "label": common.label,
        "servers": servers.iter().map(|s| s.base.clone()).collect::<Vec<_>>(),
        "params": {
            "drivers": drivers, "batch": args.batch, "concurrency": concurrency,
            "duration_s": args.duration,
        },
        "requests": totals.requests.load(Ordering::Relaxed),
        "failed_requests": totals.failed.load(Ordering::Relaxed),
        "statuses": *statuses.lock(),
        "fixes_accepted": fixes,
        "duplicates": totals.duplicates.load(Ordering::Relaxed),
        "fixes_per_s": round1(fixes as f64 / secs),
        "requests_per_s": round1(totals.requests.load(Ordering::Relaxed) as f64 / secs),
        "request_latency_ms": hist.snapshot().summary_ms(),
        "cpu_pct_of_one_core": {
            "server": server_cpu,
            "server_total": round1(server_cpu.iter().sum()),
            "client": client_cpu,
            "host_busy_pct_of_all_cores": host_busy,
        },
        "server_rss_mb": round1(rss_kib(&common.server_pid) as f64 / 1024.0),
        "machine": machine(),
    });
    if common.json {
        println!("{report}");
    } else {
        let l = &report["request_latency_ms"];
        println!(
            "ingest {} {}: {} drivers, batch {}, {} in flight, {} s",
            report["target"], report["label"], drivers, args.batch, concurrency, args.duration
        );
        println!(
            "  {} fixes/s accepted ({} requests/s, {} failed, statuses {})",
            report["fixes_per_s"],
            report["requests_per_s"],
            report["failed_requests"],
            report["statuses"]
        );
        println!(
            "  request latency ms: p50 {} p90 {} p99 {} max {}",
            l["p50"], l["p90"], l["p99"], l["max"]
        );
        println!(
            "  CPU % of a core: server {} client {} (host busy {} % of all cores)",
            report["cpu_pct_of_one_core"]["server_total"], client_cpu, host_busy
        );
    }
    Ok(())
}
