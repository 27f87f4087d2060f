//! Who an upstream call is for, and what budget it may use.
//!
//! Why: a caller waiting on a miss is worth more than a refresh nobody
//! waits for. Foreground calls take the budget as the limiter paces it
//! (waiting for their turn within their deadline). Background calls
//! (stale-while-revalidate, early refresh, refresh ahead, verification)
//! take only what foreground traffic leaves, and stop first:
//! - the shared limiter admits one only while, after it, at least
//!   `background_reserve` of the credential's burst is still banked for
//!   foreground calls (at least one call): under a foreground load that
//!   keeps the bucket empty, background calls get nothing;
//! - none while the platform's headers say less than `background_floor`
//!   of the window's budget is left;
//! - none while a foreground caller of this instance waits for quota, or
//!   waited within the last second ([`super::pressure`]);
//! - they never wait for quota: refused at once (`RATE_LIMITED`), they are
//!   tried again later by whoever scheduled them.

use std::fmt;

/// The priority of one upstream call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Priority {
    /// A caller waits on it (a miss, a forced refresh, a platform call).
    #[default]
    Foreground,
    /// Nobody waits on it: refreshes and verification.
    Background,
}

impl Priority {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Priority::Foreground => "foreground",
            Priority::Background => "background",
        }
    }

    pub fn is_background(self) -> bool {
        self == Priority::Background
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The burst tolerance (µs) a background call must leave banked: `share`
/// of the tolerance, at least one interval, at most all of it (a burst of
/// one call then admits no background call at all).
pub fn reserve_us(interval_us: u64, tolerance_us: u64, share: f64) -> u64 {
    let share = (tolerance_us as f64 * share.clamp(0.0, 1.0)).ceil() as u64;
    share.max(interval_us).min(tolerance_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_at_least_one_call_and_at_most_the_burst() {
        assert_eq!(reserve_us(100, 200, 0.5), 100);
        assert_eq!(reserve_us(100, 900, 0.5), 450);
        assert_eq!(reserve_us(100, 900, 0.0), 100);
        assert_eq!(reserve_us(100, 100, 0.5), 100);
        assert_eq!(Priority::default(), Priority::Foreground);
        assert_eq!(Priority::Background.to_string(), "background");
    }
}
