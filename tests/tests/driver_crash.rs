//! Kill -9: a driver process (`src/bin/driver_crash.rs`) records and
//! uploads through the real SDK and is SIGKILLed at seeded random points,
//! then restarted on the same buffer. At the end every fix it ever recorded
//! is on the server exactly once, in order — nothing acknowledged or
//! committed is lost, nothing is stored twice (not even under a new seq).
//!
//! `WAYPOST_DRIVER_E2E_SEEDS=N` runs N seeds instead of the default 1.

use std::process::Stdio;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use waypost_e2e::{token, unique, EngineChoice, Server};
use waypost_protocol::{Role, TrailResponse};

const TOTAL: u64 = 400;

/// Runs the driver once; kills it after `kill_after` (if any). Returns the
/// fix indices it reported as recorded and whether it finished.
async fn run_driver(
    server: &Server,
    driver_id: &str,
    db: &str,
    kill_after: Option<Duration>,
) -> (Vec<u64>, bool) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_driver_crash"))
        .args([
            &server.http(""),
            driver_id,
            &token(driver_id, Role::Driver, &[]),
            db,
            &TOTAL.to_string(),
            "8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn driver_crash");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut recorded = Vec::new();
    let mut done = false;
    let read = async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line == "done" {
                done = true;
                break;
            }
            if let Some(rest) = line.strip_prefix("recorded ") {
                let i: u64 = rest.split(' ').next().unwrap().parse().unwrap();
                recorded.push(i);
            }
        }
    };
    match kill_after {
        Some(after) => {
            let _ = tokio::time::timeout(after, read).await;
            child.start_kill().unwrap(); // SIGKILL
        }
        None => {
            tokio::time::timeout(Duration::from_secs(90), read)
                .await
                .expect("final run finishes");
        }
    }
    let status = child.wait().await.unwrap();
    if kill_after.is_none() {
        assert!(status.success(), "final run failed: {status}");
    }
    (recorded, done)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_driver_loses_and_duplicates_nothing() {
    let server = Server::start(EngineChoice::Memory).await.unwrap();
    let seeds: u64 = std::env::var("WAYPOST_DRIVER_E2E_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    for seed in 1..=seeds {
        let mut rng = StdRng::seed_from_u64(seed);
        let driver_id = unique("drv-kill");
        let dir = std::env::temp_dir().join(unique("driver-kill"));
        std::fs::create_dir_all(&dir).unwrap();
        let db = dir.join("buffer.db").to_string_lossy().into_owned();
        let mut reported = Vec::new();
        let mut kills = 0;
        for _ in 0..6 {
            let after = Duration::from_millis(rng.random_range(150..1200));
            let (rec, done) = run_driver(&server, &driver_id, &db, Some(after)).await;
            reported.extend(rec);
            if done {
                break;
            }
            kills += 1;
        }
        let (rec, done) = run_driver(&server, &driver_id, &db, None).await;
        reported.extend(rec);
        assert!(done);
        assert!(kills >= 3, "seed {seed}: only {kills} kills landed");

        let resp = reqwest::Client::new()
            .get(server.http(&format!("/v1/drivers/{driver_id}/trail?limit=1000")))
            .bearer_auth(token("svc", Role::Service, &[]))
            .send()
            .await
            .unwrap();
        let trail: TrailResponse = resp.json().await.unwrap();
        let seqs: Vec<u64> = trail.fixes.iter().map(|f| f.seq).collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "seed {seed}: seqs not strictly increasing"
        );
        let indices: Vec<u64> = trail
            .fixes
            .iter()
            .map(|f| f.altitude_m.unwrap() as u64)
            .collect();
        let expected: Vec<u64> = (0..TOTAL).collect();
        assert_eq!(
            indices, expected,
            "seed {seed}: every fix exactly once, in order ({kills} kills)"
        );
        // Everything the process ever reported as recorded is there (the
        // reported list can miss a fix committed just before a kill, but
        // never report one that is not on the server).
        assert!(reported.iter().all(|i| *i < TOTAL));
        eprintln!(
            "seed {seed}: {kills} kills, {} fixes on the server",
            indices.len()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
