//! The upstream HTTP client: spends the platform quota of a pool of OAuth
//! tokens without tripping it, and maps every failure to our errors.
//!
//! A call flows: pick the healthiest token ([`token_pool`]) → take one call
//! from its fleet-wide budget ([`ratelimit`]) → send → learn from the
//! rate-limit headers ([`headers`]) → retry 429/5xx/timeouts inside the
//! caller's deadline ([`retry`]). Paged lists ([`paging`]) and async
//! analytics jobs ([`jobs`]) are made of such calls, each spending budget.
//!
//! Only 2xx bodies leave this module as values; every failure is an
//! [`Error`], so nothing failed can be stored by the layers above.

mod headers;
mod health;
mod jobs;
mod paging;
mod ratelimit;
mod retry;
mod stats;
mod token_pool;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::catalog::Method;
use crate::config::UpstreamSettings;
use crate::error::{Error, Result};
use ratelimit::{Limiter, Verdict};
use retry::Backoff;
use token_pool::{without_url, Lease, TokenPool};

pub use headers::{retry_after, RateHeaders};
pub use jobs::check_job_body;
pub use stats::{StatsSnapshot, UpstreamStats};
pub use token_pool::CredentialState;

/// One upstream call, resolved from a Get.
#[derive(Debug, Clone)]
pub struct Call {
    pub method: Method,
    /// Path with the id filled in (already percent-safe: ids are validated).
    pub path: String,
    pub query: Vec<(String, String)>,
    pub body: Option<Bytes>,
    /// An async job (submit, poll, fetch results): see [`jobs`].
    pub job: bool,
    /// Validators of the stored copy: sent as If-None-Match /
    /// If-Modified-Since so an unchanged resource costs no body (HTTP 304).
    pub validators: Option<Validators>,
}

/// Upstream validators of a stored value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

impl Call {
    /// A plain GET of `path`.
    pub fn get(path: impl Into<String>) -> Call {
        Call {
            method: Method::Get,
            path: path.into(),
            query: Vec::new(),
            body: None,
            job: false,
            validators: None,
        }
    }
}

/// A successful (2xx) upstream answer.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub body: Bytes,
    pub etag: Option<String>,
    pub last_modified: Option<String>,
    /// 304 to a conditional call: the stored copy is current; `body` is empty.
    pub not_modified: bool,
}

pub struct Upstream {
    http: reqwest::Client,
    base_url: String,
    tokens: TokenPool,
    limiter: Limiter,
    backoff: Backoff,
    stats: Arc<UpstreamStats>,
    settings: UpstreamSettings,
    /// Callers take quota one at a time, first come first served: waiters
    /// queue here instead of all waking at once to ask the limiter.
    gate: tokio::sync::Mutex<()>,
}

/// How one attempt failed: worth retrying or not.
enum Failure {
    /// Final: no retry can help (caller error, no quota within the deadline).
    Final(Error),
    /// Worth retrying; after exactly this wait when given (else backoff).
    Retry(Error, Option<Duration>),
}

