//! Orders over HTTP: `POST /v1/orders/{order_id}/events` (role `service`),
//! `GET /v1/orders/{order_id}` and `GET /v1/orders/{order_id}/timeline`,
//! and who may read an order.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use waypost_protocol::{
    validate_id, Claims, OrderEvent, OrderEventAccepted, OrderView, Role, TimelineResponse,
};

use crate::auth::Authed;
use crate::error::AppError;
use crate::now_ms;
use crate::orders::{Applied, Order, OrderError};
use crate::state::AppState;

/// Most timeline entries one read returns.
pub const MAX_TIMELINE_PAGE: usize = 500;

impl From<OrderError> for AppError {
    fn from(e: OrderError) -> Self {
        match e {
            OrderError::Backwards { .. } => AppError::Conflict(e.to_string()),
            OrderError::Contended => AppError::Overloaded { retry_after_s: 1 },
            OrderError::Store(s) => AppError::Engine(s),
        }
    }
}

fn check_order_id(order_id: &str) -> Result<(), AppError> {
    validate_id("order_id", order_id).map_err(|e| AppError::bad("bad_id", e.to_string()))
}

/// Whether the token lists the claim `order:{order_id}`.
fn has_order_claim(claims: &Claims, order_id: &str) -> bool {
    let name = format!("order:{order_id}");
    claims
        .channels
        .as_ref()
        .is_some_and(|list| list.contains(&name))
}

/// Who may read an order (and follow its channel): `service`; a token
/// with the claim `order:{id}`; the driver currently assigned to it. The
/// claim grants nothing else (no `tracking:` channel). Returns the order
/// (`None`: unknown, only for callers allowed to learn that).
pub async fn authorize_order_read(
    state: &AppState,
    claims: &Claims,
    order_id: &str,
) -> Result<Option<Order>, AppError> {
    check_order_id(order_id)?;
    let allowed_without_order = claims.role == Role::Service || has_order_claim(claims, order_id);
    if !allowed_without_order && claims.role != Role::Driver {
        return Err(forbidden(order_id));
    }
    let order = state.orders.orders.get(order_id).await?;
    if allowed_without_order {
        return Ok(order);
    }
    // A driver: only while assigned to it.
    match order {
        Some(o) if o.driver_id.as_deref() == Some(claims.sub.as_str()) => Ok(Some(o)),
        _ => Err(forbidden(order_id)),
    }
}

fn forbidden(order_id: &str) -> AppError {
    AppError::Forbidden(format!("token does not grant order:{order_id}"))
}

/// `POST /v1/orders/{order_id}/events`
pub async fn post_event(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Authed(claims): Authed,
    body: Result<Json<OrderEvent>, JsonRejection>,
) -> Result<(StatusCode, Json<OrderEventAccepted>), AppError> {
    check_order_id(&order_id)?;
    if claims.role != Role::Service {
        return Err(AppError::Forbidden(
            "only a service token may post order events".into(),
        ));
    }
    let Json(ev) = body.map_err(|e| AppError::bad("bad_json", e.body_text()))?;
    let accepted = apply_event(&state, &order_id, &ev).await?;
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

/// Validates and applies an order event (HTTP and the stream intake).
pub async fn apply_event(
    state: &AppState,
    order_id: &str,
    ev: &OrderEvent,
) -> Result<OrderEventAccepted, AppError> {
    check_order_id(order_id)?;
    crate::orders::check_event(order_id, ev).map_err(|m| AppError::bad("bad_event", m))?;
    let applied = state
        .orders
        .apply_event(order_id, ev, now_ms())
        .await
        .inspect_err(|e| {
            if matches!(e, OrderError::Store(_)) {
                state.metrics.engine_errors.inc();
            }
        })?;
    Ok(match applied {
        Applied::New { entry, .. } => OrderEventAccepted {
            seq: entry.seq,
            duplicate: false,
        },
        Applied::Duplicate { seq } => OrderEventAccepted {
            seq,
            duplicate: true,
        },
    })
}

/// `GET /v1/orders/{order_id}`
pub async fn get_order(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Authed(claims): Authed,
) -> Result<Json<OrderView>, AppError> {
    match authorize_order_read(&state, &claims, &order_id).await? {
        Some(o) => Ok(Json(o.view())),
        None => Err(AppError::NotFound(format!("no order {order_id:?}"))),
    }
}

#[derive(Debug, Deserialize)]
pub struct TimelineQuery {
    #[serde(default)]
    after_seq: u64,
    limit: Option<usize>,
}

/// `GET /v1/orders/{order_id}/timeline?after_seq=N&limit=M`
pub async fn get_timeline(
    State(state): State<AppState>,
    Path(order_id): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> Result<Json<TimelineResponse>, AppError> {
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    if authorize_order_read(&state, &claims, &order_id)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound(format!("no order {order_id:?}")));
    }
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_TIMELINE_PAGE).contains(&limit) {
        return Err(AppError::bad(
            "bad_query",
            format!("limit must be within 1..={MAX_TIMELINE_PAGE}"),
        ));
    }
    let t = state
        .orders
        .orders
        .timeline(&order_id, q.after_seq, limit)
        .await?;
    let more = t.more();
    Ok(Json(TimelineResponse {
        entries: t.entries,
        more,
    }))
}
