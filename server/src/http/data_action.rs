//! The data-action door: `POST /data-action` with a resource kind and its
//! inputs returns the cached JSON itself, so Genesys Architect/Studio data
//! actions can call cxcache directly. Same keys, TTLs, coalescing and
//! errors as `Get`; errors map to HTTP codes (400, 404, 429 + Retry-After,
//! 503, 504) with a JSON body naming the field at fault.
//!
//! Body: `{"kind", "id"?, "variant"?, "params"?: {..}, "body"?: {..},
//! "maxAgeSeconds"?}`. Metadata travels in `X-Cxcache-Source`,
//! `X-Cxcache-Key` and `X-Cxcache-Age` headers.

use std::collections::HashMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::Value;

use super::{error_body, error_response, AppState};
use crate::entry::now_ms;
use crate::proto::v1::{Freshness, GetRequest};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct DataActionRequest {
    kind: String,
    #[serde(default)]
    id: String,
    #[serde(default)]
    variant: String,
    #[serde(default)]
    params: HashMap<String, String>,
    #[serde(default)]
    body: Option<Value>,
    #[serde(default)]
    max_age_seconds: Option<u64>,
}

pub async fn handle(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    // With callers configured, the door serves only callers whose
    // `data_actions` scope lists the action; otherwise the door token
    // (if any) is its rule.
    let table = state.auth.load();
    let caller = if table.enabled() {
        let sent =
            headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(crate::auth::bearer);
        match table.authenticate(sent, &[]) {
            Ok(c) => Some(c),
            Err(e) => {
                crate::metrics::refused("unauthenticated");
                return error_response(e);
            }
        }
    } else {
        None
    };
    if let (None, Some(token)) = (&caller, &state.data_action.token) {
        let sent = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if sent.map(|s| constant_time_eq(s.as_bytes(), token.expose().as_bytes())) != Some(true) {
            return (
                StatusCode::UNAUTHORIZED,
                Json(error_body("UNAUTHENTICATED", "missing or wrong bearer token", &[])),
            )
                .into_response();
        }
    }
    let req: DataActionRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(error_body("INVALID_ARGUMENT", &format!("malformed JSON: {e}"), &[])),
            )
                .into_response()
        }
    };
    if let Some(caller) = &caller {
        if let Err(e) = caller.check_data_action(&req.kind, &req.id) {
            crate::metrics::refused("permission_denied");
            return error_response(e);
        }
    }
    let get = GetRequest {
        kind: req.kind,
        id: req.id,
        variant: req.variant,
        params: req.params,
        body_json: req.body.map(|b| b.to_string()).unwrap_or_default(),
        freshness: req.max_age_seconds.map(|s| Freshness {
            max_age: Some(prost_types::Duration { seconds: s as i64, nanos: 0 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The door's own deadline: with a stale value to fall back on, a hung
    // upstream is answered stale within it.
    let deadline = tokio::time::Instant::now() + state.data_action.timeout;
    match state.cache.get(&get, Some(deadline)).await {
        Ok(served) => {
            let age = served.entry.age(now_ms()).as_secs();
            let mut resp = (StatusCode::OK, served.entry.value.clone()).into_response();
            let h = resp.headers_mut();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            h.insert("x-cxcache-source", HeaderValue::from_static(served.source.name()));
            if let Ok(v) = HeaderValue::from_str(&served.key) {
                h.insert("x-cxcache-key", v);
            }
            h.insert("x-cxcache-age", HeaderValue::from(age));
            resp
        }
        Err(e) => error_response(e),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
