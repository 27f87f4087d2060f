//! The per-credential rate limiter, shared by every instance.
//!
//! GCRA (a token bucket written as one timestamp) on one Redis key per
//! credential, updated by one atomic Lua script — cluster-safe because the
//! script touches only that key, and clock-safe because it reads Redis's
//! own clock. When Redis is unreachable each instance falls back to a local
//! limiter allowing itself its part of a conservative share of the budget
//! (`fallback_share` divided by the live fleet size the bus last saw), at
//! the steady rate from the start — no burst, since the others may just
//! have spent it. With no Redis at all (embedded mode) the single instance
//! gets the full budget.
//!
//! The steady rate is set below the budget (`utilization`) and the burst kept
//! small, so the calls of any window — however the platform aligns it —
//! stay under the budget with one call to spare: GCRA admits at most
//! burst − 1 + window / interval calls in any window. A burst of at least 2
//! banks one call, so a caller waking a little late does not lose its slot.

mod local;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::RateLimitSettings;

use super::learn::Budget;
use super::priority::{self, Priority};

pub use crate::store::Take as Verdict;
use crate::store::{FleetBudget, SharedBudgets};
pub use local::LocalLimiter;

use super::stats::UpstreamStats;

/// How long Redis is left alone after a limiter call failed.
const REDIS_PROBE_AFTER: Duration = Duration::from_secs(1);

/// GCRA parameters of one credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Emission interval: one call per this, at steady state (microseconds).
    pub interval_us: u64,
    /// Calls that may go back to back.
    pub burst: u32,
}

impl Limits {
    /// Limits for a budget of `allowed` calls per `window`.
    pub fn for_budget(budget: Budget, s: &RateLimitSettings) -> Limits {
        Self::scaled(budget, s, 1.0)
    }

    /// Limits for `share` of the budget (the fallback when Redis is down).
    pub fn scaled(budget: Budget, s: &RateLimitSettings, share: f64) -> Limits {
        let allowed = budget.allowed.max(1) as f64 * share.clamp(0.0, 1.0);
        // A configured burst is for the configured budget: a learned budget
        // scales it, and it never takes more than half of any budget (the
        // steady rate keeps the rest).
        let burst = if s.burst > 0 {
            s.burst as f64 * share * budget.allowed.max(1) as f64 / s.allowed.max(1) as f64
        } else {
            (allowed * 0.03).round().max(2.0)
        };
        let burst = burst.min((allowed / 2.0).max(2.0)).clamp(1.0, (allowed - 1.0).max(1.0)).floor();
        // At most burst - 1 + per_window calls in any window: keep it at or
        // under allowed - 1.
        let per_window = (allowed * s.utilization).min(allowed - burst).max(1.0);
        let window_us = budget.window.as_micros().max(1) as f64;
        Limits { interval_us: (window_us / per_window).ceil().max(1.0) as u64, burst: burst as u32 }
    }

    /// Burst tolerance: how far ahead of now the theoretical arrival time may be.
    pub fn tolerance_us(&self) -> u64 {
        self.interval_us.saturating_mul(self.burst as u64)
    }

    /// The part of the tolerance a call of `priority` must leave unspent.
    pub fn reserve_us(&self, priority: Priority, s: &RateLimitSettings) -> u64 {
        match priority {
            Priority::Foreground => 0,
            Priority::Background => {
                priority::reserve_us(self.interval_us, self.tolerance_us(), s.background_reserve)
            }
        }
    }
}

/// Redis-backed when there is Redis, with local fallbacks.
pub struct Limiter {
    redis: Option<Arc<dyn SharedBudgets>>,
    /// The full budget (embedded mode, no Redis configured).
    local: LocalLimiter,
    /// A share of the budget, while Redis is unreachable.
    fallback: LocalLimiter,
    settings: RateLimitSettings,
    redis_down_until: Mutex<Option<Instant>>,
    degraded: AtomicBool,
    /// Instances sharing the budgets (from the bus; at least 1).
    fleet: Arc<AtomicUsize>,
}

impl Limiter {
    /// `fleet`: how many instances share the budgets, kept current by the
    /// bus; the fallback share is divided among them.
    pub fn new(
        shared: Option<Arc<dyn SharedBudgets>>,
        settings: RateLimitSettings,
        fleet: Arc<AtomicUsize>,
    ) -> Self {
        Limiter {
            redis: shared,
            local: LocalLimiter::default(),
            fallback: LocalLimiter::cold(),
            settings,
            redis_down_until: Mutex::new(None),
            degraded: AtomicBool::new(false),
            fleet,
        }
    }

