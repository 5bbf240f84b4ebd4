//! A Redis Cluster owned by a test: 6 `redis-server --cluster-enabled yes`
//! on free ports joined by `redis-cli --cluster create --cluster-replicas 1`
//! (3 primaries, 3 replicas), with the faults the suites inject: `kill -9`
//! of a primary (its replica is promoted) and a live
//! `redis-cli --cluster reshard`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use redis::Value;
use tokio::process::Command;

use crate::{free_port, RedisServer};

/// How long a node may be unreachable before the cluster fails it over.
pub const NODE_TIMEOUT_MS: u64 = 1000;

pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

/// One row of `CLUSTER SLOTS`: a slot range and its primary's port.
#[derive(Debug, Clone)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary_port: u16,
    pub primary_id: String,
}

fn cli_bin() -> String {
    std::env::var("REDIS_CLI_BIN").unwrap_or_else(|_| "redis-cli".into())
}

impl RedisCluster {
    /// Starts 6 nodes and creates the cluster; returns once every node sees
    /// `cluster_state:ok` and knows all 6.
    pub async fn start() -> Result<Self> {
        let mut nodes = Vec::new();
        for _ in 0..6 {
            let port = free_port()?;
            let dir = std::env::temp_dir()
                .join(format!("waypost-cluster-{port}-{}", rand::random::<u32>()));
            std::fs::create_dir_all(&dir)?;
            let extra = vec![
                "--cluster-enabled".into(),
                "yes".into(),
                "--cluster-config-file".into(),
                "nodes.conf".into(),
                "--cluster-node-timeout".into(),
                NODE_TIMEOUT_MS.to_string(),
                // A replica whose primary was down long takes over anyway.
                "--cluster-replica-validity-factor".into(),
                "0".into(),
            ];
            nodes.push(RedisServer::start_in(port, dir, extra).await?);
        }
        let mut create = Command::new(cli_bin());
        create.arg("--cluster").arg("create");
        for n in &nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = create
            .output()
            .await
            .context("running redis-cli --cluster create (install redis-tools)")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster create failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        let me = Self { nodes };
        me.wait_ok(Duration::from_secs(20)).await?;
        me.wait_replicas_synced(Duration::from_secs(20)).await?;
        Ok(me)
    }

    /// Seed URLs for `--redis-url` (every node).
    pub fn seed_url(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `--engine redis-cluster --redis-url <seeds>`.
    pub fn serve_args(&self) -> Vec<String> {
        vec![
            "--engine".into(),
            "redis-cluster".into(),
            "--redis-url".into(),
            self.seed_url(),
        ]
    }

    fn live_ports(&self) -> Vec<u16> {
        self.nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.port)
            .collect()
    }

