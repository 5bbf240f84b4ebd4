//! The WebSocket edge of the buyer SDK, behind two small traits so tests can
//! inject faults deterministically: a [`WsConnector`] opens connections and a
//! [`WsTransport`] is one open connection carrying JSON text frames.
//!
//! [`TungsteniteConnector`] is the real implementation (tokio-tungstenite,
//! rustls with the webpki roots for `wss://`). Tests use an in-process
//! connector that hands the test the server side of each connection.

use std::time::Duration;

use async_trait::async_trait;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

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

/// The real connector: tokio-tungstenite over TCP, rustls for `wss://`.
#[derive(Debug, Clone)]
pub struct TungsteniteConnector {
    /// Bound on TCP + TLS + HTTP upgrade.
    pub handshake_timeout: Duration,
}

impl Default for TungsteniteConnector {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

#[async_trait]
impl WsConnector for TungsteniteConnector {
    async fn connect(&self, url: &str) -> Result<Box<dyn WsTransport>, TransportError> {
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .max_message_size(Some(MAX_FRAME_BYTES))
            .max_frame_size(Some(MAX_FRAME_BYTES));
        let attempt = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        match tokio::time::timeout(self.handshake_timeout, attempt).await {
            Err(_) => Err(TransportError::Io("handshake timed out".into())),
            Ok(Err(tokio_tungstenite::tungstenite::Error::Http(resp))) => {
                Err(TransportError::Http(resp.status().as_u16()))
            }
            Ok(Err(e)) => Err(TransportError::Io(e.to_string())),
            Ok(Ok((stream, _))) => Ok(Box::new(TungsteniteTransport { stream })),
        }
    }
}

struct TungsteniteTransport {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

#[async_trait]
impl WsTransport for TungsteniteTransport {
    async fn send(&mut self, text: String) -> Result<(), TransportError> {
        self.stream
            .send(Message::Text(text.into()))
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
