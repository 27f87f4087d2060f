//! The upstream side: OAuth credentials, request limits, the shared rate
//! limiter, retries and async analytics jobs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    pub client_id: String,
    pub client_secret: Secret,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamSettings {
    /// API base URL. Unset: the bundled emulator.
    pub base_url: Option<String>,
    /// OAuth token URL; default `{base_url}/oauth/token` (for the real
    /// platform: https://login.mypurecloud.com/oauth/token).
    pub token_url: Option<String>,
    /// OAuth client credentials (a pool: each has its own rate-limit budget).
    pub credentials: Vec<Credential>,
    /// Timeout of one upstream HTTP request.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Largest upstream response body accepted.
    pub max_response_bytes: usize,
    /// Largest number of entities assembled for a paged list.
    pub max_list_entries: usize,
    /// Page size asked for when assembling paged lists.
    pub page_size: u32,
    /// Per-credential rate limiting shared by every instance.
    pub rate_limit: RateLimitSettings,
    /// Retries of 429, 5xx and timeouts.
    pub retry: RetrySettings,
    /// Async analytics jobs (submit, poll, validate).
    pub jobs: JobSettings,
    /// How long a credential whose token endpoint or tokens keep failing
    /// is left out before it is tried again.
    #[serde(with = "humantime_serde")]
    pub credential_park: Duration,
    /// Without a caller deadline: the longest single wait for quota or
    /// before a retry; a longer one fails the call at once, saying when to retry.
    #[serde(with = "humantime_serde")]
    pub max_wait: Duration,
}

/// The budget of each credential's token, enforced fleet-wide in Redis.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitSettings {
    /// Calls one token may make per window at start (the platform's default
    /// is 300 per minute); then followed, up or down, as the rate-limit
    /// headers state it.
    pub allowed: u32,
    /// The window at start; then learned from the headers' reset.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Largest budget learned from headers (0: no cap).
    pub ceiling: u32,
    /// Share of a credential's burst a background call (refresh,
    /// verification) must leave banked for foreground calls.
    pub background_reserve: f64,
    /// No background call while the headers say less than this share of
    /// the window's budget is left.
    pub background_floor: f64,
    /// Share of the budget spent at steady state; the rest is headroom.
    pub utilization: f64,
    /// Calls a token may make back to back; 0 = about 3 % of the budget.
    pub burst: u32,
    /// Share of the budget an instance allows itself when Redis is
    /// unreachable (the other instances do the same).
    pub fallback_share: f64,
    /// A token whose headers say fewer calls than this remain is rested
    /// until its window resets (0: never).
    pub nearly_spent: u32,
    /// Timeout of one limiter call to Redis before falling back.
    #[serde(with = "humantime_serde")]
    pub redis_timeout: Duration,
}

/// Truncated exponential backoff with jitter; `Retry-After` is honoured exactly.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetrySettings {
    #[serde(with = "humantime_serde")]
    pub base: Duration,
    #[serde(with = "humantime_serde")]
    pub cap: Duration,
    #[serde(with = "humantime_serde")]
    pub jitter: Duration,
    /// Attempts per call (the first included), all inside the caller's deadline.
    pub max_attempts: u32,
}

/// Async analytics detail jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSettings {
    /// First poll delay; doubles up to `poll_max` (1, 2, 4, 8, 15, 15 s).
    #[serde(with = "humantime_serde")]
    pub poll_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_max: Duration,
    /// A job not finished after this long is abandoned.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// A result with fewer rows than this share of what its interval and
    /// grouping imply is discarded and the interval split.
    pub min_rows_fraction: f64,
    /// How many times an interval may be halved.
    pub max_splits: u32,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings {
            base_url: None,
            token_url: None,
            credentials: Vec::new(),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 16 << 20,
            max_list_entries: 500,
            page_size: 100,
            rate_limit: RateLimitSettings::default(),
            retry: RetrySettings::default(),
            jobs: JobSettings::default(),
            credential_park: Duration::from_secs(60),
            max_wait: Duration::from_secs(5),
        }
    }
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        RateLimitSettings {
            allowed: 300,
            window: Duration::from_secs(60),
            ceiling: 0,
            background_reserve: 0.5,
            background_floor: 0.1,
            utilization: 0.95,
            burst: 0,
            fallback_share: 0.25,
            nearly_spent: 2,
            redis_timeout: Duration::from_millis(250),
        }
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            jitter: Duration::from_millis(500),
            max_attempts: 4,
        }
    }
}

impl Default for JobSettings {
    fn default() -> Self {
        JobSettings {
            poll_initial: Duration::from_secs(1),
            poll_max: Duration::from_secs(15),
            timeout: Duration::from_secs(600),
            min_rows_fraction: 0.8,
            max_splits: 4,
        }
    }
}