    /// Takes one call of `priority` from `key`'s `budget`, if it fits.
    /// `learned`: a budget this instance learned, written for the fleet
    /// along the way. With the shared limiter, also the fleet's budget
    /// (`Some(None)`: none learned yet; `None`: Redis not reached).
    pub async fn acquire(
        &self,
        key: &str,
        budget: Budget,
        priority: Priority,
        stats: &UpstreamStats,
        learned: Option<Budget>,
    ) -> (Verdict, Option<Option<Budget>>) {
        let s = &self.settings;
        let Some(redis) = &self.redis else {
            let limits = Limits::for_budget(budget, s);
            return (self.local.acquire(key, limits, limits.reserve_us(priority, s), Instant::now()), None);
        };
        let down = self.redis_down_until.lock().is_some_and(|until| Instant::now() < until);
        if !down {
            let limits = Limits::for_budget(budget, s);
            // A stuck node must not hold calls up: past the timeout the
            // caller falls back to its local share.
            let learned =
                learned.map(|b| FleetBudget { allowed: b.allowed, window_ms: b.window.as_millis() as u64 });
            let take = redis.take(
                key,
                limits.interval_us,
                limits.tolerance_us(),
                limits.reserve_us(priority, s),
                learned,
            );
            let answer = tokio::time::timeout(self.settings.redis_timeout, take)
                .await
                .unwrap_or_else(|_| Err(crate::error::Error::Store("rate limiter timed out".into())));
            match answer {
                Ok((verdict, fleet)) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("rate limiter: Redis reachable again; shared limiting resumed");
                    }
                    let fleet = fleet
                        .map(|b| Budget { allowed: b.allowed, window: Duration::from_millis(b.window_ms) });
                    return (verdict, Some(fleet));
                }
                Err(e) => {
                    *self.redis_down_until.lock() = Some(Instant::now() + REDIS_PROBE_AFTER);
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        // Others may have just spent the window: start over
                        // at the steady rate, no burst.
                        self.fallback.reset();
                        tracing::warn!(
                            error = %e,
                            share = self.settings.fallback_share,
                            "rate limiter: Redis unreachable; falling back to a local share of each budget"
                        );
                    }
                }
            }
        }
        UpstreamStats::bump(&stats.limiter_fallbacks);
        let fleet = self.fleet.load(Ordering::Relaxed).max(1) as f64;
        let limits = Limits::scaled(budget, s, s.fallback_share / fleet);
        (self.fallback.acquire(key, limits, limits.reserve_us(priority, s), Instant::now()), None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn budget(allowed: u32, window_ms: u64) -> Budget {
        Budget { allowed, window: Duration::from_millis(window_ms) }
    }

    fn settings(allowed: u32, window_ms: u64) -> RateLimitSettings {
        RateLimitSettings {
            allowed,
            window: Duration::from_millis(window_ms),
            ..RateLimitSettings::default()
        }
    }

    #[test]
    fn limits_stay_under_the_budget_in_any_window() {
        for (allowed, window_ms) in [(300u32, 60_000u64), (40, 2000), (20, 2000), (5, 1000), (1, 1000)] {
            let s = settings(allowed, window_ms);
            let l = Limits::for_budget(budget(allowed, window_ms), &s);
            let per_window = (window_ms * 1000) as f64 / l.interval_us as f64;
            let max_in_window = l.burst as f64 - 1.0 + per_window;
            assert!(
                max_in_window <= (allowed as f64 - 1.0).max(1.0),
                "{allowed}: {l:?} gives {max_in_window}"
            );
            if allowed >= 40 {
                assert!(per_window >= allowed as f64 * 0.9, "{allowed}: {l:?} uses {per_window}");
            }
        }
        let s = settings(300, 60_000);
        let l = Limits::for_budget(budget(300, 60_000), &s);
        assert_eq!(l.burst, 9);
        let share = Limits::scaled(budget(300, 60_000), &s, 0.25);
        // A configured burst far over a learned budget does not starve the
        // steady rate: it scales with the budget.
        let big = RateLimitSettings { burst: 100, ..settings(300, 60_000) };
        let learned = Limits::for_budget(budget(20, 2000), &big);
        assert!(learned.burst <= 10 && learned.interval_us <= 2_000_000 / 9, "{learned:?}");
        assert!(share.interval_us >= l.interval_us * 4 - 10 && share.burst <= 3, "{share:?}");
    }

    const FG: Priority = Priority::Foreground;

    #[tokio::test]
    async fn embedded_mode_uses_the_full_budget_locally() {
        let limiter = Limiter::new(None, settings(40, 2000), Arc::new(AtomicUsize::new(1)));
        let stats = UpstreamStats::default();
        assert!(matches!(
            limiter.acquire("a", budget(40, 2000), FG, &stats, None).await.0,
            Verdict::Allowed { remaining: 1 }
        ));
        assert!(matches!(
            limiter.acquire("a", budget(40, 2000), FG, &stats, None).await.0,
            Verdict::Allowed { remaining: 0 }
        ));
        // The burst (2) is spent: the next call waits about one interval.
        match limiter.acquire("a", budget(40, 2000), FG, &stats, None).await.0 {
            Verdict::Wait(d) => assert!(d <= Duration::from_millis(60), "{d:?}"),
            v => panic!("{v:?}"),
        }
        assert!(
            matches!(
                limiter.acquire("b", budget(40, 2000), FG, &stats, None).await.0,
                Verdict::Allowed { .. }
            ),
            "keys are separate"
        );
    }

    /// Calls of each priority allowed over `span`, asking every millisecond
    /// (background first, then foreground when `foreground`).
    async fn contend(limiter: &Limiter, b: Budget, span: Duration, foreground: bool) -> (usize, usize) {
        let stats = UpstreamStats::default();
        let (mut fg, mut bg) = (0, 0);
        let end = Instant::now() + span;
        while Instant::now() < end {
            if matches!(
                limiter.acquire("k", b, Priority::Background, &stats, None).await.0,
                Verdict::Allowed { .. }
            ) {
                bg += 1;
            }
            if foreground
                && matches!(limiter.acquire("k", b, FG, &stats, None).await.0, Verdict::Allowed { .. })
            {
                fg += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        (fg, bg)
    }

    #[tokio::test(start_paused = true)]
    async fn background_calls_get_only_what_foreground_leaves() {
        let s = RateLimitSettings { burst: 4, ..settings(100, 2000) };
        let limiter = Limiter::new(None, s, Arc::new(AtomicUsize::new(1)));
        let b = budget(100, 2000);
        let stats = UpstreamStats::default();
        while matches!(limiter.acquire("k", b, FG, &stats, None).await.0, Verdict::Allowed { .. }) {}
        // A foreground load that takes every call: background gets none.
        let (fg, bg) = contend(&limiter, b, Duration::from_secs(4), true).await;
        assert_eq!(bg, 0, "background took {bg} while foreground took {fg}");
        assert!(fg >= 180, "foreground spends the budget: {fg} of 200");
        // Foreground quiet: background spends the budget at the steady rate...
        let (_, bg) = contend(&limiter, b, Duration::from_secs(2), false).await;
        assert!(bg >= 85, "background uses spare budget: {bg} of 100");
        // ...yet leaves part of the burst banked: foreground goes at once.
        for _ in 0..2 {
            let v = limiter.acquire("k", b, FG, &stats, None).await.0;
            assert!(matches!(v, Verdict::Allowed { .. }), "{v:?}");
        }
    }
}

#[cfg(test)]
mod fallback_tests {
    use super::*;
    use crate::error::{Error, Result};
    use crate::store::Take;

    /// A shared backend that never answers in time.
    struct Unreachable;

    #[async_trait::async_trait]
    impl SharedBudgets for Unreachable {
        async fn take(
            &self,
            _key: &str,
            _interval_us: u64,
            _tolerance_us: u64,
            _reserve: u64,
            _learned: Option<FleetBudget>,
        ) -> Result<(Take, Option<FleetBudget>)> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Err(Error::Store("unreachable".into()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unreachable_shared_budgets_fall_back_to_a_local_share() {
        let s = RateLimitSettings {
            allowed: 40,
            window: Duration::from_secs(2),
            redis_timeout: Duration::from_millis(50),
            ..RateLimitSettings::default()
        };
        let limiter = Limiter::new(Some(Arc::new(Unreachable)), s.clone(), Arc::new(AtomicUsize::new(1)));
        let stats = UpstreamStats::default();
        let started = Instant::now();
        // No burst: the first fallback call waits one interval of the share
        // (a quarter of the budget, so four times the full interval).
        let full = Duration::from_micros(Limits::for_budget(tests::budget(40, 2000), &s).interval_us);
        match limiter.acquire("k", tests::budget(40, 2000), Priority::Foreground, &stats, None).await.0 {
            Verdict::Wait(d) => assert!(d > full * 3, "fallback share is conservative: {d:?} vs {full:?}"),
            v => panic!("starts without a burst: {v:?}"),
        }
        // One timeout, then the backend is left alone for a while.
        assert!(started.elapsed() < Duration::from_millis(100), "not retried on every call");
        assert_eq!(stats.snapshot().limiter_fallbacks, 1);
    }

    /// Calls one instance's limiter allows while the shared budgets are
    /// unreachable, over one window, asking every millisecond.
    async fn fallback_calls_in_a_window(fleet: usize) -> usize {
        let s = RateLimitSettings {
            allowed: 100,
            window: Duration::from_secs(10),
            redis_timeout: Duration::from_millis(50),
            ..RateLimitSettings::default()
        };
        let limiter = Limiter::new(Some(Arc::new(Unreachable)), s.clone(), Arc::new(AtomicUsize::new(fleet)));
        let stats = UpstreamStats::default();
        let end = Instant::now() + s.window;
        let mut allowed = 0;
        while Instant::now() < end {
            let b = tests::budget(100, 10_000);
            if matches!(
                limiter.acquire("k", b, Priority::Foreground, &stats, None).await.0,
                Verdict::Allowed { .. }
            ) {
                allowed += 1;
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        allowed
    }

    /// The fallback share is the fleet's, not each instance's: five cut-off
    /// instances together stay within a quarter of the budget (25 of 100),
    /// where each spending its own quarter would spend 125 %.
    #[tokio::test(start_paused = true)]
    async fn the_fallback_share_is_divided_by_the_live_fleet() {
        let one = fallback_calls_in_a_window(1).await;
        assert!((20..=25).contains(&one), "one instance: {one} of 100");
        let each_of_five = fallback_calls_in_a_window(5).await;
        assert!(each_of_five * 5 <= 25, "five instances: {each_of_five} each");
        assert!(each_of_five >= 2, "still makes progress: {each_of_five}");
    }
}
