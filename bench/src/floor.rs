//! `floor`: the cheapest server that passes the fan-out load, to measure
//! Waypost against (issue 23). It speaks Waypost's wire for the parts the
//! load generators use (`GET /v1/ws` + `subscribe`, `POST
//! /v1/drivers/{id}/locations`, `GET /healthz`) and writes the very frames
//! Waypost writes ([`waypost_server::frame::Frame::location`], serialized
//! once per POST), with nothing else: no auth (tokens are ignored), no
//! engine (no dedup, no trail, no latest position; every POST's newest fix
//! is broadcast), no pings, no rate limits, no metrics, no bookkeeping
//! beyond channel -> senders. Per connection one task and one bounded
//! queue; a full queue drops the frame (counted in the log at exit).
//!
//! Same runtime (tokio, multi-threaded) and HTTP/WebSocket stack (axum,
//! tungstenite) as Waypost, so the difference between the two is what
//! Waypost does on top of the transport.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::Context;
use axum::body::Bytes;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use futures_util::SinkExt;
use parking_lot::RwLock;
use tokio::sync::mpsc;
use waypost_protocol::{ClientFrame, IngestRequest, ServerFrame};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8190")]
    pub listen: SocketAddr,
    /// Frames queued per connection before new ones are dropped.
    #[arg(long, default_value_t = 1024)]
    pub queue: usize,
}

/// Channel name -> the queues of its subscribers.
#[derive(Default)]
struct Floor {
    channels: RwLock<HashMap<String, HashMap<u64, mpsc::Sender<Utf8Bytes>>>>,
    next_id: AtomicU64,
    dropped: AtomicU64,
    queue: usize,
}

type Shared = Arc<Floor>;

pub async fn run(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        anyhow::bail!("the floor listens on loopback addresses only");
    }
    let floor: Shared = Arc::new(Floor {
        queue: args.queue.max(1),
        ..Floor::default()
    });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/ws", get(upgrade))
        .route("/v1/drivers/{driver_id}/locations", post(ingest))
        .with_state(Arc::clone(&floor));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("bind {}", args.listen))?;
    eprintln!("floor listening on {}", args.listen);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => return std::future::pending().await,
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        })
        .await?;
    eprintln!(
        "floor: {} frames dropped on full queues",
        floor.dropped.load(Ordering::Relaxed)
    );
    Ok(())
}

/// `POST /v1/drivers/{id}/locations`: the batch's newest fix (by ts, the
/// last of equals, as Waypost picks it) goes to every subscriber.
async fn ingest(
    State(floor): State<Shared>,
    Path(driver_id): Path<String>,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<IngestRequest>(&body) else {
        return (StatusCode::BAD_REQUEST, "bad body").into_response();
    };
    let newest =
        req.fixes
            .iter()
            .fold(None, |best: Option<&waypost_protocol::Fix>, f| match best {
                Some(b) if f.ts < b.ts => best,
                _ => Some(f),
            });
    if let Some(fix) = newest {
        let channel = format!("tracking:{driver_id}");
        let map = floor.channels.read();
        if let Some(subs) = map.get(&channel) {
            let frame = waypost_server::frame::Frame::location(&driver_id, fix, 0).text;
            for tx in subs.values() {
                if tx.try_send(frame.clone()).is_err() {
                    floor.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    (
        StatusCode::OK,
        format!(r#"{{"accepted":{}}}"#, req.fixes.len()),
    )
        .into_response()
}

async fn upgrade(State(floor): State<Shared>, ws: WebSocketUpgrade) -> Response {
    // Waypost's buffer sizes (`routes/ws.rs`): tungstenite zero-fills its
    // read buffer on every read, so the default 128 KiB would cost the
    // floor CPU and memory Waypost does not spend.
    ws.read_buffer_size(512)
        .write_buffer_size(4 * 1024)
        .on_upgrade(move |socket| connection(socket, floor))
}

/// Frames written per flush when the queue has a backlog (as Waypost does).
const WRITE_BATCH: usize = 64;

/// One connection: client frames (only `subscribe` means anything) and the
/// queued location frames, written as they come; a backlog goes out in
/// batches of up to [`WRITE_BATCH`] frames per flush, like Waypost's
/// writer, so the floor pays no more syscalls per frame than Waypost.
async fn connection(mut socket: WebSocket, floor: Shared) {
    let id = floor.next_id.fetch_add(1, Ordering::Relaxed);
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(floor.queue);
    let mut joined: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            frame = rx.recv() => {
                let Some(frame) = frame else { break };
                if socket.feed(Message::Text(frame)).await.is_err() {
                    break;
                }
                let mut fed = 1;
                while fed < WRITE_BATCH {
                    let Ok(next) = rx.try_recv() else { break };
                    if socket.feed(Message::Text(next)).await.is_err() {
                        break;
                    }
                    fed += 1;
                }
                if socket.flush().await.is_err() {
                    break;
                }
            }
            msg = socket.recv() => {
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                if let Ok(ClientFrame::Subscribe { channel, .. }) = serde_json::from_str(text.as_str()) {
                    if !joined.contains(&channel) {
                        floor
                            .channels
                            .write()
                            .entry(channel.clone())
                            .or_default()
                            .insert(id, tx.clone());
                        joined.push(channel.clone());
                    }
                    let reply = ServerFrame::Subscribed { channel, recovered: false, high_seq: None }.to_json();
                    if socket.send(Message::Text(reply.into())).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let mut map = floor.channels.write();
    for channel in joined {
        if let Some(subs) = map.get_mut(&channel) {
            subs.remove(&id);
            if subs.is_empty() {
                map.remove(&channel);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message as TMessage;

    /// A subscriber gets `subscribed`, then exactly Waypost's location frame
    /// of the batch's newest fix.
    #[tokio::test]
    async fn subscriber_receives_waypost_location_frame() {
        let floor: Shared = Arc::new(Floor {
            queue: 8,
            ..Floor::default()
        });
        let app = Router::new()
            .route("/v1/ws", get(upgrade))
            .route("/v1/drivers/{driver_id}/locations", post(ingest))
            .with_state(Arc::clone(&floor));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/v1/ws"))
            .await
            .unwrap();
        ws.send(TMessage::Text(
            r#"{"type":"subscribe","channel":"tracking:d1"}"#.into(),
        ))
        .await
        .unwrap();
        let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
        assert!(
            first.starts_with(r#"{"type":"subscribed","channel":"tracking:d1""#),
            "{first}"
        );
        let body = r#"{"device_id":"x","fixes":[{"seq":2,"ts":20,"lat":1.0,"lon":2.0},{"seq":1,"ts":10,"lat":3.0,"lon":4.0}]}"#;
        let res = reqwest::Client::new()
            .post(format!("http://{addr}/v1/drivers/d1/locations"))
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let got = ws.next().await.unwrap().unwrap().into_text().unwrap();
        let fix: waypost_protocol::Fix =
            serde_json::from_str(r#"{"seq":2,"ts":20,"lat":1.0,"lon":2.0}"#).unwrap();
        let want = waypost_server::frame::Frame::location("d1", &fix, 0).text;
        assert_eq!(got.as_str(), want.as_str());
        server.abort();
    }
}
