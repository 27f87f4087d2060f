//! Wall-clock milliseconds, the time base of entries (`stored_at_ms`,
//! `fresh_until_ms`): shared by every instance, so it must be wall time,
//! not a process-local monotonic clock.
//!
//! Unit tests of the freshness rules run on tokio's paused clock; there
//! [`follow_tokio_time`] makes [`now_ms`] advance with it (per test thread),
//! so `tokio::time::advance` moves TTLs and sleeps together.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    #[cfg(test)]
    if let Some(ms) = paused::now_ms() {
        return ms;
    }
    system_ms()
}

fn system_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// From now on (on this thread), [`now_ms`] is the wall time of this call
/// plus the tokio time elapsed since: with a paused runtime, it moves only
/// when the test advances time.
#[cfg(test)]
pub fn follow_tokio_time() {
    paused::BASE.with(|b| b.set(Some((system_ms(), tokio::time::Instant::now()))));
}

#[cfg(test)]
mod paused {
    use std::cell::Cell;

    thread_local! {
        pub static BASE: Cell<Option<(i64, tokio::time::Instant)>> = const { Cell::new(None) };
    }

    pub fn now_ms() -> Option<i64> {
        BASE.with(|b| b.get())
            .map(|(wall, at)| wall + tokio::time::Instant::now().duration_since(at).as_millis() as i64)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn follows_the_paused_clock() {
        follow_tokio_time();
        let t0 = now_ms();
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(now_ms() - t0, 90_000);
    }
}
