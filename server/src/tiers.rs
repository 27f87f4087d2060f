//! The cache tiers a Get looks through before going upstream: L1 (in
//! process, optional) then the shared store (Redis or embedded memory).
//!
//! Entries are kept in the store past their freshness (`stale_grace`) so
//! they can still be served stale when the upstream fails; the store's own
//! expiry is always set, so nothing lives forever. L1 holds only fresh
//! entries and is evicted by the invalidation bus (see [`crate::l1`]).
//!
//! A store outage must not take reads down: after a store error the store
//! is skipped for [`STORE_RETRY`] (reads are misses, fetches go upstream
//! without the fleet lease and fill only L1), so callers do not each wait
//! out a command timeout while Redis is away.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};
use crate::l1::{FillTicket, L1};
use crate::source::Source;
use crate::store::{Store, WriteGuard};

/// How long the store is skipped after it failed a call.
pub const STORE_RETRY: Duration = Duration::from_secs(1);

/// What this instance holds of a key besides the shared store — its L1
/// copy and any fetch under way — so the invalidation layer can drop them
/// without knowing the read path that keeps them.
pub trait LocalCopies: Send + Sync {
    /// Forgets everything held locally for `store_key`.
    fn forget(&self, store_key: &str);
    /// Forgets everything held locally (events may have been missed).
    fn forget_all(&self);
}

pub struct Tiers {
    l1: Option<L1>,
    store: Arc<dyn Store>,
    stale_grace: Duration,
    /// The store is skipped until then (ms since the epoch; 0: in use).
    store_down_until: AtomicI64,
}

impl Tiers {
    pub fn new(store: Arc<dyn Store>, l1: Option<L1>, stale_grace: Duration) -> Self {
        Tiers { l1, store, stale_grace, store_down_until: AtomicI64::new(0) }
    }

    /// Whether the store is in use (not skipped after a recent failure).
    pub fn store_available(&self) -> bool {
        now_ms() >= self.store_down_until.load(Ordering::Relaxed)
    }

    /// Notes a failed call: a store error skips the store for a while.
    pub fn note_failure(&self, e: &Error) {
        if matches!(e, Error::Store(_)) {
            let until = now_ms() + STORE_RETRY.as_millis() as i64;
            if self.store_down_until.swap(until, Ordering::Relaxed) < now_ms() {
                tracing::warn!(error = %e, retry_in = ?STORE_RETRY, "store unavailable: serving from L1 and upstream");
            }
        }
    }

    /// A ticket to fill L1 later unless the key is evicted meanwhile.
    pub fn l1_ticket(&self, store_key: &str) -> Option<FillTicket> {
        self.l1.as_ref().map(|l1| l1.ticket(store_key))
    }

    /// Fills L1 directly (the store being unavailable).
    pub fn fill_l1(&self, store_key: &str, entry: Arc<Entry>, ticket: Option<FillTicket>) {
        if let (Some(l1), Some(ticket)) = (&self.l1, ticket) {
            l1.fill(store_key, entry, ticket);
        }
    }

    /// The entry for `store_key`, fresh or not: from L1 when it holds a
    /// fresh copy, else from the store (filling L1 with fresh entries).
    #[tracing::instrument(level = "debug", name = "tiers.get", skip_all)]
    pub async fn get(&self, store_key: &str) -> Result<Option<(Arc<Entry>, Source)>> {
        let ticket = match &self.l1 {
            Some(l1) => {
                if let Some(e) = l1.get(store_key).filter(|e| e.is_fresh(now_ms())) {
                    return Ok(Some((e, Source::L1)));
                }
                Some(l1.ticket(store_key))
            }
            None => None,
        };
        if !self.store_available() {
            return Ok(None);
        }
        let got = self.store.get(store_key).await;
        if let Err(e) = &got {
            self.note_failure(e);
        }
        let Some(bytes) = got? else { return Ok(None) };
        let entry = Arc::new(Entry::decode_from(bytes)?);
        if let (Some(l1), Some(ticket)) = (&self.l1, ticket) {
            if entry.is_fresh(now_ms()) {
                l1.fill(store_key, entry.clone(), ticket);
            }
        }
        Ok(Some((entry, Source::Store)))
    }

    /// Reads the store only (no L1): for double-checks inside a fetch.
    pub async fn get_stored(&self, store_key: &str) -> Result<Option<Arc<Entry>>> {
        let got = self.store.get(store_key).await;
        if let Err(e) = &got {
            self.note_failure(e);
        }
        match got? {
            Some(bytes) => Ok(Some(Arc::new(Entry::decode_from(bytes)?))),
            None => Ok(None),
        }
    }

    /// Stores `entry` if `guard` holds (no purge, no newer write since the
    /// fetch began); the store keeps it for its TTL plus the stale grace.
    pub async fn put(
        &self,
        store_key: &str,
        entry: &Entry,
        ttl: Duration,
        guard: WriteGuard,
    ) -> Result<bool> {
        let wrote = self.store.set_guarded(store_key, entry.encode(), ttl + self.stale_grace, guard).await;
        if let Err(e) = &wrote {
            self.note_failure(e);
        }
        wrote
    }

    /// How long an entry with freshness `ttl` stays in the store.
    pub fn retention(&self, ttl: Duration) -> Duration {
        ttl + self.stale_grace
    }

    pub fn evict_l1(&self, store_key: &str) {
        if let Some(l1) = &self.l1 {
            l1.evict(store_key);
        }
    }

    pub fn clear_l1(&self) {
        if let Some(l1) = &self.l1 {
            l1.clear();
        }
    }

    pub fn l1_bytes(&self) -> u64 {
        self.l1.as_ref().map_or(0, L1::weighted_size)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
