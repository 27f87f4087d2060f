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

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long after a foreground wait background calls stay refused.
pub const HOLD: Duration = Duration::from_secs(1);

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
}
