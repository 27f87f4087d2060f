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
mod learn;
mod paging;
mod pressure;
mod priority;
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
use token_pool::{without_url, Grant, TokenPool};

pub use headers::retry_after;
pub use jobs::check_job_body;
pub use learn::Budget;
pub use priority::Priority;
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
    /// Whether a caller waits on it: see [`priority`].
    pub priority: Priority,
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
            priority: Priority::Foreground,
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
    /// Foreground callers waiting for quota (background calls then refused).
    pressure: pressure::Pressure,
}

/// While the token fetch of the best credential without a token is still
/// out after this, the next one's is started too: one slow or hung token
/// endpoint must not hold calls another credential can serve.
const TOKEN_HEDGE: Duration = Duration::from_millis(250);

/// What one credential's queue and limiter said to a caller.
enum Quota {
    Allowed,
    /// No call on it before then.
    Throttled(Instant),
    /// Its queue was not reached in time.
    Busy,
    /// Parked meanwhile.
    Unusable,
    /// Too little left in the platform's window for a background call.
    Low,
}

/// Request header naming the priority of a call.
pub const PRIORITY_HEADER: &str = "x-cxcache-priority";

/// The longest a background call waits for a credential's queue or token.
const BACKGROUND_WAIT: Duration = Duration::from_millis(100);

/// One HTTP request for [`Upstream::attempt`]: a cache fetch ([`Call`]) or
/// a platform call.
struct Request<'a> {
    method: reqwest::Method,
    path: &'a str,
    query: &'a [(String, String)],
    /// JSON.
    body: Option<Bytes>,
    validators: Option<&'a Validators>,
    /// Only this slot's credential (APIs tied to one OAuth client).
    pin: Option<usize>,
    priority: Priority,
}

impl<'a> Request<'a> {
    fn of(call: &'a Call) -> Request<'a> {
        Request {
            method: match call.method {
                Method::Get => reqwest::Method::GET,
                Method::Post => reqwest::Method::POST,
            },
            path: &call.path,
            query: &call.query,
            body: call.body.clone(),
            validators: call.validators.as_ref(),
            pin: None,
            priority: call.priority,
        }
    }
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
        fleet: Arc<std::sync::atomic::AtomicUsize>,
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
            settings.request_timeout,
            learn::Learned::new(
                Budget { allowed: settings.rate_limit.allowed, window: settings.rate_limit.window },
                settings.rate_limit.ceiling,
            ),
            settings.credential_park,
            stats.clone(),
        );
        let limiter = Limiter::new(shared, settings.rate_limit.clone(), fleet);
        let backoff = Backoff::new(settings.retry.clone());
        Ok(Upstream {
            http,
            base_url,
            tokens,
            limiter,
            backoff,
            stats,
            settings,
            pressure: Default::default(),
        })
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

