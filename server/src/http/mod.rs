//! The small HTTP side (axum): plain-HTTP liveness, the Prometheus scrape
//! endpoint, the signed purge doors (webhook, EventBridge) and the
//! data-action door that Genesys Architect/Studio data actions call.

mod data_action;
pub(crate) mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::auth::Auth;
use crate::cache::Cache;
use crate::config::{DataActionSettings, WebhookSettings};
use crate::error::{Error, FieldViolation};
use crate::invalidation::Invalidator;
use crate::notifications::ListenerStatus;
use crate::upstream::Upstream;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<Cache>,
    pub upstream: Arc<Upstream>,
    pub invalidator: Arc<Invalidator>,
    pub webhook: Arc<WebhookSettings>,
    pub data_action: Arc<DataActionSettings>,
    /// Callers of the data-action door (when configured).
    pub auth: Auth,
    /// `/metrics` only for a caller's credential (`auth.metrics_need_caller`).
    pub metrics_need_caller: bool,
    /// The notification listener's status, when it runs here.
    pub notifications: Option<Arc<parking_lot::Mutex<ListenerStatus>>>,
}

/// Largest webhook or data-action body accepted.
const MAX_BODY: usize = 256 << 10;

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(prometheus))
        .route("/webhooks/genesys", post(webhook::genesys))
        .route("/webhooks/eventbridge", post(webhook::eventbridge))
        .route("/data-action", post(data_action::handle))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Prometheus scrape endpoint (text exposition format 0.0.4). Sizes kept
/// elsewhere (L1 bytes, Watch subscribers, the notification listener) are read at scrape time.
async fn prometheus(
    axum::extract::State(state): axum::extract::State<AppState>,
    headers: axum::http::HeaderMap,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if state.metrics_need_caller {
        let sent = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(crate::auth::bearer);
        if let Err(e) = state.auth.load().authenticate(sent, &[]) {
            crate::metrics::refused("unauthenticated");
            return error_response(e);
        }
    }
    crate::metrics::l1_size(state.cache.tiers().l1_bytes());
    crate::metrics::store_available(state.cache.tiers().store_available());
    crate::metrics::watch_subscribers(crate::watch::SUBSCRIBERS.load(std::sync::atomic::Ordering::Relaxed));
    for c in state.upstream.credentials() {
        crate::metrics::credential_state(&c.client_id, c.parked);
    }
    if let Some(status) = &state.notifications {
        let gauges = status.lock().gauges();
        crate::metrics::notifications(gauges);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
        .into_response()
}

/// A JSON error body: `{"error": {"code", "message", "fieldViolations"?}}`.
fn error_body(code: &str, message: &str, violations: &[FieldViolation]) -> serde_json::Value {
    let mut err = serde_json::json!({ "code": code, "message": message });
    if !violations.is_empty() {
        err["fieldViolations"] = violations
            .iter()
            .map(|v| serde_json::json!({ "field": v.field, "description": v.description }))
            .collect();
    }
    serde_json::json!({ "error": err })
}

/// The HTTP answer for an error, from the one code table
/// ([`Error::classify`]): its status, a JSON body with the canonical code
/// and the fields at fault, and `Retry-After` when waiting helps.
fn error_response(e: Error) -> axum::response::Response {
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let (code, http) = e.classify();
    let status = StatusCode::from_u16(http).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = error_body(code.name(), &e.to_string(), e.violations());
    let mut resp = (status, axum::Json(body)).into_response();
    if let Some(after) = e.retry_after() {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    resp
}