impl Upstream {
    /// `shared`: the fleet's rate-limit budgets, when the store is Redis;
    /// without them the limiter is local with the full budget (one instance).
    pub fn new(
        base_url: &str,
        settings: UpstreamSettings,
        shared: Option<Arc<dyn crate::store::SharedBudgets>>,
    ) -> Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(settings.request_timeout)
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| Error::Internal(format!("http client: {e}")))?;
        let base_url = base_url.trim_end_matches('/').to_string();
        let token_url = settings.token_url.clone().unwrap_or_else(|| format!("{base_url}/oauth/token"));
        let stats = Arc::new(UpstreamStats::default());
        let tokens = TokenPool::new(
            settings.credentials.clone(),
            token_url,
            http.clone(),
            settings.rate_limit.allowed,
            settings.credential_park,
            stats.clone(),
        );
        let limiter = Limiter::new(shared, settings.rate_limit.clone());
        let backoff = Backoff::new(settings.retry.clone());
        Ok(Upstream { http, base_url, tokens, limiter, backoff, stats, settings, gate: Default::default() })
    }

    /// Performs `call`: a job kind runs as a validated async job; a paged
    /// kind fetches every page into one `{"entities": [...], "total": n}`
    /// document. `deadline`: the caller's deadline, past which waiting (for
    /// quota, for retries, for a job) is pointless.
    pub async fn fetch(&self, call: &Call, paged: bool, deadline: Option<Instant>) -> Result<Fetched> {
        let caller_picked_page = call.query.iter().any(|(k, _)| k == "pageNumber");
        if call.job {
            self.fetch_job(call, deadline).await
        } else if paged && !caller_picked_page {
            self.fetch_all_pages(call, deadline).await
        } else {
            self.call(call, deadline).await
        }
    }

    /// Counters of what the upstream side did.
    pub fn stats(&self) -> StatsSnapshot {
        self.stats.snapshot()
    }

    /// The state of every credential (parked, resting).
    pub fn credentials(&self) -> Vec<CredentialState> {
        self.tokens.states()
    }

    /// One platform call with JSON in and out, made with the token of
    /// `client_id` (None: the first credential), for APIs tied to one
    /// client such as Notification API channels. Spends that token's budget
    /// like any call (waiting at most `upstream.max_wait`); no retries: the
    /// caller decides.
    pub async fn platform_json(
        &self,
        client_id: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let slot = match client_id {
            None if !self.tokens.is_empty() => 0,
            None => return Err(Error::Unauthenticated("no upstream credentials configured".into())),
            Some(id) => (0..self.tokens.len())
                .find(|&s| self.tokens.client_id(s) == id)
                .ok_or_else(|| Error::Unauthenticated(format!("no upstream credential {id:?}")))?,
        };
        let give_up = Instant::now() + self.settings.max_wait;
        loop {
            let key = self.tokens.limiter_key(slot);
            match self.limiter.acquire(key, self.tokens.allowed(slot), &self.stats).await {
                Verdict::Allowed { .. } => break,
                Verdict::Wait(wait) if Instant::now() + wait < give_up => tokio::time::sleep(wait).await,
                Verdict::Wait(retry_after) => return Err(Error::RateLimited { retry_after }),
            }
        }
        let lease = self.tokens.token(slot).await?;
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base_url))
            .bearer_auth(&lease.token)
            .header("accept", "application/json");
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.map_err(|e| Error::Unavailable {
            message: format!("upstream unreachable: {}", without_url(&e)),
            retry_after: None,
        })?;
        let status = resp.status();
        if status == StatusCode::UNAUTHORIZED {
            self.tokens.unauthorized(&lease);
        }
        if !status.is_success() {
            return Err(map_status(status, resp.headers(), path));
        }
        let body = self.read_body(resp).await?;
        if body.is_empty() {
            return Ok(serde_json::Value::Null); // 202/204 without a body
        }
        serde_json::from_slice(&body).map_err(|e| Error::BadUpstream(format!("{path}: not JSON: {e}")))
    }

    /// One API call with retries: 429 (on another token, or once the
    /// `Retry-After` passed), 5xx and timeouts with backoff, all inside the
    /// deadline; other 4xx fail at once.
    async fn call(&self, call: &Call, deadline: Option<Instant>) -> Result<Fetched> {
        let mut retry = 0;
        loop {
            let (err, exact) = match self.attempt(call, deadline).await {
                Ok(f) => return Ok(f),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Retry(e, exact)) => (e, exact),
            };
            if retry + 1 >= self.backoff.max_attempts() {
                return Err(err);
            }
            let Some(wait) = exact.or_else(|| self.backoff.wait_after(&err, retry)) else { return Err(err) };
            let too_long = match deadline {
                Some(d) => Instant::now() + wait >= d,
                None => wait > self.settings.max_wait,
            };
            if too_long {
                return Err(err);
            }
            tracing::debug!(path = %call.path, error = %err, ?wait, retry, "retrying upstream call");
            UpstreamStats::bump(&self.stats.retries);
            tokio::time::sleep(wait).await;
            retry += 1;
        }
    }

    /// One attempt: a token with budget, one HTTP call (plus one more with a
    /// fresh token after a 401).
    #[tracing::instrument(level = "debug", name = "upstream.call", skip_all, fields(path = %call.path))]
    async fn attempt(&self, call: &Call, deadline: Option<Instant>) -> Result<Fetched, Failure> {
        let mut auth_retries = 0;
        loop {
            let lease = self.acquire(deadline).await.map_err(Failure::Final)?;
            let (started, client_id) = (Instant::now(), self.tokens.client_id(lease.slot));
            let resp = self
                .send(call, &lease, deadline)
                .await
                .inspect_err(|_| crate::metrics::upstream_unreachable(client_id, started.elapsed()))
                .map_err(|e| Failure::Retry(e, None))?;
            let status = resp.status();
            let rate = headers::parse(resp.headers());
            crate::metrics::upstream_answered(client_id, status.as_u16(), started.elapsed(), rate.remaining);
            let rested = self.tokens.observe(
                lease.slot,
                &rate,
                status.as_u16(),
                self.settings.rate_limit.nearly_spent,
            );
            if status == StatusCode::UNAUTHORIZED {
                // Refresh once: drop the token; the next lease fetches a new
                // one (or another credential is used if this one is parked).
                self.tokens.unauthorized(&lease);
                auth_retries += 1;
                if auth_retries <= self.tokens.len() + 1 {
                    continue;
                }
                return Err(Failure::Final(map_status(status, resp.headers(), &call.path)));
            }
            if status == StatusCode::FORBIDDEN {
                self.tokens.forbidden(lease.slot);
            } else if status.is_success() {
                self.tokens.succeeded(lease.slot);
            }
            if status == StatusCode::NOT_MODIFIED && call.validators.is_some() {
                let h = resp.headers();
                return Ok(Fetched {
                    body: Bytes::new(),
                    etag: header(h, "etag"),
                    last_modified: header(h, "last-modified"),
                    not_modified: true,
                });
            }
            if !status.is_success() {
                let err = map_status(status, resp.headers(), &call.path);
                return Err(if rested {
                    // The token rests for exactly Retry-After; retry at once
                    // on another token (or wait for one within the deadline).
                    Failure::Retry(err, Some(Duration::ZERO))
                } else if status.as_u16() == 429 || status.is_server_error() {
                    Failure::Retry(err, None)
                } else {
                    Failure::Final(err)
                });
            }
            let headers = resp.headers().clone();
            let body = self.read_body(resp).await.map_err(|e| Failure::Retry(e, None))?;
            return Ok(Fetched {
                body,
                etag: header(&headers, "etag"),
                last_modified: header(&headers, "last-modified"),
                not_modified: false,
            });
        }
    }

    /// A token whose budget has room for one more call. Waits for budget
    /// only while the wait ends before the deadline (or, without one,
    /// within `upstream.max_wait`); else fails fast with
    /// [`Error::RateLimited`] saying when to retry.
    async fn acquire(&self, deadline: Option<Instant>) -> Result<Lease> {
        if self.tokens.is_empty() {
            return Err(Error::Unauthenticated("no upstream credentials configured".into()));
        }
        let give_up = deadline.unwrap_or_else(|| Instant::now() + self.settings.max_wait);
        // Queue for the gate, but leave time to answer before the deadline.
        let queue_until = give_up - (give_up.saturating_duration_since(Instant::now()) / 20);
        let _gate = match tokio::time::timeout_at(queue_until, self.gate.lock()).await {
            Ok(gate) => gate,
            Err(_) => {
                UpstreamStats::bump(&self.stats.quota_exhausted);
                let next = self.tokens.rank(Instant::now(), None).next_ready;
                let retry_after = next
                    .map(|t| t.saturating_duration_since(Instant::now()))
                    .unwrap_or_default()
                    .max(Duration::from_millis(100));
                return Err(Error::RateLimited { retry_after });
            }
        };
        let mut waited = false;
        let mut last_err = None;
        loop {
            let now = Instant::now();
            let ranking = self.tokens.rank(now, None);
            if ranking.all_parked {
                return Err(last_err.unwrap_or_else(|| self.tokens.parked_error(now, None)));
            }
            let mut next_ready = ranking.next_ready;
            for slot in ranking.ready {
                let lease = match self.tokens.token(slot).await {
                    Ok(lease) => lease,
                    Err(e) => {
                        last_err = Some(e);
                        continue;
                    }
                };
                let allowed = self.tokens.allowed(slot);
                match self.limiter.acquire(self.tokens.limiter_key(slot), allowed, &self.stats).await {
                    Verdict::Allowed { .. } => {
                        self.tokens.note_allowed(slot);
                        UpstreamStats::bump(&self.stats.calls);
                        return Ok(lease);
                    }
                    Verdict::Wait(wait) => {
                        let at = Instant::now() + wait;
                        self.tokens.note_throttled(slot, at);
                        next_ready = Some(next_ready.map_or(at, |n| n.min(at)));
                    }
                }
            }
            let Some(at) = next_ready else {
                // Nothing throttled, nothing usable: every usable slot failed
                // to get a token (or just got parked).
                let now = Instant::now();
                if self.tokens.rank(now, None).all_parked {
                    return Err(self.tokens.parked_error(now, None));
                }
                return Err(last_err.unwrap_or_else(|| Error::Unavailable {
                    message: "no upstream token available".into(),
                    retry_after: None,
                }));
            };
            let now = Instant::now();
            if at >= give_up {
                UpstreamStats::bump(&self.stats.quota_exhausted);
                let retry_after = at.saturating_duration_since(now).max(Duration::from_millis(1));
                return Err(Error::RateLimited { retry_after });
            }
            if !waited {
                waited = true;
                UpstreamStats::bump(&self.stats.quota_waits);
            }
            tokio::time::sleep_until(at).await;
        }
    }

    async fn send(&self, call: &Call, lease: &Lease, deadline: Option<Instant>) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base_url, call.path);
        let mut req = match call.method {
            Method::Get => self.http.get(&url),
            Method::Post => self.http.post(&url),
        };
        req = req.bearer_auth(&lease.token).query(&call.query).header("accept", "application/json");
        if let Some(v) = &call.validators {
            if let Some(etag) = &v.etag {
                req = req.header("if-none-match", etag);
            }
            if let Some(lm) = &v.last_modified {
                req = req.header("if-modified-since", lm);
            }
        }
        if let Some(body) = &call.body {
            req = req.header("content-type", "application/json").body(body.clone());
        }
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
            req = req.timeout(left.min(self.settings.request_timeout));
        }
        req.send().await.map_err(|e| {
            let message = if e.is_timeout() {
                format!("upstream timed out: {}", without_url(&e))
            } else {
                format!("upstream unreachable: {}", without_url(&e))
            };
            Error::Unavailable { message, retry_after: None }
        })
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
    use reqwest::header::{HeaderValue, RETRY_AFTER};

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
