//! The operator API (role `service`): revoke tokens, disconnect users, and
//! inspect channels across every process; plus the control listener that
//! applies revocations and disconnects published by any process.
//!
//! - `POST /v1/admin/revocations` `{"user"}` or `{"jti"}`, optional `ttl_s`
//! - `POST /v1/admin/disconnect` `{"user","reconnect"}`
//! - `GET /v1/admin/channels/{channel}` → `{"channel","subscribers","presence"}`
//! - `GET /v1/admin/drivers?online=true` → `{"drivers":[..]}`
//! - `GET /v1/admin/users/{user}` → that user's connections on every process
//! - `GET /v1/admin/stats` → the cluster's metric totals and latency histogram
//! - `GET /v1/admin/orders?active=true` → the online drivers' active orders

use axum::extract::rejection::JsonRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};
use waypost_protocol::{close_code, validate_id, Channel, ChannelKind, Claims, Role};

use crate::auth::Authed;
use crate::cluster::{NodeReport, REPORT_EVERY};
use crate::error::AppError;
use crate::frame::{now_us, About, Frame};
use crate::hub::connection;
use crate::metrics::{add_buckets, Bucket, Totals};
use crate::revocation::{
    control_channel, ConnInfo, Control, Revocation, DEFAULT_TTL_S, MAX_LISTED_SUBSCRIPTIONS,
    MAX_REPORTED_CONNECTIONS, MAX_TTL_S, RELOAD_EVERY,
};
use crate::state::AppState;
use crate::{now_ms, now_s};

/// Longest `jti` accepted.
const MAX_JTI_LEN: usize = 256;
/// Most present users listed for a channel.
const MAX_PRESENCE: usize = 1000;

fn require_service(claims: &Claims) -> Result<(), AppError> {
    if claims.role == Role::Service {
        Ok(())
    } else {
        Err(AppError::Forbidden("role service required".into()))
    }
}

