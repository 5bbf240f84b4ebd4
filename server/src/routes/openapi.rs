//! `GET /openapi.json`: the OpenAPI 3.1 description of the HTTP API.
//!
//! The document is maintained by hand in `openapi.json` beside this file
//! (several people add routes at once; annotating every handler would tie
//! each new route to a macro in somebody else's file). The test below keeps
//! it honest: every `.route(...)` registered anywhere under `src/` must be in
//! the document with the same methods and vice versa, and every documented
//! operation must reach a real handler of the built router (not the 404
//! fallback, not 405).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, embedded at compile time.
pub const SPEC: &str = include_str!("openapi.json");

/// `GET /openapi.json`
pub async fn openapi() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "public, max-age=300"),
        ],
        SPEC,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;
    use std::sync::Arc;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use serde_json::Value;
    use tower::ServiceExt;

    use super::SPEC;
    use crate::app::build_router;
    use crate::auth::AuthKeys;
    use crate::config::Limits;
    use crate::engine::Engine;
    use crate::hub::Hub;
    use crate::metrics::Metrics;
    use crate::state::AppState;

    const METHODS: [&str; 7] = ["get", "post", "put", "delete", "patch", "head", "options"];

    /// `(METHOD, path)` pairs the spec documents.
    fn spec_operations(spec: &Value) -> BTreeSet<(String, String)> {
        let mut ops = BTreeSet::new();
        let paths = spec["paths"].as_object().expect("spec has paths");
        for (path, item) in paths {
            for (key, _) in item.as_object().expect("path item is an object") {
                if METHODS.contains(&key.as_str()) {
                    ops.insert((key.to_uppercase(), path.clone()));
                }
            }
        }
        ops
    }

    /// The text of the balanced `( ... )` group starting at `open`.
    fn balanced(src: &str, open: usize) -> &str {
        let mut depth = 0usize;
        let mut in_str = false;
        let mut prev = '\0';
        for (i, c) in src[open..].char_indices() {
            match c {
                '"' if prev != '\\' => in_str = !in_str,
                '(' if !in_str => depth += 1,
                ')' if !in_str => {
                    depth -= 1;
                    if depth == 0 {
                        return &src[open + 1..open + i];
                    }
                }
                _ => {}
            }
            prev = c;
        }
        panic!("unbalanced .route( call");
    }

    /// How often `name(` is called in `args` (not as part of a longer
    /// identifier).
    fn calls(args: &str, name: &str) -> usize {
        let bytes = args.as_bytes();
        let pat = format!("{name}(");
        let mut n = 0;
        let mut from = 0;
        while let Some(pos) = args[from..].find(&pat) {
            let at = from + pos;
            if at == 0 || !(bytes[at - 1].is_ascii_alphanumeric() || bytes[at - 1] == b'_') {
                n += 1;
            }
            from = at + pat.len();
        }
        n
    }

    /// Method routers named in a `.route(path, ...)` argument: `get(h)`,
    /// `post(h).get(h2)`, `axum::routing::get(h)`.
    fn methods_in(args: &str) -> Vec<String> {
        assert!(
            calls(args, "any") + calls(args, "on") == 0 && !args.contains("_service("),
            "route {args:?} uses any/on/a service: extend this scan and the spec"
        );
        METHODS
            .iter()
            .filter(|m| calls(args, m) > 0)
            .map(|m| m.to_uppercase())
            .collect()
    }

    /// Every `.route("path", methods)` call in the crate's sources.
    fn registered_operations() -> BTreeSet<(String, String)> {
        fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).expect("read src dir") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    walk(&path, out);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let mut ops = BTreeSet::new();
        for file in files {
            let src = std::fs::read_to_string(&file).expect("read source");
            // This file talks about `.route(` in comments and strings.
            if file.ends_with("routes/openapi.rs") {
                continue;
            }
            assert!(
                !src.contains(".nest(") && !src.contains(".route_service("),
                "{}: nested routers are not understood by the OpenAPI check; extend it",
                file.display()
            );
            let mut from = 0;
            while let Some(pos) = src[from..].find(".route(") {
                let open = from + pos + ".route".len();
                let args = balanced(&src, open);
                let path = args.split('"').nth(1).unwrap_or_else(|| {
                    panic!("{}: .route( without a literal path", file.display())
                });
                let methods = methods_in(&args[args.find(',').unwrap_or(0)..]);
                assert!(!methods.is_empty(), "no method router in .route({args})");
                for m in methods {
                    ops.insert((m, path.to_owned()));
                }
                from = open + args.len();
            }
        }
        ops
    }

    #[test]
    fn spec_lists_exactly_the_registered_routes() {
        let spec: Value = serde_json::from_str(SPEC).expect("openapi.json is valid JSON");
        assert_eq!(spec["openapi"], "3.1.0");
        let documented = spec_operations(&spec);
        let registered = registered_operations();
        let missing: Vec<_> = registered.difference(&documented).collect();
        let stale: Vec<_> = documented.difference(&registered).collect();
        assert!(
            missing.is_empty() && stale.is_empty(),
            "server/src/routes/openapi.json is out of date.\n  registered but not documented: {missing:?}\n  documented but not registered: {stale:?}"
        );
        // Sanity of the scan itself: routes known to exist are found.
        assert!(registered.contains(&("POST".into(), "/v1/drivers/{driver_id}/locations".into())));
        assert!(registered.contains(&("GET".into(), "/openapi.json".into())));
    }

    #[test]
    fn every_ref_resolves_and_every_operation_has_responses() {
        let spec: Value = serde_json::from_str(SPEC).expect("valid JSON");
        fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
            match v {
                Value::Object(m) => {
                    if let Some(Value::String(r)) = m.get("$ref") {
                        out.push(r);
                    }
                    m.values().for_each(|x| refs(x, out));
                }
                Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        refs(&spec, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r.strip_prefix('#').expect("local ref");
            assert!(spec.pointer(pointer).is_some(), "dangling $ref {r}");
        }
        let mut ids = BTreeSet::new();
        for (method, path) in spec_operations(&spec) {
            let op = &spec["paths"][&path][method.to_lowercase()];
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path} has no responses"
            );
            let id = op["operationId"].as_str().expect("operationId");
            assert!(ids.insert(id.to_owned()), "duplicate operationId {id}");
            // Every `{param}` in the path is declared.
            for seg in path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                let params = op["parameters"].as_array().cloned().unwrap_or_default();
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == name && p["in"] == "path"),
                    "{method} {path}: path parameter {name} not declared"
                );
            }
        }
    }

    #[tokio::test]
    async fn every_documented_operation_reaches_a_handler() {
        let metrics = Metrics::new();
        let hub = Arc::new(Hub::new(metrics.clone()));
        let limits = Limits::default();
        let engine = Engine::memory(Arc::clone(&hub), limits.clone());
        let state = AppState::new(engine, hub, AuthKeys::new(b"test"), limits, metrics);
        let router = build_router(state);
        let spec: Value = serde_json::from_str(SPEC).expect("valid JSON");
        for (method, path) in spec_operations(&spec) {
            let uri: String = path
                .split('/')
                .map(|s| if s.starts_with('{') { "x-1" } else { s })
                .collect::<Vec<_>>()
                .join("/");
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).expect("method"))
                .uri(&uri)
                .body(Body::empty())
                .expect("request");
            let resp = router.clone().oneshot(req).await.expect("infallible");
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .expect("body");
            let text = String::from_utf8_lossy(&body);
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {uri}");
            assert!(
                !(status == StatusCode::NOT_FOUND && text.contains("no such route")),
                "{method} {uri} fell through to the 404 fallback"
            );
        }
    }
}
