//! Per-caller miss budgets: the upstream calls a caller causes (misses and
//! forced refreshes) are charged to a token bucket of its own, so one noisy
//! caller cannot spend the quota every caller shares. A caller with an
//! empty bucket is refused (RESOURCE_EXHAUSTED + RetryInfo) until it refills.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Caller;
use crate::error::Error;

/// A caller's budget: `per_minute` upstream calls at steady state, at most
/// `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, b: Budget, now: Instant) {
        let rate = f64::from(b.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(f64::from(b.burst.max(1)));
        self.at = now;
    }

    fn wait_for_one(&self, b: Budget) -> Duration {
        let rate = f64::from(b.per_minute.max(1)) / 60.0;
        Duration::from_secs_f64(((1.0 - self.tokens) / rate).max(0.001))
    }
}

/// Every caller's bucket (kept across reloads, by caller name).
#[derive(Debug, Default)]
pub struct MissBudgets {
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl MissBudgets {
    /// Before a Get: refused while the caller's bucket has less than one
    /// call left; a forced refresh (always upstream) takes its call now.
    pub fn admit(&self, caller: &Caller, force_refresh: bool, now: Instant) -> Result<(), Error> {
        let Some(b) = caller.budget() else { return Ok(()) };
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(caller.name().to_string())
            .or_insert(Bucket { tokens: f64::from(b.burst.max(1)), at: now });
        bucket.refill(b, now);
        if bucket.tokens < 1.0 {
            crate::metrics::refused("miss_budget");
            return Err(Error::CallerBudget {
                caller: caller.name().to_string(),
                retry_after: bucket.wait_for_one(b),
            });
        }
        if force_refresh {
            bucket.tokens -= 1.0;
        }
        Ok(())
    }

    /// After a Get that went upstream (not a forced one, already charged).
    pub fn charge(&self, caller: &Caller, now: Instant) {
        let Some(b) = caller.budget() else { return };
        let mut buckets = self.buckets.lock();
        let bucket = buckets
            .entry(caller.name().to_string())
            .or_insert(Bucket { tokens: f64::from(b.burst.max(1)), at: now });
        bucket.refill(b, now);
        // Concurrent misses may overdraw: the debt is paid before the next one.
        bucket.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_spending_its_budget_is_refused_until_it_refills_and_others_are_not() {
        let noisy = Caller::with_budget("noisy", Budget { per_minute: 60, burst: 3 });
        let quiet = Caller::with_budget("quiet", Budget { per_minute: 60, burst: 3 });
        let budgets = MissBudgets::default();
        let t0 = Instant::now();
        for _ in 0..3 {
            budgets.admit(&noisy, false, t0).unwrap();
            budgets.charge(&noisy, t0);
        }
        let e = budgets.admit(&noisy, false, t0).unwrap_err();
        assert_eq!(e.code(), crate::error::Code::ResourceExhausted);
        let wait = e.retry_after().unwrap();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1), "{wait:?}");
        assert!(e.to_string().contains("noisy"), "{e}");
        budgets.admit(&quiet, false, t0).expect("another caller's budget is its own");
        budgets.admit(&noisy, false, t0 + Duration::from_secs(1)).expect("refilled after a second");
        // A forced refresh takes its call up front: the next Get is refused.
        budgets.admit(&noisy, true, t0 + Duration::from_secs(1)).unwrap();
        budgets.admit(&noisy, false, t0 + Duration::from_secs(1)).unwrap_err();
        assert!(budgets.admit(&Caller::anonymous(), true, t0).is_ok(), "no budget: unlimited");
    }
}
