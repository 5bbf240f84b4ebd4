//! The live operations dashboard: `GET /` serves one static page (embedded,
//! no build step) that follows `GET /v1/dashboard/stream`, an SSE stream of
//! snapshots: drivers online with the age of their last position and their
//! watcher count, open connections, message rates and recent vendor
//! notifications. `GET /v1/dashboard/snapshot` answers one snapshot as JSON.
//!
//! Everything here needs a `service` token (`?token=` for the page and the
//! stream, since browsers cannot set headers on `EventSource`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use prometheus::IntGauge;
use serde::Serialize;
use waypost_protocol::{Channel, Claims, Role};

use crate::activity::{DriverSeen, NotificationSeen};
use crate::auth::{token_from_parts, Authed, AuthedToken};
use crate::error::AppError;
use crate::metrics::Totals;
use crate::now_ms;
use crate::state::AppState;

/// The page, embedded at compile time.
const PAGE: &str = include_str!("dashboard.html");
/// Where the tile URL template goes into the page.
const TILES_META: &str = r#"<meta name="waypost-tiles" content="">"#;
/// Longest `--dashboard-tiles` template.
const MAX_TILE_TEMPLATE: usize = 512;
/// How often the stream sends a snapshot when nothing happens.
pub const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(1);
/// Snapshots triggered by activity (an upload, a notification) are at least
/// this far apart, so a busy server costs a stream at most a few per second.
pub const MIN_SNAPSHOT_GAP: Duration = Duration::from_millis(250);
/// Drivers listed per snapshot (the total count is always given).
const MAX_LISTED_DRIVERS: usize = 50;
/// Time budget for refreshing watcher counts from the engine per snapshot.
const WATCHERS_BUDGET: Duration = Duration::from_millis(300);

/// One driver row.
#[derive(Debug, Clone, Serialize)]
pub struct DriverRow {
    #[serde(flatten)]
    pub seen: DriverSeen,
    /// Age of the last upload at snapshot time.
    pub age_ms: i64,
}

/// Per-second rates since the previous snapshot of the same stream.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Rates {
    pub fixes_per_s: f64,
    pub ingest_requests_per_s: f64,
    pub deliveries_per_s: f64,
    /// Mean ingest → socket latency of the deliveries in the interval.
    pub mean_delivery_latency_ms: Option<f64>,
}

/// What the dashboard shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub now_ms: i64,
    pub engine: &'static str,
    pub drivers_online: usize,
    pub drivers: Vec<DriverRow>,
    pub totals: Totals,
    pub rates: Rates,
    pub notifications: Vec<NotificationSeen>,
}

/// The previous totals of one stream, for rates.
struct Previous {
    at: Instant,
    totals: Totals,
}

async fn snapshot(state: &AppState, prev: &mut Option<Previous>) -> Snapshot {
    let now = now_ms();
    let ttl_ms = i64::try_from(state.limits.online_ttl.as_millis()).unwrap_or(i64::MAX);
    let (drivers_online, seen) = state
        .activity
        .drivers_online(now, ttl_ms, MAX_LISTED_DRIVERS);
    let deadline = tokio::time::Instant::now() + WATCHERS_BUDGET;
    let mut drivers = Vec::with_capacity(seen.len());
    for mut d in seen {
        // Current watchers across every process; keep the count from the
        // last upload when the engine is slow or down.
        let channel = Channel::tracking(d.driver_id.clone());
        if let Ok(Ok(n)) = tokio::time::timeout_at(deadline, state.engine.watchers(&channel)).await
        {
            d.watchers = n;
        }
        drivers.push(DriverRow {
            age_ms: (now - d.seen_ms).max(0),
            seen: d,
        });
    }
    let totals = state.metrics.totals();
    let at = Instant::now();
    let rates = match prev.as_ref() {
        Some(p) => rates(&p.totals, &totals, at.duration_since(p.at)),
        None => Rates::default(),
    };
    *prev = Some(Previous {
        at,
        totals: totals.clone(),
    });
    Snapshot {
        now_ms: now,
        engine: state.engine.name(),
        drivers_online,
        drivers,
        totals,
        rates,
        notifications: state.activity.recent_notifications(),
    }
}

