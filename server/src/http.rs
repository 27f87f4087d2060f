//! The small HTTP side (axum): liveness for plain-HTTP probes. Webhooks, the
//! data-action door and `/metrics` mount here as they arrive.

use std::sync::Arc;

use axum::routing::get;
use axum::Router;

use crate::cache::Cache;

pub fn router(_cache: Arc<Cache>) -> Router {
    Router::new().route("/healthz", get(|| async { "ok" }))
}
