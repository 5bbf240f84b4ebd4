//! Server-Sent Events: vendor notifications
//! (`GET /v1/vendors/{id}/notifications/stream`, posted with
//! `POST /v1/vendors/{id}/notifications`, read back page by page with
//! `GET /v1/vendors/{id}/notifications?after_seq=N`) and a driver's position
//! (`GET /v1/drivers/{id}/location/stream`) for browsers that only watch.
//!
//! Each stream is one task tracked in `state.tasks`: it subscribes to its
//! channel (`vendor:{id}` or `tracking:{id}`) before reading history, so
//! nothing published in between is lost, then writes replayed and live
//! events in seq order without duplicates ([`SeqCursor`]), a `: keepalive`
//! comment every interval, and ends on shutdown, when the client goes away
//! or when it reads too slowly.

use std::convert::Infallible;

use axum::body::{Body, Bytes};
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use tokio::sync::mpsc;
use waypost_protocol::{
    validate_id, Channel, Claims, NotificationAccepted, NotificationPost, NotificationsResponse,
    Role, VendorNotification,
};

use crate::auth::{authorize_tracking, Authed, AuthedToken};
use crate::engine::chat::{SeqCursor, SeqStep};
use crate::engine::EngineError;
use crate::error::AppError;
use crate::frame::About;
use crate::hub::{connection, ConnHandle, Event, Outbound, Receiver};
use crate::keys::Verified;
use crate::now_ms;
use crate::routes::orders::authorize_order_read;
use crate::routes::subscription::{Open, Subscription};
use crate::state::AppState;

/// Chunks buffered between a stream task and the HTTP body.
const BODY_QUEUE: usize = 32;
/// Reconnect delay suggested to EventSource clients.
const RETRY_MS: u32 = 2000;

/// `?last_event_id=N` for clients that cannot set the header, and `token`
/// (read by the auth extractor).
#[derive(Debug, Default, Deserialize)]
pub struct StreamQuery {
    last_event_id: Option<String>,
}

/// The resume point: `Last-Event-ID` header, else `?last_event_id=`.
fn last_event_id(headers: &HeaderMap, query: &StreamQuery) -> Result<Option<u64>, AppError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .or(query.last_event_id.as_deref());
    raw.map(|s| {
        s.parse::<u64>().map_err(|_| {
            AppError::bad(
                "bad_last_event_id",
                format!("Last-Event-ID must be a decimal id, got {:.40?}", s),
            )
        })
    })
    .transpose()
}

fn may_stream_vendor(claims: &Claims, vendor: &str) -> bool {
    match claims.role {
        Role::Service => true,
        Role::Vendor => claims.sub == vendor,
        Role::Buyer | Role::Driver => false,
    }
}

/// `POST /v1/vendors/{vendor_id}/notifications` (role `service`).
pub async fn post_notification(
    State(state): State<AppState>,
    Path(vendor): Path<String>,
    Authed(claims): Authed,
    body: Result<Json<NotificationPost>, JsonRejection>,
) -> Result<(StatusCode, Json<NotificationAccepted>), AppError> {
    validate_id("vendor_id", &vendor).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if claims.role != Role::Service {
        return Err(AppError::Forbidden(
            "only the service role may post notifications".into(),
        ));
    }
    let Json(post) = body.map_err(|e| AppError::bad("bad_json", e.body_text()))?;
    let n = state.chat().notify(&vendor, &post.event, post.data).await?;
    state
        .activity
        .notification(&vendor, &n.event, &n.seq.to_string(), n.ts);
    Ok((
        StatusCode::ACCEPTED,
        Json(NotificationAccepted {
            id: n.seq.to_string(),
        }),
    ))
}

/// `?after_seq=N&limit=M` of the notification history.
#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    #[serde(default)]
    after_seq: u64,
    limit: Option<u64>,
}

/// Longest page of `GET /v1/vendors/{vendor_id}/notifications`.
pub const MAX_NOTIFICATION_PAGE: usize = 500;

