//! HTTP behind a small trait, so the uploader runs over reqwest in apps,
//! over an in-process router in the replay benchmark, and over a scripted
//! fake in unit tests (or, later, over the platform's own HTTP stack through
//! the bindings).

#![warn(missing_docs)]

use std::time::Duration;

use async_trait::async_trait;
use serde::de::DeserializeOwned;
use waypost_protocol::ErrorBody;

/// One header (a record rather than a tuple, for the bindings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpHeader {
    /// Header name (any case).
    pub name: String,
    /// Header value.
    pub value: String,
}

impl HttpHeader {
    /// A header.
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// An HTTP request (plain data, FFI-friendly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `POST`, ...
    pub method: String,
    /// Absolute URL.
    pub url: String,
    /// Headers.
    pub headers: Vec<HttpHeader>,
    /// Body bytes (already encoded, e.g. gzipped).
    pub body: Vec<u8>,
}

/// An HTTP response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: Vec<HttpHeader>,
    /// Body bytes (decoded).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value.as_str())
    }
}

/// Why a request got no HTTP response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// Could not connect (refused, unreachable, DNS).
    #[error("connect failed: {message}")]
    Connect {
        /// Details.
        message: String,
    },
    /// No complete answer in time.
    #[error("timed out: {message}")]
    Timeout {
        /// Details.
        message: String,
    },
    /// The connection broke mid-request or mid-response: the server may or
    /// may not have processed the request.
    #[error("connection broken: {message}")]
    Broken {
        /// Details.
        message: String,
    },
    /// The request could not even be built (bad URL, ...).
    #[error("invalid request: {message}")]
    Invalid {
        /// Details.
        message: String,
    },
}

/// Why an HTTP exchange failed: no answer, an error status, or an answer
/// the SDK cannot read. Drives the retry decisions of the uploader and of
/// the buyer's history reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    /// No HTTP answer.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// An HTTP error status.
    #[error(transparent)]
    Status(#[from] StatusError),
    /// A 2xx whose body is not the expected reply.
    #[error("unreadable reply (HTTP {status}): {message}")]
    BadReply {
        /// The status code.
        status: u16,
        /// The parse error.
        message: String,
    },
    /// The token provider returned nothing.
    #[error("token provider gave no token")]
    NoToken,
}

/// An HTTP error status with what the server said about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP {status}: {message}")]
pub struct StatusError {
    /// The status code.
    pub status: u16,
    /// The contract's error code, when the body had one.
    pub code: Option<String>,
    /// The server's message (or the start of the body).
    pub message: String,
    /// `Retry-After`, seconds.
    pub retry_after_s: Option<u64>,
}

impl StatusError {
    /// The error of a non-2xx `response` whose body parsed (or not) as the
    /// contract's error body `body`.
    pub fn new(response: &HttpResponse, body: Option<&ErrorBody>) -> Self {
        let message = body.map(|e| e.error.message.clone()).unwrap_or_else(|| {
            String::from_utf8_lossy(&response.body)
                .chars()
                .take(200)
                .collect()
        });
        Self {
            status: response.status,
            code: body.map(|e| e.error.code.clone()),
            message,
            retry_after_s: response
                .header("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok()),
        }
    }
}

impl HttpError {
    /// The JSON body of a 2xx `response` as `T`, or the error it means.
    pub fn json<T: DeserializeOwned>(response: &HttpResponse) -> Result<T, HttpError> {
        if !(200..300).contains(&response.status) {
            let body: Option<ErrorBody> = serde_json::from_slice(&response.body).ok();
            return Err(StatusError::new(response, body.as_ref()).into());
        }
        serde_json::from_slice(&response.body).map_err(|e| HttpError::BadReply {
            status: response.status,
            message: e.to_string(),
        })
    }
}

/// Sends one HTTP request. Implementations must time out on their own.
#[async_trait]
pub trait HttpTransport: Send + Sync + 'static {
    /// Sends `request` and returns the full response.
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError>;
}

/// [`HttpTransport`] over reqwest with rustls.
#[derive(Debug, Clone)]
pub struct ReqwestTransport {
    client: reqwest::Client,
}

impl ReqwestTransport {
    /// A client with a connect timeout of 10 s and a whole-request timeout
    /// of `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, TransportError> {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10).min(timeout))
            .timeout(timeout)
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| TransportError::Invalid {
                message: e.to_string(),
            })?;
        Ok(Self { client })
    }
}

#[async_trait]
impl HttpTransport for ReqwestTransport {
    async fn send(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|e| {
            TransportError::Invalid {
                message: e.to_string(),
            }
        })?;
        let mut builder = self.client.request(method, &request.url);
        for h in &request.headers {
            builder = builder.header(&h.name, &h.value);
        }
        let classify = |e: reqwest::Error| {
            let message = format!("{e:#}");
            if e.is_timeout() {
                TransportError::Timeout { message }
            } else if e.is_connect() {
                TransportError::Connect { message }
            } else if e.is_builder() {
                TransportError::Invalid { message }
            } else {
                TransportError::Broken { message }
            }
        };
        let response = builder.body(request.body).send().await.map_err(classify)?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .filter_map(|(k, v)| Some(HttpHeader::new(k.as_str(), v.to_str().ok()?)))
            .collect();
        let body = response.bytes().await.map_err(classify)?.to_vec();
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}
