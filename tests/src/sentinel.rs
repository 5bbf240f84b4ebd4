//! A Sentinel setup owned by a test: a primary, a replica and three
//! sentinels (`redis-server --sentinel`, Debian's redis-server), on fixed
//! ports from a base the test picks (`base+1` primary, `base+2` replica,
//! `base+11..=13` sentinels).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::RedisServer;

/// The master name the sentinels monitor.
pub const MASTER: &str = "wp";

pub struct SentinelSet {
    pub primary: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<Child>,
    pub sentinel_ports: Vec<u16>,
    dir: PathBuf,
}

impl SentinelSet {
    /// Starts everything and waits until the sentinels know the replica
    /// and the replica is in sync.
    pub async fn start(base: u16) -> Result<Self> {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let (p, r) = (base + 1, base + 2);
        let primary = RedisServer::start_with_args(p, Vec::new()).await?;
        let replica = RedisServer::start_with_args(
            r,
            vec!["--replicaof".into(), "127.0.0.1".into(), p.to_string()],
        )
        .await?;
        let dir = std::env::temp_dir().join(format!("waypost-sentinel-{base}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let mut sentinels = Vec::new();
        let mut sentinel_ports = Vec::new();
        for i in 0..3u16 {
            let port = base + 11 + i;
            let conf = dir.join(format!("sentinel-{port}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER} 127.0.0.1 {p} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 3000\n\
                     sentinel parallel-syncs {MASTER} 1\n",
                    dir.display()
                ),
            )?;
            let child = Command::new(&bin)
                .arg(&conf)
                .arg("--sentinel")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("spawning {bin} --sentinel"))?;
            sentinels.push(child);
            sentinel_ports.push(port);
        }
        let me = Self {
            primary,
            replica,
            sentinels,
            sentinel_ports,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let mut ready = query(r, &["INFO", "replication"])
                .await
                .is_ok_and(|s| s.contains("master_link_status:up"));
            for &s in &me.sentinel_ports {
                ready &= query(s, &["SENTINEL", "replicas", MASTER])
                    .await
                    .is_ok_and(|s| s.contains(&r.to_string()));
            }
            if ready {
                return Ok(me);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("sentinel setup on {base} not ready within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `--redis-sentinel` and `--redis-master` for `waypost serve`.
    pub fn serve_args(&self) -> Vec<String> {
        let list: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        vec![
            "--redis-sentinel".into(),
            list.join(","),
            "--redis-master".into(),
            MASTER.into(),
        ]
    }

    /// The primary's port as the first sentinel reports it.
    pub async fn primary_port(&self) -> Result<u16> {
        let reply = query(
            self.sentinel_ports[0],
            &["SENTINEL", "get-master-addr-by-name", MASTER],
        )
        .await?;
        // `*2 $9 127.0.0.1 $4 6601`: the last line is the port.
        reply
            .lines()
            .rev()
            .find(|l| !l.is_empty())
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("unexpected sentinel reply {reply:?}"))
    }
}

impl Drop for SentinelSet {
    fn drop(&mut self) {
        for c in &mut self.sentinels {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Sends one command (inline RESP array) and returns the raw reply text.
pub async fn query(port: u16, args: &[&str]) -> Result<String> {
    let mut s = tokio::time::timeout(
        Duration::from_secs(1),
        TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    .context("connect timed out")??;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes()).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut out = Vec::new();
    // Replies here are small; read what arrives within a short quiet time.
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(100), s.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