fn json_body<T>(body: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    body.map(|Json(b)| b)
        .map_err(|e| AppError::bad("bad_body", e.body_text()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevokeBody {
    /// Kept as JSON to tell `null` (refused) from absent.
    #[serde(default, deserialize_with = "present")]
    user: Option<serde_json::Value>,
    #[serde(default, deserialize_with = "present")]
    jti: Option<serde_json::Value>,
    ttl_s: Option<u64>,
}

/// A field that is present, `null` included.
fn present<'de, D>(d: D) -> Result<Option<serde_json::Value>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    serde_json::Value::deserialize(d).map(Some)
}

/// An optional string field: absent is `None`, anything but a string 400.
fn string_field(name: &str, v: Option<serde_json::Value>) -> Result<Option<String>, AppError> {
    match v {
        None => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(AppError::bad(
            "bad_body",
            format!("{name} must be a string"),
        )),
    }
}

/// `POST /v1/admin/revocations`: stored in the engine, applied here at once
/// and on every other process through the control channel.
pub async fn post_revocation(
    State(state): State<AppState>,
    Authed(claims): Authed,
    body: Result<Json<RevokeBody>, JsonRejection>,
) -> Result<Json<Revocation>, AppError> {
    require_service(&claims)?;
    let body = json_body(body)?;
    let user = string_field("user", body.user)?;
    let jti = string_field("jti", body.jti)?;
    match (&user, &jti) {
        (Some(user), None) => {
            validate_id("user", user).map_err(|e| AppError::bad("bad_id", e.to_string()))?
        }
        (None, Some(jti)) if !jti.is_empty() && jti.len() <= MAX_JTI_LEN => {}
        (None, Some(_)) => {
            return Err(AppError::bad(
                "bad_body",
                format!("jti must be 1 to {MAX_JTI_LEN} bytes"),
            ))
        }
        _ => {
            return Err(AppError::bad(
                "bad_body",
                "give exactly one of user and jti",
            ))
        }
    }
    let ttl_s = body.ttl_s.unwrap_or(DEFAULT_TTL_S);
    if !(1..=MAX_TTL_S).contains(&ttl_s) {
        return Err(AppError::bad(
            "bad_body",
            format!("ttl_s must be within 1..={MAX_TTL_S}"),
        ));
    }
    let now = now_s();
    let revocation = Revocation {
        user,
        jti,
        before_s: now,
        until_s: now + ttl_s,
    };
    state
        .revocation_store
        .save(&revocation)
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?;
    let control = Control::Revoke(revocation.clone());
    apply(&state, &control);
    publish(&state, &control).await?;
    tracing::info!(?revocation, by = %claims.sub, "token revocation");
    Ok(Json(revocation))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisconnectBody {
    user: String,
    /// Absent or null: false.
    reconnect: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct DisconnectReply {
    user: String,
    reconnect: bool,
}

/// `POST /v1/admin/disconnect`: closes the user's connections on every
/// process (4103 when it may reconnect, 4003 otherwise).
pub async fn post_disconnect(
    State(state): State<AppState>,
    Authed(claims): Authed,
    body: Result<Json<DisconnectBody>, JsonRejection>,
) -> Result<Response, AppError> {
    require_service(&claims)?;
    let body = json_body(body)?;
    validate_id("user", &body.user).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    let reconnect = body.reconnect.unwrap_or(false);
    let control = Control::Disconnect {
        user: body.user.clone(),
        reconnect,
    };
    apply(&state, &control);
    publish(&state, &control).await?;
    tracing::info!(user = %body.user, reconnect, by = %claims.sub, "disconnect");
    Ok((
        StatusCode::ACCEPTED,
        Json(DisconnectReply {
            user: body.user,
            reconnect,
        }),
    )
        .into_response())
}

#[derive(Debug, Serialize)]
pub struct ChannelInfo {
    channel: String,
    /// Subscribers across every process.
    subscribers: u64,
    /// Users present (chat rooms; empty for other channels).
    presence: Vec<String>,
}

/// `GET /v1/admin/channels/{channel}`
pub async fn get_channel(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Authed(claims): Authed,
) -> Result<Json<ChannelInfo>, AppError> {
    require_service(&claims)?;
    let channel = Channel::parse(&name).map_err(|e| AppError::bad("bad_channel", e.to_string()))?;
    let subscribers = state
        .engine
        .watchers(&channel)
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?;
    let presence = if channel.kind == ChannelKind::Chat {
        state
            .stores
            .presence
            .online(&channel.id, now_ms(), MAX_PRESENCE)
            .await
            .inspect_err(|_| state.metrics.engine_errors.inc())?
    } else {
        Vec::new()
    };
    Ok(Json(ChannelInfo {
        channel: name,
        subscribers,
        presence,
    }))
}

/// Most drivers `GET /v1/admin/drivers` lists.
const MAX_LISTED_DRIVERS: usize = 500;
/// Time budget for reading positions and watcher counts of the listed drivers.
const DRIVERS_BUDGET: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug, Deserialize)]
pub struct DriversQuery {
    #[serde(default = "yes")]
    online: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Serialize)]
pub struct DriverInfo {
    driver_id: String,
    /// Server time of its last upload, Unix ms.
    seen_ms: i64,
    /// Age of the latest position (since it was stored), ms.
    age_ms: i64,
    /// Within the online TTL.
    online: bool,
    /// Subscribers of `tracking:{driver}` across every process.
    watchers: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lat: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    lon: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct DriversReply {
    drivers: Vec<DriverInfo>,
}

/// Drivers seen by any process within the online TTL (`online`) or the
/// last 24 h, most recent first, at most [`MAX_LISTED_DRIVERS`], with the
/// time of their last upload.
async fn seen_drivers(
    state: &AppState,
    online: bool,
    now: i64,
) -> Result<Vec<(String, i64)>, AppError> {
    let ttl_ms = i64::try_from(state.limits.online_ttl.as_millis()).unwrap_or(i64::MAX);
    let retain = if online {
        ttl_ms
    } else {
        crate::driver_index::RETAIN_MS
    };
    Ok(match &state.driver_index {
        Some(index) => index
            .seen_since(now - retain, MAX_LISTED_DRIVERS)
            .await
            .inspect_err(|_| state.metrics.engine_errors.inc())?,
        None => {
            let (_, seen) = state
                .activity
                .drivers_online(now, retain, MAX_LISTED_DRIVERS);
            seen.into_iter().map(|d| (d.driver_id, d.seen_ms)).collect()
        }
    })
}

/// Most orders `GET /v1/admin/orders` lists.
const MAX_LISTED_ORDERS: usize = 500;

#[derive(Debug, Deserialize)]
pub struct OrdersQuery {
    #[serde(default = "yes")]
    active: bool,
}

#[derive(Debug, Serialize)]
pub struct OrdersReply {
    orders: Vec<waypost_protocol::OrderView>,
    /// The time budget ran out or the list was cut at 500: there may be more.
    truncated: bool,
}

/// `GET /v1/admin/orders?active=true`: the active orders of the drivers
/// online (through each driver's order index, on both engines; orders with
/// no driver assigned are not listed), at most 500, read within 2 s.
pub async fn get_orders(
    State(state): State<AppState>,
    Authed(claims): Authed,
    query: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Json<OrdersReply>, AppError> {
    require_service(&claims)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    if !q.active {
        return Err(AppError::bad(
            "bad_query",
            "only active orders are listed (active=true)",
        ));
    }
    let seen = seen_drivers(&state, true, now_ms()).await?;
    let deadline = tokio::time::Instant::now() + DRIVERS_BUDGET;
    let mut orders = Vec::new();
    let mut truncated = false;
    for (driver_id, _) in seen {
        match tokio::time::timeout_at(deadline, state.orders.orders.active_orders_of(&driver_id))
            .await
        {
            Ok(Ok(active)) => orders.extend(active.iter().map(|o| o.view())),
            Ok(Err(e)) => {
                state.metrics.engine_errors.inc();
                return Err(e.into());
            }
            Err(_) => {
                truncated = true;
                break;
            }
        }
        if orders.len() >= MAX_LISTED_ORDERS {
            truncated = true;
            orders.truncate(MAX_LISTED_ORDERS);
            break;
        }
    }
    Ok(Json(OrdersReply { orders, truncated }))
}

/// `GET /v1/admin/drivers?online=true`: drivers seen by any process (the
/// online ones by default; `online=false` lists the last 24 h), most
/// recent first, at most 500.
pub async fn get_drivers(
    State(state): State<AppState>,
    Authed(claims): Authed,
    query: Result<Query<DriversQuery>, QueryRejection>,
) -> Result<Json<DriversReply>, AppError> {
    require_service(&claims)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let now = now_ms();
    let ttl_ms = i64::try_from(state.limits.online_ttl.as_millis()).unwrap_or(i64::MAX);
    let seen = seen_drivers(&state, q.online, now).await?;
    let deadline = tokio::time::Instant::now() + DRIVERS_BUDGET;
    let mut drivers = Vec::with_capacity(seen.len());
    for (driver_id, seen_ms) in seen {
        let channel = Channel::tracking(driver_id.clone());
        let (latest, watchers) = match tokio::time::timeout_at(deadline, async {
            tokio::join!(
                state.engine.latest(&driver_id, now),
                state.engine.watchers(&channel)
            )
        })
        .await
        {
            Ok((l, w)) => (l.ok().flatten(), w.unwrap_or(0)),
            Err(_) => (None, 0),
        };
        let age_ms = latest
            .as_ref()
            .map_or(now - seen_ms, |l| now - l.received_ms)
            .max(0);
        drivers.push(DriverInfo {
            online: age_ms <= ttl_ms,
            lat: latest.as_ref().map(|l| l.fix.lat),
            lon: latest.as_ref().map(|l| l.fix.lon),
            seq: latest.as_ref().map(|l| l.fix.seq),
            driver_id,
            seen_ms,
            age_ms,
            watchers,
        });
    }
    if q.online {
        drivers.retain(|d| d.online);
    }
    Ok(Json(DriversReply { drivers }))
}

/// Copies the drivers this process saw into the cluster-wide index every
/// [`crate::driver_index::FLUSH_EVERY`] until shutdown (Redis engine only).
pub async fn flush_driver_index(state: AppState) {
    let Some(index) = state.driver_index.clone() else {
        return;
    };
    let ttl_ms = i64::try_from(state.limits.online_ttl.as_millis()).unwrap_or(i64::MAX);
    let mut every = tokio::time::interval(crate::driver_index::FLUSH_EVERY);
    let mut flushed_to = 0i64;
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let now = now_ms();
        let (_, seen) = state
            .activity
            .drivers_online(now, ttl_ms, crate::activity::MAX_DRIVERS);
        let fresh: Vec<(String, i64)> = seen
            .into_iter()
            .filter(|d| d.seen_ms >= flushed_to)
            .map(|d| (d.driver_id, d.seen_ms))
            .collect();
        let newest = fresh.iter().map(|(_, ms)| *ms).max();
        match index.record(&fresh, now).await {
            Ok(()) => flushed_to = newest.unwrap_or(flushed_to).max(flushed_to),
            Err(e) => tracing::debug!(error = %e, "driver index flush failed; retrying"),
        }
    }
}

/// How long a user lookup waits for the other processes' answers.
const LOOKUP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Serialize)]
pub struct UserConnection {
    /// The process holding it.
    process: String,
    #[serde(flatten)]
    info: ConnInfo,
}