/// `GET /v1/vendors/{vendor_id}/notifications?after_seq=N&limit=M`: the
/// stored notifications after `N` (what a stream would replay), for an app
/// woken by a push (issue 19). Same readers as the stream.
pub async fn get_notifications(
    State(state): State<AppState>,
    Path(vendor): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<NotificationsResponse>, AppError> {
    validate_id("vendor_id", &vendor).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if !may_stream_vendor(&claims, &vendor) {
        return Err(AppError::Forbidden(format!(
            "a token for {:?} may not read the notifications of {vendor:?}",
            claims.sub
        )));
    }
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let limit = crate::routes::chat::checked_limit(q.limit, MAX_NOTIFICATION_PAGE)?
        .unwrap_or(100)
        .min(state.limits.notification_history_len.max(1));
    let h = state
        .stores
        .notifications
        .after(&vendor, q.after_seq, limit)
        .await?;
    let more = h.items.last().is_some_and(|n| n.seq < h.high_seq);
    Ok(Json(NotificationsResponse {
        notifications: h
            .items
            .into_iter()
            .map(|n| VendorNotification {
                id: n.seq.to_string(),
                seq: n.seq,
                event: n.event,
                data: n.data,
                ts: n.ts,
            })
            .collect(),
        more,
    }))
}

/// What a stream serves.
enum Feed {
    Vendor(String),
    Location(String),
    /// An order's entries (`id:` = timeline seq) and, while it is active,
    /// its driver's locations (no `id:`, so Last-Event-ID stays an entry).
    Order {
        order: String,
        ended: bool,
    },
}

/// `GET /v1/vendors/{vendor_id}/notifications/stream`
pub async fn vendor_stream(
    State(state): State<AppState>,
    Path(vendor): Path<String>,
    AuthedToken(token): AuthedToken,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    validate_id("vendor_id", &vendor).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    let claims = &token.claims;
    if !may_stream_vendor(claims, &vendor) {
        return Err(AppError::Forbidden(format!(
            "a token for {:?} may not stream the notifications of {vendor:?}",
            claims.sub
        )));
    }
    let Query(query) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let after = last_event_id(&headers, &query)?;
    let max = state.limits.max_sse_per_vendor;
    let vendor_permit = state
        .sse_per_vendor
        .acquire(&vendor, max)
        .map_err(|_| too_many(&state, &format!("at most {max} streams per vendor")))?;
    let open = Open::new(
        &state,
        "sse",
        [state.user_permit(&claims.sub)?, vendor_permit],
    );
    start(state, Feed::Vendor(vendor), after, open, &token).await
}

/// `GET /v1/drivers/{driver_id}/location/stream`
pub async fn location_stream(
    State(state): State<AppState>,
    Path(driver): Path<String>,
    AuthedToken(token): AuthedToken,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    authorize_tracking(&token.claims, &driver)?;
    let Query(query) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let after = last_event_id(&headers, &query)?;
    let open = Open::new(&state, "sse", [state.user_permit(&token.claims.sub)?]);
    start(state, Feed::Location(driver), after, open, &token).await
}

/// `GET /v1/orders/{order_id}/stream`: an order's timeline entries as
/// `order` events (resume with `Last-Event-ID` = seq) and its driver's
/// `location` events while it is active. Same readers as the order.
pub async fn order_stream(
    State(state): State<AppState>,
    Path(order): Path<String>,
    AuthedToken(token): AuthedToken,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Response, AppError> {
    let claims = &token.claims;
    let Some(current) = authorize_order_read(&state, claims, &order).await? else {
        return Err(AppError::NotFound(format!("no order {order:?}")));
    };
    let Query(query) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let after = last_event_id(&headers, &query)?;
    let open = Open::new(&state, "sse", [state.user_permit(&claims.sub)?]);
    let ended = current.status.is_final();
    start(state, Feed::Order { order, ended }, after, open, &token).await
}

fn too_many(state: &AppState, message: &str) -> AppError {
    state
        .metrics
        .limit_hits
        .with_label_values(&["connections"])
        .inc();
    tracing::debug!(message, "stream refused");
    AppError::RateLimited { retry_after_s: 5 }
}

/// Subscribes and reads the replay before answering, so that once the
/// response headers are out the stream misses nothing published later;
/// then hands the stream to a task tracked in `state.tasks`. The stream
/// ends at the token's `exp` and when the token is revoked or its user
/// disconnected.
async fn start<const N: usize>(
    state: AppState,
    feed: Feed,
    after: Option<u64>,
    open: Open<N>,
    token: &Verified,
) -> Result<Response, AppError> {
    let (tx, rx) = mpsc::channel::<Bytes>(BODY_QUEUE);
    let mut stream = Stream::open(state.clone(), feed, tx);
    let expiry = state
        .expiry
        .watch(&stream.handle, token.claims.exp, false, crate::now_s());
    let listed = state
        .user_conns
        .list(token, &stream.handle, crate::revocation::Transport::Sse);
    // On an error the subscription (if any) is left as it drops.
    let sub = Subscription::join(&state, stream.channel.clone(), &stream.handle).await?;
    let (replay, cursor) = stream.prepare(after).await?;
    state.tasks.spawn(async move {
        stream.run(replay, cursor).await;
        sub.leave().await;
        drop((open, expiry, listed));
    });
    let body = Body::from_stream(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, Infallible>(chunk), rx))
    }));
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            ),
        ],
        body,
    )
        .into_response())
}

