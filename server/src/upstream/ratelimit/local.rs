//! In-process GCRA: the whole budget in embedded mode, a share of it while
//! Redis is unreachable.

use std::collections::HashMap;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use super::{Limits, Verdict};

/// Theoretical arrival time per key.
#[derive(Default)]
pub struct LocalLimiter {
    tat: Mutex<HashMap<String, Instant>>,
    /// A key seen for the first time starts with its burst spent (steady
    /// rate from the start), not with a full burst.
    cold: bool,
}

impl LocalLimiter {
    /// A limiter whose keys start with no burst banked.
    pub fn cold() -> Self {
        LocalLimiter { tat: Mutex::default(), cold: true }
    }

    /// Forgets every key (a cold limiter starts each without a burst again).
    pub fn reset(&self) {
        self.tat.lock().clear();
    }

    /// One call from `key`, leaving `reserve_us` of the tolerance unspent.
    pub fn acquire(&self, key: &str, limits: Limits, reserve_us: u64, now: Instant) -> Verdict {
        let interval = Duration::from_micros(limits.interval_us);
        let tolerance = Duration::from_micros(limits.tolerance_us().saturating_sub(reserve_us));
        let mut map = self.tat.lock();
        if self.cold && !map.contains_key(key) {
            map.insert(key.to_string(), now + Duration::from_micros(limits.tolerance_us()));
        }
        let tat = map.get(key).copied().filter(|t| *t > now).unwrap_or(now);
        let new_tat = tat + interval;
        let ahead = new_tat - now;
        if ahead > tolerance {
            return Verdict::Wait(ahead - tolerance);
        }
        map.insert(key.to_string(), new_tat);
        let remaining = (tolerance - ahead).as_micros() / interval.as_micros().max(1);
        Verdict::Allowed { remaining: remaining.min(u32::MAX as u128) as u32 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_steady_rate() {
        let l = LocalLimiter::default();
        let limits = Limits { interval_us: 100_000, burst: 3 };
        let t0 = Instant::now();
        assert_eq!(l.acquire("k", limits, 0, t0), Verdict::Allowed { remaining: 2 });
        assert_eq!(l.acquire("k", limits, 0, t0), Verdict::Allowed { remaining: 1 });
        assert_eq!(l.acquire("k", limits, 0, t0), Verdict::Allowed { remaining: 0 });
        assert_eq!(l.acquire("k", limits, 0, t0), Verdict::Wait(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(l.acquire("k", limits, 0, t1), Verdict::Allowed { remaining: 0 });
        // Over a long stretch: one call per interval.
        let mut allowed = 0;
        for ms in (200..10_200).step_by(10) {
            if matches!(l.acquire("k", limits, 0, t0 + Duration::from_millis(ms)), Verdict::Allowed { .. }) {
                allowed += 1;
            }
        }
        assert!((99..=101).contains(&allowed), "{allowed}");
    }
}
