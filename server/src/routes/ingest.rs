//! Driver location ingest and position reads.

use std::io::Read;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use serde::{Deserialize, Serialize};
use waypost_protocol::{
    validate_id, ActiveOrder, IngestRequest, IngestResponse, LocationResponse, PolicyHint,
    PolicyMode, TrailResponse,
};

use crate::auth::{authorize_tracking, may_post_locations, Authed};
use crate::config::Limits;
use crate::engine::IngestTime;
use crate::error::AppError;
use crate::frame::now_us;
use crate::now_ms;
use crate::orders::live::DriverUpdate;
use crate::state::AppState;

/// `POST /v1/drivers/{driver_id}/locations`
pub async fn post_locations(
    State(state): State<AppState>,
    Path(driver_id): Path<String>,
    Authed(claims): Authed,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<IngestReply>, AppError> {
    // The origin of the live frame, for the delivery latency.
    let origin_us = now_us();
    let result = ingest(&state, &driver_id, &claims, &headers, body, origin_us).await;
    let status = match &result {
        Ok(_) => StatusCode::OK,
        Err(e) => e.status(),
    };
    state
        .metrics
        .ingest_requests
        .with_label_values(&[status.as_str()])
        .inc();
    result.map(Json)
}

/// The ingest answer: the contract's [`IngestResponse`] plus `orders`, the
/// driver's active orders (omitted when none; docs/API-EXTENSIONS.md).
#[derive(Debug, Serialize)]
pub struct IngestReply {
    #[serde(flatten)]
    pub response: IngestResponse,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub orders: Vec<ActiveOrder>,
}

async fn ingest(
    state: &AppState,
    driver_id: &str,
    claims: &waypost_protocol::Claims,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    origin_us: i64,
) -> Result<IngestReply, AppError> {
    validate_id("driver_id", driver_id).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if !may_post_locations(claims, driver_id) {
        return Err(AppError::Forbidden(format!(
            "a token for {:?} may not post locations of {driver_id:?}",
            claims.sub
        )));
    }
    if let Err(wait) = state.ingest_limiter.check(driver_id) {
        state
            .metrics
            .limit_hits
            .with_label_values(&["ingest"])
            .inc();
        return Err(AppError::RateLimited {
            retry_after_s: wait.as_secs().max(1),
        });
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::TooLarge(format!(
                "body larger than {} bytes",
                state.limits.max_body_bytes
            ))
        } else {
            AppError::bad("bad_body", e.body_text())
        }
    })?;
    let now = state.ingest_clock.now_ms();
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let (req, high_seq) = parse_batch(encoding, body, &state.limits, now)?;
    // A batch that may fill a gap in what watchers saw: the engine leaves
    // the live frame to us, so the `trail` goes out before it.
    let gap = crate::trail::may_fill_gap(&req.fixes, now);
    let outcome = state
        .engine
        .ingest(
            driver_id,
            &req.device_id,
            &req.fixes,
            IngestTime {
                now_ms: now,
                origin_us,
                publish_live: !gap,
            },
        )
        .await?;
    state
        .metrics
        .fixes_ingested
        .inc_by(u64::from(outcome.accepted));
    state
        .metrics
        .fixes_duplicate
        .inc_by(u64::from(outcome.duplicates));
    count_superseded(&state.metrics, &outcome);
    let mut trail = Vec::new();
    if let Some(fix) = &outcome.new_latest {
        state
            .activity
            .driver_seen(driver_id, &req.device_id, fix, outcome.watchers, now);
        // Only fixes this batch stored (a partly resent batch sends none).
        if gap && outcome.duplicates == 0 {
            trail = crate::trail::segment(&req.fixes, outcome.previous_ts, fix);
        }
    }
    // Every fix of the batch, duplicates included: the arrival/ETA tracker
    // ignores fixes it has seen (by ts), and a resent batch after a failure
    // here feeds them again.
    let update = DriverUpdate {
        latest: outcome.new_latest.as_ref(),
        trail: &trail,
        silence: req.silence.as_ref(),
        published: outcome.published,
        watchers: outcome.watchers,
    };
    let orders: Vec<ActiveOrder> = state
        .orders
        .on_fixes(driver_id, &req.fixes, update, now, origin_us)
        .await?
        .into_iter()
        .map(|o| ActiveOrder {
            order_id: o.order_id,
            destination: o.destination,
        })
        .collect();
    // Near an active order's destination the SDK uploads as if watched, so
    // arrival is seen within one watched interval; after the order ends it
    // is no longer active and the policy relaxes.
    // A coarse fix (kilometres off) says nothing about being near.
    let newest = req
        .fixes
        .iter()
        .filter(|f| !f.is_coarse())
        .max_by_key(|f| f.ts);
    let approaching = newest.is_some_and(|f| {
        orders.iter().any(|o: &ActiveOrder| {
            o.destination
                .is_some_and(|d| crate::orders::eta::approaching(f.lat, f.lon, &d))
        })
    });
    let (mode, upload_interval_s) = if outcome.watchers > 0 || approaching {
        (PolicyMode::Watched, state.limits.watched_upload_interval_s)
    } else {
        (
            PolicyMode::Unwatched,
            state.limits.unwatched_upload_interval_s,
        )
    };
    Ok(IngestReply {
        response: IngestResponse {
            accepted: outcome.accepted,
            duplicates: outcome.duplicates,
            high_seq,
            watchers: outcome.watchers,
            policy: PolicyHint {
                mode,
                upload_interval_s,
            },
        },
        orders,
    })
}

