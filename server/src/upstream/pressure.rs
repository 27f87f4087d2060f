//! Whether this instance's callers are waiting for quota right now.
//!
//! Why: the shared limiter admits a background call while, after it, a
//! reserve of the burst is still banked ([`super::priority`]). Foreground
//! callers that wait for quota poll the limiter (they sleep until their
//! turn), so between one's wake-up and the next, the bucket can hold just
//! enough for a background call to slip in ahead of a waiting caller. A
//! caller waiting here is the plainest sign the budget is needed: while
//! one waits, or one waited within [`HOLD`], background calls of this
//! instance are refused at once. (Other instances' callers are covered by
//! the reserve.)
//!
//! The same signs make XFetch's early refresh less eager as the budget
//! runs low ([`eagerness`]): an early refresh is the most optional of
//! background calls (the value is still fresh, refresh ahead covers hot
//! keys), so it backs off first, before a refusal is even asked for.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long after a foreground wait background calls stay refused.
pub const HOLD: Duration = Duration::from_secs(1);

/// With at least this share of the window's budget left, early refreshes
/// are as eager as configured.
pub const PLENTY: f64 = 0.5;

/// How eager XFetch's early refresh may be (its lead before expiry is
/// scaled by this) with `spare` of the window's budget left: as configured
/// (1) from [`PLENTY`], none (0) at or under `floor` (where background calls
/// are refused anyway), in proportion between.
pub fn eagerness(spare: f64, floor: f64) -> f64 {
    if spare <= floor {
        0.0
    } else if spare >= PLENTY {
        1.0
    } else {
        ((spare - floor) / (PLENTY - floor)).clamp(0.0, 1.0)
    }
}

pub struct Pressure {
    base: Instant,
    waiting: AtomicUsize,
    /// When the last wait ended, µs since `base` (0: never).
    last_us: AtomicU64,
}

impl Default for Pressure {
    fn default() -> Self {
        Pressure { base: Instant::now(), waiting: AtomicUsize::new(0), last_us: AtomicU64::new(0) }
    }
}

/// A foreground caller waiting for quota; the wait ends when it drops.
pub struct Waiting<'a>(&'a Pressure);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let p = self.0;
        let at = (Instant::now() - p.base).as_micros() as u64;
        p.last_us.fetch_max(at.max(1), Ordering::Relaxed);
        p.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Pressure {
    /// A foreground caller starts waiting for quota.
    pub fn wait(&self) -> Waiting<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        Waiting(self)
    }

    /// Whether a foreground caller waits now, or waited within [`HOLD`].
    pub fn high(&self) -> bool {
        if self.waiting.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let last = self.last_us.load(Ordering::Relaxed);
        last > 0 && (Instant::now() - self.base).as_micros() as u64 <= last + HOLD.as_micros() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pressure_lasts_while_callers_wait_and_a_hold_after() {
        let p = Pressure::default();
        assert!(!p.high(), "nobody waited yet");
        let w = p.wait();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(p.high(), "a caller waits");
        drop(w);
        tokio::time::advance(HOLD).await;
        assert!(p.high(), "within the hold");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!p.high(), "past the hold");
    }

    #[test]
    fn early_refreshes_back_off_as_the_budget_runs_low() {
        assert_eq!(eagerness(1.0, 0.1), 1.0, "plenty: as configured");
        assert_eq!(eagerness(PLENTY, 0.1), 1.0);
        assert!((eagerness(0.3, 0.1) - 0.5).abs() < 1e-9, "half way down: half as eager");
        assert_eq!(eagerness(0.1, 0.1), 0.0, "at the floor: none");
        assert_eq!(eagerness(0.0, 0.0), 0.0, "nothing left, no floor: none");
        assert_eq!(eagerness(0.05, 0.0), 0.1);
        assert_eq!(eagerness(0.7, 0.8), 0.0, "a floor above PLENTY: none under it");
        assert_eq!(eagerness(0.9, 0.8), 1.0);
    }
}
