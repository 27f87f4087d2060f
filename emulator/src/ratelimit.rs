//! Per-token fixed-window rate limiting, as the platform does it: every token
//! has its own budget of `rate_limit` calls per window, reported back in the
//! `inin-ratelimit-*` headers.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Past this many tracked tokens, windows that have ended are dropped.
const PRUNE_ABOVE: usize = 10_000;

/// The limiter's verdict on one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Decision {
    /// Calls made in the current window, this one included.
    pub count: u32,
    /// The budget per window.
    pub allowed: u32,
    /// Whole seconds until the window resets (at least 1).
    pub reset_secs: u64,
    /// The call is over budget and must be answered 429.
    pub limited: bool,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
}

/// Fixed windows keyed by token; a token's window starts with its first call.
/// The budget can be changed at run time ([`RateLimiter::set`]), as the
/// platform does when an org's limit is raised: windows under way keep
/// their count and end when the new window length says.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    limit: Mutex<(u32, Duration)>,
    windows: Mutex<HashMap<String, Window>>,
}

impl RateLimiter {
    pub fn new(allowed: u32, window: Duration) -> Self {
        Self {
            limit: Mutex::new((allowed, window.max(Duration::from_millis(1)))),
            windows: Mutex::new(HashMap::new()),
        }
    }

    /// Changes the budget of every token from now on.
    pub fn set(&self, allowed: u32, window: Duration) {
        *self.limit.lock() = (allowed, window.max(Duration::from_millis(1)));
    }

    /// The budget per window, and the window.
    pub fn limit(&self) -> (u32, Duration) {
        *self.limit.lock()
    }

    /// Counts one call of `token` at `now`.
    pub fn check(&self, token: &str, now: Instant) -> Decision {
        let (allowed, window) = self.limit();
        let mut windows = self.windows.lock();
        if windows.len() > PRUNE_ABOVE {
            windows.retain(|_, w| now.duration_since(w.start) < window);
        }
        let w = windows.entry(token.to_string()).or_insert(Window { start: now, count: 0 });
        if now.duration_since(w.start) >= window {
            *w = Window { start: now, count: 0 };
        }
        w.count = w.count.saturating_add(1);
        let left = (w.start + window).saturating_duration_since(now);
        Decision {
            count: w.count,
            allowed,
            reset_secs: left.as_secs_f64().ceil().max(1.0) as u64,
            limited: w.count > allowed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_token_and_window_reset() {
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        assert!(!rl.check("a", t0).limited);
        let d = rl.check("a", t0 + Duration::from_millis(500));
        assert_eq!((d.count, d.allowed, d.limited), (2, 2, false));
        assert_eq!(d.reset_secs, 60);
        assert!(rl.check("a", t0 + Duration::from_secs(1)).limited);
        assert!(!rl.check("b", t0 + Duration::from_secs(1)).limited);
        let d = rl.check("a", t0 + Duration::from_secs(60));
        assert_eq!((d.count, d.limited), (1, false));
        let d = rl.check("a", t0 + Duration::from_millis(119_900));
        assert_eq!(d.reset_secs, 1);
    }

    #[test]
    fn the_budget_changes_at_run_time() {
        let rl = RateLimiter::new(2, Duration::from_secs(60));
        let t0 = Instant::now();
        rl.check("a", t0);
        rl.set(5, Duration::from_secs(10));
        let d = rl.check("a", t0 + Duration::from_secs(1));
        assert_eq!((d.count, d.allowed, d.reset_secs, d.limited), (2, 5, 9, false));
        let d = rl.check("a", t0 + Duration::from_secs(10));
        assert_eq!((d.count, d.reset_secs), (1, 10));
    }
}
