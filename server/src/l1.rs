//! L1: a small in-process tier in front of the store, for hot keys that many
//! callers ask for at once. Bounded by bytes (not entry count: one large
//! list can weigh as much as thousands of queues) with a short TTL of its
//! own.
//!
//! It must never serve what the store would not: every invalidation or
//! update event from the bus evicts the key, a bus gap clears everything,
//! and a fill is skipped if an eviction touched the key's stripe while the
//! value was being read from the store (so a read racing a purge cannot
//! re-insert the purged value).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use moka::sync::Cache;

use crate::entry::Entry;

const STRIPES: usize = 256;

/// Keys hashed with foldhash (seeded per process): SipHash was a visible
/// share of an L1 hit.
type Hasher = foldhash::fast::RandomState;

pub struct L1 {
    cache: Cache<String, Arc<Entry>, Hasher>,
    /// Eviction counters, striped by key hash: a fill checks its stripe.
    epochs: Box<[AtomicU64]>,
}

/// Taken before reading the store; a fill with a stale ticket is dropped.
#[derive(Debug, Clone, Copy)]
pub struct FillTicket {
    stripe: usize,
    epoch: u64,
}

impl L1 {
    pub fn new(max_bytes: u64, ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|k: &String, e: &Arc<Entry>| {
                (k.len() + e.value.len() + 128).try_into().unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build_with_hasher(Hasher::default());
        let epochs = (0..STRIPES).map(|_| AtomicU64::new(0)).collect();
        L1 { cache, epochs }
    }

    fn stripe(key: &str) -> usize {
        // FNV-1a: cheap and good enough to spread keys over stripes.
        let mut h: u64 = 0xcbf29ce484222325;
        for b in key.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x100000001b3);
        }
        (h as usize) % STRIPES
    }

    pub fn get(&self, store_key: &str) -> Option<Arc<Entry>> {
        self.cache.get(store_key)
    }

    pub fn ticket(&self, store_key: &str) -> FillTicket {
        let stripe = Self::stripe(store_key);
        FillTicket { stripe, epoch: self.epochs[stripe].load(Ordering::Acquire) }
    }

    /// Inserts unless an eviction hit the key's stripe since `ticket`.
    pub fn fill(&self, store_key: &str, entry: Arc<Entry>, ticket: FillTicket) {
        self.fill_then(store_key, entry, ticket, || {});
    }

    /// [`L1::fill`], running `between` after the check and before the insert
    /// (where an eviction can land). Checked again after the insert: an
    /// eviction that slipped in between undoes it, so a value read before a
    /// purge never outlives the purge's eviction (and its acknowledgement).
    fn fill_then(&self, store_key: &str, entry: Arc<Entry>, ticket: FillTicket, between: impl FnOnce()) {
        let epoch = &self.epochs[ticket.stripe];
        if epoch.load(Ordering::Acquire) != ticket.epoch {
            return;
        }
        between();
        self.cache.insert(store_key.to_string(), entry);
        if epoch.load(Ordering::Acquire) != ticket.epoch {
            self.cache.invalidate(store_key);
        }
    }

    pub fn evict(&self, store_key: &str) {
        self.epochs[Self::stripe(store_key)].fetch_add(1, Ordering::AcqRel);
        self.cache.invalidate(store_key);
    }

    pub fn clear(&self) {
        for e in self.epochs.iter() {
            e.fetch_add(1, Ordering::AcqRel);
        }
        self.cache.invalidate_all();
    }

    /// Approximate bytes held (for metrics and the byte-bound test).
    pub fn weighted_size(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.weighted_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn entry(n: usize) -> Arc<Entry> {
        Arc::new(Entry::new(Bytes::from(vec![b'x'; n]), Duration::from_secs(60), vec![]))
    }

    #[test]
    fn a_fill_racing_an_eviction_is_dropped() {
        let l1 = L1::new(1 << 20, Duration::from_secs(10));
        let t = l1.ticket("k");
        l1.evict("k");
        l1.fill("k", entry(10), t);
        assert!(l1.get("k").is_none());
        let t = l1.ticket("k");
        l1.fill("k", entry(10), t);
        assert!(l1.get("k").is_some());
    }

    /// An eviction landing between a fill's check and its insert: the value
    /// read before the purge must not stay in L1 after it.
    #[test]
    fn an_eviction_between_the_fill_check_and_the_insert_wins() {
        let l1 = L1::new(1 << 20, Duration::from_secs(10));
        let t = l1.ticket("k");
        l1.fill_then("k", entry(10), t, || l1.evict("k"));
        assert!(l1.get("k").is_none(), "the purged value stayed in L1");
    }

    #[test]
    fn stays_within_its_byte_bound() {
        let l1 = L1::new(1 << 20, Duration::from_secs(10));
        for i in 0..200 {
            let k = format!("k{i}");
            let t = l1.ticket(&k);
            l1.fill(&k, entry(64 << 10), t);
        }
        assert!(l1.weighted_size() <= 1 << 20, "{}", l1.weighted_size());
    }
}
