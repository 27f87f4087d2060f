//! `POST /oauth/token`: the client-credentials grant with HTTP Basic client
//! authentication. Counted like API calls but not rate limited.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use url::form_urlencoded;

use crate::auth::basic_credentials;
use crate::counting::ClientTag;
use crate::gate::NO_CACHE;
use crate::state::SharedState;

pub(super) fn router() -> Router<SharedState> {
    Router::new().route("/oauth/token", post(token))
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    let body = json!({
        "error": error,
        "description": description,
        "error_description": description,
    });
    (status, Json(body)).into_response()
}

fn grant_type(body: &[u8]) -> Option<String> {
    form_urlencoded::parse(body).find(|(k, _)| k == "grant_type").map(|(_, v)| v.into_owned())
}

/// The answer and the client it is attributed to (known only once the
/// credentials checked out).
fn answer(state: &SharedState, headers: &HeaderMap, body: &[u8]) -> (Response, Option<String>) {
    let invalid_client = || {
        oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "client not found, revoked or bad credentials (HTTP Basic authentication required)",
        )
    };
    let Some((id, secret)) = basic_credentials(headers) else {
        return (invalid_client(), None);
    };
    if !state.tokens.verify(&id, &secret) {
        return (invalid_client(), None);
    }
    match grant_type(body).as_deref() {
        Some("client_credentials") => {}
        None => {
            let resp = oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "grant_type is required");
            return (resp, Some(id));
        }
        Some(_) => {
            let resp = oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                "only grant_type=client_credentials is supported",
            );
            return (resp, Some(id));
        }
    }
    match state.tokens.issue(&id, &secret) {
        Ok(token) => {
            let body: Value = json!({
                "access_token": token,
                "token_type": "bearer",
                "expires_in": state.tokens.ttl().as_secs(),
            });
            (Json(body).into_response(), Some(id))
        }
        Err(_) => (invalid_client(), None),
    }
}

async fn token(State(state): State<SharedState>, headers: HeaderMap, body: Bytes) -> Response {
    let (mut resp, client) = answer(&state, &headers, &body);
    resp.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static(NO_CACHE));
    if let Some(id) = client {
        resp.extensions_mut().insert(ClientTag(id));
    }
    resp
}
