//! The upstream HTTP client: one call to the platform API, its status mapped
//! to our errors, and Genesys paging assembled into one entry.
//!
//! Only 2xx bodies leave this module as values; every failure is an
//! [`Error`], so nothing failed can be stored by the layers above.

mod token_pool;

use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::StatusCode;
use serde_json::{Map, Value};

use crate::catalog::Method;
use crate::config::UpstreamSettings;
use crate::error::{Error, Result};
use token_pool::{without_url, TokenPool};

/// One upstream call, resolved from a Get.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Path with the id filled in (already percent-safe: ids are validated).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Bytes>,
}

/// A successful (2xx) upstream answer.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

pub struct Upstream {
    http: reqwest::Client,
    base_url: String,
    tokens: TokenPool,
    settings: UpstreamSettings,
}

impl Upstream {
    /// `redis`: the shared Redis pool, when the store is Redis (for the
    /// fleet-wide rate limiter).
    pub fn new(base_url: &str, settings: UpstreamSettings, redis: Option<fred::prelude::Pool>) -> Result<Self> {
        let _ = redis;
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let token_url = settings.token_url.clone().unwrap_or_else(|| format!("{base_url}/oauth/token"));
        let tokens = TokenPool::new(settings.credentials.clone(), token_url, http.clone());
        Ok(Upstream { http, base_url, tokens, settings })
    }

    /// Performs `call`; for paged kinds, fetches every page and assembles one
    /// `{"entities": [...], "total": n}` document. `deadline`: the caller's
    /// deadline, past which waiting (for quota, for retries) is pointless.
    pub async fn fetch(&self, call: &Call, paged: bool, deadline: Option<Instant>) -> Result<Fetched> {
        let _ = deadline;
        let caller_picked_page = call.query.iter().any(|(k, _)| k == "pageNumber");
        if paged && !caller_picked_page {
            self.fetch_all_pages(call).await
        } else {
            self.fetch_once(call).await
        }
    }

    async fn fetch_all_pages(&self, call: &Call) -> Result<Fetched> {
        let max = self.settings.max_list_entries;
        let mut entities: Vec<Value> = Vec::new();
        let mut page = 1u32;
        loop {
            let mut paged = call.clone();
            if !paged.query.iter().any(|(k, _)| k == "pageSize") {
                paged.query.push(("pageSize".into(), self.settings.page_size.to_string()));
            }
            paged.query.push(("pageNumber".into(), page.to_string()));
            let fetched = self.fetch_once(&paged).await?;
            let mut doc: Map<String, Value> = serde_json::from_slice(&fetched.body)
                .map_err(|e| Error::BadUpstream(format!("page {page} is not a JSON object: {e}")))?;
            let total = doc.get("total").and_then(Value::as_u64).unwrap_or(0) as usize;
            if total > max {
                return Err(Error::BadUpstream(format!(
                    "list has {total} entries, over the limit of {max} (upstream.max_list_entries); \
                     narrow it with query parameters"
                )));
            }
            match doc.remove("entities") {
                Some(Value::Array(items)) => entities.extend(items),
                _ => return Err(Error::BadUpstream(format!("page {page} has no entities array"))),
            }
            if entities.len() > max {
                return Err(Error::BadUpstream(format!(
                    "list has more than {max} entries (upstream.max_list_entries)"
                )));
            }
            let page_count = doc.get("pageCount").and_then(Value::as_u64).unwrap_or(1) as u32;
            let has_next = doc.get("nextUri").is_some_and(|v| !v.is_null());
            if page >= page_count && !has_next {
                break;
            }
            page += 1;
            if page > 10_000 {
                return Err(Error::BadUpstream("paging did not end after 10000 pages".into()));
            }
        }
        let total = entities.len();
        let body = serde_json::to_vec(&serde_json::json!({ "entities": entities, "total": total }))
            .map_err(|e| Error::Internal(e.to_string()))?;
        Ok(Fetched { body: Bytes::from(body), etag: None, last_modified: None })
    }

    /// One HTTP call with a pooled token; a 401 drops the token and retries once.
    async fn fetch_once(&self, call: &Call) -> Result<Fetched> {
        let mut retried_auth = false;
        loop {
            let lease = self.tokens.lease().await?;
            let url = format!("{}{}", self.base_url, call.path);
            let mut req = match call.method {
                Method::Get => self.http.get(&url),
                Method::Post => self.http.post(&url),
            };
            req = req.bearer_auth(&lease.token).query(&call.query).header("accept", "application/json");
            if let Some(body) = &call.body {
                req = req.header("content-type", "application/json").body(body.clone());
            }
            let resp = req.send().await.map_err(|e| {
                let message = if e.is_timeout() {
                    format!("upstream timed out: {}", without_url(&e))
                } else {
                    format!("upstream unreachable: {}", without_url(&e))
                };
                Error::Unavailable { message, retry_after: None }
            })?;
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED && !retried_auth {
                self.tokens.reject(&lease);
                retried_auth = true;
                continue;
            }
            if !status.is_success() {
                return Err(map_status(status, resp.headers(), &call.path));
            }
            let headers = resp.headers().clone();
            let body = self.read_body(resp).await?;
            return Ok(Fetched {
                body,
                etag: header(&headers, "etag"),
                last_modified: header(&headers, "last-modified"),
            });
        }
    }

    async fn read_body(&self, resp: reqwest::Response) -> Result<Bytes> {
        let max = self.settings.max_response_bytes;
        if resp.content_length().is_some_and(|n| n as usize > max) {
            return Err(Error::BadUpstream(format!(
                "response over {max} bytes (upstream.max_response_bytes)"
            )));
        }
        let body = resp.bytes().await.map_err(|e| Error::Unavailable {
            message: format!("upstream body: {}", without_url(&e)),
            retry_after: None,
        })?;
        if body.len() > max {
            return Err(Error::BadUpstream(format!(
                "response over {max} bytes (upstream.max_response_bytes)"
            )));
        }
        Ok(body)
    }
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

/// `Retry-After` in seconds (the platform always sends seconds).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The one mapping of upstream HTTP failures to our errors.
fn map_status(status: StatusCode, headers: &HeaderMap, path: &str) -> Error {
    let code = status.as_u16();
    match code {
        401 => Error::Unauthenticated(format!("{path}: upstream answered 401")),
        403 => Error::PermissionDenied(format!("{path}: upstream answered 403")),
        404 => Error::NotFound(path.to_string()),
        429 => Error::RateLimited { retry_after: retry_after(headers).unwrap_or(Duration::from_secs(1)) },
        500..=599 => Error::Unavailable {
            message: format!("{path}: upstream answered {code}"),
            retry_after: retry_after(headers),
        },
        _ => Error::BadUpstream(format!("{path}: upstream answered {code}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn statuses_map_to_errors() {
        let mut h = HeaderMap::new();
        assert!(matches!(map_status(StatusCode::NOT_FOUND, &h, "/x"), Error::NotFound(_)));
        assert!(matches!(map_status(StatusCode::FORBIDDEN, &h, "/x"), Error::PermissionDenied(_)));
        assert!(matches!(map_status(StatusCode::BAD_GATEWAY, &h, "/x"), Error::Unavailable { .. }));
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        match map_status(StatusCode::TOO_MANY_REQUESTS, &h, "/x") {
            Error::RateLimited { retry_after } => assert_eq!(retry_after, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
    }
}
