//! Signed purge doors: Genesys-style change events (`POST /webhooks/genesys`)
//! and EventBridge envelopes (`POST /webhooks/eventbridge`).
//!
//! The platform has no "call my URL on change" API: these events come from
//! EventBridge targets, Architect workflows or the customer's own systems.
//! Every event must be signed with the shared secret — HMAC-SHA256 of the
//! raw body in `X-Cxcache-Signature: sha256=<hex>`, or an HS256 JWT in
//! `Authorization: Bearer` that expires (`exp` required, so a leaked token
//! does not open the door forever) and, when it carries `body_sha256`, is
//! bound to that exact body — and carry an event id. The order of checks
//! makes bad input change nothing: signature (401) → JSON (400) → mapping →
//! idempotency → purge. Idempotency: an event id seen within the window is
//! acknowledged and ignored once its purge is done; while it is still being
//! purged a duplicate gets 503 + Retry-After, so a sender's retry is not
//! swallowed if that first purge then fails.
//!
//! Genesys body: `{"eventId", "topicName", "entityId"?, "eventBody"?}`.
//! EventBridge body: `{"id", "detail": {"topicName", "eventBody"}}`.

use std::collections::HashSet;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::{error_body, error_response, AppState};
use crate::config::WebhookSettings;
use crate::invalidation::events::{map_event, parse_eventbridge, parse_genesys, ChangeEvent};
use crate::invalidation::Once;

pub async fn genesys(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, headers, body, "webhook", parse_genesys).await
}

pub async fn eventbridge(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    handle(state, headers, body, "eventbridge", parse_eventbridge).await
}

async fn handle(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
    door: &'static str,
    parse: fn(&Value) -> Result<ChangeEvent, String>,
) -> Response {
    let settings = &state.webhook;
    if let Err(why) = verify(settings, &headers, &body) {
        tracing::warn!(door, why, "unsigned or badly signed event refused");
        return reply(StatusCode::UNAUTHORIZED, error_body("UNAUTHENTICATED", why, &[]));
    }
    let value: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return reply(
                StatusCode::BAD_REQUEST,
                error_body("INVALID_ARGUMENT", &format!("malformed JSON: {e}"), &[]),
            )
        }
    };
    let event = match parse(&value) {
        Ok(e) => e,
        Err(why) => return reply(StatusCode::BAD_REQUEST, error_body("INVALID_ARGUMENT", &why, &[])),
    };
    let Some(purge) = map_event(&settings.topics, &event, door, state.invalidator.env()) else {
        return reply(
            StatusCode::OK,
            json!({ "status": "ignored", "reason": "no mapping for topic", "topic": event.topic }),
        );
    };

    match state.invalidator.purge_once(&event.id, purge, settings.dedupe_window).await {
        Ok(Once::Purged(purged)) => {
            reply(StatusCode::OK, json!({ "status": "purged", "eventId": event.id, "purged": purged }))
        }
        Ok(Once::Duplicate) => reply(StatusCode::OK, json!({ "status": "duplicate", "eventId": event.id })),
        Ok(Once::Pending) => {
            let mut r = reply(
                StatusCode::SERVICE_UNAVAILABLE,
                error_body("UNAVAILABLE", "this event is still being processed; retry", &[]),
            );
            r.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
            r
        }
        Err(e) => error_response(e),
    }
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

/// Checks the HMAC signature header or the HS256 bearer JWT.
fn verify(settings: &WebhookSettings, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
    let Some(secret) = &settings.secret else {
        return Err("webhook secret not configured: events are refused");
    };
    if let Some(sig) = headers.get("x-cxcache-signature").and_then(|v| v.to_str().ok()) {
        let hex_sig = sig.trim().strip_prefix("sha256=").ok_or("signature must be sha256=<hex>")?;
        let expected = hex::decode(hex_sig).map_err(|_| "signature is not hex")?;
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.expose().as_bytes()).map_err(|_| "unusable secret")?;
        mac.update(body);
        // Constant-time comparison.
        return mac.verify_slice(&expected).map_err(|_| "signature mismatch");
    }
    if let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        let token = auth.strip_prefix("Bearer ").ok_or("authorization must be a Bearer JWT")?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
        validation.required_spec_claims = HashSet::from(["exp".to_string()]);
        let key = jsonwebtoken::DecodingKey::from_secret(secret.expose().as_bytes());
        let claims = jsonwebtoken::decode::<Value>(token, &key, &validation)
            .map_err(|_| "invalid or expired JWT (HS256 with the shared secret, exp required)")?
            .claims;
        return match claims.get("body_sha256") {
            None => Ok(()),
            Some(Value::String(want)) if want.eq_ignore_ascii_case(&hex::encode(Sha256::digest(body))) => {
                Ok(())
            }
            Some(_) => Err("JWT body_sha256 does not match the body"),
        };
    }
    Err("missing X-Cxcache-Signature or Authorization header")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let settings =
            WebhookSettings { secret: Some(crate::config::Secret::new("s3cret")), ..Default::default() };
        let body = br#"{"eventId":"1"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(body);
        let good = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
        let mut h = HeaderMap::new();
        h.insert("x-cxcache-signature", good.parse().unwrap());
        assert!(verify(&settings, &h, body).is_ok());
        assert!(verify(&settings, &h, br#"{"eventId":"2"}"#).is_err());
        let jwt = |claims: Value, secret: &[u8]| {
            let token = jsonwebtoken::encode(
                &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
                &claims,
                &jsonwebtoken::EncodingKey::from_secret(secret),
            )
            .unwrap();
            let mut h = HeaderMap::new();
            h.insert("authorization", format!("Bearer {token}").parse().unwrap());
            h
        };
        let exp = chrono::Utc::now().timestamp() + 300;
        assert!(verify(&settings, &jwt(json!({"sub": "crm", "exp": exp}), b"s3cret"), body).is_ok());
        assert!(verify(&settings, &jwt(json!({"sub": "crm"}), b"s3cret"), body).is_err(), "no exp");
        let old = chrono::Utc::now().timestamp() - 3600;
        assert!(verify(&settings, &jwt(json!({"exp": old}), b"s3cret"), body).is_err(), "expired");
        assert!(verify(&settings, &jwt(json!({"exp": exp}), b"wrong"), body).is_err(), "forged");
        let bound = json!({"exp": exp, "body_sha256": hex::encode(Sha256::digest(body))});
        assert!(verify(&settings, &jwt(bound.clone(), b"s3cret"), body).is_ok());
        assert!(verify(&settings, &jwt(bound, b"s3cret"), br#"{"eventId":"2"}"#).is_err(), "other body");
        assert!(verify(&settings, &HeaderMap::new(), body).is_err());
    }
}
