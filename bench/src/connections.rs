//! `connections`: open N idle WebSockets (each subscribed to one driver's
//! channel, like the peers' memory runs), hold them, and report the server's
//! RSS per connection and the time to connect them all.

use std::time::Duration;

use anyhow::bail;
use serde_json::{json, Value};

use crate::common::{machine, rss_kib, run_id, CommonArgs};
use crate::fanout::round1;
use crate::worker::{self, Plan, Pool, SpreadArgs};

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub spread: SpreadArgs,
    /// Idle WebSockets to open (spread over the `--url` servers).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub count: u32,
    /// Drivers the connections subscribe to (connection i follows driver i mod D).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub drivers: u32,
    /// Seconds to hold the connections before measuring again.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(0..=600))]
    pub hold: u32,
    /// Seconds for the whole connect phase.
    #[arg(long, default_value_t = 300)]
    pub connect_phase_timeout: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    let servers = common.servers()?;
    let run = run_id();
    let pids = common.server_pid.clone();
    let rss_before = rss_kib(&pids);
    let plan = Plan {
        common,
        servers: servers.clone(),
        subscribers: args.count as usize,
        drivers: args.drivers as usize,
        run_id: &run,
        max_updates: 0,
        measured_from: 0,
        reconnect: None,
    };
    let mut pool = Pool::spawn(args.spread.configs(&plan))?;
    let worker_pids = pool.pids();
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
    let rss_connected = rss_kib(&pids);
    tokio::time::sleep(Duration::from_secs(u64::from(args.hold))).await;
    let rss_held = rss_kib(&pids);
    let client_rss = rss_kib(&worker_pids);
    pool.broadcast("report");
    let reports = pool.collect("report", Duration::from_secs(30)).await;
    pool.quit().await;
    let disconnects: u64 = reports
        .map(|r| {
            r.iter()
                .map(|v| v["disconnects"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0);
    let subscribed = connected["subscribed"].as_u64().unwrap_or(0);
    if subscribed == 0 {
        bail!("no connection succeeded: {}", connected["errors"]);
    }
    let per_conn_kib = rss_held.saturating_sub(rss_before) as f64 / subscribed as f64;
    let base_mib = rss_before as f64 / 1024.0 / pids.len().max(1) as f64;
    let model = |n: f64| round1(base_mib + n * per_conn_kib / 1024.0);
    let report = json!({
        "kind": "connections",
        "target": common.target.name(),
        "label": common.label,
        "servers": servers.iter().map(|s| s.base.clone()).collect::<Vec<_>>(),
        "server_processes": pids.len(),
        "params": { "count": args.count, "drivers": args.drivers, "hold_s": args.hold, "encoding": common.encoding.name() },
        "connections": connected,
        "disconnects_while_held": disconnects,
        "rss_mb": {
            "server_before": round1(rss_before as f64 / 1024.0),
            "server_connected": round1(rss_connected as f64 / 1024.0),
            "server_after_hold": round1(rss_held as f64 / 1024.0),
            "client_workers": round1(client_rss as f64 / 1024.0),
        },
        "rss_per_connection_kib": round1(per_conn_kib),
        "memory_model_mib_per_instance": {
            "base": round1(base_mib),
            "100k": model(100_000.0),
            "1M": model(1_000_000.0),
        },
        "machine": machine(),
    });
    print_report(common, &report);
    Ok(())
}

fn print_report(common: &CommonArgs, r: &Value) {
    if common.json {
        println!("{r}");
        return;
    }
    let c = &r["connections"];
    println!(
        "connections {} {} ({}): {} asked over {} server(s)",
        r["target"],
        r["label"],
        r["params"]["encoding"],
        r["params"]["count"],
        r["servers"].as_array().map_or(0, Vec::len)
    );
    println!(
        "  subscribed {} failed {} in {} s, disconnects while held {}  errors {}",
        c["subscribed"], c["failed"], c["connect_s"], r["disconnects_while_held"], c["errors"]
    );
    println!(
        "  server RSS MB: before {} connected {} after hold {}  -> {} KiB per connection",
        r["rss_mb"]["server_before"],
        r["rss_mb"]["server_connected"],
        r["rss_mb"]["server_after_hold"],
        r["rss_per_connection_kib"]
    );
    println!(
        "  model per instance: base {} MiB, 100k connections {} MiB, 1M connections {} MiB",
        r["memory_model_mib_per_instance"]["base"],
        r["memory_model_mib_per_instance"]["100k"],
        r["memory_model_mib_per_instance"]["1M"]
    );
}