fn rates(before: &Totals, after: &Totals, elapsed: Duration) -> Rates {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let per_s = |a: u64, b: u64| b.saturating_sub(a) as f64 / secs;
    let n = after
        .delivery_latency_count
        .saturating_sub(before.delivery_latency_count);
    Rates {
        fixes_per_s: per_s(before.fixes_ingested, after.fixes_ingested),
        ingest_requests_per_s: per_s(before.ingest_requests, after.ingest_requests),
        deliveries_per_s: per_s(before.deliveries, after.deliveries),
        mean_delivery_latency_ms: (n > 0).then(|| {
            (after.delivery_latency_sum_s - before.delivery_latency_sum_s) / n as f64 * 1000.0
        }),
    }
}

fn require_service(claims: &Claims) -> Result<(), AppError> {
    if claims.role == Role::Service {
        Ok(())
    } else {
        Err(AppError::Forbidden(
            "the dashboard needs a token with role service".into(),
        ))
    }
}

/// Checks a `--dashboard-tiles` URL template: `http(s)://host[:port]/…`
/// with `{z}`, `{x}` and `{y}`, no whitespace, quotes or angle brackets,
/// no placeholder in the host (its origin goes into the CSP).
pub fn tile_template(s: &str) -> Result<String, String> {
    if s.len() > MAX_TILE_TEMPLATE {
        return Err(format!("longer than {MAX_TILE_TEMPLATE} bytes"));
    }
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || "\"'<>`\\".contains(c))
    {
        return Err("no whitespace, quotes, backslashes or angle brackets".into());
    }
    for p in ["{z}", "{x}", "{y}"] {
        if !s.contains(p) {
            return Err(format!("the template needs {p}"));
        }
    }
    tile_origin(s).ok_or_else(|| "must start with http:// or https:// and a host".to_owned())?;
    Ok(s.to_owned())
}

/// `scheme://host[:port]` of a checked template.
fn tile_origin(template: &str) -> Option<&str> {
    let rest = template
        .strip_prefix("https://")
        .or_else(|| template.strip_prefix("http://"))?;
    let host_len = rest.find('/').unwrap_or(rest.len());
    let host = &rest[..host_len];
    let ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    ok.then(|| &template[..template.len() - rest.len() + host_len])
}

/// `sha256-…` of the text between `open` and the next `close` in `page`.
fn inline_hash(page: &str, open: &str, close: &str) -> String {
    use base64::Engine as _;
    let body = page
        .split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map_or("", |(body, _)| body);
    let digest = ring::digest::digest(&ring::digest::SHA256, body.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
    )
}

