//! The health of one credential, and the ranking of credentials: a pure
//! function of what happened and when. No I/O, no locks, no clock: every
//! method takes `now`, so the rules are unit-tested on plain instants.
//!
//! The rules:
//! - the token endpoint refusing the credential parks it at once; it
//!   failing [`TOKEN_FAILURES_TO_PARK`] times in a row parks it too;
//! - a 401 drops the token (the pool fetches a fresh one); a second 401
//!   before any success means even a fresh token was refused: parked;
//! - [`FORBIDDEN_TO_PARK`] answers 403 in a row park it (one 403 is about
//!   one resource; several in a row are about the credential);
//! - a parked credential is out for `park_for`, then usable again; a fresh
//!   token unparks it at once;
//! - a 429 that spent the token's own budget (headers say nothing or little
//!   is left, or say nothing) rests it for exactly `Retry-After` (else the
//!   window reset, else 1 s); a 429 while headers show budget left comes
//!   from another limit and keeps the token; a nearly spent window rests
//!   it until the window resets;
//! - ranking: usable slots, most budget left first, ties in turn.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use super::headers::RateHeaders;
use super::learn::{Budget, Change, Learned};

/// Consecutive token-endpoint failures after which a credential is parked.
pub const TOKEN_FAILURES_TO_PARK: u32 = 3;
/// Consecutive 403 answers after which a credential is parked.
pub const FORBIDDEN_TO_PARK: u32 = 3;

/// Why a credential was parked (no secret in it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParkReason {
    /// The token endpoint refused the credential (400/401/403).
    TokenRefused,
    /// The token endpoint failed this many times in a row.
    TokenFailures { failures: u32, error: String },
    /// The API refused a freshly fetched token (a second 401).
    FreshTokenRefused,
    /// The API answered 403 this many times in a row.
    Forbidden(u32),
}

impl fmt::Display for ParkReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParkReason::TokenRefused => f.write_str("the token endpoint refused the credential"),
            ParkReason::TokenFailures { failures, error } => {
                write!(f, "{failures} token requests in a row failed: {error}")
            }
            ParkReason::FreshTokenRefused => f.write_str("the API refused a freshly fetched token (401)"),
            ParkReason::Forbidden(n) => write!(f, "{n} API answers 403 in a row"),
        }
    }
}

/// What one response taught about a token's quota.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    /// The headers report another budget or window; followed.
    pub budget_changed: Option<Change>,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing to act on.
    Nothing,
    /// A 429 that spent the token: rested for exactly this long.
    Rested429(Duration),
    /// A 429 while the token has budget left (another limit): token kept.
    Kept429,
    /// The window is nearly spent: rested until it resets.
    NearlySpent { left: u32, reset: Duration },
}

impl Observation {
    /// Whether a 429 rested the token (the caller may retry at once on another).
    pub fn rested_by_429(&self) -> bool {
        matches!(self.outcome, Outcome::Rested429(_))
    }
}

/// The health of one credential.
#[derive(Debug, Clone)]
pub struct Health {
    park_for: Duration,
    /// Parked (credential refused or failing) until then.
    parked_until: Option<Instant>,
    park_reason: Option<ParkReason>,
    /// Rested (429, spent window) until then.
    rest_until: Option<Instant>,
    /// The shared limiter said no call fits before then.
    ready_at: Option<Instant>,
    /// Calls left in the platform's window, from the last response headers.
    remaining: Option<u32>,
    /// When that window resets (then the full budget is back).
    remaining_until: Option<Instant>,
    /// The budget per window (configured, then learned from headers).
    learned: Learned,
    /// A budget learned from this instance's own answers that the fleet
    /// has not been told yet (written with the next limiter call).
    unshared: Option<Budget>,
    token_failures: u32,
    /// 401s since the last success: the second one means even a fresh token was refused.
    auth_strikes: u32,
    forbidden: u32,
}

