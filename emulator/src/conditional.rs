//! Conditional GETs (RFC 9110 §13): `ETag` / `Last-Modified` validators and the
//! 304 answer to `If-None-Match` / `If-Modified-Since`. A cache in front of the
//! platform can revalidate cheaply with these.

use axum::http::header::{ETAG, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, FixedOffset};
use serde_json::Value;

use crate::timefmt::{http_date, parse_http_date};

/// The validators of one representation.
#[derive(Debug, Clone)]
pub(crate) struct Validators {
    /// Quoted strong entity tag.
    pub etag: String,
    pub modified: DateTime<FixedOffset>,
}

/// `If-None-Match` wins when present (RFC 9110 §13.2.2); otherwise
/// `If-Modified-Since` at or after the last modification (to the second).
fn is_not_modified(headers: &HeaderMap, v: &Validators) -> bool {
    let mut inm = headers.get_all(IF_NONE_MATCH).iter().peekable();
    if inm.peek().is_some() {
        return inm
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(','))
            .map(str::trim)
            .any(|tag| tag == "*" || tag.trim_start_matches("W/") == v.etag);
    }
    headers
        .get(IF_MODIFIED_SINCE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_http_date)
        .is_some_and(|since| since.timestamp() >= v.modified.timestamp())
}

fn set_validators(resp: &mut Response, v: &Validators) {
    let headers = resp.headers_mut();
    if let Ok(etag) = HeaderValue::from_str(&v.etag) {
        headers.insert(ETAG, etag);
    }
    if let Ok(date) = HeaderValue::from_str(&http_date(&v.modified)) {
        headers.insert(LAST_MODIFIED, date);
    }
}

/// 304 with validators and no body when the request's conditions hold,
/// else 200 with the body built by `body` (only called then).
pub(crate) fn respond(headers: &HeaderMap, v: &Validators, body: impl FnOnce() -> Value) -> Response {
    let mut resp = if is_not_modified(headers, v) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        Json(body()).into_response()
    };
    set_validators(&mut resp, v);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn validators() -> Validators {
        Validators {
            etag: "\"abc\"".into(),
            modified: DateTime::parse_from_rfc3339("2024-03-01T14:00:00.500+02:00").unwrap(),
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn if_none_match() {
        let v = validators();
        assert!(is_not_modified(&headers(&[("if-none-match", "\"x\", W/\"abc\"")]), &v));
        assert!(!is_not_modified(&headers(&[("if-none-match", "\"x\"")]), &v));
        // If-None-Match takes precedence over a matching If-Modified-Since.
        assert!(!is_not_modified(
            &headers(&[("if-none-match", "\"x\""), ("if-modified-since", "Fri, 01 Mar 2024 12:00:00 GMT")]),
            &v
        ));
    }

    #[test]
    fn if_modified_since() {
        let v = validators();
        assert!(is_not_modified(&headers(&[("if-modified-since", "Fri, 01 Mar 2024 12:00:00 GMT")]), &v));
        assert!(!is_not_modified(&headers(&[("if-modified-since", "Fri, 01 Mar 2024 11:59:59 GMT")]), &v));
        assert!(!is_not_modified(&headers(&[("if-modified-since", "garbage")]), &v));
    }
}
