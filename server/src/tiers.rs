//! The cache tiers a Get looks through before going upstream: L1 (in
//! process, optional) then the shared store (Redis or embedded memory).
//!
//! Entries are kept in the store past their freshness (`stale_grace`) so
//! they can still be served stale when the upstream fails; the store's own
//! expiry is always set, so nothing lives forever. L1 holds only fresh
//! entries and is evicted by the invalidation bus (see [`crate::l1`]).
//!
//! A store outage must not take reads down: after a store error the store
//! is skipped (reads are misses, fetches go upstream without the fleet
//! lease and fill only L1) until a probe in the background, one every
//! [`STORE_RETRY`], reads the key that failed. Callers never wait out a
//! command timeout of a store already known to be down: only the first
//! failure costs one (a half-open breaker whose probe is no caller's).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::entry::{now_ms, Entry};
use crate::error::{Error, Result};
use crate::l1::{FillTicket, L1};
use crate::source::Source;
use crate::store::{Lease, Store};

/// How often a skipped store is probed (each probe waits at most this long).
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
    /// Set while the store is skipped (a probe is running).
    store_down: Arc<AtomicBool>,
}

impl Tiers {
    pub fn new(store: Arc<dyn Store>, l1: Option<L1>, stale_grace: Duration) -> Self {
        Tiers { l1, store, stale_grace, store_down: Arc::new(AtomicBool::new(false)) }
    }

    /// Whether the store is in use (not skipped after a failure).
    pub fn store_available(&self) -> bool {
        !self.store_down.load(Ordering::Relaxed)
    }

    /// Notes a failed call on `store_key`: a store error skips the store
    /// until a background probe of that key succeeds.
    pub fn note_failure(&self, e: &Error, store_key: &str) {
        if matches!(e, Error::Store(_)) && !self.store_down.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "store unavailable: serving from L1 and upstream until it answers again");
            tokio::spawn(probe(self.store.clone(), store_key.to_string(), Arc::downgrade(&self.store_down)));
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
            self.note_failure(e, store_key);
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
            self.note_failure(e, store_key);
        }
        match got? {
            Some(bytes) => Ok(Some(Arc::new(Entry::decode_from(bytes)?))),
            None => Ok(None),
        }
    }

    /// Stores `entry` for `keep` and releases the fetch's lease, if the
    /// lease still holds (no purge since the fetch began).
    pub async fn put(&self, store_key: &str, entry: &Entry, keep: Duration, lease: Lease) -> Result<bool> {
        let wrote = self.store.commit(store_key, entry.encode(), keep, lease).await;
        if let Err(e) = &wrote {
            self.note_failure(e, store_key);
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

/// Reads `store_key` every [`STORE_RETRY`] until the store answers, then
/// puts the store back in use; ends early once the tiers are gone.
async fn probe(store: Arc<dyn Store>, store_key: String, down: Weak<AtomicBool>) {
    loop {
        tokio::time::sleep(STORE_RETRY).await;
        let Some(flag) = down.upgrade() else { return };
        if let Ok(Ok(_)) = tokio::time::timeout(STORE_RETRY, store.get(&store_key)).await {
            tracing::info!("store answers again: back in use");
            flag.store(false, Ordering::Relaxed);
            return;
        }
    }
}