/// Decodes, parses and validates an ingest body without touching any state:
/// gzip (bounded inflation), JSON, ids, batch size, every fix's ranges and
/// strictly increasing seqs. Returns the request and its highest seq. Pure,
/// so it is unit-tested and fuzzed (`fuzz/fuzz_targets/ingest_body.rs`).
pub fn parse_batch(
    content_encoding: Option<&str>,
    body: Bytes,
    limits: &Limits,
    now_ms: i64,
) -> Result<(IngestRequest, u64), AppError> {
    let raw = decode_body(content_encoding, body, limits.max_body_bytes)?;
    let req: IngestRequest =
        serde_json::from_slice(&raw).map_err(|e| AppError::bad("bad_json", e.to_string()))?;
    validate_id("device_id", &req.device_id).map_err(|e| AppError::bad("bad_id", e.to_string()))?;
    if req.fixes.is_empty() {
        return Err(AppError::bad("empty_batch", "fixes is empty"));
    }
    if req.fixes.len() > limits.max_batch_fixes {
        return Err(AppError::TooLarge(format!(
            "batch of {} fixes; at most {} per request",
            req.fixes.len(),
            limits.max_batch_fixes
        )));
    }
    let mut prev: Option<u64> = None;
    for (index, fix) in req.fixes.iter().enumerate() {
        fix.validate(now_ms).map_err(|e| AppError::BadFix {
            index,
            seq: fix.seq,
            message: e.to_string(),
        })?;
        if prev.is_some_and(|p| fix.seq <= p) {
            return Err(AppError::BadFix {
                index,
                seq: fix.seq,
                message: "seqs within a batch must strictly increase".into(),
            });
        }
        prev = Some(fix.seq);
    }
    let high_seq = prev.unwrap_or(0);
    Ok((req, high_seq))
}

/// Gunzips the body when `Content-Encoding: gzip`, refusing to inflate past
/// `max` bytes.
fn decode_body(encoding: Option<&str>, body: Bytes, max: usize) -> Result<Bytes, AppError> {
    match encoding.unwrap_or("identity") {
        "identity" => Ok(body),
        "gzip" => {
            let mut out = Vec::new();
            let mut reader = flate2::read::GzDecoder::new(&body[..]).take(max as u64 + 1);
            reader
                .read_to_end(&mut out)
                .map_err(|e| AppError::bad("bad_body", format!("invalid gzip body: {e}")))?;
            if out.len() > max {
                return Err(AppError::TooLarge(format!(
                    "decompressed body larger than {max} bytes"
                )));
            }
            Ok(Bytes::from(out))
        }
        other => Err(AppError::bad(
            "bad_body",
            format!("unsupported Content-Encoding {other:?}; use gzip or none"),
        )),
    }
}