impl Health {
    /// A healthy credential starting with budget `learned`, parked for
    /// `park_for` when it is refused or failing.
    pub fn new(learned: Learned, park_for: Duration) -> Health {
        Health {
            park_for,
            parked_until: None,
            park_reason: None,
            rest_until: None,
            ready_at: None,
            remaining: None,
            remaining_until: None,
            learned,
            unshared: None,
            token_failures: 0,
            auth_strikes: 0,
            forbidden: 0,
        }
    }

    /// The budget per window.
    pub fn allowed(&self) -> u32 {
        self.learned.budget().allowed
    }

    /// The budget and its window.
    pub fn budget(&self) -> Budget {
        self.learned.budget()
    }

    /// A budget this instance learned that the fleet has not heard of yet.
    pub fn unshared(&self) -> Option<Budget> {
        self.unshared
    }

    /// The limiter answered with the fleet's budget (`shared`, after
    /// writing `sent` if it was given): this one follows it.
    pub fn shared(&mut self, sent: Option<Budget>, shared: Option<Budget>) -> Option<Change> {
        if sent.is_some() && self.unshared == sent {
            self.unshared = None;
        }
        // What this instance learned since it sent goes out next time.
        match shared {
            Some(b) if self.unshared.is_none() => self.learned.adopt(b),
            _ => None,
        }
    }

    pub fn is_parked(&self, now: Instant) -> bool {
        self.parked_until.is_some_and(|t| now < t)
    }

    pub fn is_resting(&self, now: Instant) -> bool {
        self.rest_until.is_some_and(|t| now < t)
    }

    /// Until when a call must wait (rested or throttled), if it must.
    pub fn blocked_until(&self, now: Instant) -> Option<Instant> {
        [self.rest_until, self.ready_at].into_iter().flatten().filter(|t| now < *t).max()
    }

    /// May take a call at `now`: neither parked, rested nor throttled.
    pub fn is_usable(&self, now: Instant) -> bool {
        !self.is_parked(now) && self.blocked_until(now).is_none()
    }

    /// Calls believed left in the window (the full budget when unknown).
    pub fn budget_left(&self, now: Instant) -> u32 {
        match self.remaining_until {
            Some(reset) if now >= reset => self.allowed(),
            _ => self.remaining.unwrap_or(self.allowed()),
        }
    }

    /// When it was (or is) parked until, if it ever was.
    pub fn parked_until(&self) -> Option<Instant> {
        self.parked_until
    }

    pub fn park_reason(&self) -> Option<&ParkReason> {
        self.park_reason.as_ref()
    }

    /// Parks the credential for `park_for` from `now`; its strike counts
    /// start over.
    pub fn park(&mut self, now: Instant, reason: ParkReason) {
        self.parked_until = Some(now + self.park_for);
        self.park_reason = Some(reason);
        self.auth_strikes = 0;
        self.forbidden = 0;
        self.token_failures = 0;
    }

    /// The limiter allowed a call.
    pub fn limiter_allowed(&mut self) {
        self.ready_at = None;
    }

    /// The limiter said no call fits before `at`.
    pub fn limiter_throttled(&mut self, at: Instant) {
        self.ready_at = Some(at);
    }

    /// The token endpoint issued a token: the credential works (unparked).
    pub fn token_fetched(&mut self) {
        self.token_failures = 0;
        self.parked_until = None;
    }

    /// The token endpoint refused the credential (`refused`) or failed
    /// with `error`. Returns the reason when that parked it.
    pub fn token_failed(&mut self, now: Instant, refused: bool, error: &str) -> Option<ParkReason> {
        self.token_failures += 1;
        let reason = if refused {
            ParkReason::TokenRefused
        } else if self.token_failures >= TOKEN_FAILURES_TO_PARK {
            ParkReason::TokenFailures { failures: self.token_failures, error: error.to_string() }
        } else {
            return None;
        };
        self.park(now, reason.clone());
        Some(reason)
    }

