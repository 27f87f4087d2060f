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
//!
//! Those rules live in [`health`](super::health), a pure function of time;
//! this pool does the fetching, caching, locking, logging and counting.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::headers::RateHeaders;
pub use super::health::Ranking;
use super::health::{self, Health, Outcome, ParkReason};
use super::learn::{Budget, Learned};
use super::stats::UpstreamStats;
use crate::config::Credential;
use crate::error::{Error, Result};

/// Share of a token's lifetime after which it is replaced.
const REFRESH_AT: f64 = 0.8;

#[derive(Clone)]
struct Token {
    value: String,
    refresh_at: Instant,
    /// Past this the token is not used (a little before its real expiry).
    usable_until: Instant,
}

struct Slot {
    credential: Credential,
    limiter_key: String,
    token: Mutex<Option<Token>>,
    /// Serializes token fetches of one credential.
    refreshing: tokio::sync::Mutex<()>,
    background: AtomicBool,
    /// The token fetch under way, shared by every caller waiting for it
    /// (cleared by the fetch when it ends).
    inflight: Mutex<Option<TokenFetch>>,
    /// Callers take this credential's quota one at a time, first come
    /// first served: held only around one limiter decision, never across a
    /// token fetch, an HTTP call or a sleep.
    queue: tokio::sync::Mutex<()>,
}

/// A token fetch of one slot, run as its own task (with its own timeout)
/// so that no caller's lock or deadline holds it, and awaited by any.
pub type TokenFetch = Shared<BoxFuture<'static, Result<Grant>>>;

