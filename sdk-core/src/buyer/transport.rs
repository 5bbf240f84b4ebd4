//! The WebSocket edge of the buyer SDK, behind two small traits so tests can
//! inject faults deterministically: a [`WsConnector`] opens connections and a
//! [`WsTransport`] is one open connection carrying JSON text frames.
//!
//! [`TungsteniteConnector`] is the real implementation (tokio-tungstenite,
//! rustls with the webpki roots for `wss://`). It offers the
//! `waypost.v1.lean` and `waypost.v1.msgpack` subprotocols by default and
//! carries the frames as MessagePack on the wire (binary frames, a third
//! smaller than JSON) when the server selects either, while the rest of the
//! SDK still sees JSON text: the transport transcodes both ways. With
//! `waypost.v1.lean` location frames are leaner still (integer coordinates,
//! unchanged fields omitted against the previous location frame on the
//! channel): the transport expands them back into the full JSON frame. A
//! server that selects neither (an older one, or a proxy that strips the
//! header) fails tungstenite's handshake; the connector then connects again
//! with JSON and keeps using JSON.
//! Tests use an in-process connector that hands the test the server side of
//! each connection.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use waypost_protocol::msgpack::{json_to_msgpack, msgpack_to_json, msgpack_to_value};
use waypost_protocol::{lean, LEAN_PROTOCOL, MSGPACK_PROTOCOL};

/// Largest text frame the SDK accepts from the server.
const MAX_FRAME_BYTES: usize = 1024 * 1024;
/// Channels whose last location frame a lean connection holds (the server
/// allows far fewer subscriptions per connection).
const MAX_LEAN_CHANNELS: usize = 1024;

/// Why a connection attempt or an open connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The handshake was answered with an HTTP status (e.g. 503 while the
    /// server shuts down).
    #[error("handshake refused with HTTP {0}")]
    Http(u16),
    /// Connection refused, reset, DNS failure, TLS failure, timeout, ...
    #[error("transport: {0}")]
    Io(String),
}

/// One event read from an open connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsEvent {
    /// A text frame (one JSON object).
    Text(String),
    /// Any other frame that proves the peer is alive (ping, pong, binary).
    Alive,
    /// The peer closed, with its close code and reason when it sent one.
    Closed { code: Option<u16>, reason: String },
}

/// Opens WebSocket connections.
#[async_trait]
pub trait WsConnector: Send + Sync + 'static {
    /// Connects to `url` (which carries the token as `?token=`).
    async fn connect(&self, url: &str) -> Result<Box<dyn WsTransport>, TransportError>;
}

/// One open WebSocket connection.
#[async_trait]
pub trait WsTransport: Send + 'static {
    /// Writes one text frame.
    async fn send(&mut self, text: String) -> Result<(), TransportError>;

    /// The next event. Must be cancel-safe: the connection manager polls it
    /// inside `select!` and drops the future when something else happens.
    /// `Err` or `Closed` end the connection.
    async fn recv(&mut self) -> Result<WsEvent, TransportError>;

    /// Starts a close handshake with `code` (best effort, bounded in time by
    /// the caller).
    async fn close(&mut self, code: u16, reason: &str);
}

/// How frames travel on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireEncoding {
    /// JSON text frames (what browsers and tools speak).
    Json,
    /// MessagePack binary frames, negotiated with `Sec-WebSocket-Protocol:
    /// waypost.v1.msgpack`; JSON when the server does not agree.
    Msgpack,
    /// MessagePack with lean location frames (`waypost.v1.lean`), offered
    /// together with `waypost.v1.msgpack`: whichever the server selects,
    /// JSON when it selects neither. The default.
    Lean,
}

impl WireEncoding {
    /// The `Sec-WebSocket-Protocol` offer, most preferred first.
    fn offer(self) -> Option<&'static str> {
        match self {
            WireEncoding::Json => None,
            WireEncoding::Msgpack => Some(MSGPACK_PROTOCOL),
            WireEncoding::Lean => Some("waypost.v1.lean, waypost.v1.msgpack"),
        }
    }
}

/// The real connector: tokio-tungstenite over TCP, rustls for `wss://`.
#[derive(Debug, Clone)]
pub struct TungsteniteConnector {
    /// Bound on TCP + TLS + HTTP upgrade.
    pub handshake_timeout: Duration,
    /// The encoding to ask for (lean MessagePack by default).
    pub encoding: WireEncoding,
    /// Set once a server refused the binary encodings: later connections
    /// ask for JSON straight away (one handshake instead of two).
    json_only: Arc<AtomicBool>,
}

impl Default for TungsteniteConnector {
    fn default() -> Self {
        Self::new(WireEncoding::Lean)
    }
}

