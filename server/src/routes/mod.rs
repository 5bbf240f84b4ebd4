//! HTTP routes, one file per surface.

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post};
use axum::Router;

use crate::state::AppState;

pub mod admin;
pub mod chat;
pub mod dashboard;
pub mod devices;
pub mod ingest;
pub mod openapi;
pub mod ops;
pub mod orders;
pub mod poll;
pub mod sse;
pub mod subscription;
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
        .route(
            "/v1/chats/{room}/messages",
            get(chat::get_messages).post(chat::post_messages),
        )
        .route(
            "/v1/vendors/{vendor_id}/notifications",
            get(sse::get_notifications).post(sse::post_notification),
        )
        .route(
            "/v1/vendors/{vendor_id}/notifications/stream",
            get(sse::vendor_stream),
        )
        .route(
            "/v1/drivers/{driver_id}/location/stream",
            get(sse::location_stream),
        )
        .route(
            "/v1/drivers/{driver_id}/location/poll",
            get(poll::poll_location),
        )
        .route("/v1/orders/{order_id}/events", post(orders::post_event))
        .route("/v1/orders/{order_id}", get(orders::get_order))
        .route("/v1/orders/{order_id}/timeline", get(orders::get_timeline))
        .route("/v1/orders/{order_id}/stream", get(sse::order_stream))
        .route("/v1/orders/{order_id}/poll", get(poll::poll_order))
        .route("/v1/devices", post(devices::post_device))
        .route("/v1/devices/{device_id}", delete(devices::delete_device))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/openapi.json", get(openapi::openapi))
        .route("/", get(dashboard::page))
        .route("/v1/dashboard/stream", get(dashboard::stream))
        .route("/v1/dashboard/snapshot", get(dashboard::get_snapshot))
        .route("/v1/admin/revocations", post(admin::post_revocation))
        .route("/v1/admin/disconnect", post(admin::post_disconnect))
        .route("/v1/admin/channels/{channel}", get(admin::get_channel))
        .route("/v1/admin/drivers", get(admin::get_drivers))
        .route("/v1/admin/users/{user}", get(admin::get_user))
        .route("/v1/admin/stats", get(admin::get_stats))
        .route("/v1/admin/orders", get(admin::get_orders))
        .fallback(ops::not_found)
        .layer(DefaultBodyLimit::max(state.limits.max_body_bytes))
        .with_state(state)
}
