//! Long polls. An order's timeline:
//! `GET /v1/orders/{id}/poll?after_seq=N&timeout_s=25` answers at once with
//! the entries above `after_seq` (the timeline's shape), else waits for the
//! next `order` frame and answers with what is above `after_seq` then, or
//! `204` at the timeout (same join-then-read order as below).
//!
//! A driver's position:
//! `GET /v1/drivers/{id}/location/poll?after_seq=N&timeout_s=25` answers at
//! once when a fix newer than `after_seq` is known, else waits for the next
//! live one up to `timeout_s` and answers `204`. The wait joins the hub
//! channel before re-reading the latest position, so a fix that lands in
//! between is not missed.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use waypost_protocol::{Channel, LocationResponse, TimelineResponse};

use crate::auth::{authorize_tracking, Authed};
use crate::error::AppError;
use crate::frame::About;
use crate::hub::connection;
use crate::now_ms;
use crate::routes::orders::{authorize_order_read, MAX_TIMELINE_PAGE};
use crate::routes::subscription::{Open, Subscription};
use crate::state::AppState;

/// Default wait when `timeout_s` is absent.
const DEFAULT_TIMEOUT_S: u64 = 25;

#[derive(Debug, Deserialize)]
pub struct PollQuery {
    #[serde(default)]
    after_seq: u64,
    timeout_s: Option<u64>,
}

/// `GET /v1/drivers/{driver_id}/location/poll`
pub async fn poll_location(
    State(state): State<AppState>,
    Path(driver): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    authorize_tracking(&claims, &driver)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let timeout = Duration::from_secs(q.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
        .min(state.limits.max_poll_timeout);
    if let Some(found) = newer(&state, &driver, q.after_seq).await? {
        return Ok(Json(found).into_response());
    }
    let open = Open::new(&state, "poll", [state.user_permit(&claims.sub)?]);
    let tasks = state.tasks.clone();
    let result = tasks
        .track_future(wait(state.clone(), driver, q.after_seq, timeout))
        .await;
    drop(open);
    result
}

/// The latest position when its seq is above `after_seq`.
async fn newer(
    state: &AppState,
    driver: &str,
    after_seq: u64,
) -> Result<Option<LocationResponse>, AppError> {
    let now = now_ms();
    let latest = state.engine.latest(driver, now).await?;
    Ok(latest
        .filter(|l| l.fix.seq > after_seq)
        .map(|l| LocationResponse {
            driver_id: driver.to_owned(),
            age_ms: (now - l.received_ms).max(0),
            online: true,
            fix: l.fix,
        }))
}

async fn wait(
    state: AppState,
    driver: String,
    after_seq: u64,
    timeout: Duration,
) -> Result<Response, AppError> {
    // Room for a few fixes; a poller needs only the first. The
    // subscription is left however the wait ends (answer, timeout, client
    // gone and the future dropped).
    let (handle, mut rx) = connection(state.hub.next_conn_id(), 8);
    let _sub = Subscription::join(&state, Channel::tracking(&driver), &handle).await?;
    if let Some(found) = newer(&state, &driver, after_seq).await? {
        return Ok(Json(found).into_response());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = state.shutdown.cancelled() => break,
            out = rx.recv() => {
                let Some(out) = out else { break };
                let About::Location { fix } = &out.meta.about else {
                    continue;
                };
                if fix.seq > after_seq {
                    state.metrics.delivered(out.kind().name(), 1);
                    return Ok(Json(LocationResponse {
                        driver_id: driver,
                        fix: fix.clone(),
                        age_ms: 0,
                        online: true,
                    })
                    .into_response());
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /v1/orders/{order_id}/poll`
pub async fn poll_order(
    State(state): State<AppState>,
    Path(order): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    if authorize_order_read(&state, &claims, &order)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound(format!("no order {order:?}")));
    }
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let timeout = Duration::from_secs(q.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
        .min(state.limits.max_poll_timeout);
    if let Some(found) = entries_after(&state, &order, q.after_seq).await? {
        return Ok(Json(found).into_response());
    }
    let open = Open::new(&state, "poll", [state.user_permit(&claims.sub)?]);
    let tasks = state.tasks.clone();
    let result = tasks
        .track_future(wait_order(state.clone(), order, q.after_seq, timeout))
        .await;
    drop(open);
    result
}

/// The order's entries above `after_seq`, when there are any.
async fn entries_after(
    state: &AppState,
    order: &str,
    after_seq: u64,
) -> Result<Option<TimelineResponse>, AppError> {
    let t = state
        .orders
        .orders
        .timeline(order, after_seq, MAX_TIMELINE_PAGE)
        .await?;
    let more = t.more();
    Ok((!t.entries.is_empty()).then_some(TimelineResponse {
        entries: t.entries,
        more,
    }))
}

async fn wait_order(
    state: AppState,
    order: String,
    after_seq: u64,
    timeout: Duration,
) -> Result<Response, AppError> {
    let (handle, mut rx) = connection(state.hub.next_conn_id(), 8);
    let _sub = Subscription::join(&state, Channel::order(&order), &handle).await?;
    if let Some(found) = entries_after(&state, &order, after_seq).await? {
        return Ok(Json(found).into_response());
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => break,
            () = state.shutdown.cancelled() => break,
            out = rx.recv() => {
                let Some(out) = out else { break };
                let About::Order { seq, .. } = &out.meta.about else {
                    continue;
                };
                if *seq > after_seq {
                    state.metrics.delivered(out.kind().name(), 1);
                    if let Some(found) = entries_after(&state, &order, after_seq).await? {
                        return Ok(Json(found).into_response());
                    }
                }
            }
        }
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