    /// The API answered 401 to a current token (the caller drops it). The
    /// second in a row parks. Returns the reason when that parked it.
    pub fn unauthorized(&mut self, now: Instant) -> Option<ParkReason> {
        self.auth_strikes += 1;
        if self.auth_strikes < 2 {
            return None;
        }
        self.park(now, ParkReason::FreshTokenRefused);
        Some(ParkReason::FreshTokenRefused)
    }

    /// The API answered 403. Returns the reason when that parked it.
    pub fn forbidden(&mut self, now: Instant) -> Option<ParkReason> {
        self.forbidden += 1;
        if self.forbidden < FORBIDDEN_TO_PARK {
            return None;
        }
        let reason = ParkReason::Forbidden(self.forbidden);
        self.park(now, reason.clone());
        Some(reason)
    }

    /// The API accepted a call: 401 and 403 strikes start over.
    pub fn succeeded(&mut self) {
        self.auth_strikes = 0;
        self.forbidden = 0;
    }

    /// Learns from a response's rate-limit headers and status: the budget,
    /// what is left, and whether to rest the token (see the module rules).
    /// `nearly_spent`: fewer calls left than this rests the token.
    pub fn observe(
        &mut self,
        now: Instant,
        headers: &RateHeaders,
        status: u16,
        nearly_spent: u32,
    ) -> Observation {
        let budget_changed = self.learned.observe(headers);
        if let Some(c) = budget_changed {
            self.unshared = Some(c.to);
        }
        if headers.remaining.is_some() {
            self.remaining = headers.remaining;
            self.remaining_until = headers.reset.map(|r| now + r);
        }
        let outcome = if status == 429 {
            if headers.remaining.is_none_or(|left| left == 0 || left < nearly_spent) {
                let rest = headers.retry_after.or(headers.reset).unwrap_or(Duration::from_secs(1));
                self.rest_until = Some(now + rest);
                self.remaining = Some(0);
                self.remaining_until = headers.reset.map(|r| now + r);
                Outcome::Rested429(rest)
            } else {
                Outcome::Kept429
            }
        } else {
            match (headers.remaining, headers.reset) {
                (Some(left), Some(reset))
                    if left < nearly_spent && self.rest_until.is_none_or(|t| t <= now) =>
                {
                    self.rest_until = Some(now + reset);
                    Outcome::NearlySpent { left, reset }
                }
                _ => Outcome::Nothing,
            }
        };
        Observation { budget_changed, outcome }
    }
}

/// Which slots may take a call now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ranking {
    /// Usable now, healthiest first.
    pub ready: Vec<usize>,
    /// When the next rested or throttled slot becomes usable.
    pub next_ready: Option<Instant>,
    /// Every credential is parked (refused or failing): quota is not the problem.
    pub all_parked: bool,
}

/// The slots that may take a call at `now`, most budget left first; ties
/// keep the rotation that starts at slot `start % n`, so equal tokens
/// share the load.
pub fn rank(slots: &[Health], now: Instant, start: usize) -> Ranking {
    let n = slots.len();
    let mut ready = Vec::new();
    let mut next_ready: Option<Instant> = None;
    let mut parked = 0;
    for i in 0..n {
        let slot = (start + i) % n;
        let h = &slots[slot];
        if h.is_parked(now) {
            parked += 1;
            continue;
        }
        if h.is_usable(now) {
            ready.push((slot, h.budget_left(now)));
        } else if let Some(t) = h.blocked_until(now) {
            next_ready = Some(next_ready.map_or(t, |n| n.min(t)));
        }
    }
    // Stable sort keeps the rotation among equals.
    ready.sort_by_key(|(_, left)| std::cmp::Reverse(*left));
    Ranking {
        ready: ready.into_iter().map(|(s, _)| s).collect(),
        next_ready,
        all_parked: n > 0 && parked == n,
    }
}

