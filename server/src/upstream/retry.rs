//! Retry policy: which failures are worth another attempt, and how long to
//! wait first (truncated exponential backoff with jitter; an upstream
//! `Retry-After` is honoured exactly). The caller's deadline bounds it all.

use std::time::Duration;

use rand::Rng;

use crate::config::RetrySettings;
use crate::error::Error;

#[derive(Debug, Clone)]
pub struct Backoff {
    settings: RetrySettings,
}

impl Backoff {
    pub fn new(settings: RetrySettings) -> Self {
        Backoff { settings }
    }

    pub fn max_attempts(&self) -> u32 {
        self.settings.max_attempts.max(1)
    }

    /// The delay before retry number `retry` (0 = the first retry): base × 2^retry
    /// capped, plus up to `jitter`.
    pub fn delay(&self, retry: u32) -> Duration {
        let s = &self.settings;
        let exp = s.base.saturating_mul(1u32 << retry.min(20)).min(s.cap);
        let jitter = if s.jitter.is_zero() {
            Duration::ZERO
        } else {
            s.jitter.mul_f64(rand::thread_rng().gen_range(0.0..=1.0))
        };
        exp + jitter
    }

    /// How long to wait before retrying after `err`; `None`: do not retry.
    /// `Retry-After` is honoured exactly. (A 429 that rested its token is
    /// retried at once instead: the next attempt takes another token or
    /// waits for one — see `Upstream::attempt`.)
    pub fn wait_after(&self, err: &Error, retry: u32) -> Option<Duration> {
        match err {
            Error::RateLimited { retry_after } => Some(*retry_after),
            Error::Unavailable { retry_after: Some(after), .. } => Some(*after),
            Error::Unavailable { retry_after: None, .. } => Some(self.delay(retry)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backoff(jitter_ms: u64) -> Backoff {
        Backoff::new(RetrySettings {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(8),
            jitter: Duration::from_millis(jitter_ms),
            max_attempts: 5,
        })
    }

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let b = backoff(0);
        let secs: Vec<u64> = (0..6).map(|n| b.delay(n).as_secs()).collect();
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
        let b = backoff(500);
        for n in 0..6 {
            let d = b.delay(n);
            let base = Duration::from_secs([1, 2, 4, 8, 8, 8][n as usize]);
            assert!(d >= base && d <= base + Duration::from_millis(500), "{d:?}");
        }
    }

    #[test]
    fn what_is_retried() {
        let b = backoff(0);
        let unavailable = |after| Error::Unavailable { message: "x".into(), retry_after: after };
        assert_eq!(b.wait_after(&unavailable(Some(Duration::from_secs(3))), 0), Some(Duration::from_secs(3)));
        assert_eq!(b.wait_after(&unavailable(None), 1), Some(Duration::from_secs(2)));
        assert_eq!(
            b.wait_after(&Error::RateLimited { retry_after: Duration::from_secs(2) }, 0),
            Some(Duration::from_secs(2))
        );
        assert_eq!(b.wait_after(&Error::NotFound("x".into()), 0), None);
        assert_eq!(b.wait_after(&Error::PermissionDenied("x".into()), 0), None);
        assert_eq!(b.wait_after(&Error::BadUpstream("x".into()), 0), None);
    }
}