/// One open stream.
struct Stream {
    state: AppState,
    feed: Feed,
    channel: Channel,
    handle: ConnHandle,
    rx: Receiver,
    tx: mpsc::Sender<Bytes>,
}

/// Why writing stopped.
struct Gone;

impl Stream {
    fn open(state: AppState, feed: Feed, tx: mpsc::Sender<Bytes>) -> Self {
        let channel = match &feed {
            Feed::Vendor(v) => Channel::vendor(v),
            Feed::Location(d) => Channel::tracking(d),
            Feed::Order { order, .. } => Channel::order(order),
        };
        let (handle, rx) = connection(state.hub.next_conn_id(), state.limits.ws_queue_frames);
        Self {
            state,
            feed,
            channel,
            handle,
            rx,
            tx,
        }
    }

    async fn send(&self, chunk: impl Into<Bytes>) -> Result<(), Gone> {
        tokio::select! {
            r = self.tx.send(chunk.into()) => r.map_err(|_| Gone),
            () = self.state.shutdown.cancelled() => Err(Gone),
        }
    }

    async fn run(&mut self, replay: Vec<String>, mut cursor: SeqCursor) {
        if self.send(format!("retry: {RETRY_MS}\n\n")).await.is_err() {
            return;
        }
        for chunk in replay {
            if self.send(chunk).await.is_err() {
                return;
            }
        }
        let every = self.state.limits.sse_keepalive;
        let mut keepalive = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        loop {
            let step = tokio::select! {
                biased;
                () = self.state.shutdown.cancelled() => break,
                () = self.tx.closed() => break,
                event = self.rx.next() => match event {
                    Event::Frame(out) => self.live(out, &mut cursor).await,
                    Event::Killed(code) => {
                        // 4101 too slow, 4001 token expired, 4003 revoked,
                        // 4103 disconnected by an operator.
                        tracing::debug!(channel = %self.channel, code, "stream closing");
                        break;
                    }
                    Event::Tick => Ok(()),
                },
                _ = keepalive.tick() => self.send(": keepalive\n\n").await,
            };
            if step.is_err() {
                break;
            }
        }
    }

