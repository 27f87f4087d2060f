//! The cache tiers a Get looks through before going upstream: L1 (in
//! process, optional) then the shared store (Redis or embedded memory).
//!
//! Entries are kept in the store past their freshness (`stale_grace`) so
//! they can still be served stale when the upstream fails; the store's own
//! expiry is always set, so nothing lives forever. L1 holds only fresh
//! entries and is evicted by the invalidation bus (see [`crate::l1`]).

use std::sync::Arc;
use std::time::Duration;

use crate::entry::{now_ms, Entry};
use crate::error::Result;
use crate::l1::L1;
use crate::store::{Store, WriteGuard};

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    L1,
    Store,
}

pub struct Tiers {
    l1: Option<L1>,
    store: Arc<dyn Store>,
    stale_grace: Duration,
}

impl Tiers {
    pub fn new(store: Arc<dyn Store>, l1: Option<L1>, stale_grace: Duration) -> Self {
        Tiers { l1, store, stale_grace }
    }

    /// The entry for `store_key`, fresh or not: from L1 when it holds a
    /// fresh copy, else from the store (filling L1 with fresh entries).
    #[tracing::instrument(level = "debug", name = "tiers.get", skip_all)]
    pub async fn get(&self, store_key: &str) -> Result<Option<(Arc<Entry>, Tier)>> {
        let ticket = match &self.l1 {
            Some(l1) => {
                if let Some(e) = l1.get(store_key).filter(|e| e.is_fresh(now_ms())) {
                    return Ok(Some((e, Tier::L1)));
                }
                Some(l1.ticket(store_key))
            }
            None => None,
        };
        let Some(bytes) = self.store.get(store_key).await? else { return Ok(None) };
        let entry = Arc::new(Entry::decode_from(bytes)?);
        if let (Some(l1), Some(ticket)) = (&self.l1, ticket) {
            if entry.is_fresh(now_ms()) {
                l1.fill(store_key, entry.clone(), ticket);
            }
        }
        Ok(Some((entry, Tier::Store)))
    }

    /// Reads the store only (no L1): for double-checks inside a fetch.
    pub async fn get_stored(&self, store_key: &str) -> Result<Option<Arc<Entry>>> {
        match self.store.get(store_key).await? {
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
        self.store.set_guarded(store_key, entry.encode(), ttl + self.stale_grace, guard).await
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