impl TungsteniteConnector {
    pub fn new(encoding: WireEncoding) -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            encoding,
            json_only: Arc::new(AtomicBool::new(false)),
        }
    }

    /// One handshake, offering `encoding`.
    async fn handshake(
        &self,
        url: &str,
        encoding: WireEncoding,
    ) -> Result<TungsteniteTransport, tokio_tungstenite::tungstenite::Error> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let mut request = url.into_client_request()?;
        if let Some(offer) = encoding.offer() {
            request
                .headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(offer));
        }
        let (stream, response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        // tungstenite checked that a returned protocol is one we offered.
        let selected = response.headers().get("Sec-WebSocket-Protocol");
        let encoding = match selected {
            Some(p) if p == LEAN_PROTOCOL => WireEncoding::Lean,
            Some(p) if p == MSGPACK_PROTOCOL => WireEncoding::Msgpack,
            _ => WireEncoding::Json,
        };
        Ok(TungsteniteTransport {
            stream,
            encoding,
            held: HashMap::new(),
        })
    }
}

fn transport_error(e: tokio_tungstenite::tungstenite::Error) -> TransportError {
    match e {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            TransportError::Http(resp.status().as_u16())
        }
        e => TransportError::Io(e.to_string()),
    }
}

#[async_trait]
impl WsConnector for TungsteniteConnector {
    async fn connect(&self, url: &str) -> Result<Box<dyn WsTransport>, TransportError> {
        let encoding = if self.json_only.load(Ordering::Relaxed) {
            WireEncoding::Json
        } else {
            self.encoding
        };
        let attempt = async {
            match self.handshake(url, encoding).await {
                Err(tokio_tungstenite::tungstenite::Error::Protocol(
                    ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol),
                )) if encoding != WireEncoding::Json => {
                    tracing::info!(
                        offered = encoding.offer(),
                        "the server speaks no binary encoding: falling back to JSON"
                    );
                    self.json_only.store(true, Ordering::Relaxed);
                    self.handshake(url, WireEncoding::Json).await
                }
                other => other,
            }
        };
        match tokio::time::timeout(self.handshake_timeout, attempt).await {
            Err(_) => Err(TransportError::Io("handshake timed out".into())),
            Ok(Err(e)) => Err(transport_error(e)),
            Ok(Ok(transport)) => Ok(Box::new(transport)),
        }
    }
}

struct TungsteniteTransport {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// What the server selected.
    encoding: WireEncoding,
    /// Lean only: per channel the last location frame received (full
    /// JSON value), the base of the next one.
    held: HashMap<String, Value>,
}

/// A lean connection's binary frame as JSON text: location frames expanded
/// against the last one held on their channel (which they replace), other
/// frames transcoded as with MessagePack. `Err` for a delta whose base is
/// not held: the connection cannot go on (its positions would be wrong).
fn lean_frame(held: &mut HashMap<String, Value>, bytes: &[u8]) -> Result<Option<String>, String> {
    let value = match msgpack_to_value(bytes) {
        Ok(v) => v,
        Err(e) => {
            tracing::debug!(error = %e, "undecodable MessagePack frame skipped");
            return Ok(None);
        }
    };
    let channel = value
        .get("channel")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let value = if lean::is_location(&value) {
        match lean::expand(value, held.get(&channel)) {
            Ok(full) => {
                if held.len() < MAX_LEAN_CHANNELS || held.contains_key(&channel) {
                    held.insert(channel, full.clone());
                }
                full
            }
            Err(e @ lean::LeanError::UnknownBase { .. }) => {
                tracing::warn!(error = %e, "lean location frame against an unknown base: dropped, reconnecting");
                return Err(e.to_string());
            }
            Err(e) => {
                tracing::debug!(error = %e, "undecodable lean location frame skipped");
                return Ok(None);
            }
        }
    } else {
        // After `unsubscribed` the server has no base for the channel: its
        // next location frame there (a re-subscribe) is full.
        if value.get("type").and_then(Value::as_str) == Some("unsubscribed") {
            held.remove(&channel);
        }
        value
    };
    Ok(Some(value.to_string()))
}