    /// The events to replay after `after` and the cursor live events
    /// continue from.
    async fn prepare(&self, after: Option<u64>) -> Result<(Vec<String>, SeqCursor), EngineError> {
        match &self.feed {
            Feed::Vendor(vendor) => {
                let store = &self.state.stores.notifications;
                let limit = self.state.limits.notification_history_len;
                // Without Last-Event-ID a stream starts with what comes next.
                let Some(a) = after else {
                    let h = store.after(vendor, 0, 0).await?;
                    return Ok((Vec::new(), SeqCursor::new(h.high_seq)));
                };
                let mut h = store.after(vendor, a, limit).await?;
                if a > h.high_seq {
                    // The id is from before the history expired or was lost
                    // (seqs started over): everything retained is new to it.
                    h = store.after(vendor, 0, limit).await?;
                }
                // A trimmed history cannot give back more than it has.
                let replay = h.items.iter().map(|n| n.to_sse()).collect();
                Ok((replay, SeqCursor::new(h.high_seq)))
            }
            Feed::Location(driver) => {
                let latest = match self.state.engine.latest(driver, now_ms()).await {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::debug!(error = %e, "latest position unavailable");
                        None
                    }
                };
                if let Some(l) = latest {
                    if after.is_none_or(|a| l.fix.seq != a) {
                        let frame = waypost_protocol::ServerFrame::Location {
                            channel: self.channel.to_string(),
                            driver_id: driver.clone(),
                            fix: l.fix.clone(),
                        };
                        let event = location_event(l.fix.seq, &frame.to_json());
                        return Ok((vec![event], SeqCursor::new(l.fix.seq)));
                    }
                }
                Ok((Vec::new(), SeqCursor::new(after.unwrap_or(0))))
            }
            Feed::Order { order, .. } => {
                let orders = &self.state.orders.orders;
                let limit = self.state.limits.chat_replay_limit;
                let Some(a) = after else {
                    let t = orders.timeline(order, 0, 0).await.map_err(order_err)?;
                    return Ok((Vec::new(), SeqCursor::new(t.high_seq)));
                };
                let mut t = orders.timeline(order, a, limit).await.map_err(order_err)?;
                if a > t.high_seq {
                    // Seqs started over (the order expired): all is new.
                    t = orders.timeline(order, 0, limit).await.map_err(order_err)?;
                }
                // Beyond the replay limit the client pages with the
                // timeline endpoint; the cursor continues after what was
                // replayed, gaps above are filled live.
                let delivered = t.entries.last().map_or(a.min(t.high_seq), |e| e.seq);
                let replay = t.entries.iter().map(|e| order_event(order, e)).collect();
                Ok((replay, SeqCursor::new(delivered)))
            }
        }
    }

    async fn live(&mut self, out: Outbound, cursor: &mut SeqCursor) -> Result<(), Gone> {
        let metrics = &self.state.metrics;
        metrics.observe_latency(out.meta.origin_us);
        metrics.delivered(out.kind().name(), 1);
        match &self.feed {
            Feed::Vendor(vendor) => {
                let Some(seq) = out.seq() else {
                    return self.send(Bytes::from(out.text.clone())).await;
                };
                match cursor.step(seq) {
                    SeqStep::Duplicate => return Ok(()),
                    SeqStep::Next => {}
                    SeqStep::Gap { from, to } => {
                        // Published out of order (several processes): the
                        // missing ones are stored already.
                        let limit = (to - from + 1) as usize;
                        match self
                            .state
                            .stores
                            .notifications
                            .after(vendor, from - 1, limit)
                            .await
                        {
                            Ok(h) => {
                                for n in h.items.iter().filter(|n| n.seq <= to) {
                                    self.send(n.to_sse()).await?;
                                    cursor.advance(n.seq);
                                }
                            }
                            Err(e) => {
                                // Skipping the gap would lose those events
                                // for good (the client's Last-Event-ID moves
                                // past them): end the stream instead; the
                                // client resumes from the last id it has.
                                tracing::warn!(error = %e, "gap fill failed: ending the stream");
                                return Err(Gone);
                            }
                        }
                    }
                }
                cursor.advance(seq);
                self.send(Bytes::from(out.text.clone())).await
            }
            Feed::Order { order, ended } => {
                let (seq, ends) = match &out.meta.about {
                    About::OrderLocation { .. } => {
                        if *ended {
                            return Ok(());
                        }
                        let text = format!("event: location\ndata: {}\n\n", out.text);
                        return self.send(text).await;
                    }
                    About::DriverNote { event, .. } => {
                        if *ended {
                            return Ok(());
                        }
                        let text = format!("event: {event}\ndata: {}\n\n", out.text);
                        return self.send(text).await;
                    }
                    About::Order { seq, ends, .. } => (*seq, *ends),
                    _ => return Ok(()),
                };
                let order = order.clone();
                match cursor.step(seq) {
                    SeqStep::Duplicate => return Ok(()),
                    SeqStep::Next => {}
                    SeqStep::Gap { from, to } => {
                        let limit = (to - from + 1) as usize;
                        let t = match self
                            .state
                            .orders
                            .orders
                            .timeline(&order, from - 1, limit)
                            .await
                        {
                            Ok(t) => t,
                            Err(e) => {
                                tracing::warn!(error = %e, "order gap fill failed: ending the stream");
                                return Err(Gone);
                            }
                        };
                        for e in t.entries.iter().filter(|e| e.seq <= to) {
                            self.send(order_event(&order, e)).await?;
                            cursor.advance(e.seq);
                            if crate::orders::domain::entry_ends(e) {
                                self.set_order_ended();
                            }
                        }
                    }
                }
                cursor.advance(seq);
                if ends {
                    self.set_order_ended();
                }
                self.send(format!("id: {seq}\nevent: order\ndata: {}\n\n", out.text))
                    .await
            }
            Feed::Location(_) => {
                if let About::DriverNote { event, .. } = &out.meta.about {
                    // No id: resuming is by the fixes' seqs.
                    let text = format!("event: {event}\ndata: {}\n\n", out.text);
                    return self.send(text).await;
                }
                let seq = out.seq().unwrap_or(0);
                // The position read at start may come again live; fixes are
                // per device so only an exact repeat is skipped.
                if seq == cursor.delivered && seq != 0 {
                    return Ok(());
                }
                *cursor = SeqCursor::new(seq);
                self.send(location_event(seq, &out.text)).await
            }
        }
    }
}

