//! A driver process for the kill -9 test (`tests/tests/driver_crash.rs`):
//! records fix number `i` (its index in `altitude_m`) every few ms through
//! the real SDK (SQLite buffer, reqwest uploader) and uploads them. Killed
//! at random points and restarted, it resumes after the last fix its buffer
//! recorded. Prints `recorded {i} {seq}` after each commit and `done` once
//! everything up to `--total` is recorded and acknowledged.
//!
//! Usage: driver_crash URL DRIVER_ID TOKEN DB_PATH TOTAL INTERVAL_MS

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use waypost_e2e::driver::{eager_driver_config, Eager};
use waypost_sdk::env::ManualEnvironment;
use waypost_sdk::{Driver, Location, RecordOutcome, StaticToken};

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, driver_id, token, db, total, interval_ms] = args.as_slice() else {
        anyhow::bail!("usage: driver_crash URL DRIVER_ID TOKEN DB_PATH TOTAL INTERVAL_MS");
    };
    let total: u64 = total.parse()?;
    let interval = Duration::from_millis(interval_ms.parse()?);
    // Record everything, upload often.
    let eager = Eager {
        upload_interval_ms: 150,
        max_batch_fixes: 50,
        request_timeout: Duration::from_secs(2),
        backoff_cap: Duration::from_millis(500),
    };
    let config = eager_driver_config(url, driver_id, "crash-phone", db, eager);
    let driver = Driver::open(
        config,
        Arc::new(StaticToken(token.clone())),
        None,
        Arc::new(ManualEnvironment::default()),
    )?;
    driver.start()?;
    let last = driver.last_recorded();
    let mut next = last
        .as_ref()
        .and_then(|f| f.altitude_m)
        .map_or(0, |a| a as u64 + 1);
    let mut last_ts = last.map_or(0, |f| f.ts);
    let mut out = std::io::stdout().lock();
    while next < total {
        let ts = now_ms().max(last_ts + 1);
        let mut loc = Location::new(ts, 52.0 + next as f64 * 1e-7, 13.0);
        loc.altitude_m = Some(next as f64);
        match driver.record(loc)? {
            RecordOutcome::Recorded { seq } => {
                writeln!(out, "recorded {next} {seq}")?;
                out.flush()?;
                next += 1;
                last_ts = ts;
            }
            RecordOutcome::Dropped { reason } => anyhow::bail!("fix {next} dropped: {reason:?}"),
        }
        tokio::time::sleep(interval).await;
    }
    driver.flush();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while driver.stats()?.pending > 0 {
        anyhow::ensure!(std::time::Instant::now() < deadline, "buffer did not drain");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    writeln!(out, "done")?;
    out.flush()?;
    driver.shutdown().await;
    Ok(())
}
