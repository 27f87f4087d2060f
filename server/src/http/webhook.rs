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
use crate::config::{TopicMapping, WebhookSettings};
use crate::invalidation::Purge;

/// A change event, whatever door it came through (the Notification API
/// listener too: it maps topics through the same [`map_event`]).
#[derive(Debug, PartialEq)]
pub(crate) struct ChangeEvent {
    pub id: String,
    pub topic: String,
    pub entity_id: Option<String>,
}

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
    let Some(purge) = map_event(&settings.topics, &event, door, state.cache.env()) else {
        return reply(
            StatusCode::OK,
            json!({ "status": "ignored", "reason": "no mapping for topic", "topic": event.topic }),
        );
    };

    let store = state.cache.tiers().store().clone();
    let mark = format!("cx:evt:{{{}}}:{}", state.cache.env(), event.id);
    match store.set_nx(&mark, settings.dedupe_window).await {
        Ok(true) => {}
        Ok(false) => return duplicate(store.get(&mark).await, &event.id),
        Err(e) => return error_response(e),
    }
    match state.invalidator.purge(purge).await {
        Ok(purged) => {
            // Done: from now on duplicates are acknowledged and ignored.
            if let Err(e) =
                store.set(&mark, axum::body::Bytes::from_static(DONE), settings.dedupe_window).await
            {
                tracing::debug!(error = %e, "marking the event done failed; duplicates will be retried");
            }
            reply(StatusCode::OK, json!({ "status": "purged", "eventId": event.id, "purged": purged }))
        }
        Err(e) => {
            // Let the sender's retry through: the purge did not happen.
            let _ = store.delete(&[mark]).await;
            error_response(e)
        }
    }
}

/// Value of an event mark once its purge is done (while pending it is the
/// `set_nx` placeholder).
const DONE: &[u8] = b"done";

/// A duplicate event: acknowledged if its purge is done, else "retry soon".
fn duplicate(mark: crate::error::Result<Option<axum::body::Bytes>>, id: &str) -> Response {
    match mark {
        Ok(Some(v)) if v.as_ref() == DONE => {
            reply(StatusCode::OK, json!({ "status": "duplicate", "eventId": id }))
        }
        // Still being purged, or the first attempt just failed and let go.
        Ok(_) => {
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

fn str_field<'a>(v: &'a Value, names: &[&str]) -> Option<&'a str> {
    names.iter().find_map(|n| v.get(n).and_then(Value::as_str)).filter(|s| !s.is_empty())
}

fn parse_genesys(v: &Value) -> Result<ChangeEvent, String> {
    let id = str_field(v, &["eventId", "id"]).ok_or("eventId is required")?;
    let topic = str_field(v, &["topicName", "topic", "eventName"]).ok_or("topicName is required")?;
    let entity_id = str_field(v, &["entityId"])
        .or_else(|| v.get("eventBody").and_then(|b| str_field(b, &["id", "entityId"])))
        .map(str::to_string);
    Ok(ChangeEvent { id: id.to_string(), topic: topic.to_string(), entity_id })
}

fn parse_eventbridge(v: &Value) -> Result<ChangeEvent, String> {
    let id = str_field(v, &["id"]).ok_or("id (the EventBridge event id) is required")?;
    let detail = v.get("detail").filter(|d| d.is_object()).ok_or("detail object is required")?;
    let topic = str_field(detail, &["topicName"]).ok_or("detail.topicName is required")?;
    let entity_id =
        detail.get("eventBody").and_then(|b| str_field(b, &["id", "entityId"])).map(str::to_string);
    Ok(ChangeEvent { id: id.to_string(), topic: topic.to_string(), entity_id })
}

/// The purge an event maps to, if any topic pattern matches.
pub(crate) fn map_event(
    topics: &[TopicMapping],
    event: &ChangeEvent,
    door: &str,
    env: &str,
) -> Option<Purge> {
    for m in topics {
        let Some(captured) = match_topic(&m.topic, &event.topic) else { continue };
        let id = captured.or_else(|| event.entity_id.clone())?;
        if id.is_empty()
            || !id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~'))
        {
            return None;
        }
        return Some(Purge {
            keys: m.keys.iter().map(|k| format!("{env}:{}", k.replace("{id}", &id))).collect(),
            prefixes: Vec::new(),
            tags: m.tags.iter().map(|t| t.replace("{id}", &id)).collect(),
            reason: format!("{door}:{}", event.topic),
            actor: door.to_string(),
            event_id: Some(event.id.clone()),
        });
    }
    None
}

/// Matches a dot-separated topic against a pattern; returns the `{id}`
/// capture (None when the pattern has none) on a match.
fn match_topic(pattern: &str, topic: &str) -> Option<Option<String>> {
    let pat: Vec<&str> = pattern.split('.').collect();
    let top: Vec<&str> = topic.split('.').collect();
    let mut captured = None;
    for (i, p) in pat.iter().enumerate() {
        if *p == "**" {
            return (top.len() > i).then_some(captured);
        }
        let t = top.get(i)?;
        match *p {
            "*" => {}
            "{id}" => captured = Some(t.to_string()),
            lit if lit == *t => {}
            _ => return None,
        }
    }
    (pat.len() == top.len()).then_some(captured)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns() {
        assert_eq!(match_topic("routing.queue.*", "routing.queue.updated"), Some(None));
        assert_eq!(match_topic("routing.queue.*", "routing.queues.updated"), None);
        assert_eq!(
            match_topic("v2.users.{id}.routingStatus", "v2.users.u1.routingStatus"),
            Some(Some("u1".into()))
        );
        assert_eq!(
            match_topic("v2.routing.queues.{id}.**", "v2.routing.queues.q1.conversations"),
            Some(Some("q1".into()))
        );
        assert_eq!(match_topic("v2.routing.queues.{id}.**", "v2.routing.queues.q1"), None);
    }

    #[test]
    fn events_map_to_tag_purges() {
        let topics = WebhookSettings::default().topics;
        let e = ChangeEvent {
            id: "e1".into(),
            topic: "routing.queue.updated".into(),
            entity_id: Some("q1".into()),
        };
        assert_eq!(map_event(&topics, &e, "webhook", "p").unwrap().tags, vec!["queue:q1"]);
        let e = ChangeEvent {
            id: "e2".into(),
            topic: "v2.audits.entitytype.QUEUE.entityid.q9".into(),
            entity_id: None,
        };
        assert_eq!(map_event(&topics, &e, "eventbridge", "p").unwrap().tags, vec!["queue:q9"]);
        let e = ChangeEvent { id: "e3".into(), topic: "routing.queue.updated".into(), entity_id: None };
        assert!(map_event(&topics, &e, "webhook", "p").is_none(), "no id, no purge");
        let e = ChangeEvent { id: "e4".into(), topic: "something.else".into(), entity_id: Some("x".into()) };
        assert!(map_event(&topics, &e, "webhook", "p").is_none());
    }

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