impl Stream {
    fn set_order_ended(&mut self) {
        if let Feed::Order { ended, .. } = &mut self.feed {
            *ended = true;
        }
    }
}

fn order_err(e: crate::orders::OrderError) -> EngineError {
    match e {
        crate::orders::OrderError::Store(s) => s,
        other => EngineError::Redis(other.to_string()),
    }
}

/// An order entry as an SSE event (`id:` = seq).
fn order_event(order_id: &str, e: &waypost_protocol::TimelineEntry) -> String {
    let json =
        serde_json::to_string(&waypost_protocol::OrderFrame::new(order_id, e)).unwrap_or_default();
    format!("id: {}\nevent: order\ndata: {json}\n\n", e.seq)
}

fn location_event(seq: u64, json: &str) -> String {
    format!("id: {seq}\nevent: location\ndata: {json}\n\n")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::auth::AuthKeys;
    use crate::frame::Frame;
    use waypost_protocol::ChannelKind;

    /// The seq of a preformatted notification event (`id: N` first line).
    fn sse_id(text: &str) -> Option<u64> {
        text.strip_prefix("id: ")?.split('\n').next()?.parse().ok()
    }

    use crate::config::Limits;
    use crate::engine::Engine;
    use crate::hub::Hub;
    use crate::metrics::Metrics;

    fn state() -> AppState {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let engine = Engine::memory(Arc::clone(&hub), Limits::default());
        AppState::new(engine, hub, AuthKeys::new(b"k"), Limits::default(), metrics)
    }

    fn outbound(n: &crate::engine::chat::Notification) -> Outbound {
        Outbound::new(
            Frame::notification(n.seq, n.to_sse(), 0),
            ChannelKind::Vendor,
        )
    }

    /// Notifications published out of order (two processes) or twice come
    /// out of a stream gap-free, in order, once.
    #[tokio::test]
    async fn stream_fills_gaps_and_dedupes() {
        let state = state();
        let (tx, mut rx) = mpsc::channel(16);
        let mut stream = Stream::open(state.clone(), Feed::Vendor("v".into()), tx);
        let mut sse = Vec::new();
        for i in 0..4 {
            let n = state
                .stores
                .notifications
                .append("v", "new-order", serde_json::json!({ "i": i }), 0)
                .await
                .unwrap();
            sse.push(n);
        }
        let mut cursor = SeqCursor::new(1);
        for n in [&sse[2], &sse[1], &sse[0], &sse[3], &sse[3]] {
            assert!(stream.live(outbound(n), &mut cursor).await.is_ok());
        }
        drop(stream);
        let mut got = Vec::new();
        while let Some(chunk) = rx.recv().await {
            got.push(sse_id(std::str::from_utf8(&chunk).unwrap()).unwrap());
        }
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn parses_ids() {
        assert_eq!(sse_id("id: 42\nevent: x\ndata: {}\n\n"), Some(42));
        assert_eq!(sse_id("event: x\n"), None);
        let mut h = HeaderMap::new();
        assert_eq!(last_event_id(&h, &StreamQuery::default()).unwrap(), None);
        let q = StreamQuery {
            last_event_id: Some("7".into()),
        };
        assert_eq!(last_event_id(&h, &q).unwrap(), Some(7));
        h.insert("last-event-id", HeaderValue::from_static(" 9 "));
        assert_eq!(last_event_id(&h, &q).unwrap(), Some(9), "header wins");
        h.insert("last-event-id", HeaderValue::from_static("abc"));
        assert!(last_event_id(&h, &q).is_err());
    }
}
