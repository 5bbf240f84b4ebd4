//! `waypost-bench`: load generator and benchmarks (see BENCHMARKS.md).
//!
//! One binary, one module per subcommand. Every run is bounded in time and
//! count, talks only to loopback addresses, prints a human summary and, with
//! `--json`, one JSON object on stdout.

use clap::{Parser, Subcommand};

mod chat;
mod common;
mod connections;
mod fanout;
mod floor;
mod ingest;
mod order_eta;
mod push;
mod replay;
mod storm;
mod worker;

#[derive(Parser)]
#[command(
    name = "waypost-bench",
    version,
    about = "Waypost load generator: fan-out, idle connections, ingest, reconnect storms"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// N WebSocket watchers over D drivers, R location posts/s; end-to-end latency.
    Fanout(fanout::Args),
    /// Open N idle WebSockets, hold them, report server RSS per connection.
    Connections(connections::Args),
    /// Batched location ingest throughput (fixes/s) and request latency.
    Ingest(ingest::Args),
    /// Restart the server under N connected subscribers; time until all are back.
    Storm(storm::Args),
    /// Chat rooms: members, one sender per room; ack/delivery latency, order and loss checks.
    Chat(chat::Args),
    /// Replay a GPS trace through the driver SDK in simulated time (vs. the seed's 5 s POSTs).
    SdkReplay(replay::Args),
    /// Arrival and ETA accuracy of the order estimator on GPS traces (offline).
    OrderEta(order_eta::Args),
    /// Push pipeline with the real FCM client against a loopback stand-in:
    /// event → provider request latency and pushes/s per process.
    Push(push::Args),
    /// Insert rate of the driver SDK's SQLite buffer (batched transactions).
    SdkBuffer(replay::BufferArgs),
    /// The floor: a minimal server speaking Waypost's subscribe/ingest wire (no auth, no engine).
    Floor(floor::Args),
    /// Internal: a subscriber process forked by the other subcommands.
    #[command(hide = true)]
    Worker(worker::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    common::raise_nofile_limit();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Fanout(args) => fanout::run(args).await,
            Command::Connections(args) => connections::run(args).await,
            Command::Ingest(args) => ingest::run(args).await,
            Command::Storm(args) => storm::run(args).await,
            Command::Chat(args) => chat::run(args).await,
            Command::SdkReplay(args) => replay::run(args).await,
            Command::OrderEta(args) => order_eta::run(args).await,
            Command::Push(args) => push::run(args).await,
            Command::SdkBuffer(args) => replay::run_buffer(args).await,
            Command::Floor(args) => floor::run(args).await,
            Command::Worker(args) => worker::run(args).await,
        }
    })
}
