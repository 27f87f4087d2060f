//! Admin API under `/admin`: inspection and control of the emulator for tests
//! and demos. No auth, no rate limit, not counted.

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use url::form_urlencoded;

use crate::counters::{Counters, RequestRecord};
use crate::data::{Kind, ROUTING_STATUSES};
use crate::error::ApiError;
use crate::extract::{json_object, path_param};
use crate::faults::Fault;
use crate::state::SharedState;

const DEFAULT_REQUEST_LIMIT: usize = 1000;

pub(crate) fn router() -> Router<SharedState> {
    Router::new()
        .route("/admin/health", get(health))
        .route("/admin/counters", get(counters))
        .route("/admin/counters/reset", post(reset_counters))
        .route("/admin/faults", get(list_faults).post(inject_fault).delete(clear_faults))
        .route("/admin/release", post(release))
        .route("/admin/held", get(held))
        .route("/admin/queues/{id}", patch(patch_queue))
        .route("/admin/users/{id}", patch(patch_user))
        .route("/admin/skills/{id}", patch(patch_skill))
        .route("/admin/users/{id}/routingstatus", patch(patch_routing_status))
        .route("/admin/clients/{client_id}/revoke", post(revoke))
        .route("/admin/requests", get(requests))
        .route("/admin/ratelimit", get(rate_limit).post(set_rate_limit))
}

type IdParam = Result<Path<String>, PathRejection>;

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn counters(State(s): State<SharedState>) -> Json<Counters> {
    Json(s.counters.snapshot())
}

async fn reset_counters(State(s): State<SharedState>) -> Json<Value> {
    s.counters.reset();
    Json(json!({ "reset": true }))
}

async fn list_faults(State(s): State<SharedState>) -> Json<Vec<Fault>> {
    Json(s.faults.list())
}

async fn inject_fault(State(s): State<SharedState>, body: Bytes) -> Result<Json<Fault>, ApiError> {
    let value = json_object(&body)?;
    let fault: Fault =
        serde_json::from_value(value).map_err(|e| ApiError::bad_request(format!("Invalid fault: {e}")))?;
    if let Some(status) = fault.status {
        if !(100..=599).contains(&status) {
            return Err(ApiError::bad_request(format!("Invalid status {status}")));
        }
    }
    tracing::info!(?fault, "fault injected");
    s.faults.inject(fault.clone());
    Ok(Json(fault))
}

async fn clear_faults(State(s): State<SharedState>) -> Json<Value> {
    Json(json!({ "cleared": s.faults.clear() }))
}

async fn release(State(s): State<SharedState>) -> Json<Value> {
    Json(json!({ "released": s.holds.release() }))
}

async fn held(State(s): State<SharedState>) -> Json<Value> {
    Json(json!({ "held": s.holds.held() }))
}

fn patch_entity(s: &SharedState, kind: Kind, id: IdParam, body: &[u8]) -> Result<Json<Value>, ApiError> {
    patch_entity_as(s, kind, id, body, false)
}

/// `silent`: no change event is sent.
fn patch_entity_as(
    s: &SharedState,
    kind: Kind,
    id: IdParam,
    body: &[u8],
    silent: bool,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let patch = json_object(body)?;
    let changed = if silent { s.mutate_silently(kind, &id, &patch) } else { s.mutate(kind, &id, &patch) };
    changed
        .map(|e| Json(e.doc))
        .ok_or_else(|| ApiError::not_found(format!("Unable to find a {} with id '{id}'", kind.label())))
}

async fn patch_queue(
    State(s): State<SharedState>,
    id: IdParam,
    RawQuery(q): RawQuery,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let silent = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .any(|(k, v)| k == "silent" && (v == "true" || v == "1"));
    patch_entity_as(&s, Kind::Queue, id, &body, silent)
}

async fn patch_user(State(s): State<SharedState>, id: IdParam, body: Bytes) -> Result<Json<Value>, ApiError> {
    patch_entity(&s, Kind::User, id, &body)
}

async fn patch_skill(
    State(s): State<SharedState>,
    id: IdParam,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    patch_entity(&s, Kind::Skill, id, &body)
}

async fn patch_routing_status(
    State(s): State<SharedState>,
    id: IdParam,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(id)?;
    let body = json_object(&body)?;
    let status = body
        .get("status")
        .and_then(Value::as_str)
        .filter(|st| ROUTING_STATUSES.iter().any(|v| v.eq_ignore_ascii_case(st)))
        .ok_or_else(|| {
            ApiError::bad_request(format!("'status' must be one of {}", ROUTING_STATUSES.join(", ")))
        })?;
    s.set_routing_status(&id, status)
        .map(|rs| Json(rs.to_json()))
        .ok_or_else(|| ApiError::not_found(format!("Unable to find a user with id '{id}'")))
}

/// The per-token budget: `{"allowed": n, "window_ms": n}`.
async fn rate_limit(State(s): State<SharedState>) -> Json<Value> {
    let (allowed, window) = s.limiter.limit();
    Json(json!({ "allowed": allowed, "window_ms": window.as_millis() as u64 }))
}

/// Changes the per-token budget at run time (either field may be left out).
async fn set_rate_limit(State(s): State<SharedState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = json_object(&body)?;
    let (mut allowed, mut window) = s.limiter.limit();
    if let Some(v) = body.get("allowed") {
        allowed = v
            .as_u64()
            .filter(|v| (1..=u32::MAX as u64).contains(v))
            .ok_or_else(|| ApiError::bad_request("'allowed' must be a positive integer"))?
            as u32;
    }
    if let Some(v) = body.get("window_ms") {
        let ms = v
            .as_u64()
            .filter(|v| *v > 0)
            .ok_or_else(|| ApiError::bad_request("'window_ms' must be positive"))?;
        window = std::time::Duration::from_millis(ms);
    }
    s.limiter.set(allowed, window);
    Ok(rate_limit(State(s)).await)
}

async fn revoke(State(s): State<SharedState>, client_id: IdParam) -> Result<Json<Value>, ApiError> {
    let client_id = path_param(client_id)?;
    s.tokens.revoke_client(&client_id);
    Ok(Json(json!({ "revoked": client_id })))
}

async fn requests(
    State(s): State<SharedState>,
    RawQuery(q): RawQuery,
) -> Result<Json<Vec<RequestRecord>>, ApiError> {
    let mut limit = DEFAULT_REQUEST_LIMIT;
    for (k, v) in form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes()) {
        if k == "limit" {
            limit = v.parse().map_err(|_| ApiError::bad_request(format!("Invalid limit '{v}'")))?;
        }
    }
    Ok(Json(s.counters.recent(limit)))
}
