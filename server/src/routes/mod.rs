//! HTTP routes, one file per surface.

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::app::AppState;

pub mod ingest;
pub mod ops;
pub mod ws;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route(
            "/v1/drivers/{driver_id}/locations",
            post(ingest::post_locations),
        )
        .route(
            "/v1/drivers/{driver_id}/location",
            get(ingest::get_location),
        )
        .route("/v1/drivers/{driver_id}/trail", get(ingest::get_trail))
        .route("/v1/ws", get(ws::upgrade))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}