    /// How eager early refreshes may be now, 0 (none) to 1 (as configured):
    /// none while this instance's callers wait for quota, else by the share
    /// of its window's budget the best usable credential has left
    /// ([`pressure::eagerness`]).
    pub fn eagerness(&self) -> f64 {
        if self.pressure.high() {
            return 0.0;
        }
        pressure::eagerness(self.tokens.spare(Instant::now()), self.settings.rate_limit.background_floor)
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
    /// client such as Notification API channels. It takes the same path as
    /// every call ([`Upstream::attempt`]): that token's budget (waiting at
    /// most `upstream.max_wait`), one refresh after a 401, rate-limit
    /// headers and 429s learnt, metrics and counters. One attempt, no
    /// retries: the caller decides.
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
            Some(id) => self
                .tokens
                .slot_of(id)
                .ok_or_else(|| Error::Unauthenticated(format!("no upstream credential {id:?}")))?,
        };
        let body = body
            .map(|b| serde_json::to_vec(b).map(Bytes::from))
            .transpose()
            .map_err(|e| Error::Internal(format!("{path}: request body: {e}")))?;
        let request = Request {
            method,
            path,
            query: &[],
            body,
            validators: None,
            pin: Some(slot),
            priority: Priority::Foreground,
        };
        let fetched = match self.attempt(&request, None).await {
            Ok(f) => f,
            Err(Failure::Final(e) | Failure::Retry(e, _)) => return Err(e),
        };
        if fetched.body.is_empty() {
            return Ok(serde_json::Value::Null); // 202/204 without a body
        }
        serde_json::from_slice(&fetched.body)
            .map_err(|e| Error::BadUpstream(format!("{path}: not JSON: {e}")))
    }

    /// One API call with retries: 429 (on another token, or once the
    /// `Retry-After` passed), 5xx and timeouts with backoff, all inside the
    /// deadline; other 4xx fail at once.
    async fn call(&self, call: &Call, deadline: Option<Instant>) -> Result<Fetched> {
        let request = Request::of(call);
        let mut retry = 0;
        loop {
            let (err, exact) = match self.attempt(&request, deadline).await {
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

    /// One attempt, the one way any request reaches the platform: a token
    /// with budget, one HTTP call (plus one more with a fresh token after a
    /// 401), its answer observed (rate-limit headers, 429 rests, 401/403
    /// strikes) and counted (metrics).
    #[tracing::instrument(level = "debug", name = "upstream.call", skip_all, fields(path = %call.path))]
    async fn attempt(&self, call: &Request<'_>, deadline: Option<Instant>) -> Result<Fetched, Failure> {
        let mut auth_retries = 0;
        // A pinned call has one credential to refresh; others may move on.
        let auth_budget = if call.pin.is_some() { 1 } else { self.tokens.len() + 1 };
        loop {
            let grant = self.acquire(deadline, call.pin, call.priority).await.map_err(Failure::Final)?;
            let (started, client_id) = (Instant::now(), self.tokens.client_id(grant.slot));
            let resp = self
                .send(call, &grant, deadline)
                .await
                .inspect_err(|_| crate::metrics::upstream_unreachable(client_id, started.elapsed()))
                .map_err(|e| Failure::Retry(e, None))?;
            let status = resp.status();
            let rate = headers::parse(resp.headers());
            crate::metrics::upstream_answered(client_id, status.as_u16(), started.elapsed(), rate.remaining);
            let rested = self.tokens.observe(
                grant.slot,
                &rate,
                status.as_u16(),
                self.settings.rate_limit.nearly_spent,
            );
            if status == StatusCode::UNAUTHORIZED {
                // Refresh once: drop the token; the next grant fetches a new
                // one (or another credential is used if this one is parked).
                self.tokens.unauthorized(&grant);
                auth_retries += 1;
                if auth_retries <= auth_budget {
                    continue;
                }
                return Err(Failure::Final(map_status(status, resp.headers(), call.path)));
            }
            if status == StatusCode::FORBIDDEN {
                self.tokens.forbidden(grant.slot);
            } else if status.is_success() {
                self.tokens.succeeded(grant.slot);
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
                let mut err = map_status(status, resp.headers(), call.path);
                if let Error::BadUpstream(_) = err {
                    if status.is_client_error() {
                        // Pass on what the platform said was wrong.
                        let body = self.read_body(resp).await.unwrap_or_default();
                        err = Error::Rejected(rejection(call.path, status.as_u16(), &body));
                    }
                }
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
    /// [`Error::RateLimited`] saying when to retry. `pin`: only that slot's
    /// token will do.
    ///
    /// Concurrency is per credential: each has its own fair queue, held
    /// only around its limiter decision; token fetches run on their own
    /// (with their own timeout) and sleeps for quota hold no lock, so a
    /// slow token endpoint, limiter or budget of one credential never holds
    /// a call another credential can serve.
    ///
    /// A background call never sleeps for quota: it takes only what the
    /// limiter grants it at once (see [`priority`]) or fails with
    /// [`Error::RateLimited`].
    async fn acquire(
        &self,
        deadline: Option<Instant>,
        pin: Option<usize>,
        priority: Priority,
    ) -> Result<Grant> {
        if self.tokens.is_empty() {
            return Err(Error::Unauthenticated("no upstream credentials configured".into()));
        }
        let mut give_up = deadline.unwrap_or_else(|| Instant::now() + self.settings.max_wait);
        if priority.is_background() {
            // Callers of this instance are waiting for quota: it is theirs.
            if self.pressure.high() {
                return Err(Error::RateLimited { retry_after: pressure::HOLD });
            }
            give_up = give_up.min(Instant::now() + BACKGROUND_WAIT);
        }
        // Queue for a credential, but leave time to answer before the deadline.
        let queue_until = give_up - (give_up.saturating_duration_since(Instant::now()) / 20);
        // Slots whose token fetch failed during this acquire (not asked
        // again: the call fails with that error if no other slot serves),
        // and tokens fetched for it.
        let mut failed = vec![false; self.tokens.len()];
        let mut fresh: Vec<Option<Grant>> = vec![None; self.tokens.len()];
        let mut waited = false;
        let mut last_err = None;
        let mut low = false;
        loop {
            let now = Instant::now();
            let ranking = self.tokens.rank(now, pin);
            if ranking.all_parked {
                return Err(last_err.unwrap_or_else(|| self.tokens.parked_error(now, pin)));
            }
            let mut next_ready = ranking.next_ready;
            let mut busy = false;
            let mut tokenless = Vec::new();
            for slot in ranking.ready {
                if failed[slot] {
                    continue;
                }
                let Some(grant) = fresh[slot].clone().or_else(|| self.tokens.cached(slot)) else {
                    tokenless.push(slot);
                    continue;
                };
                match self.take_quota(slot, queue_until, priority).await {
                    Quota::Allowed => {
                        // Better-ranked slots without a token get one for
                        // the next calls, so the load keeps spreading.
                        for &slot in &tokenless {
                            self.tokens.prefetch(slot);
                        }
                        UpstreamStats::bump(&self.stats.calls);
                        if priority.is_background() {
                            UpstreamStats::bump(&self.stats.background_calls);
                        }
                        crate::metrics::upstream_call(self.tokens.client_id(slot), priority.label());
                        return Ok(grant);
                    }
                    Quota::Low => low = true,
                    Quota::Throttled(at) => next_ready = Some(next_ready.map_or(at, |n| n.min(at))),
                    Quota::Busy => busy = true,
                    Quota::Unusable => {}
                }
            }
            if !tokenless.is_empty() {
                // No slot with a token could take the call: wait for the
                // first token of the others, or for a throttled one.
                let wake = next_ready.map_or(give_up, |n| n.min(give_up));
                match self.first_token(&tokenless, wake).await {
                    Some(Ok(grant)) => {
                        let slot = grant.slot;
                        fresh[slot] = Some(grant);
                    }
                    Some(Err((slot, e))) => {
                        failed[slot] = true;
                        last_err = Some(e);
                    }
                    None => {}
                }
                if Instant::now() >= give_up {
                    return Err(last_err.unwrap_or_else(|| Error::Unavailable {
                        message: "no upstream token in time: the token endpoint is slow".into(),
                        retry_after: None,
                    }));
                }
                continue;
            }
            let Some(at) = next_ready else {
                let now = Instant::now();
                if low {
                    // Background calls only: the budget is low; try later.
                    return Err(Error::RateLimited { retry_after: Duration::from_secs(1) });
                }
                if busy {
                    // Every usable credential's queue was too long to reach in time.
                    UpstreamStats::bump(&self.stats.quota_exhausted);
                    return Err(Error::RateLimited { retry_after: Duration::from_millis(100) });
                }
                // Nothing throttled, nothing usable: every usable slot failed
                // to get a token (or just got parked).
                if self.tokens.rank(now, pin).all_parked {
                    return Err(self.tokens.parked_error(now, pin));
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
            // No lock held: other credentials serve other calls meanwhile.
            let _waiting = (!priority.is_background()).then(|| self.pressure.wait());
            tokio::time::sleep_until(at).await;
        }
    }

    /// One call from `slot`'s budget, asked in its turn: first come first
    /// served within the credential, its queue held only for this one
    /// limiter decision.
    async fn take_quota(&self, slot: usize, queue_until: Instant, priority: Priority) -> Quota {
        let Ok(_turn) = tokio::time::timeout_at(queue_until, self.tokens.queue(slot).lock()).await else {
            return Quota::Busy;
        };
        // A caller ahead in the queue may just have been told to wait (or
        // got the slot rested): then no limiter round trip.
        match self.tokens.usable(slot, Instant::now()) {
            Ok(()) => {}
            Err(Some(at)) => return Quota::Throttled(at),
            Err(None) => return Quota::Unusable,
        }
        let budget = self.tokens.budget(slot);
        if priority.is_background() && self.tokens.low(slot, self.settings.rate_limit.background_floor) {
            return Quota::Low;
        }
        let learned = self.tokens.unshared(slot);
        let (verdict, fleet) =
            self.limiter.acquire(self.tokens.limiter_key(slot), budget, priority, &self.stats, learned).await;
        if let Some(fleet) = fleet {
            // Follow the fleet's budget (from the next call on).
            self.tokens.shared(slot, learned, fleet);
        }
        match verdict {
            Verdict::Allowed { .. } => {
                self.tokens.note_allowed(slot);
                Quota::Allowed
            }
            Verdict::Wait(wait) => {
                let at = Instant::now() + wait;
                self.tokens.note_throttled(slot, at);
                Quota::Throttled(at)
            }
        }
    }

    /// The first token fetched among `slots` (best first): the fetches
    /// under way are awaited, the best other is started, and while none
    /// has answered, one more each [`TOKEN_HEDGE`]. A failed fetch is
    /// reported with its slot. None at `wake`.
    async fn first_token(&self, slots: &[usize], wake: Instant) -> Option<Result<Grant, (usize, Error)>> {
        use futures::stream::{FuturesUnordered, StreamExt};
        let fetch = |slot: usize| {
            let fetch = self.tokens.fetch(slot);
            async move { (slot, fetch.await) }
        };
        let (under_way, mut rest): (Vec<usize>, Vec<usize>) =
            slots.iter().copied().partition(|&slot| self.tokens.fetching(slot));
        rest.reverse();
        let mut pending: FuturesUnordered<_> = under_way.into_iter().map(fetch).collect();
        if let Some(slot) = rest.pop() {
            pending.push(fetch(slot));
        }
        let mut hedge_at = Instant::now() + TOKEN_HEDGE;
        loop {
            tokio::select! {
                done = pending.next() => return match done? {
                    (_, Ok(grant)) => Some(Ok(grant)),
                    (slot, Err(e)) => Some(Err((slot, e))),
                },
                () = tokio::time::sleep_until(hedge_at), if !rest.is_empty() => {
                    pending.push(fetch(rest.pop().expect("not empty")));
                    hedge_at = Instant::now() + TOKEN_HEDGE;
                }
                () = tokio::time::sleep_until(wake) => return None,
            }
        }
    }

    async fn send(
        &self,
        call: &Request<'_>,
        grant: &Grant,
        deadline: Option<Instant>,
    ) -> Result<reqwest::Response> {
        let url = format!("{}{}", self.base_url, call.path);
        let mut req = self.http.request(call.method.clone(), &url);
        req = req
            .bearer_auth(&grant.token)
            .query(call.query)
            .header("accept", "application/json")
            // For the upstream's logs (and the emulator's call log by priority).
            .header(PRIORITY_HEADER, call.priority.label());
        if let Some(v) = call.validators {
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

/// What a 4xx answer's JSON body says (`code`, `message`; Genesys style),
/// or its status alone.
fn rejection(path: &str, status: u16, body: &[u8]) -> crate::error::Rejection {
    let json: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text =
        |name: &str| json.get(name).and_then(serde_json::Value::as_str).unwrap_or_default().to_string();
    let mut message = text("message");
    if message.is_empty() {
        message = format!("{path}: upstream answered {status}");
    }
    if message.len() > 1024 {
        let mut end = 1024;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    crate::error::Rejection { path: path.to_string(), status, code: text("code"), message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Credential, Secret};
    use reqwest::header::{HeaderValue, RETRY_AFTER};

    /// A platform on 127.0.0.1: tokens named after their client, and a
    /// channels endpoint that answers 429 (`Retry-After: 30`) and records
    /// the bearer of each call.
    async fn throttling_platform() -> (String, Arc<parking_lot::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap as Headers, StatusCode as Status};
        use base64::Engine;
        let bearers: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let seen = bearers.clone();
        let app = axum::Router::new()
            .route(
                "/oauth/token",
                axum::routing::post(|h: Headers| async move {
                    let basic = h["authorization"].to_str().unwrap().trim_start_matches("Basic ").to_string();
                    let decoded = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
                    let client = String::from_utf8(decoded).unwrap().split(':').next().unwrap().to_string();
                    axum::Json(serde_json::json!({ "access_token": format!("token-of-{client}"), "expires_in": 3600 }))
                }),
            )
            .route(
                "/api/v2/notifications/channels",
                axum::routing::post(move |h: Headers| async move {
                    seen.lock().push(h["authorization"].to_str().unwrap().to_string());
                    (Status::TOO_MANY_REQUESTS, [("retry-after", "30")], "{}")
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, bearers)
    }

    fn two_credentials() -> UpstreamSettings {
        UpstreamSettings {
            credentials: (0..2)
                .map(|i| Credential { client_id: format!("c{i}"), client_secret: Secret::new("s") })
                .collect(),
            ..UpstreamSettings::default()
        }
    }

    #[tokio::test]
    async fn a_platform_call_429_rests_its_pinned_credential_and_is_counted() {
        let (url, bearers) = throttling_platform().await;
        let up = Upstream::new(&url, two_credentials(), None, Default::default()).unwrap();
        let channels = "/api/v2/notifications/channels";
        let body = serde_json::json!({});
        let first = up.platform_json(Some("c1"), reqwest::Method::POST, channels, Some(&body)).await;
        match first {
            Err(Error::RateLimited { retry_after }) => assert_eq!(retry_after, Duration::from_secs(30)),
            other => panic!("{other:?}"),
        }
        assert_eq!(*bearers.lock(), ["Bearer token-of-c1"], "the call used the requested client's token");
        let stats = up.stats();
        assert_eq!((stats.calls, stats.responses_429), (1, 1));
        let states = up.credentials();
        assert!(states[1].resting && !states[1].parked, "{states:?}");
        assert!(!states[0].resting, "the other credential is untouched: {states:?}");
        // Rested for 30 s, past upstream.max_wait: the next call on that
        // client fails fast, without reaching the platform.
        let again = up.platform_json(Some("c1"), reqwest::Method::POST, channels, Some(&body)).await;
        assert!(
            matches!(again, Err(Error::RateLimited { retry_after }) if retry_after > Duration::from_secs(25))
        );
        assert_eq!(bearers.lock().len(), 1);
        assert_eq!(up.stats().calls, 1);
    }

    #[tokio::test]
    async fn a_platform_call_for_an_unknown_client_fails_without_a_request() {
        let (url, bearers) = throttling_platform().await;
        let up = Upstream::new(&url, two_credentials(), None, Default::default()).unwrap();
        let err = up.platform_json(Some("nobody"), reqwest::Method::DELETE, "/x", None).await.unwrap_err();
        assert!(matches!(err, Error::Unauthenticated(_)), "{err:?}");
        assert!(bearers.lock().is_empty());
    }

    /// The client id of a token request's Basic authorization.
    fn client_of(h: &axum::http::HeaderMap) -> String {
        use base64::Engine;
        let basic = h["authorization"].to_str().unwrap().trim_start_matches("Basic ").to_string();
        let decoded = base64::engine::general_purpose::STANDARD.decode(basic).unwrap();
        String::from_utf8(decoded).unwrap().split(':').next().unwrap().to_string()
    }

    /// A platform on 127.0.0.1 whose token endpoint answers with `token`
    /// (per client id, per request number of that client: None never
    /// answers, Some(status)), and whose `/api/v2/things` answers with
    /// `api` (per bearer, per call number), recording each bearer.
    async fn scripted_platform(
        token: fn(&str, usize) -> Option<u16>,
        api: fn(&str, usize) -> (u16, &'static str),
    ) -> (String, Arc<parking_lot::Mutex<Vec<String>>>) {
        use axum::http::{HeaderMap as Headers, StatusCode as Status};
        use axum::response::IntoResponse;
        let bearers: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let seen = bearers.clone();
        let token_calls: Arc<parking_lot::Mutex<Vec<String>>> = Arc::default();
        let app = axum::Router::new()
            .route(
                "/oauth/token",
                axum::routing::post(move |h: Headers| async move {
                    let client = client_of(&h);
                    let n = {
                        let mut calls = token_calls.lock();
                        calls.push(client.clone());
                        calls.iter().filter(|c| **c == client).count() - 1
                    };
                    match token(&client, n) {
                        None => std::future::pending().await,
                        Some(200) => axum::Json(serde_json::json!({
                            "access_token": format!("token-of-{client}"), "expires_in": 3600
                        }))
                        .into_response(),
                        Some(code) => Status::from_u16(code).unwrap().into_response(),
                    }
                }),
            )
            .route(
                "/api/v2/things",
                axum::routing::get(move |h: Headers| async move {
                    let bearer = h["authorization"].to_str().unwrap().to_string();
                    let n = {
                        let mut seen = seen.lock();
                        seen.push(bearer.clone());
                        seen.iter().filter(|b| **b == bearer).count() - 1
                    };
                    let (code, retry_after) = api(bearer.trim_start_matches("Bearer "), n);
                    (Status::from_u16(code).unwrap(), [("retry-after", retry_after)], "{}")
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, bearers)
    }

    #[tokio::test]
    async fn a_hung_token_endpoint_of_one_credential_does_not_hold_calls_another_can_serve() {
        // c0's token endpoint never answers; c1's does at once.
        let (url, bearers) =
            scripted_platform(|client, _| (client == "c1").then_some(200), |_, _| (200, "0")).await;
        let settings = UpstreamSettings { request_timeout: Duration::from_secs(5), ..two_credentials() };
        let up = Arc::new(Upstream::new(&url, settings, None, Default::default()).unwrap());
        // The first call ranks c0 first (ties in turn, starting at slot 0).
        let started = std::time::Instant::now();
        let first =
            tokio::time::timeout(Duration::from_secs(2), up.fetch(&Call::get("/api/v2/things"), false, None))
                .await
                .expect("the call waited on the hung token endpoint of c0");
        first.unwrap();
        // Calls meanwhile (c0's fetch still hangs) do not queue behind it either.
        let calls = (0..4).map(|_| {
            let up = up.clone();
            tokio::spawn(async move { up.fetch(&Call::get("/api/v2/things"), false, None).await })
        });
        for call in calls {
            tokio::time::timeout(Duration::from_secs(2), call).await.expect("call held up").unwrap().unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(bearers.lock().iter().all(|b| b == "Bearer token-of-c1"), "{:?}", bearers.lock());
        assert_eq!(bearers.lock().len(), 5);
    }

    #[tokio::test]
    async fn a_quota_sleep_on_one_credential_does_not_delay_a_call_another_can_serve() {
        // c1's token is refused once (parking it briefly), then issued; c0's
        // first call answers 429 (Retry-After 3 s, resting it), then 200.
        let (url, bearers) = scripted_platform(
            |client, n| Some(if client == "c1" && n == 0 { 401 } else { 200 }),
            |token, n| if token == "token-of-c0" && n == 0 { (429, "3") } else { (200, "0") },
        )
        .await;
        let settings = UpstreamSettings { credential_park: Duration::from_millis(300), ..two_credentials() };
        let up = Arc::new(Upstream::new(&url, settings, None, Default::default()).unwrap());
        let parked = up.platform_json(Some("c1"), reqwest::Method::GET, "/api/v2/things", None).await;
        assert!(matches!(parked, Err(Error::Unauthenticated(_))), "{parked:?}");
        assert!(up.credentials()[1].parked);
        // This call gets a 429 on c0 and, with c1 parked, sleeps for c0's quota.
        let sleeper = {
            let up = up.clone();
            tokio::spawn(async move { up.fetch(&Call::get("/api/v2/things"), false, None).await })
        };
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(!sleeper.is_finished());
        assert!(up.credentials()[0].resting && !up.credentials()[1].parked, "{:?}", up.credentials());
        // c1 is back: a call now is served by it at once.
        let started = std::time::Instant::now();
        let things = Call::get("/api/v2/things");
        tokio::time::timeout(Duration::from_secs(1), up.fetch(&things, false, None))
            .await
            .expect("the call waited behind the other credential's quota sleep")
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(bearers.lock().last().unwrap(), "Bearer token-of-c1");
        // The sleeper is served once c0's rest is over (by the credential
        // with most budget left then: c1).
        sleeper.await.unwrap().unwrap();
        assert_eq!(bearers.lock().len(), 3, "{:?}", bearers.lock());
        assert_eq!(up.stats().quota_waits, 1);
    }

    #[test]
    fn a_4xx_body_says_what_was_wrong() {
        let r =
            rejection("/q", 400, br#"{"message":"interval is required","code":"bad.request","status":400}"#);
        assert_eq!(
            (r.status, r.code.as_str(), r.message.as_str()),
            (400, "bad.request", "interval is required")
        );
        let r = rejection("/q", 409, b"not json");
        assert_eq!((r.code.as_str(), r.message.as_str()), ("", "/q: upstream answered 409"));
    }

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

#[cfg(all(test, feature = "emulator"))]
mod learning_tests {
    use super::*;
    use crate::config::{Credential, Secret};

    /// Against the emulator saying 20 calls per 2 s, a client configured
    /// with 300 per 60 s follows the headers from its first answers.
    #[tokio::test]
    async fn the_budget_and_window_are_learned_from_the_emulator() {
        let emu = genesys_emulator::start(
            genesys_emulator::EmulatorConfig {
                rate_limit: 20,
                window: Duration::from_secs(2),
                clients: vec![("c".into(), "s".into())],
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let settings = UpstreamSettings {
            credentials: vec![Credential { client_id: "c".into(), client_secret: Secret::new("s") }],
            ..UpstreamSettings::default()
        };
        let up = Upstream::new(&emu.base_url(), settings, None, Default::default()).unwrap();
        let call = Call::get("/api/v2/routing/queues");
        up.fetch(&call, false, None).await.unwrap();
        assert_eq!(up.tokens.budget(0), Budget { allowed: 20, window: Duration::from_secs(2) });
        let started = Instant::now();
        let mut calls = 0;
        while started.elapsed() < Duration::from_secs(4) {
            up.fetch(&call, false, Some(Instant::now() + Duration::from_secs(3))).await.unwrap();
            calls += 1;
        }
        assert!(calls >= 20, "paced at the learned budget: {calls} calls in two windows");
        emu.set_rate_limit(40, Duration::from_secs(4));
        let started = Instant::now();
        let mut calls = 0;
        while started.elapsed() < Duration::from_secs(5) {
            up.fetch(&call, false, Some(Instant::now() + Duration::from_secs(3))).await.unwrap();
            calls += 1;
        }
        assert_eq!(up.tokens.budget(0), Budget { allowed: 40, window: Duration::from_secs(4) });
        assert_eq!(emu.counters().rate_limited, 0);
        assert!(calls >= 40, "{calls}");
        emu.shutdown().await;
    }

    /// A budget one instance learned is followed by another before that
    /// one has had an answer of its own: through the limiter in Redis.
    #[tokio::test]
    async fn a_budget_learned_by_one_instance_is_followed_by_the_fleet() {
        let Ok(url) = std::env::var("CXCACHE_TEST_REDIS_URL") else { return };
        // A client of its own: its limiter key is fresh in the shared cluster.
        let client_id = format!("c{}", uuid::Uuid::new_v4().simple());
        let emu = genesys_emulator::start(
            genesys_emulator::EmulatorConfig {
                rate_limit: 20,
                window: Duration::from_secs(2),
                clients: vec![(client_id.clone(), "s".into())],
                ..Default::default()
            },
            "127.0.0.1:0".parse().unwrap(),
        )
        .await
        .unwrap();
        let instance = || async {
            let store = crate::store::RedisStore::connect(&url, &Default::default()).await.unwrap();
            let budgets: Arc<dyn crate::store::SharedBudgets> =
                Arc::new(crate::store::RedisBudgets::new(store.pool()));
            let settings = UpstreamSettings {
                credentials: vec![Credential {
                    client_id: client_id.clone(),
                    client_secret: Secret::new("s"),
                }],
                ..UpstreamSettings::default()
            };
            Upstream::new(&emu.base_url(), settings, Some(budgets), Default::default()).unwrap()
        };
        let (a, b) = (instance().await, instance().await);
        let configured = Budget { allowed: 300, window: Duration::from_secs(60) };
        let learned = Budget { allowed: 20, window: Duration::from_secs(2) };
        let call = Call::get("/api/v2/routing/queues");
        a.fetch(&call, false, None).await.unwrap(); // learns from the headers
        assert_eq!(a.tokens.budget(0), learned);
        a.fetch(&call, false, None).await.unwrap(); // tells the fleet with its limiter call
        assert_eq!(b.tokens.budget(0), configured, "b has had no answer yet");
        let until = Instant::now() + Duration::from_secs(5);
        assert!(matches!(b.take_quota(0, until, Priority::Foreground).await, Quota::Allowed));
        assert_eq!(b.tokens.budget(0), learned, "b follows a's budget from its first limiter call");
        emu.shutdown().await;
    }
}