/// How long until the first parked slot comes back (zero if one already
/// has, or none ever was parked).
pub fn earliest_return(slots: &[Health], now: Instant) -> Duration {
    slots
        .iter()
        .filter_map(Health::parked_until)
        .map(|until| until.saturating_duration_since(now))
        .min()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARK: Duration = Duration::from_secs(60);

    fn health() -> Health {
        Health::new(Learned::new(Budget { allowed: 100, window: Duration::from_secs(60) }, 0), PARK)
    }

    fn at(now: Instant, secs: u64) -> Instant {
        now + Duration::from_secs(secs)
    }

    fn left(remaining: u32) -> RateHeaders {
        RateHeaders { remaining: Some(remaining), ..Default::default() }
    }

    #[test]
    fn a_refused_token_parks_the_credential_for_credential_park() {
        let now = Instant::now();
        let mut h = health();
        assert_eq!(h.token_failed(now, true, "HTTP 401"), Some(ParkReason::TokenRefused));
        assert!(h.is_parked(now) && !h.is_usable(now));
        assert!(h.is_parked(now + PARK - Duration::from_millis(1)));
        assert_eq!(h.parked_until(), Some(now + PARK));
    }

    #[test]
    fn a_parked_credential_is_usable_again_after_its_park() {
        let now = Instant::now();
        let mut h = health();
        h.token_failed(now, true, "HTTP 401");
        assert!(!h.is_parked(now + PARK) && h.is_usable(now + PARK));
    }

    #[test]
    fn a_fresh_token_unparks_the_credential_at_once() {
        let now = Instant::now();
        let mut h = health();
        h.token_failed(now, true, "HTTP 401");
        h.token_fetched();
        assert!(h.is_usable(now));
    }

    #[test]
    fn an_unreachable_token_endpoint_parks_only_after_three_failures_in_a_row() {
        let now = Instant::now();
        let mut h = health();
        assert_eq!(h.token_failed(now, false, "down"), None);
        assert_eq!(h.token_failed(now, false, "down"), None);
        assert!(h.is_usable(now));
        let reason = h.token_failed(now, false, "down").unwrap();
        assert_eq!(reason.to_string(), "3 token requests in a row failed: down");
        assert!(h.is_parked(now));
    }

    #[test]
    fn a_fetched_token_resets_the_count_of_token_failures() {
        let now = Instant::now();
        let mut h = health();
        h.token_failed(now, false, "down");
        h.token_failed(now, false, "down");
        h.token_fetched();
        assert_eq!(h.token_failed(now, false, "down"), None);
        assert_eq!(h.token_failed(now, false, "down"), None);
        assert!(h.is_usable(now));
    }

    #[test]
    fn one_401_only_drops_the_token_but_a_second_in_a_row_parks() {
        let now = Instant::now();
        let mut h = health();
        assert_eq!(h.unauthorized(now), None);
        assert!(h.is_usable(now));
        assert_eq!(h.unauthorized(now), Some(ParkReason::FreshTokenRefused));
        assert!(h.is_parked(now));
    }

    #[test]
    fn a_success_between_two_401s_keeps_the_credential() {
        let now = Instant::now();
        let mut h = health();
        h.unauthorized(now);
        h.succeeded();
        assert_eq!(h.unauthorized(now), None);
        assert!(h.is_usable(now));
    }

    #[test]
    fn three_403s_in_a_row_park_but_a_success_starts_over() {
        let now = Instant::now();
        let mut h = health();
        h.forbidden(now);
        h.forbidden(now);
        h.succeeded();
        assert_eq!(h.forbidden(now), None);
        assert_eq!(h.forbidden(now), None);
        assert_eq!(h.forbidden(now), Some(ParkReason::Forbidden(3)));
        assert!(h.is_parked(now));
    }

    #[test]
    fn parking_starts_the_strike_counts_over() {
        let now = Instant::now();
        let mut h = health();
        h.unauthorized(now);
        h.forbidden(now);
        h.forbidden(now);
        h.token_failed(now, true, "HTTP 401");
        let back = now + PARK;
        assert_eq!(h.unauthorized(back), None);
        assert_eq!(h.forbidden(back), None);
        assert_eq!(h.token_failed(back, false, "down"), None);
    }

    #[test]
    fn a_429_with_retry_after_rests_the_token_exactly_that_long() {
        let now = Instant::now();
        let mut h = health();
        let headers = RateHeaders {
            remaining: Some(0),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let seen = h.observe(now, &headers, 429, 1);
        assert_eq!(seen.outcome, Outcome::Rested429(Duration::from_secs(2)));
        assert!(seen.rested_by_429());
        assert!(
            h.is_resting(now + Duration::from_millis(1999))
                && !h.is_usable(now + Duration::from_millis(1999))
        );
        assert!(h.is_usable(at(now, 2)));
        assert_eq!(h.blocked_until(now), Some(at(now, 2)));
    }

    #[test]
    fn a_429_without_headers_rests_the_token_for_the_reset_or_one_second() {
        let now = Instant::now();
        let mut h = health();
        assert_eq!(
            h.observe(now, &RateHeaders::default(), 429, 1).outcome,
            Outcome::Rested429(Duration::from_secs(1))
        );
        let reset = RateHeaders { reset: Some(Duration::from_secs(7)), ..Default::default() };
        assert_eq!(h.observe(now, &reset, 429, 1).outcome, Outcome::Rested429(Duration::from_secs(7)));
        assert_eq!(h.budget_left(now), 0);
    }

    #[test]
    fn a_429_while_the_token_has_budget_left_keeps_the_token() {
        let now = Instant::now();
        let mut h = health();
        let other = RateHeaders {
            remaining: Some(80),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        let seen = h.observe(now, &other, 429, 1);
        assert_eq!(seen.outcome, Outcome::Kept429);
        assert!(!seen.rested_by_429() && h.is_usable(now));
        assert_eq!(h.budget_left(now), 80);
    }

    #[test]
    fn a_nearly_spent_window_rests_the_token_until_it_resets() {
        let now = Instant::now();
        let mut h = health();
        let spent =
            RateHeaders { remaining: Some(1), reset: Some(Duration::from_secs(5)), ..Default::default() };
        assert_eq!(
            h.observe(now, &spent, 200, 2).outcome,
            Outcome::NearlySpent { left: 1, reset: Duration::from_secs(5) }
        );
        assert!(h.is_resting(at(now, 4)) && h.is_usable(at(now, 5)));
        // Already resting: a later answer does not push the rest further.
        assert_eq!(h.observe(at(now, 1), &spent, 200, 2).outcome, Outcome::Nothing);
        assert_eq!(h.blocked_until(now), Some(at(now, 5)));
    }

    #[test]
    fn a_different_budget_in_the_headers_is_followed() {
        let now = Instant::now();
        let mut h = health();
        let headers = RateHeaders { allowed: Some(300), ..Default::default() };
        assert_eq!(
            h.observe(now, &headers, 200, 1).budget_changed.map(|c| (c.from.allowed, c.to.allowed)),
            Some((100, 300))
        );
        assert_eq!(h.allowed(), 300);
        assert_eq!(h.observe(now, &headers, 200, 1).budget_changed, None);
        let zero = RateHeaders { allowed: Some(0), ..Default::default() };
        assert_eq!(h.observe(now, &zero, 200, 1).budget_changed, None);
    }

    #[test]
    fn a_throttled_credential_waits_until_the_limiter_allows_it() {
        let now = Instant::now();
        let mut h = health();
        h.limiter_throttled(at(now, 3));
        assert!(!h.is_usable(now) && h.is_usable(at(now, 3)));
        h.limiter_allowed();
        assert!(h.is_usable(now));
    }

    #[test]
    fn ranking_prefers_the_credential_with_most_quota_left() {
        let now = Instant::now();
        let mut slots = vec![health(), health(), health()];
        slots[0].observe(now, &left(10), 200, 1);
        slots[1].observe(now, &left(90), 200, 1);
        slots[2].observe(now, &left(50), 200, 1);
        for start in 0..3 {
            assert_eq!(rank(&slots, now, start).ready, vec![1, 2, 0]);
        }
    }

    #[test]
    fn ranking_takes_equal_credentials_in_turn() {
        let now = Instant::now();
        let slots = vec![health(), health(), health()];
        assert_eq!(rank(&slots, now, 0).ready, vec![0, 1, 2]);
        assert_eq!(rank(&slots, now, 1).ready, vec![1, 2, 0]);
        assert_eq!(rank(&slots, now, 5).ready, vec![2, 0, 1]);
    }

    #[test]
    fn ranking_skips_rested_and_throttled_credentials_and_says_when_the_first_returns() {
        let now = Instant::now();
        let mut slots = vec![health(), health(), health()];
        let retry = RateHeaders {
            remaining: Some(0),
            retry_after: Some(Duration::from_secs(2)),
            ..Default::default()
        };
        slots[1].observe(now, &retry, 429, 1);
        slots[2].limiter_throttled(at(now, 1));
        let r = rank(&slots, now, 0);
        assert_eq!(r, Ranking { ready: vec![0], next_ready: Some(at(now, 1)), all_parked: false });
        // Back after its rest, last: its headers said nothing was left.
        assert_eq!(rank(&slots, at(now, 2), 0).ready, vec![0, 2, 1]);
    }

    #[test]
    fn ranking_skips_parked_credentials_without_waiting_for_them() {
        let now = Instant::now();
        let mut slots = vec![health(), health()];
        slots[0].token_failed(now, true, "HTTP 401");
        assert_eq!(rank(&slots, now, 0), Ranking { ready: vec![1], next_ready: None, all_parked: false });
    }

    #[test]
    fn all_parked_is_reported_with_the_earliest_return() {
        let now = Instant::now();
        let mut slots = vec![health(), health()];
        slots[0].token_failed(now, true, "HTTP 401");
        slots[1].token_failed(at(now, 10), true, "HTTP 401");
        let r = rank(&slots, at(now, 10), 0);
        assert!(r.all_parked && r.ready.is_empty() && r.next_ready.is_none());
        assert_eq!(earliest_return(&slots, at(now, 10)), PARK - Duration::from_secs(10));
        // Once the first is back, not all are parked.
        assert!(!rank(&slots, now + PARK, 0).all_parked);
    }

    #[test]
    fn no_credentials_are_not_all_parked() {
        let r = rank(&[], Instant::now(), 0);
        assert!(!r.all_parked && r.ready.is_empty() && r.next_ready.is_none());
        assert_eq!(earliest_return(&[], Instant::now()), Duration::ZERO);
    }

    #[test]
    fn a_learned_budget_waits_to_be_shared_and_the_fleets_is_followed_unless_ours_is_newer() {
        let now = Instant::now();
        let mut h = health();
        let b = |allowed, s| Budget { allowed, window: Duration::from_secs(s) };
        assert_eq!(h.shared(None, Some(b(50, 10))).map(|c| c.to), Some(b(50, 10)), "the fleet's is followed");
        assert_eq!(h.unshared(), None, "nothing of its own to tell");
        // Its own answer says otherwise: that goes out with the next limiter call...
        let headers = RateHeaders {
            count: Some(4),
            allowed: Some(80),
            remaining: Some(76),
            reset: Some(Duration::from_secs(8)),
            ..Default::default()
        };
        h.observe(now, &headers, 200, 1);
        assert_eq!(h.unshared(), Some(b(80, 10)));
        // ...and until it went, an older fleet value does not undo it.
        assert_eq!(h.shared(None, Some(b(50, 10))), None);
        assert_eq!(h.budget(), b(80, 10));
        // Sent and read back: shared, nothing pending.
        assert_eq!(h.shared(Some(b(80, 10)), Some(b(80, 10))), None);
        assert_eq!(h.unshared(), None);
    }
}
