//! A fault-injecting TCP proxy for end-to-end tests: put it between a
//! client and the real server and switch what the "network" does.
//!
//! Faults ([`Fault`]):
//! - `Pass`: forward bytes both ways;
//! - `Latency(d)`: forward, delaying every chunk by `d`;
//! - `Refuse` ("drop all traffic" as a phone sees it when the network is
//!   gone): new connections are reset at once, live ones are reset;
//! - `Blackhole`: accept, swallow, never answer; live connections freeze
//!   (clients only get out through their own timeouts);
//! - `CutResponse`: forward the request, then cut the response after a few
//!   bytes with a reset — the server processed the request (e.g. stored a
//!   batch) but the client never sees the answer.
//!
//! One-shot events: [`FaultProxy::reset_all`] resets every live connection.
//! [`flap`] and [`random_schedule`] build seeded schedules that
//! [`FaultProxy::run_schedule`] plays. Loopback only.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward bytes both ways.
    Pass,
    /// Forward, delaying each chunk.
    Latency(Duration),
    /// Reset new and live connections.
    Refuse,
    /// Accept, never answer; live connections freeze.
    Blackhole,
    /// Forward requests; cut responses after a few bytes.
    CutResponse,
}

/// What the proxy did (to check a schedule was exercised).
#[derive(Debug, Default)]
pub struct ProxyStats {
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub blackholed: AtomicU64,
    pub cut: AtomicU64,
    pub reset: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
}

