//! `chat`: R rooms, each with M member WebSockets subscribed to `chat:{room}`
//! and one sender posting `send` frames at a fixed rate (spread over the
//! server URLs, so with two processes on one Redis every room crosses
//! processes). Reports ack latency (send → `sent`), delivery latency
//! (send → `message` at each member, same host clock), and checks the chat
//! guarantees on the way: every member sees every seq exactly once, in
//! order, with no gap.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{
    machine, mono_ns, run_id, token, ws_connect, CommonArgs, CpuWindow, Histogram, Server, Target,
};
use crate::fanout::round1;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Chat rooms.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rooms: u32,
    /// Subscribed members per room.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub members: u32,
    /// Senders per room, each on the next server URL (two senders on two
    /// processes make their publishes race, which the server must reorder).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub senders: u32,
    /// Messages per second per sender.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rate: u32,
    /// Measured seconds of sending.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=600))]
    pub duration: u32,
}

#[derive(Default)]
struct Check {
    received: AtomicU64,
    duplicates: AtomicU64,
    out_of_order: AtomicU64,
    gaps: AtomicU64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let common = &args.common;
    if common.target != Target::Waypost {
        bail!("chat: only --target waypost has chat rooms");
    }
    let servers = common.servers()?;
    let run = run_id();
    let rooms: Vec<String> = (0..args.rooms)
        .map(|r| format!("bench-{run}-{r}"))
        .collect();
    let delivery = Arc::new(Histogram::new());
    let acks = Arc::new(Histogram::new());
    let check = Arc::new(Check::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let src = Ipv4Addr::new(127, 0, 0, 1);

    // Members first, all subscribed before anyone sends.
    let t0 = Instant::now();
    let mut members = Vec::new();
    let mut n = 0usize;
    for (r, room) in rooms.iter().enumerate() {
        for m in 0..args.members {
            let server = &servers[n % servers.len()];
            n += 1;
            // One user per connection: the per-user connection cap is 16.
            let user = format!("m-{r}-{m}");
            let tok = token(
                &common.jwt_secret,
                &user,
                "buyer",
                Some(vec![format!("chat:{room}")]),
            );
            let mut ws = ws_connect(server, src, &format!("/v1/ws?token={tok}"))
                .await
                .with_context(|| format!("member {n}"))?;
            let sub = json!({"type":"subscribe","channel":format!("chat:{room}")});
            ws.send(Message::Text(sub.to_string().into())).await?;
            loop {
                let Some(msg) = ws.next().await else {
                    bail!("closed before subscribed")
                };
                if let Message::Text(t) = msg? {
                    if t.contains("\"subscribed\"") {
                        break;
                    }
                }
            }
            members.push(tokio::spawn(member(
                ws,
                Arc::clone(&delivery),
                Arc::clone(&check),
                Arc::clone(&stop),
            )));
        }
    }
    let connect_s = t0.elapsed().as_secs_f64();

    let cpu = CpuWindow::start(&common.server_pid);
    let started = Instant::now();
    let mut senders = Vec::new();
    for (i, room) in rooms.iter().enumerate() {
        for k in 0..args.senders as usize {
            // Senders sit on the servers after the room's first member's.
            let server = servers[(i * args.members as usize + 1 + k) % servers.len()].clone();
            senders.push(tokio::spawn(sender(
                server,
                room.clone(),
                format!("sender-{k}-{room}"),
                common.jwt_secret.clone(),
                args.rate,
                Duration::from_secs(u64::from(args.duration)),
                Arc::clone(&acks),
                Arc::clone(&sent),
            )));
        }
    }
    let mut send_errors = 0u64;
    for s in senders {
        if s.await
            .map_err(anyhow::Error::from)
            .and_then(|r| r)
            .is_err()
        {
            send_errors += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let sent_n = sent.load(Ordering::Relaxed);
    let expected = sent_n * u64::from(args.members);
    // Let the last deliveries land (bounded).
    let drain_until = Instant::now() + Duration::from_secs(5);
    while check.received.load(Ordering::Relaxed) < expected && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu_pct = cpu.finish();
    stop.store(true, Ordering::Relaxed);
    for m in members {
        m.abort();
    }
    let received = check.received.load(Ordering::Relaxed);
    let report = json!({
        "bench": "chat",
        "target": common.target.name(),
        "label": common.label,
        "servers": servers.len(),
        "params": {"rooms": args.rooms, "members": args.members, "senders_per_room": args.senders, "rate_per_sender": args.rate, "duration_s": args.duration},
        "connect_s": round1(connect_s),
        "messages": {"sent": sent_n, "per_s": round1(sent_n as f64 / elapsed), "sender_errors": send_errors},
        "deliveries": {
            "expected": expected, "received": received,
            "lost": expected.saturating_sub(received),
            "duplicates": check.duplicates.load(Ordering::Relaxed),
            "out_of_order": check.out_of_order.load(Ordering::Relaxed),
            "gaps": check.gaps.load(Ordering::Relaxed),
            "per_s": round1(received as f64 / elapsed),
        },
        "ack_latency_ms": acks.snapshot().summary_ms(),
        "delivery_latency_ms": delivery.snapshot().summary_ms(),
        "cpu_pct_of_one_core": cpu_pct.iter().map(|(pid, pct)| json!({"pid": pid, "pct": round1(*pct)})).collect::<Vec<_>>(),
        "machine": machine(),
    });
    if common.json {
        println!("{report}");
    } else {
        let d = &report["deliveries"];
        println!(
            "chat {}: {} rooms x {} members, {} sender(s) x {} msg/s per room, {} s, {} server(s)",
            common.label,
            args.rooms,
            args.members,
            args.senders,
            args.rate,
            args.duration,
            servers.len()
        );
        println!(
            "  sent {} ({}/s, sender errors {send_errors}); deliveries expected {} received {} lost {} dup {} out-of-order {} gaps {} ({}/s)",
            sent_n, report["messages"]["per_s"], d["expected"], d["received"], d["lost"],
            d["duplicates"], d["out_of_order"], d["gaps"], d["per_s"]
        );
        let a = &report["ack_latency_ms"];
        let l = &report["delivery_latency_ms"];
        println!(
            "  ack ms: p50 {} p99 {} max {}",
            a["p50"], a["p99"], a["max"]
        );
        println!(
            "  delivery ms: p50 {} p99 {} max {}",
            l["p50"], l["p99"], l["max"]
        );
        println!(
            "  server CPU % of a core: {}",
            report["cpu_pct_of_one_core"]
        );
    }
    if received < expected {
        bail!("{} deliveries lost", expected - received);
    }
    Ok(())
}

async fn member(
    mut ws: crate::common::Ws,
    delivery: Arc<Histogram>,
    check: Arc<Check>,
    stop: Arc<AtomicBool>,
) {
    let mut last: HashMap<String, u64> = HashMap::new();
    while let Some(Ok(msg)) = ws.next().await {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Message::Text(t) = msg else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        if v["type"] != "message" {
            continue;
        }
        let now = mono_ns();
        let seq = v["seq"].as_u64().unwrap_or(0);
        let room = v["room"].as_str().unwrap_or_default().to_owned();
        let prev = last.entry(room).or_insert(0);
        if seq <= *prev {
            if seq == *prev {
                check.duplicates.fetch_add(1, Ordering::Relaxed);
            } else {
                check.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
            continue;
        }
        if seq != *prev + 1 {
            check.gaps.fetch_add(1, Ordering::Relaxed);
        }
        *prev = seq;
        check.received.fetch_add(1, Ordering::Relaxed);
        if let Some(sent_ns) = v["body"].as_str().and_then(|b| b.parse::<u64>().ok()) {
            delivery.record_us(now.saturating_sub(sent_ns) / 1000);
        }
    }
}

/// Sends at `rate`/s for `duration` (open loop on a schedule; a send waits
/// for its ack before the next, so a slow server shows as ack latency).
#[allow(clippy::too_many_arguments)]
async fn sender(
    server: Server,
    room: String,
    user: String,
    secret: String,
    rate: u32,
    duration: Duration,
    acks: Arc<Histogram>,
    sent: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let tok = token(&secret, &user, "vendor", Some(vec![format!("chat:{room}")]));
    let mut ws = ws_connect(
        &server,
        Ipv4Addr::new(127, 0, 0, 1),
        &format!("/v1/ws?token={tok}"),
    )
    .await?;
    let every = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut tick = tokio::time::interval(every);
    let end = Instant::now() + duration;
    let mut i = 0u64;
    while Instant::now() < end {
        tick.tick().await;
        i += 1;
        let t = mono_ns();
        let frame =
            json!({"type":"send","room":room,"client_id":format!("c-{i}"),"body":t.to_string()});
        ws.send(Message::Text(frame.to_string().into())).await?;
        let ack_by = Instant::now() + Duration::from_secs(10);
        loop {
            let msg = tokio::time::timeout_at(ack_by.into(), ws.next())
                .await
                .context("no ack within 10 s")?;
            let Some(msg) = msg else {
                bail!("sender connection closed")
            };
            if let Message::Text(txt) = msg? {
                if txt.contains("\"sent\"") {
                    acks.record_us((mono_ns() - t) / 1000);
                    sent.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                if txt.contains("\"error\"") {
                    bail!("send refused: {txt}");
                }
            }
        }
    }
    Ok(())
}