#[async_trait]
impl WsTransport for TungsteniteTransport {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        let message = if self.encoding != WireEncoding::Json {
            let binary = json_to_msgpack(&text)
                .map_err(|e| TransportError::Io(format!("unencodable frame: {e}")))?;
            Message::Binary(binary.into())
        } else {
            Message::Text(text.into())
        };
        self.stream
            .send(message)
            .await
            .map_err(|e| TransportError::Io(e.to_string()))
    }

    async fn recv(&mut self) -> Result<WsEvent, TransportError> {
        // `StreamExt::next` is cancel-safe; tungstenite answers pings itself.
        match self.stream.next().await {
            None => Ok(WsEvent::Closed {
                code: None,
                reason: "stream ended".into(),
            }),
            Some(Err(e)) => Err(TransportError::Io(e.to_string())),
            Some(Ok(Message::Text(t))) => Ok(WsEvent::Text(t.to_string())),
            // A frame that does not decode is skipped like an unknown JSON
            // frame (the connection manager logs and ignores those).
            Some(Ok(Message::Binary(b))) if self.encoding == WireEncoding::Lean => {
                match lean_frame(&mut self.held, &b) {
                    Ok(Some(json)) => Ok(WsEvent::Text(json)),
                    Ok(None) => Ok(WsEvent::Alive),
                    // The connection manager reconnects (with backoff) and
                    // subscribes again: the server replays the position.
                    Err(e) => Err(TransportError::Io(e)),
                }
            }
            Some(Ok(Message::Binary(b))) if self.encoding == WireEncoding::Msgpack => {
                Ok(match msgpack_to_json(&b) {
                    Ok(json) => WsEvent::Text(json),
                    Err(e) => {
                        tracing::debug!(error = %e, "undecodable MessagePack frame skipped");
                        WsEvent::Alive
                    }
                })
            }
            Some(Ok(Message::Close(frame))) => Ok(match frame {
                Some(f) => WsEvent::Closed {
                    code: Some(f.code.into()),
                    reason: f.reason.to_string(),
                },
                None => WsEvent::Closed {
                    code: None,
                    reason: String::new(),
                },
            }),
            Some(Ok(_)) => Ok(WsEvent::Alive),
        }
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: reason.to_owned().into(),
        };
        let _ = self.stream.close(Some(frame)).await;
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;

    /// What the loopback server saw: per connection the offered protocols,
    /// and the first data frame of the connection that stayed.
    struct Seen {
        offered: Vec<Option<String>>,
        first: Option<Message>,
    }

    /// A loopback WebSocket server for up to `conns` connections that
    /// selects `select` when it is offered; on each it sends
    /// a `pong` in the agreed encoding and waits for one frame.
    async fn server(
        select: Option<&'static str>,
        conns: usize,
    ) -> (String, tokio::task::JoinHandle<Seen>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/v1/ws?token=t", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut seen = Seen {
                offered: Vec::new(),
                first: None,
            };
            for _ in 0..conns {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut offered = None;
                let mut selected = false;
                #[allow(clippy::result_large_err)] // tungstenite's callback type
                let callback = |req: &Request, mut resp: Response| {
                    offered = req
                        .headers()
                        .get("Sec-WebSocket-Protocol")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let offers = offered.as_deref().unwrap_or_default();
                    if let Some(p) = select.filter(|p| offers.split(',').any(|o| o.trim() == *p)) {
                        selected = true;
                        resp.headers_mut()
                            .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(p));
                    }
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(tcp, callback).await else {
                    continue;
                };
                seen.offered.push(offered);
                let pong = r#"{"type":"pong","id":1}"#;
                let frame = if selected {
                    Message::Binary(json_to_msgpack(pong).unwrap().into())
                } else {
                    Message::Text(pong.into())
                };
                if ws.send(frame).await.is_err() {
                    continue;
                }
                let next = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
                if let Ok(Some(Ok(m @ (Message::Text(_) | Message::Binary(_))))) = next {
                    seen.first = Some(m);
                    break;
                }
            }
            seen
        });
        (url, task)
    }

    async fn exchange(connector: &TungsteniteConnector, url: &str) {
        let mut ws = connector.connect(url).await.unwrap();
        let got = ws.recv().await.unwrap();
        let WsEvent::Text(text) = got else {
            panic!("expected a frame, got {got:?}")
        };
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, serde_json::json!({"type":"pong","id":1}));
        ws.send(r#"{"type":"ping","id":2}"#.into()).await.unwrap();
    }

    const BOTH: &str = "waypost.v1.lean, waypost.v1.msgpack";

    #[test]
    fn the_lean_offer_names_both_protocols_most_preferred_first() {
        assert_eq!(
            WireEncoding::Lean.offer(),
            Some(format!("{LEAN_PROTOCOL}, {MSGPACK_PROTOCOL}").as_str())
        );
        assert_eq!(TungsteniteConnector::default().encoding, WireEncoding::Lean);
    }

    #[tokio::test]
    async fn speaks_lean_or_msgpack_whichever_the_server_selects() {
        for select in [LEAN_PROTOCOL, MSGPACK_PROTOCOL] {
            let (url, task) = server(Some(select), 1).await;
            exchange(&TungsteniteConnector::default(), &url).await;
            let seen = task.await.unwrap();
            assert_eq!(seen.offered, [Some(BOTH.to_owned())]);
            let Some(Message::Binary(b)) = seen.first else {
                panic!("expected a binary frame, got {:?}", seen.first)
            };
            assert_eq!(
                waypost_protocol::msgpack::msgpack_to_value(&b).unwrap(),
                serde_json::json!({"type":"ping","id":2})
            );
        }
    }

    /// Lean location frames come out as the full JSON frames; a delta
    /// against a base not held ends the connection.
    #[test]
    fn lean_location_frames_expand_against_the_last_one_held() {
        let full = |v: serde_json::Value| -> serde_json::Value { v };
        let a = full(
            serde_json::json!({"type":"location","channel":"tracking:d","driver_id":"d",
            "fix":{"seq":1,"ts":10,"lat":52.5,"lon":13.4,"speed_mps":3.5,"battery":0.5}}),
        );
        let b = full(
            serde_json::json!({"type":"location","channel":"tracking:d","driver_id":"d",
            "fix":{"seq":2,"ts":20,"lat":52.5000001,"lon":13.4,"speed_mps":3.5}}),
        );
        let mut held = HashMap::new();
        let decode = |held: &mut HashMap<String, Value>, bytes: Vec<u8>| {
            lean_frame(held, &bytes)
                .map(|t| t.map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap()))
        };
        let wire_a = lean::encode(&a, None).unwrap();
        let wire_b = lean::encode(&b, Some(&a)).unwrap();
        assert_eq!(decode(&mut held, wire_a.clone()).unwrap(), Some(a.clone()));
        assert_eq!(decode(&mut held, wire_b.clone()).unwrap(), Some(b.clone()));
        // Other frames pass as JSON; `unsubscribed` forgets the channel.
        let pong = json_to_msgpack(r#"{"type":"pong","id":1}"#).unwrap();
        assert_eq!(
            decode(&mut held, pong).unwrap(),
            Some(serde_json::json!({"type":"pong","id":1}))
        );
        assert!(held.contains_key("tracking:d"));
        let unsub = json_to_msgpack(r#"{"type":"unsubscribed","channel":"tracking:d"}"#).unwrap();
        decode(&mut held, unsub).unwrap();
        assert!(held.is_empty());
        // A delta against a base not held: an error (the manager
        // reconnects), not a wrong position.
        assert!(decode(&mut held, wire_b).is_err());
        decode(&mut held, wire_a).unwrap();
        let c = lean::encode(&b, Some(&b)).unwrap(); // same seq: full
        assert_eq!(decode(&mut held, c).unwrap(), Some(b));
        // Garbage is skipped like an unknown frame.
        assert_eq!(decode(&mut held, vec![0xc1]).unwrap(), None);
    }

    #[tokio::test]
    async fn speaks_msgpack_when_the_server_agrees() {
        let (url, task) = server(Some(MSGPACK_PROTOCOL), 1).await;
        let connector = TungsteniteConnector::new(WireEncoding::Msgpack);
        exchange(&connector, &url).await;
        let seen = task.await.unwrap();
        assert_eq!(seen.offered, [Some(MSGPACK_PROTOCOL.to_owned())]);
        let Some(Message::Binary(b)) = seen.first else {
            panic!("expected a binary frame, got {:?}", seen.first)
        };
        assert_eq!(
            waypost_protocol::msgpack::msgpack_to_value(&b).unwrap(),
            serde_json::json!({"type":"ping","id":2})
        );
    }

    #[tokio::test]
    async fn falls_back_to_json_when_the_server_does_not_agree() {
        // The first handshake (offering MessagePack) fails on the client
        // (no protocol in the response); the second asks for nothing.
        let (url, task) = server(None, 2).await;
        let connector = TungsteniteConnector::default();
        exchange(&connector, &url).await;
        let seen = task.await.unwrap();
        assert_eq!(seen.offered, [Some(BOTH.to_owned()), None]);
        assert_eq!(
            seen.first,
            Some(Message::Text(r#"{"type":"ping","id":2}"#.into()))
        );
        // Later connections of this connector go straight to JSON.
        let (url, task) = server(None, 1).await;
        exchange(&connector, &url).await;
        assert_eq!(task.await.unwrap().offered, [None]);
        // JSON by choice: no offer at all.
        let (url, task) = server(Some(LEAN_PROTOCOL), 1).await;
        exchange(&TungsteniteConnector::new(WireEncoding::Json), &url).await;
        assert_eq!(task.await.unwrap().offered, [None]);
    }
}