/// A bearer token handed to a request, with the slot it came from.
#[derive(Clone)]
pub struct Grant {
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

/// Fetches tokens; cheap to clone into background refreshes.
#[derive(Clone)]
struct TokenSource {
    http: reqwest::Client,
    token_url: String,
    /// A token request not answered within this failed (counts towards parking).
    timeout: Duration,
}

#[derive(Deserialize)]
struct TokenReply {
    access_token: String,
    expires_in: u64,
}

pub struct TokenPool {
    slots: Vec<Arc<Slot>>,
    /// The health of every slot, by slot index (one short lock: ranking
    /// reads them all at once).
    health: Arc<Mutex<Vec<Health>>>,
    source: TokenSource,
    stats: Arc<UpstreamStats>,
    turn: AtomicUsize,
}

impl TokenPool {
    pub fn new(
        credentials: Vec<Credential>,
        token_url: String,
        http: reqwest::Client,
        fetch_timeout: Duration,
        start: Learned,
        park_for: Duration,
        stats: Arc<UpstreamStats>,
    ) -> Self {
        let health = Arc::new(Mutex::new(vec![Health::new(start, park_for); credentials.len()]));
        let slots = credentials
            .into_iter()
            .map(|credential| {
                Arc::new(Slot {
                    limiter_key: limiter_key(&token_url, &credential.client_id),
                    credential,
                    token: Mutex::new(None),
                    refreshing: Default::default(),
                    background: AtomicBool::new(false),
                    inflight: Mutex::new(None),
                    queue: Default::default(),
                })
            })
            .collect();
        let source = TokenSource { http, token_url, timeout: fetch_timeout };
        TokenPool { slots, health, source, stats, turn: AtomicUsize::new(0) }
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

    /// The slot of the credential `client_id`.
    pub fn slot_of(&self, client_id: &str) -> Option<usize> {
        self.slots.iter().position(|s| s.credential.client_id == client_id)
    }

    /// The budget of `slot`: configured, then learned from its answers.
    pub fn budget(&self, slot: usize) -> Budget {
        self.health.lock()[slot].budget()
    }

    /// A budget `slot` learned that the fleet has not heard of yet.
    pub fn unshared(&self, slot: usize) -> Option<Budget> {
        self.health.lock()[slot].unshared()
    }

    /// The fleet's budget for `slot`, as the shared limiter answered (after
    /// writing `sent`): followed, so an instance that has not had an answer
    /// of its own yet spends what the platform allows, not what was configured.
    pub fn shared(&self, slot: usize, sent: Option<Budget>, shared: Option<Budget>) {
        let change = self.health.lock()[slot].shared(sent, shared);
        if let Some(c) = change {
            let client_id = &self.slots[slot].credential.client_id;
            crate::metrics::upstream_budget(client_id, c.to.allowed, c.to.window);
            tracing::info!(
                %client_id,
                allowed = c.to.allowed,
                window = ?c.to.window,
                "following the rate-limit budget another instance learned"
            );
        }
    }

    /// The slots that may take a call at `now`, most budget left first
    /// (ties taken in turn, so equal tokens share the load). `pin`: only
    /// that slot is considered (calls tied to one credential).
    pub fn rank(&self, now: Instant, pin: Option<usize>) -> Ranking {
        let start = self.turn.fetch_add(1, Ordering::Relaxed);
        let h = self.health.lock();
        match pin {
            None => health::rank(&h, now, start),
            Some(slot) => {
                let mut r = health::rank(&h[slot..=slot], now, 0);
                r.ready = r.ready.into_iter().map(|_| slot).collect();
                r
            }
        }
    }

    /// Why every credential (or the `pin`ned one) is parked, and when the
    /// first comes back.
    pub fn parked_error(&self, now: Instant, pin: Option<usize>) -> Error {
        let h = self.health.lock();
        let range = pin.map_or(0..self.slots.len(), |s| s..s + 1);
        let reasons: Vec<String> = range
            .clone()
            .filter(|&i| h[i].parked_until().is_some())
            .map(|i| {
                let reason = h[i].park_reason().map(ToString::to_string).unwrap_or_default();
                format!("{}: {reason}", self.slots[i].credential.client_id)
            })
            .collect();
        Error::Unauthenticated(format!(
            "every upstream credential is parked ({}); retried in {:?}",
            reasons.join("; "),
            health::earliest_return(&h[range], now)
        ))
    }

    /// Whether the platform's headers say less than `floor` of `slot`'s
    /// window budget is left.
    pub fn low(&self, slot: usize, floor: f64) -> bool {
        let h = &self.health.lock()[slot];
        (h.budget_left(Instant::now()) as f64) < floor * h.allowed() as f64
    }

    /// The largest share of its window's budget a usable credential has
    /// left by the headers (0: none is usable now).
    pub fn spare(&self, now: Instant) -> f64 {
        self.health
            .lock()
            .iter()
            .filter(|h| h.is_usable(now))
            .map(|h| h.budget_left(now) as f64 / h.allowed().max(1) as f64)
            .fold(0.0, f64::max)
    }

    /// The limiter allowed a call on `slot`.
    pub fn note_allowed(&self, slot: usize) {
        self.health.lock()[slot].limiter_allowed();
    }

    /// Whether `slot` may take a call at `now`: Ok, or blocked until
    /// `Some(at)` (rested, throttled), or parked (`None`).
    pub fn usable(&self, slot: usize, now: Instant) -> Result<(), Option<Instant>> {
        let h = &self.health.lock()[slot];
        if h.is_parked(now) {
            return Err(None);
        }
        h.blocked_until(now).map_or(Ok(()), |at| Err(Some(at)))
    }

    /// The fair queue of `slot` for its limiter decisions.
    pub fn queue(&self, slot: usize) -> &tokio::sync::Mutex<()> {
        &self.slots[slot].queue
    }

    /// The limiter said `slot` has no call before `at`.
    pub fn note_throttled(&self, slot: usize, at: Instant) {
        self.health.lock()[slot].limiter_throttled(at);
    }

    /// A token for `slot`: the current one, or one fetched now.
    #[cfg(test)]
    pub async fn token(&self, slot: usize) -> Result<Grant> {
        match self.cached(slot) {
            Some(grant) => Ok(grant),
            None => self.fetch(slot).await,
        }
    }

    /// The current token of `slot`, without waiting: refreshed in the
    /// background past 80 % of its lifetime; None when there is none (or
    /// it is about to expire), see [`TokenPool::fetch`].
    pub fn cached(&self, slot: usize) -> Option<Grant> {
        let t = self.slots[slot].token.lock().clone()?;
        let now = Instant::now();
        if now >= t.usable_until {
            return None;
        }
        if now >= t.refresh_at {
            self.refresh_in_background(slot);
        }
        Some(Grant { slot, token: t.value })
    }

    /// Whether a token fetch of `slot` is under way.
    pub fn fetching(&self, slot: usize) -> bool {
        self.slots[slot].inflight.lock().is_some()
    }

    /// Starts a token fetch for `slot` unless one is under way.
    pub fn prefetch(&self, slot: usize) {
        let _fetch = self.fetch(slot);
    }

    /// A fresh token for `slot`: the fetch under way, or a new one. It runs
    /// as its own task, bounded by its own timeout, so a caller giving up
    /// leaves it to finish for the next, and no lock of the caller's is
    /// held across it.
    pub fn fetch(&self, slot: usize) -> TokenFetch {
        let s = self.slots[slot].clone();
        let mut inflight = s.inflight.lock();
        if let Some(fetch) = inflight.as_ref() {
            return fetch.clone();
        }
        let (task_slot, health, source, stats) =
            (s.clone(), self.health.clone(), self.source.clone(), self.stats.clone());
        let task = tokio::spawn(async move {
            let s = task_slot;
            let got = async {
                let _guard = s.refreshing.lock().await;
                // A background refresh may have fetched one meanwhile.
                if let Some(t) = s.token.lock().clone().filter(|t| Instant::now() < t.refresh_at) {
                    return Ok(t.value);
                }
                fetch_into(&s, &health, slot, &source, &stats).await
            }
            .await;
            *s.inflight.lock() = None;
            got.map(|token| Grant { slot, token })
        });
        let fetch = async move {
            task.await.unwrap_or_else(|e| Err(Error::Internal(format!("token fetch task: {e}"))))
        }
        .boxed()
        .shared();
        *inflight = Some(fetch.clone());
        fetch
    }

    fn refresh_in_background(&self, slot: usize) {
        let s = self.slots[slot].clone();
        if s.background.swap(true, Ordering::AcqRel) {
            return;
        }
        let source = self.source.clone();
        let stats = self.stats.clone();
        let health = self.health.clone();
        tokio::spawn(async move {
            {
                let _guard = s.refreshing.lock().await;
                let due = s.token.lock().as_ref().is_none_or(|t| Instant::now() >= t.refresh_at);
                if due && fetch_into(&s, &health, slot, &source, &stats).await.is_ok() {
                    UpstreamStats::bump(&stats.token_refreshes);
                }
            }
            s.background.store(false, Ordering::Release);
        });
    }

    /// The API answered 401 to `grant`: drop the token so the next call on
    /// this credential fetches a fresh one. A second 401 in a row (a fresh
    /// token refused too) parks the credential. Returns whether it was parked.
    pub fn unauthorized(&self, grant: &Grant) -> bool {
        let s = &self.slots[grant.slot];
        {
            let mut current = s.token.lock();
            if current.as_ref().is_none_or(|t| t.value != grant.token) {
                // Already dropped (a concurrent call got the 401 first) or
                // replaced: not a new strike against the credential.
                return false;
            }
            *current = None;
        }
        UpstreamStats::bump(&self.stats.tokens_rejected);
        let parked = self.health.lock()[grant.slot].unauthorized(Instant::now());
        parked.map(|reason| parked_now(s, &self.stats, &self.health, grant.slot, reason)).is_some()
    }

    /// The API answered 403: permissions of one resource, usually; several
    /// in a row on one credential mean the credential itself lacks access.
    pub fn forbidden(&self, slot: usize) {
        let parked = self.health.lock()[slot].forbidden(Instant::now());
        if let Some(reason) = parked {
            parked_now(&self.slots[slot], &self.stats, &self.health, slot, reason);
        }
    }

    /// The API accepted a call made with `slot`.
    pub fn succeeded(&self, slot: usize) {
        self.health.lock()[slot].succeeded();
    }

    /// Learns from a response's rate-limit headers: the budget, what is
    /// left, and whether to rest the token (rules in [`health`]). Returns
    /// whether a 429 rested the token; a 429 while the token still has
    /// budget comes from another limit (endpoint, org) and leaves the token
    /// in use.
    pub fn observe(&self, slot: usize, headers: &RateHeaders, status: u16, nearly_spent: u32) -> bool {
        let client_id = &self.slots[slot].credential.client_id;
        let seen = self.health.lock()[slot].observe(Instant::now(), headers, status, nearly_spent);
        if let Some(c) = seen.budget_changed {
            crate::metrics::upstream_budget(client_id, c.to.allowed, c.to.window);
            tracing::info!(
                %client_id,
                from_allowed = c.from.allowed,
                from_window = ?c.from.window,
                allowed = c.to.allowed,
                window = ?c.to.window,
                "upstream reports a different rate-limit budget; following it"
            );
        }
        if status == 429 {
            UpstreamStats::bump(&self.stats.responses_429);
        }
        match seen.outcome {
            Outcome::Rested429(rest) => {
                tracing::warn!(%client_id, ?rest, "upstream answered 429; token rested");
            }
            Outcome::Kept429 => tracing::warn!(
                %client_id,
                retry_after = ?headers.retry_after,
                "upstream answered 429 although the token has budget left (another limit); token kept"
            ),
            Outcome::NearlySpent { left, reset } => {
                UpstreamStats::bump(&self.stats.tokens_rested);
                tracing::debug!(%client_id, left, ?reset, "token nearly spent; rested");
            }
            Outcome::Nothing => {}
        }
        seen.rested_by_429()
    }

    /// Every credential's state.
    pub fn states(&self) -> Vec<CredentialState> {
        let now = Instant::now();
        let h = self.health.lock();
        self.slots
            .iter()
            .zip(h.iter())
            .map(|(s, h)| CredentialState {
                client_id: s.credential.client_id.clone(),
                parked: h.is_parked(now),
                resting: h.is_resting(now),
            })
            .collect()
    }
}

/// Fetches a token for `s` (slot `slot`) and installs it; failures count
/// towards parking.
async fn fetch_into(
    s: &Slot,
    health: &Mutex<Vec<Health>>,
    slot: usize,
    source: &TokenSource,
    stats: &UpstreamStats,
) -> Result<String> {
    match source.fetch(&s.credential).await {
        Ok(token) => {
            UpstreamStats::bump(&stats.token_fetches);
            let value = token.value.clone();
            *s.token.lock() = Some(token);
            health.lock()[slot].token_fetched();
            Ok(value)
        }
        Err(e) => {
            let refused = matches!(e, Error::Unauthenticated(_));
            let parked = health.lock()[slot].token_failed(Instant::now(), refused, &e.to_string());
            if let Some(reason) = parked {
                parked_now(s, stats, health, slot, reason);
            }
            Err(e)
        }
    }
}

/// `s` was just parked: its token goes, with a warning and a count.
fn parked_now(s: &Slot, stats: &UpstreamStats, health: &Mutex<Vec<Health>>, slot: usize, reason: ParkReason) {
    *s.token.lock() = None;
    let park_for = health.lock()[slot]
        .parked_until()
        .map(|t| t.saturating_duration_since(Instant::now()))
        .unwrap_or_default();
    tracing::warn!(
        client_id = %s.credential.client_id,
        %reason,
        ?park_for,
        "upstream credential parked; the other credentials carry on"
    );
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
        let timed_out = || Error::Unavailable {
            message: format!("token endpoint did not answer within {:?}", self.timeout),
            retry_after: None,
        };
        let request = self
            .http
            .post(&self.token_url)
            .basic_auth(&credential.client_id, Some(credential.client_secret.expose()))
            .form(&[("grant_type", "client_credentials")])
            .send();
        let reply =
            tokio::time::timeout(self.timeout, request).await.map_err(|_| timed_out())?.map_err(|e| {
                Error::Unavailable {
                    message: format!("token endpoint unreachable: {}", without_url(&e)),
                    retry_after: None,
                }
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
        let reply = tokio::time::timeout_at(started + self.timeout, reply.json::<TokenReply>())
            .await
            .map_err(|_| timed_out())?
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
            Duration::from_secs(10),
            Learned::new(Budget { allowed: 100, window: Duration::from_secs(60) }, 0),
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
        assert_eq!(p.rank(Instant::now(), None).ready, vec![1, 2, 0]);
        // A 429 while the headers show budget left: another limit, token kept.
        let other = RateHeaders {
            remaining: Some(80),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        assert!(!p.observe(1, &other, 429, 1));
        assert_eq!(p.rank(Instant::now(), None).ready, vec![1, 2, 0]);
        let retry = RateHeaders {
            remaining: Some(0),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        assert!(p.observe(1, &retry, 429, 1));
        let r = p.rank(Instant::now(), None);
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
        assert_eq!(p.rank(Instant::now(), None).ready, vec![0]);
        assert!(!p.rank(Instant::now(), None).all_parked);
    }

    #[tokio::test]
    async fn spare_is_the_best_usable_share_left() {
        let p = pool(2);
        assert_eq!(p.spare(Instant::now()), 1.0, "nothing heard yet: the full budget");
        let h =
            |remaining| RateHeaders { remaining: Some(remaining), allowed: Some(100), ..Default::default() };
        p.observe(0, &h(20), 200, 2);
        p.observe(1, &h(40), 200, 2);
        assert_eq!(p.spare(Instant::now()), 0.4);
        // Rested (nearly spent): no longer counted.
        let spent = RateHeaders { reset: Some(Duration::from_secs(5)), ..h(1) };
        p.observe(1, &spent, 200, 2);
        assert_eq!(p.spare(Instant::now()), 0.2);
        p.observe(0, &spent, 200, 2);
        assert_eq!(p.spare(Instant::now()), 0.0, "none usable");
    }

    #[tokio::test]
    async fn unreachable_token_endpoint_parks_after_repeated_failures() {
        let p = pool(1);
        for _ in 0..health::TOKEN_FAILURES_TO_PARK {
            assert!(matches!(p.token(0).await, Err(Error::Unavailable { .. })));
        }
        let r = p.rank(Instant::now(), None);
        assert!(r.all_parked && r.ready.is_empty());
        let msg = p.parked_error(Instant::now(), None).to_string();
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
