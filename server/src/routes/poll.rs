//! Long poll of a driver's position:
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
use waypost_protocol::{Channel, LocationResponse};

use crate::auth::{authorize_tracking, AuthedToken};
use crate::error::AppError;
use crate::frame::About;
use crate::hub::connection;
use crate::keys::Verified;
use crate::now_ms;
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
    AuthedToken(token): AuthedToken,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let claims = &token.claims;
    authorize_tracking(claims, &driver)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let timeout = Duration::from_secs(q.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S))
        .min(state.limits.max_poll_timeout);
    if let Some(found) = newer(&state, &driver, q.after_seq).await? {
        return Ok(Json(found).into_response());
    }
    let open = Open::new(&state, "poll", [state.user_permit(&claims.sub)?]);
    let tasks = state.tasks.clone();
    let result = tasks
        .track_future(wait(state.clone(), driver, q.after_seq, timeout, &token))
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
    token: &Verified,
) -> Result<Response, AppError> {
    // Room for a few fixes; a poller needs only the first. The
    // subscription is left however the wait ends (answer, timeout, client
    // gone and the future dropped).
    let (handle, mut rx) = connection(state.hub.next_conn_id(), 8);
    // Ends (204) at the token's exp, or when it is revoked.
    let _expiry = state
        .expiry
        .watch(&handle, token.claims.exp, false, crate::now_s());
    let _listed = state.user_conns.list(token, &handle);
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
