//! Health, readiness and metrics endpoints.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use serde_json::json;

use crate::error::AppError;
use crate::state::AppState;

/// Process is up.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({"ok": true}))
}

/// Engine reachable; 503 otherwise.
pub async fn readyz(State(state): State<AppState>) -> Result<impl IntoResponse, AppError> {
    if state.shutdown.is_cancelled() {
        return Ok((
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"ok": false, "reason": "shutting down"})),
        ));
    }
    state.engine.ready().await?;
    Ok((
        StatusCode::OK,
        Json(json!({"ok": true, "engine": state.engine.name()})),
    ))
}

/// Prometheus text format.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

pub async fn not_found() -> AppError {
    AppError::NotFound("no such route".into())
}
