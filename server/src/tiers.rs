//! The cache tiers a Get looks through before going upstream.
//!
//! L2 is the shared store (Redis or the embedded memory store). Entries are
//! kept in the store past their freshness (`stale_grace`) so they can still
//! be served stale when the upstream fails; the store's own expiry is
//! always set, so nothing lives forever.

use std::sync::Arc;
use std::time::Duration;

use crate::entry::Entry;
use crate::error::Result;
use crate::store::Store;

/// Which tier answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    Store,
}

pub struct Tiers {
    store: Arc<dyn Store>,
    stale_grace: Duration,
}

impl Tiers {
    pub fn new(store: Arc<dyn Store>, stale_grace: Duration) -> Self {
        Tiers { store, stale_grace }
    }

    /// The stored entry for `store_key`, fresh or not.
    pub async fn get(&self, store_key: &str) -> Result<Option<(Arc<Entry>, Tier)>> {
        match self.store.get(store_key).await? {
            Some(bytes) => Ok(Some((Arc::new(Entry::decode_from(bytes)?), Tier::Store))),
            None => Ok(None),
        }
    }

    /// Stores `entry`; the store keeps it for its TTL plus the stale grace.
    pub async fn put(&self, store_key: &str, entry: &Entry, ttl: Duration) -> Result<()> {
        self.store.set(store_key, entry.encode(), ttl + self.stale_grace).await
    }

    /// Removes entries; returns how many existed.
    pub async fn remove(&self, store_keys: &[String]) -> Result<u64> {
        self.store.delete(store_keys).await
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}