/// A running proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    mode: watch::Sender<Fault>,
    resets: broadcast::Sender<()>,
    stats: Arc<ProxyStats>,
    cancel: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Listens on an ephemeral loopback port and forwards to `upstream`
    /// (must be a loopback address).
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        anyhow::ensure!(
            upstream.ip().is_loopback(),
            "fault proxy only targets loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Fault::Pass);
        let (resets, _) = broadcast::channel(16);
        let stats = Arc::new(ProxyStats::default());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(accept_loop(
            listener,
            upstream,
            mode.clone(),
            resets.clone(),
            Arc::clone(&stats),
            cancel.clone(),
        ));
        Ok(Self {
            addr,
            mode,
            resets,
            stats,
            cancel,
            task: Some(task),
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Switches the fault.
    pub fn set(&self, fault: Fault) {
        tracing::debug!(?fault, "proxy fault");
        self.mode.send_replace(fault);
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.mode.borrow()
    }

    /// Resets every live connection once.
    pub fn reset_all(&self) {
        let _ = self.resets.send(());
    }

    pub fn stats(&self) -> &ProxyStats {
        &self.stats
    }

    /// Plays `schedule` (fault, how long), then returns to `Pass`.
    pub async fn run_schedule(&self, schedule: &[(Fault, Duration)]) {
        for (fault, dur) in schedule {
            self.set(*fault);
            tokio::time::sleep(*dur).await;
        }
        self.set(Fault::Pass);
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Alternates `Pass` and `Refuse` every `period`, `cycles` times.
pub fn flap(period: Duration, cycles: usize) -> Vec<(Fault, Duration)> {
    (0..cycles)
        .flat_map(|_| [(Fault::Refuse, period), (Fault::Pass, period)])
        .collect()
}

/// A seeded mix of every fault, `steps` steps of 100 ms … `max_step` each.
pub fn random_schedule(seed: u64, steps: usize, max_step: Duration) -> Vec<(Fault, Duration)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let max_ms = max_step.as_millis().max(101) as u64;
    (0..steps)
        .map(|_| {
            let fault = match rng.random_range(0..10u32) {
                0 | 1 => Fault::Pass,
                2 | 3 => Fault::Refuse,
                4 => Fault::Blackhole,
                5 | 6 => Fault::CutResponse,
                7 => Fault::Latency(Duration::from_millis(rng.random_range(20..300))),
                _ => Fault::Pass,
            };
            (fault, Duration::from_millis(rng.random_range(100..max_ms)))
        })
        .collect()
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    mode: watch::Sender<Fault>,
    resets: broadcast::Sender<()>,
    stats: Arc<ProxyStats>,
    cancel: CancellationToken,
) {
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            () = cancel.cancelled() => break,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else {
            continue;
        };
        stats.accepted.fetch_add(1, Ordering::Relaxed);
        conns.spawn(connection(
            client,
            upstream,
            mode.subscribe(),
            resets.subscribe(),
            Arc::clone(&stats),
            cancel.clone(),
        ));
    }
    conns.close();
    conns.wait().await;
}

/// Closes with RST instead of FIN.
fn rst(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Fault>,
    mut resets: broadcast::Receiver<()>,
    stats: Arc<ProxyStats>,
    cancel: CancellationToken,
) {
    let current = *mode.borrow_and_update();
    match current {
        Fault::Refuse => {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            rst(client);
            return;
        }
        Fault::Blackhole => {
            stats.blackholed.fetch_add(1, Ordering::Relaxed);
            swallow(client, cancel).await;
            return;
        }
        _ => {}
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        rst(client);
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let mut up = vec![0u8; 16 * 1024];
    let mut down = vec![0u8; 16 * 1024];
    let reunite = |cr: tokio::net::tcp::OwnedReadHalf,
                   cw: tokio::net::tcp::OwnedWriteHalf,
                   sr: tokio::net::tcp::OwnedReadHalf,
                   sw: tokio::net::tcp::OwnedWriteHalf| {
        if let Ok(c) = cr.reunite(cw) {
            rst(c);
        }
        if let Ok(s) = sr.reunite(sw) {
            rst(s);
        }
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => {
                reunite(cr, cw, sr, sw);
                return;
            }
            _ = resets.recv() => {
                stats.reset.fetch_add(1, Ordering::Relaxed);
                reunite(cr, cw, sr, sw);
                return;
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    reunite(cr, cw, sr, sw);
                    return;
                }
                let fault = *mode.borrow_and_update();
                match fault {
                    Fault::Refuse => {
                        stats.reset.fetch_add(1, Ordering::Relaxed);
                        reunite(cr, cw, sr, sw);
                        return;
                    }
                    Fault::Blackhole => {
                        // Freeze: hold both sockets, move nothing.
                        stats.blackholed.fetch_add(1, Ordering::Relaxed);
                        cancel.cancelled().await;
                        reunite(cr, cw, sr, sw);
                        return;
                    }
                    _ => {}
                }
            }
            n = cr.read(&mut up) => {
                let n = match n { Ok(0) | Err(_) => { let _ = sw.shutdown().await; reunite(cr, cw, sr, sw); return; } Ok(n) => n };
                let fault = *mode.borrow();
                if let Fault::Latency(d) = fault {
                    tokio::time::sleep(d).await;
                }
                stats.bytes_up.fetch_add(n as u64, Ordering::Relaxed);
                if sw.write_all(&up[..n]).await.is_err() {
                    reunite(cr, cw, sr, sw);
                    return;
                }
            }
            n = sr.read(&mut down) => {
                let n = match n { Ok(0) | Err(_) => { let _ = cw.shutdown().await; reunite(cr, cw, sr, sw); return; } Ok(n) => n };
                let fault = *mode.borrow();
                if fault == Fault::CutResponse {
                    // A few bytes of the status line, then a reset.
                    stats.cut.fetch_add(1, Ordering::Relaxed);
                    let _ = cw.write_all(&down[..n.min(9)]).await;
                    let _ = cw.flush().await;
                    reunite(cr, cw, sr, sw);
                    return;
                }
                if let Fault::Latency(d) = fault {
                    tokio::time::sleep(d).await;
                }
                stats.bytes_down.fetch_add(n as u64, Ordering::Relaxed);
                if cw.write_all(&down[..n]).await.is_err() {
                    reunite(cr, cw, sr, sw);
                    return;
                }
            }
        }
    }
}

/// Reads and discards until the peer closes or the proxy stops.
async fn swallow(mut client: TcpStream, cancel: CancellationToken) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            n = client.read(&mut buf) => {
                if matches!(n, Ok(0) | Err(_)) {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let mut b = [0u8; 1024];
                    while let Ok(n) = s.read(&mut b).await {
                        if n == 0 || s.write_all(&b[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(addr: SocketAddr, within: Duration) -> Result<Vec<u8>, String> {
        let fut = async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(b"hello world")
                .await
                .map_err(|e| e.to_string())?;
            let mut got = Vec::new();
            let mut b = [0u8; 64];
            while got.len() < 11 {
                let n = s.read(&mut b).await.map_err(|e| e.to_string())?;
                if n == 0 {
                    return Err(format!("closed after {got:?}"));
                }
                got.extend_from_slice(&b[..n]);
            }
            Ok(got)
        };
        tokio::time::timeout(within, fut)
            .await
            .unwrap_or_else(|_| Err("timeout".into()))
    }

    #[tokio::test]
    async fn each_fault_behaves() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let a = proxy.addr();
        let w = Duration::from_secs(2);
        assert_eq!(roundtrip(a, w).await.unwrap(), b"hello world");
        proxy.set(Fault::Refuse);
        assert!(roundtrip(a, w).await.is_err());
        proxy.set(Fault::Blackhole);
        assert_eq!(
            roundtrip(a, Duration::from_millis(300)).await,
            Err("timeout".into())
        );
        proxy.set(Fault::CutResponse);
        let cut = roundtrip(a, w).await.unwrap_err();
        assert!(cut != "timeout", "{cut}");
        proxy.set(Fault::Latency(Duration::from_millis(150)));
        let t0 = std::time::Instant::now();
        assert_eq!(roundtrip(a, w).await.unwrap(), b"hello world");
        assert!(t0.elapsed() >= Duration::from_millis(300));
        proxy.set(Fault::Pass);
        assert_eq!(roundtrip(a, w).await.unwrap(), b"hello world");
        let s = proxy.stats();
        assert!(s.refused.load(Ordering::Relaxed) >= 1);
        assert!(s.blackholed.load(Ordering::Relaxed) >= 1);
        assert!(s.cut.load(Ordering::Relaxed) >= 1);
        proxy.stop().await;
    }

    #[tokio::test]
    async fn live_connections_are_reset() {
        let proxy = FaultProxy::start(echo_server().await).await.unwrap();
        let mut s = TcpStream::connect(proxy.addr()).await.unwrap();
        s.write_all(b"x").await.unwrap();
        let mut b = [0u8; 4];
        assert_eq!(s.read(&mut b).await.unwrap(), 1);
        proxy.reset_all();
        let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut b))
            .await
            .unwrap();
        assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
        assert_eq!(proxy.stats().reset.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn schedules_are_seeded() {
        let a = random_schedule(7, 20, Duration::from_secs(1));
        assert_eq!(a, random_schedule(7, 20, Duration::from_secs(1)));
        assert_ne!(a, random_schedule(8, 20, Duration::from_secs(1)));
        assert_eq!(flap(Duration::from_secs(1), 3).len(), 6);
    }
}