#[derive(Debug, Serialize)]
pub struct UserReply {
    user: String,
    /// Processes asked (those up), and how many answered within a second.
    processes: usize,
    answered: usize,
    /// Oldest first, at most 100 per process.
    connections: Vec<UserConnection>,
    /// The user revocation in force, if any (Unix s).
    #[serde(skip_serializing_if = "Option::is_none")]
    revoked_until_s: Option<u64>,
    /// Registered push devices (issue 19), without their tokens.
    devices: Vec<UserDevice>,
}

/// A push device as `GET /v1/admin/users/{user}` lists it.
#[derive(Debug, Serialize)]
pub struct UserDevice {
    device_id: String,
    platform: &'static str,
    registered_ms: i64,
    channels: Vec<String>,
    muted: Vec<String>,
}

/// `GET /v1/admin/users/{user}`: the user's live connections (transport,
/// since, subscriptions) on every process. Asks them over the control
/// channel and waits up to a second for the processes that are up.
pub async fn get_user(
    State(state): State<AppState>,
    Path(user): Path<String>,
    Authed(claims): Authed,
) -> Result<Json<UserReply>, AppError> {
    require_service(&claims)?;
    validate_id("user", &user).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    let processes = match &state.node_stats {
        Some(stats) => {
            stats
                .live(now_ms())
                .await
                .inspect_err(|_| state.metrics.engine_errors.inc())?
                .iter()
                .filter(|r| *r.node != *state.node_id)
                .count()
                + 1
        }
        None => 1,
    };
    let id = uuid::Uuid::new_v4().simple().to_string();
    let mut pending = state
        .lookups
        .start(id.clone())
        .ok_or(AppError::RateLimited { retry_after_s: 1 })?;
    // Every process answers, this one included (its own message comes back
    // through the engine like anyone's).
    publish(
        &state,
        &Control::Lookup {
            id,
            user: user.clone(),
        },
    )
    .await?;
    let deadline = tokio::time::Instant::now() + LOOKUP_WAIT;
    let mut answered = std::collections::BTreeSet::new();
    let mut connections = Vec::new();
    while answered.len() < processes {
        match tokio::time::timeout_at(deadline, pending.answers.recv()).await {
            Ok(Some((node, conns))) => {
                if answered.insert(node.clone()) {
                    connections.extend(conns.into_iter().map(|info| UserConnection {
                        process: node.clone(),
                        info,
                    }));
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    drop(pending);
    connections.sort_by(|a, b| (a.info.since_ms, &a.process).cmp(&(b.info.since_ms, &b.process)));
    let devices = state
        .push
        .devices
        .devices(&user)
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?
        .into_iter()
        .map(|d| UserDevice {
            device_id: d.device_id,
            platform: d.platform.as_str(),
            registered_ms: d.registered_ms,
            channels: d.channels,
            muted: d.muted,
        })
        .collect();
    Ok(Json(UserReply {
        devices,
        revoked_until_s: state
            .keys
            .revocations()
            .of_user(&user, now_s())
            .map(|(_, until)| until),
        user,
        processes: processes.max(answered.len()),
        answered: answered.len(),
        connections,
    }))
}

/// `user`'s connections on this process, as a lookup reports them.
fn local_connections(state: &AppState, user: &str) -> Vec<ConnInfo> {
    let conns = state.user_conns.of_user(user, MAX_REPORTED_CONNECTIONS);
    let ids: Vec<_> = conns.iter().map(|(id, _, _)| *id).collect();
    let mut subs = state.hub.channels_of(&ids, MAX_LISTED_SUBSCRIPTIONS);
    conns
        .into_iter()
        .map(|(id, transport, since_ms)| {
            let mut subscriptions: Vec<String> = subs
                .remove(&id)
                .unwrap_or_default()
                .iter()
                .map(ToString::to_string)
                .collect();
            subscriptions.sort();
            ConnInfo {
                transport: transport.to_owned(),
                since_ms,
                subscriptions,
            }
        })
        .collect()
}

#[derive(Debug, Serialize)]
pub struct ProcessInfo {
    process: String,
    /// Age of its last report, ms (0 for the process answering).
    age_ms: i64,
}

#[derive(Debug, Serialize)]
pub struct StatsReply {
    now_ms: i64,
    engine: &'static str,
    /// The processes counted (those that reported within 5 s).
    processes: Vec<ProcessInfo>,
    /// Their metric totals, summed (counters since each process started).
    totals: Totals,
    /// Their delivery latency histograms, summed: cumulative counts per
    /// upper bound in seconds (the total is `totals.delivery_latency_count`).
    delivery_latency_buckets: Vec<Bucket>,
}

/// This process's figures now.
fn own_report(state: &AppState, now: i64) -> NodeReport {
    NodeReport {
        node: state.node_id.to_string(),
        at_ms: now,
        engine: state.engine.name().to_owned(),
        totals: state.metrics.totals(),
        latency_buckets: state.metrics.latency_buckets(),
    }
}

/// `GET /v1/admin/stats`: the cluster's counters and gauges summed over
/// the processes that are up (cumulative; a reader takes rates and latency
/// quantiles from the difference of two readings).
pub async fn get_stats(
    State(state): State<AppState>,
    Authed(claims): Authed,
) -> Result<Json<StatsReply>, AppError> {
    require_service(&claims)?;
    let now = now_ms();
    let own = own_report(&state, now);
    let mut reports = match &state.node_stats {
        Some(stats) => stats
            .live(now)
            .await
            .inspect_err(|_| state.metrics.engine_errors.inc())?,
        None => Vec::new(),
    };
    // This process counts with its figures of now, not its last report.
    reports.retain(|r| r.node != own.node);
    reports.push(own);
    let mut totals = Totals::default();
    let mut buckets = Vec::new();
    let mut processes = Vec::with_capacity(reports.len());
    for r in &reports {
        totals.add(&r.totals);
        add_buckets(&mut buckets, &r.latency_buckets);
        processes.push(ProcessInfo {
            process: r.node.clone(),
            age_ms: (now - r.at_ms).max(0),
        });
    }
    processes.sort_by(|a, b| a.process.cmp(&b.process));
    Ok(Json(StatsReply {
        now_ms: now,
        engine: state.engine.name(),
        processes,
        totals,
        delivery_latency_buckets: buckets,
    }))
}

/// Reports this process's figures to the cluster every [`REPORT_EVERY`]
/// until shutdown (Redis engine only).
pub async fn report_node_stats(state: AppState) {
    let Some(stats) = state.node_stats.clone() else {
        return;
    };
    let mut every = tokio::time::interval(REPORT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = state.shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(e) = stats.report(&own_report(&state, now_ms())).await {
            tracing::debug!(error = %e, "process report failed; retrying");
        }
    }
}

async fn publish(state: &AppState, control: &Control) -> Result<(), AppError> {
    let text =
        serde_json::to_string(control).map_err(|e| AppError::bad("bad_body", e.to_string()))?;
    let frame = Frame::new(text, About::Other, now_us());
    state
        .engine
        .publish(&control_channel(), frame)
        .await
        .inspect_err(|_| state.metrics.engine_errors.inc())?;
    Ok(())
}

/// Applies a control message on this process: adds the revocation to the
/// list verification consults and closes the connections it covers.
pub fn apply(state: &AppState, control: &Control) {
    match control {
        Control::Revoke(r) => {
            // Killed even when already known: the poster applies it first,
            // then its own control message arrives.
            state.keys.revocations().apply(r, now_s());
            let n = state.user_conns.kill_revoked(r, close_code::FORBIDDEN);
            if n > 0 {
                tracing::info!(connections = n, "closed revoked connections");
            }
        }
        Control::Disconnect { user, reconnect } => {
            let code = if *reconnect {
                close_code::DISCONNECTED
            } else {
                close_code::FORBIDDEN
            };
            state.user_conns.kill_user(user, code);
        }
        Control::Report {
            id,
            node,
            connections,
        } => state.lookups.answer(id, node.clone(), connections.clone()),
        // Answered by the control listener (it needs to publish).
        Control::Lookup { .. } => {}
    }
}

/// Answers a lookup with this process's connections of the user.
async fn answer_lookup(state: &AppState, id: String, user: &str) {
    let report = Control::Report {
        id,
        node: state.node_id.to_string(),
        connections: local_connections(state, user),
    };
    match tokio::time::timeout(LOOKUP_WAIT, publish(state, &report)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "cannot answer a user lookup"),
        Err(_) => tracing::debug!("answering a user lookup timed out"),
    }
}

/// Re-reads the engine's revocations into this process's list.
async fn reload(state: &AppState) {
    match state.revocation_store.load().await {
        Ok(all) => {
            let now = now_s();
            let list = state.keys.revocations();
            list.prune(now);
            for r in &all {
                // Only what this process had not applied yet (missed
                // messages, revocations from before it started).
                if list.apply(r, now) {
                    state.user_conns.kill_revoked(r, close_code::FORBIDDEN);
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot load revocations"),
    }
}

/// Listens on the control channel until shutdown: applies every process's
/// revocations and disconnects here, and reloads the stored revocations
/// every [`RELOAD_EVERY`] (a message missed while the engine's subscription
/// was down is applied then).
pub async fn control_listener(state: AppState) {
    let mut every = tokio::time::interval(RELOAD_EVERY);
    let channel = control_channel();
    'mailbox: loop {
        let (handle, mut rx) = connection(state.hub.next_conn_id(), 1024);
        state.hub.add(&channel, handle.clone());
        while let Err(e) = state.engine.sync_subscription(&channel).await {
            tracing::warn!(error = %e, "control channel subscribe failed; retrying");
            tokio::select! {
                () = state.shutdown.cancelled() => break 'mailbox,
                () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        loop {
            tokio::select! {
                () = state.shutdown.cancelled() => {
                    state.hub.remove(&channel, handle.id);
                    break 'mailbox;
                }
                _ = every.tick() => reload(&state).await,
                out = rx.recv() => match out {
                    Some(out) => match serde_json::from_str::<Control>(&out.text) {
                        // Answered beside the loop, so a slow publish does
                        // not hold up revocations behind it.
                        Ok(Control::Lookup { id, user }) => {
                            let state = state.clone();
                            state.tasks.clone().spawn(async move {
                                answer_lookup(&state, id, &user).await;
                            });
                        }
                        Ok(control) => apply(&state, &control),
                        Err(e) => tracing::warn!(error = %e, "bad control message"),
                    },
                    // Killed (fell behind): a fresh mailbox, and a reload
                    // for what was dropped.
                    None => {
                        state.hub.remove(&channel, handle.id);
                        reload(&state).await;
                        continue 'mailbox;
                    }
                },
            }
        }
    }
}
