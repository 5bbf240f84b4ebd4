//! The WebSocket edge of the buyer SDK, behind two small traits so tests can
//! inject faults deterministically: a [`WsConnector`] opens connections and a
//! [`WsTransport`] is one open connection carrying JSON text frames.
//!
//! [`TungsteniteConnector`] is the real implementation (tokio-tungstenite,
//! rustls with the webpki roots for `wss://`). It asks for the
//! `waypost.v1.msgpack` subprotocol by default and, when the server agrees,
//! carries the frames as MessagePack on the wire (binary frames, a third
//! smaller than JSON) while the rest of the SDK still sees JSON text: the
//! transport transcodes both ways. A server that does not agree (an older
//! one, or a proxy that strips the header) fails tungstenite's handshake;
//! the connector then connects again with JSON and keeps using JSON.
//! Tests use an in-process connector that hands the test the server side of
//! each connection.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use waypost_protocol::msgpack::{json_to_msgpack, msgpack_to_json};
use waypost_protocol::MSGPACK_PROTOCOL;

/// Largest text frame the SDK accepts from the server.
const MAX_FRAME_BYTES: usize = 1024 * 1024;

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
}

/// The real connector: tokio-tungstenite over TCP, rustls for `wss://`.
#[derive(Debug, Clone)]
pub struct TungsteniteConnector {
    /// Bound on TCP + TLS + HTTP upgrade.
    pub handshake_timeout: Duration,
    /// The encoding to ask for (MessagePack by default).
    pub encoding: WireEncoding,
    /// Set once a server refused MessagePack: later connections ask for
    /// JSON straight away (one handshake instead of two).
    json_only: Arc<AtomicBool>,
}

impl Default for TungsteniteConnector {
    fn default() -> Self {
        Self::new(WireEncoding::Msgpack)
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

    /// One handshake, offering MessagePack when `msgpack`.
    async fn handshake(
        &self,
        url: &str,
        msgpack: bool,
    ) -> Result<TungsteniteTransport, tokio_tungstenite::tungstenite::Error> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let mut request = url.into_client_request()?;
        if msgpack {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static(MSGPACK_PROTOCOL),
            );
        }
        let (stream, response) =
            tokio_tungstenite::connect_async_with_config(request, Some(config), true).await?;
        // tungstenite checked that a returned protocol is one we offered.
        let msgpack = response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .is_some_and(|p| p == MSGPACK_PROTOCOL);
        Ok(TungsteniteTransport { stream, msgpack })
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
        let msgpack =
            self.encoding == WireEncoding::Msgpack && !self.json_only.load(Ordering::Relaxed);
        let attempt = async {
            match self.handshake(url, msgpack).await {
                Err(tokio_tungstenite::tungstenite::Error::Protocol(
                    ProtocolError::SecWebSocketSubProtocolError(SubProtocolError::NoSubProtocol),
                )) if msgpack => {
                    tracing::info!(
                        "the server does not speak {MSGPACK_PROTOCOL}: falling back to JSON"
                    );
                    self.json_only.store(true, Ordering::Relaxed);
                    self.handshake(url, false).await
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
    /// The server agreed to `waypost.v1.msgpack`.
    msgpack: bool,
}

#[async_trait]
impl WsTransport for TungsteniteTransport {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        let message = if self.msgpack {
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
            Some(Ok(Message::Binary(b))) if self.msgpack => Ok(match msgpack_to_json(&b) {
                Ok(json) => WsEvent::Text(json),
                Err(e) => {
                    tracing::debug!(error = %e, "undecodable MessagePack frame skipped");
                    WsEvent::Alive
                }
            }),
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
    /// selects MessagePack when `agree` and it is offered; on each it sends
    /// a `pong` in the agreed encoding and waits for one frame.
    async fn server(agree: bool, conns: usize) -> (String, tokio::task::JoinHandle<Seen>) {
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
                    if agree && offered.as_deref() == Some(MSGPACK_PROTOCOL) {
                        selected = true;
                        resp.headers_mut().insert(
                            "Sec-WebSocket-Protocol",
                            HeaderValue::from_static(MSGPACK_PROTOCOL),
                        );
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

    #[tokio::test]
    async fn speaks_msgpack_when_the_server_agrees() {
        let (url, task) = server(true, 1).await;
        let connector = TungsteniteConnector::default();
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
        let (url, task) = server(false, 2).await;
        let connector = TungsteniteConnector::default();
        exchange(&connector, &url).await;
        let seen = task.await.unwrap();
        assert_eq!(seen.offered, [Some(MSGPACK_PROTOCOL.to_owned()), None]);
        assert_eq!(
            seen.first,
            Some(Message::Text(r#"{"type":"ping","id":2}"#.into()))
        );
        // Later connections of this connector go straight to JSON.
        let (url, task) = server(false, 1).await;
        exchange(&connector, &url).await;
        assert_eq!(task.await.unwrap().offered, [None]);
        // JSON by choice: no offer at all.
        let (url, task) = server(true, 1).await;
        exchange(&TungsteniteConnector::new(WireEncoding::Json), &url).await;
        assert_eq!(task.await.unwrap().offered, [None]);
    }
}
