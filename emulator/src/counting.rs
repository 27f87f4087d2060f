//! Outermost middleware: counts every `/api` and `/oauth` request once (admin
//! traffic is not counted) and appends it to the recent-request log.
//!
//! Inner layers tell it what they know through response extensions: the
//! route template ([`RouteKey`], set by [`tag_route`]) and the caller's client
//! id ([`ClientTag`], set by the bearer gate and the token endpoint).

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

use crate::counters::RequestRecord;
use crate::state::SharedState;

/// `"METHOD /route/{template}"` of a matched route.
#[derive(Debug, Clone)]
pub(crate) struct RouteKey(pub String);

/// Client id the request is attributed to.
#[derive(Debug, Clone)]
pub(crate) struct ClientTag(pub String);

const ANONYMOUS: &str = "anonymous";

fn is_counted(path: &str) -> bool {
    path.starts_with("/api/") || path.starts_with("/oauth/")
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Route layer: records the matched route template on the response.
pub(crate) async fn tag_route(req: Request, next: Next) -> Response {
    let key = req.extensions().get::<MatchedPath>().map(|m| format!("{} {}", req.method(), m.as_str()));
    let mut resp = next.run(req).await;
    if let Some(key) = key {
        resp.extensions_mut().insert(RouteKey(key));
    }
    resp
}

/// Outer layer: counts and logs the request once its response is known.
pub(crate) async fn count(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    if !is_counted(&path) {
        return next.run(req).await;
    }
    let method = req.method().to_string();
    let priority = req.headers().get("x-cxcache-priority").and_then(|v| v.to_str().ok()).map(str::to_string);
    let at_ms = unix_ms();
    let resp = next.run(req).await;
    let route = resp
        .extensions()
        .get::<RouteKey>()
        .map(|k| k.0.clone())
        .unwrap_or_else(|| format!("{method} (unmatched)"));
    let client_id =
        resp.extensions().get::<ClientTag>().map(|c| c.0.clone()).unwrap_or_else(|| ANONYMOUS.to_string());
    state.counters.record(RequestRecord {
        priority,
        at_ms,
        method,
        route,
        path,
        client_id,
        status: resp.status().as_u16(),
    });
    resp
}
