//! `GET /api/v2/users/{id}/routingstatus`: a small, frequently changing
//! resource (changed through the admin API), with conditional GETs.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::canonical::hash_hex;
use crate::conditional::{self, Validators};
use crate::error::ApiError;
use crate::extract::path_param;
use crate::state::SharedState;

pub(super) fn router() -> Router<SharedState> {
    Router::new().route("/api/v2/users/{id}/routingstatus", get(routing_status))
}

async fn routing_status(
    State(state): State<SharedState>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = path_param(id)?;
    let store = state.store.read();
    let status = store
        .routing_status(&id)
        .ok_or_else(|| ApiError::not_found(format!("Unable to find a user with id '{id}'")))?;
    let body = status.to_json();
    let validators = Validators { etag: format!("\"{}\"", &hash_hex(&body)[..32]), modified: status.start };
    Ok(conditional::respond(&headers, &validators, || body).into_response())
}
