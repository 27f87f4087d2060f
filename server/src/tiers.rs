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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::bus::Membership;
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
    /// L1 serves only while this instance surely hears every purge.
    membership: Arc<Membership>,
    /// The membership lapses L1 was cleared for.
    cleared_lapses: AtomicU64,
}

impl Tiers {
    pub fn new(
        store: Arc<dyn Store>,
        l1: Option<L1>,
        stale_grace: Duration,
        membership: Arc<Membership>,
    ) -> Self {
        Tiers {
            l1,
            store,
            stale_grace,
            store_down: Arc::new(AtomicBool::new(false)),
            membership,
            cleared_lapses: AtomicU64::new(0),
        }
    }

    /// L1, when it may be used now: not while this instance's fleet
    /// membership may have lapsed (purges could be passing it by), and
    /// cleared first after each lapse.
    fn l1(&self) -> Option<&L1> {
        self.l1_at(now_ms())
    }

    /// [`Tiers::l1`] at `now` (unix ms), for a caller that has read the clock.
    fn l1_at(&self, now: i64) -> Option<&L1> {
        let l1 = self.l1.as_ref()?;
        if !self.membership.valid(now) {
            return None;
        }
        let lapses = self.membership.lapses();
        if self.cleared_lapses.load(Ordering::Acquire) != lapses {
            l1.clear();
            self.cleared_lapses.store(lapses, Ordering::Release);
        }
        Some(l1)
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
        self.l1().map(|l1| l1.ticket(store_key))
    }

    /// Fills L1 directly (the store being unavailable).
    pub fn fill_l1(&self, store_key: &str, entry: Arc<Entry>, ticket: Option<FillTicket>) {
        if let (Some(l1), Some(ticket)) = (self.l1(), ticket) {
            l1.fill(store_key, entry, ticket);
        }
    }

    /// The entry for `store_key`, fresh or not: from L1 when it holds a
    /// fresh copy, else from the store (filling L1 with fresh entries).
    #[tracing::instrument(level = "debug", name = "tiers.get", skip_all)]
    /// The L1 copy of `store_key`, fresh or not, with the time it was read
    /// at, when L1 may serve.
    pub fn l1_get(&self, store_key: &str) -> Option<(Arc<Entry>, i64)> {
        let now = now_ms();
        self.l1_at(now)?.get(store_key).map(|e| (e, now))
    }

    pub async fn get(&self, store_key: &str) -> Result<Option<(Arc<Entry>, Source)>> {
        // One clock read for the membership check and the freshness of a hit.
        let now = now_ms();
        let l1 = self.l1_at(now);
        let ticket = match l1 {
            Some(l1) => {
                if let Some(e) = l1.get(store_key).filter(|e| e.is_fresh(now)) {
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
        if let (Some(l1), Some(ticket)) = (l1, ticket) {
            if entry.is_fresh(now_ms()) {
                l1.fill(store_key, entry.clone(), ticket);
            }
        }
        Ok(Some((entry, Source::Store)))
    }

    /// Reads the store only (no L1): for double-checks inside a fetch.
    /// Nothing while the store is skipped.
    pub async fn get_stored(&self, store_key: &str) -> Result<Option<Arc<Entry>>> {
        if !self.store_available() {
            return Ok(None);
        }
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
    /// Not even tried while the store is skipped (false).
    pub async fn put(&self, store_key: &str, entry: &Entry, keep: Duration, lease: Lease) -> Result<bool> {
        if !self.store_available() {
            return Ok(false);
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// While this instance's fleet membership may have lapsed, L1 serves
    /// nothing (purges may be passing it by); once renewed, L1 starts empty.
    #[tokio::test(start_paused = true)]
    async fn l1_serves_only_while_the_membership_holds_and_starts_empty_after_a_lapse() {
        crate::clock::follow_tokio_time();
        let membership = Membership::lapsed();
        membership.renewed(now_ms());
        let l1 = L1::new(1 << 20, Duration::from_secs(60));
        let tiers = Tiers::new(Arc::new(MemoryStore::new()), Some(l1), Duration::ZERO, membership.clone());
        let key = "cx:{t:k:1}:full";
        let entry = Entry::new(bytes::Bytes::from_static(b"{}"), Duration::from_secs(60), vec![]);
        tiers.store().set(key, entry.encode(), Duration::from_secs(60)).await.unwrap();
        let source = |got: Option<(Arc<Entry>, Source)>| got.map(|(_, s)| s);
        assert_eq!(source(tiers.get(key).await.unwrap()), Some(Source::Store));
        assert_eq!(source(tiers.get(key).await.unwrap()), Some(Source::L1));
        tokio::time::advance(crate::bus::FLEET_TTL).await;
        assert_eq!(source(tiers.get(key).await.unwrap()), Some(Source::Store), "L1 served while lapsed");
        assert!(membership.renewed(now_ms()));
        assert_eq!(
            source(tiers.get(key).await.unwrap()),
            Some(Source::Store),
            "L1 kept a copy across the lapse"
        );
        assert_eq!(source(tiers.get(key).await.unwrap()), Some(Source::L1));
    }
}
