//! Counters of what the upstream side did, kept as plain atomics so the
//! metrics exporter can read them without the upstream knowing about it.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

macro_rules! stats {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// Live counters (monotonic).
        #[derive(Debug, Default)]
        pub struct UpstreamStats { $($(#[$doc])* pub $name: AtomicU64,)* }

        /// A point-in-time copy of [`UpstreamStats`].
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
        pub struct StatsSnapshot { $($(#[$doc])* pub $name: u64,)* }

        impl UpstreamStats {
            pub fn snapshot(&self) -> StatsSnapshot {
                StatsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

stats!(
    /// HTTP calls sent to the API (token endpoint excluded).
    calls,
    /// Of those, background calls (refreshes, verification).
    background_calls,
    /// API answers 429.
    responses_429,
    /// Attempts repeated after 429, 5xx or a timeout.
    retries,
    /// Tokens fetched from the token endpoint.
    token_fetches,
    /// Tokens replaced ahead of expiry while the old one kept serving.
    token_refreshes,
    /// Tokens dropped after an API 401.
    tokens_rejected,
    /// Times a credential was parked (token endpoint or API kept refusing it).
    credentials_parked,
    /// Tokens rested because headers said they were (nearly) spent.
    tokens_rested,
    /// Limiter decisions taken locally because Redis was unreachable.
    limiter_fallbacks,
    /// Calls that waited for quota.
    quota_waits,
    /// Calls refused because no quota would free up within their deadline.
    quota_exhausted,
    /// Analytics jobs submitted.
    jobs_submitted,
    /// Job intervals split after an incomplete result.
    job_splits,
    /// Jobs cancelled upstream because their result would not be used.
    jobs_cancelled,
);

impl UpstreamStats {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}
