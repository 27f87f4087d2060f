//! OAuth client-credentials tokens, one per configured credential, and the
//! health of each credential.
//!
//! The platform issues no refresh token for this grant, so a token is
//! replaced at about 80 % of its lifetime by a background fetch while the
//! old one keeps serving: no call ever waits for a token that is merely old.
//! A 401 drops the token so the next call fetches a new one (refresh once);
//! a credential whose token endpoint keeps failing, or whose fresh token is
//! refused too, is parked for `upstream.credential_park` with a warning and a
//! counter while the others carry on. A 429 or spent headers rest a token
//! until its window allows it again. Secrets never appear in logs or errors.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::headers::RateHeaders;
use super::stats::UpstreamStats;
use crate::config::Credential;
use crate::error::{Error, Result};

/// Share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;
/// Consecutive token-endpoint failures after which a credential is parked.
const TOKEN_FAILURES_TO_PARK: u32 = 3;
/// Consecutive 403 answers after which a credential is parked.
const FORBIDDEN_TO_PARK: u32 = 3;

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
    /// Past this the token is not used (a little before its real expiry).
    usable_until: Instant,
}

#[derive(Default)]
struct Health {
    /// Parked (credential refused or failing) until then.
    parked_until: Option<Instant>,
    park_reason: String,
    /// Rested (429, spent window) until then.
    rest_until: Option<Instant>,
    /// The shared limiter said no call fits before then.
    ready_at: Option<Instant>,
    /// Calls left in the platform's window, from the last response headers.
    remaining: Option<u32>,
    /// The budget per window (configured, or learned from headers).
    allowed: u32,
    token_failures: u32,
    /// 401s since the last success: the second one means even a fresh token was refused.
    auth_strikes: u32,
    forbidden: u32,
}

struct Slot {
    credential: Credential,
    limiter_key: String,
    token: Mutex<Option<Token>>,
    /// Serializes token fetches of one credential.
    refreshing: tokio::sync::Mutex<()>,
    background: AtomicBool,
    health: Mutex<Health>,
}

/// A bearer token handed to a request, with the slot it came from.
#[derive(Clone)]
pub struct Lease {
    pub slot: usize,
    pub token: String,
}

/// The state of one credential, for logs, tests and health output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialState {
    pub client_id: String,
    pub parked: bool,
    pub resting: bool,
}

/// Which slots may take a call now.
pub struct Ranking {
    /// Usable now, healthiest first.
    pub ready: Vec<usize>,
    /// When the next rested or throttled slot becomes usable.
    pub next_ready: Option<Instant>,
    /// Every credential is parked (refused or failing): quota is not the problem.
    pub all_parked: bool,
}