/// `GET /v1/drivers/{driver_id}/location`
pub async fn get_location(
    State(state): State<AppState>,
    Path(driver_id): Path<String>,
    Authed(claims): Authed,
) -> Result<Json<LocationResponse>, AppError> {
    authorize_tracking(&claims, &driver_id)?;
    let now = now_ms();
    let latest = state.engine.latest(&driver_id, now).await?;
    let stored =
        latest.ok_or_else(|| AppError::NotFound(format!("no recent location for {driver_id}")))?;
    Ok(Json(LocationResponse {
        driver_id,
        age_ms: (now - stored.received_ms).max(0),
        online: true,
        fix: stored.fix,
    }))
}

#[derive(Debug, Deserialize)]
pub struct TrailQuery {
    #[serde(default)]
    after_seq: u64,
    limit: Option<u64>,
}

/// `GET /v1/drivers/{driver_id}/trail?after_seq=N&limit=M`
pub async fn get_trail(
    State(state): State<AppState>,
    Path(driver_id): Path<String>,
    Authed(claims): Authed,
    query: Result<Query<TrailQuery>, QueryRejection>,
) -> Result<Json<TrailResponse>, AppError> {
    authorize_tracking(&claims, &driver_id)?;
    let Query(q) = query.map_err(|e| AppError::bad("bad_query", e.body_text()))?;
    let limit = crate::routes::chat::checked_limit(q.limit, state.limits.trail_len)?
        .unwrap_or(state.limits.trail_len);
    let fixes = state.engine.trail(&driver_id, q.after_seq, limit).await?;
    Ok(Json(TrailResponse { fixes }))
}