    /// Waits until every running node reports `cluster_state:ok`, agrees on
    /// the slot map, and (when `all_known`) no node is flagged failed.
    pub async fn wait_ok(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            let mut maps = Vec::new();
            for port in self.live_ports() {
                let info = query_text(port, &["CLUSTER", "INFO"])
                    .await
                    .unwrap_or_default();
                if !info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    ok = false;
                }
                match slots_of(port).await {
                    Ok(mut m) => {
                        m.sort_by_key(|r| r.start);
                        maps.push(
                            m.iter()
                                .map(|r| (r.start, r.end, r.primary_port))
                                .collect::<Vec<_>>(),
                        );
                    }
                    Err(_) => ok = false,
                }
            }
            if ok && maps.windows(2).all(|w| w[0] == w[1]) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the cluster did not settle within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The slot map as a running node sees it.
    pub async fn slots(&self) -> Result<Vec<SlotRange>> {
        let mut last = None;
        for port in self.live_ports() {
            match slots_of(port).await {
                Ok(m) => return Ok(m),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no node runs")))
    }

    /// The port of the primary that owns `slot`.
    pub async fn owner(&self, slot: u16) -> Result<u16> {
        self.slots()
            .await?
            .iter()
            .find(|r| r.start <= slot && slot <= r.end)
            .map(|r| r.primary_port)
            .context("slot not covered")
    }

    /// The node handle on `port`.
    pub fn node_mut(&mut self, port: u16) -> Option<&mut RedisServer> {
        self.nodes.iter_mut().find(|n| n.port == port)
    }

    /// `kill -9` of the primary on `port`; returns once the cluster has
    /// promoted its replica (every slot covered again).
    pub async fn kill_primary(&mut self, port: u16, within: Duration) -> Result<Duration> {
        let node = self.node_mut(port).context("no such node")?;
        node.kill().await?;
        let killed = Instant::now();
        let deadline = killed + within;
        loop {
            let covered = self
                .slots()
                .await
                .map(|m| {
                    m.iter().all(|r| r.primary_port != port)
                        && m.iter()
                            .map(|r| u32::from(r.end - r.start) + 1)
                            .sum::<u32>()
                            == 16384
                })
                .unwrap_or(false);
            if covered {
                return Ok(killed.elapsed());
            }
            if Instant::now() >= deadline {
                bail!("no replica took over from {port} within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Starts the killed node on `port` again (same data directory: it
    /// rejoins as a replica of the primary that replaced it) and waits until
    /// the cluster agrees again.
    pub async fn restart(&mut self, port: u16) -> Result<()> {
        let node = self.node_mut(port).context("no such node")?;
        node.restart_in_place().await?;
        self.wait_ok(Duration::from_secs(20)).await?;
        self.wait_replicas_synced(Duration::from_secs(20)).await
    }

    /// Waits until every running primary has an online replica and every
    /// replica's link is up (until then `WAIT 1` cannot be met).
    pub async fn wait_replicas_synced(&self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        loop {
            let mut ok = true;
            for port in self.live_ports() {
                let info = query_text(port, &["INFO", "replication"])
                    .await
                    .unwrap_or_default();
                let synced = if info.contains("role:master") {
                    info.lines()
                        .any(|l| l.starts_with("slave0:") && l.contains("state=online"))
                } else {
                    info.contains("master_link_status:up")
                };
                ok &= synced;
            }
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("replicas not in sync within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A live `redis-cli --cluster reshard`: moves `count` slots (the lowest
    /// ones it holds) from the primary on `from` to the primary on `to`,
    /// migrating their keys.
    pub async fn reshard(&self, from: u16, to: u16, count: u16) -> Result<()> {
        let id = |port| async move { query_text(port, &["CLUSTER", "MYID"]).await };
        let (from_id, to_id) = (id(from).await?, id(to).await?);
        let out = Command::new(cli_bin())
            .arg("--cluster")
            .arg("reshard")
            .arg(format!("127.0.0.1:{from}"))
            .args([
                "--cluster-from",
                from_id.trim(),
                "--cluster-to",
                to_id.trim(),
            ])
            .args(["--cluster-slots", &count.to_string(), "--cluster-yes"])
            .args(["--cluster-pipeline", "100"])
            .output()
            .await
            .context("running redis-cli --cluster reshard")?;
        if !out.status.success() {
            bail!(
                "redis-cli --cluster reshard failed: {}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        self.wait_ok(Duration::from_secs(20)).await
    }

    /// The slot of `key` (`CLUSTER KEYSLOT`).
    pub async fn keyslot(&self, key: &str) -> Result<u16> {
        let port = *self.live_ports().first().context("no node runs")?;
        let v: u16 = query(port, &["CLUSTER", "KEYSLOT", key]).await?;
        Ok(v)
    }
}

async fn connection(port: u16) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}"))?;
    Ok(tokio::time::timeout(
        Duration::from_secs(1),
        client.get_multiplexed_async_connection(),
    )
    .await
    .context("connecting timed out")??)
}

/// One command on the node at `port`.
pub async fn query<T: redis::FromRedisValue>(port: u16, args: &[&str]) -> Result<T> {
    let mut conn = connection(port).await?;
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    Ok(
        tokio::time::timeout(Duration::from_secs(2), cmd.query_async(&mut conn))
            .await
            .context("timed out")??,
    )
}

async fn query_text(port: u16, args: &[&str]) -> Result<String> {
    query::<String>(port, args).await
}

async fn slots_of(port: u16) -> Result<Vec<SlotRange>> {
    let v: Value = query(port, &["CLUSTER", "SLOTS"]).await?;
    let Value::Array(rows) = v else {
        bail!("unexpected CLUSTER SLOTS reply");
    };
    let mut out = Vec::new();
    for row in rows {
        let Value::Array(f) = row else {
            bail!("unexpected row");
        };
        let (Some(s), Some(e), Some(Value::Array(p))) = (f.first(), f.get(1), f.get(2)) else {
            bail!("unexpected row");
        };
        out.push(SlotRange {
            start: redis::from_redis_value(s)?,
            end: redis::from_redis_value(e)?,
            primary_port: redis::from_redis_value(p.get(1).context("port")?)?,
            primary_id: p
                .get(2)
                .map(redis::from_redis_value::<String>)
                .transpose()?
                .unwrap_or_default(),
        });
    }
    Ok(out)
}
