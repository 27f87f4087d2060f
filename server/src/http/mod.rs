//! The small HTTP side (axum): plain-HTTP liveness, the Prometheus scrape
//! endpoint, the signed purge doors (webhook, EventBridge) and the
//! data-action door that Genesys Architect/Studio data actions call.

mod data_action;
pub(crate) mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;

use crate::cache::Cache;
use crate::config::{DataActionSettings, WebhookSettings};
use crate::invalidation::Invalidator;

/// What the HTTP handlers share.
#[derive(Clone)]
pub struct AppState {
    pub cache: Arc<Cache>,
    pub invalidator: Arc<Invalidator>,
    pub webhook: Arc<WebhookSettings>,
    pub data_action: Arc<DataActionSettings>,
    /// The notification listener's status, when it runs here.
    pub notifications: Option<Arc<parking_lot::Mutex<crate::notifications::Status>>>,
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
) -> impl axum::response::IntoResponse {
    crate::metrics::l1_size(state.cache.tiers().l1_bytes());
    crate::metrics::watch_subscribers(crate::watch::SUBSCRIBERS.load(std::sync::atomic::Ordering::Relaxed));
    crate::metrics::credentials(&state.cache.upstream().credentials());
    if let Some(status) = &state.notifications {
        let status = status.lock().clone();
        crate::metrics::notifications(&status);
    }
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
}

/// A JSON error body: `{"error": {"code", "message", "fieldViolations"?}}`.
fn error_body(code: &str, message: &str, violations: &[crate::error::FieldViolation]) -> serde_json::Value {
    let mut err = serde_json::json!({ "code": code, "message": message });
    if !violations.is_empty() {
        err["fieldViolations"] = violations
            .iter()
            .map(|v| serde_json::json!({ "field": v.field, "description": v.description }))
            .collect();
    }
    serde_json::json!({ "error": err })
}

/// The HTTP answer for an error: its status (see `Error::http_status`), a
/// JSON body naming the fields at fault, and `Retry-After` when waiting helps.
fn error_response(e: crate::error::Error) -> axum::response::Response {
    use crate::error::Error;
    use axum::http::{header, HeaderValue, StatusCode};
    use axum::response::IntoResponse;
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = match &e {
        Error::RateLimited { retry_after } => Some(*retry_after),
        Error::Unavailable { retry_after, .. } => *retry_after,
        _ => None,
    };
    let (code, violations) = match &e {
        Error::InvalidArgument(v) => ("INVALID_ARGUMENT", v.clone()),
        Error::NotFound(_) => ("NOT_FOUND", vec![]),
        Error::RateLimited { .. } => ("RESOURCE_EXHAUSTED", vec![]),
        Error::DeadlineExceeded(_) => ("DEADLINE_EXCEEDED", vec![]),
        Error::Unavailable { .. } | Error::Store(_) => ("UNAVAILABLE", vec![]),
        _ => ("UPSTREAM_ERROR", vec![]),
    };
    let mut resp = (status, axum::Json(error_body(code, &e.to_string(), &violations))).into_response();
    if let Some(after) = retry_after {
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(after.as_secs().max(1)));
    }
    resp
}