/// Fetches tokens; cheap to clone into background refreshes.
#[derive(Clone)]
struct TokenSource {
    http: reqwest::Client,
    token_url: String,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

pub struct TokenPool {
    slots: Vec<Arc<Slot>>,
    source: TokenSource,
    park_for: Duration,
    stats: Arc<UpstreamStats>,
    turn: AtomicUsize,
}

impl TokenPool {
    pub fn new(
        credentials: Vec<Credential>,
        token_url: String,
        http: reqwest::Client,
        allowed: u32,
        park_for: Duration,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        let slots = credentials
            .into_iter()
            .map(|credential| {
                Arc::new(Slot {
                    limiter_key: limiter_key(&token_url, &credential.client_id),
                    credential,
                    token: Mutex::new(None),
                    refreshing: Default::default(),
                    background: AtomicBool::new(false),
                    health: Mutex::new(Health { allowed, ..Health::default() }),
                })
            })
            .collect();
        TokenPool {
            slots,
            source: TokenSource { http, token_url },
            park_for,
            stats,
            turn: AtomicUsize::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The client id of a slot (a metrics label; never the secret).
    pub fn client_id(&self, slot: usize) -> &str {
        &self.slots[slot].credential.client_id
    }

    pub fn limiter_key(&self, slot: usize) -> &str {
        &self.slots[slot].limiter_key
    }

    pub fn allowed(&self, slot: usize) -> u32 {
        self.slots[slot].health.lock().allowed
    }

    /// The slots that may take a call at `now`, most budget left first
    /// (ties taken in turn, so equal tokens share the load).
    pub fn rank(&self, now: Instant) -> Ranking {
        let n = self.slots.len();
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let mut ready = Vec::new();
        let mut next_ready: Option<Instant> = None;
        let mut parked = 0;
        for i in 0..n {
            let slot = (start + i) % n;
            let h = self.slots[slot].health.lock();
            if h.parked_until.is_some_and(|t| now < t) {
                parked += 1;
                continue;
            }
            let blocked_until = [h.rest_until, h.ready_at].into_iter().flatten().filter(|t| now < *t).max();
            match blocked_until {
                Some(t) => next_ready = Some(next_ready.map_or(t, |n| n.min(t))),
                None => ready.push((slot, h.remaining.unwrap_or(h.allowed))),
            }
        }
        // Stable sort keeps the rotation among equals.
        ready.sort_by_key(|(_, remaining)| std::cmp::Reverse(*remaining));
        Ranking {
            ready: ready.into_iter().map(|(s, _)| s).collect(),
            next_ready,
            all_parked: n > 0 && parked == n,
        }
    }

    /// Why every credential is parked, and when the first comes back.
    pub fn parked_error(&self, now: Instant) -> Error {
        let mut reasons = Vec::new();
        let mut back = None;
        for s in &self.slots {
            let h = s.health.lock();
            if let Some(until) = h.parked_until {
                let left = until.saturating_duration_since(now);
                back = Some(back.map_or(left, |b: Duration| b.min(left)));
                reasons.push(format!("{}: {}", s.credential.client_id, h.park_reason));
            }
        }
        Error::Unauthenticated(format!(
            "every upstream credential is parked ({}); retried in {:?}",
            reasons.join("; "),
            back.unwrap_or_default()
        ))
    }

    /// The limiter allowed a call on `slot`.
    pub fn note_allowed(&self, slot: usize) {
        self.slots[slot].health.lock().ready_at = None;
    }

    /// The limiter said `slot` has no call before `at`.
    pub fn note_throttled(&self, slot: usize, at: Instant) {
        self.slots[slot].health.lock().ready_at = Some(at);
    }

    /// A token for `slot`: the current one, refreshed in the background past
    /// 80 % of its lifetime, or a fresh one when there is none (or it is
    /// about to expire).
    pub async fn token(&self, slot: usize) -> Result<Lease> {
        let s = &self.slots[slot];
        let now = Instant::now();
        if let Some(t) = s.token.lock().clone() {
            if now < t.refresh_at {
                return Ok(Lease { slot, token: t.value });
            }
            if now < t.usable_until {
                self.refresh_in_background(slot);
                return Ok(Lease { slot, token: t.value });
            }
        }
        let _guard = s.refreshing.lock().await;
        // Another request may have fetched one while we waited.
        if let Some(t) = s.token.lock().clone().filter(|t| Instant::now() < t.refresh_at) {
            return Ok(Lease { slot, token: t.value });
        }
        let token = fetch_into(s, &self.source, &self.stats, self.park_for).await?;
        Ok(Lease { slot, token })
    }

    fn refresh_in_background(&self, slot: usize) {
        let s = self.slots[slot].clone();
        if s.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let source = self.source.clone();
        let stats = self.stats.clone();
        let park_for = self.park_for;
        tokio::spawn(async move {
            {
                let _guard = s.refreshing.lock().await;
                let due = s.token.lock().as_ref().is_none_or(|t| Instant::now() >= t.refresh_at);
                if due && fetch_into(&s, &source, &stats, park_for).await.is_ok() {
                    UpstreamStats::bump(&stats.token_refreshes);
                }
            }
            s.background.store(false, Ordering::Release);
        });
    }

    /// The API answered 401 to `lease`: drop the token so the next call on
    /// this credential fetches a fresh one. A second 401 in a row (a fresh
    /// token refused too) parks the credential. Returns whether it was parked.
    pub fn unauthorized(&self, lease: &Lease) -> bool {
        let s = &self.slots[lease.slot];
        {
            let mut current = s.token.lock();
            if current.as_ref().is_none_or(|t| t.value != lease.token) {
                // Already dropped (a concurrent call got the 401 first) or
                // replaced: not a new strike against the credential.
                return false;
            }
            *current = None;
        }
        UpstreamStats::bump(&self.stats.tokens_rejected);
        let strikes = {
            let mut h = s.health.lock();
            h.auth_strikes += 1;
            h.auth_strikes
        };
        if strikes >= 2 {
            park(s, &self.stats, self.park_for, "the API refused a freshly fetched token (401)".into());
            return true;
        }
        false
    }

    /// The API answered 403: permissions of one resource, usually; several
    /// in a row on one credential mean the credential itself lacks access.
    pub fn forbidden(&self, slot: usize) {
        let s = &self.slots[slot];
        let n = {
            let mut h = s.health.lock();
            h.forbidden += 1;
            h.forbidden
        };
        if n >= FORBIDDEN_TO_PARK {
            park(s, &self.stats, self.park_for, format!("{n} API answers 403 in a row"));
        }
    }

    /// The API accepted a call made with `slot`.
    pub fn succeeded(&self, slot: usize) {
        let mut h = self.slots[slot].health.lock();
        h.auth_strikes = 0;
        h.forbidden = 0;
    }

    /// Learns from a response's rate-limit headers: the budget, what is
    /// left, and whether to rest the token. A 429 that spent the token's own
    /// budget (headers say nothing is left, or say nothing at all) rests it
    /// for exactly `Retry-After`; a nearly spent window rests it until it
    /// resets. Returns whether a 429 rested the token; a 429 while the token
    /// still has budget comes from another limit (endpoint, org) and leaves
    /// the token in use.
    pub fn observe(&self, slot: usize, headers: &RateHeaders, status: u16, nearly_spent: u32) -> bool {
        let s = &self.slots[slot];
        let now = Instant::now();
        let mut h = s.health.lock();
        if let Some(allowed) = headers.allowed.filter(|a| *a > 0 && *a != h.allowed) {
            tracing::info!(
                client_id = %s.credential.client_id,
                from = h.allowed,
                to = allowed,
                "upstream reports a different rate-limit budget; following it"
            );
            h.allowed = allowed;
        }
        if headers.remaining.is_some() {
            h.remaining = headers.remaining;
        }
        if status == 429 {
            UpstreamStats::bump(&self.stats.responses_429);
            if headers.remaining.is_none_or(|left| left == 0 || left < nearly_spent) {
                let rest = headers.retry_after.or(headers.reset).unwrap_or(Duration::from_secs(1));
                h.rest_until = Some(now + rest);
                h.remaining = Some(0);
                tracing::warn!(client_id = %s.credential.client_id, ?rest, "upstream answered 429; token rested");
                return true;
            }
            tracing::warn!(
                client_id = %s.credential.client_id,
                retry_after = ?headers.retry_after,
                "upstream answered 429 although the token has budget left (another limit); token kept"
            );
        } else if let (Some(left), Some(reset)) = (headers.remaining, headers.reset) {
            if left < nearly_spent && h.rest_until.is_none_or(|t| t <= now) {
                h.rest_until = Some(now + reset);
                UpstreamStats::bump(&self.stats.tokens_rested);
                tracing::debug!(client_id = %s.credential.client_id, left, ?reset, "token nearly spent; rested");
            }
        }
        false
    }

    /// Every credential's state.
    pub fn states(&self) -> Vec<CredentialState> {
        let now = Instant::now();
        self.slots
            .iter()
            .map(|s| {
                let h = s.health.lock();
                CredentialState {
                    client_id: s.credential.client_id.clone(),
                    parked: h.parked_until.is_some_and(|t| now < t),
                    resting: h.rest_until.is_some_and(|t| now < t),
                }
            })
            .collect()
    }
}

/// Fetches a token for `s` and installs it; failures count towards parking.
async fn fetch_into(
    s: &Slot,
    source: &TokenSource,
    stats: &UpstreamStats,
    park_for: Duration,
) -> Result<String> {
    match source.fetch(&s.credential).await {
        Ok(token) => {
            UpstreamStats::bump(&stats.token_fetches);
            let value = token.value.clone();
            *s.token.lock() = Some(token);
            let mut h = s.health.lock();
            h.token_failures = 0;
            h.parked_until = None;
            Ok(value)
        }
        Err(e) => {
            let failures = {
                let mut h = s.health.lock();
                h.token_failures += 1;
                h.token_failures
            };
            if matches!(e, Error::Unauthenticated(_)) {
                park(s, stats, park_for, "the token endpoint refused the credential".into());
            } else if failures >= TOKEN_FAILURES_TO_PARK {
                park(s, stats, park_for, format!("{failures} token requests in a row failed: {e}"));
            }
            Err(e)
        }
    }
}

fn park(s: &Slot, stats: &UpstreamStats, park_for: Duration, reason: String) {
    *s.token.lock() = None;
    let mut h = s.health.lock();
    h.parked_until = Some(Instant::now() + park_for);
    h.auth_strikes = 0;
    h.forbidden = 0;
    h.token_failures = 0;
    tracing::warn!(
        client_id = %s.credential.client_id,
        %reason,
        ?park_for,
        "upstream credential parked; the other credentials carry on"
    );
    h.park_reason = reason;
    UpstreamStats::bump(&stats.credentials_parked);
    crate::metrics::credential_parked(&s.credential.client_id);
}

/// The limiter key of a credential: one Redis key, shared by every instance
/// using that credential (hash-tagged so it is one slot of the cluster). A
/// credential is its token endpoint and client id: the same id at another
/// region or org is another budget.
fn limiter_key(token_url: &str, client_id: &str) -> String {
    let digest = Sha256::new()
        .chain_update(token_url.as_bytes())
        .chain_update([0u8])
        .chain_update(client_id.as_bytes())
        .finalize();
    crate::keys::ratelimit_key(&digest[..12])
}

impl TokenSource {
    async fn fetch(&self, credential: &Credential) -> Result<Token> {
        let started = Instant::now();
        let reply = self
            .http
            .post(&self.token_url)
            .basic_auth(&credential.client_id, Some(credential.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .map_err(|e| Error::Unavailable {
                message: format!("token endpoint unreachable: {}", without_url(&e)),
                retry_after: None,
            })?;
        let status = reply.status().as_u16();
        match status {
            200..=299 => {}
            400 | 401 | 403 => {
                return Err(Error::Unauthenticated(format!(
                    "token endpoint rejected client {} (HTTP {status})",
                    credential.client_id
                )));
            }
            _ => {
                return Err(Error::Unavailable {
                    message: format!("token endpoint answered HTTP {status}"),
                    retry_after: None,
                })
            }
        }
        let reply: TokenReply = reply
            .json()
            .await
            .map_err(|e| Error::BadUpstream(format!("token reply: {}", without_url(&e))))?;
        let lifetime = Duration::from_secs(reply.expires_in);
        // Stop using a token a little before it expires (5 %, at most 30 s),
        // so it cannot expire on its way to the platform.
        let margin = lifetime.mul_f64(0.05).min(Duration::from_secs(30));
        tracing::debug!(client_id = %credential.client_id, ?lifetime, "fetched upstream token");
        Ok(Token {
            value: reply.access_token,
            refresh_at: started + lifetime.mul_f64(REFRESH_AT),
            usable_until: started + lifetime - margin,
        })
    }
}

/// reqwest errors print the URL; ours carry no secrets, but keep messages short.
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut msg = e.to_string();
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), url.path());
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn pool(n: usize) -> TokenPool {
        let creds = (0..n)
            .map(|i| Credential { client_id: format!("c{i}"), client_secret: Secret::new("s") })
            .collect();
        TokenPool::new(
            creds,
            "http://127.0.0.1:1/oauth/token".into(),
            reqwest::Client::new(),
            100,
            Duration::from_secs(60),
            Arc::default(),
        )
    }

    #[tokio::test]
    async fn ranking_prefers_budget_and_skips_rested() {
        let p = pool(3);
        let h = |remaining, allowed| RateHeaders {
            remaining: Some(remaining),
            allowed: Some(allowed),
            ..Default::default()
        };
        p.observe(0, &h(10, 100), 200, 1);
        p.observe(1, &h(90, 100), 200, 1);
        p.observe(2, &h(50, 100), 200, 1);
        assert_eq!(p.rank(Instant::now()).ready, vec![1, 2, 0]);
        // A 429 while the headers show budget left: another limit, token kept.
        let other = RateHeaders {
            remaining: Some(80),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        assert!(!p.observe(1, &other, 429, 1));
        assert_eq!(p.rank(Instant::now()).ready, vec![1, 2, 0]);
        let retry = RateHeaders {
            remaining: Some(0),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        assert!(p.observe(1, &retry, 429, 1));
        let r = p.rank(Instant::now());
        assert_eq!(r.ready, vec![2, 0]);
        let back = r.next_ready.unwrap() - Instant::now();
        assert!(back > Duration::from_millis(1900) && back <= Duration::from_secs(2), "{back:?}");
        // Nearly spent: rested until the window resets.
        let spent = RateHeaders {
            remaining: Some(1),
            allowed: Some(100),
            reset: Some(Duration::from_secs(5)),
            ..Default::default()
        };
        p.observe(2, &spent, 200, 2);
        assert_eq!(p.rank(Instant::now()).ready, vec![0]);
        assert!(!p.rank(Instant::now()).all_parked);
    }

    #[tokio::test]
    async fn unreachable_token_endpoint_parks_after_repeated_failures() {
        let p = pool(1);
        for _ in 0..TOKEN_FAILURES_TO_PARK {
            assert!(matches!(p.token(0).await, Err(Error::Unavailable { .. })));
        }
        let r = p.rank(Instant::now());
        assert!(r.all_parked && r.ready.is_empty());
        let msg = p.parked_error(Instant::now()).to_string();
        assert!(msg.contains("c0") && !msg.contains("\"s\""), "{msg}");
        assert_eq!(p.stats.snapshot().credentials_parked, 1);
    }

    #[test]
    fn limiter_keys_are_hash_tagged_per_credential() {
        let a = limiter_key("https://login.mypurecloud.com/oauth/token", "a");
        assert!(a.starts_with("cx:ratelimit:{") && a.ends_with('}'));
        assert_ne!(a, limiter_key("https://login.mypurecloud.com/oauth/token", "b"));
        assert_ne!(a, limiter_key("https://login.mypurecloud.de/oauth/token", "a"));
    }
}
