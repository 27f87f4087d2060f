//! The budget of one credential as the platform states it: calls per
//! window, learned from every response's rate-limit headers, in both
//! directions. A pure function of the headers seen (no clock, no I/O).
//!
//! Why: configured limits go stale. Orgs get their limits raised through
//! support, an API may count in 10 s windows rather than a minute, and a
//! budget left at 300 per 60 s in front of 50 per 10 s spends 16 % of what it
//! could. The headers say it all: `allowed` is the budget, `count` the calls
//! made in the current window, `reset` the time left in it.
//!
//! The rules:
//! - `allowed` is followed as soon as a response states it (capped by the
//!   configured ceiling);
//! - the window is at least any `reset` seen: a longer one raises it at once
//!   (a lower rate: always safe);
//! - a response with `count` 1 opened a window, so its `reset` is the whole
//!   window (rounded up to a second by the header). The first such reading
//!   replaces the configured starting value; later a shorter window (a higher
//!   rate: the risky direction) is taken only when two window openings in a
//!   row agree, so one odd reading (an aligned window entered late) cannot
//!   cause a burst of 429s.

use std::time::Duration;

use super::headers::RateHeaders;

/// Two window readings within this of each other agree (the header counts
/// whole seconds).
const AGREE: Duration = Duration::from_millis(1500);
/// Resets longer than this are not a call budget's window (a daily quota,
/// an epoch misread): ignored.
const LONGEST_WINDOW: Duration = Duration::from_secs(3600);

/// A credential's budget: calls per window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub allowed: u32,
    pub window: Duration,
}

/// What one response changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub from: Budget,
    pub to: Budget,
}

/// The learned budget of one credential.
#[derive(Debug, Clone)]
pub struct Learned {
    budget: Budget,
    /// Learned `allowed` is capped here (0: no cap).
    ceiling: u32,
    /// The window comes from the headers (not from config) since this reading.
    window_learned: bool,
    /// A shorter window read once, waiting for a second opening to agree.
    shorter: Option<Duration>,
}

