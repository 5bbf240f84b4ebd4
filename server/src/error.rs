//! `AppError`: every failure a handler can return, mapped to the contract's
//! status codes and `{"error":{"code","message"}}` bodies. Internal details
//! are logged, never sent to clients.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use waypost_protocol::ErrorBody;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    #[error("fixes[{index}] (seq {seq}): {message}")]
    BadFix {
        index: usize,
        seq: u64,
        message: String,
    },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("rate limit exceeded")]
    RateLimited { retry_after_s: u64 },
    /// This process is at its connection cap; another instance (or this one,
    /// later) can serve the request.
    #[error("this server is at its connection limit, retry later")]
    Overloaded { retry_after_s: u64 },
    #[error("engine unavailable")]
    Engine(#[from] EngineError),
}

impl AppError {
    pub fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::BadRequest {
            code,
            message: message.into(),
        }
    }
}

impl AppError {
    /// Status, error code and `Retry-After` seconds of this error.
    fn parts(&self) -> (StatusCode, &'static str, Option<u64>) {
        match self {
            AppError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code, None),
            AppError::BadFix { .. } => (StatusCode::BAD_REQUEST, "bad_fix", None),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized", None),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large", None),
            AppError::RateLimited { retry_after_s } => (
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                Some(*retry_after_s),
            ),
            AppError::Overloaded { retry_after_s } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                Some(*retry_after_s),
            ),
            AppError::Engine(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "engine_unavailable",
                Some(1),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.parts().0
    }

    /// The contract's error code (`error.code`, and the `code` of an
    /// `error` frame).
    pub fn code(&self) -> &'static str {
        self.parts().1
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code, retry_after) = self.parts();
        let message = match &self {
            AppError::Engine(e) => {
                tracing::warn!(error = %e, "engine error");
                "the storage engine is unavailable, retry later".to_owned()
            }
            other => other.to_string(),
        };
        let mut body = ErrorBody::new(code, message);
        if let AppError::BadFix { seq, .. } = &self {
            body.error.seq = Some(*seq);
        }
        let mut resp = (status, Json(body)).into_response();
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}
