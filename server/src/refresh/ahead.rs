//! Refresh ahead: keys that are hot (asked for at least
//! `cache.refresh_ahead.hot_requests` times within their last TTL window)
//! and keys pinned in config are refreshed before they expire.
//!
//! Why: XFetch refreshes a key early only when a caller happens to read it
//! near expiry, and a key read less often than its TTL expires under its
//! next caller. Every `interval`, this looks at each candidate's stored
//! entry and refreshes the ones with less than `lead` of their TTL (plus
//! one interval) left, through the cache's usual flight (one fetch per key
//! across the fleet: another instance's refresh is joined, not repeated).
//! A refusal for budget ends the round; the next round tries again, and
//! the lead leaves several rounds before expiry. A pinned key not stored
//! (never asked for, or purged) is fetched; a hot one is not (a purge
//! means its next caller should see the new value, and a caller will ask).
//! Keys neither hot nor asked for within their TTL are forgotten. Only keys
//! asked for at least `hot_requests` times have their entry read: a round
//! costs the store nothing for keys asked for once.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cache::Cache;
use crate::config::RefreshAheadSettings;
use crate::entry::{now_ms, Entry};
use crate::error::Error;
use crate::metrics;
use crate::policy::Resolved;
use crate::proto::v1::GetRequest;

/// Whether `entry` should be refreshed now: less than `lead` of its TTL
/// plus one `interval` left before it expires.
pub fn due(entry: &Entry, now_ms: i64, lead: f64, interval: Duration) -> bool {
    let ttl = (entry.fresh_until_ms - entry.stored_at_ms).max(0) as f64;
    let ahead = ttl * lead + interval.as_millis() as f64;
    (entry.fresh_until_ms - now_ms) as f64 <= ahead
}

/// The entry's TTL: the window within which requests make a key hot.
fn ttl_of(entry: &Entry) -> Duration {
    Duration::from_millis((entry.fresh_until_ms - entry.stored_at_ms).max(0) as u64)
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub refreshed: usize,
    pub refused: usize,
    pub failed: usize,
    pub forgotten: usize,
}

/// The refresher of one instance.
pub struct RefreshAhead {
    cache: Arc<Cache>,
    settings: RefreshAheadSettings,
    pinned: Vec<Resolved>,
}

impl RefreshAhead {
    /// Resolves the pinned keys (the config was validated: a kind it knows;
    /// a key the catalog refuses is an error here).
    pub fn new(cache: Arc<Cache>, settings: RefreshAheadSettings) -> crate::error::Result<Self> {
        let pinned = settings
            .pinned
            .iter()
            .map(|p| {
                let req = GetRequest {
                    kind: p.kind.clone(),
                    id: p.id.clone(),
                    variant: p.variant.clone(),
                    ..Default::default()
                };
                cache.resolve_quietly(&req)
            })
            .collect::<crate::error::Result<Vec<_>>>()?;
        Ok(RefreshAhead { cache, settings, pinned })
    }

    /// Runs a round every `interval` until `shutdown`.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(self.settings.interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|stop| *stop) => return,
                }
                let round = self.round().await;
                if round != Round::default() {
                    tracing::debug!(?round, "refresh ahead");
                }
            }
        })
    }

    /// One pass over the pinned and hot keys: refreshes the due ones, in
    /// order of expiry, until the budget is refused.
    pub async fn round(&self) -> Round {
        let mut round = Round::default();
        let now = Instant::now();
        let mut due_now: Vec<(i64, Resolved, Option<Arc<Entry>>)> = Vec::new();
        for r in &self.pinned {
            match self.cache.stored(r).await {
                Ok(Some(e)) if !due(&e, now_ms(), self.settings.lead, self.settings.interval) => {}
                Ok(e) => due_now.push((e.as_ref().map_or(0, |e| e.fresh_until_ms), r.clone(), e)),
                Err(e) => tracing::debug!(key = %r.key, error = %e, "refresh ahead: store read failed"),
            }
        }
        for t in self.cache.hot().tracked() {
            if self.pinned.iter().any(|p| p.key == t.request.key) {
                continue;
            }
            // Asked for fewer than `hot_requests` times: it cannot be hot,
            // so its entry is not read (every tracked key's whole value was,
            // every interval: up to `max_keys` store reads a second, most of
            // them of keys asked for once). Forgotten once not asked for
            // within the TTL its kind gives it.
            if t.nth_latest.is_none() {
                if now.saturating_duration_since(t.latest) > self.cache.base_ttl(&t.request) {
                    self.cache.hot().forget(&t.request.key);
                    round.forgotten += 1;
                }
                continue;
            }
            let entry = match self.cache.stored(&t.request).await {
                Ok(Some(e)) if !e.not_found => e,
                // Purged, expired or absent: its next caller fetches it.
                Ok(_) => {
                    if now.saturating_duration_since(t.latest) > self.settings.interval * 2 {
                        self.cache.hot().forget(&t.request.key);
                        round.forgotten += 1;
                    }
                    continue;
                }
                Err(_) => continue,
            };
            let ttl = ttl_of(&entry);
            if !t.hot(ttl, now) {
                if now.saturating_duration_since(t.latest) > ttl {
                    self.cache.hot().forget(&t.request.key);
                    round.forgotten += 1;
                }
                continue;
            }
            if due(&entry, now_ms(), self.settings.lead, self.settings.interval) {
                due_now.push((entry.fresh_until_ms, t.request, Some(entry)));
            }
        }
        due_now.sort_by_key(|(until, ..)| *until);
        for (_, r, entry) in due_now {
            match self.cache.refresh_ahead(&r, entry).await {
                Ok(()) => {
                    round.refreshed += 1;
                    metrics::refreshed_ahead(&r.kind_name, "refreshed");
                }
                Err(Error::RateLimited { .. }) => {
                    // Callers need the budget: stop, try next round.
                    round.refused += 1;
                    metrics::refreshed_ahead(&r.kind_name, "refused");
                    break;
                }
                Err(e) => {
                    round.failed += 1;
                    metrics::refreshed_ahead(&r.kind_name, "failed");
                    tracing::debug!(key = %r.key, error = %e, "refresh ahead failed");
                }
            }
        }
        round
    }
}
