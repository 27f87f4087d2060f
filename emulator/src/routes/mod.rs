//! Assembles the HTTP application. Each platform area is its own module with
//! a `router()`; a new area (analytics jobs, notification channels) is one
//! more module merged into [`api_routes`].

mod actions;
mod analytics;
mod entities;
pub(crate) mod jobs;
pub(crate) mod notifications;
mod oauth;
mod routing_status;

use axum::middleware::{from_fn, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::ApiError;
use crate::state::SharedState;
use crate::{admin, counting, gate};

/// Every `/api/v2` route (all behind the bearer gate).
fn api_routes() -> Router<SharedState> {
    Router::new()
        .merge(entities::router())
        .merge(routing_status::router())
        .merge(actions::router())
        .merge(analytics::router())
        .merge(jobs::router())
        .merge(notifications::router())
}

async fn fallback(uri: axum::http::Uri) -> Response {
    ApiError::not_found(format!("No resource found at {}", uri.path())).into_response()
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let status = axum::http::StatusCode::METHOD_NOT_ALLOWED;
    ApiError::new(status, "method.not.allowed", format!("{method} is not supported on {}", uri.path()))
        .into_response()
}

/// The whole application: platform API, OAuth, admin API.
pub(crate) fn app(state: SharedState) -> Router {
    let api = api_routes().route_layer(from_fn_with_state(state.clone(), gate::gate));
    Router::new()
        .merge(api)
        .merge(oauth::router())
        .route_layer(from_fn(counting::tag_route))
        .merge(admin::router())
        .merge(notifications::socket_and_admin_router())
        .fallback(fallback)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(state.clone(), counting::count))
        .with_state(state)
}
