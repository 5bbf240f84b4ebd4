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

use crate::auth::{authorize_tracking, AuthedToken};
use crate::error::AppError;
use crate::frame::About;
use crate::hub::connection;
use crate::keys::Verified;
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

/// What a live frame means to a waiting poll.
enum Live {
    /// Not what the poll waits for.
    Skip,
    /// The answer, taken from the frame itself.
    Answer(Response),
    /// Something new is stored: read again.
    Reread,
}

/// One long poll on `channel`: `read` answers at once when there is
/// something newer; otherwise the poll takes a connection slot, joins the
/// channel, reads again (nothing lands in between), and waits for a live
/// frame `on_live` accepts, up to `timeout`, else `204`.
async fn long_poll<R, Fut>(
    state: AppState,
    token: &Verified,
    channel: Channel,
    timeout: Duration,
    read: R,
    on_live: impl Fn(&About) -> Live + Send,
) -> Result<Response, AppError>
where
    R: Fn() -> Fut + Send + Sync,
    Fut: std::future::Future<Output = Result<Option<Response>, AppError>> + Send,
{
    if let Some(found) = read().await? {
        return Ok(found);
    }
    let open = Open::new(&state, "poll", [state.user_permit(&token.claims.sub)?]);
    let tasks = state.tasks.clone();
    let wait = async {
        // Room for a few frames; a poller needs only the first. The
        // subscription is left however the wait ends (answer, timeout,
        // client gone and the future dropped).
        let (handle, mut rx) = connection(state.hub.next_conn_id(), 8);
        // Ends (204) at the token's exp, or when it is revoked.
        let _expiry = state
            .expiry
            .watch(&handle, token.claims.exp, false, crate::now_s());
        let _listed = state
            .user_conns
            .list(token, &handle, crate::revocation::Transport::Poll);
        let _sub = Subscription::join(&state, channel, &handle).await?;
        if let Some(found) = read().await? {
            return Ok(found);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = state.shutdown.cancelled() => break,
                out = rx.recv() => {
                    let Some(out) = out else { break };
                    let answer = match on_live(&out.meta.about) {
                        Live::Skip => continue,
                        Live::Answer(r) => Some(r),
                        Live::Reread => read().await?,
                    };
                    if let Some(r) = answer {
                        state.metrics.delivered(out.kind().name(), 1);
                        return Ok(r);
                    }
                }
            }
        }
        Ok(StatusCode::NO_CONTENT.into_response())
    };
    let result = tasks.track_future(wait).await;
    drop(open);
    result
}

fn poll_timeout(state: &AppState, q: &PollQuery) -> Duration {
    Duration::from_secs(q.timeout_s.unwrap_or(DEFAULT_TIMEOUT_S)).min(state.limits.max_poll_timeout)
}

/// `GET /v1/drivers/{driver_id}/location/poll`
pub async fn poll_location(
    State(state): State<AppState>,
    Path(driver): Path<String>,
    AuthedToken(token): AuthedToken,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    authorize_tracking(&token.claims, &driver)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let timeout = poll_timeout(&state, &q);
    let after_seq = q.after_seq;
    let read = || async {
        let now = now_ms();
        let latest = state.engine.latest(&driver, now).await?;
        Ok(latest.filter(|l| l.fix.seq > after_seq).map(|l| {
            Json(LocationResponse {
                driver_id: driver.clone(),
                age_ms: (now - l.received_ms).max(0),
                online: true,
                fix: l.fix,
            })
            .into_response()
        }))
    };
    let on_live = |about: &About| match about {
        About::Location { fix } if fix.seq > after_seq => Live::Answer(
            Json(LocationResponse {
                driver_id: driver.clone(),
                fix: fix.clone(),
                age_ms: 0,
                online: true,
            })
            .into_response(),
        ),
        _ => Live::Skip,
    };
    let channel = Channel::tracking(&driver);
    long_poll(state.clone(), &token, channel, timeout, read, on_live).await
}

/// `GET /v1/orders/{order_id}/poll`
pub async fn poll_order(
    State(state): State<AppState>,
    Path(order): Path<String>,
    AuthedToken(token): AuthedToken,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    if authorize_order_read(&state, &token.claims, &order)
        .await?
        .is_none()
    {
        return Err(AppError::NotFound(format!("no order {order:?}")));
    }
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let timeout = poll_timeout(&state, &q);
    let after_seq = q.after_seq;
    let read = || async {
        let t = state
            .orders
            .orders
            .timeline(&order, after_seq, MAX_TIMELINE_PAGE)
            .await?;
        let more = t.more();
        Ok((!t.entries.is_empty()).then(|| {
            Json(TimelineResponse {
                entries: t.entries,
                more,
            })
            .into_response()
        }))
    };
    let on_live = |about: &About| match about {
        About::Order { seq, .. } if *seq > after_seq => Live::Reread,
        _ => Live::Skip,
    };
    let channel = Channel::order(&order);
    long_poll(state.clone(), &token, channel, timeout, read, on_live).await
}