impl Learned {
    /// Starts from the configured budget; `ceiling` caps what is learned (0: none).
    pub fn new(start: Budget, ceiling: u32) -> Learned {
        let allowed = if ceiling > 0 { start.allowed.min(ceiling) } else { start.allowed };
        Learned {
            budget: Budget { allowed: allowed.max(1), ..start },
            ceiling,
            window_learned: false,
            shorter: None,
        }
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// Learns from one response's headers; returns the change, if any.
    pub fn observe(&mut self, h: &RateHeaders) -> Option<Change> {
        let from = self.budget;
        if let Some(allowed) = h.allowed.filter(|a| *a > 0) {
            self.budget.allowed = if self.ceiling > 0 { allowed.min(self.ceiling) } else { allowed };
        }
        let count = h.count.or_else(|| Some(h.allowed?.saturating_sub(h.remaining?)));
        if let Some(reset) = h.reset.filter(|r| !r.is_zero() && *r <= LONGEST_WINDOW) {
            if count == Some(1) {
                self.window_opened(reset);
            } else if reset > self.budget.window {
                self.budget.window = reset;
                self.shorter = None;
            }
        }
        (self.budget != from).then_some(Change { from, to: self.budget })
    }

    /// Takes `shared`, the budget another instance of the fleet learned
    /// (through the limiter in Redis): it applied these same rules to its
    /// own answers, so it is followed as it is (capped by the ceiling).
    pub fn adopt(&mut self, shared: Budget) -> Option<Change> {
        let from = self.budget;
        let allowed = if self.ceiling > 0 { shared.allowed.min(self.ceiling) } else { shared.allowed };
        if allowed == 0 || shared.window.is_zero() || shared.window > LONGEST_WINDOW {
            return None;
        }
        self.budget = Budget { allowed, window: shared.window };
        self.window_learned = true;
        self.shorter = None;
        (self.budget != from).then_some(Change { from, to: self.budget })
    }

    /// A response opened a window of `reset`.
    fn window_opened(&mut self, reset: Duration) {
        let current = self.budget.window;
        if !self.window_learned || reset >= current {
            self.budget.window = reset;
            self.window_learned = true;
            self.shorter = None;
        } else if current - reset <= AGREE {
            self.shorter = None; // the same window, read a little short
        } else {
            match self.shorter {
                Some(seen) if seen.abs_diff(reset) <= AGREE => {
                    self.budget.window = seen.max(reset);
                    self.shorter = None;
                }
                _ => self.shorter = Some(reset),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn budget(allowed: u32, window: u64) -> Budget {
        Budget { allowed, window: secs(window) }
    }

    fn genesys(count: u32, allowed: u32, reset: u64) -> RateHeaders {
        RateHeaders {
            count: Some(count),
            allowed: Some(allowed),
            remaining: Some(allowed.saturating_sub(count)),
            reset: Some(secs(reset)),
            retry_after: None,
        }
    }

    #[test]
    fn configured_300_per_minute_follows_headers_saying_50_per_10s_from_the_first_answer() {
        let mut l = Learned::new(budget(300, 60), 0);
        let change = l.observe(&genesys(1, 50, 10)).expect("changed");
        assert_eq!(change.from, budget(300, 60));
        assert_eq!(l.budget(), budget(50, 10));
        // The rest of the window changes nothing.
        for count in 2..50 {
            assert_eq!(l.observe(&genesys(count, 50, 10 - (count as u64 / 6))), None);
        }
    }

    #[test]
    fn a_raised_budget_is_followed_and_capped_by_the_ceiling() {
        let mut l = Learned::new(budget(50, 10), 0);
        l.observe(&genesys(7, 200, 8));
        assert_eq!(l.budget(), budget(200, 10));
        let mut capped = Learned::new(budget(50, 10), 120);
        capped.observe(&genesys(7, 200, 8));
        assert_eq!(capped.budget(), budget(120, 10));
        // A lowered budget is followed too.
        l.observe(&genesys(9, 40, 7));
        assert_eq!(l.budget().allowed, 40);
        assert_eq!(l.observe(&RateHeaders { allowed: Some(0), ..Default::default() }), None);
    }

    #[test]
    fn a_longer_window_is_taken_at_once_a_shorter_one_when_two_openings_agree() {
        let mut l = Learned::new(budget(50, 60), 0);
        l.observe(&genesys(1, 50, 10));
        assert_eq!(l.budget().window, secs(10));
        // The platform moves to 20 s windows: any reset past 10 s shows it.
        l.observe(&genesys(4, 50, 18));
        assert_eq!(l.budget().window, secs(18));
        l.observe(&genesys(1, 50, 20));
        assert_eq!(l.budget().window, secs(20));
        // Back to 5 s: one opening is not enough, two in a row are.
        l.observe(&genesys(1, 50, 5));
        assert_eq!(l.budget().window, secs(20), "one short reading");
        l.observe(&genesys(3, 50, 4));
        l.observe(&genesys(1, 50, 5));
        assert_eq!(l.budget().window, secs(5));
    }

    #[test]
    fn a_late_reading_of_an_aligned_window_does_not_shorten_a_learned_one() {
        let mut l = Learned::new(budget(50, 60), 0);
        l.observe(&genesys(1, 50, 10));
        // Idle, then a first call late in an aligned window: 3 s left.
        l.observe(&genesys(1, 50, 3));
        // The next opening reads the true window again.
        l.observe(&genesys(1, 50, 10));
        l.observe(&genesys(1, 50, 3));
        assert_eq!(l.budget().window, secs(10));
        // A reading a second short (rounding) is the same window.
        l.observe(&genesys(1, 50, 9));
        assert_eq!(l.budget().window, secs(10));
    }

    #[test]
    fn a_budget_learned_elsewhere_in_the_fleet_is_followed_as_it_is() {
        let mut l = Learned::new(budget(300, 60), 0);
        let change = l.adopt(budget(50, 10)).expect("changed");
        assert_eq!((change.from, change.to), (budget(300, 60), budget(50, 10)));
        assert_eq!(l.adopt(budget(50, 10)), None, "the same again changes nothing");
        // It counts as a learned window: one late reading does not shorten it.
        l.observe(&genesys(1, 50, 3));
        assert_eq!(l.budget(), budget(50, 10));
        let mut capped = Learned::new(budget(50, 10), 120);
        capped.adopt(budget(200, 10));
        assert_eq!(capped.budget(), budget(120, 10));
        assert_eq!(capped.adopt(budget(0, 10)), None, "nonsense is ignored");
    }

    #[test]
    fn generic_headers_count_from_remaining_and_odd_resets_are_ignored() {
        let mut l = Learned::new(budget(100, 60), 0);
        let generic = RateHeaders {
            allowed: Some(100),
            remaining: Some(99),
            reset: Some(secs(30)),
            ..Default::default()
        };
        l.observe(&generic);
        assert_eq!(l.budget(), budget(100, 30));
        let daily = RateHeaders { reset: Some(secs(86_400)), ..Default::default() };
        assert_eq!(l.observe(&daily), None);
        assert_eq!(l.observe(&RateHeaders::default()), None);
    }
}