/// The page's Content-Security-Policy: its one inline script and style by
/// hash, requests to this origin only, images from the tile origin.
fn csp(tiles: Option<&str>) -> String {
    static HASHES: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
        (
            inline_hash(PAGE, "<script>", "</script>"),
            inline_hash(PAGE, "<style>", "</style>"),
        )
    });
    let (script, style) = &*HASHES;
    let img = tiles.and_then(tile_origin).unwrap_or("");
    format!(
        "default-src 'none'; script-src {script}; style-src {style}; connect-src 'self'; \
         img-src 'self' data: {img}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// Escapes text for an HTML attribute value.
fn attr_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The page with the tile template in its meta tag.
fn page_html(tiles: Option<&str>) -> String {
    match tiles {
        Some(t) => PAGE.replacen(
            TILES_META,
            &format!(
                r#"<meta name="waypost-tiles" content="{}">"#,
                attr_escape(t)
            ),
            1,
        ),
        None => PAGE.to_owned(),
    }
}

/// `GET /?token=…` — the page. Refuses without a valid service token so the
/// page itself tells nobody anything.
pub async fn page(State(state): State<AppState>, parts: Parts) -> Response {
    let verdict = match token_from_parts(&parts) {
        None => Err((
            StatusCode::UNAUTHORIZED,
            "Waypost dashboard: open this page as /?token=SERVICE_TOKEN (mint one with `waypost token --role service --sub ops`).",
        )),
        Some(t) => match state.keys.verify(&t) {
            Err(_) => Err((StatusCode::UNAUTHORIZED, "Waypost dashboard: invalid or expired token.")),
            Ok(claims) if claims.role != Role::Service => Err((
                StatusCode::FORBIDDEN,
                "Waypost dashboard: the token needs role service.",
            )),
            Ok(_) => Ok(()),
        },
    };
    match verdict {
        Ok(()) => {
            let tiles = state.dashboard_tiles.as_deref();
            (
                [
                    (header::CACHE_CONTROL, "no-store".to_owned()),
                    (header::REFERRER_POLICY, "no-referrer".to_owned()),
                    (header::CONTENT_SECURITY_POLICY, csp(tiles)),
                    (header::X_CONTENT_TYPE_OPTIONS, "nosniff".to_owned()),
                ],
                Html(page_html(tiles)),
            )
                .into_response()
        }
        Err((status, text)) => {
            (status, [(header::CACHE_CONTROL, "no-store")], text).into_response()
        }
    }
}

/// `GET /v1/dashboard/snapshot` — one snapshot as JSON (rates are zero: they
/// need two samples).
pub async fn get_snapshot(
    State(state): State<AppState>,
    Authed(claims): Authed,
) -> Result<Json<Snapshot>, AppError> {
    require_service(&claims)?;
    Ok(Json(snapshot(&state, &mut None).await))
}

/// Decrements the `dashboard` connection gauge when the stream is dropped
/// (the connection permit beside it is released at the same time).
struct GaugeGuard(IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /v1/dashboard/stream` — `event: snapshot` every second until the
/// client goes away, the server shuts down, or the token expires or is
/// revoked (checked before every snapshot).
pub async fn stream(
    State(state): State<AppState>,
    AuthedToken(token): AuthedToken,
) -> Result<impl IntoResponse, AppError> {
    let claims = &token.claims;
    require_service(claims)?;
    if state.shutdown.is_cancelled() {
        return Err(AppError::Engine(crate::engine::EngineError::Closed));
    }
    // Counts against the caller's connection limit, like any stream.
    let permit = state.user_permit(&claims.sub)?;
    let gauge = state.metrics.connections.with_label_values(&["dashboard"]);
    gauge.inc();
    let guard = (GaugeGuard(gauge), permit);
    let mut ticker = tokio::time::interval(SNAPSHOT_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let events = futures_util::stream::unfold(
        (state, ticker, None::<Previous>, (guard, token)),
        |(state, mut ticker, mut prev, (guard, token))| async move {
            let woke = tokio::select! {
                () = state.shutdown.cancelled() => false,
                _ = ticker.tick() => true,
                () = state.activity.changed() => {
                    // Debounce: at most one snapshot per MIN_SNAPSHOT_GAP.
                    if let Some(p) = prev.as_ref() {
                        let next = p.at + MIN_SNAPSHOT_GAP;
                        tokio::select! {
                            () = state.shutdown.cancelled() => return None,
                            () = tokio::time::sleep_until(next.into()) => {}
                        }
                    }
                    ticker.reset();
                    true
                }
            };
            if !woke || crate::now_s() >= token.claims.exp || state.keys.is_revoked(&token) {
                return None;
            }
            let snap = snapshot(&state, &mut prev).await;
            let event = Event::default()
                .event("snapshot")
                .json_data(&snap)
                .unwrap_or_else(|e| Event::default().event("error").data(e.to_string()));
            Some((
                Ok::<_, Infallible>(event),
                (state, ticker, prev, (guard, token)),
            ))
        },
    );
    Ok((
        [
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Sse::new(events).keep_alive(KeepAlive::default()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_from_two_totals() {
        let a = Totals {
            fixes_ingested: 10,
            deliveries: 100,
            delivery_latency_count: 100,
            delivery_latency_sum_s: 1.0,
            ..Totals::default()
        };
        let b = Totals {
            fixes_ingested: 30,
            deliveries: 300,
            delivery_latency_count: 300,
            delivery_latency_sum_s: 1.4,
            ..Totals::default()
        };
        let r = rates(&a, &b, Duration::from_secs(2));
        assert!((r.fixes_per_s - 10.0).abs() < 1e-9);
        assert!((r.deliveries_per_s - 100.0).abs() < 1e-9);
        let mean = r.mean_delivery_latency_ms.unwrap_or(f64::NAN);
        assert!((mean - 2.0).abs() < 1e-6, "{mean}");
        assert!(rates(&b, &b, Duration::from_secs(1))
            .mean_delivery_latency_ms
            .is_none());
    }

    fn token(keys: &crate::auth::AuthKeys, role: Role, sub: &str) -> String {
        keys.mint(&Claims {
            sub: sub.into(),
            role,
            exp: 4_000_000_000,
            channels: None,
        })
        .expect("mint")
    }

    async fn call(router: &axum::Router, uri: &str, body: Option<String>) -> (StatusCode, String) {
        use tower::ServiceExt;
        let req = axum::http::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(axum::body::Body::from(body.unwrap_or_default()))
            .expect("request");
        let resp = router.clone().oneshot(req).await.expect("infallible");
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, String::from_utf8_lossy(&bytes).into_owned())
    }

    #[tokio::test]
    async fn snapshot_shows_a_driver_after_ingest_and_needs_service() {
        use std::sync::Arc;
        let metrics = crate::metrics::Metrics::new();
        let hub = Arc::new(crate::hub::Hub::new(metrics.clone()));
        let limits = crate::config::Limits::default();
        let engine = crate::engine::Engine::memory(Arc::clone(&hub), limits.clone());
        let keys = crate::auth::AuthKeys::new(b"k");
        let state = AppState::new(engine, hub, keys.clone(), limits, metrics);
        let router = crate::app::build_router(state);
        let service = token(&keys, Role::Service, "ops");
        let driver = token(&keys, Role::Driver, "d-7");

        let (status, _) = call(&router, "/", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (status, _) = call(&router, &format!("/?token={driver}"), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        let (status, html) = call(&router, &format!("/?token={service}"), None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(html.contains("Waypost"));
        let (status, _) = call(
            &router,
            &format!("/v1/dashboard/snapshot?token={driver}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::FORBIDDEN);

        let now = now_ms();
        let body = format!(
            r#"{{"device_id":"dev-1","fixes":[{{"seq":3,"ts":{now},"lat":52.5,"lon":13.4}}]}}"#
        );
        let (status, text) = call(
            &router,
            &format!("/v1/drivers/d-7/locations?token={driver}"),
            Some(body),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let (status, text) = call(
            &router,
            &format!("/v1/dashboard/snapshot?token={service}"),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{text}");
        let snap: serde_json::Value = serde_json::from_str(&text).expect("json");
        assert_eq!(snap["drivers_online"], 1);
        assert_eq!(snap["drivers"][0]["driver_id"], "d-7");
        assert_eq!(snap["drivers"][0]["seq"], 3);
        assert_eq!(snap["drivers"][0]["watchers"], 0);
        assert_eq!(snap["totals"]["fixes_ingested"], 1);
        assert_eq!(snap["engine"], "memory");
    }

    #[tokio::test]
    async fn streams_count_against_the_connection_limit() {
        use std::sync::Arc;
        use tower::ServiceExt;
        let metrics = crate::metrics::Metrics::new();
        let hub = Arc::new(crate::hub::Hub::new(metrics.clone()));
        let limits = crate::config::Limits {
            max_connections_per_user: 2,
            ..crate::config::Limits::default()
        };
        let engine = crate::engine::Engine::memory(Arc::clone(&hub), limits.clone());
        let keys = crate::auth::AuthKeys::new(b"k");
        let state = AppState::new(engine, hub, keys.clone(), limits, metrics.clone());
        let router = crate::app::build_router(state.clone());
        let uri = format!(
            "/v1/dashboard/stream?token={}",
            token(&keys, Role::Service, "ops")
        );
        let open = || {
            let req = axum::http::Request::builder()
                .uri(uri.as_str())
                .body(axum::body::Body::empty())
                .expect("request");
            router.clone().oneshot(req)
        };
        let a = open().await.expect("infallible");
        let b = open().await.expect("infallible");
        assert_eq!(a.status(), StatusCode::OK);
        assert_eq!(b.status(), StatusCode::OK);
        assert_eq!(
            metrics.connections.with_label_values(&["dashboard"]).get(),
            2
        );
        assert_eq!(
            open().await.expect("infallible").status(),
            StatusCode::TOO_MANY_REQUESTS
        );
        drop(a);
        assert_eq!(
            metrics.connections.with_label_values(&["dashboard"]).get(),
            1
        );
        assert_eq!(open().await.expect("infallible").status(), StatusCode::OK);
        // The first event arrives at once.
        let mut body = b.into_body().into_data_stream();
        let first = tokio::time::timeout(
            Duration::from_secs(2),
            futures_util::StreamExt::next(&mut body),
        )
        .await
        .expect("an event within 2 s")
        .expect("stream open")
        .expect("bytes");
        assert!(String::from_utf8_lossy(&first).starts_with("event: snapshot\n"));
        // Shutdown ends the stream (so the server can drain).
        state.shutdown.cancel();
        let end = tokio::time::timeout(Duration::from_secs(2), async {
            while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
                chunk.expect("bytes");
            }
        })
        .await;
        assert!(end.is_ok(), "stream still open after shutdown");
    }

    #[test]
    fn page_reads_the_stream_with_the_token() {
        let html = PAGE;
        assert!(html.contains("/v1/dashboard/stream?token="));
        assert!(html.contains("EventSource"));
        assert!(html.contains("/v1/admin/drivers?online=true"));
        assert!(html.contains("/v1/admin/stats"));
        assert!(html.contains("/v1/admin/users/"));
    }

    #[test]
    fn the_page_is_one_file_with_one_inline_script_and_style() {
        // The CSP allows exactly these by hash: no second block, no inline
        // handlers or style attributes, nothing loaded from elsewhere.
        assert_eq!(PAGE.matches("<script").count(), 1);
        assert_eq!(PAGE.matches("<style").count(), 1);
        assert!(PAGE.contains(TILES_META));
        for banned in [
            " style=\"",
            " onclick=",
            " onload=",
            "src=\"http",
            "href=\"http",
            "@import",
        ] {
            assert!(!PAGE.contains(banned), "{banned}");
        }
        let policy = csp(None);
        assert!(policy.starts_with("default-src 'none'; script-src 'sha256-"));
        assert!(!policy.contains("unsafe"));
        // The hash is of the script's text as served.
        let script = PAGE
            .split_once("<script>")
            .and_then(|(_, r)| r.split_once("</script>"))
            .map(|(b, _)| b)
            .unwrap_or("");
        assert!(script.len() > 1000);
        assert!(policy.contains(&inline_hash(PAGE, "<script>", "</script>")));
    }

    #[test]
    fn tile_templates_are_checked_and_escaped() {
        let ok = "https://tile.example.org:8443/{z}/{x}/{y}.png?key=a&b=c";
        assert_eq!(tile_template(ok).as_deref(), Ok(ok));
        assert_eq!(tile_origin(ok), Some("https://tile.example.org:8443"));
        for bad in [
            "ftp://x/{z}/{x}/{y}",
            "https://x/{z}/{x}",
            "https://{s}.tile.org/{z}/{x}/{y}.png",
            "https:///{z}/{x}/{y}",
            "https://x/{z}/{x}/{y}\"><script>",
            "https://x/{z}/{x}/{y} y",
        ] {
            assert!(tile_template(bad).is_err(), "{bad}");
        }
        let html = page_html(Some(ok));
        assert!(html.contains(
            r#"<meta name="waypost-tiles" content="https://tile.example.org:8443/{z}/{x}/{y}.png?key=a&amp;b=c">"#
        ));
        assert!(csp(Some(ok)).contains("img-src 'self' data: https://tile.example.org:8443;"));
        assert_eq!(page_html(None), PAGE);
    }
}
