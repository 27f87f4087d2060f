//! The platform's front door for `/api` routes, in the platform's order:
//! global latency, bearer authentication, per-token rate limiting, injected
//! faults, then the handler. Every answer gets the platform's headers.

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::RejectReason;
use crate::counting::ClientTag;
use crate::error::ApiError;
use crate::ratelimit::Decision;
use crate::state::{AppState, SharedState};

pub(crate) const RATELIMIT_COUNT: HeaderName = HeaderName::from_static("inin-ratelimit-count");
pub(crate) const RATELIMIT_ALLOWED: HeaderName = HeaderName::from_static("inin-ratelimit-allowed");
pub(crate) const RATELIMIT_RESET: HeaderName = HeaderName::from_static("inin-ratelimit-reset");
const CORRELATION_ID: HeaderName = HeaderName::from_static("inin-correlation-id");
pub(crate) const NO_CACHE: &str = "no-cache, no-store, must-revalidate";

fn unauthorized(reason: RejectReason) -> ApiError {
    match reason {
        RejectReason::Missing => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        ),
        RejectReason::Invalid => {
            ApiError::new(StatusCode::UNAUTHORIZED, "bad.credentials", "Invalid login credentials.")
        }
    }
}

/// Route layer for every `/api` route.
pub(crate) async fn gate(State(state): State<SharedState>, req: Request, next: Next) -> Response {
    if !state.config.latency.is_zero() {
        tokio::time::sleep(state.config.latency).await;
    }
    let principal = match state.tokens.authenticate(req.headers()) {
        Ok(p) => p,
        Err(rejection) => {
            let mut resp = unauthorized(rejection.reason).into_response();
            finish(&mut resp, rejection.client_id, None);
            return resp;
        }
    };
    let decision = state.limiter.check(&principal.token, Instant::now());
    let path = req.uri().path().to_string();
    let mut resp = if decision.limited {
        ApiError::too_many_requests(decision.reset_secs).into_response()
    } else {
        match apply_fault(&state, &path).await {
            Some(resp) => resp,
            None => next.run(req).await,
        }
    };
    finish(&mut resp, Some(principal.client_id), Some(decision));
    resp
}

/// Applies the first matching fault: its delay, its hold, then its status
/// (`None` = go on and answer normally).
async fn apply_fault(state: &AppState, path: &str) -> Option<Response> {
    let fault = state.faults.take(path)?;
    if let Some(delay) = fault.latency {
        tokio::time::sleep(delay).await;
    }
    if fault.hold {
        state.holds.hold().await;
    }
    let status = StatusCode::from_u16(fault.status?).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let error = if status == StatusCode::TOO_MANY_REQUESTS {
        ApiError::too_many_requests(fault.retry_after_secs.unwrap_or(1))
    } else {
        ApiError::from_status(status, format!("Injected fault: {status}"))
    };
    Some(error.into_response())
}

/// Platform headers and the client attribution for the counters.
fn finish(resp: &mut Response, client_id: Option<String>, decision: Option<Decision>) {
    let headers = resp.headers_mut();
    headers.insert(CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    if let Ok(id) = HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()) {
        headers.insert(CORRELATION_ID, id);
    }
    if let Some(d) = decision {
        headers.insert(RATELIMIT_COUNT, HeaderValue::from(d.count));
        headers.insert(RATELIMIT_ALLOWED, HeaderValue::from(d.allowed));
        headers.insert(RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
    }
    if let Some(client_id) = client_id {
        resp.extensions_mut().insert(ClientTag(client_id));
    }
}