/// Counts the accepted fixes that are not broadcast: all but the newest of
/// the batch, and the newest too when a newer fix was already live.
fn count_superseded(metrics: &crate::metrics::Metrics, outcome: &crate::engine::IngestOutcome) {
    let Some(older) = outcome.accepted.checked_sub(1) else {
        return;
    };
    let superseded = &metrics.fixes_superseded;
    superseded
        .with_label_values(&["newer_in_batch"])
        .inc_by(u64::from(older));
    if outcome.new_latest.is_none() {
        superseded.with_label_values(&["newer_live"]).inc();
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(enc: Option<&str>, body: &[u8]) -> Result<(IngestRequest, u64), AppError> {
        parse_batch(enc, Bytes::copy_from_slice(body), &Limits::default(), NOW)
    }

    /// A POST overtaken by a newer one of the same driver is counted as
    /// `newer_live`, the older fixes of a batch as `newer_in_batch`.
    #[tokio::test]
    async fn superseded_fixes_are_counted_by_reason() {
        let metrics = crate::metrics::Metrics::new();
        let hub = std::sync::Arc::new(crate::hub::Hub::new(metrics.clone()));
        let engine = crate::engine::Engine::memory(hub, Limits::default());
        let fix = |seq: u64, ts: i64| -> waypost_protocol::Fix {
            serde_json::from_value(
                serde_json::json!({"seq": seq, "ts": ts, "lat": 1.0, "lon": 2.0}),
            )
            .unwrap()
        };
        let count = |reason: &str| metrics.fixes_superseded.with_label_values(&[reason]).get();
        for fixes in [
            vec![fix(1, NOW - 30), fix(3, NOW - 10)],
            vec![fix(2, NOW - 20)],
        ] {
            let outcome = engine.ingest("d", "dev", &fixes, NOW.into()).await.unwrap();
            count_superseded(&metrics, &outcome);
        }
        assert_eq!((count("newer_in_batch"), count("newer_live")), (1, 1));
        // A newer fix becomes live: nothing more is superseded.
        let outcome = engine
            .ingest("d", "dev", &[fix(4, NOW)], NOW.into())
            .await
            .unwrap();
        count_superseded(&metrics, &outcome);
        assert_eq!((count("newer_in_batch"), count("newer_live")), (1, 1));
    }

    #[test]
    fn gzip_bodies_are_accepted_and_bounded() {
        let json = br#"{"device_id":"d","fixes":[{"seq":3,"ts":1700000000000,"lat":1,"lon":2}]}"#;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(json).unwrap();
        let (req, high) = parse(Some("gzip"), &gz.finish().unwrap()).unwrap();
        assert_eq!((req.fixes.len(), high), (1, 3));

        // A gzip bomb inflating past the body limit is refused with 413.
        let mut bomb = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        bomb.write_all(&vec![b' '; 2 * 1024 * 1024]).unwrap();
        let err = parse(Some("gzip"), &bomb.finish().unwrap()).unwrap_err();
        assert_eq!(err.status(), StatusCode::PAYLOAD_TOO_LARGE);

        assert_eq!(
            parse(Some("gzip"), b"not gzip").unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            parse(Some("br"), json).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    #[test]
    fn refusals_name_the_fix() {
        let body = br#"{"device_id":"d","fixes":[{"seq":1,"ts":1700000000000,"lat":1,"lon":2},{"seq":2,"ts":1700000000000,"lat":1,"lon":200}]}"#;
        match parse(None, body) {
            Err(AppError::BadFix { index, seq, .. }) => assert_eq!((index, seq), (1, 2)),
            other => panic!("expected BadFix, got {other:?}"),
        }
        let bad_device =
            br#"{"device_id":"a b","fixes":[{"seq":1,"ts":1700000000000,"lat":1,"lon":2}]}"#;
        assert_eq!(
            parse(None, bad_device).unwrap_err().status(),
            StatusCode::BAD_REQUEST
        );
    }

    /// Ingest judges fixes by `AppState::ingest_clock`: a fix an hour
    /// ahead of the real clock is refused with the system clock and
    /// accepted by a server whose ingest clock reads that hour.
    #[tokio::test]
    async fn ingest_judges_fixes_by_its_clock() {
        use std::sync::Arc;
        use tower::ServiceExt;

        #[derive(Debug)]
        struct Fixed(i64);
        impl crate::IngestClock for Fixed {
            fn now_ms(&self) -> i64 {
                self.0
            }
        }
        let ahead = now_ms() + 3_600_000;
        let post = |state: AppState| async move {
            let keys = state.keys.clone();
            let router = crate::app::build_router(state);
            let token = keys
                .mint(&waypost_protocol::Claims {
                    sub: "d-1".into(),
                    role: waypost_protocol::Role::Driver,
                    exp: 4_000_000_000,
                    channels: None,
                })
                .unwrap();
            let body = serde_json::json!({"device_id": "p",
                "fixes": [{"seq": 1, "ts": ahead - 1_000, "lat": 52.5, "lon": 13.4}]});
            let req = axum::http::Request::builder()
                .method("POST")
                .uri("/v1/drivers/d-1/locations")
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            router.oneshot(req).await.unwrap().status()
        };
        let state = || {
            let metrics = crate::metrics::Metrics::new();
            let hub = Arc::new(crate::hub::Hub::new(metrics.clone()));
            let engine = crate::engine::Engine::memory(Arc::clone(&hub), Limits::default());
            let keys = crate::auth::AuthKeys::new(b"k");
            AppState::new(engine, hub, keys, Limits::default(), metrics)
        };
        assert_eq!(post(state()).await, StatusCode::BAD_REQUEST);
        let clocked = state().with_ingest_clock(Arc::new(Fixed(ahead)));
        assert_eq!(post(clocked).await, StatusCode::OK);
    }
}
